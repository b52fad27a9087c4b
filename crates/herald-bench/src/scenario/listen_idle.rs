//! `listen-idle`: server memory per idle stream listener (`GET /listen` over WebSocket or
//! server-sent events).
//!
//! Logs in once (`POST /sessions`), reads the server's `VmRSS`, opens `--connections` listen
//! connections over `--transport`, each subscribed to a stream of its own
//! (`<bucket>:<prefix>-r<run>-<i>`, which nobody writes to) and confirmed subscribed (see
//! [`super::listen`]), waits `--settle`, reads `VmRSS` again and reports the growth per
//! connection. The connections then stay idle, reading what the server sends (WebSocket pings
//! are answered, SSE keep-alive comments read), until they are all closed; after another
//! `--settle` `VmRSS` is read a third time to show how much memory the server gives back.
//!
//! # Limits
//! As for `ws-idle`: one file descriptor per connection in each process (checked first), and
//! above 25,000 connections to a loopback server the sockets are spread over source addresses
//! `127.0.0.1`, `127.0.0.2`, ... (`--source-ips` overrides; see [`crate::net`]).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use super::idle::{self, Figures, Slot};
use super::listen::{self, Connect, Listen, Subscription, Transport};
use super::streams_append;
use crate::args::{Target, parse_duration};
use crate::net;
use crate::report::{self, Table};

/// WebSocket read buffer of an idle listener: it only gets pings and one command reply.
const IDLE_READ_BUFFER: usize = 4 * 1024;

/// Flags of `herald-bench listen-idle`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The server's main HTTP API (`herald serve --http`).
    #[arg(long, value_name = "http://HOST:PORT")]
    pub target: Target,
    /// How the listeners connect.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    /// Idle listen connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// The server's process id, whose `VmRSS` is read from `/proc/<pid>/status`.
    #[arg(long)]
    pub pid: u32,
    /// Bucket of the streams listened to.
    #[arg(long, default_value = "bench")]
    pub bucket: String,
    /// Connection `i` listens to stream `<prefix>-r<run>-<i>`.
    #[arg(long, default_value = "idle")]
    pub prefix: String,
    /// Pause after the last connection is subscribed (and after closing) before reading RSS.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub settle: Duration,
    /// Connections being set up (connect, subscribe, confirm) at once.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Give up on one connection not subscribed within this time.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub connect_timeout: Duration,
    /// Give up when the connections are not all set up within this time.
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    pub setup_timeout: Duration,
    /// Spread client sockets over source addresses 127.0.0.1 ..= 127.0.0.N (loopback targets
    /// only). Default: one per 25,000 connections when above 25,000, else the kernel chooses.
    #[arg(long, value_name = "N")]
    pub source_ips: Option<u8>,
    /// User to log in as (`POST /sessions`); it needs read on the bucket.
    #[arg(long, default_value = "admin")]
    pub user: String,
    /// That user's password.
    #[arg(long, env = "HERALD_ADMIN_PASSWORD", hide_env_values = true)]
    pub password: String,
}

/// Result of a `listen-idle` run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `listen-idle`.
    pub scenario: &'static str,
    /// The listener used.
    pub target: String,
    /// `ws` or `sse`.
    pub transport: Transport,
    /// The server's pid.
    pub pid: u32,
    /// Connections requested.
    pub connections: usize,
    /// Connections that the server closed while idle.
    pub closed_by_server: usize,
    /// Source addresses used (0: chosen by the kernel).
    pub source_ips: u8,
    /// Connections, time and memory.
    #[serde(flatten)]
    pub figures: Figures,
}

/// Runs the scenario.
///
/// # Errors
/// On invalid options, when the login fails, too low file limits, when the server's RSS cannot
/// be read or when not every connection is set up within `--setup-timeout`.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    listen::check_name("--bucket", &opts.bucket)?;
    listen::check_name("--prefix", &opts.prefix)?;
    let source_ips = net::source_ips(opts.source_ips, opts.target.addr(), opts.connections)?;
    let session = streams_append::login(&opts.target, &opts.user, &opts.password).await?;
    let token: Arc<str> = Arc::from(session.to_str().context("the session token is not text")?);
    let plan = idle::Plan {
        connections: opts.connections,
        pid: opts.pid,
        settle: opts.settle,
        connect_concurrency: opts.connect_concurrency,
        setup_timeout: opts.setup_timeout,
    };
    let run_ms = crate::scenario::unix_nanos() / 1_000_000;
    let (figures, closed) = idle::run(&plan, |i, slot| {
        let how = IdleConnect {
            target: opts.target.clone(),
            transport: opts.transport,
            token: token.clone(),
            source: net::loopback_source(i, source_ips),
            timeout: opts.connect_timeout,
        };
        let sub = Subscription {
            bucket: opts.bucket.clone(),
            stream: format!("{}-r{run_ms}-{i}", opts.prefix),
            from: None,
        };
        idle(how, sub, slot)
    })
    .await?;
    Ok(Report {
        scenario: "listen-idle",
        target: opts.target.to_string(),
        transport: opts.transport,
        pid: opts.pid,
        connections: opts.connections,
        closed_by_server: closed.into_iter().filter(|c| *c).count(),
        source_ips,
        figures,
    })
}

/// What one idle connection needs to connect, owned by its task.
struct IdleConnect {
    target: Target,
    transport: Transport,
    token: Arc<str>,
    source: Option<IpAddr>,
    timeout: Duration,
}

/// One idle listener: connect and subscribe, then read until told to stop. True when the
/// server closed it first.
async fn idle(how: IdleConnect, sub: Subscription, mut slot: Slot) -> bool {
    let connect = Connect {
        target: &how.target,
        transport: how.transport,
        token: &how.token,
        source: how.source,
        read_buffer: IDLE_READ_BUFFER,
        timeout: how.timeout,
    };
    let Some(mut conn) = slot.establish(Listen::open(connect, &sub)).await else {
        return false;
    };
    loop {
        tokio::select! {
            batch = conn.next_batch() => if !matches!(batch, Ok(Some(_))) {
                return true;
            },
            () = slot.stopped() => {
                conn.close().await;
                return false;
            }
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = Table::new(format!(
            "listen-idle  target={} transport={} pid={} connections={} (one stream each)",
            self.target, self.transport, self.pid, self.connections
        ));
        self.figures.established_row(&mut t);
        t.row(
            "closed by the server",
            report::count(self.closed_by_server as u64),
        );
        self.figures.memory_rows(&mut t);
        t.fmt(f)
    }
}
