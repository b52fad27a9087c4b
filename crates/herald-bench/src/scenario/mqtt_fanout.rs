//! `mqtt-fanout`: publish-to-deliver throughput, latency and loss of an MQTT broker with many
//! subscribers on one topic, or on one topic per publisher (Herald's `--mqtt` listener,
//! Mosquitto, nats-server's MQTT listener).
//!
//! The scenario connects `--subscribers` clients that subscribe to `--topic` at `--qos` (each
//! waits for its SUBACK), then `--publishers` clients. With `--topics distinct` publisher `i`
//! publishes to `<topic>/<i>` instead and subscriber `j` subscribes to `<topic>/<j mod
//! publishers>`: independent streams, one publisher each, so the broker's routing rather than
//! one topic's fan-out is loaded. Before the measurement the publishers send probe messages
//! (to their topics) until every subscriber has received one. Each publisher then
//! publishes `--payload-bytes` payloads at `--qos` for `--duration`: as fast as allowed, or
//! `--rate` messages per second each. A payload carries a run id, its send time (wall clock,
//! ns), the publisher's number and its counter, then padding.
//!
//! **As fast as allowed** means: QoS 0 has no acknowledgement, so a publisher could write
//! faster than the broker delivers and only the socket buffers and the broker's queues would
//! bound the backlog (and the latency would be the time spent in them). Instead a publisher
//! stays at most `--window` messages ahead of the *slowest* subscriber (each subscriber
//! reports the highest counter it has seen, so lost messages do not freeze the window; a
//! publisher held back a whole second publishes another window anyway and counts a stall).
//! The run then measures the broker's sustainable delivery rate with a bounded queue, and the
//! latency is mostly the window's worth of queueing (Little's law: about `window / publish
//! rate`); `--window 0` removes the bound. At QoS 1 a publisher also has at most `--inflight`
//! publishes unacknowledged, and subscribers answer every delivery with a PUBACK.
//!
//! Each subscriber counts what it receives per publisher, notes counters that arrive out of
//! order or twice, and records send-to-receive latency in an HDR histogram (both ends are this
//! process, so the clocks agree). After the publishers stop the scenario waits until every
//! subscriber has everything or nothing arrived for `--drain`. Loss is `published − received`
//! per subscriber, counting only the publishers whose topic it subscribed to (QoS 0 allows
//! loss; it is reported, not hidden). Delivered messages/s counts
//! every delivery to every subscriber, divided by the time from the start to the last
//! delivery.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use herald_mqtt_codec::{BytesMut, Packet, QoS};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::mqtt::{self, Broker, Client, Progress, PublisherPlan};
use crate::args::{Rate, parse_duration};
use crate::report::{self, CpuMeter, CpuUsage, Errors, Latency, Table};
use crate::scenario::unix_nanos;

/// Upper bound of the drain after the publishers stop, whatever `--drain` says.
const MAX_DRAIN: Duration = Duration::from_secs(120);
/// Read buffer growth step of a subscriber.
const SUB_READ_CHUNK: usize = 128 * 1024;

/// Which topics the publishers publish to (`--topics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Topics {
    /// Every publisher publishes to `--topic`, every subscriber subscribes to it.
    One,
    /// Publisher `i` publishes to `<topic>/<i>`; subscriber `j` subscribes to
    /// `<topic>/<j mod publishers>` (needs at least as many subscribers as publishers).
    Distinct,
}

impl Topics {
    /// `one` or `distinct`.
    pub fn name(self) -> &'static str {
        match self {
            Topics::One => "one",
            Topics::Distinct => "distinct",
        }
    }
}

/// Flags of `herald-bench mqtt-fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub broker: Broker,
    /// Topic published and subscribed to (with `--topics distinct`: their prefix).
    #[arg(long, default_value = "bench/fanout")]
    pub topic: String,
    /// One topic for all, or one topic per publisher (`distinct`).
    #[arg(long, value_enum, default_value_t = Topics::One)]
    pub topics: Topics,
    /// Subscriber connections.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Size of each payload, at least 29 bytes (the header); the rest is padding.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// QoS of the publishes and of the subscriptions: 0 or 1.
    #[arg(long, value_parser = mqtt::parse_qos, default_value = "0")]
    pub qos: QoS,
    /// Messages per second per publisher. [default: as fast as the window allows]
    #[arg(long)]
    pub rate: Option<Rate>,
    /// Most messages a publisher may be ahead of the slowest subscriber; 0 for no bound.
    #[arg(long, default_value_t = 1000)]
    pub window: u64,
    /// QoS 1: most unacknowledged publishes per publisher (capped by the broker's Receive
    /// Maximum on MQTT 5).
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,
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

/// Result of an `mqtt-fanout` run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `mqtt-fanout`.
    pub scenario: &'static str,
    /// The listener loaded (`host:port`).
    pub target: String,
    /// `3.1.1` or `5`.
    pub protocol: &'static str,
    /// QoS of publishes and subscriptions.
    pub qos: u8,
    /// `one` (all on `--topic`) or `distinct` (one topic per publisher).
    pub topics: Topics,
    /// Publisher connections.
    pub publishers: usize,
    /// Subscriber connections.
    pub subscribers: usize,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Messages per second per publisher, or `None` for as fast as the window allows.
    pub rate_per_publisher: Option<f64>,
    /// The window (0: none).
    pub window: u64,
    /// QoS 1 publishes unacknowledged at once per publisher.
    pub inflight: usize,
    /// Publishing time, seconds.
    pub duration_s: f64,
    /// Messages published (written to the sockets) by all publishers.
    pub published: u64,
    /// `published` over the publishing time.
    pub published_per_second: f64,
    /// QoS 1: publishes acknowledged.
    pub acked: u64,
    /// QoS 1: send-to-PUBACK latency.
    pub ack_latency: Latency,
    /// Deliveries to all subscribers (each subscriber should get every message).
    pub delivered: u64,
    /// `delivered` over the time from the start until the last delivery.
    pub delivered_per_second: f64,
    /// Payload bytes delivered per second.
    pub delivered_bytes_per_second: f64,
    /// Time from the start until the last delivery, seconds.
    pub delivery_span_s: f64,
    /// Deliveries expected: `published × subscribers` with one topic; with distinct topics
    /// the sum over the subscribers of what their publisher published.
    pub expected: u64,
    /// Messages missing at the end, over all subscribers.
    pub lost: u64,
    /// Messages missing at the end, per subscriber.
    pub lost_per_subscriber: Vec<u64>,
    /// Messages received with a counter below the next one expected from their publisher
    /// (duplicates or reordering), over all subscribers.
    pub out_of_order: u64,
    /// Times a publisher waited a whole second for its window and went on anyway.
    pub window_stalls: u64,
    /// Publish-to-deliver latency of every delivery.
    pub latency: Latency,
    /// Transport and protocol failures, by text.
    pub errors: Errors,
    /// Time spent waiting for stragglers after the publishers stopped, seconds.
    pub drain_s: f64,
    /// CPU use from the start until the drain ended.
    pub cpu: Option<CpuUsage>,
}

/// What one subscriber saw, shared with the scenario through the atomics.
struct SubscriberState {
    received: AtomicU64,
    probe_seen: AtomicBool,
    done: AtomicBool,
}

struct SubscriberResult {
    per_publisher: Vec<u64>,
    out_of_order: u64,
    latency: Histogram<u64>,
    last_delivery: Option<Instant>,
    error: Option<String>,
}

/// Runs the scenario.
///
/// # Errors
/// On invalid options, or when a connection cannot be opened, authenticated or subscribed
/// before the run.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    if opts.subscribers == 0 || opts.publishers == 0 {
        bail!("--subscribers and --publishers must be at least 1");
    }
    if opts.payload_bytes < mqtt::HEADER_BYTES {
        bail!(
            "--payload-bytes must be at least {} (the payload header)",
            mqtt::HEADER_BYTES
        );
    }
    if opts.topic.is_empty() || opts.topic.contains(['+', '#']) {
        bail!("--topic must be a topic name without wildcards");
    }
    if opts.topics == Topics::Distinct && opts.subscribers < opts.publishers {
        bail!("--topics distinct needs at least as many --subscribers as --publishers");
    }
    // The publisher whose messages subscriber `j` gets (`None`: all of them).
    let source_of = |j: usize| match opts.topics {
        Topics::One => None,
        Topics::Distinct => Some(j % opts.publishers),
    };
    let topic_of = |publisher: usize| match opts.topics {
        Topics::One => opts.topic.clone(),
        Topics::Distinct => format!("{}/{publisher}", opts.topic),
    };
    let connections = (opts.subscribers + opts.publishers) as u64;
    super::check_open_files(connections + 64, crate::procfs::Process::Current)?;
    if let Some(pid) = opts.pid {
        super::check_open_files(connections + 64, crate::procfs::Process::Pid(pid))?;
    }
    let run_id = unix_nanos();
    let notify = Arc::new(Notify::new());
    let progress = Arc::new(Progress::new(opts.subscribers, opts.publishers));
    // A subscriber never holds back the publishers whose topic it did not subscribe to.
    for j in 0..opts.subscribers {
        if let Some(own) = source_of(j) {
            for p in (0..opts.publishers).filter(|p| *p != own) {
                progress.advance(j, p, u64::MAX);
            }
        }
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let broker = &opts.broker;

    // Subscribers first, each subscribed (SUBACK) before any publisher connects.
    let mut sub_tasks = Vec::with_capacity(opts.subscribers);
    let mut states = Vec::with_capacity(opts.subscribers);
    for i in 0..opts.subscribers {
        let mut client = Client::connect(
            broker,
            &mqtt::client_id(run_id, 's', i),
            None,
            SUB_READ_CHUNK,
        )
        .await
        .with_context(|| format!("subscriber {i}"))?;
        let topic = source_of(i).map_or_else(|| opts.topic.clone(), topic_of);
        client
            .subscribe(&topic, opts.qos, broker.connect_timeout)
            .await
            .with_context(|| format!("subscriber {i}"))?;
        let state = Arc::new(SubscriberState {
            received: AtomicU64::new(0),
            probe_seen: AtomicBool::new(false),
            done: AtomicBool::new(false),
        });
        states.push(state.clone());
        sub_tasks.push(tokio::spawn(subscriber(
            client,
            SubscriberCtx {
                number: i,
                state,
                notify: notify.clone(),
                progress: progress.clone(),
                run_id,
                publishers: opts.publishers,
                stop: stop_rx.clone(),
            },
        )));
    }
    let mut pubs = Vec::with_capacity(opts.publishers);
    for i in 0..opts.publishers {
        pubs.push(
            Client::connect(broker, &mqtt::client_id(run_id, 'p', i), None, 16 * 1024)
                .await
                .with_context(|| format!("publisher {i}"))?,
        );
    }

    // Probe (QoS 0) until every subscriber has seen one.
    let probe_deadline = Instant::now() + Duration::from_secs(30);
    let mut probe = BytesMut::new();
    while !states.iter().all(|s| s.probe_seen.load(Ordering::Acquire)) {
        if Instant::now() > probe_deadline {
            bail!("the subscribers did not receive a probe message within 30 s");
        }
        if let Some(i) = states
            .iter()
            .position(|s| s.done.load(Ordering::Acquire) && !s.probe_seen.load(Ordering::Acquire))
        {
            bail!("subscriber {i} failed before the run");
        }
        // One topic: the first publisher probes it; distinct topics: each publisher its own.
        let probing = match opts.topics {
            Topics::One => 1,
            Topics::Distinct => pubs.len(),
        };
        for (i, publisher) in pubs.iter_mut().take(probing).enumerate() {
            probe.clear();
            mqtt::push_publish(
                &mut probe,
                broker.protocol,
                &topic_of(i),
                QoS::AtMostOnce,
                0,
                mqtt::payload(opts.payload_bytes, run_id, i as u32, 0, mqtt::KIND_PROBE),
            );
            publisher.write.write_all(&probe).await?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the last probes arrive before counting starts.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let start = Instant::now() + Duration::from_millis(50);
    let end = start + opts.duration;
    let mut pub_tasks = Vec::with_capacity(opts.publishers);
    for (i, client) in pubs.into_iter().enumerate() {
        let first = match opts.rate {
            Some(rate) => start + rate.period().mul_f64(i as f64 / opts.publishers as f64),
            None => start,
        };
        let plan = PublisherPlan {
            topic: topic_of(i),
            qos: opts.qos,
            payload_bytes: opts.payload_bytes,
            run_id,
            number: i as u32,
            first,
            end,
            period: opts.rate.map(Rate::period),
            inflight: opts.inflight,
            window: (opts.window > 0).then(|| (progress.clone(), opts.window)),
            drain: opts.drain.max(Duration::from_secs(5)),
        };
        pub_tasks.push(tokio::spawn(mqtt::publisher(client, plan)));
    }
    tokio::time::sleep_until(start).await;
    let meter = CpuMeter::start(opts.pid);

    let mut published = 0;
    let mut published_by = Vec::with_capacity(opts.publishers);
    let mut acked = 0;
    let mut window_stalls = 0;
    let mut ack_latency = report::latency_histogram()?;
    let mut errors = Errors::new();
    // Publisher connections stay open until the drain is over.
    let mut open_pubs = Vec::new();
    for task in pub_tasks {
        let (r, write) = task.await.context("a publisher task panicked")?;
        published += r.published;
        published_by.push(r.published);
        acked += r.acked;
        window_stalls += r.window_stalls;
        ack_latency
            .add(&r.ack_latency)
            .context("cannot merge histograms")?;
        for (k, v) in r.errors {
            *errors.entry(k).or_default() += v;
        }
        if r.unacked > 0 {
            *errors
                .entry("QoS 1 publishes never acknowledged".into())
                .or_default() += r.unacked;
        }
        open_pubs.push(write);
    }
    let publish_end = Instant::now();
    // What each subscriber should have received.
    let expected_by: Vec<u64> = (0..opts.subscribers)
        .map(|j| source_of(j).map_or(published, |p| published_by[p]))
        .collect();
    let expected: u64 = expected_by.iter().sum();

    // Drain: until everyone has everything, or nothing arrived for `--drain`.
    let mut last_total = u64::MAX;
    let mut last_progress = Instant::now();
    loop {
        let total: u64 = states
            .iter()
            .map(|s| s.received.load(Ordering::Acquire))
            .sum();
        if total >= expected {
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
    let _ = stop_tx.send(true);
    for mut write in open_pubs {
        let _ = write.write_all(&mqtt::disconnect(broker.protocol)).await;
    }

    let mut delivered = 0;
    let mut lost_per_subscriber = Vec::with_capacity(opts.subscribers);
    let mut out_of_order = 0;
    let mut latency = report::latency_histogram()?;
    let mut last_delivery = start;
    for (task, want) in sub_tasks.into_iter().zip(&expected_by) {
        let r = task.await.context("a subscriber task panicked")??;
        let got: u64 = r.per_publisher.iter().sum();
        delivered += got;
        lost_per_subscriber.push(want.saturating_sub(got));
        out_of_order += r.out_of_order;
        latency.add(&r.latency).context("cannot merge histograms")?;
        last_delivery = last_delivery.max(r.last_delivery.unwrap_or(last_delivery));
        if let Some(e) = r.error {
            *errors.entry(e).or_default() += 1;
        }
    }
    let span = last_delivery.duration_since(start).as_secs_f64();
    let per_second = |n: f64, s: f64| if s > 0.0 { n / s } else { 0.0 };
    Ok(Report {
        scenario: "mqtt-fanout",
        target: broker.addr.authority().to_owned(),
        protocol: mqtt::protocol_name(broker.protocol),
        qos: opts.qos as u8,
        topics: opts.topics,
        publishers: opts.publishers,
        subscribers: opts.subscribers,
        payload_bytes: opts.payload_bytes,
        rate_per_publisher: opts.rate.map(Rate::per_second),
        window: opts.window,
        inflight: opts.inflight,
        duration_s: opts.duration.as_secs_f64(),
        published,
        published_per_second: per_second(published as f64, opts.duration.as_secs_f64()),
        acked,
        ack_latency: Latency::from_nanos(&ack_latency),
        delivered,
        delivered_per_second: per_second(delivered as f64, span),
        delivered_bytes_per_second: per_second(
            (delivered * opts.payload_bytes as u64) as f64,
            span,
        ),
        delivery_span_s: span,
        expected,
        lost: lost_per_subscriber.iter().sum(),
        lost_per_subscriber,
        out_of_order,
        window_stalls,
        latency: Latency::from_nanos(&latency),
        errors,
        drain_s,
        cpu,
    })
}

struct SubscriberCtx {
    number: usize,
    state: Arc<SubscriberState>,
    notify: Arc<Notify>,
    progress: Arc<Progress>,
    run_id: u64,
    publishers: usize,
    /// Becomes true when the drain is over.
    stop: watch::Receiver<bool>,
}

async fn subscriber(client: Client, mut ctx: SubscriberCtx) -> anyhow::Result<SubscriberResult> {
    let mut result = SubscriberResult {
        per_publisher: vec![0; ctx.publishers],
        out_of_order: 0,
        latency: report::latency_histogram()?,
        last_delivery: None,
        error: None,
    };
    let protocol = client.protocol;
    let mut reader = client.reader;
    let mut write = client.write;
    let mut next_counter = vec![0u64; ctx.publishers];
    let mut acks = BytesMut::new();
    let mut moved = vec![false; ctx.publishers];
    let ping_every = Duration::from_secs(u64::from(mqtt::KEEP_ALIVE_SECS) / 2);
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    loop {
        // Take every complete packet in the buffer.
        let mut got = 0u64;
        loop {
            let packet = match reader.buffered() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    result.error = Some(format!("subscriber: {e:#}"));
                    break;
                }
            };
            match packet {
                Packet::Publish(p) => {
                    if p.qos == QoS::AtLeastOnce {
                        mqtt::push_puback(&mut acks, protocol, p.packet_id);
                    }
                    let Some(h) = mqtt::parse_payload(&p.payload) else {
                        continue;
                    };
                    if h.run_id != ctx.run_id {
                        continue;
                    }
                    if h.kind == mqtt::KIND_PROBE {
                        ctx.state.probe_seen.store(true, Ordering::Release);
                        continue;
                    }
                    let publisher = h.publisher as usize;
                    let Some(n) = result.per_publisher.get_mut(publisher) else {
                        continue;
                    };
                    let now = unix_nanos();
                    result
                        .latency
                        .saturating_record(now.saturating_sub(h.sent).max(1));
                    let expected = &mut next_counter[publisher];
                    if h.counter < *expected {
                        result.out_of_order += 1;
                    } else {
                        *n += 1;
                        *expected = h.counter + 1;
                        moved[publisher] = true;
                    }
                    got += 1;
                }
                Packet::PingResp => {}
                Packet::Disconnect(d) => {
                    result.error = Some(format!("DISCONNECT 0x{:02x} to a subscriber", d.reason));
                }
                other => {
                    result.error = Some(format!("unexpected {} to a subscriber", other.kind()));
                }
            }
        }
        if !acks.is_empty() {
            if let Err(e) = write.write_all(&acks).await {
                result
                    .error
                    .get_or_insert(format!("subscriber transport: {e}"));
            }
            acks.clear();
        }
        for (p, m) in moved.iter_mut().enumerate() {
            if *m {
                ctx.progress.advance(ctx.number, p, next_counter[p]);
                ctx.progress.moved[p].notify_one();
                *m = false;
            }
        }
        if got > 0 {
            result.last_delivery = Some(Instant::now());
            ctx.state.received.fetch_add(got, Ordering::AcqRel);
            ctx.notify.notify_one();
        }
        if result.error.is_some() {
            break;
        }
        tokio::select! {
            read = reader.fill() => match read {
                Ok(0) => {
                    if !ctx.state.done.load(Ordering::Acquire) {
                        result.error = Some("subscriber: the broker closed the connection".into());
                    }
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    result.error = Some(format!("subscriber transport: {e}"));
                    break;
                }
            },
            _ = ping.tick() => {
                if let Err(e) = write.write_all(&mqtt::pingreq(protocol)).await {
                    result.error = Some(format!("subscriber transport: {e}"));
                    break;
                }
            }
            _ = ctx.stop.changed() => break,
        }
    }
    // No longer holding the publishers back, and marked done for the probe check.
    ctx.progress.release(ctx.number);
    ctx.state.done.store(true, Ordering::Release);
    let _ = write.write_all(&mqtt::disconnect(protocol)).await;
    Ok(result)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = match self.rate_per_publisher {
            Some(r) => format!("{r}/s each"),
            None if self.window > 0 => format!("window {}", self.window),
            None => "as fast as possible".to_owned(),
        };
        let mut t = Table::new(format!(
            "mqtt-fanout  target={} mqtt={} qos={} topics={} publishers={} ({rate}) \
             subscribers={} payload={} B duration={} s",
            self.target,
            self.protocol,
            self.qos,
            self.topics.name(),
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
        if self.qos > 0 {
            t.row("acknowledged", report::count(self.acked));
            self.ack_latency.rows(&mut t, "ack latency");
        }
        t.row(
            "delivered",
            format!(
                "{} in {:.2} s",
                report::count(self.delivered),
                self.delivery_span_s
            ),
        );
        t.row(
            "delivered/s",
            format!(
                "{:.0} ({}/s of payload)",
                self.delivered_per_second,
                report::bytes(self.delivered_bytes_per_second)
            ),
        );
        let worst = self.lost_per_subscriber.iter().max().copied().unwrap_or(0);
        t.row(
            "lost",
            format!(
                "{} of {} (worst subscriber {})",
                report::count(self.lost),
                report::count(self.expected),
                report::count(worst)
            ),
        );
        t.row("out of order", report::count(self.out_of_order));
        if self.window > 0 {
            t.row("window stalls", report::count(self.window_stalls));
        }
        self.latency.rows(&mut t, "latency");
        t.row("errors", report::errors_text(&self.errors));
        t.row("drain", format!("{:.2} s", self.drain_s));
        if let Some(cpu) = &self.cpu {
            cpu.row(&mut t);
        }
        t.fmt(f)
    }
}
