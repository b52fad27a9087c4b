//! The JSON document tree and the write operations on it.
//!
//! The tree is one [`serde_json::Value`]; a [`Path`] addresses a value by walking object keys.
//! Every accepted write is reduced to a [`DocOp`] (`put` or `delete`) before it is logged, so
//! the log replays deterministically whatever API produced the write: an RFC 7396 merge patch or
//! an RFC 6902 JSON Patch is applied once, at write time, and logged as a `put` of its result.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::path::Path;

/// Returns the value at `path`, or `None` when a key is missing or a value on the way is not an
/// object.
pub fn get<'a>(doc: &'a Value, path: &Path) -> Option<&'a Value> {
    path.segments()
        .iter()
        .try_fold(doc, |v, seg| v.as_object()?.get(seg))
}

/// Stores `value` at `path` with Icepeak's insert semantics: missing keys on the way are created
/// as objects, and a value on the way that is not an object (scalar, array, null) is replaced by
/// an object. A put at the root replaces the whole document.
pub fn put(doc: &mut Value, path: &Path, value: Value) {
    let Some((last, parents)) = path.segments().split_last() else {
        *doc = value;
        return;
    };
    let mut cur = doc;
    for seg in parents {
        cur = ensure_object(cur)
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    ensure_object(cur).insert(last.clone(), value);
}

fn ensure_object(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(m) => m,
        // Just made an object above.
        _ => unreachable!("value was replaced by an object"),
    }
}

/// Removes the key at `path` from its parent object. Nothing changes when the path does not
/// exist or a parent is not an object. Deleting the root sets the document to `null`.
///
/// Returns whether anything was removed (always `true` for the root).
pub fn delete(doc: &mut Value, path: &Path) -> bool {
    let Some((last, parents)) = path.segments().split_last() else {
        *doc = Value::Null;
        return true;
    };
    let parent = parents
        .iter()
        .try_fold(doc, |v, seg| v.as_object_mut()?.get_mut(seg));
    parent
        .and_then(Value::as_object_mut)
        .is_some_and(|m| m.remove(last).is_some())
}

/// A logged write to the document tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum DocOp {
    /// Store `value` at `path` ([`put`]).
    Put {
        /// Where.
        path: Path,
        /// The new value.
        value: Value,
    },
    /// Remove `path` ([`delete`]).
    Delete {
        /// Where.
        path: Path,
    },
}

impl DocOp {
    /// The path the operation writes.
    pub fn path(&self) -> &Path {
        match self {
            DocOp::Put { path, .. } | DocOp::Delete { path } => path,
        }
    }

    /// Applies the operation to `doc`.
    pub fn apply(&self, doc: &mut Value) {
        match self {
            DocOp::Put { path, value } => put(doc, path, value.clone()),
            DocOp::Delete { path } => {
                delete(doc, path);
            }
        }
    }

    /// Applies the operation to `doc`, consuming it (no clone of the value).
    pub fn apply_owned(self, doc: &mut Value) {
        match self {
            DocOp::Put { path, value } => put(doc, &path, value),
            DocOp::Delete { path } => {
                delete(doc, &path);
            }
        }
    }
}

/// Why a patch could not be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// The body is not a JSON Patch document (an array of operations).
    #[error("invalid JSON Patch document: {0}")]
    Invalid(#[source] serde_json::Error),
    /// An operation failed (a `test` did not match, a path is missing, ...).
    #[error("JSON Patch could not be applied: {0}")]
    Failed(#[source] json_patch::PatchError),
    /// The patch has more operations than [`PatchLimits::max_ops`].
    #[error("a JSON Patch may have at most {max} operations")]
    TooManyOps {
        /// The limit.
        max: usize,
    },
    /// The result would be larger than [`PatchLimits::max_bytes`] of JSON.
    #[error("the patched value would be larger than {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// The result would be nested deeper than [`PatchLimits::max_depth`].
    #[error("the patched value would be nested deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
}

/// Bounds on applying a JSON Patch that comes from a client.
///
/// Without them a small patch can exhaust the server: each `copy` of a value into itself
/// doubles its size (30 operations make a billion elements) or its depth (a dozen make a value
/// deep enough to overflow the stack when it is cloned or dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchLimits {
    /// The most operations in one patch.
    pub max_ops: usize,
    /// The largest result, in bytes of compact JSON.
    pub max_bytes: usize,
    /// The deepest result, counted as [`depth`] counts (kept at or below serde_json's parser
    /// limit of 128 so that the result can always be read back).
    pub max_depth: usize,
}

impl Default for PatchLimits {
    fn default() -> Self {
        Self {
            max_ops: 1024,
            max_bytes: 10 * 1024 * 1024,
            max_depth: 128,
        }
    }
}

/// Applies `ops` to `doc` one operation at a time within `limits`.
///
/// Before each operation that inserts a value (`add`, `replace`, and a `copy` or `move` to a
/// deeper place than its source) the depth it would land at is checked; after each `copy`,
/// the only operation that can grow a value beyond its size plus the patch's, the result is
/// measured, stopping at `max_bytes`. So the work is bounded by `max_ops` measurements of at
/// most `max_bytes`, and nothing deeper than `max_depth` is ever built.
///
/// `doc` must itself be at most `max_depth` deep (any value serde_json parsed is).
///
/// # Errors
/// [`PatchError::TooManyOps`], [`PatchError::TooDeep`], [`PatchError::TooLarge`], or
/// [`PatchError::Failed`] when an operation fails. On error `doc` may hold the operations
/// applied before the failing one: patch a copy.
pub fn apply_patch(
    doc: &mut Value,
    ops: &[json_patch::PatchOperation],
    limits: &PatchLimits,
) -> Result<(), PatchError> {
    use json_patch::PatchOperation;
    if ops.len() > limits.max_ops {
        return Err(PatchError::TooManyOps {
            max: limits.max_ops,
        });
    }
    for op in ops {
        if landing_depth(doc, op) > limits.max_depth {
            return Err(PatchError::TooDeep {
                max: limits.max_depth,
            });
        }
        json_patch::patch(doc, std::slice::from_ref(op)).map_err(PatchError::Failed)?;
        if matches!(op, PatchOperation::Copy(_)) && json_len_exceeds(doc, limits.max_bytes) {
            return Err(PatchError::TooLarge {
                max: limits.max_bytes,
            });
        }
    }
    Ok(())
}

/// How deep the value `op` inserts into `doc` ends up (its path's length plus its own
/// [`depth`]); 0 for operations that insert nothing or cannot nest deeper than `doc` is.
fn landing_depth(doc: &Value, op: &json_patch::PatchOperation) -> usize {
    use json_patch::PatchOperation;
    let (path, value) = match op {
        PatchOperation::Add(o) => (&o.path, Some(&o.value)),
        PatchOperation::Replace(o) => (&o.path, Some(&o.value)),
        PatchOperation::Copy(o) if o.path.count() > o.from.count() => {
            (&o.path, doc.pointer(o.from.as_str()))
        }
        PatchOperation::Move(o) if o.path.count() > o.from.count() => {
            (&o.path, doc.pointer(o.from.as_str()))
        }
        _ => return 0,
    };
    // A missing source fails the operation anyway.
    path.count().saturating_add(value.map_or(0, depth))
}

/// Whether `value` serializes to more than `limit` bytes (stops counting past the limit).
fn json_len_exceeds(value: &Value, limit: usize) -> bool {
    struct Counter {
        n: usize,
        limit: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.n = self.n.saturating_add(buf.len());
            if self.n > self.limit {
                Err(std::io::Error::other("over the limit"))
            } else {
                Ok(buf.len())
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(&mut Counter { n: 0, limit }, value).is_err()
}

/// Computes the `put` that results from merging `patch` (RFC 7396) into the value at `path`.
/// A missing value is treated as `null`, so the patch (minus its `null` members) becomes the new
/// value.
pub fn merge_patch(doc: &Value, path: &Path, patch: &Value) -> DocOp {
    let mut target = get(doc, path).cloned().unwrap_or(Value::Null);
    json_patch::merge(&mut target, patch);
    DocOp::Put {
        path: path.clone(),
        value: target,
    }
}

/// Computes the `put` that results from applying the RFC 6902 JSON Patch `patch` to the value at
/// `path` (a missing value is `null`).
///
/// # Errors
/// [`PatchError`] when `patch` is not a JSON Patch array, an operation fails, or the patch
/// goes beyond `limits` (see [`apply_patch`]); `doc` is not changed in any case.
pub fn json_patch(
    doc: &Value,
    path: &Path,
    patch: Value,
    limits: &PatchLimits,
) -> Result<DocOp, PatchError> {
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(PatchError::Invalid)?;
    if patch.0.len() > limits.max_ops {
        return Err(PatchError::TooManyOps {
            max: limits.max_ops,
        });
    }
    let mut target = get(doc, path).cloned().unwrap_or(Value::Null);
    apply_patch(&mut target, &patch.0, limits)?;
    Ok(DocOp::Put {
        path: path.clone(),
        value: target,
    })
}

/// The nesting depth of a JSON value (a scalar is 1, `[]` is 1, `[[]]` is 2).
pub fn depth(v: &Value) -> usize {
    // Iterative so that measuring a hostile value cannot overflow the stack.
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|c| (c, d + 1))),
            Value::Object(m) => stack.extend(m.values().map(|c| (c, d + 1))),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::PathLimits;
    use serde_json::json;

    fn p(s: &str) -> Path {
        Path::parse_url(s, &PathLimits::default()).unwrap()
    }

    #[test]
    fn put_creates_intermediate_objects() {
        let mut doc = json!({});
        put(&mut doc, &p("/a/b/c"), json!(1));
        assert_eq!(doc, json!({"a": {"b": {"c": 1}}}));
        put(&mut doc, &p("/a/x"), json!("y"));
        assert_eq!(doc, json!({"a": {"b": {"c": 1}, "x": "y"}}));
    }

    #[test]
    fn put_replaces_non_objects_on_the_way() {
        for start in [json!(5), json!([1, 2]), json!(null), json!("s")] {
            let mut doc = json!({ "a": start });
            put(&mut doc, &p("/a/b"), json!(true));
            assert_eq!(doc, json!({"a": {"b": true}}));
        }
        let mut doc = json!(3);
        put(&mut doc, &p("/k"), json!(null));
        assert_eq!(doc, json!({"k": null}));
    }

    #[test]
    fn put_at_root_replaces_everything() {
        let mut doc = json!({"a": 1});
        put(&mut doc, &Path::root(), json!([1]));
        assert_eq!(doc, json!([1]));
    }

    #[test]
    fn get_walks_objects_only() {
        let doc = json!({"a": {"b": [1, 2]}, "s": 1});
        assert_eq!(get(&doc, &p("/a/b")), Some(&json!([1, 2])));
        assert_eq!(get(&doc, &p("/a/b/0")), None);
        assert_eq!(get(&doc, &p("/s/x")), None);
        assert_eq!(get(&doc, &p("/missing")), None);
        assert_eq!(get(&doc, &Path::root()), Some(&doc));
    }

    #[test]
    fn delete_removes_last_key_only() {
        let mut doc = json!({"a": {"b": 1, "c": 2}});
        assert!(delete(&mut doc, &p("/a/b")));
        assert_eq!(doc, json!({"a": {"c": 2}}));
        assert!(!delete(&mut doc, &p("/a/zz/q")));
        assert!(!delete(&mut doc, &p("/a/c/q")));
        assert_eq!(doc, json!({"a": {"c": 2}}));
        assert!(delete(&mut doc, &Path::root()));
        assert_eq!(doc, Value::Null);
    }

    #[test]
    fn doc_op_serializes_like_the_icepeak_journal() {
        let op = DocOp::Put {
            path: p("/a/b"),
            value: json!(1),
        };
        assert_eq!(
            serde_json::to_value(&op).unwrap(),
            json!({"op": "put", "path": ["a", "b"], "value": 1})
        );
        let del = DocOp::Delete { path: p("/a") };
        let back: DocOp = serde_json::from_str(&serde_json::to_string(&del).unwrap()).unwrap();
        assert_eq!(back, del);
    }

    #[test]
    fn merge_patch_follows_rfc7396() {
        let doc = json!({"a": {"x": 1, "y": 2}});
        let op = merge_patch(&doc, &p("/a"), &json!({"y": null, "z": 3}));
        assert_eq!(
            op,
            DocOp::Put {
                path: p("/a"),
                value: json!({"x": 1, "z": 3})
            }
        );
        let op = merge_patch(&doc, &p("/new"), &json!({"k": null, "v": 1}));
        assert_eq!(
            op,
            DocOp::Put {
                path: p("/new"),
                value: json!({"v": 1})
            }
        );
    }

    #[test]
    fn json_patch_follows_rfc6902() {
        let doc = json!({"a": {"list": [1]}});
        let limits = PatchLimits::default();
        let op = json_patch(
            &doc,
            &p("/a"),
            json!([{"op": "add", "path": "/list/-", "value": 2}, {"op": "test", "path": "/list/0", "value": 1}]),
            &limits,
        )
        .unwrap();
        assert_eq!(
            op,
            DocOp::Put {
                path: p("/a"),
                value: json!({"list": [1, 2]})
            }
        );
        assert!(matches!(
            json_patch(
                &doc,
                &p("/a"),
                json!([{"op": "test", "path": "/list/0", "value": 9}]),
                &limits,
            ),
            Err(PatchError::Failed(_))
        ));
        assert!(matches!(
            json_patch(&doc, &p("/a"), json!({"op": "add"}), &limits),
            Err(PatchError::Invalid(_))
        ));
    }

    fn ops(v: Value) -> Vec<json_patch::PatchOperation> {
        serde_json::from_value::<json_patch::Patch>(v).unwrap().0
    }

    fn nested(levels: usize) -> Value {
        (1..levels).fold(json!([]), |v, _| json!([v]))
    }

    #[test]
    fn copy_bombs_are_refused_by_size() {
        // Each copy of the array into itself doubles it: 40 of them would need 2^40 elements.
        let mut doc = json!(["0123456789"]);
        let patch = ops(Value::Array(vec![
            json!({"op": "copy", "from": "", "path": "/-"});
            40
        ]));
        let limits = PatchLimits {
            max_bytes: 10_000,
            ..PatchLimits::default()
        };
        assert!(matches!(
            apply_patch(&mut doc, &patch, &limits),
            Err(PatchError::TooLarge { max: 10_000 })
        ));
        assert!(!json_len_exceeds(&doc, 2 * 10_000 + 2));
    }

    #[test]
    fn copy_bombs_are_refused_by_depth() {
        // Copying a value into its own innermost array doubles its depth.
        let into_innermost = |levels: usize| format!("{}/-", "/0".repeat(levels - 1));
        let limits = PatchLimits::default();
        let mut shallow = nested(20);
        let ok = ops(json!([{"op": "copy", "from": "", "path": into_innermost(20)}]));
        apply_patch(&mut shallow, &ok, &limits).unwrap();
        assert_eq!(depth(&shallow), 40);

        let mut deep = nested(100);
        let bomb = ops(json!([{"op": "copy", "from": "", "path": into_innermost(100)}]));
        assert!(matches!(
            apply_patch(&mut deep, &bomb, &limits),
            Err(PatchError::TooDeep { max: 128 })
        ));
        let add = ops(json!([{"op": "add", "path": into_innermost(100), "value": nested(40)}]));
        assert!(matches!(
            apply_patch(&mut deep, &add, &limits),
            Err(PatchError::TooDeep { .. })
        ));
        // Moving a subtree deeper is measured; moving it up is not refused.
        let mut moved = json!({"a": nested(100), "b": nested(40)});
        let down =
            ops(json!([{"op": "move", "from": "/b", "path": format!("/a{}", "/0".repeat(99))}]));
        assert!(matches!(
            apply_patch(&mut moved, &down, &limits),
            Err(PatchError::TooDeep { .. })
        ));
        let up =
            ops(json!([{"op": "move", "from": format!("/a{}", "/0".repeat(50)), "path": "/c"}]));
        apply_patch(&mut moved, &up, &limits).unwrap();
    }

    #[test]
    fn patches_are_limited_in_operations() {
        let limits = PatchLimits {
            max_ops: 2,
            ..PatchLimits::default()
        };
        let three = Value::Array(vec![json!({"op": "test", "path": "", "value": {}}); 3]);
        assert!(matches!(
            json_patch(&json!({}), &Path::root(), three, &limits),
            Err(PatchError::TooManyOps { max: 2 })
        ));
    }

    #[test]
    fn depth_counts_nesting() {
        assert_eq!(depth(&json!(1)), 1);
        assert_eq!(depth(&json!([[], {"a": [1]}])), 4);
    }
}
