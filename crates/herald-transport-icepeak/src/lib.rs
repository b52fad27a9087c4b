//! The Icepeak-compatible listener: HTTP GET/PUT/DELETE on document paths and WebSocket
//! subscriptions, wire-compatible with Icepeak so its clients work unchanged.
//!
//! This crate only translates: it parses Icepeak's requests into [`herald_engine::Docs`] calls
//! and checks the caller's JWT through [`herald_auth`]; it owns no state of its own. The exact
//! contract it follows is `seed-contracts.md` section 1 (status codes, WebSocket protocols,
//! close codes, 401 bodies).
//!
//! What it is **not**: Herald's main API (that is `herald-transport-http`, which serves the same
//! tree under `/docs`), and it keeps Icepeak's quirks only where clients can observe them.
//!
//! # Layout
//! - [`router`] builds the axum [`Router`] for the listener from a [`Docs`] handle and an
//!   [`IcepeakConfig`].
//! - `http`: GET/PUT/DELETE.
//! - `ws`: the legacy single-path protocol and the `?method=reusable` multi-subscription one.
//!
//! # Example
//! ```no_run
//! # async fn run(docs: herald_engine::Docs) -> std::io::Result<()> {
//! let app = herald_transport_icepeak::router(docs, herald_transport_icepeak::IcepeakConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_auth::{AuthError, JwtConfig};
use herald_core::{Modes, Path, PathLimits};
use herald_engine::Docs;

mod http;
mod ws;

/// Settings of the Icepeak listener.
#[derive(Debug, Clone)]
pub struct IcepeakConfig {
    /// JWT checking: `None` when auth is off (`--enable-jwt-auth` not given).
    pub jwt: Option<JwtConfig>,
    /// The largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Limits on request paths.
    pub path_limits: PathLimits,
    /// How often to ping WebSocket clients (`None` disables pings).
    pub ping_interval: Option<Duration>,
    /// How long after a ping without any pong the connection is dropped.
    pub pong_timeout: Duration,
    /// How long a `?method=reusable` connection may go without a successful subscribe.
    pub first_subscription_deadline: Duration,
    /// The largest WebSocket message a client may send (Icepeak: 1,000,000 bytes, close 3001).
    pub max_ws_message_bytes: usize,
}

impl Default for IcepeakConfig {
    fn default() -> Self {
        Self {
            jwt: None,
            max_body_bytes: 10 * 1024 * 1024,
            path_limits: PathLimits::default(),
            ping_interval: Some(Duration::from_secs(30)),
            pong_timeout: Duration::from_secs(30),
            first_subscription_deadline: Duration::from_secs(1),
            max_ws_message_bytes: 1_000_000,
        }
    }
}

struct AppState {
    docs: Docs,
    config: IcepeakConfig,
}

type Shared = Arc<AppState>;

/// Builds the router of the Icepeak listener. Every path is a document path, so everything goes
/// through one fallback handler.
pub fn router(docs: Docs, config: IcepeakConfig) -> Router {
    Router::new()
        .fallback(dispatch)
        .layer(axum::middleware::from_fn(
            herald_httpkit::close_if_body_unread,
        ))
        .with_state(Arc::new(AppState { docs, config }))
}

/// Icepeak's dispatch order: WebSocket upgrades first whatever the method or path, then the
/// method check, then the JWT check, then the route.
async fn dispatch(State(state): State<Shared>, req: Request) -> Response {
    if herald_httpkit::is_websocket_upgrade(req.headers()) {
        let (mut parts, _body) = req.into_parts();
        let upgrade =
            match axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
                Ok(u) => u,
                Err(rejection) => return rejection.into_response(),
            };
        return ws::handshake(state, parts, upgrade).await;
    }
    if !is_standard_method(req.method()) {
        return json_response(StatusCode::BAD_REQUEST, "{}");
    }
    http::handle(state, req).await
}

fn is_standard_method(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET
            | Method::POST
            | Method::HEAD
            | Method::PUT
            | Method::DELETE
            | Method::TRACE
            | Method::CONNECT
            | Method::OPTIONS
            | Method::PATCH
    )
}

/// The query parameters Icepeak looks at.
#[derive(Debug, Default)]
struct Query {
    durable: bool,
    access_token: Option<String>,
    method: Option<String>,
}

impl Query {
    fn parse(raw: Option<&str>) -> Self {
        let mut q = Query::default();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = || {
                percent_encoding::percent_decode_str(&v.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            match k {
                "durable" => q.durable = true,
                "access_token" if q.access_token.is_none() => q.access_token = Some(v()),
                "method" if q.method.is_none() => q.method = Some(v()),
                _ => {}
            }
        }
        q
    }
}

/// Checks that the request's token allows `mode` on `path` (a no-op when auth is off).
fn authorize(
    config: &IcepeakConfig,
    headers: &HeaderMap,
    query: &Query,
    path: &Path,
    mode: Modes,
) -> Result<(), AuthError> {
    let Some(jwt) = &config.jwt else {
        return Ok(());
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = herald_auth::extract_token(authorization, query.access_token.as_deref())
        .ok_or(AuthError::MissingToken)?;
    let claims = herald_auth::verify_now(token, jwt)?;
    if claims.access.allows(path, mode) {
        Ok(())
    } else {
        Err(AuthError::NotAllowed)
    }
}

fn auth_error_response(e: &AuthError) -> Response {
    json_response(StatusCode::UNAUTHORIZED, e.body().to_string())
}

use herald_httpkit::{error_response, json_response};

fn empty(status: StatusCode) -> Response {
    status.into_response()
}
