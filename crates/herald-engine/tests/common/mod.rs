//! Helpers shared by the engine's integration tests: path parsing, bounded waits, restarts and
//! crash simulation, and a store wrapper that fails or blocks on demand.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herald_core::{Path, PathLimits};
use herald_engine::{Docs, DocsOptions, Inbox, Update};
use herald_store::{Append, Durability, LogBounds, MemoryStore, Store, StoreError};
use herald_store_fjall::FjallStore;
use serde_json::Value;
use tokio::task::JoinHandle;

/// How long any single wait in a test may take before the test fails instead of hanging.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// How long a test watches an inbox to make sure that nothing arrives.
pub(crate) const QUIET: Duration = Duration::from_millis(200);

pub(crate) type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Parses a URL-style path; panics on invalid input (test data is static).
pub(crate) fn p(s: &str) -> Path {
    Path::parse_url(s, &PathLimits::default()).expect("valid test path")
}

/// Parses JSON bytes produced by the engine.
pub(crate) fn js(bytes: &Bytes) -> Value {
    serde_json::from_slice(bytes).expect("engine produced valid JSON")
}

/// Reads `path` through the engine and parses it.
pub(crate) async fn get(docs: &Docs, path: &str) -> Option<Value> {
    let got = tokio::time::timeout(WAIT, docs.get(p(path)))
        .await
        .expect("get timed out")
        .expect("get failed");
    got.as_ref().map(js)
}

/// Waits (bounded) for the next updates of `inbox`, parsed as `(path, value)`.
pub(crate) async fn recv(inbox: &Inbox) -> Vec<(Path, Value)> {
    let updates = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .expect("no update arrived in time");
    parse_updates(updates)
}

/// Takes whatever `inbox` holds right now, parsed.
pub(crate) fn take(inbox: &Inbox) -> Vec<(Path, Value)> {
    parse_updates(inbox.take())
}

fn parse_updates(updates: Vec<Update>) -> Vec<(Path, Value)> {
    updates.into_iter().map(|(p, v)| (p, js(&v))).collect()
}

/// Asserts that nothing arrives in `inbox` for [`QUIET`].
pub(crate) async fn assert_quiet(inbox: &Inbox) {
    if let Ok(updates) = tokio::time::timeout(QUIET, inbox.recv()).await {
        panic!("unexpected updates: {:?}", parse_updates(updates));
    }
}

/// Small options that make snapshots frequent.
pub(crate) fn options(snapshot_every: u64) -> DocsOptions {
    DocsOptions {
        snapshot_every,
        ..DocsOptions::default()
    }
}

/// Opens the engine on `store`, bounded in time.
pub(crate) async fn open(store: Arc<dyn Store>, options: DocsOptions) -> (Docs, JoinHandle<()>) {
    tokio::time::timeout(WAIT, Docs::open(store, options))
        .await
        .expect("open timed out")
        .expect("open failed")
}

/// A clean stop: `shutdown()`, then wait for the actor task to end.
pub(crate) async fn stop(docs: Docs, task: JoinHandle<()>) {
    tokio::time::timeout(WAIT, docs.shutdown())
        .await
        .expect("shutdown timed out")
        .expect("shutdown failed");
    drop(docs);
    tokio::time::timeout(WAIT, task)
        .await
        .expect("actor did not end after shutdown")
        .expect("actor panicked");
}

/// A simulated crash: the actor task is aborted (no final snapshot, no sync) and every handle
/// dropped. Blocking jobs the actor started (a commit or a background snapshot) cannot be
/// cancelled; like the rest of a dying process they finish or not, and [`wait_released`] must
/// be called before the store is opened again so that no job of the old "process" runs
/// concurrently with the new one's recovery.
pub(crate) async fn crash(docs: Docs, task: JoinHandle<()>) {
    task.abort();
    let res = tokio::time::timeout(WAIT, task)
        .await
        .expect("aborted actor did not end");
    if let Err(e) = res {
        assert!(e.is_cancelled(), "actor panicked: {e}");
    }
    drop(docs);
}

/// Waits until the only remaining reference to `store` is the caller's.
pub(crate) async fn wait_released<T: ?Sized>(store: &Arc<T>) {
    tokio::time::timeout(WAIT, async {
        while Arc::strong_count(store) > 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("store still referenced by the previous engine");
}

/// A store that can be "restarted": the same `MemoryStore` shared across restarts, or a fjall
/// directory that is closed and opened again.
pub(crate) enum Backend {
    /// Shared in-memory store.
    Memory(Arc<MemoryStore>),
    /// A fjall database in a temporary directory; `store` is `None` only during a restart.
    Fjall {
        dir: tempfile::TempDir,
        store: Option<Arc<FjallStore>>,
    },
}

impl Backend {
    /// One of each kind.
    pub(crate) fn all() -> Vec<Backend> {
        vec![Backend::memory(), Backend::fjall()]
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Backend::Memory(_) => "memory",
            Backend::Fjall { .. } => "fjall",
        }
    }

    pub(crate) fn memory() -> Self {
        Backend::Memory(Arc::new(MemoryStore::default()))
    }

    pub(crate) fn fjall() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FjallStore::open(dir.path()).expect("open fjall");
        Backend::Fjall {
            dir,
            store: Some(Arc::new(store)),
        }
    }

    /// The current store instance, to hand to [`Docs::open`].
    pub(crate) fn store(&self) -> Arc<dyn Store> {
        match self {
            Backend::Memory(s) => s.clone(),
            Backend::Fjall { store, .. } => store.clone().expect("store is open"),
        }
    }

    /// Reads the docs log bounds and snapshot seq straight from the store.
    pub(crate) fn bounds(&self) -> Option<LogBounds> {
        self.store().bounds("docs").expect("bounds")
    }

    pub(crate) fn snapshot_seq(&self) -> Option<u64> {
        self.store()
            .snapshot("docs")
            .expect("snapshot")
            .map(|(seq, _)| seq)
    }

    /// Waits until the previous engine released the store, then (for fjall) closes and reopens
    /// the directory. Call after [`stop`] or [`crash`].
    pub(crate) async fn restart(&mut self) {
        match self {
            Backend::Memory(s) => wait_released(s).await,
            Backend::Fjall { dir, store } => {
                let current = store.take().expect("store is open");
                wait_released(&current).await;
                drop(current);
                let path = dir.path().to_path_buf();
                let reopened = tokio::task::spawn_blocking(move || FjallStore::open(&path))
                    .await
                    .expect("reopen task")
                    .expect("reopen fjall");
                *store = Some(Arc::new(reopened));
            }
        }
    }
}

fn injected() -> StoreError {
    StoreError::Engine(Box::new(std::io::Error::other("injected append failure")))
}

/// A store whose `append` waits while the gate is closed, then fails while `fail` is set or
/// from the `fail_from`-th append on (counting from 0, in the order appends start), and
/// otherwise appends to the store it wraps (a `MemoryStore` unless built with [`Self::new`]);
/// its `put_snapshot` fails while `fail_snapshots` is set.
/// The gate never blocks for longer than [`WAIT`], so a forgotten `open_gate()` cannot hang the
/// test run. It counts the appends started, running, and the most running at once, so that a
/// test can hold a commit in flight and check that there is never more than one.
pub(crate) struct GatedStore {
    inner: Arc<dyn Store>,
    closed: Mutex<bool>,
    cvar: Condvar,
    /// Signalled each time an `append` starts waiting at the closed gate.
    pub(crate) entered: tokio::sync::Notify,
    /// While set, every append fails (after the gate).
    pub(crate) fail: AtomicBool,
    /// While set, every `put_snapshot` fails.
    pub(crate) fail_snapshots: AtomicBool,
    fail_from: usize,
    started: AtomicUsize,
    running: AtomicUsize,
    most_running: AtomicUsize,
}

impl GatedStore {
    /// Wraps `inner`, with the gate closed or open.
    pub(crate) fn new(inner: Arc<dyn Store>, closed: bool) -> Self {
        Self::with(inner, closed, usize::MAX)
    }

    /// A `MemoryStore` behind an open gate: it fails only while `fail` or `fail_snapshots` is
    /// set.
    pub(crate) fn new_open() -> Self {
        Self::with(Arc::new(MemoryStore::default()), false, usize::MAX)
    }

    /// A `MemoryStore` behind a closed gate.
    pub(crate) fn new_closed() -> Self {
        Self::new_closed_failing_from(usize::MAX)
    }

    /// A `MemoryStore` behind a closed gate, and every append from the `fail_from`-th on fails.
    pub(crate) fn new_closed_failing_from(fail_from: usize) -> Self {
        Self::with(Arc::new(MemoryStore::default()), true, fail_from)
    }

    fn with(inner: Arc<dyn Store>, closed: bool, fail_from: usize) -> Self {
        Self {
            inner,
            closed: Mutex::new(closed),
            cvar: Condvar::new(),
            entered: tokio::sync::Notify::new(),
            fail: AtomicBool::new(false),
            fail_snapshots: AtomicBool::new(false),
            fail_from,
            started: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            most_running: AtomicUsize::new(0),
        }
    }

    pub(crate) fn set_closed(&self, closed: bool) {
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = closed;
        self.cvar.notify_all();
    }

    pub(crate) fn open_gate(&self) {
        self.set_closed(false);
    }

    pub(crate) fn close_gate(&self) {
        self.set_closed(true);
    }

    /// How many appends have started (including any waiting at the gate).
    pub(crate) fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }

    /// How many appends are running now (including any waiting at the gate).
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// The most appends that were ever running at once.
    pub(crate) fn most_running(&self) -> usize {
        self.most_running.load(Ordering::SeqCst)
    }

    /// Waits (bounded by [`WAIT`]) until `n` appends have started (the last one may be waiting
    /// at the gate).
    pub(crate) async fn wait_started(&self, n: usize) {
        tokio::time::timeout(WAIT, async {
            while self.started() < n {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{n} store appends did not start"));
    }
}

/// Opens the gate when dropped, so a failing test does not leave a blocking thread behind.
pub(crate) struct GateGuard(pub(crate) Arc<GatedStore>);

impl Drop for GateGuard {
    fn drop(&mut self) {
        self.0.open_gate();
    }
}

impl Store for GatedStore {
    fn append(&self, records: &[Append<'_>], durability: Durability) -> Result<(), StoreError> {
        let index = self.started.fetch_add(1, Ordering::SeqCst);
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(running, Ordering::SeqCst);
        let guard = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        if *guard {
            self.entered.notify_one();
        }
        let (guard, _) = self
            .cvar
            .wait_timeout_while(guard, WAIT, |closed| *closed)
            .unwrap_or_else(|e| e.into_inner());
        drop(guard);
        let result = if self.fail.load(Ordering::SeqCst) || index >= self.fail_from {
            Err(injected())
        } else {
            self.inner.append(records, durability)
        };
        self.running.fetch_sub(1, Ordering::SeqCst);
        result
    }
    fn read(&self, log: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.inner.read(log, from, limit)
    }
    fn bounds(&self, log: &str) -> Result<Option<LogBounds>, StoreError> {
        self.inner.bounds(log)
    }
    fn trim(&self, log: &str, before: u64, durability: Durability) -> Result<(), StoreError> {
        self.inner.trim(log, before, durability)
    }
    fn list_logs(&self, prefix: &str) -> Result<Vec<(String, LogBounds)>, StoreError> {
        self.inner.list_logs(prefix)
    }
    fn delete_log(&self, log: &str, durability: Durability) -> Result<(), StoreError> {
        self.inner.delete_log(log, durability)
    }
    fn put_snapshot(
        &self,
        name: &str,
        seq: u64,
        data: &[u8],
        durability: Durability,
    ) -> Result<(), StoreError> {
        if self.fail_snapshots.load(Ordering::SeqCst) {
            return Err(StoreError::Engine(Box::new(std::io::Error::other(
                "injected snapshot failure",
            ))));
        }
        self.inner.put_snapshot(name, seq, data, durability)
    }
    fn snapshot(&self, name: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.inner.snapshot(name)
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync()
    }
}

/// A metrics recorder that keeps gauges (only), so tests can read `icepeak_subscriber_count`.
/// Install it with `metrics::with_local_recorder` around a current-thread runtime's `block_on`.
#[derive(Default)]
pub(crate) struct GaugeRecorder {
    gauges: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl GaugeRecorder {
    pub(crate) fn gauge(&self, name: &str) -> Option<f64> {
        self.gauges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|g| f64::from_bits(g.load(Ordering::SeqCst)))
    }
}

impl metrics::Recorder for GaugeRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        let gauge = self
            .gauges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.name().to_owned())
            .or_default()
            .clone();
        metrics::Gauge::from_arc(gauge)
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}
