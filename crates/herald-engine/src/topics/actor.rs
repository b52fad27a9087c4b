//! The topics actor: numbers events, group-commits them, publishes them.
//!
//! # The commit pipeline
//! The actor keeps at most one commit in flight: one store append of a whole batch, with its
//! fsync, on a blocking thread. Meanwhile it stages the next batch: it keeps taking appends off
//! its queue (up to `max_batch` staged), numbering them and encoding their records into one
//! buffer. When the commit in flight finishes, the actor at once hands the staged batch to the
//! store, if anything is staged, then publishes the finished batch's events and answers its
//! writers. So the fsync of one batch overlaps the publishing of the one before it and the
//! numbering and encoding of the one after, and batches are published in the order they were
//! numbered.
//!
//! Numbering runs ahead of the store. [`Ahead`] remembers, for each topic with events in the
//! commit in flight or staged, its last numbered seq (what conditional appends are checked
//! against, and where the next events continue) and its incarnation (a topic created by a
//! batch not yet published joins the shared map only when that batch is published). A topic's
//! entry is forgotten once everything numbered for it is published: its `committed_last` then
//! answers.
//!
//! Deletes, retention overrides and shutdown act on committed state: the actor first drains
//! the pipeline (waits for the commit in flight, then commits what is staged). A failed commit
//! sets `Shared::failed`: its writers and those of the staged batch (numbered after it, so
//! never to be committed) get the error, and nothing of either is published.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use herald_core::Path;
use herald_core::topic::{RecordError, Retention, encode_record_into};
use herald_store::{Append, Durability, Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{
    Appended, Event, InMemory, LOG_PREFIX, NewEvent, RETENTION_SNAPSHOT, Reach, Reply, Shared,
    Topic, TopicsError, parse_log_name, retention,
};

pub(crate) enum Command {
    Append {
        topic: Path,
        events: Vec<NewEvent>,
        expect_last: Option<u64>,
        /// `None` when nobody waits for the outcome ([`Topics::try_enqueue_detached_to`]).
        ///
        /// [`Topics::try_enqueue_detached_to`]: super::Topics::try_enqueue_detached_to
        reply: Answer,
    },
    Delete {
        topic: Path,
        reply: Reply<Result<bool, TopicsError>>,
    },
    SetRetention {
        topic: Path,
        retention: Option<Retention>,
        reply: Reply<Result<(), TopicsError>>,
    },
    Shutdown {
        reply: Reply<Result<(), TopicsError>>,
    },
}

/// A topic found in the store.
pub(crate) struct Loaded {
    pub(crate) epoch: u64,
    pub(crate) first: u64,
    pub(crate) last: u64,
}

/// What [`load`] found.
pub(crate) struct LoadedTopics {
    pub(crate) topics: HashMap<Path, Loaded>,
    /// Logs of older epochs whose deletion a crash interrupted; the actor finishes it.
    pub(crate) stale: Vec<String>,
    pub(crate) overrides: HashMap<Path, Retention>,
}

/// Reads the topics' bounds (never their records) and the retention overrides.
pub(crate) fn load(store: &dyn Store) -> Result<LoadedTopics, TopicsError> {
    let mut topics: HashMap<Path, Loaded> = HashMap::new();
    let mut stale = Vec::new();
    for (name, bounds) in store.list_logs(LOG_PREFIX)? {
        let Some((epoch, path)) = parse_log_name(&name) else {
            tracing::warn!(log = %name, "ignoring a store log with an unreadable topic name");
            continue;
        };
        let loaded = Loaded {
            epoch,
            first: bounds.first,
            last: bounds.last,
        };
        match topics.get(&path) {
            Some(existing) if existing.epoch > epoch => stale.push(name),
            Some(existing) => {
                stale.push(super::log_name(existing.epoch, &path));
                topics.insert(path, loaded);
            }
            None => {
                topics.insert(path, loaded);
            }
        }
    }
    let overrides = match store.snapshot(RETENTION_SNAPSHOT)? {
        Some((_, data)) => {
            let list: Vec<(Path, Retention)> = serde_json::from_slice(&data)
                .map_err(|e| TopicsError::Corrupt(format!("retention overrides: {e}")))?;
            list.into_iter().collect()
        }
        None => HashMap::new(),
    };
    Ok(LoadedTopics {
        topics,
        stale,
        overrides,
    })
}

/// An append numbered (and encoded), waiting for its batch's commit to be published.
struct Staged {
    topic: Arc<Topic>,
    /// Whether the topic was created by a batch not yet published when this append was
    /// numbered (it joins the shared map when the first such append is published).
    created: bool,
    events: Vec<Event>,
    reply: Answer,
}

/// Where an append's outcome goes, if anyone waits for it.
pub(crate) type Answer = Option<Reply<Result<Appended, TopicsError>>>;

/// Sends an append's outcome to whoever waits for it (nobody, for a detached append; or a
/// writer that stopped waiting).
fn answer(reply: Answer, outcome: Result<Appended, TopicsError>) {
    if let Some(reply) = reply {
        let _ = reply.send(outcome);
    }
}

/// Where a topic's numbering stands while some of its events are not yet published (in the
/// commit in flight or staged).
struct Ahead {
    /// The incarnation the events were numbered for.
    topic: Arc<Topic>,
    /// Whether that incarnation was created by a batch not yet published.
    created: bool,
    /// The last numbered seq: committed, in flight and staged.
    last: u64,
}

/// The records of a batch as the store takes them: encoded back to back into one buffer, so
/// that a batch costs a few allocations rather than one per event.
#[derive(Default)]
struct Records {
    bytes: Vec<u8>,
    /// Where each record ends in `bytes` (the next one starts there).
    ends: Vec<usize>,
    /// The records of each append, in order: one topic handle per append, not per record.
    runs: Vec<Run>,
}

/// `count` consecutive records of one topic, numbered from `first`.
struct Run {
    topic: Arc<Topic>,
    first: u64,
    count: usize,
}

impl Records {
    /// Encodes `events` (consecutive seqs of `topic`); on error nothing is added.
    fn push(&mut self, topic: &Arc<Topic>, events: &[Event]) -> Result<(), RecordError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let (bytes, ends) = (self.bytes.len(), self.ends.len());
        for e in events {
            let encoded = encode_record_into(
                &mut self.bytes,
                e.t_ms,
                &e.content_type,
                &e.origin,
                &e.attrs,
                &e.data,
            );
            if let Err(err) = encoded {
                self.bytes.truncate(bytes);
                self.ends.truncate(ends);
                return Err(err);
            }
            self.ends.push(self.bytes.len());
        }
        self.runs.push(Run {
            topic: topic.clone(),
            first: first.seq,
            count: events.len(),
        });
        Ok(())
    }

    /// The records as [`Store::append`] takes them, borrowing the shared buffer.
    fn appends(&self) -> Vec<Append<'_>> {
        let mut appends = Vec::with_capacity(self.ends.len());
        let mut ends = self.ends.iter();
        let mut start = 0;
        for run in &self.runs {
            for (seq, &end) in (run.first..).zip(ends.by_ref().take(run.count)) {
                appends.push(Append {
                    log: &run.topic.log,
                    seq,
                    data: &self.bytes[start..end],
                });
                start = end;
            }
        }
        appends
    }
}

/// The appends numbered together, to be committed in one store append.
#[derive(Default)]
struct Batch {
    appends: Vec<Staged>,
    records: Records,
    /// How many events `appends` hold.
    events: usize,
}

/// A batch handed to the store: what to publish and answer once the store is done.
struct Sent {
    appends: Vec<Staged>,
    events: usize,
    /// The size of its records.
    bytes: usize,
    /// When the store append started (the commit time reported runs until the actor takes
    /// the outcome).
    started: Instant,
}

/// The batch whose store append runs on a blocking thread.
struct InFlight {
    sent: Sent,
    /// The store's answer, sent before the blocking thread frees the evicted events, so
    /// that freeing them does not delay publishing.
    outcome: oneshot::Receiver<Result<(), StoreError>>,
}

pub(crate) struct Actor {
    shared: Arc<Shared>,
    stale: Vec<String>,
    retention_job: Option<JoinHandle<()>>,
    /// The topics with events numbered but not yet published.
    ahead: HashMap<Path, Ahead>,
    /// The batch being numbered, committed when the commit in flight is done.
    staged: Batch,
    /// At most one commit at a time, so batches reach the store, and are published, in order.
    in_flight: Option<InFlight>,
    /// Events that left the topics' windows since the last commit started. The next commit
    /// drops them on its blocking thread after the store append: freeing thousands of events
    /// per batch (and often the read buffers their payloads share) is work the actor, which
    /// every durable append waits for, need not do.
    evicted: Vec<Event>,
}

impl Actor {
    pub(crate) fn new(shared: Arc<Shared>, stale: Vec<String>) -> Self {
        Self {
            shared,
            stale,
            retention_job: None,
            ahead: HashMap::new(),
            staged: Batch::default(),
            in_flight: None,
            evicted: Vec::new(),
        }
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let max_batch = self.shared.options.max_batch.max(1);
        let mut commands = Vec::with_capacity(max_batch);
        let mut tick = tokio::time::interval(self.shared.options.retention_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.start_commit();
            // A full staged batch waits for the commit in flight (there is one: it was just
            // started otherwise), leaving further appends in the queue (back-pressure).
            let room = max_batch.saturating_sub(self.staged.appends.len());
            tokio::select! {
                // A finished commit first: publishing it and starting the next keeps the
                // store busy. The tick before the queue, which is rarely empty under load.
                biased;
                outcome = commit_outcome(&mut self.in_flight) => {
                    self.finish_commit(outcome);
                    continue;
                }
                _ = tick.tick() => {
                    self.start_retention();
                    continue;
                }
                n = rx.recv_many(&mut commands, room), if room > 0 => {
                    if n == 0 {
                        break;
                    }
                }
            }
            if let Some(reply) = self.handle_commands(&mut commands).await {
                self.drain().await;
                self.finish().await;
                let _ = reply.send(Ok(()));
                return;
            }
        }
        self.drain().await;
        self.finish().await;
    }

    /// Stages the appends among `commands` and carries out the others, in order; returns the
    /// shutdown reply when asked to stop (the caller commits what is staged first).
    async fn handle_commands(
        &mut self,
        commands: &mut Vec<Command>,
    ) -> Option<Reply<Result<(), TopicsError>>> {
        let mut shutdown = None;
        for cmd in commands.drain(..) {
            match cmd {
                Command::Append {
                    topic,
                    events,
                    expect_last,
                    reply,
                } => self.stage(topic, events, expect_last, reply),
                // Deletes and settings act on committed state: commit what is numbered first.
                Command::Delete { topic, reply } => {
                    self.drain().await;
                    let _ = reply.send(self.delete(&topic).await);
                }
                Command::SetRetention {
                    topic,
                    retention,
                    reply,
                } => {
                    self.drain().await;
                    let _ = reply.send(self.set_retention(topic, retention).await);
                }
                Command::Shutdown { reply } => shutdown = Some(reply),
            }
        }
        shutdown
    }

    /// Numbers an append after everything numbered before it and adds it to the staged batch,
    /// or answers it at once (a memory-only topic, a conflict, a failed engine).
    fn stage(
        &mut self,
        path: Path,
        events: Vec<NewEvent>,
        expect_last: Option<u64>,
        reply: Answer,
    ) {
        if let Some(e) = self.shared.failed.get() {
            answer(reply, Err(TopicsError::Store(e.clone())));
            return;
        }
        if events.is_empty() {
            // Refused by the handle already; every staged append publishes something.
            answer(
                reply,
                Err(TopicsError::Invalid("no events to append".into())),
            );
            return;
        }
        let (known, created, last, events) = match self.ahead.get(&path) {
            // Durable: its retention cannot have become memory-only since it was numbered, as
            // overrides are set only once the pipeline is drained.
            Some(a) => (Some(a.topic.clone()), a.created, a.last, events),
            None => {
                // Normally done by the caller already; here in case the topic's retention
                // became memory-only since.
                let in_memory =
                    self.shared
                        .append_in_memory(&path, events, expect_last, None, Reach::Any);
                let events = match in_memory {
                    InMemory::Done(result) => {
                        answer(reply, result);
                        return;
                    }
                    InMemory::Durable(events) => events,
                };
                let topic = self.shared.topic(&path);
                let last = topic.as_ref().map_or(0, |t| t.committed_last());
                let created = topic.is_none();
                (topic, created, last, events)
            }
        };
        if let Some(expected) = expect_last
            && expected != last
        {
            answer(
                reply,
                Err(TopicsError::Conflict {
                    expected,
                    got: last,
                }),
            );
            return;
        }
        // Durable: memory-only topics were appended to above.
        let topic = known.unwrap_or_else(|| self.shared.incarnation(&path, false));
        let t_ms = topic.next_time();
        let numbered: Vec<Event> = topic.number(events, last + 1, t_ms).collect();
        if !topic.memory_only
            && let Err(e) = self.staged.records.push(&topic, &numbered)
        {
            answer(reply, Err(TopicsError::Invalid(e.to_string())));
            return;
        }
        let count = numbered.len();
        self.ahead.insert(
            path,
            Ahead {
                topic: topic.clone(),
                created,
                last: last + count as u64,
            },
        );
        self.staged.events += count;
        self.staged.appends.push(Staged {
            topic,
            created,
            events: numbered,
            reply,
        });
    }

    /// Hands the staged batch to the store, unless a commit is in flight or nothing is staged:
    /// called whenever either may have changed, it keeps the store busy while there is work.
    fn start_commit(&mut self) {
        if self.in_flight.is_some() || self.staged.appends.is_empty() {
            return;
        }
        let Batch {
            appends,
            records,
            events,
        } = std::mem::take(&mut self.staged);
        // The next batch is likely the size of this one: its buffers start there, rather
        // than growing (and copying) from empty while the actor stages it.
        self.staged = Batch {
            appends: Vec::with_capacity(appends.len()),
            records: Records {
                bytes: Vec::with_capacity(records.bytes.len()),
                ends: Vec::with_capacity(records.ends.len()),
                runs: Vec::with_capacity(records.runs.len()),
            },
            events: 0,
        };
        let sent = Sent {
            appends,
            events,
            bytes: records.bytes.len(),
            started: Instant::now(),
        };
        if let Some(e) = self.shared.failed.get() {
            // Numbered before a commit failed: it can never be committed after it.
            self.fail(sent.appends, e.clone());
            return;
        }
        // Staged appends are to durable topics (memory-only ones are appended to before
        // staging), so there are records to store; in any case every batch goes through the
        // store, which keeps batches published in order (`finish_commit`).
        let store = self.shared.store.clone();
        let evicted = std::mem::take(&mut self.evicted);
        let (tx, outcome) = oneshot::channel();
        // Detached: the outcome comes back on `tx` (dropped unsent only if the store panics).
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(store.append(&records.appends(), Durability::Sync));
            drop(evicted);
        });
        self.in_flight = Some(InFlight { sent, outcome });
    }

    /// Takes the outcome of the commit in flight (see [`commit_outcome`]). After a success the
    /// staged batch goes to the store first and the finished one is published while it is
    /// stored: publishing (windows, wake-ups, replies) is most of the actor's work, and the
    /// store would otherwise wait for it. Batches are still published in order, as the next
    /// one is published only when its commit finishes. After a failure nothing more is
    /// committed.
    fn finish_commit(&mut self, outcome: Result<(), StoreError>) {
        if let Some(flight) = self.in_flight.take() {
            if outcome.is_ok() {
                self.start_commit();
            }
            self.complete(flight.sent, outcome);
            if self.in_flight.is_none() {
                // No commit to hand them to: the pipeline is idle, so free them now.
                self.evicted.clear();
            }
        }
    }

    /// Commits everything numbered so far and publishes it: waits for the commit in flight,
    /// then commits the staged batch and waits for that one too.
    async fn drain(&mut self) {
        loop {
            self.start_commit();
            if self.in_flight.is_none() {
                // Nothing in flight after `start_commit`: nothing staged either.
                debug_assert!(self.ahead.is_empty(), "numbered topics left after a drain");
                return;
            }
            let outcome = commit_outcome(&mut self.in_flight).await;
            self.finish_commit(outcome);
        }
    }

    /// Publishes a batch the store has taken and answers its writers; if the store failed,
    /// fails the engine instead.
    fn complete(&mut self, sent: Sent, outcome: Result<(), StoreError>) {
        let m = &self.shared.metrics;
        m.commit_seconds
            .record(sent.started.elapsed().as_secs_f64());
        m.batch_size.record(sent.events as f64);
        if let Err(e) = outcome {
            tracing::error!(error = %e, "topic commit failed; refusing further appends");
            let e = Arc::new(e);
            let _ = self.shared.failed.set(e.clone());
            self.fail(sent.appends, e);
            return;
        }
        m.events.increment(sent.events as u64);
        m.event_bytes.increment(sent.bytes as u64);
        let mut new_topics = false;
        for s in sent.appends {
            if s.created && self.shared.topic(&s.topic.path).is_none() {
                self.shared
                    .topics
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(s.topic.clone());
                self.shared.durable_topics.fetch_add(1, Ordering::Relaxed);
                self.shared.announce(&s.topic.path);
                new_topics = true;
            }
            let (Some(first), Some(last)) = (s.events.first(), s.events.last()) else {
                continue;
            };
            let appended = Appended {
                epoch: s.topic.epoch,
                first: first.seq,
                last: last.seq,
                t_ms: first.t_ms,
            };
            self.publish(&s.topic, s.events);
            self.forget_if_published(&s.topic);
            answer(s.reply, Ok(appended));
        }
        if new_topics {
            let n = self
                .shared
                .topics
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .len();
            self.shared.metrics.topics.set(n as f64);
        }
    }

    /// Answers `appends` and the staged batch with the storage error: none of them will be
    /// committed (appends arriving later are refused as the engine has failed).
    fn fail(&mut self, appends: Vec<Staged>, e: Arc<StoreError>) {
        let staged = std::mem::take(&mut self.staged).appends;
        for s in appends.into_iter().chain(staged) {
            answer(s.reply, Err(TopicsError::Store(e.clone())));
        }
        self.ahead.clear();
    }

    /// Forgets where `topic`'s numbering stands once all its numbered events are published.
    fn forget_if_published(&mut self, topic: &Arc<Topic>) {
        let published = self
            .ahead
            .get(&topic.path)
            .is_some_and(|a| Arc::ptr_eq(&a.topic, topic) && a.last == topic.committed_last());
        if published {
            self.ahead.remove(&topic.path);
        }
    }

    /// Puts committed events into the topic's window and moves its committed seq. The events
    /// the window no longer holds go to `evicted`, to be freed on the store's thread.
    fn publish(&mut self, topic: &Topic, events: Vec<Event>) {
        let Some(last) = events.last().map(|e| e.seq) else {
            return;
        };
        let bounds = self.shared.window_bounds(topic);
        let evicted = &mut self.evicted;
        topic
            .lock()
            .push_evicting(events.into_iter(), topic.memory_only, bounds, |old| {
                evicted.push(old)
            });
        topic.last.store(last, Ordering::Release);
        topic.trim_soon();
        topic.wake();
    }

    async fn delete(&mut self, path: &Path) -> Result<bool, TopicsError> {
        if let Some(e) = self.shared.failed.get() {
            return Err(TopicsError::Store(e.clone()));
        }
        let Some(topic) = self.shared.topic(path) else {
            return Ok(false);
        };
        if !topic.memory_only {
            let store = self.shared.store.clone();
            let log = topic.log.clone();
            tokio::task::spawn_blocking(move || store.delete_log(&log, Durability::Sync))
                .await
                .unwrap_or_else(|e| Err(StoreError::Engine(Box::new(e))))?;
        }
        self.shared.retire_epoch(path, topic.epoch);
        let n = {
            let mut topics = self
                .shared
                .topics
                .write()
                .unwrap_or_else(|e| e.into_inner());
            topics.remove(path);
            topics.len()
        };
        {
            // Under the topic's lock, which appends to memory-only topics take: none lands
            // in this incarnation after the delete returns.
            let _state = topic.lock();
            topic.deleted.store(true, Ordering::Release);
        }
        if topic.memory_only {
            self.shared.memory_topics.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.shared.durable_topics.fetch_sub(1, Ordering::Relaxed);
        }
        // Wake the topic's listeners so they notice (and wait for its next incarnation).
        topic.wake();
        self.shared.metrics.topics.set(n as f64);
        tracing::info!(topic = %path, epoch = topic.epoch, "topic deleted");
        Ok(true)
    }

    async fn set_retention(
        &mut self,
        path: Path,
        retention: Option<Retention>,
    ) -> Result<(), TopicsError> {
        if let Some(e) = self.shared.failed.get() {
            return Err(TopicsError::Store(e.clone()));
        }
        let mut next = self
            .shared
            .overrides
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match &retention {
            Some(r) => next.insert(path.clone(), *r),
            None => next.remove(&path),
        };
        let mut list: Vec<(&Path, &Retention)> = next.iter().collect();
        list.sort_unstable_by(|a, b| a.0.segments().cmp(b.0.segments()));
        let data = serde_json::to_vec(&list).map_err(|e| TopicsError::Corrupt(e.to_string()))?;
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || {
            store.put_snapshot(RETENTION_SNAPSHOT, 0, &data, Durability::Sync)
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Engine(Box::new(e))))?;
        *self
            .shared
            .overrides
            .write()
            .unwrap_or_else(|e| e.into_inner()) = next;
        if let Some(topic) = self.shared.topic(&path) {
            topic.trim_soon();
        }
        tracing::info!(topic = %path, ?retention, "topic retention override set");
        Ok(())
    }

    /// Starts a retention pass in the background unless one is still running.
    fn start_retention(&mut self) {
        if self
            .retention_job
            .as_ref()
            .is_some_and(|j| !j.is_finished())
        {
            return;
        }
        if self.shared.failed.get().is_some() {
            return;
        }
        let shared = self.shared.clone();
        let stale = std::mem::take(&mut self.stale);
        self.retention_job = Some(tokio::task::spawn_blocking(move || {
            retention::pass(&shared, stale);
        }));
    }

    async fn finish(&mut self) {
        if let Some(job) = self.retention_job.take() {
            let _ = job.await;
        }
        if let Err(e) = self.shared.store.sync() {
            tracing::warn!(error = %e, "final store sync failed");
        }
    }
}

/// The outcome of the commit in flight; never ready when there is none.
async fn commit_outcome(in_flight: &mut Option<InFlight>) -> Result<(), StoreError> {
    match in_flight {
        Some(flight) => (&mut flight.outcome)
            .await
            .unwrap_or_else(|_| Err(StoreError::Engine("the store's commit panicked".into()))),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use herald_core::PathLimits;
    use herald_core::topic::encode_record;

    use super::*;

    fn topic(path: &str) -> Arc<Topic> {
        let path = Path::parse_url(path, &PathLimits::default()).unwrap();
        Arc::new(Topic::new(path, 7, false, 1, 0))
    }

    fn numbered(topic: &Topic, first: u64, events: Vec<NewEvent>) -> Vec<Event> {
        topic.number(events, first, 42).collect()
    }

    #[test]
    fn records_share_one_buffer_and_store_each_event_as_encode_record_does() {
        let (a, b) = (topic("/a"), topic("/b"));
        let a_events = numbered(
            &a,
            3,
            vec![
                NewEvent::json("1"),
                NewEvent::json("").with_origin(Arc::from("me")),
                NewEvent::json("3").with_attrs(bytes::Bytes::from_static(b"\x01")),
            ],
        );
        let b_events = numbered(&b, 1, vec![NewEvent::json("x")]);
        let mut records = Records::default();
        assert!(records.ends.is_empty());
        records.push(&a, &a_events).unwrap();
        records.push(&b, &b_events).unwrap();
        records.push(&b, &[]).unwrap();
        assert_eq!(records.runs.len(), 2, "one run per non-empty append");

        let appends = records.appends();
        let got: Vec<(&str, u64, &[u8])> = appends.iter().map(|r| (r.log, r.seq, r.data)).collect();
        let expected: Vec<(String, u64, Vec<u8>)> = [(&a, &a_events), (&b, &b_events)]
            .into_iter()
            .flat_map(|(t, events)| {
                events.iter().map(move |e| {
                    let data = encode_record(e.t_ms, &e.content_type, &e.origin, &e.attrs, &e.data)
                        .unwrap();
                    (t.log.clone(), e.seq, data)
                })
            })
            .collect();
        let expected: Vec<(&str, u64, &[u8])> = expected
            .iter()
            .map(|(log, seq, data)| (log.as_str(), *seq, data.as_slice()))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(
            got.iter().map(|(_, seq, _)| *seq).collect::<Vec<_>>(),
            [3, 4, 5, 1]
        );
    }

    #[test]
    fn a_record_that_cannot_be_encoded_leaves_the_records_as_they_were() {
        let t = topic("/a");
        let mut records = Records::default();
        records
            .push(&t, &numbered(&t, 1, vec![NewEvent::json("1")]))
            .unwrap();
        let (bytes, ends) = (records.bytes.clone(), records.ends.clone());
        let too_long = NewEvent::new(Arc::from("x".repeat(256)), "2");
        let refused = numbered(&t, 2, vec![NewEvent::json("ok"), too_long]);
        assert!(records.push(&t, &refused).is_err());
        assert_eq!((records.bytes, records.ends), (bytes, ends));
        assert_eq!(records.runs.len(), 1);
    }
}
