//! `mqtt-publish`: acknowledged QoS 1 publishes per second from many publishers, and the
//! publish-to-PUBACK latency.
//!
//! `--publishers` clients each publish `--payload-bytes` payloads to their own topic
//! (`<prefix>/<i>`, so nothing is delivered anywhere: this measures the broker's publish
//! path) for `--duration`, each keeping `--inflight` publishes unacknowledged (a window:
//! a new publish goes out as soon as a PUBACK comes back; capped by the broker's Receive
//! Maximum on MQTT 5). The default, 16 per publisher, is what a client library with a small
//! in-flight window does (Paho's default "max inflight" is 10 to 20); 50 × 16 = 800
//! publishes in flight in total stays below both brokers' limits (Herald's Receive Maximum
//! is 256 per connection).
//!
//! Throughput is PUBACKs received divided by the time from the start to the last PUBACK.
//! With Herald's durable topics (the default) a PUBACK means the event is committed, i.e.
//! written and fsynced in a group commit; with memory-only topics, and with Mosquitto (which
//! keeps nothing on disk by default), it means accepted in memory.
//! `--qos 0` publishes without acknowledgements: then only the publish rate is reported.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, bail};
use herald_mqtt_codec::QoS;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::mqtt::{self, Broker, Client, PublisherPlan};
use crate::args::{Rate, parse_duration};
use crate::report::{self, CpuMeter, CpuUsage, Errors, Latency, Table};
use crate::scenario::unix_nanos;

/// Flags of `herald-bench mqtt-publish`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub broker: Broker,
    /// Publisher `i` publishes to `<prefix>/<i>`.
    #[arg(long, default_value = "bench/publish")]
    pub prefix: String,
    /// Every publish goes to a topic not used before (`<prefix>/<i>/<k>` for publisher
    /// `i`'s `k`-th publish), so the broker creates a topic per publish: the cost of topic
    /// creation, for instance beside many idle subscribers (`mqtt-idle`).
    #[arg(long)]
    pub new_topics: bool,
    /// Publisher connections.
    #[arg(long, default_value_t = 50)]
    pub publishers: usize,
    /// Size of each payload, at least 29 bytes (the header); the rest is padding.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// QoS of the publishes: 0 or 1.
    #[arg(long, value_parser = mqtt::parse_qos, default_value = "1")]
    pub qos: QoS,
    /// QoS 1: most unacknowledged publishes per publisher.
    #[arg(long, default_value_t = 16)]
    pub inflight: usize,
    /// Messages per second per publisher. [default: as fast as the acknowledgements allow]
    #[arg(long)]
    pub rate: Option<Rate>,
    /// How long the publishers publish.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// After the publishers stop, how long to wait for the outstanding PUBACKs.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub drain: Duration,
    /// The broker's process id, to report its CPU use next to ours.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// Result of an `mqtt-publish` run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `mqtt-publish`.
    pub scenario: &'static str,
    /// The listener loaded (`host:port`).
    pub target: String,
    /// `3.1.1` or `5`.
    pub protocol: &'static str,
    /// QoS of the publishes.
    pub qos: u8,
    /// Publisher connections.
    pub publishers: usize,
    /// Whether every publish went to a new topic (`--new-topics`).
    pub new_topics: bool,
    /// Unacknowledged publishes allowed per publisher (before the broker's cap).
    pub inflight: usize,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Messages per second per publisher, or `None` for as fast as possible.
    pub rate_per_publisher: Option<f64>,
    /// Publishing time, seconds.
    pub duration_s: f64,
    /// Publishes written to the sockets.
    pub published: u64,
    /// `published` over the publishing time.
    pub published_per_second: f64,
    /// Positive PUBACKs.
    pub acked: u64,
    /// `acked` over the time from the start to the last PUBACK.
    pub acked_per_second: f64,
    /// Time from the start to the last PUBACK, seconds.
    pub ack_span_s: f64,
    /// PUBACKs with a failure reason code (MQTT 5).
    pub refused: u64,
    /// Publishes never acknowledged (after the drain).
    pub unacked: u64,
    /// Publish-to-PUBACK latency.
    pub ack_latency: Latency,
    /// Transport and protocol failures, by text.
    pub errors: Errors,
    /// CPU use from the start until the last PUBACK (or the drain's end).
    pub cpu: Option<CpuUsage>,
}

/// Runs the scenario.
///
/// # Errors
/// On invalid options, or when a connection cannot be opened or authenticated.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    if opts.publishers == 0 {
        bail!("--publishers must be at least 1");
    }
    if opts.payload_bytes < mqtt::HEADER_BYTES {
        bail!(
            "--payload-bytes must be at least {} (the payload header)",
            mqtt::HEADER_BYTES
        );
    }
    if opts.prefix.is_empty() || opts.prefix.contains(['+', '#']) {
        bail!("--prefix must be a topic name without wildcards");
    }
    super::check_open_files(opts.publishers as u64 + 64, crate::procfs::Process::Current)?;
    let run_id = unix_nanos();
    let broker = &opts.broker;
    let mut clients = Vec::with_capacity(opts.publishers);
    for i in 0..opts.publishers {
        clients.push(
            Client::connect(broker, &mqtt::client_id(run_id, 'q', i), None, 16 * 1024)
                .await
                .with_context(|| format!("publisher {i}"))?,
        );
    }
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + opts.duration;
    let mut tasks = Vec::with_capacity(opts.publishers);
    for (i, client) in clients.into_iter().enumerate() {
        let first = match opts.rate {
            Some(rate) => start + rate.period().mul_f64(i as f64 / opts.publishers as f64),
            None => start,
        };
        tasks.push(tokio::spawn(mqtt::publisher(
            client,
            PublisherPlan {
                topic: format!("{}/{i}", opts.prefix),
                new_topics: opts.new_topics,
                qos: opts.qos,
                payload_bytes: opts.payload_bytes,
                encoding: mqtt::Encoding::Binary,
                run_id,
                number: i as u32,
                first,
                end,
                period: opts.rate.map(Rate::period),
                inflight: opts.inflight,
                window: None,
                drain: opts.drain,
            },
        )));
    }
    tokio::time::sleep_until(start).await;
    let meter = CpuMeter::start(opts.pid);

    let mut published = 0;
    let mut acked = 0;
    let mut refused = 0;
    let mut unacked = 0;
    let mut last = start;
    let mut latency = report::latency_histogram()?;
    let mut errors = Errors::new();
    let mut writes = Vec::with_capacity(opts.publishers);
    for task in tasks {
        let (r, write) = task.await.context("a publisher task panicked")?;
        published += r.published;
        acked += r.acked;
        refused += r.refused;
        unacked += r.unacked;
        let done = if opts.qos == QoS::AtMostOnce {
            r.last_publish
        } else {
            r.last_ack
        };
        last = last.max(done.unwrap_or(last));
        latency
            .add(&r.ack_latency)
            .context("cannot merge histograms")?;
        for (k, v) in r.errors {
            *errors.entry(k).or_default() += v;
        }
        writes.push(write);
    }
    let cpu = meter.and_then(|m| m.stop());
    for mut w in writes {
        let _ = w.write_all(&mqtt::disconnect(broker.protocol)).await;
    }
    let span = last.duration_since(start).as_secs_f64();
    let per_second = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    Ok(Report {
        scenario: "mqtt-publish",
        target: broker.addr.authority().to_owned(),
        protocol: mqtt::protocol_name(broker.protocol),
        qos: opts.qos as u8,
        publishers: opts.publishers,
        new_topics: opts.new_topics,
        inflight: opts.inflight,
        payload_bytes: opts.payload_bytes,
        rate_per_publisher: opts.rate.map(Rate::per_second),
        duration_s: opts.duration.as_secs_f64(),
        published,
        published_per_second: per_second(published, opts.duration.as_secs_f64()),
        acked,
        acked_per_second: per_second(acked, span),
        ack_span_s: span,
        refused,
        unacked,
        ack_latency: Latency::from_nanos(&latency),
        errors,
        cpu,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = match self.rate_per_publisher {
            Some(r) => format!("{r}/s each"),
            None => "as fast as acknowledged".to_owned(),
        };
        let mut t = Table::new(format!(
            "mqtt-publish  target={} mqtt={} qos={} publishers={} ({rate}, {} in flight each) \
             payload={} B duration={} s{}",
            self.target,
            self.protocol,
            self.qos,
            self.publishers,
            self.inflight,
            self.payload_bytes,
            self.duration_s,
            if self.new_topics { " new-topics" } else { "" }
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
            t.row(
                "acknowledged",
                format!("{} in {:.2} s", report::count(self.acked), self.ack_span_s),
            );
            t.row("acknowledged/s", format!("{:.0}", self.acked_per_second));
            t.row(
                "refused / unacknowledged",
                format!(
                    "{} / {}",
                    report::count(self.refused),
                    report::count(self.unacked)
                ),
            );
            self.ack_latency.rows(&mut t, "ack latency");
        }
        t.row("errors", report::errors_text(&self.errors));
        if let Some(cpu) = &self.cpu {
            cpu.row(&mut t);
        }
        t.fmt(f)
    }
}
