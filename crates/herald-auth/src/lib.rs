//! Icepeak-compatible JWT authorisation: verify a bearer token, turn its `icepeak` claim into
//! Herald grants, and mint tokens like `icepeak-token-gen`. Also IorioDB-style accounts: users,
//! role grants and session tokens ([`users`], [`session`]).
//!
//! The contract is Icepeak's (seed contract 1.5 and the Icepeak README, "JWT Authorization"):
//! the token comes from `Authorization: Bearer` or `?access_token=`; with a secret it must be
//! HS256-signed, not expired (`now > exp` fails) and past its `nbf` (`now <= nbf` fails); the
//! `icepeak` claim's whitelist of `(prefix, modes)` entries becomes an [`Access`](herald_core::Access) of prefix
//! grants; every failure is a 401 whose exact JSON body [`AuthError::body`] gives.
//!
//! This crate is **not** an HTTP middleware and has no clock of its own: callers pass the
//! header and query values and the current unix time in ([`verify_now`] and [`mint_now`] are
//! the only conveniences that read the system clock). It does not decide *which* mode a
//! request needs (GET reads, PUT/DELETE write) nor whether auth is enabled: those belong to the
//! transports. It knows nothing about other token formats or key types: only HS256 and, when
//! no secret is configured, unverified decoding.
//!
//! # Layout
//! - [`token`]: [`extract_token`], [`verify`], [`verify_request`], [`JwtConfig`] and the
//!   verified [`Claims`].
//! - [`claim`]: the `icepeak` claim schema and its mapping to [`Grant`](herald_core::Grant)s.
//! - [`generator`]: [`mint`] and [`parse_path_modes`], the `icepeak-token-gen` equivalents.
//! - [`error`]: [`AuthError`] (with Icepeak's 401 bodies), [`InvalidReason`], [`MintError`],
//!   [`ParseError`].
//! - [`users`]: IorioDB-style accounts, pure: the user [`Registry`] (argon2id password hashes,
//!   admin flag), role grants of [`Permission`]s on [`Resource`]s, and the [`Access`](herald_core::Access)
//!   each principal gets ([`Registry::access_for`]).
//! - [`session`]: IorioDB session tokens (HS512 `{"u","exp"}` JWTs): [`session::mint`],
//!   [`session::verify`].
//! - [`hpfeeds`]: hpfeeds identities, pure: [`Identity`] (secret, owner, publish and subscribe
//!   channels; [`hpfeeds::auth_hash`] and [`Identity::verify`]; the [`Access`](herald_core::Access)
//!   its channels give), the [`IdentityRegistry`], the `env` backend ([`hpfeeds::from_env`]) and
//!   the JSON users file ([`hpfeeds::parse_users_json`]).
//!
//! # Example
//! ```
//! use herald_auth::{AuthError, JwtConfig, extract_token, mint, parse_path_modes, verify};
//! use herald_core::{Modes, Path, PathLimits};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let now = 1_700_000_000;
//! // icepeak-token-gen -s secret -e 60 -p foo:r -p bar/1:rw
//! let whitelist = [parse_path_modes("foo:r")?, parse_path_modes("bar/1:rw")?];
//! let token = mint(Some(b"secret"), Some(60), &whitelist, now)?;
//!
//! let header = format!("Bearer {token}");
//! let token = extract_token(Some(&header), None).ok_or(AuthError::MissingToken)?;
//! let cfg = JwtConfig::with_secret("secret");
//! let claims = verify(token, &cfg, now)?;
//!
//! let limits = PathLimits::default();
//! assert!(claims.allows(&Path::parse_url("/foo/x", &limits)?, Modes::READ));
//! assert!(!claims.allows(&Path::parse_url("/foobar", &limits)?, Modes::READ));
//! assert_eq!(
//!     claims.authorize(&Path::parse_url("/foo", &limits)?, Modes::WRITE),
//!     Err(AuthError::NotAllowed)
//! );
//!
//! // One minute and one second later the token has expired.
//! let err = verify(token, &cfg, now + 61).unwrap_err();
//! assert_eq!(err.body(), serde_json::json!({"data": null}));
//! # Ok(())
//! # }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::indexing_slicing))]

pub mod claim;
pub mod error;
pub mod generator;
pub mod hpfeeds;
pub mod session;
pub mod token;
pub mod users;

pub use error::{AuthError, InvalidReason, MintError, ParseError};
pub use generator::{mint, mint_now, parse_path_modes};
pub use hpfeeds::{Identity, IdentityError, IdentityRegistry};
pub use session::SessionError;
pub use token::{
    Claims, JwtConfig, MAX_TOKEN_LEN, extract_token, verify, verify_now, verify_request,
};
pub use users::{Acl, PasswordCost, Permission, Registry, Resource, User, UsersError};
