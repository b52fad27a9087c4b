//! Process and machine figures read from `/proc` (Linux only).
//!
//! Everything here is plain file parsing, so the crate needs no `unsafe` (the workspace forbids
//! it) and no libc binding.

use std::io;
use std::path::PathBuf;

/// Clock ticks per second of the CPU times in `/proc/*/stat`: Linux exports them in `USER_HZ`,
/// which is 100 on every architecture Herald targets.
const TICKS_PER_SECOND: f64 = 100.0;

/// Which process to read: ourselves or another one by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// The calling process (`/proc/self`).
    Current,
    /// Another process.
    Pid(u32),
}

impl Process {
    fn file(self, name: &str) -> PathBuf {
        match self {
            Process::Current => PathBuf::from(format!("/proc/self/{name}")),
            Process::Pid(pid) => PathBuf::from(format!("/proc/{pid}/{name}")),
        }
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Resident set size (`VmRSS`) in bytes.
///
/// # Errors
/// When the process does not exist or the file has no `VmRSS` line.
pub fn rss_bytes(process: Process) -> io::Result<u64> {
    let path = process.file("status");
    let status = std::fs::read_to_string(&path)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| invalid(format!("no VmRSS in {}", path.display())))
}

/// The soft limit on open files (`ulimit -n`); `None` when unlimited.
///
/// # Errors
/// When the process does not exist or its limits cannot be parsed.
pub fn open_files_limit(process: Process) -> io::Result<Option<u64>> {
    let path = process.file("limits");
    let limits = std::fs::read_to_string(&path)?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .ok_or_else(|| invalid(format!("no 'Max open files' in {}", path.display())))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()
        .ok_or_else(|| invalid(format!("cannot parse {line:?}")))?;
    if soft == "unlimited" {
        return Ok(None);
    }
    soft.parse()
        .map(Some)
        .map_err(|_| invalid(format!("cannot parse {line:?}")))
}

/// User plus system CPU time of a process, in seconds.
///
/// # Errors
/// When the process does not exist or its `stat` line cannot be parsed.
pub fn cpu_seconds(process: Process) -> io::Result<f64> {
    let path = process.file("stat");
    let stat = std::fs::read_to_string(&path)?;
    // The command name (field 2) may contain spaces and parentheses: fields are counted from
    // the last ')'. After it come field 3 (state) onwards; utime and stime are fields 14, 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| invalid(format!("cannot parse {}", path.display())))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| invalid(format!("no field {n} in {}", path.display())))
    };
    Ok((field(14)? + field(15)?) as f64 / TICKS_PER_SECOND)
}

/// Machine-wide CPU time from the `cpu` line of `/proc/stat`, in seconds summed over all CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MachineCpu {
    /// Time not idle (user, nice, system, irq, softirq, steal).
    pub busy: f64,
    /// All time, idle included.
    pub total: f64,
    /// Number of CPUs listed.
    pub cpus: usize,
}

/// Reads [`MachineCpu`] now.
///
/// # Errors
/// When `/proc/stat` cannot be read or parsed.
pub fn machine_cpu() -> io::Result<MachineCpu> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let mut lines = stat.lines();
    let first = lines
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .ok_or_else(|| invalid("no cpu line in /proc/stat".into()))?;
    let values: Vec<u64> = first
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    Ok(MachineCpu {
        busy: (total - idle) as f64 / TICKS_PER_SECOND,
        total: total as f64 / TICKS_PER_SECOND,
        cpus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_figures() {
        assert!(rss_bytes(Process::Current).unwrap() > 0);
        assert!(cpu_seconds(Process::Current).unwrap() >= 0.0);
        let _ = open_files_limit(Process::Current).unwrap();
        let m = machine_cpu().unwrap();
        assert!(m.cpus >= 1 && m.total >= m.busy);
    }

    #[test]
    fn missing_process() {
        assert!(rss_bytes(Process::Pid(u32::MAX)).is_err());
    }
}
