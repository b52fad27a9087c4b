//! Write semantics through the engine: put and delete (Icepeak insert semantics), merge patch,
//! JSON Patch, the depth limit, queue back-pressure, and read-after-acknowledge.

mod common;

use std::sync::Arc;

use common::*;
use herald_core::Path;
use herald_core::tree::PatchError;
use herald_engine::{Docs, DocsError, DocsOptions, Write};
use herald_store::{MemoryStore, Store};
use serde_json::{Value, json};

async fn engine() -> (Docs, tokio::task::JoinHandle<()>) {
    open(Arc::new(MemoryStore::default()), DocsOptions::default()).await
}

fn put(path: &str, value: Value) -> Write {
    Write::Put {
        path: p(path),
        value,
    }
}

fn delete(path: &str) -> Write {
    Write::Delete { path: p(path) }
}

async fn root(docs: &Docs) -> Value {
    get(docs, "/").await.expect("the root always exists")
}

#[tokio::test]
async fn put_creates_intermediate_objects_and_replaces_non_objects() -> TestResult {
    let (docs, task) = engine().await;
    assert_eq!(root(&docs).await, json!({}));

    docs.write(put("/a/b/c", json!(1))).await?;
    assert_eq!(root(&docs).await, json!({"a": {"b": {"c": 1}}}));
    assert_eq!(get(&docs, "/a/b/c").await, Some(json!(1)));

    // A scalar, an array and a null on the way are replaced by objects.
    docs.write(put("/s", json!("x"))).await?;
    docs.write(put("/s/t", json!(true))).await?;
    docs.write(put("/arr", json!([1, 2]))).await?;
    docs.write(put("/arr/0", json!("zero"))).await?;
    docs.write(put("/nul", Value::Null)).await?;
    assert_eq!(get(&docs, "/nul").await, Some(Value::Null));
    docs.write(put("/nul/k/deep", json!(3))).await?;
    assert_eq!(
        root(&docs).await,
        json!({
            "a": {"b": {"c": 1}},
            "s": {"t": true},
            "arr": {"0": "zero"},
            "nul": {"k": {"deep": 3}}
        })
    );

    // Overwriting keeps siblings.
    docs.write(put("/a/b", json!({"new": [1]}))).await?;
    assert_eq!(get(&docs, "/a").await, Some(json!({"b": {"new": [1]}})));

    // A put at the root replaces everything, with any value.
    docs.write(Write::Put {
        path: Path::root(),
        value: json!([1, 2, 3]),
    })
    .await?;
    assert_eq!(root(&docs).await, json!([1, 2, 3]));
    assert_eq!(get(&docs, "/a").await, None);
    docs.write(put("/k", json!(1))).await?;
    assert_eq!(root(&docs).await, json!({"k": 1}));

    stop(docs, task).await;
    Ok(())
}

#[tokio::test]
async fn delete_semantics() -> TestResult {
    let (docs, task) = engine().await;
    docs.write(put("/a", json!({"b": 1, "c": {"d": 2}, "s": "x"})))
        .await?;

    docs.write(delete("/a/b")).await?;
    assert_eq!(root(&docs).await, json!({"a": {"c": {"d": 2}, "s": "x"}}));
    assert_eq!(get(&docs, "/a/b").await, None);

    // Missing key, missing parent, or a parent that is not an object: nothing changes, and
    // the write still succeeds.
    let before = root(&docs).await;
    for path in ["/a/zz", "/zz/y/x", "/a/s/x", "/a/c/d/e"] {
        docs.write(delete(path)).await?;
        assert_eq!(root(&docs).await, before, "delete {path}");
    }

    // Deleting a subtree removes everything below it.
    docs.write(delete("/a/c")).await?;
    assert_eq!(root(&docs).await, json!({"a": {"s": "x"}}));

    // Deleting the root leaves `null`; a later put makes it an object again.
    docs.write(Write::Delete { path: Path::root() }).await?;
    assert_eq!(root(&docs).await, Value::Null);
    assert_eq!(get(&docs, "/a").await, None);
    docs.write(delete("/a")).await?;
    assert_eq!(root(&docs).await, Value::Null);
    docs.write(put("/x", json!(1))).await?;
    assert_eq!(root(&docs).await, json!({"x": 1}));

    stop(docs, task).await;
    Ok(())
}

#[tokio::test]
async fn merge_patch_follows_rfc7396() -> TestResult {
    let (docs, task) = engine().await;
    docs.write(put("/a", json!({"x": 1, "y": {"p": 1, "q": 2}, "z": [1]})))
        .await?;

    docs.write(Write::MergePatch {
        path: p("/a"),
        patch: json!({"x": null, "y": {"q": null, "r": 3}, "z": [2], "n": "new"}),
    })
    .await?;
    assert_eq!(
        get(&docs, "/a").await,
        Some(json!({"y": {"p": 1, "r": 3}, "z": [2], "n": "new"}))
    );

    // A missing target counts as null: the patch minus its null members is stored, creating
    // the way to it.
    docs.write(Write::MergePatch {
        path: p("/m/n"),
        patch: json!({"k": null, "v": {"w": null, "u": 1}}),
    })
    .await?;
    assert_eq!(get(&docs, "/m/n").await, Some(json!({"v": {"u": 1}})));

    // A non-object patch replaces the value.
    docs.write(Write::MergePatch {
        path: p("/a/y"),
        patch: json!("flat"),
    })
    .await?;
    assert_eq!(get(&docs, "/a/y").await, Some(json!("flat")));

    // An object patch over a scalar starts from an empty object.
    docs.write(Write::MergePatch {
        path: p("/a/y"),
        patch: json!({"o": 1}),
    })
    .await?;
    assert_eq!(get(&docs, "/a/y").await, Some(json!({"o": 1})));

    // At the root.
    docs.write(Write::MergePatch {
        path: Path::root(),
        patch: json!({"a": null, "top": 1}),
    })
    .await?;
    assert_eq!(
        root(&docs).await,
        json!({"m": {"n": {"v": {"u": 1}}}, "top": 1})
    );

    stop(docs, task).await;
    Ok(())
}

#[tokio::test]
async fn json_patch_applies_atomically_or_not_at_all() -> TestResult {
    let (docs, task) = engine().await;
    docs.write(put("/a", json!({"list": [1], "v": 1}))).await?;

    docs.write(Write::JsonPatch {
        path: p("/a"),
        patch: json!([
            {"op": "add", "path": "/list/-", "value": 2},
            {"op": "test", "path": "/v", "value": 1},
            {"op": "replace", "path": "/v", "value": 2},
            {"op": "copy", "from": "/v", "path": "/w"}
        ]),
    })
    .await?;
    assert_eq!(
        get(&docs, "/a").await,
        Some(json!({"list": [1, 2], "v": 2, "w": 2}))
    );

    // A failing `test` after a successful `add`: the whole patch is refused.
    let before = root(&docs).await;
    let err = docs
        .write(Write::JsonPatch {
            path: p("/a"),
            patch: json!([
                {"op": "add", "path": "/list/-", "value": 3},
                {"op": "test", "path": "/v", "value": 999}
            ]),
        })
        .await
        .expect_err("failing test op");
    assert!(
        matches!(err, DocsError::Patch(PatchError::Failed(_))),
        "{err:?}"
    );
    assert_eq!(root(&docs).await, before);

    // An operation on a missing member fails too.
    let err = docs
        .write(Write::JsonPatch {
            path: p("/a"),
            patch: json!([{"op": "remove", "path": "/nope"}]),
        })
        .await
        .expect_err("remove of a missing member");
    assert!(matches!(err, DocsError::Patch(_)), "{err:?}");
    assert_eq!(root(&docs).await, before);

    // Documents that are not JSON Patch arrays are refused.
    for bad in [
        json!({"op": "add", "path": "/x", "value": 1}),
        json!([{"op": "frobnicate", "path": "/x"}]),
        json!([{"op": "add", "value": 1}]),
        json!("add"),
    ] {
        let err = docs
            .write(Write::JsonPatch {
                path: p("/a"),
                patch: bad.clone(),
            })
            .await
            .expect_err("invalid patch document");
        assert!(
            matches!(err, DocsError::Patch(PatchError::Invalid(_))),
            "{bad}: {err:?}"
        );
    }
    assert_eq!(root(&docs).await, before);

    // On a missing target (null), a whole-document `add` works.
    docs.write(Write::JsonPatch {
        path: p("/fresh"),
        patch: json!([{"op": "add", "path": "", "value": {"k": 1}}]),
    })
    .await?;
    assert_eq!(get(&docs, "/fresh").await, Some(json!({"k": 1})));

    // The engine keeps working after refused writes, and logged only accepted ones.
    docs.write(put("/after", json!(true))).await?;
    assert_eq!(get(&docs, "/after").await, Some(json!(true)));

    stop(docs, task).await;
    Ok(())
}

fn nested(levels: usize) -> Value {
    (0..levels.saturating_sub(1)).fold(json!(0), |v, _| json!({ "n": v }))
}

#[tokio::test]
async fn too_deep_writes_are_refused_without_change() -> TestResult {
    let store = Arc::new(MemoryStore::default());
    let opts = DocsOptions {
        max_depth: 6,
        ..DocsOptions::default()
    };
    let (docs, task) = open(store.clone(), opts).await;

    // Path depth + value depth == limit: accepted.
    docs.write(put("/a/b", nested(4))).await?;
    let before = root(&docs).await;
    let seq_before = store.bounds("docs")?.map(|b| b.last);

    let err = docs
        .write(put("/a/b/c", nested(4)))
        .await
        .expect_err("too deep");
    assert!(
        matches!(err, DocsError::TooDeep { depth: 7, max: 6 }),
        "{err:?}"
    );
    let err = docs
        .write(Write::Put {
            path: Path::root(),
            value: nested(7),
        })
        .await
        .expect_err("too deep at root");
    assert!(matches!(err, DocsError::TooDeep { .. }), "{err:?}");

    // Patches are checked on their result.
    let err = docs
        .write(Write::MergePatch {
            path: p("/a/b"),
            patch: json!({"n": {"n": {"n": {"n": 1}}}}),
        })
        .await
        .expect_err("merge patch too deep");
    assert!(matches!(err, DocsError::TooDeep { .. }), "{err:?}");
    let err = docs
        .write(Write::JsonPatch {
            path: p("/a"),
            patch: json!([{"op": "add", "path": "/b/x", "value": [[[[1]]]]}]),
        })
        .await
        .expect_err("json patch too deep");
    assert!(matches!(err, DocsError::TooDeep { .. }), "{err:?}");

    assert_eq!(root(&docs).await, before);
    // Nothing refused was logged.
    assert_eq!(store.bounds("docs")?.map(|b| b.last), seq_before);

    // Deletes are never too deep, and the engine still accepts writes.
    docs.write(delete("/a/b/n/n/n/n/n/n/n")).await?;
    docs.write(put("/ok", json!(1))).await?;
    assert_eq!(get(&docs, "/ok").await, Some(json!(1)));

    stop(docs, task).await;
    Ok(())
}

#[tokio::test]
async fn try_submit_reports_queue_full_while_a_commit_is_stuck() -> TestResult {
    let store = Arc::new(GatedStore::new_closed());
    let _release_on_exit = GateGuard(store.clone());
    let opts = DocsOptions {
        queue_capacity: 2,
        ..DocsOptions::default()
    };
    let (docs, task) = open(store.clone(), opts).await;

    // The first write is taken off the queue and blocks inside `append`.
    let first = docs.try_submit(put("/w/0", json!(0)))?;
    tokio::time::timeout(WAIT, store.entered.notified()).await?;

    // The queue holds `queue_capacity` more requests, then refuses.
    let second = docs.try_submit(put("/w/1", json!(1)))?;
    let third = docs.try_submit(put("/w/2", json!(2)))?;
    let err = docs
        .try_submit(put("/w/3", json!(3)))
        .expect_err("queue must be full");
    assert!(matches!(err, DocsError::QueueFull), "{err:?}");
    let err = docs.try_submit(delete("/w")).expect_err("still full");
    assert!(matches!(err, DocsError::QueueFull), "{err:?}");

    // `write` waits for space instead of failing.
    let waiting = tokio::spawn({
        let docs = docs.clone();
        async move { docs.write(put("/w/4", json!(4))).await }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());

    store.open_gate();
    for pending in [first, second, third] {
        tokio::time::timeout(WAIT, pending.committed()).await??;
    }
    tokio::time::timeout(WAIT, waiting).await???;
    assert_eq!(
        get(&docs, "/w").await,
        Some(json!({"0": 0, "1": 1, "2": 2, "4": 4}))
    );

    // With the queue drained, `try_submit` works again.
    docs.try_submit(put("/w/5", json!(5)))?.committed().await?;
    assert_eq!(get(&docs, "/w/5").await, Some(json!(5)));

    stop(docs, task).await;
    Ok(())
}

#[tokio::test]
async fn reads_see_acknowledged_writes() -> TestResult {
    let (docs, task) = engine().await;

    // Sequential: every acknowledged write is visible to the next read.
    for i in 0..50 {
        docs.write(put("/seq", json!(i))).await?;
        assert_eq!(get(&docs, "/seq").await, Some(json!(i)));
    }

    // Concurrent writers: each reads its own acknowledged write, possibly in a batch with
    // other writers' requests.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let docs = docs.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let path = format!("/w{w}/{i}");
                docs.write(put(&path, json!(i))).await.expect("write");
                let got = docs.get(p(&path)).await.expect("get");
                assert_eq!(got.as_ref().map(js), Some(json!(i)), "{path}");
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(WAIT, t).await??;
    }

    // Pipelined submits: once each is committed, all of them are visible.
    let pending: Vec<_> = (0..100)
        .map(|i| docs.try_submit(put(&format!("/pipe/{i}"), json!(i))))
        .collect::<Result<_, _>>()?;
    for w in pending {
        w.committed().await?;
    }
    let pipe = get(&docs, "/pipe").await.expect("pipe exists");
    assert_eq!(pipe.as_object().map(|m| m.len()), Some(100));

    // Writes after shutdown are refused as closed.
    let writer = docs.clone();
    stop(docs, task).await;
    let err = writer
        .write(put("/late", json!(1)))
        .await
        .expect_err("closed");
    assert!(matches!(err, DocsError::Closed), "{err:?}");
    assert!(matches!(writer.get(p("/")).await, Err(DocsError::Closed)));
    assert!(matches!(writer.shutdown().await, Err(DocsError::Closed)));
    Ok(())
}
