//! Listeners: gap-free, duplicate-free delivery of a set of topics.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use herald_core::{Path, PathPattern};
use tokio::sync::Notify;

use super::{Event, PatternSub, Shared, Topic, TopicsError};

/// What a [`Listener`] delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The next event of a topic.
    Event {
        /// The topic.
        topic: Path,
        /// The topic's epoch.
        epoch: u64,
        /// The event.
        event: Event,
    },
    /// Events `from..=to` were asked for (or due next) but are no longer retained; delivery
    /// goes on with `to + 1`.
    Gap {
        /// The topic.
        topic: Path,
        /// The first missing sequence number.
        from: u64,
        /// The last missing sequence number.
        to: u64,
    },
    /// The topic was deleted and created again (or its epoch is not the one resumed from):
    /// numbering restarts at 1 in `epoch`, and the events of the new epoch follow.
    Reset {
        /// The topic.
        topic: Path,
        /// The new epoch.
        epoch: u64,
    },
}

/// Where a subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The epoch `next` counts in; `None` until the topic has been seen.
    pub epoch: Option<u64>,
    /// The next sequence number to deliver.
    pub next: u64,
}

#[derive(Debug)]
struct Sub {
    path: Path,
    /// The wildcard subscription that brought this topic in, if any.
    pattern: Option<u64>,
    /// The incarnation being followed.
    attached: Option<Arc<Topic>>,
    position: Position,
    /// Whether it is in the listener's `todo` queue.
    queued: bool,
    /// Set by the followed topic when it marks itself in the signal; cleared here when the
    /// mark is taken, before the topic is looked at (so a later move marks it again).
    marked: Arc<AtomicBool>,
}

/// How topics tell a listener that they moved: each topic a listener follows holds its
/// signal, marks its own path in it after a commit (or a delete) and wakes the listener, which
/// then looks only at the marked topics. A listener following thousands of topics (a `#`
/// subscription) thus does work in proportion to what changed, not to what it follows.
#[derive(Debug)]
pub(crate) struct Signal {
    id: u64,
    dirty: Mutex<HashSet<Path>>,
    notify: Notify,
}

impl Signal {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Marks `topic` as moved and wakes the listener (or leaves it a permit, so a wake-up
    /// between its last look and its wait is not lost).
    pub(crate) fn mark(&self, topic: &Path) {
        let fresh = self
            .dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic.clone());
        if fresh {
            self.notify.notify_one();
        }
    }

    /// Wakes the listener without marking a topic (or leaves it a permit).
    pub(crate) fn wake(&self) {
        self.notify.notify_one();
    }

    /// Moves the marked topics into `into` (empty), which keeps its table for the next time.
    fn take_into(&self, into: &mut HashSet<Path>) {
        std::mem::swap(
            &mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner),
            into,
        );
    }
}

/// The signals of the listeners waiting for one topic to be created (see
/// `Shared::topic_or_await`). Most topics waited for have one listener, kept without an
/// allocation: an idle MQTT session subscribed to a topic nobody published to yet is one.
#[derive(Debug)]
pub(crate) enum Waiting {
    One(Weak<Signal>),
    Many(Vec<Weak<Signal>>),
}

impl Waiting {
    pub(crate) fn new(signal: &Arc<Signal>) -> Self {
        Self::One(Arc::downgrade(signal))
    }

    /// Adds `signal` unless it is there; drops the signals of listeners gone.
    pub(crate) fn add(&mut self, signal: &Arc<Signal>) {
        match self {
            Self::One(w) if is(w, signal) => {}
            Self::One(w) if w.strong_count() == 0 => *w = Arc::downgrade(signal),
            Self::One(w) => *self = Self::Many(vec![w.clone(), Arc::downgrade(signal)]),
            Self::Many(ws) => {
                if !ws.iter().any(|w| is(w, signal)) {
                    ws.retain(|w| w.strong_count() > 0);
                    ws.push(Arc::downgrade(signal));
                }
            }
        }
    }

    /// Takes `signal` out (and the signals of listeners gone); returns whether none is left.
    pub(crate) fn remove(&mut self, signal: &Arc<Signal>) -> bool {
        match self {
            Self::One(w) => is(w, signal) || w.strong_count() == 0,
            Self::Many(ws) => {
                ws.retain(|w| w.strong_count() > 0 && !is(w, signal));
                ws.is_empty()
            }
        }
    }

    /// The signals of the listeners still there.
    pub(crate) fn into_signals(self) -> impl Iterator<Item = Arc<Signal>> {
        let ws = match self {
            Self::One(w) => vec![w],
            Self::Many(ws) => ws,
        };
        ws.into_iter().filter_map(|w| w.upgrade())
    }
}

/// Whether `w` refers to `signal`.
fn is(w: &Weak<Signal>, signal: &Arc<Signal>) -> bool {
    std::ptr::eq(w.as_ptr(), Arc::as_ptr(signal))
}

static NEXT_SIGNAL_ID: AtomicU64 = AtomicU64::new(1);

/// Follows a set of topics and delivers their events in order, each exactly once.
///
/// A subscription starts at a sequence number (or at "now"). [`Listener::next`] first replays
/// what is retained from there, from memory or disk, then waits for new events. Nothing is
/// pushed into the listener: it pulls from the topic when the topic's committed sequence
/// number moves, so a slow listener costs no memory and never slows a writer.
///
/// Dropping it ends all its subscriptions.
#[derive(Debug)]
pub struct Listener {
    shared: Arc<Shared>,
    /// Boxed: a table's smallest size is four slots, and most listeners follow one topic.
    subs: HashMap<Path, Box<Sub>>,
    /// Deliveries prepared but not yet returned. Kept here (not in a local) so that
    /// cancelling [`Listener::next`] loses nothing.
    ready: Vec<Delivery>,
    /// The subscriptions to look at, in turn (so that a busy topic cannot starve the others):
    /// new ones, those a topic signalled, and those with more to deliver than one batch held.
    todo: VecDeque<Path>,
    signal: Arc<Signal>,
    /// Wildcard subscriptions, registered in the shared pattern index.
    patterns: Vec<(PathPattern, Arc<PatternSub>)>,
    /// The topics taken from the signal, kept empty between looks (for its table).
    marked: HashSet<Path>,
}

static NEXT_PATTERN_ID: AtomicU64 = AtomicU64::new(1);

impl Listener {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        shared.metrics.listeners.increment(1.0);
        let signal = Arc::new(Signal {
            id: NEXT_SIGNAL_ID.fetch_add(1, Ordering::Relaxed),
            dirty: Mutex::new(HashSet::new()),
            notify: Notify::new(),
        });
        Self {
            shared,
            subs: HashMap::new(),
            ready: Vec::new(),
            todo: VecDeque::new(),
            signal,
            patterns: Vec::new(),
            marked: HashSet::new(),
        }
    }

    /// Follows `topic`'s incarnation `t` for subscription `sub`.
    fn attach(&self, sub: &mut Sub, t: Arc<Topic>) {
        t.watch(&self.signal, sub.marked.clone());
        sub.attached = Some(t);
    }

    /// Queues `path` to be looked at in the next round (once).
    fn enqueue(&mut self, path: &Path) {
        if let Some(sub) = self.subs.get_mut(path)
            && !sub.queued
        {
            sub.queued = true;
            if self.todo.capacity() == 0 {
                // Most listeners follow one topic: a queue of one to start with.
                self.todo.reserve_exact(1);
            }
            self.todo.push_back(path.clone());
        }
    }

    /// Subscribes to `topic`. With `from`, every retained event with `seq >= from` is
    /// replayed first; without, only events appended after this call are delivered. A topic
    /// that does not exist yet is followed from its first event once created.
    ///
    /// A `from` beyond the next sequence number means the caller saw events this incarnation of
    /// the topic does not have: the topic was deleted and created again since (nothing is ever
    /// visible before it is durable, so it cannot be lost data). Delivery then starts with a
    /// [`Delivery::Reset`] and the current epoch's first event, rather than silently skipping
    /// them. The same holds for a `from` above 1 on a topic that does not exist yet.
    ///
    /// Returns false (and changes nothing) when already subscribed to `topic`.
    pub fn subscribe(&mut self, topic: Path, from: Option<u64>) -> bool {
        self.subscribe_via(topic, from, None)
    }

    fn subscribe_via(&mut self, topic: Path, from: Option<u64>, pattern: Option<u64>) -> bool {
        if self.is_subscribed(&topic) {
            return false;
        }
        let mut sub = Sub {
            path: topic,
            pattern,
            attached: None,
            position: Position {
                epoch: None,
                next: 1,
            },
            queued: false,
            marked: Arc::default(),
        };
        match self.shared.topic(&sub.path) {
            Some(t) => {
                let last = t.committed_last();
                let next = match from {
                    None => last + 1,
                    Some(f) if f > last + 1 => {
                        self.ready.push(Delivery::Reset {
                            topic: sub.path.clone(),
                            epoch: t.epoch,
                        });
                        1
                    }
                    Some(f) => f.max(1),
                };
                sub.position = Position {
                    epoch: Some(t.epoch),
                    next,
                };
                self.attach(&mut sub, t);
            }
            // No real epoch is 0, so the incarnation that appears later is announced by a
            // reset, then delivered from 1.
            None if from.is_some_and(|f| f > 1) => sub.position.epoch = Some(0),
            None => {}
        }
        let path = sub.path.clone();
        self.subs.insert(path.clone(), Box::new(sub));
        self.enqueue(&path);
        true
    }

    /// Subscribes to `topic` resuming from `(epoch, from)`, a position an earlier listener
    /// reached. When the topic's epoch is another one, a [`Delivery::Reset`] comes first and
    /// delivery starts at 1 of the current epoch.
    ///
    /// Returns false (and changes nothing) when already subscribed to `topic`.
    pub fn resume(&mut self, topic: Path, epoch: u64, from: u64) -> bool {
        if self.is_subscribed(&topic) {
            return false;
        }
        let mut sub = Sub {
            path: topic,
            pattern: None,
            attached: None,
            position: Position {
                epoch: Some(epoch),
                next: from.max(1),
            },
            queued: false,
            marked: Arc::default(),
        };
        if let Some(t) = self.shared.topic(&sub.path) {
            if t.epoch == epoch {
                let last = t.committed_last();
                sub.position.next = sub.position.next.min(last + 1);
            } else {
                self.ready.push(Delivery::Reset {
                    topic: sub.path.clone(),
                    epoch: t.epoch,
                });
                sub.position = Position {
                    epoch: Some(t.epoch),
                    next: 1,
                };
            }
            self.attach(&mut sub, t);
        }
        let path = sub.path.clone();
        self.subs.insert(path.clone(), Box::new(sub));
        self.enqueue(&path);
        true
    }

    /// Subscribes to every topic matching `pattern` (`+` one segment, a final `#` any number),
    /// existing ones and those created later: each existing one as [`Listener::subscribe`]
    /// with `from`, each new one from its first event. Topics already subscribed stay as they
    /// are. Returns false (and changes nothing) when `pattern` is already subscribed.
    ///
    /// New topics are found through the shared pattern index as they are created, so this
    /// costs nothing per topic that does not match. Each matching topic then counts as one
    /// subscription of this listener.
    pub fn subscribe_pattern(&mut self, pattern: PathPattern, from: Option<u64>) -> bool {
        if self.patterns.iter().any(|(p, _)| *p == pattern) {
            return false;
        }
        let sub = Arc::new(PatternSub {
            id: NEXT_PATTERN_ID.fetch_add(1, Ordering::Relaxed),
            found: Default::default(),
            signal: self.signal.clone(),
        });
        // Register first, then look at the existing topics: a topic created in between is seen
        // twice (and subscribed once), never missed.
        self.shared.patterns().insert(&pattern, sub.clone());
        let existing = self
            .shared
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .matching(&pattern);
        for path in existing {
            self.subscribe_via(path, from, Some(sub.id));
        }
        self.patterns.push((pattern, sub));
        true
    }

    /// Ends a wildcard subscription and the subscriptions to the topics it brought in;
    /// returns whether there was one.
    pub fn unsubscribe_pattern(&mut self, pattern: &PathPattern) -> bool {
        let Some(i) = self.patterns.iter().position(|(p, _)| p == pattern) else {
            return false;
        };
        let (pattern, sub) = self.patterns.swap_remove(i);
        self.shared.patterns().remove(&pattern, |s| s.id == sub.id);
        let topics: Vec<Path> = self
            .subs
            .values()
            .filter(|s| s.pattern == Some(sub.id))
            .map(|s| s.path.clone())
            .collect();
        for topic in &topics {
            self.unsubscribe(topic);
        }
        true
    }

    /// Subscribes to the topics created since the last look that match a wildcard
    /// subscription.
    fn adopt_new_topics(&mut self) {
        let found: Vec<(u64, Vec<Path>)> = self
            .patterns
            .iter()
            .map(|(_, sub)| (sub.id, std::mem::take(&mut *sub.found())))
            .filter(|(_, paths)| !paths.is_empty())
            .collect();
        for (id, paths) in found {
            for path in paths {
                self.subscribe_via(path, Some(1), Some(id));
            }
        }
    }

    /// Ends the subscription to `topic`; returns whether there was one.
    pub fn unsubscribe(&mut self, topic: &Path) -> bool {
        let Some(sub) = self.subs.remove(topic) else {
            return false;
        };
        match &sub.attached {
            Some(t) => t.unwatch(self.signal.id),
            None => self.shared.stop_awaiting(topic, &self.signal),
        }
        if sub.queued {
            self.todo.retain(|p| p != topic);
        }
        self.ready.retain(|d| match d {
            Delivery::Event { topic: t, .. }
            | Delivery::Gap { topic: t, .. }
            | Delivery::Reset { topic: t, .. } => t != topic,
        });
        true
    }

    /// Whether `topic` is subscribed.
    pub fn is_subscribed(&self, topic: &Path) -> bool {
        self.subs.contains_key(topic)
    }

    /// How many topics are subscribed.
    pub fn len(&self) -> usize {
        self.subs.len()
    }

    /// Whether no topic is subscribed.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// Where the subscription to `topic` stands (after the deliveries returned so far).
    pub fn position(&self, topic: &Path) -> Option<Position> {
        self.subs.get(topic).map(|s| s.position)
    }

    /// Where every subscription stands, by topic: the next event to return. Events prepared
    /// by a cancelled [`Listener::next`] but not returned yet count as not delivered, so a
    /// listener resumed from these positions (after a restart, say) misses nothing.
    pub fn positions(&self) -> Vec<(Path, Position)> {
        self.subs
            .values()
            .map(|s| {
                let pending = self.ready.iter().find_map(|d| match d {
                    Delivery::Event {
                        topic,
                        epoch,
                        event,
                    } if *topic == s.path && Some(*epoch) == s.position.epoch => Some(event.seq),
                    _ => None,
                });
                let mut position = s.position;
                if let Some(seq) = pending {
                    position.next = position.next.min(seq);
                }
                (s.path.clone(), position)
            })
            .collect()
    }

    /// Waits until there is something to deliver and returns it: at most about
    /// `listener_batch` events, each topic's in order. Cancel-safe: dropping the future
    /// loses nothing; the next call returns what was prepared.
    ///
    /// # Errors
    /// [`TopicsError::Store`] or [`TopicsError::Corrupt`] when reading history fails.
    pub async fn next(&mut self) -> Result<Vec<Delivery>, TopicsError> {
        let mut out = Vec::new();
        self.next_into(&mut out).await?;
        Ok(out)
    }

    /// [`Listener::next`] into `out` (cleared first). A caller that keeps `out` from call to
    /// call saves an allocation per batch: the listener and the caller trade their buffers,
    /// each kept while it holds at most `listener_batch` deliveries.
    ///
    /// # Errors
    /// As [`Listener::next`]; `out` is then empty.
    pub async fn next_into(&mut self, out: &mut Vec<Delivery>) -> Result<(), TopicsError> {
        out.clear();
        loop {
            self.adopt_new_topics();
            let mut marked = std::mem::take(&mut self.marked);
            self.signal.take_into(&mut marked);
            for path in marked.drain() {
                if let Some(sub) = self.subs.get(&path) {
                    sub.marked.store(false, Ordering::Release);
                }
                self.enqueue(&path);
            }
            self.marked = marked;
            while self.ready.len() < self.shared.options.listener_batch {
                // Taken off the queue only once polled: a cancelled poll leaves it first in
                // line for the next call.
                let Some(path) = self.todo.front().cloned() else {
                    break;
                };
                let more = self.poll(&path).await?;
                self.todo.pop_front();
                if let Some(sub) = self.subs.get_mut(&path) {
                    sub.queued = false;
                }
                if more {
                    // More than this round could take: look again next round.
                    self.enqueue(&path);
                }
            }
            if !self.ready.is_empty() {
                self.shared
                    .metrics
                    .delivered
                    .increment(self.ready.len() as u64);
                std::mem::swap(&mut self.ready, out);
                if self.ready.capacity() > self.shared.options.listener_batch.max(16) {
                    self.ready = Vec::new();
                }
                return Ok(());
            }
            if self.todo.is_empty() {
                self.wait().await;
            }
        }
    }

    /// Prepares what the subscription to `path` has to deliver; returns whether it has more
    /// than there was room for.
    async fn poll(&mut self, path: &Path) -> Result<bool, TopicsError> {
        let signal = self.signal.clone();
        let Some(sub) = self.subs.get_mut(path) else {
            return Ok(false);
        };
        if let Some(t) = sub.attached.take_if(|t| t.is_deleted()) {
            t.unwatch(signal.id);
        }
        if sub.attached.is_none() {
            let Some(t) = self.shared.topic_or_await(&sub.path, &signal) else {
                return Ok(false);
            };
            if sub.position.epoch.is_some_and(|e| e != t.epoch) {
                self.ready.push(Delivery::Reset {
                    topic: sub.path.clone(),
                    epoch: t.epoch,
                });
                sub.position.next = 1;
            }
            sub.position.epoch = Some(t.epoch);
            t.watch(&signal, sub.marked.clone());
            sub.attached = Some(t);
        }
        let Some(topic) = &sub.attached else {
            return Ok(false);
        };
        let last = topic.committed_last();
        let next = sub.position.next;
        if next > last {
            return Ok(false);
        }
        let room = self
            .shared
            .options
            .listener_batch
            .saturating_sub(self.ready.len())
            .max(1);
        let topic = topic.clone();
        let epoch = topic.epoch;
        // Events go straight from the window into `ready` when it holds them; a gap found
        // below is put before them.
        let start = self.ready.len();
        let in_window = {
            let (ready, name) = (&mut self.ready, &sub.path);
            self.shared.read_window(&topic, next, last, room, |event| {
                ready.push(Delivery::Event {
                    topic: name.clone(),
                    epoch,
                    event,
                });
            })
        };
        if !in_window {
            // Boxed: only a listener behind the window reads the store, and unboxed, this
            // read's state would be part of every idle listener's `next_into`.
            let events = Box::pin(self.shared.fetch(&topic, next, last, room)).await?;
            let Some(sub) = self.subs.get(path) else {
                return Ok(false);
            };
            self.ready
                .extend(events.into_iter().map(|event| Delivery::Event {
                    topic: sub.path.clone(),
                    epoch,
                    event,
                }));
        }
        // Re-borrow after the await; nothing else can have touched `subs` (we hold `&mut self`).
        let Some(sub) = self.subs.get_mut(path) else {
            self.ready.truncate(start);
            return Ok(false);
        };
        let seq_at = |d: Option<&Delivery>| match d {
            Some(Delivery::Event { event, .. }) => Some(event.seq),
            _ => None,
        };
        let (first, newest) = if self.ready.len() > start {
            (seq_at(self.ready.get(start)), seq_at(self.ready.last()))
        } else {
            (None, None)
        };
        let gap_to = match first {
            Some(seq) if seq > next => Some(seq - 1),
            Some(_) => None,
            None => {
                let first = topic.lock().first;
                (first > next).then(|| (first - 1).min(last))
            }
        };
        if let Some(to) = gap_to {
            self.shared.metrics.gaps.increment(1);
            self.ready.insert(
                start,
                Delivery::Gap {
                    topic: sub.path.clone(),
                    from: next,
                    to,
                },
            );
            sub.position.next = to + 1;
        }
        if let Some(seq) = newest {
            sub.position.next = seq + 1;
        }
        Ok(sub.position.next <= last)
    }

    /// Waits until a followed topic moves, is created or is deleted, or a topic matching a
    /// wildcard subscription is created: each wakes the signal. One wait, so that an idle
    /// listener's state is one `Notified`.
    async fn wait(&mut self) {
        self.signal.notify.notified().await;
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        for sub in self.subs.values() {
            match &sub.attached {
                Some(t) => t.unwatch(self.signal.id),
                None => self.shared.stop_awaiting(&sub.path, &self.signal),
            }
        }
        if !self.patterns.is_empty() {
            let mut index = self.shared.patterns();
            for (pattern, sub) in &self.patterns {
                index.remove(pattern, |s| s.id == sub.id);
            }
        }
        self.shared.metrics.listeners.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Waker};
    use std::time::Duration;

    use herald_core::{Path, PathLimits, PathPattern};
    use herald_store::{MemoryStore, Store};

    use super::super::{NewEvent, Topics, TopicsOptions};
    use super::{Delivery, Listener};

    /// An engine on a memory store with the default options (its actor runs until the
    /// test's runtime stops).
    async fn open() -> Topics {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let (topics, _task) = Topics::open(store, TopicsOptions::default())
            .await
            .expect("open");
        topics
    }

    fn p(s: &str) -> Path {
        Path::parse_url(s, &PathLimits::default()).expect("valid test path")
    }

    /// Takes the wake-up the listener's signal holds, if it holds one.
    fn take_wake(listener: &Listener) -> bool {
        let notified = std::pin::pin!(listener.signal.notify.notified());
        notified
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    /// Lets `listener` look at what it follows and wait: nothing arrives within 20 ms.
    async fn settle(listener: &mut Listener) {
        let mut out = Vec::new();
        let waited = tokio::time::timeout(Duration::from_millis(20), listener.next_into(&mut out));
        assert!(waited.await.is_err(), "unexpected deliveries: {out:?}");
    }

    fn awaited(topics: &Topics) -> Vec<String> {
        let mut paths: Vec<String> = topics
            .shared
            .awaited()
            .keys()
            .map(ToString::to_string)
            .collect();
        paths.sort();
        paths
    }

    /// A topic created or deleted wakes the listeners that follow it (by name or by a
    /// matching pattern), not every listener; and listeners waiting for a topic that never
    /// comes leave nothing behind when they unsubscribe or go.
    #[tokio::test]
    async fn a_topic_created_or_deleted_wakes_only_its_listeners() {
        let topics = open().await;
        let mut on_a = topics.listener();
        on_a.subscribe(p("/a"), None);
        let mut on_b = topics.listener();
        on_b.subscribe(p("/b"), None);
        let mut on_c = topics.listener();
        on_c.subscribe_pattern(
            PathPattern::parse("/c/+", &PathLimits::default()).expect("pattern"),
            None,
        );
        for listener in [&mut on_a, &mut on_b, &mut on_c] {
            settle(listener).await;
        }
        assert_eq!(awaited(&topics), ["/a", "/b"]);

        topics
            .append(p("/a"), vec![NewEvent::json("1")], None)
            .await
            .expect("append");
        assert!(
            take_wake(&on_a),
            "the listener waiting for /a was not woken"
        );
        assert!(!take_wake(&on_b), "a listener of another topic was woken");
        assert!(!take_wake(&on_c), "a pattern that does not match was woken");
        let got = on_a.next().await.expect("next");
        assert!(matches!(&got[..], [Delivery::Event { event, .. }] if event.seq == 1));
        assert_eq!(awaited(&topics), ["/b"]);

        topics
            .append(p("/c/x"), vec![NewEvent::json("2")], None)
            .await
            .expect("append");
        assert!(take_wake(&on_c), "the matching pattern was not woken");
        assert!(!take_wake(&on_a) && !take_wake(&on_b));
        let got = on_c.next().await.expect("next");
        assert!(matches!(&got[..], [Delivery::Event { event, .. }] if event.seq == 1));

        assert!(topics.delete(&p("/a")).await.expect("delete"));
        assert!(
            take_wake(&on_a),
            "the deleted topic's listener was not woken"
        );
        assert!(!take_wake(&on_b) && !take_wake(&on_c));
        // It notices, and waits for the next incarnation.
        settle(&mut on_a).await;
        assert_eq!(awaited(&topics), ["/a", "/b"]);
        topics
            .append(p("/a"), vec![NewEvent::json("3")], None)
            .await
            .expect("append");
        let got = on_a.next().await.expect("next");
        assert!(
            matches!(&got[..], [Delivery::Reset { .. }, Delivery::Event { event, .. }] if event.seq == 1),
            "{got:?}"
        );

        drop(on_b);
        assert!(awaited(&topics).is_empty(), "{:?}", awaited(&topics));
        on_a.subscribe(p("/never"), None);
        settle(&mut on_a).await;
        assert_eq!(awaited(&topics), ["/never"]);
        assert!(on_a.unsubscribe(&p("/never")));
        assert!(awaited(&topics).is_empty(), "{:?}", awaited(&topics));
    }

    /// Several listeners waiting for one topic: each is woken when it is created, and one
    /// that goes first leaves the others registered.
    #[tokio::test]
    async fn listeners_waiting_for_one_topic_are_all_told() {
        let topics = open().await;
        let mut listeners: Vec<Listener> = (0..3).map(|_| topics.listener()).collect();
        for listener in &mut listeners {
            listener.subscribe(p("/s"), None);
            settle(listener).await;
        }
        drop(listeners.remove(1));
        assert_eq!(awaited(&topics), ["/s"]);
        topics
            .append(p("/s"), vec![NewEvent::json("1")], None)
            .await
            .expect("append");
        for listener in &mut listeners {
            let got = listener.next().await.expect("next");
            assert!(matches!(&got[..], [Delivery::Event { event, .. }] if event.seq == 1));
        }
        assert!(awaited(&topics).is_empty());
        // Going and coming back: the last one out takes the entry with it.
        for listener in &mut listeners {
            listener.subscribe(p("/t"), None);
            settle(listener).await;
        }
        assert_eq!(awaited(&topics), ["/t"]);
        listeners.clear();
        assert!(awaited(&topics).is_empty(), "{:?}", awaited(&topics));
    }

    /// Every idle subscriber (an MQTT session, a listen connection) holds this future in its
    /// task while it waits: a large value kept across one of its awaits would cost every
    /// idle connection that much. (312 bytes when written.)
    #[tokio::test]
    async fn the_wait_for_deliveries_stays_small() {
        let topics = open().await;
        let mut listener = topics.listener();
        let mut batch = Vec::new();
        let size = std::mem::size_of_val(&listener.next_into(&mut batch));
        assert!(size <= 512, "Listener::next_into's future is {size} bytes");
    }
}
