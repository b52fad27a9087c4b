//! Listeners: gap-free, duplicate-free delivery of a set of topics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::future::select_all;
use herald_core::{Path, PathPattern};
use tokio::sync::watch;

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
    /// The incarnation being followed and the receiver of its committed seq.
    attached: Option<(Arc<Topic>, watch::Receiver<u64>)>,
    position: Position,
}

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
    subs: Vec<Sub>,
    generation: watch::Receiver<u64>,
    /// Deliveries prepared but not yet returned. Kept here (not in a local) so that
    /// cancelling [`Listener::next`] loses nothing.
    ready: Vec<Delivery>,
    /// Where the next poll round starts, so that a busy topic cannot starve the others.
    cursor: usize,
    /// Wildcard subscriptions, registered in the shared pattern index.
    patterns: Vec<(PathPattern, Arc<PatternSub>)>,
}

static NEXT_PATTERN_ID: AtomicU64 = AtomicU64::new(1);

impl Listener {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        shared.metrics.listeners.increment(1.0);
        let generation = shared.generation.subscribe();
        Self {
            shared,
            subs: Vec::new(),
            generation,
            ready: Vec::new(),
            cursor: 0,
            patterns: Vec::new(),
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
                sub.attached = Some((t.clone(), t.last.subscribe()));
            }
            // No real epoch is 0, so the incarnation that appears later is announced by a
            // reset, then delivered from 1.
            None if from.is_some_and(|f| f > 1) => sub.position.epoch = Some(0),
            None => {}
        }
        self.subs.push(sub);
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
            sub.attached = Some((t.clone(), t.last.subscribe()));
        }
        self.subs.push(sub);
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
        });
        // Register first, then look at the existing topics: a topic created in between is seen
        // twice (and subscribed once), never missed.
        self.shared.patterns().insert(&pattern, sub.clone());
        let existing: Vec<Path> = self
            .shared
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .filter(|p| pattern.matches(p))
            .cloned()
            .collect();
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
            .iter()
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
        let before = self.subs.len();
        self.subs.retain(|s| s.path != *topic);
        self.ready.retain(|d| match d {
            Delivery::Event { topic: t, .. }
            | Delivery::Gap { topic: t, .. }
            | Delivery::Reset { topic: t, .. } => t != topic,
        });
        self.subs.len() != before
    }

    /// Whether `topic` is subscribed.
    pub fn is_subscribed(&self, topic: &Path) -> bool {
        self.subs.iter().any(|s| s.path == *topic)
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
        self.subs
            .iter()
            .find(|s| s.path == *topic)
            .map(|s| s.position)
    }

    /// Where every subscription stands, by topic: the next event to return. Events prepared
    /// by a cancelled [`Listener::next`] but not returned yet count as not delivered, so a
    /// listener resumed from these positions (after a restart, say) misses nothing.
    pub fn positions(&self) -> Vec<(Path, Position)> {
        self.subs
            .iter()
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
        loop {
            self.generation.borrow_and_update();
            self.adopt_new_topics();
            let n = self.subs.len();
            for k in 0..n {
                if self.ready.len() >= self.shared.options.listener_batch {
                    break;
                }
                let i = (self.cursor + k) % n;
                self.poll(i).await?;
            }
            if n > 0 {
                self.cursor = (self.cursor + 1) % n;
            }
            if !self.ready.is_empty() {
                let out = std::mem::take(&mut self.ready);
                self.shared.metrics.delivered.increment(out.len() as u64);
                return Ok(out);
            }
            self.wait().await;
        }
    }

    /// Prepares what subscription `i` has to deliver.
    async fn poll(&mut self, i: usize) -> Result<(), TopicsError> {
        let Some(sub) = self.subs.get_mut(i) else {
            return Ok(());
        };
        if sub.attached.as_ref().is_some_and(|(t, _)| t.is_deleted()) {
            sub.attached = None;
        }
        if sub.attached.is_none() {
            let Some(t) = self.shared.topic(&sub.path) else {
                return Ok(());
            };
            if sub.position.epoch.is_some_and(|e| e != t.epoch) {
                self.ready.push(Delivery::Reset {
                    topic: sub.path.clone(),
                    epoch: t.epoch,
                });
                sub.position.next = 1;
            }
            sub.position.epoch = Some(t.epoch);
            let rx = t.last.subscribe();
            sub.attached = Some((t, rx));
        }
        let Some((topic, rx)) = &mut sub.attached else {
            return Ok(());
        };
        let last = *rx.borrow_and_update();
        let next = sub.position.next;
        if next > last {
            return Ok(());
        }
        let room = self
            .shared
            .options
            .listener_batch
            .saturating_sub(self.ready.len())
            .max(1);
        let topic = topic.clone();
        let events = self.shared.fetch(&topic, next, last, room).await?;
        // Re-borrow after the await; nothing else can have touched `subs` (we hold `&mut self`).
        let Some(sub) = self.subs.get_mut(i) else {
            return Ok(());
        };
        let gap_to = match events.first() {
            Some(e) if e.seq > next => Some(e.seq - 1),
            Some(_) => None,
            None => {
                let first = topic.lock().first;
                (first > next).then(|| (first - 1).min(last))
            }
        };
        if let Some(to) = gap_to {
            self.shared.metrics.gaps.increment(1);
            self.ready.push(Delivery::Gap {
                topic: sub.path.clone(),
                from: next,
                to,
            });
            sub.position.next = to + 1;
        }
        if let Some(e) = events.last() {
            sub.position.next = e.seq + 1;
        }
        let epoch = topic.epoch;
        self.ready
            .extend(events.into_iter().map(|event| Delivery::Event {
                topic: sub.path.clone(),
                epoch,
                event,
            }));
        Ok(())
    }

    /// Waits until a followed topic moves, or a topic is created or deleted.
    async fn wait(&mut self) {
        let mut waits = Vec::with_capacity(self.subs.len() + 1);
        waits.push(Box::pin(self.generation.changed()));
        for sub in &mut self.subs {
            if let Some((_, rx)) = &mut sub.attached {
                waits.push(Box::pin(rx.changed()));
            }
        }
        // An error means the sender is gone, which only happens at shutdown; the next round
        // then finds nothing new and waits on what is left.
        let _ = select_all(waits).await;
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if !self.patterns.is_empty() {
            let mut index = self.shared.patterns();
            for (pattern, sub) in &self.patterns {
                index.remove(pattern, |s| s.id == sub.id);
            }
        }
        self.shared.metrics.listeners.decrement(1.0);
    }
}
