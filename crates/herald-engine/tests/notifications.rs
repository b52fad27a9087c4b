//! Document notifications (seed contract 1.3): who is told about a write, what they receive,
//! subscription bookkeeping, and per-subscriber coalescing.
//!
//! Ordering instead of sleeps: the engine pushes every notification of a batch before it
//! acknowledges the batch's writes, so once `write().await` has returned, every update caused
//! by that write is already in the inboxes and `Inbox::take` sees it. Short quiet periods are
//! only used as an extra check that nothing arrives later.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use common::*;
use herald_core::Path;
use herald_engine::{Docs, DocsOptions, Write};
use herald_store::MemoryStore;
use serde_json::{Value, json};

async fn engine() -> (Docs, tokio::task::JoinHandle<()>) {
    open(Arc::new(MemoryStore::default()), DocsOptions::default()).await
}

async fn put(docs: &Docs, path: &str, value: Value) {
    docs.write(Write::Put {
        path: p(path),
        value,
    })
    .await
    .expect("put");
}

fn one(path: &str, value: Value) -> Vec<(Path, Value)> {
    vec![(p(path), value)]
}

#[tokio::test]
async fn written_path_ancestors_and_root_get_the_full_new_value() -> TestResult {
    let (docs, task) = engine().await;
    put(&docs, "/a/b/c", json!(1)).await;
    put(&docs, "/a/x", json!("keep")).await;

    let root = docs.subscriber();
    let a = docs.subscriber();
    let ab = docs.subscriber();
    let abc = docs.subscriber();
    root.subscribe(vec![Path::root()]).await?;
    a.subscribe(vec![p("/a")]).await?;
    ab.subscribe(vec![p("/a/b")]).await?;
    abc.subscribe(vec![p("/a/b/c")]).await?;

    put(&docs, "/a/b/c", json!({"v": 2})).await;

    let tree = json!({"a": {"b": {"c": {"v": 2}}, "x": "keep"}});
    assert_eq!(recv(root.inbox()).await, vec![(Path::root(), tree)]);
    assert_eq!(
        recv(a.inbox()).await,
        one("/a", json!({"b": {"c": {"v": 2}}, "x": "keep"}))
    );
    assert_eq!(recv(ab.inbox()).await, one("/a/b", json!({"c": {"v": 2}})));
    assert_eq!(recv(abc.inbox()).await, one("/a/b/c", json!({"v": 2})));

    // A delete notifies the same way; the deleted path itself now reads `null`.
    docs.write(Write::Delete { path: p("/a/b") }).await?;
    assert_eq!(
        recv(root.inbox()).await,
        vec![(Path::root(), json!({"a": {"x": "keep"}}))]
    );
    assert_eq!(recv(a.inbox()).await, one("/a", json!({"x": "keep"})));
    assert_eq!(recv(ab.inbox()).await, one("/a/b", Value::Null));
    assert_eq!(recv(abc.inbox()).await, one("/a/b/c", Value::Null));

    stop(docs, task).await;
    Ok(())
}

#[tokio::test]
async fn descendants_get_their_value_or_null_even_when_unchanged() -> TestResult {
    let (docs, task) = engine().await;
    put(&docs, "/a", json!({"b": {"c": 1, "d": 2}, "e": 3})).await;

    let c = docs.subscriber();
    let b = docs.subscriber();
    let e = docs.subscriber();
    let missing = docs.subscriber();
    c.subscribe(vec![p("/a/b/c")]).await?;
    b.subscribe(vec![p("/a/b")]).await?;
    e.subscribe(vec![p("/a/e")]).await?;
    missing.subscribe(vec![p("/a/zz/y")]).await?;

    put(&docs, "/a", json!({"b": {"c": 1}})).await;
    // Unchanged, but a descendant of the written path: still notified.
    assert_eq!(take(c.inbox()), one("/a/b/c", json!(1)));
    assert_eq!(take(b.inbox()), one("/a/b", json!({"c": 1})));
    // Disappeared: null.
    assert_eq!(take(e.inbox()), one("/a/e", Value::Null));
    // Never existed: null, and notified all the same.
    assert_eq!(take(missing.inbox()), one("/a/zz/y", Value::Null));

    // Replacing the parent by a scalar makes every descendant null.
    put(&docs, "/a", json!(5)).await;
    assert_eq!(take(c.inbox()), one("/a/b/c", Value::Null));
    assert_eq!(take(b.inbox()), one("/a/b", Value::Null));
    assert_eq!(take(e.inbox()), one("/a/e", Value::Null));

    // Deleting the root reaches every subscriber.
    docs.write(Write::Delete { path: Path::root() }).await?;
    assert_eq!(take(c.inbox()), one("/a/b/c", Value::Null));
    assert_eq!(take(missing.inbox()), one("/a/zz/y", Value::Null));

    stop(docs, task).await;
    Ok(())
}

#[tokio::test]
async fn sibling_subscribers_get_nothing() -> TestResult {
    let (docs, task) = engine().await;
    put(&docs, "/a", json!({"x": 1, "y": 1})).await;

    let sibling = docs.subscriber();
    // `/a/x` is not a prefix of `/a/xy`: matching is by whole segments.
    sibling.subscribe(vec![p("/a/x"), p("/b")]).await?;
    let root = docs.subscriber();
    root.subscribe(vec![Path::root()]).await?;

    put(&docs, "/a/y", json!(2)).await;
    put(&docs, "/a/xy", json!(3)).await;
    docs.write(Write::Delete { path: p("/a/y") }).await?;
    docs.write(Write::MergePatch {
        path: p("/c"),
        patch: json!({"k": "v"}),
    })
    .await?;

    // The root subscriber has seen the last write, to a third path; everything caused by the
    // earlier writes was pushed before it.
    let seen = recv(root.inbox()).await;
    assert_eq!(
        seen,
        vec![(
            Path::root(),
            json!({"a": {"x": 1, "xy": 3}, "c": {"k": "v"}})
        )]
    );
    assert_eq!(take(sibling.inbox()), vec![]);
    assert_quiet(sibling.inbox()).await;

    stop(docs, task).await;
    Ok(())
}

#[tokio::test]
async fn subscribe_returns_current_values() -> TestResult {
    let (docs, task) = engine().await;
    put(
        &docs,
        "/a",
        json!({"b": {"c": [1, 2]}, "s": "str", "n": null}),
    )
    .await;

    let sub = docs.subscriber();
    let paths = [
        "/a/b",
        "/a/b/c",
        "/a/s",
        "/a/n",
        "/missing",
        "/a/s/under",
        "/a/b/c/0",
    ];
    let values = sub.subscribe(paths.iter().map(|s| p(s)).collect()).await?;
    let values: Vec<Option<Value>> = values.iter().map(|v| v.as_ref().map(js)).collect();
    assert_eq!(
        values,
        vec![
            Some(json!({"c": [1, 2]})),
            Some(json!([1, 2])),
            Some(json!("str")),
            Some(Value::Null),
            None,
            // Under a scalar, and an array index: paths walk object keys only.
            None,
            None,
        ]
    );
    let root = sub.subscribe(vec![Path::root()]).await?;
    assert_eq!(
        root.iter().map(|v| v.as_ref().map(js)).collect::<Vec<_>>(),
        vec![Some(
            json!({"a": {"b": {"c": [1, 2]}, "s": "str", "n": null}})
        )]
    );
    // Subscribing twice to one path returns the value again but registers it only once.
    let again = sub.subscribe(vec![p("/a/s"), p("/a/s")]).await?;
    assert_eq!(again.len(), 2);
    put(&docs, "/a/s", json!("new")).await;
    let got = take(sub.inbox());
    assert_eq!(
        got.iter().filter(|(path, _)| *path == p("/a/s")).count(),
        1,
        "{got:?}"
    );

    stop(docs, task).await;
    Ok(())
}

#[tokio::test]
async fn unsubscribe_returns_only_paths_that_were_subscribed() -> TestResult {
    let (docs, task) = engine().await;
    let s1 = docs.subscriber();
    let s2 = docs.subscriber();
    s1.subscribe(vec![p("/a"), p("/b")]).await?;
    s2.subscribe(vec![p("/b")]).await?;

    // Another subscriber's path does not count.
    assert_eq!(s2.unsubscribe(vec![p("/a")]).await?, Vec::<Path>::new());
    // Unknown paths are ignored; a path listed twice is removed (and reported) once.
    assert_eq!(
        s1.unsubscribe(vec![p("/a"), p("/c"), p("/a")]).await?,
        vec![p("/a")]
    );
    assert_eq!(s1.unsubscribe(vec![p("/a")]).await?, Vec::<Path>::new());

    put(&docs, "/a", json!(1)).await;
    assert_eq!(take(s1.inbox()), vec![]);
    put(&docs, "/b", json!(2)).await;
    assert_eq!(take(s1.inbox()), one("/b", json!(2)));
    assert_eq!(take(s2.inbox()), one("/b", json!(2)));

    // Unsubscribing the last path, then subscribing again, works.
    assert_eq!(s1.unsubscribe(vec![p("/b")]).await?, vec![p("/b")]);
    put(&docs, "/b", json!(3)).await;
    assert_eq!(take(s1.inbox()), vec![]);
    s1.subscribe(vec![p("/b")]).await?;
    put(&docs, "/b", json!(4)).await;
    assert_eq!(take(s1.inbox()), one("/b", json!(4)));

    stop(docs, task).await;
    Ok(())
}

/// Requests of one subscriber are handled in the order they were made, even when they are
/// issued concurrently and land in the same batch.
#[tokio::test]
async fn concurrent_subscribe_then_unsubscribe_are_handled_in_order() -> TestResult {
    let (docs, task) = engine().await;
    let sub = docs.subscriber();
    let (subscribed, unsubscribed) =
        tokio::join!(sub.subscribe(vec![p("/a")]), sub.unsubscribe(vec![p("/a")]));
    assert_eq!(subscribed?, vec![None]);
    assert_eq!(unsubscribed?, vec![p("/a")]);
    put(&docs, "/a", json!(1)).await;
    assert_eq!(take(sub.inbox()), vec![]);

    stop(docs, task).await;
    Ok(())
}

#[tokio::test]
async fn dropping_a_subscriber_leaves_the_others_working() -> TestResult {
    let (docs, task) = engine().await;
    let gone = docs.subscriber();
    let kept = docs.subscriber();
    gone.subscribe(vec![p("/a"), Path::root()]).await?;
    kept.subscribe(vec![p("/a")]).await?;
    drop(gone);

    put(&docs, "/a", json!(1)).await;
    assert_eq!(recv(kept.inbox()).await, one("/a", json!(1)));

    // A new subscriber on the same paths is registered and notified normally.
    let fresh = docs.subscriber();
    assert_eq!(
        fresh
            .subscribe(vec![p("/a")])
            .await?
            .pop()
            .flatten()
            .as_ref()
            .map(js),
        Some(json!(1))
    );
    put(&docs, "/a", json!(2)).await;
    assert_eq!(take(fresh.inbox()), one("/a", json!(2)));
    assert_eq!(take(kept.inbox()), one("/a", json!(2)));

    stop(docs, task).await;
    Ok(())
}

/// Runs `body` on a fresh current-thread runtime with a gauge recorder installed for the
/// engine's metric handles.
fn with_gauges<F: Future<Output = ()>>(body: impl FnOnce(Arc<GaugeRecorder>) -> F) {
    let recorder = Arc::new(GaugeRecorder::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let fut = body(recorder.clone());
    metrics::with_local_recorder(&*recorder, || rt.block_on(fut));
}

const SUBSCRIBERS: &str = "icepeak_subscriber_count";

#[test]
fn dropping_a_subscriber_removes_its_subscriptions() {
    with_gauges(|gauges| async move {
        let (docs, task) = engine().await;
        let gone = docs.subscriber();
        let kept = docs.subscriber();
        gone.subscribe(vec![p("/a"), p("/b/c")]).await.unwrap();
        kept.subscribe(vec![p("/a")]).await.unwrap();
        assert_eq!(gauges.gauge(SUBSCRIBERS), Some(3.0));

        drop(gone);
        // The drop notice is handled before any later request.
        put(&docs, "/a", json!(1)).await;
        assert_eq!(gauges.gauge(SUBSCRIBERS), Some(1.0));
        assert_eq!(take(kept.inbox()), one("/a", json!(1)));

        drop(kept);
        assert_eq!(get(&docs, "/a").await, Some(json!(1)));
        assert_eq!(gauges.gauge(SUBSCRIBERS), Some(0.0));
        stop(docs, task).await;
    });
}

/// A subscriber dropped while its `subscribe` request is still queued (the caller gave up
/// waiting, e.g. the connection closed) must not leave that subscription behind.
#[test]
fn subscriber_dropped_with_a_subscribe_in_flight_leaves_nothing_behind() {
    with_gauges(|gauges| async move {
        let (docs, task) = engine().await;
        let sub = docs.subscriber();
        {
            let mut fut = std::pin::pin!(sub.subscribe(vec![p("/a")]));
            // One poll queues the request; the actor has not run yet (current-thread runtime).
            let polled = fut.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            assert!(matches!(polled, Poll::Pending));
        }
        drop(sub);
        put(&docs, "/a", json!(1)).await;
        assert_eq!(get(&docs, "/a").await, Some(json!(1)));
        assert_eq!(gauges.gauge(SUBSCRIBERS).unwrap_or(0.0), 0.0);
        stop(docs, task).await;
    });
}

#[tokio::test]
async fn coalescing_keeps_only_the_newest_value_per_path() -> TestResult {
    let (docs, task) = engine().await;
    let sub = docs.subscriber();
    sub.subscribe(vec![p("/n"), p("/m")]).await?;

    // Many writes, pipelined (several batches) and sequential, before the subscriber reads.
    let mut pending = Vec::new();
    for i in 0..200 {
        pending.push(docs.try_submit(Write::Put {
            path: p("/n"),
            value: json!(i),
        })?);
    }
    for w in pending {
        w.committed().await?;
    }
    put(&docs, "/m", json!("first")).await;
    for i in 200..220 {
        put(&docs, "/n", json!(i)).await;
    }
    put(&docs, "/m", json!("last")).await;

    // One entry per path, with the newest value, in the order the paths were first queued.
    assert_eq!(
        recv(sub.inbox()).await,
        vec![(p("/n"), json!(219)), (p("/m"), json!("last"))]
    );
    assert_eq!(take(sub.inbox()), vec![]);

    // After reading, the next write is delivered again.
    put(&docs, "/n", json!("again")).await;
    assert_eq!(recv(sub.inbox()).await, one("/n", json!("again")));

    stop(docs, task).await;
    Ok(())
}

#[tokio::test]
async fn a_subscriber_on_several_affected_paths_gets_each_once() -> TestResult {
    let (docs, task) = engine().await;
    let sub = docs.subscriber();
    let twin = docs.subscriber();
    sub.subscribe(vec![p("/a"), p("/a/b"), p("/a/b/c"), p("/z")])
        .await?;
    twin.subscribe(vec![p("/a/b")]).await?;

    put(&docs, "/a/b", json!({"c": true})).await;
    let mut got = take(sub.inbox());
    got.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        got,
        vec![
            (p("/a"), json!({"b": {"c": true}})),
            (p("/a/b"), json!({"c": true})),
            (p("/a/b/c"), json!(true)),
        ]
    );
    assert_eq!(take(twin.inbox()), one("/a/b", json!({"c": true})));

    stop(docs, task).await;
    Ok(())
}

#[tokio::test]
async fn refused_writes_notify_nobody() -> TestResult {
    let (docs, task) = engine().await;
    put(&docs, "/a", json!({"v": 1})).await;
    let sub = docs.subscriber();
    sub.subscribe(vec![Path::root()]).await?;

    let failed = docs
        .write(Write::JsonPatch {
            path: p("/a"),
            patch: json!([{"op": "test", "path": "/v", "value": 2}]),
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(take(sub.inbox()), vec![]);

    put(&docs, "/b", json!(1)).await;
    assert_eq!(
        take(sub.inbox()),
        vec![(Path::root(), json!({"a": {"v": 1}, "b": 1}))]
    );

    stop(docs, task).await;
    Ok(())
}
