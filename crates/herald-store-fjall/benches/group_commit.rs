//! Group-commit benchmark for `FjallStore` (a plain `main`, not criterion: each case is one long
//! run, and the figures go into `docs/benchmarks.md`).
//!
//! Run with `cargo bench -p herald-store-fjall --bench group_commit [-- CASE...]` (cases:
//! `sync_b1`, `sync_b16`, `sync_b256`, `buffered_b256`, `read_1M`, `reopen_cycle`, `steady_state`; a filter
//! matches by substring). Prints one `RESULT` line per figure. Data goes to a temporary directory under `$HERALD_BENCH_DIR` (default: the
//! system temp dir); it must be a real disk, not tmpfs, for the fsync figures to mean anything.
//!
//! Cases (8 logs round-robin, 200-byte incompressible values, one writer):
//! - `Durability::Sync` at batch sizes 1 (20k appends), 16 and 256 (500k appends each);
//! - `Durability::Buffered` at batch 256 (500k appends, one final `sync` included);
//! - a 1M-record log: reopen time, first and warm last-100 reads (p50/p99), a 500k trim and the
//!   read of the oldest retained record after it;
//! - disk use after writing, after reopen, over repeated open/append/close cycles, and in a
//!   long run without reopening.

use herald_store::{Append, Durability, Store};
use herald_store_fjall::FjallStore;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LOGS: usize = 8;
const VALUE_BYTES: usize = 200;

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn main() -> BenchResult {
    let root = std::env::var_os("HERALD_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    println!(
        "# herald-store-fjall group_commit bench, data under {}",
        root.display()
    );
    let values = Values::new(4096);
    // `cargo bench` passes `--bench`; any other argument selects cases by substring.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected = |case: &str| filters.is_empty() || filters.iter().any(|f| case.contains(f));

    let appends = [
        ("sync_b1", Durability::Sync, 1, 20_000),
        ("sync_b16", Durability::Sync, 16, 500_000),
        ("sync_b256", Durability::Sync, 256, 500_000),
        ("buffered_b256", Durability::Buffered, 256, 500_000),
    ];
    for (case, durability, batch, total) in appends {
        if selected(case) {
            append_case(&root, &values, case, durability, batch, total)?;
        }
    }
    if selected("read_1M") {
        read_cases(&root, &values)?;
    }
    if selected("reopen_cycle") {
        reopen_cycles(&root, &values)?;
    }
    if selected("steady_state") {
        steady_state(&root, &values)?;
    }
    Ok(())
}

/// A pool of pseudo-random (xorshift, so incompressible) values.
struct Values(Vec<Vec<u8>>);

impl Values {
    fn new(count: usize) -> Self {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        Self(
            (0..count)
                .map(|_| {
                    (0..VALUE_BYTES / 8)
                        .flat_map(|_| next().to_le_bytes())
                        .collect()
                })
                .collect(),
        )
    }

    fn get(&self, i: u64) -> &[u8] {
        &self.0[i as usize % self.0.len()]
    }
}

/// Appends `total` records in batches of `batch`, round-robin over [`LOGS`] logs.
fn fill(
    store: &FjallStore,
    values: &Values,
    logs: &[String],
    next_seq: &mut [u64],
    batch: usize,
    total: u64,
    durability: Durability,
) -> BenchResult {
    let mut records = Vec::with_capacity(batch);
    let mut i = 0u64;
    while i < total {
        records.clear();
        while records.len() < batch && i < total {
            let log = i as usize % logs.len();
            records.push(Append {
                log: &logs[log],
                seq: next_seq[log],
                data: values.get(i),
            });
            next_seq[log] += 1;
            i += 1;
        }
        store.append(&records, durability)?;
    }
    Ok(())
}

fn log_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("stream:/bench/{i}")).collect()
}

fn append_case(
    root: &Path,
    values: &Values,
    case: &str,
    durability: Durability,
    batch: usize,
    total: u64,
) -> BenchResult {
    let dir = tempfile::tempdir_in(root)?;
    let store = FjallStore::open(dir.path())?;
    let logs = log_names(LOGS);
    let mut next_seq = vec![1u64; LOGS];
    let start = Instant::now();
    fill(
        &store,
        values,
        &logs,
        &mut next_seq,
        batch,
        total,
        durability,
    )?;
    if durability == Durability::Buffered {
        store.sync()?;
    }
    let secs = start.elapsed().as_secs_f64();
    let commits = total.div_ceil(batch as u64);
    println!(
        "RESULT case={case} durability={durability:?} batch={batch} appends={total} secs={secs:.3} \
         appends_per_sec={:.0} commits_per_sec={:.0}",
        total as f64 / secs,
        commits as f64 / secs,
    );
    drop(store);
    print_disk(case, dir.path())?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn read_cases(root: &Path, values: &Values) -> BenchResult {
    const RECORDS: u64 = 1_000_000;
    let dir = tempfile::tempdir_in(root)?;
    let logs = vec!["stream:/bench/big".to_owned()];
    {
        let store = FjallStore::open(dir.path())?;
        let mut next_seq = vec![1u64];
        let start = Instant::now();
        fill(
            &store,
            values,
            &logs,
            &mut next_seq,
            1024,
            RECORDS,
            Durability::Buffered,
        )?;
        store.sync()?;
        println!(
            "RESULT case=fill_1M durability=Buffered batch=1024 secs={:.3}",
            start.elapsed().as_secs_f64()
        );
        print_disk("after_1M_open", dir.path())?;
    }
    print_disk("after_1M_close", dir.path())?;

    let start = Instant::now();
    let store = FjallStore::open(dir.path())?;
    println!(
        "RESULT case=reopen_1M secs={:.3}",
        start.elapsed().as_secs_f64()
    );
    print_disk("after_1M_reopen", dir.path())?;
    // Background flushes and compactions triggered by recovery get a moment to finish.
    std::thread::sleep(Duration::from_secs(3));
    print_disk("after_1M_reopen_idle_3s", dir.path())?;

    let log = logs[0].as_str();
    let last = store.bounds(log)?.map_or(0, |b| b.last);
    let start = Instant::now();
    let first_read = store.read(log, last - 99, 100)?;
    let first_us = start.elapsed().as_secs_f64() * 1e6;
    assert_eq!(first_read.len(), 100);
    println!("RESULT case=last100_first_after_reopen us={first_us:.1}");

    let mut samples = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        let start = Instant::now();
        let page = store.read(log, last - 99, 100)?;
        samples.push(start.elapsed());
        assert_eq!(page.len(), 100);
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>().as_secs_f64() * 1e6 / samples.len() as f64;
    println!(
        "RESULT case=last100 log_records={RECORDS} queries={} mean_us={mean:.1} p50_us={:.1} \
         p99_us={:.1}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
    );

    let start = Instant::now();
    store.trim(log, RECORDS / 2 + 1, Durability::Sync)?;
    println!(
        "RESULT case=trim_500k durability=Sync ms={:.1}",
        start.elapsed().as_secs_f64() * 1e3
    );
    let mut samples = Vec::with_capacity(200);
    for _ in 0..200 {
        let start = Instant::now();
        let page = store.read(log, 0, 1)?;
        samples.push(start.elapsed());
        assert_eq!(page.first().map(|r| r.0), Some(RECORDS / 2 + 1));
    }
    samples.sort();
    println!(
        "RESULT case=read_oldest_after_trim from=0 p50_us={:.1} p99_us={:.1}",
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
    );
    drop(store);
    print_disk("after_trim_close", dir.path())?;
    Ok(())
}

/// Disk use over repeated open / append 200k / trim / close cycles: it must level off, not grow
/// with each reopen. A 512 KiB snapshot every 50k appends exercises the rarely written
/// `snapshots` keyspace, which is what keeps old journals alive until the journal limit.
fn reopen_cycles(root: &Path, values: &Values) -> BenchResult {
    let dir = tempfile::tempdir_in(root)?;
    let logs = log_names(LOGS);
    let mut next_seq = vec![1u64; LOGS];
    let snapshot: Vec<u8> = values
        .0
        .iter()
        .flatten()
        .copied()
        .take(512 * 1024)
        .collect();
    for cycle in 0..10 {
        let start = Instant::now();
        let store = FjallStore::open(dir.path())?;
        let open_secs = start.elapsed().as_secs_f64();
        for _ in 0..4 {
            fill(
                &store,
                values,
                &logs,
                &mut next_seq,
                256,
                50_000,
                Durability::Sync,
            )?;
            store.put_snapshot("tree", next_seq[0], &snapshot, Durability::Sync)?;
        }
        // Retention keeps the newest 50k records per log: ~95 MB of live records.
        for (log, next) in logs.iter().zip(&next_seq) {
            store.trim(log, next.saturating_sub(50_000), Durability::Sync)?;
        }
        drop(store);
        print!("RESULT case=reopen_cycle cycle={cycle} open_secs={open_secs:.3} ");
        print_disk_inline(dir.path())?;
    }
    Ok(())
}

/// Disk use in one long run without reopening: 2.4M appends with retention and snapshots.
/// Journals must not pile up (fjall frees one only when every keyspace written in it has
/// flushed, and `snapshots` is rarely written).
fn steady_state(root: &Path, values: &Values) -> BenchResult {
    let dir = tempfile::tempdir_in(root)?;
    let store = FjallStore::open(dir.path())?;
    let logs = log_names(LOGS);
    let mut next_seq = vec![1u64; LOGS];
    let snapshot: Vec<u8> = values
        .0
        .iter()
        .flatten()
        .copied()
        .take(512 * 1024)
        .collect();
    let start = Instant::now();
    let (mut append_time, mut trim_time) = (Duration::ZERO, Duration::ZERO);
    for round in 1..=48u64 {
        let t = Instant::now();
        fill(
            &store,
            values,
            &logs,
            &mut next_seq,
            256,
            50_000,
            Durability::Sync,
        )?;
        store.put_snapshot("tree", next_seq[0], &snapshot, Durability::Sync)?;
        append_time += t.elapsed();
        let t = Instant::now();
        for (log, next) in logs.iter().zip(&next_seq) {
            store.trim(log, next.saturating_sub(50_000), Durability::Sync)?;
        }
        trim_time += t.elapsed();
        if round % 8 == 0 {
            print!(
                "RESULT case=steady_state appends={} secs={:.1} append_secs={:.1} trim_secs={:.1} ",
                round * 50_000,
                start.elapsed().as_secs_f64(),
                append_time.as_secs_f64(),
                trim_time.as_secs_f64(),
            );
            print_disk_inline(dir.path())?;
        }
    }
    Ok(())
}

#[derive(Default)]
struct Usage {
    allocated: u64,
    apparent: u64,
    journals: u64,
    journal_allocated: u64,
}

fn usage(path: &Path, total: &mut Usage) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            usage(&entry.path(), total)?;
        } else {
            total.allocated += meta.blocks() * 512;
            total.apparent += meta.len();
            if entry.path().extension().is_some_and(|e| e == "jnl") {
                total.journals += 1;
                total.journal_allocated += meta.blocks() * 512;
            }
        }
    }
    Ok(())
}

fn print_disk_inline(dir: &Path) -> BenchResult {
    let mut u = Usage::default();
    usage(dir, &mut u)?;
    println!(
        "disk_alloc_mb={:.1} apparent_mb={:.1} journals={} journal_alloc_mb={:.1}",
        u.allocated as f64 / 1e6,
        u.apparent as f64 / 1e6,
        u.journals,
        u.journal_allocated as f64 / 1e6,
    );
    Ok(())
}

fn print_disk(case: &str, dir: &Path) -> BenchResult {
    print!("RESULT case={case} ");
    print_disk_inline(dir)
}
