//! The document actor: owner of the JSON tree, its log and its subscriptions.
//!
//! One task owns the tree. Every request reaches it through a bounded queue ([`Docs`] is the
//! cloneable handle). The task works in batches:
//!
//! 1. take every queued request, up to `max_batch`;
//! 2. apply the writes to the tree in order, giving each the next sequence number and turning
//!    patches into plain `put`s ([`DocOp`]);
//! 3. append all of them to the store in **one** atomic batch with **one** fsync (group
//!    commit);
//! 4. only then: push the new values to affected subscribers, register new subscriptions and
//!    remove cancelled ones, answer reads, and acknowledge the writes, all in the order the
//!    requests arrived.
//!
//! So nothing is visible to anyone (reader, subscriber or writer) before it is on disk, and a
//! crash can only lose writes nobody has seen. After a failed commit the tree may hold writes
//! that are not on disk, so every later request (reads included) fails with
//! [`DocsError::Store`] until a restart recovers the durable state. While a batch is being fsync'd, new requests queue
//! up and form the next batch, which is what makes group commit effective under load.
//!
//! Every `snapshot_every` writes the task serializes the tree and a background job stores it as
//! the `docs` snapshot and trims the log up to it, so a restart replays at most about
//! `snapshot_every` records.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use herald_core::tree::{self, PatchError, PatchLimits};
use herald_core::{DocOp, Path, PathIndex};
use herald_store::{Append, Durability, Store, StoreError};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::inbox::Inbox;

/// The log and snapshot name used for the document tree.
pub const DOCS_LOG: &str = "docs";

/// Tuning of the document actor.
#[derive(Debug, Clone)]
pub struct DocsOptions {
    /// How many requests may wait in the queue (Icepeak's `--queue-capacity`).
    pub queue_capacity: usize,
    /// The largest number of requests handled (and writes committed) in one batch.
    pub max_batch: usize,
    /// Take a snapshot after at least this many writes, once the log written since the last
    /// snapshot is also at least as large as that snapshot. The second rule keeps the cost of
    /// snapshotting a large tree proportional to the bytes written (amortized O(1) per byte),
    /// while a restart still replays at most about `max(snapshot_every writes, one snapshot's
    /// size of log)`.
    pub snapshot_every: u64,
    /// The deepest document allowed: path segments plus nesting of the stored value. Kept well
    /// below serde_json's parser limit (128) so that a snapshot can always be read back.
    pub max_depth: usize,
    /// Bounds on JSON Patch writes (operations, result size and depth).
    pub patch_limits: PatchLimits,
}

impl Default for DocsOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 4096,
            max_batch: 1024,
            snapshot_every: 10_000,
            max_depth: 100,
            patch_limits: PatchLimits::default(),
        }
    }
}

/// A write to the document tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Store a value (Icepeak insert semantics).
    Put {
        /// Where.
        path: Path,
        /// What.
        value: Value,
    },
    /// Remove a key.
    Delete {
        /// Where.
        path: Path,
    },
    /// Merge an RFC 7396 patch into the value at `path`.
    MergePatch {
        /// Where.
        path: Path,
        /// The merge patch.
        patch: Value,
    },
    /// Apply an RFC 6902 JSON Patch to the value at `path`.
    JsonPatch {
        /// Where.
        path: Path,
        /// The patch document (an array of operations).
        patch: Value,
    },
}

/// Errors of the document engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocsError {
    /// The request queue is full; try again later (Icepeak answers 503).
    #[error("the write queue is full")]
    QueueFull,
    /// The engine has stopped (shutdown or a fatal storage error).
    #[error("the document engine has stopped")]
    Closed,
    /// A patch could not be applied.
    #[error(transparent)]
    Patch(#[from] PatchError),
    /// The write would make the document deeper than allowed.
    #[error("document would be {depth} levels deep, more than the limit of {max}")]
    TooDeep {
        /// The depth the write would produce.
        depth: usize,
        /// The limit.
        max: usize,
    },
    /// Storage failed; the write is not durable and the engine refuses further writes.
    #[error("storage failed: {0}")]
    Store(#[source] Arc<StoreError>),
    /// The stored log or snapshot could not be decoded.
    #[error("stored document data is corrupt: {0}")]
    Corrupt(String),
}

type Reply<T> = oneshot::Sender<T>;

enum Command {
    Write {
        write: Write,
        reply: Option<Reply<Result<(), DocsError>>>,
    },
    Get {
        path: Path,
        reply: Reply<Result<Option<Bytes>, DocsError>>,
    },
    Subscribe {
        inbox: Arc<Inbox>,
        paths: Vec<Path>,
        reply: Reply<Result<Vec<Option<Bytes>>, DocsError>>,
    },
    Unsubscribe {
        inbox: u64,
        paths: Vec<Path>,
        reply: Reply<Vec<Path>>,
    },
    Shutdown {
        reply: Reply<()>,
    },
}

/// The cloneable handle to the document actor.
#[derive(Clone, Debug)]
pub struct Docs {
    /// Requests, bounded by `queue_capacity`; the actor holds the receiver.
    tx: mpsc::Sender<Command>,
    /// Cleanup of dropped subscribers. Unbounded because `Drop` cannot wait, and it carries at
    /// most one message per subscriber ever created.
    dropped: mpsc::UnboundedSender<u64>,
    metrics: Arc<Metrics>,
    /// `DocsOptions::max_depth`, for [`Docs::check_depth`].
    max_depth: usize,
}

/// A write that was queued; await [`Pending::committed`] to know it is durable.
#[derive(Debug)]
pub struct Pending(oneshot::Receiver<Result<(), DocsError>>);

impl Pending {
    /// Waits until the write is on disk (or failed).
    ///
    /// # Errors
    /// [`DocsError`] when the write was refused (bad patch, too deep) or storage failed.
    pub async fn committed(self) -> Result<(), DocsError> {
        self.0.await.unwrap_or(Err(DocsError::Closed))
    }
}

#[derive(Debug)]
struct Metrics {
    writes: metrics::Counter,
    notifications: metrics::Counter,
    skipped: metrics::Counter,
    subscribers: metrics::Gauge,
    commit_seconds: metrics::Histogram,
    batch_size: metrics::Histogram,
    queue_added: metrics::Counter,
    queue_removed: metrics::Counter,
    data_written_bytes: metrics::Counter,
    snapshot_bytes: metrics::Gauge,
}

impl Metrics {
    fn new() -> Self {
        Self {
            writes: metrics::counter!("herald_doc_writes_total"),
            notifications: metrics::counter!("herald_notifications_sent_total", "protocol" => "docs"),
            skipped: metrics::counter!("icepeak_subscribers_skipped_updates_total"),
            subscribers: metrics::gauge!("icepeak_subscriber_count"),
            commit_seconds: metrics::histogram!("herald_store_commit_seconds"),
            batch_size: metrics::histogram!("herald_doc_commit_batch_size"),
            queue_added: metrics::counter!("icepeak_internal_queue_items_added"),
            queue_removed: metrics::counter!("icepeak_internal_queue_items_removed"),
            data_written_bytes: metrics::counter!("icepeak_data_written_bytes_total"),
            snapshot_bytes: metrics::gauge!("icepeak_data_size_bytes"),
        }
    }
}

/// A subscriber to document paths: an [`Inbox`] registered with the engine.
///
/// Dropping it removes all its subscriptions.
#[derive(Debug)]
pub struct Subscriber {
    inbox: Arc<Inbox>,
    docs: Docs,
}

impl Subscriber {
    /// The mailbox updates arrive in.
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// Subscribes to `paths` and returns the current value of each (`None` when absent),
    /// serialized as JSON. Updates after that arrive in [`Subscriber::inbox`].
    ///
    /// # Errors
    /// [`DocsError::Closed`] when the engine has stopped, [`DocsError::Store`] after a storage
    /// failure.
    pub async fn subscribe(&self, paths: Vec<Path>) -> Result<Vec<Option<Bytes>>, DocsError> {
        let (reply, rx) = oneshot::channel();
        self.docs
            .send(Command::Subscribe {
                inbox: self.inbox.clone(),
                paths,
                reply,
            })
            .await?;
        rx.await.map_err(|_| DocsError::Closed)?
    }

    /// Unsubscribes from `paths` and returns those that were subscribed.
    ///
    /// # Errors
    /// [`DocsError::Closed`] when the engine has stopped.
    pub async fn unsubscribe(&self, paths: Vec<Path>) -> Result<Vec<Path>, DocsError> {
        let (reply, rx) = oneshot::channel();
        self.docs
            .send(Command::Unsubscribe {
                inbox: self.inbox.id(),
                paths,
                reply,
            })
            .await?;
        rx.await.map_err(|_| DocsError::Closed)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // Closed first, so a subscribe request still queued will not register after the
        // cleanup below has run.
        self.inbox.close();
        // The actor may be gone already at shutdown; then there is nothing to clean up.
        let _ = self.docs.dropped.send(self.inbox.id());
    }
}

impl Docs {
    /// Recovers the tree from `store` (snapshot plus the log after it) and starts the actor on
    /// the current tokio runtime.
    ///
    /// # Errors
    /// [`DocsError::Store`] or [`DocsError::Corrupt`] when recovery fails.
    pub async fn open(
        store: Arc<dyn Store>,
        options: DocsOptions,
    ) -> Result<(Docs, JoinHandle<()>), DocsError> {
        let started = Instant::now();
        let recovery_store = store.clone();
        let recovered = tokio::task::spawn_blocking(move || recover(&*recovery_store))
            .await
            .map_err(|e| DocsError::Corrupt(format!("recovery task failed: {e}")))??;
        tracing::info!(
            seq = recovered.seq,
            replayed = recovered.replayed,
            replayed_bytes = recovered.replayed_bytes,
            snapshot_bytes = recovered.snapshot_bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "document tree recovered"
        );
        let max_depth = options.max_depth;
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let (dropped_tx, dropped_rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(Metrics::new());
        let actor = Actor {
            store,
            tree: recovered.tree,
            seq: recovered.seq,
            since_snapshot: recovered.replayed,
            bytes_since_snapshot: recovered.replayed_bytes,
            last_snapshot_bytes: recovered.snapshot_bytes,
            index: PathIndex::new(),
            subscriptions: HashMap::new(),
            options,
            metrics: metrics.clone(),
            snapshot_job: None,
            failed: None,
        };
        let handle = tokio::spawn(actor.run(rx, dropped_rx));
        Ok((
            Docs {
                tx,
                dropped: dropped_tx,
                metrics,
                max_depth,
            },
            handle,
        ))
    }

    async fn send(&self, cmd: Command) -> Result<(), DocsError> {
        self.tx.send(cmd).await.map_err(|_| DocsError::Closed)?;
        self.metrics.queue_added.increment(1);
        Ok(())
    }

    /// Queues a write without waiting for queue space.
    ///
    /// # Errors
    /// [`DocsError::QueueFull`] when the queue is full, [`DocsError::Closed`] when stopped.
    pub fn try_submit(&self, write: Write) -> Result<Pending, DocsError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Command::Write {
                write,
                reply: Some(reply),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => DocsError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => DocsError::Closed,
            })?;
        self.metrics.queue_added.increment(1);
        Ok(Pending(rx))
    }

    /// Queues a write, waiting for queue space if needed, and waits until it is on disk.
    ///
    /// # Errors
    /// See [`Pending::committed`]; [`DocsError::Closed`] when stopped.
    pub async fn write(&self, write: Write) -> Result<(), DocsError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Write {
            write,
            reply: Some(reply),
        })
        .await?;
        Pending(rx).committed().await
    }

    /// Returns the value at `path` serialized as JSON, or `None` when it does not exist. The
    /// read sees every write acknowledged before it was made.
    ///
    /// # Errors
    /// [`DocsError::Closed`] when stopped, [`DocsError::Store`] after a storage failure (the
    /// tree may then hold writes that are not durable, so it is not shown).
    pub async fn get(&self, path: Path) -> Result<Option<Bytes>, DocsError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Get { path, reply }).await?;
        rx.await.map_err(|_| DocsError::Closed)?
    }

    /// Checks that putting `value` at `path` stays within the depth limit, so adapters that
    /// answer before the commit (Icepeak without `?durable`) can refuse a write the engine
    /// would refuse. The engine checks again when it applies the write.
    ///
    /// # Errors
    /// [`DocsError::TooDeep`].
    pub fn check_depth(&self, path: &Path, value: &Value) -> Result<(), DocsError> {
        check_depth(path, value, self.max_depth)
    }

    /// Creates a subscriber with an empty inbox; see [`Subscriber::subscribe`].
    pub fn subscriber(&self) -> Subscriber {
        Subscriber {
            inbox: Arc::new(Inbox::new(self.metrics.skipped.clone())),
            docs: self.clone(),
        }
    }

    /// Stops the actor after the queued requests: takes a final snapshot and syncs the store.
    ///
    /// # Errors
    /// [`DocsError::Closed`] when it had already stopped.
    pub async fn shutdown(&self) -> Result<(), DocsError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Shutdown { reply })
            .await
            .map_err(|_| DocsError::Closed)?;
        rx.await.map_err(|_| DocsError::Closed)
    }
}

fn check_depth(path: &Path, value: &Value, max: usize) -> Result<(), DocsError> {
    let depth = path.depth() + tree::depth(value);
    if depth > max {
        return Err(DocsError::TooDeep { depth, max });
    }
    Ok(())
}

/// What recovery found.
struct Recovered {
    tree: Value,
    /// The last sequence number in the log (or the snapshot's).
    seq: u64,
    /// Log records replayed after the snapshot, and their bytes.
    replayed: u64,
    replayed_bytes: u64,
    /// The size of the snapshot recovery started from (0 without one).
    snapshot_bytes: u64,
}

fn recover(store: &dyn Store) -> Result<Recovered, DocsError> {
    let store_err = |e| DocsError::Store(Arc::new(e));
    let (mut tree, snap_seq, snapshot_bytes) = match store.snapshot(DOCS_LOG).map_err(store_err)? {
        Some((seq, bytes)) => {
            let tree = serde_json::from_slice(&bytes)
                .map_err(|e| DocsError::Corrupt(format!("snapshot at seq {seq}: {e}")))?;
            (tree, seq, bytes.len() as u64)
        }
        None => (Value::Object(Default::default()), 0, 0),
    };
    let mut next = snap_seq + 1;
    let mut replayed = 0u64;
    let mut replayed_bytes = 0u64;
    loop {
        let records = store.read(DOCS_LOG, next, 4096).map_err(store_err)?;
        let Some(&(last, _)) = records.last() else {
            break;
        };
        for (seq, data) in records {
            let op: DocOp = serde_json::from_slice(&data)
                .map_err(|e| DocsError::Corrupt(format!("log record {seq}: {e}")))?;
            op.apply_owned(&mut tree);
            replayed += 1;
            replayed_bytes += data.len() as u64;
        }
        next = last + 1;
    }
    let last = store
        .bounds(DOCS_LOG)
        .map_err(store_err)?
        .map_or(0, |b| b.last)
        .max(snap_seq);
    Ok(Recovered {
        tree,
        seq: last,
        replayed,
        replayed_bytes,
        snapshot_bytes,
    })
}

struct Actor {
    store: Arc<dyn Store>,
    tree: Value,
    /// The sequence number of the last write applied to `tree`.
    seq: u64,
    since_snapshot: u64,
    /// Bytes of log records written since the last snapshot.
    bytes_since_snapshot: u64,
    /// The size of the last snapshot; see [`DocsOptions::snapshot_every`].
    last_snapshot_bytes: u64,
    /// Which inboxes watch which path.
    index: PathIndex<Arc<Inbox>>,
    /// The paths each inbox watches, to clean up when it is dropped.
    subscriptions: HashMap<u64, Vec<Path>>,
    options: DocsOptions,
    metrics: Arc<Metrics>,
    snapshot_job: Option<JoinHandle<()>>,
    /// Set after a storage failure: the tree may hold writes that are not on disk, so the actor
    /// refuses everything from then on.
    failed: Option<Arc<StoreError>>,
}

/// What to do once the batch is committed.
enum After {
    Ack(Option<Reply<Result<(), DocsError>>>),
    Get(Path, Reply<Result<Option<Bytes>, DocsError>>),
    Subscribe(
        Arc<Inbox>,
        Vec<Path>,
        Reply<Result<Vec<Option<Bytes>>, DocsError>>,
    ),
    Unsubscribe(u64, Vec<Path>, Reply<Vec<Path>>),
    Shutdown(Reply<()>),
}

impl Actor {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut dropped: mpsc::UnboundedReceiver<u64>,
    ) {
        let mut batch = Vec::with_capacity(self.options.max_batch);
        loop {
            tokio::select! {
                biased;
                Some(id) = dropped.recv() => {
                    self.drop_inbox(id);
                    continue;
                }
                n = rx.recv_many(&mut batch, self.options.max_batch) => {
                    if n == 0 {
                        break;
                    }
                }
            }
            self.metrics.queue_removed.increment(batch.len() as u64);
            if self.handle_batch(&mut batch).await {
                return;
            }
        }
        // Every handle is gone: finish like a shutdown.
        self.finish().await;
    }

    /// Handles one batch; returns true when the actor must stop.
    async fn handle_batch(&mut self, batch: &mut Vec<Command>) -> bool {
        let mut ops: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut changed: Vec<Path> = Vec::new();
        let mut after: Vec<After> = Vec::with_capacity(batch.len());
        for cmd in batch.drain(..) {
            match cmd {
                Command::Write { write, reply } => {
                    if let Some(e) = &self.failed {
                        reply_err(reply, DocsError::Store(e.clone()));
                        continue;
                    }
                    match self.prepare(write) {
                        Ok(op) => {
                            let data = match serde_json::to_vec(&op) {
                                Ok(d) => d,
                                Err(e) => {
                                    reply_err(reply, DocsError::Corrupt(e.to_string()));
                                    continue;
                                }
                            };
                            self.seq += 1;
                            changed.push(op.path().clone());
                            op.apply_owned(&mut self.tree);
                            ops.push((self.seq, data));
                            after.push(After::Ack(reply));
                        }
                        Err(e) => reply_err(reply, e),
                    }
                }
                Command::Get { path, reply } => after.push(After::Get(path, reply)),
                Command::Subscribe {
                    inbox,
                    paths,
                    reply,
                } => after.push(After::Subscribe(inbox, paths, reply)),
                Command::Unsubscribe {
                    inbox,
                    paths,
                    reply,
                } => after.push(After::Unsubscribe(inbox, paths, reply)),
                Command::Shutdown { reply } => after.push(After::Shutdown(reply)),
            }
        }

        let mut commit_result = Ok(());
        if !ops.is_empty() {
            commit_result = self.commit(ops).await;
            if commit_result.is_ok() {
                self.notify(&changed);
            }
        }

        let mut stop = None;
        for a in after {
            match a {
                After::Ack(reply) => {
                    if let Some(reply) = reply {
                        let _ = reply.send(commit_result.clone().map_err(DocsError::Store));
                    }
                }
                After::Get(path, reply) => {
                    let _ = reply.send(self.readable().map(|()| self.serialize_at(&path)));
                }
                After::Subscribe(inbox, paths, reply) => {
                    let values = self.readable().map(|()| self.subscribe(inbox, paths));
                    let _ = reply.send(values);
                }
                After::Unsubscribe(inbox, paths, reply) => {
                    let _ = reply.send(self.unsubscribe(inbox, &paths));
                }
                After::Shutdown(reply) => stop = Some(reply),
            }
        }
        if let Some(reply) = stop {
            self.finish().await;
            let _ = reply.send(());
            return true;
        }
        if self.since_snapshot >= self.options.snapshot_every
            && self.bytes_since_snapshot >= self.last_snapshot_bytes
            && self.failed.is_none()
        {
            self.start_snapshot();
        }
        false
    }

    /// Whether the tree may be shown: after a storage failure it may hold writes that are not
    /// durable (they were applied before the commit failed), so reads are refused.
    fn readable(&self) -> Result<(), DocsError> {
        match &self.failed {
            Some(e) => Err(DocsError::Store(e.clone())),
            None => Ok(()),
        }
    }

    /// Turns a write into the op to log, checking depth and applying patches.
    fn prepare(&self, write: Write) -> Result<DocOp, DocsError> {
        let op = match write {
            Write::Put { path, value } => DocOp::Put { path, value },
            Write::Delete { path } => DocOp::Delete { path },
            Write::MergePatch { path, patch } => tree::merge_patch(&self.tree, &path, &patch),
            Write::JsonPatch { path, patch } => {
                tree::json_patch(&self.tree, &path, patch, &self.options.patch_limits)?
            }
        };
        if let DocOp::Put { path, value } = &op {
            check_depth(path, value, self.options.max_depth)?;
        }
        Ok(op)
    }

    async fn commit(&mut self, ops: Vec<(u64, Vec<u8>)>) -> Result<(), Arc<StoreError>> {
        let started = Instant::now();
        let store = self.store.clone();
        let count = ops.len();
        let bytes: usize = ops.iter().map(|(_, d)| d.len()).sum();
        let owned = ops;
        let result = tokio::task::spawn_blocking(move || {
            let records: Vec<Append<'_>> = owned
                .iter()
                .map(|(seq, data)| Append {
                    log: DOCS_LOG,
                    seq: *seq,
                    data,
                })
                .collect();
            store.append(&records, Durability::Sync)
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Engine(Box::new(e))));
        self.metrics
            .commit_seconds
            .record(started.elapsed().as_secs_f64());
        self.metrics.batch_size.record(count as f64);
        match result {
            Ok(()) => {
                self.metrics.writes.increment(count as u64);
                self.metrics.data_written_bytes.increment(bytes as u64);
                self.since_snapshot += count as u64;
                self.bytes_since_snapshot += bytes as u64;
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "document commit failed; refusing further writes");
                let e = Arc::new(e);
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Pushes the current value of every subscribed path affected by `changed`, serializing
    /// each path's value once however many subscribers it has.
    fn notify(&self, changed: &[Path]) {
        if self.index.is_empty() {
            return;
        }
        let mut done: HashSet<Path> = HashSet::new();
        let mut sent = 0u64;
        for path in changed {
            self.index.affected(path, |sub_path, inboxes| {
                if !done.insert(sub_path.clone()) {
                    return;
                }
                let value = self.serialize_value(sub_path);
                for inbox in inboxes {
                    inbox.push(sub_path, value.clone());
                }
                sent += inboxes.len() as u64;
            });
        }
        self.metrics.notifications.increment(sent);
    }

    fn serialize_value(&self, path: &Path) -> Bytes {
        self.serialize_at(path)
            .unwrap_or_else(|| Bytes::from_static(b"null"))
    }

    fn serialize_at(&self, path: &Path) -> Option<Bytes> {
        let v = tree::get(&self.tree, path)?;
        // Serializing a `Value` cannot fail: keys are strings and numbers are finite.
        serde_json::to_vec(v).ok().map(Bytes::from)
    }

    fn subscribe(&mut self, inbox: Arc<Inbox>, paths: Vec<Path>) -> Vec<Option<Bytes>> {
        let id = inbox.id();
        let mut values = Vec::with_capacity(paths.len());
        for path in paths {
            values.push(self.serialize_at(&path));
            // Its subscriber was dropped while this request was queued, and its cleanup may
            // have run already: registering now would leak the subscription for good.
            if inbox.is_closed() {
                continue;
            }
            let mine = self.subscriptions.entry(id).or_default();
            if !mine.contains(&path) {
                mine.push(path.clone());
                self.index.insert(&path, inbox.clone());
            }
        }
        self.metrics.subscribers.set(self.index.len() as f64);
        values
    }

    fn unsubscribe(&mut self, id: u64, paths: &[Path]) -> Vec<Path> {
        let mut removed = Vec::new();
        if let Some(mine) = self.subscriptions.get_mut(&id) {
            for path in paths {
                if let Some(pos) = mine.iter().position(|p| p == path) {
                    mine.swap_remove(pos);
                    self.index.remove(path, |i| i.id() == id);
                    removed.push(path.clone());
                }
            }
            if mine.is_empty() {
                self.subscriptions.remove(&id);
            }
        }
        self.metrics.subscribers.set(self.index.len() as f64);
        removed
    }

    fn drop_inbox(&mut self, id: u64) {
        if let Some(paths) = self.subscriptions.remove(&id) {
            for path in &paths {
                self.index.remove(path, |i| i.id() == id);
            }
            self.metrics.subscribers.set(self.index.len() as f64);
        }
    }

    /// Serializes the tree now and stores it in the background.
    fn start_snapshot(&mut self) {
        if self.snapshot_job.as_ref().is_some_and(|j| !j.is_finished()) {
            return;
        }
        let Ok(data) = serde_json::to_vec(&self.tree) else {
            return;
        };
        self.metrics.snapshot_bytes.set(data.len() as f64);
        self.since_snapshot = 0;
        self.bytes_since_snapshot = 0;
        self.last_snapshot_bytes = data.len() as u64;
        let seq = self.seq;
        let store = self.store.clone();
        self.snapshot_job = Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = write_snapshot(&*store, seq, &data) {
                tracing::warn!(error = %e, seq, "document snapshot failed; will retry later");
            } else {
                tracing::debug!(seq, bytes = data.len(), "document snapshot written");
            }
        }));
    }

    async fn finish(&mut self) {
        if let Some(job) = self.snapshot_job.take() {
            let _ = job.await;
        }
        if self.failed.is_some() {
            return;
        }
        if self.since_snapshot > 0 {
            let store = self.store.clone();
            let seq = self.seq;
            let data = serde_json::to_vec(&self.tree).unwrap_or_default();
            let res =
                tokio::task::spawn_blocking(move || write_snapshot(&*store, seq, &data)).await;
            match res {
                Ok(Ok(())) => tracing::info!(seq, "final document snapshot written"),
                Ok(Err(e)) => tracing::warn!(error = %e, "final document snapshot failed"),
                Err(e) => tracing::warn!(error = %e, "final document snapshot task failed"),
            }
        }
        if let Err(e) = self.store.sync() {
            tracing::warn!(error = %e, "final store sync failed");
        }
    }
}

/// Stores the snapshot durably, then drops the log records it covers.
fn write_snapshot(store: &dyn Store, seq: u64, data: &[u8]) -> Result<(), StoreError> {
    store.put_snapshot(DOCS_LOG, seq, data, Durability::Sync)?;
    store.trim(DOCS_LOG, seq + 1, Durability::Buffered)
}

fn reply_err(reply: Option<Reply<Result<(), DocsError>>>, e: DocsError) {
    if let Some(reply) = reply {
        let _ = reply.send(Err(e));
    }
}
