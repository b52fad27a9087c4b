//! Who is calling: session tokens, the caller's access, and the per-IP rate limit of
//! `/sessions`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderMap, header};
use herald_core::{Access, Modes, Path};
use herald_engine::Accounts;

/// The header IorioDB clients send their session token in.
pub(crate) const SESSION_HEADER: &str = "x-session";

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The user name; `None` for the pseudo-user `anonymous`.
    pub(crate) user: Option<String>,
}

impl Caller {
    /// The caller's current access (looked up on every call, so grant changes apply at once).
    pub(crate) fn access(&self, accounts: &Accounts) -> Access {
        accounts.access(self.user.as_deref())
    }

    /// Whether the caller may use `modes` on `path`.
    pub(crate) fn allows(&self, accounts: &Accounts, path: &Path, modes: Modes) -> bool {
        self.access(accounts).allows(path, modes)
    }

    /// Whether the caller is an administrator.
    pub(crate) fn is_admin(&self, accounts: &Accounts) -> bool {
        matches!(self.access(accounts), Access::Full)
    }

    /// The name IorioDB shows for the caller.
    pub(crate) fn name(&self) -> &str {
        self.user.as_deref().unwrap_or("anonymous")
    }
}

/// The session token could not be verified (malformed, badly signed, expired, or its user is
/// gone).
#[derive(Debug)]
pub(crate) struct BadToken;

/// Where a request's token may come from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TokenSources {
    /// `X-Session`, then `?jwt=` (IorioDB).
    Iorio,
    /// `X-Session`, then `Authorization: Bearer`, then `?jwt=` (the native API).
    Native,
}

/// The session token of a request, if any.
pub(crate) fn token<'a>(
    headers: &'a HeaderMap,
    query_jwt: Option<&'a str>,
    sources: TokenSources,
) -> Option<&'a str> {
    let non_empty = |s: &'a str| Some(s.trim()).filter(|s| !s.is_empty());
    if let Some(t) = headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(non_empty)
    {
        return Some(t);
    }
    if let TokenSources::Native = sources
        && let Some(t) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .and_then(non_empty)
    {
        return Some(t);
    }
    query_jwt.and_then(non_empty)
}

/// The caller named by `token` (anonymous without one).
///
/// # Errors
/// [`BadToken`] when the token does not verify.
pub(crate) fn caller(accounts: &Accounts, token: Option<&str>) -> Result<Caller, BadToken> {
    let Some(token) = token else {
        return Ok(Caller { user: None });
    };
    match accounts.verify_session(token) {
        Ok(user) => Ok(Caller { user: Some(user) }),
        Err(e) => {
            tracing::debug!(error = %e, "session token refused");
            Err(BadToken)
        }
    }
}

/// A token-bucket rate limiter per client IP: `per_window` attempts, refilled continuously over
/// `window`.
///
/// # Invariants
/// The map never holds more than `max_clients` entries: full (idle) buckets are dropped when it
/// fills up, and if it is still full, unknown clients are refused (fail closed) until some
/// bucket refills.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_window: u32,
    window: Duration,
    max_clients: usize,
    /// Held for one lookup and update at a time, never across an await.
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    pub(crate) fn new(per_window: u32, window: Duration, max_clients: usize) -> Self {
        Self {
            per_window,
            window,
            max_clients: max_clients.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one attempt for `ip`; `false` when it is over the limit.
    pub(crate) fn allow(&self, ip: IpAddr) -> bool {
        self.allow_at(client_key(ip), Instant::now())
    }

    fn allow_at(&self, ip: IpAddr, now: Instant) -> bool {
        if self.per_window == 0 {
            return true;
        }
        let capacity = f64::from(self.per_window);
        let rate = capacity / self.window.as_secs_f64().max(f64::EPSILON);
        let refill = |b: &Bucket| {
            let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
            (b.tokens + elapsed * rate).min(capacity)
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(&ip) && buckets.len() >= self.max_clients {
            buckets.retain(|_, b| refill(b) < capacity);
            if buckets.len() >= self.max_clients {
                tracing::warn!("session rate limiter is full; refusing a new client");
                return false;
            }
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let tokens = refill(bucket);
        bucket.updated = now;
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            true
        } else {
            bucket.tokens = tokens;
            false
        }
    }
}

/// The rate-limit key of a client address: the address itself for IPv4, its /64 network for
/// IPv6 (one host usually holds a whole /64, so per-address budgets would be endless).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(network))
            }
        },
        v4 => v4,
    }
}

/// Whether the "no client address" warning was logged already.
static NO_CONNECT_INFO_WARNED: AtomicBool = AtomicBool::new(false);

/// The client's IP from axum's `ConnectInfo`; without it, one shared placeholder address (so
/// every client shares one budget) and a warning, once.
pub(crate) fn client_ip(extensions: &Extensions) -> IpAddr {
    match extensions.get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(addr)) => addr.ip(),
        None => {
            if !NO_CONNECT_INFO_WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "no client address (serve with connect info): the /sessions rate limit is \
                     shared by all clients"
                );
            }
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_refills_over_the_window() {
        let l = RateLimiter::new(2, Duration::from_secs(60), 10);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        assert!(l.allow_at(ip, t0));
        assert!(l.allow_at(ip, t0));
        assert!(!l.allow_at(ip, t0));
        // Another client has its own budget.
        assert!(l.allow_at("10.0.0.2".parse().unwrap(), t0));
        // Half the window refills one attempt.
        assert!(l.allow_at(ip, t0 + Duration::from_secs(30)));
        assert!(!l.allow_at(ip, t0 + Duration::from_secs(30)));
    }

    #[test]
    fn ipv6_clients_share_their_64_network() {
        let key = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff:1:2:3"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
        // Through `allow`: a whole /64 shares one budget.
        let l = RateLimiter::new(2, Duration::from_secs(60), 100);
        assert!(l.allow("2001:db8::1".parse().unwrap()));
        assert!(l.allow("2001:db8::2".parse().unwrap()));
        assert!(!l.allow("2001:db8::3".parse().unwrap()));
        assert!(l.allow("2001:db9::1".parse().unwrap()));
    }

    #[test]
    fn limiter_is_bounded() {
        let l = RateLimiter::new(1, Duration::from_secs(60), 2);
        let t0 = Instant::now();
        assert!(l.allow_at("10.0.0.1".parse().unwrap(), t0));
        assert!(l.allow_at("10.0.0.2".parse().unwrap(), t0));
        // Both buckets are in use: a third client is refused.
        assert!(!l.allow_at("10.0.0.3".parse().unwrap(), t0));
        // Once they refill, their entries are dropped and the third gets in.
        assert!(l.allow_at("10.0.0.3".parse().unwrap(), t0 + Duration::from_secs(61)));
        assert!(l.buckets.lock().unwrap().len() <= 2);
    }

    #[test]
    fn zero_disables() {
        let l = RateLimiter::new(0, Duration::from_secs(60), 1);
        for _ in 0..100 {
            assert!(l.allow("10.0.0.1".parse().unwrap()));
        }
    }
}
