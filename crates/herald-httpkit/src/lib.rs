//! Small HTTP helpers shared by Herald's HTTP-based adapters: JSON error bodies, bounded body
//! reading and connection gauges.
//!
//! What it is **not**: an adapter. It holds no routes and no protocol rules, only the plumbing
//! every HTTP adapter would otherwise write again.
//!
//! # Layout
//! - [`json_response`], [`error_response`]: responses with `application/json` bodies.
//! - [`read_body`], [`read_json`]: read a request body up to a limit (413 past it, 408 when
//!   its client stalls: see [`StallGuard`]).
//! - [`StallGuard`]: a request body that fails when its client goes silent.
//! - [`ConnectionGauge`]: counts open connections per protocol.
//! - [`close_if_body_unread`]: keeps keep-alive clients working after early answers.
//!
//! # Example
//! ```
//! use axum::http::StatusCode;
//! let resp = herald_httpkit::error_response(StatusCode::BAD_REQUEST, "invalid path");
//! assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// A response with the given status and an `application/json` body.
pub fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut resp = (status, body.into()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// An error response with Herald's JSON error body `{"error": "<message>"}`.
pub fn error_response(status: StatusCode, message: impl std::fmt::Display) -> Response {
    json_response(
        status,
        serde_json::json!({ "error": message.to_string() }).to_string(),
    )
}

/// Reads the whole request body, refusing more than `limit` bytes.
///
/// # Errors
/// The response to send instead: 413 when the body (declared or actual) is over the limit, 408
/// when its client stalled (a body wrapped in [`StallGuard`]), 400 when it could not be read.
pub async fn read_body(req: Request, limit: usize) -> Result<Bytes, Box<Response>> {
    let too_large = || {
        Box::new(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes"),
        ))
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match axum::body::to_bytes(req.into_body(), limit).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let over_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if over_limit {
                Err(too_large())
            } else if let Some(stalled) = cause::<BodyStalled>(&e) {
                Err(Box::new(error_response(
                    StatusCode::REQUEST_TIMEOUT,
                    stalled,
                )))
            } else {
                Err(Box::new(error_response(
                    StatusCode::BAD_REQUEST,
                    format!("could not read the request body: {e}"),
                )))
            }
        }
    }
}

/// The first error of type `T` in `e`'s chain of sources, `e` included.
fn cause<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        next = e.source();
    }
    None
}

/// A request body that fails with [`BodyStalled`] when its client sends nothing of it for
/// `idle`: a client that declares a body and then trickles it, or stops, would otherwise hold
/// its connection and its handler for as long as it likes. The wait starts again with every
/// piece that arrives, so a slow but steady upload is not cut. A body that is already there
/// (most are, with the request head) never arms the timer.
pub struct StallGuard<B> {
    inner: B,
    idle: Duration,
    /// The timer, made at the first wait and reset at each later one.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the timer counts the current wait (cleared when a piece arrives).
    armed: bool,
}

impl<B> StallGuard<B> {
    /// Guards `inner`: fails it when nothing of it arrives for `idle`.
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: None,
            armed: false,
        }
    }
}

/// The error of a [`StallGuard`] body whose client went silent.
#[derive(Debug)]
pub struct BodyStalled(Duration);

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the client sent nothing of the request body for {} s",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for BodyStalled {}

impl<B> http_body::Body for StallGuard<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.armed = false;
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let timer = match &mut this.timer {
            Some(timer) => {
                if !this.armed {
                    timer.as_mut().reset(Instant::now() + this.idle);
                }
                timer
            }
            None => this.timer.insert(Box::pin(tokio::time::sleep(this.idle))),
        };
        this.armed = true;
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled(this.idle))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads the whole request body (see [`read_body`]) and parses it as JSON.
///
/// # Errors
/// The response to send instead: 413 or 400 as [`read_body`], 400 when the body is not JSON
/// (including nesting deeper than serde_json's limit of 128).
pub async fn read_json(req: Request, limit: usize) -> Result<serde_json::Value, Box<Response>> {
    let body = read_body(req, limit).await?;
    serde_json::from_slice(&body).map_err(|e| {
        Box::new(error_response(
            StatusCode::BAD_REQUEST,
            format!("request body is not valid JSON: {e}"),
        ))
    })
}

/// Counts one open connection of a protocol in the `herald_connections` gauge (and
/// `herald_connections_total`) for as long as it lives.
#[derive(Debug)]
pub struct ConnectionGauge(metrics::Gauge);

impl ConnectionGauge {
    /// Counts a new connection of `protocol`.
    pub fn new(protocol: &'static str) -> Self {
        let g = metrics::gauge!("herald_connections", "protocol" => protocol);
        g.increment(1.0);
        metrics::counter!("herald_connections_total", "protocol" => protocol).increment(1);
        Self(g)
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Middleware: adds `Connection: close` to answers that may have left the request body unread.
///
/// Only a successful PUT, PATCH or POST has surely read its whole body (every handler that
/// answers one of them with a 2xx has read it). Any other answer to a request
/// that carries one (an early 401, 404, 413, ...) may leave it unread, and hyper then closes the
/// connection after the answer without saying so, which breaks keep-alive clients (Python
/// `requests` fails its next request with `RemoteDisconnected`). Saying `Connection: close` lets
/// them reconnect.
pub async fn close_if_body_unread(req: Request, next: Next) -> Response {
    let has_body = declares_body(req.headers());
    let reads_body = matches!(*req.method(), Method::PUT | Method::PATCH | Method::POST);
    let mut resp = next.run(req).await;
    if has_body && !(reads_body && resp.status().is_success()) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Whether the request announces a body (a non-zero `Content-Length`, or any
/// `Transfer-Encoding`).
pub fn declares_body(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.to_str().map_or(true, |v| v.trim() != "0"))
}

/// Whether the request asks for a WebSocket upgrade (`Upgrade: websocket` and `Connection:
/// upgrade`, matched as comma-separated, case-insensitive tokens), so one route can serve
/// plain HTTP and WebSocket clients.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has_token(header::UPGRADE, "websocket") && has_token(header::CONNECTION, "upgrade")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// A request body whose pieces a test sends when it likes.
    struct Pieces(mpsc::Receiver<Bytes>);

    impl http_body::Body for Pieces {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|piece| piece.map(|b| Ok(Frame::data(b))))
        }
    }

    const IDLE: Duration = Duration::from_millis(200);

    /// A guarded request whose body comes from the returned sender.
    fn guarded() -> (Request, mpsc::Sender<Bytes>) {
        let (tx, rx) = mpsc::channel(8);
        let body = Body::new(StallGuard::new(Pieces(rx), IDLE));
        (Request::new(body), tx)
    }

    async fn body_text(resp: Response) -> String {
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_steady_body_is_read_whole_however_long_it_takes() {
        let (req, tx) = guarded();
        tokio::spawn(async move {
            for piece in ["a", "b", "c", "d", "e", "f"] {
                tokio::time::sleep(IDLE / 2).await;
                tx.send(Bytes::from(piece)).await.unwrap();
            }
        });
        let started = Instant::now();
        let body = read_body(req, 1024).await.expect("the whole body");
        assert_eq!(&body[..], b"abcdef");
        assert!(started.elapsed() > IDLE * 2, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_body_whose_client_goes_silent_gets_408() {
        let (req, tx) = guarded();
        tx.send(Bytes::from_static(b"{\"half\":")).await.unwrap();
        let started = Instant::now();
        let resp = read_body(req, 1024)
            .await
            .expect_err("a stalled body fails");
        let waited = started.elapsed();
        assert!(waited >= IDLE && waited < IDLE * 10, "{waited:?}");
        assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
        let text = body_text(*resp).await;
        assert!(
            text.contains("nothing of the request body for 0.2 s"),
            "{text}"
        );
        drop(tx);
    }

    #[tokio::test]
    async fn a_body_that_is_already_there_arms_no_timer() {
        let (tx, rx) = mpsc::channel(8);
        tx.send(Bytes::from_static(b"all")).await.unwrap();
        drop(tx);
        let mut guard = StallGuard::new(Pieces(rx), IDLE);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut pin = Pin::new(&mut guard);
        assert!(matches!(
            http_body::Body::poll_frame(pin.as_mut(), &mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        assert!(matches!(
            http_body::Body::poll_frame(pin.as_mut(), &mut cx),
            Poll::Ready(None)
        ));
        assert!(guard.timer.is_none());
    }
}
