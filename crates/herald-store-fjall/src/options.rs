//! Tuning knobs for [`FjallStore::open_with`](crate::FjallStore::open_with).

use herald_store::StoreError;

const MIB: u64 = 1024 * 1024;

/// fjall refuses (panics on) a journal limit below this.
const MIN_JOURNAL_BYTES: u64 = 64 * MIB;

/// Programmatic options for [`FjallStore::open_with`](crate::FjallStore::open_with).
///
/// The defaults suit a hub with a few hundred MiB of RAM to spare:
///
/// | option                | default | why |
/// |-----------------------|---------|-----|
/// | block cache           | 64 MiB  | tail reads of hot logs stay in memory |
/// | journal limit         | 128 MiB | bounds the journal files on disk (see below) |
/// | `logs` memtable       | 32 MiB  | bounds memory and the journal replayed on open |
/// | `snapshots` memtable  | 8 MiB   | snapshots are rare; flush them early so they do not pin journals |
/// | worker threads        | fjall's (`min(cores, 4)`) | flushes and compactions |
///
/// **Journal limit.** fjall deletes a sealed journal only once every keyspace that has writes
/// in it has flushed them to tables. A keyspace written rarely (here `snapshots`) keeps its
/// memtable, and so every journal since its last write, alive until the total journal size
/// reaches this limit; then fjall forces the straggler to flush. The limit is therefore the
/// ceiling on sealed-journal disk use (fjall's own default is 512 MiB, the minimum 64 MiB).
///
/// The memtable sizes are stored with the keyspace when the store is first created; later
/// opens keep the original values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FjallOptions {
    pub(crate) cache_bytes: u64,
    pub(crate) max_journal_bytes: u64,
    pub(crate) log_memtable_bytes: u64,
    pub(crate) snapshot_memtable_bytes: u64,
    pub(crate) worker_threads: Option<usize>,
}

impl Default for FjallOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 64 * MIB,
            max_journal_bytes: 128 * MIB,
            log_memtable_bytes: 32 * MIB,
            snapshot_memtable_bytes: 8 * MIB,
            worker_threads: None,
        }
    }
}

impl FjallOptions {
    /// The default options; see the type's documentation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the block cache size in bytes, shared by all keyspaces.
    #[must_use]
    pub fn with_cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// Sets the total size of sealed journals (write-ahead log files) at which fjall forces
    /// memtables to flush so that old journals can be deleted. At least 64 MiB.
    #[must_use]
    pub fn with_max_journal_bytes(mut self, bytes: u64) -> Self {
        self.max_journal_bytes = bytes;
        self
    }

    /// Sets the memtable size of the `logs` keyspace (records and per-log bounds). Takes effect
    /// only when the store is created.
    #[must_use]
    pub fn with_log_memtable_bytes(mut self, bytes: u64) -> Self {
        self.log_memtable_bytes = bytes;
        self
    }

    /// Sets the memtable size of the `snapshots` keyspace. Takes effect only when the store is
    /// created.
    #[must_use]
    pub fn with_snapshot_memtable_bytes(mut self, bytes: u64) -> Self {
        self.snapshot_memtable_bytes = bytes;
        self
    }

    /// Sets the number of fjall background threads (flushes and compactions); at least 1.
    #[must_use]
    pub fn with_worker_threads(mut self, threads: usize) -> Self {
        self.worker_threads = Some(threads);
        self
    }

    /// Rejects values fjall would panic on.
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        if self.max_journal_bytes < MIN_JOURNAL_BYTES {
            return Err(StoreError::Invalid(format!(
                "max journal size {} B is below fjall's minimum of {MIN_JOURNAL_BYTES} B",
                self.max_journal_bytes
            )));
        }
        if self.worker_threads == Some(0) {
            return Err(StoreError::Invalid(
                "fjall needs at least one worker thread".into(),
            ));
        }
        if self.log_memtable_bytes == 0 || self.snapshot_memtable_bytes == 0 {
            return Err(StoreError::Invalid(
                "memtable sizes must be positive".into(),
            ));
        }
        Ok(())
    }
}
