//! Property tests for [`herald_core::topic`]: the event record format round trips and its
//! decoder takes any bytes; [`PatternIndex::matches`] agrees with brute-force
//! [`PathPattern::matches`] through random inserts and removals; [`RetentionRules::resolve`]
//! picks the rule its documentation describes.

use herald_core::topic::{
    self, MAX_CONTENT_TYPE_LEN, MAX_ORIGIN_LEN, RECORD_HEADER_LEN, RecordError, RecordRef,
    Retention, RetentionRules,
};
use herald_core::{Path, PathLimits, PathPattern, PatternIndex, PatternSegment};
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

// ---- records ----

/// Content types around the length limit, with multi-byte characters.
fn content_type() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z/+.;= -]{0,40}",
        "\\PC{0,90}",
        (250usize..=260).prop_map(|n| "x".repeat(n)),
        (0usize..130).prop_map(|n| "é".repeat(n)),
    ]
}

/// Bytes that are often almost a record: a version byte of 1, a plausible content-type length.
/// The bytes a record spends on its origin and attributes (none in version 1, the origin in
/// version 2, both in version 3).
fn optional_fields(origin: &str, attrs: &[u8]) -> usize {
    if !attrs.is_empty() {
        1 + origin.len() + 2 + attrs.len()
    } else if !origin.is_empty() {
        1 + origin.len()
    } else {
        0
    }
}

fn record_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..64),
        (1u8..=3, any::<u64>(), 0u8..20, vec(any::<u8>(), 0..40)).prop_map(
            |(v, t, ct_len, rest)| {
                let mut b = vec![v];
                b.extend_from_slice(&t.to_be_bytes());
                b.push(ct_len);
                b.extend(rest);
                b
            }
        ),
        vec(any::<u8>(), 0..12).prop_map(|rest| [vec![1], rest].concat()),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Encoding then decoding gives back the event; content types and origins over the limit
    /// are refused.
    #[test]
    fn record_round_trip(
        t_ms in any::<u64>(),
        ct in content_type(),
        origin in prop_oneof![Just(String::new()), content_type()],
        attrs in prop_oneof![Just(Vec::new()), vec(any::<u8>(), 1..40)],
        data in vec(any::<u8>(), 0..100),
    ) {
        match topic::encode_record(t_ms, &ct, &origin, &attrs, &data) {
            Ok(bytes) => {
                prop_assert!(ct.len() <= MAX_CONTENT_TYPE_LEN && origin.len() <= MAX_ORIGIN_LEN);
                prop_assert_eq!(
                    bytes.len(),
                    RECORD_HEADER_LEN + ct.len() + optional_fields(&origin, &attrs) + data.len()
                );
                let rec = topic::decode_record(&bytes).unwrap();
                prop_assert_eq!(
                    rec,
                    RecordRef { t_ms, content_type: &ct, origin: &origin, attrs: &attrs, data: &data }
                );
                prop_assert_eq!(rec.encode().unwrap(), bytes);
            }
            Err(RecordError::ContentTypeTooLong { len }) => {
                prop_assert!(ct.len() > MAX_CONTENT_TYPE_LEN);
                prop_assert_eq!(len, ct.len());
            }
            Err(e) => {
                prop_assert!(origin.len() > MAX_ORIGIN_LEN);
                prop_assert_eq!(e, RecordError::OriginTooLong { len: origin.len() });
            }
        }
    }

    /// Decoding arbitrary bytes never panics, and whatever decodes encodes back to the same
    /// bytes (the format is canonical).
    #[test]
    fn decode_any_bytes(bytes in record_like_bytes()) {
        match topic::decode_record(&bytes) {
            Ok(rec) => {
                prop_assert_eq!(rec.encode().unwrap(), bytes.clone());
                prop_assert_eq!(
                    bytes.len(),
                    RECORD_HEADER_LEN
                        + rec.content_type.len()
                        + optional_fields(rec.origin, rec.attrs)
                        + rec.data.len()
                );
            }
            Err(RecordError::UnknownVersion(v)) => prop_assert_eq!(bytes.first(), Some(&v)),
            Err(RecordError::Truncated) => {
                let ct_len = bytes.get(RECORD_HEADER_LEN - 1).map_or(0, |l| usize::from(*l));
                let origin_len = bytes
                    .get(RECORD_HEADER_LEN + ct_len)
                    .map_or(0, |l| 1 + usize::from(*l));
                let version = bytes.first().copied();
                let origin_needed = if version >= Some(2) { origin_len.max(1) } else { 0 };
                let mut needed = RECORD_HEADER_LEN + ct_len + origin_needed;
                if version == Some(3) && bytes.len() >= needed + 2 {
                    needed += 2 + usize::from(u16::from_be_bytes([bytes[needed], bytes[needed + 1]]));
                } else if version == Some(3) {
                    needed += 2;
                }
                prop_assert!(bytes.len() < needed, "{} bytes decode as truncated", bytes.len());
            }
            Err(RecordError::ContentTypeNotUtf8) => {
                prop_assert!(bytes.len() > RECORD_HEADER_LEN);
            }
            Err(RecordError::BadOrigin) => prop_assert!(matches!(bytes.first(), Some(2 | 3))),
            Err(RecordError::EmptyAttrs) => prop_assert_eq!(bytes.first(), Some(&3)),
            Err(e) => prop_assert!(false, "unexpected error {:?}", e),
        }
    }
}

// ---- patterns ----

/// A small alphabet so that random patterns and paths collide often.
const KEYS: &[&str] = &["a", "b", "c"];

fn key() -> impl Strategy<Value = String> {
    select(KEYS).prop_map(str::to_owned)
}

fn path_segments() -> impl Strategy<Value = Vec<String>> {
    vec(key(), 0..=4)
}

fn path_of(segs: &[String]) -> Path {
    Path::from_segments(segs.iter().cloned(), &PathLimits::default()).unwrap()
}

/// A pattern as its segments: literals and `+`, optionally ending in `#`.
fn pattern_segments() -> impl Strategy<Value = Vec<PatternSegment>> {
    (
        vec(
            prop_oneof![2 => key().prop_map(PatternSegment::Literal), 1 => Just(PatternSegment::Any)],
            0..4,
        ),
        any::<bool>(),
    )
        .prop_map(|(mut segs, rest)| {
            if rest {
                segs.push(PatternSegment::Rest);
            }
            segs
        })
}

fn pattern_of(segs: &[PatternSegment]) -> PathPattern {
    let raw: String = segs
        .iter()
        .map(|s| match s {
            PatternSegment::Literal(l) => format!("/{l}"),
            PatternSegment::Any => "/+".to_owned(),
            PatternSegment::Rest => "/#".to_owned(),
        })
        .collect();
    let pattern = PathPattern::parse(&raw, &PathLimits::default()).unwrap();
    assert_eq!(pattern.segments(), segs);
    pattern
}

/// Every path over [`KEYS`] of depth 0 to 4 (one deeper than any pattern's fixed part).
fn all_paths() -> Vec<Vec<String>> {
    let mut all = vec![Vec::new()];
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
        all.extend(layer.iter().cloned());
    }
    all
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
    /// Ids come from a small range so that one pattern can hold the same id twice.
    Insert(Vec<PatternSegment>, u8),
    Remove(Vec<PatternSegment>, Which),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (pattern_segments(), 0u8..6).prop_map(|(p, id)| Op::Insert(p, id)),
        1 => (
            pattern_segments(),
            prop_oneof![
                Just(Which::All),
                (0u8..6).prop_map(Which::Id),
                (0u8..2).prop_map(Which::Parity),
            ],
        )
            .prop_map(|(p, w)| Op::Remove(p, w)),
    ]
}

/// An entry: a serial number unique within the test case (so that "visited once" is
/// checkable) and the id `remove` predicates look at.
type Entry = (u32, u8);

/// The model: every entry with its pattern, in insertion order.
type Model = Vec<(PathPattern, Entry)>;

fn check_matches(
    index: &PatternIndex<Entry>,
    model: &Model,
    path: &[String],
) -> Result<(), TestCaseError> {
    let path = path_of(path);
    let mut got: Vec<u32> = Vec::new();
    index.matches(&path, |(serial, _)| got.push(*serial));
    got.sort_unstable();
    let mut expected: Vec<u32> = model
        .iter()
        .filter(|(p, _)| p.matches(&path))
        .map(|(_, (serial, _))| *serial)
        .collect();
    expected.sort_unstable();
    prop_assert_eq!(got, expected, "matches({})", path);
    Ok(())
}

fn check_all(index: &PatternIndex<Entry>, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(index.len(), model.len());
    prop_assert_eq!(index.is_empty(), model.is_empty());
    for path in all_paths() {
        check_matches(index, model, &path)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// After every insert or remove, `len` and `matches` at a few paths agree with brute force
    /// over the model; after the whole sequence, at every path of depth up to 4.
    #[test]
    fn pattern_index_agrees_with_brute_force(
        ops in vec(op(), 0..40),
        probes in vec(path_segments(), 3),
    ) {
        let mut index = PatternIndex::new();
        let mut model: Model = Vec::new();
        for (serial, op) in (0u32..).zip(&ops) {
            match op {
                Op::Insert(segs, id) => {
                    let pattern = pattern_of(segs);
                    index.insert(&pattern, (serial, *id));
                    model.push((pattern, (serial, *id)));
                }
                Op::Remove(segs, which) => {
                    let pattern = pattern_of(segs);
                    let removed = index.remove(&pattern, |(_, id)| which.test(*id));
                    let before = model.len();
                    model.retain(|(p, (_, id))| *p != pattern || !which.test(*id));
                    prop_assert_eq!(removed, before - model.len(), "{:?}", op);
                }
            }
            prop_assert_eq!(index.len(), model.len());
            for probe in &probes {
                check_matches(&index, &model, probe)?;
            }
        }
        check_all(&index, &model)?;
    }

    /// Removing every pattern, in any order, empties the index; it still works afterwards.
    #[test]
    fn removing_everything_empties_the_pattern_index(
        inserts in vec((pattern_segments(), 0u8..6), 0..30),
        rotate in any::<usize>(),
        reverse in any::<bool>(),
        again in (pattern_segments(), 0u8..6),
    ) {
        let mut index = PatternIndex::new();
        let mut model: Model = Vec::new();
        for (serial, (segs, id)) in (0u32..).zip(&inserts) {
            let pattern = pattern_of(segs);
            index.insert(&pattern, (serial, *id));
            model.push((pattern, (serial, *id)));
        }
        check_all(&index, &model)?;

        let mut patterns: Vec<PathPattern> = inserts.iter().map(|(s, _)| pattern_of(s)).collect();
        patterns.sort_by_key(ToString::to_string);
        patterns.dedup();
        if reverse {
            patterns.reverse();
        }
        let n = patterns.len().max(1);
        patterns.rotate_left(rotate % n);
        for pattern in &patterns {
            let expected = model.iter().filter(|(p, _)| p == pattern).count();
            prop_assert_eq!(index.remove(pattern, |_| true), expected);
            model.retain(|(p, _)| p != pattern);
            prop_assert_eq!(index.len(), model.len());
            check_matches(&index, &model, &[])?;
        }
        prop_assert!(index.is_empty());
        check_all(&index, &model)?;

        let pattern = pattern_of(&again.0);
        index.insert(&pattern, (u32::MAX, again.1));
        model.push((pattern, (u32::MAX, again.1)));
        check_all(&index, &model)?;
    }
}

// ---- retention rules ----

/// The documented order, written from the pattern's text: literal segments, then segments
/// other than a final `#`, then "no final `#`"; greater wins.
fn documented_key(pattern: &PathPattern) -> (usize, usize, bool) {
    let text = pattern.to_string();
    let parts: Vec<&str> = text.split('/').filter(|s| !s.is_empty()).collect();
    let ends_in_rest = parts.last() == Some(&"#");
    let literals = parts.iter().filter(|s| **s != "+" && **s != "#").count();
    (
        literals,
        parts.len() - usize::from(ends_in_rest),
        !ends_in_rest,
    )
}

fn rule(segs: &[PatternSegment], n: u64) -> (PathPattern, Retention) {
    (
        pattern_of(segs),
        Retention {
            max_events: Some(n),
            ..Retention::default()
        },
    )
}

proptest! {
    #![proptest_config(config())]

    /// `resolve` returns the retention of the matching rule with the greatest documented key,
    /// the earliest among equals, and the default when nothing matches.
    #[test]
    fn resolve_picks_the_most_specific_rule(
        patterns in vec(pattern_segments(), 0..8),
        path in path_segments(),
    ) {
        // Rule i retains i events, so the result names the rule.
        let rules: RetentionRules = (0u64..)
            .zip(&patterns)
            .map(|(i, segs)| rule(segs, i))
            .collect();
        let p = path_of(&path);
        let mut best: Option<(usize, (usize, usize, bool))> = None;
        for (i, (pattern, _)) in rules.rules().iter().enumerate() {
            let key = documented_key(pattern);
            if pattern.matches(&p) && best.is_none_or(|(_, b)| key > b) {
                best = Some((i, key));
            }
        }
        let expected = best
            .and_then(|(i, _)| rules.rules().get(i))
            .map(|(_, r)| *r)
            .unwrap_or_default();
        prop_assert_eq!(rules.resolve(&p), expected);

        // Whatever the other rules, a first exact rule for the path wins.
        let exact: Vec<PatternSegment> =
            path.iter().cloned().map(PatternSegment::Literal).collect();
        let mut with_exact = rules.rules().to_vec();
        with_exact.insert(0, rule(&exact, 1000));
        with_exact.push(rule(&exact, 1001));
        prop_assert_eq!(
            RetentionRules::new(with_exact).resolve(&p).max_events,
            Some(1000)
        );
    }
}
