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
//! (`--source-ips` overrides).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::args::{Target, parse_doc_path, parse_duration};
use crate::procfs::{self, Process};
use crate::report::{self, Table};
use crate::ws;

/// Connections per source address before `--source-ips` is chosen automatically; below the
/// ~28,000 ports of the default ephemeral range, leaving room for other sockets.
const CONNECTIONS_PER_SOURCE: usize = 25_000;

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
    /// Connections that got their first frame.
    pub established: usize,
    /// Connections that failed.
    pub failed: usize,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Source addresses used (0: chosen by the kernel).
    pub source_ips: u8,
    /// Time to establish them all, seconds.
    pub connect_s: f64,
    /// Server `VmRSS` before connecting, bytes.
    pub rss_before: u64,
    /// Server `VmRSS` with every connection open, after `--settle`.
    pub rss_after: u64,
    /// Server `VmRSS` after closing them all, after `--settle`.
    pub rss_after_close: u64,
    /// `(rss_after - rss_before) / established`, bytes.
    pub bytes_per_connection: f64,
    /// The same for this process (the client side), bytes.
    pub client_bytes_per_connection: f64,
}

/// Runs the scenario.
///
/// # Errors
/// On invalid options, too low file limits, when the server's RSS cannot be read or when not
/// every connection is established within `--connect-timeout`.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    if opts.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let needed = opts.connections as u64 + 64;
    super::check_open_files(needed, Process::Current)?;
    super::check_open_files(needed, Process::Pid(opts.pid))?;
    let source_ips = match opts.source_ips {
        Some(n) => n,
        None if opts.target.addr().ip().is_loopback() && opts.target.addr().is_ipv4() => {
            let n = opts.connections.div_ceil(CONNECTIONS_PER_SOURCE);
            if n > 1 {
                u8::try_from(n).unwrap_or(u8::MAX)
            } else {
                0
            }
        }
        None => 0,
    };
    if source_ips > 0 && !opts.target.addr().ip().is_loopback() {
        bail!("--source-ips needs a loopback target (127.0.0.0/8)");
    }

    let server = Process::Pid(opts.pid);
    let rss =
        |p: Process| procfs::rss_bytes(p).with_context(|| format!("cannot read the RSS of {p:?}"));
    let rss_before = rss(server)?;
    let client_before = rss(Process::Current)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(opts.connections);
    let permits = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..opts.connections {
        tasks.spawn(idle(
            opts.target.clone(),
            format!("{}/{i}", opts.prefix),
            ws::loopback_source(i, source_ips),
            permits.clone(),
            ready_tx.clone(),
            stop_rx.clone(),
        ));
    }
    drop(ready_tx);

    let mut established = 0;
    let mut failed = 0;
    let mut first_error = None;
    let deadline = started + opts.connect_timeout;
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
                bail!(
                    "only {established} of {} connections established within {:?}",
                    opts.connections,
                    opts.connect_timeout
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
    while tasks.join_next().await.is_some() {}
    tokio::time::sleep(opts.settle).await;
    let rss_after_close = rss(server)?;

    let per = |after: u64, before: u64| (after as f64 - before as f64) / established as f64;
    Ok(Report {
        scenario: "ws-idle",
        target: opts.target.to_string(),
        pid: opts.pid,
        connections: opts.connections,
        established,
        failed,
        first_error,
        source_ips,
        connect_s,
        rss_before,
        rss_after,
        rss_after_close,
        bytes_per_connection: per(rss_after, rss_before),
        client_bytes_per_connection: per(client_after, client_before),
    })
}

/// One idle subscriber: connect, take the first frame, then keep reading (which answers the
/// server's pings) until told to stop.
async fn idle(
    target: Target,
    path: String,
    source: Option<IpAddr>,
    permits: Arc<Semaphore>,
    ready: mpsc::Sender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
) {
    let connected = {
        // Held only while connecting, to bound the handshakes in flight.
        let Ok(_permit) = permits.acquire().await else {
            return;
        };
        ws::connect_subscribed(&target, &path, source).await
    };
    let mut socket = match connected {
        Ok(s) => {
            let _ = ready.send(Ok(())).await;
            s
        }
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}"))).await;
            return;
        }
    };
    drop(ready);
    loop {
        tokio::select! {
            msg = socket.next() => if matches!(msg, None | Some(Err(_))) {
                return;
            },
            changed = stop.changed() => if changed.is_err() || *stop.borrow() {
                return;
            },
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = Table::new(format!(
            "ws-idle  target={} pid={} connections={}",
            self.target, self.pid, self.connections
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
