//! The HTTP admin API of the hpfeeds identities, served on the main `--http` listener.
//!
//! | Method | Path | Answer |
//! |---|---|---|
//! | GET | `/hpfeeds/identities` | 200 `{"identities": [{"ident","owner","pubchans","subchans"}, ..]}` (sorted by ident) |
//! | GET | `/hpfeeds/identities/{ident}` | 200 `{"ident","owner","pubchans","subchans"}`, 404 |
//! | PUT | `/hpfeeds/identities/{ident}` | body `{"secret","owner"?,"pubchans"?,"subchans"?}`: 201 created / 200 replaced, with the identity; 400 invalid |
//! | DELETE | `/hpfeeds/identities/{ident}` | 204, 404 |
//!
//! Every route is for administrators only: the session token (from `POST /sessions`) comes
//! from the `X-Session` header, else `Authorization: Bearer`. No or an invalid token is 401,
//! a valid session of a user who is not an admin is 403. Errors are `{"error": "<message>"}`.
//! Secrets are never returned.
//!
//! In the PUT body, `owner` defaults to the ident, `pubchans` and `subchans` to `[]`; an
//! `ident` field, if present, must be the ident of the path; other fields are refused (400),
//! so that a misspelled field is not silently ignored. The body is at most
//! [`MAX_BODY_BYTES`] (413 past it). The ident in the path is percent-decoded.
//!
//! A change is durable before it is answered ([`HpfeedsIdentities`] syncs it), and applies to
//! the next hpfeeds authentication at once when the broker shares the same
//! [`HpfeedsIdentities`] handle; connections already authenticated keep their session.

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use herald_auth::hpfeeds::Identity;
use herald_engine::{Accounts, HpfeedsError, HpfeedsIdentities};
use herald_httpkit::{error_response, json_response, read_body};
use serde::Deserialize;
use serde_json::{Value, json};

/// The largest PUT body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The header carrying the session token (as the IorioDB-compatible API).
const SESSION_HEADER: &str = "x-session";

#[derive(Clone)]
struct Shared {
    identities: HpfeedsIdentities,
    accounts: Accounts,
}

/// The admin routes (see the [module documentation](self)). The router has no fallback, so it
/// can be merged into another.
pub fn router(identities: HpfeedsIdentities, accounts: Accounts) -> Router {
    Router::new()
        .route("/hpfeeds/identities", get(list))
        .route(
            "/hpfeeds/identities/{ident}",
            get(show).put(put).delete(remove),
        )
        .with_state(Shared {
            identities,
            accounts,
        })
}

/// The body of `PUT /hpfeeds/identities/{ident}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    ident: Option<String>,
    secret: String,
    owner: Option<String>,
    #[serde(default)]
    pubchans: Vec<String>,
    #[serde(default)]
    subchans: Vec<String>,
}

/// The public view of an identity: everything but the secret.
fn public(id: &Identity) -> Value {
    json!({
        "ident": id.ident,
        "owner": id.owner,
        "pubchans": id.pubchans,
        "subchans": id.subchans,
    })
}

fn json(status: StatusCode, value: &Value) -> Response {
    json_response(status, value.to_string())
}

fn not_found(ident: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        format!("there is no hpfeeds identity {ident:?}"),
    )
}

/// The session token of a request: `X-Session`, else `Authorization: Bearer`.
fn token(headers: &HeaderMap) -> Option<&str> {
    let non_empty = |s: &str| !s.is_empty();
    if let Some(t) = headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| non_empty(s))
    {
        return Some(t);
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|s| non_empty(s))
}

/// The admin calling, or the 401 / 403 to answer.
fn admin(state: &Shared, headers: &HeaderMap) -> Result<String, Box<Response>> {
    let Some(token) = token(headers) else {
        return Err(Box::new(error_response(
            StatusCode::UNAUTHORIZED,
            "authentication required: send an admin session token (from POST /sessions) in \
             X-Session or Authorization: Bearer",
        )));
    };
    let user = match state.accounts.verify_session(token) {
        Ok(user) => user,
        Err(e) => {
            tracing::debug!(error = %e, "hpfeeds admin: session token refused");
            return Err(Box::new(error_response(
                StatusCode::UNAUTHORIZED,
                "invalid or expired session token",
            )));
        }
    };
    if !state.accounts.is_admin(&user) {
        return Err(Box::new(error_response(
            StatusCode::FORBIDDEN,
            format!("user {user:?} is not an admin"),
        )));
    }
    Ok(user)
}

fn failed(e: &HpfeedsError) -> Response {
    match e {
        HpfeedsError::Identity(e) => error_response(StatusCode::BAD_REQUEST, e),
        e => {
            tracing::error!(error = %e, "hpfeeds admin: change failed");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, e)
        }
    }
}

/// `GET /hpfeeds/identities`.
async fn list(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(resp) = admin(&state, &headers) {
        return *resp;
    }
    let all: Vec<Value> = state.identities.list().iter().map(public).collect();
    json(StatusCode::OK, &json!({ "identities": all }))
}

/// `GET /hpfeeds/identities/{ident}`.
async fn show(
    State(state): State<Shared>,
    Path(ident): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(resp) = admin(&state, &headers) {
        return *resp;
    }
    match state.identities.get(&ident) {
        Some(id) => json(StatusCode::OK, &public(&id)),
        None => not_found(&ident),
    }
}

/// `PUT /hpfeeds/identities/{ident}`.
async fn put(State(state): State<Shared>, Path(ident): Path<String>, req: Request) -> Response {
    let user = match admin(&state, req.headers()) {
        Ok(user) => user,
        Err(resp) => return *resp,
    };
    let body = match read_body(req, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let body: PutBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid body: {e} (expected {{\"secret\": string, \"owner\"?: string, \
                     \"pubchans\"?: [string], \"subchans\"?: [string]}})"
                ),
            );
        }
    };
    if let Some(named) = &body.ident
        && *named != ident
    {
        return error_response(
            StatusCode::BAD_REQUEST,
            format!("the body's ident {named:?} is not the path's ident {ident:?}"),
        );
    }
    let owner = body.owner.unwrap_or_else(|| ident.clone());
    let identity = match Identity::new(&ident, &body.secret, &owner, body.pubchans, body.subchans) {
        Ok(id) => id,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e),
    };
    let shown = public(&identity);
    match state.identities.put(identity).await {
        Ok(replaced) => {
            let (status, done) = if replaced.is_some() {
                (StatusCode::OK, "replaced")
            } else {
                (StatusCode::CREATED, "created")
            };
            tracing::info!(ident = ?ident, by = ?user, "hpfeeds identity {done}");
            json(status, &shown)
        }
        Err(e) => failed(&e),
    }
}

/// `DELETE /hpfeeds/identities/{ident}`.
async fn remove(
    State(state): State<Shared>,
    Path(ident): Path<String>,
    headers: HeaderMap,
) -> Response {
    let user = match admin(&state, &headers) {
        Ok(user) => user,
        Err(resp) => return *resp,
    };
    match state.identities.remove(&ident).await {
        Ok(true) => {
            tracing::info!(ident = ?ident, by = ?user, "hpfeeds identity removed");
            let mut resp = Response::default();
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp
        }
        Ok(false) => not_found(&ident),
        Err(e) => failed(&e),
    }
}
