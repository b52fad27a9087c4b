//! Finding, decoding and verifying a request's token (seed contract 1.5).
//!
//! The steps, in Icepeak's order:
//! 1. **Find** the token: [`extract_token`] (the `Authorization: Bearer` header wins over the
//!    `access_token` query parameter).
//! 2. **Decode**: three base64url parts, a JSON object header and a JSON object payload whose
//!    registered claims `exp`, `nbf` (numbers) and `sub` (a string) have the right types.
//!    Anything else is [`AuthError::BadFormat`].
//! 3. **Verify**, only when a secret is configured: `alg` must be `HS256` and the HMAC must
//!    match, then `now > exp` and `now <= nbf` are rejected ([`AuthError::Invalid`]). There is
//!    no leeway, matching Icepeak.
//! 4. **Read the `icepeak` claim** into an [`Access`] ([`AuthError::Claim`] on failure); see
//!    [`crate::claim`].
//!
//! Without a secret only steps 2 and 4 run: Icepeak then trusts a proxy in front of it to have
//! verified the token, so neither the signature nor `exp`/`nbf` are checked, and unsigned
//! (`"alg":"none"`) tokens are accepted. [`Claims::expires_at`] is still reported.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use herald_core::{Access, Modes, Path};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Number, Value};

use crate::claim;
use crate::error::{AuthError, InvalidReason};

/// The longest token [`verify`] will look at, in bytes; longer input is
/// [`AuthError::BadFormat`] without being decoded. HTTP servers cap header sizes well below
/// this anyway; the limit keeps a hostile query string from costing more than a few copies of
/// 64 KiB.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// base64url as JWTs use it: unpadded when written; padding is tolerated when read.
pub(crate) const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The only signature algorithm Icepeak verifies.
const HS256: &str = "HS256";

/// How tokens are checked: Icepeak's `--jwt-secret` (or `JWT_SECRET`).
///
/// Whether auth is enabled at all (`--enable-jwt-auth`) is the caller's decision; this only
/// says how a token is verified once auth is on.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct JwtConfig {
    /// The HS256 secret. `None`: tokens are only decoded, not verified (no signature, `exp` or
    /// `nbf` checks), as Icepeak does when it runs behind a verifying proxy.
    pub secret: Option<Vec<u8>>,
}

impl JwtConfig {
    /// Verifies tokens as HS256 with `secret`.
    pub fn with_secret(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            secret: Some(secret.into()),
        }
    }

    /// Decodes tokens without verifying them.
    pub fn unverified() -> Self {
        Self { secret: None }
    }
}

impl fmt::Debug for JwtConfig {
    /// Never prints the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// What a valid token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The permissions from the `icepeak` claim: one prefix [`Grant`](herald_core::Grant) per
    /// whitelist entry, in order.
    pub access: Access,
    /// The last unix second at which the token is accepted (`now <= expires_at`), from `exp`;
    /// a fractional `exp` is rounded down and a negative one reads as 0. `None` when the token
    /// has no `exp`. Reported even when it was not checked (no secret configured).
    pub expires_at: Option<u64>,
    /// The `sub` claim, if any.
    pub subject: Option<String>,
}

impl Claims {
    /// Whether the token grants every mode in `needed` on `path`.
    pub fn allows(&self, path: &Path, needed: Modes) -> bool {
        self.access.allows(path, needed)
    }

    /// Like [`Claims::allows`], as a `Result` for `?`.
    ///
    /// # Errors
    /// [`AuthError::NotAllowed`] when the permission is missing.
    pub fn authorize(&self, path: &Path, needed: Modes) -> Result<(), AuthError> {
        if self.allows(path, needed) {
            Ok(())
        } else {
            Err(AuthError::NotAllowed)
        }
    }
}

/// Picks the token: `Authorization: Bearer <t>` header value first, else the `access_token`
/// query value.
///
/// `authorization` is the raw header value. The scheme is matched case-insensitively (RFC 7235
/// §2.1; Icepeak accepts only `Bearer `) and whitespace around the token is dropped. A header
/// with another scheme (`Basic ...`) does not count, so the query parameter is used, as in
/// Icepeak. A `Bearer` header with an empty token still wins and later fails as
/// [`AuthError::BadFormat`], again as in Icepeak.
pub fn extract_token<'a>(
    authorization: Option<&'a str>,
    access_token: Option<&'a str>,
) -> Option<&'a str> {
    authorization.and_then(bearer).or(access_token)
}

fn bearer(header: &str) -> Option<&str> {
    const SCHEME: &str = "bearer";
    let header = header.trim_start();
    let scheme = header.get(..SCHEME.len())?;
    let rest = header.get(SCHEME.len()..)?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    // The scheme must be a whole word: `Bearerxyz` is not a bearer token. An empty rest
    // (`Bearer`) is treated like `Bearer ` with an empty token.
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return None;
    }
    Some(rest.trim())
}

/// Finds the request's token with [`extract_token`] and [`verify`]s it.
///
/// # Errors
/// [`AuthError::MissingToken`] when there is no token; otherwise as [`verify`].
pub fn verify_request(
    authorization: Option<&str>,
    access_token: Option<&str>,
    cfg: &JwtConfig,
    now: u64,
) -> Result<Claims, AuthError> {
    let token = extract_token(authorization, access_token).ok_or(AuthError::MissingToken)?;
    verify(token, cfg, now)
}

/// Verifies a token at unix time `now` (seconds) and reads its `icepeak` claim.
///
/// With a secret: the header's `alg` must be `HS256` and the signature must match; if `exp`
/// is present, `now > exp` is rejected; if `nbf` is present, `now <= nbf` is rejected (so a
/// token is first usable the second *after* `nbf`; this is Icepeak's comparison, not RFC 7519's
/// `now >= nbf`). There is no leeway. Without a secret, none of this is checked; see
/// [`JwtConfig::secret`].
///
/// # Errors
/// - [`AuthError::BadFormat`]: not three base64url parts of JSON objects, longer than
///   [`MAX_TOKEN_LEN`], or `exp`/`nbf`/`sub` of the wrong type;
/// - [`AuthError::Invalid`]: wrong algorithm, bad signature, expired or not yet valid;
/// - [`AuthError::Claim`]: the `icepeak` claim is missing or does not fit the schema
///   (checked last, so an unverifiable token never reveals claim details).
pub fn verify(token: &str, cfg: &JwtConfig, now: u64) -> Result<Claims, AuthError> {
    let decoded = Decoded::parse(token)?;
    let expires = numeric_date(&decoded.payload, "exp")?;
    let not_before = numeric_date(&decoded.payload, "nbf")?;
    let subject = match decoded.payload.get("sub") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(AuthError::BadFormat),
    };

    if let Some(secret) = &cfg.secret {
        decoded.check_signature(secret)?;
        if expires.is_some_and(|exp| is_after(now, exp)) {
            return Err(AuthError::Invalid(InvalidReason::Expired));
        }
        if not_before.is_some_and(|nbf| !is_after(now, nbf)) {
            return Err(AuthError::Invalid(InvalidReason::NotYetValid));
        }
    }

    let access = claim::parse_access(&decoded.payload).map_err(AuthError::Claim)?;
    Ok(Claims {
        access,
        expires_at: expires.map(last_valid_second),
        subject,
    })
}

/// [`verify`] at the current system time.
///
/// # Errors
/// As [`verify`].
pub fn verify_now(token: &str, cfg: &JwtConfig) -> Result<Claims, AuthError> {
    verify(token, cfg, unix_now())
}

/// The current unix time in seconds; 0 if the clock is before 1970.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A token split into its parts, with header and payload decoded.
struct Decoded<'t> {
    header: Map<String, Value>,
    payload: Map<String, Value>,
    /// `base64url(header) "." base64url(payload)`, the bytes the signature covers.
    signing_input: &'t str,
    signature: &'t str,
}

impl<'t> Decoded<'t> {
    fn parse(token: &'t str) -> Result<Self, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::BadFormat);
        }
        let (signing_input, signature) = token.rsplit_once('.').ok_or(AuthError::BadFormat)?;
        let (header, payload) = signing_input.split_once('.').ok_or(AuthError::BadFormat)?;
        if payload.contains('.') {
            return Err(AuthError::BadFormat);
        }
        Ok(Self {
            header: json_object(header)?,
            payload: json_object(payload)?,
            signing_input,
            signature,
        })
    }

    fn check_signature(&self, secret: &[u8]) -> Result<(), AuthError> {
        // Only HS256, like Icepeak: in particular `none` is refused, and so is any other HMAC
        // or public-key algorithm a client might pick to confuse the verifier.
        if self.header.get("alg").and_then(Value::as_str) != Some(HS256) {
            return Err(AuthError::Invalid(InvalidReason::Algorithm));
        }
        // jsonwebtoken's verifier compares in constant time and reads unpadded base64url.
        let matches = jsonwebtoken::crypto::verify(
            self.signature.trim_end_matches('='),
            self.signing_input.as_bytes(),
            &DecodingKey::from_secret(secret),
            Algorithm::HS256,
        );
        match matches {
            Ok(true) => Ok(()),
            // A signature that is not even base64url is just a wrong signature.
            Ok(false) | Err(_) => Err(AuthError::Invalid(InvalidReason::Signature)),
        }
    }
}

fn json_object(part: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = BASE64URL.decode(part).map_err(|_| AuthError::BadFormat)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::BadFormat),
    }
}

/// A registered time claim: absent or `null` is `None`, a number is `Some`, anything else is
/// a format error (Icepeak's JWT library refuses to decode such a claim set).
fn numeric_date<'p>(
    payload: &'p Map<String, Value>,
    key: &str,
) -> Result<Option<&'p Number>, AuthError> {
    match payload.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(Some(n)),
        Some(_) => Err(AuthError::BadFormat),
    }
}

/// `now > t`, exactly for integer `t` and in floating point for fractional `t`.
fn is_after(now: u64, t: &Number) -> bool {
    if let Some(t) = t.as_u64() {
        now > t
    } else if t.is_i64() {
        // Negative: every `now` is after it.
        true
    } else {
        // Only fractional (or beyond-u64) times get here; any `now` below 2^53 is exact.
        let now = now as f64;
        t.as_f64().is_some_and(|t| now > t)
    }
}

/// The largest integer `now` with `!(now > exp)`.
fn last_valid_second(exp: &Number) -> u64 {
    exp.as_u64().unwrap_or_else(|| {
        // `as` saturates: negative becomes 0, huge becomes u64::MAX.
        exp.as_f64().map_or(0, |f| f.floor() as u64)
    })
}

#[cfg(test)]
mod tests {
    use herald_core::{Grant, PathLimits, PathPattern};
    use serde_json::json;

    use super::*;
    use crate::mint;

    const SECRET: &[u8] = b"2o8357cEuc2o835cmsoei";
    const NOW: u64 = 1_700_000_000;

    fn path(s: &str) -> Path {
        Path::parse_slashed(s, &PathLimits::default()).unwrap()
    }

    fn signed(payload: &Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            payload,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn part(value: &Value) -> String {
        BASE64URL.encode(serde_json::to_vec(value).unwrap())
    }

    fn with_header(header: &Value, payload: &Value, signature: &str) -> String {
        format!("{}.{}.{signature}", part(header), part(payload))
    }

    fn readme_claims() -> Value {
        json!({"icepeak": {"version": 1, "whitelist": [
            {"prefix": ["foo"], "modes": ["read"]},
            {"prefix": ["bar", "1"], "modes": ["read", "write"]},
        ]}})
    }

    fn secret_cfg() -> JwtConfig {
        JwtConfig::with_secret(SECRET)
    }

    fn at_time(claims: &Value, key: &str, t: Value) -> Value {
        let mut claims = claims.clone();
        claims[key] = t;
        claims
    }

    #[test]
    fn extract_token_prefers_the_bearer_header() {
        assert_eq!(extract_token(Some("Bearer h"), Some("q")), Some("h"));
        assert_eq!(extract_token(None, Some("q")), Some("q"));
        assert_eq!(extract_token(Some("Bearer h"), None), Some("h"));
        assert_eq!(extract_token(None, None), None);
        // Another scheme is not a token; the query parameter is used instead.
        assert_eq!(
            extract_token(Some("Basic dXNlcjpwdw=="), Some("q")),
            Some("q")
        );
        assert_eq!(extract_token(Some("Basic dXNlcjpwdw=="), None), None);
        assert_eq!(extract_token(Some("Bearerish x"), Some("q")), Some("q"));
        // Scheme is case-insensitive; surrounding whitespace is not part of the token.
        assert_eq!(extract_token(Some("bearer  h "), Some("q")), Some("h"));
        assert_eq!(extract_token(Some("BEARER\th"), None), Some("h"));
        // An empty bearer token still wins (and then fails as a bad format, like Icepeak).
        assert_eq!(extract_token(Some("Bearer "), Some("q")), Some(""));
        assert_eq!(extract_token(Some("Bearer"), Some("q")), Some(""));
        // Multi-byte characters near the scheme do not panic.
        assert_eq!(extract_token(Some("Béarer x"), Some("q")), Some("q"));
        assert_eq!(extract_token(Some("é"), None), None);
    }

    #[test]
    fn verify_request_maps_every_outcome() {
        let cfg = secret_cfg();
        assert_eq!(
            verify_request(None, None, &cfg, NOW),
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            verify_request(Some("Basic x"), None, &cfg, NOW),
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            verify_request(Some("Bearer "), None, &cfg, NOW),
            Err(AuthError::BadFormat)
        );
        let token = signed(&readme_claims(), SECRET);
        let claims = verify_request(None, Some(&token), &cfg, NOW).unwrap();
        assert_eq!(claims.authorize(&path("foo/a"), Modes::READ), Ok(()));
        assert_eq!(
            claims.authorize(&path("foo/a"), Modes::WRITE),
            Err(AuthError::NotAllowed)
        );
        assert_eq!(
            AuthError::NotAllowed.body(),
            json!({"error": "not allowed"})
        );
    }

    #[test]
    fn hs256_round_trip() {
        let whitelist = [
            (path("foo"), Modes::READ),
            (path("bar/1"), Modes::READ_WRITE),
        ];
        let token = mint(Some(SECRET), Some(60), &whitelist, NOW).unwrap();
        let claims = verify(&token, &secret_cfg(), NOW).unwrap();
        assert_eq!(claims.expires_at, Some(NOW + 60));
        assert_eq!(claims.subject, None);
        assert_eq!(
            claims.access,
            Access::Grants(vec![
                Grant {
                    pattern: PathPattern::prefix(&path("foo")),
                    modes: Modes::READ
                },
                Grant {
                    pattern: PathPattern::prefix(&path("bar/1")),
                    modes: Modes::READ_WRITE
                },
            ])
        );
        // The same token decodes without a secret too.
        assert_eq!(verify(&token, &JwtConfig::unverified(), NOW), Ok(claims));
    }

    #[test]
    fn rfc7515_hs256_example_verifies() {
        // RFC 7515 Appendix A.1: an independent HS256 vector (it has no icepeak claim).
        let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.\
            eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.\
            dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let key = BASE64URL
            .decode(
                "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow",
            )
            .unwrap();
        let cfg = JwtConfig::with_secret(key);
        assert_eq!(
            verify(token, &cfg, 1_300_819_380),
            Err(AuthError::Claim("Icepeak claim missing.".to_owned()))
        );
        assert_eq!(
            verify(token, &cfg, 1_300_819_381),
            Err(AuthError::Invalid(InvalidReason::Expired))
        );
        assert_eq!(
            verify(token, &secret_cfg(), 1_300_819_380),
            Err(AuthError::Invalid(InvalidReason::Signature))
        );
    }

    #[test]
    fn exp_boundary_is_now_greater_than_exp() {
        let token = signed(&at_time(&readme_claims(), "exp", json!(NOW)), SECRET);
        assert!(verify(&token, &secret_cfg(), NOW - 1).is_ok());
        assert!(verify(&token, &secret_cfg(), NOW).is_ok());
        assert_eq!(
            verify(&token, &secret_cfg(), NOW + 1),
            Err(AuthError::Invalid(InvalidReason::Expired))
        );
        assert_eq!(
            AuthError::Invalid(InvalidReason::Expired).body(),
            json!({"data": null})
        );
    }

    #[test]
    fn nbf_boundary_is_now_at_most_nbf() {
        let token = signed(&at_time(&readme_claims(), "nbf", json!(NOW)), SECRET);
        assert_eq!(
            verify(&token, &secret_cfg(), NOW - 1),
            Err(AuthError::Invalid(InvalidReason::NotYetValid))
        );
        assert_eq!(
            verify(&token, &secret_cfg(), NOW),
            Err(AuthError::Invalid(InvalidReason::NotYetValid))
        );
        assert!(verify(&token, &secret_cfg(), NOW + 1).is_ok());
    }

    #[test]
    fn fractional_and_negative_times() {
        let cfg = secret_cfg();
        let exp = signed(&at_time(&readme_claims(), "exp", json!(100.5)), SECRET);
        assert_eq!(verify(&exp, &cfg, 100).unwrap().expires_at, Some(100));
        assert_eq!(
            verify(&exp, &cfg, 101),
            Err(AuthError::Invalid(InvalidReason::Expired))
        );
        let nbf = signed(&at_time(&readme_claims(), "nbf", json!(100.5)), SECRET);
        assert_eq!(
            verify(&nbf, &cfg, 100),
            Err(AuthError::Invalid(InvalidReason::NotYetValid))
        );
        assert!(verify(&nbf, &cfg, 101).is_ok());
        let neg_exp = signed(&at_time(&readme_claims(), "exp", json!(-5)), SECRET);
        assert_eq!(
            verify(&neg_exp, &cfg, 0),
            Err(AuthError::Invalid(InvalidReason::Expired))
        );
        let neg_nbf = signed(&at_time(&readme_claims(), "nbf", json!(-5)), SECRET);
        assert!(verify(&neg_nbf, &cfg, 0).is_ok());
        let huge = signed(&at_time(&readme_claims(), "exp", json!(1e300)), SECRET);
        assert_eq!(
            verify(&huge, &cfg, u64::MAX).unwrap().expires_at,
            Some(u64::MAX)
        );
        // `null` times are absent times.
        let null = signed(&at_time(&readme_claims(), "exp", Value::Null), SECRET);
        assert_eq!(verify(&null, &cfg, NOW).unwrap().expires_at, None);
    }

    #[test]
    fn without_a_secret_times_are_reported_but_not_checked() {
        let cfg = JwtConfig::unverified();
        let mut claims = readme_claims();
        claims["exp"] = json!(10);
        claims["nbf"] = json!(NOW + 1000);
        let token = signed(&claims, b"some other secret");
        let got = verify(&token, &cfg, NOW).unwrap();
        assert_eq!(got.expires_at, Some(10));
        assert!(got.allows(&path("foo"), Modes::READ));
    }

    #[test]
    fn wrong_secret_and_tampering_are_invalid_signatures() {
        let token = signed(&readme_claims(), b"dfhwcmo845cm8e5");
        assert_eq!(
            verify(&token, &secret_cfg(), NOW),
            Err(AuthError::Invalid(InvalidReason::Signature))
        );
        // Swap in a payload that grants more, keeping the original signature.
        let good = signed(&readme_claims(), SECRET);
        let (header, rest) = good.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let evil = json!({"icepeak": {"version": 1, "whitelist": [
            {"prefix": [], "modes": ["read", "write"]}
        ]}});
        let forged = format!("{header}.{}.{sig}", part(&evil));
        assert_eq!(
            verify(&forged, &secret_cfg(), NOW),
            Err(AuthError::Invalid(InvalidReason::Signature))
        );
        // Garbage or an empty signature is a bad signature, not a bad format.
        for sig in ["", "!!!", "AAAA"] {
            let t = format!("{header}.{}.{sig}", part(&readme_claims()));
            assert_eq!(
                verify(&t, &secret_cfg(), NOW),
                Err(AuthError::Invalid(InvalidReason::Signature)),
                "{sig}"
            );
        }
        // A padded signature is tolerated.
        let padded = format!("{good}=");
        assert!(verify(&padded, &secret_cfg(), NOW).is_ok());
    }

    #[test]
    fn unsigned_tokens_need_no_secret_and_fail_with_one() {
        let token = mint(None, None, &[(path("foo"), Modes::READ)], NOW).unwrap();
        assert!(token.ends_with('.'));
        let claims = verify(&token, &JwtConfig::unverified(), NOW).unwrap();
        assert!(claims.allows(&path("foo/bar"), Modes::READ));
        let err = verify(&token, &secret_cfg(), NOW).unwrap_err();
        assert_eq!(err, AuthError::Invalid(InvalidReason::Algorithm));
        assert_eq!(err.body(), json!({"data": null}));
    }

    #[test]
    fn other_algorithms_are_refused_with_a_secret() {
        // A correct HS512 signature over the same secret is still refused.
        let hs512 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS512),
            &readme_claims(),
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            verify(&hs512, &secret_cfg(), NOW),
            Err(AuthError::Invalid(InvalidReason::Algorithm))
        );
        assert!(verify(&hs512, &JwtConfig::unverified(), NOW).is_ok());
        for header in [
            json!({"alg": "RS256"}),
            json!({}),
            json!({"alg": 256}),
            json!({"alg": "hs256"}),
        ] {
            let t = with_header(&header, &readme_claims(), "c2ln");
            assert_eq!(
                verify(&t, &secret_cfg(), NOW),
                Err(AuthError::Invalid(InvalidReason::Algorithm)),
                "{header}"
            );
        }
    }

    #[test]
    fn undecodable_tokens_are_bad_format() {
        let cfgs = [secret_cfg(), JwtConfig::unverified()];
        let claims = part(&readme_claims());
        let header = part(&json!({"alg": "HS256", "typ": "JWT"}));
        let huge = format!("{header}.{claims}.{}", "A".repeat(MAX_TOKEN_LEN));
        let cases = [
            String::new(),
            "abc".to_owned(),
            "..".to_owned(),
            format!("{header}.{claims}"),
            format!("{header}.{claims}.sig.extra"),
            format!("{header}..sig"),
            format!(".{claims}.sig"),
            format!("{header}.%%%.sig"),
            format!("{header}.{}.sig", BASE64URL.encode(b"not json")),
            format!("{header}.{}.sig", BASE64URL.encode([0xff, 0xfe])),
            format!("{header}.{}.sig", part(&json!([1, 2]))),
            format!("{header}.{}.sig", part(&json!("icepeak"))),
            format!("{}.{claims}.sig", part(&json!(["HS256"]))),
            format!("{}.{claims}.sig", BASE64URL.encode(b"{")),
            "é.é.é".to_owned(),
            huge,
        ];
        for cfg in &cfgs {
            for t in &cases {
                let err = verify(t, cfg, NOW).unwrap_err();
                assert_eq!(err, AuthError::BadFormat, "{:.80}", t);
                assert_eq!(err.body(), json!({"error": "invalid token format"}));
            }
        }
    }

    #[test]
    fn registered_claims_with_wrong_types_are_bad_format() {
        for (key, value) in [
            ("exp", json!("tomorrow")),
            ("exp", json!([1])),
            ("nbf", json!(true)),
            ("nbf", json!({})),
            ("sub", json!(5)),
        ] {
            let claims = at_time(&readme_claims(), key, value.clone());
            for cfg in [secret_cfg(), JwtConfig::unverified()] {
                assert_eq!(
                    verify(&signed(&claims, SECRET), &cfg, NOW),
                    Err(AuthError::BadFormat),
                    "{key}: {value}"
                );
            }
        }
    }

    #[test]
    fn icepeak_claims_with_wrong_types_are_claim_errors() {
        let cases = [
            (json!({}), "Icepeak claim missing."),
            (json!({"icepeak": "all"}), "parsing icepeak claim failed"),
            (
                json!({"icepeak": {"version": 1, "whitelist": 3}}),
                "parsing [] failed",
            ),
            (
                json!({"icepeak": {"version": 1, "whitelist": [{"prefix": [1], "modes": []}]}}),
                "parsing Text failed",
            ),
            (
                json!({"icepeak": {"version": 1, "whitelist": [{"prefix": [], "modes": ["all"]}]}}),
                "Invalid mode value.",
            ),
        ];
        for (claims, message) in cases {
            for cfg in [secret_cfg(), JwtConfig::unverified()] {
                match verify(&signed(&claims, SECRET), &cfg, NOW) {
                    Err(AuthError::Claim(m)) => assert!(m.contains(message), "{m}"),
                    other => panic!("{claims}: {other:?}"),
                }
            }
        }
        let missing = verify(&signed(&json!({"sub": "x"}), SECRET), &secret_cfg(), NOW);
        assert_eq!(
            missing,
            Err(AuthError::Claim("Icepeak claim missing.".to_owned()))
        );
        assert_eq!(
            missing.unwrap_err().body(),
            json!({"error": "Icepeak claim missing."})
        );
    }

    #[test]
    fn claim_errors_are_only_reported_for_verified_tokens() {
        let no_claim = signed(&json!({}), b"wrong");
        assert_eq!(
            verify(&no_claim, &secret_cfg(), NOW),
            Err(AuthError::Invalid(InvalidReason::Signature))
        );
        let expired = signed(&json!({"exp": 1}), SECRET);
        assert_eq!(
            verify(&expired, &secret_cfg(), NOW),
            Err(AuthError::Invalid(InvalidReason::Expired))
        );
    }

    #[test]
    fn dot_segments_in_a_prefix_never_become_grants() {
        for prefix in [
            json!([".."]),
            json!(["foo", ".."]),
            json!(["."]),
            json!(["foo", ""]),
        ] {
            let claims = json!({"icepeak": {"version": 1, "whitelist": [
                {"prefix": prefix, "modes": ["read", "write"]}
            ]}});
            for cfg in [secret_cfg(), JwtConfig::unverified()] {
                assert!(
                    matches!(
                        verify(&signed(&claims, SECRET), &cfg, NOW),
                        Err(AuthError::Claim(_))
                    ),
                    "{prefix}"
                );
            }
        }
    }

    #[test]
    fn a_prefix_covers_whole_segments_only() {
        let token = mint(Some(SECRET), None, &[(path("foo"), Modes::READ_WRITE)], NOW).unwrap();
        let claims = verify(&token, &secret_cfg(), NOW).unwrap();
        assert!(claims.allows(&path("foo"), Modes::READ_WRITE));
        assert!(claims.allows(&path("foo/bar"), Modes::READ_WRITE));
        assert!(!claims.allows(&path("foobar"), Modes::READ));
        assert!(!claims.allows(&path("fo"), Modes::READ));
        assert!(!claims.allows(&Path::root(), Modes::READ));
        // A percent-encoded slash stays inside one segment: "foo/bar" is not below /foo.
        let encoded = Path::parse_url("/foo%2Fbar", &PathLimits::default()).unwrap();
        assert!(!claims.allows(&encoded, Modes::READ));
    }

    #[test]
    fn subject_is_reported() {
        let claims = at_time(&readme_claims(), "sub", json!("alice"));
        let got = verify(&signed(&claims, SECRET), &secret_cfg(), NOW).unwrap();
        assert_eq!(got.subject.as_deref(), Some("alice"));
    }

    #[test]
    fn verify_now_uses_the_clock() {
        let token = mint(
            Some(SECRET),
            Some(3600),
            &[(path("a"), Modes::READ)],
            unix_now(),
        )
        .unwrap();
        assert!(verify_now(&token, &secret_cfg()).is_ok());
        let old = mint(Some(SECRET), Some(0), &[(path("a"), Modes::READ)], 1000).unwrap();
        assert_eq!(
            verify_now(&old, &secret_cfg()),
            Err(AuthError::Invalid(InvalidReason::Expired))
        );
    }

    #[test]
    fn config_debug_hides_the_secret() {
        let shown = format!("{:?}", secret_cfg());
        assert!(!shown.contains("2o8357"), "{shown}");
        assert!(shown.contains("redacted"));
        assert_eq!(
            format!("{:?}", JwtConfig::default()),
            "JwtConfig { secret: None }"
        );
    }
}
