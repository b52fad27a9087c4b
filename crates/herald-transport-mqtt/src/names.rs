//! MQTT topic names and filters as Herald paths and patterns.
//!
//! MQTT topic `a/b/c` is topic `/a/b/c`; a filter's `+` and `#` are the pattern's single-level
//! and multi-level wildcards. IorioDB's `bucket!stream` form (one level with one `!`) is the
//! stream `/bucket/stream`. Herald paths have no empty or dot segments, so MQTT topics with an
//! empty level (`a//b`, `/a`, `a/`) or a `.` / `..` level are refused (MQTT 5: reason 0x90 or
//! 0x8F).

use herald_core::{Path, PathLimits, PathPattern};

/// The Herald topic of the MQTT topic name `name` (already checked to have no wildcards).
pub(crate) fn topic_path(name: &str, limits: &PathLimits) -> Option<Path> {
    if let Some((bucket, stream)) = name.split_once('!')
        && !name.contains('/')
        && !stream.contains('!')
    {
        return Path::from_segments([bucket, stream], limits).ok();
    }
    Path::from_segments(name.split('/'), limits).ok()
}

/// The MQTT topic name of a Herald topic.
pub(crate) fn topic_name(path: &Path) -> String {
    path.to_slashed()
}

/// The pattern of the MQTT topic filter `filter` (already checked with `valid_topic_filter`),
/// and the exact topic when it has no wildcard.
pub(crate) fn filter_pattern(
    filter: &str,
    limits: &PathLimits,
) -> Option<(PathPattern, Option<Path>)> {
    if filter
        .split('/')
        .any(|level| level.is_empty() || level == "." || level == "..")
    {
        return None;
    }
    if !filter.contains(['+', '#']) {
        let path = topic_path(filter, limits)?;
        return Some((PathPattern::exact(&path), Some(path)));
    }
    if filter.split('/').count() > limits.max_segments {
        return None;
    }
    PathPattern::parse(filter, limits).ok().map(|p| (p, None))
}

/// Whether a filter may match `topic` by MQTT's rule for `$` topics: a filter starting with a
/// wildcard does not match topics whose first level starts with `$`.
pub(crate) fn dollar_rule_allows(filter: &str, topic: &Path) -> bool {
    let starts_with_wildcard = filter.starts_with('+') || filter.starts_with('#');
    !(starts_with_wildcard && topic.segments().first().is_some_and(|s| s.starts_with('$')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PathLimits {
        PathLimits::default()
    }

    #[test]
    fn topics_map_to_paths() {
        let l = limits();
        assert_eq!(topic_path("a/b/c", &l).unwrap().to_string(), "/a/b/c");
        assert_eq!(topic_path("b!s", &l).unwrap().to_string(), "/b/s");
        assert_eq!(topic_path("x!y!z", &l).unwrap().to_string(), "/x!y!z");
        assert_eq!(topic_path("a/b!c", &l).unwrap().to_string(), "/a/b!c");
        assert_eq!(topic_path("$SYS/x", &l).unwrap().to_string(), "/$SYS/x");
        for bad in ["", "/a", "a/", "a//b", "a/./b", "..", "!s", "b!"] {
            assert!(topic_path(bad, &l).is_none(), "{bad}");
        }
        assert_eq!(topic_name(&topic_path("a/b", &l).unwrap()), "a/b");
    }

    #[test]
    fn filters_map_to_patterns() {
        let l = limits();
        let (pattern, exact) = filter_pattern("a/+/c", &l).unwrap();
        assert!(exact.is_none());
        assert!(pattern.matches(&topic_path("a/x/c", &l).unwrap()));
        assert!(!pattern.matches(&topic_path("a/x/d", &l).unwrap()));
        let (pattern, _) = filter_pattern("a/#", &l).unwrap();
        assert!(pattern.matches(&topic_path("a", &l).unwrap()));
        assert!(pattern.matches(&topic_path("a/b/c", &l).unwrap()));
        let (pattern, exact) = filter_pattern("b!s", &l).unwrap();
        assert_eq!(exact.unwrap().to_string(), "/b/s");
        assert!(pattern.matches(&topic_path("b/s", &l).unwrap()));
        assert!(
            filter_pattern("#", &l)
                .unwrap()
                .0
                .matches(&topic_path("x", &l).unwrap())
        );
        for bad in ["a//#", "/+", "+/", "a/../b"] {
            assert!(filter_pattern(bad, &l).is_none(), "{bad}");
        }
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        let l = limits();
        let sys = topic_path("$SYS/x", &l).unwrap();
        assert!(!dollar_rule_allows("#", &sys));
        assert!(!dollar_rule_allows("+/x", &sys));
        assert!(dollar_rule_allows("$SYS/#", &sys));
        assert!(dollar_rule_allows("#", &topic_path("a", &l).unwrap()));
    }
}
