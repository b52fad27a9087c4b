//! Paths: the one namespace every protocol maps its names into.
//!
//! A [`Path`] is a list of segments. It is written `/a/b/c`; the root is `/`. Segments are
//! arbitrary non-empty UTF-8 strings except `.` and `..`, which are refused wherever a path is
//! parsed so that no spelling of a path can step outside a granted prefix. Matching (grants,
//! subscriptions) is always by whole segments, so `/foo` is never a prefix of `/foobar`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, Serialize};

/// Characters escaped when a segment is written into a URL-style path.
const SEGMENT_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Size limits applied when a path is parsed from untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathLimits {
    /// The largest number of segments a path may have.
    pub max_segments: usize,
    /// The largest size of one segment, in bytes after percent-decoding.
    pub max_segment_bytes: usize,
}

impl Default for PathLimits {
    fn default() -> Self {
        Self {
            max_segments: 64,
            max_segment_bytes: 1024,
        }
    }
}

/// Why a string is not a valid path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// A segment is not valid UTF-8 after percent-decoding.
    #[error("path segment {index} is not valid UTF-8")]
    InvalidUtf8 {
        /// The zero-based index of the offending segment.
        index: usize,
    },
    /// A segment is `.` or `..` (possibly percent-encoded).
    #[error("path segments '.' and '..' are not allowed")]
    DotSegment,
    /// A segment is empty (only where segments are given one by one).
    #[error("path segments must not be empty")]
    EmptySegment,
    /// The path has more segments than allowed.
    #[error("path has {count} segments, more than the limit of {max}")]
    TooManySegments {
        /// How many segments the path has.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A segment is longer than allowed.
    #[error("path segment is {len} bytes, more than the limit of {max}")]
    SegmentTooLong {
        /// The segment's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// A validated path in Herald's namespace.
///
/// Cloning is cheap (a reference count): fan-out hands the same path to every subscriber.
///
/// # Invariants
/// Every segment is non-empty, is neither `.` nor `..`, and the limits the path was parsed
/// with held.
#[derive(Debug, Clone, Default, Eq, PartialOrd, Ord)]
pub struct Path {
    segments: Arc<[String]>,
}

impl PartialEq for Path {
    /// Clones of one path (the common case: fan-out hands out clones) compare by pointer;
    /// others segment by segment, as the derived comparison would.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.segments, &other.segments) || self.segments == other.segments
    }
}

impl std::hash::Hash for Path {
    /// The segments, as the derived hash would: equal paths (by pointer or by segments) have
    /// equal segments, so they hash alike.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.segments.hash(state);
    }
}

impl Path {
    /// The root path `/`.
    pub fn root() -> Self {
        Self::default()
    }

    /// Parses the path part of a URL (`/users/123/status`), percent-decoding each segment.
    ///
    /// Empty segments (a doubled or trailing `/`) are skipped; a percent-encoded `/` (`%2F`)
    /// stays inside its segment, it never splits one.
    ///
    /// # Errors
    /// [`PathError`] when a segment is not UTF-8, is a dot segment, or a limit is exceeded.
    pub fn parse_url(raw: &str, limits: &PathLimits) -> Result<Self, PathError> {
        let mut segments = Vec::new();
        for (index, part) in raw.split('/').filter(|s| !s.is_empty()).enumerate() {
            let decoded = percent_decode_str(part)
                .decode_utf8()
                .map_err(|_| PathError::InvalidUtf8 { index })?;
            segments.push(decoded.into_owned());
        }
        Self::from_segments(segments, limits)
    }

    /// Parses a plain slash-separated path (`a/b` or `/a/b`) with no percent-decoding, as used
    /// by Icepeak's multi-subscription protocol and the command line.
    ///
    /// # Errors
    /// [`PathError`] when a segment is a dot segment or a limit is exceeded.
    pub fn parse_slashed(raw: &str, limits: &PathLimits) -> Result<Self, PathError> {
        Self::from_segments(
            raw.split('/').filter(|s| !s.is_empty()).map(str::to_owned),
            limits,
        )
    }

    /// Builds a path from its segments.
    ///
    /// # Errors
    /// [`PathError`] when a segment is empty, a dot segment, or a limit is exceeded.
    pub fn from_segments<I, S>(segments: I, limits: &PathLimits) -> Result<Self, PathError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let segments: Vec<String> = segments.into_iter().map(Into::into).collect();
        if segments.len() > limits.max_segments {
            return Err(PathError::TooManySegments {
                count: segments.len(),
                max: limits.max_segments,
            });
        }
        for s in &segments {
            validate_segment(s, limits)?;
        }
        Ok(Self {
            segments: segments.into(),
        })
    }

    /// A path from segments already known to be valid (a pattern's literal ones).
    pub(crate) fn from_valid_segments(segments: Vec<String>) -> Self {
        Self {
            segments: segments.into(),
        }
    }

    /// The segments, root first.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The number of segments (0 for the root).
    pub fn depth(&self) -> usize {
        self.segments.len()
    }

    /// Whether this is the root path.
    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    /// The entries of `map` whose path is this one or under it, in order: paths sort segment
    /// by segment, so they follow one another from this path, and the rest of the map is
    /// not looked at.
    pub fn entries_under<'a, V>(
        &'a self,
        map: &'a BTreeMap<Path, V>,
    ) -> impl Iterator<Item = (&'a Path, &'a V)> {
        map.range(self.clone()..)
            .take_while(move |(path, _)| path.starts_with(self))
    }

    /// Whether `prefix` is this path or one of its ancestors, compared segment by segment.
    pub fn starts_with(&self, prefix: &Path) -> bool {
        self.segments.starts_with(&prefix.segments)
    }

    /// The parent path, or `None` for the root.
    pub fn parent(&self) -> Option<Path> {
        let (_, rest) = self.segments.split_last()?;
        Some(Path {
            segments: rest.into(),
        })
    }

    /// The last segment, or `None` for the root.
    pub fn last(&self) -> Option<&str> {
        self.segments.last().map(String::as_str)
    }

    /// Writes the path without a leading slash and without escaping (`a/b`), as Icepeak's
    /// multi-subscription protocol echoes it.
    pub fn to_slashed(&self) -> String {
        self.segments.join("/")
    }
}

fn validate_segment(s: &str, limits: &PathLimits) -> Result<(), PathError> {
    if s.is_empty() {
        return Err(PathError::EmptySegment);
    }
    if s == "." || s == ".." {
        return Err(PathError::DotSegment);
    }
    if s.len() > limits.max_segment_bytes {
        return Err(PathError::SegmentTooLong {
            len: s.len(),
            max: limits.max_segment_bytes,
        });
    }
    Ok(())
}

impl fmt::Display for Path {
    /// Writes `/a/b`, percent-encoding characters that would change the path's meaning in a
    /// URL, so that [`Path::parse_url`] reads back the same path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for s in self.segments.iter() {
            write!(f, "/{}", utf8_percent_encode(s, SEGMENT_ESCAPES))?;
        }
        Ok(())
    }
}

impl Serialize for Path {
    /// Writes the segments as a JSON-style array (`["a","b"]`), as Icepeak's journal does.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let segments: &[String] = &self.segments;
        segments.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Path {
    /// Reads the array-of-segments form that [`Serialize`] writes. Segments are validated
    /// (no empty or dot segments) but size limits are not applied: a stored path was checked
    /// against the limits in force when it was written, and replay must not depend on today's.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let segments = Vec::<String>::deserialize(d)?;
        let unlimited = PathLimits {
            max_segments: usize::MAX,
            max_segment_bytes: usize::MAX,
        };
        Path::from_segments(segments, &unlimited).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Result<Path, PathError> {
        Path::parse_url(s, &PathLimits::default())
    }

    #[test]
    fn entries_under_a_path_are_whole_segments_below_it() {
        let map: BTreeMap<Path, u8> = ["/a", "/a/b", "/a/b/c", "/ab", "/a0/x", "/b", "/"]
            .iter()
            .enumerate()
            .map(|(i, s)| (url(s).unwrap(), i as u8))
            .collect();
        let under = |prefix: &str| -> Vec<String> {
            url(prefix)
                .unwrap()
                .entries_under(&map)
                .map(|(p, _)| p.to_string())
                .collect()
        };
        assert_eq!(under("/a"), ["/a", "/a/b", "/a/b/c"]);
        assert_eq!(under("/a/b/c"), ["/a/b/c"]);
        assert_eq!(under("/c"), Vec::<String>::new());
        assert_eq!(under("/").len(), map.len());
    }

    #[test]
    fn parses_and_decodes_segments() {
        let p = url("/users/12%203/status/").unwrap();
        assert_eq!(p.segments(), ["users", "12 3", "status"]);
        assert_eq!(url("/").unwrap(), Path::root());
        assert_eq!(url("").unwrap(), Path::root());
        assert_eq!(url("//a//b").unwrap().segments(), ["a", "b"]);
    }

    #[test]
    fn encoded_slash_stays_in_its_segment() {
        let p = url("/a%2Fb/c").unwrap();
        assert_eq!(p.segments(), ["a/b", "c"]);
        assert_eq!(p.to_string(), "/a%2Fb/c");
    }

    #[test]
    fn refuses_dot_segments_in_any_spelling() {
        for s in ["/a/../b", "/a/./b", "/a/%2e%2e/b", "/a/%2E/b", "/%2e%2E"] {
            assert_eq!(url(s), Err(PathError::DotSegment), "{s}");
        }
        assert!(url("/a/.../b").is_ok());
    }

    #[test]
    fn refuses_invalid_utf8() {
        assert_eq!(url("/ok/%ff"), Err(PathError::InvalidUtf8 { index: 1 }));
    }

    #[test]
    fn enforces_limits() {
        let limits = PathLimits {
            max_segments: 2,
            max_segment_bytes: 3,
        };
        assert!(matches!(
            Path::parse_url("/a/b/c", &limits),
            Err(PathError::TooManySegments { count: 3, max: 2 })
        ));
        assert!(matches!(
            Path::parse_url("/abcd", &limits),
            Err(PathError::SegmentTooLong { len: 4, max: 3 })
        ));
    }

    #[test]
    fn prefix_is_by_whole_segments() {
        let foo = url("/foo").unwrap();
        assert!(url("/foo/bar").unwrap().starts_with(&foo));
        assert!(url("/foo").unwrap().starts_with(&foo));
        assert!(!url("/foobar").unwrap().starts_with(&foo));
        assert!(url("/anything").unwrap().starts_with(&Path::root()));
    }

    #[test]
    fn serde_round_trip_is_an_array() {
        let p = url("/a/b").unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"["a","b"]"#);
        assert_eq!(serde_json::from_str::<Path>(&json).unwrap(), p);
        assert!(serde_json::from_str::<Path>(r#"["a",".."]"#).is_err());
    }
}
