//! IorioDB session tokens (seed contract 2.2): an HS512 JWT whose payload is
//! `{"u":"<username>","exp":<unix seconds>}`, signed with the server's session secret.
//!
//! [`mint`] makes one after a successful login and [`verify`] checks one; neither reads the
//! clock. Whether the user still exists is the caller's question (herald-engine's
//! `Accounts::verify_session` asks it).
//!
//! Expiry follows the same rule as Icepeak tokens ([`crate::token`]): a token is accepted while
//! `now <= exp`, with no leeway.
//!
//! # Example
//! ```
//! use herald_auth::session::{self, SessionError};
//!
//! let secret = session::generate_secret().unwrap();
//! let token = session::mint("bob", 60, &secret, 1_000).unwrap();
//! assert_eq!(session::verify(&token, &secret, 1_060).unwrap(), "bob");
//! assert_eq!(session::verify(&token, &secret, 1_061), Err(SessionError::Expired));
//! assert_eq!(session::verify(&token, b"another secret", 1_000), Err(SessionError::Invalid));
//! ```

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::token::MAX_TOKEN_LEN;

/// The length of a generated session secret, in bytes.
pub const SECRET_LEN: usize = 32;

/// Why a session token was not minted or not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The token is not a decodable JWT with the `{"u","exp"}` payload, or is longer than
    /// [`MAX_TOKEN_LEN`]. IorioDB answers such a token with a 400 (`malformed_request`).
    #[error("malformed session token")]
    Malformed,
    /// The token decoded but is not HS512 or its signature does not match the secret.
    #[error("invalid session token signature")]
    Invalid,
    /// The token's `exp` is in the past (`now > exp`).
    #[error("the session has expired")]
    Expired,
    /// The token is valid but names a user that no longer exists (reported by callers that
    /// check the user, not by [`verify`]).
    #[error("the session's user does not exist")]
    UnknownUser,
    /// Minting failed: `now + ttl` overflows, or signing failed.
    #[error("cannot create a session token: {0}")]
    Mint(String),
    /// The system's random number generator failed ([`generate_secret`]).
    #[error("the random number generator failed: {0}")]
    Random(String),
}

/// The JWT payload.
#[derive(Serialize, Deserialize)]
struct SessionClaims {
    /// The user name.
    u: String,
    /// Expiry, unix seconds.
    exp: u64,
}

/// Mints a session token for `user`, valid until `now + ttl_secs` (inclusive).
///
/// # Errors
/// [`SessionError::Mint`] when `now + ttl_secs` overflows or signing fails.
pub fn mint(user: &str, ttl_secs: u64, secret: &[u8], now: u64) -> Result<String, SessionError> {
    let exp = now
        .checked_add(ttl_secs)
        .ok_or_else(|| SessionError::Mint("expiry time overflows".to_owned()))?;
    let claims = SessionClaims {
        u: user.to_owned(),
        exp,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| SessionError::Mint(e.to_string()))
}

/// Verifies a session token and returns its user name.
///
/// The header must say HS512 and the HMAC (compared in constant time) must match `secret`;
/// then `now > exp` is [`SessionError::Expired`]. Other claims are ignored.
///
/// # Errors
/// [`SessionError::Malformed`], [`SessionError::Invalid`], [`SessionError::Expired`].
pub fn verify(token: &str, secret: &[u8], now: u64) -> Result<String, SessionError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(SessionError::Malformed);
    }
    let mut validation = Validation::new(Algorithm::HS512);
    // Expiry is checked below against the caller's clock; nothing else is required.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<SessionClaims>(
        token,
        &DecodingKey::from_secret(secret),
        &validation,
    )
    .map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => SessionError::Invalid,
        _ => SessionError::Malformed,
    })?;
    if now > data.claims.exp {
        return Err(SessionError::Expired);
    }
    Ok(data.claims.u)
}

/// A fresh random secret of [`SECRET_LEN`] bytes from the operating system's generator.
///
/// # Errors
/// [`SessionError::Random`] when the generator fails.
pub fn generate_secret() -> Result<Vec<u8>, SessionError> {
    let mut secret = vec![0u8; SECRET_LEN];
    getrandom::fill(&mut secret).map_err(|e| SessionError::Random(e.to_string()))?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::{Value, json};

    use crate::token::BASE64URL;

    const SECRET: &[u8] = b"changeme";
    const NOW: u64 = 1_700_000_000;

    fn sign(alg: Algorithm, payload: &Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            payload,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn payload(token: &str) -> Value {
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&BASE64URL.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn round_trip_and_payload_shape() {
        let token = mint("bob", 86_400, SECRET, NOW).unwrap();
        assert_eq!(payload(&token), json!({"u": "bob", "exp": NOW + 86_400}));
        let header: Value =
            serde_json::from_slice(&BASE64URL.decode(token.split('.').next().unwrap()).unwrap())
                .unwrap();
        assert_eq!(header["alg"], "HS512");
        assert_eq!(verify(&token, SECRET, NOW).unwrap(), "bob");
    }

    #[test]
    fn expiry_boundary_is_now_greater_than_exp() {
        let token = mint("bob", 10, SECRET, NOW).unwrap();
        assert!(verify(&token, SECRET, NOW + 10).is_ok());
        assert_eq!(verify(&token, SECRET, NOW + 11), Err(SessionError::Expired));
        let instant = mint("bob", 0, SECRET, NOW).unwrap();
        assert!(verify(&instant, SECRET, NOW).is_ok());
        assert_eq!(
            verify(&instant, SECRET, NOW + 1),
            Err(SessionError::Expired)
        );
        assert!(matches!(
            mint("bob", u64::MAX, SECRET, 1),
            Err(SessionError::Mint(_))
        ));
    }

    #[test]
    fn wrong_secret_algorithm_or_tampering_is_invalid() {
        let token = mint("bob", 60, SECRET, NOW).unwrap();
        assert_eq!(verify(&token, b"other", NOW), Err(SessionError::Invalid));
        // An HS256 token with the right secret is still refused.
        let hs256 = sign(
            Algorithm::HS256,
            &json!({"u": "bob", "exp": NOW + 60}),
            SECRET,
        );
        assert_eq!(verify(&hs256, SECRET, NOW), Err(SessionError::Invalid));
        // Swapping the payload for another user's keeps the old signature: refused.
        let mut parts = token.split('.');
        let (header, _, sig) = (parts.next().unwrap(), parts.next(), parts.next().unwrap());
        let evil = BASE64URL.encode(br#"{"u":"admin","exp":9999999999}"#);
        let forged = format!("{header}.{evil}.{sig}");
        assert_eq!(verify(&forged, SECRET, NOW), Err(SessionError::Invalid));
    }

    #[test]
    fn undecodable_tokens_are_malformed() {
        let no_user = sign(Algorithm::HS512, &json!({"exp": NOW + 60}), SECRET);
        let no_exp = sign(Algorithm::HS512, &json!({"u": "bob"}), SECRET);
        let bad_types = sign(Algorithm::HS512, &json!({"u": 1, "exp": "x"}), SECRET);
        let huge = "a".repeat(MAX_TOKEN_LEN + 1);
        for token in [
            "", "abc", "a.b.c", "..", "é.é.é", &no_user, &no_exp, &bad_types, &huge,
        ] {
            assert_eq!(
                verify(token, SECRET, NOW),
                Err(SessionError::Malformed),
                "{token:.60}"
            );
        }
    }

    #[test]
    fn extra_claims_are_ignored() {
        let token = sign(
            Algorithm::HS512,
            &json!({"u": "bob", "exp": NOW + 1, "nbf": NOW + 100, "aud": "x"}),
            SECRET,
        );
        assert_eq!(verify(&token, SECRET, NOW).unwrap(), "bob");
    }

    #[test]
    fn generated_secrets_are_random() {
        let a = generate_secret().unwrap();
        let b = generate_secret().unwrap();
        assert_eq!(a.len(), SECRET_LEN);
        assert_ne!(a, b);
    }
}
