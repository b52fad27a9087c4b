//! `ws-idle`: server memory per idle WebSocket subscriber.
//!
//! Reads the server's `VmRSS`, opens `--connections` legacy Icepeak WebSockets, each on its own
//! path (`<prefix>/<i>`) so every one is a separate subscription, waits until each has received
//! its first frame and then `--settle`, reads `VmRSS` again and reports the growth per
//! connection. It then closes them all and, after another `--settle`, reads `VmRSS` a third time
//! to show how much memory the server gives back.
//!
//! # Limits
//! Each connection is one file descriptor in this process and one in the server: both need
//! `ulimit -n` above `--connections` (checked before starting, with an error saying what to
//! raise). One client address reaches about 28,000 connections to one server address (the
//! ephemeral port range `/proc/sys/net/ipv4/ip_local_port_range`); above 25,000 connections to
//! a loopback target the sockets are spread over source addresses `127.0.0.1`, `127.0.0.2`, ...
//! (`--source-ips` overrides; see [`crate::net`]).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;

use super::idle::{self, Figures, Slot};
use crate::args::{Target, parse_doc_path, parse_duration};
use crate::report::Table;
use crate::{net, ws};

/// Flags of `herald-bench ws-idle`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The Icepeak listener.
    #[arg(long, value_name = "http://HOST:PORT")]
    pub target: Target,
    /// Idle subscribers to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// The server's process id, whose `VmRSS` is read from `/proc/<pid>/status`.
    #[arg(long)]
    pub pid: u32,
    /// Subscriber `i` subscribes to `<prefix>/<i>`.
    #[arg(long, value_parser = parse_doc_path, default_value = "/idle")]
    pub prefix: String,
    /// Pause after the last connection is established (and after closing) before reading RSS.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub settle: Duration,
    /// WebSocket handshakes in flight at once.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Give up when the connections are not all established within this time.
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    pub connect_timeout: Duration,
    /// Spread client sockets over source addresses 127.0.0.1 ..= 127.0.0.N (loopback targets
    /// only). Default: one per 25,000 connections when above 25,000, else let the kernel choose.
    #[arg(long, value_name = "N")]
    pub source_ips: Option<u8>,
}

/// Result of a `ws-idle` run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `ws-idle`.
    pub scenario: &'static str,
    /// The listener used.
    pub target: String,
    /// The server's pid.
    pub pid: u32,
    /// Connections requested.
    pub connections: usize,
    /// Source addresses used (0: chosen by the kernel).
    pub source_ips: u8,
    /// Connections, time and memory.
    #[serde(flatten)]
    pub figures: Figures,
}

/// Runs the scenario.
///
/// # Errors
/// On invalid options, too low file limits, when the server's RSS cannot be read or when not
/// every connection is established within `--connect-timeout`.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    let source_ips = net::source_ips(opts.source_ips, opts.target.addr(), opts.connections)?;
    let plan = idle::Plan {
        connections: opts.connections,
        pid: opts.pid,
        settle: opts.settle,
        connect_concurrency: opts.connect_concurrency,
        setup_timeout: opts.connect_timeout,
    };
    let (figures, _) = idle::run(&plan, |i, slot| {
        idle(
            opts.target.clone(),
            format!("{}/{i}", opts.prefix),
            net::loopback_source(i, source_ips),
            slot,
        )
    })
    .await?;
    Ok(Report {
        scenario: "ws-idle",
        target: opts.target.to_string(),
        pid: opts.pid,
        connections: opts.connections,
        source_ips,
        figures,
    })
}

/// One idle subscriber: connect, take the first frame, then keep reading (which answers the
/// server's pings) until told to stop.
async fn idle(target: Target, path: String, source: Option<IpAddr>, mut slot: Slot) {
    let Some(mut socket) = slot
        .establish(ws::connect_subscribed(&target, &path, source))
        .await
    else {
        return;
    };
    loop {
        tokio::select! {
            msg = socket.next() => if matches!(msg, None | Some(Err(_))) {
                return;
            },
            () = slot.stopped() => return,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = Table::new(format!(
            "ws-idle  target={} pid={} connections={}",
            self.target, self.pid, self.connections
        ));
        self.figures.established_row(&mut t);
        self.figures.memory_rows(&mut t);
        t.fmt(f)
    }
}
