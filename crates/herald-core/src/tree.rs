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
/// [`PatchError`] when `patch` is not a JSON Patch array or an operation fails; `doc` is not
/// changed in either case.
pub fn json_patch(doc: &Value, path: &Path, patch: Value) -> Result<DocOp, PatchError> {
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(PatchError::Invalid)?;
    let mut target = get(doc, path).cloned().unwrap_or(Value::Null);
    json_patch::patch(&mut target, &patch).map_err(PatchError::Failed)?;
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
        let op = json_patch(
            &doc,
            &p("/a"),
            json!([{"op": "add", "path": "/list/-", "value": 2}, {"op": "test", "path": "/list/0", "value": 1}]),
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
                json!([{"op": "test", "path": "/list/0", "value": 9}])
            ),
            Err(PatchError::Failed(_))
        ));
        assert!(matches!(
            json_patch(&doc, &p("/a"), json!({"op": "add"})),
            Err(PatchError::Invalid(_))
        ));
    }

    #[test]
    fn depth_counts_nesting() {
        assert_eq!(depth(&json!(1)), 1);
        assert_eq!(depth(&json!([[], {"a": [1]}])), 4);
    }
}
