//! `hpfeeds-fanout`: publish-to-deliver throughput, loss and latency of an hpfeeds broker
//! (Herald's `--hpfeeds` listener or the reference Python `hpfeeds-broker`).
//!
//! The scenario opens `--subscribers` connections that subscribe to `--channel` and
//! `--publishers` connections that publish to it, all authenticated as `--ident` with
//! `--secret` (`OP_AUTH` with SHA-1(nonce ‖ secret), `seed-contracts.md` section 3.1). Before
//! the measurement, the first publisher sends probe messages until every subscriber has received
//! one, so every subscription is in place when the run starts (hpfeeds acknowledges neither
//! AUTH nor SUBSCRIBE).
//!
//! Each publisher then publishes `--payload-bytes` payloads for `--duration`: as fast as the
//! connection takes them (frames are written in batches of up to 64 KiB), or `--rate` messages
//! per second each (start times spread over one period, so 1,000 sensors do not fire at once).
//! A payload carries a run id, its send time (wall clock, nanoseconds), the publisher's number
//! and its per-publisher counter, then padding.
//!
//! Each subscriber counts what it receives per publisher, notes counters that arrive out of
//! order or twice, and records send-to-receive latency in an HDR histogram (both ends are this
//! process, so the clocks agree). After the publishers stop, the scenario waits until every
//! subscriber has everything or nothing arrived for `--drain`. Loss is `published − received`
//! per subscriber. Delivered messages/s counts every delivery to every subscriber, divided by
//! the time from the start until the last delivery (so a broker that queues and delivers late
//! is not credited with its publish rate).
//!
//! Under `--rate`-less saturation the latency is mostly queueing in the broker and the sockets;
//! a fixed `--rate` below the broker's capacity measures the delivery path itself.
//!
//! The wire codec here is a few lines of its own, not `herald-transport-hpfeeds`: the load
//! generator should not share the code it measures.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::args::{Rate, Target, parse_duration};
use crate::report::{self, CpuMeter, CpuUsage, Errors, Latency, Table};
use crate::scenario::unix_nanos;

const OP_ERROR: u8 = 0;
const OP_INFO: u8 = 1;
const OP_AUTH: u8 = 2;
const OP_PUBLISH: u8 = 3;
const OP_SUBSCRIBE: u8 = 4;
/// Largest frame accepted from the broker (5 + 1 MiB, hpfeeds' limit for `OP_PUBLISH`).
const MAX_FRAME: usize = 5 + 1024 * 1024;
/// Payload header: run id, send time, publisher, counter, kind.
const HEADER_BYTES: usize = 8 + 8 + 4 + 8 + 1;
const KIND_DATA: u8 = 0;
const KIND_PROBE: u8 = 1;
/// Publishers writing as fast as possible batch frames up to this many bytes per write.
const WRITE_BATCH: usize = 64 * 1024;
/// Upper bound of the drain after the publishers stop, whatever `--drain` says.
const MAX_DRAIN: Duration = Duration::from_secs(120);

/// Flags of `herald-bench hpfeeds-fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The broker's hpfeeds listener.
    #[arg(long, value_name = "HOST:PORT")]
    pub target: Target,
    /// Ident every connection authenticates as; it needs publish and subscribe rights on the
    /// channel.
    #[arg(long, default_value = "bench")]
    pub ident: String,
    /// That ident's secret.
    #[arg(long, env = "HPFEEDS_BENCH_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Channel published and subscribed to.
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Subscriber connections.
    #[arg(long, default_value_t = 10)]
    pub subscribers: usize,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Size of each payload, at least 29 bytes (the header); the rest is padding.
    #[arg(long, default_value_t = 1024)]
    pub payload_bytes: usize,
    /// Messages per second per publisher. [default: as fast as the connection takes them]
    #[arg(long)]
    pub rate: Option<Rate>,
    /// How long the publishers publish.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// After the publishers stop, how long to wait for missing messages once nothing arrives.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub drain: Duration,
    /// The broker's process id, to report its CPU use next to ours.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// Result of an `hpfeeds-fanout` run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `hpfeeds-fanout`.
    pub scenario: &'static str,
    /// The listener loaded (`host:port`).
    pub target: String,
    /// The broker's name from its `OP_INFO`.
    pub broker_name: String,
    /// Publisher connections.
    pub publishers: usize,
    /// Subscriber connections.
    pub subscribers: usize,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Messages per second per publisher, or `None` for as fast as possible.
    pub rate_per_publisher: Option<f64>,
    /// Publishing time, seconds.
    pub duration_s: f64,
    /// Messages published (written to the sockets) by all publishers.
    pub published: u64,
    /// `published` over the publishing time.
    pub published_per_second: f64,
    /// Deliveries to all subscribers (each subscriber should get every message).
    pub delivered: u64,
    /// `delivered` over the time from the start until the last delivery.
    pub delivered_per_second: f64,
    /// Time from the start until the last delivery, seconds.
    pub delivery_span_s: f64,
    /// Messages missing at the end, over all subscribers.
    pub lost: u64,
    /// Messages missing at the end, per subscriber.
    pub lost_per_subscriber: Vec<u64>,
    /// Messages received with a counter below the next one expected from their publisher
    /// (duplicates or reordering), over all subscribers.
    pub out_of_order: u64,
    /// Publish-to-deliver latency of every delivery.
    pub latency: Latency,
    /// Broker `OP_ERROR`s and transport failures, by text.
    pub errors: Errors,
    /// Time spent waiting for stragglers after the publishers stopped, seconds.
    pub drain_s: f64,
    /// CPU use from the start until the drain ended.
    pub cpu: Option<CpuUsage>,
}

/// What one subscriber saw. Shared with the waiting scenario through the atomics.
struct SubscriberState {
    received: AtomicU64,
    probe_seen: AtomicBool,
    done: AtomicBool,
}

struct SubscriberResult {
    /// Data messages received per publisher.
    per_publisher: Vec<u64>,
    out_of_order: u64,
    latency: Histogram<u64>,
    last_delivery: Option<Instant>,
    error: Option<String>,
}

struct PublisherResult {
    published: u64,
    error: Option<String>,
}

/// One connected, authenticated connection.
struct Conn {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    /// Bytes read after `OP_INFO`.
    buf: Vec<u8>,
    broker_name: String,
}

/// Runs the scenario.
///
/// # Errors
/// On invalid options, or when a connection cannot be opened or authenticated before the run.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    if opts.subscribers == 0 || opts.publishers == 0 {
        bail!("--subscribers and --publishers must be at least 1");
    }
    if opts.payload_bytes < HEADER_BYTES {
        bail!("--payload-bytes must be at least {HEADER_BYTES} (the payload header)");
    }
    if opts.ident.len() > 255 || opts.channel.len() > 255 {
        bail!("--ident and --channel are at most 255 bytes");
    }
    let connections = (opts.subscribers + opts.publishers) as u64;
    crate::scenario::check_open_files(connections + 64, crate::procfs::Process::Current)?;
    if let Some(pid) = opts.pid {
        crate::scenario::check_open_files(connections + 64, crate::procfs::Process::Pid(pid))?;
    }
    let run_id = unix_nanos();
    let notify = Arc::new(Notify::new());

    // Subscribers first, each subscribed before any publisher connects.
    let mut broker_name = String::new();
    let mut sub_tasks = Vec::with_capacity(opts.subscribers);
    let mut states = Vec::with_capacity(opts.subscribers);
    for _ in 0..opts.subscribers {
        let mut conn = connect(opts).await?;
        broker_name.clone_from(&conn.broker_name);
        let frame = subscribe_frame(&opts.ident, &opts.channel);
        conn.write.write_all(&frame).await?;
        let state = Arc::new(SubscriberState {
            received: AtomicU64::new(0),
            probe_seen: AtomicBool::new(false),
            done: AtomicBool::new(false),
        });
        states.push(state.clone());
        sub_tasks.push(tokio::spawn(subscriber(
            conn,
            state,
            notify.clone(),
            run_id,
            opts.publishers,
        )));
    }
    let mut pubs = Vec::with_capacity(opts.publishers);
    for _ in 0..opts.publishers {
        pubs.push(connect(opts).await?);
    }

    // Probe until every subscription is in place.
    let probe_deadline = Instant::now() + Duration::from_secs(30);
    let mut probe = Vec::new();
    while !states.iter().all(|s| s.probe_seen.load(Ordering::Acquire)) {
        if Instant::now() > probe_deadline {
            bail!("the subscribers did not receive a probe message within 30 s");
        }
        probe.clear();
        push_publish(
            &mut probe,
            &opts.ident,
            &opts.channel,
            &payload(opts.payload_bytes, run_id, 0, 0, KIND_PROBE),
        );
        pubs[0].write.write_all(&probe).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let start = Instant::now() + Duration::from_millis(50);
    let end = start + opts.duration;
    let mut pub_tasks = Vec::with_capacity(opts.publishers);
    for (i, conn) in pubs.into_iter().enumerate() {
        let first = match opts.rate {
            Some(rate) => start + rate.period().mul_f64(i as f64 / opts.publishers as f64),
            None => start,
        };
        pub_tasks.push(tokio::spawn(publisher(
            conn,
            PublisherPlan {
                ident: opts.ident.clone(),
                channel: opts.channel.clone(),
                payload_bytes: opts.payload_bytes,
                run_id,
                number: i as u32,
                first,
                end,
                period: opts.rate.map(Rate::period),
            },
        )));
    }
    tokio::time::sleep_until(start).await;
    let meter = CpuMeter::start(opts.pid);

    let mut published = 0;
    let mut errors = Errors::new();
    // Publisher connections stay open until the drain is over: some brokers drop what a
    // closing connection has not relayed yet. The tasks hand them back.
    let mut open_pubs = Vec::new();
    for task in pub_tasks {
        let (r, write, watch) = task.await.context("a publisher task panicked")?;
        published += r.published;
        if let Some(e) = r.error {
            *errors.entry(e).or_default() += 1;
        }
        open_pubs.push((write, watch));
    }
    let publish_end = Instant::now();

    // Drain: until everyone has everything, or nothing arrived for `--drain`.
    let mut last_total = u64::MAX;
    let mut last_progress = Instant::now();
    loop {
        let total: u64 = states
            .iter()
            .map(|s| s.received.load(Ordering::Acquire))
            .sum();
        if total >= published * opts.subscribers as u64 {
            break;
        }
        let now = Instant::now();
        if total != last_total {
            last_total = total;
            last_progress = now;
        } else if now.duration_since(last_progress) >= opts.drain
            || now.duration_since(publish_end) >= MAX_DRAIN
        {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(20), notify.notified()).await;
    }
    let drain_s = publish_end.elapsed().as_secs_f64();
    let cpu = meter.and_then(|m| m.stop());
    for s in &states {
        s.done.store(true, Ordering::Release);
    }
    for (write, watch) in open_pubs {
        if watch.is_finished() {
            *errors.entry(watch_error(watch).await).or_default() += 1;
        } else {
            watch.abort();
        }
        drop(write);
    }

    let mut delivered = 0;
    let mut lost_per_subscriber = Vec::with_capacity(opts.subscribers);
    let mut out_of_order = 0;
    let mut latency = report::latency_histogram()?;
    let mut last_delivery = start;
    for task in sub_tasks {
        let r = task.await.context("a subscriber task panicked")??;
        let got: u64 = r.per_publisher.iter().sum();
        delivered += got;
        lost_per_subscriber.push(published.saturating_sub(got));
        out_of_order += r.out_of_order;
        latency.add(&r.latency).context("cannot merge histograms")?;
        last_delivery = last_delivery.max(r.last_delivery.unwrap_or(last_delivery));
        if let Some(e) = r.error {
            *errors.entry(e).or_default() += 1;
        }
    }
    let span = last_delivery.duration_since(start).as_secs_f64();
    let per_second = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    Ok(Report {
        scenario: "hpfeeds-fanout",
        target: opts.target.authority().to_owned(),
        broker_name,
        publishers: opts.publishers,
        subscribers: opts.subscribers,
        payload_bytes: opts.payload_bytes,
        rate_per_publisher: opts.rate.map(Rate::per_second),
        duration_s: opts.duration.as_secs_f64(),
        published,
        published_per_second: per_second(published, opts.duration.as_secs_f64()),
        delivered,
        delivered_per_second: per_second(delivered, span),
        delivery_span_s: span,
        lost: lost_per_subscriber.iter().sum(),
        lost_per_subscriber,
        out_of_order,
        latency: Latency::from_nanos(&latency),
        errors,
        drain_s,
        cpu,
    })
}

/// Connects, reads `OP_INFO` and authenticates. hpfeeds sends nothing back on success; a
/// failure shows up later as an `OP_ERROR` and a closed connection.
async fn connect(opts: &Options) -> anyhow::Result<Conn> {
    let stream = TcpStream::connect(opts.target.addr())
        .await
        .with_context(|| format!("cannot connect to {}", opts.target.authority()))?;
    stream.set_nodelay(true)?;
    let (mut read, mut write) = stream.into_split();
    let mut buf = Vec::with_capacity(WRITE_BATCH);
    let (op, body) = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut read, &mut buf))
        .await
        .context("no OP_INFO from the broker within 10 s")??;
    if op != OP_INFO {
        bail!(
            "expected OP_INFO, got opcode {op}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let name_len = usize::from(*body.first().context("empty OP_INFO")?);
    let name = body.get(1..1 + name_len).context("truncated OP_INFO")?;
    let nonce = body.get(1 + name_len..).context("truncated OP_INFO")?;
    let mut hash = Sha1::new();
    hash.update(nonce);
    hash.update(opts.secret.as_bytes());
    let digest = hash.finalize();
    let mut auth = Vec::new();
    frame_header(&mut auth, OP_AUTH, 1 + opts.ident.len() + digest.len());
    push_str8(&mut auth, &opts.ident);
    auth.extend_from_slice(&digest);
    write.write_all(&auth).await?;
    Ok(Conn {
        read,
        write,
        buf,
        broker_name: String::from_utf8_lossy(name).into_owned(),
    })
}

/// Reads one whole frame, keeping any bytes after it in `buf`.
async fn read_frame(read: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> anyhow::Result<(u8, Vec<u8>)> {
    loop {
        if let Some((op, range)) = complete_frame(buf)? {
            let body = buf[range.clone()].to_vec();
            buf.drain(..range.end);
            return Ok((op, body));
        }
        let mut chunk = [0u8; 4096];
        let n = read.read(&mut chunk).await?;
        if n == 0 {
            bail!("the broker closed the connection");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The opcode and body range of the first frame in `buf`, if it is complete.
fn complete_frame(buf: &[u8]) -> anyhow::Result<Option<(u8, std::ops::Range<usize>)>> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(5..=MAX_FRAME).contains(&len) {
        bail!("bad frame length {len}");
    }
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some((buf[4], 5..len)))
}

fn frame_header(out: &mut Vec<u8>, op: u8, body_len: usize) {
    out.extend_from_slice(&((5 + body_len) as u32).to_be_bytes());
    out.push(op);
}

fn push_str8(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

fn subscribe_frame(ident: &str, channel: &str) -> Vec<u8> {
    let mut out = Vec::new();
    frame_header(&mut out, OP_SUBSCRIBE, 1 + ident.len() + channel.len());
    push_str8(&mut out, ident);
    out.extend_from_slice(channel.as_bytes());
    out
}

fn push_publish(out: &mut Vec<u8>, ident: &str, channel: &str, payload: &[u8]) {
    frame_header(
        out,
        OP_PUBLISH,
        2 + ident.len() + channel.len() + payload.len(),
    );
    push_str8(out, ident);
    push_str8(out, channel);
    out.extend_from_slice(payload);
}

/// A payload: run id, send time, publisher, counter, kind, then `x` padding to `bytes`.
fn payload(bytes: usize, run_id: u64, publisher: u32, counter: u64, kind: u8) -> Vec<u8> {
    let mut p = Vec::with_capacity(bytes);
    p.extend_from_slice(&run_id.to_be_bytes());
    p.extend_from_slice(&unix_nanos().to_be_bytes());
    p.extend_from_slice(&publisher.to_be_bytes());
    p.extend_from_slice(&counter.to_be_bytes());
    p.push(kind);
    p.resize(bytes, b'x');
    p
}

/// The fields of a payload header: run id, send time, publisher, counter, kind.
fn parse_payload(p: &[u8]) -> Option<(u64, u64, u32, u64, u8)> {
    let u64_at = |i: usize| Some(u64::from_be_bytes(p.get(i..i + 8)?.try_into().ok()?));
    let publisher = u32::from_be_bytes(p.get(16..20)?.try_into().ok()?);
    Some((u64_at(0)?, u64_at(8)?, publisher, u64_at(20)?, *p.get(28)?))
}

/// The payload of an `OP_PUBLISH` body: after str8 ident and str8 channel.
fn publish_payload(body: &[u8]) -> Option<&[u8]> {
    let ident_len = usize::from(*body.first()?);
    let chan_at = 1 + ident_len;
    let chan_len = usize::from(*body.get(chan_at)?);
    body.get(chan_at + 1 + chan_len..)
}

struct PublisherPlan {
    ident: String,
    channel: String,
    payload_bytes: usize,
    run_id: u64,
    number: u32,
    first: Instant,
    end: Instant,
    period: Option<Duration>,
}

/// Publishes until `plan.end`; hands back the write half (dropping it would close the
/// connection before the drain) and the watch of what the broker sends.
async fn publisher(
    mut conn: Conn,
    plan: PublisherPlan,
) -> (PublisherResult, OwnedWriteHalf, ErrorWatch) {
    let mut result = PublisherResult {
        published: 0,
        error: None,
    };
    // Anything the broker sends a publisher is an error (it subscribes to nothing).
    let mut err_buf = std::mem::take(&mut conn.buf);
    let mut read = conn.read;
    let error_watch: ErrorWatch =
        tokio::spawn(async move { read_frame(&mut read, &mut err_buf).await });
    let mut out = Vec::with_capacity(WRITE_BATCH + plan.payload_bytes + 600);
    tokio::time::sleep_until(plan.first).await;
    let mut next = plan.first;
    let outcome: anyhow::Result<()> = async {
        loop {
            let now = Instant::now();
            if now >= plan.end || error_watch.is_finished() {
                return Ok(());
            }
            out.clear();
            match plan.period {
                Some(period) => {
                    if now < next {
                        tokio::time::sleep_until(next).await;
                        continue;
                    }
                    next += period;
                    push_publish(
                        &mut out,
                        &plan.ident,
                        &plan.channel,
                        &payload(
                            plan.payload_bytes,
                            plan.run_id,
                            plan.number,
                            result.published,
                            KIND_DATA,
                        ),
                    );
                    conn.write.write_all(&out).await?;
                    result.published += 1;
                }
                None => {
                    let mut n = 0;
                    while out.len() < WRITE_BATCH {
                        push_publish(
                            &mut out,
                            &plan.ident,
                            &plan.channel,
                            &payload(
                                plan.payload_bytes,
                                plan.run_id,
                                plan.number,
                                result.published + n,
                                KIND_DATA,
                            ),
                        );
                        n += 1;
                    }
                    conn.write.write_all(&out).await?;
                    result.published += n;
                }
            }
        }
    }
    .await;
    if let Err(e) = outcome {
        result.error = Some(format!("publisher transport: {e}"));
    }
    (result, conn.write, error_watch)
}

/// What a publisher's error watch ends with: the first frame the broker sent it, or the read
/// error.
type ErrorWatch = tokio::task::JoinHandle<anyhow::Result<(u8, Vec<u8>)>>;

/// The error text of a finished error watch.
async fn watch_error(watch: ErrorWatch) -> String {
    match watch.await {
        Ok(Ok((OP_ERROR, text))) => format!("OP_ERROR: {}", String::from_utf8_lossy(&text)),
        Ok(Ok((op, _))) => format!("unexpected opcode {op} to a publisher"),
        Ok(Err(e)) => format!("publisher: {e}"),
        Err(e) => format!("publisher error watch: {e}"),
    }
}

async fn subscriber(
    mut conn: Conn,
    state: Arc<SubscriberState>,
    notify: Arc<Notify>,
    run_id: u64,
    publishers: usize,
) -> anyhow::Result<SubscriberResult> {
    let mut result = SubscriberResult {
        per_publisher: vec![0; publishers],
        out_of_order: 0,
        latency: report::latency_histogram()?,
        last_delivery: None,
        error: None,
    };
    let mut next_counter = vec![0u64; publishers];
    let mut buf = std::mem::take(&mut conn.buf);
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        // Take every complete frame in the buffer.
        let mut at = 0;
        let mut got = 0u64;
        while let Some((op, range)) = complete_frame(&buf[at..])? {
            let body = &buf[at + range.start..at + range.end];
            at += range.end;
            match op {
                OP_PUBLISH => {
                    let Some((run, sent, publisher, counter, kind)) =
                        publish_payload(body).and_then(parse_payload)
                    else {
                        continue;
                    };
                    if run != run_id {
                        continue;
                    }
                    if kind == KIND_PROBE {
                        state.probe_seen.store(true, Ordering::Release);
                        continue;
                    }
                    let Some(n) = result.per_publisher.get_mut(publisher as usize) else {
                        continue;
                    };
                    let now = unix_nanos();
                    result
                        .latency
                        .saturating_record(now.saturating_sub(sent).max(1));
                    let expected = &mut next_counter[publisher as usize];
                    if counter < *expected {
                        result.out_of_order += 1;
                    } else {
                        *n += 1;
                        *expected = counter + 1;
                    }
                    got += 1;
                }
                OP_ERROR => {
                    result.error = Some(format!("OP_ERROR: {}", String::from_utf8_lossy(body)));
                }
                _ => {}
            }
        }
        buf.drain(..at);
        if got > 0 {
            result.last_delivery = Some(Instant::now());
            state.received.fetch_add(got, Ordering::AcqRel);
            notify.notify_one();
        }
        if result.error.is_some() {
            return Ok(result);
        }
        let read = tokio::time::timeout(Duration::from_millis(100), conn.read.read(&mut chunk));
        match read.await {
            Err(_) => {
                if state.done.load(Ordering::Acquire) {
                    return Ok(result);
                }
            }
            Ok(Ok(0)) => {
                if !state.done.load(Ordering::Acquire) {
                    result.error = Some("subscriber: the broker closed the connection".into());
                }
                return Ok(result);
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => {
                result.error = Some(format!("subscriber transport: {e}"));
                return Ok(result);
            }
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = match self.rate_per_publisher {
            Some(r) => format!("{r}/s each"),
            None => "as fast as possible".to_owned(),
        };
        let mut t = Table::new(format!(
            "hpfeeds-fanout  target={} broker={:?} publishers={} ({rate}) subscribers={} \
             payload={} B duration={} s",
            self.target,
            self.broker_name,
            self.publishers,
            self.subscribers,
            self.payload_bytes,
            self.duration_s
        ));
        t.row(
            "published",
            format!(
                "{} ({:.0}/s)",
                report::count(self.published),
                self.published_per_second
            ),
        );
        t.row(
            "delivered",
            format!(
                "{} in {:.2} s",
                report::count(self.delivered),
                self.delivery_span_s
            ),
        );
        t.row("delivered/s", format!("{:.0}", self.delivered_per_second));
        let worst = self.lost_per_subscriber.iter().max().copied().unwrap_or(0);
        t.row(
            "lost",
            format!(
                "{} of {} (worst subscriber {})",
                report::count(self.lost),
                report::count(self.published * self.subscribers as u64),
                report::count(worst)
            ),
        );
        t.row("out of order", report::count(self.out_of_order));
        self.latency.rows(&mut t, "latency");
        t.row("errors", report::errors_text(&self.errors));
        t.row("drain", format!("{:.2} s", self.drain_s));
        if let Some(cpu) = &self.cpu {
            cpu.row(&mut t);
        }
        t.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let p = payload(1024, 7, 3, 42, KIND_DATA);
        assert_eq!(p.len(), 1024);
        let (run, sent, publisher, counter, kind) = parse_payload(&p).unwrap();
        assert_eq!((run, publisher, counter, kind), (7, 3, 42, KIND_DATA));
        assert!(sent > 0);
    }

    #[test]
    fn publish_frames_parse_back() {
        let mut out = Vec::new();
        push_publish(&mut out, "bench", "chan", b"hello");
        let (op, range) = complete_frame(&out).unwrap().unwrap();
        assert_eq!(op, OP_PUBLISH);
        assert_eq!(range.end, out.len());
        assert_eq!(publish_payload(&out[range]).unwrap(), b"hello");
        assert!(complete_frame(&out[..out.len() - 1]).unwrap().is_none());
        let sub = subscribe_frame("bench", "chan");
        assert_eq!(&sub[..5], &[0, 0, 0, 15, OP_SUBSCRIBE]);
        assert_eq!(&sub[5..], b"\x05benchchan");
    }
}
