//! Model-based property tests for [`PathIndex`]: random insert/remove sequences are applied to
//! the index and to a brute-force `Vec<(path, id)>` model, and `len`, `get` and `affected` are
//! compared with it.

use std::collections::BTreeMap;

use herald_core::{Path, PathIndex, PathLimits};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

const KEYS: &[&str] = &["a", "b", "c"];

/// Paths of depth 0 to 3 over [`KEYS`], so that entries share ancestors often.
fn path_segments() -> impl Strategy<Value = Vec<String>> {
    vec(select(KEYS).prop_map(str::to_owned), 0..=3)
}

fn path_of(segs: &[String]) -> Path {
    Path::from_segments(segs.iter().cloned(), &PathLimits::default()).unwrap()
}

/// Which entries a `remove` takes out.
#[derive(Debug, Clone, Copy)]
enum Which {
    All,
    Id(u8),
    Parity(u8),
}

impl Which {
    fn test(self, id: u8) -> bool {
        match self {
            Which::All => true,
            Which::Id(x) => id == x,
            Which::Parity(p) => id % 2 == p,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Ids come from a small range so that one path can hold the same id twice.
    Insert(Vec<String>, u8),
    Remove(Vec<String>, Which),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (path_segments(), 0u8..6).prop_map(|(p, id)| Op::Insert(p, id)),
        1 => (
            path_segments(),
            prop_oneof![
                Just(Which::All),
                (0u8..6).prop_map(Which::Id),
                (0u8..2).prop_map(Which::Parity),
            ],
        )
            .prop_map(|(p, w)| Op::Remove(p, w)),
    ]
}

/// Every path over [`KEYS`] of depth 0 to 4 (one deeper than any entry).
fn all_probes() -> Vec<Vec<String>> {
    let mut probes = vec![Vec::new()];
    let mut layer = vec![Vec::<String>::new()];
    for _ in 0..4 {
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

/// The model: every entry with its path, in insertion order.
type Model = Vec<(Vec<String>, u8)>;

fn model_get(model: &Model, path: &[String]) -> Vec<u8> {
    model
        .iter()
        .filter(|(p, _)| p == path)
        .map(|(_, id)| *id)
        .collect()
}

/// What `affected(path)` must report, by brute force: every path with entries that is an
/// ancestor of, equal to, or a descendant of `path`, with its entries in insertion order.
fn model_affected(model: &Model, path: &[String]) -> BTreeMap<Vec<String>, Vec<u8>> {
    let mut out: BTreeMap<Vec<String>, Vec<u8>> = BTreeMap::new();
    for (p, id) in model {
        if path.starts_with(p) || p.starts_with(path) {
            out.entry(p.clone()).or_default().push(*id);
        }
    }
    out
}

fn check_affected(
    index: &PathIndex<u8>,
    model: &Model,
    path: &[String],
) -> Result<(), TestCaseError> {
    let mut visits: Vec<(Vec<String>, Vec<u8>)> = Vec::new();
    index.affected(&path_of(path), |p, entries| {
        visits.push((p.segments().to_vec(), entries.to_vec()));
    });
    let mut seen = BTreeMap::new();
    for (p, entries) in visits {
        prop_assert!(!entries.is_empty(), "visited {:?} without entries", p);
        let again = seen.insert(p.clone(), entries);
        prop_assert!(again.is_none(), "visited {:?} twice for {:?}", p, path);
    }
    prop_assert_eq!(seen, model_affected(model, path), "affected({:?})", path);
    Ok(())
}

fn check_all(index: &PathIndex<u8>, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(index.len(), model.len());
    prop_assert_eq!(index.is_empty(), model.is_empty());
    for probe in all_probes() {
        let path = path_of(&probe);
        let expected = model_get(model, &probe);
        prop_assert_eq!(index.get(&path), expected.as_slice());
        check_affected(index, model, &probe)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// After every insert or remove, `len`, `get` and `affected` agree with the model at the
    /// path written and a few random ones; after the whole sequence, at every path.
    #[test]
    fn index_agrees_with_model(
        ops in vec(op(), 0..40),
        probes in vec(vec(select(KEYS).prop_map(str::to_owned), 0..=4), 3),
    ) {
        let mut index = PathIndex::new();
        let mut model: Model = Vec::new();
        for op in &ops {
            let written = match op {
                Op::Insert(p, id) => {
                    index.insert(&path_of(p), *id);
                    model.push((p.clone(), *id));
                    p
                }
                Op::Remove(p, which) => {
                    let removed = index.remove(&path_of(p), |id| which.test(*id));
                    let before = model.len();
                    model.retain(|(q, id)| q != p || !which.test(*id));
                    prop_assert_eq!(removed, before - model.len(), "{:?}", op);
                    p
                }
            };
            prop_assert_eq!(index.len(), model.len());
            prop_assert_eq!(index.is_empty(), model.is_empty());
            for probe in probes.iter().chain([written]) {
                let path = path_of(probe);
                let expected = model_get(&model, probe);
                prop_assert_eq!(index.get(&path), expected.as_slice());
                check_affected(&index, &model, probe)?;
            }
        }
        check_all(&index, &model)?;
    }

    /// Removing everything, in any order, empties the index, and it still works afterwards.
    #[test]
    fn removing_everything_empties_the_index(
        inserts in vec((path_segments(), 0u8..6), 0..30),
        rotate in any::<usize>(),
        reverse in any::<bool>(),
        again in (path_segments(), 0u8..6),
    ) {
        let mut index = PathIndex::new();
        let mut model: Model = Vec::new();
        for (p, id) in &inserts {
            index.insert(&path_of(p), *id);
            model.push((p.clone(), *id));
        }
        check_all(&index, &model)?;

        // Remove path by path, parents before or after children depending on the order.
        let mut paths: Vec<Vec<String>> = inserts.iter().map(|(p, _)| p.clone()).collect();
        paths.sort();
        paths.dedup();
        if reverse {
            paths.reverse();
        }
        let n = paths.len().max(1);
        paths.rotate_left(rotate % n);
        for p in &paths {
            let expected = model_get(&model, p).len();
            prop_assert_eq!(index.remove(&path_of(p), |_| true), expected);
            model.retain(|(q, _)| q != p);
            prop_assert_eq!(index.len(), model.len());
        }
        prop_assert!(index.is_empty());
        check_all(&index, &model)?;

        // The pruned index accepts new entries as before.
        index.insert(&path_of(&again.0), again.1);
        model.push(again);
        check_all(&index, &model)?;
    }
}
