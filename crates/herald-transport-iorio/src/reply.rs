//! Responses and request helpers shared by the handlers: IorioDB's error bodies, content
//! negotiation (cowboy REST's 406/415 rules) and query-string parsing.

use std::borrow::Cow;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_engine::TopicsError;
use herald_httpkit::json_response;
use serde_json::{Value, json};

/// IorioDB's error body `{"type": code, "reason": reason}` with `status`.
pub(crate) fn error(status: StatusCode, code: &str, reason: &str) -> Response {
    json_response(
        status,
        json!({ "type": code, "reason": reason }).to_string(),
    )
}

/// A JSON body with `status`.
pub(crate) fn json(status: StatusCode, value: &Value) -> Response {
    json_response(status, value.to_string())
}

/// A response with no body.
pub(crate) fn empty(status: StatusCode) -> Response {
    status.into_response()
}

/// 401 `no-perm` with `WWW-Authenticate: jwt`: the caller may not do this.
pub(crate) fn no_perm() -> Response {
    let mut resp = error(StatusCode::UNAUTHORIZED, "no-perm", "No Permission");
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("jwt"));
    resp
}

/// 401 `unauthorized` with `WWW-Authenticate: jwt`: bad credentials.
pub(crate) fn unauthorized() -> Response {
    let mut resp = error(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized");
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("jwt"));
    resp
}

/// 400 `invalid-body`.
pub(crate) fn invalid_body() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid-body",
        "Invalid Request Body",
    )
}

/// 400 `not-found` (IorioDB's answer to a PATCH on an empty stream).
pub(crate) fn not_found() -> Response {
    error(StatusCode::BAD_REQUEST, "not-found", "Not Found")
}

/// 400 for a bucket or stream name that is not a valid path segment.
pub(crate) fn invalid_name(e: impl std::fmt::Display) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid-name",
        &format!("invalid bucket or stream name: {e}"),
    )
}

/// 413 with a JSON error body.
pub(crate) fn too_large(limit: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-large",
        &format!("Request body is larger than {limit} bytes"),
    )
}

/// 429 `rate-limited`.
pub(crate) fn rate_limited() -> Response {
    error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "Too Many Requests",
    )
}

/// The answer to a topics engine failure on an IorioDB route. A storage failure is 400
/// `error` as IorioDB answers it; an overloaded or stopped engine is 503.
pub(crate) fn topics_error(e: &TopicsError) -> Response {
    let status = match e {
        TopicsError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    if status.is_server_error() {
        tracing::warn!(error = %e, "topics engine unavailable");
    } else {
        tracing::debug!(error = %e, "topics request failed");
    }
    error(status, "error", &e.to_string())
}

/// The media type of the request body, lowercased, without parameters (`None` when absent or
/// not ASCII).
pub(crate) fn content_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// Whether the request body is declared as `wanted` (parameters such as `charset` allowed).
pub(crate) fn has_content_type(headers: &HeaderMap, wanted: &str) -> bool {
    content_type(headers).is_some_and(|ct| ct == wanted)
}

/// Whether the client accepts `application/json` answers: no `Accept` header, or one with a
/// matching media range whose `q` is not 0. cowboy REST answers 406 otherwise.
pub(crate) fn accepts_json(headers: &HeaderMap) -> bool {
    let mut any_header = false;
    for value in headers.get_all(header::ACCEPT) {
        any_header = true;
        let Ok(value) = value.to_str() else {
            continue;
        };
        for range in value.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if !refused && matches!(media.as_str(), "*/*" | "application/*" | "application/json") {
                return true;
            }
        }
    }
    !any_header
}

/// 406 when the client does not accept JSON answers.
pub(crate) fn check_accept(headers: &HeaderMap) -> Result<(), Box<Response>> {
    if accepts_json(headers) {
        Ok(())
    } else {
        Err(Box::new(empty(StatusCode::NOT_ACCEPTABLE)))
    }
}

/// The most query pairs looked at; later ones are ignored.
const MAX_QUERY_PAIRS: usize = 1024;

/// The decoded `key=value` pairs of a query string (`+` is a space, `%XX` escapes are decoded,
/// invalid UTF-8 is replaced). A key without `=` has an empty value.
pub(crate) fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .take(MAX_QUERY_PAIRS)
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k).into_owned(), decode(v).into_owned())
        })
        .collect()
}

fn decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['+', '%']) {
        return Cow::Borrowed(s);
    }
    let spaced = s.replace('+', " ");
    Cow::Owned(
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// The first value of `key` in decoded query pairs.
pub(crate) fn query_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Characters escaped when a name goes into a `Location` path segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'$');

/// `name` escaped for use as one URL path segment.
pub(crate) fn encode_segment(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, SEGMENT).to_string()
}

/// Sets a header from a string, skipping it if the value is not a valid header value.
pub(crate) fn set_header(resp: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(accept: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
        h
    }

    #[test]
    fn accept_negotiation() {
        assert!(accepts_json(&HeaderMap::new()));
        assert!(accepts_json(&headers("*/*")));
        assert!(accepts_json(&headers("text/html, application/json;q=0.5")));
        assert!(accepts_json(&headers("application/*")));
        assert!(!accepts_json(&headers("text/html")));
        assert!(!accepts_json(&headers("application/json;q=0")));
    }

    #[test]
    fn query_decoding() {
        let q = query_pairs(Some("s=a%3Ab:c&jwt=x+y&flag&&s=d:e"));
        assert_eq!(query_get(&q, "jwt"), Some("x y"));
        assert_eq!(query_get(&q, "flag"), Some(""));
        let s: Vec<_> = q.iter().filter(|(k, _)| k == "s").map(|(_, v)| v).collect();
        assert_eq!(s, ["a:b:c", "d:e"]);
    }

    #[test]
    fn segment_encoding() {
        assert_eq!(encode_segment("a b/c$"), "a%20b%2Fc$");
    }
}
