//! One MQTT connection: CONNECT and authentication, then the packet loop.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use herald_core::{Access, Modes, Path};
use herald_engine::{Delivery, Event, LastTopic, NewEvent, PendingAppend, TopicsError};
use herald_mqtt_codec::{
    Ack, ConnAck, Connect, DecodeError, Decoder, Disconnect, Packet, Properties, PropertyValues,
    Protocol, Publish, QoS, SubAck, SubOptions, Subscribe, UnsubAck, Unsubscribe, Will, encode,
    encode_plain_publish, encoded_len, parse_shared, plain_publish_len, reason, valid_topic_filter,
    valid_topic_name,
};
use metrics::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::attrs::MessageAttrs;
use crate::broker::{Inner, Outgoing, PublishError, PublishFuture, Publishing, now_ms};
use crate::names::{dollar_rule_allows, filter_pattern, topic_name, topic_path};
use crate::session::{Claim, OutState, PendingWill, Session, Subscription, next_shared};
use crate::shared::SharedDelivery;

/// How long a new connection waits for the one it takes a session over from.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);
/// Longest a closing connection waits to flush what it still has to send.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Reads packets; cancel-safe (bytes read stay in `buf`).
struct Reader<S> {
    rd: ReadHalf<S>,
    buf: BytesMut,
    decoder: Decoder,
    /// How much to read at once: doubled while reads fill it, halved while they leave most
    /// of it empty.
    room: u32,
    /// Whether the buffer may hold whole packets not decoded yet: the next
    /// [`Reader::fill`] returns at once.
    pending: bool,
    /// PUBLISH packets handled and not yet counted in `herald_mqtt_publish_received_total`
    /// (see [`Outbox::uncounted`]).
    uncounted: u32,
    /// The size of the allocation `buf` reads into, as its capacity was when it was made (see
    /// `read`): what a slice of it, a decoded payload, keeps alive (see
    /// [`NewEvent::own_data_if_pinning`]).
    allocation: u32,
}

/// The least a read asks for (an idle connection's buffer).
const MIN_READ_ROOM: u32 = 64;
/// The most a read asks for.
const MAX_READ_ROOM: u32 = 64 * 1024;

impl<S: AsyncRead> Reader<S> {
    /// The next packet; `Ok(None)` at end of stream.
    async fn next(&mut self) -> Result<Option<Packet>, ReadError> {
        loop {
            if let Some(p) = self
                .decoder
                .decode(&mut self.buf)
                .map_err(ReadError::Decode)?
            {
                return Ok(Some(p));
            }
            if !self.read().await.map_err(ReadError::Io)? {
                return Ok(None);
            }
        }
    }

    /// Makes the buffer worth decoding: returns at once if it may hold whole packets still
    /// (`pending`), else reads once. `Ok(false)` at end of stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        if std::mem::take(&mut self.pending) {
            return Ok(true);
        }
        self.read().await
    }

    /// Reads once into the buffer; `Ok(false)` at end of stream.
    async fn read(&mut self) -> std::io::Result<bool> {
        // Small while idle (most connections are); a packet larger than what is buffered
        // makes the buffer grow as its bytes arrive, and a busy publisher gets larger reads.
        let room = if self.buf.is_empty() {
            self.room as usize
        } else {
            (self.room as usize).max(4096)
        };
        let before = self.buf.capacity();
        if self.buf.is_empty() && self.buf.capacity() > room * 4 {
            // Quiet again: a small buffer (a fresh one: `reserve` would come back to the size
            // this one started with).
            self.buf = BytesMut::with_capacity(room);
        } else {
            self.buf.reserve(room);
        }
        if self.buf.capacity() != before {
            // A new allocation, or the old one reclaimed: its capacity is all of it. (When
            // bytes grows a buffer nobody else holds in place, for a packet larger than it,
            // the capacity leaves out the consumed bytes before the data, and the bound of
            // `NewEvent::own_data_if_pinning` is looser by that much.)
            self.allocation = u32::try_from(self.buf.capacity()).unwrap_or(u32::MAX);
        }
        match self.rd.read_buf(&mut self.buf).await? {
            0 => return Ok(false),
            n if n >= room => self.room = (self.room * 2).min(MAX_READ_ROOM),
            n if n < room / 4 => self.room = (self.room / 2).max(MIN_READ_ROOM),
            _ => {}
        }
        Ok(true)
    }
}

#[derive(Debug)]
enum ReadError {
    Decode(DecodeError),
    Io(std::io::Error),
}

/// The sending side: packets are encoded straight into one buffer, which the connection's
/// packet loop writes whenever the socket takes more (every write sends all that is queued).
/// One task per connection, no channel, no allocation per packet.
struct Outbox<S> {
    wr: WriteHalf<S>,
    buf: BytesMut,
    protocol: Protocol,
    /// The client's Maximum Packet Size.
    max_packet: usize,
    /// PUBLISH packets queued in `buf` and not yet counted in
    /// `herald_mqtt_publish_sent_total`: counted once per write, not once per packet. Every
    /// connection adding to the one shared counter for every delivery was 9 % of the server's
    /// samples in 1 -> 1,000 fan-out with metrics on.
    uncounted: u32,
}

/// Queued output worth a write before anything else is done.
const WRITE_EAGER: usize = 16 * 1024;

/// Whether a connection's pending deliveries wait for one turn of the scheduler before they are
/// written.
///
/// One message fanned out to many subscribers wakes every subscriber's connection; written at
/// once, each message is one small write (a system call and a loopback segment) per subscriber.
/// Yielding once before the write lets the messages published meanwhile join it. Measured on
/// MQTT 1 → 100 memory-only at half of the maximum rate (`herald-bench mqtt-fanout --rate`,
/// five runs per build, builds alternating): p99 3.45–4.28 ms without, 2.95–3.48 ms with. At
/// most one turn between two writes, so a steady stream cannot hold output back. Only for
/// deliveries: yielding before every write did as well for fan-out but raised the p99 of QoS 1
/// PUBACKs from 1.8–2.0 ms to 3.5 ms, and answers to the client's own packets (PUBACK, SUBACK,
/// PINGRESP) are what the client waits for.
#[derive(Debug, Default)]
struct Deferral {
    /// Deliveries were queued since the last write.
    delivered: bool,
    /// The connection already yielded since the last write.
    yielded: bool,
}

impl Deferral {
    fn delivered(&mut self) {
        self.delivered = true;
    }

    fn wrote(&mut self) {
        *self = Self::default();
    }

    /// Whether to yield now, with `queued` bytes of output waiting: once after deliveries, and
    /// not when the output is large enough to be written at once anyway.
    fn due(&mut self, queued: usize) -> bool {
        if self.delivered && !self.yielded && queued > 0 && queued < WRITE_EAGER {
            self.yielded = true;
            return true;
        }
        false
    }
}

/// Above this, an emptied output buffer is given back rather than kept for the next burst.
const KEEP_OUT_BUFFER: usize = 64 * 1024;

impl<S: AsyncWrite> Outbox<S> {
    fn send(&mut self, packet: &Packet) {
        encode(packet, self.protocol, &mut self.buf);
    }

    /// Notes a PUBLISH written into `buf` (for the metric, counted at the next write).
    fn count_publish(&mut self) {
        self.uncounted = self.uncounted.saturating_add(1);
    }

    /// Adds the PUBLISH packets queued since the last call to `sent`.
    fn report(&mut self, sent: &Counter) {
        if self.uncounted > 0 {
            sent.increment(u64::from(std::mem::take(&mut self.uncounted)));
        }
    }

    fn queued(&self) -> usize {
        self.buf.len()
    }

    /// Writes what the socket takes of the buffer. Cancel-safe: bytes leave the buffer only
    /// once written.
    async fn write_some(&mut self, sent: &Counter) -> std::io::Result<()> {
        self.report(sent);
        let n = self.wr.write(&self.buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes::Buf::advance(&mut self.buf, n);
        if self.buf.is_empty() && self.buf.capacity() > KEEP_OUT_BUFFER {
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    /// Writes everything still queued (at most [`FLUSH_WAIT`]) and closes the write side.
    async fn close(&mut self, sent: &Counter) {
        self.report(sent);
        let _ = tokio::time::timeout(FLUSH_WAIT, async {
            let _ = self.wr.write_all(&self.buf).await;
            let _ = self.wr.shutdown().await;
        })
        .await;
        self.buf = BytesMut::new();
    }
}

/// Why the packet loop ended.
enum End {
    /// DISCONNECT from the client; `will` says whether the will is still sent (MQTT 5 reason
    /// 0x04).
    Disconnect { will: bool },
    /// The connection broke or timed out, or the client broke the protocol: the will is sent.
    Abnormal,
}

/// The outcome of the oldest pending append of an incoming publish, once known; `None` when
/// none is pending. Cancel-safe: it is taken off the queue only once done.
async fn next_ack(acks: &mut VecDeque<AckFuture>) -> Option<(u16, QoS, Result<(), PublishError>)> {
    let outcome = acks.front_mut()?.await;
    acks.pop_front();
    Some(outcome)
}

/// What [`Conn::dispatch`] leaves to do.
enum Next<'a> {
    /// Handled; `Some` ends the connection.
    Done(Option<End>),
    /// To be awaited; `Some` ends the connection.
    Wait(Pin<Box<dyn Future<Output = Option<End>> + Send + 'a>>),
}

type AckFuture = Pin<Box<dyn Future<Output = (u16, QoS, Result<(), PublishError>)> + Send>>;

struct Conn<S> {
    inner: Arc<Inner>,
    reader: Reader<S>,
    out: Outbox<S>,
    protocol: Protocol,
    client_id: Arc<str>,
    access: Access,
    session: Box<Session>,
    /// Appends of incoming QoS 1 and 2 publishes, acknowledged in order once durable.
    /// (A queue polled at its front, not a `FuturesOrdered`, which allocates its ready-queue
    /// up front: this is per connection, and the answers go out in order anyway.)
    acks: VecDeque<AckFuture>,
    /// Incoming QoS 1 publishes being appended (their ids may not be reused meanwhile).
    incoming_qos1: std::collections::HashSet<u16>,
    /// Ordered maps here and below: empty, they take half the room of a hash map, and they
    /// are rarely used.
    aliases: BTreeMap<u16, String>,
    /// The client's Receive Maximum, capped by the server's.
    window: usize,
    /// Boxed: most connections have none, and a will is large (its properties).
    will: Option<Box<Will>>,
    keep_alive: Option<Duration>,
    /// Whether the client accepts reason strings on acknowledgements (MQTT 5 Request
    /// Problem Information, on by default).
    problem_info: bool,
    /// Retained messages sent at SUBSCRIBE that were retained moments before (their live copy
    /// may still come), by topic: the attributes identify the publish.
    retained_sent: BTreeMap<Path, Bytes>,
    /// The topic name of the last publish and its path.
    last_topic: Option<(String, Path)>,
    /// The engine's handle on that topic, when memory-only (skips its lookup by path).
    last_appended: LastTopic,
    /// QoS 0 publishes to one topic read back to back, not yet handed to the engine: they
    /// go as one append (see [`Conn::hold`]). Boxed: empty between reads.
    held: Option<Box<Held>>,
    /// How many publishes the last run handed to the engine held: the next run starts with
    /// room for as many (a publisher tends to send runs of one length).
    last_run: u16,
    /// The deliveries being handled (empty between batches; kept for its buffer).
    batch: Vec<Delivery>,
    /// The topic of the last message sent and its MQTT name.
    delivered_name: Option<(Path, String)>,
    /// How the session delivers the topics it got events of (see [`Conn::route`]). Boxed
    /// and made at the first delivery: idle sessions have none.
    routes: Option<Box<Routes>>,
}

/// How a session delivers one topic's events, worked out from its subscriptions and its
/// access once per topic rather than once per event: a session with many subscriptions
/// would otherwise match every one of them against every event.
#[derive(Debug, Clone)]
struct Route {
    /// The highest QoS of the subscriptions that match (shared ones excepted); `None` when
    /// the topic's events are not delivered: none matches, or reading it is not allowed.
    qos: Option<QoS>,
    /// Their MQTT 5 subscription identifiers.
    ids: Vec<u32>,
    /// Whether one of them keeps the retain flag as published.
    retain_as_published: bool,
    /// Whether all of them ask not to get the session's own publishes (No Local).
    all_no_local: bool,
}

/// The routes worked out since the subscriptions last changed (any change forgets them).
#[derive(Debug, Default)]
struct Routes {
    /// The last topic routed: deliveries come in runs of one topic, and a run's topics are
    /// clones of one path, compared by pointer first.
    last: Option<(Path, Route)>,
    /// Others, up to [`MAX_ROUTES`] (then forgotten all at once: a `#` subscriber to many
    /// topics keeps a bounded table).
    by_topic: std::collections::HashMap<Path, Route>,
}

/// The most routes a session keeps besides the last one.
const MAX_ROUTES: usize = 1024;

/// How a session with `subs` and `access` delivers `topic`'s events (see [`Route`]).
fn route_of(subs: &[Subscription], access: &Access, topic: &Path) -> Route {
    let mut route = Route {
        qos: None,
        ids: Vec::new(),
        retain_as_published: false,
        all_no_local: true,
    };
    for sub in subs {
        if sub.shared || !sub.pattern.matches(topic) || !dollar_rule_allows(&sub.filter, topic) {
            continue;
        }
        route.qos = Some(
            route
                .qos
                .map_or(sub.options.qos, |q| q.max(sub.options.qos)),
        );
        route.ids.extend(sub.id);
        route.retain_as_published |= sub.options.retain_as_published;
        route.all_no_local &= sub.options.no_local;
    }
    if !access.allows(topic, Modes::READ) {
        route.qos = None;
    }
    route
}

/// QoS 0 publishes (not retained) to one topic, read one after the other. Their data are
/// slices of the connection's read buffer, copied when the run goes to the engine if they
/// would keep much of it alive (see [`NewEvent::own_data_if_pinning`]).
struct Held {
    topic: Path,
    events: Vec<NewEvent>,
}

/// The most QoS 0 publishes held for one append. A run never outlasts the read it came in
/// (at most `MAX_READ_ROOM` bytes past a partial packet), so an append of held publishes
/// carries no more bytes than one publish of the largest packet size could, and the
/// engine's queue, bounded in appends, stays bounded in bytes as before.
const HELD_MAX: usize = 256;

/// How recent a retained message sent at SUBSCRIBE must be for its live copy to be looked for.
const RECENT_RETAINED_MS: u64 = 10_000;

/// Serves one connection until it ends.
pub(crate) async fn run<S>(inner: Arc<Inner>, stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    inner.metrics.connections.increment(1.0);
    // Connecting (the CONNECT packet, authentication, the session hand-over) and finishing
    // are boxed, so the task that lives as long as the connection is not sized for them.
    // Each box is made in a statement of its own: the unboxed future is a temporary of the
    // statement that makes it, and one awaited in the same statement would count too.
    let connecting = Box::pin(connect(inner.clone(), stream, peer));
    if let Some(mut ready) = connecting.await {
        ready.conn.resend_inflight();
        let end = ready.conn.run(&ready.claim).await;
        let finishing = Box::pin(ready.conn.finish(ready.claim, end));
        finishing.await;
    }
    inner.metrics.connections.decrement(1.0);
}

/// Reads the CONNECT packet and accepts the connection; `None` when it is refused or broken.
async fn connect<S>(inner: Arc<Inner>, stream: S, peer: SocketAddr) -> Option<Ready<S>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let mut reader = Reader {
        rd,
        buf: BytesMut::new(),
        decoder: Decoder::new(inner.config.max_packet_size),
        room: MIN_READ_ROOM,
        pending: false,
        uncounted: 0,
        allocation: 0,
    };
    let first = tokio::select! {
        _ = inner.shutdown.cancelled() => None,
        r = tokio::time::timeout(inner.config.connect_timeout, reader.next()) => Some(r),
    };
    let connect = match first {
        Some(Ok(Ok(Some(Packet::Connect(c))))) => Some(c),
        Some(Ok(Err(ReadError::Decode(DecodeError::UnsupportedProtocol { name, level })))) => {
            tracing::debug!(%peer, %name, level, "mqtt: unsupported protocol version");
            // Answered in 3.1.1's form, which every version can read.
            refuse(wr, Protocol::V311, 1).await;
            return None;
        }
        Some(Ok(Err(ReadError::Decode(e)))) => {
            tracing::debug!(%peer, error = %e, "mqtt: bad first packet");
            inner.metrics.protocol_errors.increment(1);
            None
        }
        Some(Ok(Ok(Some(other)))) => {
            tracing::debug!(%peer, packet = other.kind(), "mqtt: first packet is not CONNECT");
            inner.metrics.protocol_errors.increment(1);
            None
        }
        Some(Ok(Err(ReadError::Io(e)))) => {
            tracing::debug!(%peer, error = %e, "mqtt: read failed before CONNECT");
            None
        }
        _ => None,
    };
    accept(inner, reader, wr, connect?, peer).await
}

/// Sends a refusing CONNACK and closes.
async fn refuse<S: AsyncWrite>(mut wr: WriteHalf<S>, protocol: Protocol, code: u8) {
    let code = match protocol {
        Protocol::V311 if code >= 0x80 => herald_mqtt_codec::connack_code_v311(code),
        _ => code,
    };
    let mut properties = Properties::default();
    if protocol == Protocol::V5 {
        properties.reason_string = Some(reason_text(code).to_owned());
    }
    let mut buf = BytesMut::new();
    encode(
        &Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties,
        }),
        protocol,
        &mut buf,
    );
    let _ = tokio::time::timeout(FLUSH_WAIT, async {
        let _ = wr.write_all(&buf).await;
        let _ = wr.shutdown().await;
    })
    .await;
}

/// Authenticates a CONNECT: `Ok(user)` or the reason code to refuse with.
async fn authenticate(inner: &Inner, c: &Connect) -> Result<Option<String>, u8> {
    let Some(name) = &c.username else {
        if c.password.is_some() && c.protocol == Protocol::V311 {
            return Err(reason::BAD_USER_NAME_OR_PASSWORD);
        }
        return if inner.config.allow_anonymous {
            Ok(None)
        } else {
            Err(reason::NOT_AUTHORIZED)
        };
    };
    let Some(password) = c
        .password
        .as_ref()
        .and_then(|p| std::str::from_utf8(p).ok())
    else {
        return Err(reason::BAD_USER_NAME_OR_PASSWORD);
    };
    // A session token (from POST /sessions) is checked without hashing.
    if inner.accounts.verify_session(password).ok().as_deref() == Some(name.as_str()) {
        return Ok(Some(name.clone()));
    }
    match inner.accounts.login(name, password).await {
        Ok(Some(_)) => Ok(Some(name.clone())),
        Ok(None) => Err(reason::BAD_USER_NAME_OR_PASSWORD),
        Err(e) => {
            tracing::warn!(error = %e, "mqtt: login failed");
            Err(reason::SERVER_UNAVAILABLE)
        }
    }
}

/// A connection past CONNACK, ready for its packet loop.
struct Ready<S> {
    conn: Box<Conn<S>>,
    claim: Claim,
}

/// Authenticates a CONNECT, takes over its session and sends the CONNACK; `None` when the
/// connection was refused (and answered).
async fn accept<S>(
    inner: Arc<Inner>,
    mut reader: Reader<S>,
    wr: WriteHalf<S>,
    c: Connect,
    peer: SocketAddr,
) -> Option<Ready<S>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let protocol = c.protocol;
    reader.decoder.set_protocol(protocol);
    let user = match authenticate(&inner, &c).await {
        Ok(user) => user,
        Err(code) => {
            tracing::info!(%peer, user = c.username.as_deref().unwrap_or(""), code, "mqtt: connection refused");
            inner.metrics.refused.increment(1);
            refuse(wr, protocol, code).await;
            return None;
        }
    };
    let access = inner.accounts.access(user.as_deref());
    if let Some(will) = &c.will {
        let allowed = valid_topic_name(&will.topic)
            && topic_path(&will.topic, &inner.config.path_limits)
                .is_some_and(|p| access.allows(&p, Modes::WRITE));
        if !allowed {
            inner.metrics.refused.increment(1);
            let code = if valid_topic_name(&will.topic) {
                reason::NOT_AUTHORIZED
            } else {
                reason::TOPIC_NAME_INVALID
            };
            refuse(wr, protocol, code).await;
            return None;
        }
    }
    let mut assigned = None;
    let client_id: Arc<str> = if c.client_id.is_empty() {
        if protocol == Protocol::V311 && !c.clean_start {
            refuse(wr, protocol, reason::CLIENT_IDENTIFIER_NOT_VALID).await;
            return None;
        }
        let id = format!("herald-{:016x}", rand::random::<u64>());
        assigned = Some(id.clone());
        Arc::from(id)
    } else if c.client_id.len() > herald_core::topic::MAX_ORIGIN_LEN {
        refuse(wr, protocol, reason::CLIENT_IDENTIFIER_NOT_VALID).await;
        return None;
    } else {
        Arc::from(c.client_id.as_str())
    };
    let max_expiry = inner.config.max_session_expiry;
    let expiry = match protocol {
        Protocol::V311 if c.clean_start => Duration::ZERO,
        Protocol::V311 => max_expiry,
        Protocol::V5 => match c.properties.session_expiry_interval.unwrap_or(0) {
            u32::MAX => max_expiry,
            s => Duration::from_secs(u64::from(s)).min(max_expiry),
        },
    };
    let claimed = inner
        .sessions
        .claim(
            client_id.clone(),
            user.as_deref(),
            c.clean_start,
            TAKEOVER_WAIT,
            &inner.shutdown,
        )
        .await;
    let Ok(claimed) = claimed else {
        tracing::info!(%peer, client = %client_id, user = user.as_deref().unwrap_or(""), "mqtt: client id in use by another user's session");
        inner.metrics.refused.increment(1);
        refuse(wr, protocol, reason::CLIENT_IDENTIFIER_NOT_VALID).await;
        return None;
    };
    if claimed.took_over {
        tracing::info!(client = %client_id, "mqtt: session taken over by a new connection");
    }
    let session_present = claimed.session.is_some();
    if !session_present && let Err(e) = inner.records.remove(&client_id).await {
        tracing::warn!(client = %client_id, error = %e, "mqtt: removing a stored session failed");
    }
    let mut session = claimed
        .session
        .unwrap_or_else(|| Box::new(Session::new(inner.topics.listener(), expiry, user.clone())));
    session.expiry = expiry;

    let client_max = c
        .properties
        .maximum_packet_size
        .map_or(usize::MAX, |m| m as usize);
    let mut out = Outbox {
        wr,
        buf: BytesMut::new(),
        protocol,
        max_packet: client_max,
        uncounted: 0,
    };
    let config = &inner.config;
    let mut props = Properties::default();
    if protocol == Protocol::V5 {
        props.receive_maximum = Some(config.receive_maximum);
        props.maximum_packet_size = Some(config.max_packet_size);
        props.topic_alias_maximum = Some(config.topic_alias_maximum);
        props.retain_available = Some(1);
        props.wildcard_subscription_available = Some(1);
        props.subscription_identifier_available = Some(1);
        props.shared_subscription_available = Some(1);
        props.assigned_client_identifier = assigned;
        let asked = c.properties.session_expiry_interval.unwrap_or(0);
        if u64::from(asked) > max_expiry.as_secs() {
            props.session_expiry_interval = Some(max_expiry.as_secs() as u32);
        }
    }
    out.send(&Packet::ConnAck(ConnAck {
        session_present,
        code: reason::SUCCESS,
        properties: props,
    }));
    inner.metrics.connects.increment(1);
    tracing::debug!(%peer, client = %client_id, user = user.as_deref().unwrap_or(""), ?protocol, session_present, "mqtt: connected");

    let window = usize::from(
        c.properties
            .receive_maximum
            .unwrap_or(u16::MAX)
            .min(config.max_inflight)
            .max(1),
    );
    let conn = Box::new(Conn {
        inner: inner.clone(),
        reader,
        out,
        protocol,
        client_id,
        access,
        session,
        acks: VecDeque::new(),
        incoming_qos1: Default::default(),
        aliases: BTreeMap::new(),
        window,
        will: c.will.map(Box::new),
        keep_alive: (c.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(c.keep_alive) * 1500)),
        problem_info: c.properties.request_problem_information != Some(0),
        retained_sent: BTreeMap::new(),
        last_topic: None,
        last_appended: LastTopic::default(),
        held: None,
        last_run: 1,
        batch: Vec::new(),
        delivered_name: None,
        routes: None,
    });
    Some(Ready {
        conn,
        claim: claimed.claim,
    })
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    /// After a reconnect: sends again what was in flight, as MQTT requires.
    fn resend_inflight(&mut self) {
        for (id, state, publish) in &self.session.inflight {
            let packet = match state {
                OutState::Sent => Packet::Publish(Publish {
                    dup: true,
                    packet_id: *id,
                    ..publish.clone()
                }),
                OutState::Released => Packet::PubRel(ack(*id, reason::SUCCESS)),
            };
            self.out.send(&packet);
        }
        self.fill_window();
    }

    async fn run(&mut self, claim: &Claim) -> End {
        // Packets the client sent right behind its CONNECT may be buffered already.
        self.reader.pending = true;
        // Keep-alive: one timer for the connection, re-armed only when it fires early (a packet
        // came since), so a packet costs a clock read, not a timer insertion and removal.
        let keep_alive = self.keep_alive.unwrap_or(Duration::from_secs(86_400 * 365));
        let mut last_packet = Instant::now();
        let timer = tokio::time::sleep_until(last_packet + keep_alive);
        tokio::pin!(timer);
        // Answers (PUBACK, PINGRESP, ...) are queued whatever the socket's state; a client that
        // sends without ever reading would grow that queue, so past this it is not read either.
        let read_limit = self.inner.config.send_buffer_bytes.saturating_mul(4);
        // Deliveries wait for one turn of the scheduler before they are written (see
        // `Deferral`); answers to the client's own packets do not.
        let mut deferral = Deferral::default();
        loop {
            if deferral.due(self.out.queued()) {
                tokio::task::yield_now().await;
                continue;
            }
            if self.out.queued() >= WRITE_EAGER {
                // Enough for a write of its own: try it now (without waiting for the socket),
                // so that a busy connection does not hold large amounts back.
                if let Some(Err(e)) = self.out.write_some(&self.inner.metrics.sent).now_or_never() {
                    tracing::debug!(client = %self.client_id, error = %e, "mqtt: write failed");
                    return End::Abnormal;
                }
            }
            let queued = self.out.queued();
            let can_pull =
                self.session.queue.is_empty() && queued < self.inner.config.send_buffer_bytes;
            let can_read = queued < read_limit;
            tokio::select! {
                biased;
                _ = claim.kick.cancelled() => {
                    let code = if self.inner.shutdown.is_cancelled() {
                        reason::SERVER_SHUTTING_DOWN
                    } else {
                        reason::SESSION_TAKEN_OVER
                    };
                    self.disconnect(code);
                    // Taken over or shut down: the will goes as for a broken connection
                    // (MQTT 5 3.1.4-3).
                    return End::Abnormal;
                }
                () = &mut timer, if self.keep_alive.is_some() => {
                    let due = last_packet + keep_alive;
                    if Instant::now() < due {
                        timer.as_mut().reset(due);
                        continue;
                    }
                    tracing::debug!(client = %self.client_id, "mqtt: keep-alive expired");
                    self.disconnect(reason::KEEP_ALIVE_TIMEOUT);
                    return End::Abnormal;
                }
                // Reads only fill the buffer; the packets are decoded and handled below, one
                // at a time, so that no decoded packet (the largest value here) is held in the
                // state of this loop, which every connection carries while idle.
                filled = self.reader.fill(), if can_read => {
                    match filled {
                        Ok(true) => {}
                        Ok(false) => return End::Abnormal,
                        Err(e) => {
                            tracing::debug!(client = %self.client_id, error = %e, "mqtt: read failed");
                            return End::Abnormal;
                        }
                    }
                    let mut got_packet = false;
                    loop {
                        let end = {
                            // The decoded packet is gone by the end of this statement, before
                            // the await below.
                            let next = match self.reader.decoder.decode(&mut self.reader.buf) {
                                Ok(Some(packet)) => self.dispatch(packet),
                                Ok(None) => break,
                                Err(e) => {
                                    tracing::debug!(client = %self.client_id, error = %e, "mqtt: bad packet");
                                    self.inner.metrics.protocol_errors.increment(1);
                                    self.disconnect_because(e.reason_code(), e.to_string());
                                    return End::Abnormal;
                                }
                            };
                            match next {
                                Next::Done(end) => end,
                                Next::Wait(work) => work.await,
                            }
                        };
                        got_packet = true;
                        if let Some(end) = end {
                            return end;
                        }
                        if self.out.queued() >= read_limit {
                            // The rest waits until the output drains (see `can_read`).
                            self.reader.pending = true;
                            break;
                        }
                    }
                    self.count_received();
                    // Before waiting for more input, the QoS 0 publishes held go to the engine.
                    let end = match self.release_held() {
                        Next::Done(end) => end,
                        Next::Wait(work) => work.await,
                    };
                    if let Some(end) = end {
                        return end;
                    }
                    if got_packet {
                        // Once per read, not per packet: a clock read is not free.
                        last_packet = Instant::now();
                    }
                }
                Some((id, qos, result)) = next_ack(&mut self.acks), if !self.acks.is_empty() => {
                    if let Some(end) = self.acknowledge(id, qos, result) {
                        return end;
                    }
                }
                Some(shared) = next_shared(&mut self.session.shared), if can_pull => {
                    self.deliver_shared(shared);
                    deferral.delivered();
                }
                pulled = self.session.listener.next_into(&mut self.batch), if can_pull => {
                    match pulled {
                        Ok(()) => {
                            // Taken out for the loop and put back: the buffer is reused.
                            let mut batch = std::mem::take(&mut self.batch);
                            for d in batch.drain(..) {
                                self.on_delivery(d);
                            }
                            self.batch = batch;
                            deferral.delivered();
                        }
                        Err(e) => {
                            tracing::warn!(client = %self.client_id, error = %e, "mqtt: reading topics failed");
                            self.disconnect(reason::UNSPECIFIED_ERROR);
                            return End::Abnormal;
                        }
                    }
                }
                // Last: what is queued goes out once nothing else is ready, so a burst of
                // packets in and acknowledgements out shares one write. The output is bounded
                // all the same: past the limits above, reading and pulling stop and this is
                // what is left to do.
                written = self.out.write_some(&self.inner.metrics.sent), if queued > 0 => {
                    deferral.wrote();
                    if let Err(e) = written {
                        tracing::debug!(client = %self.client_id, error = %e, "mqtt: write failed");
                        return End::Abnormal;
                    }
                }
            }
        }
    }

    /// Sends DISCONNECT with `code` and its reason string (MQTT 5 only; 3.1.1 just closes).
    fn disconnect(&mut self, code: u8) {
        self.disconnect_because(code, reason_text(code).to_owned());
    }

    /// Sends DISCONNECT with `code` and `text` as its reason string (MQTT 5 only).
    fn disconnect_because(&mut self, code: u8, text: String) {
        if self.protocol == Protocol::V5 {
            self.out.send(&Packet::Disconnect(Disconnect {
                reason: code,
                properties: Properties::from(PropertyValues {
                    reason_string: Some(text),
                    ..PropertyValues::default()
                }),
            }));
        }
    }

    /// Handles `packet` at once where it can, else hands back the work left (boxed, so that
    /// only a pointer to it lives in the packet loop's state).
    fn dispatch(&mut self, packet: Packet) -> Next<'_> {
        let held_joins =
            matches!(&packet, Packet::Publish(p) if p.qos == QoS::AtMostOnce && !p.retain);
        if self.held.is_some() && !held_joins {
            // The QoS 0 publishes held were read first: they go to the engine first.
            let held = self.held.take();
            match self.send_held(held) {
                Ok(None) => {}
                Ok(Some(end)) => return Next::Done(Some(end)),
                Err(room) => {
                    return Next::Wait(Box::pin(async move {
                        let result = room.await;
                        if let Some(end) = self.published(0, QoS::AtMostOnce, result) {
                            return Some(end);
                        }
                        match self.dispatch_now(packet) {
                            Next::Done(end) => end,
                            Next::Wait(work) => work.await,
                        }
                    }));
                }
            }
        }
        self.dispatch_now(packet)
    }

    /// [`Conn::dispatch`] once nothing is held.
    fn dispatch_now(&mut self, packet: Packet) -> Next<'_> {
        match packet {
            Packet::Subscribe(s) => Next::Wait(Box::pin(async move {
                self.on_subscribe(s).await;
                None
            })),
            Packet::Unsubscribe(u) => Next::Wait(Box::pin(async move {
                self.on_unsubscribe(u).await;
                None
            })),
            Packet::Publish(p) => self.on_publish(p),
            packet => Next::Done(self.handle(packet)),
        }
    }

    /// Handles a packet other than PUBLISH, SUBSCRIBE and UNSUBSCRIBE; `Some` ends the
    /// connection.
    fn handle(&mut self, packet: Packet) -> Option<End> {
        match packet {
            Packet::PubAck(a) => {
                if let Some(i) = self.find_inflight(a.packet_id, OutState::Sent, QoS::AtLeastOnce) {
                    self.session.inflight.remove(i);
                    self.fill_window();
                }
            }
            Packet::PubRec(a) => {
                match self.find_inflight(a.packet_id, OutState::Sent, QoS::ExactlyOnce) {
                    Some(i) if a.reason >= 0x80 => {
                        self.session.inflight.remove(i);
                        self.fill_window();
                    }
                    Some(i) => {
                        if let Some(entry) = self.session.inflight.get_mut(i) {
                            entry.1 = OutState::Released;
                        }
                        self.out
                            .send(&Packet::PubRel(ack(a.packet_id, reason::SUCCESS)));
                    }
                    None => {
                        let code = if self.is_released(a.packet_id) {
                            reason::SUCCESS
                        } else {
                            reason::PACKET_IDENTIFIER_NOT_FOUND
                        };
                        self.out.send(&Packet::PubRel(ack(a.packet_id, code)));
                    }
                }
            }
            Packet::PubComp(a) => {
                if let Some(i) = self
                    .session
                    .inflight
                    .iter()
                    .position(|(id, s, _)| *id == a.packet_id && *s == OutState::Released)
                {
                    self.session.inflight.remove(i);
                    self.fill_window();
                }
            }
            Packet::PubRel(a) => {
                let code = if self.session.incoming_qos2.remove(&a.packet_id) {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.out.send(&Packet::PubComp(ack(a.packet_id, code)));
            }
            Packet::PingReq => self.out.send(&Packet::PingResp),
            Packet::Disconnect(d) => {
                if let Some(expiry) = d.properties.session_expiry_interval {
                    if self.session.expiry.is_zero() && expiry > 0 {
                        // MQTT 5 3.14.2.2.2: cannot make a session persistent at the end.
                        self.disconnect(reason::PROTOCOL_ERROR);
                        return Some(End::Abnormal);
                    }
                    self.session.expiry = Duration::from_secs(u64::from(expiry))
                        .min(self.inner.config.max_session_expiry);
                }
                return Some(End::Disconnect {
                    will: d.reason == reason::DISCONNECT_WITH_WILL,
                });
            }
            other => {
                tracing::debug!(client = %self.client_id, packet = other.kind(), "mqtt: unexpected packet");
                self.inner.metrics.protocol_errors.increment(1);
                self.disconnect(reason::PROTOCOL_ERROR);
                return Some(End::Abnormal);
            }
        }
        None
    }

    fn find_inflight(&self, id: u16, state: OutState, qos: QoS) -> Option<usize> {
        self.session
            .inflight
            .iter()
            .position(|(i, s, p)| *i == id && *s == state && p.qos == qos)
    }

    fn is_released(&self, id: u16) -> bool {
        self.session
            .inflight
            .iter()
            .any(|(i, s, _)| *i == id && *s == OutState::Released)
    }

    // ------------------------------------------------------------------ incoming publish

    /// Adds the PUBLISH packets handled since the last call to the received metric (once per
    /// read, as [`Outbox::uncounted`] is per write).
    fn count_received(&mut self) {
        if self.reader.uncounted > 0 {
            let n = std::mem::take(&mut self.reader.uncounted);
            self.inner.metrics.received.increment(u64::from(n));
        }
    }

    /// Handles an incoming PUBLISH, without waiting unless the broker must (see
    /// [`Inner::publish`]): then what is left, the wait and [`Conn::published`], is boxed.
    fn on_publish(&mut self, mut p: Publish) -> Next<'_> {
        self.reader.uncounted = self.reader.uncounted.saturating_add(1);
        let alias = p.properties.values_mut().and_then(|v| v.topic_alias.take());
        if let Some(alias) = alias {
            if alias == 0 || alias > self.inner.config.topic_alias_maximum {
                self.disconnect(reason::TOPIC_ALIAS_INVALID);
                return Next::Done(Some(End::Abnormal));
            }
            if p.topic.is_empty() {
                match self.aliases.get(&alias) {
                    Some(t) => p.topic.clone_from(t),
                    None => {
                        self.disconnect(reason::PROTOCOL_ERROR);
                        return Next::Done(Some(End::Abnormal));
                    }
                }
            } else {
                self.aliases.insert(alias, p.topic.clone());
            }
        }
        // Publishers mostly repeat their topic: the last one's path is kept, and borrowed
        // (a QoS 0 publish joining the run held for its topic takes no reference to it).
        if !matches!(&self.last_topic, Some((name, _)) if *name == p.topic) {
            let path = valid_topic_name(&p.topic)
                .then(|| topic_path(&p.topic, &self.inner.config.path_limits))
                .flatten();
            let Some(path) = path else {
                tracing::debug!(client = %self.client_id, topic = %p.topic, "mqtt: invalid topic name");
                return Next::Done(self.refuse_publish(&p, reason::TOPIC_NAME_INVALID));
            };
            self.last_topic = Some((p.topic.clone(), path));
        }
        let Some((_, path)) = &self.last_topic else {
            // Set just above.
            return Next::Done(self.refuse_publish(&p, reason::TOPIC_NAME_INVALID));
        };
        if !self.access.allows(path, Modes::WRITE) {
            tracing::debug!(client = %self.client_id, %path, "mqtt: publish not authorized");
            return Next::Done(self.refuse_publish(&p, reason::NOT_AUTHORIZED));
        }
        match p.qos {
            QoS::ExactlyOnce if self.session.incoming_qos2.contains(&p.packet_id) => {
                // A resend of a message already accepted: acknowledge, do not append again.
                self.out
                    .send(&Packet::PubRec(ack(p.packet_id, reason::SUCCESS)));
                return Next::Done(None);
            }
            QoS::AtLeastOnce | QoS::ExactlyOnce => {
                if self.acks.len() >= usize::from(self.inner.config.receive_maximum) {
                    self.disconnect(reason::RECEIVE_MAXIMUM_EXCEEDED);
                    return Next::Done(Some(End::Abnormal));
                }
            }
            QoS::AtMostOnce => {}
        }
        let (id, qos) = (p.packet_id, p.qos);
        if qos == QoS::AtMostOnce && !p.retain {
            let event =
                Outgoing::event(qos, false, p.properties, p.payload, self.client_id.clone());
            return match event {
                Some(event) => self.hold(event),
                None => Next::Done(self.published(id, qos, Err(PublishError::Invalid))),
            };
        }
        let path = path.clone();
        if qos == QoS::AtLeastOnce && !self.incoming_qos1.insert(id) {
            // Still being appended: the PUBACK for the first copy is coming.
            return Next::Done(None);
        }
        let publishing = self.inner.publish(
            Outgoing {
                path,
                qos,
                retain: p.retain,
                properties: p.properties,
                payload: p.payload,
                origin: self.client_id.clone(),
            },
            &mut self.last_appended,
        );
        match publishing {
            Publishing::Done(result) => Next::Done(self.published(id, qos, result)),
            // QoS 0: nothing to acknowledge, nothing to wait for.
            Publishing::Sent => Next::Done(None),
            Publishing::Wait(publishing) => Next::Wait(Box::pin(async move {
                let result = publishing.await;
                self.published(id, qos, result)
            })),
        }
    }

    /// Holds a QoS 0 publish (not retained) to `topic` with those read just before it, so that
    /// a read of many publishes to one topic costs the engine one append, not one each. A
    /// publish to another topic, a full batch, or any other packet hands the held ones to the
    /// engine first, and so does the end of every read: nothing is held while the connection
    /// waits for input, and the topic's order is the order of the publishes.
    ///
    /// Memory-only topics too: their runs are appended at once when handed over, without the
    /// engine's actor. (Until 2026-11-25 each of their publishes was appended on its own as it
    /// was read; runs took up to a third less server CPU per delivery on the memory-only
    /// benchmarks and lost fewer messages to slow subscribers: docs/benchmarks.md,
    /// "Memory-only runs".)
    ///
    /// The publish's topic is the last one read, `last_topic` (see [`Conn::on_publish`]):
    /// one joining the run held for it takes no reference to its path.
    fn hold(&mut self, event: NewEvent) -> Next<'_> {
        let Some((_, topic)) = &self.last_topic else {
            // Not reached: `on_publish` sets it first.
            return Next::Done(self.published(0, QoS::AtMostOnce, Err(PublishError::Invalid)));
        };
        if let Some(held) = &mut self.held
            && held.topic == *topic
            && held.events.len() < HELD_MAX
        {
            held.events.push(event);
            return Next::Done(None);
        }
        let mut events = Vec::with_capacity(usize::from(self.last_run).max(1));
        events.push(event);
        let earlier = self.held.replace(Box::new(Held {
            topic: topic.clone(),
            events,
        }));
        let sent = self.send_held(earlier);
        self.after_held(sent)
    }

    /// Hands the QoS 0 publishes held to the engine (see [`Conn::hold`]).
    fn release_held(&mut self) -> Next<'_> {
        let held = self.held.take();
        let sent = self.send_held(held);
        self.after_held(sent)
    }

    /// Appends `held` (see [`Conn::hold`]): `Ok` once queued or refused (`Some` ends the
    /// connection), `Err` with the wait for room in the engine's queue.
    fn send_held(&mut self, held: Option<Box<Held>>) -> Result<Option<End>, PublishFuture> {
        let Some(held) = held else {
            return Ok(None);
        };
        let Held { topic, mut events } = *held;
        // The data are slices of the read buffer, which a window would keep whole.
        NewEvent::own_data_if_pinning(&mut events, self.reader.allocation as usize);
        self.last_run = u16::try_from(events.len()).unwrap_or(u16::MAX);
        if events.capacity() > 2 * events.len() {
            // Shorter than the last run: the engine's queue is bounded in appends, and must
            // stay bounded in bytes by what was read.
            events.shrink_to_fit();
        }
        self.send_events(topic, events)
    }

    /// Appends QoS 0 publishes (not retained) to `topic`; as [`Conn::send_held`].
    fn send_events(
        &mut self,
        topic: Path,
        events: Vec<NewEvent>,
    ) -> Result<Option<End>, PublishFuture> {
        // A QoS 0 publish has no packet id: 0 stands for it.
        match self
            .inner
            .send_detached(topic, events, &mut self.last_appended)
        {
            Publishing::Sent => Ok(None),
            Publishing::Done(result) => Ok(self.published(0, QoS::AtMostOnce, result)),
            Publishing::Wait(room) => Err(room),
        }
    }

    /// What is left of [`Conn::send_held`]: waiting for room, if need be.
    fn after_held(&mut self, sent: Result<Option<End>, PublishFuture>) -> Next<'_> {
        match sent {
            Ok(end) => Next::Done(end),
            Err(room) => Next::Wait(Box::pin(async move {
                let result = room.await;
                self.published(0, QoS::AtMostOnce, result)
            })),
        }
    }

    /// Goes on with an incoming publish once the broker took it: a QoS 0 refusal ends the
    /// connection; a QoS 1 or 2 publish is acknowledged once durable (at once if it is
    /// already and no earlier acknowledgement waits).
    fn published(
        &mut self,
        id: u16,
        qos: QoS,
        result: Result<PendingAppend, PublishError>,
    ) -> Option<End> {
        match (qos, result) {
            (QoS::AtMostOnce, Ok(_)) => None,
            (QoS::AtMostOnce, Err(e)) => {
                tracing::warn!(client = %self.client_id, error = ?e, "mqtt: QoS 0 publish dropped");
                self.disconnect(publish_error_code(&e));
                Some(End::Abnormal)
            }
            (_, Ok(pending)) => {
                if qos == QoS::ExactlyOnce {
                    self.session.incoming_qos2.insert(id);
                }
                let pending = if self.acks.is_empty() {
                    // Acknowledgements go out in the order of the publishes (MQTT 4.6).
                    match pending.into_done() {
                        Ok(done) => {
                            let done = done.map(|_| ()).map_err(PublishError::Engine);
                            return self.acknowledge(id, qos, done);
                        }
                        Err(pending) => pending,
                    }
                } else {
                    pending
                };
                self.acks.push_back(Box::pin(async move {
                    let r = pending.await.map(|_| ()).map_err(PublishError::Engine);
                    (id, qos, r)
                }));
                None
            }
            (_, Err(e)) => self.acknowledge(id, qos, Err(e)),
        }
    }

    /// Refuses a publish: MQTT 5 acknowledges QoS 1 and 2 with `code`; QoS 0 and every
    /// MQTT 3.1.1 publish can only be refused by closing the connection.
    fn refuse_publish(&mut self, p: &Publish, code: u8) -> Option<End> {
        let mut refusal = ack(p.packet_id, code);
        if self.problem_info {
            refusal.properties.reason_string = Some(format!("{}: {}", reason_text(code), p.topic));
        }
        match (self.protocol, p.qos) {
            (Protocol::V5, QoS::AtLeastOnce) => {
                self.out.send(&Packet::PubAck(refusal));
                None
            }
            (Protocol::V5, QoS::ExactlyOnce) => {
                self.out.send(&Packet::PubRec(refusal));
                None
            }
            _ => {
                self.disconnect(code);
                Some(End::Abnormal)
            }
        }
    }

    /// Acknowledges an incoming publish once its append is durable. A failed one is refused
    /// with a reason code (MQTT 5) or by closing the connection (3.1.1 has no negative
    /// acknowledgement; the client sends it again after reconnecting); `Some` ends the
    /// connection.
    fn acknowledge(&mut self, id: u16, qos: QoS, result: Result<(), PublishError>) -> Option<End> {
        self.incoming_qos1.remove(&id);
        let code = match &result {
            Ok(()) => reason::SUCCESS,
            Err(e) => {
                tracing::warn!(client = %self.client_id, error = ?e, "mqtt: publish failed");
                if qos == QoS::ExactlyOnce {
                    self.session.incoming_qos2.remove(&id);
                }
                if self.protocol == Protocol::V311 {
                    return Some(End::Abnormal);
                }
                publish_error_code(e)
            }
        };
        let mut answer = ack(id, code);
        if code != reason::SUCCESS && self.problem_info {
            answer.properties.reason_string = Some(reason_text(code).to_owned());
        }
        match qos {
            QoS::AtLeastOnce => self.out.send(&Packet::PubAck(answer)),
            QoS::ExactlyOnce => self.out.send(&Packet::PubRec(answer)),
            QoS::AtMostOnce => {}
        }
        None
    }

    // ------------------------------------------------------------------ subscriptions

    /// Saves a persistent session, so that a change of its subscriptions is durable before
    /// it is acknowledged and a restart finds it.
    async fn save_session(&mut self) {
        Box::pin(save(&self.inner, &self.client_id, &self.session)).await;
    }

    async fn on_subscribe(&mut self, s: Subscribe) {
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for (filter, options) in s.filters {
            let code = self.subscribe_one(&filter, options, sub_id, &mut retained);
            reasons.push(match self.protocol {
                Protocol::V311 if code >= 0x80 => 0x80,
                _ => code,
            });
        }
        self.save_session().await;
        self.out.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Properties::default(),
            reasons,
        }));
        for (path, sub, message) in retained {
            // A message retained just now may also be on its way live (its append commits
            // after this subscription started): remember it, to skip that copy.
            if now_ms().saturating_sub(message.t_ms) < RECENT_RETAINED_MS {
                self.retained_sent
                    .insert(path.clone(), message.attrs.clone());
            }
            self.deliver_retained(&path, &sub, &message);
        }
    }

    /// Adds or replaces one subscription; returns its SUBACK code. Retained messages to send
    /// are pushed to `retained`.
    fn subscribe_one(
        &mut self,
        filter: &str,
        options: SubOptions,
        id: Option<u32>,
        retained: &mut Vec<(Path, Subscription, Arc<herald_engine::RetainedMessage>)>,
    ) -> u8 {
        if !valid_topic_filter(filter) {
            return reason::TOPIC_FILTER_INVALID;
        }
        let shared = filter.starts_with("$share/");
        let inner_filter = match parse_shared(filter) {
            Some((_, f)) => f,
            None if shared => return reason::TOPIC_FILTER_INVALID,
            None => filter,
        };
        if shared && options.no_local && self.protocol == Protocol::V5 {
            // MQTT 5 3.8.3.1: No Local on a shared subscription is a protocol error; refuse
            // the filter rather than the connection.
            return reason::PROTOCOL_ERROR;
        }
        let Some((pattern, exact)) = filter_pattern(inner_filter, &self.inner.config.path_limits)
        else {
            return reason::TOPIC_FILTER_INVALID;
        };
        if let Some(path) = &exact
            && !self.access.allows(path, Modes::READ)
        {
            return reason::NOT_AUTHORIZED;
        }
        let existing = self.session.subs.iter().position(|s| s.filter == filter);
        if existing.is_none() && self.session.subs.len() >= self.inner.config.max_subscriptions {
            return reason::QUOTA_EXCEEDED;
        }
        let sub = Subscription {
            filter: filter.to_owned(),
            pattern: pattern.clone(),
            exact: exact.clone(),
            options,
            id,
            shared,
        };
        self.forget_routes();
        match existing {
            Some(i) => {
                if let Some(slot) = self.session.subs.get_mut(i) {
                    *slot = sub.clone();
                }
            }
            None => {
                // Grown one at a time: most sessions hold one or two subscriptions.
                self.session.subs.reserve_exact(1);
                self.session.subs.push(sub.clone());
            }
        }
        if shared {
            self.inner.join_shared(&mut self.session, &sub);
            // MQTT 5 4.8.2: retained messages are not sent for shared subscriptions.
            return options.qos as u8;
        }
        match &exact {
            Some(path) => {
                self.session.listener.subscribe(path.clone(), None);
            }
            None => {
                self.session
                    .listener
                    .subscribe_pattern(pattern.clone(), None);
            }
        }
        let send_retained = match options.retain_handling {
            0 => true,
            1 => existing.is_none(),
            _ => false,
        };
        if send_retained {
            for (path, message) in self.inner.retained.matching(&pattern) {
                if dollar_rule_allows(filter, &path) && self.access.allows(&path, Modes::READ) {
                    retained.push((path, sub.clone(), message));
                }
            }
        }
        options.qos as u8
    }

    async fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let mut reasons = Vec::with_capacity(u.filters.len());
        for filter in &u.filters {
            match self.session.subs.iter().position(|s| s.filter == *filter) {
                Some(i) => {
                    self.forget_routes();
                    let sub = self.session.subs.remove(i);
                    if sub.shared {
                        self.inner.shared.leave(&sub.filter, self.session.member_id);
                        reasons.push(reason::SUCCESS);
                        continue;
                    }
                    match &sub.exact {
                        Some(path) => {
                            self.session.listener.unsubscribe(path);
                        }
                        None => {
                            self.session.listener.unsubscribe_pattern(&sub.pattern);
                        }
                    }
                    reasons.push(reason::SUCCESS);
                }
                None => reasons.push(reason::NO_SUBSCRIPTION_EXISTED),
            }
        }
        // Topics that another subscription still wants may have gone with the removed one:
        // follow them again (from now on).
        for sub in self.session.subs.iter().filter(|s| !s.shared) {
            match &sub.exact {
                Some(path) => {
                    self.session.listener.subscribe(path.clone(), None);
                }
                None => {
                    self.session
                        .listener
                        .subscribe_pattern(sub.pattern.clone(), None);
                }
            }
        }
        self.save_session().await;
        self.out.send(&Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            properties: Properties::default(),
            reasons,
        }));
    }

    // ------------------------------------------------------------------ outgoing messages

    fn on_delivery(&mut self, d: Delivery) {
        match d {
            Delivery::Event { topic, event, .. } => self.deliver_event(&topic, &event),
            Delivery::Gap { topic, from, to } => {
                let lost = to.saturating_sub(from) + 1;
                self.inner.metrics.lost.increment(lost);
                tracing::warn!(client = %self.client_id, %topic, from, to, "mqtt: messages trimmed before delivery");
            }
            Delivery::Reset { .. } => {}
        }
    }

    fn deliver_event(&mut self, topic: &Path, event: &Event) {
        if !self.retained_sent.is_empty()
            && let Some(sent) = self.retained_sent.remove(topic)
            && sent == event.attrs
        {
            // Already sent as the retained message at SUBSCRIBE.
            return;
        }
        let Route {
            qos,
            ids,
            retain_as_published,
            all_no_local,
        } = self.route(topic);
        let Some(sub_qos) = qos else {
            return;
        };
        let is_mqtt = !event.attrs.is_empty();
        if all_no_local && is_mqtt && *event.origin == *self.client_id {
            return;
        }
        let attrs = MessageAttrs::decode(&event.attrs);
        let retain = self.protocol == Protocol::V5 && retain_as_published && attrs.retain;
        self.send_message(
            topic,
            event.t_ms,
            &event.content_type,
            attrs,
            sub_qos,
            retain,
            ids,
            &event.data,
        );
    }

    /// How this session delivers `topic`'s events: from the routes kept, else worked out
    /// from its subscriptions and its access (and kept).
    fn route(&mut self, topic: &Path) -> Route {
        let routes = self.routes.get_or_insert_with(Box::default);
        if let Some((last, route)) = &routes.last
            && last == topic
        {
            return route.clone();
        }
        let route = match routes.by_topic.get(topic) {
            Some(route) => route.clone(),
            None => {
                let route = route_of(&self.session.subs, &self.access, topic);
                if routes.by_topic.len() >= MAX_ROUTES {
                    routes.by_topic.clear();
                }
                routes.by_topic.insert(topic.clone(), route.clone());
                route
            }
        };
        routes.last = Some((topic.clone(), route.clone()));
        route
    }

    /// The subscriptions changed: the routes worked out before may be wrong now.
    fn forget_routes(&mut self) {
        self.routes = None;
    }

    /// A message its shared subscription group gave this session.
    #[allow(clippy::boxed_local)] // as it comes from the channel (see `SharedChannel`)
    fn deliver_shared(&mut self, d: Box<SharedDelivery>) {
        let Some(sub) = self.session.subs.iter().find(|s| *s.filter == *d.filter) else {
            return;
        };
        if !self.access.allows(&d.topic, Modes::READ) {
            return;
        }
        let (qos, ids) = (sub.options.qos, sub.id.into_iter().collect());
        let retain = self.protocol == Protocol::V5 && sub.options.retain_as_published;
        let attrs = MessageAttrs::decode(&d.event.attrs);
        let retain = retain && attrs.retain;
        self.send_message(
            &d.topic,
            d.event.t_ms,
            &d.event.content_type,
            attrs,
            qos,
            retain,
            ids,
            &d.event.data,
        );
    }

    fn deliver_retained(
        &mut self,
        topic: &Path,
        sub: &Subscription,
        message: &herald_engine::RetainedMessage,
    ) {
        let attrs = MessageAttrs::decode(&message.attrs);
        self.send_message(
            topic,
            message.t_ms,
            &message.content_type,
            attrs,
            sub.options.qos,
            true,
            sub.id.into_iter().collect(),
            &message.data,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn send_message(
        &mut self,
        topic: &Path,
        t_ms: u64,
        content_type: &Arc<str>,
        attrs: MessageAttrs,
        sub_qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
        payload: &Bytes,
    ) {
        // An expired message is dropped whatever the protocol; MQTT 5 is told what is left.
        let remaining = match attrs.properties.message_expiry_interval {
            Some(expiry) => {
                let elapsed = now_ms().saturating_sub(t_ms) / 1000;
                if elapsed >= u64::from(expiry) {
                    self.inner.metrics.expired.increment(1);
                    return;
                }
                Some(expiry - elapsed as u32)
            }
            None => None,
        };
        let qos = sub_qos.min(attrs.qos);
        let v5 = self.protocol == Protocol::V5;
        if qos == QoS::AtMostOnce
            && (!v5
                || (attrs.properties.is_empty()
                    && remaining.is_none()
                    && !attrs.explicit_content_type
                    && subscription_ids.is_empty()))
        {
            // The common case, written straight into the output: no packet built, the topic's
            // name kept from the last delivery.
            let name = match &self.delivered_name {
                Some((path, name)) if path == topic => name,
                _ => {
                    &self
                        .delivered_name
                        .insert((topic.clone(), topic_name(topic)))
                        .1
                }
            };
            if plain_publish_len(name, payload, self.protocol) > self.out.max_packet {
                // MQTT 5 3.1.2-24: a packet over the client's maximum is discarded.
                self.inner.metrics.oversize.increment(1);
                return;
            }
            encode_plain_publish(name, retain, payload, self.protocol, &mut self.out.buf);
            self.out.count_publish();
            return;
        }
        let mut properties = Properties::default();
        if v5 {
            properties = attrs.properties;
            // (Only what is set is written: writing boxes the values.)
            if remaining.is_some() {
                properties.message_expiry_interval = remaining;
            }
            if attrs.explicit_content_type {
                properties.content_type = Some(content_type.to_string());
            }
            if !subscription_ids.is_empty() {
                properties.subscription_identifiers = subscription_ids;
            }
        }
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic: topic_name(topic),
            packet_id: 0,
            properties,
            // The payload is shared, and counted, only by a packet that is built.
            payload: payload.clone(),
        };
        let packet = Packet::Publish(publish);
        if encoded_len(&packet, self.protocol) > self.out.max_packet {
            // MQTT 5 3.1.2-24: a packet over the client's maximum is discarded.
            self.inner.metrics.oversize.increment(1);
            return;
        }
        match packet {
            Packet::Publish(publish) if qos != QoS::AtMostOnce => {
                self.session.queue.push_back(publish);
                self.fill_window();
            }
            packet => {
                self.out.count_publish();
                self.out.send(&packet);
            }
        }
    }

    /// Sends queued QoS 1 and 2 messages while the client's receive window has room.
    fn fill_window(&mut self) {
        while self.session.inflight.len() < self.window {
            let Some(mut publish) = self.session.queue.pop_front() else {
                break;
            };
            publish.packet_id = self.session.next_packet_id();
            self.out.count_publish();
            self.out.send(&Packet::Publish(publish.clone()));
            self.session
                .inflight
                .push_back((publish.packet_id, OutState::Sent, publish));
        }
    }

    // ------------------------------------------------------------------ the end

    async fn finish(mut self, claim: Claim, end: End) {
        let send_will = match end {
            End::Disconnect { will } => will,
            End::Abnormal => true,
        };
        let will = self.will.take().filter(|_| send_will);
        self.count_received();
        // QoS 0 publishes held when the connection ended (a refused publish, say) were read
        // before it ended: they are appended, before the will.
        let _ = match self.release_held() {
            Next::Done(end) => end,
            Next::Wait(work) => work.await,
        };
        // Let the appends still pending finish, acknowledging them if the client still
        // listens.
        while let Some((id, qos, result)) = next_ack(&mut self.acks).await {
            let _ = self.acknowledge(id, qos, result);
        }
        let Conn {
            inner,
            mut out,
            client_id,
            mut session,
            ..
        } = self;
        if session.expiry.is_zero() {
            // The session ends here: leave its groups, and give what they had handed it but
            // it had not sent to the other members.
            for sub in session.subs.iter().filter(|s| s.shared) {
                inner.shared.leave(&sub.filter, session.member_id);
            }
            if let Some((_, rx)) = &mut session.shared {
                rx.close();
                while let Ok(d) = rx.try_recv() {
                    if !inner.shared.redistribute(d) {
                        inner.metrics.lost.increment(1);
                    }
                }
            }
        }
        out.close(&inner.metrics.sent).await;
        if !session.expiry.is_zero() && !inner.sessions.room_to_keep() {
            tracing::warn!(client = %client_id, max = inner.config.max_sessions, "mqtt: too many sessions; this one ends with its connection");
            inner.metrics.sessions_dropped.increment(1);
            session.expiry = Duration::ZERO;
        }
        save(&inner, &client_id, &session).await;
        let expiry = session.expiry;
        let pending_will = will.map(|w| {
            let delay =
                Duration::from_secs(u64::from(w.properties.will_delay_interval.unwrap_or(0)))
                    .min(expiry);
            schedule_will(inner.clone(), client_id.clone(), *w, delay)
        });
        inner.sessions.release(claim, Some(session), pending_will);
        tracing::debug!(client = %client_id, "mqtt: disconnected");
    }
}

/// Writes a persistent session to disk, or removes the stored one of a session that ends
/// with its connection. A failure is logged: the session goes on in memory.
async fn save(inner: &Inner, client_id: &str, session: &Session) {
    let result = if session.expiry.is_zero() {
        inner.records.remove(client_id).await
    } else {
        let bytes = crate::persist::save(session, now_ms());
        inner.records.put(client_id, bytes).await
    };
    if let Err(e) = result {
        tracing::warn!(client = %client_id, error = %e, "mqtt: saving the session failed");
    }
}

/// Publishes `will` after `delay` unless cancelled (the client came back in time).
fn schedule_will(
    inner: Arc<Inner>,
    client_id: Arc<str>,
    will: Will,
    delay: Duration,
) -> PendingWill {
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let tracker = inner.tasks.clone();
    tracker.spawn(async move {
        if !delay.is_zero() {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        let Some(path) = topic_path(&will.topic, &inner.config.path_limits) else {
            return;
        };
        let result = inner
            .publish(
                Outgoing {
                    path,
                    qos: will.qos,
                    retain: will.retain,
                    properties: will.properties,
                    payload: will.payload,
                    origin: client_id.clone(),
                },
                &mut LastTopic::default(),
            )
            .outcome()
            .await;
        match result {
            Ok(Some(pending)) => {
                if let Err(e) = pending.await {
                    tracing::warn!(client = %client_id, error = %e, "mqtt: will message failed");
                }
            }
            // A QoS 0 will: queued; a failing commit is logged by the engine.
            Ok(None) => {}
            Err(e) => tracing::warn!(client = %client_id, error = ?e, "mqtt: will message failed"),
        }
    });
    PendingWill { cancel }
}

/// The reason string sent with a reason code (MQTT 5).
fn reason_text(code: u8) -> &'static str {
    match code {
        reason::SUCCESS => "success",
        reason::UNSPECIFIED_ERROR => "unspecified error",
        reason::MALFORMED_PACKET => "malformed packet",
        reason::PROTOCOL_ERROR => "protocol error",
        reason::IMPLEMENTATION_SPECIFIC_ERROR => "the message cannot be stored",
        reason::UNSUPPORTED_PROTOCOL_VERSION => "unsupported protocol version",
        reason::CLIENT_IDENTIFIER_NOT_VALID => {
            "client identifier not valid (too long, or in use by another user's session)"
        }
        reason::BAD_USER_NAME_OR_PASSWORD => "bad user name or password",
        reason::NOT_AUTHORIZED => "not authorized",
        reason::SERVER_UNAVAILABLE => "server unavailable",
        reason::SERVER_SHUTTING_DOWN => "server shutting down",
        reason::KEEP_ALIVE_TIMEOUT => "keep alive timeout",
        reason::SESSION_TAKEN_OVER => "session taken over by another connection",
        reason::TOPIC_NAME_INVALID => "topic name invalid",
        reason::RECEIVE_MAXIMUM_EXCEEDED => "receive maximum exceeded",
        reason::TOPIC_ALIAS_INVALID => "topic alias invalid",
        reason::PACKET_TOO_LARGE => "packet too large",
        reason::QUOTA_EXCEEDED => "quota exceeded",
        reason::PAYLOAD_FORMAT_INVALID => "payload format invalid",
        _ => "error",
    }
}

fn publish_error_code(e: &PublishError) -> u8 {
    match e {
        PublishError::Invalid => reason::IMPLEMENTATION_SPECIFIC_ERROR,
        PublishError::RetainedFull => reason::QUOTA_EXCEEDED,
        PublishError::Engine(TopicsError::Invalid(_)) => reason::PAYLOAD_FORMAT_INVALID,
        PublishError::Engine(_) => reason::SERVER_UNAVAILABLE,
    }
}

fn ack(packet_id: u16, reason: u8) -> Ack {
    Ack {
        packet_id,
        reason,
        properties: Properties::default(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Deferral, WRITE_EAGER};

    #[test]
    fn deliveries_wait_one_turn_before_a_write_and_answers_none() {
        let mut d = Deferral::default();
        // Answers only (no delivery since the last write): written at once.
        assert!(!d.due(10));
        d.delivered();
        // Nothing queued, or enough for a write of its own: no reason to wait.
        assert!(!d.due(0));
        assert!(!d.due(WRITE_EAGER));
        assert!(d.due(10));
        // One turn between two writes, however many deliveries follow.
        d.delivered();
        assert!(!d.due(20));
        d.wrote();
        assert!(!d.due(20));
        d.delivered();
        assert!(d.due(20));
    }

    use herald_engine::{Accounts, AccountsOptions, Topics, TopicsOptions};
    use herald_store::{MemoryStore, Store};
    use tokio_util::sync::CancellationToken;

    use crate::{Mqtt, MqttConfig};

    /// The task of a connection lives as long as the connection, so its future is part of
    /// what every idle connection costs. Connecting and finishing are boxed out of it; what is
    /// left is the packet loop's state. A future over this bound means something large now
    /// lives across an `.await` of the loop: box it, or raise the bound knowingly. (1,008
    /// bytes in a debug build when written, most of it the connection's own state.)
    #[tokio::test]
    async fn the_connection_task_stays_small() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let (topics, _actor) = Topics::open(store.clone(), TopicsOptions::default())
            .await
            .unwrap();
        let accounts = Accounts::open(store.clone(), AccountsOptions::default())
            .await
            .unwrap();
        let mqtt = Mqtt::open(
            topics,
            accounts,
            store,
            MqttConfig::default(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        let (stream, _peer) = tokio::io::duplex(64);
        let task = super::run(mqtt.inner.clone(), stream, "127.0.0.1:1".parse().unwrap());
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1280, "the connection task's future is {size} bytes");
    }
}
