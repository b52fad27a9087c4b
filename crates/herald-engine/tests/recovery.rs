//! Durability and recovery: clean restarts, crashes (aborted actor, log replay), snapshots
//! with log trimming, corrupt data, and storage failures.
//!
//! The restart tests run against both the shared in-memory store and `FjallStore` in a
//! temporary directory (closed and reopened between "processes"). A "crash" aborts the actor
//! task, so no final snapshot or sync happens, and recovery must replay the log. For fjall this
//! simulates the death of the engine, not of the machine: the database itself is still closed
//! normally before it is reopened.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::*;
use herald_core::Path;
use herald_engine::{Docs, DocsError, DocsOptions, Write};
use herald_store::{Append, Durability, LogBounds, MemoryStore, Store};
use serde_json::{Value, json};

fn put(path: &str, value: Value) -> Write {
    Write::Put {
        path: p(path),
        value,
    }
}

/// A fixed mix of writes; returns the tree they produce.
async fn write_mix(docs: &Docs, tag: &str, n: usize) -> Result<(), DocsError> {
    for i in 0..n {
        let w = match i % 4 {
            0 => put(&format!("/{tag}/items/{i}"), json!({"i": i, "tag": tag})),
            1 => Write::MergePatch {
                path: p(&format!("/{tag}/meta")),
                patch: json!({"count": i, "drop": null, "last": [i]}),
            },
            2 => Write::Delete {
                path: p(&format!("/{tag}/items/{}", i - 2)),
            },
            _ => Write::JsonPatch {
                path: p(&format!("/{tag}/list")),
                patch: json!([{"op": "add", "path": "", "value": {"n": i}}]),
            },
        };
        docs.write(w).await?;
    }
    Ok(())
}

async fn root(docs: &Docs) -> Value {
    get(docs, "/").await.expect("root exists")
}

async fn shutdown_then_reopen_restores_tree_and_continues_sequence(mut backend: Backend) {
    let opts = options(10_000);
    let (docs, task) = open(backend.store(), opts.clone()).await;
    write_mix(&docs, "x", 13).await.expect("writes");
    let before = root(&docs).await;
    stop(docs, task).await;
    // A clean shutdown writes a final snapshot covering every write.
    assert_eq!(backend.snapshot_seq(), Some(13));
    assert_eq!(backend.bounds().map(|b| b.last), Some(13));

    backend.restart().await;
    let (docs, task) = open(backend.store(), opts.clone()).await;
    assert_eq!(root(&docs).await, before);
    // The sequence continues where it stopped.
    docs.write(put("/after", json!(1))).await.expect("write");
    assert_eq!(backend.bounds().map(|b| b.last), Some(14));
    let after = root(&docs).await;
    stop(docs, task).await;

    // And once more, from a snapshot plus nothing to replay.
    backend.restart().await;
    let (docs, task) = open(backend.store(), opts).await;
    assert_eq!(root(&docs).await, after);
    write_mix(&docs, "y", 5).await.expect("writes");
    assert_eq!(backend.bounds().map(|b| b.last), Some(19));
    stop(docs, task).await;
}

#[tokio::test]
async fn shutdown_then_reopen_restores_tree_and_continues_sequence_memory() {
    shutdown_then_reopen_restores_tree_and_continues_sequence(Backend::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_then_reopen_restores_tree_and_continues_sequence_fjall() {
    shutdown_then_reopen_restores_tree_and_continues_sequence(Backend::fjall()).await;
}

async fn crash_then_reopen_replays_acknowledged_writes(mut backend: Backend) {
    // No snapshot during the run: recovery is pure log replay.
    let opts = options(10_000);
    let (docs, task) = open(backend.store(), opts.clone()).await;
    write_mix(&docs, "x", 21).await.expect("writes");
    // Pipelined writes, acknowledged before the crash.
    let pending: Vec<_> = (0..30)
        .map(|i| docs.try_submit(put(&format!("/pipe/{i}"), json!(i))))
        .collect::<Result<_, _>>()
        .expect("submit");
    for w in pending {
        w.committed().await.expect("commit");
    }
    let before = root(&docs).await;
    crash(docs, task).await;
    assert_eq!(backend.snapshot_seq(), None, "a crash writes no snapshot");

    backend.restart().await;
    let (docs, task) = open(backend.store(), opts.clone()).await;
    assert_eq!(root(&docs).await, before);
    docs.write(put("/after", json!(1))).await.expect("write");
    assert_eq!(backend.bounds().map(|b| b.last), Some(52));
    let after = root(&docs).await;
    // Crash again right after a write: nothing acknowledged is lost.
    crash(docs, task).await;

    backend.restart().await;
    let (docs, task) = open(backend.store(), opts).await;
    assert_eq!(root(&docs).await, after);
    stop(docs, task).await;
}

#[tokio::test]
async fn crash_then_reopen_replays_acknowledged_writes_memory() {
    crash_then_reopen_replays_acknowledged_writes(Backend::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_then_reopen_replays_acknowledged_writes_fjall() {
    crash_then_reopen_replays_acknowledged_writes(Backend::fjall()).await;
}

async fn snapshots_trim_the_log_and_recovery_gives_the_same_tree(mut backend: Backend) {
    let opts = options(5);
    let (docs, task) = open(backend.store(), opts.clone()).await;
    write_mix(&docs, "x", 23).await.expect("writes");
    let before = root(&docs).await;
    crash(docs, task).await;
    // Wait for background snapshot jobs of the crashed engine, then inspect the store.
    backend.restart().await;
    let snap = backend.snapshot_seq().expect("a snapshot was taken");
    // Usually 20; later than a multiple of 5 when a snapshot was due while the previous one
    // was still being written.
    assert!((5..=23).contains(&snap), "snapshot at {snap}");
    let bounds = backend.bounds().expect("log exists");
    assert_eq!(bounds.last, 23);
    assert!(bounds.first > 1, "log was not trimmed: {bounds:?}");
    assert_eq!(bounds.first, snap + 1, "trimmed exactly up to the snapshot");

    // Recovery: snapshot plus replay of the rest.
    let (docs, task) = open(backend.store(), opts.clone()).await;
    assert_eq!(root(&docs).await, before);
    write_mix(&docs, "y", 4).await.expect("writes");
    let after = root(&docs).await;
    stop(docs, task).await;
    assert_eq!(backend.snapshot_seq(), Some(27));
    assert_eq!(
        backend.bounds(),
        Some(LogBounds {
            first: 28,
            last: 27,
            bytes: 0
        })
    );

    backend.restart().await;
    let (docs, task) = open(backend.store(), opts).await;
    assert_eq!(root(&docs).await, after);
    docs.write(put("/z", json!(0))).await.expect("write");
    assert_eq!(backend.bounds().map(|b| b.last), Some(28));
    stop(docs, task).await;
}

#[tokio::test]
async fn snapshots_trim_the_log_and_recovery_gives_the_same_tree_memory() {
    snapshots_trim_the_log_and_recovery_gives_the_same_tree(Backend::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_trim_the_log_and_recovery_gives_the_same_tree_fjall() {
    snapshots_trim_the_log_and_recovery_gives_the_same_tree(Backend::fjall()).await;
}

#[tokio::test]
async fn a_snapshot_of_a_null_or_scalar_root_recovers() -> TestResult {
    let store = Arc::new(MemoryStore::default());
    let (docs, task) = open(store.clone(), options(1)).await;
    docs.write(put("/a", json!(1))).await?;
    docs.write(Write::Delete { path: Path::root() }).await?;
    stop(docs, task).await;
    let (docs, task) = open(store.clone(), options(1)).await;
    assert_eq!(root(&docs).await, Value::Null);
    docs.write(Write::Put {
        path: Path::root(),
        value: json!("scalar"),
    })
    .await?;
    stop(docs, task).await;
    let (docs, task) = open(store.clone(), options(1)).await;
    assert_eq!(root(&docs).await, json!("scalar"));
    stop(docs, task).await;
    Ok(())
}

#[tokio::test]
async fn corrupt_log_or_snapshot_is_reported() -> TestResult {
    let store = Arc::new(MemoryStore::default());
    store.append(
        &[Append {
            log: "docs",
            seq: 1,
            data: b"not json",
        }],
        Durability::Sync,
    )?;
    let err = Docs::open(store, DocsOptions::default())
        .await
        .expect_err("corrupt log");
    assert!(matches!(err, DocsError::Corrupt(_)), "{err:?}");

    let store = Arc::new(MemoryStore::default());
    store.put_snapshot("docs", 3, b"{\"a\":", Durability::Sync)?;
    let err = Docs::open(store, DocsOptions::default())
        .await
        .expect_err("corrupt snapshot");
    assert!(matches!(err, DocsError::Corrupt(_)), "{err:?}");
    Ok(())
}

/// A failed append is reported as `DocsError::Store`, the engine refuses every later write,
/// nothing from the failed batch becomes visible to readers or subscribers, and nothing of it
/// survives a restart.
#[tokio::test]
async fn failed_append_fails_the_write_and_every_later_one() -> TestResult {
    let store = Arc::new(GatedStore::new_open());
    let (docs, task) = open(store.clone(), options(10_000)).await;
    docs.write(put("/a", json!(1))).await?;
    let sub = docs.subscriber();
    sub.subscribe(vec![Path::root()]).await?;

    store.fail.store(true, Ordering::SeqCst);
    let err = docs
        .write(put("/a", json!(2)))
        .await
        .expect_err("append fails");
    assert!(matches!(err, DocsError::Store(_)), "{err:?}");

    // Even once the store works again, the engine refuses writes: its state is suspect.
    store.fail.store(false, Ordering::SeqCst);
    for w in [
        put("/b", json!(3)),
        Write::Delete { path: p("/a") },
        Write::MergePatch {
            path: p("/a"),
            patch: json!(4),
        },
    ] {
        let err = docs.write(w).await.expect_err("engine failed");
        assert!(matches!(err, DocsError::Store(_)), "{err:?}");
    }
    assert_eq!(store.bounds("docs")?.map(|b| b.last), Some(1));

    // Subscribers were not told about the failed write.
    assert_eq!(take(sub.inbox()), vec![]);

    // Reads must not expose the write that is not durable (it was applied to the in-memory
    // tree before the commit failed): they are refused, like writes.
    let err = docs.get(p("/a")).await.expect_err("reads refused");
    assert!(matches!(err, DocsError::Store(_)), "{err:?}");
    let late = docs.subscriber();
    let err = late
        .subscribe(vec![p("/a")])
        .await
        .expect_err("subscribe refused");
    assert!(matches!(err, DocsError::Store(_)), "{err:?}");
    assert_eq!(take(late.inbox()), vec![]);
    assert_eq!(take(sub.inbox()), vec![]);

    // Shutdown still works; it takes no snapshot of the suspect tree.
    stop(docs, task).await;
    assert_eq!(store.snapshot("docs")?, None);

    // A restart recovers exactly the durable state.
    let (docs, task) = open(store.clone(), options(10_000)).await;
    assert_eq!(root(&docs).await, json!({"a": 1}));
    docs.write(put("/b", json!(2))).await?;
    assert_eq!(store.bounds("docs")?.map(|b| b.last), Some(2));
    stop(docs, task).await;
    Ok(())
}

#[tokio::test]
async fn a_failed_batch_fails_every_write_in_it() -> TestResult {
    let store = Arc::new(GatedStore::new_open());
    store.fail.store(true, Ordering::SeqCst);
    let (docs, task) = open(store.clone(), options(10_000)).await;
    let pending: Vec<_> = (0..10)
        .map(|i| docs.try_submit(put(&format!("/p/{i}"), json!(i))))
        .collect::<Result<_, _>>()?;
    for w in pending {
        let err = tokio::time::timeout(WAIT, w.committed())
            .await?
            .expect_err("batch failed");
        assert!(matches!(err, DocsError::Store(_)), "{err:?}");
    }
    assert_eq!(store.bounds("docs")?, None);
    crash(docs, task).await;
    wait_released(&store).await;

    store.fail.store(false, Ordering::SeqCst);
    let (docs, task) = open(store.clone(), options(10_000)).await;
    assert_eq!(root(&docs).await, json!({}));
    stop(docs, task).await;
    Ok(())
}
