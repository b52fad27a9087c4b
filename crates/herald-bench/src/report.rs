//! Pieces shared by the scenario reports: latency summaries, error counts, CPU shares and the
//! human table.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::procfs::{self, Process};

/// Highest latency the histograms record exactly: 60 s, in nanoseconds. Larger values are
/// clamped (`saturating_record`).
const MAX_NANOS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds with three significant digits (0.1 % resolution).
///
/// # Errors
/// Never in practice: the bounds are constants that hdrhistogram accepts.
pub fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_NANOS, 3).context("cannot create a latency histogram")
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Number of samples.
    pub count: u64,
    /// Arithmetic mean.
    pub mean_us: f64,
    /// Smallest sample.
    pub min_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

impl Latency {
    /// Summarises a histogram of nanoseconds.
    pub fn from_nanos(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            min_us: us(h.min()),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }

    /// Adds the percentile rows `name p50` ... `name max` to a table.
    pub fn rows(&self, table: &mut Table, name: &str) {
        if self.count == 0 {
            table.row(name, "no samples");
            return;
        }
        table.row(format!("{name} p50"), micros(self.p50_us));
        table.row(format!("{name} p90"), micros(self.p90_us));
        table.row(format!("{name} p99"), micros(self.p99_us));
        table.row(format!("{name} p99.9"), micros(self.p999_us));
        table.row(format!("{name} max"), micros(self.max_us));
        table.row(format!("{name} mean"), micros(self.mean_us));
    }
}

/// Failed requests by cause: an HTTP status code (`"503"`) or `"transport"`.
pub type Errors = BTreeMap<String, u64>;

/// Formats error counts as `503: 12, transport: 1`, or `none`.
pub fn errors_text(errors: &Errors) -> String {
    if errors.is_empty() {
        return "none".into();
    }
    errors
        .iter()
        .map(|(k, v)| format!("{k}: {}", count(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where the machine's CPU time went during a run, in cores (1.0 = one CPU fully busy).
///
/// "Other" is everything that is neither the server nor this load generator: on a shared
/// machine, mostly other people's compilers. It tells how much a result was disturbed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CpuUsage {
    /// Wall-clock length of the measurement, in seconds.
    pub seconds: f64,
    /// CPUs of the machine.
    pub cpus: usize,
    /// All non-idle time of the machine.
    pub machine_busy_cores: f64,
    /// The load generator (this process).
    pub bench_cores: f64,
    /// The server, when its pid was given.
    pub server_cores: Option<f64>,
    /// The rest of the machine, when the server's pid was given.
    pub other_cores: Option<f64>,
}

impl CpuUsage {
    /// Adds a `cpu (cores)` row to a table.
    pub fn row(&self, table: &mut Table) {
        let mut text = format!(
            "machine {:.2} of {} (bench {:.2}",
            self.machine_busy_cores, self.cpus, self.bench_cores
        );
        if let (Some(server), Some(other)) = (self.server_cores, self.other_cores) {
            text.push_str(&format!(", server {server:.2}, other {other:.2}"));
        }
        text.push(')');
        table.row("cpu (cores)", text);
    }
}

/// Samples CPU counters at the start of a measurement; [`CpuMeter::stop`] gives the usage.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    started: Instant,
    machine: procfs::MachineCpu,
    bench: f64,
    server: Option<(u32, f64)>,
}

impl CpuMeter {
    /// Starts measuring; `None` when `/proc` is unavailable.
    pub fn start(server_pid: Option<u32>) -> Option<Self> {
        Some(Self {
            started: Instant::now(),
            machine: procfs::machine_cpu().ok()?,
            bench: procfs::cpu_seconds(Process::Current).ok()?,
            server: match server_pid {
                Some(pid) => Some((pid, procfs::cpu_seconds(Process::Pid(pid)).ok()?)),
                None => None,
            },
        })
    }

    /// CPU used since [`CpuMeter::start`]; `None` when `/proc` could not be read again.
    pub fn stop(&self) -> Option<CpuUsage> {
        let seconds = self.started.elapsed().as_secs_f64();
        let machine = procfs::machine_cpu().ok()?;
        let bench = procfs::cpu_seconds(Process::Current).ok()? - self.bench;
        let server = match self.server {
            Some((pid, before)) => Some(procfs::cpu_seconds(Process::Pid(pid)).ok()? - before),
            None => None,
        };
        let total = machine.total - self.machine.total;
        let busy_fraction = if total > 0.0 {
            (machine.busy - self.machine.busy) / total
        } else {
            0.0
        };
        let machine_busy_cores = busy_fraction * machine.cpus as f64;
        let per_second = |s: f64| if seconds > 0.0 { s / seconds } else { 0.0 };
        let bench_cores = per_second(bench);
        let server_cores = server.map(per_second);
        Some(CpuUsage {
            seconds,
            cpus: machine.cpus,
            machine_busy_cores,
            bench_cores,
            server_cores,
            other_cores: server_cores.map(|s| (machine_busy_cores - s - bench_cores).max(0.0)),
        })
    }
}

/// A two-column table printed under a title line.
#[derive(Debug, Clone, Default)]
pub struct Table {
    title: String,
    rows: Vec<(String, String)>,
}

impl Table {
    /// An empty table.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    /// Appends a row.
    pub fn row(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.rows.push((name.into(), value.into()));
        self
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.title)?;
        let width = self
            .rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        for (k, v) in &self.rows {
            writeln!(f, "  {k:<width$}  {v}")?;
        }
        Ok(())
    }
}

/// `1234567` as `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration in microseconds as `850 µs` or `12.3 ms`.
pub fn micros(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

/// A byte count as `5.2 KiB` or `12.0 MiB`.
pub fn bytes(n: f64) -> String {
    let sign = if n < 0.0 { "-" } else { "" };
    let n = n.abs();
    if n < 1024.0 {
        format!("{sign}{n:.0} B")
    } else if n < 1024.0 * 1024.0 {
        format!("{sign}{:.1} KiB", n / 1024.0)
    } else {
        format!("{sign}{:.1} MiB", n / (1024.0 * 1024.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(micros(850.2), "850 µs");
        assert_eq!(micros(12_345.0), "12.35 ms");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(8.0 * 1024.0), "8.0 KiB");
        assert_eq!(bytes(-2048.0), "-2.0 KiB");
    }

    #[test]
    fn latency_summary() {
        let mut h = latency_histogram().unwrap();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let l = Latency::from_nanos(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50_us - 500.0).abs() < 1.0);
        assert!((l.p99_us - 990.0).abs() < 1.0);
        assert!((l.max_us - 1000.0).abs() < 1.0);
        assert_eq!(Latency::from_nanos(&latency_histogram().unwrap()).count, 0);
    }

    #[test]
    fn error_text() {
        let mut e = Errors::new();
        assert_eq!(errors_text(&e), "none");
        e.insert("503".into(), 1200);
        e.insert("transport".into(), 1);
        assert_eq!(errors_text(&e), "503: 1,200, transport: 1");
    }
}
