//! How much of a topic is kept: limits per topic, rules choosing them by path, and the
//! arithmetic of eviction.

use serde::{Deserialize, Serialize};

use crate::grant::{PathPattern, PatternSegment};
use crate::path::Path;

/// The retention limits of one topic. A topic keeps its newest events within every limit that
/// is set; the default sets none and keeps everything, durably.
///
/// Serde: the keys are `max_events`, `max_bytes`, `max_age_ms` and `memory_only`; missing ones
/// take their default (no limit, durable) and unset limits are not written. Unknown keys are
/// refused, so that a misspelt limit in the configuration file is an error rather than silently
/// no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "snake_case", deny_unknown_fields)]
pub struct Retention {
    /// Keep at most this many events (the newest ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_events: Option<u64>,
    /// Keep at most this many bytes of encoded records, counted as the store's
    /// `LogBounds::bytes` counts them (the newest ones); see [`Retention::excess_bytes`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Drop events older than this many ms; see [`Retention::is_expired`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<u64>,
    /// Keep the topic's events in memory only: they are not written durably and are lost when
    /// the server stops.
    pub memory_only: bool,
}

impl Retention {
    /// Whether no limit is set: no count, size or age limit. (`memory_only` is about durability,
    /// not limits, and does not count.)
    pub fn is_unbounded(&self) -> bool {
        self.max_events.is_none() && self.max_bytes.is_none() && self.max_age_ms.is_none()
    }

    /// Whether an event appended at `t_ms` is past the age limit at `now_ms`: its age
    /// `now_ms - t_ms` is greater than `max_age_ms`. An event stamped after `now_ms` (a clock
    /// step backwards) has age 0. Never true without an age limit.
    pub fn is_expired(&self, t_ms: u64, now_ms: u64) -> bool {
        self.max_age_ms
            .is_some_and(|max| now_ms.saturating_sub(t_ms) > max)
    }

    /// How many bytes a topic holding `bytes` bytes of records must drop, oldest first, to be
    /// within `max_bytes`: 0 when it is within, or without a size limit. Eviction drops whole
    /// events, so it drops the oldest events whose sizes add up to at least this much.
    pub fn excess_bytes(&self, bytes: u64) -> u64 {
        self.max_bytes.map_or(0, |max| bytes.saturating_sub(max))
    }
}

/// The seqnum to trim a topic's log before (the `before` of `Store::trim`) so that at most
/// `max_events` of its events `first..=last` remain: `first` itself when none need to go.
///
/// Topic seqnums are contiguous, so the log holds `last + 1 - first` events, none when
/// `first > last` (a fully trimmed log has `first == last + 1`). Seqnums are assumed to stay
/// far below `u64::MAX`.
pub fn trim_point_by_count(first: u64, last: u64, max_events: u64) -> u64 {
    let keep_from = match max_events.checked_sub(1) {
        None => last.saturating_add(1),
        Some(older) => last.saturating_sub(older),
    };
    keep_from.max(first)
}

/// Retention per path pattern, in configuration-file order.
///
/// [`RetentionRules::resolve`] picks the most specific rule whose pattern matches a topic:
/// 1. the one with more literal segments (`/a/b/#` over `/a/+/+`);
/// 2. then the one with more segments, not counting a final `#` (`/a/+/#` over `/a/#`);
/// 3. then the one without a final `#` (`/a/b` over `/a/b/#`);
/// 4. then the earlier one.
///
/// A topic no rule matches gets [`Retention::default()`]: unbounded and durable. A per-topic
/// override set at run time replaces the resolved rule entirely; that is the engine's business.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionRules {
    rules: Vec<(PathPattern, Retention)>,
}

impl RetentionRules {
    /// Rules in configuration-file order (which decides ties).
    pub fn new(rules: Vec<(PathPattern, Retention)>) -> Self {
        Self { rules }
    }

    /// The rules, in the order given.
    pub fn rules(&self) -> &[(PathPattern, Retention)] {
        &self.rules
    }

    /// Whether there is no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The retention of the topic `path`: that of the most specific matching rule (see the type
    /// documentation), or the default when none matches.
    pub fn resolve(&self, path: &Path) -> Retention {
        let mut best: Option<(Specificity, Retention)> = None;
        for (pattern, retention) in &self.rules {
            if !pattern.matches(path) {
                continue;
            }
            let s = Specificity::of(pattern);
            if best.as_ref().is_none_or(|(b, _)| s > *b) {
                best = Some((s, *retention));
            }
        }
        best.map(|(_, r)| r).unwrap_or_default()
    }
}

impl FromIterator<(PathPattern, Retention)> for RetentionRules {
    fn from_iter<I: IntoIterator<Item = (PathPattern, Retention)>>(iter: I) -> Self {
        Self::new(iter.into_iter().collect())
    }
}

/// How specific a pattern is; greater is more specific. Field order is comparison order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Specificity {
    literals: usize,
    segments_before_rest: usize,
    no_rest: bool,
}

impl Specificity {
    fn of(pattern: &PathPattern) -> Self {
        let segs = pattern.segments();
        let rest = matches!(segs.last(), Some(PatternSegment::Rest));
        Self {
            literals: segs
                .iter()
                .filter(|s| matches!(s, PatternSegment::Literal(_)))
                .count(),
            segments_before_rest: segs.len() - usize::from(rest),
            no_rest: !rest,
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

    fn events(n: u64) -> Retention {
        Retention {
            max_events: Some(n),
            ..Retention::default()
        }
    }

    fn resolved(rules: &RetentionRules, path: &str) -> Option<u64> {
        rules.resolve(&p(path)).max_events
    }

    #[test]
    fn most_specific_rule_wins() {
        let rules: RetentionRules = [
            ("#", 1),
            ("/a/#", 2),
            ("/a/+/#", 3),
            ("/a/b/#", 4),
            ("/a/b", 5),
            ("/+/+", 6),
            ("/a/+", 7),
            ("/+/b/c", 8),
            ("/a/+/c", 9),
        ]
        .into_iter()
        .map(|(s, n)| (pat(s), events(n)))
        .collect();
        assert_eq!(resolved(&rules, "/"), Some(1));
        assert_eq!(resolved(&rules, "/z"), Some(1));
        assert_eq!(resolved(&rules, "/a"), Some(2));
        // `/a/+` (1 literal, 2 segments, no `#`) over `/a/+/#` and `/+/+`.
        assert_eq!(resolved(&rules, "/a/x"), Some(7));
        assert_eq!(resolved(&rules, "/a/x/y"), Some(3));
        // `/a/b` over `/a/b/#`.
        assert_eq!(resolved(&rules, "/a/b"), Some(5));
        assert_eq!(resolved(&rules, "/a/b/y"), Some(4));
        // `/+/b/c` and `/a/+/c` tie with `/a/b/#` on literals; more segments win, then order.
        assert_eq!(resolved(&rules, "/a/b/c"), Some(8));
        assert_eq!(resolved(&rules, "/z/z"), Some(6));
    }

    #[test]
    fn no_match_is_unbounded_and_durable() {
        let rules = RetentionRules::new(vec![(pat("/a/#"), events(1))]);
        assert_eq!(rules.resolve(&p("/b")), Retention::default());
        assert!(Retention::default().is_unbounded());
        assert!(!Retention::default().memory_only);
        assert!(RetentionRules::default().is_empty());
        assert_eq!(rules.rules().len(), 1);
    }

    #[test]
    fn serde_defaults_missing_fields_and_refuses_unknown_ones() {
        let r: Retention = serde_json::from_str(r#"{"max_events": 10}"#).unwrap();
        assert_eq!(r, events(10));
        let r: Retention = serde_json::from_str("{}").unwrap();
        assert!(r.is_unbounded());
        let r: Retention =
            serde_json::from_str(r#"{"max_bytes": 5, "max_age_ms": 60000, "memory_only": true}"#)
                .unwrap();
        assert_eq!(
            r,
            Retention {
                max_events: None,
                max_bytes: Some(5),
                max_age_ms: Some(60_000),
                memory_only: true,
            }
        );
        assert!(!r.is_unbounded());
        assert_eq!(
            serde_json::to_string(&events(3)).unwrap(),
            r#"{"max_events":3,"memory_only":false}"#
        );
        assert_eq!(
            serde_json::from_value::<Retention>(serde_json::to_value(r).unwrap()).unwrap(),
            r
        );
        assert!(serde_json::from_str::<Retention>(r#"{"max_event": 10}"#).is_err());
        assert!(serde_json::from_str::<Retention>(r#"{"max-events": 10}"#).is_err());
    }

    #[test]
    fn memory_only_alone_is_unbounded() {
        let r = Retention {
            memory_only: true,
            ..Retention::default()
        };
        assert!(r.is_unbounded());
        assert!(!events(0).is_unbounded());
    }

    #[test]
    fn count_trim_point() {
        // Events 1..=10.
        assert_eq!(trim_point_by_count(1, 10, 100), 1);
        assert_eq!(trim_point_by_count(1, 10, 10), 1);
        assert_eq!(trim_point_by_count(1, 10, 9), 2);
        assert_eq!(trim_point_by_count(1, 10, 1), 10);
        assert_eq!(trim_point_by_count(1, 10, 0), 11);
        // Already trimmed to 6..=10.
        assert_eq!(trim_point_by_count(6, 10, 7), 6);
        assert_eq!(trim_point_by_count(6, 10, 3), 8);
        // Empty (fully trimmed) log.
        assert_eq!(trim_point_by_count(11, 10, 0), 11);
        assert_eq!(trim_point_by_count(11, 10, 5), 11);
        // No overflow at the extremes.
        assert_eq!(trim_point_by_count(0, 0, u64::MAX), 0);
        assert_eq!(trim_point_by_count(1, u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn age_and_size_limits() {
        let r = Retention {
            max_age_ms: Some(1_000),
            max_bytes: Some(100),
            ..Retention::default()
        };
        assert!(!r.is_expired(5_000, 6_000));
        assert!(r.is_expired(5_000, 6_001));
        assert!(!r.is_expired(9_000, 6_000));
        assert!(!Retention::default().is_expired(0, u64::MAX));
        assert_eq!(r.excess_bytes(100), 0);
        assert_eq!(r.excess_bytes(150), 50);
        assert_eq!(Retention::default().excess_bytes(u64::MAX), 0);
    }
}
