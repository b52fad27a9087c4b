//! The `/listen` inputs of the IorioDB API never panic: query-string splitting and decoding,
//! `s=bucket:stream[:from]` entries and SSE `Last-Event-ID` resume ids. A parsed entry names
//! exactly its bucket and stream, and a resume id written by the crate parses back to the
//! positions it was written from.
#![no_main]

use std::collections::BTreeMap;

use herald_core::PathLimits;
use herald_transport_iorio::fuzzing::{
    format_resume_id, parse_listen_entry, parse_resume_id, query_pairs,
};
use libfuzzer_sys::fuzz_target;

/// `reply::query_pairs` looks at this many pairs at most.
const MAX_QUERY_PAIRS: usize = 1024;

/// The most positions written into one resume id here: 1024 groups of at most 42 bytes stay
/// under the parser's 64 KiB limit.
const MAX_POSITIONS: usize = 1024;

fn check_entry(value: &str, limits: &PathLimits) {
    let Some((topic, bucket, stream, from)) = parse_listen_entry(value, limits) else {
        return;
    };
    assert_eq!(topic.segments(), [bucket.clone(), stream.clone()]);
    assert!(!bucket.contains(':') && !stream.contains(':'));
    let rest = value
        .strip_prefix(&format!("{bucket}:{stream}"))
        .expect("an entry starts with its bucket and stream");
    let from_text = match rest {
        "" => None,
        _ => Some(
            rest.strip_prefix(':')
                .expect("a ':' follows the stream")
                .trim(),
        ),
    };
    match from {
        None => assert!(from_text.is_none_or(str::is_empty), "{value:?}"),
        Some(f) => assert_eq!(from_text.and_then(|t| t.parse().ok()), Some(f)),
    }
    let canonical = match from {
        Some(f) => format!("{bucket}:{stream}:{f}"),
        None => format!("{bucket}:{stream}"),
    };
    assert_eq!(
        parse_listen_entry(&canonical, limits),
        Some((topic, bucket, stream, from))
    );
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let limits = PathLimits::default();

    // Query strings: one pair per non-empty `&` part, escapes decoded only where present.
    let pairs = query_pairs(Some(&text));
    let parts: Vec<&str> = text.split('&').filter(|p| !p.is_empty()).collect();
    assert_eq!(pairs.len(), parts.len().min(MAX_QUERY_PAIRS));
    for (part, (key, value)) in parts.iter().zip(&pairs) {
        if !part.contains(['%', '+']) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            assert_eq!((key.as_str(), value.as_str()), (k, v));
        }
        if key == "s" {
            check_entry(value, &limits);
        }
    }
    check_entry(&text, &limits);

    // Arbitrary resume ids: known epochs are never 0, next seqnums never 0.
    for (epoch, next) in parse_resume_id(&text).values() {
        assert_ne!(*epoch, Some(0));
        assert!(*next >= 1);
    }

    // Resume ids written by the crate round-trip (one position per topic hash, as written).
    let mut want: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for chunk in data.chunks_exact(24).take(MAX_POSITIONS) {
        let word = |i: usize| {
            let bytes: [u8; 8] = chunk[i * 8..i * 8 + 8].try_into().expect("8 bytes");
            u64::from_le_bytes(bytes)
        };
        want.insert(word(0), (word(1), word(2)));
    }
    let id = format_resume_id(want.iter().map(|(&h, &(e, n))| (h, e, n)).collect());
    let parsed = parse_resume_id(&id);
    assert_eq!(parsed.len(), want.len(), "{id}");
    for (hash, (epoch, next)) in want {
        assert_eq!(
            parsed.get(&hash),
            Some(&((epoch != 0).then_some(epoch), next.max(1))),
            "{id}"
        );
    }
});
