//! IorioDB's stream routes (seed contract 2.3, 2.4): append, query, JSON Patch and delete on
//! `/streams/{bucket}/{stream}`, and the bucket and stream listings.

use std::collections::BTreeSet;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use herald_core::tree::{PatchError, PatchLimits, apply_patch};
use herald_core::{Modes, Path};
use herald_engine::{NewEvent, TopicsError};
use serde_json::{Value, json};

use crate::auth::{self, Caller, TokenSources};
use crate::entry;
use crate::reply::{self, query_get, query_pairs};
use crate::{AppState, Shared};

/// The most operations one JSON Patch may have. Patches from IorioDB's clients have a few;
/// the cap bounds the work of checking a patch's size as it applies (see [`apply_bounded`]).
const MAX_PATCH_OPS: usize = 256;

/// The suffix of the stream that receives every raw patch applied to a stream.
const PATCH_STREAM_SUFFIX: &str = "-$patch";

/// The caller of an IorioDB stream, list or ping request: 400 with an empty body when the token
/// does not verify (IorioDB's `malformed_request`).
pub(crate) fn stream_caller(
    state: &AppState,
    headers: &HeaderMap,
    pairs: &[(String, String)],
) -> Result<Caller, Box<Response>> {
    let token = auth::token(headers, query_get(pairs, "jwt"), TokenSources::Iorio);
    auth::caller(&state.accounts, token)
        .map_err(|_| Box::new(reply::empty(StatusCode::BAD_REQUEST)))
}

/// `/streams/{bucket}/{stream}`: POST, GET, PATCH, DELETE.
pub(crate) async fn stream(
    State(state): State<Shared>,
    names: Result<UrlPath<(String, String)>, PathRejection>,
    req: Request,
) -> Response {
    let needed = match *req.method() {
        Method::POST => Modes::WRITE,
        Method::GET | Method::HEAD => Modes::READ,
        Method::PATCH => Modes::READ | Modes::WRITE,
        Method::DELETE => Modes::DELETE,
        _ => {
            let mut resp = reply::empty(StatusCode::METHOD_NOT_ALLOWED);
            resp.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PATCH, DELETE"),
            );
            return resp;
        }
    };
    let pairs = query_pairs(req.uri().query());
    let caller = match stream_caller(&state, req.headers(), &pairs) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let UrlPath((bucket, stream)) = match names {
        Ok(n) => n,
        Err(e) => return reply::invalid_name(e.body_text()),
    };
    let topic = match Path::from_segments(
        [bucket.as_str(), stream.as_str()],
        &state.config.path_limits,
    ) {
        Ok(p) => p,
        Err(e) => return reply::invalid_name(e),
    };
    if !caller.allows(&state.accounts, &topic, needed) {
        tracing::debug!(user = caller.name(), topic = %topic, "stream access refused");
        return reply::no_perm();
    }
    if let Err(resp) = reply::check_accept(req.headers()) {
        return *resp;
    }
    match *req.method() {
        Method::POST => post(&state, &bucket, &stream, topic, req).await,
        Method::PATCH => patch(&state, &caller, &bucket, &stream, topic, req).await,
        Method::DELETE => match state.topics.delete(&topic).await {
            Ok(existed) => {
                tracing::info!(user = caller.name(), topic = %topic, existed, "stream deleted");
                reply::empty(StatusCode::NO_CONTENT)
            }
            Err(e) => reply::topics_error(&e),
        },
        _ => get(&state, topic, &pairs).await,
    }
}

/// Reads the request body up to `limit` bytes, with IorioDB-style errors (413 `too-large`,
/// 400 `invalid-body`).
pub(crate) async fn read_body(req: Request, limit: usize) -> Result<Bytes, Box<Response>> {
    herald_httpkit::read_body(req, limit).await.map_err(|resp| {
        Box::new(if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
            reply::too_large(limit)
        } else {
            reply::invalid_body()
        })
    })
}

async fn post(state: &AppState, bucket: &str, stream: &str, topic: Path, req: Request) -> Response {
    if !reply::has_content_type(req.headers(), "application/json") {
        return reply::empty(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let body = match read_body(req, state.config.max_event_bytes).await {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    if !entry::is_valid_json(&body) {
        return reply::invalid_body();
    }
    match state
        .topics
        .append(topic, vec![NewEvent::json(entry::owned(&body))], None)
        .await
    {
        Ok(a) => {
            let mut resp = reply::json(
                StatusCode::CREATED,
                &json!({ "meta": { "id": a.last, "t": a.t_ms } }),
            );
            let location = format!(
                "/streams/{}/{}/?limit=1&from={}",
                reply::encode_segment(bucket),
                reply::encode_segment(stream),
                a.last
            );
            reply::set_header(&mut resp, header::LOCATION, &location);
            resp
        }
        Err(e) => reply::topics_error(&e),
    }
}

async fn get(state: &AppState, topic: Path, pairs: &[(String, String)]) -> Response {
    // IorioDB: non-integer values fall back to the defaults.
    let limit = query_get(pairs, "limit")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .min(state.config.max_query_limit);
    let from = query_get(pairs, "from").and_then(|v| v.parse::<u64>().ok());
    let events = match from {
        Some(from) => state.topics.read(&topic, from, limit).await,
        None => state.topics.read_last(&topic, limit).await,
    };
    let events = match events {
        Ok(e) => e,
        Err(e) => return reply::topics_error(&e),
    };
    let mut body = String::from("[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&entry::query_entry(event));
    }
    body.push(']');
    let mut resp = herald_httpkit::json_response(StatusCode::OK, body);
    if let Some(name) = query_get(pairs, "download") {
        let name = attachment_name(name);
        reply::set_header(
            &mut resp,
            header::CONTENT_DISPOSITION,
            &format!("attachment; filename=\"{name}\""),
        );
    }
    resp
}

/// A `download` file name made safe for a quoted header parameter: printable ASCII without
/// quotes or backslashes, at most 200 characters, never empty.
fn attachment_name(raw: &str) -> String {
    let name: String = raw
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .filter(|c| !matches!(c, '"' | '\\'))
        .take(200)
        .collect();
    if name.trim().is_empty() {
        "download.json".to_owned()
    } else {
        name
    }
}

async fn patch(
    state: &AppState,
    caller: &Caller,
    bucket: &str,
    stream: &str,
    topic: Path,
    req: Request,
) -> Response {
    // IorioDB also publishes every applied patch to `{stream}-$patch`; the caller must be
    // allowed to write there too (IorioDB does not check, so a grant on one stream let its
    // holder write into another).
    let patch_stream = format!("{stream}{PATCH_STREAM_SUFFIX}");
    let patch_topic =
        Path::from_segments([bucket, patch_stream.as_str()], &state.config.path_limits).ok();
    if let Some(p) = &patch_topic
        && !caller.allows(&state.accounts, p, Modes::WRITE)
    {
        tracing::debug!(user = caller.name(), topic = %p, "patch stream access refused");
        return reply::no_perm();
    }
    if !reply::has_content_type(req.headers(), "application/json-patch+json") {
        return reply::empty(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let limit = state.config.max_event_bytes;
    let body = match read_body(req, limit).await {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let Ok(ops) = serde_json::from_slice::<json_patch::Patch>(&body) else {
        return reply::invalid_body();
    };
    let limits = PatchLimits {
        max_ops: MAX_PATCH_OPS,
        max_bytes: limit,
        max_depth: PatchLimits::default().max_depth,
    };
    if ops.0.len() > limits.max_ops {
        return reply::error(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            &format!("a patch may have at most {MAX_PATCH_OPS} operations"),
        );
    }
    let last = match state.topics.read_last(&topic, 1).await {
        Ok(mut events) => match events.pop() {
            Some(e) => e,
            None => return reply::not_found(),
        },
        Err(e) => return reply::topics_error(&e),
    };
    let base = last.data.clone();
    // Parsing, applying and serializing a document of up to `max_event_bytes` is CPU work of
    // milliseconds: keep it off the async workers.
    let applied = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, PatchFailure> {
        let mut doc: Value = serde_json::from_slice(&base).map_err(|_| PatchFailure::Invalid)?;
        apply_patch(&mut doc, &ops.0, &limits).map_err(|e| match e {
            PatchError::TooLarge { .. } => PatchFailure::TooLarge,
            _ => PatchFailure::Invalid,
        })?;
        let out = serde_json::to_vec(&doc).map_err(|_| PatchFailure::Invalid)?;
        if out.len() > limit {
            return Err(PatchFailure::TooLarge);
        }
        // A patch can nest values deeper than a reader accepts; refuse that here.
        if !entry::is_valid_json(&out) {
            return Err(PatchFailure::Invalid);
        }
        Ok(out)
    })
    .await;
    let patched = match applied {
        Ok(Ok(p)) => p,
        Ok(Err(PatchFailure::Invalid)) | Err(_) => return reply::invalid_body(),
        Ok(Err(PatchFailure::TooLarge)) => return reply::too_large(limit),
    };
    let appended = match state
        .topics
        .append(topic.clone(), vec![NewEvent::json(patched)], Some(last.seq))
        .await
    {
        Ok(a) => a,
        Err(TopicsError::Conflict { expected, got }) => {
            return reply::json(
                StatusCode::CONFLICT,
                &json!({
                    "type": "error",
                    // IorioDB's spelling, typo included: clients may match on it.
                    "reason": {"reason": "confict", "field": "seqnum", "expected": expected, "got": got},
                }),
            );
        }
        Err(e) => return reply::topics_error(&e),
    };
    match patch_topic {
        Some(p) => {
            if let Err(e) = state
                .topics
                .append(p, vec![NewEvent::json(entry::owned(&body))], None)
                .await
            {
                tracing::warn!(topic = %topic, error = %e, "could not record the patch");
            }
        }
        None => tracing::debug!(topic = %topic, "no patch stream for this name (too long)"),
    }
    reply::json(
        StatusCode::OK,
        &json!({ "meta": { "id": appended.last, "t": appended.t_ms } }),
    )
}

/// Why a patch could not be applied.
#[derive(Debug, PartialEq, Eq)]
enum PatchFailure {
    /// The document or the patch is invalid, or an operation failed.
    Invalid,
    /// The result would be larger than the limit.
    TooLarge,
}

/// `GET /buckets/`: the buckets holding streams the caller may list.
pub(crate) async fn list_buckets(State(state): State<Shared>, req: Request) -> Response {
    let pairs = query_pairs(req.uri().query());
    let caller = match stream_caller(&state, req.headers(), &pairs) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    if let Err(resp) = reply::check_accept(req.headers()) {
        return *resp;
    }
    let access = caller.access(&state.accounts);
    let mut seen = BTreeSet::new();
    let mut visible = BTreeSet::new();
    for topic in state.topics.list(&Path::root()) {
        let [bucket, _stream] = topic.segments() else {
            continue;
        };
        if visible.contains(bucket) {
            continue;
        }
        let bucket_listable = if seen.insert(bucket.clone()) {
            Path::from_segments([bucket.as_str()], &state.config.path_limits)
                .is_ok_and(|b| access.allows(&b, Modes::LIST))
        } else {
            false
        };
        if bucket_listable || access.allows(&topic, Modes::LIST) {
            visible.insert(bucket.clone());
        }
    }
    reply::json(
        StatusCode::OK,
        &json!({ "status": "ok", "data": visible.into_iter().collect::<Vec<_>>() }),
    )
}

/// `GET /streams/{bucket}`: the streams of a bucket the caller may list.
pub(crate) async fn list_streams(
    State(state): State<Shared>,
    bucket: Result<UrlPath<String>, PathRejection>,
    req: Request,
) -> Response {
    let pairs = query_pairs(req.uri().query());
    let caller = match stream_caller(&state, req.headers(), &pairs) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let UrlPath(bucket) = match bucket {
        Ok(b) => b,
        Err(e) => return reply::invalid_name(e.body_text()),
    };
    let bucket_path = match Path::from_segments([bucket.as_str()], &state.config.path_limits) {
        Ok(p) => p,
        Err(e) => return reply::invalid_name(e),
    };
    let access = caller.access(&state.accounts);
    let whole_bucket = access.allows(&bucket_path, Modes::LIST);
    let streams: Vec<String> = state
        .topics
        .list(&bucket_path)
        .into_iter()
        .filter(|t| whole_bucket || access.allows(t, Modes::LIST))
        .filter_map(|t| match t.segments() {
            [_, stream] => Some(stream.clone()),
            _ => None,
        })
        .collect();
    if !whole_bucket && streams.is_empty() {
        return reply::no_perm();
    }
    if let Err(resp) = reply::check_accept(req.headers()) {
        return *resp;
    }
    reply::json(StatusCode::OK, &json!({ "status": "ok", "data": streams }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_names_are_sanitized() {
        assert_eq!(attachment_name("a\"b\\c\r\nd.json"), "abcd.json");
        assert_eq!(attachment_name("\u{e9}"), "download.json");
    }
}
