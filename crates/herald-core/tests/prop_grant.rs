//! Property tests for the permission model: [`PathPattern`] matching against a recursive
//! reference matcher, prefix patterns, [`Access::allows`] against a reference union of modes,
//! and the guarantee that no spelling of a URL path escapes a granted prefix.

use herald_core::{
    Access, Grant, Modes, Path, PathLimits, PathPattern, PatternError, PatternSegment,
};
use percent_encoding::percent_decode_str;
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

/// A small alphabet so that random patterns and paths match often.
const KEYS: &[&str] = &["a", "b", "c"];

fn key() -> impl Strategy<Value = String> {
    select(KEYS).prop_map(str::to_owned)
}

fn path_segments() -> impl Strategy<Value = Vec<String>> {
    vec(key(), 0..5)
}

fn path_of(segs: &[String]) -> Path {
    Path::from_segments(segs.iter().cloned(), &PathLimits::default()).unwrap()
}

/// A pattern as its segments: literals and `+`, optionally ending in `#`.
fn pattern_segments() -> impl Strategy<Value = Vec<PatternSegment>> {
    (
        vec(
            prop_oneof![3 => key().prop_map(PatternSegment::Literal), 1 => Just(PatternSegment::Any)],
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

/// The `/a/+/#` spelling of a pattern.
fn pattern_string(segs: &[PatternSegment]) -> String {
    if segs.is_empty() {
        return "/".to_owned();
    }
    segs.iter()
        .map(|s| match s {
            PatternSegment::Literal(l) => format!("/{l}"),
            PatternSegment::Any => "/+".to_owned(),
            PatternSegment::Rest => "/#".to_owned(),
        })
        .collect()
}

fn pattern_of(segs: &[PatternSegment]) -> PathPattern {
    PathPattern::parse(&pattern_string(segs), &PathLimits::default()).unwrap()
}

/// MQTT-style matching, written as the textbook recursion: `#` matches zero or more segments
/// followed by whatever the rest of the pattern matches.
fn reference_matches(pattern: &[PatternSegment], path: &[String]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((PatternSegment::Rest, rest)) => {
            (0..=path.len()).any(|skip| reference_matches(rest, &path[skip..]))
        }
        Some((PatternSegment::Any, rest)) => {
            !path.is_empty() && reference_matches(rest, &path[1..])
        }
        Some((PatternSegment::Literal(lit), rest)) => {
            path.first() == Some(lit) && reference_matches(rest, &path[1..])
        }
    }
}

fn modes_from_bits(bits: u8) -> Modes {
    [(1, Modes::READ), (2, Modes::WRITE), (4, Modes::ADMIN)]
        .into_iter()
        .filter(|(bit, _)| bits & bit != 0)
        .fold(Modes::NONE, |acc, (_, m)| acc | m)
}

fn grants() -> impl Strategy<Value = Vec<(Vec<PatternSegment>, u8)>> {
    vec((pattern_segments(), 0u8..8), 0..5)
}

/// Raw URL fragments that try to climb out of, or fake, a granted prefix.
const ATTACK_TOKENS: &[&str] = &[
    "/", "//", "a", "b", "c", "%61", "%62", "%2F", "%2f", "%5C", "\\", ".", "..", "%2e", "%2E",
    "%2e%2e", ".%2e", "%2e.", "?", "#", "%23", "%3F", "%00", ";", "%", "+",
];

/// Spellings of a path at or near `/a/b`; only some of them really are `/a/b`.
const PREFIX_SPELLINGS: &[&str] = &[
    "/a/b",
    "a/b",
    "//a//b/",
    "/%61/%62",
    "/%61/b",
    "/a/%62/",
    "/a%2Fb",
    "/a%2fb",
    "/a",
    "/a/bb",
    "/ab",
    "/a/b%2F",
    "/a/./b",
    "/a/../a/b",
    "/a/%2e%2e/a/b",
    "/x/../a/b",
    "/a/b/..",
];

proptest! {
    #![proptest_config(config())]

    /// Parsing the `/a/+/#` spelling yields exactly those segments, and Display writes it back.
    #[test]
    fn parse_and_display_round_trip(segs in pattern_segments()) {
        let pattern = pattern_of(&segs);
        prop_assert_eq!(pattern.segments(), segs.as_slice());
        prop_assert_eq!(pattern.to_string(), pattern_string(&segs));
    }

    /// A `#` anywhere but last is refused.
    #[test]
    fn rest_must_be_last(
        before in vec(key(), 0..3),
        after in vec(prop_oneof![key(), Just("+".to_owned()), Just("#".to_owned())], 1..3),
    ) {
        let raw: String = before
            .iter()
            .map(String::as_str)
            .chain(["#"])
            .chain(after.iter().map(String::as_str))
            .map(|s| format!("/{s}"))
            .collect();
        prop_assert_eq!(
            PathPattern::parse(&raw, &PathLimits::default()),
            Err(PatternError::RestNotLast)
        );
    }

    /// `matches` agrees with the recursive reference matcher.
    #[test]
    fn matches_agrees_with_reference(segs in pattern_segments(), path in path_segments()) {
        let pattern = pattern_of(&segs);
        prop_assert_eq!(
            pattern.matches(&path_of(&path)),
            reference_matches(&segs, &path),
            "{} vs {:?}",
            pattern,
            path
        );
    }

    /// Matching often succeeds: a path built by instantiating the pattern always matches.
    #[test]
    fn instantiated_pattern_matches(
        segs in pattern_segments(),
        fill in vec(key(), 8),
        tail in path_segments(),
    ) {
        let mut fill = fill.into_iter();
        let mut path = Vec::new();
        for s in &segs {
            match s {
                PatternSegment::Literal(l) => path.push(l.clone()),
                PatternSegment::Any => path.push(fill.next().unwrap()),
                PatternSegment::Rest => path.extend(tail.iter().cloned()),
            }
        }
        prop_assert!(pattern_of(&segs).matches(&path_of(&path)));
        prop_assert!(reference_matches(&segs, &path));
    }

    /// `prefix(p)` matches exactly the paths at or below `p`; `exact(p)` only `p` itself.
    #[test]
    fn prefix_matches_iff_starts_with(
        p in path_segments(),
        q in path_segments(),
        extend in any::<bool>(),
    ) {
        let prefix = path_of(&p);
        let q: Vec<String> = if extend { p.iter().chain(&q).cloned().collect() } else { q };
        let q = path_of(&q);
        prop_assert_eq!(PathPattern::prefix(&prefix).matches(&q), q.starts_with(&prefix));
        prop_assert_eq!(PathPattern::exact(&prefix).matches(&q), q == prefix);
    }

    /// Prefix and exact patterns treat `+` and `#` inside a segment as plain characters.
    #[test]
    fn prefix_literals_are_not_wildcards(
        p in vec(select(&["+", "#", "a", "a#", "+b"][..]), 0..4),
        q in vec(select(&["+", "#", "a", "a#", "+b", "z"][..]), 0..5),
    ) {
        let limits = PathLimits::default();
        let p = Path::from_segments(p, &limits).unwrap();
        let q = Path::from_segments(q, &limits).unwrap();
        prop_assert_eq!(PathPattern::prefix(&p).matches(&q), q.starts_with(&p));
        prop_assert_eq!(PathPattern::exact(&p).matches(&q), q == p);
    }

    /// `allows` is "the union of the modes of every matching grant contains what is needed".
    #[test]
    fn allows_is_union_of_matching_grants(
        grants in grants(),
        path in path_segments(),
        needed in 0u8..8,
    ) {
        let union = grants
            .iter()
            .filter(|(segs, _)| reference_matches(segs, &path))
            .fold(0u8, |acc, (_, bits)| acc | bits);
        let expected = needed & !union == 0;

        let access = Access::Grants(
            grants
                .iter()
                .map(|(segs, bits)| Grant { pattern: pattern_of(segs), modes: modes_from_bits(*bits) })
                .collect(),
        );
        let path = path_of(&path);
        prop_assert_eq!(access.allows(&path, modes_from_bits(needed)), expected);
        prop_assert!(Access::Full.allows(&path, modes_from_bits(needed)));
        prop_assert!(access.allows(&path, Modes::NONE));
    }

    /// Adding a grant never takes access away.
    #[test]
    fn allows_is_monotonic(
        grants in grants(),
        extra in (pattern_segments(), 0u8..8),
        path in path_segments(),
        needed in 0u8..8,
    ) {
        let to_grant = |(segs, bits): &(Vec<PatternSegment>, u8)| Grant {
            pattern: pattern_of(segs),
            modes: modes_from_bits(*bits),
        };
        let before = Access::Grants(grants.iter().map(to_grant).collect());
        let after = Access::Grants(grants.iter().chain([&extra]).map(to_grant).collect());
        let path = path_of(&path);
        let needed = modes_from_bits(needed);
        prop_assert!(!before.allows(&path, needed) || after.allows(&path, needed));
    }

    /// No spelling of a URL path gets past a prefix grant on `/a/b` unless it really is at or
    /// below `/a/b`: encoded slashes stay inside segments and dot segments never parse.
    #[test]
    fn url_spellings_cannot_escape_a_prefix_grant(
        spelling in select(PREFIX_SPELLINGS),
        suffix in vec(select(ATTACK_TOKENS), 0..10),
    ) {
        let limits = PathLimits::default();
        let granted = Path::parse_url("/a/b", &limits).unwrap();
        let access = Access::Grants(vec![Grant {
            pattern: PathPattern::prefix(&granted),
            modes: Modes::READ,
        }]);
        let raw = format!("{spelling}{}", suffix.concat());
        let Ok(path) = Path::parse_url(&raw, &limits) else {
            return Ok(());
        };
        prop_assert!(path.segments().iter().all(|s| s != "." && s != ".."));
        if access.allows(&path, Modes::READ) {
            prop_assert!(path.depth() >= 2, "{:?} -> {:?}", raw, path);
            prop_assert_eq!(&path.segments()[..2], &["a".to_owned(), "b".to_owned()][..]);
            // Textually too: the first two raw `/`-separated parts decode to exactly a and b,
            // so no escape sequence or dot segment could have produced them.
            let raw_parts: Vec<String> = raw
                .split('/')
                .filter(|s| !s.is_empty())
                .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
                .collect();
            prop_assert_eq!(&raw_parts[..2], &["a".to_owned(), "b".to_owned()][..], "{:?}", raw);
            prop_assert!(raw_parts.len() == path.depth());
        }
        prop_assert_eq!(access.allows(&path, Modes::WRITE), false);
    }
}

proptest! {
    #![proptest_config(config())]

    /// In a map sorted by path, the matches of a pattern are all among the entries under its
    /// literal prefix (`Path::entries_under`, what the topics engine and the retained
    /// messages search instead of the whole map).
    #[test]
    fn matches_lie_under_the_literal_prefix(
        pattern in pattern_segments(),
        paths in vec(path_segments(), 0..40),
    ) {
        let pattern = pattern_of(&pattern);
        let map: std::collections::BTreeMap<Path, ()> =
            paths.iter().map(|p| (path_of(p), ())).collect();
        let prefix = pattern.literal_prefix();
        let everywhere: Vec<&Path> = map.keys().filter(|p| pattern.matches(p)).collect();
        let under: Vec<&Path> = prefix
            .entries_under(&map)
            .map(|(p, ())| p)
            .filter(|p| pattern.matches(p))
            .collect();
        prop_assert_eq!(under, everywhere);
    }
}
