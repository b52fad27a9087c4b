//! Icepeak's WebSocket protocols (seed-contracts 1.3 and 1.4).
//!
//! - Legacy: connect to `ws://host/<path>`; the server sends the current value of the path, then
//!   the full value after every change at, above or below it. Client messages are ignored.
//! - Reusable (`?method=reusable`): the client sends `subscribe`/`unsubscribe` messages for any
//!   number of paths and receives `update` messages.
//!
//! Both coalesce updates for slow clients (the engine's inbox keeps only the newest value per
//! path) and ping the client, dropping it when no pong arrives in time.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::SinkExt;
use herald_core::{Modes, Path};
use herald_engine::{Subscriber, Update};
use serde_json::{Value, json};
use tokio::time::{Instant, MissedTickBehavior};

use crate::{Query, Shared, auth_error_response, authorize, error_response};

/// Icepeak's close codes for the reusable protocol (seed-contracts 1.4).
mod close {
    pub(super) const TOO_LARGE: u16 = 3001;
    pub(super) const BINARY: u16 = 3002;
    pub(super) const INVALID_JSON: u16 = 3003;
    pub(super) const NOT_AN_OBJECT: u16 = 3004;
    pub(super) const UNKNOWN_TYPE: u16 = 3005;
    /// RFC 6455 "policy violation": no subscription within the deadline.
    pub(super) const NO_SUBSCRIPTION: u16 = 1008;
}

/// The reader accepts messages up to this many times `max_ws_message_bytes`, so that a message
/// over the limit is read whole and answered with close code 3001 on a clean connection (closing
/// with the rest of a message unread would make the kernel reset the connection, and the client
/// would never see the code). Past this hard cap the server stops reading at once, without
/// buffering the message: it still sends 3001, but the client may see a reset instead.
const READER_LIMIT_FACTOR: usize = 4;

/// The initial read buffer of a WebSocket connection (also the size of each read). Clients of
/// the legacy protocol send nothing but pongs; subscribe messages of the reusable one are
/// small. 256 bytes: idle subscribers are 0.75 KiB smaller than with 1 KiB; a rare large
/// message takes more reads.
const WS_READ_BUFFER_BYTES: usize = 256;

pub(crate) async fn handshake(state: Shared, parts: Parts, upgrade: WebSocketUpgrade) -> Response {
    let query = Query::parse(parts.uri.query());
    let config = &state.config;
    // tungstenite preallocates its read buffer (128 KiB by default) for every connection; a
    // small one keeps idle subscribers cheap, and it grows on demand for a large message.
    let reader_limit = config
        .max_ws_message_bytes
        .saturating_mul(READER_LIMIT_FACTOR);
    let upgrade = upgrade
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .max_message_size(reader_limit)
        .max_frame_size(reader_limit);
    match query.method.as_deref() {
        Some("reusable") => upgrade.on_upgrade(move |socket| async move {
            let _conn = herald_httpkit::ConnectionGauge::new("icepeak-ws");
            Reusable::new(state, socket).run().await;
        }),
        Some(_) => {
            let mut resp = (
                StatusCode::BAD_REQUEST,
                "Invalid 'method' query parameter value, expecting 'reusable'",
            )
                .into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            resp
        }
        None => {
            let path = match Path::parse_url(parts.uri.path(), &config.path_limits) {
                Ok(p) => p,
                Err(e) => {
                    return error_response(StatusCode::BAD_REQUEST, format!("invalid path: {e}"));
                }
            };
            if let Err(e) = authorize(config, &parts.headers, &query, &path, Modes::READ) {
                return auth_error_response(&e);
            }
            upgrade.on_upgrade(move |socket| async move {
                let _conn = herald_httpkit::ConnectionGauge::new("icepeak-ws");
                single(state, socket, path).await;
            })
        }
    }
}

/// Ping bookkeeping shared by both protocols.
struct Keepalive {
    ticker: Option<tokio::time::Interval>,
    limit: Duration,
    last_pong: Instant,
}

impl Keepalive {
    fn new(interval: Option<Duration>, pong_timeout: Duration) -> Self {
        let ticker = interval.filter(|d| !d.is_zero()).map(|d| {
            let mut t = tokio::time::interval_at(Instant::now() + d, d);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        Self {
            limit: interval.unwrap_or_default() + pong_timeout,
            ticker,
            last_pong: Instant::now(),
        }
    }

    /// Completes at the next ping time; never when pings are off.
    async fn tick(&mut self) {
        match &mut self.ticker {
            Some(t) => {
                t.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Whether the peer has been silent for too long.
    fn expired(&self) -> bool {
        self.last_pong.elapsed() > self.limit
    }
}

fn text(bytes: Bytes) -> Option<Message> {
    // The engine only ever hands out serde_json output, which is UTF-8.
    Utf8Bytes::try_from(bytes).ok().map(Message::Text)
}

async fn send_close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })))
        .await;
}

/// Whether a read failed because the frame or message is over the reader's size limit.
fn is_too_large(e: &axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error as WsError;
    std::error::Error::source(e)
        .and_then(|inner| inner.downcast_ref::<WsError>())
        .is_some_and(|inner| matches!(inner, WsError::Capacity(_)))
}

/// What the socket loop should do after an event.
enum Flow {
    Continue,
    Stop,
}

/// Handles a control frame or the end of the stream; data frames are ignored here (the legacy
/// protocol ignores them, the reusable one handles them before calling this).
fn control_frame(msg: Option<Result<Message, axum::Error>>, keepalive: &mut Keepalive) -> Flow {
    match msg {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Flow::Stop,
        Some(Ok(Message::Pong(_))) => {
            keepalive.last_pong = Instant::now();
            Flow::Continue
        }
        // tungstenite answers pings itself; data frames are ignored.
        Some(Ok(_)) => Flow::Continue,
    }
}

async fn ping(socket: &mut WebSocket, keepalive: &Keepalive) -> Flow {
    if keepalive.expired() {
        tracing::debug!("websocket client missed its pong; closing");
        return Flow::Stop;
    }
    match socket.send(Message::Ping(Bytes::new())).await {
        Ok(()) => Flow::Continue,
        Err(_) => Flow::Stop,
    }
}

/// Writes updates in one flush.
async fn send_all(
    socket: &mut WebSocket,
    updates: Vec<Update>,
    mut encode: impl FnMut(&Path, Bytes) -> Option<Message>,
) -> Flow {
    for (path, value) in updates {
        if let Some(msg) = encode(&path, value)
            && socket.feed(msg).await.is_err()
        {
            return Flow::Stop;
        }
    }
    match socket.flush().await {
        Ok(()) => Flow::Continue,
        Err(_) => Flow::Stop,
    }
}

/// The legacy protocol: one path per connection.
///
/// Its future is most of an idle subscriber's memory, so what is not waiting (subscribing
/// and the first value, sending updates, pings) is boxed, each box made in a statement of
/// its own (a temporary lives until its statement ends, awaits included).
async fn single(state: Shared, mut socket: WebSocket, path: Path) {
    let starting = Box::pin(start_single(&state, &mut socket, path));
    let Some(sub) = starting.await else {
        return;
    };
    let config = &state.config;
    let mut keepalive = Keepalive::new(config.ping_interval, config.pong_timeout);
    loop {
        let flow = tokio::select! {
            updates = sub.inbox().recv() => {
                let sending = Box::pin(send_all(&mut socket, updates, |_, v| text(v)));
                sending.await
            }
            msg = socket.recv() => control_frame(msg, &mut keepalive),
            () = keepalive.tick() => {
                let pinging = Box::pin(ping(&mut socket, &keepalive));
                pinging.await
            }
        };
        if let Flow::Stop = flow {
            break;
        }
    }
}

/// Subscribes to `path` and sends its current value; `None` when the connection is over.
async fn start_single(state: &Shared, socket: &mut WebSocket, path: Path) -> Option<Subscriber> {
    let sub = state.docs.subscriber();
    let current = match sub.subscribe(vec![path]).await {
        Ok(mut v) => v.pop().flatten(),
        Err(_) => return None,
    };
    let first = current.unwrap_or_else(|| Bytes::from_static(b"null"));
    if let Some(msg) = text(first)
        && socket.send(msg).await.is_err()
    {
        return None;
    }
    Some(sub)
}

/// The `?method=reusable` protocol.
struct Reusable {
    state: Shared,
    socket: WebSocket,
    sub: Subscriber,
    subscribed_once: bool,
    /// How the client spelled each subscribed path (`a/b`, `/a/b`, `a//b` are one path):
    /// updates and unsubscribe replies use the client's own spelling, as Icepeak does.
    names: HashMap<Path, String>,
}

impl Reusable {
    fn new(state: Shared, socket: WebSocket) -> Self {
        let sub = state.docs.subscriber();
        Self {
            state,
            socket,
            sub,
            subscribed_once: false,
            names: HashMap::new(),
        }
    }

    async fn run(mut self) {
        let config = self.state.config.clone();
        let mut keepalive = Keepalive::new(config.ping_interval, config.pong_timeout);
        let deadline = tokio::time::sleep(config.first_subscription_deadline);
        tokio::pin!(deadline);
        loop {
            let flow = tokio::select! {
                () = &mut deadline, if !self.subscribed_once => {
                    send_close(
                        &mut self.socket,
                        close::NO_SUBSCRIPTION,
                        "no subscription within the first-subscription deadline",
                    )
                    .await;
                    Flow::Stop
                }
                updates = self.sub.inbox().recv() => {
                    let names = &self.names;
                    send_all(&mut self.socket, updates, |path, value| {
                        let name = match names.get(path) {
                            Some(n) => serde_json::to_string(n),
                            None => serde_json::to_string(&path.to_slashed()),
                        }
                        .ok()?;
                        let msg = format!(
                            r#"{{"type":"update","path":{name},"value":{}}}"#,
                            String::from_utf8_lossy(&value)
                        );
                        Some(Message::Text(msg.into()))
                    })
                    .await
                }
                msg = self.socket.recv() => match msg {
                    Some(Ok(Message::Text(t))) => self.on_text(t).await,
                    Some(Ok(Message::Binary(_))) => {
                        send_close(&mut self.socket, close::BINARY, "binary frames are not supported")
                            .await;
                        Flow::Stop
                    }
                    // Over the reader's hard cap (`READER_LIMIT_FACTOR` times ours): still
                    // Icepeak's close code, on a best-effort basis.
                    Some(Err(e)) if is_too_large(&e) => {
                        send_close(&mut self.socket, close::TOO_LARGE, "message too large").await;
                        Flow::Stop
                    }
                    other => control_frame(other, &mut keepalive),
                },
                () = keepalive.tick() => ping(&mut self.socket, &keepalive).await,
            };
            if let Flow::Stop = flow {
                break;
            }
        }
    }

    async fn on_text(&mut self, t: Utf8Bytes) -> Flow {
        if t.len() > self.state.config.max_ws_message_bytes {
            send_close(&mut self.socket, close::TOO_LARGE, "message too large").await;
            return Flow::Stop;
        }
        let v: Value = match serde_json::from_str(t.as_str()) {
            Ok(v) => v,
            Err(_) => {
                send_close(&mut self.socket, close::INVALID_JSON, "invalid JSON").await;
                return Flow::Stop;
            }
        };
        let Value::Object(obj) = v else {
            send_close(
                &mut self.socket,
                close::NOT_AN_OBJECT,
                "message is not a JSON object",
            )
            .await;
            return Flow::Stop;
        };
        let reply = match obj.get("type").and_then(Value::as_str) {
            Some("subscribe") => self.subscribe(&obj).await,
            Some("unsubscribe") => self.unsubscribe(&obj).await,
            _ => {
                send_close(
                    &mut self.socket,
                    close::UNKNOWN_TYPE,
                    "missing or unknown message type",
                )
                .await;
                return Flow::Stop;
            }
        };
        match reply {
            Some(reply) => match self.socket.send(Message::Text(reply.into())).await {
                Ok(()) => Flow::Continue,
                Err(_) => Flow::Stop,
            },
            None => Flow::Stop,
        }
    }

    /// Handles a subscribe request and returns the reply to send (`None` if the engine stopped).
    async fn subscribe(&mut self, obj: &serde_json::Map<String, Value>) -> Option<String> {
        let config = &self.state.config;
        let (raw, paths) = match parse_paths(obj, config) {
            Ok(p) => p,
            Err(extra) => {
                return Some(malformed(
                    "subscribe",
                    "Subscribe request payload is malformed",
                    extra,
                ));
            }
        };
        let echo = Value::Array(raw.iter().cloned().map(Value::String).collect());
        if let Some(jwt) = &config.jwt {
            // Icepeak skips this check when no secret is configured; Herald always checks the
            // claim when auth is on (the signature is verified only when a secret is set).
            let Some(token) = obj.get("token").and_then(Value::as_str) else {
                return Some(failure(
                    401,
                    "No authorisation token provided",
                    json!({}),
                    echo,
                ));
            };
            let claims = match herald_auth::verify_now(token, jwt) {
                Ok(c) => c,
                Err(e) => {
                    let message = format!("Error while extracting claim from JWT: {e}");
                    return Some(failure(403, &message, Value::Null, echo));
                }
            };
            let denied: Vec<Value> = paths
                .iter()
                .filter(|p| !claims.access.allows(p, Modes::READ))
                .map(|p| json!(p.segments()))
                .collect();
            if !denied.is_empty() {
                return Some(failure(
                    403,
                    "Some paths are not authorised by the provided JWT claim",
                    json!({ "unauthorisedPaths": denied }),
                    echo,
                ));
            }
        }
        let values = self.sub.subscribe(paths.clone()).await.ok()?;
        self.subscribed_once = true;
        for (path, name) in paths.into_iter().zip(&raw) {
            self.names.insert(path, name.clone());
        }
        let mut out = String::from(
            r#"{"type":"subscribe","code":200,"message":"You've been successfully subscribed to the paths","extra":{},"paths":["#,
        );
        for (i, (name, value)) in raw.iter().zip(values).enumerate() {
            if i > 0 {
                out.push(',');
            }
            let value = value.unwrap_or_else(|| Bytes::from_static(b"null"));
            out.push_str(&format!(
                r#"{{"path":{},"value":{}}}"#,
                Value::String(name.clone()),
                String::from_utf8_lossy(&value)
            ));
        }
        out.push_str("]}");
        Some(out)
    }

    async fn unsubscribe(&mut self, obj: &serde_json::Map<String, Value>) -> Option<String> {
        let (_, paths) = match parse_paths(obj, &self.state.config) {
            Ok(p) => p,
            Err(extra) => {
                return Some(malformed(
                    "unsubscribe",
                    "Unsubscribe request payload is malformed",
                    extra,
                ));
            }
        };
        let removed = self.sub.unsubscribe(paths).await.ok()?;
        let removed: Vec<String> = removed
            .into_iter()
            .map(|p| self.names.remove(&p).unwrap_or_else(|| p.to_slashed()))
            .collect();
        Some(
            json!({
                "type": "unsubscribe",
                "paths": removed,
                "code": 200,
                "message": "You've been successfully unsubscribed from the paths",
                "extra": {},
            })
            .to_string(),
        )
    }
}

/// Reads the `paths` array: the raw strings (echoed back) and the parsed paths, or the parser
/// error text for a malformed request.
fn parse_paths(
    obj: &serde_json::Map<String, Value>,
    config: &crate::IcepeakConfig,
) -> Result<(Vec<String>, Vec<Path>), String> {
    let Some(Value::Array(items)) = obj.get("paths") else {
        return Err("key \"paths\" must be an array of strings".to_owned());
    };
    let mut raw = Vec::with_capacity(items.len());
    let mut paths = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(s) = item else {
            return Err("key \"paths\" must be an array of strings".to_owned());
        };
        let p = Path::parse_slashed(s, &config.path_limits)
            .map_err(|e| format!("invalid path {s:?}: {e}"))?;
        raw.push(s.clone());
        paths.push(p);
    }
    Ok((raw, paths))
}

fn malformed(kind: &str, message: &str, extra: String) -> String {
    json!({ "type": kind, "code": 400, "message": message, "extra": extra }).to_string()
}

fn failure(code: u16, message: &str, extra: Value, paths: Value) -> String {
    json!({
        "type": "subscribe",
        "code": code,
        "message": message,
        "extra": extra,
        "paths": paths,
    })
    .to_string()
}
