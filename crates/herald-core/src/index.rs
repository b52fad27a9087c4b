//! A path trie holding subscriptions, and the queries fan-out needs.
//!
//! Document subscribers are told about a write at `P` when their path is `P`, an ancestor of
//! `P` or a descendant of `P` ([`PathIndex::affected`]). Finding them costs the length of `P`
//! plus the size of the subtree under `P`, never the total number of subscriptions.

use std::collections::HashMap;

use crate::path::Path;

/// Subscriptions of type `T`, indexed by path.
///
/// # Invariants
/// No node without entries has an empty subtree (empty branches are pruned on removal), so
/// walking a subtree only visits paths that have or lead to subscriptions.
#[derive(Debug)]
pub struct PathIndex<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug)]
struct Node<T> {
    entries: Vec<T>,
    children: HashMap<String, Node<T>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            children: HashMap::new(),
        }
    }
}

impl<T> Default for PathIndex<T> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T> PathIndex<T> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of entries in the index.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the index holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `entry` at `path`.
    pub fn insert(&mut self, path: &Path, entry: T) {
        let node = path.segments().iter().fold(&mut self.root, |n, seg| {
            n.children.entry(seg.clone()).or_default()
        });
        node.entries.push(entry);
        self.len += 1;
    }

    /// Removes the entries at `path` for which `pred` is true, pruning empty branches, and
    /// returns how many were removed.
    pub fn remove(&mut self, path: &Path, mut pred: impl FnMut(&T) -> bool) -> usize {
        let removed = remove_in(&mut self.root, path.segments(), &mut pred);
        self.len -= removed;
        removed
    }

    /// The entries at exactly `path`.
    pub fn get(&self, path: &Path) -> &[T] {
        path.segments()
            .iter()
            .try_fold(&self.root, |n, seg| n.children.get(seg))
            .map(|n| n.entries.as_slice())
            .unwrap_or(&[])
    }

    /// Calls `f` with every path that has entries and is `path`, an ancestor of `path` or a
    /// descendant of `path`, together with its entries. Each such path is visited once.
    pub fn affected(&self, path: &Path, mut f: impl FnMut(&Path, &[T])) {
        let mut cur = Vec::with_capacity(path.depth());
        let mut node = &self.root;
        for seg in path.segments() {
            if !node.entries.is_empty() {
                f(&path_of(&cur), &node.entries);
            }
            match node.children.get(seg) {
                Some(child) => {
                    cur.push(seg.clone());
                    node = child;
                }
                None => return,
            }
        }
        // `node` is at `path`: visit it and its whole subtree.
        let mut stack = vec![(node, cur)];
        while let Some((n, segs)) = stack.pop() {
            if !n.entries.is_empty() {
                f(&path_of(&segs), &n.entries);
            }
            for (k, child) in &n.children {
                let mut s = segs.clone();
                s.push(k.clone());
                stack.push((child, s));
            }
        }
    }
}

fn path_of(segs: &[String]) -> Path {
    // The segments came from valid paths, so they are valid again; limits were checked then.
    Path::from_segments(
        segs.iter().cloned(),
        &crate::path::PathLimits {
            max_segments: usize::MAX,
            max_segment_bytes: usize::MAX,
        },
    )
    .unwrap_or_default()
}

fn remove_in<T>(node: &mut Node<T>, segs: &[String], pred: &mut impl FnMut(&T) -> bool) -> usize {
    match segs.split_first() {
        None => {
            let before = node.entries.len();
            node.entries.retain(|e| !pred(e));
            before - node.entries.len()
        }
        Some((seg, rest)) => {
            let Some(child) = node.children.get_mut(seg) else {
                return 0;
            };
            let removed = remove_in(child, rest, pred);
            if child.entries.is_empty() && child.children.is_empty() {
                node.children.remove(seg);
            }
            removed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::PathLimits;

    fn p(s: &str) -> Path {
        Path::parse_url(s, &PathLimits::default()).unwrap()
    }

    fn affected(idx: &PathIndex<u32>, path: &str) -> Vec<(String, Vec<u32>)> {
        let mut out = Vec::new();
        idx.affected(&p(path), |p, e| out.push((p.to_string(), e.to_vec())));
        out.sort();
        out
    }

    #[test]
    fn finds_ancestors_self_and_descendants_but_not_siblings() {
        let mut idx = PathIndex::new();
        for (i, s) in ["/", "/a", "/a/b", "/a/b/c", "/a/x", "/z"]
            .iter()
            .enumerate()
        {
            idx.insert(&p(s), i as u32);
        }
        assert_eq!(
            affected(&idx, "/a/b"),
            vec![
                ("/".into(), vec![0]),
                ("/a".into(), vec![1]),
                ("/a/b".into(), vec![2]),
                ("/a/b/c".into(), vec![3]),
            ]
        );
        assert_eq!(affected(&idx, "/").len(), 6);
        // A write below every subscription reaches only the ancestors.
        assert_eq!(
            affected(&idx, "/z/q/r"),
            vec![("/".into(), vec![0]), ("/z".into(), vec![5])]
        );
    }

    #[test]
    fn remove_prunes_and_counts() {
        let mut idx = PathIndex::new();
        idx.insert(&p("/a/b"), 1);
        idx.insert(&p("/a/b"), 2);
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.remove(&p("/a/b"), |e| *e == 1), 1);
        assert_eq!(idx.get(&p("/a/b")), &[2]);
        assert_eq!(idx.remove(&p("/a/b"), |_| true), 1);
        assert!(idx.is_empty());
        assert!(idx.root.children.is_empty());
        assert_eq!(idx.remove(&p("/nope"), |_| true), 0);
    }
}
