//! IorioDB's stream routes (seed contract 2.3, 2.4): append, query, JSON Patch and delete on
//! `/streams/{bucket}/{stream}`, and the bucket and stream listings.

use std::collections::BTreeSet;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use herald_core::{Modes, Path};
use herald_engine::{NewEvent, TopicsError};
use json_patch::PatchOperation;
use serde_json::{Value, json};

use crate::auth::{self, Caller, TokenSources};
use crate::entry;
use crate::reply::{self, query_get, query_pairs};
use crate::{AppState, Shared};

/// The most operations one JSON Patch may have. Patches from IorioDB's clients have a few;
/// the cap bounds the work of checking a patch's size as it applies (see [`apply_bounded`]).
const MAX_PATCH_OPS: usize = 256;

/// The deepest nesting a patched document may reach (serde_json, and so every reader, refuses
/// deeper JSON). Checked before each operation: copying a document into its own deepest leaf
/// doubles its depth, so a few operations could otherwise build a document deep enough to
/// overflow the stack while it is cloned, measured or dropped.
const MAX_PATCH_DEPTH: usize = 128;

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
        Method::PATCH => patch(&state, &bucket, &stream, topic, req).await,
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
        .append(topic, vec![NewEvent::json(body)], None)
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
    bucket: &str,
    stream: &str,
    topic: Path,
    req: Request,
) -> Response {
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
    if ops.0.len() > MAX_PATCH_OPS {
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
        apply_bounded(&mut doc, &ops.0, limit)?;
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
    // IorioDB also publishes every applied patch to `{stream}-$patch`.
    let patch_stream = format!("{stream}{PATCH_STREAM_SUFFIX}");
    match Path::from_segments([bucket, patch_stream.as_str()], &state.config.path_limits) {
        Ok(p) => {
            if let Err(e) = state
                .topics
                .append(p, vec![NewEvent::json(body)], None)
                .await
            {
                tracing::warn!(topic = %topic, error = %e, "could not record the patch");
            }
        }
        Err(e) => tracing::debug!(topic = %topic, error = %e, "no patch stream for this name"),
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

/// Applies `ops` to `doc` one at a time, refusing results larger than `limit` bytes of JSON or
/// nested deeper than [`MAX_PATCH_DEPTH`].
///
/// Only `copy` can make a document grow beyond its size plus the patch's size (each copy can
/// double it: a 1 MiB patch of copies would otherwise build a document of 2^30000 bytes). So
/// the document is measured after every `copy`, stopping at `limit`, which bounds the work to
/// `MAX_PATCH_OPS` measurements of at most `limit` bytes.
///
/// `doc` must be nested at most [`MAX_PATCH_DEPTH`] deep (as any document serde_json parsed);
/// every operation is checked to keep it so before it runs.
fn apply_bounded(
    doc: &mut Value,
    ops: &[PatchOperation],
    limit: usize,
) -> Result<(), PatchFailure> {
    for op in ops {
        if landing_depth(doc, op) > MAX_PATCH_DEPTH {
            return Err(PatchFailure::Invalid);
        }
        json_patch::patch(doc, std::slice::from_ref(op)).map_err(|_| PatchFailure::Invalid)?;
        if matches!(op, PatchOperation::Copy(_)) && json_len_exceeds(doc, limit) {
            return Err(PatchFailure::TooLarge);
        }
    }
    Ok(())
}

/// How deep the value `op` puts into `doc` ends up nested: the containers above its target plus
/// its own depth (0 for operations that insert nothing). A `copy` or `move` to a target no
/// deeper than its source cannot nest deeper than `doc` already is, and is not measured.
fn landing_depth(doc: &Value, op: &PatchOperation) -> usize {
    let (path, value) = match op {
        PatchOperation::Add(o) => (&o.path, Some(&o.value)),
        PatchOperation::Replace(o) => (&o.path, Some(&o.value)),
        PatchOperation::Copy(o) if o.path.count() > o.from.count() => {
            (&o.path, doc.pointer(o.from.as_str()))
        }
        PatchOperation::Move(o) if o.path.count() > o.from.count() => {
            (&o.path, doc.pointer(o.from.as_str()))
        }
        _ => return 0,
    };
    // A missing source fails the operation anyway.
    path.count().saturating_add(value.map_or(0, nesting))
}

/// How many arrays and objects deep `value` is (0 for a scalar), without recursion.
fn nesting(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, above)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(fields) => Box::new(fields.values()),
            _ => continue,
        };
        deepest = deepest.max(above + 1);
        stack.extend(children.map(|c| (c, above + 1)));
    }
    deepest
}

/// Whether `value` serializes to more than `limit` bytes (stops counting past the limit).
fn json_len_exceeds(value: &Value, limit: usize) -> bool {
    struct Counter {
        n: usize,
        limit: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.n = self.n.saturating_add(buf.len());
            if self.n > self.limit {
                Err(std::io::Error::other("over the limit"))
            } else {
                Ok(buf.len())
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(&mut Counter { n: 0, limit }, value).is_err()
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

    fn ops(v: Value) -> Vec<PatchOperation> {
        serde_json::from_value::<json_patch::Patch>(v).unwrap().0
    }

    #[test]
    fn copies_cannot_blow_up() {
        let mut doc = json!({"a": "x".repeat(100)});
        let mut patch = Vec::new();
        for i in 0..40 {
            patch.push(json!({"op": "copy", "from": "", "path": format!("/c{i}")}));
        }
        let err = apply_bounded(&mut doc, &ops(Value::Array(patch)), 10_000).unwrap_err();
        assert_eq!(err, PatchFailure::TooLarge);
    }

    #[test]
    fn ordinary_patches_apply() {
        let mut doc = json!({"items": []});
        let patch = ops(json!([
            {"op": "add", "path": "/items/-", "value": 1},
            {"op": "copy", "from": "/items", "path": "/copy"},
            {"op": "test", "path": "/copy/0", "value": 1},
        ]));
        apply_bounded(&mut doc, &patch, 1000).unwrap();
        assert_eq!(doc, json!({"items": [1], "copy": [1]}));
        let bad = ops(json!([{"op": "test", "path": "/items/0", "value": 2}]));
        assert_eq!(
            apply_bounded(&mut doc, &bad, 1000).unwrap_err(),
            PatchFailure::Invalid
        );
    }

    #[test]
    fn patches_cannot_nest_without_bound() {
        // Copying the document into its own deepest array doubles its depth.
        let mut doc = json!([]);
        for _ in 0..99 {
            doc = Value::Array(vec![doc]);
        }
        let into_innermost = |depth: usize| format!("{}/-", "/0".repeat(depth - 1));
        let ok = ops(json!([{"op": "copy", "from": "", "path": into_innermost(20)}]));
        let mut shallow = json!([]);
        for _ in 0..19 {
            shallow = Value::Array(vec![shallow]);
        }
        apply_bounded(&mut shallow, &ok, 1 << 20).unwrap();
        assert_eq!(nesting(&shallow), 40);
        let bomb = ops(json!([{"op": "copy", "from": "", "path": into_innermost(100)}]));
        assert_eq!(
            apply_bounded(&mut doc, &bomb, 1 << 20).unwrap_err(),
            PatchFailure::Invalid
        );
        let deep_value = (0..40).fold(json!(1), |v, _| json!([v]));
        let add = ops(json!([{"op": "add", "path": into_innermost(100), "value": deep_value}]));
        assert_eq!(
            apply_bounded(&mut doc, &add, 1 << 20).unwrap_err(),
            PatchFailure::Invalid
        );
        // Moving a subtree deeper is measured too; moving it up is not refused.
        let mut moved =
            json!({"a": doc.clone(), "b": (0..40).fold(json!({}), |v, _| json!({"x": v}))});
        let down =
            ops(json!([{"op": "move", "from": "/b", "path": format!("/a{}", "/0".repeat(99))}]));
        assert_eq!(
            apply_bounded(&mut moved, &down, 1 << 20).unwrap_err(),
            PatchFailure::Invalid
        );
        let up =
            ops(json!([{"op": "move", "from": format!("/a{}", "/0".repeat(50)), "path": "/c"}]));
        apply_bounded(&mut moved, &up, 1 << 20).unwrap();
        assert_eq!(nesting(&json!(1)), 0);
        assert_eq!(nesting(&json!({"a": [1, {}]})), 3);
    }

    #[test]
    fn attachment_names_are_sanitized() {
        assert_eq!(attachment_name("a\"b\\c\r\nd.json"), "abcd.json");
        assert_eq!(attachment_name("\u{e9}"), "download.json");
    }
}
