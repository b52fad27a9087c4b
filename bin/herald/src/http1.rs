//! HTTP/1.1 on the HTTP listeners: one hyper connection per accepted socket.
//!
//! `axum::serve` does the same through hyper-util's HTTP/1-or-2 detection, which reads the first
//! bytes of each connection into a buffer of its own and hands them to hyper ahead of the socket.
//! hyper's first read then takes only those bytes, and its next one grows the 8 KiB read buffer
//! to 16 KiB. The larger buffer stays with the connection while it is open: 8 KiB more for each
//! SSE listener and each idle keep-alive client. Herald speaks HTTP/1.1 only (WebSockets are
//! HTTP/1.1 upgrades), so it serves hyper's HTTP/1 connection directly and skips the detection.
//!
//! `--http-idle-timeout` bounds how long a client that owes the server bytes may keep it
//! waiting, so clients that connect and send nothing, or trickle a request, do not hold a
//! connection slot and a handler forever: a connection waiting for a request head (a new one, or
//! a keep-alive one between requests) is closed when the head is not complete in time, and a
//! request body from which nothing arrives for that long fails (`herald_httpkit::StallGuard`;
//! the handler answers 408). A request being answered (a long poll, an SSE stream) is not timed.

use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use herald_httpkit::StallGuard;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Serves `app` on every connection `listener` accepts until `stop` is cancelled, then asks each
/// open connection to finish its request in flight and close, and returns once all have.
///
/// Handlers see the peer's address as `ConnectInfo<SocketAddr>` (the login rate limit is per
/// client IP). A connection that cannot be served (a malformed request head, a reset) is logged
/// at debug level; hyper answers what it can parse with a 4xx itself.
pub(crate) async fn serve<L>(
    mut listener: L,
    app: Router,
    stop: CancellationToken,
    idle_timeout: Duration,
) where
    L: Listener<Addr = SocketAddr>,
{
    // Every connection task holds a receiver; `closed` resolves when the last one is dropped.
    let (open_tx, open_rx) = watch::channel(());
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(idle_timeout);
    loop {
        let (io, peer) = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let app = app.clone();
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            let mut req = req.map(|body| Body::new(StallGuard::new(body, idle_timeout)));
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req)
        });
        let conn = http
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let stop = stop.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            let mut conn = pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            drop(open);
        });
    }
    drop(open_rx);
    open_tx.closed().await;
}
