//! Storage traits for Herald, and the in-memory reference implementation.
//!
//! Herald keeps every durable thing as an append-only **log** of opaque records, addressed by a
//! log name and a sequence number, plus named **snapshots** (a blob tagged with the sequence
//! number it covers). The document tree is a log of writes plus periodic snapshots of the
//! materialized tree; event streams are logs trimmed by retention. The store knows nothing of
//! JSON, paths or protocols: it stores bytes.
//!
//! What this crate is **not**: it does no batching of its own and owns no threads. Callers that
//! want group commit (one fsync for many writes) gather writes and call [`Store::append`] once
//! with all of them; see `herald-engine`.
//!
//! # Layout
//! - [`Store`]: the trait every backend implements (blocking; call it from a dedicated thread
//!   or `spawn_blocking`).
//! - [`MemoryStore`]: the reference implementation used as the model in tests.
//! - [`conformance`]: the checks every backend must pass (run them from the backend's tests).
//!
//! # Example
//! ```
//! use herald_store::{Append, Durability, MemoryStore, Store};
//!
//! let store = MemoryStore::default();
//! store
//!     .append(&[Append { log: "docs", seq: 1, data: b"hello" }], Durability::Sync)
//!     .unwrap();
//! let entries = store.read("docs", 1, 10).unwrap();
//! assert_eq!(entries, vec![(1, b"hello".to_vec())]);
//! ```

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Mutex;

pub mod conformance;

/// How far a write must have gone before [`Store::append`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The write is in the engine's buffers; a process crash may lose it, an OS crash will.
    Buffered,
    /// The write is on stable storage (fsync'd) before the call returns.
    Sync,
}

/// One record to append to a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Append<'a> {
    /// The log's name (for example `docs` or `stream:/bucket/name`).
    pub log: &'a str,
    /// The record's sequence number. Within one log, sequence numbers are strictly increasing.
    pub seq: u64,
    /// The record's bytes, stored as given.
    pub data: &'a [u8],
}

/// The first and last sequence numbers of a log, and the size of what it retains.
///
/// When every record has been trimmed, `first == last + 1` and `bytes == 0`: the log is empty
/// but remembers where its numbering stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
    /// The oldest retained sequence number (`last + 1` when nothing is retained).
    pub first: u64,
    /// The newest sequence number ever appended.
    pub last: u64,
    /// The sum of the data lengths of the retained records (keys and engine overhead not
    /// included). Kept up to date by [`Store::append`], [`Store::trim`] and
    /// [`Store::delete_log`] atomically with the records they write or remove.
    pub bytes: u64,
}

/// Errors from a storage backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The underlying engine failed (I/O, corruption, ...).
    #[error("storage engine error: {0}")]
    Engine(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// An earlier fatal fault (such as a failed fsync) poisoned the store; no write is accepted
    /// any more and the process should restart.
    #[error("the store is poisoned by an earlier fatal error and accepts no more writes")]
    Poisoned,
    /// A caller broke an invariant (for example appended a sequence number that is not greater
    /// than the log's last one).
    #[error("invalid store operation: {0}")]
    Invalid(String),
}

/// A durable home for logs and snapshots.
///
/// Implementations are thread-safe (`&self` everywhere) and blocking.
///
/// # Invariants
/// - Within a log, sequence numbers only grow; [`Store::append`] rejects a record whose `seq`
///   is not greater than the log's last one, or is `u64::MAX` (reserved so that `last + 1`
///   always exists), with [`StoreError::Invalid`].
/// - One call to [`Store::append`] is atomic: after a crash either all its records are present
///   or none is.
/// - With [`Durability::Sync`], a record that [`Store::append`] returned `Ok` for survives
///   `kill -9` and power loss.
/// - [`Store::trim`] never makes a read walk the trimmed records: reads start at the first
///   retained record.
/// - [`LogBounds`] (from [`Store::bounds`] and [`Store::list_logs`]) always describe exactly the
///   records a read would return, `bytes` included: they change in the same atomic write as the
///   records.
pub trait Store: Send + Sync + 'static {
    /// Appends records (to one or several logs) as one atomic batch.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for a non-increasing `seq`, [`StoreError::Poisoned`] after a
    /// fatal fault, [`StoreError::Engine`] on I/O failure (which also poisons the store).
    fn append(&self, records: &[Append<'_>], durability: Durability) -> Result<(), StoreError>;

    /// Reads up to `limit` records of `log` with `seq >= from`, in ascending order.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    fn read(&self, log: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;

    /// Returns the first retained and the last appended sequence numbers of `log`, or `None`
    /// when nothing was ever appended to it.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    fn bounds(&self, log: &str) -> Result<Option<LogBounds>, StoreError>;

    /// Removes every record of `log` with `seq < before`. The log's last sequence number is
    /// remembered even when every record is trimmed, so numbering continues after it.
    ///
    /// A large trim may be carried out in several steps; a crash in the middle leaves a shorter
    /// trim (a prefix of the requested one), never a hole.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    fn trim(&self, log: &str, before: u64, durability: Durability) -> Result<(), StoreError>;

    /// Returns every log whose name starts with `prefix` (`""` for all), with its bounds,
    /// sorted by name (byte order). Fully trimmed logs are listed; deleted ones are not.
    ///
    /// Meant for startup over many large logs: it reads only the logs' bounds, never records.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    fn list_logs(&self, prefix: &str) -> Result<Vec<(String, LogBounds)>, StoreError>;

    /// Removes every record of `log` and then the log itself: afterwards [`Store::bounds`] is
    /// `None`, [`Store::list_logs`] omits it, and a later append may start again at any `seq`.
    /// Deleting a log that does not exist does nothing.
    ///
    /// Like [`Store::trim`], a large delete may be carried out in several steps; a crash in the
    /// middle leaves the log trimmed by a prefix (still listed, numbering kept), never a hole.
    /// `durability` applies to the completed delete.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    fn delete_log(&self, log: &str, durability: Durability) -> Result<(), StoreError>;

    /// Stores `data` as the snapshot `name` covering everything up to `seq`, replacing the
    /// previous one.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    fn put_snapshot(
        &self,
        name: &str,
        seq: u64,
        data: &[u8],
        durability: Durability,
    ) -> Result<(), StoreError>;

    /// Returns the newest snapshot called `name` and the sequence number it covers.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    fn snapshot(&self, name: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError>;

    /// Makes every earlier write durable (one fsync), whatever durability it was made with.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    fn sync(&self) -> Result<(), StoreError>;
}

#[derive(Debug, Default)]
struct MemLog {
    records: BTreeMap<u64, Vec<u8>>,
    last: Option<u64>,
    /// The sum of the lengths in `records`, kept as a counter so `bounds` stays cheap for
    /// tests that append a lot.
    bytes: u64,
}

impl MemLog {
    fn bounds(&self) -> Option<LogBounds> {
        let last = self.last?;
        let first = self.records.keys().next().copied().unwrap_or(last + 1);
        Some(LogBounds {
            first,
            last,
            bytes: self.bytes,
        })
    }
}

/// The in-memory reference [`Store`]: no durability, simple enough to be obviously right, and
/// used as the model that durable backends are compared against.
#[derive(Debug, Default)]
pub struct MemoryStore {
    /// Every log and snapshot. One lock: this store is a test model, not a fast path.
    inner: Mutex<MemInner>,
}

#[derive(Debug, Default)]
struct MemInner {
    /// Ordered by name, for `list_logs`.
    logs: BTreeMap<String, MemLog>,
    snapshots: HashMap<String, (u64, Vec<u8>)>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        // A panic while holding this lock leaves plain data behind; keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemoryStore {
    fn append(&self, records: &[Append<'_>], _durability: Durability) -> Result<(), StoreError> {
        let mut inner = self.lock();
        // Validate the whole batch first so that it is all-or-nothing.
        let mut lasts: HashMap<&str, Option<u64>> = HashMap::new();
        for r in records {
            let last = lasts
                .entry(r.log)
                .or_insert_with(|| inner.logs.get(r.log).and_then(|l| l.last));
            if r.seq == u64::MAX || last.is_some_and(|l| r.seq <= l) {
                return Err(StoreError::Invalid(format!(
                    "seq {} is not greater than {} in log {}",
                    r.seq,
                    last.unwrap_or_default(),
                    r.log
                )));
            }
            *last = Some(r.seq);
        }
        for r in records {
            let log = inner.logs.entry(r.log.to_owned()).or_default();
            log.records.insert(r.seq, r.data.to_vec());
            log.last = Some(r.seq);
            log.bytes += r.data.len() as u64;
        }
        Ok(())
    }

    fn read(&self, log: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .logs
            .get(log)
            .map(|l| {
                l.records
                    .range(from..)
                    .take(limit)
                    .map(|(s, d)| (*s, d.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn bounds(&self, log: &str) -> Result<Option<LogBounds>, StoreError> {
        Ok(self.lock().logs.get(log).and_then(MemLog::bounds))
    }

    fn trim(&self, log: &str, before: u64, _durability: Durability) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if let Some(l) = inner.logs.get_mut(log) {
            let kept = l.records.split_off(&before);
            let removed: u64 = l.records.values().map(|d| d.len() as u64).sum();
            l.bytes -= removed;
            l.records = kept;
        }
        Ok(())
    }

    fn list_logs(&self, prefix: &str) -> Result<Vec<(String, LogBounds)>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .logs
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(prefix))
            .filter_map(|(name, l)| Some((name.clone(), l.bounds()?)))
            .collect())
    }

    fn delete_log(&self, log: &str, _durability: Durability) -> Result<(), StoreError> {
        self.lock().logs.remove(log);
        Ok(())
    }

    fn put_snapshot(
        &self,
        name: &str,
        seq: u64,
        data: &[u8],
        _durability: Durability,
    ) -> Result<(), StoreError> {
        self.lock()
            .snapshots
            .insert(name.to_owned(), (seq, data.to_vec()));
        Ok(())
    }

    fn snapshot(&self, name: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(self.lock().snapshots.get(name).cloned())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
