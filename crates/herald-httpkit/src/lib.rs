//! Small HTTP helpers shared by Herald's HTTP-based adapters: JSON error bodies, bounded body
//! reading and connection gauges.
//!
//! What it is **not**: an adapter. It holds no routes and no protocol rules, only the plumbing
//! every HTTP adapter would otherwise write again.
//!
//! # Layout
//! - [`json_response`], [`error_response`]: responses with `application/json` bodies.
//! - [`read_body`], [`read_json`]: read a request body up to a limit (413 past it).
//! - [`ConnectionGauge`]: counts open connections per protocol.
//! - [`close_if_body_unread`]: keeps keep-alive clients working after early answers.
//!
//! # Example
//! ```
//! use axum::http::StatusCode;
//! let resp = herald_httpkit::error_response(StatusCode::BAD_REQUEST, "invalid path");
//! assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
//! ```

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

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
/// The response to send instead: 413 when the body (declared or actual) is over the limit, 400
/// when it could not be read.
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
            } else {
                Err(Box::new(error_response(
                    StatusCode::BAD_REQUEST,
                    format!("could not read the request body: {e}"),
                )))
            }
        }
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
