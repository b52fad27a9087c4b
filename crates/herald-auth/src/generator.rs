//! Minting tokens the way `icepeak-token-gen` does, and parsing its `-p PATH:MODES` argument.

use base64::Engine;
use herald_core::{Modes, Path, PathLimits};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};

use crate::claim;
use crate::error::{MintError, ParseError};
use crate::token::{BASE64URL, MAX_TOKEN_LEN};

/// Mints a token like `icepeak-token-gen`: an `icepeak` claim (version 1) with one whitelist
/// entry per `(prefix, modes)` pair, in order, and `exp = now + expires_in` when `expires_in`
/// is given (no `iat`, `nbf` or `sub`, like the original tool).
///
/// With a secret the token is signed as HS256 (header `{"typ":"JWT","alg":"HS256"}`).
/// Without one it is unsigned: `base64url({"alg":"none","typ":"JWT"}) "." base64url(claims)
/// "."`, with an empty signature. [`verify`](crate::verify) accepts such a token only when no
/// secret is configured.
///
/// # Errors
/// - [`MintError::UnsupportedModes`] when an entry's modes include anything but read and write;
/// - [`MintError::ExpiryOverflow`] when `now + expires_in` overflows;
/// - [`MintError::TooLong`] when the token would exceed [`MAX_TOKEN_LEN`];
/// - [`MintError::Encode`] / [`MintError::Signing`] if serialisation or signing fails (neither
///   happens for HS256 in practice).
pub fn mint(
    secret: Option<&[u8]>,
    expires_in: Option<u64>,
    whitelist: &[(Path, Modes)],
    now: u64,
) -> Result<String, MintError> {
    let mut claims = Map::new();
    if let Some(secs) = expires_in {
        let exp = now.checked_add(secs).ok_or(MintError::ExpiryOverflow)?;
        claims.insert("exp".to_owned(), exp.into());
    }
    claims.insert(claim::CLAIM_NAME.to_owned(), claim::to_json(whitelist)?);
    let claims = Value::Object(claims);

    let token = match secret {
        Some(secret) => jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .map_err(MintError::Signing)?,
        None => {
            let header = json!({"alg": "none", "typ": "JWT"});
            format!(
                "{}.{}.",
                BASE64URL.encode(serde_json::to_vec(&header)?),
                BASE64URL.encode(serde_json::to_vec(&claims)?),
            )
        }
    };
    if token.len() > MAX_TOKEN_LEN {
        return Err(MintError::TooLong {
            len: token.len(),
            max: MAX_TOKEN_LEN,
        });
    }
    Ok(token)
}

/// [`mint`] at the current system time.
///
/// # Errors
/// As [`mint`].
pub fn mint_now(
    secret: Option<&[u8]>,
    expires_in: Option<u64>,
    whitelist: &[(Path, Modes)],
) -> Result<String, MintError> {
    mint(secret, expires_in, whitelist, crate::token::unix_now())
}

/// Parses the command-line form `PATH:MODES` of `icepeak-token-gen -p`: `foo/bar:rw`, `/:r`,
/// `:w`.
///
/// PATH is slash-separated with an optional leading slash; empty segments are skipped, so `/`
/// and the empty string both name the root. Segments are taken literally (no percent-decoding).
/// The **last** `:` separates the modes, so a path may itself contain colons (`a:b:r` is the
/// key `a:b` with read). MODES is exactly `r`, `w` or `rw`, as in `icepeak-token-gen`.
///
/// # Errors
/// [`ParseError::MissingColon`] without a `:`, [`ParseError::InvalidModes`] for other modes,
/// [`ParseError::Path`] for a `.`/`..` segment or a path over the default limits.
pub fn parse_path_modes(s: &str) -> Result<(Path, Modes), ParseError> {
    let (path, modes) = s
        .rsplit_once(':')
        .ok_or_else(|| ParseError::MissingColon(s.to_owned()))?;
    let modes = match modes {
        "r" => Modes::READ,
        "w" => Modes::WRITE,
        "rw" => Modes::READ_WRITE,
        other => return Err(ParseError::InvalidModes(other.to_owned())),
    };
    let path = Path::parse_slashed(path, &PathLimits::default())?;
    Ok((path, modes))
}

#[cfg(test)]
mod tests {
    use herald_core::PathError;

    use super::*;
    use crate::{JwtConfig, verify};

    fn path(s: &str) -> Path {
        Path::parse_slashed(s, &PathLimits::default()).unwrap()
    }

    fn decode_part(part: &str) -> Value {
        serde_json::from_slice(&BASE64URL.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn parse_path_modes_cases() {
        assert_eq!(parse_path_modes("foo:r"), Ok((path("foo"), Modes::READ)));
        assert_eq!(
            parse_path_modes("/a/b:rw"),
            Ok((path("a/b"), Modes::READ_WRITE))
        );
        assert_eq!(parse_path_modes("a/b/:w"), Ok((path("a/b"), Modes::WRITE)));
        assert_eq!(
            parse_path_modes(":rw"),
            Ok((Path::root(), Modes::READ_WRITE))
        );
        assert_eq!(parse_path_modes("/:r"), Ok((Path::root(), Modes::READ)));
        // The last colon separates the modes.
        let (p, m) = parse_path_modes("a:b/c:d:r").unwrap();
        assert_eq!(p.segments(), ["a:b", "c:d"]);
        assert_eq!(m, Modes::READ);
        // Segments are literal.
        let (p, _) = parse_path_modes("%2F/#:r").unwrap();
        assert_eq!(p.segments(), ["%2F", "#"]);

        assert_eq!(
            parse_path_modes("a:x"),
            Err(ParseError::InvalidModes("x".to_owned()))
        );
        assert_eq!(
            parse_path_modes("a:"),
            Err(ParseError::InvalidModes(String::new()))
        );
        assert_eq!(
            parse_path_modes("a:wr"),
            Err(ParseError::InvalidModes("wr".to_owned()))
        );
        assert_eq!(
            parse_path_modes("a:rwa"),
            Err(ParseError::InvalidModes("rwa".to_owned()))
        );
        assert_eq!(
            parse_path_modes("a:r:x"),
            Err(ParseError::InvalidModes("x".to_owned()))
        );
        assert_eq!(
            parse_path_modes("foo"),
            Err(ParseError::MissingColon("foo".to_owned()))
        );
        assert_eq!(
            parse_path_modes(""),
            Err(ParseError::MissingColon(String::new()))
        );
        assert_eq!(
            parse_path_modes("a/../b:r"),
            Err(ParseError::Path(PathError::DotSegment))
        );
        assert_eq!(
            parse_path_modes("./a:r"),
            Err(ParseError::Path(PathError::DotSegment))
        );
    }

    #[test]
    fn signed_tokens_have_icepeaks_shape() {
        let token = mint(Some(b"s"), Some(30), &[(path("foo"), Modes::READ)], 1000).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(decode_part(parts[0]), json!({"typ": "JWT", "alg": "HS256"}));
        assert_eq!(
            decode_part(parts[1]),
            json!({"exp": 1030, "icepeak": {"version": 1, "whitelist": [
                {"prefix": ["foo"], "modes": ["read"]}
            ]}})
        );
        // jsonwebtoken, as an independent verifier, agrees with the signature.
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        let decoded = jsonwebtoken::decode::<Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"s"),
            &validation,
        )
        .unwrap();
        assert_eq!(decoded.claims["exp"], json!(1030));
    }

    #[test]
    fn unsigned_tokens_are_alg_none_with_an_empty_signature() {
        let token = mint(None, None, &[(Path::root(), Modes::READ_WRITE)], 1000).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(decode_part(parts[0]), json!({"alg": "none", "typ": "JWT"}));
        assert_eq!(
            decode_part(parts[1]),
            json!({"icepeak": {"version": 1, "whitelist": [
                {"prefix": [], "modes": ["read", "write"]}
            ]}})
        );
        assert_eq!(parts[2], "");
        assert!(!token.contains('='));
        assert!(verify(&token, &JwtConfig::unverified(), 1000).is_ok());
    }

    #[test]
    fn mint_errors() {
        assert!(matches!(
            mint(None, None, &[(path("a"), Modes::ADMIN)], 0),
            Err(MintError::UnsupportedModes(Modes::ADMIN))
        ));
        assert!(matches!(
            mint(Some(b"s"), Some(2), &[], u64::MAX - 1),
            Err(MintError::ExpiryOverflow)
        ));
        let big: Vec<(Path, Modes)> = (0..200)
            .map(|i| {
                let seg = format!("{i}{}", "x".repeat(1000));
                (
                    Path::from_segments([seg], &PathLimits::default()).unwrap(),
                    Modes::READ,
                )
            })
            .collect();
        assert!(matches!(
            mint(None, None, &big, 0),
            Err(MintError::TooLong {
                max: MAX_TOKEN_LEN,
                ..
            })
        ));
    }

    #[test]
    fn empty_whitelist_and_empty_modes_are_allowed() {
        let token = mint(Some(b"s"), None, &[(path("a"), Modes::NONE)], 0).unwrap();
        let claims = verify(&token, &JwtConfig::with_secret("s"), 0).unwrap();
        assert!(!claims.allows(&path("a"), Modes::READ));
        assert!(mint_now(None, None, &[]).is_ok());
    }
}
