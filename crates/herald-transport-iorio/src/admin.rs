//! IorioDB's sessions, users, ACL and ping routes (seed contract 2.2, 2.5).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use herald_auth::{Permission, Resource, UsersError};
use herald_core::Modes;
use herald_engine::AccountsError;
use serde_json::{Map, Value, json};

use crate::auth::{self, Caller, TokenSources};
use crate::reply::{self, query_get, query_pairs};
use crate::streams::{read_body, stream_caller};
use crate::{AppState, Shared};

/// The largest body accepted on `/sessions`, `/users/` and `/access/...`.
const MAX_ADMIN_BODY_BYTES: usize = 64 * 1024;

fn method_not_allowed(allow: &'static str) -> Response {
    let mut resp = reply::empty(StatusCode::METHOD_NOT_ALLOWED);
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// The caller of a user or ACL request: 401 `no-perm` when the token does not verify.
fn admin_caller(state: &AppState, req: &Request) -> Result<Caller, Box<Response>> {
    let pairs = query_pairs(req.uri().query());
    let token = auth::token(req.headers(), query_get(&pairs, "jwt"), TokenSources::Iorio);
    auth::caller(&state.accounts, token).map_err(|_| Box::new(reply::no_perm()))
}

/// Reads a JSON object body: 415 without `application/json`, 413 over the limit, 400
/// `invalid-body` when it is not a JSON object.
async fn json_object(req: Request) -> Result<Map<String, Value>, Box<Response>> {
    if !reply::has_content_type(req.headers(), "application/json") {
        return Err(Box::new(reply::empty(StatusCode::UNSUPPORTED_MEDIA_TYPE)));
    }
    let body = read_body(req, MAX_ADMIN_BODY_BYTES).await?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(Box::new(reply::invalid_body())),
    }
}

/// A field's value, `None` when missing or `null`.
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

/// `GET /ping`.
pub(crate) async fn ping(State(state): State<Shared>, req: Request) -> Response {
    let pairs = query_pairs(req.uri().query());
    if let Err(resp) = stream_caller(&state, req.headers(), &pairs) {
        return *resp;
    }
    if let Err(resp) = reply::check_accept(req.headers()) {
        return *resp;
    }
    reply::json(StatusCode::OK, &json!({ "pong": "herald" }))
}

/// `POST /sessions` (log in) and `GET /sessions` (who am I), rate limited per client IP.
pub(crate) async fn sessions(State(state): State<Shared>, req: Request) -> Response {
    let method = req.method().clone();
    if method != Method::POST && method != Method::GET {
        return method_not_allowed("GET, POST");
    }
    let ip = auth::client_ip(req.extensions());
    if !state.session_limiter.allow(ip) {
        tracing::info!(%ip, "session attempts rate limited");
        return reply::rate_limited();
    }
    if method == Method::GET {
        let caller = match admin_caller(&state, &req) {
            Ok(c) => c,
            Err(resp) => return *resp,
        };
        if let Err(resp) = reply::check_accept(req.headers()) {
            return *resp;
        }
        return reply::json(StatusCode::OK, &json!({ "username": caller.name() }));
    }
    if let Err(resp) = reply::check_accept(req.headers()) {
        return *resp;
    }
    let obj = match json_object(req).await {
        Ok(o) => o,
        Err(resp) => return *resp,
    };
    let (Some(Value::String(username)), Some(Value::String(password))) =
        (field(&obj, "username"), field(&obj, "password"))
    else {
        return reply::unauthorized();
    };
    match state.accounts.login(username, password).await {
        Ok(Some(token)) => {
            tracing::info!(user = ?username, %ip, "session opened");
            let mut resp = reply::json(
                StatusCode::CREATED,
                &json!({ "ok": true, "token": token, "username": username }),
            );
            resp.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/session"));
            resp
        }
        Ok(None) => {
            tracing::info!(user = ?username, %ip, "login failed");
            reply::unauthorized()
        }
        Err(e) => {
            tracing::warn!(error = %e, "login could not be checked");
            reply::error(StatusCode::INTERNAL_SERVER_ERROR, "error", &e.to_string())
        }
    }
}

/// The username and password of a `/users/` body, with IorioDB's 400 codes.
fn user_fields(obj: &Map<String, Value>) -> Result<(&str, &str), Box<Response>> {
    let bad =
        |code: &str, reason: &str| Box::new(reply::error(StatusCode::BAD_REQUEST, code, reason));
    match (field(obj, "username"), field(obj, "password")) {
        (None, None) => Err(bad("no-user-and-pass", "No username and password fields")),
        (None, _) => Err(bad("no-user", "No username field")),
        (_, None) => Err(bad("no-pass", "No password field")),
        (Some(Value::String(u)), Some(Value::String(p))) => Ok((u.as_str(), p.as_str())),
        (Some(Value::String(_)), Some(_)) => Err(Box::new(reply::invalid_body())),
        (Some(_), _) => Err(bad("illegal-username", "Illegal Username")),
    }
}

fn user_error(e: &AccountsError) -> Response {
    let bad = |code: &str, reason: &str| reply::error(StatusCode::BAD_REQUEST, code, reason);
    match e {
        AccountsError::Users(UsersError::UserExists(_)) => {
            bad("user-exists", "User already exists")
        }
        AccountsError::Users(UsersError::IllegalUsername(_)) => {
            bad("illegal-username", "Illegal Username")
        }
        AccountsError::Users(UsersError::UnknownUser(_)) => bad("unknown-error", "Unknown user"),
        AccountsError::Users(e @ (UsersError::EmptyPassword | UsersError::PasswordTooLong)) => {
            bad("invalid-password", &e.to_string())
        }
        other => {
            tracing::warn!(error = %other, "user change failed");
            bad("unknown-error", "Unknown Error")
        }
    }
}

/// `POST /users/` (create), `PUT /users/` (change a password), `GET /users/` (list).
pub(crate) async fn users(State(state): State<Shared>, req: Request) -> Response {
    let method = req.method().clone();
    if !matches!(method, Method::POST | Method::PUT | Method::GET) {
        return method_not_allowed("GET, POST, PUT");
    }
    let caller = match admin_caller(&state, &req) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let admin = caller.is_admin(&state.accounts);
    // Everything but changing one's own password needs admin; PUT is checked once the body
    // names the user.
    if (method != Method::PUT && !admin) || (method == Method::PUT && caller.user.is_none()) {
        return reply::no_perm();
    }
    if let Err(resp) = reply::check_accept(req.headers()) {
        return *resp;
    }
    if method == Method::GET {
        let users: Vec<Value> = state
            .accounts
            .user_names()
            .into_iter()
            .map(|u| json!({ "username": u }))
            .collect();
        return reply::json(StatusCode::OK, &Value::Array(users));
    }
    let obj = match json_object(req).await {
        Ok(o) => o,
        Err(resp) => return *resp,
    };
    let (username, password) = match user_fields(&obj) {
        Ok(f) => f,
        Err(resp) => return *resp,
    };
    if method == Method::POST {
        match state.accounts.add_user(username, password, false).await {
            Ok(()) => {
                tracing::info!(by = caller.name(), user = %username, "user created");
                let mut resp = reply::json(StatusCode::CREATED, &json!({ "ok": true }));
                let location = format!("/users/{}", reply::encode_segment(username));
                reply::set_header(&mut resp, header::LOCATION, &location);
                resp
            }
            Err(e) => user_error(&e),
        }
    } else {
        if !admin && caller.user.as_deref() != Some(username) {
            return reply::no_perm();
        }
        match state.accounts.set_password(username, password).await {
            Ok(()) => {
                tracing::info!(by = caller.name(), user = %username, "password changed");
                reply::json(StatusCode::OK, &json!({ "ok": true }))
            }
            Err(e) => user_error(&e),
        }
    }
}

/// `GET`/`POST /access/{bucket}/`.
pub(crate) async fn access_bucket(
    State(state): State<Shared>,
    bucket: Result<UrlPath<String>, PathRejection>,
    req: Request,
) -> Response {
    match bucket {
        Ok(UrlPath(bucket)) => access(&state, bucket, None, req).await,
        Err(e) => reply::invalid_name(e.body_text()),
    }
}

/// `GET`/`POST /access/{bucket}/{stream}`.
pub(crate) async fn access_stream(
    State(state): State<Shared>,
    names: Result<UrlPath<(String, String)>, PathRejection>,
    req: Request,
) -> Response {
    match names {
        Ok(UrlPath((bucket, stream))) => access(&state, bucket, Some(stream), req).await,
        Err(e) => reply::invalid_name(e.body_text()),
    }
}

fn invalid_field(name: &str, value: Value) -> Response {
    reply::json(
        StatusCode::BAD_REQUEST,
        &json!({ "type": "invalid-field", "field": name, "value": value }),
    )
}

async fn access(
    state: &AppState,
    bucket: String,
    stream: Option<String>,
    req: Request,
) -> Response {
    let method = req.method().clone();
    if method != Method::GET && method != Method::POST {
        return method_not_allowed("GET, POST");
    }
    let caller = match admin_caller(state, &req) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let resource = match Resource::new(&bucket, stream.as_deref()) {
        Ok(r) => r,
        Err(e) => return reply::invalid_name(e),
    };
    let path = resource.path();
    // IorioDB's `grant` permission on the bucket or stream.
    if !caller.allows(&state.accounts, &path, Modes::ADMIN) {
        return reply::no_perm();
    }
    if let Err(resp) = reply::check_accept(req.headers()) {
        return *resp;
    }
    if method == Method::GET {
        let acl = state.accounts.acl(&resource);
        let entries = |roles: Vec<(String, Vec<Permission>)>| -> Vec<Value> {
            roles
                .into_iter()
                .map(|(name, perms)| {
                    let grants: Vec<&str> = perms.iter().map(|p| p.as_str()).collect();
                    json!({ "name": name, "grants": grants })
                })
                .collect()
        };
        return reply::json(
            StatusCode::OK,
            &json!({ "users": entries(acl.users), "groups": entries(acl.groups) }),
        );
    }
    let obj = match json_object(req).await {
        Ok(o) => o,
        Err(resp) => return *resp,
    };
    let Some(action) = field(&obj, "action") else {
        return invalid_field("action", Value::Null);
    };
    // `username` is what IorioDB's own tools/iorio.py sends.
    let Some(role) = field(&obj, "role").or_else(|| field(&obj, "username")) else {
        return invalid_field("role", Value::Null);
    };
    let Value::String(role) = role else {
        return invalid_field("role", role.clone());
    };
    let permission = match field(&obj, "permission") {
        Some(Value::String(p)) => match Permission::parse(p) {
            Some(p) => p,
            None => return invalid_field("permission", Value::String(p.clone())),
        },
        Some(other) => return invalid_field("permission", other.clone()),
        None => return invalid_field("permission", Value::Null),
    };
    let grant = match action.as_str() {
        Some("grant") => true,
        Some("revoke") => false,
        _ => return invalid_field("action", action.clone()),
    };
    // Making someone an administrator takes an administrator.
    if permission == Permission::AdminUsers && !caller.is_admin(&state.accounts) {
        return reply::no_perm();
    }
    let result = if grant {
        state.accounts.grant(role, &resource, permission).await
    } else {
        state.accounts.revoke(role, &resource, permission).await
    };
    match result {
        Ok(()) => {
            tracing::info!(
                by = caller.name(),
                role = %role,
                permission = permission.as_str(),
                resource = %path,
                grant,
                "access changed"
            );
            reply::json(StatusCode::OK, &json!({ "ok": true }))
        }
        Err(e) => {
            tracing::debug!(error = %e, "access change refused");
            reply::error(StatusCode::BAD_REQUEST, "error", &e.to_string())
        }
    }
}
