//! A write queued behind a commit in flight is never visible (to a read or a subscriber) before
//! it is durable itself, and never at all if its own commit fails.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use herald_engine::{DocsError, Write};
use herald_store::{Append, Durability, LogBounds, MemoryStore, Store, StoreError};
use serde_json::json;

use common::{p, take};

/// The first append waits at a gate; appends after `fail_from` fail.
struct PipelineStore {
    inner: MemoryStore,
    appends: AtomicUsize,
    fail_from: usize,
    open: Mutex<bool>,
    cvar: Condvar,
    entered: tokio::sync::Notify,
}

impl PipelineStore {
    fn new(fail_from: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryStore::default(),
            appends: AtomicUsize::new(0),
            fail_from,
            open: Mutex::new(false),
            cvar: Condvar::new(),
            entered: tokio::sync::Notify::new(),
        })
    }

    fn open_gate(&self) {
        *self.open.lock().unwrap() = true;
        self.cvar.notify_all();
    }
}

impl Store for PipelineStore {
    fn append(&self, records: &[Append<'_>], durability: Durability) -> Result<(), StoreError> {
        let n = self.appends.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            self.entered.notify_one();
            let guard = self.open.lock().unwrap();
            let _ = self
                .cvar
                .wait_timeout_while(guard, Duration::from_secs(10), |open| !*open)
                .unwrap();
        }
        if n >= self.fail_from {
            return Err(StoreError::Invalid("injected failure".into()));
        }
        self.inner.append(records, durability)
    }
    fn read(&self, log: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.inner.read(log, from, limit)
    }
    fn bounds(&self, log: &str) -> Result<Option<LogBounds>, StoreError> {
        self.inner.bounds(log)
    }
    fn trim(&self, log: &str, before: u64, d: Durability) -> Result<(), StoreError> {
        self.inner.trim(log, before, d)
    }
    fn put_snapshot(
        &self,
        name: &str,
        seq: u64,
        data: &[u8],
        d: Durability,
    ) -> Result<(), StoreError> {
        self.inner.put_snapshot(name, seq, data, d)
    }
    fn snapshot(&self, name: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.inner.snapshot(name)
    }
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

fn put(path: &str, value: serde_json::Value) -> Write {
    Write::Put {
        path: p(path),
        value,
    }
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("timed out")
}

#[tokio::test]
async fn a_read_behind_a_staged_write_is_answered_only_once_that_write_is_durable() {
    let store = PipelineStore::new(usize::MAX);
    let (docs, task) = common::open(store.clone(), common::options(1_000_000)).await;
    let first = tokio::spawn({
        let docs = docs.clone();
        async move { docs.write(put("/a", json!(1))).await }
    });
    within(store.entered.notified()).await;
    // Commit 1 is stuck in the store; this write queues behind it.
    let second = docs.try_submit(put("/a", json!(2))).unwrap();
    let read = tokio::spawn({
        let docs = docs.clone();
        async move { docs.get(p("/a")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !read.is_finished(),
        "a read must wait while writes before it are not durable"
    );
    store.open_gate();
    within(first).await.unwrap().unwrap();
    within(second.committed()).await.unwrap();
    let value = within(read).await.unwrap().unwrap().unwrap();
    assert_eq!(&value[..], b"2");
    // Both writes were on disk before the read was answered.
    assert_eq!(store.bounds("docs").unwrap().map(|b| b.last), Some(2));
    common::stop(docs, task).await;
}

#[tokio::test]
async fn a_staged_write_whose_commit_fails_is_never_shown() {
    // Commit 1 (waits at the gate) succeeds, commit 2 fails.
    let store = PipelineStore::new(1);
    let (docs, task) = common::open(store.clone(), common::options(1_000_000)).await;
    let sub = docs.subscriber();
    within(sub.subscribe(vec![p("/a")])).await.unwrap();
    let first = tokio::spawn({
        let docs = docs.clone();
        async move { docs.write(put("/a", json!(1))).await }
    });
    within(store.entered.notified()).await;
    let second = docs.try_submit(put("/a", json!(2))).unwrap();
    let read = tokio::spawn({
        let docs = docs.clone();
        async move { docs.get(p("/a")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.open_gate();
    within(first).await.unwrap().unwrap();
    assert!(matches!(
        within(second.committed()).await,
        Err(DocsError::Store(_))
    ));
    assert!(matches!(
        within(read).await.unwrap(),
        Err(DocsError::Store(_))
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    for (_, value) in take(sub.inbox()) {
        assert_ne!(
            value,
            json!(2),
            "a value that never reached the disk was pushed"
        );
    }
    drop(sub);
    task.abort();
}
