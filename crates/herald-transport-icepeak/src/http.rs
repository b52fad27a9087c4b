//! Icepeak's HTTP API: GET, PUT and DELETE on any path (seed-contracts 1.2).

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_auth::AuthError;
use herald_core::{Modes, Path};
use herald_engine::{DocsError, Write};

use crate::{Query, Shared, auth_error_response, authorize, empty, error_response};

pub(crate) async fn handle(state: Shared, req: Request) -> Response {
    let config = &state.config;
    let query = Query::parse(req.uri().query());
    let method = req.method().clone();
    let path = Path::parse_url(req.uri().path(), &config.path_limits);

    // The JWT check runs before routing: GET needs read, PUT/DELETE need write, anything else
    // is refused outright when auth is on.
    if config.jwt.is_some() {
        let needed = match method {
            Method::GET => Some(Modes::READ),
            Method::PUT | Method::DELETE => Some(Modes::WRITE),
            _ => None,
        };
        let Some(needed) = needed else {
            return auth_error_response(&AuthError::NotAllowed);
        };
        // A path that does not parse is checked as the root, which only a token granting the
        // whole tree passes: others learn nothing about it and get 401 like any other path.
        let check_path = path.clone().unwrap_or_default();
        if let Err(e) = authorize(config, req.headers(), &query, &check_path, needed) {
            return auth_error_response(&e);
        }
    }

    let path = match path {
        Ok(p) => p,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, format!("invalid path: {e}")),
    };

    match method {
        Method::GET => get(state, path).await,
        Method::PUT => {
            let value = match herald_httpkit::read_json(req, state.config.max_body_bytes).await {
                Ok(v) => v,
                Err(resp) => return *resp,
            };
            // Checked here as well as in the engine: without `durable` the answer is sent
            // before the engine sees the write, and a refused write must not get 202.
            if let Err(e) = state.docs.check_depth(&path, &value) {
                return docs_error(e);
            }
            submit(state, Write::Put { path, value }, query.durable).await
        }
        Method::DELETE => submit(state, Write::Delete { path }, query.durable).await,
        _ => empty(StatusCode::NOT_FOUND),
    }
}

async fn get(state: Shared, path: Path) -> Response {
    match state.docs.get(path).await {
        Ok(Some(json)) => {
            let mut resp = (StatusCode::OK, json).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            resp
        }
        Ok(None) => empty(StatusCode::NOT_FOUND),
        Err(e) => docs_error(e),
    }
}

/// Queues a write (503 when the queue is full) and answers 202, after the commit when
/// `durable` is set.
async fn submit(state: Shared, write: Write, durable: bool) -> Response {
    let pending = match state.docs.try_submit(write) {
        Ok(p) => p,
        Err(e) => return docs_error(e),
    };
    if durable && let Err(e) = pending.committed().await {
        return docs_error(e);
    }
    // Without `durable`, Icepeak answers as soon as the write is queued. The only failure left
    // after queueing is a storage failure, which the engine logs itself; dropping `pending`
    // just means nobody waits for the outcome (no task per write).
    empty(StatusCode::ACCEPTED)
}

fn docs_error(e: DocsError) -> Response {
    let status = match &e {
        DocsError::QueueFull | DocsError::Closed | DocsError::Store(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        DocsError::TooDeep { .. } => StatusCode::BAD_REQUEST,
        DocsError::Patch(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_response(status, e)
}
