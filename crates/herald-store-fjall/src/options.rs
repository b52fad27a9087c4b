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
/// | journal limit         | 64 MiB  | bounds journal files on disk and the replay on open (see below) |
/// | `logs` memtable       | 32 MiB  | bounds memory; flushes often enough to free journals |
/// | `snapshots` memtable  | 8 MiB   | snapshots are rare; flush them early |
/// | worker threads        | `min(cores, 4)`, at least 3 | flushes and compactions (see below) |
/// | key-value separation  | on, values ≥ 1 KiB (fjall's default threshold), `logs` only | blocks of records stay out of compactions (see the crate docs) |
///
/// **Journal limit.** fjall starts a new journal (write-ahead log file) at the first memtable
/// flush after the current one passes 64 MB, and deletes a sealed journal only once every
/// keyspace with writes in it has flushed them to tables. A rarely written keyspace (here
/// `snapshots`) keeps its small memtable, and so every journal since its last write, alive
/// until the sealed journals reach this limit; only then does fjall force it to flush (see
/// fjall issue #261). Every journal left on disk is also replayed on the next open. fjall's
/// default is 512 MiB; the default here is fjall's minimum, 64 MiB, so at most one sealed
/// journal waits for a straggler. In the `steady_state` and `reopen_cycle` benchmarks that kept
/// one or two journal files (at most ~95 MB) instead of up to three (~180 MB), and roughly
/// halved reopen times.
///
/// **Worker threads.** fjall 3.1 keeps its first worker for flushes: a compaction request that
/// reaches it goes back into the shared queue for another worker, and while every other worker
/// is busy it comes straight back, so the first worker spins for as long as a compaction runs.
/// With fjall's default of two workers on a two-core machine that spinning took 19 % of the
/// CPU samples of a durable MQTT benchmark (100 publishers, 100 topics), and the benchmark ran
/// 0.62–0.65 M messages/s; with three workers the spinning left the profile and it ran
/// 0.80–0.92 M/s (`docs/benchmarks.md`). One worker avoids the spinning but lets a flush wait
/// behind a long compaction, and fjall's lone worker can block on its own full queue (fjall
/// pull request 323), so the default is at least three.
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
            max_journal_bytes: 64 * MIB,
            log_memtable_bytes: 32 * MIB,
            snapshot_memtable_bytes: 8 * MIB,
            worker_threads: Some(default_worker_threads()),
        }
    }
}

/// fjall's own default, `min(cores, 4)`, but at least 3 (see [`FjallOptions`]).
fn default_worker_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cores.clamp(3, 4)
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
