//! Path parsing never panics, never accepts a dot or empty segment, and what it accepts
//! round-trips through Display.
#![no_main]

use herald_core::{Path, PathLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let limits = PathLimits::default();
    if let Ok(p) = Path::parse_url(raw, &limits) {
        for s in p.segments() {
            assert!(!s.is_empty() && s != "." && s != "..");
        }
        let again = Path::parse_url(&p.to_string(), &limits).expect("Display output parses");
        assert_eq!(again, p);
    }
    if let Ok(p) = Path::parse_slashed(raw, &limits) {
        assert!(p.depth() <= limits.max_segments);
    }
    let _ = herald_core::PathPattern::parse(raw, &limits);
});
