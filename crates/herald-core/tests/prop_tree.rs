//! Model-based property tests for the document tree: `tree::put`, `tree::delete`, `tree::get`,
//! `tree::merge_patch` and [`DocOp`] are compared with a small reference interpreter written
//! here, independently of `src/tree.rs`, as pure recursive functions over [`Value`].
//!
//! Also checked: the operation log replays to the same document after a JSON round trip of
//! every operation, `merge_patch` agrees with `json_patch::merge` and with RFC 7396's
//! pseudo-code, and `depth` agrees with the recursive definition.

use herald_core::{DocOp, Path, PathLimits, tree};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Map, Number, Value, json};

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Reference interpreter. Each function consumes or borrows a value and follows the documented
// semantics literally: paths walk object keys only; `put` turns anything on the way that is not
// an object into one; `delete` removes one key from its parent object, or nulls the root.
// ---------------------------------------------------------------------------------------------

fn ref_get(doc: &Value, path: &[String]) -> Option<Value> {
    match path.split_first() {
        None => Some(doc.clone()),
        Some((key, rest)) => match doc {
            Value::Object(map) => map.get(key).and_then(|child| ref_get(child, rest)),
            _ => None,
        },
    }
}

fn ref_put(doc: Value, path: &[String], value: Value) -> Value {
    match path.split_first() {
        None => value,
        Some((key, rest)) => {
            let mut map = match doc {
                Value::Object(map) => map,
                _ => Map::new(),
            };
            // A missing child is as good as a non-object one: it becomes an object if the path
            // goes deeper, or is simply replaced.
            let child = map.remove(key).unwrap_or(Value::Null);
            map.insert(key.clone(), ref_put(child, rest, value));
            Value::Object(map)
        }
    }
}

/// Returns the new document and whether a key was removed.
fn ref_delete(doc: Value, path: &[String]) -> (Value, bool) {
    match path.split_first() {
        None => (Value::Null, true),
        Some((key, rest)) => match doc {
            Value::Object(mut map) if rest.is_empty() => {
                let removed = map.remove(key).is_some();
                (Value::Object(map), removed)
            }
            Value::Object(mut map) => match map.remove(key) {
                None => (Value::Object(map), false),
                Some(child) => {
                    let (child, removed) = ref_delete(child, rest);
                    map.insert(key.clone(), child);
                    (Value::Object(map), removed)
                }
            },
            other => (other, false),
        },
    }
}

/// RFC 7396 §2, `MergePatch(Target, Patch)`, transcribed.
fn ref_merge(target: Value, patch: &Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    let mut target = match target {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    for (name, value) in patch {
        if value.is_null() {
            target.remove(name);
        } else {
            let old = target.remove(name).unwrap_or(Value::Null);
            target.insert(name.clone(), ref_merge(old, value));
        }
    }
    Value::Object(target)
}

/// A scalar is 1 deep; a container is one deeper than its deepest child (`[]` is 1).
fn ref_depth(v: &Value) -> usize {
    let children: Box<dyn Iterator<Item = &Value>> = match v {
        Value::Array(a) => Box::new(a.iter()),
        Value::Object(m) => Box::new(m.values()),
        _ => Box::new(std::iter::empty()),
    };
    1 + children.map(ref_depth).max().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Generators.
// ---------------------------------------------------------------------------------------------

const KEYS: &[&str] = &["a", "b", "c"];

fn key() -> impl Strategy<Value = String> {
    select(KEYS).prop_map(str::to_owned)
}

/// A path of depth 0 to 4 over [`KEYS`]; the root is rare because a write there replaces
/// everything.
fn path_segments() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![1 => Just(Vec::new()), 9 => vec(key(), 1..=4)]
}

fn path_of(segs: &[String]) -> Path {
    Path::from_segments(segs.iter().cloned(), &PathLimits::default()).unwrap()
}

/// Any finite `f64`.
fn any_float() -> BoxedStrategy<Value> {
    any::<f64>()
        .prop_filter_map("JSON has no NaN or infinity", |f| {
            Number::from_f64(f).map(Value::Number)
        })
        .boxed()
}

/// Floats with at most 15 significant digits (`12345678.91`, `-3.5`), which serde_json's
/// default parser reads back exactly; see `log_replay_preserves_arbitrary_floats` for the
/// others.
fn short_float() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<i32>().prop_map(|i| Value::from(f64::from(i) / 100.0)),
        any::<i16>().prop_map(|i| Value::from(f64::from(i) / 1024.0)),
    ]
    .boxed()
}

fn scalar(floats: BoxedStrategy<Value>) -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => floats,
        1 => select(&["", "x", "a", "é", "\"quoted\"", "line\nbreak"][..]).prop_map(Value::from),
    ]
}

/// Scalars, `null`, and small arrays and objects (keys from [`KEYS`], so they collide with
/// paths), nested at most three deep.
fn value_with(floats: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    scalar(floats)
        .prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..3).prop_map(Value::Array),
                btree_map(key(), inner, 0..3).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
        .boxed()
}

fn value() -> BoxedStrategy<Value> {
    value_with(any_float())
}

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<String>, Value),
    Delete(Vec<String>),
    Merge(Vec<String>, Value),
}

fn op_with(values: BoxedStrategy<Value>) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (path_segments(), values.clone()).prop_map(|(p, v)| Op::Put(p, v)),
        2 => path_segments().prop_map(Op::Delete),
        2 => (path_segments(), values).prop_map(|(p, v)| Op::Merge(p, v)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    op_with(value())
}

fn start_doc() -> impl Strategy<Value = Value> {
    prop_oneof![3 => Just(json!({})), 1 => value()]
}

/// Every path over [`KEYS`] of depth 0 to 3.
fn all_probes() -> Vec<Vec<String>> {
    let mut probes = vec![Vec::new()];
    let mut layer = vec![Vec::<String>::new()];
    for _ in 0..3 {
        layer = layer
            .iter()
            .flat_map(|p| {
                KEYS.iter().map(move |k| {
                    let mut q = p.clone();
                    q.push((*k).to_owned());
                    q
                })
            })
            .collect();
        probes.extend(layer.iter().cloned());
    }
    probes
}

fn is_prefix(a: &[String], b: &[String]) -> bool {
    b.starts_with(a)
}

/// Logs `ops` as JSON lines the way the engine journals them, then checks every line decodes
/// to the op it encodes and that replaying the decoded log on a fresh `{}` rebuilds the
/// document (twice, through both `apply` methods, so replay holds no hidden state).
fn check_log_replay(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut doc = json!({});
    let mut log = Vec::new();
    for op in ops {
        let logged = to_doc_op(&doc, op);
        logged.apply(&mut doc);
        let line = serde_json::to_vec(&logged).unwrap();
        prop_assert_eq!(&serde_json::from_slice::<DocOp>(&line).unwrap(), &logged);
        log.push(line);
    }

    let mut replayed = json!({});
    for line in &log {
        serde_json::from_slice::<DocOp>(line)
            .unwrap()
            .apply_owned(&mut replayed);
    }
    prop_assert_eq!(&replayed, &doc);

    let mut again = json!({});
    for line in &log {
        serde_json::from_slice::<DocOp>(line)
            .unwrap()
            .apply(&mut again);
    }
    prop_assert_eq!(&again, &doc);
    Ok(())
}

/// Turns a test op into the logged [`DocOp`] the hub would record against `doc`.
fn to_doc_op(doc: &Value, op: &Op) -> DocOp {
    match op {
        Op::Put(p, v) => DocOp::Put {
            path: path_of(p),
            value: v.clone(),
        },
        Op::Delete(p) => DocOp::Delete { path: path_of(p) },
        Op::Merge(p, patch) => tree::merge_patch(doc, &path_of(p), patch),
    }
}

proptest! {
    #![proptest_config(config())]

    /// Random sequences of writes agree with the reference interpreter, whichever API applies
    /// them (`tree::put`/`delete`, `DocOp::apply`, `DocOp::apply_owned`), and `get` agrees on
    /// every path of depth 0 to 3 after every step.
    #[test]
    fn writes_agree_with_reference(start in start_doc(), ops in vec(op(), 0..20)) {
        let probes = all_probes();
        let mut direct = start.clone();
        let mut applied = start.clone();
        let mut owned = start.clone();
        let mut model = start;

        for op in &ops {
            match op {
                Op::Put(p, v) => {
                    tree::put(&mut direct, &path_of(p), v.clone());
                    model = ref_put(model, p, v.clone());
                }
                Op::Delete(p) => {
                    let removed = tree::delete(&mut direct, &path_of(p));
                    let (next, expected) = ref_delete(model, p);
                    model = next;
                    prop_assert_eq!(removed, expected, "delete {:?}", p);
                }
                Op::Merge(p, patch) => {
                    let expected = ref_merge(ref_get(&model, p).unwrap_or(Value::Null), patch);
                    let logged = tree::merge_patch(&direct, &path_of(p), patch);
                    prop_assert_eq!(
                        &logged,
                        &DocOp::Put { path: path_of(p), value: expected.clone() }
                    );
                    logged.apply(&mut direct);
                    model = ref_put(model, p, expected);
                }
            }
            let logged = to_doc_op(&applied, op);
            prop_assert_eq!(logged.path(), &path_of(match op {
                Op::Put(p, _) | Op::Delete(p) | Op::Merge(p, _) => p,
            }));
            logged.apply(&mut applied);
            to_doc_op(&owned, op).apply_owned(&mut owned);

            prop_assert_eq!(&direct, &model, "after {:?}", op);
            prop_assert_eq!(&applied, &model, "DocOp::apply after {:?}", op);
            prop_assert_eq!(&owned, &model, "DocOp::apply_owned after {:?}", op);
            for probe in &probes {
                prop_assert_eq!(
                    tree::get(&direct, &path_of(probe)).cloned(),
                    ref_get(&model, probe),
                    "get {:?}",
                    probe
                );
            }
        }
    }

    /// The log replays deterministically: every logged op survives a JSON round trip, and
    /// replaying the decoded log on a fresh `{}` rebuilds the same document.
    #[test]
    fn log_replay_is_deterministic(ops in vec(op_with(value_with(short_float())), 0..20)) {
        check_log_replay(&ops)?;
    }

    /// The same with arbitrary floats.
    #[test]
    fn log_replay_preserves_arbitrary_floats(ops in vec(op(), 0..20)) {
        check_log_replay(&ops)?;
    }

    /// `merge_patch` logs a `put` of `json_patch::merge` applied to the current value (`null`
    /// when missing), which is also what RFC 7396's pseudo-code computes.
    #[test]
    fn merge_patch_matches_json_patch_merge(
        doc in value(),
        p in path_segments(),
        patch in value(),
    ) {
        let mut expected = ref_get(&doc, &p).unwrap_or(Value::Null);
        json_patch::merge(&mut expected, &patch);
        prop_assert_eq!(&expected, &ref_merge(ref_get(&doc, &p).unwrap_or(Value::Null), &patch));
        prop_assert_eq!(
            tree::merge_patch(&doc, &path_of(&p), &patch),
            DocOp::Put { path: path_of(&p), value: expected }
        );
    }

    /// `get` after `put` returns the value; paths neither above nor below it are untouched.
    #[test]
    fn get_after_put(doc in value(), p in path_segments(), v in value()) {
        let probes = all_probes();
        let before = doc.clone();
        let mut doc = doc;
        tree::put(&mut doc, &path_of(&p), v.clone());
        prop_assert_eq!(tree::get(&doc, &path_of(&p)), Some(&v));
        for q in probes.iter().filter(|q| !is_prefix(q, &p) && !is_prefix(&p, q)) {
            prop_assert_eq!(
                tree::get(&doc, &path_of(q)),
                tree::get(&before, &path_of(q)),
                "{:?}",
                q
            );
        }
    }

    /// After `delete`, the path is gone (the root becomes `null`), everything below it is
    /// gone, and paths neither above nor below it are untouched.
    #[test]
    fn get_after_delete(doc in value(), p in path_segments()) {
        let probes = all_probes();
        let before = doc.clone();
        let mut doc = doc;
        let existed = tree::get(&before, &path_of(&p)).is_some();
        let removed = tree::delete(&mut doc, &path_of(&p));
        if p.is_empty() {
            prop_assert!(removed);
            prop_assert_eq!(tree::get(&doc, &Path::root()), Some(&Value::Null));
        } else {
            prop_assert_eq!(removed, existed);
            prop_assert_eq!(tree::get(&doc, &path_of(&p)), None);
        }
        for q in &probes {
            let got = tree::get(&doc, &path_of(q));
            if is_prefix(&p, q) && !p.is_empty() {
                prop_assert_eq!(got, None, "{:?} below {:?}", q, p);
            } else if !is_prefix(q, &p) && !is_prefix(&p, q) {
                prop_assert_eq!(got, tree::get(&before, &path_of(q)), "{:?}", q);
            }
        }
        // Deleting what is not there changes nothing.
        if !removed {
            prop_assert_eq!(&doc, &before);
        }
    }

    /// `depth` agrees with the recursive definition.
    #[test]
    fn depth_matches_reference(v in value()) {
        prop_assert_eq!(tree::depth(&v), ref_depth(&v));
    }

    /// `depth` measures deep values (built without recursion) exactly.
    #[test]
    fn depth_of_deep_values(n in 0usize..3000, arrays in vec(any::<bool>(), 1..8)) {
        let mut v = json!(1);
        for (_, array) in (0..n).zip(arrays.iter().cycle()) {
            // Built by hand: `json!` would serialize `v` again, recursively.
            v = if *array {
                Value::Array(vec![Value::Null, v])
            } else {
                Value::Object(Map::from_iter([("k".to_owned(), v), ("s".to_owned(), json!(1))]))
            };
        }
        prop_assert_eq!(tree::depth(&v), n + 1);
        // Take the value apart iteratively: serde_json drops nested values recursively.
        let mut cur = Some(v);
        while let Some(v) = cur.take() {
            cur = match v {
                Value::Array(mut a) => a.pop(),
                Value::Object(mut m) => m.remove("k"),
                _ => None,
            };
        }
    }
}

/// A float a client sent keeps changing across restarts: serde_json reads the request body's
/// `966.1258145908966` as `966.1258145908967` (one ULP off), journals that, and reads the journal
/// back as `966.1258145908968`.
#[test]
fn journaled_float_survives_replay() {
    let value: Value = serde_json::from_str("966.1258145908966").unwrap();
    let op = DocOp::Put {
        path: path_of(&["x".to_owned()]),
        value,
    };
    let mut live = json!({});
    op.apply(&mut live);
    let line = serde_json::to_vec(&op).unwrap();
    let mut replayed = json!({});
    serde_json::from_slice::<DocOp>(&line)
        .unwrap()
        .apply_owned(&mut replayed);
    assert_eq!(replayed, live);
}
