//! Model-based test of the document engine: random sequences of writes, reads, clean restarts
//! and crashes are run against the engine on a shared `MemoryStore` and against a reference
//! model, a plain `serde_json::Value` updated by the small interpreter below (written here,
//! independently of `herald_core::tree`).
//!
//! Writes are pipelined (`try_submit`) until the next read or restart, so they form batches.
//! `snapshot_every` is tiny, so background snapshots and log trims interleave with the writes,
//! and recovery mixes snapshots with log replay.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use herald_core::{Path, PathLimits};
use herald_engine::{Docs, DocsOptions, Pending, Write};
use herald_store::{MemoryStore, Store};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Map, Value};

// ---------------------------------------------------------------------------------------------
// Reference interpreter: paths walk object keys only; `put` turns anything on the way that is
// not an object into one; `delete` removes one key from its parent object, or nulls the root;
// a merge patch (RFC 7396) is merged into the value at the path (missing counts as null) and
// the result is put there.
// ---------------------------------------------------------------------------------------------

fn ref_get<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = doc;
    for key in path {
        match cur {
            Value::Object(map) => cur = map.get(key)?,
            _ => return None,
        }
    }
    Some(cur)
}

fn ref_put(doc: Value, path: &[String], value: Value) -> Value {
    let Some((key, rest)) = path.split_first() else {
        return value;
    };
    let mut map = match doc {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let child = map.remove(key).unwrap_or(Value::Null);
    map.insert(key.clone(), ref_put(child, rest, value));
    Value::Object(map)
}

fn ref_delete(doc: &mut Value, path: &[String]) {
    let Some((key, rest)) = path.split_first() else {
        *doc = Value::Null;
        return;
    };
    let Value::Object(map) = doc else { return };
    if rest.is_empty() {
        map.remove(key);
    } else if let Some(child) = map.get_mut(key) {
        ref_delete(child, rest);
    }
}

fn ref_merge(target: Value, patch: &Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    let mut out = match target {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    for (key, value) in patch {
        if value.is_null() {
            out.remove(key);
        } else {
            let cur = out.remove(key).unwrap_or(Value::Null);
            out.insert(key.clone(), ref_merge(cur, value));
        }
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------------
// Operations and their generators.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<String>, Value),
    Delete(Vec<String>),
    MergePatch(Vec<String>, Value),
    Get(Vec<String>),
    /// `shutdown()` and reopen.
    Restart,
    /// Abort the actor (no final snapshot) and reopen.
    Crash,
}

fn key() -> impl Strategy<Value = String> {
    select(&["a", "b", "c"][..]).prop_map(str::to_owned)
}

fn path() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![1 => Just(Vec::new()), 12 => vec(key(), 1..=3)]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..50).prop_map(Value::from),
        "[a-z]{0,3}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 10, 3, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..3).prop_map(Value::Array),
            btree_map(key(), inner, 0..3).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn merge_patch() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => btree_map(key(), value(), 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => value(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (path(), value()).prop_map(|(p, v)| Op::Put(p, v)),
        2 => path().prop_map(Op::Delete),
        3 => (path(), merge_patch()).prop_map(|(p, v)| Op::MergePatch(p, v)),
        3 => path().prop_map(Op::Get),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
    ]
}

fn engine_path(segments: &[String]) -> Path {
    Path::from_segments(segments.iter().cloned(), &PathLimits::default()).expect("valid path")
}

// ---------------------------------------------------------------------------------------------
// The runner.
// ---------------------------------------------------------------------------------------------

struct Run {
    store: Arc<MemoryStore>,
    docs: Docs,
    task: tokio::task::JoinHandle<()>,
    pending: Vec<Pending>,
    model: Value,
    accepted: u64,
}

fn engine_options() -> DocsOptions {
    DocsOptions {
        snapshot_every: 3,
        max_batch: 4,
        ..DocsOptions::default()
    }
}

impl Run {
    async fn settle(&mut self) -> Result<(), TestCaseError> {
        for w in self.pending.drain(..) {
            let res = tokio::time::timeout(WAIT, w.committed()).await;
            prop_assert!(matches!(res, Ok(Ok(()))), "write failed: {res:?}");
        }
        Ok(())
    }

    async fn reopen(&mut self) {
        wait_released(&self.store).await;
        let (docs, task) = open(self.store.clone(), engine_options()).await;
        self.docs = docs;
        self.task = task;
    }

    async fn check_root(&self, when: &str) -> Result<(), TestCaseError> {
        let got = get(&self.docs, "/").await;
        prop_assert_eq!(got.as_ref(), Some(&self.model), "root {}", when);
        Ok(())
    }

    fn submit(&mut self, write: Write) -> Result<(), TestCaseError> {
        let pending = self
            .docs
            .try_submit(write)
            .map_err(|e| TestCaseError::fail(format!("submit: {e}")))?;
        self.pending.push(pending);
        self.accepted += 1;
        Ok(())
    }

    async fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Put(path, value) => {
                self.submit(Write::Put {
                    path: engine_path(&path),
                    value: value.clone(),
                })?;
                let doc = std::mem::take(&mut self.model);
                self.model = ref_put(doc, &path, value);
            }
            Op::Delete(path) => {
                self.submit(Write::Delete {
                    path: engine_path(&path),
                })?;
                ref_delete(&mut self.model, &path);
            }
            Op::MergePatch(path, patch) => {
                self.submit(Write::MergePatch {
                    path: engine_path(&path),
                    patch: patch.clone(),
                })?;
                let current = ref_get(&self.model, &path).cloned().unwrap_or(Value::Null);
                let merged = ref_merge(current, &patch);
                let doc = std::mem::take(&mut self.model);
                self.model = ref_put(doc, &path, merged);
            }
            Op::Get(path) => {
                // Reads are only promised to see acknowledged writes.
                self.settle().await?;
                let got = self
                    .docs
                    .get(engine_path(&path))
                    .await
                    .map_err(|e| TestCaseError::fail(format!("get: {e}")))?;
                let got: Option<Value> = got.map(|b| js(&b));
                prop_assert_eq!(got.as_ref(), ref_get(&self.model, &path), "get {:?}", path);
            }
            Op::Restart => {
                // Shutdown handles the writes queued before it, then stops.
                let res = tokio::time::timeout(WAIT, self.docs.shutdown()).await;
                prop_assert!(matches!(res, Ok(Ok(()))), "shutdown: {res:?}");
                self.settle().await?;
                let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
                prop_assert!(tokio::time::timeout(WAIT, task).await.is_ok());
                self.reopen().await;
                self.check_root("after restart").await?;
            }
            Op::Crash => {
                // Only acknowledged writes are promised to survive.
                self.settle().await?;
                let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
                let docs = self.docs.clone();
                crash(docs, task).await;
                self.reopen().await;
                self.check_root("after crash").await?;
            }
        }
        Ok(())
    }
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let store = Arc::new(MemoryStore::default());
    let (docs, task) = open(store.clone(), engine_options()).await;
    let mut run = Run {
        store,
        docs,
        task,
        pending: Vec::new(),
        model: Value::Object(Map::new()),
        accepted: 0,
    };
    for op in ops {
        run.step(op).await?;
    }
    run.settle().await?;
    run.check_root("at the end").await?;
    // Every accepted write got exactly one sequence number.
    let last = run
        .store
        .bounds("docs")
        .expect("bounds")
        .map_or(0, |b| b.last);
    prop_assert_eq!(last, run.accepted);
    // A final clean restart recovers the same tree.
    run.step(Op::Restart).await?;
    let Run { docs, task, .. } = run;
    stop(docs, task).await;
    Ok(())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn engine_matches_reference_model(ops in vec(op(), 1..=40)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            match tokio::time::timeout(Duration::from_secs(60), run(ops)).await {
                Ok(result) => result,
                Err(_) => Err(TestCaseError::fail("model run timed out")),
            }
        })?;
    }
}

/// The reference interpreter itself, on a few hand-checked cases.
#[test]
fn reference_interpreter_sanity() {
    use serde_json::json;
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let doc = ref_put(json!({"a": 5}), &s(&["a", "b"]), json!(1));
    assert_eq!(doc, json!({"a": {"b": 1}}));
    let mut doc = json!({"a": {"b": 1, "c": 2}});
    ref_delete(&mut doc, &s(&["a", "b"]));
    ref_delete(&mut doc, &s(&["a", "c", "x"]));
    assert_eq!(doc, json!({"a": {"c": 2}}));
    ref_delete(&mut doc, &[]);
    assert_eq!(doc, Value::Null);
    assert_eq!(
        ref_merge(
            json!({"x": 1, "y": {"p": 1}}),
            &json!({"x": null, "y": {"q": 2}})
        ),
        json!({"y": {"p": 1, "q": 2}})
    );
    assert_eq!(ref_merge(json!(3), &json!({"k": null})), json!({}));
    assert_eq!(ref_get(&json!({"a": [1]}), &s(&["a", "0"])), None);
}
