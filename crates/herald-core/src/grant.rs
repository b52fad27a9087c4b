//! Permissions as grants: `(path pattern, modes)` pairs held by a principal.
//!
//! Every protocol asks the same question, "may this principal do `mode` on `path`?", through
//! [`Access::allows`]. Icepeak's JWT whitelist, and later IorioDB's bucket permissions, hpfeeds
//! channel rights and room ACLs, are all turned into [`Grant`]s.
//!
//! Pattern syntax (as in MQTT topic filters): `/a/b` matches exactly `/a/b`; `+` matches any one
//! segment; a final `#` matches zero or more further segments, so `/a/#` matches `/a` and every
//! path below it. Patterns built from literal segments ([`PathPattern::prefix`]) treat `+` and
//! `#` inside a segment as plain characters.

use std::fmt;
use std::ops::BitOr;

use crate::path::{Path, PathLimits};

/// A set of access modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Modes(u8);

impl Modes {
    /// No access.
    pub const NONE: Modes = Modes(0);
    /// Read a value or events, subscribe to changes (`r`).
    pub const READ: Modes = Modes(1);
    /// Write a document, append events; deleting a document also takes WRITE (`w`).
    pub const WRITE: Modes = Modes(2);
    /// Administer: grant and revoke, manage users (`a`).
    pub const ADMIN: Modes = Modes(4);
    /// Delete a topic (event stream) and its events (`d`). Documents need WRITE instead.
    pub const DELETE: Modes = Modes(8);
    /// List the names (topics, streams) at and below a path (`l`).
    pub const LIST: Modes = Modes(16);
    /// Read and write.
    pub const READ_WRITE: Modes = Modes(3);
    /// Every mode: read, write, admin, delete and list.
    pub const ALL: Modes = Modes(1 | 2 | 4 | 8 | 16);

    /// Each mode with its short letter, in the order [`Display`](fmt::Display) writes them.
    const LETTERS: [(Modes, char); 5] = [
        (Modes::READ, 'r'),
        (Modes::WRITE, 'w'),
        (Modes::ADMIN, 'a'),
        (Modes::DELETE, 'd'),
        (Modes::LIST, 'l'),
    ];

    /// Whether every mode in `other` is in `self`.
    pub fn contains(self, other: Modes) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Parses the short form used by token generators and the command line: letters `r`
    /// (read), `w` (write), `a` (admin), `d` (delete) and `l` (list) in any order and
    /// repeated or not, e.g. `rw` or `rwdl`. [`Display`](fmt::Display) writes this form back.
    ///
    /// # Errors
    /// [`ModesError`] on an empty string or an unknown letter.
    pub fn parse_short(s: &str) -> Result<Modes, ModesError> {
        if s.is_empty() {
            return Err(ModesError(s.to_owned()));
        }
        s.chars().try_fold(Modes::NONE, |acc, c| {
            Modes::LETTERS
                .iter()
                .find(|(_, letter)| *letter == c)
                .map(|(m, _)| acc | *m)
                .ok_or_else(|| ModesError(s.to_owned()))
        })
    }
}

impl BitOr for Modes {
    type Output = Modes;
    fn bitor(self, rhs: Modes) -> Modes {
        Modes(self.0 | rhs.0)
    }
}

impl fmt::Display for Modes {
    /// Writes the short form, letters in the order `r w a d l` (`rw`, `rwadl`, `-` for none).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        for (m, c) in Modes::LETTERS {
            if self.contains(m) {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// A modes string that is empty or not made of `r`, `w`, `a`, `d` and `l`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid modes {0:?}: expected letters r (read), w (write), a (admin), d (delete), \
     l (list), e.g. 'rw'"
)]
pub struct ModesError(String);

/// One segment of a [`PathPattern`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PatternSegment {
    /// Matches exactly this segment.
    Literal(String),
    /// Matches any one segment (`+`).
    Any,
    /// Matches zero or more segments; only ever the last segment (`#`).
    Rest,
}

/// A pattern over paths; see the module documentation for the syntax.
///
/// # Invariants
/// [`PatternSegment::Rest`] appears at most once, as the last segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathPattern {
    segments: Vec<PatternSegment>,
}

/// Why a pattern string is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// `#` is not the last segment.
    #[error("'#' may only be the last segment of a pattern")]
    RestNotLast,
    /// A literal segment is not a valid path segment.
    #[error(transparent)]
    Path(#[from] crate::path::PathError),
}

impl PathPattern {
    /// The pattern matching `path` and every path below it.
    pub fn prefix(path: &Path) -> Self {
        let mut segments: Vec<PatternSegment> = path
            .segments()
            .iter()
            .cloned()
            .map(PatternSegment::Literal)
            .collect();
        segments.push(PatternSegment::Rest);
        Self { segments }
    }

    /// The pattern matching exactly `path`.
    pub fn exact(path: &Path) -> Self {
        Self {
            segments: path
                .segments()
                .iter()
                .cloned()
                .map(PatternSegment::Literal)
                .collect(),
        }
    }

    /// Parses `/a/+/c/#` syntax (a leading slash is optional).
    ///
    /// # Errors
    /// [`PatternError`] when `#` is not last or a literal segment is invalid.
    pub fn parse(s: &str, limits: &PathLimits) -> Result<Self, PatternError> {
        let parts: Vec<&str> = s.split('/').filter(|p| !p.is_empty()).collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "+" => PatternSegment::Any,
                "#" if i + 1 == parts.len() => PatternSegment::Rest,
                "#" => return Err(PatternError::RestNotLast),
                lit => {
                    Path::from_segments([lit], limits)?;
                    PatternSegment::Literal(lit.to_owned())
                }
            });
        }
        Ok(Self { segments })
    }

    /// The pattern's segments.
    pub fn segments(&self) -> &[PatternSegment] {
        &self.segments
    }

    /// The path every match is (or is under): the pattern's literal segments before its
    /// first wildcard, the root when it starts with one. In a sorted set of paths (they sort
    /// segment by segment) the paths under it follow one another from it, so the matches can
    /// be looked for there instead of in the whole set.
    pub fn literal_prefix(&self) -> Path {
        let literal = self.segments.iter().map_while(|s| match s {
            PatternSegment::Literal(l) => Some(l.clone()),
            PatternSegment::Any | PatternSegment::Rest => None,
        });
        Path::from_valid_segments(literal.collect())
    }

    /// Whether `path` matches the pattern.
    pub fn matches(&self, path: &Path) -> bool {
        let mut segs = path.segments().iter();
        for p in &self.segments {
            match p {
                PatternSegment::Rest => return true,
                PatternSegment::Any => {
                    if segs.next().is_none() {
                        return false;
                    }
                }
                PatternSegment::Literal(lit) => match segs.next() {
                    Some(s) if s == lit => {}
                    _ => return false,
                },
            }
        }
        segs.next().is_none()
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for s in &self.segments {
            match s {
                PatternSegment::Literal(l) => write!(f, "/{l}")?,
                PatternSegment::Any => f.write_str("/+")?,
                PatternSegment::Rest => f.write_str("/#")?,
            }
        }
        Ok(())
    }
}

/// The right to use `modes` on every path matching `pattern`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    /// Which paths the grant covers.
    pub pattern: PathPattern,
    /// What it allows there.
    pub modes: Modes,
}

/// What a principal may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Everything (anonymous access on a loopback-only server with auth off, or an operator).
    Full,
    /// Only what these grants allow.
    Grants(Vec<Grant>),
}

impl Access {
    /// Whether the principal may use every mode in `needed` on `path`. Modes may come from
    /// different grants that all match the path.
    pub fn allows(&self, path: &Path, needed: Modes) -> bool {
        match self {
            Access::Full => true,
            Access::Grants(grants) => grants
                .iter()
                .filter(|g| g.pattern.matches(path))
                .fold(Modes::NONE, |acc, g| acc | g.modes)
                .contains(needed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Path {
        Path::parse_url(s, &PathLimits::default()).unwrap()
    }

    fn pat(s: &str) -> PathPattern {
        PathPattern::parse(s, &PathLimits::default()).unwrap()
    }

    #[test]
    fn literal_prefix_stops_at_the_first_wildcard() {
        for (pattern, prefix) in [
            ("/a/b/+/c", "/a/b"),
            ("/a/b", "/a/b"),
            ("/a/#", "/a"),
            ("/+/x", "/"),
            ("/#", "/"),
        ] {
            assert_eq!(pat(pattern).literal_prefix(), p(prefix), "{pattern}");
        }
    }

    #[test]
    fn prefix_matches_by_whole_segments() {
        let g = PathPattern::prefix(&p("/foo"));
        assert!(g.matches(&p("/foo")));
        assert!(g.matches(&p("/foo/bar/baz")));
        assert!(!g.matches(&p("/foobar")));
        assert!(!g.matches(&p("/")));
        assert!(PathPattern::prefix(&Path::root()).matches(&p("/x")));
    }

    #[test]
    fn wildcards() {
        assert!(pat("/a/+/c").matches(&p("/a/b/c")));
        assert!(!pat("/a/+/c").matches(&p("/a/c")));
        assert!(!pat("/a/+").matches(&p("/a/b/c")));
        assert!(pat("/a/#").matches(&p("/a")));
        assert!(pat("#").matches(&p("/")));
        assert!(!pat("/a/b").matches(&p("/a")));
        assert_eq!(
            PathPattern::parse("/a/#/b", &PathLimits::default()),
            Err(PatternError::RestNotLast)
        );
        assert_eq!(pat("/a/+/#").to_string(), "/a/+/#");
    }

    #[test]
    fn literal_wildcard_characters_are_plain_in_prefix_patterns() {
        let g = PathPattern::prefix(&p("/%23"));
        assert!(g.matches(&p("/%23/x")));
        assert!(!g.matches(&p("/other")));
    }

    #[test]
    fn encoded_slash_and_dots_cannot_escape_a_prefix() {
        let access = Access::Grants(vec![Grant {
            pattern: PathPattern::prefix(&p("/foo")),
            modes: Modes::READ,
        }]);
        // `%2F` keeps the slash inside one segment: "foo/bar" is not under /foo.
        assert!(!access.allows(&p("/foo%2Fbar"), Modes::READ));
        // Dot segments never parse, so they cannot climb out.
        assert!(Path::parse_url("/foo/%2e%2e/secret", &PathLimits::default()).is_err());
        assert!(access.allows(&p("/foo/bar"), Modes::READ));
        assert!(!access.allows(&p("/foo/bar"), Modes::WRITE));
    }

    #[test]
    fn modes_combine_across_grants() {
        let access = Access::Grants(vec![
            Grant {
                pattern: pat("/a/#"),
                modes: Modes::READ,
            },
            Grant {
                pattern: pat("/a/b"),
                modes: Modes::WRITE,
            },
        ]);
        assert!(access.allows(&p("/a/b"), Modes::READ_WRITE));
        assert!(!access.allows(&p("/a/c"), Modes::READ_WRITE));
        assert!(Access::Full.allows(&p("/x"), Modes::ADMIN));
    }

    #[test]
    fn short_modes() {
        assert_eq!(Modes::parse_short("rw"), Ok(Modes::READ_WRITE));
        assert_eq!(Modes::parse_short("wr"), Ok(Modes::READ_WRITE));
        assert_eq!(Modes::parse_short("r"), Ok(Modes::READ));
        assert!(Modes::parse_short("").is_err());
        assert!(Modes::parse_short("rx").is_err());
        assert!(Modes::parse_short("R").is_err());
        assert_eq!(Modes::READ_WRITE.to_string(), "rw");
        assert_eq!(Modes::parse_short("ld"), Ok(Modes::DELETE | Modes::LIST));
        assert_eq!(Modes::parse_short("lrrdwa"), Ok(Modes::ALL));
        assert_eq!(Modes::ALL.to_string(), "rwadl");
        assert_eq!(Modes::NONE.to_string(), "-");
    }

    #[test]
    fn every_set_of_modes_round_trips_through_the_short_form() {
        let singles = [
            Modes::READ,
            Modes::WRITE,
            Modes::ADMIN,
            Modes::DELETE,
            Modes::LIST,
        ];
        assert_eq!(
            singles.iter().fold(Modes::NONE, |acc, m| acc | *m),
            Modes::ALL
        );
        for bits in 1u8..32 {
            let m = Modes(bits);
            assert!(Modes::ALL.contains(m));
            let short = m.to_string();
            assert_eq!(Modes::parse_short(&short), Ok(m), "{short}");
            assert_eq!(short.len(), bits.count_ones() as usize, "{short}");
        }
        assert!(!Modes::WRITE.contains(Modes::DELETE));
        assert!(!Modes::READ.contains(Modes::LIST));
    }
}
