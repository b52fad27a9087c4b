//! What the fan-out scenarios with MQTT publishers share (`mqtt-fanout`, `listen-fanout`): the
//! publishers' flags, starting them ([`start`]), adding up what they did
//! ([`Running::finish`]), waiting for the stragglers ([`drain`]), and the figures both report
//! ([`Figures`], from the publishers' totals and each subscriber's [`Tally`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use herald_mqtt_codec::{Protocol, QoS};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::mqtt::{self, Client, Encoding, Progress, PublisherPlan, PublisherResult};
use crate::args::{Rate, parse_duration};
use crate::report::{self, CpuUsage, Errors, Latency, Table};

/// Upper bound of the drain after the publishers stop, whatever `--drain` says.
const MAX_DRAIN: Duration = Duration::from_secs(120);

/// How the publishers publish: the flags both fan-out scenarios have.
#[derive(Debug, Clone, clap::Args)]
pub struct Publish {
    /// Size of each payload, at least its header (29 bytes; 58 for listen-fanout, whose
    /// header is text); the rest is padding.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// QoS of the publishes (and in mqtt-fanout of the subscriptions): 0 or 1.
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
}

/// What a run's publishers share besides their flags.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    /// The id in every payload.
    pub run_id: u64,
    /// How payload headers are written.
    pub encoding: Encoding,
    /// The subscribers' progress, for the window.
    pub progress: &'a Arc<Progress>,
}

/// Publishers started by [`start`].
#[derive(Debug)]
pub struct Running {
    /// When they start publishing.
    pub start: Instant,
    tasks: Vec<JoinHandle<(PublisherResult, OwnedWriteHalf)>>,
}

/// Starts one [`mqtt::publisher`] per client, publisher `i` to `topic_of(i)`, 50 ms from now
/// (with `--rate`, their first messages spread over one period).
pub fn start(
    clients: Vec<Client>,
    publish: &Publish,
    run: Run<'_>,
    topic_of: impl Fn(usize) -> String,
) -> Running {
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + publish.duration;
    let count = clients.len();
    let tasks = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let first = match publish.rate {
                Some(rate) => start + rate.period().mul_f64(i as f64 / count as f64),
                None => start,
            };
            let plan = PublisherPlan {
                topic: topic_of(i),
                new_topics: false,
                qos: publish.qos,
                payload_bytes: publish.payload_bytes,
                encoding: run.encoding,
                run_id: run.run_id,
                number: i as u32,
                first,
                end,
                period: publish.rate.map(Rate::period),
                inflight: publish.inflight,
                window: (publish.window > 0).then(|| (run.progress.clone(), publish.window)),
                drain: publish.drain.max(Duration::from_secs(5)),
            };
            tokio::spawn(mqtt::publisher(client, plan))
        })
        .collect();
    Running { start, tasks }
}

/// What the publishers did, added up.
#[derive(Debug)]
pub struct Published {
    /// Messages published by all.
    pub total: u64,
    /// Messages published, per publisher.
    pub by: Vec<u64>,
    /// QoS 1: publishes acknowledged.
    pub acked: u64,
    /// Times a publisher waited a whole second for its window and went on anyway.
    pub window_stalls: u64,
    /// QoS 1: send-to-PUBACK latency.
    pub ack_latency: Histogram<u64>,
    /// Transport and protocol failures, by text.
    pub errors: Errors,
    /// When the last publisher finished.
    pub end: Instant,
    /// The connections, still open: some brokers drop what a closing connection has not
    /// relayed yet, so they are closed after the drain ([`Published::disconnect`]).
    writers: Vec<OwnedWriteHalf>,
}

impl Running {
    /// Waits for every publisher to finish and adds up their results.
    ///
    /// # Errors
    /// When a publisher task panicked.
    pub async fn finish(self) -> anyhow::Result<Published> {
        let mut p = Published {
            total: 0,
            by: Vec::with_capacity(self.tasks.len()),
            acked: 0,
            window_stalls: 0,
            ack_latency: report::latency_histogram()?,
            errors: Errors::new(),
            end: Instant::now(),
            writers: Vec::with_capacity(self.tasks.len()),
        };
        for task in self.tasks {
            let (r, write) = task.await.context("a publisher task panicked")?;
            p.total += r.published;
            p.by.push(r.published);
            p.acked += r.acked;
            p.window_stalls += r.window_stalls;
            p.ack_latency
                .add(&r.ack_latency)
                .context("cannot merge histograms")?;
            for (k, v) in r.errors {
                *p.errors.entry(k).or_default() += v;
            }
            if r.unacked > 0 {
                *p.errors
                    .entry("QoS 1 publishes never acknowledged".into())
                    .or_default() += r.unacked;
            }
            p.writers.push(write);
        }
        p.end = Instant::now();
        Ok(p)
    }
}

impl Published {
    /// What a subscriber of publisher `source`'s topic should have, or of every publisher's
    /// (`None`).
    pub fn of(&self, source: Option<usize>) -> u64 {
        source.map_or(self.total, |p| self.by.get(p).copied().unwrap_or(0))
    }

    /// Sends DISCONNECT on every publisher connection and closes them.
    pub async fn disconnect(&mut self, protocol: Protocol) {
        for mut write in self.writers.drain(..) {
            let _ = write.write_all(&mqtt::disconnect(protocol)).await;
        }
    }
}

/// Waits until `received()` reaches `expected`, or it has not moved for `quiet`, or 120 s
/// have passed since `since` (when the publishers stopped); `notify` is signalled on progress.
/// Returns the seconds since `since`.
pub async fn drain(
    received: impl Fn() -> u64,
    expected: u64,
    notify: &Notify,
    quiet: Duration,
    since: Instant,
) -> f64 {
    let mut last_total = u64::MAX;
    let mut last_progress = Instant::now();
    loop {
        let total = received();
        if total >= expected {
            break;
        }
        let now = Instant::now();
        if total != last_total {
            last_total = total;
            last_progress = now;
        } else if now.duration_since(last_progress) >= quiet
            || now.duration_since(since) >= MAX_DRAIN
        {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(20), notify.notified()).await;
    }
    since.elapsed().as_secs_f64()
}

/// `n / seconds`, or 0 for an empty span.
pub fn per_second(n: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { n / seconds } else { 0.0 }
}

/// How the publishers were paced, for a table title: `100/s each`, `window 100` or `as fast
/// as possible`.
pub fn pace(rate_per_publisher: Option<f64>, window: u64) -> String {
    match rate_per_publisher {
        Some(r) => format!("{r}/s each"),
        None if window > 0 => format!("window {window}"),
        None => "as fast as possible".to_owned(),
    }
}

/// Which topics the publishers publish to (`--topics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Topics {
    /// Every publisher publishes to one topic, every subscriber subscribes to it.
    One,
    /// Publisher `i` publishes to a topic of its own; subscriber `j` subscribes to publisher
    /// `j mod publishers`'s (needs at least as many subscribers as publishers).
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

    /// The publisher whose messages subscriber `j` gets, or `None` for all of them.
    pub fn source_of(self, j: usize, publishers: usize) -> Option<usize> {
        match self {
            Topics::One => None,
            Topics::Distinct => Some(j % publishers.max(1)),
        }
    }
}

/// What one subscriber counted, in the terms both fan-out scenarios report.
#[derive(Debug)]
pub struct Tally {
    /// Messages delivered to it.
    pub delivered: u64,
    /// Payload bytes delivered to it.
    pub bytes: u64,
    /// Messages it should have had.
    pub expected: u64,
    /// Messages it never had.
    pub lost: u64,
    /// Messages that came again or out of order.
    pub out_of_order: u64,
    /// Publish-to-deliver latency, ns.
    pub latency: Histogram<u64>,
    /// When its last message arrived.
    pub last_delivery: Option<Instant>,
    /// What ended it early, if anything.
    pub error: Option<String>,
}

/// The figures both fan-out reports have (flattened into their JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// QoS of the publishes.
    pub qos: u8,
    /// `one` (one topic for all) or `distinct` (one topic per publisher).
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
    /// Deliveries to all subscribers.
    pub delivered: u64,
    /// `delivered` over the time from the start until the last delivery.
    pub delivered_per_second: f64,
    /// Payload bytes delivered per second.
    pub delivered_bytes_per_second: f64,
    /// Time from the start until the last delivery, seconds.
    pub delivery_span_s: f64,
    /// Deliveries expected, over all subscribers.
    pub expected: u64,
    /// Messages missing at the end, over all subscribers.
    pub lost: u64,
    /// Messages missing at the end, per subscriber.
    pub lost_per_subscriber: Vec<u64>,
    /// Messages received again or out of order, over all subscribers.
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

/// How a fan-out run was laid out, for [`Figures::new`].
#[derive(Debug, Clone, Copy)]
pub struct Layout<'a> {
    /// The publishers' flags.
    pub publish: &'a Publish,
    /// One topic or one per publisher.
    pub topics: Topics,
    /// Publisher connections.
    pub publishers: usize,
    /// When publishing started.
    pub start: Instant,
}

/// Texts a scenario adds to [`Figures::rows`].
#[derive(Debug, Clone, Default)]
pub struct Notes {
    /// After the `published` figures.
    pub published: String,
    /// After the worst subscriber's loss.
    pub lost: String,
}

impl Figures {
    /// Adds up what the publishers and the subscribers counted.
    ///
    /// # Errors
    /// When the histograms cannot be merged (never in practice).
    pub fn new(
        layout: Layout<'_>,
        published: Published,
        tallies: Vec<Tally>,
        drain_s: f64,
        cpu: Option<CpuUsage>,
    ) -> anyhow::Result<Figures> {
        let publish = layout.publish;
        let mut errors = published.errors;
        let mut latency = report::latency_histogram()?;
        let mut last_delivery = layout.start;
        let (mut delivered, mut bytes, mut expected, mut out_of_order) = (0, 0, 0, 0);
        let mut lost_per_subscriber = Vec::with_capacity(tallies.len());
        for t in &tallies {
            delivered += t.delivered;
            bytes += t.bytes;
            expected += t.expected;
            out_of_order += t.out_of_order;
            lost_per_subscriber.push(t.lost);
            latency.add(&t.latency).context("cannot merge histograms")?;
            last_delivery = last_delivery.max(t.last_delivery.unwrap_or(last_delivery));
            if let Some(e) = &t.error {
                *errors.entry(e.clone()).or_default() += 1;
            }
        }
        let span = last_delivery.duration_since(layout.start).as_secs_f64();
        let duration = publish.duration.as_secs_f64();
        Ok(Figures {
            qos: publish.qos as u8,
            topics: layout.topics,
            publishers: layout.publishers,
            subscribers: tallies.len(),
            payload_bytes: publish.payload_bytes,
            rate_per_publisher: publish.rate.map(Rate::per_second),
            window: publish.window,
            inflight: publish.inflight,
            duration_s: duration,
            published: published.total,
            published_per_second: per_second(published.total as f64, duration),
            acked: published.acked,
            ack_latency: Latency::from_nanos(&published.ack_latency),
            delivered,
            delivered_per_second: per_second(delivered as f64, span),
            delivered_bytes_per_second: per_second(bytes as f64, span),
            delivery_span_s: span,
            expected,
            lost: lost_per_subscriber.iter().sum(),
            lost_per_subscriber,
            out_of_order,
            window_stalls: published.window_stalls,
            latency: Latency::from_nanos(&latency),
            errors,
            drain_s,
            cpu,
        })
    }

    /// The end of a table title: `topics=one publishers=1 (window 100) subscribers=100
    /// payload=100 B duration=10 s`.
    pub fn title(&self) -> String {
        format!(
            "topics={} publishers={} ({}) subscribers={} payload={} B duration={} s",
            self.topics.name(),
            self.publishers,
            pace(self.rate_per_publisher, self.window),
            self.subscribers,
            self.payload_bytes,
            self.duration_s
        )
    }

    /// The table rows, with a scenario's `notes`.
    pub fn rows(&self, t: &mut Table, notes: &Notes) {
        t.row(
            "published",
            format!(
                "{} ({:.0}/s){}",
                report::count(self.published),
                self.published_per_second,
                notes.published
            ),
        );
        if self.qos > 0 {
            t.row("acknowledged", report::count(self.acked));
            self.ack_latency.rows(t, "ack latency");
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
                "{} of {} (worst subscriber {}{})",
                report::count(self.lost),
                report::count(self.expected),
                report::count(worst),
                notes.lost
            ),
        );
        t.row("out of order", report::count(self.out_of_order));
        if self.window > 0 {
            t.row("window stalls", report::count(self.window_stalls));
        }
        self.latency.rows(t, "latency");
        t.row("errors", report::errors_text(&self.errors));
        t.row("drain", format!("{:.2} s", self.drain_s));
        if let Some(cpu) = &self.cpu {
            cpu.row(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts() {
        assert_eq!(pace(Some(100.0), 10), "100/s each");
        assert_eq!(pace(None, 10), "window 10");
        assert_eq!(pace(None, 0), "as fast as possible");
        assert_eq!(per_second(10.0, 0.0), 0.0);
        assert_eq!(per_second(10.0, 2.0), 5.0);
    }

    #[tokio::test]
    async fn drain_stops_when_complete_or_quiet() {
        let notify = Notify::new();
        let since = Instant::now();
        assert!(drain(|| 5, 5, &notify, Duration::from_secs(60), since).await < 1.0);
        let quiet = drain(|| 1, 5, &notify, Duration::from_millis(50), since).await;
        assert!((0.04..5.0).contains(&quiet), "{quiet}");
    }
}
