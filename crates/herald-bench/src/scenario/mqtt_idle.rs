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
//! ... (`--source-ips` overrides; see [`crate::net`]).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use herald_mqtt_codec::{Packet, QoS};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::idle::{self, Figures, Slot};
use super::mqtt::{self, Broker, Client};
use crate::args::parse_duration;
use crate::net;
use crate::report::{self, Table};

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
    /// Connections that the broker closed while idle.
    pub closed_by_broker: usize,
    /// Source addresses used (0: chosen by the kernel).
    pub source_ips: u8,
    /// Connections, time and memory.
    #[serde(flatten)]
    pub figures: Figures,
}

/// Runs the scenario.
///
/// # Errors
/// On invalid options, too low file limits, when the broker's RSS cannot be read or when not
/// every connection is established within `--setup-timeout`.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    if opts.prefix.is_empty() || opts.prefix.contains(['+', '#']) {
        bail!("--prefix must be a topic name without wildcards");
    }
    let broker = Arc::new(opts.broker.clone());
    let source_ips = net::source_ips(opts.source_ips, broker.addr.addr(), opts.connections)?;
    let plan = idle::Plan {
        connections: opts.connections,
        pid: opts.pid,
        settle: opts.settle,
        connect_concurrency: opts.connect_concurrency,
        setup_timeout: opts.setup_timeout,
    };
    let run_id = crate::scenario::unix_nanos();
    let (figures, closed) = idle::run(&plan, |i, slot| {
        idle(
            broker.clone(),
            IdlePlan {
                client_id: mqtt::client_id(run_id, 'i', i),
                topic: if opts.same_topic {
                    opts.prefix.clone()
                } else {
                    format!("{}/{i}", opts.prefix)
                },
                source: net::loopback_source(i, source_ips),
            },
            slot,
        )
    })
    .await?;
    Ok(Report {
        scenario: "mqtt-idle",
        target: broker.addr.authority().to_owned(),
        protocol: mqtt::protocol_name(broker.protocol),
        pid: opts.pid,
        connections: opts.connections,
        same_topic: opts.same_topic,
        closed_by_broker: closed.into_iter().filter(|c| *c).count(),
        source_ips,
        figures,
    })
}

struct IdlePlan {
    client_id: String,
    topic: String,
    source: Option<IpAddr>,
}

/// One idle subscriber: connect and subscribe, then read (answering nothing but sending a
/// PINGREQ every half keep-alive) until told to stop. True when the broker closed it first.
async fn idle(broker: Arc<Broker>, plan: IdlePlan, mut slot: Slot) -> bool {
    let setup = async {
        let mut c = Client::connect(&broker, &plan.client_id, plan.source, IDLE_READ_CHUNK).await?;
        c.subscribe(&plan.topic, QoS::AtMostOnce, broker.connect_timeout)
            .await?;
        anyhow::Ok(c)
    };
    let Some(mut client) = slot.establish(setup).await else {
        return false;
    };
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
            () = slot.stopped() => {
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
        self.figures.established_row(&mut t);
        t.row(
            "closed by the broker",
            report::count(self.closed_by_broker as u64),
        );
        self.figures.memory_rows(&mut t);
        t.fmt(f)
    }
}
