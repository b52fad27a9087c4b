//! The durable [`Store`] backend for Herald, on the [fjall](https://docs.rs/fjall) LSM-tree.
//!
//! [`FjallStore`] keeps Herald's logs (append-only, trimmed by retention) and named snapshots in
//! one fjall database directory. Every [`Store::append`] is one atomic fjall write batch; with
//! [`Durability::Sync`] the batch's journal entry is `fdatasync`ed before the call returns, and
//! before the records become visible to readers.
//!
//! What this crate is **not**: it does no group commit of its own (callers batch records into
//! one `append`, see `herald-store`), owns no threads besides fjall's background workers, and is
//! blocking (call it from a dedicated thread or `spawn_blocking`). It knows nothing of JSON or
//! protocols.
//!
//! # Layout
//! - [`FjallStore`]: the [`Store`] implementation (this file).
//! - [`FjallOptions`] (`options`): cache, journal and memtable sizes.
//! - `keys`: the on-disk key/value encodings, described below.
//! - `block`: how an append's records for one log are packed into one value.
//! - [`FormatError`]: what [`StoreError::Engine`] wraps when on-disk data does not decode.
//!
//! # On disk
//! Two fjall keyspaces in the directory given to [`FjallStore::open`]:
//! - `logs`: records in **blocks** under `0x03 ++ u16_be(name_len) ++ name ++ last_be`, and each
//!   log's `(first, last, bytes)` bounds under `0x01 ++ u16_be(name_len) ++ name`. The length
//!   prefix keeps names that are prefixes of each other, or contain NUL, apart; big-endian `seq`
//!   keeps blocks in order. Records and bounds share a keyspace, so they share a memtable and
//!   flush together and a hot log never pins journals through a second, rarely flushed
//!   keyspace.
//! - `snapshots`: per name, a header (`seq`, length, chunk count) and the blob in
//!   [`SNAPSHOT_CHUNK_BYTES`] chunks, all replaced in one batch.
//!
//! **Blocks.** One append writes the records it adds to a log as one fjall value (a new one
//! every 16 KiB of data), keyed by its last record's `seq`. An LSM tree charges per entry: a
//! memtable skiplist insert, a journal entry, and the same again in every flush and
//! compaction. With one entry per record those costs were most of a durable append; with
//! blocks they are paid once per log per append (group commit makes that tens to thousands of
//! records). Keying by the *last* `seq` means the block holding record `n` is the first one
//! keyed at or after `n`, found with a forward seek; and a trim below `n` deletes exactly the
//! blocks keyed below `n`. The one block a trim cuts through stays until a later trim passes
//! it: the watermark (`first`) hides its older records from reads, and `bytes` no longer counts
//! them. Blocks are never rewritten.
//!
//! Blocks of 1 KiB or more go to fjall's blob files (key-value separation): the LSM tree then
//! holds only a pointer to them, so its flushes and compactions no longer copy the records
//! again and again, and a blob file whose blocks were all trimmed is dropped whole. Stores
//! created before this keep their layout (fjall fixes the option when it creates the
//! keyspace).
//!
//! A log's bounds entry is written in the same batch as the records an append adds or a trim
//! step removes, so `first`, `last` and `bytes` always match the records, also after a crash.
//! All bounds are also held in memory (read once on open), so [`Store::bounds`] and
//! [`Store::list_logs`] never touch the disk; the bounds entries sort apart from the records, so
//! reading them on open never walks a record either.
//!
//! **Format versions.** The `logs` keyspace holds a format marker. Version 1 (before
//! `LogBounds::bytes` existed) stored bounds as `(first, last)`; versions 1 and 2 stored one
//! entry per record, under tag `0x02`. Opening an older directory upgrades it in place:
//! - 1 → 2: each log's retained records are read once to sum their lengths, then every bounds
//!   entry and the marker are rewritten in one synced batch (a crash leaves the old directory,
//!   upgraded again on the next open).
//! - 2 → 3: the records move into blocks, in steps of one batch each (a step writes the blocks
//!   and removes the old entries together), so a crash leaves every record in exactly one
//!   layout and the next open carries on; the marker is set, synced, once no old entry is left.
//!
//! There is no way back: a build that knows only version 2 refuses an upgraded directory with
//! its own unsupported-version error rather than misreading it. This build checks the marker
//! before decoding anything, so a directory from a later format is refused with
//! [`FormatError::UnsupportedVersion`].
//!
//! **Deleting a log** ([`Store::delete_log`]) is a trim of every record, in the same steps, whose
//! last step also removes the bounds entry. A crash in between leaves the log trimmed by a
//! prefix, never a hole. A log recreated under the same name starts in the key range of its
//! deleted records; their tombstones are walked only by reads spanning a gap in the new log's
//! numbering, until compaction drops them.
//!
//! **Trim watermark.** Deleting records in an LSM-tree writes tombstones, and a scan that starts
//! below them walks every one until compaction drops them (20 ms for 62k tombstones, measured
//! in `deps-notes.md`). Each log's `first` is therefore kept exactly (the oldest stored record,
//! or `last + 1`), and reads and trims always seek from it, never from seq 0. A read seeks
//! straight to `max(from, first)`, so a short read at the tail of a long log costs one seek:
//! 10 records at the end of a 10-million-record log took 4 µs, as at its start.
//!
//! # Disk use
//! Besides live records, the directory holds: tombstones of trimmed blocks until compaction
//! drops them; trimmed blocks in blob files until fjall drops or rewrites the file (its blob
//! garbage collection, with the default staleness threshold of 25 %; with a retention of
//! 1,000 events per topic under a steady 0.43 M events/s the directory stayed between 16 and
//! 71 MB); the records below the watermark in the block the last trim cut
//! through; the active journal (up to ~64 MB, plus what was written until the next memtable
//! flush) and at most about [`FjallOptions::with_max_journal_bytes`] of sealed journals (64 MiB
//! by default, see [`FjallOptions`]); and, while the store is open, tables that a compaction
//! has replaced but that fjall deletes only at its next version cleanup (the next memtable
//! rotation, or close). The last item is the "footprint grows after reopen" effect: recovery
//! flushes and compacts, and the replaced tables linger until the next cleanup. It is bounded
//! by one round of compaction inputs and does not accumulate across reopens.
//!
//! # Example
//! ```
//! use herald_store::{Append, Durability, LogBounds, Store};
//! use herald_store_fjall::FjallStore;
//!
//! let dir = tempfile::tempdir()?;
//! let store = FjallStore::open(dir.path())?;
//! store.append(
//!     &[
//!         Append { log: "docs", seq: 1, data: b"hello" },
//!         Append { log: "docs", seq: 2, data: b"world" },
//!     ],
//!     Durability::Sync,
//! )?;
//! store.trim("docs", 2, Durability::Sync)?;
//! assert_eq!(store.read("docs", 0, 10)?, vec![(2, b"world".to_vec())]);
//! drop(store);
//!
//! let store = FjallStore::open(dir.path())?;
//! assert_eq!(store.bounds("docs")?, Some(LogBounds { first: 2, last: 2, bytes: 5 }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod block;
mod keys;
mod options;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode, Readable};
use herald_store::{Append, Durability, LogBounds, Store, StoreError};

pub use keys::{MAX_NAME_LEN, MAX_RECORD_BYTES, SNAPSHOT_CHUNK_BYTES};

/// The block encoding, exposed for the `store_block` fuzz target only (not a stable API).
#[doc(hidden)]
pub mod fuzzing {
    /// Decodes a block as reads do: `None` if it is corrupt.
    pub fn decode_block(value: &[u8]) -> Option<Vec<(u64, &[u8])>> {
        crate::block::entries(value).map(|e| e.ok()).collect()
    }

    /// Encodes records (strictly increasing `seq`s) as one block.
    pub fn encode_block(records: &[(u64, &[u8])]) -> Vec<u8> {
        let mut writer = crate::block::BlockWriter::default();
        for (seq, data) in records {
            writer.push(*seq, data);
        }
        writer.take().map(|(_, value)| value).unwrap_or_default()
    }
}
pub use options::FjallOptions;

use block::BlockWriter;
use keys::{LogMeta, SnapshotHeader};

/// How many blocks one trim step deletes at most. A trim of millions of records is split into
/// steps, each one batch that moves the watermark, so memory stays bounded and appends are not
/// held up for the whole trim.
const TRIM_BATCH: usize = 16 * 1024;

/// How many bytes of blocks one trim step reads at most (a step stops at whichever of this and
/// [`TRIM_BATCH`] comes first). Also the size of one step of the upgrade to blocks.
const TRIM_BYTES: usize = 8 * 1024 * 1024;

/// What a trim ([`FjallStore::cut`]) removes.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// Every record with a `seq` below this one; the log's bounds entry stays.
    Below(u64),
    /// Every record, and with the last of them the bounds entry: [`Store::delete_log`].
    Log,
}

/// The outcome of one [`FjallStore::trim_step`].
enum TrimStep {
    /// A buffered batch was committed; more records below `before` remain.
    More,
    /// The last batch was committed with the caller's durability.
    Done,
    /// Nothing below `before` was left to delete; nothing was written.
    Unchanged,
}

/// The fsync flavour used for [`Durability::Sync`] and [`Store::sync`].
///
/// `SyncData` (`fdatasync`), not `SyncAll` (`fsync`): fjall pre-allocates each journal file
/// (`set_len` + `fsync` on creation) and writes it front to back, and rotates journals with
/// `SyncAll` plus a directory fsync. So the only metadata an append changes is the mtime (and
/// the size, once a recovered journal grows past its end, which `fdatasync` does flush since
/// it is needed to read the data back). Skipping the mtime saves a filesystem-journal commit per
/// sync on ext4/xfs without weakening durability of the data.
const SYNC_MODE: PersistMode = PersistMode::SyncData;

/// What [`StoreError::Engine`] wraps when data on disk cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The directory was written by a build with a different on-disk format.
    #[error("unsupported on-disk format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The version found on disk.
        found: u32,
        /// The version this build writes (it also reads, and upgrades, the versions before it).
        supported: u32,
    },
    /// An entry does not decode, or a snapshot's chunks do not match its header.
    #[error("corrupt {what} for {name:?}")]
    Corrupt {
        /// Which kind of entry ("log bounds", "snapshot header", ...).
        what: &'static str,
        /// The log or snapshot name (lossy for undecodable keys).
        name: String,
    },
}

fn corrupt(what: &'static str, name: impl Into<String>) -> StoreError {
    StoreError::Engine(Box::new(FormatError::Corrupt {
        what,
        name: name.into(),
    }))
}

/// Maps a fjall error, keeping fjall's own poisoning visible as [`StoreError::Poisoned`].
fn engine(error: fjall::Error) -> StoreError {
    match error {
        fjall::Error::Poisoned => StoreError::Poisoned,
        other => StoreError::Engine(Box::new(other)),
    }
}

/// The journal persist mode for a [`Durability`].
fn persist_mode(durability: Durability) -> Option<PersistMode> {
    Some(match durability {
        // fjall's default: the journal buffer is handed to the OS, not fsynced. Survives a
        // process crash, not an OS crash or power loss.
        Durability::Buffered => PersistMode::Buffer,
        // fjall fsyncs inside `commit`, before the batch reaches the memtables, so a reader can
        // never see a `Sync` write that a crash could still take back.
        Durability::Sync => SYNC_MODE,
    })
}

fn too_long(name: &str) -> StoreError {
    StoreError::Invalid(format!(
        "name of {} bytes is longer than the limit of {MAX_NAME_LEN}",
        name.len()
    ))
}

/// A [`Store`] backed by a fjall database directory.
///
/// Thread-safe: share it in an `Arc`. Writers are serialized by an internal lock (one writer at
/// a time, as in fjall's journal anyway); readers never wait for a writer's fsync.
///
/// # Invariants
/// - `meta` equals the bounds entries on disk, except between a writer's commit and its update
///   of `meta` (under `writer`), when `meta` is behind. For every log, `meta.first` is the oldest
///   stored record (or `last + 1`), and no record below it exists.
/// - After any failed write or fsync, `poisoned` is set and stays set; no further write is tried.
pub struct FjallStore {
    /// Where the database lives (for `Debug` and error messages).
    dir: PathBuf,
    /// The fjall database; write batches and persists go through it.
    db: Database,
    /// Log records and per-log bounds.
    logs: Keyspace,
    /// Snapshot headers and chunks.
    snapshots: Keyspace,
    /// Each log's bounds, mirrored from disk so `append` validates and `bounds` and `list_logs`
    /// answer without a disk read; ordered by name for `list_logs`. Written only by the holder
    /// of `writer`, after its batch committed; readers take it briefly to learn a log's
    /// watermark.
    meta: RwLock<BTreeMap<String, LogMeta>>,
    /// Serializes writers from validation through commit (and fsync), so two appends to one log
    /// cannot both pass validation and a snapshot's old chunk count stays current. Held by
    /// `append`, `trim` and `delete_log` (one step at a time) and `put_snapshot`; never by
    /// readers.
    writer: Mutex<()>,
    /// Set on the first failed write or fsync: after a failed fsync the kernel may have dropped
    /// the dirty pages, so nothing later can be trusted to be durable (the "fsyncgate" lesson).
    poisoned: AtomicBool,
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore")
            .field("dir", &self.dir)
            .field("logs", &self.read_meta().len())
            .field("poisoned", &self.is_poisoned())
            .finish_non_exhaustive()
    }
}

impl FjallStore {
    /// Opens (creating it if needed) the store in `dir` with [`FjallOptions::default`].
    ///
    /// # Errors
    /// [`StoreError::Engine`] if fjall cannot open or recover the directory (also when another
    /// process or another `FjallStore` holds it open), or the data in it does not decode (then
    /// wrapping a [`FormatError`]).
    pub fn open(dir: &Path) -> Result<FjallStore, StoreError> {
        Self::open_with(dir, FjallOptions::default())
    }

    /// Opens (creating it if needed) the store in `dir` with the given options.
    ///
    /// Opening replays into memory the journal that was active at the last close (and any
    /// sealed journal not yet freed): with the default options up to roughly 64–90 MB, which
    /// took 0.1–1 s in the `group_commit` benchmark. It then reads every log's bounds entry
    /// (never a record), except for the one-time upgrade of a directory of an older format,
    /// which reads every retained record once (see the crate docs).
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for options fjall would reject; otherwise as [`FjallStore::open`].
    pub fn open_with(dir: &Path, options: FjallOptions) -> Result<FjallStore, StoreError> {
        options.validate()?;
        let mut builder = Database::builder(dir)
            .cache_size(options.cache_bytes)
            .max_journaling_size(options.max_journal_bytes);
        if let Some(threads) = options.worker_threads {
            builder = builder.worker_threads(threads);
        }
        let db = builder.open().map_err(|e| match e {
            fjall::Error::Locked => StoreError::Engine(Box::new(std::io::Error::new(
                std::io::ErrorKind::ResourceBusy,
                format!(
                    "{} is in use by another process (is another herald running on this \
                     data directory?)",
                    dir.display()
                ),
            ))),
            other => engine(other),
        })?;
        let logs = db
            .keyspace("logs", || {
                // Key-value separation keeps blocks out of compactions: with 100 publishers
                // on 100 durable MQTT topics, 0.65-0.69 M messages/s without, 0.95-0.96 with
                // (10 s runs), on less disk.
                KeyspaceCreateOptions::default()
                    .max_memtable_size(options.log_memtable_bytes)
                    .with_kv_separation(Some(fjall::KvSeparationOptions::default()))
            })
            .map_err(engine)?;
        let snapshots = db
            .keyspace("snapshots", || {
                KeyspaceCreateOptions::default().max_memtable_size(options.snapshot_memtable_bytes)
            })
            .map_err(engine)?;

        let meta = match logs.get(keys::FORMAT_KEY).map_err(engine)? {
            Some(value) => {
                let found = <[u8; 4]>::try_from(&*value)
                    .map(u32::from_be_bytes)
                    .map_err(|_| corrupt("format marker", dir.display().to_string()))?;
                match found {
                    keys::FORMAT_VERSION => load_meta(&logs)?,
                    keys::FORMAT_VERSION_V2 => {
                        upgrade_v2(&db, &logs, dir)?;
                        load_meta(&logs)?
                    }
                    keys::FORMAT_VERSION_V1 => {
                        let meta = upgrade_v1(&db, &logs, dir)?;
                        upgrade_v2(&db, &logs, dir)?;
                        meta
                    }
                    _ => {
                        return Err(StoreError::Engine(Box::new(
                            FormatError::UnsupportedVersion {
                                found,
                                supported: keys::FORMAT_VERSION,
                            },
                        )));
                    }
                }
            }
            None if logs.prefix(keys::META_PREFIX).next().is_none() => {
                let mut batch = db.batch().durability(Some(PersistMode::SyncAll));
                batch.insert(&logs, keys::FORMAT_KEY, keys::FORMAT_VERSION.to_be_bytes());
                batch.commit().map_err(engine)?;
                BTreeMap::new()
            }
            None => {
                return Err(corrupt(
                    "format marker (missing)",
                    dir.display().to_string(),
                ));
            }
        };

        Ok(FjallStore {
            dir: dir.to_path_buf(),
            db,
            logs,
            snapshots,
            meta: RwLock::new(meta),
            writer: Mutex::new(()),
            poisoned: AtomicBool::new(false),
        })
    }

    /// Whether an earlier fatal fault poisoned the store (see [`StoreError::Poisoned`]).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Bytes the database uses on disk: tables plus journals, as fjall accounts them.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    pub fn disk_space(&self) -> Result<u64, StoreError> {
        self.db.disk_space().map_err(engine)
    }

    fn read_meta(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, LogMeta>> {
        // Writers only insert whole entries, so a panic elsewhere cannot leave a torn value.
        self.meta.read().unwrap_or_else(|e| e.into_inner())
    }

    fn log_meta(&self, log: &str) -> Option<LogMeta> {
        self.read_meta().get(log).copied()
    }

    fn write_meta(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, LogMeta>> {
        self.meta.write().unwrap_or_else(|e| e.into_inner())
    }

    fn set_meta<'a>(&self, updates: impl IntoIterator<Item = (&'a str, LogMeta)>) {
        let mut meta = self.write_meta();
        for (log, m) in updates {
            match meta.get_mut(log) {
                Some(slot) => *slot = m,
                None => {
                    meta.insert(log.to_owned(), m);
                }
            }
        }
    }

    fn check_poisoned(&self) -> Result<(), StoreError> {
        if self.is_poisoned() {
            Err(StoreError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Takes the writer lock. A panic while it was held may have left `meta` behind the disk,
    /// so that poisons the store.
    fn lock_writer(&self) -> Result<MutexGuard<'_, ()>, StoreError> {
        self.check_poisoned()?;
        self.writer.lock().map_err(|_| {
            self.poisoned.store(true, Ordering::Release);
            StoreError::Poisoned
        })
    }

    fn batch(&self, durability: Durability) -> OwnedWriteBatch {
        self.db.batch().durability(persist_mode(durability))
    }

    /// Commits a batch; any failure is fatal and poisons the store.
    fn commit(&self, batch: OwnedWriteBatch) -> Result<(), StoreError> {
        batch.commit().map_err(|e| self.poison(e))
    }

    fn poison(&self, error: fjall::Error) -> StoreError {
        tracing::error!(dir = %self.dir.display(), %error, "fjall write failed; store poisoned");
        self.poisoned.store(true, Ordering::Release);
        engine(error)
    }

    /// Runs a trim or a delete to completion, one [`FjallStore::trim_step`] (one batch, one
    /// hold of the writer lock) at a time, so appends are not held up for the whole of it.
    fn cut(&self, log: &str, cut: Cut, durability: Durability) -> Result<(), StoreError> {
        self.check_poisoned()?;
        let mut buffered_steps = false;
        loop {
            match self.trim_step(log, cut, durability)? {
                TrimStep::More => buffered_steps = true,
                TrimStep::Done => return Ok(()),
                // A concurrent trim finished the job; make our own earlier steps durable.
                TrimStep::Unchanged if buffered_steps && durability == Durability::Sync => {
                    return self.sync();
                }
                TrimStep::Unchanged => return Ok(()),
            }
        }
    }

    /// Deletes up to [`TRIM_BATCH`] blocks (or [`TRIM_BYTES`]) of `log` that `cut` removes,
    /// starting at the watermark, and in the same batch moves the watermark to the oldest
    /// record left and takes the removed records' lengths off `bytes` (or, for [`Cut::Log`] once
    /// no record is left, removes the bounds entry). A block that holds records on both sides
    /// of the cut stays; only the watermark moves past its older records. Only the completing
    /// batch gets the caller's `durability`; earlier ones are buffered.
    ///
    /// Each step re-reads the log's bounds under the writer lock, so appends and other trims
    /// between steps are taken into account, and each committed step leaves exact bounds: a
    /// crash between steps leaves a shorter trim, never a wrong `first` or `bytes`.
    fn trim_step(
        &self,
        log: &str,
        cut: Cut,
        durability: Durability,
    ) -> Result<TrimStep, StoreError> {
        let _writer = self.lock_writer()?;
        let Some(m) = self.log_meta(log) else {
            return Ok(TrimStep::Unchanged);
        };
        let meta_key = keys::meta_key(log).ok_or_else(|| too_long(log))?;
        // Every record is below `u64::MAX`: append refuses it.
        let before = match cut {
            Cut::Below(before) => before,
            Cut::Log => u64::MAX,
        };
        if m.is_empty() || before <= m.first {
            if let Cut::Log = cut {
                // Nothing (left) to trim: the bounds entry is all that remains of the log.
                let mut batch = self.batch(durability);
                batch.remove(&self.logs, meta_key);
                self.commit(batch)?;
                self.write_meta().remove(log);
                return Ok(TrimStep::Done);
            }
            return Ok(TrimStep::Unchanged);
        }
        // `before > m.first >= 0`, and `m.last < u64::MAX` (append refuses u64::MAX). The
        // blocks keyed below `before` hold only records below it: they all go.
        let upper = (before - 1).min(m.last);
        let (Some(lo), Some(hi)) = (keys::block_key(log, m.first), keys::block_key(log, upper))
        else {
            return Err(too_long(log));
        };

        // Seek from the watermark: every tombstone of earlier trims lies below it.
        let mut doomed = Vec::with_capacity(TRIM_BATCH.min(1024));
        let mut removed_bytes = 0u64;
        let mut scanned = 0usize;
        let mut next_first = None;
        for guard in self.logs.range(lo..=hi) {
            let (key, value) = guard.into_inner().map_err(engine)?;
            if doomed.len() == TRIM_BATCH || scanned >= TRIM_BYTES {
                // One block more than a step: it is the oldest one this step leaves.
                let (first, _) = block::split(&value, m.first, m.first)
                    .map_err(|_| corrupt("record block", log))?;
                next_first = Some(first.ok_or_else(|| corrupt("record block", log))?);
                break;
            }
            // The block's records below the watermark were taken off `bytes` by the trim that
            // cut through it.
            let (_, retained) = block::split(&value, m.first, u64::MAX)
                .map_err(|_| corrupt("record block", log))?;
            removed_bytes = removed_bytes.saturating_add(retained);
            scanned = scanned.saturating_add(value.len());
            doomed.push(key);
        }
        let done = next_first.is_none();
        let first = match (next_first, cut) {
            (Some(seq), _) => Some(seq),
            // Everything below `before` goes: the watermark is the first record at or above
            // it, maybe in a block that also holds records below it (which stays, uncounted).
            (None, Cut::Below(before)) => {
                let (first, cut_off) = self.cut_through(log, m.first, before, m.last)?;
                removed_bytes = removed_bytes.saturating_add(cut_off);
                Some(first)
            }
            // Every record goes, and the bounds entry with them.
            (None, Cut::Log) => None,
        };
        let step = first.map(|first| {
            let mut step = LogMeta {
                first,
                last: m.last,
                bytes: m.bytes.saturating_sub(removed_bytes),
            };
            if step.is_empty() {
                // Exact already; this only keeps the invariant that `decode` checks.
                step.bytes = 0;
            }
            step
        });

        let mut batch = self.batch(if done {
            durability
        } else {
            Durability::Buffered
        });
        for key in doomed {
            batch.remove(&self.logs, key);
        }
        match step {
            Some(step) => batch.insert(&self.logs, meta_key, step.encode()),
            None => batch.remove(&self.logs, meta_key),
        }
        self.commit(batch)?;
        match step {
            Some(step) => self.set_meta([(log, step)]),
            None => {
                self.write_meta().remove(log);
            }
        }
        Ok(if done { TrimStep::Done } else { TrimStep::More })
    }

    /// Where a trim below `before` cuts `log`, once every block keyed below `before` is gone:
    /// the seq of the first record at or after `before` (or `last + 1` if there is none), and
    /// the data bytes of the records `first..before` that share its block.
    fn cut_through(
        &self,
        log: &str,
        first: u64,
        before: u64,
        last: u64,
    ) -> Result<(u64, u64), StoreError> {
        if before > last {
            return Ok((last + 1, 0));
        }
        let (Some(lo), Some(hi)) = (keys::block_key(log, before), keys::block_key(log, last))
        else {
            return Err(too_long(log));
        };
        // The log's last record is stored, so a block keyed at or after `before` exists, and
        // its last record is at or after `before`.
        let guard = self
            .logs
            .range(lo..=hi)
            .next()
            .ok_or_else(|| corrupt("record blocks (last block missing)", log))?;
        let (_, value) = guard.into_inner().map_err(engine)?;
        match block::split(&value, first, before) {
            Ok((Some(seq), cut_off)) => Ok((seq, cut_off)),
            _ => Err(corrupt("record block", log)),
        }
    }

    fn read_snapshot(&self, name: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let Some(header_key) = keys::snapshot_header_key(name) else {
            return Ok(None);
        };
        // One read snapshot for header and chunks, so a concurrent put cannot mix versions.
        let snap = self.db.snapshot();
        let Some(header) = snap.get(&self.snapshots, &header_key).map_err(engine)? else {
            return Ok(None);
        };
        let header =
            SnapshotHeader::decode(&header).ok_or_else(|| corrupt("snapshot header", name))?;
        let len = usize::try_from(header.len).map_err(|_| corrupt("snapshot length", name))?;
        let mut data = Vec::with_capacity(len.min(1 << 30));
        if let Some(last) = header.chunks.checked_sub(1) {
            let (Some(lo), Some(hi)) = (
                keys::snapshot_chunk_key(name, 0),
                keys::snapshot_chunk_key(name, last),
            ) else {
                return Ok(None);
            };
            let mut expected = 0u32;
            for guard in snap.range(&self.snapshots, lo..=hi) {
                let (key, chunk) = guard.into_inner().map_err(engine)?;
                if keys::decode_chunk_index(&key) != Some(expected) {
                    return Err(corrupt("snapshot chunk sequence", name));
                }
                data.extend_from_slice(&chunk);
                expected += 1;
            }
            if expected != header.chunks {
                return Err(corrupt("snapshot chunk count", name));
            }
        }
        if data.len() != len {
            return Err(corrupt("snapshot length", name));
        }
        Ok(Some((header.seq, data)))
    }
}

/// Reads every log's bounds (done once, on open).
fn load_meta(logs: &Keyspace) -> Result<BTreeMap<String, LogMeta>, StoreError> {
    let mut meta = BTreeMap::new();
    for guard in logs.prefix(keys::META_PREFIX) {
        let (key, value) = guard.into_inner().map_err(engine)?;
        let name = keys::decode_meta_key(&key)
            .ok_or_else(|| corrupt("log bounds key", String::from_utf8_lossy(&key)))?;
        let m = LogMeta::decode(&value).ok_or_else(|| corrupt("log bounds", name.as_str()))?;
        meta.insert(name, m);
    }
    Ok(meta)
}

/// Upgrades a format-1 directory to format 2 and returns every log's bounds (done once, on
/// open, before [`upgrade_v2`]).
///
/// Format 1 kept `(first, last)` per log but not `bytes`, so each log's retained records are
/// read once, in order, to sum their lengths. The new bounds entries and the format-2 marker
/// are then written in one synced batch: after a crash the directory is either still format 1
/// (and upgraded again on the next open) or fully format 2.
fn upgrade_v1(
    db: &Database,
    logs: &Keyspace,
    dir: &Path,
) -> Result<BTreeMap<String, LogMeta>, StoreError> {
    let started = std::time::Instant::now();
    let mut meta = BTreeMap::new();
    let mut records = 0u64;
    for guard in logs.prefix(keys::META_PREFIX) {
        let (key, value) = guard.into_inner().map_err(engine)?;
        let name = keys::decode_meta_key(&key)
            .ok_or_else(|| corrupt("log bounds key", String::from_utf8_lossy(&key)))?;
        let (first, last) = LogMeta::decode_v1(&value)
            .ok_or_else(|| corrupt("log bounds (format 1)", name.as_str()))?;
        let mut bytes = 0u64;
        if first <= last {
            let (Some(lo), Some(hi)) = (
                keys::v2_record_key(&name, first),
                keys::v2_record_key(&name, last),
            ) else {
                return Err(too_long(&name));
            };
            for guard in logs.range(lo..=hi) {
                bytes = bytes.saturating_add(u64::from(guard.size().map_err(engine)?));
                records += 1;
            }
        }
        meta.insert(name, LogMeta { first, last, bytes });
    }
    let mut batch = db.batch().durability(Some(PersistMode::SyncAll));
    for (name, m) in &meta {
        let key = keys::meta_key(name).ok_or_else(|| too_long(name))?;
        batch.insert(logs, key, m.encode());
    }
    batch.insert(
        logs,
        keys::FORMAT_KEY,
        keys::FORMAT_VERSION_V2.to_be_bytes(),
    );
    batch.commit().map_err(engine)?;
    tracing::info!(
        dir = %dir.display(),
        logs = meta.len(),
        records,
        elapsed_ms = started.elapsed().as_millis(),
        "upgraded the store from format {} to {}",
        keys::FORMAT_VERSION_V1,
        keys::FORMAT_VERSION_V2,
    );
    Ok(meta)
}

/// Upgrades a format-2 directory to [`keys::FORMAT_VERSION`]: moves every record from its own
/// entry into blocks (done once, on open; the bounds entries do not change).
///
/// Each step moves up to [`TRIM_BATCH`] records (or [`TRIM_BYTES`]) in one batch that writes
/// their blocks and removes their old entries, so every record is in exactly one of the two
/// layouts after a crash, and the next open carries on where this one stopped. The format-3
/// marker is written, synced, only once no format-2 record is left. Consecutive records of a log
/// share a block as an append's would.
fn upgrade_v2(db: &Database, logs: &Keyspace, dir: &Path) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let mut records = 0u64;
    let mut after = None;
    while let Some((moved, last_key)) = upgrade_v2_step(db, logs, after.take())? {
        records += moved as u64;
        after = Some(last_key);
    }
    let mut batch = db.batch().durability(Some(PersistMode::SyncAll));
    batch.insert(logs, keys::FORMAT_KEY, keys::FORMAT_VERSION.to_be_bytes());
    batch.commit().map_err(engine)?;
    tracing::info!(
        dir = %dir.display(),
        records,
        elapsed_ms = started.elapsed().as_millis(),
        "upgraded the store from format {} to {} (records in blocks)",
        keys::FORMAT_VERSION_V2,
        keys::FORMAT_VERSION,
    );
    Ok(())
}

/// One step of [`upgrade_v2`]: moves the format-2 records after the key `after` (from the
/// first one if `None`) into blocks, up to [`TRIM_BATCH`] records or [`TRIM_BYTES`], in one
/// batch. Returns how many it moved and the key of the last one, or `None` if none was left.
///
/// Each step starts after the last key moved, so it never walks the tombstones of the steps
/// before it.
fn upgrade_v2_step(
    db: &Database,
    logs: &Keyspace,
    after: Option<Vec<u8>>,
) -> Result<Option<(usize, Vec<u8>)>, StoreError> {
    let start = match after {
        Some(key) => Bound::Excluded(key),
        None => Bound::Included(keys::V2_RECORD_PREFIX.to_vec()),
    };
    let end = Bound::Excluded(keys::V2_RECORD_END.to_vec());
    let mut batch = db.batch();
    let mut block: Option<(String, BlockWriter)> = None;
    let (mut moved, mut bytes) = (0usize, 0usize);
    let mut last_key = None;
    for guard in logs.range((start, end)) {
        if moved == TRIM_BATCH || bytes >= TRIM_BYTES {
            break;
        }
        let (key, value) = guard.into_inner().map_err(engine)?;
        let (name, seq) = keys::decode_v2_record_key(&key)
            .ok_or_else(|| corrupt("record key (format 2)", String::from_utf8_lossy(&key)))?;
        let same_log = block.as_ref().is_some_and(|(log, _)| *log == name);
        if (!same_log
            || block
                .as_ref()
                .is_some_and(|(_, b)| b.is_full_for(value.len())))
            && let Some((log, mut full)) = block.take()
        {
            insert_block_into(&mut batch, logs, &log, &mut full)?;
        }
        let (_, writer) = block.get_or_insert_with(|| (name, BlockWriter::default()));
        writer.push(seq, &value);
        batch.remove(logs, key.to_vec());
        last_key = Some(key.to_vec());
        moved += 1;
        bytes = bytes.saturating_add(value.len());
    }
    if let Some((log, mut last)) = block.take() {
        insert_block_into(&mut batch, logs, &log, &mut last)?;
    }
    let Some(last_key) = last_key else {
        return Ok(None);
    };
    batch.commit().map_err(engine)?;
    Ok(Some((moved, last_key)))
}

/// Adds the block built so far, if any, to `batch` (appends, and [`upgrade_v2`], which runs
/// before a [`FjallStore`] exists).
fn insert_block_into(
    batch: &mut OwnedWriteBatch,
    logs: &Keyspace,
    log: &str,
    block: &mut BlockWriter,
) -> Result<(), StoreError> {
    if let Some((last, value)) = block.take() {
        let key = keys::block_key(log, last).ok_or_else(|| too_long(log))?;
        batch.insert(logs, key, value);
    }
    Ok(())
}

fn to_bounds(m: LogMeta) -> LogBounds {
    LogBounds {
        first: m.first,
        last: m.last,
        bytes: m.bytes,
    }
}

impl Store for FjallStore {
    fn append(&self, records: &[Append<'_>], durability: Durability) -> Result<(), StoreError> {
        self.check_poisoned()?;
        if records.is_empty() {
            return Ok(());
        }
        let _writer = self.lock_writer()?;

        // Validate everything before committing anything: the batch is all-or-nothing. The
        // blocks are built on the way; a refused append drops them with the batch.
        let mut batch = self.batch(durability);
        let mut logs: HashMap<&str, (LogMeta, BlockWriter)> = HashMap::new();
        {
            let meta = self.read_meta();
            let mut rest = records;
            // A run of records of one log at a time (callers append runs): one lookup per
            // run rather than two per record.
            while let Some(first) = rest.first() {
                let log = first.log;
                let run_len = rest
                    .iter()
                    .position(|r| !(std::ptr::eq(r.log, log) || r.log == log))
                    .unwrap_or(rest.len());
                let (run, tail) = rest.split_at(run_len);
                rest = tail;
                if log.len() > MAX_NAME_LEN {
                    return Err(too_long(log));
                }
                let (mut current, mut block) = match logs.remove(log) {
                    Some((m, block)) => (Some(m), block),
                    None => (meta.get(log).copied(), BlockWriter::default()),
                };
                block.reserve(run.len(), run.iter().map(|r| r.data.len()).sum());
                for r in run {
                    if r.data.len() > MAX_RECORD_BYTES {
                        return Err(StoreError::Invalid(format!(
                            "record of {} bytes in log {:?} is larger than the limit of \
                             {MAX_RECORD_BYTES}",
                            r.data.len(),
                            log
                        )));
                    }
                    if r.seq == u64::MAX {
                        return Err(StoreError::Invalid(format!(
                            "seq u64::MAX is reserved (log {log:?}): a fully trimmed log reports \
                             first = last + 1"
                        )));
                    }
                    let len = r.data.len() as u64;
                    let next = match current {
                        Some(m) if r.seq <= m.last => {
                            return Err(StoreError::Invalid(format!(
                                "seq {} is not greater than {} in log {}",
                                r.seq, m.last, log
                            )));
                        }
                        Some(m) if !m.is_empty() => LogMeta {
                            first: m.first,
                            last: r.seq,
                            bytes: m.bytes.saturating_add(len),
                        },
                        // A new log, or one trimmed empty: this record is the oldest one.
                        _ => LogMeta {
                            first: r.seq,
                            last: r.seq,
                            bytes: len,
                        },
                    };
                    current = Some(next);
                    if block.is_full_for(r.data.len()) {
                        insert_block_into(&mut batch, &self.logs, log, &mut block)?;
                    }
                    block.push(r.seq, r.data);
                }
                if let Some(m) = current {
                    logs.insert(log, (m, block));
                }
            }
        }
        for (log, (m, block)) in &mut logs {
            insert_block_into(&mut batch, &self.logs, log, block)?;
            let key = keys::meta_key(log).ok_or_else(|| too_long(log))?;
            batch.insert(&self.logs, key, m.encode());
        }
        self.commit(batch)?;
        self.set_meta(logs.into_iter().map(|(log, (m, _))| (log, m)));
        Ok(())
    }

    fn read(&self, log: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let Some(m) = self.log_meta(log) else {
            return Ok(Vec::new());
        };
        // Seek from the watermark, never below it: below are only tombstones.
        let start = from.max(m.first);
        if limit == 0 || start > m.last {
            return Ok(Vec::new());
        }
        // The block holding `start` is the first one keyed at or after it.
        let (Some(lo), Some(hi)) = (keys::block_key(log, start), keys::block_key(log, m.last))
        else {
            return Ok(Vec::new());
        };
        let span = usize::try_from(m.last - start)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        let mut out = Vec::with_capacity(limit.min(span).min(1024));
        for guard in self.logs.range(lo..=hi) {
            let (_, value) = guard.into_inner().map_err(engine)?;
            for entry in block::entries(&value) {
                let (seq, data) = entry.map_err(|_| corrupt("record block", log))?;
                if seq < start {
                    continue;
                }
                out.push((seq, data.to_vec()));
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    fn bounds(&self, log: &str) -> Result<Option<LogBounds>, StoreError> {
        Ok(self.log_meta(log).map(to_bounds))
    }

    fn trim(&self, log: &str, before: u64, durability: Durability) -> Result<(), StoreError> {
        self.cut(log, Cut::Below(before), durability)
    }

    fn list_logs(&self, prefix: &str) -> Result<Vec<(String, LogBounds)>, StoreError> {
        // From the in-memory mirror of the bounds entries: no disk access at all. Every name
        // starting with `prefix` sorts at or after it, and they are contiguous.
        Ok(self
            .read_meta()
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(prefix))
            .map(|(name, m)| (name.clone(), to_bounds(*m)))
            .collect())
    }

    fn delete_log(&self, log: &str, durability: Durability) -> Result<(), StoreError> {
        self.cut(log, Cut::Log, durability)
    }

    fn put_snapshot(
        &self,
        name: &str,
        seq: u64,
        data: &[u8],
        durability: Durability,
    ) -> Result<(), StoreError> {
        self.check_poisoned()?;
        let header_key = keys::snapshot_header_key(name).ok_or_else(|| too_long(name))?;
        let chunks = u32::try_from(data.len().div_ceil(SNAPSHOT_CHUNK_BYTES)).map_err(|_| {
            StoreError::Invalid(format!(
                "snapshot {name:?} of {} bytes is too large",
                data.len()
            ))
        })?;
        let _writer = self.lock_writer()?;

        // Chunks beyond the new count belong to the old version and must go in the same batch.
        let old_chunks = match self.snapshots.get(&header_key).map_err(engine)? {
            Some(old) => {
                SnapshotHeader::decode(&old)
                    .ok_or_else(|| corrupt("snapshot header", name))?
                    .chunks
            }
            None => 0,
        };
        let header = SnapshotHeader {
            seq,
            len: data.len() as u64,
            chunks,
        };
        let mut batch = self.batch(durability);
        batch.insert(&self.snapshots, header_key, header.encode());
        for (index, chunk) in (0u32..).zip(data.chunks(SNAPSHOT_CHUNK_BYTES)) {
            let key = keys::snapshot_chunk_key(name, index).ok_or_else(|| too_long(name))?;
            batch.insert(&self.snapshots, key, chunk);
        }
        for index in chunks..old_chunks {
            let key = keys::snapshot_chunk_key(name, index).ok_or_else(|| too_long(name))?;
            batch.remove(&self.snapshots, key);
        }
        self.commit(batch)
    }

    fn snapshot(&self, name: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.read_snapshot(name)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.check_poisoned()?;
        self.db.persist(SYNC_MODE).map_err(|e| self.poison(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, FjallStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FjallStore::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn trim_moves_the_in_memory_watermark_to_the_oldest_record() {
        let (_dir, store) = open();
        let data = [0u8; 8];
        // Two records per append, so 25,000 blocks: more than one trim step.
        append_in_calls_of(&store, "s", 1..=50_000, 2, &data);
        store.trim("s", 40_001, Durability::Sync).unwrap();
        let want = LogMeta {
            first: 40_001,
            last: 50_000,
            bytes: 10_000 * 8,
        };
        assert_eq!(store.log_meta("s"), Some(want));
        // The on-disk bounds entry agrees.
        let on_disk = store
            .logs
            .get(keys::meta_key("s").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(LogMeta::decode(&on_disk), Some(want));
        // Records below the watermark are gone from the keyspace itself, not just hidden.
        assert_eq!(records_in_blocks(&store, "s"), 10_000);
    }

    fn append_in_calls_of(
        store: &FjallStore,
        log: &str,
        seqs: std::ops::RangeInclusive<u64>,
        per_call: usize,
        data: &[u8],
    ) {
        let seqs: Vec<u64> = seqs.collect();
        for chunk in seqs.chunks(per_call) {
            let records: Vec<Append<'_>> =
                chunk.iter().map(|&seq| Append { log, seq, data }).collect();
            store.append(&records, Durability::Buffered).unwrap();
        }
    }

    /// Every record stored in `log`'s blocks, as `(seq, data)`, also those below its watermark
    /// in a block that a trim cut through.
    fn stored_records(store: &FjallStore, log: &str) -> Vec<(u64, Vec<u8>)> {
        let lo = keys::block_key(log, 0).unwrap();
        let hi = keys::block_key(log, u64::MAX).unwrap();
        let mut out = Vec::new();
        for guard in store.logs.range(lo..=hi) {
            let (key, value) = guard.into_inner().unwrap();
            let entries: Vec<(u64, Vec<u8>)> = block::entries(&value)
                .map(|e| e.map(|(seq, data)| (seq, data.to_vec())).unwrap())
                .collect();
            // The key names the block's last record.
            assert!(key.ends_with(&entries.last().unwrap().0.to_be_bytes()));
            out.extend(entries);
        }
        out
    }

    fn blocks_of(store: &FjallStore, log: &str) -> usize {
        let lo = keys::block_key(log, 0).unwrap();
        let hi = keys::block_key(log, u64::MAX).unwrap();
        store.logs.range(lo..=hi).count()
    }

    fn records_in_blocks(store: &FjallStore, log: &str) -> usize {
        stored_records(store, log).len()
    }

    #[test]
    fn appends_write_one_block_per_log_and_reads_cut_into_blocks() {
        let (_dir, store) = open();
        let small = [5u8; 10];
        let big = vec![6u8; block::BLOCK_BYTES];
        // One append to three logs, interleaved: one block each, in one batch.
        let records: Vec<Append<'_>> = (1..=30)
            .map(|seq| Append {
                log: ["a", "b", "c"][(seq % 3) as usize],
                seq,
                data: &small,
            })
            .collect();
        store.append(&records, Durability::Sync).unwrap();
        for log in ["a", "b", "c"] {
            assert_eq!(blocks_of(&store, log), 1);
            assert_eq!(records_in_blocks(&store, log), 10);
        }
        // Big records get blocks of their own; the small one after them starts a new block.
        let records = [
            Append {
                log: "a",
                seq: 40,
                data: &big,
            },
            Append {
                log: "a",
                seq: 41,
                data: &big,
            },
            Append {
                log: "a",
                seq: 42,
                data: &small,
            },
        ];
        store.append(&records, Durability::Sync).unwrap();
        assert_eq!(blocks_of(&store, "a"), 4);
        // A read starting inside a block, and one ending inside one.
        let read: Vec<u64> = store
            .read("a", 10, 3)
            .unwrap()
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(read, [12, 15, 18]);
        let read: Vec<u64> = store
            .read("a", 28, 10)
            .unwrap()
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(read, [30, 40, 41, 42]);
        // A trim through a block keeps it, hides its older records and uncounts their bytes.
        store.trim("a", 13, Durability::Sync).unwrap();
        let bounds = store.bounds("a").unwrap().unwrap();
        assert_eq!((bounds.first, bounds.last), (15, 42));
        assert_eq!(bounds.bytes, 6 * 10 + 2 * big.len() as u64 + 10);
        assert_eq!(blocks_of(&store, "a"), 4);
        assert_eq!(store.read("a", 0, 1).unwrap()[0].0, 15);
        // A second trim through the same block takes off only what the first one did not.
        store.trim("a", 25, Durability::Sync).unwrap();
        let bounds = store.bounds("a").unwrap().unwrap();
        assert_eq!(
            (bounds.first, bounds.bytes),
            (27, 2 * 10 + 2 * big.len() as u64 + 10)
        );
        // Past the block: it goes.
        store.trim("a", 41, Durability::Sync).unwrap();
        assert_eq!(blocks_of(&store, "a"), 2);
        let bounds = store.bounds("a").unwrap().unwrap();
        assert_eq!((bounds.first, bounds.bytes), (41, big.len() as u64 + 10));
        let read: Vec<(u64, usize)> = store
            .read("a", 0, usize::MAX)
            .unwrap()
            .iter()
            .map(|r| (r.0, r.1.len()))
            .collect();
        assert_eq!(read, [(41, big.len()), (42, 10)]);
    }

    #[test]
    fn trim_steps_are_bounded_by_bytes_as_well_as_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let store = FjallStore::open(dir.path()).unwrap();
        let data = vec![9u8; 64 * 1024];
        let count = 3 * (TRIM_BYTES / data.len()) as u64;
        append_in_calls_of(&store, "s", 1..=count, 1, &data);
        assert!(matches!(
            store
                .trim_step("s", Cut::Below(count), Durability::Sync)
                .unwrap(),
            TrimStep::More
        ));
        let bounds = store.bounds("s").unwrap().unwrap();
        assert!(bounds.first > 1 && bounds.first < count, "{bounds:?}");
        assert_eq!(bounds.bytes, (count - bounds.first + 1) * data.len() as u64);
        store.trim("s", count, Durability::Sync).unwrap();
        assert_eq!(store.bounds("s").unwrap().unwrap().first, count);
        assert_eq!(records_in_blocks(&store, "s"), 1);
    }

    #[test]
    fn appends_interleave_with_a_big_trim_and_bounds_stay_exact() {
        let (_dir, store) = open();
        let data = [1u8; 8];
        let records: Vec<Append<'_>> = (1..=60_000)
            .map(|seq| Append {
                log: "s",
                seq,
                data: &data,
            })
            .collect();
        store.append(&records, Durability::Buffered).unwrap();
        std::thread::scope(|scope| {
            let appender = scope.spawn(|| {
                for seq in 60_001..=62_000 {
                    let record = Append {
                        log: "s",
                        seq,
                        data: &data,
                    };
                    store.append(&[record], Durability::Buffered).unwrap();
                }
            });
            // Trim past the end of what existed when the trim started.
            store.trim("s", 61_000, Durability::Sync).unwrap();
            appender.join().unwrap();
        });
        let bounds = store.bounds("s").unwrap().unwrap();
        assert_eq!(bounds.last, 62_000);
        // Depending on timing the trim saw some of 60_001..61_000 or none of them; either way
        // `first` is exact and agrees with the records and with the entry on disk.
        let records = store.read("s", 0, usize::MAX).unwrap();
        assert_eq!(records.first().map(|r| r.0), Some(bounds.first));
        assert_eq!(records.len() as u64, bounds.last - bounds.first + 1);
        assert_eq!(bounds.bytes, records.len() as u64 * 8);
        assert!(bounds.first > 60_000);
        let on_disk = store
            .logs
            .get(keys::meta_key("s").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(
            LogMeta::decode(&on_disk),
            Some(LogMeta {
                first: bounds.first,
                last: bounds.last,
                bytes: bounds.bytes
            })
        );
    }

    #[test]
    fn unknown_format_version_is_refused_on_open() {
        let (dir, store) = open();
        store
            .logs
            .insert(keys::FORMAT_KEY, 99u32.to_be_bytes())
            .unwrap();
        drop(store);
        let err = FjallStore::open(dir.path()).unwrap_err();
        let StoreError::Engine(source) = err else {
            panic!("expected an engine error, got {err:?}");
        };
        assert!(matches!(
            source.downcast_ref::<FormatError>(),
            Some(FormatError::UnsupportedVersion {
                found: 99,
                supported: 3
            })
        ));
    }

    #[test]
    fn poisoned_store_refuses_writes_but_serves_reads() {
        let (_dir, store) = open();
        store
            .append(
                &[Append {
                    log: "l",
                    seq: 1,
                    data: b"x",
                }],
                Durability::Sync,
            )
            .unwrap();
        store.poisoned.store(true, Ordering::Release);
        let append = store.append(
            &[Append {
                log: "l",
                seq: 2,
                data: b"y",
            }],
            Durability::Sync,
        );
        assert!(matches!(append, Err(StoreError::Poisoned)));
        assert!(matches!(
            store.trim("l", 2, Durability::Sync),
            Err(StoreError::Poisoned)
        ));
        assert!(matches!(
            store.delete_log("l", Durability::Sync),
            Err(StoreError::Poisoned)
        ));
        assert_eq!(store.list_logs("").unwrap().len(), 1);
        assert!(matches!(
            store.put_snapshot("s", 1, b"", Durability::Sync),
            Err(StoreError::Poisoned)
        ));
        assert!(matches!(store.sync(), Err(StoreError::Poisoned)));
        assert_eq!(store.read("l", 0, 10).unwrap(), vec![(1, b"x".to_vec())]);
        assert!(store.is_poisoned());
    }

    #[test]
    fn snapshot_replacement_deletes_surplus_chunks() {
        let (_dir, store) = open();
        let big = vec![7u8; 3 * SNAPSHOT_CHUNK_BYTES + 1];
        store.put_snapshot("s", 1, &big, Durability::Sync).unwrap();
        store
            .put_snapshot("s", 2, b"tiny", Durability::Sync)
            .unwrap();
        let chunks: Vec<u32> = store
            .snapshots
            .iter()
            .filter_map(|g| g.key().ok())
            .filter_map(|k| {
                (k.len() > keys::snapshot_header_key("s").unwrap().len())
                    .then(|| keys::decode_chunk_index(&k))
                    .flatten()
            })
            .collect();
        assert_eq!(chunks, vec![0]);
        assert_eq!(store.snapshot("s").unwrap(), Some((2, b"tiny".to_vec())));
    }

    #[test]
    fn big_delete_removes_every_record_and_the_bounds_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = FjallStore::open(dir.path()).unwrap();
        let data = [2u8; 4];
        for log in ["s", "s\0", "t"] {
            let records: Vec<Append<'_>> = (1..=40_000)
                .map(|seq| Append {
                    log,
                    seq,
                    data: &data,
                })
                .collect();
            store.append(&records, Durability::Buffered).unwrap();
        }
        store.trim("s", 1_001, Durability::Buffered).unwrap();
        // More than two delete batches.
        store.delete_log("s", Durability::Sync).unwrap();
        assert_eq!(store.bounds("s").unwrap(), None);
        assert_eq!(records_in_blocks(&store, "s"), 0);
        assert_eq!(store.logs.get(keys::meta_key("s").unwrap()).unwrap(), None);
        assert_eq!(records_in_blocks(&store, "s\0"), 40_000);
        let names: Vec<String> = store
            .list_logs("")
            .unwrap()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, ["s\0", "t"]);
        drop(store);
        let store = FjallStore::open(dir.path()).unwrap();
        assert_eq!(store.bounds("s").unwrap(), None);
        assert_eq!(
            store.bounds("t").unwrap(),
            Some(LogBounds {
                first: 1,
                last: 40_000,
                bytes: 160_000
            })
        );
        store
            .append(
                &[Append {
                    log: "s",
                    seq: 1,
                    data: b"again",
                }],
                Durability::Sync,
            )
            .unwrap();
        assert_eq!(
            store.read("s", 0, 10).unwrap(),
            vec![(1, b"again".to_vec())]
        );
    }

    #[test]
    fn interrupted_delete_leaves_a_prefix_trimmed_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = FjallStore::open(dir.path()).unwrap();
        let data = [3u8; 2];
        // One record per block: 3 steps' worth.
        append_in_calls_of(&store, "s", 1..=3 * TRIM_BATCH as u64, 1, &data);
        store.sync().unwrap();
        // The first step of a delete, then the "crash": the process stops before the rest.
        assert!(matches!(
            store.trim_step("s", Cut::Log, Durability::Sync).unwrap(),
            TrimStep::More
        ));
        store.sync().unwrap();
        drop(store);
        let store = FjallStore::open(dir.path()).unwrap();
        let left = 2 * TRIM_BATCH as u64;
        let bounds = LogBounds {
            first: TRIM_BATCH as u64 + 1,
            last: 3 * TRIM_BATCH as u64,
            bytes: left * 2,
        };
        assert_eq!(
            store.list_logs("s").unwrap(),
            vec![("s".to_owned(), bounds)]
        );
        let read = store.read("s", 0, usize::MAX).unwrap();
        assert_eq!(read.len() as u64, left);
        assert_eq!(read.first().map(|r| r.0), Some(bounds.first));
        store.delete_log("s", Durability::Sync).unwrap();
        assert_eq!(store.bounds("s").unwrap(), None);
    }

    /// Rewrites every record as a format-2 build wrote it (one entry per retained record, no
    /// blocks) and sets the format-2 marker.
    fn downgrade_to_v2(store: &FjallStore) {
        let mut batch = store.db.batch();
        for (name, _) in store.read_meta().iter() {
            for (seq, data) in store.read(name, 0, usize::MAX).unwrap() {
                batch.insert(&store.logs, keys::v2_record_key(name, seq).unwrap(), data);
            }
            let lo = keys::block_key(name, 0).unwrap();
            let hi = keys::block_key(name, u64::MAX).unwrap();
            for guard in store.logs.range(lo..=hi) {
                batch.remove(&store.logs, guard.key().unwrap());
            }
        }
        batch.insert(
            &store.logs,
            keys::FORMAT_KEY,
            keys::FORMAT_VERSION_V2.to_be_bytes(),
        );
        batch.commit().unwrap();
        store.sync().unwrap();
    }

    fn v2_records_on_disk(store: &FjallStore) -> usize {
        store.logs.prefix(keys::V2_RECORD_PREFIX).count()
    }

    fn marker(store: &FjallStore) -> u32 {
        let marker = store.logs.get(keys::FORMAT_KEY).unwrap().unwrap();
        u32::from_be_bytes((*marker).try_into().unwrap())
    }

    /// Logs whose records cut across blocks, a trim through a block, an emptied log and a
    /// name that is a prefix of another.
    fn varied_logs(store: &FjallStore) {
        let sizes = |seq: u64| vec![b'x'; (seq % 7) as usize];
        let data: Vec<Vec<u8>> = (1..=30_000).map(sizes).collect();
        let records: Vec<Append<'_>> = (1..)
            .zip(&data)
            .map(|(seq, data)| Append {
                log: "docs",
                seq,
                data,
            })
            .collect();
        store.append(&records, Durability::Buffered).unwrap();
        store.trim("docs", 20_001, Durability::Buffered).unwrap();
        for (log, seqs) in [("a", 1..=3), ("a\0", 5..=9), ("trimmed", 1..=4)] {
            for seq in seqs {
                store
                    .append(
                        &[Append {
                            log,
                            seq,
                            data: b"abc",
                        }],
                        Durability::Buffered,
                    )
                    .unwrap();
            }
        }
        store.trim("trimmed", 100, Durability::Buffered).unwrap();
    }

    /// A log's name, bounds and records.
    type Contents = (String, LogBounds, Vec<(u64, Vec<u8>)>);

    fn everything(store: &FjallStore) -> Vec<Contents> {
        store
            .list_logs("")
            .unwrap()
            .into_iter()
            .map(|(name, bounds)| {
                let records = store.read(&name, 0, usize::MAX).unwrap();
                (name, bounds, records)
            })
            .collect()
    }

    #[test]
    fn format_2_directory_is_upgraded_to_blocks_and_an_interrupted_upgrade_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FjallStore::open(dir.path()).unwrap();
        varied_logs(&store);
        let before = everything(&store);
        downgrade_to_v2(&store);
        assert_eq!(v2_records_on_disk(&store), 10_000 + 3 + 5);
        // One step of the upgrade, then the "crash".
        let (moved, _) = upgrade_v2_step(&store.db, &store.logs, None)
            .unwrap()
            .unwrap();
        assert_eq!(moved, 10_008.min(TRIM_BATCH));
        store.sync().unwrap();
        drop(store);

        let store = FjallStore::open(dir.path()).unwrap();
        assert_eq!(everything(&store), before);
        assert_eq!(v2_records_on_disk(&store), 0);
        assert_eq!(marker(&store), keys::FORMAT_VERSION);
        // Records share blocks again: "docs" has 10,000 records of at most 6 bytes.
        let docs_blocks = blocks_of(&store, "docs");
        assert!(docs_blocks <= 2, "{docs_blocks} blocks");
        append_and_reopen(store, dir.path());
    }

    /// Appends a 4-byte record 30,001 to "docs" (10,000 records from `varied_logs`), reopens,
    /// and checks that all 10,001 are read back: an upgraded directory keeps working.
    fn append_and_reopen(store: FjallStore, dir: &Path) -> FjallStore {
        let record = Append {
            log: "docs",
            seq: 30_001,
            data: b"1234",
        };
        store.append(&[record], Durability::Sync).unwrap();
        drop(store);
        let store = FjallStore::open(dir).unwrap();
        assert_eq!(store.read("docs", 0, usize::MAX).unwrap().len(), 10_001);
        store
    }

    /// Rewrites every record, bounds entry and the marker as a format-1 build wrote them.
    fn downgrade_to_v1(store: &FjallStore) {
        downgrade_to_v2(store);
        let mut batch = store.db.batch();
        for (name, m) in store.read_meta().iter() {
            let mut v1 = [0u8; 16];
            v1[..8].copy_from_slice(&m.first.to_be_bytes());
            v1[8..].copy_from_slice(&m.last.to_be_bytes());
            batch.insert(&store.logs, keys::meta_key(name).unwrap(), v1);
        }
        batch.insert(
            &store.logs,
            keys::FORMAT_KEY,
            keys::FORMAT_VERSION_V1.to_be_bytes(),
        );
        batch.commit().unwrap();
        store.sync().unwrap();
    }

    #[test]
    fn format_1_directory_is_upgraded_on_open_without_losing_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = FjallStore::open(dir.path()).unwrap();
        varied_logs(&store);
        let before = store.list_logs("").unwrap();
        let records_before = everything(&store);
        downgrade_to_v1(&store);
        drop(store);

        let store = FjallStore::open(dir.path()).unwrap();
        assert_eq!(store.list_logs("").unwrap(), before);
        let docs = store.bounds("docs").unwrap().unwrap();
        assert_eq!(docs.bytes, (20_001..=30_000).map(|s| s % 7).sum::<u64>());
        assert_eq!(
            store.bounds("trimmed").unwrap(),
            Some(LogBounds {
                first: 5,
                last: 4,
                bytes: 0
            })
        );
        assert_eq!(everything(&store), records_before);
        // The directory is format 3 now, with format-2 bounds entries and no format-2 record.
        assert_eq!(marker(&store), keys::FORMAT_VERSION);
        assert_eq!(v2_records_on_disk(&store), 0);
        let on_disk = store
            .logs
            .get(keys::meta_key("docs").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(LogMeta::decode(&on_disk).map(to_bounds), Some(docs));
        // And it keeps working, and reopens as format 3.
        let store = append_and_reopen(store, dir.path());
        assert_eq!(store.bounds("docs").unwrap().unwrap().bytes, docs.bytes + 4);
    }
}
