//! Property tests for [`herald_core::Path`]: URL encoding round trips, parsing of hostile input,
//! dot-segment refusal, limits, prefix comparison and serde.
//!
//! `parse_url` is checked against a small reference parser written here (split on raw `/`, drop
//! empty parts, percent-decode by hand), so every outcome, success or error, has to be justified
//! by the reference.

use herald_core::{Path, PathError, PathLimits};
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

/// Characters that matter in URLs, in percent-encoding or in path handling, plus a few
/// multi-byte and control characters.
const SPECIAL_CHARS: &[char] = &[
    '/',
    '%',
    '#',
    '?',
    ' ',
    '.',
    '+',
    '&',
    '=',
    ';',
    ':',
    '@',
    '\\',
    '"',
    '<',
    '>',
    '`',
    '{',
    '}',
    '[',
    ']',
    '|',
    '^',
    '~',
    '\'',
    '\0',
    '\n',
    '\r',
    '\t',
    '\u{1b}',
    '\u{7f}',
    '\u{80}',
    '\u{9f}',
    '\u{a0}',
    'é',
    '漢',
    '😀',
    '\u{fffd}',
    '\u{200b}',
    '\u{feff}',
    '\u{10ffff}',
];

/// Whole substrings that look like escapes or dot segments, to be used literally inside a
/// segment (so Display must escape their `%`).
const SPECIAL_TOKENS: &[&str] = &[
    "%2e", "%2E", "%2F", "%2f", "%25", "%", "..", ".", "%%", "%zz",
];

fn segment_token() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(SPECIAL_CHARS).prop_map(String::from),
        1 => select(SPECIAL_TOKENS).prop_map(String::from),
        2 => prop::char::range('a', 'e').prop_map(String::from),
        2 => any::<char>().prop_map(String::from),
    ]
}

/// Any valid segment: arbitrary Unicode, never empty, `.` or `..`.
fn segment() -> impl Strategy<Value = String> {
    vec(segment_token(), 1..8)
        .prop_map(|tokens| tokens.concat())
        .prop_filter("dot segments are not valid", |s| s != "." && s != "..")
}

fn segments() -> impl Strategy<Value = Vec<String>> {
    vec(segment(), 0..8)
}

fn valid_path() -> impl Strategy<Value = Path> {
    segments().prop_map(|segs| Path::from_segments(segs, &PathLimits::default()).unwrap())
}

fn limits() -> impl Strategy<Value = PathLimits> {
    prop_oneof![
        Just(PathLimits::default()),
        (0usize..6, 0usize..10).prop_map(|(max_segments, max_segment_bytes)| PathLimits {
            max_segments,
            max_segment_bytes,
        }),
    ]
}

/// Raw URL-path fragments that stress the decoder: escapes (valid, truncated, invalid hex,
/// invalid UTF-8, encoded slash and dots), doubled slashes and dot segments.
const RAW_TOKENS: &[&str] = &[
    "/",
    "/",
    "//",
    "%",
    "%2",
    "%2e",
    "%2E",
    "%2f",
    "%2F",
    "%ff",
    "%FF",
    "%c3",
    "%a9",
    "%C3%A9",
    "%e6%bc%a2",
    "%f0%9f%98%80",
    "%80",
    "%00",
    "%%",
    "%g1",
    "%-1",
    ".",
    "..",
    "...",
    "a",
    "b",
    "é",
    "?",
    "#",
    " ",
    "+",
];

fn hostile_raw() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        vec(select(RAW_TOKENS), 0..16).prop_map(|t| t.concat()),
    ]
}

/// Percent-decoding written from RFC 3986 §2.1: `%` followed by two hex digits is one byte;
/// any other `%` is kept literally.
fn reference_percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let hex = |c: u8| char::from(c).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(u8::try_from(h * 16 + l).unwrap());
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// What `parse_url` must do: `Ok(segments)`, or an error drawn from a list of every reason the
/// input is invalid (the order in which the parser checks them is not part of the contract).
fn reference_parse_url(raw: &str, limits: &PathLimits) -> Result<Vec<String>, Vec<PathError>> {
    let parts: Vec<Vec<u8>> = raw
        .split('/')
        .filter(|p| !p.is_empty())
        .map(reference_percent_decode)
        .collect();
    let mut reasons = Vec::new();
    if parts.len() > limits.max_segments {
        reasons.push(PathError::TooManySegments {
            count: parts.len(),
            max: limits.max_segments,
        });
    }
    let mut segments = Vec::new();
    for (index, bytes) in parts.into_iter().enumerate() {
        match String::from_utf8(bytes) {
            Err(_) => reasons.push(PathError::InvalidUtf8 { index }),
            Ok(s) => {
                if s == "." || s == ".." {
                    reasons.push(PathError::DotSegment);
                }
                if s.len() > limits.max_segment_bytes {
                    reasons.push(PathError::SegmentTooLong {
                        len: s.len(),
                        max: limits.max_segment_bytes,
                    });
                }
                segments.push(s);
            }
        }
    }
    if reasons.is_empty() {
        Ok(segments)
    } else {
        Err(reasons)
    }
}

/// The invariants every parsed path must satisfy, checked directly.
fn assert_invariants(path: &Path, limits: &PathLimits) -> Result<(), TestCaseError> {
    prop_assert!(path.depth() <= limits.max_segments);
    for s in path.segments() {
        prop_assert!(!s.is_empty());
        prop_assert!(s != "." && s != "..");
        prop_assert!(s.len() <= limits.max_segment_bytes);
    }
    Ok(())
}

fn check_against_reference(raw: &str, limits: &PathLimits) -> Result<(), TestCaseError> {
    let got = Path::parse_url(raw, limits);
    match (&got, reference_parse_url(raw, limits)) {
        (Ok(path), Ok(expected)) => {
            prop_assert_eq!(path.segments(), expected.as_slice());
            assert_invariants(path, limits)?;
        }
        (Err(e), Err(reasons)) => {
            prop_assert!(reasons.contains(e), "{:?} is not one of {:?}", e, reasons);
        }
        (got, expected) => {
            prop_assert!(
                false,
                "parse_url({:?}) = {:?}, expected {:?}",
                raw,
                got,
                expected
            );
        }
    }
    Ok(())
}

/// Writes `bytes` as `%XX` escapes, upper or lower case per byte.
fn escape_all(bytes: &[u8], upper: &[bool]) -> String {
    bytes
        .iter()
        .zip(upper.iter().cycle())
        .map(|(b, u)| {
            if *u {
                format!("%{b:02X}")
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

/// Spellings of `.` and `..`: every mix of a literal dot and `%2e`/`%2E`.
fn dot_spelling() -> impl Strategy<Value = String> {
    vec(select(&[".", "%2e", "%2E"][..]), 1..=2).prop_map(|t| t.concat())
}

/// Raw segments that decode to valid segments, including near misses of dot segments.
const RAW_VALID_SEGMENTS: &[&str] = &[
    "a",
    "b%20c",
    "...",
    "%2e%2e%2e",
    ".a",
    "a.",
    "%2ea",
    "..%2F",
    "%2e%2e%2fx",
    "x%2e",
    "%2e.%2e",
    "%25%32%65",
    "%252e%252e",
    ".%00",
    "%c3%a9",
];

/// Joins raw segments with one or more slashes, optionally leading and trailing ones.
fn join_raw(parts: &[String], seps: &[usize], lead: bool, trail: bool) -> String {
    let mut raw = String::new();
    for (i, part) in parts.iter().enumerate() {
        let n = seps.get(i).copied().unwrap_or(1);
        if i > 0 || lead {
            raw.push_str(&"/".repeat(n));
        }
        raw.push_str(part);
    }
    if trail {
        raw.push('/');
    }
    raw
}

proptest! {
    #![proptest_config(config())]

    /// Display is a lossless, URL-safe encoding: parsing it gives the same path back.
    #[test]
    fn display_round_trips_through_parse_url(path in valid_path()) {
        let shown = path.to_string();
        prop_assert!(shown.starts_with('/'));
        prop_assert!(shown.is_ascii(), "{:?}", shown);
        prop_assert!(
            !shown.chars().any(|c| c.is_ascii_control() || matches!(c, ' ' | '#' | '?')),
            "{:?}",
            shown
        );
        // One unescaped slash per segment (the root is a single slash).
        prop_assert_eq!(shown.matches('/').count(), path.depth().max(1));
        prop_assert_eq!(Path::parse_url(&shown, &PathLimits::default()), Ok(path));
    }

    /// The unescaped slashed form round trips when no segment contains a slash.
    #[test]
    fn slashed_round_trips_without_slashes_in_segments(segs in segments()) {
        let segs = segs.into_iter().map(|s| s.replace('/', "|"));
        let path = Path::from_segments(segs, &PathLimits::default()).unwrap();
        prop_assert_eq!(
            Path::parse_slashed(&path.to_slashed(), &PathLimits::default()),
            Ok(path)
        );
    }

    /// `parse_url` never panics on arbitrary strings, and agrees with the reference parser.
    #[test]
    fn parse_url_agrees_with_reference_on_hostile_strings(
        raw in hostile_raw(),
        limits in limits(),
    ) {
        check_against_reference(&raw, &limits)?;
    }

    /// Arbitrary bytes, fully percent-escaped, decode to exactly those bytes when they form a
    /// valid segment, and are refused otherwise.
    #[test]
    fn parse_url_decodes_escaped_bytes(
        parts in vec(vec(any::<u8>(), 0..12), 0..6),
        upper in vec(any::<bool>(), 1..4),
        limits in limits(),
    ) {
        let raw: String = parts.iter().map(|p| format!("/{}", escape_all(p, &upper))).collect();
        check_against_reference(&raw, &limits)?;
        if let Ok(path) = Path::parse_url(&raw, &limits) {
            let nonempty: Vec<&Vec<u8>> = parts.iter().filter(|p| !p.is_empty()).collect();
            prop_assert_eq!(path.depth(), nonempty.len());
            for (seg, bytes) in path.segments().iter().zip(nonempty) {
                prop_assert_eq!(seg.as_bytes(), bytes.as_slice());
            }
        }
    }

    /// Arbitrary bytes, some escaped and some written literally, never make the parser panic.
    #[test]
    fn parse_url_handles_mixed_escapes(
        bytes in vec(any::<u8>(), 0..40),
        escape in vec(any::<bool>(), 1..8),
        limits in limits(),
    ) {
        let raw: String = bytes
            .iter()
            .zip(escape.iter().cycle())
            .map(|(b, e)| {
                if !*e && b.is_ascii() && *b != b'%' {
                    char::from(*b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        check_against_reference(&raw, &limits)?;
    }

    /// A dot segment in any spelling, anywhere in the path, is refused.
    #[test]
    fn dot_segments_are_refused_in_any_spelling(
        before in vec(select(RAW_VALID_SEGMENTS), 0..4),
        dot in dot_spelling(),
        after in vec(select(RAW_VALID_SEGMENTS), 0..4),
        seps in vec(1usize..3, 9),
        lead in any::<bool>(),
        trail in any::<bool>(),
    ) {
        let mut parts: Vec<String> = before.iter().map(|s| (*s).to_owned()).collect();
        parts.push(dot.clone());
        parts.extend(after.iter().map(|s| (*s).to_owned()));
        let raw = join_raw(&parts, &seps, lead, trail);
        prop_assert_eq!(
            Path::parse_url(&raw, &PathLimits::default()),
            Err(PathError::DotSegment),
            "{:?}",
            raw
        );
        // The same dot segment given segment by segment is refused too.
        let decoded = String::from_utf8(reference_percent_decode(&dot)).unwrap();
        prop_assert_eq!(
            Path::from_segments([decoded], &PathLimits::default()),
            Err(PathError::DotSegment)
        );
    }

    /// Near misses of dot segments (`...`, `.a`, `%2e%2e%2F`, double-escaped dots) are accepted.
    #[test]
    fn near_dot_segments_are_accepted(
        parts in vec(select(RAW_VALID_SEGMENTS), 0..6),
        seps in vec(1usize..3, 6),
        lead in any::<bool>(),
        trail in any::<bool>(),
    ) {
        let parts: Vec<String> = parts.iter().map(|s| (*s).to_owned()).collect();
        let raw = join_raw(&parts, &seps, lead, trail);
        let path = Path::parse_url(&raw, &PathLimits::default());
        prop_assert!(path.is_ok(), "{:?}: {:?}", raw, path);
        check_against_reference(&raw, &PathLimits::default())?;
    }

    /// Segment-by-segment construction enforces the same invariants as parsing.
    #[test]
    fn from_segments_validates(
        segs in vec(prop_oneof![
            Just(String::new()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            segment(),
        ], 0..7),
        limits in limits(),
    ) {
        match Path::from_segments(segs.clone(), &limits) {
            Ok(path) => {
                prop_assert_eq!(path.segments(), segs.as_slice());
                assert_invariants(&path, &limits)?;
            }
            Err(e) => {
                let justified = match &e {
                    PathError::EmptySegment => segs.iter().any(String::is_empty),
                    PathError::DotSegment => segs.iter().any(|s| s == "." || s == ".."),
                    PathError::TooManySegments { count, max } => {
                        *count == segs.len() && *max == limits.max_segments && count > max
                    }
                    PathError::SegmentTooLong { len, max } => {
                        *max == limits.max_segment_bytes
                            && len > max
                            && segs.iter().any(|s| s.len() == *len)
                    }
                    _ => false,
                };
                prop_assert!(justified, "{:?} for {:?} with {:?}", e, segs, limits);
            }
        }
    }

    /// `starts_with` is whole-segment prefix comparison; `parent` and `last` agree with it.
    #[test]
    fn starts_with_agrees_with_reference(
        a in vec(select(&["a", "b", "ab", "a/b", "b "][..]), 0..4),
        b in vec(select(&["a", "b", "ab", "a/b", "b "][..]), 0..4),
        extend in any::<bool>(),
    ) {
        let limits = PathLimits::default();
        let prefix = Path::from_segments(a.iter().copied(), &limits).unwrap();
        // Half the time, build a path that really is below `prefix`.
        let full: Vec<&str> = if extend { a.iter().chain(&b).copied().collect() } else { b.clone() };
        let path = Path::from_segments(full.iter().copied(), &limits).unwrap();

        let expected = full.len() >= a.len() && full.iter().zip(&a).all(|(x, y)| x == y);
        prop_assert_eq!(path.starts_with(&prefix), expected);
        prop_assert!(path.starts_with(&path));
        prop_assert!(path.starts_with(&Path::root()));

        match path.parent() {
            None => prop_assert!(path.is_root() && path.last().is_none()),
            Some(parent) => {
                prop_assert_eq!(parent.depth() + 1, path.depth());
                prop_assert!(path.starts_with(&parent));
                prop_assert!(!parent.starts_with(&path));
                prop_assert_eq!(path.last(), full.last().copied());
            }
        }
    }

    /// Serde writes an array of segments and reads it back; reading validates like
    /// `from_segments` with the default limits.
    #[test]
    fn serde_round_trip(path in valid_path()) {
        let json = serde_json::to_value(&path).unwrap();
        let expected: Vec<serde_json::Value> =
            path.segments().iter().map(|s| serde_json::Value::from(s.as_str())).collect();
        prop_assert_eq!(&json, &serde_json::Value::Array(expected));
        let text = serde_json::to_string(&path).unwrap();
        prop_assert_eq!(serde_json::from_str::<Path>(&text).unwrap(), path.clone());
        prop_assert_eq!(serde_json::from_value::<Path>(json).unwrap(), path);
    }

    /// Deserializing arbitrary arrays accepts exactly what `from_segments` accepts.
    #[test]
    fn deserialize_validates(
        segs in vec(prop_oneof![
            Just(String::new()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            segment(),
        ], 0..5),
    ) {
        let json = serde_json::to_string(&segs).unwrap();
        let parsed = serde_json::from_str::<Path>(&json);
        let built = Path::from_segments(segs, &PathLimits::default());
        prop_assert_eq!(parsed.ok(), built.ok());
    }
}
