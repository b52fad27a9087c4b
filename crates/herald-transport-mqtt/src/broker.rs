//! The broker: shared state of every connection, the TCP accept loop, and publishing.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{Path, PathLimits};
use herald_engine::{
    Accounts, KeyedRecords, LastTopic, NewEvent, PendingAppend, Retained, RetainedMessage,
    RetainedOptions, Topics, TryEnqueueError,
};
use herald_mqtt_codec::{Properties, QoS};
use herald_store::Store;
use metrics::{Counter, Gauge};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::attrs::MessageAttrs;
use crate::conn;
use crate::session::{Sessions, Subscription};
use crate::shared::SharedGroups;

/// Settings of the MQTT listener.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Largest packet accepted (and announced as Maximum Packet Size), in bytes.
    pub max_packet_size: u32,
    /// Most incoming QoS 1 and 2 publishes a client may have unacknowledged (Receive Maximum).
    pub receive_maximum: u16,
    /// Most outgoing QoS 1 and 2 messages in flight to one client, whatever its own Receive
    /// Maximum says.
    pub max_inflight: u16,
    /// Most topic aliases a client may set (Topic Alias Maximum).
    pub topic_alias_maximum: u16,
    /// Longest a session outlives its connection; MQTT 3.1.1 persistent sessions and longer
    /// MQTT 5 expiry intervals are cut to this.
    pub max_session_expiry: Duration,
    /// Longest wait for CONNECT after the connection opens.
    pub connect_timeout: Duration,
    /// Whether clients without a user name are served (with the `anonymous` role's grants).
    pub allow_anonymous: bool,
    /// Most subscriptions per session.
    pub max_subscriptions: usize,
    /// Most sessions kept at once, connected or not: beyond, a persistent session ends with
    /// its connection (and is logged), so clients inventing client ids cannot fill memory.
    pub max_sessions: usize,
    /// Outgoing bytes queued for one connection before the broker stops taking messages from
    /// its topics (they wait in the topic logs meanwhile).
    pub send_buffer_bytes: usize,
    /// Limits on topic levels.
    pub path_limits: PathLimits,
    /// Most MQTT connections open at once; at the limit new ones wait to be accepted.
    pub max_connections: usize,
    /// With a certificate and key, [`Mqtt::serve`] speaks MQTT over TLS only; the pair is
    /// reloaded when the files change.
    pub tls: Option<herald_tls::TlsFiles>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            max_packet_size: 1024 * 1024,
            receive_maximum: 256,
            max_inflight: 256,
            topic_alias_maximum: 64,
            max_session_expiry: Duration::from_secs(7 * 24 * 3600),
            connect_timeout: Duration::from_secs(10),
            allow_anonymous: true,
            max_subscriptions: 1024,
            max_sessions: 100_000,
            send_buffer_bytes: 1024 * 1024,
            path_limits: PathLimits::default(),
            max_connections: 100_000,
            tls: None,
        }
    }
}

pub(crate) struct Metrics {
    pub(crate) connections: Gauge,
    pub(crate) connects: Counter,
    pub(crate) refused: Counter,
    pub(crate) received: Counter,
    pub(crate) sent: Counter,
    pub(crate) lost: Counter,
    pub(crate) expired: Counter,
    pub(crate) oversize: Counter,
    pub(crate) protocol_errors: Counter,
    pub(crate) tls_failed: Counter,
    pub(crate) tls_timeout: Counter,
    pub(crate) sessions: Gauge,
    pub(crate) sessions_dropped: Counter,
}

impl Metrics {
    fn new() -> Self {
        Self {
            connections: metrics::gauge!("herald_mqtt_connections"),
            connects: metrics::counter!("herald_mqtt_connects_total"),
            refused: metrics::counter!("herald_mqtt_connects_refused_total"),
            received: metrics::counter!("herald_mqtt_publish_received_total"),
            sent: metrics::counter!("herald_mqtt_publish_sent_total"),
            lost: metrics::counter!("herald_mqtt_messages_lost_total"),
            expired: metrics::counter!("herald_mqtt_messages_expired_total"),
            oversize: metrics::counter!("herald_mqtt_messages_too_large_total"),
            protocol_errors: metrics::counter!("herald_mqtt_protocol_errors_total"),
            tls_failed: metrics::counter!("herald_mqtt_tls_handshake_errors_total", "category" => "failed"),
            tls_timeout: metrics::counter!("herald_mqtt_tls_handshake_errors_total", "category" => "timeout"),
            sessions: metrics::gauge!("herald_mqtt_sessions"),
            sessions_dropped: metrics::counter!("herald_mqtt_sessions_not_kept_total"),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) topics: Topics,
    pub(crate) accounts: Accounts,
    pub(crate) retained: Retained,
    /// Persistent sessions on disk.
    pub(crate) records: KeyedRecords,
    pub(crate) config: MqttConfig,
    pub(crate) sessions: Sessions,
    pub(crate) shared: SharedGroups,
    pub(crate) metrics: Metrics,
    /// Cancelled at shutdown: every connection closes.
    pub(crate) shutdown: CancellationToken,
    /// Connections and pending wills, awaited at shutdown.
    pub(crate) tasks: TaskTracker,
}

/// The MQTT broker; cheap to clone (a handle).
#[derive(Clone)]
pub struct Mqtt {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Mqtt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mqtt")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// What a publish asks for, whoever makes it (a client's PUBLISH or its will).
pub(crate) struct Outgoing {
    pub(crate) path: Path,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) properties: Properties,
    pub(crate) payload: Bytes,
    pub(crate) origin: Arc<str>,
}

impl Outgoing {
    /// The event a publish appends: its content type, its attributes (QoS, retain flag and
    /// properties but the content type, and an id when retained) and its payload; `None`
    /// when the attributes do not fit.
    pub(crate) fn event(
        qos: QoS,
        retain: bool,
        properties: Properties,
        payload: Bytes,
        origin: Arc<str>,
    ) -> Option<NewEvent> {
        let content_type: Arc<str> = match properties.content_type.as_deref() {
            Some(ct) => Arc::from(ct),
            None => default_content_type(&origin),
        };
        let mut properties = properties;
        let explicit_ct = properties
            .values_mut()
            .and_then(|v| v.content_type.take())
            .is_some();
        let attrs = MessageAttrs {
            qos,
            retain,
            explicit_content_type: explicit_ct,
            properties,
            id: retain.then(rand::random::<u64>),
        };
        let encoded = attrs.encode()?;
        // Built whole: `NewEvent::new` would take a reference to the shared empty origin
        // only to drop it again (two updates of a count every publishing thread shares).
        Some(NewEvent {
            content_type,
            origin,
            attrs: encoded,
            data: payload,
        })
    }
}

/// The default content type, for the events of publishes without one. Kept in a few copies,
/// one per group of publishers (picked by the address of their origin): every event holds a
/// reference, and with a single copy every publishing thread would update one reference
/// count (a contended cache line: 1.4 % of the server's samples with 100 publishers).
fn default_content_type(origin: &Arc<str>) -> Arc<str> {
    static COPIES: std::sync::OnceLock<[Arc<str>; 16]> = std::sync::OnceLock::new();
    let copies =
        COPIES.get_or_init(|| std::array::from_fn(|_| Arc::from(crate::DEFAULT_CONTENT_TYPE)));
    // The low bits of an allocation's address are its alignment (zero): the ones above spread.
    let shard = (Arc::as_ptr(origin).cast::<u8>() as usize >> 4) % copies.len();
    match copies.get(shard) {
        Some(copy) => copy.clone(),
        // Not reached: `shard` is below the number of copies.
        None => Arc::from(crate::DEFAULT_CONTENT_TYPE),
    }
}

/// Why a publish was not accepted.
#[derive(Debug)]
pub(crate) enum PublishError {
    /// The attributes do not fit (a property longer than 64 KiB).
    Invalid,
    /// The retained message store is full.
    RetainedFull,
    /// The engine refused the append (full, stopped, or storage failed).
    Engine(herald_engine::TopicsError),
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Loading the retained messages failed.
    #[error("cannot load the retained messages: {0}")]
    Retained(#[from] herald_engine::RetainedError),
    /// Loading the persistent sessions failed.
    #[error("cannot load the MQTT sessions: {0}")]
    Sessions(#[from] herald_store::StoreError),
}

impl Mqtt {
    /// A broker over the engine's topics and users, keeping its retained messages and
    /// persistent sessions in `store` (and loading those stored there). `shutdown` closes
    /// every connection when cancelled; persistent sessions are saved as they close.
    ///
    /// # Errors
    /// [`OpenError`] when what is stored cannot be read.
    pub async fn open(
        topics: Topics,
        accounts: Accounts,
        store: Arc<dyn Store>,
        config: MqttConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, OpenError> {
        let retained = Retained::open(store.clone(), RetainedOptions::default()).await?;
        let (records, stored) = KeyedRecords::open(store, crate::persist::PREFIX).await?;
        let max_sessions = config.max_sessions;
        let inner = Inner {
            topics,
            accounts,
            retained,
            records,
            config,
            sessions: Sessions::new(max_sessions),
            shared: SharedGroups::default(),
            metrics: Metrics::new(),
            shutdown,
            tasks: TaskTracker::new(),
        };
        let now = now_ms();
        let mut restored = 0usize;
        for (client_id, bytes) in stored {
            let listener = inner.topics.listener();
            match crate::persist::restore(&bytes, listener, &inner.config.path_limits, now) {
                Some((mut session, age)) if age < session.expiry => {
                    let client_id: Arc<str> = Arc::from(client_id);
                    let shared: Vec<_> =
                        session.subs.iter().filter(|s| s.shared).cloned().collect();
                    for sub in &shared {
                        inner.join_shared(&mut session, sub);
                    }
                    let since = std::time::Instant::now()
                        .checked_sub(age)
                        .unwrap_or_else(std::time::Instant::now);
                    inner.sessions.insert_detached(client_id, session, since);
                    restored += 1;
                }
                other => {
                    if other.is_none() {
                        tracing::warn!(client = %client_id, "mqtt: unreadable stored session dropped");
                    }
                    inner.records.remove(&client_id).await?;
                }
            }
        }
        if restored > 0 {
            tracing::info!(sessions = restored, "mqtt: persistent sessions restored");
        }
        inner.metrics.sessions.set(inner.sessions.len() as f64);
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The retained messages.
    pub fn retained(&self) -> &Retained {
        &self.inner.retained
    }

    /// Accepts MQTT connections on `listener` (over TLS with [`MqttConfig::tls`]) until
    /// shutdown, then waits (at most 5 s) for the connections to close.
    ///
    /// # Errors
    /// When the TLS certificate and key cannot be loaded. Accept errors (such as running out
    /// of file descriptors) are logged and retried after a pause.
    pub async fn serve(&self, listener: TcpListener) -> std::io::Result<()> {
        let inner = &self.inner;
        let stop_reload = inner.shutdown.child_token();
        let _stop_reload = stop_reload.clone().drop_guard();
        let tls = match &inner.config.tls {
            Some(files) => {
                Some(herald_tls::watch(files.clone(), stop_reload).map_err(std::io::Error::other)?)
            }
            None => None,
        };
        let sweeper = {
            let inner = inner.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(30));
                loop {
                    tokio::select! {
                        _ = inner.shutdown.cancelled() => break,
                        _ = tick.tick() => {
                            let gone = inner.sessions.sweep();
                            if !gone.is_empty() {
                                tracing::debug!(sessions = gone.len(), "mqtt: expired sessions removed");
                            }
                            for id in gone {
                                if let Err(e) = inner.records.remove(&id).await {
                                    tracing::warn!(client = %id, error = %e, "mqtt: removing a stored session failed");
                                }
                            }
                            inner.metrics.sessions.set(inner.sessions.len() as f64);
                        }
                    }
                }
            })
        };
        let slots = Arc::new(tokio::sync::Semaphore::new(
            inner.config.max_connections.max(1),
        ));
        loop {
            let permit = tokio::select! {
                _ = inner.shutdown.cancelled() => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            tokio::select! {
                _ = inner.shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let inner = self.inner.clone();
                        let acceptor = tls
                            .as_ref()
                            .map(|t| tokio_rustls::TlsAcceptor::from(t.borrow().clone()));
                        let task = async move {
                            match acceptor {
                                None => conn::run(inner, stream, peer).await,
                                // Boxed: the TLS state would otherwise size every
                                // connection's task, TLS or not.
                                // (A statement of its own: the unboxed future, a temporary
                                // of the statement, would otherwise count too.)
                                Some(acceptor) => {
                                    let tls = Box::pin(tls_connection(inner, acceptor, stream, peer));
                                    tls.await;
                                }
                            }
                            drop(permit);
                        };

                        self.inner.tasks.spawn(task);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "mqtt: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        sweeper.abort();
        self.closed().await;
        Ok(())
    }

    /// After shutdown: waits (at most 5 s) until every connection has closed and saved its
    /// session, whether it came through [`Mqtt::serve`] or a WebSocket.
    pub async fn closed(&self) {
        self.inner.tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("mqtt: connections still open 5 s after shutdown");
        }
    }

    /// Serves one MQTT connection over any byte stream (TCP, TLS, a WebSocket adapter), in a
    /// task of its own.
    pub fn spawn_connection<S>(&self, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let inner = self.inner.clone();
        self.inner
            .tasks
            .spawn(async move { conn::run(inner, stream, peer).await });
    }
}

/// A connection on a TLS listener: the handshake (within [`MqttConfig::connect_timeout`]),
/// then MQTT. A handshake that fails or takes too long is counted and closes the connection.
async fn tls_connection(
    inner: Arc<Inner>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let handshake = tokio::select! {
        _ = inner.shutdown.cancelled() => return,
        h = tokio::time::timeout(inner.config.connect_timeout, acceptor.accept(stream)) => h,
    };
    match handshake {
        Ok(Ok(stream)) => conn::run(inner, stream, peer).await,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "mqtt: TLS handshake failed");
            inner.metrics.tls_failed.increment(1);
        }
        Err(_) => {
            tracing::debug!(%peer, "mqtt: no TLS handshake in time; closing");
            inner.metrics.tls_timeout.increment(1);
        }
    }
}

impl Inner {
    /// Makes `session` a member of the group of its shared subscription `sub`.
    pub(crate) fn join_shared(&self, session: &mut crate::session::Session, sub: &Subscription) {
        let tx = session.shared_sender();
        self.shared
            .join(&self.topics, &self.metrics.lost, sub, session.member_id, tx);
    }

    /// Appends a publish to its topic and, with the retain flag, updates the retained
    /// message. Returns the pending append (durable when it resolves) at once where it can:
    /// a message that is not retained, while the topics engine's queue has room (always, for
    /// a memory-only topic). Otherwise the work left, boxed, so that the caller pays for a
    /// future only then.
    /// `last` is the connection's handle on the topic it appended to last.
    pub(crate) fn publish(self: &Arc<Self>, out: Outgoing, last: &mut LastTopic) -> Publishing {
        let (qos, retain) = (out.qos, out.retain);
        let Some(mut event) =
            Outgoing::event(out.qos, out.retain, out.properties, out.payload, out.origin)
        else {
            return Publishing::Done(Err(PublishError::Invalid));
        };
        // A payload read from a connection is a slice of its read buffer, which the topic's
        // window (and the retained message) would keep whole.
        NewEvent::own_data(std::slice::from_mut(&mut event));
        if !retain && qos == QoS::AtMostOnce {
            return self.send_detached(out.path, vec![event], last);
        }
        if !retain {
            return match self.topics.try_enqueue_to(last, out.path, vec![event]) {
                Ok(pending) => Publishing::Done(Ok(pending)),
                Err(TryEnqueueError::Failed(e)) => Publishing::Done(Err(PublishError::Engine(e))),
                Err(TryEnqueueError::Full { topic, events }) => {
                    self.when_there_is_room(topic, events)
                }
            };
        }
        let inner = self.clone();
        Publishing::Wait(Box::pin(async move {
            let message = (!event.data.is_empty()).then(|| RetainedMessage {
                t_ms: now_ms(),
                content_type: event.content_type.clone(),
                origin: event.origin.clone(),
                attrs: event.attrs.clone(),
                data: event.data.clone(),
            });
            match inner.retained.set(&out.path, message).await {
                Ok(()) => {}
                Err(herald_engine::RetainedError::Full { .. }) => {
                    return Err(PublishError::RetainedFull);
                }
                Err(e) => {
                    tracing::warn!(error = %e, topic = %out.path, "mqtt: retaining failed");
                    return Err(PublishError::Invalid);
                }
            }
            inner
                .topics
                .enqueue(out.path, vec![event])
                .await
                .map_err(PublishError::Engine)
        }))
    }

    /// Appends QoS 0 messages that are not retained, `events` of one topic in one append:
    /// nobody is told their outcome, so they get no reply channel. [`Publishing::Sent`]
    /// once queued; a refusal found before queuing is still reported.
    pub(crate) fn send_detached(
        &self,
        topic: Path,
        events: Vec<NewEvent>,
        last: &mut LastTopic,
    ) -> Publishing {
        match self.topics.try_enqueue_detached_to(last, topic, events) {
            Ok(()) => Publishing::Sent,
            Err(TryEnqueueError::Failed(e)) => Publishing::Done(Err(PublishError::Engine(e))),
            Err(TryEnqueueError::Full { topic, events }) => self.when_there_is_room(topic, events),
        }
    }

    /// The rest of a publish that found the topics engine's queue full: it waits for room
    /// (back-pressure on the publisher), then its outcome is reported as for any other.
    fn when_there_is_room(&self, topic: Path, events: Vec<NewEvent>) -> Publishing {
        let topics = self.topics.clone();
        Publishing::Wait(Box::pin(async move {
            topics
                .enqueue(topic, events)
                .await
                .map_err(PublishError::Engine)
        }))
    }
}

/// What [`Inner::publish`] did.
pub(crate) enum Publishing {
    /// Queued (or refused) at once.
    Done(Result<PendingAppend, PublishError>),
    /// Queued at once, its outcome not reported (QoS 0, see
    /// [`herald_engine::Topics::try_enqueue_detached_to`]).
    Sent,
    /// To be awaited: retaining, or waiting for room in the topics engine's queue.
    Wait(PublishFuture),
}

/// The boxed rest of a publish that has to wait.
pub(crate) type PublishFuture =
    Pin<Box<dyn Future<Output = Result<PendingAppend, PublishError>> + Send>>;

impl Publishing {
    /// The outcome, waiting for it if need be; `None` when it is not reported.
    pub(crate) async fn outcome(self) -> Result<Option<PendingAppend>, PublishError> {
        match self {
            Publishing::Done(result) => result.map(Some),
            Publishing::Sent => Ok(None),
            Publishing::Wait(future) => future.await.map(Some),
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
