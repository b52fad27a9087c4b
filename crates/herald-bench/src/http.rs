//! One HTTP/1.1 keep-alive connection per simulated client.
//!
//! The default is a bare hyper connection (`hyper::client::conn::http1`): no pool, no
//! redirect or proxy logic, one spawned connection task. reqwest is kept as an alternative
//! (`--http-client reqwest`, one `reqwest::Client` with a single pooled connection per
//! simulated client) so the client's own CPU cost can be compared on the same machine; the
//! measured difference is in `docs/benchmarks.md`.

use std::fmt;
use std::net::IpAddr;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use crate::args::Target;

/// Which HTTP client library drives the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    /// A bare hyper HTTP/1.1 connection (the default: the least CPU per request).
    Hyper,
    /// reqwest with one pooled connection (for comparison).
    Reqwest,
}

impl fmt::Display for ClientKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientKind::Hyper => "hyper",
            ClientKind::Reqwest => "reqwest",
        })
    }
}

/// A keep-alive HTTP/1.1 connection to one target that reconnects after a transport error.
///
/// Requests are sequential: each call waits for the whole response before returning, which
/// is what a client doing one request at a time over one connection does.
pub struct Connection {
    target: Target,
    inner: Inner,
}

enum Inner {
    /// `None` until connected, and again after a transport error.
    Hyper(Option<SendRequest<Full<Bytes>>>),
    Reqwest(reqwest::Client),
}

impl Connection {
    /// Prepares a connection; [`Connection::connect`] opens it.
    ///
    /// # Errors
    /// When the reqwest client cannot be built.
    pub fn new(kind: ClientKind, target: Target) -> anyhow::Result<Self> {
        let inner = match kind {
            ClientKind::Hyper => Inner::Hyper(None),
            ClientKind::Reqwest => Inner::Reqwest(
                reqwest::Client::builder()
                    .http1_only()
                    .pool_max_idle_per_host(1)
                    .tcp_nodelay(true)
                    .no_proxy()
                    .build()
                    .context("cannot build the reqwest client")?,
            ),
        };
        Ok(Self { target, inner })
    }

    /// Opens the TCP connection now (hyper only; reqwest connects on its first request), so
    /// that connection setup is not counted in the first request's latency.
    ///
    /// # Errors
    /// When the connection or the HTTP handshake fails.
    pub async fn connect(&mut self) -> anyhow::Result<()> {
        if let Inner::Hyper(slot) = &mut self.inner
            && slot.as_ref().is_none_or(|s| s.is_closed())
        {
            *slot = Some(open(&self.target).await?);
        }
        Ok(())
    }

    /// Sends `PUT path_and_query` with a JSON body and reads the whole response; returns its
    /// status code.
    ///
    /// # Errors
    /// On a transport error; the next call reconnects.
    pub async fn put(&mut self, path_and_query: &str, body: Bytes) -> anyhow::Result<u16> {
        match &mut self.inner {
            Inner::Hyper(slot) => {
                let result = put_hyper(slot, &self.target, path_and_query, body).await;
                if result.is_err() {
                    *slot = None;
                }
                result
            }
            Inner::Reqwest(client) => {
                let resp = client
                    .put(self.target.http_url(path_and_query))
                    .header(CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await?;
                let status = resp.status().as_u16();
                resp.bytes().await?;
                Ok(status)
            }
        }
    }
}

/// Opens one HTTP/1.1 connection (TCP_NODELAY) to `target`.
pub(crate) async fn open(target: &Target) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    open_from(target, None).await
}

/// Opens one HTTP/1.1 connection (TCP_NODELAY) to `target`, from `source` when given (see
/// [`crate::net`]).
pub(crate) async fn open_from(
    target: &Target,
    source: Option<IpAddr>,
) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = crate::net::connect(target.addr(), source).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection task ends when the sender is dropped or the server closes the socket.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn put_hyper(
    slot: &mut Option<SendRequest<Full<Bytes>>>,
    target: &Target,
    path_and_query: &str,
    body: Bytes,
) -> anyhow::Result<u16> {
    let sender = match slot {
        Some(s) if !s.is_closed() => s,
        _ => slot.insert(open(target).await?),
    };
    sender.ready().await?;
    let req = Request::builder()
        .method(Method::PUT)
        .uri(path_and_query)
        .header(HOST, target.authority())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}
