//! TLS for the HTTP listeners: an axum `Listener` that hands over connections once their TLS
//! handshake is done.
//!
//! Handshakes run in tasks of their own (bounded by a timeout), so a slow or silent client never
//! holds up accepting the others. The certificate and key are reloaded when their files change
//! (`herald_tls::watch`); connections already open keep theirs.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::Listener;
use herald_tls::TlsFiles;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// Longest a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at most; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 1024;

/// A TCP listener that yields connections after their TLS handshake.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Serves TLS with `files` on `listener` until `stop` is cancelled; `name` labels the
    /// handshake failure metric (`herald_tls_handshake_errors_total{listener,category}`).
    ///
    /// # Errors
    /// When the certificate and key cannot be loaded.
    pub(crate) fn new(
        listener: TcpListener,
        files: TlsFiles,
        name: &'static str,
        stop: CancellationToken,
    ) -> Result<Self, String> {
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let config = herald_tls::watch(files, stop.clone())?;
        let (tx, ready) = mpsc::channel(64);
        let handshakes = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(listener = name, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(config.borrow().clone());
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
                            handshake_error(name, "failed");
                        }
                        Err(_) => {
                            tracing::debug!(listener = name, %peer, "no TLS handshake in time");
                            handshake_error(name, "timeout");
                        }
                    }
                });
            }
        });
        Ok(Self { ready, local })
    }
}

fn handshake_error(listener: &'static str, category: &'static str) {
    metrics::counter!(
        "herald_tls_handshake_errors_total",
        "listener" => listener,
        "category" => category
    )
    .increment(1);
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The acceptor stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
