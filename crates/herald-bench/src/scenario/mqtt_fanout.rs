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

pub use super::fanout::Topics;
use super::fanout::{self, Figures, Layout, Notes, Publish, Tally};
use super::mqtt::{self, Broker, Client, Progress};
use crate::report::{self, CpuMeter, Table};
use crate::scenario::unix_nanos;

/// Read buffer growth step of a subscriber.
const SUB_READ_CHUNK: usize = 128 * 1024;

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
    #[command(flatten)]
    #[allow(missing_docs)]
    pub publish: Publish,
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
    /// Publishes, deliveries, loss and latency. Expected deliveries are `published ×
    /// subscribers` with one topic; with distinct topics the sum over the subscribers of what
    /// their publisher published.
    #[serde(flatten)]
    pub figures: Figures,
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
    let publish = &opts.publish;
    if publish.payload_bytes < mqtt::HEADER_BYTES {
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
    let source_of = |j: usize| opts.topics.source_of(j, opts.publishers);
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
            progress.only(j, own);
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
            .subscribe(&topic, publish.qos, broker.connect_timeout)
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
                mqtt::payload(publish.payload_bytes, run_id, i as u32, 0, mqtt::KIND_PROBE),
            );
            publisher.write.write_all(&probe).await?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the last probes arrive before counting starts.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let run = fanout::Run {
        run_id,
        encoding: mqtt::Encoding::Binary,
        progress: &progress,
    };
    let running = fanout::start(pubs, publish, run, topic_of);
    let start = running.start;
    tokio::time::sleep_until(start).await;
    let meter = CpuMeter::start(opts.pid);
    let mut published = running.finish().await?;
    // What each subscriber should have received.
    let expected_by: Vec<u64> = (0..opts.subscribers)
        .map(|j| published.of(source_of(j)))
        .collect();
    let expected: u64 = expected_by.iter().sum();

    // Drain: until everyone has everything, or nothing arrived for `--drain`.
    let total_received = || {
        states
            .iter()
            .map(|s| s.received.load(Ordering::Acquire))
            .sum()
    };
    let drain_s = fanout::drain(
        total_received,
        expected,
        &notify,
        publish.drain,
        published.end,
    )
    .await;
    let cpu = meter.and_then(|m| m.stop());
    for s in &states {
        s.done.store(true, Ordering::Release);
    }
    let _ = stop_tx.send(true);
    published.disconnect(broker.protocol).await;

    let mut tallies = Vec::with_capacity(opts.subscribers);
    for (task, want) in sub_tasks.into_iter().zip(expected_by) {
        let r = task.await.context("a subscriber task panicked")??;
        let got: u64 = r.per_publisher.iter().sum();
        tallies.push(Tally {
            delivered: got,
            bytes: got * publish.payload_bytes as u64,
            expected: want,
            lost: want.saturating_sub(got),
            out_of_order: r.out_of_order,
            latency: r.latency,
            last_delivery: r.last_delivery,
            error: r.error,
        });
    }
    let layout = Layout {
        publish,
        topics: opts.topics,
        publishers: opts.publishers,
        start,
    };
    Ok(Report {
        scenario: "mqtt-fanout",
        target: broker.addr.authority().to_owned(),
        protocol: mqtt::protocol_name(broker.protocol),
        figures: Figures::new(layout, published, tallies, drain_s, cpu)?,
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
            // Publishes are read in place; anything else goes through the codec.
            let p = match reader.buffered_publish(protocol) {
                Some(p) => p,
                None => match reader.buffered() {
                    Ok(Some(Packet::Publish(p))) => mqtt::PublishSeen {
                        qos: p.qos,
                        packet_id: p.packet_id,
                        header: mqtt::parse_payload(&p.payload),
                    },
                    Ok(Some(Packet::PingResp)) => continue,
                    Ok(Some(Packet::Disconnect(d))) => {
                        result.error =
                            Some(format!("DISCONNECT 0x{:02x} to a subscriber", d.reason));
                        continue;
                    }
                    Ok(Some(other)) => {
                        result.error = Some(format!("unexpected {} to a subscriber", other.kind()));
                        continue;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        result.error = Some(format!("subscriber: {e:#}"));
                        break;
                    }
                },
            };
            if p.qos == QoS::AtLeastOnce {
                mqtt::push_puback(&mut acks, protocol, p.packet_id);
            }
            let Some(h) = p.header else {
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
        let mut t = Table::new(format!(
            "mqtt-fanout  target={} mqtt={} qos={} {}",
            self.target,
            self.protocol,
            self.figures.qos,
            self.figures.title()
        ));
        self.figures.rows(&mut t, &Notes::default());
        t.fmt(f)
    }
}
