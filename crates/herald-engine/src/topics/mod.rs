//! Topics: append-only event logs with sequence numbers, retention and gap-free listeners.
//!
//! A topic is named by a [`Path`] (IorioDB's stream `bucket/stream` is `/bucket/stream`). Each
//! accepted event gets the next sequence number of its topic, starting at 1, and the time it
//! was accepted (ms since the epoch, never going backwards within a topic). `(epoch, seq)` is a
//! resume token: the epoch changes only when the topic is deleted and created again.
//!
//! # How it works
//! - **Appends** go through one actor ([`Topics`] is its cloneable handle). It numbers queued
//!   requests into a batch (up to `max_batch` requests) and commits each batch to the store in
//!   one atomic append with one fsync (group commit). Only then are its events published and
//!   acknowledged, so nothing is visible before it is durable. One commit is in flight at a
//!   time, and while it runs the actor numbers the next batch, which is committed as soon as
//!   the previous commit is published: the fsync overlaps the numbering, and batches are
//!   published in order. Deletes, retention overrides and shutdown wait for everything
//!   numbered before them to be committed. Appends to **memory-only** topics have nothing
//!   to commit and skip the actor: the caller numbers them under the topic's lock and publishes
//!   them at once ([`Topics::try_enqueue`] does so without an `await`).
//! - **Published** means: the events enter the topic's in-memory window (the newest few hundred
//!   events), and the topic's committed sequence number, a `tokio::sync::watch` value, moves.
//!   That is the whole fan-out: the actor does O(1) work per topic per batch, however many
//!   listeners there are.
//! - **Reads and listeners** pull: a [`Listener`] wakes when a watched topic's number moves and
//!   fetches what it has not delivered yet from the in-memory window, or from the store when it
//!   is further behind. So a slow listener never slows a writer or holds memory; it just reads
//!   from disk later, and a listener resuming from an old sequence number replays from disk and
//!   then continues live with no gap and no duplicate.
//! - **Retention** (max events, max bytes, max age; see [`Retention`]) is enforced by a
//!   background job every `retention_interval`, never by the append path. Events older than what
//!   is retained are reported to listeners as [`Delivery::Gap`], never skipped silently.
//! - **Memory-only** topics never touch the store: their history is the in-memory window, and
//!   they start again at epoch = process start after a restart. Together their windows keep
//!   about [`TopicsOptions::memory_budget_bytes`].
//!
//! # Storage layout
//! Each topic incarnation is one store log named `t:{epoch:016x}:{path}`, whose records are
//! [`herald_core::topic::encode_record`]s. Per-topic retention overrides are the snapshot
//! [`RETENTION_SNAPSHOT`].

mod actor;
mod event;
mod listener;
mod retention;
mod window;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use herald_core::topic::{Retention, RetentionRules, decode_record};
use herald_core::{Path, PathLimits, PathPattern, PatternIndex};
use herald_store::{Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use event::{Event, EventParts, Wire};
pub use listener::{Delivery, Listener, Position};

use actor::{Actor, Command};
use window::Window;

/// The prefix of every topic log in the store.
pub const LOG_PREFIX: &str = "t:";
/// The snapshot holding per-topic retention overrides.
pub const RETENTION_SNAPSHOT: &str = "topics-retention";

/// Tuning of the topics engine.
#[derive(Debug, Clone)]
pub struct TopicsOptions {
    /// How many requests may wait in the actor's queue.
    pub queue_capacity: usize,
    /// The largest number of requests handled (and committed) in one batch.
    pub max_batch: usize,
    /// Retention rules by path pattern (from the configuration file).
    pub rules: RetentionRules,
    /// Events kept in memory per topic for listeners that are nearly caught up.
    pub window_events: usize,
    /// Bytes kept in memory per topic, at most (counted as [`footprint`] does).
    pub window_bytes: usize,
    /// What durable topics' windows keep together: each keeps at most an equal share (and at
    /// most `window_bytes`), so that many topics cannot hold memory without bound. What a
    /// window does not hold is read from the store.
    pub window_budget_bytes: usize,
    /// The window of a memory-only topic, which is its whole history: a listener further
    /// behind loses events (and is told, with [`Delivery::Gap`]). Larger than a durable
    /// topic's window, whose older events are still on disk.
    pub memory_window_events: usize,
    /// Bytes a memory-only topic keeps, at most (counted as [`footprint`] does).
    pub memory_window_bytes: usize,
    /// What memory-only topics keep together, about: each keeps at most an equal share
    /// (between [`MIN_MEMORY_SHARE`] and `memory_window_bytes`), so that many busy topics
    /// cannot hold memory without bound.
    pub memory_budget_bytes: usize,
    /// How often retention is enforced.
    pub retention_interval: Duration,
    /// The most events one [`Listener::next`] returns.
    pub listener_batch: usize,
}

impl Default for TopicsOptions {
    fn default() -> Self {
        Self {
            // Large batches amortize the commit's fsync and the store's per-entry costs over
            // many events: with 100 publishers on 100 durable topics, 8,192 instead of 1,024
            // took the MQTT `distinct` benchmark from 0.54–0.58 to 0.78 M messages/s. A batch
            // is only as large as what is queued, so light loads still commit at once.
            queue_capacity: 16384,
            max_batch: 8192,
            rules: RetentionRules::default(),
            window_events: 256,
            window_bytes: 256 * 1024,
            window_budget_bytes: DEFAULT_WINDOW_BUDGET,
            memory_window_events: 65_536,
            memory_window_bytes: 32 * 1024 * 1024,
            memory_budget_bytes: DEFAULT_MEMORY_BUDGET,
            retention_interval: Duration::from_secs(1),
            listener_batch: 1000,
        }
    }
}

/// The default [`TopicsOptions::window_budget_bytes`]: 256 MiB (1,024 full windows).
pub const DEFAULT_WINDOW_BUDGET: usize = 256 * 1024 * 1024;

/// The default [`TopicsOptions::memory_budget_bytes`]: 256 MiB.
pub const DEFAULT_MEMORY_BUDGET: usize = 256 * 1024 * 1024;

/// The least share of [`TopicsOptions::memory_budget_bytes`] a memory-only topic gets,
/// however many there are.
pub const MIN_MEMORY_SHARE: usize = 64 * 1024;

/// The least a durable topic that listeners follow keeps in its window, whatever its share
/// of [`TopicsOptions::window_budget_bytes`] (at most `window_bytes`): with very many
/// topics, most of them idle, the ones read live still serve their listeners from memory.
/// So the windows hold at most the budget plus this much per topic being listened to.
pub const MIN_LISTENED_SHARE: usize = 64 * 1024;

/// The memory an event in a window takes, as the window bounds count it: its data and
/// attributes, the event itself (its shared parts) and its entry in the window (its handle
/// and this footprint).
pub fn footprint(event: &Event) -> usize {
    event.data.len()
        + event.attrs.len()
        + std::mem::size_of::<(Event, u32)>()
        + std::mem::size_of::<EventParts>()
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Its media type, kept with the event (at most 255 bytes).
    pub content_type: Arc<str>,
    /// Who publishes it (an hpfeeds ident, a user), kept with the event (at most 255 bytes);
    /// empty when not recorded.
    pub origin: Arc<str>,
    /// Protocol attributes (at most 65,535 bytes), kept with the event and not interpreted
    /// here: the adapter that wrote them reads them back (MQTT keeps its QoS, retain flag and
    /// publish properties there). Empty when none.
    pub attrs: Bytes,
    /// Its bytes, stored as given.
    pub data: Bytes,
}

impl NewEvent {
    /// A JSON event (`application/json`) without an origin.
    pub fn json(data: impl Into<Bytes>) -> Self {
        Self::new(json_content_type(), data)
    }

    /// An event of the given media type without an origin.
    pub fn new(content_type: Arc<str>, data: impl Into<Bytes>) -> Self {
        Self {
            content_type,
            origin: no_origin(),
            attrs: Bytes::new(),
            data: data.into(),
        }
    }

    /// The same event, published by `origin`.
    #[must_use]
    pub fn with_origin(mut self, origin: Arc<str>) -> Self {
        self.origin = origin;
        self
    }

    /// The same event, with protocol attributes.
    #[must_use]
    pub fn with_attrs(mut self, attrs: Bytes) -> Self {
        self.attrs = attrs;
        self
    }

    /// Copies the data of `events` into one allocation of their own, which they then share.
    ///
    /// Data that slices a larger buffer (a connection's read buffer, as protocol decoders hand
    /// out) keeps all of that buffer alive for as long as any of these events stays in its
    /// topic's window, and the window's budget counts only the slice: a publisher mixing one
    /// publish to a quiet topic into each read of 64 KiB kept 64 KiB alive per quiet topic.
    /// After this, the events keep only their own bytes (for as long as the last of them
    /// stays in a window).
    ///
    /// See [`NewEvent::own_data_if_pinning`] for runs that are not always worth the copy.
    pub fn own_data(events: &mut [NewEvent]) {
        let total = data_len(events);
        copy_data(events, total);
    }

    /// [`NewEvent::own_data`], only when the events' data are slices of a buffer whose
    /// allocation is `allocation` bytes and would keep much more of it alive than their own
    /// bytes if they outlived the rest of it (in a topic's window): more than 8 times. A run
    /// that fills a good part of its buffer (a busy publisher's, the common case) keeps its
    /// slices, as copying every run costs a busy publisher measurably (docs/benchmarks.md,
    /// "Read buffers kept by quiet topics").
    pub fn own_data_if_pinning(events: &mut [NewEvent], allocation: usize) {
        let total = data_len(events);
        if total.saturating_mul(8) < allocation {
            copy_data(events, total);
        }
    }
}

/// The bytes of all of `events`' data.
fn data_len(events: &[NewEvent]) -> usize {
    events.iter().map(|e| e.data.len()).sum()
}

/// Copies the data of `events`, `total` bytes in all, into one allocation they then share.
fn copy_data(events: &mut [NewEvent], total: usize) {
    if total == 0 {
        return;
    }
    let mut copy = BytesMut::with_capacity(total);
    for e in events.iter() {
        copy.extend_from_slice(&e.data);
    }
    let mut copy = copy.freeze();
    for e in events.iter_mut() {
        e.data = copy.split_to(e.data.len());
    }
}

/// The outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The topic's epoch.
    pub epoch: u64,
    /// The sequence number of the first appended event.
    pub first: u64,
    /// The sequence number of the last appended event.
    pub last: u64,
    /// The time given to the events, in ms since the Unix epoch.
    pub t_ms: u64,
}

/// What is known about a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// The topic.
    pub path: Path,
    /// Its current epoch.
    pub epoch: u64,
    /// The oldest retained sequence number (`last + 1` when nothing is retained).
    pub first: u64,
    /// The newest sequence number.
    pub last: u64,
    /// Bytes retained on disk (records as stored; 0 for memory-only topics).
    pub bytes: u64,
    /// The retention in force.
    pub retention: Retention,
    /// Whether the retention comes from a per-topic override rather than the rules.
    pub overridden: bool,
}

/// Errors of the topics engine.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TopicsError {
    /// The engine has stopped (shutdown or a fatal storage error).
    #[error("the topics engine has stopped")]
    Closed,
    /// A conditional append found another last sequence number.
    #[error("conflict: expected last seqnum {expected}, found {got}")]
    Conflict {
        /// What the caller expected.
        expected: u64,
        /// What the topic holds.
        got: u64,
    },
    /// The request is malformed (no events, a content type too long, ...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Storage failed; the engine refuses further appends until restarted.
    #[error("storage failed: {0}")]
    Store(#[source] Arc<StoreError>),
    /// A stored record could not be decoded.
    #[error("stored topic data is corrupt: {0}")]
    Corrupt(String),
}

impl From<StoreError> for TopicsError {
    fn from(e: StoreError) -> Self {
        TopicsError::Store(Arc::new(e))
    }
}

/// One incarnation (epoch) of a topic.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) path: Path,
    pub(crate) epoch: u64,
    /// The store log of this incarnation.
    pub(crate) log: String,
    pub(crate) memory_only: bool,
    /// The last committed sequence number (0 before the first event). Written by the actor
    /// only after the commit (then it wakes the topic's listeners, see [`Topic::wake`]).
    pub(crate) last: AtomicU64,
    /// The time given to the newest event; the actor keeps times from going backwards.
    pub(crate) last_t: AtomicU64,
    /// Set when the topic is deleted (its listeners are woken after setting it).
    pub(crate) deleted: AtomicBool,
    /// When the retention pass must look at this topic next, in ms since the Unix epoch: 0
    /// once events were appended (or the retention changed), the time its oldest event
    /// grows too old for a maximum age, `u64::MAX` when nothing can be due. The pass skips
    /// the topics not due, so an idle server does not read every bounded topic every second.
    pub(crate) trim_due: AtomicU64,
    pub(crate) state: Mutex<TopicState>,
    /// The listeners following this topic, told by [`Topic::wake`] when it moves.
    signals: Mutex<HashMap<u64, Watcher>>,
    /// How many entries `signals` has, read without its lock.
    watchers: AtomicUsize,
}

/// A listener following a topic (see [`Topic::watch`]).
#[derive(Debug)]
struct Watcher {
    signal: Weak<listener::Signal>,
    marked: Arc<AtomicBool>,
}

/// The mutable part of a topic, locked briefly by the actor, the retention job and readers.
#[derive(Debug)]
pub(crate) struct TopicState {
    /// The oldest retained sequence number.
    pub(crate) first: u64,
    /// The newest committed events, contiguous, oldest first.
    pub(crate) window: Window,
}

impl TopicState {
    /// Puts committed events into the window, then trims it to `(max_events, max_bytes)`
    /// (see [`Shared::window_bounds`]; a memory-only topic's window is its whole history, so
    /// trimming it moves `first`).
    pub(crate) fn push(
        &mut self,
        events: impl Iterator<Item = Event>,
        memory_only: bool,
        bounds: (usize, usize),
    ) {
        self.push_evicting(events, memory_only, bounds, drop);
    }

    /// [`TopicState::push`] that hands every event it trims from the window to `evicted`
    /// instead of dropping it, so that the caller can free them later, outside the topic's lock
    /// (the last reference to an event frees its payload and its parts).
    pub(crate) fn push_evicting(
        &mut self,
        events: impl Iterator<Item = Event>,
        memory_only: bool,
        bounds: (usize, usize),
        evicted: impl FnMut(Event),
    ) {
        for e in events {
            self.window.push_back(e);
        }
        self.fit_window(memory_only, bounds, evicted);
    }

    /// Trims the window to `(max_events, max_bytes)` and hands every event trimmed to
    /// `evicted` (see [`TopicState::push_evicting`]). A memory-only topic's window keeps at
    /// least its newest event (its only copy); a durable topic's may end up empty (its
    /// events are read from the store then).
    pub(crate) fn fit_window(
        &mut self,
        memory_only: bool,
        (max_events, max_bytes): (usize, usize),
        mut evicted: impl FnMut(Event),
    ) {
        // The events trimmed are not read here (see `Window`): freeing them is `evicted`'s
        // business.
        let mut trimmed = false;
        while self.window.len() > max_events
            || (self.window.bytes() > max_bytes && (self.window.len() > 1 || !memory_only))
        {
            let Some(old) = self.window.pop_front() else {
                break;
            };
            evicted(old);
            trimmed = true;
        }
        if memory_only && trimmed {
            self.first = self.window.kept_from();
        }
    }
}

impl Topic {
    pub(crate) fn new(path: Path, epoch: u64, memory_only: bool, first: u64, last: u64) -> Self {
        let log = log_name(epoch, &path);
        Self {
            path,
            epoch,
            log,
            memory_only,
            last: AtomicU64::new(last),
            last_t: AtomicU64::new(0),
            deleted: AtomicBool::new(false),
            trim_due: AtomicU64::new(0),
            signals: Mutex::new(HashMap::new()),
            watchers: AtomicUsize::new(0),
            state: Mutex::new(TopicState {
                first,
                window: Window::default(),
            }),
        }
    }

    /// Tells `signal`'s listener about this topic's commits and deletion from now on.
    /// `marked` is the listener's flag for this topic: set when the topic marks itself in the
    /// signal, cleared by the listener when it takes the mark (before it looks at the topic).
    pub(crate) fn watch(&self, signal: &Arc<listener::Signal>, marked: Arc<AtomicBool>) {
        let mut signals = self.signals.lock().unwrap_or_else(|e| e.into_inner());
        signals.insert(
            signal.id(),
            Watcher {
                signal: Arc::downgrade(signal),
                marked,
            },
        );
        self.watchers.store(signals.len(), Ordering::Relaxed);
    }

    /// Stops telling the listener with signal `id`.
    pub(crate) fn unwatch(&self, id: u64) {
        let mut signals = self.signals.lock().unwrap_or_else(|e| e.into_inner());
        signals.remove(&id);
        self.watchers.store(signals.len(), Ordering::Relaxed);
    }

    /// Whether more than one listener follows the topic, so that its new events are worth
    /// rendering once for all of them (see [`Event::render_into`]).
    pub(crate) fn many_listen(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) > 1
    }

    /// Numbers `events` from `first` at `t_ms` (see [`Event::numbered`]).
    pub(crate) fn number(
        &self,
        events: Vec<NewEvent>,
        first: u64,
        t_ms: u64,
    ) -> impl ExactSizeIterator<Item = Event> {
        Event::numbered(events, first, t_ms, self.many_listen())
    }

    /// Events were appended: the retention pass looks at the topic at its next run.
    pub(crate) fn trim_soon(&self) {
        if self.trim_due.load(Ordering::Relaxed) != 0 {
            self.trim_due.store(0, Ordering::Relaxed);
        }
    }

    /// Tells every listener following this topic that it moved (after a commit or a delete).
    /// A listener already told and not yet looking costs one atomic swap: under load most
    /// are, and marking (a lock, a hash of the path, a wake-up) is the expensive part.
    pub(crate) fn wake(&self) {
        let mut signals = self.signals.lock().unwrap_or_else(|e| e.into_inner());
        let before = signals.len();
        signals.retain(|_, w| {
            if w.marked.swap(true, Ordering::AcqRel) {
                return true;
            }
            match w.signal.upgrade() {
                Some(signal) => {
                    signal.mark(&self.path);
                    true
                }
                None => false,
            }
        });
        if signals.len() != before {
            self.watchers.store(signals.len(), Ordering::Relaxed);
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, TopicState> {
        // The state is plain data; a panic elsewhere cannot leave it half-updated in a way
        // that matters more than losing the topic would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The time for the next events: now, or the last events' time if the clock went back
    /// (times never go backwards within a topic). Called by whoever numbers the topic's
    /// events (the actor, or an append to a memory-only topic under its lock).
    pub(crate) fn next_time(&self) -> u64 {
        let t_ms = now_ms().max(self.last_t.load(Ordering::Relaxed));
        self.last_t.store(t_ms, Ordering::Relaxed);
        t_ms
    }

    pub(crate) fn committed_last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }
}

/// The store log name of a topic incarnation.
pub(crate) fn log_name(epoch: u64, path: &Path) -> String {
    format!("{LOG_PREFIX}{epoch:016x}:{path}")
}

/// Reads back a log name written by [`log_name`].
pub(crate) fn parse_log_name(name: &str) -> Option<(u64, Path)> {
    let rest = name.strip_prefix(LOG_PREFIX)?;
    let (epoch, path) = rest.split_once(':')?;
    let epoch = u64::from_str_radix(epoch, 16).ok()?;
    let limits = PathLimits {
        max_segments: usize::MAX,
        max_segment_bytes: usize::MAX,
    };
    Some((epoch, Path::parse_url(path, &limits).ok()?))
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn json_content_type() -> Arc<str> {
    static JSON: OnceLock<Arc<str>> = OnceLock::new();
    JSON.get_or_init(|| Arc::from("application/json")).clone()
}

/// The shared empty origin.
pub(crate) fn no_origin() -> Arc<str> {
    static NONE: OnceLock<Arc<str>> = OnceLock::new();
    NONE.get_or_init(|| Arc::from("")).clone()
}

/// Shares the `Arc<str>` of the common content type instead of allocating one per event.
fn intern_content_type(ct: &str) -> Arc<str> {
    let json = json_content_type();
    if *json == *ct { json } else { Arc::from(ct) }
}

/// Decodes a stored record into an [`Event`] without copying its data.
pub(crate) fn decode_event(seq: u64, raw: Vec<u8>) -> Result<Event, TopicsError> {
    let mut data = Bytes::from(raw);
    let (t_ms, content_type, origin, attrs, offset) = {
        let rec =
            decode_record(&data).map_err(|e| TopicsError::Corrupt(format!("record {seq}: {e}")))?;
        let offset = data.len() - rec.data.len();
        let origin = if rec.origin.is_empty() {
            no_origin()
        } else {
            Arc::from(rec.origin)
        };
        let attrs = if rec.attrs.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(rec.attrs)
        };
        (
            rec.t_ms,
            intern_content_type(rec.content_type),
            origin,
            attrs,
            offset,
        )
    };
    // Advancing keeps the one allocation `Bytes::from(Vec)` made; `slice` would add a shared
    // header per event (measured: ~150 ns against ~30 ns per event in catch-up reads).
    bytes::Buf::advance(&mut data, offset);
    Ok(Event::new(seq, t_ms, content_type, origin, attrs, data))
}

/// The memory-only topic a publisher appended to last (see [`Topics::try_enqueue_to`]).
///
/// A weak reference: it never keeps a deleted topic (and its window) alive, and a deleted or
/// re-created topic is looked up again by path.
#[derive(Debug, Default)]
pub struct LastTopic(Option<Weak<Topic>>);

impl LastTopic {
    /// The remembered topic if it is `path`'s and not deleted.
    fn get(&self, path: &Path) -> Option<Arc<Topic>> {
        let topic = self.0.as_ref()?.upgrade()?;
        (topic.path == *path && !topic.is_deleted()).then_some(topic)
    }

    fn remember(&mut self, topic: &Arc<Topic>) {
        if !self
            .0
            .as_ref()
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(topic)))
        {
            self.0 = Some(Arc::downgrade(topic));
        }
    }
}

/// What [`Shared::append_in_memory`] did.
pub(crate) enum InMemory {
    /// The topic is memory-only: appended (or refused).
    Done(Result<Appended, TopicsError>),
    /// The topic is durable: the events, for the actor.
    Durable(Vec<NewEvent>),
}

/// Which memory-only topic [`Shared::append_in_memory`] may append to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Only the one the caller's [`LastTopic`] remembers.
    Remembered,
    /// Any: the remembered one, else the topic looked up (or created) by its path.
    Any,
}

/// The topics by path, and their paths in order: the topics under a path (a listing, the
/// literal start of a wildcard subscription) are found without walking every topic.
#[derive(Default)]
pub(crate) struct TopicMap {
    by_path: HashMap<Path, Arc<Topic>>,
    ordered: BTreeMap<Path, ()>,
}

impl TopicMap {
    pub(crate) fn get(&self, path: &Path) -> Option<&Arc<Topic>> {
        self.by_path.get(path)
    }

    pub(crate) fn insert(&mut self, topic: Arc<Topic>) {
        self.ordered.insert(topic.path.clone(), ());
        self.by_path.insert(topic.path.clone(), topic);
    }

    pub(crate) fn remove(&mut self, path: &Path) -> Option<Arc<Topic>> {
        self.ordered.remove(path);
        self.by_path.remove(path)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_path.len()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Arc<Topic>> {
        self.by_path.values()
    }

    /// The paths of the topics that are `prefix` or under it, in order.
    pub(crate) fn under<'a>(&'a self, prefix: &'a Path) -> impl Iterator<Item = &'a Path> {
        prefix.entries_under(&self.ordered).map(|(path, ())| path)
    }

    /// The paths of the topics matching `pattern`, in order: looked for under its literal
    /// prefix only.
    pub(crate) fn matching(&self, pattern: &PathPattern) -> Vec<Path> {
        let prefix = pattern.literal_prefix();
        self.under(&prefix)
            .filter(|p| pattern.matches(p))
            .cloned()
            .collect()
    }
}

/// State shared by the handle, the actor, listeners and the retention job.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) topics: RwLock<TopicMap>,
    /// The listeners waiting for a topic that does not exist (yet, or again), by its path:
    /// [`Shared::announce`] marks the path in their signals when it is created. A listener
    /// registers here when it looks for a subscription's topic and finds none
    /// ([`Shared::topic_or_await`]), and takes itself out when it unsubscribes or goes
    /// ([`Shared::stop_awaiting`]). So a topic created or deleted wakes only the listeners
    /// that follow it, not every listener.
    pub(crate) awaited: Mutex<HashMap<Path, listener::Waiting>>,
    pub(crate) rules: RetentionRules,
    pub(crate) overrides: RwLock<HashMap<Path, Retention>>,
    /// Set after a storage failure; appends are refused from then on.
    pub(crate) failed: OnceLock<Arc<StoreError>>,
    pub(crate) options: TopicsOptions,
    pub(crate) metrics: Metrics,
    /// Wildcard subscriptions, told about every topic created that matches them.
    pub(crate) patterns: Mutex<PatternIndex<Arc<PatternSub>>>,
    /// The newest epoch handed out per path, so that a topic created again after a delete
    /// always gets a larger epoch even if the clock has not moved.
    pub(crate) epochs: Mutex<HashMap<Path, u64>>,
    /// How many memory-only topics exist (they share `memory_budget_bytes`).
    pub(crate) memory_topics: AtomicUsize,
    /// How many durable topics exist (their windows share `window_budget_bytes`).
    pub(crate) durable_topics: AtomicUsize,
    /// The byte shares (durable, memory-only) the retention pass last fitted every window
    /// to. An append fits its own window, so windows outgrow their share only when it
    /// shrinks: a pass whose shares are no smaller has nothing to trim.
    pub(crate) fitted_shares: Mutex<Option<(usize, usize)>>,
}

/// One wildcard subscription of a listener: the topics created since it last looked.
#[derive(Debug)]
pub(crate) struct PatternSub {
    pub(crate) id: u64,
    pub(crate) found: Mutex<Vec<Path>>,
    /// The listener's signal, woken when a topic is found.
    pub(crate) signal: Arc<listener::Signal>,
}

impl PatternSub {
    pub(crate) fn found(&self) -> std::sync::MutexGuard<'_, Vec<Path>> {
        self.found.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn patterns(&self) -> std::sync::MutexGuard<'_, PatternIndex<Arc<PatternSub>>> {
        self.patterns.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn topic(&self, path: &Path) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .cloned()
    }

    /// A new incarnation of `path`, not yet visible to anyone.
    pub(crate) fn incarnation(&self, path: &Path, memory_only: bool) -> Arc<Topic> {
        let epoch = {
            let mut epochs = self.epochs.lock().unwrap_or_else(|e| e.into_inner());
            let previous = epochs.get(path).copied().unwrap_or(0);
            let epoch = now_ms().max(previous + 1);
            epochs.insert(path.clone(), epoch);
            epoch
        };
        Arc::new(Topic::new(path.clone(), epoch, memory_only, 1, 0))
    }

    /// Remembers the epoch of a deleted topic, so that its next incarnation gets a larger one.
    pub(crate) fn retire_epoch(&self, path: &Path, epoch: u64) {
        self.epochs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.clone(), epoch);
    }

    /// The equal shares of the two budgets now, in bytes: `window_budget_bytes` over the
    /// durable topics, `memory_budget_bytes` over the memory-only ones (between
    /// [`MIN_MEMORY_SHARE`] and `memory_window_bytes`). They shrink as topics are created.
    pub(crate) fn shares(&self) -> (usize, usize) {
        let o = &self.options;
        let durable = self.durable_topics.load(Ordering::Relaxed).max(1);
        let memory = self.memory_topics.load(Ordering::Relaxed).max(1);
        (
            o.window_budget_bytes / durable,
            (o.memory_budget_bytes / memory)
                .max(MIN_MEMORY_SHARE)
                .min(o.memory_window_bytes),
        )
    }

    /// The most events and bytes `topic`'s window keeps now: its share of its kind's budget
    /// ([`Shared::shares`]); a durable topic that listeners follow keeps at least
    /// [`MIN_LISTENED_SHARE`] (however many topics there are, those being read live keep
    /// their newest events in memory), and none more than `window_bytes`. Windows over their
    /// bound are trimmed at their next append or by the retention pass ([`retention::pass`]).
    pub(crate) fn window_bounds(&self, topic: &Topic) -> (usize, usize) {
        self.window_bounds_at(topic, self.shares())
    }

    /// [`Shared::window_bounds`] with the shares already read (a walk over many topics reads
    /// them once).
    pub(crate) fn window_bounds_at(
        &self,
        topic: &Topic,
        (durable, memory): (usize, usize),
    ) -> (usize, usize) {
        let o = &self.options;
        if topic.memory_only {
            return (o.memory_window_events, memory);
        }
        let share = if topic.watchers.load(Ordering::Relaxed) > 0 {
            durable.max(MIN_LISTENED_SHARE)
        } else {
            durable
        };
        (o.window_events, share.min(o.window_bytes))
    }

    /// Tells wildcard subscriptions and listeners waiting for topics that `path` now exists.
    /// Called once the topic is in `topics`.
    pub(crate) fn announce(&self, path: &Path) {
        self.patterns().matches(path, |sub| {
            sub.found().push(path.clone());
            sub.signal.wake();
        });
        if let Some(waiting) = self.awaited().remove(path) {
            for signal in waiting.into_signals() {
                signal.mark(path);
            }
        }
    }

    fn awaited(&self) -> std::sync::MutexGuard<'_, HashMap<Path, listener::Waiting>> {
        self.awaited.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The topic `path`; or, when there is none, `None` after registering `signal` to be
    /// marked with `path` when it is created (see `awaited`).
    pub(crate) fn topic_or_await(
        &self,
        path: &Path,
        signal: &Arc<listener::Signal>,
    ) -> Option<Arc<Topic>> {
        if let Some(topic) = self.topic(path) {
            return Some(topic);
        }
        let mut awaited = self.awaited();
        // Looked up again under the lock `announce` takes once the topic is in `topics`: a
        // topic created since the first look is found here, or its announcement finds the
        // registration below.
        if let Some(topic) = self.topic(path) {
            return Some(topic);
        }
        awaited
            .entry(path.clone())
            .and_modify(|waiting| waiting.add(signal))
            .or_insert_with(|| listener::Waiting::new(signal));
        None
    }

    /// Takes `signal` out of the listeners waiting for `path`, if it is there.
    pub(crate) fn stop_awaiting(&self, path: &Path, signal: &Arc<listener::Signal>) {
        let mut awaited = self.awaited();
        if let Some(waiting) = awaited.get_mut(path)
            && waiting.remove(signal)
        {
            awaited.remove(path);
        }
    }

    /// The topic `path` if it is memory-only: the existing one, or a new one created (and
    /// announced) here when none exists and its retention makes it memory-only. `None` for
    /// a durable topic, existing or to be created by the actor.
    fn memory_topic(&self, path: &Path) -> Option<Arc<Topic>> {
        if let Some(topic) = self.topic(path) {
            return topic.memory_only.then_some(topic);
        }
        if !self.retention(path).0.memory_only {
            return None;
        }
        let (topic, count) = {
            let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
            if let Some(topic) = topics.get(path) {
                return topic.memory_only.then(|| topic.clone());
            }
            let topic = self.incarnation(path, true);
            topics.insert(topic.clone());
            self.memory_topics.fetch_add(1, Ordering::Relaxed);
            (topic, topics.len())
        };
        self.metrics.topics.set(count as f64);
        self.announce(path);
        Some(topic)
    }

    /// Appends to `path` at once if it is (or is to be created) memory-only: such a topic has
    /// nothing to commit, so its appends skip the actor. The events are numbered under the
    /// topic's lock, which every append to it takes, so numbers never collide and one
    /// caller's appends keep their order. A durable topic's events are handed back, for the
    /// actor. With [`Reach::Remembered`] only the topic `last_topic` remembers is appended
    /// to, and any other's events are handed back as a durable topic's are.
    pub(crate) fn append_in_memory(
        &self,
        path: &Path,
        events: Vec<NewEvent>,
        expect_last: Option<u64>,
        mut last_topic: Option<&mut LastTopic>,
        reach: Reach,
    ) -> InMemory {
        loop {
            let remembered = last_topic.as_deref().and_then(|l| l.get(path));
            let found = match remembered {
                Some(topic) => Some(topic),
                None => match reach {
                    Reach::Any => self.memory_topic(path),
                    Reach::Remembered => None,
                },
            };
            let Some(topic) = found else {
                return InMemory::Durable(events);
            };
            if let Some(l) = last_topic.as_deref_mut() {
                l.remember(&topic);
            }
            if let Some(e) = self.failed.get() {
                return InMemory::Done(Err(TopicsError::Store(e.clone())));
            }
            let mut state = topic.lock();
            if topic.is_deleted() {
                // Deleted since it was looked up: append to its next incarnation.
                continue;
            }
            let last = topic.committed_last();
            if let Some(expected) = expect_last
                && expected != last
            {
                return InMemory::Done(Err(TopicsError::Conflict {
                    expected,
                    got: last,
                }));
            }
            let t_ms = topic.next_time();
            let count = events.len() as u64;
            let mut bytes = 0;
            let numbered = topic.number(events, last + 1, t_ms).inspect(|e| {
                bytes += e.data.len();
            });
            state.push(numbered, true, self.window_bounds(&topic));
            topic.last.store(last + count, Ordering::Release);
            drop(state);
            topic.wake();
            self.metrics.events.increment(count);
            self.metrics.event_bytes.increment(bytes as u64);
            return InMemory::Done(Ok(Appended {
                epoch: topic.epoch,
                first: last + 1,
                last: last + count,
                t_ms,
            }));
        }
    }

    /// The retention in force for `path`, and whether it is a per-topic override.
    pub(crate) fn retention(&self, path: &Path) -> (Retention, bool) {
        if let Some(r) = self
            .overrides
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
        {
            return (*r, true);
        }
        (self.rules.resolve(path), false)
    }

    /// Hands `each` the committed events of `topic` with `from <= seq <= to`, at most `limit`,
    /// oldest first, if the in-memory window holds them (always, for a memory-only topic,
    /// whose window is its history); returns false, having handed nothing, when they must be
    /// read from the store. Like [`Shared::fetch`], the events may start later than `from`
    /// when older ones are no longer retained. Runs under the topic's lock: `each` must be
    /// quick.
    pub(crate) fn read_window(
        &self,
        topic: &Topic,
        from: u64,
        to: u64,
        limit: usize,
        mut each: impl FnMut(Event),
    ) -> bool {
        if from > to || limit == 0 {
            return true;
        }
        let want = usize::try_from(to - from + 1)
            .unwrap_or(usize::MAX)
            .min(limit);
        let state = topic.lock();
        let from = from.max(state.first);
        if from > to {
            return true;
        }
        let skip = match state.window.front_seq() {
            Some(front) if front <= from => usize::try_from(from - front).unwrap_or(usize::MAX),
            // Nothing older than the window exists anywhere.
            _ if topic.memory_only => 0,
            _ => return false,
        };
        state
            .window
            .iter_from(skip)
            .take_while(|e| e.seq <= to)
            .take(want)
            .for_each(|e| each(e.clone()));
        true
    }

    /// Reads committed events of `topic` with `from <= seq <= to`, at most `limit`, from the
    /// in-memory window when it reaches back far enough, else from the store. The result may
    /// start later than `from` when older events are no longer retained.
    pub(crate) async fn fetch(
        &self,
        topic: &Arc<Topic>,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<Event>, TopicsError> {
        if from > to || limit == 0 {
            return Ok(Vec::new());
        }
        let mut events = Vec::new();
        if self.read_window(topic, from, to, limit, |e| events.push(e)) {
            return Ok(events);
        }
        let want = usize::try_from(to - from + 1)
            .unwrap_or(usize::MAX)
            .min(limit);
        let store = self.store.clone();
        let log = topic.log.clone();
        let records = tokio::task::spawn_blocking(move || store.read(&log, from, want))
            .await
            .map_err(|e| TopicsError::Store(Arc::new(StoreError::Engine(Box::new(e)))))??;
        let mut events = Vec::with_capacity(records.len());
        for (seq, raw) in records {
            if seq > to {
                break;
            }
            events.push(decode_event(seq, raw)?);
        }
        Ok(events)
    }
}

/// Metrics of the topics engine.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) events: metrics::Counter,
    pub(crate) event_bytes: metrics::Counter,
    pub(crate) commit_seconds: metrics::Histogram,
    pub(crate) batch_size: metrics::Histogram,
    pub(crate) topics: metrics::Gauge,
    pub(crate) trimmed: metrics::Counter,
    pub(crate) listeners: metrics::Gauge,
    pub(crate) delivered: metrics::Counter,
    pub(crate) gaps: metrics::Counter,
}

impl Metrics {
    fn new() -> Self {
        Self {
            events: metrics::counter!("herald_topic_events_appended_total"),
            event_bytes: metrics::counter!("herald_topic_event_bytes_appended_total"),
            commit_seconds: metrics::histogram!("herald_topic_commit_seconds"),
            batch_size: metrics::histogram!("herald_topic_commit_batch_events"),
            topics: metrics::gauge!("herald_topics"),
            trimmed: metrics::counter!("herald_topic_events_trimmed_total"),
            listeners: metrics::gauge!("herald_topic_listeners"),
            delivered: metrics::counter!("herald_topic_events_delivered_total"),
            gaps: metrics::counter!("herald_topic_gaps_reported_total"),
        }
    }
}

/// The cloneable handle to the topics engine.
#[derive(Debug, Clone)]
pub struct Topics {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

type Reply<T> = oneshot::Sender<T>;

/// An append queued with [`Topics::enqueue`]; await it for the outcome.
#[derive(Debug)]
pub struct PendingAppend(Pending);

#[derive(Debug)]
enum Pending {
    /// Done already (a memory-only topic has nothing to commit); taken by the first poll.
    Done(Option<Result<Appended, TopicsError>>),
    /// Waiting for the actor's commit.
    Queued(oneshot::Receiver<Result<Appended, TopicsError>>),
}

impl PendingAppend {
    fn done(result: Result<Appended, TopicsError>) -> Self {
        Self(Pending::Done(Some(result)))
    }

    /// The outcome if it is known already (always, for a memory-only topic), else the
    /// pending append back: lets a caller skip boxing a future for what is done.
    ///
    /// # Errors
    /// The pending append itself when its commit is still to come.
    pub fn into_done(self) -> Result<Result<Appended, TopicsError>, PendingAppend> {
        match self.0 {
            Pending::Done(Some(result)) => Ok(result),
            Pending::Done(None) => Ok(Err(TopicsError::Closed)),
            Pending::Queued(rx) => Err(PendingAppend(Pending::Queued(rx))),
        }
    }
}

impl std::future::Future for PendingAppend {
    type Output = Result<Appended, TopicsError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.0 {
            // Polled again after completion (a contract breach by the caller): report the
            // engine as gone rather than panic.
            Pending::Done(result) => {
                std::task::Poll::Ready(result.take().unwrap_or(Err(TopicsError::Closed)))
            }
            Pending::Queued(rx) => std::pin::Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(TopicsError::Closed))),
        }
    }
}

/// What [`Topics::prepare`] made of an append.
enum Prepared {
    /// Done already (a memory-only topic).
    Done(PendingAppend),
    /// For the actor: the command, still without a way to answer it (see
    /// [`Topics::with_reply`]).
    ForActor(Command),
}

/// Why [`Topics::try_enqueue`] did not queue an append.
#[derive(Debug)]
pub enum TryEnqueueError {
    /// The actor's queue is full: the append is handed back, for [`Topics::enqueue`] (which
    /// waits for room).
    Full {
        /// The topic, as given.
        topic: Path,
        /// The events, as given.
        events: Vec<NewEvent>,
    },
    /// As [`Topics::enqueue`] fails.
    Failed(TopicsError),
}

/// Why [`Topics::try_append_remembered`] did not append.
#[derive(Debug)]
pub enum RememberedAppend {
    /// Not the remembered memory-only topic: the append, as given.
    Elsewhere {
        /// The topic, as given.
        topic: Path,
        /// The events, as given.
        events: Vec<NewEvent>,
    },
    /// Refused (as [`Topics::enqueue`] fails).
    Failed(TopicsError),
}

impl Topics {
    /// Loads the topics found in `store` (their bounds only: this is fast however much they
    /// hold) and starts the actor on the current tokio runtime.
    ///
    /// # Errors
    /// [`TopicsError::Store`] or [`TopicsError::Corrupt`] when loading fails.
    pub async fn open(
        store: Arc<dyn Store>,
        options: TopicsOptions,
    ) -> Result<(Topics, JoinHandle<()>), TopicsError> {
        let started = std::time::Instant::now();
        let loader = store.clone();
        let loaded = tokio::task::spawn_blocking(move || actor::load(&*loader))
            .await
            .map_err(|e| TopicsError::Corrupt(format!("loading task failed: {e}")))??;
        let shared = Arc::new(Shared {
            store,
            topics: RwLock::new(TopicMap::default()),
            awaited: Mutex::new(HashMap::new()),
            rules: options.rules.clone(),
            overrides: RwLock::new(loaded.overrides),
            failed: OnceLock::new(),
            options: options.clone(),
            metrics: Metrics::new(),
            patterns: Mutex::new(PatternIndex::new()),
            epochs: Mutex::new(HashMap::new()),
            memory_topics: AtomicUsize::new(0),
            durable_topics: AtomicUsize::new(loaded.topics.len()),
            fitted_shares: Mutex::new(None),
        });
        let mut topics = TopicMap::default();
        for (path, l) in loaded.topics {
            let memory_only = false;
            topics.insert(Arc::new(Topic::new(
                path,
                l.epoch,
                memory_only,
                l.first,
                l.last,
            )));
        }
        tracing::info!(
            topics = topics.len(),
            stale_logs = loaded.stale.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "topics loaded"
        );
        shared.metrics.topics.set(topics.len() as f64);
        *shared.topics.write().unwrap_or_else(|e| e.into_inner()) = topics;
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let actor = Actor::new(shared.clone(), loaded.stale);
        let handle = tokio::spawn(actor.run(rx));
        Ok((Topics { tx, shared }, handle))
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(Reply<Result<T, TopicsError>>) -> Command,
    ) -> Result<T, TopicsError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| TopicsError::Closed)?;
        rx.await.unwrap_or(Err(TopicsError::Closed))
    }

    /// Appends `events` to `topic` (creating it if needed) and waits until they are durable.
    /// With `expect_last`, the append happens only if the topic's last sequence number is
    /// that (0 for an empty or missing topic); otherwise [`TopicsError::Conflict`].
    ///
    /// # Errors
    /// [`TopicsError::Conflict`], [`TopicsError::Invalid`] for an empty batch or a content
    /// type over 255 bytes, [`TopicsError::Store`] when storage fails,
    /// [`TopicsError::Closed`] when stopped.
    pub async fn append(
        &self,
        topic: Path,
        events: Vec<NewEvent>,
        expect_last: Option<u64>,
    ) -> Result<Appended, TopicsError> {
        self.queue(topic, events, expect_last).await?.await
    }

    /// Queues an append without waiting for its commit, so that one connection can have many
    /// appends in flight (they join the same group commits). Appends queued by one task to one
    /// topic are applied in the order they were queued. Waits only for queue space (back-pressure).
    /// Await the returned [`PendingAppend`] to learn the outcome.
    ///
    /// # Errors
    /// [`TopicsError::Invalid`] as for [`Topics::append`], [`TopicsError::Closed`] when
    /// stopped.
    pub async fn enqueue(
        &self,
        topic: Path,
        events: Vec<NewEvent>,
    ) -> Result<PendingAppend, TopicsError> {
        self.queue(topic, events, None).await
    }

    /// [`Topics::enqueue`] without waiting for queue space: appends to a memory-only topic
    /// at once, else queues the append if the actor's queue has room. The hot path of
    /// protocol adapters, which need not box an `async` call per message this way.
    ///
    /// # Errors
    /// [`TryEnqueueError::Full`] with the append handed back when the queue is full;
    /// [`TryEnqueueError::Failed`] as [`Topics::enqueue`] fails.
    pub fn try_enqueue(
        &self,
        topic: Path,
        events: Vec<NewEvent>,
    ) -> Result<PendingAppend, TryEnqueueError> {
        self.try_enqueue_to(&mut LastTopic::default(), topic, events)
    }

    /// [`Topics::try_enqueue`] for a publisher that mostly appends to one topic: `last`
    /// remembers that topic if it is memory-only, so the next append to it skips the lookup
    /// by path (a read lock on the map of all topics, shared by every publisher, and a hash).
    ///
    /// # Errors
    /// As [`Topics::try_enqueue`].
    pub fn try_enqueue_to(
        &self,
        last: &mut LastTopic,
        topic: Path,
        events: Vec<NewEvent>,
    ) -> Result<PendingAppend, TryEnqueueError> {
        let command = match self.prepare(topic, events, None, Some(last)) {
            Ok(Prepared::Done(pending)) => return Ok(pending),
            Ok(Prepared::ForActor(command)) => command,
            Err(e) => return Err(TryEnqueueError::Failed(e)),
        };
        let (command, pending) = Self::with_reply(command);
        self.try_send(command)?;
        Ok(pending)
    }

    /// [`Topics::try_enqueue_to`] for an append whose outcome nobody waits for (an MQTT QoS 0
    /// publish): no reply channel is made for it, an allocation and a wake-up less per durable
    /// append. The append is numbered, committed and published like any other; a failed
    /// commit is logged and stops the engine as always, only this caller is not told.
    ///
    /// # Errors
    /// As [`Topics::try_enqueue`]: a refusal found before queuing (invalid, engine failed or
    /// closed) is still reported, and a full queue hands the append back.
    pub fn try_enqueue_detached_to(
        &self,
        last: &mut LastTopic,
        topic: Path,
        events: Vec<NewEvent>,
    ) -> Result<(), TryEnqueueError> {
        match self.prepare(topic, events, None, Some(last)) {
            // A memory-only topic: appended, or refused (the engine has failed).
            Ok(Prepared::Done(pending)) => match pending.into_done() {
                Ok(Err(e)) => Err(TryEnqueueError::Failed(e)),
                _ => Ok(()),
            },
            Ok(Prepared::ForActor(command)) => self.try_send(command),
            Err(e) => Err(TryEnqueueError::Failed(e)),
        }
    }

    /// [`Topics::try_enqueue_detached_to`] only if `topic` is the memory-only topic `last`
    /// remembers (the one it was last used to append to): then the events are appended at
    /// once, as that call would, and `Ok` says so; otherwise they are handed back untouched,
    /// in `Err`, and nothing else is looked up. For a caller that appends to the remembered
    /// topic at once and holds other topics' events to append them together.
    ///
    /// # Errors
    /// [`RememberedAppend::Failed`] when the events are not valid or the engine has failed
    /// (as [`Topics::try_enqueue`]); [`RememberedAppend::Elsewhere`] with the events when
    /// `topic` is not the remembered memory-only topic.
    pub fn try_append_remembered(
        &self,
        last: &mut LastTopic,
        topic: Path,
        events: Vec<NewEvent>,
    ) -> Result<(), RememberedAppend> {
        validate(&topic, &events).map_err(RememberedAppend::Failed)?;
        match self
            .shared
            .append_in_memory(&topic, events, None, Some(last), Reach::Remembered)
        {
            InMemory::Done(Ok(_)) => Ok(()),
            InMemory::Done(Err(e)) => Err(RememberedAppend::Failed(e)),
            InMemory::Durable(events) => Err(RememberedAppend::Elsewhere { topic, events }),
        }
    }

    /// Queues `command` for the actor if there is room, else hands its append back.
    fn try_send(&self, command: Command) -> Result<(), TryEnqueueError> {
        match self.tx.try_send(command) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(Command::Append { topic, events, .. })) => {
                Err(TryEnqueueError::Full { topic, events })
            }
            Err(_) => Err(TryEnqueueError::Failed(TopicsError::Closed)),
        }
    }

    /// Gives an append command a reply channel, and the pending append that receives it.
    fn with_reply(mut command: Command) -> (Command, PendingAppend) {
        let (tx, rx) = oneshot::channel();
        if let Command::Append { reply, .. } = &mut command {
            *reply = Some(tx);
        }
        (command, PendingAppend(Pending::Queued(rx)))
    }

    /// Validates and queues an append; the returned future resolves once it is committed.
    async fn queue(
        &self,
        topic: Path,
        events: Vec<NewEvent>,
        expect_last: Option<u64>,
    ) -> Result<PendingAppend, TopicsError> {
        match self.prepare(topic, events, expect_last, None)? {
            Prepared::Done(pending) => Ok(pending),
            Prepared::ForActor(command) => {
                let (command, pending) = Self::with_reply(command);
                self.tx
                    .send(command)
                    .await
                    .map_err(|_| TopicsError::Closed)?;
                Ok(pending)
            }
        }
    }

    /// Validates an append and does it at once if the topic is memory-only (nothing to
    /// commit); else makes the actor's command, with no reply yet.
    fn prepare(
        &self,
        topic: Path,
        events: Vec<NewEvent>,
        expect_last: Option<u64>,
        last_topic: Option<&mut LastTopic>,
    ) -> Result<Prepared, TopicsError> {
        validate(&topic, &events)?;
        let events =
            match self
                .shared
                .append_in_memory(&topic, events, expect_last, last_topic, Reach::Any)
            {
                InMemory::Done(result) => return Ok(Prepared::Done(PendingAppend::done(result))),
                InMemory::Durable(events) => events,
            };
        let command = Command::Append {
            topic,
            events,
            expect_last,
            reply: None,
        };
        Ok(Prepared::ForActor(command))
    }

    /// Reads up to `limit` retained events with `seq >= from`, oldest first.
    ///
    /// # Errors
    /// [`TopicsError::Store`] or [`TopicsError::Corrupt`] when the store fails.
    pub async fn read(
        &self,
        topic: &Path,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Event>, TopicsError> {
        let Some(t) = self.shared.topic(topic) else {
            return Ok(Vec::new());
        };
        let last = t.committed_last();
        self.shared.fetch(&t, from.max(1), last, limit).await
    }

    /// Reads the newest `limit` events, oldest first.
    ///
    /// # Errors
    /// As [`Topics::read`].
    pub async fn read_last(&self, topic: &Path, limit: usize) -> Result<Vec<Event>, TopicsError> {
        self.read_before(topic, u64::MAX, limit).await
    }

    /// Reads the newest `limit` events with `seq < before`, oldest first: pages backwards
    /// through a topic.
    ///
    /// # Errors
    /// As [`Topics::read`].
    pub async fn read_before(
        &self,
        topic: &Path,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Event>, TopicsError> {
        let Some(t) = self.shared.topic(topic) else {
            return Ok(Vec::new());
        };
        let last = t.committed_last().min(before.saturating_sub(1));
        if last == 0 || limit == 0 {
            return Ok(Vec::new());
        }
        let first = t.lock().first;
        let from = last
            .saturating_sub(limit as u64)
            .saturating_add(1)
            .max(first);
        self.shared.fetch(&t, from, last, limit).await
    }

    /// What is known about `topic`, or `None` when it does not exist.
    ///
    /// # Errors
    /// [`TopicsError::Store`] when the store cannot give the size.
    pub async fn info(&self, topic: &Path) -> Result<Option<TopicInfo>, TopicsError> {
        let Some(t) = self.shared.topic(topic) else {
            return Ok(None);
        };
        let bytes = if t.memory_only {
            0
        } else {
            let store = self.shared.store.clone();
            let log = t.log.clone();
            tokio::task::spawn_blocking(move || store.bounds(&log))
                .await
                .map_err(|e| TopicsError::Store(Arc::new(StoreError::Engine(Box::new(e)))))??
                .map_or(0, |b| b.bytes)
        };
        let (retention, overridden) = self.shared.retention(topic);
        let first = t.lock().first;
        Ok(Some(TopicInfo {
            path: t.path.clone(),
            epoch: t.epoch,
            first,
            last: t.committed_last(),
            bytes,
            retention,
            overridden,
        }))
    }

    /// The existing topics at or under `prefix`, sorted.
    pub fn list(&self, prefix: &Path) -> Vec<Path> {
        self.shared
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .under(prefix)
            .cloned()
            .collect()
    }

    /// Deletes `topic` and its history; returns whether it existed. Listeners are told with
    /// [`Delivery::Reset`] once the topic is created again, with a new epoch.
    ///
    /// # Errors
    /// [`TopicsError::Store`] when storage fails, [`TopicsError::Closed`] when stopped.
    pub async fn delete(&self, topic: &Path) -> Result<bool, TopicsError> {
        let topic = topic.clone();
        self.request(|reply| Command::Delete { topic, reply }).await
    }

    /// Sets (or with `None`, removes) the retention override of `topic`. Durable before it
    /// returns; enforced within one retention interval.
    ///
    /// # Errors
    /// [`TopicsError::Store`] when storage fails, [`TopicsError::Closed`] when stopped.
    pub async fn set_retention(
        &self,
        topic: &Path,
        retention: Option<Retention>,
    ) -> Result<(), TopicsError> {
        let topic = topic.clone();
        self.request(|reply| Command::SetRetention {
            topic,
            retention,
            reply,
        })
        .await
    }

    /// The retention in force for `topic` (whether or not it exists), and whether it is a
    /// per-topic override.
    pub fn retention(&self, topic: &Path) -> (Retention, bool) {
        self.shared.retention(topic)
    }

    /// A new listener with no subscriptions.
    pub fn listener(&self) -> Listener {
        Listener::new(self.shared.clone())
    }

    /// Stops the actor after the queued requests and syncs the store.
    ///
    /// # Errors
    /// [`TopicsError::Closed`] when it had already stopped.
    pub async fn shutdown(&self) -> Result<(), TopicsError> {
        self.request(|reply| Command::Shutdown { reply }).await
    }
}

fn validate(topic: &Path, events: &[NewEvent]) -> Result<(), TopicsError> {
    if topic.is_root() {
        return Err(TopicsError::Invalid("the root path is not a topic".into()));
    }
    if events.is_empty() {
        return Err(TopicsError::Invalid("no events to append".into()));
    }
    if events
        .iter()
        .any(|e| e.content_type.len() > herald_core::topic::MAX_CONTENT_TYPE_LEN)
    {
        return Err(TopicsError::Invalid(format!(
            "content type longer than {} bytes",
            herald_core::topic::MAX_CONTENT_TYPE_LEN
        )));
    }
    if events
        .iter()
        .any(|e| e.origin.len() > herald_core::topic::MAX_ORIGIN_LEN)
    {
        return Err(TopicsError::Invalid(format!(
            "origin longer than {} bytes",
            herald_core::topic::MAX_ORIGIN_LEN
        )));
    }
    if events
        .iter()
        .any(|e| e.attrs.len() > herald_core::topic::MAX_ATTRS_LEN)
    {
        return Err(TopicsError::Invalid(format!(
            "attributes longer than {} bytes",
            herald_core::topic::MAX_ATTRS_LEN
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `own_data` leaves the events' bytes as they were, in one new allocation of exactly
    /// their size (each event's data right after the previous one's), not in the buffer they
    /// sliced.
    #[test]
    fn own_data_copies_a_run_into_one_allocation_of_its_own() {
        let buffer = Bytes::from(b"xxAAAyyBByyyyC".to_vec());
        let ranges = [2..5, 7..9, 9..9, 13..14];
        let mut events: Vec<NewEvent> = ranges
            .iter()
            .map(|r| NewEvent::json(buffer.slice(r.clone())))
            .collect();
        NewEvent::own_data(&mut events);
        let data: Vec<&[u8]> = events.iter().map(|e| &e.data[..]).collect();
        assert_eq!(data, [&b"AAA"[..], b"BB", b"", b"C"]);
        let inside = buffer.as_ptr_range();
        let at = |i: usize| events[i].data.as_ptr();
        assert!(events.iter().all(|e| !inside.contains(&e.data.as_ptr())));
        assert_eq!(at(1), at(0).wrapping_add(3));
        assert_eq!(at(3), at(1).wrapping_add(2));
        // Nothing to copy: nothing allocated, nothing changed.
        let mut empty = vec![NewEvent::json(Bytes::new())];
        NewEvent::own_data(&mut empty);
        assert!(empty[0].data.is_empty());
    }

    /// `own_data_if_pinning` copies only data that would keep more than 8 times its size of
    /// the buffer alive.
    #[test]
    fn own_data_if_pinning_copies_only_small_slices_of_large_buffers() {
        let buffer = Bytes::from(vec![7u8; 64]);
        let inside = buffer.as_ptr_range();
        let run = || {
            vec![
                NewEvent::json(buffer.slice(0..3)),
                NewEvent::json(buffer.slice(10..15)),
            ]
        };
        let mut kept = run();
        NewEvent::own_data_if_pinning(&mut kept, 64);
        assert!(kept.iter().all(|e| inside.contains(&e.data.as_ptr())));
        let mut copied = run();
        NewEvent::own_data_if_pinning(&mut copied, 65);
        assert!(copied.iter().all(|e| !inside.contains(&e.data.as_ptr())));
        assert_eq!(copied[1].data, buffer.slice(10..15));
    }

    /// The retention pass reads a bounded topic's log only when it may have something to
    /// trim: after appends, or when its oldest event grows too old for a maximum age.
    #[tokio::test]
    async fn the_retention_pass_looks_only_at_topics_due() {
        let p = |s: &str| Path::parse_url(s, &PathLimits::default()).expect("path");
        let pattern = |s: &str| PathPattern::parse(s, &PathLimits::default()).expect("pattern");
        let rules = RetentionRules::new(vec![
            (
                pattern("/count/#"),
                Retention {
                    max_events: Some(2),
                    ..Retention::default()
                },
            ),
            (
                pattern("/age/#"),
                Retention {
                    max_age_ms: Some(60_000),
                    ..Retention::default()
                },
            ),
        ]);
        let options = TopicsOptions {
            rules,
            retention_interval: Duration::from_millis(10),
            ..TopicsOptions::default()
        };
        let store = Arc::new(herald_store::MemoryStore::default());
        let (topics, _actor) = Topics::open(store, options).await.expect("open");
        let due = |path: &str| {
            let topic = topics.shared.topic(&p(path)).expect("topic");
            topic.trim_due.load(Ordering::Relaxed)
        };
        let settled = async |path: &str, want: &dyn Fn(u64) -> bool| {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !want(due(path)) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{path}: due {}",
                    due(path)
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let before = now_ms();
        for path in ["/count/a", "/age/a", "/free/a"] {
            let events = (0..5).map(|i| NewEvent::json(format!("{i}"))).collect();
            topics.append(p(path), events, None).await.expect("append");
        }
        // Count: trimmed, then not due until appended to.
        settled("/count/a", &|d| d == u64::MAX).await;
        assert_eq!(
            topics.shared.topic(&p("/count/a")).expect("t").lock().first,
            4
        );
        // Age: due when its oldest event is a minute old.
        settled("/age/a", &|d| d != 0).await;
        let d = due("/age/a");
        assert!(
            (before + 60_000..=now_ms() + 60_001).contains(&d),
            "due {d}"
        );
        // Unbounded: never due.
        settled("/free/a", &|d| d == u64::MAX).await;

        topics
            .append(p("/count/a"), vec![NewEvent::json("5")], None)
            .await
            .expect("append");
        settled("/count/a", &|d| d == u64::MAX).await;
        assert_eq!(
            topics.shared.topic(&p("/count/a")).expect("t").lock().first,
            5
        );
    }

    /// Durable topics' windows share `window_budget_bytes`: a window is trimmed to its share
    /// when it is appended to and, once more topics exist, by the retention pass even if its
    /// topic is idle; a listener still gets every event, the older ones from the store.
    #[tokio::test]
    async fn durable_windows_share_their_budget() {
        let p = |s: &str| Path::parse_url(s, &PathLimits::default()).expect("path");
        let store = Arc::new(herald_store::MemoryStore::default());
        let options = TopicsOptions {
            window_budget_bytes: 64 * 1024,
            retention_interval: Duration::from_millis(20),
            ..TopicsOptions::default()
        };
        let (topics, _actor) = Topics::open(store, options).await.expect("open");
        let window_bytes = |path: &str| {
            let topic = topics.shared.topic(&p(path)).expect("topic");
            let state = topic.lock();
            (state.window.len(), state.window.bytes())
        };
        for i in 0..100u32 {
            let data = vec![b'x'; 1000 + i as usize];
            topics
                .append(p("/a"), vec![NewEvent::json(data)], None)
                .await
                .expect("append");
        }
        let (events, bytes) = window_bytes("/a");
        assert!(
            bytes <= 64 * 1024 && events < 100,
            "{events} events, {bytes} bytes"
        );
        assert!(
            events > 30,
            "the only topic has the whole budget: {events} events"
        );

        // Seven more topics: each has an eighth of the budget, /a too although it is idle.
        for name in ["/b", "/c", "/d", "/e", "/f", "/g", "/h"] {
            topics
                .append(p(name), vec![NewEvent::json("{}")], None)
                .await
                .expect("append");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while window_bytes("/a").1 > 8 * 1024 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                window_bytes("/a")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A share smaller than one event: durable windows keep nothing then.
        for i in 0..600 {
            topics
                .append(p(&format!("/many/{i}")), vec![NewEvent::json("{}")], None)
                .await
                .expect("append");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while window_bytes("/a").0 > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                window_bytes("/a")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let mut listener = topics.listener();
        listener.subscribe(p("/a"), Some(1));
        let mut seqs = Vec::new();
        while seqs.len() < 100 {
            for d in listener.next().await.expect("next") {
                match d {
                    Delivery::Event { event, .. } => seqs.push(event.seq),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(seqs, (1..=100).collect::<Vec<u64>>());

        // `count` events of 1,000 bytes.
        let fill = async |path: &str, count: usize| {
            for _ in 0..count {
                topics
                    .append(p(path), vec![NewEvent::json(vec![b'z'; 1000])], None)
                    .await
                    .expect("append");
            }
        };

        // A topic that a listener follows keeps at least `MIN_LISTENED_SHARE` (here the
        // whole budget) however small the shares are.
        let mut on_b = topics.listener();
        on_b.subscribe(p("/b"), None);
        fill("/b", 100).await;
        let (events, bytes) = window_bytes("/b");
        assert!(
            events > 40 && bytes <= MIN_LISTENED_SHARE,
            "{events} events, {bytes} bytes"
        );
        drop(on_b);

        // Deleted topics give their share back.
        for name in ["/b", "/c", "/d", "/e", "/f", "/g", "/h"] {
            assert!(topics.delete(&p(name)).await.expect("delete"));
        }
        for i in 0..600 {
            assert!(
                topics
                    .delete(&p(&format!("/many/{i}")))
                    .await
                    .expect("delete")
            );
        }
        fill("/a", 60).await;
        let (events, bytes) = window_bytes("/a");
        assert!(
            events > 30 && bytes <= 64 * 1024,
            "{events} events, {bytes} bytes"
        );
    }

    fn event(seq: u64, data: &'static [u8]) -> Event {
        Event::new(
            seq,
            0,
            Arc::from("text/plain"),
            Arc::from(""),
            Bytes::new(),
            Bytes::from_static(data),
        )
    }

    fn state(first: u64) -> TopicState {
        TopicState {
            first,
            window: Window::default(),
        }
    }

    #[test]
    fn trimmed_events_go_to_the_sink_oldest_first_and_the_window_stays_bounded() {
        let mut s = state(1);
        let mut evicted = Vec::new();
        s.push_evicting(
            (1..=5).map(|seq| event(seq, b"x")),
            false,
            (3, usize::MAX),
            |e| evicted.push(e.seq),
        );
        assert_eq!(evicted, [1, 2]);
        assert_eq!(s.window.len(), 3);
        assert_eq!(s.window.bytes(), 3 * footprint(&event(0, b"x")));
        // A durable topic's `first` is its store's business; a memory-only one's moves.
        assert_eq!(s.first, 1);
        let mut memory = state(1);
        let mut evicted = Vec::new();
        let big = footprint(&event(0, b"yy"));
        memory.push_evicting(
            (1..=4).map(|seq| event(seq, b"yy")),
            true,
            (usize::MAX, 2 * big),
            |e| evicted.push(e.seq),
        );
        assert_eq!(evicted, [1, 2]);
        assert_eq!(memory.first, 3);
        // `push` drops them instead, with the same window.
        let mut dropped = state(1);
        dropped.push((1..=5).map(|seq| event(seq, b"x")), false, (3, usize::MAX));
        assert_eq!(dropped.window.len(), 3);
        assert_eq!(dropped.window.bytes(), s.window.bytes());
    }
}
