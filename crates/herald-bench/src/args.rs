//! Command-line value parsers shared by the scenarios.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};

/// Parses a duration such as `10s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
///
/// # Errors
/// When the number or the unit (`ms`, `s`, `m`, `h`) is not recognised.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("expected a duration like 10s or 500ms, got {s:?}"))?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        other => bail!("unknown duration unit {other:?} in {s:?} (use ms, s, m or h)"),
    };
    Duration::try_from_secs_f64(seconds).with_context(|| format!("invalid duration {s:?}"))
}

/// An event rate: `100/s`, `6000/m` or a bare number per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(f64);

impl Rate {
    /// Events per second.
    pub fn per_second(self) -> f64 {
        self.0
    }

    /// Time between two events.
    pub fn period(self) -> Duration {
        Duration::from_secs_f64(1.0 / self.0)
    }
}

impl FromStr for Rate {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (number, per) = s.trim().split_once('/').unwrap_or((s.trim(), "s"));
        let number: f64 = number
            .trim()
            .parse()
            .with_context(|| format!("expected a rate like 100/s, got {s:?}"))?;
        let per_second = match per.trim() {
            "s" => number,
            "m" | "min" => number / 60.0,
            other => bail!("unknown rate unit {other:?} in {s:?} (use /s or /m)"),
        };
        if !(per_second.is_finite() && per_second > 0.0 && per_second <= 1e6) {
            bail!("rate must be between 0 and 1,000,000 per second, got {s:?}");
        }
        Ok(Rate(per_second))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", self.0)
    }
}

/// A server listener: `http://host:port`, `ws://host:port` or `host:port`, resolved once.
#[derive(Debug, Clone)]
pub struct Target {
    authority: String,
    addr: SocketAddr,
}

impl Target {
    /// `host:port`, as sent in the `Host` header.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The resolved socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port` followed by `path_and_query`.
    pub fn http_url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.authority, path_and_query)
    }

    /// `ws://host:port` followed by `path`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.authority, path)
    }
}

impl FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = ["http://", "ws://"]
            .iter()
            .find_map(|scheme| s.strip_prefix(scheme))
            .unwrap_or(s);
        if s.starts_with("https://") || s.starts_with("wss://") {
            bail!("TLS targets are not supported: {s:?}");
        }
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            bail!("expected http://HOST:PORT without a path, got {s:?}");
        }
        let addr = authority
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {authority:?}"))?
            .next()
            .with_context(|| format!("{authority:?} resolves to no address"))?;
        Ok(Target {
            authority: authority.to_owned(),
            addr,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

/// Checks that a path given on the command line starts with `/` and has no query.
///
/// # Errors
/// When it does not.
pub fn parse_doc_path(s: &str) -> anyhow::Result<String> {
    if !s.starts_with('/') || s.contains('?') || s.contains('#') {
        bail!("expected a path like /bench/x, got {s:?}");
    }
    Ok(s.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("1y").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!("100/s".parse::<Rate>().unwrap().per_second(), 100.0);
        assert_eq!("120/m".parse::<Rate>().unwrap().per_second(), 2.0);
        assert_eq!("50".parse::<Rate>().unwrap().per_second(), 50.0);
        assert_eq!(
            "100/s".parse::<Rate>().unwrap().period(),
            Duration::from_millis(10)
        );
        assert!("0/s".parse::<Rate>().is_err());
        assert!("1/h".parse::<Rate>().is_err());
    }

    #[test]
    fn targets() {
        let t: Target = "http://127.0.0.1:8080/".parse().unwrap();
        assert_eq!(t.authority(), "127.0.0.1:8080");
        assert_eq!(t.addr().port(), 8080);
        assert_eq!(t.ws_url("/a"), "ws://127.0.0.1:8080/a");
        let t: Target = "127.0.0.1:1".parse().unwrap();
        assert_eq!(t.http_url("/x?durable"), "http://127.0.0.1:1/x?durable");
        assert!("http://127.0.0.1:1/path".parse::<Target>().is_err());
        assert!("https://127.0.0.1:1".parse::<Target>().is_err());
    }

    #[test]
    fn doc_paths() {
        assert_eq!(parse_doc_path("/bench/x/").unwrap(), "/bench/x");
        assert!(parse_doc_path("bench").is_err());
        assert!(parse_doc_path("/a?b").is_err());
    }
}
