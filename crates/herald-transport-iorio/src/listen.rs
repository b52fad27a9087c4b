//! `/listen` (seed contract 2.6): one route, three transports (WebSocket, server-sent events,
//! long-polling), all fed by one engine [`Listener`] per connection.
//!
//! The listener pulls from the topics (from disk when behind), so there is no per-connection
//! queue to overflow: a slow client simply reads later. What this module bounds is what it
//! holds and sends at once: batches of `max_batch_events` entries / about `max_batch_bytes`,
//! at most `max_listen_subscriptions` streams, and `send_timeout` per push, past which the
//! client is dropped as too slow.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use herald_core::{Modes, Path, PathLimits};
use herald_engine::{Delivery, Listener, Wire};
use serde_json::{Value, json};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::auth::{self, Caller, SESSION_HEADER};
use crate::reply::{self, query_get, query_pairs};
use crate::streams::read_body;
use crate::{AppState, IorioConfig, Shared, entry};

/// The version tag that starts every SSE resume id.
const RESUME_ID_VERSION: &str = "1";

/// `Last-Event-ID` values longer than this are ignored.
const MAX_RESUME_ID_BYTES: usize = 64 * 1024;

/// The largest body of a `POST /listen` command.
const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// The initial read buffer of a listen WebSocket (also the size of each read): clients send
/// only small commands, and idle listeners should be cheap.
const WS_READ_BUFFER_BYTES: usize = 256;

/// One requested stream.
#[derive(Debug, Clone)]
struct Sub {
    topic: Path,
    bucket: String,
    stream: String,
    from: Option<u64>,
}

/// The caller of a listen request: the token comes from `?jwt=` (IorioDB), else `X-Session`;
/// one that does not verify ends the request with 400 and no data.
fn listen_caller(
    state: &AppState,
    headers: &HeaderMap,
    pairs: &[(String, String)],
) -> Result<Caller, Box<Response>> {
    let token = query_get(pairs, "jwt")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .or_else(|| {
            headers
                .get(SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|t| !t.is_empty())
        });
    auth::caller(&state.accounts, token)
        .map_err(|_| Box::new(reply::empty(StatusCode::BAD_REQUEST)))
}

/// The `s=bucket:stream[:from]` entries the caller may read, deduplicated, at most
/// `max_listen_subscriptions`. Malformed and unauthorized entries are skipped silently.
fn requested(state: &AppState, caller: &Caller, pairs: &[(String, String)]) -> Vec<Sub> {
    let access = caller.access(&state.accounts);
    let mut subs: Vec<Sub> = Vec::new();
    for (_, value) in pairs.iter().filter(|(k, _)| k == "s") {
        if subs.len() >= state.config.max_listen_subscriptions {
            tracing::debug!(
                max = state.config.max_listen_subscriptions,
                "listen: too many streams requested; ignoring the rest"
            );
            break;
        }
        let Some((topic, bucket, stream, from)) =
            parse_listen_entry(value, &state.config.path_limits)
        else {
            continue;
        };
        if !access.allows(&topic, Modes::READ) {
            tracing::debug!(user = caller.name(), topic = %topic, "listen: no read permission");
            continue;
        }
        if subs.iter().any(|s| s.topic == topic) {
            continue;
        }
        subs.push(Sub {
            topic,
            bucket: bucket.to_owned(),
            stream: stream.to_owned(),
            from,
        });
    }
    subs
}

/// One `s=` entry, `bucket:stream` or `bucket:stream:from`: the topic, bucket, stream and
/// `from` (an empty `from` is none). `None` when malformed (no `:`, a `from` that is not a
/// number, a name that is not a valid segment).
pub(crate) fn parse_listen_entry<'a>(
    value: &'a str,
    limits: &PathLimits,
) -> Option<(Path, &'a str, &'a str, Option<u64>)> {
    let mut parts = value.splitn(3, ':');
    let (Some(bucket), Some(stream)) = (parts.next(), parts.next()) else {
        return None;
    };
    let from = match parts.next().map(str::trim) {
        None | Some("") => None,
        Some(f) => Some(f.parse::<u64>().ok()?),
    };
    let topic = Path::from_segments([bucket, stream], limits).ok()?;
    Some((topic, bucket, stream, from))
}

/// `GET /listen`: picks the transport as IorioDB's bullet does.
pub(crate) async fn listen(State(state): State<Shared>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let pairs = query_pairs(parts.uri.query());
    let caller = match listen_caller(&state, &parts.headers, &pairs) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let subs = requested(&state, &caller, &pairs);
    if herald_httpkit::is_websocket_upgrade(&parts.headers) {
        let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(u) => u,
            Err(rejection) => return rejection.into_response(),
        };
        let limit = state.config.max_ws_message_bytes;
        return upgrade
            .read_buffer_size(WS_READ_BUFFER_BYTES)
            .max_message_size(limit)
            .max_frame_size(limit)
            .on_upgrade(move |socket| Ws::open(state, caller, subs, socket).run());
    }
    if wants_event_stream(&parts.headers) {
        let last_event_id = parts
            .headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        return event_stream(state, caller, subs, last_event_id.as_deref());
    }
    long_poll(state, subs).await
}

fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|range| {
                range
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("text/event-stream")
            })
        })
    })
}

/// Where one subscribed stream stands, as far as the batches built so far go.
#[derive(Debug)]
struct Tracked {
    topic: Path,
    /// The pre-rendered `,"bucket":..,"stream":..` of its entries (boxed: no spare capacity,
    /// kept by every idle listener).
    names: Box<str>,
    /// FNV-1a of the topic path, its name in resume ids.
    hash: u64,
    /// The epoch `next` counts in, when known.
    epoch: Option<u64>,
    /// The next seqnum to deliver.
    next: u64,
}

/// Listen entries: rendered once per event, for every listener of its stream (their
/// `bucket` and `stream` are the topic's, the same for all of them).
static LISTEN_ENTRY: Wire = Wire::new("iorio listen entry");

/// One batch ready to push: a JSON array and, for SSE, the resume id after it.
#[derive(Debug)]
struct Batch {
    json: String,
    id: Option<String>,
}

/// A connection's subscriptions: the engine listener plus what is needed to render entries
/// and resume ids.
struct Feed {
    listener: Listener,
    /// Sorted by topic. (A sorted vector, not a hash map: a table's smallest size is four
    /// slots, and most connections follow one stream, for as long as they stay open.)
    streams: Vec<Tracked>,
}

impl Feed {
    fn new(state: &AppState) -> Self {
        Self {
            listener: state.topics.listener(),
            streams: Vec::new(),
        }
    }

    /// Where `topic` is, or would go, in `streams`.
    fn find(&self, topic: &Path) -> Result<usize, usize> {
        self.streams.binary_search_by(|t| t.topic.cmp(topic))
    }

    fn tracked_mut(&mut self, topic: &Path) -> Option<&mut Tracked> {
        let i = self.find(topic).ok()?;
        self.streams.get_mut(i)
    }

    /// Subscribes to `sub`: from `resume` (epoch if known, next seqnum) when given, else from
    /// `sub.from` (or only new events). Returns false when already subscribed.
    fn subscribe(&mut self, sub: &Sub, resume: Option<(Option<u64>, u64)>) -> bool {
        let topic = sub.topic.clone();
        let added = match resume {
            Some((Some(epoch), next)) => self.listener.resume(topic, epoch, next),
            Some((None, next)) => self.listener.subscribe(topic, Some(next)),
            None => self.listener.subscribe(topic, sub.from),
        };
        if added {
            let position = self.listener.position(&sub.topic);
            let tracked = Tracked {
                topic: sub.topic.clone(),
                names: entry::names_fragment(&sub.bucket, &sub.stream).into_boxed_str(),
                hash: fnv1a(&sub.topic),
                epoch: position.and_then(|p| p.epoch),
                next: position.map_or(1, |p| p.next),
            };
            match self.find(&sub.topic) {
                Ok(i) => {
                    if let Some(slot) = self.streams.get_mut(i) {
                        *slot = tracked;
                    }
                }
                Err(i) => {
                    if self.streams.capacity() == 0 {
                        // Most connections follow one stream: room for one to start with.
                        self.streams.reserve_exact(1);
                    }
                    self.streams.insert(i, tracked);
                }
            }
        }
        added
    }

    fn unsubscribe(&mut self, topic: &Path) -> bool {
        if let Ok(i) = self.find(topic) {
            self.streams.remove(i);
        }
        self.listener.unsubscribe(topic)
    }

    /// Renders deliveries as batches within the configured limits, keeping each stream's
    /// position so that a batch's resume id covers exactly what it and earlier batches hold.
    fn batches(
        &mut self,
        deliveries: Vec<Delivery>,
        config: &IorioConfig,
        ids: bool,
    ) -> Vec<Batch> {
        let max_events = config.max_batch_events.max(1);
        let mut out = Vec::new();
        let mut current = Vec::new();
        let mut count = 0usize;
        for delivery in deliveries {
            let (topic, epoch, next) = match &delivery {
                Delivery::Event {
                    topic,
                    epoch,
                    event,
                } => (topic, Some(*epoch), event.seq + 1),
                Delivery::Gap { topic, to, .. } => (topic, None, to.saturating_add(1)),
                Delivery::Reset { topic, epoch } => (topic, Some(*epoch), 1),
            };
            if count >= max_events {
                self.finish_batch(&mut out, &mut current, ids);
                count = 0;
            }
            let start = current.len();
            current.push(if count == 0 { b'[' } else { b',' });
            match &delivery {
                // Every listener of the stream renders the event the same way: once.
                Delivery::Event { event, .. } => {
                    event.render_into(&LISTEN_ENTRY, &mut current, |event, out| {
                        entry::push_listen_entry(out, event, &self.names(topic));
                    });
                }
                Delivery::Gap { from, to, .. } => current
                    .extend_from_slice(entry::gap_entry(&self.names(topic), *from, *to).as_bytes()),
                Delivery::Reset { epoch, .. } => current
                    .extend_from_slice(entry::reset_entry(&self.names(topic), *epoch).as_bytes()),
            }
            // With its closing `]`, the batch would be too big: the entry starts the next.
            if count > 0 && current.len() + 1 > config.max_batch_bytes {
                let mut next = Vec::with_capacity(current.len() - start);
                next.push(b'[');
                next.extend_from_slice(current.get(start + 1..).unwrap_or_default());
                current.truncate(start);
                self.finish_batch(&mut out, &mut current, ids);
                current = next;
                count = 0;
            }
            count += 1;
            if let Some(t) = self.tracked_mut(topic) {
                if epoch.is_some() {
                    t.epoch = epoch;
                }
                t.next = next;
            }
        }
        if count > 0 {
            self.finish_batch(&mut out, &mut current, ids);
        }
        out
    }

    /// Closes the batch in `current` and moves it to `out`, with the resume id of the
    /// positions so far when `ids`.
    fn finish_batch(&self, out: &mut Vec<Batch>, current: &mut Vec<u8>, ids: bool) {
        current.push(b']');
        out.push(Batch {
            json: entry::utf8(std::mem::take(current)),
            id: ids.then(|| self.resume_id()),
        });
    }

    /// The `,"bucket":..,"stream":..` of `topic`'s entries.
    fn names(&self, topic: &Path) -> std::borrow::Cow<'_, str> {
        match self.find(topic).ok().and_then(|i| self.streams.get(i)) {
            Some(t) => std::borrow::Cow::Borrowed(&t.names),
            None => {
                let (b, s) = entry::bucket_stream(topic);
                std::borrow::Cow::Owned(entry::names_fragment(&b, &s))
            }
        }
    }

    /// The SSE resume id of the current positions (see the crate docs).
    fn resume_id(&self) -> String {
        format_resume_id(
            self.streams
                .iter()
                .map(|t| (t.hash, t.epoch.unwrap_or(0), t.next))
                .collect(),
        )
    }
}

/// The SSE resume id of positions `(topic hash, epoch or 0, next seqnum)`.
pub(crate) fn format_resume_id(mut positions: Vec<(u64, u64, u64)>) -> String {
    positions.sort_unstable();
    let mut id = String::from(RESUME_ID_VERSION);
    for (hash, epoch, next) in positions {
        let _ = write!(id, ".{}-{}-{}", base36(hash), base36(epoch), base36(next));
    }
    id
}

/// Parses an SSE resume id into positions by topic hash: `(epoch if known, next)`. Anything
/// malformed gives no positions (the request's own `s=` entries apply).
pub(crate) fn parse_resume_id(id: &str) -> HashMap<u64, (Option<u64>, u64)> {
    let mut out = HashMap::new();
    if id.len() > MAX_RESUME_ID_BYTES {
        return out;
    }
    let mut groups = id.trim().split('.');
    if groups.next() != Some(RESUME_ID_VERSION) {
        return out;
    }
    for group in groups {
        let mut fields = group.split('-').map(|f| {
            (f.len() <= 13)
                .then(|| u64::from_str_radix(f, 36).ok())
                .flatten()
        });
        match (fields.next(), fields.next(), fields.next(), fields.next()) {
            (Some(Some(hash)), Some(Some(epoch)), Some(Some(next)), None) => {
                out.insert(hash, ((epoch != 0).then_some(epoch), next.max(1)));
            }
            _ => return HashMap::new(),
        }
    }
    out
}

/// 64-bit FNV-1a of a topic's path (`/b/s`).
fn fnv1a(topic: &Path) -> u64 {
    topic
        .to_string()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut buf = Vec::with_capacity(13);
    loop {
        buf.push(DIGITS.get((n % 36) as usize).copied().unwrap_or(b'0'));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    buf.reverse();
    String::from_utf8(buf).unwrap_or_default()
}

/// Long-polling: held until the first batch (200) or `long_poll_timeout` (204).
async fn long_poll(state: Shared, subs: Vec<Sub>) -> Response {
    let _conn = herald_httpkit::ConnectionGauge::new("iorio-longpoll");
    let mut feed = Feed::new(&state);
    for sub in &subs {
        feed.subscribe(sub, None);
    }
    let deadline = Instant::now() + state.config.long_poll_timeout;
    let shutdown = state.config.shutdown.clone();
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout_at(deadline, feed.listener.next()) => next,
            () = shutdown.cancelled() => return reply::empty(StatusCode::NO_CONTENT),
        };
        match next {
            Err(_) => return reply::empty(StatusCode::NO_CONTENT),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "listen: reading events failed");
                return reply::error(StatusCode::INTERNAL_SERVER_ERROR, "error", &e.to_string());
            }
            Ok(Ok(deliveries)) => {
                // The client asks for the rest (from its last id + 1) in its next poll.
                if let Some(batch) = feed
                    .batches(deliveries, &state.config, false)
                    .into_iter()
                    .next()
                {
                    return herald_httpkit::json_response(StatusCode::OK, batch.json);
                }
            }
        }
    }
}

/// Server-sent events: one event per batch, each with a resume id; an id-only event first, so
/// that a client disconnected before any event still resumes from where it started.
fn event_stream(
    state: Shared,
    caller: Caller,
    subs: Vec<Sub>,
    last_event_id: Option<&str>,
) -> Response {
    let resume = last_event_id.map(parse_resume_id).unwrap_or_default();
    let mut feed = Feed::new(&state);
    for sub in &subs {
        feed.subscribe(sub, resume.get(&fnv1a(&sub.topic)).copied());
    }
    tracing::debug!(
        user = caller.name(),
        streams = feed.streams.len(),
        resumed = !resume.is_empty(),
        "listen: event stream opened"
    );
    let mut pending = VecDeque::new();
    if !feed.streams.is_empty() {
        pending.push_back(SseEvent::default().id(feed.resume_id()));
    }
    let conn = herald_httpkit::ConnectionGauge::new("iorio-sse");
    let keep_alive = state.config.ping_interval;
    let stream = futures_util::stream::unfold(
        (feed, pending, state, conn),
        |(mut feed, mut pending, state, conn)| async move {
            loop {
                if let Some(event) = pending.pop_front() {
                    if pending.is_empty() {
                        // Its buffer is not kept between batches: an idle stream would keep it.
                        pending = VecDeque::new();
                    }
                    return Some((Ok::<_, Infallible>(event), (feed, pending, state, conn)));
                }
                let next = tokio::select! {
                    next = feed.listener.next() => next,
                    () = state.config.shutdown.cancelled() => return None,
                };
                match next {
                    Ok(deliveries) => {
                        for batch in feed.batches(deliveries, &state.config, true) {
                            let mut event = SseEvent::default();
                            if let Some(id) = batch.id {
                                event = event.id(id);
                            }
                            pending.push_back(event.data(batch.json));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "listen: reading events failed; ending the stream");
                        return None;
                    }
                }
            }
        },
    );
    let sse = Sse::new(stream);
    let mut response = match keep_alive {
        Some(interval) if !interval.is_zero() => sse
            .keep_alive(KeepAlive::new().interval(interval))
            .into_response(),
        _ => sse.into_response(),
    };
    // Hyper keeps the header map of a response it sent for the connection's next one, so for
    // as long as the stream is open: one sized for the headers it holds (two), not the
    // default one, saves about 0.4 KiB per listener.
    let mut headers = HeaderMap::with_capacity(response.headers().len());
    for (name, value) in response.headers() {
        headers.append(name.clone(), value.clone());
    }
    *response.headers_mut() = headers;
    response
}

/// A per-connection command budget: `per_second` commands, refilled continuously.
struct Budget {
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl Budget {
    fn new(per_second: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            tokens: f64::from(per_second),
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        if self.per_second <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn ok_reply(id: &Value, kind: &str) -> String {
    json!({ "ok": true, "id": id, "type": kind }).to_string()
}

fn err_reply(id: &Value, reason: &str) -> String {
    json!({ "ok": false, "id": id, "reason": reason }).to_string()
}

/// Handles one listen command and returns the reply text.
fn handle_command(
    state: &AppState,
    caller: &Caller,
    feed: &mut Feed,
    budget: &mut Budget,
    text: &str,
) -> String {
    // bullet's heartbeat.
    if text.trim() == "ping" {
        return "pong".to_owned();
    }
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return err_reply(&Value::Null, "invalid-json");
    };
    let Value::Object(obj) = value else {
        return err_reply(&Value::Null, "unknown command");
    };
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    if !budget.take() {
        return err_reply(&id, "rate-limited");
    }
    let cmd = obj.get("cmd").and_then(Value::as_str);
    let kind = match cmd {
        Some("ping") => return ok_reply(&id, "ping"),
        Some(k @ ("subscribe" | "unsubscribe")) => k,
        _ => return err_reply(&id, "unknown command"),
    };
    let bucket = obj.get("bucket").and_then(Value::as_str);
    let stream = obj.get("stream").and_then(Value::as_str);
    let (bucket, stream) = match (bucket, stream) {
        (Some(b), Some(s)) => (b, s),
        (None, None) => return err_reply(&id, "missing bucket and stream"),
        (None, _) => return err_reply(&id, "missing bucket"),
        (_, None) => return err_reply(&id, "missing stream"),
    };
    let Ok(topic) = Path::from_segments([bucket, stream], &state.config.path_limits) else {
        return err_reply(&id, "invalid-name");
    };
    if kind == "unsubscribe" {
        return if feed.unsubscribe(&topic) {
            ok_reply(&id, kind)
        } else {
            err_reply(&id, "not subscribed")
        };
    }
    // Unlike IorioDB, a command subscription needs read permission like a query one.
    if !caller.allows(&state.accounts, &topic, Modes::READ) {
        tracing::debug!(user = caller.name(), topic = %topic, "listen: subscribe refused");
        return err_reply(&id, "no-perm");
    }
    if feed.listener.is_subscribed(&topic) {
        return err_reply(&id, "already subscribed");
    }
    if feed.listener.len() >= state.config.max_listen_subscriptions {
        return err_reply(&id, "too-many-subscriptions");
    }
    let sub = Sub {
        topic,
        bucket: bucket.to_owned(),
        stream: stream.to_owned(),
        from: obj.get("from").and_then(Value::as_u64),
    };
    if feed.subscribe(&sub, None) {
        ok_reply(&id, kind)
    } else {
        err_reply(&id, "already subscribed")
    }
}

/// `POST /listen`: bullet's COMET send side. The command runs against a fresh connection state
/// (there is no connection to keep), and the reply is the answer, with status 200.
pub(crate) async fn command(State(state): State<Shared>, req: Request) -> Response {
    let pairs = query_pairs(req.uri().query());
    let caller = match listen_caller(&state, req.headers(), &pairs) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let body = match read_body(req, MAX_COMMAND_BYTES).await {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let text = String::from_utf8_lossy(&body);
    let mut feed = Feed::new(&state);
    let mut budget = Budget::new(0);
    let reply = handle_command(&state, &caller, &mut feed, &mut budget, &text);
    herald_httpkit::json_response(StatusCode::OK, reply)
}

/// Sends one message, giving up after `timeout`; false when the connection is done.
async fn send(socket: &mut WebSocket, msg: Message, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, socket.send(msg)).await,
        Ok(Ok(()))
    )
}

/// Completes at the next ping time; never when pings are off.
async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Whether a listen WebSocket goes on.
enum Flow {
    Continue,
    Stop,
}

impl Flow {
    fn from_sent(sent: bool) -> Self {
        if sent { Self::Continue } else { Self::Stop }
    }
}

/// A listen WebSocket: what it keeps for as long as it is open.
///
/// [`Ws::run`]'s future is most of an idle listener's memory (it is the task of the
/// connection), so it only waits: subscribing is done before (synchronously, in
/// [`Ws::open`]), and sending batches, command replies, pings and the close frame are boxed,
/// each box made in a statement of its own (a temporary lives until the end of its
/// statement, awaits included, so `Box::pin(f).await` would still size the loop for `f`).
/// The connection itself is boxed and [`Ws::run`] takes the box: an `async fn` keeps an
/// argument taken by value twice in its future (the argument and the local it is moved
/// into), which for this struct was 2,032 bytes of future instead of 576 plus the box.
struct Ws {
    state: Shared,
    caller: Caller,
    socket: WebSocket,
    feed: Feed,
    budget: Budget,
    /// The ping timer; `None` when pings are off.
    ticker: Option<Interval>,
    /// When the client last sent anything.
    last_seen: Instant,
    _conn: herald_httpkit::ConnectionGauge,
}

impl Ws {
    /// Subscribes to `subs` (which are not kept).
    fn open(state: Shared, caller: Caller, subs: Vec<Sub>, socket: WebSocket) -> Box<Self> {
        let conn = herald_httpkit::ConnectionGauge::new("iorio-ws");
        let mut feed = Feed::new(&state);
        for sub in &subs {
            feed.subscribe(sub, None);
        }
        tracing::debug!(
            user = caller.name(),
            streams = feed.streams.len(),
            "listen: websocket opened"
        );
        let budget = Budget::new(state.config.ws_commands_per_second);
        let ticker = state
            .config
            .ping_interval
            .filter(|d| !d.is_zero())
            .map(|d| {
                let mut t = tokio::time::interval_at(Instant::now() + d, d);
                t.set_missed_tick_behavior(MissedTickBehavior::Delay);
                t
            });
        Box::new(Self {
            state,
            caller,
            socket,
            feed,
            budget,
            ticker,
            last_seen: Instant::now(),
            _conn: conn,
        })
    }

    /// The WebSocket transport: batches out as text frames, commands in.
    async fn run(mut self: Box<Self>) {
        loop {
            let flow = tokio::select! {
                deliveries = self.feed.listener.next() => {
                    let deliveries = match deliveries {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::warn!(error = %e, "listen: reading events failed; closing");
                            return;
                        }
                    };
                    let sending = Box::pin(self.deliver(deliveries));
                    let flow = sending.await;
                    // One turn of the scheduler before the next pull: events published
                    // meanwhile (the rest of a fan-out) join the next frame rather than each
                    // costing a write of its own.
                    tokio::task::yield_now().await;
                    flow
                }
                msg = self.socket.recv() => {
                    self.last_seen = Instant::now();
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
                        Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    };
                    let replying = Box::pin(self.command(text));
                    replying.await
                }
                () = self.state.config.shutdown.cancelled() => {
                    let closing = Box::pin(self.close());
                    closing.await;
                    Flow::Stop
                }
                () = tick(&mut self.ticker) => {
                    let pinging = Box::pin(self.ping());
                    pinging.await
                }
            };
            if let Flow::Stop = flow {
                return;
            }
        }
    }

    /// Sends `deliveries` as batches.
    async fn deliver(&mut self, deliveries: Vec<Delivery>) -> Flow {
        let config = &self.state.config;
        for batch in self.feed.batches(deliveries, config, false) {
            let msg = Message::Text(batch.json.into());
            if !send(&mut self.socket, msg, config.send_timeout).await {
                tracing::debug!("listen: websocket client gone or too slow");
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// Runs one command and sends the reply.
    async fn command(&mut self, text: String) -> Flow {
        let reply = handle_command(
            &self.state,
            &self.caller,
            &mut self.feed,
            &mut self.budget,
            &text,
        );
        let msg = Message::Text(reply.into());
        Flow::from_sent(send(&mut self.socket, msg, self.state.config.send_timeout).await)
    }

    /// Pings the client, or gives up on it when it has been silent for two ping intervals.
    async fn ping(&mut self) -> Flow {
        let limit = self
            .ticker
            .as_ref()
            .map(Interval::period)
            .unwrap_or_default()
            * 2;
        if self.last_seen.elapsed() > limit {
            tracing::debug!("listen: websocket client silent for too long; closing");
            return Flow::Stop;
        }
        let msg = Message::Ping(bytes::Bytes::new());
        Flow::from_sent(send(&mut self.socket, msg, self.state.config.send_timeout).await)
    }

    /// Tells the client that the server is shutting down.
    async fn close(&mut self) {
        let close = Message::Close(Some(axum::extract::ws::CloseFrame {
            code: 1001,
            reason: "server shutting down".into(),
        }));
        let _ = send(&mut self.socket, close, self.state.config.send_timeout).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_round_trips() {
        for n in [0, 1, 35, 36, 1_700_000_000_000, u64::MAX] {
            assert_eq!(u64::from_str_radix(&base36(n), 36).unwrap(), n);
        }
    }

    #[test]
    fn resume_ids_parse() {
        let parsed = parse_resume_id("1.a-0-5.b-c-1");
        assert_eq!(parsed.get(&10), Some(&(None, 5)));
        assert_eq!(parsed.get(&11), Some(&(Some(12), 1)));
        assert!(parse_resume_id("2.a-0-5").is_empty());
        assert!(parse_resume_id("1.a-0").is_empty());
        assert!(parse_resume_id("1.a-0-5-6").is_empty());
        assert!(parse_resume_id("1.zzzzzzzzzzzzzzzzzz-0-5").is_empty());
        assert!(parse_resume_id("garbage").is_empty());
        assert!(parse_resume_id("1").is_empty());
    }

    #[test]
    fn event_stream_detection() {
        let mut h = HeaderMap::new();
        assert!(!wants_event_stream(&h));
        h.insert(
            header::ACCEPT,
            "text/html, text/event-stream;q=0.9".parse().unwrap(),
        );
        assert!(wants_event_stream(&h));
    }
}
