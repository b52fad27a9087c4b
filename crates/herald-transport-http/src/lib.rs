//! Herald's main HTTP API (the `--http` listener): the document tree under `/docs/{path}` and a
//! health check. Later issues add event streams, sessions and listeners here.
//!
//! Every write on this API is durable before it is answered. Errors are JSON
//! (`{"error": "..."}`) with a 4xx/5xx status.
//!
//! What it is **not**: Icepeak-compatible (that is `herald-transport-icepeak`); this API is free
//! to use plain REST conventions.
//!
//! # Routes
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/health` | 200 `{"status":"ok"}` |
//! | GET | `/docs/{path}` | 200 with the JSON value, 404 when absent |
//! | PUT | `/docs/{path}` | 204 once durable; the body is the new JSON value |
//! | DELETE | `/docs/{path}` | 204 once durable |
//! | PATCH | `/docs/{path}` | 204 once durable; `application/merge-patch+json` (RFC 7396) or `application/json-patch+json` (RFC 6902) |
//!
//! # Example
//! ```no_run
//! # async fn run(docs: herald_engine::Docs) -> std::io::Result<()> {
//! let app = herald_transport_http::router(docs, herald_transport_http::HttpConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use herald_auth::JwtConfig;
use herald_core::tree::PatchError;
use herald_core::{Access, Modes, Path, PathLimits};
use herald_engine::{Docs, DocsError, Write};
use herald_httpkit::{error_response, json_response, read_json};

/// Settings of the main HTTP API.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// JWT checking of `Authorization: Bearer` tokens; `None` when auth is off.
    pub jwt: Option<JwtConfig>,
    /// The largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Limits on request paths.
    pub path_limits: PathLimits,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            jwt: None,
            max_body_bytes: 10 * 1024 * 1024,
            path_limits: PathLimits::default(),
        }
    }
}

struct AppState {
    docs: Docs,
    config: HttpConfig,
}

type Shared = Arc<AppState>;

/// Builds the router of the main API.
pub fn router(docs: Docs, config: HttpConfig) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/docs", any(doc))
        .route("/docs/", any(doc))
        .route("/docs/{*path}", any(doc))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(
            herald_httpkit::close_if_body_unread,
        ))
        .with_state(Arc::new(AppState { docs, config }))
}

async fn health() -> Response {
    json_response(StatusCode::OK, r#"{"status":"ok"}"#)
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "no such route")
}

async fn doc(State(state): State<Shared>, req: Request) -> Response {
    let config = &state.config;
    // The raw (still percent-encoded) path, so that `%2F` stays inside its segment.
    let raw = req.uri().path().strip_prefix("/docs").unwrap_or("");
    let path = match Path::parse_url(raw, &config.path_limits) {
        Ok(p) => p,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, format!("invalid path: {e}")),
    };
    let needed = match *req.method() {
        Method::GET | Method::HEAD => Modes::READ,
        Method::PUT | Method::DELETE | Method::PATCH => Modes::WRITE,
        _ => {
            let mut resp = error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            resp.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, PUT, PATCH, DELETE"),
            );
            return resp;
        }
    };
    let access = match access(config, &req) {
        Ok(a) => a,
        Err(e) => return json_response(StatusCode::UNAUTHORIZED, e.body().to_string()),
    };
    if !access.allows(&path, needed) {
        return error_response(StatusCode::FORBIDDEN, "not allowed");
    }

    let method = req.method().clone();
    let write = match method {
        Method::GET | Method::HEAD => return read(&state, path, method == Method::HEAD).await,
        Method::DELETE => Write::Delete { path },
        Method::PUT | Method::PATCH => {
            let content_type = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    v.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase()
                });
            let value = match read_json(req, config.max_body_bytes).await {
                Ok(v) => v,
                Err(resp) => return *resp,
            };
            if method == Method::PUT {
                Write::Put { path, value }
            } else {
                match content_type.as_deref() {
                    Some("application/merge-patch+json") => {
                        Write::MergePatch { path, patch: value }
                    }
                    Some("application/json-patch+json") => Write::JsonPatch { path, patch: value },
                    _ => {
                        return error_response(
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            "PATCH needs Content-Type application/merge-patch+json or \
                             application/json-patch+json",
                        );
                    }
                }
            }
        }
        _ => return error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    };
    match state.docs.write(write).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => docs_error(e),
    }
}

async fn read(state: &AppState, path: Path, head: bool) -> Response {
    match state.docs.get(path).await {
        Ok(Some(json)) => {
            let body = if head { bytes::Bytes::new() } else { json };
            json_response(StatusCode::OK, body)
        }
        Ok(None) => error_response(StatusCode::NOT_FOUND, "no value at this path"),
        Err(e) => docs_error(e),
    }
}

/// The caller's access: everything when auth is off, else what its bearer token grants.
fn access(config: &HttpConfig, req: &Request) -> Result<Access, herald_auth::AuthError> {
    let Some(jwt) = &config.jwt else {
        return Ok(Access::Full);
    };
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let query_token = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "access_token")
            .map(|(_, v)| v)
    });
    let token = herald_auth::extract_token(authorization, query_token)
        .ok_or(herald_auth::AuthError::MissingToken)?;
    Ok(herald_auth::verify_now(token, jwt)?.access)
}

fn docs_error(e: DocsError) -> Response {
    let status = match &e {
        DocsError::QueueFull | DocsError::Closed | DocsError::Store(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        DocsError::TooDeep { .. } => StatusCode::BAD_REQUEST,
        DocsError::Patch(PatchError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
        DocsError::Patch(
            PatchError::Invalid(_) | PatchError::TooDeep { .. } | PatchError::TooManyOps { .. },
        ) => StatusCode::BAD_REQUEST,
        DocsError::Patch(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_response(status, e)
}
