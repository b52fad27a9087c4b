//! `docs-fanout`: change-to-WebSocket latency with many subscribers on one path.
//!
//! 1. Opens `--subscribers` legacy Icepeak WebSockets on `--path` and waits until every one has
//!    received its first frame (the current value), so the subscriptions are registered.
//! 2. One writer PUTs `{"t": <wall clock, ns>, "n": <i>}` to the path at a fixed rate over a
//!    keep-alive connection (without `?durable`: the server pushes values only once they are
//!    durable anyway, so waiting for the commit would only slow the writer down).
//! 3. Every subscriber records `now - t` for each frame it gets. The latency therefore covers
//!    the whole change path: HTTP request, queueing, group commit with fsync, fan-out and the
//!    WebSocket write and read.
//!
//! The server coalesces values a slow subscriber has not taken yet, so a subscriber may skip
//! some: `delivered / expected` says how many arrived. Every subscriber must end with the last
//! value; the run waits up to `--grace` for that after the writer stops.
//!
//! The writer is not corrected for coordinated omission: if a PUT stalls past its tick, that
//! tick is skipped and the achieved rate (reported) drops below the requested one.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use hyper::body::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use crate::args::{Rate, Target, parse_doc_path, parse_duration};
use crate::http::{ClientKind, Connection};
use crate::report::{self, CpuMeter, CpuUsage, Errors, Latency, Table};
use crate::scenario::unix_nanos;
use crate::ws;

/// Flags of `herald-bench docs-fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The Icepeak listener (subscribers and writer both use it).
    #[arg(long, value_name = "http://HOST:PORT")]
    pub target: Target,
    /// WebSocket subscribers on the path.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// The document path everyone subscribes to and the writer writes.
    #[arg(long, value_parser = parse_doc_path, default_value = "/bench/x")]
    pub path: String,
    /// Writes per second (`100/s`).
    #[arg(long, default_value = "100/s")]
    pub rate: Rate,
    /// How long the writer writes.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// How long to wait after the last write for every subscriber to receive it.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub grace: Duration,
    /// WebSocket handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Give up when the subscribers are not all connected within this time.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub connect_timeout: Duration,
    /// HTTP client library of the writer.
    #[arg(long, value_enum, default_value_t = ClientKind::Hyper)]
    pub http_client: ClientKind,
    /// The server's process id, to report its CPU use next to ours.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// Result of a `docs-fanout` run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `docs-fanout`.
    pub scenario: &'static str,
    /// The listener used.
    pub target: String,
    /// The path written and subscribed to.
    pub path: String,
    /// Subscribers requested.
    pub subscribers: usize,
    /// Subscribers that connected and got their first frame.
    pub connected: usize,
    /// Time to connect all subscribers, seconds.
    pub connect_s: f64,
    /// Requested writes per second.
    pub rate: f64,
    /// Writer duration, seconds.
    pub duration_s: f64,
    /// Successful writes.
    pub writes: u64,
    /// Achieved writes per second.
    pub writes_per_second: f64,
    /// Failed writes by status code or `transport`.
    pub write_errors: Errors,
    /// Writer request latency (202 without `?durable`: accepted, not yet committed).
    pub write_latency: Latency,
    /// `writes × connected`: what would arrive with no coalescing.
    pub expected: u64,
    /// Updates received by all subscribers together.
    pub delivered: u64,
    /// Subscribers that received the last write before `--grace` ran out.
    pub got_last: usize,
    /// Frames that were not a `{"t", "n"}` object.
    pub unparsed: u64,
    /// Subscribers whose socket closed or failed during the run.
    pub dropped: usize,
    /// Change (writer's send time) to WebSocket delivery, over every delivered update.
    pub latency: Latency,
    /// CPU use while the writer ran.
    pub cpu: Option<CpuUsage>,
}

/// What the writer tells subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Writing,
    /// The writer is done; this was the last `n`.
    Last(u64),
    /// Time is up: stop now.
    Stop,
}

/// The document the writer puts.
#[derive(Debug, Deserialize)]
struct Stamp {
    t: u64,
    n: u64,
}

struct SubscriberResult {
    latency: Histogram<u64>,
    delivered: u64,
    unparsed: u64,
    got_last: bool,
    dropped: bool,
}

/// Runs the scenario.
///
/// # Errors
/// On invalid options, when no subscriber connects, or when the writer cannot connect.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    if opts.subscribers == 0 {
        bail!("--subscribers must be at least 1");
    }
    super::check_open_files(
        opts.subscribers as u64 + 64,
        crate::procfs::Process::Current,
    )?;
    let (phase_tx, phase_rx) = watch::channel(Phase::Writing);
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(opts.subscribers);
    let permits = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let finished = Arc::new(Finished::default());
    let connect_started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..opts.subscribers {
        tasks.spawn(subscriber(
            opts.target.clone(),
            opts.path.clone(),
            permits.clone(),
            ready_tx.clone(),
            phase_rx.clone(),
            finished.clone(),
        ));
    }
    drop(ready_tx);

    let mut connected = 0;
    let mut failures: Vec<String> = Vec::new();
    let deadline = connect_started + opts.connect_timeout;
    while connected + failures.len() < opts.subscribers {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => connected += 1,
            Ok(Some(Err(e))) => failures.push(e),
            Ok(None) => break,
            Err(_) => bail!(
                "only {connected} of {} subscribers connected within {:?}",
                opts.subscribers,
                opts.connect_timeout
            ),
        }
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    if connected == 0 {
        bail!(
            "no subscriber could connect: {}",
            failures.first().map_or("unknown error", String::as_str)
        );
    }

    let meter = CpuMeter::start(opts.pid);
    let writer = write(opts).await?;
    let cpu = meter.and_then(|m| m.stop());

    if writer.writes > 0 {
        let _ = phase_tx.send(Phase::Last(writer.writes - 1));
        let all_done = async {
            loop {
                let notified = finished.notify.notified();
                if finished.count.load(Ordering::Acquire) >= connected {
                    break;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(opts.grace, all_done).await;
    }
    let _ = phase_tx.send(Phase::Stop);

    let mut latency = report::latency_histogram()?;
    let (mut delivered, mut unparsed, mut got_last, mut dropped) = (0, 0, 0, 0);
    while let Some(joined) = tasks.join_next().await {
        let Some(r) = joined.context("a subscriber task panicked")?? else {
            continue;
        };
        latency.add(&r.latency).context("cannot merge histograms")?;
        delivered += r.delivered;
        unparsed += r.unparsed;
        got_last += usize::from(r.got_last);
        dropped += usize::from(r.dropped);
    }

    Ok(Report {
        scenario: "docs-fanout",
        target: opts.target.to_string(),
        path: opts.path.clone(),
        subscribers: opts.subscribers,
        connected,
        connect_s,
        rate: opts.rate.per_second(),
        duration_s: opts.duration.as_secs_f64(),
        writes: writer.writes,
        writes_per_second: writer.writes as f64 / writer.elapsed.as_secs_f64().max(1e-9),
        write_errors: writer.errors,
        write_latency: Latency::from_nanos(&writer.latency),
        expected: writer.writes * connected as u64,
        delivered,
        got_last,
        unparsed,
        dropped,
        latency: Latency::from_nanos(&latency),
        cpu,
    })
}

/// Counts subscribers that have received the last write.
#[derive(Default)]
struct Finished {
    count: AtomicUsize,
    /// Woken by each subscriber that finishes; the scenario waits on it during `--grace`.
    notify: Notify,
}

struct WriterResult {
    writes: u64,
    elapsed: Duration,
    errors: Errors,
    latency: Histogram<u64>,
}

async fn write(opts: &Options) -> anyhow::Result<WriterResult> {
    let mut conn = Connection::new(opts.http_client, opts.target.clone())?;
    conn.connect().await?;
    let mut result = WriterResult {
        writes: 0,
        elapsed: Duration::ZERO,
        errors: Errors::new(),
        latency: report::latency_histogram()?,
    };
    let mut ticks = tokio::time::interval(opts.rate.period());
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let started = Instant::now();
    let end = started + opts.duration;
    loop {
        ticks.tick().await;
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let n = result.writes;
        let body = Bytes::from(format!(r#"{{"t":{},"n":{n}}}"#, unix_nanos()));
        match conn.put(&opts.path, body).await {
            Ok(status) if (200..300).contains(&status) => {
                result.writes += 1;
                result
                    .latency
                    .saturating_record(sent.elapsed().as_nanos() as u64);
            }
            Ok(status) => *result.errors.entry(status.to_string()).or_default() += 1,
            Err(_) => *result.errors.entry("transport".into()).or_default() += 1,
        }
    }
    result.elapsed = started.elapsed();
    Ok(result)
}

/// One subscriber: connect, take the first frame, then measure every update until told to
/// stop. Returns `None` when it never connected (already reported through `ready`).
async fn subscriber(
    target: Target,
    path: String,
    permits: Arc<Semaphore>,
    ready: mpsc::Sender<Result<(), String>>,
    mut phase: watch::Receiver<Phase>,
    finished: Arc<Finished>,
) -> anyhow::Result<Option<SubscriberResult>> {
    let socket = {
        // Held only while connecting, to bound the handshakes in flight.
        let _permit = permits.acquire().await?;
        match ws::connect_subscribed(&target, &path, None).await {
            Ok(s) => s,
            Err(e) => {
                let _ = ready.send(Err(format!("{e:#}"))).await;
                return Ok(None);
            }
        }
    };
    let _ = ready.send(Ok(())).await;
    drop(ready);
    let mut socket = socket;
    let mut r = SubscriberResult {
        latency: report::latency_histogram()?,
        delivered: 0,
        unparsed: 0,
        got_last: false,
        dropped: false,
    };
    let mut max_n: Option<u64> = None;
    loop {
        let current = *phase.borrow_and_update();
        match current {
            Phase::Stop => break,
            Phase::Last(last) if max_n.is_some_and(|m| m >= last) => {
                r.got_last = true;
                finished.count.fetch_add(1, Ordering::AcqRel);
                finished.notify.notify_one();
                break;
            }
            _ => {}
        }
        tokio::select! {
            msg = socket.next() => {
                let payload = match msg {
                    Some(Ok(Message::Text(t))) => Bytes::from(t),
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(_)) => continue,
                    None | Some(Err(_)) => {
                        r.dropped = true;
                        break;
                    }
                };
                let received = unix_nanos();
                match serde_json::from_slice::<Stamp>(&payload) {
                    Ok(stamp) => {
                        r.delivered += 1;
                        r.latency.saturating_record(received.saturating_sub(stamp.t));
                        max_n = max_n.max(Some(stamp.n));
                    }
                    Err(_) => r.unparsed += 1,
                }
            }
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    Ok(Some(r))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = Table::new(format!(
            "docs-fanout  target={} path={} subscribers={} rate={}/s duration={} s",
            self.target, self.path, self.subscribers, self.rate, self.duration_s
        ));
        t.row(
            "subscribers connected",
            format!(
                "{} of {} in {:.2} s",
                self.connected, self.subscribers, self.connect_s
            ),
        );
        t.row(
            "writes",
            format!(
                "{} ({:.1}/s), errors: {}",
                report::count(self.writes),
                self.writes_per_second,
                report::errors_text(&self.write_errors)
            ),
        );
        t.row(
            "write latency p50/p99",
            format!(
                "{} / {}",
                report::micros(self.write_latency.p50_us),
                report::micros(self.write_latency.p99_us)
            ),
        );
        let ratio = if self.expected > 0 {
            100.0 * self.delivered as f64 / self.expected as f64
        } else {
            0.0
        };
        t.row(
            "delivered/expected",
            format!(
                "{} / {} ({ratio:.1} %)",
                report::count(self.delivered),
                report::count(self.expected)
            ),
        );
        t.row(
            "got the last write",
            format!("{} of {}", self.got_last, self.connected),
        );
        if self.unparsed > 0 || self.dropped > 0 {
            t.row(
                "anomalies",
                format!(
                    "{} unparsed frames, {} dropped sockets",
                    self.unparsed, self.dropped
                ),
            );
        }
        self.latency.rows(&mut t, "change->ws");
        if let Some(cpu) = &self.cpu {
            cpu.row(&mut t);
        }
        t.fmt(f)
    }
}
