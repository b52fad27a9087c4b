//! Herald's native topics API: `/topics/...` (metadata, listing, delete), `/events/...` (read and
//! append with any content type) and `/retention/...` (per-topic overrides). See the crate docs
//! for the routes; errors are Herald's `{"error": "..."}`.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::topic::{MAX_CONTENT_TYPE_LEN, Retention};
use herald_core::{Modes, Path};
use herald_engine::{NewEvent, TopicsError};
use herald_httpkit::{error_response, json_response};
use serde_json::{Value, json};

use crate::auth::{self, Caller, TokenSources};
use crate::reply::{query_get, query_pairs};
use crate::{AppState, Shared, entry};

/// The default `limit` of `GET /events/...`.
const DEFAULT_EVENTS_LIMIT: usize = 100;

/// The most topics one listing returns.
const MAX_LIST: usize = 10_000;

/// The largest body of `PUT /retention/...`.
const MAX_RETENTION_BODY_BYTES: usize = 16 * 1024;

/// The content type of events posted without one.
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

fn native_caller(
    state: &AppState,
    req: &Request,
    pairs: &[(String, String)],
) -> Result<Caller, Box<Response>> {
    let token = auth::token(req.headers(), query_get(pairs, "jwt"), TokenSources::Native);
    auth::caller(&state.accounts, token).map_err(|_| {
        let mut resp = error_response(StatusCode::UNAUTHORIZED, "invalid or expired session token");
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("jwt"));
        Box::new(resp)
    })
}

/// 401 for anonymous callers (who may log in), 403 for users.
fn denied(caller: &Caller) -> Response {
    if caller.user.is_none() {
        let mut resp = error_response(StatusCode::UNAUTHORIZED, "authentication required");
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("jwt"));
        resp
    } else {
        error_response(StatusCode::FORBIDDEN, "not allowed")
    }
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut resp = error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

fn topics_error(e: &TopicsError) -> Response {
    let status = match e {
        TopicsError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        TopicsError::Invalid(_) => StatusCode::BAD_REQUEST,
        TopicsError::Conflict { .. } => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status.is_server_error() {
        tracing::warn!(error = %e, "topics request failed");
    }
    error_response(status, e)
}

/// The topic path after `prefix` in the raw (still percent-encoded) request path, so that `%2F`
/// stays inside its segment.
fn topic_path(state: &AppState, req: &Request, prefix: &str) -> Result<Path, Box<Response>> {
    let raw = req.uri().path().strip_prefix(prefix).unwrap_or("");
    Path::parse_url(raw, &state.config.path_limits).map_err(|e| {
        Box::new(error_response(
            StatusCode::BAD_REQUEST,
            format!("invalid path: {e}"),
        ))
    })
}

fn require_topic(path: &Path) -> Result<(), Box<Response>> {
    if path.is_root() {
        Err(Box::new(error_response(
            StatusCode::BAD_REQUEST,
            "a topic path is needed (the root is not a topic)",
        )))
    } else {
        Ok(())
    }
}

/// Parses an optional integer query parameter: 400 when present but not an integer.
fn int_param<T: std::str::FromStr>(
    pairs: &[(String, String)],
    key: &str,
) -> Result<Option<T>, Box<Response>> {
    match query_get(pairs, key) {
        None => Ok(None),
        Some(v) => v.parse::<T>().map(Some).map_err(|_| {
            Box::new(error_response(
                StatusCode::BAD_REQUEST,
                format!("query parameter {key:?} must be a non-negative integer"),
            ))
        }),
    }
}

/// `/topics`, `/topics/{*path}`.
pub(crate) async fn topics(State(state): State<Shared>, req: Request) -> Response {
    let pairs = query_pairs(req.uri().query());
    let caller = match native_caller(&state, &req, &pairs) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let path = match topic_path(&state, &req, "/topics") {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    match *req.method() {
        Method::GET | Method::HEAD => {
            if path.is_root() || query_get(&pairs, "list").is_some() {
                list(&state, &caller, &path, &pairs)
            } else {
                metadata(&state, &caller, &path).await
            }
        }
        Method::DELETE => {
            if let Err(resp) = require_topic(&path) {
                return *resp;
            }
            if !caller.allows(&state.accounts, &path, Modes::DELETE) {
                return denied(&caller);
            }
            match state.topics.delete(&path).await {
                Ok(existed) => {
                    tracing::info!(user = caller.name(), topic = %path, existed, "topic deleted");
                    StatusCode::NO_CONTENT.into_response()
                }
                Err(e) => topics_error(&e),
            }
        }
        _ => method_not_allowed("GET, HEAD, DELETE"),
    }
}

fn list(state: &AppState, caller: &Caller, prefix: &Path, pairs: &[(String, String)]) -> Response {
    let limit = match int_param::<usize>(pairs, "limit") {
        Ok(l) => l.unwrap_or(MAX_LIST).min(MAX_LIST),
        Err(resp) => return *resp,
    };
    let access = caller.access(&state.accounts);
    let mut visible = state
        .topics
        .list(prefix)
        .into_iter()
        .filter(|t| access.allows(t, Modes::LIST))
        .map(|t| t.to_string());
    let topics: Vec<String> = visible.by_ref().take(limit).collect();
    let truncated = visible.next().is_some();
    json_response(
        StatusCode::OK,
        json!({ "topics": topics, "truncated": truncated }).to_string(),
    )
}

async fn metadata(state: &AppState, caller: &Caller, path: &Path) -> Response {
    if !caller.allows(&state.accounts, path, Modes::READ) {
        return denied(caller);
    }
    match state.topics.info(path).await {
        Ok(Some(info)) => json_response(
            StatusCode::OK,
            json!({
                "path": info.path.to_string(),
                "epoch": info.epoch,
                "first": info.first,
                "last": info.last,
                "bytes": info.bytes,
                "retention": retention_json(&info.retention),
                "retention_override": info.overridden,
            })
            .to_string(),
        ),
        Ok(None) => error_response(StatusCode::NOT_FOUND, "no such topic"),
        Err(e) => topics_error(&e),
    }
}

fn retention_json(r: &Retention) -> Value {
    serde_json::to_value(r).unwrap_or(Value::Null)
}

/// `/events/{*path}`.
pub(crate) async fn events(State(state): State<Shared>, req: Request) -> Response {
    let pairs = query_pairs(req.uri().query());
    let caller = match native_caller(&state, &req, &pairs) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let path = match topic_path(&state, &req, "/events") {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    if let Err(resp) = require_topic(&path) {
        return *resp;
    }
    match *req.method() {
        Method::GET | Method::HEAD => read_events(&state, &caller, &path, &pairs).await,
        Method::POST => append(&state, &caller, path, &pairs, req).await,
        _ => method_not_allowed("GET, HEAD, POST"),
    }
}

async fn read_events(
    state: &AppState,
    caller: &Caller,
    path: &Path,
    pairs: &[(String, String)],
) -> Response {
    if !caller.allows(&state.accounts, path, Modes::READ) {
        return denied(caller);
    }
    let parsed = (|| {
        let from = int_param::<u64>(pairs, "from")?;
        let before = int_param::<u64>(pairs, "before")?;
        let limit = int_param::<usize>(pairs, "limit")?;
        let desc = match query_get(pairs, "order") {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(_) => {
                return Err(Box::new(error_response(
                    StatusCode::BAD_REQUEST,
                    "query parameter \"order\" must be asc or desc",
                )));
            }
        };
        Ok((from, before, limit, desc))
    })();
    let (from, before, limit, desc) = match parsed {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let limit = limit
        .unwrap_or(DEFAULT_EVENTS_LIMIT)
        .min(state.config.max_query_limit);
    let info = match state.topics.info(path).await {
        Ok(Some(i)) => i,
        Ok(None) => return error_response(StatusCode::NOT_FOUND, "no such topic"),
        Err(e) => return topics_error(&e),
    };
    let events = match (from, before) {
        (Some(from), None) => state.topics.read(path, from, limit).await,
        (None, Some(before)) => state.topics.read_before(path, before, limit).await,
        (Some(from), Some(before)) => {
            let span = usize::try_from(before.saturating_sub(from)).unwrap_or(usize::MAX);
            state.topics.read(path, from, limit.min(span)).await
        }
        (None, None) => state.topics.read_last(path, limit).await,
    };
    let mut events = match events {
        Ok(e) => e,
        Err(e) => return topics_error(&e),
    };
    if let Some(before) = before {
        events.retain(|e| e.seq < before);
    }
    if desc {
        events.reverse();
    }
    let mut body = format!(
        "{{\"path\":{},\"epoch\":{},\"first\":{},\"last\":{},\"events\":[",
        entry::json_string(&info.path.to_string()),
        info.epoch,
        info.first,
        info.last
    );
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&entry::native_event(event));
    }
    body.push_str("]}");
    json_response(StatusCode::OK, body)
}

async fn append(
    state: &AppState,
    caller: &Caller,
    path: Path,
    pairs: &[(String, String)],
    req: Request,
) -> Response {
    if !caller.allows(&state.accounts, &path, Modes::WRITE) {
        return denied(caller);
    }
    let expect_last = match int_param::<u64>(pairs, "expect_last") {
        Ok(e) => e,
        Err(resp) => return *resp,
    };
    let content_type = match req.headers().get(header::CONTENT_TYPE) {
        None => DEFAULT_CONTENT_TYPE.to_owned(),
        Some(v) => match v.to_str() {
            Ok(ct) if !ct.trim().is_empty() => ct.trim().to_owned(),
            Ok(_) => DEFAULT_CONTENT_TYPE.to_owned(),
            Err(_) => {
                return error_response(StatusCode::BAD_REQUEST, "Content-Type is not ASCII");
            }
        },
    };
    if content_type.len() > MAX_CONTENT_TYPE_LEN {
        return error_response(
            StatusCode::BAD_REQUEST,
            format!("Content-Type is longer than {MAX_CONTENT_TYPE_LEN} bytes"),
        );
    }
    let body = match herald_httpkit::read_body(req, state.config.max_event_bytes).await {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    if entry::is_json_type(&content_type) && !entry::is_valid_json(&body) {
        return error_response(
            StatusCode::BAD_REQUEST,
            "the body is not valid JSON but its Content-Type says JSON",
        );
    }
    let event = NewEvent::new(content_type.into(), entry::owned(&body));
    match state
        .topics
        .append(path.clone(), vec![event], expect_last)
        .await
    {
        Ok(a) => {
            let mut resp = json_response(
                StatusCode::CREATED,
                json!({ "epoch": a.epoch, "seq": a.last, "t": a.t_ms }).to_string(),
            );
            let location = format!("/events{path}?from={}&limit=1", a.last);
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            resp
        }
        Err(TopicsError::Conflict { expected, got }) => json_response(
            StatusCode::CONFLICT,
            json!({ "error": "conflict", "expected": expected, "got": got }).to_string(),
        ),
        Err(e) => topics_error(&e),
    }
}

/// `/retention/{*path}`.
pub(crate) async fn retention(State(state): State<Shared>, req: Request) -> Response {
    let pairs = query_pairs(req.uri().query());
    let caller = match native_caller(&state, &req, &pairs) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let path = match topic_path(&state, &req, "/retention") {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    if let Err(resp) = require_topic(&path) {
        return *resp;
    }
    let method = req.method().clone();
    if !matches!(
        method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE
    ) {
        return method_not_allowed("GET, HEAD, PUT, DELETE");
    }
    // An override replaces the operator's `[[retention]]` rules (a bucket owner could lift its
    // size limits) and every one is kept in one snapshot: administrators only, not holders of
    // `grant` on the topic (every user has that on its own bucket).
    if !caller.is_admin(&state.accounts) {
        return denied(&caller);
    }
    match method {
        Method::PUT => {
            let value = match herald_httpkit::read_json(req, MAX_RETENTION_BODY_BYTES).await {
                Ok(v) => v,
                Err(resp) => return *resp,
            };
            let retention: Retention = match serde_json::from_value(value) {
                Ok(r) => r,
                Err(e) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        format!("invalid retention: {e}"),
                    );
                }
            };
            if let Err(e) = state.topics.set_retention(&path, Some(retention)).await {
                return topics_error(&e);
            }
            tracing::info!(user = caller.name(), topic = %path, ?retention, "retention override set");
            current_retention(&state, &path)
        }
        Method::DELETE => match state.topics.set_retention(&path, None).await {
            Ok(()) => {
                tracing::info!(user = caller.name(), topic = %path, "retention override removed");
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => topics_error(&e),
        },
        _ => current_retention(&state, &path),
    }
}

fn current_retention(state: &AppState, path: &Path) -> Response {
    let (retention, overridden) = state.topics.retention(path);
    json_response(
        StatusCode::OK,
        json!({
            "path": path.to_string(),
            "retention": retention_json(&retention),
            "override": overridden,
        })
        .to_string(),
    )
}
