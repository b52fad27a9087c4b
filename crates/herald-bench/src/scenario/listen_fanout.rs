//! `listen-fanout`: publish-to-deliver throughput, latency and loss of Herald's stream listen
//! API (`GET /listen`, IorioDB-compatible) over WebSocket or server-sent events.
//!
//! The scenario logs in once (`POST /sessions` with `--user` and `--password`) and uses the
//! session token everywhere. It opens `--subscribers` listen connections over `--transport`
//! (`ws` or `sse`), `--connect-concurrency` at a time, each on one stream and each confirmed
//! subscribed before the run ([`super::listen`]); the time this takes gives the connection
//! set-up rate. With `--topics one` every publisher appends to one stream
//! `<bucket>:<stream>-r<run>`; with `--topics distinct` publisher `i` appends to
//! `<bucket>:<stream>-r<run>-<i>` and subscriber `j` listens to publisher `j mod publishers`'s
//! stream. Subscribers ask for every event from seqnum 1 (`s=bucket:stream:1`), so a
//! subscription that the server registers late still sees everything.
//!
//! **Publishers are MQTT clients** (`--mqtt`, the same client and publisher loop as
//! `mqtt-fanout`, logged in with the session token as the password): MQTT topic `a/b` is stream
//! `a:b`, and an MQTT publisher writes many QoS 0 publishes per system call without waiting for
//! answers, so one connection appends far faster than one keep-alive HTTP connection doing
//! `POST /streams/a/b` one request at a time (which waits for each `201`, a group commit on a
//! durable server). Each publisher publishes `--payload-bytes` payloads for `--duration`: as fast
//! as `--window` allows (at most that many messages ahead of the slowest subscriber; see
//! `mqtt-fanout`) or `--rate` messages per second. A payload is text (the listen API shows text
//! events as JSON strings): a run id, the send time (wall clock, ns), the publisher's number and
//! counter in hexadecimal, then padding.
//!
//! Each subscriber checks every event's seqnum: the stream's events must arrive as
//! `1, 2, 3, ...`; a jump, or a gap marker from the server, counts the seqnums skipped as lost,
//! and a seqnum at or below one already seen counts as out of order. It records
//! publish-to-deliver latency in an HDR histogram (both ends are this process, so the clocks
//! agree). After the publishers stop, the scenario waits until every subscriber has everything
//! published or nothing arrived for `--drain`, then reads back each stream's last seqnum
//! (`GET /streams/<bucket>/<stream>?limit=1`): **lost** is, over all subscribers, the seqnums up
//! to that last one that the subscriber never got. Delivered messages/s counts every delivery to
//! every subscriber, divided by the time from the start until the last delivery.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use herald_mqtt_codec::Protocol;
use hyper::header::HeaderValue;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;

use super::fanout::{self, Figures, Layout, Notes, Publish, Tally, Topics};
use super::listen::{self, Connect, Entry, Listen, Subscription, Transport};
use super::mqtt::{self, Broker, Client, Progress};
use super::streams_append;
use crate::args::{Target, parse_duration};
use crate::procfs::{self, Process};
use crate::report::{self, CpuMeter, Table};
use crate::scenario::unix_nanos;

/// WebSocket read buffer of a subscriber: batches can be large.
const SUB_READ_BUFFER: usize = 64 * 1024;

/// Flags of `herald-bench listen-fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The server's main HTTP API (`herald serve --http`): sessions and `/listen`.
    #[arg(long, value_name = "http://HOST:PORT")]
    pub target: Target,
    /// The server's MQTT listener (`herald serve --mqtt`), which the publishers publish to.
    #[arg(long, value_name = "HOST:PORT")]
    pub mqtt: Target,
    /// How the subscribers listen.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    /// Bucket of the streams.
    #[arg(long, default_value = "bench")]
    pub bucket: String,
    /// Name prefix of the streams (a run id, and with `--topics distinct` the publisher's
    /// number, are appended).
    #[arg(long, default_value = "fanout")]
    pub stream: String,
    /// One stream for all, or one stream per publisher (`distinct`).
    #[arg(long, value_enum, default_value_t = Topics::One)]
    pub topics: Topics,
    /// Listen connections.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Publisher (MQTT) connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub publish: Publish,
    /// MQTT protocol version of the publishers: 3.1.1 or 5.
    #[arg(long, value_parser = mqtt::parse_protocol, default_value = "3.1.1")]
    pub protocol: Protocol,
    /// Listen connections being set up (connect, subscribe, confirm) at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Give up on a connection not set up (or subscribed) within this time.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,
    /// User to log in as (`POST /sessions`); it needs read and write on the bucket.
    #[arg(long, default_value = "admin")]
    pub user: String,
    /// That user's password.
    #[arg(long, env = "HERALD_ADMIN_PASSWORD", hide_env_values = true)]
    pub password: String,
    /// The server's process id, to report its CPU use and memory next to ours.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// Result of a `listen-fanout` run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `listen-fanout`.
    pub scenario: &'static str,
    /// The main HTTP API (listeners).
    pub target: String,
    /// The MQTT listener (publishers).
    pub mqtt: String,
    /// `ws` or `sse`.
    pub transport: Transport,
    /// MQTT protocol of the publishers.
    pub protocol: &'static str,
    /// Time to set up and subscribe every listen connection, seconds.
    pub setup_s: f64,
    /// `subscribers / setup_s`.
    pub setups_per_second: f64,
    /// Events in the streams after the run: the sum of their last seqnums, read back.
    pub stored: u64,
    /// Of `lost`: seqnums the server reported as a gap (no longer retained).
    pub gap_events: u64,
    /// Reset markers received (a stream deleted and created again).
    pub resets: u64,
    /// Server `VmRSS` before the listen connections were opened, bytes (with `--pid`).
    pub rss_before: Option<u64>,
    /// Server `VmRSS` after the drain, connections still open, bytes (with `--pid`).
    pub rss_after: Option<u64>,
    /// Publishes, deliveries, loss and latency. Expected deliveries are, over the
    /// subscribers, the last seqnum of their stream; lost ones are seqnums never delivered;
    /// `out_of_order` counts events with a seqnum at or below one already delivered; bytes
    /// are event data (as JSON strings).
    #[serde(flatten)]
    pub figures: Figures,
}

/// What one subscriber counted.
struct SubscriberResult {
    delivered: u64,
    bytes: u64,
    /// The next seqnum expected.
    next: u64,
    /// Seqnums skipped (jumps and gaps).
    missing: u64,
    gap_events: u64,
    out_of_order: u64,
    resets: u64,
    latency: Histogram<u64>,
    last_delivery: Option<Instant>,
    error: Option<String>,
}

struct SubscriberCtx {
    number: usize,
    received: Arc<AtomicU64>,
    notify: Arc<Notify>,
    progress: Arc<Progress>,
    run_id: u64,
    /// Becomes true when the drain is over.
    stop: watch::Receiver<bool>,
}

/// Runs the scenario.
///
/// # Errors
/// On invalid options, when the login fails, or when a connection cannot be opened,
/// authenticated or subscribed before the run.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    if opts.subscribers == 0 || opts.publishers == 0 {
        bail!("--subscribers and --publishers must be at least 1");
    }
    let publish = &opts.publish;
    let header = listen::ENCODING.header_bytes();
    if publish.payload_bytes < header {
        bail!("--payload-bytes must be at least {header} (the payload header)");
    }
    listen::check_name("--bucket", &opts.bucket)?;
    listen::check_name("--stream", &opts.stream)?;
    if opts.topics == Topics::Distinct && opts.subscribers < opts.publishers {
        bail!("--topics distinct needs at least as many --subscribers as --publishers");
    }
    let connections = (opts.subscribers + opts.publishers) as u64;
    super::check_open_files(connections + 64, Process::Current)?;
    if let Some(pid) = opts.pid {
        super::check_open_files(connections + 64, Process::Pid(pid))?;
    }
    let session = streams_append::login(&opts.target, &opts.user, &opts.password).await?;
    let token = session
        .to_str()
        .context("the session token is not text")?
        .to_owned();

    let run_id = unix_nanos();
    let run_ms = run_id / 1_000_000;
    // The publisher whose stream subscriber `j` listens to (`None`: the one stream).
    let source_of = |j: usize| opts.topics.source_of(j, opts.publishers);
    let stream_name = |publisher: Option<usize>| match publisher {
        None => format!("{}-r{run_ms}", opts.stream),
        Some(p) => format!("{}-r{run_ms}-{p}", opts.stream),
    };
    // Publisher `i` appends to this stream.
    let stream_of = |i: usize| match opts.topics {
        Topics::One => stream_name(None),
        Topics::Distinct => stream_name(Some(i)),
    };
    let rss_before = opts.pid.map(rss).transpose()?;

    let notify = Arc::new(Notify::new());
    let progress = Arc::new(Progress::new(opts.subscribers, opts.publishers));
    for j in 0..opts.subscribers {
        if let Some(own) = source_of(j) {
            progress.only(j, own);
        }
    }
    let (stop_tx, stop_rx) = watch::channel(false);

    // Listen connections first, each subscribed before any publisher connects.
    let setup_started = Instant::now();
    let permits = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let (ready_tx, mut ready_rx) = mpsc::channel::<(usize, Result<(), String>)>(opts.subscribers);
    let mut sub_tasks = Vec::with_capacity(opts.subscribers);
    let mut received = Vec::with_capacity(opts.subscribers);
    for j in 0..opts.subscribers {
        let sub = Subscription {
            bucket: opts.bucket.clone(),
            stream: stream_name(source_of(j)),
            from: Some(1),
        };
        let count = Arc::new(AtomicU64::new(0));
        received.push(count.clone());
        let ctx = SubscriberCtx {
            number: j,
            received: count,
            notify: notify.clone(),
            progress: progress.clone(),
            run_id,
            stop: stop_rx.clone(),
        };
        let (target, token, permits, ready) = (
            opts.target.clone(),
            token.clone(),
            permits.clone(),
            ready_tx.clone(),
        );
        let (transport, timeout) = (opts.transport, opts.connect_timeout);
        sub_tasks.push(tokio::spawn(async move {
            let opened = {
                let _permit = permits.acquire().await;
                let how = Connect {
                    target: &target,
                    transport,
                    token: &token,
                    source: None,
                    read_buffer: SUB_READ_BUFFER,
                    timeout,
                };
                Listen::open(how, &sub).await
            };
            match opened {
                Ok(conn) => {
                    let _ = ready.send((j, Ok(()))).await;
                    drop(ready);
                    Some(subscriber(conn, ctx).await)
                }
                Err(e) => {
                    let _ = ready.send((j, Err(format!("{e:#}")))).await;
                    None
                }
            }
        }));
    }
    drop(ready_tx);
    let mut ready = 0;
    while ready < opts.subscribers {
        match ready_rx.recv().await {
            Some((_, Ok(()))) => ready += 1,
            Some((j, Err(e))) => {
                let _ = stop_tx.send(true);
                bail!("subscriber {j}: {e}");
            }
            None => bail!("a subscriber task ended before it was set up"),
        }
    }
    let setup_s = setup_started.elapsed().as_secs_f64();

    let broker = Broker {
        addr: opts.mqtt.clone(),
        username: Some(opts.user.clone()),
        password: Some(token.clone()),
        protocol: opts.protocol,
        connect_timeout: opts.connect_timeout,
    };
    let mut pubs = Vec::with_capacity(opts.publishers);
    for i in 0..opts.publishers {
        pubs.push(
            Client::connect(&broker, &mqtt::client_id(run_id, 'p', i), None, 16 * 1024)
                .await
                .with_context(|| format!("publisher {i}"))?,
        );
    }

    let run = fanout::Run {
        run_id,
        encoding: listen::ENCODING,
        progress: &progress,
    };
    let running = fanout::start(pubs, publish, run, |i| {
        format!("{}/{}", opts.bucket, stream_of(i))
    });
    let start = running.start;
    tokio::time::sleep_until(start).await;
    let meter = CpuMeter::start(opts.pid);
    let mut published = running.finish().await?;
    // What the subscribers should have, as far as the publishers know.
    let published_total: u64 = (0..opts.subscribers)
        .map(|j| published.of(source_of(j)))
        .sum();
    let total_received = || received.iter().map(|r| r.load(Ordering::Acquire)).sum();
    let drain_s = fanout::drain(
        total_received,
        published_total,
        &notify,
        publish.drain,
        published.end,
    )
    .await;
    let cpu = meter.and_then(|m| m.stop());
    let rss_after = opts.pid.map(rss).transpose()?;
    let _ = stop_tx.send(true);
    published.disconnect(opts.protocol).await;

    // What the streams hold: the subscribers must have had every seqnum up to there.
    let mut stored_by = Vec::with_capacity(opts.publishers);
    let streams = match opts.topics {
        Topics::One => 1,
        Topics::Distinct => opts.publishers,
    };
    for i in 0..streams {
        let path = format!("/streams/{}/{}", opts.bucket, stream_of(i));
        stored_by.push(
            streams_append::last_seq(&opts.target, &path, Some(&HeaderValue::from_str(&token)?))
                .await
                .context("cannot read back the streams' last seqnums")?,
        );
    }
    let stored_of = |j: usize| stored_by.get(source_of(j).unwrap_or(0)).copied();

    let mut tallies = Vec::with_capacity(opts.subscribers);
    let (mut gap_events, mut resets) = (0, 0);
    for (j, task) in sub_tasks.into_iter().enumerate() {
        let Some(r) = task.await.context("a subscriber task panicked")? else {
            bail!("subscriber {j} was not set up");
        };
        let r = r?;
        let stored = stored_of(j).unwrap_or(0);
        gap_events += r.gap_events;
        resets += r.resets;
        tallies.push(Tally {
            delivered: r.delivered,
            bytes: r.bytes,
            expected: stored,
            // Skipped on the way, plus the tail never received.
            lost: r.missing + stored.saturating_sub(r.next - 1),
            out_of_order: r.out_of_order,
            latency: r.latency,
            last_delivery: r.last_delivery,
            error: r.error,
        });
    }
    let stored: u64 = stored_by.iter().sum();
    let unstored = published.total.saturating_sub(stored);
    let layout = Layout {
        publish,
        topics: opts.topics,
        publishers: opts.publishers,
        start,
    };
    let mut figures = Figures::new(layout, published, tallies, drain_s, cpu)?;
    if unstored > 0 {
        *figures
            .errors
            .entry("publishes the server did not append".into())
            .or_default() += unstored;
    }
    Ok(Report {
        scenario: "listen-fanout",
        target: opts.target.to_string(),
        mqtt: opts.mqtt.authority().to_owned(),
        transport: opts.transport,
        protocol: mqtt::protocol_name(opts.protocol),
        setup_s,
        setups_per_second: fanout::per_second(opts.subscribers as f64, setup_s),
        stored,
        gap_events,
        resets,
        rss_before,
        rss_after,
        figures,
    })
}

fn rss(pid: u32) -> anyhow::Result<u64> {
    procfs::rss_bytes(Process::Pid(pid))
        .with_context(|| format!("cannot read the RSS of the server (pid {pid})"))
}

async fn subscriber(mut conn: Listen, mut ctx: SubscriberCtx) -> anyhow::Result<SubscriberResult> {
    let mut r = SubscriberResult {
        delivered: 0,
        bytes: 0,
        next: 1,
        missing: 0,
        gap_events: 0,
        out_of_order: 0,
        resets: 0,
        latency: report::latency_histogram()?,
        last_delivery: None,
        error: None,
    };
    // Highest counter + 1 seen per publisher in the current batch, for the window.
    let mut moved: Vec<(usize, u64)> = Vec::new();
    loop {
        let batch = tokio::select! {
            batch = conn.next_batch() => batch,
            _ = ctx.stop.changed() => break,
        };
        // Every entry of a batch arrived now; parsing it is not counted.
        let now = unix_nanos();
        let batch = match batch {
            Ok(Some(b)) => b,
            Ok(None) => {
                r.error = Some("subscriber: the server closed the connection".to_owned());
                break;
            }
            Err(e) => {
                r.error = Some(format!("subscriber: {e:#}"));
                break;
            }
        };
        let entries = match listen::parse_batch(batch.as_str()) {
            Ok(e) => e,
            Err(e) => {
                r.error = Some(format!("subscriber: {e:#}"));
                break;
            }
        };
        let before = r.delivered;
        for entry in entries {
            match entry {
                Entry::Event { seq, header, bytes } => {
                    if seq < r.next {
                        r.out_of_order += 1;
                        continue;
                    }
                    r.missing += seq - r.next;
                    r.next = seq + 1;
                    r.delivered += 1;
                    r.bytes += bytes as u64;
                    let Some(h) = header.filter(|h| h.run_id == ctx.run_id) else {
                        continue;
                    };
                    r.latency
                        .saturating_record(now.saturating_sub(h.sent).max(1));
                    let publisher = h.publisher as usize;
                    match moved.iter_mut().find(|(p, _)| *p == publisher) {
                        Some((_, next)) => *next = (*next).max(h.counter + 1),
                        None => moved.push((publisher, h.counter + 1)),
                    }
                }
                Entry::Gap { to, .. } => {
                    let skipped = (to + 1).saturating_sub(r.next);
                    r.missing += skipped;
                    r.gap_events += skipped;
                    r.next = r.next.max(to + 1);
                }
                Entry::Reset => {
                    r.resets += 1;
                    r.next = 1;
                }
            }
        }
        for (publisher, next) in moved.drain(..) {
            ctx.progress.advance(ctx.number, publisher, next);
            if let Some(n) = ctx.progress.moved.get(publisher) {
                n.notify_one();
            }
        }
        if r.delivered > before {
            r.last_delivery = Some(Instant::now());
            ctx.received
                .fetch_add(r.delivered - before, Ordering::AcqRel);
            ctx.notify.notify_one();
        }
    }
    // No longer holding the publishers back.
    ctx.progress.release(ctx.number);
    conn.close().await;
    Ok(r)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = Table::new(format!(
            "listen-fanout  target={} transport={} mqtt={} (MQTT {} qos {}) {}",
            self.target,
            self.transport,
            self.mqtt,
            self.protocol,
            self.figures.qos,
            self.figures.title()
        ));
        t.row(
            "listeners set up",
            format!(
                "{} in {:.2} s ({:.0}/s)",
                report::count(self.figures.subscribers as u64),
                self.setup_s,
                self.setups_per_second
            ),
        );
        let notes = Notes {
            published: format!(", {} stored", report::count(self.stored)),
            lost: format!(
                ", in gaps {}, resets {}",
                report::count(self.gap_events),
                report::count(self.resets)
            ),
        };
        self.figures.rows(&mut t, &notes);
        if let (Some(before), Some(after)) = (self.rss_before, self.rss_after) {
            t.row(
                "server RSS",
                format!(
                    "{} before, {} after",
                    report::bytes(before as f64),
                    report::bytes(after as f64)
                ),
            );
        }
        t.fmt(f)
    }
}
