//! Topic names and filters (MQTT 5.0 section 4.7, 3.1.1 section 4.7): validation, shared
//! subscriptions (`$share/{group}/{filter}`, MQTT 5.0 section 4.8.2) and matching.
//!
//! The decoder checks only that topics and filters are UTF-8 strings without U+0000; the
//! broker checks them with these functions, so that it can answer with a reason code (e.g. a
//! SUBACK with 0x8F for one bad filter among good ones).

/// The longest topic name or filter: its length is a `u16`.
const MAX_LEN: usize = u16::MAX as usize;

/// The prefix of a shared subscription filter.
const SHARE_PREFIX: &str = "$share/";

/// A valid topic NAME for PUBLISH: 1..=65535 bytes (empty allowed only with alias, handled by
/// caller), no '+' or '#', no U+0000.
pub fn valid_topic_name(t: &str) -> bool {
    (1..=MAX_LEN).contains(&t.len()) && !t.contains(['+', '#', '\0'])
}

/// A valid topic FILTER: non-empty (at most 65535 bytes), '#' only as the whole last level,
/// '+' only as a whole level, no U+0000. A filter starting with `$share/` must also be a valid
/// shared subscription (see [`parse_shared`]) whose inner filter is valid.
pub fn valid_topic_filter(f: &str) -> bool {
    if f.starts_with(SHARE_PREFIX) {
        return parse_shared(f).is_some_and(|(_, inner)| plain_filter_valid(inner));
    }
    plain_filter_valid(f)
}

/// The filter rules, without the shared subscription form.
fn plain_filter_valid(f: &str) -> bool {
    if !(1..=MAX_LEN).contains(&f.len()) || f.contains('\0') {
        return false;
    }
    let mut levels = f.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        let ok = match level {
            "#" => last,
            "+" => true,
            _ => !level.contains(['+', '#']),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Shared subscription `$share/{group}/{filter}`: Some((group, filter)) when `f` is one (group
/// non-empty, no '+', '#', '/'; filter non-empty, not checked further: use
/// [`valid_topic_filter`] on the whole).
pub fn parse_shared(f: &str) -> Option<(&str, &str)> {
    let rest = f.strip_prefix(SHARE_PREFIX)?;
    let (group, filter) = rest.split_once('/')?;
    let group_ok = !group.is_empty() && !group.contains(['+', '#']);
    (group_ok && !filter.is_empty()).then_some((group, filter))
}

/// MQTT matching incl. the rule that topics starting with '$' are not matched by a filter
/// starting with '+' or '#'. `a/#` matches `a`, `+` matches an empty level. Give shared
/// subscriptions' inner filter (from [`parse_shared`]), not the `$share/..` form.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        if level == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(t) if level == "+" || level == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_topic_name("a"));
        assert!(valid_topic_name("/"));
        assert!(valid_topic_name("a//b/"));
        assert!(valid_topic_name("$SYS/x"));
        assert!(valid_topic_name(" "));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name("a/+"));
        assert!(!valid_topic_name("a/#"));
        assert!(!valid_topic_name("a+b"));
        assert!(!valid_topic_name("a\0b"));
        assert!(valid_topic_name(&"x".repeat(65_535)));
        assert!(!valid_topic_name(&"x".repeat(65_536)));
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "a",
            "a/#",
            "a/+",
            "+/+",
            "/",
            "/+",
            "+/",
            "a//b",
            "+/a/#",
            "$SYS/#",
            "sport/tennis/+/score",
            "$share/g/a/#",
            "$share/g/#",
            "$sharex/+",
        ] {
            assert!(valid_topic_filter(ok), "{ok}");
        }
        for bad in [
            "",
            "a#",
            "#/a",
            "a/#/b",
            "a/b#",
            "a+",
            "+a/b",
            "a/+b",
            "a\0",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/",
            "$share/g/a#",
            "$share/#/a",
        ] {
            assert!(!valid_topic_filter(bad), "{bad}");
        }
    }

    #[test]
    fn shared() {
        assert_eq!(parse_shared("$share/g/a/b"), Some(("g", "a/b")));
        assert_eq!(parse_shared("$share/group/#"), Some(("group", "#")));
        assert_eq!(parse_shared("$share/g"), None);
        assert_eq!(parse_shared("$share//a"), None);
        assert_eq!(parse_shared("$share/g+/a"), None);
        assert_eq!(parse_shared("$share/g#/a"), None);
        assert_eq!(parse_shared("$share/g/"), None);
        assert_eq!(parse_shared("$SHARE/g/a"), None);
        assert_eq!(parse_shared("a/b"), None);
        assert_eq!(parse_shared("share/g/a"), None);
    }

    #[test]
    fn matching() {
        let yes = [
            ("#", "a"),
            ("#", "a/b/c"),
            ("#", "/"),
            ("a/#", "a"),
            ("a/#", "a/"),
            ("a/#", "a/b/c"),
            ("+", "a"),
            ("+", ""),
            ("+/+", "/"),
            ("/+", "/"),
            ("a/+", "a/"),
            ("a/+/c", "a//c"),
            ("a/+/c", "a/b/c"),
            ("a/b", "a/b"),
            ("+/b/#", "x/b"),
            ("$SYS/#", "$SYS/x"),
            ("$SYS/+", "$SYS/x"),
            ("$SYS", "$SYS"),
            ("sport/tennis/+", "sport/tennis/player1"),
        ];
        for (f, t) in yes {
            assert!(topic_matches(f, t), "{f} should match {t}");
        }
        let no = [
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("+", "$SYS"),
            ("+/#", "$x"),
            ("a/+", "a"),
            ("a/+", "a/b/c"),
            ("+", "/"),
            ("+", "a/b"),
            ("a/b", "a"),
            ("a", "a/b"),
            ("a/b", "a/c"),
            ("a/#", "b"),
            ("a/#", "ab"),
            ("A", "a"),
            ("sport/tennis/+", "sport/tennis/player1/ranking"),
        ];
        for (f, t) in no {
            assert!(!topic_matches(f, t), "{f} should not match {t}");
        }
    }
}
