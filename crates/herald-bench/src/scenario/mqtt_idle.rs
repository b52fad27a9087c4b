//! `mqtt-idle`: broker memory per idle MQTT connection with one subscription.
//!
//! Reads the broker's `VmRSS`, opens `--connections` MQTT connections (CONNECT with a clean
//! session, keep-alive 60 s), each subscribing at QoS 0 to its own topic `<prefix>/<i>` (or
//! all to `<prefix>` with `--same-topic`) and waiting for the SUBACK, waits `--settle`, reads `VmRSS` again and reports the growth per
//! connection. The connections then stay idle (a PINGREQ every 30 s if the run is that long),
//! are closed with DISCONNECT, and after another `--settle` `VmRSS` is read a third time to
//! show how much memory the broker gives back.
//!
//! # Limits
//! Each connection is one file descriptor here and one in the broker: both need `ulimit -n`
//! above `--connections` (checked first). One client address reaches about 28,000
//! connections to one server address (the ephemeral port range); above 25,000 connections to
//! a loopback broker the sockets are spread over source addresses `127.0.0.1`, `127.0.0.2`,
//! ... (`--source-ips` overrides).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use herald_mqtt_codec::{Packet, QoS};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use super::mqtt::{self, Broker, Client};
use crate::args::parse_duration;
use crate::procfs::{self, Process};
use crate::report::{self, Table};
use crate::ws;

/// Connections per source address before `--source-ips` is chosen automatically.
const CONNECTIONS_PER_SOURCE: usize = 25_000;
/// Read buffer of an idle connection: it only ever gets PINGRESPs.
const IDLE_READ_CHUNK: usize = 256;

/// Flags of `herald-bench mqtt-idle`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub broker: Broker,
    /// Idle connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// The broker's process id, whose `VmRSS` is read from `/proc/<pid>/status`.
    #[arg(long)]
    pub pid: u32,
    /// Connection `i` subscribes to `<prefix>/<i>`.
    #[arg(long, default_value = "bench/idle")]
    pub prefix: String,
    /// Every connection subscribes to `<prefix>` itself instead: separates the broker's cost
    /// per connection from its cost per subscribed topic.
    #[arg(long)]
    pub same_topic: bool,
    /// Pause after the last SUBACK (and after closing) before reading RSS.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub settle: Duration,
    /// Connections being set up (CONNECT to SUBACK) at once.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Give up when the connections are not all established within this time.
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    pub setup_timeout: Duration,
    /// Spread client sockets over source addresses 127.0.0.1 ..= 127.0.0.N (loopback brokers
    /// only). Default: one per 25,000 connections when above 25,000, else the kernel chooses.
    #[arg(long, value_name = "N")]
    pub source_ips: Option<u8>,
}

/// Result of an `mqtt-idle` run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `mqtt-idle`.
    pub scenario: &'static str,
    /// The listener used.
    pub target: String,
    /// `3.1.1` or `5`.
    pub protocol: &'static str,
    /// The broker's pid.
    pub pid: u32,
    /// Connections requested.
    pub connections: usize,
    /// Whether they all subscribed to one topic (else one topic each).
    pub same_topic: bool,
    /// Connections connected and subscribed.
    pub established: usize,
    /// Connections that failed.
    pub failed: usize,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Connections that the broker closed while idle.
    pub closed_by_broker: usize,
    /// Source addresses used (0: chosen by the kernel).
    pub source_ips: u8,
    /// Time to establish them all, seconds.
    pub connect_s: f64,
    /// Broker `VmRSS` before connecting, bytes.
    pub rss_before: u64,
    /// Broker `VmRSS` with every connection open, after `--settle`.
    pub rss_after: u64,
    /// Broker `VmRSS` after closing them all, after `--settle`.
    pub rss_after_close: u64,
    /// `(rss_after - rss_before) / established`, bytes.
    pub bytes_per_connection: f64,
    /// The same for this process (the client side), bytes.
    pub client_bytes_per_connection: f64,
}

/// Runs the scenario.
///
/// # Errors
/// On invalid options, too low file limits, when the broker's RSS cannot be read or when not
/// every connection is established within `--setup-timeout`.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    if opts.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if opts.prefix.is_empty() || opts.prefix.contains(['+', '#']) {
        bail!("--prefix must be a topic name without wildcards");
    }
    let broker = &opts.broker;
    let needed = opts.connections as u64 + 64;
    super::check_open_files(needed, Process::Current)?;
    super::check_open_files(needed, Process::Pid(opts.pid))?;
    let target = broker.addr.addr();
    let source_ips = match opts.source_ips {
        Some(n) => n,
        None if target.ip().is_loopback() && target.is_ipv4() => {
            let n = opts.connections.div_ceil(CONNECTIONS_PER_SOURCE);
            if n > 1 {
                u8::try_from(n).unwrap_or(u8::MAX)
            } else {
                0
            }
        }
        None => 0,
    };
    if source_ips > 0 && !target.ip().is_loopback() {
        bail!("--source-ips needs a loopback broker (127.0.0.0/8)");
    }

    let server = Process::Pid(opts.pid);
    let rss =
        |p: Process| procfs::rss_bytes(p).with_context(|| format!("cannot read the RSS of {p:?}"));
    let rss_before = rss(server)?;
    let client_before = rss(Process::Current)?;

    let run_id = crate::scenario::unix_nanos();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(opts.connections);
    let permits = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let broker = Arc::new(broker.clone());
    for i in 0..opts.connections {
        tasks.spawn(idle(
            broker.clone(),
            IdlePlan {
                client_id: mqtt::client_id(run_id, 'i', i),
                topic: if opts.same_topic {
                    opts.prefix.clone()
                } else {
                    format!("{}/{i}", opts.prefix)
                },
                source: ws::loopback_source(i, source_ips),
            },
            permits.clone(),
            ready_tx.clone(),
            stop_rx.clone(),
        ));
    }
    drop(ready_tx);

    let mut established = 0;
    let mut failed = 0;
    let mut first_error = None;
    let deadline = started + opts.setup_timeout;
    while established + failed < opts.connections {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => established += 1,
            Ok(Some(Err(e))) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Ok(None) => break,
            Err(_) => {
                let _ = stop_tx.send(true);
                tasks.abort_all();
                bail!(
                    "only {established} of {} connections established within {:?}",
                    opts.connections,
                    opts.setup_timeout
                );
            }
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    if established == 0 {
        bail!(
            "no connection could be established: {}",
            first_error.unwrap_or_default()
        );
    }

    tokio::time::sleep(opts.settle).await;
    let rss_after = rss(server)?;
    let client_after = rss(Process::Current)?;

    let _ = stop_tx.send(true);
    let mut closed_by_broker = 0;
    let close_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(close_deadline, tasks.join_next()).await {
            Ok(Some(Ok(true))) => closed_by_broker += 1,
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                tasks.abort_all();
                break;
            }
        }
    }
    tokio::time::sleep(opts.settle).await;
    let rss_after_close = rss(server)?;

    let per = |after: u64, before: u64| (after as f64 - before as f64) / established as f64;
    Ok(Report {
        scenario: "mqtt-idle",
        target: broker.addr.authority().to_owned(),
        protocol: mqtt::protocol_name(broker.protocol),
        pid: opts.pid,
        connections: opts.connections,
        same_topic: opts.same_topic,
        established,
        failed,
        first_error,
        closed_by_broker,
        source_ips,
        connect_s,
        rss_before,
        rss_after,
        rss_after_close,
        bytes_per_connection: per(rss_after, rss_before),
        client_bytes_per_connection: per(client_after, client_before),
    })
}

struct IdlePlan {
    client_id: String,
    topic: String,
    source: Option<IpAddr>,
}

/// One idle subscriber: connect and subscribe, then read (answering nothing but sending a
/// PINGREQ every half keep-alive) until told to stop. True when the broker closed it first.
async fn idle(
    broker: Arc<Broker>,
    plan: IdlePlan,
    permits: Arc<Semaphore>,
    ready: mpsc::Sender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let connected = {
        // Held only while setting up, to bound the handshakes in flight.
        let Ok(_permit) = permits.acquire().await else {
            return false;
        };
        async {
            let mut c =
                Client::connect(&broker, &plan.client_id, plan.source, IDLE_READ_CHUNK).await?;
            c.subscribe(&plan.topic, QoS::AtMostOnce, broker.connect_timeout)
                .await?;
            anyhow::Ok(c)
        }
        .await
    };
    let mut client = match connected {
        Ok(c) => {
            let _ = ready.send(Ok(())).await;
            c
        }
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}"))).await;
            return false;
        }
    };
    drop(ready);
    let ping_every = Duration::from_secs(u64::from(mqtt::KEEP_ALIVE_SECS) / 2);
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    loop {
        tokio::select! {
            p = client.reader.next_packet() => match p {
                Ok(Packet::PingResp | Packet::Publish(_)) => {}
                Ok(_) | Err(_) => return true,
            },
            _ = ping.tick() => {
                if client.write.write_all(&mqtt::pingreq(client.protocol)).await.is_err() {
                    return true;
                }
            }
            changed = stop.changed() => if changed.is_err() || *stop.borrow() {
                let _ = client.write.write_all(&mqtt::disconnect(client.protocol)).await;
                return false;
            },
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = Table::new(format!(
            "mqtt-idle  target={} mqtt={} pid={} connections={} ({})",
            self.target,
            self.protocol,
            self.pid,
            self.connections,
            if self.same_topic {
                "one topic"
            } else {
                "one topic each"
            }
        ));
        t.row(
            "established",
            format!(
                "{} in {:.2} s ({} failed{})",
                report::count(self.established as u64),
                self.connect_s,
                self.failed,
                self.first_error
                    .as_deref()
                    .map(|e| format!(", first: {e}"))
                    .unwrap_or_default()
            ),
        );
        t.row(
            "closed by the broker",
            report::count(self.closed_by_broker as u64),
        );
        t.row("server RSS before", report::bytes(self.rss_before as f64));
        t.row(
            "server RSS with all open",
            report::bytes(self.rss_after as f64),
        );
        t.row(
            "server RSS after closing",
            report::bytes(self.rss_after_close as f64),
        );
        t.row(
            "server RSS per connection",
            report::bytes(self.bytes_per_connection),
        );
        t.row(
            "client RSS per connection",
            report::bytes(self.client_bytes_per_connection),
        );
        t.fmt(f)
    }
}
