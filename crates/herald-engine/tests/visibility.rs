//! A write queued behind a commit in flight is never visible (to a read or a subscriber) before
//! it is durable itself, and never at all if its own commit fails.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_engine::{Docs, DocsError, Pending, Write};
use herald_store::Store;
use serde_json::json;
use tokio::task::JoinHandle;

use common::{GateGuard, GatedStore, WAIT, p, take};

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

/// The first commit (`/a` = 1) stuck at the gate, a second write (`/a` = 2) and a read of `/a`
/// queued behind it.
struct Queued {
    first: JoinHandle<Result<(), DocsError>>,
    second: Pending,
    read: JoinHandle<Result<Option<Bytes>, DocsError>>,
}

async fn queue_behind_a_stuck_commit(docs: &Docs, store: &GatedStore) -> Queued {
    let first = tokio::spawn({
        let docs = docs.clone();
        async move {
            docs.write(Write::Put {
                path: p("/a"),
                value: json!(1),
            })
            .await
        }
    });
    within(store.entered.notified()).await;
    let second = docs
        .try_submit(Write::Put {
            path: p("/a"),
            value: json!(2),
        })
        .unwrap();
    let read = tokio::spawn({
        let docs = docs.clone();
        async move { docs.get(p("/a")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !read.is_finished(),
        "a read must wait while writes before it are not durable"
    );
    Queued {
        first,
        second,
        read,
    }
}

#[tokio::test]
async fn a_read_behind_a_queued_write_is_answered_only_once_that_write_is_durable() {
    let store = Arc::new(GatedStore::new_closed());
    let _gate = GateGuard(store.clone());
    let (docs, task) = common::open(store.clone(), common::options(1_000_000)).await;
    let q = queue_behind_a_stuck_commit(&docs, &store).await;
    store.open_gate();
    within(q.first).await.unwrap().unwrap();
    within(q.second.committed()).await.unwrap();
    let value = within(q.read).await.unwrap().unwrap().unwrap();
    assert_eq!(&value[..], b"2");
    // Both writes were on disk before the read was answered.
    assert_eq!(store.bounds("docs").unwrap().map(|b| b.last), Some(2));
    common::stop(docs, task).await;
}

#[tokio::test]
async fn a_queued_write_whose_commit_fails_is_never_shown() {
    // Commit 1 (waits at the gate) succeeds, commit 2 fails.
    let store = Arc::new(GatedStore::new_closed_failing_from(1));
    let _gate = GateGuard(store.clone());
    let (docs, task) = common::open(store.clone(), common::options(1_000_000)).await;
    let sub = docs.subscriber();
    within(sub.subscribe(vec![p("/a")])).await.unwrap();
    let q = queue_behind_a_stuck_commit(&docs, &store).await;
    store.open_gate();
    within(q.first).await.unwrap().unwrap();
    assert!(matches!(
        within(q.second.committed()).await,
        Err(DocsError::Store(_))
    ));
    assert!(matches!(
        within(q.read).await.unwrap(),
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
