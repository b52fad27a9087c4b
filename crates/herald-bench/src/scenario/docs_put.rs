//! `docs-put`: durable document writes from many concurrent keep-alive clients.
//!
//! Each client owns one HTTP/1.1 connection and sends one PUT at a time, waiting for the
//! durable acknowledgement (Icepeak `?durable` → 202, main API → 204) before the next. Every
//! PUT writes a new key (`<prefix>/r<run>/c<client>/k<i>`) unless `--keys-per-client` bounds
//! the key space, so the document tree grows during the run as it would with distinct keys.
//!
//! Writes per second counts successful writes that started inside the measurement window,
//! divided by the time from the window's start until the last of them was answered.

use std::fmt;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use hyper::body::Bytes;
use serde::Serialize;
use tokio::time::Instant;

use crate::args::{Target, parse_doc_path, parse_duration};
use crate::http::{ClientKind, Connection};
use crate::report::{self, CpuMeter, CpuUsage, Errors, Latency, Table};
use crate::scenario::{Api, unix_nanos};

/// Flags of `herald-bench docs-put`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The listener to load: the Icepeak listener for `--api icepeak`, the main HTTP API for
    /// `--api main`.
    #[arg(long, value_name = "http://HOST:PORT")]
    pub target: Target,
    /// Which API the target serves.
    #[arg(long, value_enum, default_value_t = Api::Icepeak)]
    pub api: Api,
    /// Concurrent clients, each with one keep-alive connection and one request in flight.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Size of each request body: a JSON string of this many bytes, quotes included.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// How long to measure.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Load applied before the measurement starts, not counted.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// Bound each client's keys to this many (key = request number modulo N), so the tree
    /// stops growing. Default: every request writes a new key.
    #[arg(long, value_name = "N")]
    pub keys_per_client: Option<u64>,
    /// Document path under which the keys are written.
    #[arg(long, value_parser = parse_doc_path, default_value = "/bench/put")]
    pub prefix: String,
    /// HTTP client library.
    #[arg(long, value_enum, default_value_t = ClientKind::Hyper)]
    pub http_client: ClientKind,
    /// The server's process id, to report its CPU use next to ours.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// Result of a `docs-put` run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `docs-put`.
    pub scenario: &'static str,
    /// The listener loaded.
    pub target: String,
    /// Which API.
    pub api: Api,
    /// Concurrent clients.
    pub clients: usize,
    /// Request body size.
    pub value_bytes: usize,
    /// The HTTP client library.
    pub http_client: ClientKind,
    /// Length of the measurement window, seconds.
    pub duration_s: f64,
    /// Keys per client, when bounded.
    pub keys_per_client: Option<u64>,
    /// Successful durable writes started in the window.
    pub writes: u64,
    /// `writes` over the time until the last of them was answered.
    pub writes_per_second: f64,
    /// Request latency (send to full response) of the successful writes.
    pub latency: Latency,
    /// Failed requests started in the window, by status code or `transport`.
    pub errors: Errors,
    /// CPU use during the window.
    pub cpu: Option<CpuUsage>,
}

struct ClientResult {
    ok: u64,
    errors: Errors,
    latency: Histogram<u64>,
    /// When the last request started in the window was answered.
    last_done: Option<Instant>,
}

/// Runs the scenario.
///
/// # Errors
/// On invalid options or when a client cannot connect before the run.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    if opts.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if opts.value_bytes < 2 {
        bail!("--value-bytes must be at least 2 (a JSON string needs its quotes)");
    }
    if opts.keys_per_client == Some(0) {
        bail!("--keys-per-client must be at least 1");
    }
    let body = Bytes::from(format!("\"{}\"", "x".repeat(opts.value_bytes - 2)));
    let run_id = unix_nanos() / 1_000_000_000;

    let mut conns = Vec::with_capacity(opts.clients);
    for _ in 0..opts.clients {
        let mut conn = Connection::new(opts.http_client, opts.target.clone())?;
        conn.connect().await?;
        conns.push(conn);
    }

    // Everyone starts together, a moment from now, once every task is spawned.
    let start = Instant::now() + Duration::from_millis(50);
    let window = Window {
        start,
        measure_from: start + opts.warmup,
        end: start + opts.warmup + opts.duration,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (c, conn) in conns.into_iter().enumerate() {
        let paths = PathGen {
            api: opts.api,
            prefix: format!("{}/r{run_id}/c{c}", opts.prefix),
            keys: opts.keys_per_client,
        };
        tasks.spawn(client(conn, paths, body.clone(), window));
    }

    tokio::time::sleep_until(window.measure_from).await;
    let meter = CpuMeter::start(opts.pid);
    let mut ok = 0;
    let mut errors = Errors::new();
    let mut latency = report::latency_histogram()?;
    let mut last_done = window.measure_from;
    while let Some(joined) = tasks.join_next().await {
        let r = joined.context("a client task panicked")??;
        ok += r.ok;
        for (k, v) in r.errors {
            *errors.entry(k).or_default() += v;
        }
        latency.add(&r.latency).context("cannot merge histograms")?;
        last_done = last_done.max(r.last_done.unwrap_or(last_done));
    }
    let cpu = meter.and_then(|m| m.stop());
    let elapsed = last_done.duration_since(window.measure_from).as_secs_f64();
    Ok(Report {
        scenario: "docs-put",
        target: opts.target.to_string(),
        api: opts.api,
        clients: opts.clients,
        value_bytes: opts.value_bytes,
        http_client: opts.http_client,
        duration_s: opts.duration.as_secs_f64(),
        keys_per_client: opts.keys_per_client,
        writes: ok,
        writes_per_second: if elapsed > 0.0 {
            ok as f64 / elapsed
        } else {
            0.0
        },
        latency: Latency::from_nanos(&latency),
        errors,
        cpu,
    })
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

/// Builds each request's path and query.
struct PathGen {
    api: Api,
    /// `<prefix>/r<run>/c<client>`.
    prefix: String,
    keys: Option<u64>,
}

impl PathGen {
    fn write(&self, i: u64, out: &mut String) {
        out.clear();
        let k = self.keys.map_or(i, |n| i % n);
        // Writing to a String cannot fail.
        let _ = match self.api {
            Api::Icepeak => write!(out, "{}/k{k}?durable", self.prefix),
            Api::Main => write!(out, "/docs{}/k{k}", self.prefix),
        };
    }
}

async fn client(
    mut conn: Connection,
    paths: PathGen,
    body: Bytes,
    window: Window,
) -> anyhow::Result<ClientResult> {
    let mut result = ClientResult {
        ok: 0,
        errors: Errors::new(),
        latency: report::latency_histogram()?,
        last_done: None,
    };
    let mut path = String::new();
    tokio::time::sleep_until(window.start).await;
    for i in 0.. {
        let sent = Instant::now();
        if sent >= window.end {
            break;
        }
        paths.write(i, &mut path);
        let outcome = conn.put(&path, body.clone()).await;
        let done = Instant::now();
        let measured = sent >= window.measure_from;
        if measured {
            result.last_done = Some(done);
        }
        match outcome {
            Ok(status) if (200..300).contains(&status) => {
                if measured {
                    result.ok += 1;
                    let nanos = done.duration_since(sent).as_nanos() as u64;
                    result.latency.saturating_record(nanos);
                }
            }
            Ok(status) => {
                if measured {
                    *result.errors.entry(status.to_string()).or_default() += 1;
                }
            }
            Err(_) => {
                if measured {
                    *result.errors.entry("transport".into()).or_default() += 1;
                }
                // Do not spin against a server that is gone; the next put reconnects.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    Ok(result)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = match self.keys_per_client {
            Some(n) => format!("{n} keys per client"),
            None => "a new key per write".into(),
        };
        let mut t = Table::new(format!(
            "docs-put  api={} target={} clients={} value={} B duration={} s client={} ({keys})",
            self.api,
            self.target,
            self.clients,
            self.value_bytes,
            self.duration_s,
            self.http_client
        ));
        t.row("writes", report::count(self.writes));
        t.row("writes/s", format!("{:.0}", self.writes_per_second));
        self.latency.rows(&mut t, "latency");
        t.row("errors", report::errors_text(&self.errors));
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
    fn paths() {
        let mut out = String::new();
        let icepeak = PathGen {
            api: Api::Icepeak,
            prefix: "/bench/put/r1/c2".into(),
            keys: None,
        };
        icepeak.write(7, &mut out);
        assert_eq!(out, "/bench/put/r1/c2/k7?durable");
        let main = PathGen {
            api: Api::Main,
            prefix: "/p/r1/c0".into(),
            keys: Some(5),
        };
        main.write(7, &mut out);
        assert_eq!(out, "/docs/p/r1/c0/k2");
    }
}
