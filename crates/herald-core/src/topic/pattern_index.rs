//! A trie of path patterns, for wildcard subscriptions to topics.

use std::collections::HashMap;

use crate::grant::{PathPattern, PatternSegment};
use crate::path::Path;

/// Entries of type `T` keyed by [`PathPattern`], found by the paths the patterns match.
///
/// A trie over pattern segments: each node has a child per literal segment, one child for `+`,
/// the entries of the patterns that end at it, and those of the patterns that end at it with a
/// final `#`. [`PatternIndex::matches`] follows, segment by segment, the literal child equal to
/// the path's segment and the `+` child, so it visits only the nodes whose pattern prefix
/// matches a prefix of the path (one per level of the path, times the branching of `+`s in the
/// stored patterns) and the matching entries; patterns that diverge from the path are never
/// looked at, however many there are.
///
/// # Invariants
/// Every node other than the root holds an entry or has a child (empty branches are pruned on
/// removal), so walking never visits a node that leads to no pattern.
#[derive(Debug)]
pub struct PatternIndex<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug)]
struct Node<T> {
    /// Entries of the patterns that end here.
    exact: Vec<T>,
    /// Entries of the patterns that end here followed by `#`.
    rest: Vec<T>,
    literals: HashMap<String, Node<T>>,
    any: Option<Box<Node<T>>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            exact: Vec::new(),
            rest: Vec::new(),
            literals: HashMap::new(),
            any: None,
        }
    }
}

impl<T> Node<T> {
    fn child(&self, seg: &PatternSegment) -> Option<&Node<T>> {
        match seg {
            PatternSegment::Literal(l) => self.literals.get(l),
            PatternSegment::Any => self.any.as_deref(),
            PatternSegment::Rest => None,
        }
    }

    fn child_mut(&mut self, seg: &PatternSegment) -> Option<&mut Node<T>> {
        match seg {
            PatternSegment::Literal(l) => self.literals.get_mut(l),
            PatternSegment::Any => self.any.as_deref_mut(),
            PatternSegment::Rest => None,
        }
    }

    fn children(&self) -> usize {
        self.literals.len() + usize::from(self.any.is_some())
    }

    fn has_entries(&self) -> bool {
        !self.exact.is_empty() || !self.rest.is_empty()
    }
}

impl<T> Default for PatternIndex<T> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

/// A pattern split into the segments that name its trie node and whether it ends in `#`.
fn split_rest(pattern: &PathPattern) -> (&[PatternSegment], bool) {
    match pattern.segments().split_last() {
        Some((PatternSegment::Rest, body)) => (body, true),
        _ => (pattern.segments(), false),
    }
}

impl<T> PatternIndex<T> {
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

    /// Adds `entry` under `pattern`. The same pattern may hold any number of entries, equal
    /// ones included.
    pub fn insert(&mut self, pattern: &PathPattern, entry: T) {
        let (body, rest) = split_rest(pattern);
        let mut node = &mut self.root;
        for seg in body {
            node = match seg {
                PatternSegment::Literal(l) => node.literals.entry(l.clone()).or_default(),
                // `Rest` is only ever last, so `body` holds none; were it there, matching it
                // like `+` would still keep the trie consistent.
                PatternSegment::Any | PatternSegment::Rest => node.any.get_or_insert_default(),
            };
        }
        if rest {
            node.rest.push(entry);
        } else {
            node.exact.push(entry);
        }
        self.len += 1;
    }

    /// Removes the entries under exactly `pattern` (not those of other patterns matching the
    /// same paths) for which `pred` is true, prunes branches left empty, and returns how many
    /// were removed.
    pub fn remove(&mut self, pattern: &PathPattern, mut pred: impl FnMut(&T) -> bool) -> usize {
        let (body, rest) = split_rest(pattern);
        let mut node = &mut self.root;
        for seg in body {
            match node.child_mut(seg) {
                Some(child) => node = child,
                None => return 0,
            }
        }
        let list = if rest {
            &mut node.rest
        } else {
            &mut node.exact
        };
        let before = list.len();
        list.retain(|e| !pred(e));
        let removed = before - list.len();
        if removed > 0 {
            self.len -= removed;
            self.prune(body);
        }
        removed
    }

    /// Removes the highest node on the path `body` whose subtree is now only the (empty) chain
    /// down to `body`'s node. Iterative, so that long patterns cannot exhaust the stack.
    fn prune(&mut self, body: &[PatternSegment]) {
        // The depth below which every node of the chain is empty apart from the chain itself.
        let mut cut: Option<usize> = None;
        let mut node = &self.root;
        for (depth, seg) in body.iter().enumerate() {
            let Some(child) = node.child(seg) else {
                return;
            };
            node = child;
            // `node` is at depth + 1; it may go if it holds nothing but the next chain node.
            let is_last = depth + 1 == body.len();
            let max_children = if is_last { 0 } else { 1 };
            if node.has_entries() || node.children() > max_children {
                cut = None;
            } else if cut.is_none() {
                cut = Some(depth);
            }
        }
        let Some(cut) = cut else {
            return;
        };
        let (Some(seg), Some(above)) = (body.get(cut), body.get(..cut)) else {
            return;
        };
        let mut parent = &mut self.root;
        for s in above {
            match parent.child_mut(s) {
                Some(child) => parent = child,
                None => return,
            }
        }
        match seg {
            PatternSegment::Literal(l) => {
                parent.literals.remove(l);
            }
            PatternSegment::Any | PatternSegment::Rest => parent.any = None,
        }
    }

    /// Calls `f` with every entry whose pattern matches `path` (exactly the entries for which
    /// [`PathPattern::matches`] is true, so `/a/#` matches `/a`), each once, in no particular
    /// order.
    pub fn matches(&self, path: &Path, mut f: impl FnMut(&T)) {
        let segs = path.segments();
        // Each node is reached by at most one route, at the depth of its pattern prefix.
        let mut stack = vec![(&self.root, 0usize)];
        while let Some((node, depth)) = stack.pop() {
            node.rest.iter().for_each(&mut f);
            match segs.get(depth) {
                None => node.exact.iter().for_each(&mut f),
                Some(seg) => {
                    if let Some(child) = node.literals.get(seg) {
                        stack.push((child, depth + 1));
                    }
                    if let Some(child) = node.any.as_deref() {
                        stack.push((child, depth + 1));
                    }
                }
            }
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

    fn pat(s: &str) -> PathPattern {
        PathPattern::parse(s, &PathLimits::default()).unwrap()
    }

    fn matching(idx: &PatternIndex<u32>, path: &str) -> Vec<u32> {
        let mut out = Vec::new();
        idx.matches(&p(path), |e| out.push(*e));
        out.sort_unstable();
        out
    }

    fn build(patterns: &[&str]) -> PatternIndex<u32> {
        let mut idx = PatternIndex::new();
        for (i, s) in patterns.iter().enumerate() {
            idx.insert(&pat(s), i as u32);
        }
        idx
    }

    #[test]
    fn wildcards_match_like_path_pattern() {
        let idx = build(&["/a/b", "/a/+", "/a/#", "#", "/+/b/#", "/", "/a/+/c", "/b"]);
        assert_eq!(matching(&idx, "/"), vec![3, 5]);
        assert_eq!(matching(&idx, "/a"), vec![2, 3]);
        assert_eq!(matching(&idx, "/a/b"), vec![0, 1, 2, 3, 4]);
        assert_eq!(matching(&idx, "/a/x/c"), vec![2, 3, 6]);
        assert_eq!(matching(&idx, "/z/b"), vec![3, 4]);
        assert_eq!(matching(&idx, "/b"), vec![3, 7]);
        assert_eq!(idx.len(), 8);
        assert_eq!(matching(&idx, "/q"), vec![3]);
    }

    #[test]
    fn remove_is_by_exact_pattern_and_prunes() {
        let mut idx = build(&["/a/+/c", "/a/+/c", "/a/+/#", "/a/b"]);
        // `/a/+/c` matches `/a/b/c` but is not the pattern `/a/b/c`.
        assert_eq!(idx.remove(&pat("/a/b/c"), |_| true), 0);
        assert_eq!(idx.remove(&pat("/a/+/c"), |e| *e == 0), 1);
        assert_eq!(matching(&idx, "/a/b/c"), vec![1, 2]);
        assert_eq!(idx.remove(&pat("/a/+/c"), |_| true), 1);
        assert_eq!(idx.remove(&pat("/a/+"), |_| true), 0);
        assert_eq!(idx.remove(&pat("/a/+/#"), |_| true), 1);
        assert_eq!(matching(&idx, "/a/b/c"), Vec::<u32>::new());
        // Only `/a/b` is left: the `+` branch is gone.
        assert!(idx.root.literals["a"].any.is_none());
        assert_eq!(idx.remove(&pat("/a/b"), |_| true), 1);
        assert!(idx.is_empty());
        assert!(idx.root.literals.is_empty() && idx.root.any.is_none());
    }

    #[test]
    fn prune_keeps_nodes_still_in_use() {
        let mut idx = build(&["/a/b/c", "/a", "/a/b/#"]);
        assert_eq!(idx.remove(&pat("/a/b/c"), |_| true), 1);
        let a = &idx.root.literals["a"];
        assert!(a.literals["b"].literals.is_empty());
        assert_eq!(idx.remove(&pat("/a/b/#"), |_| true), 1);
        assert!(idx.root.literals["a"].literals.is_empty());
        assert_eq!(matching(&idx, "/a"), vec![1]);
        assert_eq!(idx.remove(&pat("/a"), |_| true), 1);
        assert!(idx.root.literals.is_empty());
        // Entries at the root itself.
        let mut idx = build(&["#", "/"]);
        assert_eq!(idx.remove(&pat("#"), |_| true), 1);
        assert_eq!(matching(&idx, "/"), vec![1]);
        assert_eq!(idx.remove(&pat("/"), |_| true), 1);
        assert!(idx.is_empty());
    }

    #[test]
    fn literal_wildcard_characters_are_plain() {
        let mut idx = PatternIndex::new();
        idx.insert(&PathPattern::exact(&p("/%2B")), 1);
        idx.insert(&PathPattern::prefix(&p("/%23")), 2);
        assert_eq!(matching(&idx, "/%2B"), vec![1]);
        assert_eq!(matching(&idx, "/x"), Vec::<u32>::new());
        assert_eq!(matching(&idx, "/%23/y"), vec![2]);
    }
}
