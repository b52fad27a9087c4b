//! The topics actor: numbers events, group-commits them, publishes them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use herald_core::Path;
use herald_core::topic::{Retention, encode_record};
use herald_store::{Append, Durability, Store, StoreError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{
    Appended, Event, InMemory, LOG_PREFIX, NewEvent, RETENTION_SNAPSHOT, Reply, Shared, Topic,
    TopicsError, parse_log_name, retention,
};

pub(crate) enum Command {
    Append {
        topic: Path,
        events: Vec<NewEvent>,
        expect_last: Option<u64>,
        reply: Reply<Result<Appended, TopicsError>>,
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

/// Events numbered in the current batch, waiting for its commit.
struct Staged {
    topic: Arc<Topic>,
    /// Whether the topic was created by this batch (it joins the shared map after the commit).
    created: bool,
    events: Vec<Event>,
    /// The events as stored (empty for a memory-only topic).
    records: Vec<Vec<u8>>,
    reply: Reply<Result<Appended, TopicsError>>,
}

pub(crate) struct Actor {
    shared: Arc<Shared>,
    stale: Vec<String>,
    retention_job: Option<JoinHandle<()>>,
}

impl Actor {
    pub(crate) fn new(shared: Arc<Shared>, stale: Vec<String>) -> Self {
        Self {
            shared,
            stale,
            retention_job: None,
        }
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(self.shared.options.max_batch);
        let mut tick = tokio::time::interval(self.shared.options.retention_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, self.shared.options.max_batch) => {
                    if n == 0 {
                        break;
                    }
                }
                _ = tick.tick() => {
                    self.start_retention();
                    continue;
                }
            }
            if let Some(reply) = self.handle_batch(&mut batch).await {
                self.finish().await;
                let _ = reply.send(Ok(()));
                return;
            }
        }
        self.finish().await;
    }

    /// Handles one batch; returns the shutdown reply when asked to stop.
    async fn handle_batch(
        &mut self,
        batch: &mut Vec<Command>,
    ) -> Option<Reply<Result<(), TopicsError>>> {
        let mut staged: Vec<Staged> = Vec::new();
        // Topics created by this batch, and the last seq per topic including staged events.
        let mut created: HashMap<Path, Arc<Topic>> = HashMap::new();
        let mut lasts: HashMap<Path, u64> = HashMap::new();
        let mut shutdown = None;
        for cmd in batch.drain(..) {
            match cmd {
                Command::Append {
                    topic,
                    events,
                    expect_last,
                    reply,
                } => {
                    if let Some(e) = self.shared.failed.get() {
                        let _ = reply.send(Err(TopicsError::Store(e.clone())));
                        continue;
                    }
                    // Normally done by the caller already; here in case the topic's retention
                    // became memory-only since.
                    let events =
                        match self
                            .shared
                            .append_in_memory(&topic, events, expect_last, None)
                        {
                            InMemory::Done(result) => {
                                let _ = reply.send(result);
                                continue;
                            }
                            InMemory::Durable(events) => events,
                        };
                    let (t, is_new) = match created.get(&topic) {
                        Some(t) => (t.clone(), true),
                        None => match self.shared.topic(&topic) {
                            Some(t) => (t, false),
                            None => {
                                // Durable: memory-only ones were appended to above.
                                let t = self.shared.incarnation(&topic, false);
                                created.insert(topic.clone(), t.clone());
                                (t, true)
                            }
                        },
                    };
                    let last = *lasts
                        .entry(topic.clone())
                        .or_insert_with(|| t.committed_last());
                    if let Some(expected) = expect_last
                        && expected != last
                    {
                        let _ = reply.send(Err(TopicsError::Conflict {
                            expected,
                            got: last,
                        }));
                        continue;
                    }
                    let t_ms = t.next_time();
                    let numbered: Vec<Event> = t.number(events, last + 1, t_ms).collect();
                    let records = if t.memory_only {
                        Ok(Vec::new())
                    } else {
                        numbered
                            .iter()
                            .map(|e| {
                                encode_record(e.t_ms, &e.content_type, &e.origin, &e.attrs, &e.data)
                            })
                            .collect::<Result<Vec<_>, _>>()
                    };
                    let records = match records {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = reply.send(Err(TopicsError::Invalid(e.to_string())));
                            continue;
                        }
                    };
                    lasts.insert(topic, last + numbered.len() as u64);
                    staged.push(Staged {
                        topic: t,
                        created: is_new,
                        events: numbered,
                        records,
                        reply,
                    });
                }
                other => {
                    // Deletes and settings act on committed state: commit what is staged first.
                    self.commit(std::mem::take(&mut staged)).await;
                    created.clear();
                    lasts.clear();
                    match other {
                        Command::Delete { topic, reply } => {
                            let _ = reply.send(self.delete(&topic).await);
                        }
                        Command::SetRetention {
                            topic,
                            retention,
                            reply,
                        } => {
                            let _ = reply.send(self.set_retention(topic, retention).await);
                        }
                        Command::Shutdown { reply } => shutdown = Some(reply),
                        Command::Append { .. } => {}
                    }
                }
            }
        }
        self.commit(staged).await;
        shutdown
    }

    /// Stores the staged events in one batch, then publishes them and answers their writers.
    async fn commit(&mut self, mut staged: Vec<Staged>) {
        if staged.is_empty() {
            return;
        }
        let started = Instant::now();
        let records: Vec<(Arc<Topic>, u64, Vec<u8>)> = staged
            .iter_mut()
            .flat_map(|s| {
                let topic = s.topic.clone();
                let records = std::mem::take(&mut s.records);
                s.events
                    .iter()
                    .zip(records)
                    .map(move |(e, data)| (topic.clone(), e.seq, data))
            })
            .collect();
        let count: usize = staged.iter().map(|s| s.events.len()).sum();
        let bytes: usize = records.iter().map(|(_, _, d)| d.len()).sum();
        let result = if records.is_empty() {
            Ok(())
        } else {
            let store = self.shared.store.clone();
            tokio::task::spawn_blocking(move || {
                let appends: Vec<Append<'_>> = records
                    .iter()
                    .map(|(t, seq, data)| Append {
                        log: &t.log,
                        seq: *seq,
                        data,
                    })
                    .collect();
                store.append(&appends, Durability::Sync)
            })
            .await
            .unwrap_or_else(|e| Err(StoreError::Engine(Box::new(e))))
        };
        let m = &self.shared.metrics;
        m.commit_seconds.record(started.elapsed().as_secs_f64());
        m.batch_size.record(count as f64);
        if let Err(e) = result {
            tracing::error!(error = %e, "topic commit failed; refusing further appends");
            let e = Arc::new(e);
            let _ = self.shared.failed.set(e.clone());
            for s in staged {
                let _ = s.reply.send(Err(TopicsError::Store(e.clone())));
            }
            return;
        }
        m.events.increment(count as u64);
        m.event_bytes.increment(bytes as u64);
        let mut new_topics = false;
        for s in staged {
            if s.created && self.shared.topic(&s.topic.path).is_none() {
                self.shared
                    .topics
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(s.topic.path.clone(), s.topic.clone());
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
            let _ = s.reply.send(Ok(appended));
        }
        if new_topics {
            let n = self
                .shared
                .topics
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .len();
            m.topics.set(n as f64);
        }
    }

    /// Puts committed events into the topic's window and moves its committed seq.
    fn publish(&self, topic: &Topic, events: Vec<Event>) {
        let Some(last) = events.last().map(|e| e.seq) else {
            return;
        };
        let bounds = self.shared.window_bounds(topic.memory_only);
        topic
            .lock()
            .push(events.into_iter(), topic.memory_only, bounds);
        topic.last.store(last, Ordering::Release);
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
        }
        // Wake the topic's listeners so they notice.
        topic.wake();
        self.shared.generation.send_modify(|g| *g += 1);
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
