//! What the idle-connection scenarios (`ws-idle`, `mqtt-idle`, `listen-idle`) share: open many
//! connections with a bounded number of set-ups in flight, read the server's `VmRSS` before,
//! with all of them open and after closing them, and print those figures.
//!
//! A scenario gives [`run`] a function that makes one connection's task from its number and a
//! [`Slot`]. The task sets its connection up through [`Slot::establish`] (which holds one of
//! `connect_concurrency` permits meanwhile and reports the outcome), then keeps it open, reading
//! whatever the server sends, until [`Slot::stopped`] completes, and closes it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::procfs::{self, Process};
use crate::report::{self, Table};

/// Longest wait for the connections to close once told to.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(60);

/// How to run an idle scenario.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Connections to open.
    pub connections: usize,
    /// The server's process id, whose `VmRSS` is read from `/proc/<pid>/status`.
    pub pid: u32,
    /// Pause after the last connection is set up (and after closing) before reading RSS.
    pub settle: Duration,
    /// Set-ups in flight at once.
    pub connect_concurrency: usize,
    /// Give up when the connections are not all set up within this time.
    pub setup_timeout: Duration,
}

/// The figures every idle scenario reports (flattened into its JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Connections set up.
    pub established: usize,
    /// Connections that failed.
    pub failed: usize,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Time to set them all up, seconds.
    pub connect_s: f64,
    /// Server `VmRSS` before connecting, bytes.
    pub rss_before: u64,
    /// Server `VmRSS` with every connection open, after the settle time.
    pub rss_after: u64,
    /// Server `VmRSS` after closing them all, after the settle time.
    pub rss_after_close: u64,
    /// `(rss_after - rss_before) / established`, bytes.
    pub bytes_per_connection: f64,
    /// The same for this process (the client side), bytes.
    pub client_bytes_per_connection: f64,
}

impl Figures {
    /// The `established` row: count, time and failures.
    pub fn established_row(&self, table: &mut Table) {
        table.row(
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
    }

    /// The server and client memory rows.
    pub fn memory_rows(&self, table: &mut Table) {
        table.row("server RSS before", report::bytes(self.rss_before as f64));
        table.row(
            "server RSS with all open",
            report::bytes(self.rss_after as f64),
        );
        table.row(
            "server RSS after closing",
            report::bytes(self.rss_after_close as f64),
        );
        table.row(
            "server RSS per connection",
            report::bytes(self.bytes_per_connection),
        );
        table.row(
            "client RSS per connection",
            report::bytes(self.client_bytes_per_connection),
        );
    }
}

/// One connection's link to the harness.
#[derive(Debug)]
pub struct Slot {
    permits: Arc<Semaphore>,
    ready: Option<mpsc::Sender<Result<(), String>>>,
    stop: watch::Receiver<bool>,
}

impl Slot {
    /// Runs `setup` while holding a set-up permit and reports its outcome to the harness;
    /// the connection when it succeeded. Only the first call reports.
    pub async fn establish<T>(
        &mut self,
        setup: impl Future<Output = anyhow::Result<T>>,
    ) -> Option<T> {
        let result = {
            // Held only while setting up, to bound the handshakes in flight.
            let Ok(_permit) = self.permits.acquire().await else {
                return None;
            };
            setup.await
        };
        let ready = self.ready.take()?;
        match result {
            Ok(connection) => {
                let _ = ready.send(Ok(())).await;
                Some(connection)
            }
            Err(e) => {
                let _ = ready.send(Err(format!("{e:#}"))).await;
                None
            }
        }
    }

    /// Completes when the harness tells the connections to close. Cancel-safe.
    pub async fn stopped(&mut self) {
        while !*self.stop.borrow_and_update() {
            if self.stop.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Runs an idle scenario: checks the file limits, reads the server's RSS, starts
/// `plan.connections` tasks made by `task(i, slot)`, waits until each has reported its set-up,
/// waits `plan.settle`, reads the RSS again, tells them to close, waits for them (at most
/// 60 s), waits `plan.settle` and reads the RSS a third time. Returns the figures and what the
/// tasks returned (in the order they finished).
///
/// # Errors
/// When the file limits are too low, the server's RSS cannot be read, no connection could be
/// set up, or not all of them reported within `plan.setup_timeout`.
pub async fn run<T, F, Fut>(plan: &Plan, mut task: F) -> anyhow::Result<(Figures, Vec<T>)>
where
    F: FnMut(usize, Slot) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    if plan.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let needed = plan.connections as u64 + 64;
    super::check_open_files(needed, Process::Current)?;
    super::check_open_files(needed, Process::Pid(plan.pid))?;
    let server = Process::Pid(plan.pid);
    let rss =
        |p: Process| procfs::rss_bytes(p).with_context(|| format!("cannot read the RSS of {p:?}"));
    let rss_before = rss(server)?;
    let client_before = rss(Process::Current)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(plan.connections);
    let permits = Arc::new(Semaphore::new(plan.connect_concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..plan.connections {
        let slot = Slot {
            permits: permits.clone(),
            ready: Some(ready_tx.clone()),
            stop: stop_rx.clone(),
        };
        tasks.spawn(task(i, slot));
    }
    drop(ready_tx);

    let mut established = 0;
    let mut failed = 0;
    let mut first_error = None;
    let deadline = started + plan.setup_timeout;
    while established + failed < plan.connections {
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
                    plan.connections,
                    plan.setup_timeout
                );
            }
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    if established == 0 {
        let _ = stop_tx.send(true);
        tasks.abort_all();
        bail!(
            "no connection could be established: {}",
            first_error.unwrap_or_default()
        );
    }

    tokio::time::sleep(plan.settle).await;
    let rss_after = rss(server)?;
    let client_after = rss(Process::Current)?;

    let _ = stop_tx.send(true);
    let mut outputs = Vec::with_capacity(plan.connections);
    let close_deadline = Instant::now() + CLOSE_TIMEOUT;
    loop {
        match tokio::time::timeout_at(close_deadline, tasks.join_next()).await {
            Ok(Some(Ok(output))) => outputs.push(output),
            // A panicked task: nothing to count.
            Ok(Some(Err(_))) => {}
            Ok(None) => break,
            Err(_) => {
                tasks.abort_all();
                break;
            }
        }
    }
    tokio::time::sleep(plan.settle).await;
    let rss_after_close = rss(server)?;

    let per = |after: u64, before: u64| (after as f64 - before as f64) / established as f64;
    Ok((
        Figures {
            established,
            failed,
            first_error,
            connect_s,
            rss_before,
            rss_after,
            rss_after_close,
            bytes_per_connection: per(rss_after, rss_before),
            client_bytes_per_connection: per(client_after, client_before),
        },
        outputs,
    ))
}
