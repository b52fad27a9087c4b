//! IorioDB-compatible event streams, users, sessions, ACLs and listeners, plus Herald's native
//! topics API, as one axum [`Router`] merged into Herald's main `--http` listener.
//!
//! This crate only translates: IorioDB's REST requests become [`herald_engine::Topics`] calls
//! (IorioDB stream `bucket/stream` is topic `/bucket/stream`), sessions, users and grants go to
//! [`herald_engine::Accounts`]. The contract followed is `seed-contracts.md` section 2 (status
//! codes, bodies, headers), with the deliberate differences listed below.
//!
//! What it is **not**: the owner of any state (the engine owns topics and accounts), nor a
//! complete router: [`router`] has no fallback, the caller merges it into one that has.
//!
//! # Layout
//! - [`router`] and [`IorioConfig`].
//! - `streams`: `/streams/...` (append, query, JSON Patch, delete, list) and `/buckets/`.
//! - `admin`: `/sessions`, `/users/`, `/access/...`, `/ping`.
//! - `listen`: `/listen` over WebSocket, server-sent events and long-polling.
//! - `native`: Herald's own `/topics/...`, `/events/...` and `/retention/...`.
//! - `entry`: how stored events are written as JSON.
//! - `auth`: session tokens, the caller's access and the `/sessions` rate limit.
//! - `reply`: error bodies and content negotiation.
//!
//! # Authentication
//! A request's session token (a JWT from `POST /sessions`) comes from the `X-Session` header,
//! else the `jwt` query parameter (the native API also accepts `Authorization: Bearer`;
//! `/listen` looks at `jwt` first, as IorioDB takes it only from there, and falls back to
//! `X-Session`). No token means the pseudo-user `anonymous`. A token that does not verify
//! (malformed, badly signed, expired, or its user deleted) gives 400 with an empty body on the
//! stream, list, ping and listen routes (as IorioDB), 401 with the `no-perm` body on
//! `/sessions`, `/users/` and `/access/...`, and 401 JSON on the native API. A refused
//! permission is 401 with `WWW-Authenticate: jwt` and
//! `{"type":"no-perm","reason":"No Permission"}`. Permissions are looked up on every request,
//! so grants and revocations apply at once (a `/listen` connection keeps the subscriptions it
//! was allowed when it made them).
//!
//! IorioDB's REST order of checks is kept: 405 (method), 400 (token), 401 (permission), 406
//! (`Accept` without JSON), 415 (request `Content-Type`), then the body (413, 400).
//!
//! # IorioDB routes
//! | method | path | needs | answer |
//! |---|---|---|---|
//! | POST | `/streams/{b}/{s}` | write | 201, `Location`, `{"meta":{"id":seq,"t":ms}}`; `application/json` only (else 415), valid JSON (else 400 `invalid-body`), at most `max_event_bytes` (else 413) |
//! | GET | `/streams/{b}/{s}?limit&from&download` | read | 200 `[{"meta":{"id","t"},"data":..}]`; `limit` defaults to 1 and is capped at `max_query_limit` |
//! | PATCH | `/streams/{b}/{s}` | read + write, and write on `{s}-$patch` | 200 `{"meta":..}`; RFC 6902 on the last event, 409 on a concurrent writer |
//! | DELETE | `/streams/{b}/{s}` | delete | 204 |
//! | GET | `/buckets/`, `/streams/{b}` | list | 200 `{"status":"ok","data":[..]}`, only what the caller may list |
//! | POST, GET | `/sessions` | - | 201 `{"ok":true,"token","username"}` / 200 `{"username"}`; rate limited per client IP |
//! | POST, PUT, GET | `/users/` | admin (PUT: own password) | 201 `{"ok":true}` / 200 `{"ok":true}` / 200 `[{"username"}]` |
//! | GET, POST | `/access/{b}/`, `/access/{b}/{s}` | grant | 200 ACL / 200 `{"ok":true}` |
//! | GET | `/ping` | - | 200 `{"pong":"herald"}` |
//! | GET | `/listen?jwt&s=b:s[:from]` | read per stream | WebSocket, SSE or long-poll (below) |
//! | POST | `/listen` | - | the reply to one listen command (bullet's COMET send side) |
//!
//! Differences from IorioDB, all on purpose:
//! - Listing (`/buckets/`, `/streams/{b}`) shows only the buckets and streams the caller may
//!   list (IorioDB lists every bucket to anyone with `list` on one).
//! - `PATCH` needs read as well as write: a patch's `test` operations would otherwise reveal the
//!   data to a writer who may not read it.
//! - `PATCH` also needs write on `{stream}-$patch`, where the raw patch is published (IorioDB
//!   does not check, so a grant on one stream let its holder write into another).
//! - The WebSocket `subscribe` command checks read permission, replying `"reason":"no-perm"`.
//! - `/listen` replays from disk: `from` delivers every retained event with `seq >= from`, then
//!   the live ones, without gap or duplicate (IorioDB replays only a small in-memory cache).
//! - `POST /access/...` accepts `username` as an alias of `role` (IorioDB's `tools/iorio.py`
//!   sends `username`).
//! - A truncated JSON body on `POST /users/` is 400 `invalid-body`, as IorioDB's
//!   `tools/resttest.py` expects.
//! - A `POST /sessions` body without string `username` and `password` is 401 `unauthorized`.
//! - A JSON Patch may have at most 256 operations, and its result at most `max_event_bytes`
//!   (413 `too-large`); `copy` cannot be used to build huge documents.
//! - `PUT /users/` for an unknown user is 400 `unknown-error`; an empty or too long password is
//!   400 `invalid-password`.
//!
//! # Events as JSON
//! An event stored with content type `application/json` is embedded as JSON (`"data": {..}`).
//! Any other content type (events written through the native API or MQTT) is embedded as a JSON
//! string (UTF-8 text as is, other bytes in base64 with `"enc":"base64"` in `meta`), with the
//! content type in `meta.ct`. An event that records who published it (an hpfeeds ident, for
//! instance) has it in `meta.origin`.
//!
//! # Listening
//! `GET /listen` picks its transport as IorioDB's bullet does: a WebSocket upgrade, else
//! server-sent events when `Accept` has `text/event-stream`, else long-polling. Each `s=` entry
//! (`bucket:stream` or `bucket:stream:from`) the caller may read is subscribed; others are
//! skipped silently. Each batch is a JSON array of entries
//! `{"meta":{"id","t","bucket","stream"},"data":..}`. Two markers tell about missing events:
//! - **gap**: `{"meta":{"id":T,"t":0,"bucket","stream","gap":{"from":F,"to":T}},"data":null}`:
//!   events `F..=T` were asked for but are no longer retained. Its `id` is `T`, so clients that
//!   resume from `id + 1` (IorioDB's `update_seqnums`) move past it.
//! - **reset**: `{"meta":{"id":0,"bucket","stream","reset":{"epoch":E}},"data":null}`: the
//!   stream was deleted and created again; numbering restarts at 1.
//!
//! Transports:
//! - **WebSocket**: each batch is one text frame. Commands (text frames)
//!   `{"cmd":"subscribe"|"unsubscribe"|"ping","bucket","stream","id"[,"from"]}` are answered
//!   `{"ok":true,"id":N,"type":..}` or `{"ok":false,"id":N,"reason":..}`, the reasons being
//!   IorioDB's plus `no-perm`, `too-many-subscriptions` and `invalid-json`.
//! - **SSE**: each batch is one event, `data: <json array>`, with an `id:` that resumes every
//!   stream: a reconnecting `EventSource` sends it back as `Last-Event-ID` and continues exactly
//!   after the last batch it received. The id is `1` followed by one `.h-e-n` group per
//!   subscribed stream, where `h` is the 64-bit FNV-1a hash of the topic path (`/b/s`), `e` its
//!   epoch (0 when not known yet) and `n` the next seqnum to deliver, all in lowercase base 36.
//!   Streams of the new request that the id does not name start as their `s=` entry says. The
//!   stream opens with an id-only event (no data) holding the starting positions, so a client
//!   dropped before its first batch still resumes without loss.
//! - **Long-poll**: held until the first batch (200 with the array) or `long_poll_timeout`
//!   (204, empty). Clients poll again from `id + 1` per stream.
//!
//! Every batch holds at most `max_batch_events` entries and about `max_batch_bytes` bytes;
//! larger deliveries are split over several frames or events (a long-poll answer sends the first
//! part: the client's next poll asks for the rest).
//!
//! # Native API
//! | method | path | needs | answer |
//! |---|---|---|---|
//! | GET | `/topics` | list (per topic) | 200 `{"topics":["/a/b",..],"truncated":false}` |
//! | GET | `/topics/{*path}` | read | 200 `{"path","epoch","first","last","bytes","retention","retention_override"}`, 404 when absent |
//! | GET | `/topics/{*path}?list` | list (per topic) | 200 the topics at or under the path, as `/topics` |
//! | DELETE | `/topics/{*path}` | delete | 204 |
//! | GET | `/events/{*path}?from&before&limit&order` | read | 200 `{"path","epoch","first","last","events":[{"seq","t","ct","data"}]}`, 404 when absent |
//! | POST | `/events/{*path}?expect_last=N` | write | 201 `{"epoch","seq","t"}`, 409 `{"error":"conflict","expected","got"}` |
//! | GET | `/retention/{*path}` | admin | 200 `{"path","retention","override"}` |
//! | PUT | `/retention/{*path}` | admin | 200 as GET; the body is a retention (`{"max_events":..,"max_bytes":..,"max_age_ms":..,"memory_only":..}`) |
//! | DELETE | `/retention/{*path}` | admin | 204; back to the configured rules |
//!
//! `/events` query: `from=S` reads `seq >= S` upwards; `before=S` reads the newest events with
//! `seq < S` (paging backwards); neither reads the newest; `limit` defaults to 100 (at most
//! `max_query_limit`); `order=desc` lists the chosen events newest first. `POST` keeps the
//! request's `Content-Type` (`application/octet-stream` when absent); a JSON content type must
//! carry valid JSON. Listings return at most `limit` topics (default and maximum 10,000) and say
//! whether more exist in `truncated`. Native errors are `{"error":"<message>"}`; a refused
//! permission is 401 (with `WWW-Authenticate: jwt`) for anonymous callers and 403 for users.
//!
//! # Deployment notes
//! - The `/sessions` rate limit is per client IP (per /64 network for IPv6), taken from axum's
//!   `ConnectInfo<SocketAddr>`:
//!   serve the router with `into_make_service_with_connect_info::<SocketAddr>()`. Without it
//!   every client shares one budget (a warning is logged once).
//! - The router carries `herald_httpkit::close_if_body_unread` (a successful POST keeps the
//!   connection alive: every handler reads the whole body before it can succeed).
//! - `/listen` WebSocket and SSE connections last until the client leaves or
//!   [`IorioConfig::shutdown`] is cancelled; cancel it when the server shuts down.
//!
//! # Example
//! ```no_run
//! # async fn run(topics: herald_engine::Topics, accounts: herald_engine::Accounts) -> std::io::Result<()> {
//! use std::net::SocketAddr;
//! let app = herald_transport_iorio::router(topics, accounts, Default::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
//! # }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::indexing_slicing))]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get};
use herald_core::PathLimits;
use herald_engine::{Accounts, Topics};
use tokio_util::sync::CancellationToken;

mod admin;
mod auth;
mod entry;
mod listen;
mod native;
mod reply;
mod streams;

/// Settings of the IorioDB-compatible API and the native topics API.
#[derive(Debug, Clone)]
pub struct IorioConfig {
    /// The largest event accepted (request body of `POST /streams/..`, `POST /events/..` and the
    /// result of a `PATCH`); larger ones get 413.
    pub max_event_bytes: usize,
    /// Limits on bucket, stream and topic names.
    pub path_limits: PathLimits,
    /// The most events one query returns (`limit` is capped to it).
    pub max_query_limit: usize,
    /// How long a long-poll `/listen` is held without events before it gets 204.
    pub long_poll_timeout: Duration,
    /// Session attempts (`POST`/`GET /sessions`) allowed per minute per client IP; 0 disables
    /// the limit.
    pub session_attempts_per_minute: u32,
    /// How many client IPs the rate limiter tracks at most; past that, new clients are refused
    /// until old entries expire (the limiter never grows without bound).
    pub rate_limit_clients: usize,
    /// The most streams one `/listen` connection may subscribe to; further ones are skipped
    /// (query) or refused (`too-many-subscriptions`).
    pub max_listen_subscriptions: usize,
    /// The most entries in one pushed batch (WebSocket frame, SSE event, long-poll answer).
    pub max_batch_events: usize,
    /// About the most bytes in one pushed batch; a single larger entry is sent alone.
    pub max_batch_bytes: usize,
    /// How long one push to a listener may take before the connection is dropped as too slow.
    pub send_timeout: Duration,
    /// How often WebSocket listeners are pinged (and SSE streams get a keep-alive comment);
    /// `None` disables it. A WebSocket peer silent for two intervals is dropped.
    pub ping_interval: Option<Duration>,
    /// The largest WebSocket message a listener may send.
    pub max_ws_message_bytes: usize,
    /// Commands per second a WebSocket listener may send (as a burst of this size refilled
    /// continuously); beyond it commands are answered `rate-limited`.
    pub ws_commands_per_second: u32,
    /// Cancelled when the server shuts down: open `/listen` connections then end (WebSocket
    /// close 1001, SSE stream end, long-poll 204) instead of holding the shutdown up.
    pub shutdown: CancellationToken,
}

impl Default for IorioConfig {
    fn default() -> Self {
        Self {
            max_event_bytes: 1024 * 1024,
            path_limits: PathLimits::default(),
            max_query_limit: 1000,
            long_poll_timeout: Duration::from_secs(60),
            session_attempts_per_minute: 10,
            rate_limit_clients: 100_000,
            max_listen_subscriptions: 256,
            max_batch_events: 1000,
            max_batch_bytes: 1024 * 1024,
            send_timeout: Duration::from_secs(30),
            ping_interval: Some(Duration::from_secs(30)),
            max_ws_message_bytes: 64 * 1024,
            ws_commands_per_second: 50,
            shutdown: CancellationToken::new(),
        }
    }
}

/// Everything the handlers share.
struct AppState {
    topics: Topics,
    accounts: Accounts,
    config: IorioConfig,
    /// The `/sessions` limiter; its lock is held only for one map update, never across await.
    session_limiter: auth::RateLimiter,
}

type Shared = Arc<AppState>;

/// Builds the router of the IorioDB-compatible API and the native topics API.
///
/// It has no fallback: merge it into a router that has one (axum refuses to merge two routers
/// that both have a fallback).
pub fn router(topics: Topics, accounts: Accounts, config: IorioConfig) -> Router {
    let session_limiter = auth::RateLimiter::new(
        config.session_attempts_per_minute,
        Duration::from_secs(60),
        config.rate_limit_clients,
    );
    let state = Arc::new(AppState {
        topics,
        accounts,
        config,
        session_limiter,
    });
    Router::new()
        .route("/ping", get(admin::ping))
        .route("/sessions", any(admin::sessions))
        .route("/sessions/", any(admin::sessions))
        .route("/users", any(admin::users))
        .route("/users/", any(admin::users))
        .route("/access/{bucket}", any(admin::access_bucket))
        .route("/access/{bucket}/", any(admin::access_bucket))
        .route("/access/{bucket}/{stream}", any(admin::access_stream))
        .route("/access/{bucket}/{stream}/", any(admin::access_stream))
        .route("/buckets", get(streams::list_buckets))
        .route("/buckets/", get(streams::list_buckets))
        .route("/streams/{bucket}", get(streams::list_streams))
        .route("/streams/{bucket}/", get(streams::list_streams))
        .route("/streams/{bucket}/{stream}", any(streams::stream))
        .route("/streams/{bucket}/{stream}/", any(streams::stream))
        .route("/listen", get(listen::listen).post(listen::command))
        .route("/topics", any(native::topics))
        .route("/topics/", any(native::topics))
        .route("/topics/{*path}", any(native::topics))
        .route("/events", any(native::events))
        .route("/events/", any(native::events))
        .route("/events/{*path}", any(native::events))
        .route("/retention", any(native::retention))
        .route("/retention/", any(native::retention))
        .route("/retention/{*path}", any(native::retention))
        .route_layer(axum::middleware::from_fn(
            herald_httpkit::close_if_body_unread,
        ))
        .with_state(state)
}

/// Entry points for the fuzz targets in `fuzz/` (`listen_params`): thin wrappers over the
/// crate's parsers of untrusted `/listen` input. This module exists only for fuzzing; it is
/// not part of the crate's API and may change at any time.
#[doc(hidden)]
pub mod fuzzing {
    use std::collections::HashMap;

    use herald_core::{Path, PathLimits};

    /// The decoded `key=value` pairs of a query string, as every handler reads them.
    pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
        crate::reply::query_pairs(raw)
    }

    /// One `/listen` `s=bucket:stream[:from]` entry: topic, bucket, stream and `from`.
    pub fn parse_listen_entry(
        value: &str,
        limits: &PathLimits,
    ) -> Option<(Path, String, String, Option<u64>)> {
        crate::listen::parse_listen_entry(value, limits).map(|(topic, bucket, stream, from)| {
            (topic, bucket.to_owned(), stream.to_owned(), from)
        })
    }

    /// An SSE `Last-Event-ID` parsed into positions by topic hash: `(epoch if known, next)`.
    pub fn parse_resume_id(id: &str) -> HashMap<u64, (Option<u64>, u64)> {
        crate::listen::parse_resume_id(id)
    }

    /// The SSE resume id of positions `(topic hash, epoch or 0, next seqnum)`.
    pub fn format_resume_id(positions: Vec<(u64, u64, u64)>) -> String {
        crate::listen::format_resume_id(positions)
    }
}
