//! A metrics recorder for the tests: it keeps every counter and gauge, keyed as Prometheus
//! writes them (`name{label="value",..}`, labels in the order the code gives them), so that a
//! test can read what the broker recorded without a global recorder shared by parallel tests.

// Each test binary uses only some of the helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters and gauges by key; histograms are not kept.
#[derive(Default)]
pub(crate) struct TestRecorder {
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    gauges: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

impl TestRecorder {
    /// The counter `key` (e.g. `hpfeeds_broker_connection_ready{ident="alice"}`), if ever
    /// registered.
    pub(crate) fn counter(&self, key: &str) -> Option<u64> {
        lock(&self.counters)
            .get(key)
            .map(|c| c.load(Ordering::SeqCst))
    }

    /// The counter `key`, 0 when never registered.
    pub(crate) fn count(&self, key: &str) -> u64 {
        self.counter(key).unwrap_or(0)
    }

    /// The gauge `key`, if ever registered.
    pub(crate) fn gauge(&self, key: &str) -> Option<f64> {
        lock(&self.gauges)
            .get(key)
            .map(|g| f64::from_bits(g.load(Ordering::SeqCst)))
    }

    /// Every key registered (counters and gauges), for failure messages.
    pub(crate) fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = lock(&self.counters).keys().cloned().collect();
        keys.extend(lock(&self.gauges).keys().cloned());
        keys
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key_string(key: &metrics::Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}=\"{}\"", l.key(), l.value()))
        .collect();
    if labels.is_empty() {
        key.name().to_owned()
    } else {
        format!("{}{{{}}}", key.name(), labels.join(","))
    }
}

fn entry(map: &Mutex<BTreeMap<String, Arc<AtomicU64>>>, key: &metrics::Key) -> Arc<AtomicU64> {
    lock(map).entry(key_string(key)).or_default().clone()
}

impl metrics::Recorder for TestRecorder {
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
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(entry(&self.counters, key))
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(entry(&self.gauges, key))
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// Runs `body` on a fresh current-thread runtime (so the broker's tasks run on this thread)
/// with a [`TestRecorder`] installed for this thread only.
pub(crate) fn with_metrics<F: Future>(body: impl FnOnce(Arc<TestRecorder>) -> F) -> F::Output {
    let recorder = Arc::new(TestRecorder::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let fut = body(recorder.clone());
    metrics::with_local_recorder(&*recorder, move || {
        let out = rt.block_on(fut);
        drop(rt);
        out
    })
}

/// Waits (up to 10 s) until `check` holds.
pub(crate) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
