//! Errors: why a request was not authorised, why a token could not be minted, why a
//! `PATH:MODES` argument could not be parsed.
//!
//! [`AuthError`] carries the mapping to Icepeak's 401 bodies ([`AuthError::body`]) so that every
//! transport answers with exactly the same JSON (seed contract 1.5).

use std::fmt;

use herald_core::{Modes, PathError};
use serde_json::{Value, json};

/// Why a structurally valid token was rejected by verification.
///
/// All of these answer 401 with the body `{"data":null}`, as Icepeak does for its
/// `TokenSignatureInvalid`, `TokenExpired` and `TokenUsedTooEarly` errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidReason {
    /// The HS256 signature does not match the configured secret.
    Signature,
    /// The header's `alg` is not `HS256` (for example an unsigned `"alg":"none"` token) while a
    /// secret is configured.
    Algorithm,
    /// `exp` is present and `now > exp`.
    Expired,
    /// `nbf` is present and `now <= nbf`.
    NotYetValid,
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InvalidReason::Signature => "signature does not match",
            InvalidReason::Algorithm => "algorithm is not HS256",
            InvalidReason::Expired => "token has expired",
            InvalidReason::NotYetValid => "token is not valid yet (nbf)",
        })
    }
}

/// Why a request was not authorised. Every case is an HTTP 401 in Icepeak; [`AuthError::body`]
/// gives the exact JSON body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token at all: neither an `Authorization: Bearer` header nor an `access_token` query
    /// parameter.
    #[error("no authorisation token provided")]
    MissingToken,
    /// The token is not a decodable JWT (shape, base64url, JSON, or a registered claim such as
    /// `exp` with the wrong type).
    #[error("invalid token format")]
    BadFormat,
    /// The token decoded but failed verification.
    #[error("token rejected: {0}")]
    Invalid(InvalidReason),
    /// The `icepeak` claim is missing or does not fit the schema; the message is sent to the
    /// client verbatim (e.g. `Icepeak claim missing.`).
    #[error("{0}")]
    Claim(String),
    /// The token is valid but does not grant the needed mode on the path.
    #[error("not allowed")]
    NotAllowed,
}

impl AuthError {
    /// The HTTP status Icepeak answers with for every authorisation failure.
    pub const STATUS: u16 = 401;

    /// The exact JSON body of Icepeak's 401 response (sent as `application/json`):
    ///
    /// | error | body |
    /// | --- | --- |
    /// | [`MissingToken`](Self::MissingToken), [`BadFormat`](Self::BadFormat) | `{"error":"invalid token format"}` |
    /// | [`Invalid`](Self::Invalid) | `{"data":null}` |
    /// | [`Claim`](Self::Claim) | `{"error":"<message>"}` |
    /// | [`NotAllowed`](Self::NotAllowed) | `{"error":"not allowed"}` |
    pub fn body(&self) -> Value {
        match self {
            AuthError::MissingToken | AuthError::BadFormat => {
                json!({"error": "invalid token format"})
            }
            AuthError::Invalid(_) => json!({"data": null}),
            AuthError::Claim(message) => json!({"error": message}),
            AuthError::NotAllowed => json!({"error": "not allowed"}),
        }
    }
}

/// Why [`mint`](crate::mint) could not produce a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The modes include something an Icepeak claim cannot express (only read and write exist).
    #[error("modes {0} cannot be expressed in an Icepeak claim (only r and w)")]
    UnsupportedModes(Modes),
    /// `now + expires_in` does not fit in a `u64`.
    #[error("expiry time overflows: now + expires_in is larger than u64::MAX")]
    ExpiryOverflow,
    /// The token would be longer than [`verify`](crate::verify) accepts.
    #[error("token would be {len} bytes, more than the {max} bytes verify accepts")]
    TooLong {
        /// The token's length in bytes.
        len: usize,
        /// The limit, [`MAX_TOKEN_LEN`](crate::MAX_TOKEN_LEN).
        max: usize,
    },
    /// Serialising the claims failed.
    #[error("could not serialise the token")]
    Encode(#[from] serde_json::Error),
    /// HS256 signing failed.
    #[error("could not sign the token")]
    Signing(#[source] jsonwebtoken::errors::Error),
}

/// Why a `PATH:MODES` argument (as given to `icepeak-token-gen -p`) is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// There is no `:` separating the path from the modes.
    #[error("expected PATH:MODES (e.g. foo/bar:rw), but {0:?} has no ':'")]
    MissingColon(String),
    /// The modes after the last `:` are not `r`, `w` or `rw`.
    #[error("invalid modes {0:?}: expected r (read), w (write) or rw (read/write)")]
    InvalidModes(String),
    /// The path is not a valid Herald path (a `.` or `..` segment, or too long).
    #[error("invalid path")]
    Path(#[from] PathError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_exactly_icepeaks() {
        let cases = [
            (
                AuthError::MissingToken,
                r#"{"error":"invalid token format"}"#,
            ),
            (AuthError::BadFormat, r#"{"error":"invalid token format"}"#),
            (
                AuthError::Invalid(InvalidReason::Signature),
                r#"{"data":null}"#,
            ),
            (
                AuthError::Invalid(InvalidReason::Algorithm),
                r#"{"data":null}"#,
            ),
            (
                AuthError::Invalid(InvalidReason::Expired),
                r#"{"data":null}"#,
            ),
            (
                AuthError::Invalid(InvalidReason::NotYetValid),
                r#"{"data":null}"#,
            ),
            (
                AuthError::Claim("Icepeak claim missing.".to_owned()),
                r#"{"error":"Icepeak claim missing."}"#,
            ),
            (AuthError::NotAllowed, r#"{"error":"not allowed"}"#),
        ];
        for (err, body) in cases {
            assert_eq!(serde_json::to_string(&err.body()).unwrap(), body, "{err:?}");
        }
        assert_eq!(AuthError::STATUS, 401);
    }

    #[test]
    fn claim_messages_are_escaped_as_json_strings() {
        let err = AuthError::Claim("say \"hi\"\n".to_owned());
        assert_eq!(
            serde_json::to_string(&err.body()).unwrap(),
            r#"{"error":"say \"hi\"\n"}"#
        );
        assert_eq!(err.to_string(), "say \"hi\"\n");
    }
}
