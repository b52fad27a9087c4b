//! In-process benchmark of the topics engine (`Topics`) on a `FjallStore`: a plain `main`, not
//! criterion, because each scenario is one long run and the figures go into
//! `docs/benchmarks.md` ("Event streams (in-process)").
//!
//! ```text
//! cargo bench -p herald-engine --bench topics [-- [SCENARIO...] [--events N] [--dir DIR]
//!                                                [--listener-batch N] [--json]]
//! ```
//!
//! Scenarios (a name given on the command line selects every scenario containing it; none
//! selects all):
//! - `append-batched`: 8 tasks appending `Vec`s of 1,000 events, each to its own topic, then
//!   the same with all 8 on one topic. Target: >= 500,000 events/s.
//! - `append-single`: 64 tasks appending one event per call (what 64 HTTP clients cause, minus
//!   HTTP), on 64 topics and then on one. Reported, no target here.
//! - `read-last`: on a topic of `--events` events (default 10,000,000): `read_last(topic, 100)`
//!   served from the in-memory window (right after the fill), then from the store (the engine
//!   is reopened on the store, so its windows are empty, as after a restart), and
//!   `read(topic, random, 100)`. 10,000 calls each. Target: p99 < 1 ms.
//! - `catch-up`: a `Listener` subscribing from seq 1 to a topic of 1,000,000 events (written
//!   before the big topic, so all of it is on disk, far behind the window) and draining it;
//!   then, for comparison, `Store::read` alone over the same records. Target: >= 1,000,000
//!   events/s.
//! - `restart`: with the store holding both topics, shut the engine down, drop the store, then
//!   `FjallStore::open` + `Topics::open` + the first `read_last`. Target: < 2 s, close
//!   included.
//!
//! The store-bound scenarios (read-last from the store, catch-up, restart) run twice: right
//! after the fill, while fjall is still flushing and compacting, and again once the process has
//! been idle for 3 s ("store settled").
//!
//! Every event is a 100-byte JSON object (`application/json`); payloads come from a pool of
//! 4,096 distinct ones and are shared (`Bytes` reference counts), so building a batch costs
//! no copy. Every durable append is `Durability::Sync` (the engine's only mode). The engine
//! runs with `TopicsOptions::default()` (as `herald serve` does), but for `--listener-batch`.
//! The runtime is tokio's multi-threaded one with its default worker count (one per core).
//! Commit statistics come from the engine's own `herald_topic_commit_*` histograms, through a
//! small `metrics` recorder installed by this program. CPU use is reported for this process
//! and for everything else on the machine (`other`), so that a disturbed run shows as such.
//!
//! `--events N` scales everything down for a quick run: the big topic holds N events, the
//! catch-up topic `min(N, 1M)`, each append scenario `min(N, 2M)` (batched) or `min(N, 200k)`
//! (single). Data goes to a temporary directory under `--dir` (default: `$HERALD_BENCH_DIR`,
//! else the system temp dir), deleted at the end; it must be a real disk, not tmpfs, for the
//! fsync figures to mean anything. `--json` also prints the results as JSON.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use herald_core::{Path, PathLimits};
use herald_engine::{Delivery, NewEvent, Topics, TopicsOptions};
use herald_store::Store;
use herald_store_fjall::FjallStore;
use serde_json::json;
use tokio::task::JoinHandle;

type BenchError = Box<dyn std::error::Error + Send + Sync>;
type BenchResult<T = ()> = Result<T, BenchError>;

const SCENARIOS: [&str; 5] = [
    "append-batched",
    "append-single",
    "read-last",
    "catch-up",
    "restart",
];
const EVENT_BYTES: usize = 100;
const READ_CALLS: usize = 10_000;
const READ_LIMIT: usize = 100;

const USAGE: &str = "usage: cargo bench -p herald-engine --bench topics -- \
                     [SCENARIO...] [--events N] [--dir DIR] [--listener-batch N] [--json]\n\
                     scenarios: append-batched append-single read-last catch-up restart";

struct Args {
    filters: Vec<String>,
    events: u64,
    dir: Option<PathBuf>,
    json: bool,
    listener_batch: Option<usize>,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut args = Args {
            filters: Vec::new(),
            events: 10_000_000,
            dir: None,
            json: false,
            listener_batch: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = |name: &str| {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
            };
            match flag.as_str() {
                // `cargo bench` passes `--bench` to every bench target.
                "--bench" => {}
                "--json" => args.json = true,
                "--events" => {
                    let v = value("--events")?;
                    args.events = v
                        .replace('_', "")
                        .parse()
                        .map_err(|_| format!("--events: not a number: {v:?}"))?;
                    if args.events < 1_000 {
                        return Err("--events must be at least 1000".into());
                    }
                }
                "--dir" => args.dir = Some(PathBuf::from(value("--dir")?)),
                "--listener-batch" => {
                    let v = value("--listener-batch")?;
                    args.listener_batch = Some(
                        v.parse()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| format!("--listener-batch: not a count: {v:?}"))?,
                    );
                }
                "-h" | "--help" => return Err(USAGE.into()),
                f if f.starts_with('-') => return Err(format!("unknown option {f}\n{USAGE}")),
                _ => {
                    if !SCENARIOS.iter().any(|s| s.contains(arg.as_str())) {
                        return Err(format!("no scenario matches {arg:?}\n{USAGE}"));
                    }
                    args.filters.push(arg);
                }
            }
        }
        Ok(args)
    }

    /// The engine's options: the defaults (as `herald serve` uses them), but for
    /// `--listener-batch`.
    fn topics_options(&self) -> TopicsOptions {
        let mut options = TopicsOptions::default();
        if let Some(n) = self.listener_batch {
            options.listener_batch = n;
        }
        options
    }

    fn selected(&self, scenario: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| scenario.contains(f.as_str()))
    }
}

fn main() -> BenchResult {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let commits = Commits::install();
    let root = args
        .dir
        .clone()
        .or_else(|| std::env::var_os("HERALD_BENCH_DIR").map(PathBuf::from))
        .unwrap_or_else(std::env::temp_dir);
    let work = tempfile::tempdir_in(&root)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "# herald-engine topics bench: data under {}, {} cores, --events {}",
        work.path().display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.events
    );
    let mut rows = Vec::new();
    let outcome = runtime.block_on(run(&args, work.path(), &commits, &mut rows));
    drop(runtime);
    print_table(&rows);
    if args.json {
        let list: Vec<_> = rows.iter().map(Row::to_json).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    }
    outcome
}

async fn run(
    args: &Args,
    work: &std::path::Path,
    commits: &Commits,
    rows: &mut Vec<Row>,
) -> BenchResult {
    let payloads = Arc::new(Payloads::new(4096));
    if args.selected("append-batched") {
        let total = args.events.min(2_000_000);
        let paths: Vec<Path> = (0..8)
            .map(|i| path(&format!("/bench/batched/{i}")))
            .collect();
        append_scenario(
            work,
            &payloads,
            commits,
            rows,
            "append-batched",
            "8 tasks × 1,000 events/call, 8 topics",
            AppendPlan {
                tasks: 8,
                per_call: 1_000,
                total,
                topics: paths,
            },
            Some(500_000.0),
        )
        .await?;
        append_scenario(
            work,
            &payloads,
            commits,
            rows,
            "append-batched",
            "8 tasks × 1,000 events/call, 1 topic",
            AppendPlan {
                tasks: 8,
                per_call: 1_000,
                total,
                topics: vec![path("/bench/batched/one")],
            },
            Some(500_000.0),
        )
        .await?;
    }
    if args.selected("append-single") {
        let total = args.events.min(200_000);
        let paths: Vec<Path> = (0..64)
            .map(|i| path(&format!("/bench/single/{i}")))
            .collect();
        append_scenario(
            work,
            &payloads,
            commits,
            rows,
            "append-single",
            "64 tasks × 1 event/call, 64 topics",
            AppendPlan {
                tasks: 64,
                per_call: 1,
                total,
                topics: paths,
            },
            None,
        )
        .await?;
        append_scenario(
            work,
            &payloads,
            commits,
            rows,
            "append-single",
            "64 tasks × 1 event/call, 1 topic",
            AppendPlan {
                tasks: 64,
                per_call: 1,
                total,
                topics: vec![path("/bench/single/one")],
            },
            None,
        )
        .await?;
    }
    let wants_big = ["read-last", "catch-up", "restart"]
        .iter()
        .any(|s| args.selected(s));
    if !wants_big {
        return Ok(());
    }
    let options = args.topics_options();
    let mut big = Big::build(work, &payloads, commits, rows, args.events, options).await?;
    if args.selected("read-last") {
        // Served from the window: the fill just ended, so the tail is in memory.
        let h = read_last_loop(&big.topics, &big.big, big.big_n).await?;
        rows.push(read_row(
            "read-last",
            "read_last(100), tail in the in-memory window",
            &h,
        ));
    }
    if args.selected("read-last") || args.selected("catch-up") {
        // From here on the engine has empty windows, as after a restart, so every read and
        // the catch-up go to the store.
        big.reopen_topics().await?;
    }
    // Right after the fill, fjall is still flushing and compacting (for tens of seconds after
    // 10M events); then again once the process has gone idle.
    big = store_phase(args, big, rows, "right after the fill").await?;
    let settle = settle(&big.dir).await;
    settle.announce();
    rows.push(settle);
    big = store_phase(args, big, rows, "store settled").await?;
    big.close().await?;
    Ok(())
}

/// The store-bound scenarios: reads, catch-up, restart.
async fn store_phase(
    args: &Args,
    mut big: Big,
    rows: &mut Vec<Row>,
    phase: &str,
) -> BenchResult<Big> {
    if args.selected("read-last") {
        let h = read_last_loop(&big.topics, &big.big, big.big_n).await?;
        rows.push(read_row(
            "read-last",
            &format!(
                "read_last(100) from the store, topic of {}, {phase}",
                fmt_int(big.big_n)
            ),
            &h,
        ));
        let h = read_random_loop(&big.topics, &big.big, big.big_n).await?;
        rows.push(read_row(
            "read-last",
            &format!(
                "read(random, 100) from the store, topic of {}, {phase}",
                fmt_int(big.big_n)
            ),
            &h,
        ));
    }
    if args.selected("catch-up") {
        rows.push(catch_up(&big, phase).await?);
    }
    if args.selected("restart") {
        let (b, row) = big.restart("restart", phase).await?;
        rows.push(row);
        big = b;
    }
    Ok(big)
}

/// Waits until the process is idle (under 5 % of a core for 3 s in a row: fjall's flushes and
/// compactions are done), at most 5 minutes.
async fn settle(dir: &std::path::Path) -> Row {
    let before = disk_usage(dir);
    let start = Instant::now();
    let mut quiet = 0;
    let mut last = cpu_secs();
    while quiet < 3 && start.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = cpu_secs();
        match (last, now) {
            (Some(a), Some(b)) if b - a < 0.05 => quiet += 1,
            (Some(_), Some(_)) => quiet = 0,
            // No CPU figures: just wait 10 s.
            _ => quiet += 1,
        }
        last = now;
    }
    let secs = start.elapsed().as_secs_f64();
    let after = disk_usage(dir);
    let mut row = Row::new("settle", "wait for fjall to go idle");
    row.result = format!("{secs:.0} s");
    row.target = "none (set-up)".into();
    row.details = format!(
        "until under 5 % of a core for 3 s; store on disk {} -> {}",
        fmt_bytes(before),
        fmt_bytes(after)
    );
    row.figures = json!({ "secs": secs, "disk_bytes_before": before, "disk_bytes_after": after });
    row
}

// ---------------------------------------------------------------------------------------------
// Appends

struct AppendPlan {
    tasks: usize,
    per_call: usize,
    total: u64,
    /// Task `i` appends to `topics[i % topics.len()]`.
    topics: Vec<Path>,
}

struct AppendRun {
    events: u64,
    calls: u64,
    secs: f64,
    cores: Cpu,
    /// Per-call latency, ns.
    latency: Histogram<u64>,
}

impl AppendRun {
    fn rate(&self) -> f64 {
        self.events as f64 / self.secs
    }
}

/// Runs `plan` against `topics`: the tasks take `per_call` events at a time from a shared
/// counter until `total` are appended.
async fn run_appends(
    topics: &Topics,
    payloads: &Arc<Payloads>,
    plan: &AppendPlan,
) -> BenchResult<AppendRun> {
    let next = Arc::new(AtomicU64::new(0));
    let meter = Meter::start();
    let mut handles = Vec::with_capacity(plan.tasks);
    for i in 0..plan.tasks {
        let topics = topics.clone();
        let payloads = payloads.clone();
        let next = next.clone();
        let topic = plan.topics[i % plan.topics.len()].clone();
        let (per_call, total) = (plan.per_call as u64, plan.total);
        handles.push(tokio::spawn(async move {
            let mut latency = new_histogram()?;
            let mut calls = 0u64;
            loop {
                let start = next.fetch_add(per_call, Ordering::Relaxed);
                if start >= total {
                    break;
                }
                let n = per_call.min(total - start);
                let events = payloads.batch(start, n as usize);
                let t = Instant::now();
                let appended = topics.append(topic.clone(), events, None).await?;
                latency.saturating_record(t.elapsed().as_nanos() as u64);
                if appended.last + 1 - appended.first != n {
                    return Err(format!("appended {appended:?}, expected {n} events").into());
                }
                calls += 1;
            }
            BenchResult::Ok((latency, calls))
        }));
    }
    let mut latency = new_histogram()?;
    let mut calls = 0;
    for h in handles {
        let (l, c) = h.await??;
        latency.add(&l)?;
        calls += c;
    }
    let (secs, cores) = meter.stop();
    // Every event must be there.
    let mut stored = 0;
    for t in &plan.topics {
        stored += topics.info(t).await?.map_or(0, |i| i.last);
    }
    if stored != plan.total {
        return Err(format!("{stored} events stored, {} appended", plan.total).into());
    }
    Ok(AppendRun {
        events: plan.total,
        calls,
        secs,
        cores,
        latency,
    })
}

#[allow(clippy::too_many_arguments)]
async fn append_scenario(
    work: &std::path::Path,
    payloads: &Arc<Payloads>,
    commits: &Commits,
    rows: &mut Vec<Row>,
    scenario: &str,
    variant: &str,
    plan: AppendPlan,
    target: Option<f64>,
) -> BenchResult {
    let dir = tempfile::tempdir_in(work)?;
    let store = open_store(dir.path().to_path_buf()).await?;
    let (topics, task) = Topics::open(store.clone(), TopicsOptions::default()).await?;
    commits.take();
    let run = run_appends(&topics, payloads, &plan).await?;
    let stats = commits.take();
    topics.shutdown().await?;
    task.await?;
    drop(topics);
    drop(store);
    let rate = run.rate();
    let mut row = Row::new(scenario, variant);
    row.result = format!(
        "{} events/s; call p50 {}, p99 {}",
        fmt_int(rate as u64),
        fmt_ns(run.latency.value_at_quantile(0.5)),
        fmt_ns(run.latency.value_at_quantile(0.99)),
    );
    match target {
        Some(t) => {
            row.target = format!(">= {} events/s", fmt_int(t as u64));
            row.verdict = Verdict::of(rate >= t);
        }
        None => row.target = "none (the HTTP streams target is 100,000/s)".into(),
    }
    row.details = format!(
        "{} events in {} calls, {:.2} s, {}; {}",
        fmt_int(run.events),
        fmt_int(run.calls),
        run.secs,
        run.cores.describe(),
        stats.describe()
    );
    row.figures = json!({
        "events": run.events,
        "calls": run.calls,
        "secs": run.secs,
        "events_per_sec": rate,
        "call_p50_us": run.latency.value_at_quantile(0.5) as f64 / 1e3,
        "call_p99_us": run.latency.value_at_quantile(0.99) as f64 / 1e3,
        "call_max_us": run.latency.max() as f64 / 1e3,
        "cores": run.cores.to_json(),
        "commits": stats.to_json(),
    });
    row.announce();
    rows.push(row);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The big store: read-last, catch-up, restart

struct Big {
    dir: PathBuf,
    store: Arc<FjallStore>,
    topics: Topics,
    task: JoinHandle<()>,
    big: Path,
    big_n: u64,
    catchup: Path,
    catchup_n: u64,
    options: TopicsOptions,
}

impl Big {
    /// Fills the catch-up topic, then the big one (so the catch-up topic's records are older
    /// and sit in compacted tables, not in the memtable).
    async fn build(
        work: &std::path::Path,
        payloads: &Arc<Payloads>,
        commits: &Commits,
        rows: &mut Vec<Row>,
        big_n: u64,
        options: TopicsOptions,
    ) -> BenchResult<Big> {
        let dir = work.join("big");
        let store = open_store(dir.clone()).await?;
        let (topics, task) = Topics::open(store.clone(), options.clone()).await?;
        let big = Big {
            dir,
            store,
            topics,
            task,
            big: path("/bench/big"),
            big_n,
            catchup: path("/bench/catchup"),
            catchup_n: big_n.min(1_000_000),
            options,
        };
        for (topic, n) in [(&big.catchup, big.catchup_n), (&big.big, big.big_n)] {
            let plan = AppendPlan {
                tasks: 4,
                per_call: 10_000,
                total: n,
                topics: vec![topic.clone()],
            };
            commits.take();
            let run = run_appends(&big.topics, payloads, &plan).await?;
            let stats = commits.take();
            let mut row = Row::new("fill", &format!("{topic}: 4 tasks × 10,000 events/call"));
            row.result = format!("{} events/s", fmt_int(run.rate() as u64));
            row.target = "none (set-up)".into();
            row.details = format!(
                "{} events in {:.1} s, {}; call p50 {}, p99 {}; {}; store on disk {}",
                fmt_int(run.events),
                run.secs,
                run.cores.describe(),
                fmt_ns(run.latency.value_at_quantile(0.5)),
                fmt_ns(run.latency.value_at_quantile(0.99)),
                stats.describe(),
                fmt_bytes(disk_usage(&big.dir)),
            );
            row.figures = json!({
                "events": run.events,
                "secs": run.secs,
                "events_per_sec": run.rate(),
                "cores": run.cores.to_json(),
                "commits": stats.to_json(),
                "disk_bytes": disk_usage(&big.dir),
            });
            row.announce();
            rows.push(row);
        }
        Ok(big)
    }

    /// Restarts the engine (not the store), so that its in-memory windows are empty.
    async fn reopen_topics(&mut self) -> BenchResult {
        self.topics.shutdown().await?;
        (&mut self.task).await?;
        let (topics, task) = Topics::open(self.store.clone(), self.options.clone()).await?;
        self.topics = topics;
        self.task = task;
        Ok(())
    }

    /// Closes the engine and the store, then opens both again and reads.
    async fn restart(self, scenario: &str, variant: &str) -> BenchResult<(Big, Row)> {
        let Big {
            dir,
            store,
            topics,
            task,
            big,
            big_n,
            catchup,
            catchup_n,
            options,
        } = self;
        let t = Instant::now();
        topics.shutdown().await?;
        task.await?;
        let shutdown = t.elapsed();
        drop(topics);
        // Dropping the last reference closes fjall (it waits for its workers).
        let store = last_reference(store)?;
        tokio::task::spawn_blocking(move || drop(store)).await?;
        let close = t.elapsed();

        let t = Instant::now();
        let store = open_store(dir.clone()).await?;
        let store_open = t.elapsed();
        let t2 = Instant::now();
        let (topics, task) = Topics::open(store.clone(), options.clone()).await?;
        let topics_open = t2.elapsed();
        let t3 = Instant::now();
        let tail = topics.read_last(&big, READ_LIMIT).await?;
        let first_read = t3.elapsed();
        let open_total = t.elapsed();
        check_tail(&tail, big_n)?;
        let t4 = Instant::now();
        let head = topics.read(&big, 1, READ_LIMIT).await?;
        let head_read = t4.elapsed();
        if head.first().map(|e| e.seq) != Some(1) || head.len() != READ_LIMIT {
            return Err("read from seq 1 after restart returned the wrong events".into());
        }

        let total = close + open_total;
        let mut row = Row::new(scenario, variant);
        row.result = format!(
            "{:.3} s (close {:.3} s + open to first read {:.3} s)",
            total.as_secs_f64(),
            close.as_secs_f64(),
            open_total.as_secs_f64()
        );
        row.target = "< 2 s".into();
        row.verdict = Verdict::of(total < Duration::from_secs(2));
        row.details = format!(
            "shutdown {}, close incl. shutdown {}; FjallStore::open {}, Topics::open {}, \
             first read_last(100) {}, then read(1, 100) {}; store on disk {}",
            fmt_ns(shutdown.as_nanos() as u64),
            fmt_ns(close.as_nanos() as u64),
            fmt_ns(store_open.as_nanos() as u64),
            fmt_ns(topics_open.as_nanos() as u64),
            fmt_ns(first_read.as_nanos() as u64),
            fmt_ns(head_read.as_nanos() as u64),
            fmt_bytes(disk_usage(&dir)),
        );
        row.figures = json!({
            "total_secs": total.as_secs_f64(),
            "shutdown_secs": shutdown.as_secs_f64(),
            "close_secs": close.as_secs_f64(),
            "store_open_secs": store_open.as_secs_f64(),
            "topics_open_secs": topics_open.as_secs_f64(),
            "first_read_last_us": first_read.as_secs_f64() * 1e6,
            "first_read_head_us": head_read.as_secs_f64() * 1e6,
            "disk_bytes": disk_usage(&dir),
        });
        row.announce();
        let big = Big {
            dir,
            store,
            topics,
            task,
            big,
            big_n,
            catchup,
            catchup_n,
            options,
        };
        Ok((big, row))
    }

    async fn close(self) -> BenchResult {
        self.topics.shutdown().await?;
        self.task.await?;
        Ok(())
    }
}

/// Unwraps the store once every other reference (a retention pass, a read) is gone.
fn last_reference(mut store: Arc<FjallStore>) -> BenchResult<FjallStore> {
    for _ in 0..1000 {
        match Arc::try_unwrap(store) {
            Ok(s) => return Ok(s),
            Err(s) => store = s,
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Err("the store is still referenced after the engine stopped".into())
}

fn check_tail(events: &[herald_engine::Event], last: u64) -> BenchResult {
    if events.len() != READ_LIMIT || events.last().map(|e| e.seq) != Some(last) {
        return Err(format!(
            "read_last returned {} events ending at {:?}, expected {READ_LIMIT} ending at {last}",
            events.len(),
            events.last().map(|e| e.seq)
        )
        .into());
    }
    Ok(())
}

async fn read_last_loop(topics: &Topics, topic: &Path, last: u64) -> BenchResult<ReadRun> {
    let mut run = ReadRun::new()?;
    for _ in 0..READ_CALLS {
        let t = Instant::now();
        let events = topics.read_last(topic, READ_LIMIT).await?;
        run.record(t.elapsed());
        check_tail(&events, last)?;
    }
    Ok(run.finish())
}

async fn read_random_loop(topics: &Topics, topic: &Path, last: u64) -> BenchResult<ReadRun> {
    let mut run = ReadRun::new()?;
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    let span = last - READ_LIMIT as u64 + 1;
    for _ in 0..READ_CALLS {
        let from = 1 + rng.next() % span;
        let t = Instant::now();
        let events = topics.read(topic, from, READ_LIMIT).await?;
        run.record(t.elapsed());
        if events.len() != READ_LIMIT || events.first().map(|e| e.seq) != Some(from) {
            return Err(format!("read({from}, {READ_LIMIT}) returned the wrong events").into());
        }
    }
    Ok(run.finish())
}

struct ReadRun {
    latency: Histogram<u64>,
    first: Option<Duration>,
    meter: Meter,
    secs: f64,
    cores: Cpu,
}

impl ReadRun {
    fn new() -> BenchResult<ReadRun> {
        Ok(ReadRun {
            latency: new_histogram()?,
            first: None,
            meter: Meter::start(),
            secs: 0.0,
            cores: Cpu::default(),
        })
    }

    fn record(&mut self, d: Duration) {
        self.first.get_or_insert(d);
        self.latency.saturating_record(d.as_nanos() as u64);
    }

    fn finish(mut self) -> Self {
        (self.secs, self.cores) = self.meter.stop();
        self
    }
}

fn read_row(scenario: &str, variant: &str, run: &ReadRun) -> Row {
    let h = &run.latency;
    let p99 = h.value_at_quantile(0.99);
    let mut row = Row::new(scenario, variant);
    row.result = format!(
        "p50 {}, p99 {}",
        fmt_ns(h.value_at_quantile(0.5)),
        fmt_ns(p99)
    );
    row.target = "p99 < 1 ms".into();
    row.verdict = Verdict::of(p99 < 1_000_000);
    row.details = format!(
        "{} calls, mean {}, p99.9 {}, max {}, first call {}; {}",
        fmt_int(h.len()),
        fmt_ns(h.mean() as u64),
        fmt_ns(h.value_at_quantile(0.999)),
        fmt_ns(h.max()),
        fmt_ns(run.first.map_or(0, |d| d.as_nanos() as u64)),
        run.cores.describe(),
    );
    row.figures = json!({
        "calls": h.len(),
        "p50_us": h.value_at_quantile(0.5) as f64 / 1e3,
        "p99_us": p99 as f64 / 1e3,
        "p999_us": h.value_at_quantile(0.999) as f64 / 1e3,
        "max_us": h.max() as f64 / 1e3,
        "mean_us": h.mean() / 1e3,
        "first_us": run.first.map_or(0.0, |d| d.as_secs_f64() * 1e6),
        "secs": run.secs,
        "cores": run.cores.to_json(),
    });
    row.announce();
    row
}

async fn catch_up(big: &Big, phase: &str) -> BenchResult<Row> {
    let mut listener = big.topics.listener();
    listener.subscribe(big.catchup.clone(), Some(1));
    let mut per_next = new_histogram()?;
    let mut next_seq = 1u64;
    let mut calls = 0u64;
    let meter = Meter::start();
    while next_seq <= big.catchup_n {
        let t = Instant::now();
        let deliveries = listener.next().await?;
        per_next.saturating_record(t.elapsed().as_nanos() as u64);
        calls += 1;
        for d in deliveries {
            match d {
                Delivery::Event { event, .. } if event.seq == next_seq => next_seq += 1,
                other => return Err(format!("at {next_seq}: unexpected {other:?}").into()),
            }
        }
    }
    let (secs, cores) = meter.stop();
    let rate = big.catchup_n as f64 / secs;
    drop(listener);
    // For comparison, the store alone: the same records in the same chunks, first all in one
    // blocking thread, then with one `spawn_blocking` per chunk as the engine does.
    let chunk = big.options.listener_batch;
    let log = big
        .store
        .list_logs("t:")?
        .into_iter()
        .map(|(name, _)| name)
        .find(|name| name.ends_with(&format!(":{}", big.catchup)))
        .ok_or("no store log for the catch-up topic")?;
    let direct = store_walk(&big.store, &log, big.catchup_n, chunk, false).await?;
    let per_chunk = store_walk(&big.store, &log, big.catchup_n, chunk, true).await?;
    let mut row = Row::new(
        "catch-up",
        &format!(
            "Listener from seq 1, topic of {} on disk, {phase}",
            fmt_int(big.catchup_n)
        ),
    );
    row.result = format!("{} events/s", fmt_int(rate as u64));
    row.target = ">= 1,000,000 events/s".into();
    row.verdict = Verdict::of(rate >= 1_000_000.0);
    row.details = format!(
        "{} events in {:.2} s, {} next() calls ({:.0} events each), next() p50 {}, p99 {}; {}; \
         Store::read alone in chunks of {chunk}: {} events/s in one thread, {} events/s with a \
         spawn_blocking per chunk",
        fmt_int(big.catchup_n),
        secs,
        fmt_int(calls),
        big.catchup_n as f64 / calls as f64,
        fmt_ns(per_next.value_at_quantile(0.5)),
        fmt_ns(per_next.value_at_quantile(0.99)),
        cores.describe(),
        fmt_int(direct as u64),
        fmt_int(per_chunk as u64),
    );
    row.figures = json!({
        "events": big.catchup_n,
        "secs": secs,
        "events_per_sec": rate,
        "next_calls": calls,
        "next_p50_us": per_next.value_at_quantile(0.5) as f64 / 1e3,
        "next_p99_us": per_next.value_at_quantile(0.99) as f64 / 1e3,
        "cores": cores.to_json(),
        "listener_batch": chunk,
        "store_read_direct_events_per_sec": direct,
        "store_read_spawn_blocking_events_per_sec": per_chunk,
    });
    row.announce();
    Ok(row)
}

/// Reads `n` records of `log` through `Store::read` in chunks; returns records per second.
async fn store_walk(
    store: &Arc<FjallStore>,
    log: &str,
    n: u64,
    chunk: usize,
    spawn_per_chunk: bool,
) -> BenchResult<f64> {
    fn step(store: &FjallStore, log: &str, from: u64, chunk: usize) -> BenchResult<u64> {
        let records = store.read(log, from, chunk)?;
        match records.last() {
            Some((seq, _)) => Ok(seq + 1),
            None => Err(format!("{log}: nothing at {from}").into()),
        }
    }
    let t = Instant::now();
    if spawn_per_chunk {
        let mut from = 1;
        while from <= n {
            let (store, log) = (store.clone(), log.to_owned());
            from = tokio::task::spawn_blocking(move || step(&store, &log, from, chunk)).await??;
        }
    } else {
        let (store, log) = (store.clone(), log.to_owned());
        tokio::task::spawn_blocking(move || {
            let mut from = 1;
            while from <= n {
                from = step(&store, &log, from, chunk)?;
            }
            BenchResult::Ok(())
        })
        .await??;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// Commit statistics, from the engine's own metrics

/// Samples of one histogram metric.
#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl Samples {
    fn take(&self) -> Vec<f64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl metrics::HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(value);
    }
}

/// A `metrics` recorder keeping the topics engine's commit histograms (batch size and commit
/// time); everything else goes nowhere.
struct Capture {
    batch_events: Arc<Samples>,
    commit_seconds: Arc<Samples>,
}

impl metrics::Recorder for Capture {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        match key.name() {
            "herald_topic_commit_batch_events" => {
                metrics::Histogram::from_arc(self.batch_events.clone())
            }
            "herald_topic_commit_seconds" => {
                metrics::Histogram::from_arc(self.commit_seconds.clone())
            }
            _ => metrics::Histogram::noop(),
        }
    }
}

struct Commits {
    batch_events: Arc<Samples>,
    commit_seconds: Arc<Samples>,
}

impl Commits {
    /// Installs the global recorder; must run before any `Topics::open`.
    fn install() -> Commits {
        let commits = Commits {
            batch_events: Arc::default(),
            commit_seconds: Arc::default(),
        };
        let capture = Capture {
            batch_events: commits.batch_events.clone(),
            commit_seconds: commits.commit_seconds.clone(),
        };
        if metrics::set_global_recorder(capture).is_err() {
            eprintln!("warning: a metrics recorder was already installed; no commit stats");
        }
        commits
    }

    /// The commits since the last call.
    fn take(&self) -> CommitStats {
        let mut events = self.batch_events.take();
        let mut secs = self.commit_seconds.take();
        events.sort_by(f64::total_cmp);
        secs.sort_by(f64::total_cmp);
        CommitStats { events, secs }
    }
}

struct CommitStats {
    /// Events per commit, sorted.
    events: Vec<f64>,
    /// Seconds per commit (store batch and fsync), sorted.
    secs: Vec<f64>,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

impl CommitStats {
    fn describe(&self) -> String {
        format!(
            "{} commits, events/commit mean {:.0} (p50 {:.0}, max {:.0}), commit time p50 {}, \
             p99 {}, max {}",
            fmt_int(self.events.len() as u64),
            mean(&self.events),
            quantile(&self.events, 0.5),
            quantile(&self.events, 1.0),
            fmt_ns((quantile(&self.secs, 0.5) * 1e9) as u64),
            fmt_ns((quantile(&self.secs, 0.99) * 1e9) as u64),
            fmt_ns((quantile(&self.secs, 1.0) * 1e9) as u64),
        )
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "commits": self.events.len(),
            "events_mean": mean(&self.events),
            "events_p50": quantile(&self.events, 0.5),
            "events_max": quantile(&self.events, 1.0),
            "commit_p50_ms": quantile(&self.secs, 0.5) * 1e3,
            "commit_p99_ms": quantile(&self.secs, 0.99) * 1e3,
            "commit_max_ms": quantile(&self.secs, 1.0) * 1e3,
            "commit_mean_ms": mean(&self.secs) * 1e3,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Met,
    Missed,
    Info,
}

impl Verdict {
    fn of(met: bool) -> Verdict {
        if met { Verdict::Met } else { Verdict::Missed }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::Info => "-",
        }
    }
}

struct Row {
    scenario: String,
    variant: String,
    result: String,
    target: String,
    verdict: Verdict,
    details: String,
    figures: serde_json::Value,
}

impl Row {
    fn new(scenario: &str, variant: &str) -> Row {
        Row {
            scenario: scenario.into(),
            variant: variant.into(),
            result: String::new(),
            target: String::new(),
            verdict: Verdict::Info,
            details: String::new(),
            figures: serde_json::Value::Null,
        }
    }

    fn announce(&self) {
        println!(
            "RESULT {} [{}]: {} (target {}: {})\n       {}",
            self.scenario,
            self.variant,
            self.result,
            self.target,
            self.verdict.label(),
            self.details
        );
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "scenario": self.scenario,
            "variant": self.variant,
            "result": self.result,
            "target": self.target,
            "verdict": self.verdict.label(),
            "details": self.details,
            "figures": self.figures,
        })
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| scenario | variant | result | target | verdict |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.scenario,
            r.variant,
            r.result,
            r.target,
            r.verdict.label()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn path(s: &str) -> Path {
    Path::parse_url(s, &PathLimits::default()).expect("a valid bench path")
}

async fn open_store(dir: PathBuf) -> BenchResult<Arc<FjallStore>> {
    let store = tokio::task::spawn_blocking(move || FjallStore::open(&dir)).await??;
    Ok(Arc::new(store))
}

/// 100-byte JSON events.
struct Payloads(Vec<Bytes>);

impl Payloads {
    fn new(count: usize) -> Payloads {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let events = (0..count)
            .map(|i| {
                let head = format!(
                    r#"{{"sensor":"s-{:03}","seq":{i},"value":{:.3},"pad":""#,
                    i % 997,
                    (rng.next() % 1_000_000) as f64 / 1000.0
                );
                let mut s = head;
                while s.len() < EVENT_BYTES - 2 {
                    s.push('x');
                }
                s.push_str("\"}");
                assert_eq!(s.len(), EVENT_BYTES);
                debug_assert!(serde_json::from_str::<serde_json::Value>(&s).is_ok());
                Bytes::from(s)
            })
            .collect();
        Payloads(events)
    }

    fn batch(&self, start: u64, n: usize) -> Vec<NewEvent> {
        (start..start + n as u64)
            .map(|i| NewEvent::json(self.0[(i % self.0.len() as u64) as usize].clone()))
            .collect()
    }
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Wall time and CPU time: this process's (`/proc/self/stat`) and the whole machine's
/// (`/proc/stat`), so that a run disturbed by other work on the machine shows as such.
struct Meter {
    wall: Instant,
    own: Option<f64>,
    all: Option<f64>,
}

/// Cores busy on average during a measurement.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    /// This process.
    own: Option<f64>,
    /// Everything else on the machine.
    other: Option<f64>,
}

impl Cpu {
    fn describe(&self) -> String {
        match (self.own, self.other) {
            (Some(own), Some(other)) => format!("{own:.2} cores busy, {other:.2} other"),
            (Some(own), None) => format!("{own:.2} cores busy"),
            _ => "CPU unknown".into(),
        }
    }

    fn to_json(self) -> serde_json::Value {
        json!({ "own": self.own, "other": self.other })
    }
}

impl Meter {
    fn start() -> Meter {
        Meter {
            wall: Instant::now(),
            own: cpu_secs(),
            all: machine_busy_secs(),
        }
    }

    /// Seconds elapsed, and the cores used meanwhile on average.
    fn stop(&self) -> (f64, Cpu) {
        let secs = self.wall.elapsed().as_secs_f64();
        let own = self.own.zip(cpu_secs()).map(|(a, b)| (b - a) / secs);
        let all = self
            .all
            .zip(machine_busy_secs())
            .map(|(a, b)| (b - a) / secs);
        let other = own.zip(all).map(|(o, a)| (a - o).max(0.0));
        (secs, Cpu { own, other })
    }
}

/// This process's CPU time (user + system), in seconds.
fn cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces): state is the first; utime and
    // stime are the 12th and 13th, in clock ticks (100 per second on Linux).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The machine's busy CPU time (all but idle and iowait), in seconds.
fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let total: f64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle) / 100.0)
}

fn disk_usage(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

fn fmt_int(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_ns(ns: u64) -> String {
    let ns = ns as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.3} s", ns / 1e9)
    }
}

fn fmt_bytes(b: u64) -> String {
    format!("{:.2} GB", b as f64 / 1e9)
}

/// A latency histogram in ns, from 1 ns to 10 minutes, 3 significant digits.
fn new_histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3)
}
