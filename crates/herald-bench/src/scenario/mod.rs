//! The benchmark scenarios, one module each.
//!
//! Every scenario module has the same shape, so that later protocols (MQTT, SSE, hpfeeds) slot
//! in next to these:
//! - `Options`: its command-line flags (`clap::Args`);
//! - `async fn run(&Options) -> anyhow::Result<Report>`: runs it against a live server;
//! - `Report`: `serde::Serialize` for `--json`, and `Display` for the human table.

pub mod docs_fanout;
pub mod docs_put;
pub mod fanout;
pub mod hpfeeds_fanout;
pub mod idle;
pub mod listen;
pub mod listen_fanout;
pub mod listen_idle;
pub mod mqtt;
pub mod mqtt_fanout;
pub mod mqtt_idle;
pub mod mqtt_publish;
pub mod streams_append;
pub mod ws_idle;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Which HTTP API of the server receives the writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// The Icepeak-compatible listener: `PUT /<path>?durable`, answered 202 after the commit.
    Icepeak,
    /// The main API: `PUT /docs/<path>`, answered 204 after the commit.
    Main,
}

impl std::fmt::Display for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Api::Icepeak => "icepeak",
            Api::Main => "main",
        })
    }
}

/// Nanoseconds since the Unix epoch, from the wall clock.
///
/// The fan-out scenario puts this in the document and compares it with the clock at delivery:
/// both ends run in this process, so the clocks agree, and the value is a plain JSON number.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as u64
}

/// Checks that this process may open `needed` more files; the error says how to fix it.
///
/// The scenarios do not raise the limit themselves: that needs `setrlimit`, which is `unsafe`
/// (forbidden in this workspace) or another dependency, while `ulimit -n` in the calling shell
/// does it for both the server and the load generator.
///
/// # Errors
/// When the soft limit on open files is below `needed`.
pub fn check_open_files(needed: u64, who: crate::procfs::Process) -> anyhow::Result<()> {
    let limit = match crate::procfs::open_files_limit(who) {
        Ok(l) => l,
        // Not Linux, or the process vanished: let the connections fail on their own.
        Err(_) => return Ok(()),
    };
    if let Some(limit) = limit.filter(|l| *l < needed) {
        let name = match who {
            crate::procfs::Process::Current => "herald-bench".to_owned(),
            crate::procfs::Process::Pid(pid) => format!("the server (pid {pid})"),
        };
        anyhow::bail!(
            "{name} may open {limit} files but this run needs about {needed}: raise the limit \
             with `ulimit -n {}` in the shell that starts it (the hard limit, `ulimit -Hn`, \
             caps what an unprivileged user can set)",
            needed.next_multiple_of(1024)
        );
    }
    Ok(())
}
