//! The hpfeeds broker: the TCP listener, authentication against the engine's hpfeeds
//! identities, and the publish / subscribe loop (`seed-contracts.md` 3.1, 3.2 and 3.4).
//!
//! [`serve`] accepts connections until its shutdown token is cancelled. Each connection is one
//! task that owns its socket, an engine [`Listener`] and a bounded output buffer.
//!
//! # A connection
//! 0. With [`HpfeedsConfig::tls`] set, the listener speaks TLS only: the handshake comes first
//!    and must complete within [`HpfeedsConfig::auth_timeout`] (a failed or late handshake
//!    closes the connection, logged at debug level and counted in
//!    `hpfeeds_broker_tls_handshake_error{category}`, not as an hpfeeds connection). Each
//!    connection keeps the certificate it was accepted with; see [`crate::tls`] for reloading.
//!    The rest is the same over TLS as over TCP.
//! 1. The broker sends `OP_INFO` (the broker name, [`HpfeedsConfig::name`], and 4 fresh random
//!    bytes) as soon as the connection is accepted (after the TLS handshake).
//! 2. The first frame must be `OP_AUTH`, else `OP_ERROR "First message was not AUTH"` and the
//!    connection is closed. As in the Python broker this is judged on the opcode alone: a first
//!    frame of another opcode gets the error even when its body would not decode. Herald
//!    answers as soon as the frame's header is in (Python once the whole frame is), so that an
//!    unauthenticated connection never buffers more than an `OP_AUTH` frame (281 bytes) and one
//!    read. The ident is looked up ([`HpfeedsIdentities::lookup`]: stored identities, then the
//!    `env` backend when enabled) and SHA1(nonce ‖ secret) is compared in constant time; an
//!    unknown ident or a wrong digest gets `OP_ERROR "Authentication failed for <ident>"` and
//!    the close. A successful `OP_AUTH` gets no reply. A client that sends nothing within
//!    [`HpfeedsConfig::auth_timeout`] is disconnected without a message.
//! 3. Then, in any order:
//!    - `OP_PUBLISH`: the ident in the frame must be the authenticated one (else `OP_ERROR
//!      "Invalid authkey in message, ident=<ident in the frame>"` and close) and the channel one
//!      of the identity's publish channels (else `"Authkey not allowed to pub here.
//!      ident=<ident>, chan=<chan>"` and close). The payload is appended to the topic
//!      `/<prefix>/<chan>` as one event with content type `application/octet-stream` and origin
//!      the publisher's ident. Appends are pipelined ([`Topics::enqueue`]): publishes to one
//!      channel read back to back go as one append, a connection keeps up to
//!      [`HpfeedsConfig::max_in_flight`] messages waiting for their group commit and stops
//!      reading while it has that many; a failed append is logged (and the connection closed if
//!      the engine has stopped).
//!    - `OP_SUBSCRIBE`: the channel must be one of the identity's subscribe channels (else
//!      `"Authkey not allowed to sub here. ident=<ident>, chan=<chan>"` and close, with the
//!      authenticated ident; the ident inside the frame is not checked). From then on every
//!      event appended to the channel's topic, whichever protocol appended it, is sent as an
//!      `OP_PUBLISH` with the publisher's ident (the event's origin, or the broker name when the
//!      event has none) and the channel name as subscribed. Subscriptions are live only (hpfeeds
//!      stores nothing for subscribers): nothing appended before the subscription is replayed.
//!      A connection subscribed to a channel it publishes to receives its own messages.
//!    - `OP_UNSUBSCRIBE`: always accepted, no reply; events of that channel not yet sent are
//!      dropped.
//!
//! Every error text is exactly the Python broker's. After an `OP_ERROR` the broker sends what it
//! had queued before it, then the error, closes its side and drains the client's input for a
//! moment (so that the error is not lost to a TCP reset), at most
//! [`HpfeedsConfig::close_grace`] for the writes.
//!
//! # Choices where Python is loose
//! - A frame that cannot be decoded (an unknown opcode, a frame over its opcode's size limit,
//!   a truncated field, text that is not UTF-8; see [`crate::frame`]) closes the connection
//!   without an `OP_ERROR`, as the Python broker drops it (except a first frame that is not
//!   `OP_AUTH`, step 2).
//! - A client that sends `OP_INFO`, `OP_ERROR`, or `OP_AUTH` a second time is disconnected
//!   without a message (the Python broker has no handler for the first two and would
//!   re-authenticate on the third).
//! - A channel is one topic path segment whatever characters it has (a `/` in it does not split
//!   it). A channel that is not a valid segment under the prefix (empty, `.`, `..`, over 1 KiB)
//!   is treated as not allowed: the same error and close as a channel missing from the lists
//!   (identities cannot list such channels anyway).
//! - Events too large for one `OP_PUBLISH` frame (appended by another protocol), or whose
//!   origin does not fit a `str8`, are skipped with a debug log. A subscriber that falls
//!   further behind than the channel's topic retains (a memory-only channel keeps only a small
//!   in-memory window) gets `OP_ERROR "Subscriber fell behind: N messages on channel C are no
//!   longer retained"` (metric category `messages-lost`) and is disconnected: it is never left
//!   to miss messages silently. Resets (the topic deleted and created again) are ignored with a
//!   debug log.
//! - Subscriptions are a set: subscribing twice to a channel is the same as once, and one
//!   `OP_UNSUBSCRIBE` ends it (the Python broker keeps a list, so after two subscriptions and one
//!   unsubscription it still delivers). A refused `OP_SUBSCRIBE` is not registered (the Python
//!   broker registers it just before its close takes effect, which shows only in its
//!   `hpfeeds_broker_subscriptions` gauge). Unsubscribing from a channel not subscribed changes
//!   no metric (Python decrements the gauge, below zero, under whatever channel was named).
//! - Metric labels never carry an ident nobody authenticated as: failures for an unknown ident
//!   and for protocol errors before authentication are labelled with an empty ident, and an
//!   ident mismatch on `OP_PUBLISH` and a refused `OP_SUBSCRIBE` with the authenticated ident
//!   (the Python broker labels these with whatever ident the client sent, which lets anyone
//!   grow the metric set).
//!
//! # Back-pressure
//! Subscribers never slow publishers: deliveries are pulled from the topics by each
//! connection's [`Listener`] (from the store when the connection is behind), so there is no
//! per-subscriber queue in the engine. What a connection holds is its output buffer: it stops
//! pulling events once [`HpfeedsConfig::send_buffer_bytes`] are waiting to be written. When the
//! buffer reaches that mark a deadline of [`HpfeedsConfig::backpressure_deadline`] starts
//! (default 60 s, as in Python); it is cancelled once the buffer drains to a quarter of the
//! mark. If the deadline passes, the queued data is dropped (except the rest of the chunk of whole
//! frames being written, about 64 KiB, so that the client never gets a partial frame) and the
//! client gets `OP_ERROR "Backpressure deadline timer expired"` and is disconnected.
//!
//! The mark differs from Python's: its transport buffer holds everything not yet sent, and its
//! mark is 50 × the largest `OP_PUBLISH` frame (50 × (5 + 1 MiB), about 50 MiB per
//! connection). Herald's output buffer holds only what was pulled from the topics, so its
//! default mark is 8 MiB: the deadline starts once a subscriber is 8 MiB behind instead of
//! about 50 MiB (the low mark, a quarter, is as in Python's asyncio transport). A deadline
//! setting too large for the clock (`Duration::MAX`) never expires.
//!
//! # Metrics
//! Through the `metrics` crate, with the names of the Python broker's Prometheus exporter:
//! `hpfeeds_broker_client_connections` (gauge), `hpfeeds_broker_connection_made`,
//! `hpfeeds_broker_connection_ready{ident}`, `hpfeeds_broker_connection_error{ident,category}`
//! (categories `invalid-first-message`, `invalid-ident`, `invalid-secret`, `ident-mismatch-pub`,
//! `no-pub-permission`, `no-sub-permission`, `deadline-timer-expired`, and Herald's
//! `protocol-error` and `messages-lost`; never `error-checking-ident`, as looking an identity up
//! cannot fail), `hpfeeds_broker_connection_lost{ident}`,
//! `hpfeeds_broker_connection_send_buffer_deadline_start{ident}` and `..._recover{ident}`,
//! the buffer metrics of authenticated connections by ident (counters
//! `hpfeeds_broker_connection_receive_buffer_fill` (bytes read), `..._send_buffer_fill`
//! (payload bytes of the publishes queued) and `..._send_buffer_drain` (bytes written), gauges
//! `..._send_buffer_size` (output not yet written) and `..._receive_buffer_size` (input not yet
//! a whole frame)), `hpfeeds_broker_subscriptions{ident,chan}` (gauge),
//! `hpfeeds_broker_receive_publish_count{ident,chan}`,
//! `hpfeeds_broker_receive_publish_size{ident,chan}` (histogram; buckets
//! [`PUBLISH_SIZE_BUCKETS`]) and `hpfeeds_client_authenticated_connections{ident,owner}`
//! (gauge). Herald adds `hpfeeds_broker_tls_handshake_error{category}` on a TLS listener:
//! handshakes that `failed` (not TLS, no common protocol, the client refused the certificate)
//! or hit the `timeout`.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herald_auth::hpfeeds::{Identity, channel_path};
use herald_core::{Path, PathLimits};
use herald_engine::{
    Appended, Delivery, HpfeedsIdentities, LastTopic, Listener, NewEvent, PendingAppend,
    RememberedAppend, Topics, TopicsError, TryEnqueueError,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::frame::{Decoder, Frame, FrameError, MAX_STR8_LEN, NONCE_LEN, Opcode, encode_publish};
use crate::tls::TlsFiles;

/// The content type of events appended by hpfeeds publishes.
pub const CONTENT_TYPE: &str = "application/octet-stream";

/// The buckets of `hpfeeds_broker_receive_publish_size`: 1 KiB to 4 MiB, doubling (as the
/// Python broker's). A Prometheus recorder must be told them to render a histogram.
pub const PUBLISH_SIZE_BUCKETS: [f64; 13] = [
    1024.0,
    2048.0,
    4096.0,
    8192.0,
    16384.0,
    32768.0,
    65536.0,
    131_072.0,
    262_144.0,
    524_288.0,
    1_048_576.0,
    2_097_152.0,
    4_194_304.0,
];

/// The error sent when the back-pressure deadline passes.
pub const BACKPRESSURE_ERROR: &str = "Backpressure deadline timer expired";

/// The error sent when the first frame is not `OP_AUTH`.
pub const FIRST_MESSAGE_ERROR: &str = "First message was not AUTH";

/// How much a connection reads from its socket at once, at least.
const READ_CHUNK: usize = 16 * 1024;

/// Encoded deliveries are queued in chunks of about this size (whole frames each).
const WRITE_CHUNK: usize = 64 * 1024;

/// How long a closing connection keeps reading (and discarding) the client's input, waiting
/// for it to close, so that closing with unread input does not reset the connection before
/// the client has read the error.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// How long the accept loop pauses after an accept error (out of file descriptors, ...).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Where a deadline goes when its setting does not fit an [`Instant`] (`Duration::MAX` for
/// "never"): about 30 years from now.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// Settings of the broker.
#[derive(Debug, Clone)]
pub struct HpfeedsConfig {
    /// The broker name sent in `OP_INFO`, and the publisher ident of events that record none
    /// (appended through another protocol). At most 255 bytes. Default `hpfeeds`.
    pub name: String,
    /// The first segment of every channel's topic: channel `c` is `/<prefix>/c`. Default
    /// `hpfeeds`.
    pub prefix: String,
    /// How long a subscriber's output buffer may stay full before it is disconnected.
    /// Default 60 s.
    pub backpressure_deadline: Duration,
    /// The output buffer mark, in bytes: past it the connection stops taking events and the
    /// back-pressure deadline starts. Default 8 MiB (Python: 50 × (5 + 1 MiB); see the
    /// module documentation).
    pub send_buffer_bytes: usize,
    /// Publishes of one connection waiting for their commit at once (counted in messages,
    /// however many appends carry them); at the limit the connection stops reading until the
    /// oldest append is committed. Default 256.
    pub max_in_flight: usize,
    /// How long a new connection has to authenticate. Default 30 s.
    pub auth_timeout: Duration,
    /// How long a connection being closed after an `OP_ERROR` gets to take what is queued and
    /// the error. Default 5 s.
    pub close_grace: Duration,
    /// Connections open at once; at the limit new ones wait to be served. Default 100 000.
    pub max_connections: usize,
    /// When set, the listener speaks TLS only, with this certificate and key (reloaded when
    /// the files change; see [`crate::tls`]). The handshake must complete within
    /// [`HpfeedsConfig::auth_timeout`]. Default `None` (plain TCP).
    pub tls: Option<TlsFiles>,
}

impl Default for HpfeedsConfig {
    fn default() -> Self {
        Self {
            name: "hpfeeds".to_owned(),
            prefix: "hpfeeds".to_owned(),
            backpressure_deadline: Duration::from_secs(60),
            send_buffer_bytes: 8 * 1024 * 1024,
            max_in_flight: 256,
            auth_timeout: Duration::from_secs(30),
            close_grace: Duration::from_secs(5),
            max_connections: 100_000,
            tls: None,
        }
    }
}

impl HpfeedsConfig {
    /// Checks the settings: a name that fits a `str8`, a prefix that is one valid path segment,
    /// and no zero sizes.
    ///
    /// # Errors
    /// [`BrokerError::Config`] naming the bad setting.
    pub fn validate(&self) -> Result<(), BrokerError> {
        if self.name.len() > MAX_STR8_LEN {
            return Err(BrokerError::Config(format!(
                "the hpfeeds broker name is {} bytes, more than {MAX_STR8_LEN}",
                self.name.len()
            )));
        }
        if Path::from_segments([self.prefix.as_str()], &PathLimits::default()).is_err() {
            return Err(BrokerError::Config(format!(
                "the hpfeeds topic prefix {:?} is not a valid path segment (empty, '.', '..' \
                 or too long)",
                self.prefix
            )));
        }
        for (name, value) in [
            ("send buffer", self.send_buffer_bytes),
            ("in-flight publish limit", self.max_in_flight),
            ("connection limit", self.max_connections),
        ] {
            if value == 0 {
                return Err(BrokerError::Config(format!(
                    "the hpfeeds {name} must be at least 1"
                )));
            }
        }
        Ok(())
    }
}

/// Why the broker cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// A setting is invalid ([`HpfeedsConfig::validate`]).
    #[error("invalid hpfeeds configuration: {0}")]
    Config(String),
    /// The TLS certificate or key cannot be loaded.
    #[error("hpfeeds TLS: {0}")]
    Tls(String),
}

/// What every connection shares.
struct Shared {
    topics: Topics,
    identities: HpfeedsIdentities,
    config: HpfeedsConfig,
    content_type: Arc<str>,
}

/// Serves hpfeeds on `listener` until `shutdown` is cancelled, then closes every connection
/// and returns once they are gone. See the [module documentation](self).
///
/// # Errors
/// [`BrokerError::Config`] when `config` is invalid, [`BrokerError::Tls`] when its TLS files
/// cannot be loaded (both checked before anything is accepted).
pub async fn serve(
    listener: TcpListener,
    topics: Topics,
    identities: HpfeedsIdentities,
    config: HpfeedsConfig,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    config.validate()?;
    // Stops the TLS reloader when this returns, however it returns.
    let stop_reload = shutdown.child_token();
    let _stop_reload = stop_reload.clone().drop_guard();
    let tls = match &config.tls {
        Some(files) => {
            Some(crate::tls::watch(files.clone(), stop_reload).map_err(BrokerError::Tls)?)
        }
        None => None,
    };
    let permits = Arc::new(Semaphore::new(
        config.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let shared = Arc::new(Shared {
        topics,
        identities,
        config,
        content_type: Arc::from(CONTENT_TYPE),
    });
    let tracker = TaskTracker::new();
    let mut warned_full = false;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "hpfeeds: accept failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        // Accept first, then wait for a permit, as the HTTP listeners do.
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                warned_full = false;
                permit
            }
            Err(_) => {
                if !warned_full {
                    warned_full = true;
                    tracing::warn!(
                        max = shared.config.max_connections,
                        "hpfeeds: connection limit reached; new connections wait"
                    );
                }
                let acquired = tokio::select! {
                    () = shutdown.cancelled() => break,
                    p = permits.clone().acquire_owned() => p,
                };
                match acquired {
                    Ok(permit) => permit,
                    // The semaphore is never closed.
                    Err(_) => break,
                }
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "hpfeeds: cannot set TCP_NODELAY");
        }
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        match &tls {
            None => {
                let (reader, writer) = stream.into_split();
                tracker.spawn(connection(
                    reader, writer, false, peer, shared, shutdown, permit,
                ));
            }
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.borrow().clone());
                tracker.spawn(tls_connection(
                    acceptor, stream, peer, shared, shutdown, permit,
                ));
            }
        }
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// A connection on a TLS listener: the handshake, within [`HpfeedsConfig::auth_timeout`], then
/// [`connection`]. A handshake that fails or does not complete in time closes the connection
/// and is counted in `hpfeeds_broker_tls_handshake_error{category}` (`failed` or `timeout`).
async fn tls_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let timeout = shared.config.auth_timeout;
    let handshake = tokio::select! {
        () = shutdown.cancelled() => return,
        h = tokio::time::timeout(timeout, acceptor.accept(stream)) => h,
    };
    match handshake {
        Ok(Ok(stream)) => {
            let (reader, writer) = tokio::io::split(stream);
            connection(reader, writer, true, peer, shared, shutdown, permit).await;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "hpfeeds: TLS handshake failed");
            tls_handshake_error("failed");
        }
        Err(_) => {
            tracing::debug!(%peer, "hpfeeds: no TLS handshake in time; closing");
            tls_handshake_error("timeout");
        }
    }
}

/// Counts a TLS handshake that did not give a connection (`failed` or `timeout`).
fn tls_handshake_error(category: &'static str) {
    metrics::counter!("hpfeeds_broker_tls_handshake_error", "category" => category).increment(1);
}

/// `now + after`, or [`FAR_FUTURE`] from now when that does not fit an [`Instant`].
fn deadline_after(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

/// Why a connection ends.
enum End {
    /// The broker is shutting down: close at once.
    Shutdown,
    /// The client closed its side.
    Eof,
    /// Reading or writing failed (reset, broken pipe).
    Io(io::Error),
    /// A frame could not be decoded.
    Protocol(FrameError),
    /// The client sent a frame a client must not send.
    Unexpected(&'static str),
    /// No `OP_AUTH` within the auth timeout.
    AuthTimeout,
    /// Refused with an `OP_ERROR`, counted under `category`.
    Refused {
        text: String,
        category: &'static str,
        /// The ident for the metric label ("" when nobody authenticated).
        label: String,
    },
    /// The back-pressure deadline passed.
    Backpressure,
    /// The engine failed (stopped, or reading events failed).
    Engine(TopicsError),
}

/// The authenticated side of a connection.
struct Session {
    identity: Identity,
    /// The ident as the origin of published events.
    origin: Arc<str>,
    /// Subscribed topics and the channel name each was subscribed as.
    subs: HashMap<Path, String>,
    /// The publish metrics of each channel published to (only allowed channels get here).
    publish_metrics: HashMap<String, (metrics::Counter, metrics::Histogram)>,
    /// The connection's buffer metrics.
    buffers: BufferMetrics,
}

/// The buffer metrics of an authenticated connection, labelled with its ident, as the Python
/// broker's: bytes read from the client (`receive_buffer_fill`), payload bytes of the
/// publishes queued for it (`send_buffer_fill`), bytes written to it (`send_buffer_drain`), and
/// its share of the `send_buffer_size` (output bytes not yet written) and `receive_buffer_size`
/// (bytes read but not yet a whole frame) gauges, which sum the connections of the ident.
struct BufferMetrics {
    receive_fill: metrics::Counter,
    send_fill: metrics::Counter,
    send_drain: metrics::Counter,
    send_size: metrics::Gauge,
    receive_size: metrics::Gauge,
    /// What this connection adds to the two gauges now.
    sizes: (usize, usize),
}

impl BufferMetrics {
    fn new(ident: &str) -> Self {
        let ident = ident.to_owned();
        Self {
            receive_fill: metrics::counter!(
                "hpfeeds_broker_connection_receive_buffer_fill", "ident" => ident.clone()
            ),
            send_fill: metrics::counter!(
                "hpfeeds_broker_connection_send_buffer_fill", "ident" => ident.clone()
            ),
            send_drain: metrics::counter!(
                "hpfeeds_broker_connection_send_buffer_drain", "ident" => ident.clone()
            ),
            send_size: metrics::gauge!(
                "hpfeeds_broker_connection_send_buffer_size", "ident" => ident.clone()
            ),
            receive_size: metrics::gauge!(
                "hpfeeds_broker_connection_receive_buffer_size", "ident" => ident
            ),
            sizes: (0, 0),
        }
    }

    /// Moves this connection's share of the two gauges to `send` and `receive` bytes.
    fn set_sizes(&mut self, send: usize, receive: usize) {
        let (old_send, old_receive) = self.sizes;
        if send != old_send {
            self.send_size.increment(send as f64 - old_send as f64);
        }
        if receive != old_receive {
            self.receive_size
                .increment(receive as f64 - old_receive as f64);
        }
        self.sizes = (send, receive);
    }
}

/// `n` bytes as a counter increment.
fn bytes(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Frames waiting to be written: sealed chunks (each ends on a frame boundary), the part of
/// the first already written, and the frames encoded since the last seal.
#[derive(Default)]
struct Outbox {
    chunks: VecDeque<Bytes>,
    chunk_bytes: usize,
    written: usize,
    tail: BytesMut,
}

impl Outbox {
    /// Bytes waiting to be written.
    fn queued(&self) -> usize {
        self.chunk_bytes
            .saturating_sub(self.written)
            .saturating_add(self.tail.len())
    }

    /// Makes the encoded frames writable.
    fn seal(&mut self) {
        if !self.tail.is_empty() {
            let chunk = self.tail.split().freeze();
            self.chunk_bytes = self.chunk_bytes.saturating_add(chunk.len());
            self.chunks.push_back(chunk);
        }
    }

    /// The bytes to write next, if any.
    fn front(&self) -> Option<&[u8]> {
        self.chunks.front().and_then(|c| c.get(self.written..))
    }

    /// Records that `n` bytes of [`Outbox::front`] were written.
    fn advance(&mut self, n: usize) {
        self.written = self.written.saturating_add(n);
        while let Some(front) = self.chunks.front() {
            if self.written < front.len() {
                break;
            }
            self.written = self.written.saturating_sub(front.len());
            self.chunk_bytes = self.chunk_bytes.saturating_sub(front.len());
            self.chunks.pop_front();
        }
    }

    /// Drops everything queued but the rest of a chunk already partly written.
    fn drop_unsent(&mut self) {
        self.tail.clear();
        let keep = usize::from(self.written > 0);
        while self.chunks.len() > keep {
            if let Some(c) = self.chunks.pop_back() {
                self.chunk_bytes = self.chunk_bytes.saturating_sub(c.len());
            }
        }
    }

    /// Queues one frame (already sealed).
    fn push(&mut self, frame: &Frame) {
        if let Err(e) = frame.encode(&mut self.tail) {
            tracing::warn!(error = %e, "hpfeeds: cannot encode a frame; dropped");
        }
        self.seal();
    }
}

/// Everything of a connection but its socket halves.
struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    nonce: [u8; NONCE_LEN],
    decoder: Decoder,
    rbuf: BytesMut,
    /// The size of the allocation `rbuf` reads into, as its capacity was when it was made
    /// (see [`read_some`]): what a slice of it, a decoded payload, keeps alive.
    rbuf_allocation: usize,
    out: Outbox,
    session: Option<Session>,
    listener: Option<Listener>,
    /// Deliveries taken from the listener and not yet encoded.
    backlog: VecDeque<Delivery>,
    /// Appends waiting for their group commit, oldest first, each with its message count.
    pending: VecDeque<(PendingAppend, usize)>,
    /// The messages in `pending` and `held`: what `max_in_flight` bounds.
    in_flight: usize,
    /// Publishes to one channel read back to back, not yet appended (see
    /// [`Conn::hold`]).
    held: Option<Held>,
    /// The engine's handle on the memory-only topic appended to last.
    last_appended: LastTopic,
    /// Whether the writer buffers (TLS) and must be flushed once the outbox is empty.
    flush_writes: bool,
}

/// Publishes to one channel read back to back (see [`Conn::hold`]).
struct Held {
    topic: Path,
    events: Vec<NewEvent>,
}

async fn connection<R, W>(
    reader: R,
    writer: W,
    flush_writes: bool,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    metrics::counter!("hpfeeds_broker_connection_made").increment(1);
    metrics::gauge!("hpfeeds_broker_client_connections").increment(1.0);
    tracing::debug!(%peer, "hpfeeds: connection accepted");
    let mut conn = Conn {
        shared,
        peer,
        nonce: rand::random(),
        decoder: Decoder::new(),
        rbuf: BytesMut::new(),
        rbuf_allocation: 0,
        out: Outbox::default(),
        session: None,
        listener: None,
        backlog: VecDeque::new(),
        pending: VecDeque::new(),
        in_flight: 0,
        held: None,
        last_appended: LastTopic::default(),
        flush_writes,
    };
    conn.run(reader, writer, &shutdown).await;
    let ident = conn
        .session
        .as_ref()
        .map(|s| s.identity.ident.clone())
        .unwrap_or_default();
    if let Some(session) = &mut conn.session {
        session.buffers.set_sizes(0, 0);
        metrics::gauge!(
            "hpfeeds_client_authenticated_connections",
            "ident" => session.identity.ident.clone(),
            "owner" => session.identity.owner.clone()
        )
        .decrement(1.0);
        for chan in session.subs.values() {
            subscriptions_gauge(&session.identity.ident, chan).decrement(1.0);
        }
    }
    metrics::counter!("hpfeeds_broker_connection_lost", "ident" => ident).increment(1);
    metrics::gauge!("hpfeeds_broker_client_connections").decrement(1.0);
}

fn publish_metrics(ident: &str, chan: &str) -> (metrics::Counter, metrics::Histogram) {
    let labels = [("ident", ident.to_owned()), ("chan", chan.to_owned())];
    (
        metrics::counter!("hpfeeds_broker_receive_publish_count", &labels),
        metrics::histogram!("hpfeeds_broker_receive_publish_size", &labels),
    )
}

fn subscriptions_gauge(ident: &str, chan: &str) -> metrics::Gauge {
    metrics::gauge!(
        "hpfeeds_broker_subscriptions",
        "ident" => ident.to_owned(),
        "chan" => chan.to_owned()
    )
}

impl Conn {
    async fn run<R, W>(&mut self, mut reader: R, mut writer: W, shutdown: &CancellationToken)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let info = Frame::info(self.shared.config.name.clone(), self.nonce);
        self.out.push(&info);
        let end = self.serve(&mut reader, &mut writer, shutdown).await;
        let ident = self.ident_label();
        let peer = self.peer;
        match end {
            End::Shutdown => return,
            End::Eof => {
                tracing::debug!(%peer, ident = ?ident, "hpfeeds: client closed the connection");
            }
            End::Io(e) => {
                tracing::debug!(%peer, ident = ?ident, error = %e, "hpfeeds: connection failed");
                return;
            }
            End::Protocol(e) => {
                tracing::info!(%peer, ident = ?ident, error = %e, "hpfeeds: protocol error; closing");
                metrics::counter!(
                    "hpfeeds_broker_connection_error",
                    "ident" => ident,
                    "category" => "protocol-error"
                )
                .increment(1);
            }
            End::Unexpected(what) => {
                tracing::info!(%peer, ident = ?ident, frame = what, "hpfeeds: unexpected frame from a client; closing");
                metrics::counter!(
                    "hpfeeds_broker_connection_error",
                    "ident" => ident,
                    "category" => "protocol-error"
                )
                .increment(1);
            }
            End::AuthTimeout => {
                tracing::info!(%peer, "hpfeeds: no authentication in time; closing");
                return;
            }
            End::Refused {
                text,
                category,
                label,
            } => {
                tracing::info!(%peer, ident = ?ident, error = ?text, "hpfeeds: refused");
                metrics::counter!(
                    "hpfeeds_broker_connection_error",
                    "ident" => label,
                    "category" => category
                )
                .increment(1);
                self.out.push(&Frame::error(text));
            }
            End::Backpressure => {
                tracing::info!(%peer, ident = ?ident, "hpfeeds: subscriber too slow (back-pressure deadline); closing");
                metrics::counter!(
                    "hpfeeds_broker_connection_error",
                    "ident" => ident,
                    "category" => "deadline-timer-expired"
                )
                .increment(1);
                self.out.drop_unsent();
                self.out.push(&Frame::error(BACKPRESSURE_ERROR));
            }
            End::Engine(e) => {
                tracing::warn!(%peer, ident = ?ident, error = %e, "hpfeeds: engine failure; closing");
            }
        }
        self.close(&mut reader, &mut writer, shutdown).await;
    }

    /// The authenticated ident, or "".
    fn ident_label(&self) -> String {
        self.session
            .as_ref()
            .map(|s| s.identity.ident.clone())
            .unwrap_or_default()
    }

    /// The connection's main loop, until something ends it.
    async fn serve<R, W>(
        &mut self,
        reader: &mut R,
        writer: &mut W,
        shutdown: &CancellationToken,
    ) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let config = self.shared.config.clone();
        let high = config.send_buffer_bytes;
        let low = high / 4;
        let auth_deadline = deadline_after(config.auth_timeout);
        let mut backpressure: Option<Instant> = None;
        let mut eof = false;
        // Written since the last flush (only tracked when the writer buffers).
        let mut unflushed = false;
        loop {
            if let Some(end) = self.process_frames().await {
                return end;
            }
            if eof {
                return End::Eof;
            }
            if let Some(end) = self.encode_deliveries(high) {
                return end;
            }
            self.out.seal();
            let queued = self.out.queued();
            if queued >= high {
                if backpressure.is_none() {
                    backpressure = Some(deadline_after(config.backpressure_deadline));
                    metrics::counter!(
                        "hpfeeds_broker_connection_send_buffer_deadline_start",
                        "ident" => self.ident_label()
                    )
                    .increment(1);
                }
            } else if queued <= low && backpressure.take().is_some() {
                metrics::counter!(
                    "hpfeeds_broker_connection_send_buffer_deadline_recover",
                    "ident" => self.ident_label()
                )
                .increment(1);
            }
            if let Some(session) = &mut self.session {
                session.buffers.set_sizes(queued, self.rbuf.len());
            }
            let authenticated = self.session.is_some();
            let subscribed = self.session.as_ref().is_some_and(|s| !s.subs.is_empty());
            let want_events = subscribed && self.backlog.is_empty() && queued < high;
            let can_read = self.in_flight < config.max_in_flight;
            let deadline = backpressure.unwrap_or(auth_deadline);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return End::Shutdown,
                () = tokio::time::sleep_until(deadline), if backpressure.is_some() || !authenticated => {
                    return if authenticated { End::Backpressure } else { End::AuthTimeout };
                }
                written = write_some(writer, &self.out, unflushed), if unflushed || self.out.front().is_some() => {
                    match written {
                        Ok(Written::Bytes(0)) => return End::Io(io::ErrorKind::WriteZero.into()),
                        Ok(Written::Bytes(n)) => {
                            self.out.advance(n);
                            if let Some(session) = &self.session {
                                session.buffers.send_drain.increment(bytes(n));
                            }
                            unflushed = self.flush_writes;
                        }
                        Ok(Written::Flushed) => unflushed = false,
                        Err(e) => return End::Io(e),
                    }
                }
                done = oldest(&mut self.pending), if !self.pending.is_empty() => {
                    if let Some((_, messages)) = self.pending.pop_front() {
                        self.in_flight -= messages;
                    }
                    if let Err(e) = done {
                        if matches!(e, TopicsError::Closed) {
                            return End::Engine(e);
                        }
                        tracing::warn!(peer = %self.peer, error = %e, "hpfeeds: publish not stored");
                    }
                }
                got = listen(&mut self.listener), if want_events => match got {
                    Ok(deliveries) => self.backlog.extend(deliveries),
                    Err(e) => return End::Engine(e),
                },
                read = read_some(reader, &mut self.rbuf, &mut self.rbuf_allocation), if can_read => match read {
                    Ok(0) => eof = true,
                    Ok(n) => {
                        if let Some(session) = &self.session {
                            session.buffers.receive_fill.increment(bytes(n));
                        }
                    }
                    Err(e) => return End::Io(e),
                },
            }
        }
    }

    /// Handles the complete frames in the read buffer, as long as there is room for more
    /// messages in flight; then appends the publishes held (before whatever ends the
    /// connection: the publishes read before a refused frame are kept, as they were sent).
    async fn process_frames(&mut self) -> Option<End> {
        let end = self.handle_frames().await;
        match self.release_held().await {
            Some(failed) => Some(failed),
            None => end,
        }
    }

    /// [`Conn::process_frames`] but the release of what is held at the end.
    async fn handle_frames(&mut self) -> Option<End> {
        while self.in_flight < self.shared.config.max_in_flight {
            if self.session.is_none() {
                match self.decoder.peek_opcode(&self.rbuf) {
                    Ok(Some(Opcode::Auth)) => {}
                    Ok(Some(_)) => return Some(not_auth()),
                    Ok(None) => return None,
                    Err(e) => return Some(End::Protocol(e)),
                }
            }
            let frame = match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(frame)) => frame,
                Ok(None) => return None,
                Err(e) => return Some(End::Protocol(e)),
            };
            if let Some(end) = self.handle(frame).await {
                return Some(end);
            }
        }
        None
    }

    /// Holds a publish to `topic` with those read just before it, so that a read of many
    /// publishes to one channel costs the engine one append, not one each. A publish to
    /// another channel, any other frame, and the end of the frames read hand the held ones
    /// to the engine first: nothing is held while the connection waits for input, and a
    /// channel keeps the order of its publishes. A held publish counts as in flight.
    ///
    /// A memory-only channel (the one this connection appended to last) is appended to at
    /// once instead, one publish at a time, as before runs: its appends complete at once, so
    /// nothing in flight slows a publisher there, and runs would let one outpace the
    /// channel's subscribers until they fall out of its window (measured: 7 % of the
    /// deliveries lost in `bench/hpfeeds.sh`'s memory-only `max`, none without runs).
    ///
    /// The payloads are slices of the read buffer, and an event kept in a topic's window
    /// would keep the whole buffer alive, which the window's budget does not count. So the
    /// engine gets copies: a publish appended at once gets its own, and a held run one
    /// allocation for all but its first publish (which may have been appended at once),
    /// made as it is released ([`NewEvent::own_data`]), unless it fills a good part of the
    /// buffer ([`NewEvent::own_data_if_pinning`]): a busy publisher's runs keep their slices.
    async fn hold(&mut self, topic: Path, event: NewEvent) -> Option<End> {
        if let Some(held) = &mut self.held
            && held.topic == topic
        {
            held.events.push(event);
            self.in_flight += 1;
            return None;
        }
        let end = self.release_held().await;
        let mut events = vec![event];
        NewEvent::own_data(&mut events);
        let held = match self.shared.topics.try_append_remembered(
            &mut self.last_appended,
            topic,
            events,
        ) {
            Ok(()) => return end,
            Err(RememberedAppend::Failed(e)) => {
                tracing::warn!(peer = %self.peer, error = %e, "hpfeeds: publish refused by the engine");
                return end;
            }
            Err(RememberedAppend::Elsewhere { topic, events }) => Held { topic, events },
        };
        self.in_flight += held.events.len();
        self.held = Some(held);
        end
    }

    /// Appends the publishes held (see [`Conn::hold`]); waits for room in the engine's queue.
    async fn release_held(&mut self) -> Option<End> {
        let Held { topic, mut events } = self.held.take()?;
        // The first was copied as the run began (see `hold`).
        let rest = events.get_mut(1..).unwrap_or_default();
        NewEvent::own_data_if_pinning(rest, self.rbuf_allocation);
        let messages = events.len();
        let queued = match self
            .shared
            .topics
            .try_enqueue_to(&mut self.last_appended, topic, events)
        {
            Err(TryEnqueueError::Full { topic, events }) => {
                self.shared.topics.enqueue(topic, events).await
            }
            Err(TryEnqueueError::Failed(e)) => Err(e),
            Ok(pending) => Ok(pending),
        };
        match queued {
            Ok(pending) => {
                self.pending.push_back((pending, messages));
                None
            }
            Err(TopicsError::Closed) => Some(End::Engine(TopicsError::Closed)),
            Err(e) => {
                self.in_flight -= messages;
                tracing::warn!(peer = %self.peer, error = %e, messages, "hpfeeds: publishes refused by the engine");
                None
            }
        }
    }

    async fn handle(&mut self, frame: Frame) -> Option<End> {
        if !matches!(frame, Frame::Publish { .. })
            && let Some(end) = self.release_held().await
        {
            return Some(end);
        }
        let Some(session) = &mut self.session else {
            return self.authenticate(frame);
        };
        match frame {
            Frame::Publish {
                ident,
                channel,
                payload,
            } => {
                let me = &session.identity.ident;
                if ident != *me {
                    return Some(End::Refused {
                        text: format!("Invalid authkey in message, ident={ident}"),
                        category: "ident-mismatch-pub",
                        label: me.clone(),
                    });
                }
                let topic = match channel_path(&self.shared.config.prefix, &channel) {
                    Ok(topic) if session.identity.may_publish(&channel) => topic,
                    _ => {
                        return Some(End::Refused {
                            text: format!(
                                "Authkey not allowed to pub here. ident={ident}, chan={channel}"
                            ),
                            category: "no-pub-permission",
                            label: me.clone(),
                        });
                    }
                };
                let (count, size) = session
                    .publish_metrics
                    .entry(channel)
                    .or_insert_with_key(|chan| publish_metrics(me, chan));
                count.increment(1);
                size.record(payload.len() as f64);
                // The payload is a slice of the read buffer: `hold` copies it before the
                // engine keeps it.
                let event = NewEvent {
                    content_type: self.shared.content_type.clone(),
                    origin: session.origin.clone(),
                    attrs: Bytes::new(),
                    data: payload,
                };
                self.hold(topic, event).await
            }
            Frame::Subscribe { channel, .. } => {
                let topic = match channel_path(&self.shared.config.prefix, &channel) {
                    Ok(topic) if session.identity.may_subscribe(&channel) => topic,
                    _ => {
                        let me = session.identity.ident.clone();
                        return Some(End::Refused {
                            text: format!(
                                "Authkey not allowed to sub here. ident={me}, chan={channel}"
                            ),
                            category: "no-sub-permission",
                            label: me,
                        });
                    }
                };
                let listener = self
                    .listener
                    .get_or_insert_with(|| self.shared.topics.listener());
                if listener.subscribe(topic.clone(), None) {
                    subscriptions_gauge(&session.identity.ident, &channel).increment(1.0);
                    tracing::debug!(peer = %self.peer, ident = ?session.identity.ident, chan = ?channel, "hpfeeds: subscribed");
                    session.subs.insert(topic, channel);
                }
                None
            }
            Frame::Unsubscribe { channel, .. } => {
                let Ok(topic) = channel_path(&self.shared.config.prefix, &channel) else {
                    return None;
                };
                if let Some(chan) = session.subs.remove(&topic) {
                    if let Some(listener) = &mut self.listener {
                        listener.unsubscribe(&topic);
                    }
                    self.backlog.retain(|d| delivery_topic(d) != &topic);
                    subscriptions_gauge(&session.identity.ident, &chan).decrement(1.0);
                    tracing::debug!(peer = %self.peer, ident = ?session.identity.ident, chan = ?chan, "hpfeeds: unsubscribed");
                }
                None
            }
            Frame::Auth { .. } => Some(End::Unexpected("a second OP_AUTH")),
            Frame::Info { .. } => Some(End::Unexpected("OP_INFO")),
            Frame::Error(_) => Some(End::Unexpected("OP_ERROR")),
        }
    }

    /// The first frame.
    fn authenticate(&mut self, frame: Frame) -> Option<End> {
        let Frame::Auth { ident, hash } = frame else {
            return Some(not_auth());
        };
        let failed = |category, label| {
            Some(End::Refused {
                text: format!("Authentication failed for {ident}"),
                category,
                label,
            })
        };
        let Some(identity) = self.shared.identities.lookup(&ident) else {
            return failed("invalid-ident", String::new());
        };
        if !identity.verify(&self.nonce, &hash) {
            return failed("invalid-secret", identity.ident.clone());
        }
        tracing::info!(peer = %self.peer, ident = ?identity.ident, owner = ?identity.owner, "hpfeeds: client authenticated");
        metrics::counter!("hpfeeds_broker_connection_ready", "ident" => identity.ident.clone())
            .increment(1);
        metrics::gauge!(
            "hpfeeds_client_authenticated_connections",
            "ident" => identity.ident.clone(),
            "owner" => identity.owner.clone()
        )
        .increment(1.0);
        self.session = Some(Session {
            buffers: BufferMetrics::new(&identity.ident),
            origin: Arc::from(identity.ident.as_str()),
            identity,
            subs: HashMap::new(),
            publish_metrics: HashMap::new(),
        });
        None
    }

    /// Encodes deliveries from the backlog while the output buffer is below `high`. Returns
    /// the end of the connection when the subscriber lost events (a gap).
    fn encode_deliveries(&mut self, high: usize) -> Option<End> {
        // Added to the fill metric (one per ident, shared by its connections) once per call,
        // not once per event.
        let mut filled = 0u64;
        let end = self.encode_backlog(high, &mut filled);
        if filled > 0
            && let Some(session) = &self.session
        {
            session.buffers.send_fill.increment(filled);
        }
        end
    }

    /// [`Conn::encode_deliveries`]'s loop; adds the bytes of the events encoded to `filled`.
    fn encode_backlog(&mut self, high: usize, filled: &mut u64) -> Option<End> {
        let Some(session) = &self.session else {
            return None;
        };
        while self.out.queued() < high {
            let Some(delivery) = self.backlog.pop_front() else {
                break;
            };
            match delivery {
                Delivery::Event { topic, event, .. } => {
                    let Some(channel) = session.subs.get(&topic) else {
                        continue;
                    };
                    *filled = filled.saturating_add(bytes(event.data.len()));
                    let ident: &str = if event.origin.is_empty() {
                        &self.shared.config.name
                    } else {
                        &event.origin
                    };
                    let encoded = encode_publish(ident, channel, &event.data, &mut self.out.tail);
                    if self.out.tail.len() >= WRITE_CHUNK {
                        self.out.seal();
                    }
                    if let Err(e) = encoded {
                        tracing::debug!(
                            peer = %self.peer,
                            topic = %topic,
                            seq = event.seq,
                            error = %e,
                            "hpfeeds: event cannot be sent as OP_PUBLISH; skipped"
                        );
                    }
                }
                Delivery::Gap { topic, from, to } => {
                    // The subscriber fell further behind than the topic retains (a memory-only
                    // channel's window, or retention): hpfeeds cannot say which messages are
                    // missing, so the subscriber is told and disconnected rather than left to
                    // miss them silently.
                    let channel = session.subs.get(&topic).cloned().unwrap_or_default();
                    let lost = to.saturating_sub(from).saturating_add(1);
                    return Some(End::Refused {
                        text: format!(
                            "Subscriber fell behind: {lost} messages on channel {channel} are \
                             no longer retained"
                        ),
                        category: "messages-lost",
                        label: session.identity.ident.clone(),
                    });
                }
                Delivery::Reset { topic, epoch } => {
                    tracing::debug!(peer = %self.peer, topic = %topic, epoch, "hpfeeds: topic was recreated");
                }
            }
        }
        None
    }

    /// Sends what is queued (the error last), closes the write side, and drains the input for
    /// a moment.
    async fn close<R, W>(&mut self, reader: &mut R, writer: &mut W, shutdown: &CancellationToken)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let grace = self.shared.config.close_grace;
        let drain = self.session.as_ref().map(|s| s.buffers.send_drain.clone());
        let out = &mut self.out;
        let flush = async {
            while let Some(buf) = out.front() {
                let n = writer.write(buf).await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                out.advance(n);
                if let Some(drain) = &drain {
                    drain.increment(bytes(n));
                }
            }
            writer.shutdown().await
        };
        let flushed = tokio::select! {
            () = shutdown.cancelled() => return,
            r = tokio::time::timeout(grace, flush) => r,
        };
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer, error = %e, "hpfeeds: final writes failed");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer, "hpfeeds: client did not take the final writes in time");
                return;
            }
        }
        let mut scratch = [0u8; 4096];
        let drain = async {
            while let Ok(n) = reader.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => {}
            _ = tokio::time::timeout(CLOSE_LINGER.min(grace), drain) => {}
        }
    }
}

/// The refusal of a first frame that is not `OP_AUTH`.
fn not_auth() -> End {
    End::Refused {
        text: FIRST_MESSAGE_ERROR.to_owned(),
        category: "invalid-first-message",
        label: String::new(),
    }
}

fn delivery_topic(d: &Delivery) -> &Path {
    match d {
        Delivery::Event { topic, .. }
        | Delivery::Gap { topic, .. }
        | Delivery::Reset { topic, .. } => topic,
    }
}

/// What [`write_some`] did.
enum Written {
    Bytes(usize),
    Flushed,
}

/// Writes some of the front chunk or, when there is none and `flush` is set, flushes the
/// writer. Cancel-safe: nothing is written unless it completes.
async fn write_some<W: AsyncWrite + Unpin>(
    writer: &mut W,
    out: &Outbox,
    flush: bool,
) -> io::Result<Written> {
    match out.front() {
        Some(buf) => writer.write(buf).await.map(Written::Bytes),
        None if flush => writer.flush().await.map(|()| Written::Flushed),
        None => std::future::pending().await,
    }
}

/// Reads what is available into `rbuf`, keeping `allocation` up to date (the size of the
/// allocation it reads into). Cancel-safe.
async fn read_some<R: AsyncRead + Unpin>(
    reader: &mut R,
    rbuf: &mut BytesMut,
    allocation: &mut usize,
) -> io::Result<usize> {
    let before = rbuf.capacity();
    rbuf.reserve(READ_CHUNK);
    if rbuf.capacity() != before {
        // A new allocation, or the old one reclaimed: its capacity is all of it (short of
        // what was consumed before the data when `reserve` grows it in place, which loosens
        // the bound of `NewEvent::own_data_if_pinning` by that much).
        *allocation = rbuf.capacity();
    }
    reader.read_buf(rbuf).await
}

/// The outcome of the oldest append in flight.
async fn oldest(pending: &mut VecDeque<(PendingAppend, usize)>) -> Result<Appended, TopicsError> {
    match pending.front_mut() {
        Some((p, _)) => p.await,
        None => std::future::pending().await,
    }
}

/// The next deliveries of the listener. Cancel-safe ([`Listener::next`] is).
async fn listen(listener: &mut Option<Listener>) -> Result<Vec<Delivery>, TopicsError> {
    match listener {
        Some(l) => l.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_keeps_frame_boundaries() {
        let mut out = Outbox::default();
        out.push(&Frame::error("a"));
        out.push(&Frame::error("bb"));
        assert_eq!(out.queued(), 6 + 7);
        out.advance(3);
        assert_eq!(out.front(), Some(&[6u8, 0, b'a'][..]));
        out.drop_unsent();
        assert_eq!(out.queued(), 3);
        out.advance(3);
        assert_eq!(out.front(), None);
        assert_eq!(out.queued(), 0);
        out.push(&Frame::error("c"));
        out.drop_unsent();
        assert_eq!(out.queued(), 0, "a frame not started is dropped");
    }

    #[test]
    fn config_validation() {
        assert!(HpfeedsConfig::default().validate().is_ok());
        let bad = |f: fn(&mut HpfeedsConfig)| {
            let mut c = HpfeedsConfig::default();
            f(&mut c);
            c.validate().is_err()
        };
        assert!(bad(|c| c.name = "n".repeat(256)));
        assert!(bad(|c| c.prefix = String::new()));
        assert!(bad(|c| c.prefix = "..".into()));
        assert!(bad(|c| c.send_buffer_bytes = 0));
        assert!(bad(|c| c.max_in_flight = 0));
        assert!(bad(|c| c.max_connections = 0));
    }
}
