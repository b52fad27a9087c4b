//! hpfeeds identities: who may authenticate to the hpfeeds broker, with which secret, and on
//! which channels each may publish and subscribe (seed contract 3.1 to 3.3).
//!
//! Everything here is pure: no I/O, no clock, no locking, no environment. `herald-engine`'s
//! `hpfeeds` module keeps an [`IdentityRegistry`] durable (it persists
//! [`IdentityRegistry::to_bytes`] on every change) and reads the process environment for the
//! `env` backend through [`from_env`].
//!
//! # Authentication
//! The broker sends a random 4-byte nonce; the client answers with its ident and
//! SHA1(nonce ‖ secret) ([`auth_hash`]). [`Identity::verify`] recomputes the digest and compares
//! it in constant time. The secret itself is therefore kept in clear (as every hpfeeds
//! authenticator does): the registry's serialised form holds it, and [`fmt::Debug`] never prints
//! it.
//!
//! # Channels and topics
//! Channel `c` is the topic `/<prefix>/c` (one path segment whatever characters it has, the
//! prefix is `hpfeeds` by default): [`channel_path`]. [`Identity::access`] turns the channel
//! lists into exact grants: WRITE on each publish channel, READ on each subscribe channel.
//!
//! # Rules ([`Identity::validate`])
//! - the ident is 1 to [`MAX_IDENT_LEN`] bytes (a `str8` on the wire);
//! - the secret is not empty;
//! - every channel name is 1 to [`MAX_CHANNEL_LEN`] bytes (a `str8` in OP_PUBLISH) and is not
//!   `.` or `..` (a channel is a path segment, and those two are not);
//! - the owner is free text (it only labels metrics).
//!
//! # Example
//! ```
//! use herald_auth::hpfeeds::{Identity, auth_hash};
//! use herald_core::{Modes, Path, PathLimits};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bob = Identity::new("bob", "s3cret", "bob", vec!["events".into()], vec!["alerts".into()])?;
//! let nonce = [1, 2, 3, 4];
//! assert!(bob.verify(&nonce, &auth_hash(&nonce, "s3cret")));
//! assert!(!bob.verify(&nonce, &auth_hash(&nonce, "wrong")));
//! assert!(bob.may_publish("events") && !bob.may_publish("alerts"));
//!
//! let access = bob.access("hpfeeds");
//! let limits = PathLimits::default();
//! assert!(access.allows(&Path::parse_url("/hpfeeds/events", &limits)?, Modes::WRITE));
//! assert!(access.allows(&Path::parse_url("/hpfeeds/alerts", &limits)?, Modes::READ));
//! assert!(!access.allows(&Path::parse_url("/hpfeeds/events/x", &limits)?, Modes::WRITE));
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;

use herald_core::{Access, Grant, Modes, Path, PathError, PathLimits, PathPattern};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// The longest ident, in bytes (a `str8` on the wire).
pub const MAX_IDENT_LEN: usize = 255;

/// The longest channel name, in bytes (a `str8` in OP_PUBLISH).
pub const MAX_CHANNEL_LEN: usize = 255;

/// The size of the broker's nonce (OP_INFO).
pub const NONCE_LEN: usize = 4;

/// The size of the authentication digest (OP_AUTH): a SHA-1 output.
pub const HASH_LEN: usize = 20;

/// The current version of the [`IdentityRegistry::to_bytes`] format.
pub const FORMAT_VERSION: u64 = 1;

/// Why an identity, or a change to the registry, was refused.
///
/// No variant carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The ident is empty or longer than [`MAX_IDENT_LEN`] bytes.
    #[error("invalid hpfeeds ident {0:?}: it must be 1 to {MAX_IDENT_LEN} bytes")]
    InvalidIdent(String),
    /// The secret is empty.
    #[error("the secret of hpfeeds ident {0:?} is empty")]
    EmptySecret(String),
    /// A channel name is empty, longer than [`MAX_CHANNEL_LEN`] bytes, or `.` or `..`.
    #[error(
        "invalid channel {channel:?} for hpfeeds ident {ident:?}: channels are 1 to \
         {MAX_CHANNEL_LEN} bytes and not '.' or '..'"
    )]
    InvalidChannel {
        /// The identity the channel belongs to.
        ident: String,
        /// The refused channel name.
        channel: String,
    },
    /// An identity with that ident already exists.
    #[error("hpfeeds ident {0:?} already exists")]
    IdentExists(String),
    /// The registry could not be serialised.
    #[error("cannot serialise the hpfeeds identities: {0}")]
    Encode(String),
    /// Serialised registry bytes could not be read.
    #[error("invalid hpfeeds identities data: {0}")]
    Decode(String),
    /// Serialised registry bytes have a format version this build does not know.
    #[error(
        "hpfeeds identities data has format version {0}, this build reads only version \
         {FORMAT_VERSION}"
    )]
    UnsupportedVersion(u64),
    /// An hpfeeds JSON users file is malformed ([`parse_users_json`]).
    #[error("invalid hpfeeds users file: {0}")]
    UsersFile(String),
}

/// SHA1(nonce ‖ secret as UTF-8): what a client sends in OP_AUTH.
pub fn auth_hash(nonce: &[u8; NONCE_LEN], secret: &str) -> [u8; HASH_LEN] {
    let mut hasher = Sha1::new();
    hasher.update(nonce);
    hasher.update(secret.as_bytes());
    hasher.finalize().into()
}

/// The topic of channel `channel` under `prefix`: `/<prefix>/<channel>`, the channel being one
/// segment whatever characters it has (a `/` in it does not split it).
///
/// # Errors
/// [`PathError`] when `prefix` or `channel` is not a valid path segment (empty, `.`, `..`, or
/// longer than [`PathLimits::default`] allows).
pub fn channel_path(prefix: &str, channel: &str) -> Result<Path, PathError> {
    Path::from_segments([prefix, channel], &PathLimits::default())
}

/// Checks an ident: 1 to [`MAX_IDENT_LEN`] bytes.
///
/// # Errors
/// [`IdentityError::InvalidIdent`].
pub fn validate_ident(ident: &str) -> Result<(), IdentityError> {
    if ident.is_empty() || ident.len() > MAX_IDENT_LEN {
        Err(IdentityError::InvalidIdent(ident.to_owned()))
    } else {
        Ok(())
    }
}

/// Whether `channel` is a valid channel name: 1 to [`MAX_CHANNEL_LEN`] bytes, not `.` or `..`.
pub fn is_valid_channel(channel: &str) -> bool {
    !channel.is_empty() && channel.len() <= MAX_CHANNEL_LEN && channel != "." && channel != ".."
}

/// One hpfeeds identity (an "authkey"): its credentials and channel rights.
///
/// The fields are public so that callers can build and inspect identities freely; the rules of
/// the [module documentation](self) are checked by [`Identity::new`], [`Identity::validate`]
/// and everything that stores identities ([`IdentityRegistry`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// The name the client authenticates as.
    pub ident: String,
    /// The shared secret (see [`auth_hash`]).
    pub secret: String,
    /// Who the identity belongs to (a label for metrics and listings).
    pub owner: String,
    /// The channels the identity may publish to.
    pub pubchans: Vec<String>,
    /// The channels the identity may subscribe to.
    pub subchans: Vec<String>,
}

impl fmt::Debug for Identity {
    /// Never prints the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("ident", &self.ident)
            .field("secret", &"[redacted]")
            .field("owner", &self.owner)
            .field("pubchans", &self.pubchans)
            .field("subchans", &self.subchans)
            .finish()
    }
}

impl Identity {
    /// A validated identity.
    ///
    /// # Errors
    /// As [`Identity::validate`].
    pub fn new(
        ident: &str,
        secret: &str,
        owner: &str,
        pubchans: Vec<String>,
        subchans: Vec<String>,
    ) -> Result<Identity, IdentityError> {
        let identity = Identity {
            ident: ident.to_owned(),
            secret: secret.to_owned(),
            owner: owner.to_owned(),
            pubchans,
            subchans,
        };
        identity.validate()?;
        Ok(identity)
    }

    /// Checks the rules of the [module documentation](self).
    ///
    /// # Errors
    /// [`IdentityError::InvalidIdent`], [`IdentityError::EmptySecret`],
    /// [`IdentityError::InvalidChannel`].
    pub fn validate(&self) -> Result<(), IdentityError> {
        validate_ident(&self.ident)?;
        if self.secret.is_empty() {
            return Err(IdentityError::EmptySecret(self.ident.clone()));
        }
        if let Some(bad) = self
            .pubchans
            .iter()
            .chain(&self.subchans)
            .find(|c| !is_valid_channel(c))
        {
            return Err(IdentityError::InvalidChannel {
                ident: self.ident.clone(),
                channel: bad.clone(),
            });
        }
        Ok(())
    }

    /// Whether `hash` is [`auth_hash`]`(nonce, secret)`. The digests are compared in constant
    /// time; a `hash` that is not [`HASH_LEN`] bytes never matches.
    pub fn verify(&self, nonce: &[u8; NONCE_LEN], hash: &[u8]) -> bool {
        let expected = auth_hash(nonce, &self.secret);
        bool::from(expected.as_slice().ct_eq(hash))
    }

    /// Whether the identity may publish to `channel` (it is one of [`Identity::pubchans`]).
    pub fn may_publish(&self, channel: &str) -> bool {
        self.pubchans.iter().any(|c| c == channel)
    }

    /// Whether the identity may subscribe to `channel` (it is one of [`Identity::subchans`]).
    pub fn may_subscribe(&self, channel: &str) -> bool {
        self.subchans.iter().any(|c| c == channel)
    }

    /// What the identity may do on Herald topics: [`Modes::WRITE`] on `/<prefix>/<chan>` for
    /// each publish channel and [`Modes::READ`] for each subscribe channel, each on exactly that
    /// topic (not below it). A channel that is not a valid path segment under `prefix` (see
    /// [`channel_path`]; never the case for a validated identity and a valid prefix) gets no
    /// grant, so an invalid prefix gives no access at all.
    pub fn access(&self, prefix: &str) -> Access {
        let mut modes: BTreeMap<&str, Modes> = BTreeMap::new();
        for chan in &self.pubchans {
            let m = modes.entry(chan).or_insert(Modes::NONE);
            *m = *m | Modes::WRITE;
        }
        for chan in &self.subchans {
            let m = modes.entry(chan).or_insert(Modes::NONE);
            *m = *m | Modes::READ;
        }
        let grants = modes
            .into_iter()
            .filter_map(|(chan, modes)| {
                let path = channel_path(prefix, chan).ok()?;
                Some(Grant {
                    pattern: PathPattern::exact(&path),
                    modes,
                })
            })
            .collect();
        Access::Grants(grants)
    }
}

/// The stored hpfeeds identities, by ident.
///
/// # Invariants
/// Every identity passed [`Identity::validate`] and is stored under its own ident.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IdentityRegistry {
    identities: BTreeMap<String, Identity>,
}

impl fmt::Debug for IdentityRegistry {
    /// Never prints secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.identities.values()).finish()
    }
}

impl IdentityRegistry {
    /// Adds `identity`; an identity with the same ident must not exist.
    ///
    /// # Errors
    /// As [`Identity::validate`]; [`IdentityError::IdentExists`].
    pub fn add(&mut self, identity: Identity) -> Result<(), IdentityError> {
        identity.validate()?;
        if self.identities.contains_key(&identity.ident) {
            return Err(IdentityError::IdentExists(identity.ident));
        }
        self.identities.insert(identity.ident.clone(), identity);
        Ok(())
    }

    /// Adds `identity`, replacing the one with the same ident if any. Returns the replaced one.
    ///
    /// # Errors
    /// As [`Identity::validate`].
    pub fn put(&mut self, identity: Identity) -> Result<Option<Identity>, IdentityError> {
        identity.validate()?;
        Ok(self.identities.insert(identity.ident.clone(), identity))
    }

    /// Removes the identity `ident`, returning it if it existed.
    pub fn remove(&mut self, ident: &str) -> Option<Identity> {
        self.identities.remove(ident)
    }

    /// The identity `ident`.
    pub fn get(&self, ident: &str) -> Option<&Identity> {
        self.identities.get(ident)
    }

    /// Every identity, sorted by ident.
    pub fn iter(&self) -> impl Iterator<Item = &Identity> {
        self.identities.values()
    }

    /// Every ident, sorted.
    pub fn idents(&self) -> Vec<String> {
        self.identities.keys().cloned().collect()
    }

    /// How many identities there are.
    pub fn len(&self) -> usize {
        self.identities.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// Serialises the registry (format version [`FORMAT_VERSION`], JSON). The secrets are in
    /// the output, in clear (see the [module documentation](self)).
    ///
    /// # Errors
    /// [`IdentityError::Encode`] if JSON serialisation fails (it does not for these types).
    pub fn to_bytes(&self) -> Result<Vec<u8>, IdentityError> {
        let wire = Wire {
            version: FORMAT_VERSION,
            identities: self
                .identities
                .values()
                .map(|i| WireIdentity {
                    ident: i.ident.clone(),
                    secret: i.secret.clone(),
                    owner: i.owner.clone(),
                    pubchans: i.pubchans.clone(),
                    subchans: i.subchans.clone(),
                })
                .collect(),
        };
        serde_json::to_vec(&wire).map_err(|e| IdentityError::Encode(json_error(&e)))
    }

    /// Reads bytes written by [`IdentityRegistry::to_bytes`]. Every identity is validated and
    /// idents must be unique.
    ///
    /// # Errors
    /// [`IdentityError::UnsupportedVersion`], [`IdentityError::Decode`].
    pub fn from_bytes(bytes: &[u8]) -> Result<IdentityRegistry, IdentityError> {
        #[derive(Deserialize)]
        struct Version {
            version: u64,
        }
        let decode = |e: serde_json::Error| IdentityError::Decode(json_error(&e));
        let Version { version } = serde_json::from_slice(bytes).map_err(decode)?;
        if version != FORMAT_VERSION {
            return Err(IdentityError::UnsupportedVersion(version));
        }
        let wire: Wire = serde_json::from_slice(bytes).map_err(decode)?;
        let mut registry = IdentityRegistry::default();
        for w in wire.identities {
            let identity = Identity {
                ident: w.ident,
                secret: w.secret,
                owner: w.owner,
                pubchans: w.pubchans,
                subchans: w.subchans,
            };
            registry.add(identity).map_err(|e| match e {
                IdentityError::IdentExists(ident) => {
                    IdentityError::Decode(format!("duplicate ident {ident:?}"))
                }
                other => IdentityError::Decode(other.to_string()),
            })?;
        }
        Ok(registry)
    }
}

/// Describes a JSON error by its kind and position only, so that no part of the input (which
/// may hold secrets) ends up in a message.
fn json_error(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected structure",
        serde_json::error::Category::Eof => "unexpected end of input",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    version: u64,
    identities: Vec<WireIdentity>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireIdentity {
    ident: String,
    secret: String,
    owner: String,
    pubchans: Vec<String>,
    subchans: Vec<String>,
}

/// The names of the `env` backend's variables for `ident`:
/// `HPFEEDS_<IDENT upper-cased>_<suffix>`.
fn env_key(ident: &str, suffix: &str) -> String {
    format!("HPFEEDS_{}_{suffix}", ident.to_uppercase())
}

/// The hpfeeds broker's `env` authenticator (seed contract 3.3), with the environment read
/// through `lookup` (e.g. `|k| std::env::var(k).ok()`):
/// - `HPFEEDS_<IDENT>_SECRET` (the ident upper-cased) is required: unset or empty means no
///   such identity;
/// - `HPFEEDS_<IDENT>_PUBCHANS` and `HPFEEDS_<IDENT>_SUBCHANS` are comma-separated channel
///   lists, split on every comma with nothing trimmed. The reference broker turns an unset
///   variable into `[""]`, a list holding only the empty channel; an empty name can never be a
///   Herald topic, so here empty entries (and any other entry that is not a valid channel,
///   such as `..`) are dropped, and an unset variable gives no channel;
/// - `HPFEEDS_<IDENT>_OWNER` defaults to the ident.
///
/// `None` also when `ident` is not a valid ident.
pub fn from_env(ident: &str, lookup: impl Fn(&str) -> Option<String>) -> Option<Identity> {
    validate_ident(ident).ok()?;
    let secret = lookup(&env_key(ident, "SECRET")).filter(|s| !s.is_empty())?;
    let channels = |suffix: &str| -> Vec<String> {
        lookup(&env_key(ident, suffix))
            .unwrap_or_default()
            .split(',')
            .filter(|c| is_valid_channel(c))
            .map(str::to_owned)
            .collect()
    };
    let identity = Identity {
        ident: ident.to_owned(),
        secret,
        owner: lookup(&env_key(ident, "OWNER")).unwrap_or_else(|| ident.to_owned()),
        pubchans: channels("PUBCHANS"),
        subchans: channels("SUBCHANS"),
    };
    identity.validate().ok()?;
    Some(identity)
}

/// Reads an hpfeeds JSON users file (seed contract 3.3), the format the reference brokers
/// share: `{"<ident>": {"owner": "..", "secret": "..", "pubchans": [..], "subchans": [..]}}`.
/// The four fields are required (with those types); other fields are ignored. The identities
/// come back sorted by ident; an ident given twice keeps its last entry, as in the reference
/// broker.
///
/// # Errors
/// [`IdentityError::UsersFile`] when the text is not such a file (the message names the ident
/// and field, never a value); [`Identity::validate`]'s errors for an entry that breaks the
/// rules (an empty secret or channel, for instance).
pub fn parse_users_json(text: &str) -> Result<Vec<Identity>, IdentityError> {
    let file = IdentityError::UsersFile;
    let root: BTreeMap<String, Value> = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => map.into_iter().collect(),
        Ok(_) => return Err(file("the top level is not an object".to_owned())),
        Err(e) => return Err(file(json_error(&e))),
    };
    let mut identities = Vec::with_capacity(root.len());
    for (ident, entry) in root {
        let Value::Object(entry) = entry else {
            return Err(file(format!("the entry for {ident:?} is not an object")));
        };
        let string = |field: &str| -> Result<String, IdentityError> {
            match entry.get(field) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(file(format!(
                    "field {field:?} of {ident:?} is not a string"
                ))),
                None => Err(file(format!("{ident:?} has no field {field:?}"))),
            }
        };
        let list = |field: &str| -> Result<Vec<String>, IdentityError> {
            let not_list = || {
                file(format!(
                    "field {field:?} of {ident:?} is not a list of strings"
                ))
            };
            match entry.get(field) {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| item.as_str().map(str::to_owned).ok_or_else(not_list))
                    .collect(),
                Some(_) => Err(not_list()),
                None => Err(file(format!("{ident:?} has no field {field:?}"))),
            }
        };
        let identity = Identity {
            secret: string("secret")?,
            owner: string("owner")?,
            pubchans: list("pubchans")?,
            subchans: list("subchans")?,
            ident,
        };
        identity.validate()?;
        identities.push(identity);
    }
    Ok(identities)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn p(s: &str) -> Path {
        Path::parse_url(s, &PathLimits::default()).unwrap()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn bob() -> Identity {
        Identity::new(
            "bob",
            "s3cret",
            "acme",
            strings(&["a", "b"]),
            strings(&["b", "c"]),
        )
        .unwrap()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn auth_hash_is_sha1_of_nonce_then_secret() {
        // SHA1("abc") is the FIPS 180 test vector; here the nonce is "abcd" and the secret
        // empty: SHA1("abcd").
        assert_eq!(
            hex(&auth_hash(b"abcd", "")),
            "81fe8bfe87576c3ecb22426f8e57847382917acf"
        );
        // SHA1("abc" + "dbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"), the FIPS 180-2
        // two-block vector, split as 4-byte nonce "abcd" and the rest as the secret.
        assert_eq!(
            hex(&auth_hash(
                b"abcd",
                "bcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        // The secret is hashed as UTF-8.
        assert_eq!(auth_hash(&[0, 0, 0, 0], "é"), {
            let mut h = Sha1::new();
            h.update([0, 0, 0, 0, 0xc3, 0xa9]);
            <[u8; 20]>::from(h.finalize())
        });
    }

    #[test]
    fn verify_checks_the_digest() {
        let bob = bob();
        let nonce = [9, 8, 7, 6];
        let good = auth_hash(&nonce, "s3cret");
        assert!(bob.verify(&nonce, &good));
        assert!(!bob.verify(&[9, 8, 7, 5], &good), "another nonce");
        assert!(!bob.verify(&nonce, &auth_hash(&nonce, "s3cret ")));
        let mut flipped = good;
        flipped[19] ^= 1;
        assert!(!bob.verify(&nonce, &flipped));
        assert!(!bob.verify(&nonce, &good[..19]), "short");
        assert!(
            !bob.verify(&nonce, &[good.as_slice(), &[0]].concat()),
            "long"
        );
        assert!(!bob.verify(&nonce, &[]));
    }

    #[test]
    fn validation_rules() {
        let long = "x".repeat(256);
        let max = "x".repeat(255);
        assert!(Identity::new(&max, "s", "", vec![max.clone()], vec![]).is_ok());
        assert!(Identity::new("é", "s", "o", strings(&["a/b", "+", "#", " "]), vec![]).is_ok());
        assert_eq!(
            Identity::new("", "s", "o", vec![], vec![]),
            Err(IdentityError::InvalidIdent(String::new()))
        );
        assert_eq!(
            Identity::new(&long, "s", "o", vec![], vec![]),
            Err(IdentityError::InvalidIdent(long.clone()))
        );
        assert_eq!(
            Identity::new("bob", "", "o", vec![], vec![]),
            Err(IdentityError::EmptySecret("bob".to_owned()))
        );
        for bad in ["", ".", "..", long.as_str()] {
            for (pubchans, subchans) in [(strings(&["a", bad]), vec![]), (vec![], strings(&[bad]))]
            {
                assert_eq!(
                    Identity::new("bob", "s", "o", pubchans, subchans),
                    Err(IdentityError::InvalidChannel {
                        ident: "bob".to_owned(),
                        channel: bad.to_owned()
                    })
                );
            }
        }
    }

    #[test]
    fn channel_rights_and_access() {
        let bob = bob();
        assert!(bob.may_publish("a") && bob.may_publish("b") && !bob.may_publish("c"));
        assert!(!bob.may_subscribe("a") && bob.may_subscribe("b") && bob.may_subscribe("c"));
        assert!(!bob.may_publish("A") && !bob.may_publish(""));

        let access = bob.access("hpfeeds");
        assert!(access.allows(&p("/hpfeeds/a"), Modes::WRITE));
        assert!(!access.allows(&p("/hpfeeds/a"), Modes::READ));
        assert!(access.allows(&p("/hpfeeds/b"), Modes::READ_WRITE));
        assert!(access.allows(&p("/hpfeeds/c"), Modes::READ));
        assert!(!access.allows(&p("/hpfeeds/c"), Modes::WRITE));
        // Exact topics only: nothing below a channel, nothing else under the prefix.
        assert!(!access.allows(&p("/hpfeeds/a/x"), Modes::WRITE));
        assert!(!access.allows(&p("/hpfeeds"), Modes::READ));
        assert!(!access.allows(&p("/hpfeeds/d"), Modes::READ));
        assert!(!access.allows(&p("/other/a"), Modes::WRITE));
        assert!(!access.allows(&p("/hpfeeds/a"), Modes::LIST | Modes::DELETE));
        let Access::Grants(grants) = &access else {
            panic!("not grants: {access:?}");
        };
        assert_eq!(grants.len(), 3, "b is one grant with both modes");

        // Wildcard and slash characters in a channel are literal parts of one segment.
        let odd = Identity::new("o", "s", "o", strings(&["#", "x/y"]), strings(&["+"])).unwrap();
        let access = odd.access("feeds");
        assert!(access.allows(&p("/feeds/%23"), Modes::WRITE));
        assert!(!access.allows(&p("/feeds/other"), Modes::WRITE));
        assert!(access.allows(&p("/feeds/x%2Fy"), Modes::WRITE));
        assert!(!access.allows(&p("/feeds/x/y"), Modes::WRITE));
        assert!(access.allows(&p("/feeds/+"), Modes::READ));
        assert!(!access.allows(&p("/feeds/z"), Modes::READ));

        // An invalid prefix gives nothing.
        assert_eq!(bob.access(""), Access::Grants(vec![]));
        assert_eq!(bob.access(".."), Access::Grants(vec![]));
        assert_eq!(
            channel_path("hpfeeds", "a/b").unwrap().segments(),
            ["hpfeeds", "a/b"]
        );
    }

    #[test]
    fn registry_add_put_remove() {
        let mut r = IdentityRegistry::default();
        assert!(r.is_empty());
        r.add(bob()).unwrap();
        assert_eq!(
            r.add(bob()),
            Err(IdentityError::IdentExists("bob".to_owned()))
        );
        let mut changed = bob();
        changed.secret = "other".to_owned();
        assert_eq!(r.put(changed.clone()), Ok(Some(bob())));
        assert_eq!(r.get("bob"), Some(&changed));
        let ann = Identity::new("ann", "x", "ann", vec![], vec![]).unwrap();
        assert_eq!(r.put(ann.clone()), Ok(None));
        assert_eq!(r.idents(), ["ann", "bob"]);
        assert_eq!(
            r.iter().cloned().collect::<Vec<_>>(),
            [ann, changed.clone()]
        );
        assert_eq!(r.len(), 2);
        let mut invalid = bob();
        invalid.secret.clear();
        let before = r.clone();
        assert!(r.put(invalid.clone()).is_err());
        assert!(r.add(invalid).is_err());
        assert_eq!(r, before);
        assert_eq!(r.remove("bob"), Some(changed));
        assert_eq!(r.remove("bob"), None);
        assert_eq!(r.get("bob"), None);
    }

    #[test]
    fn debug_hides_secrets() {
        let mut r = IdentityRegistry::default();
        r.add(bob()).unwrap();
        for shown in [format!("{r:?}"), format!("{:?}", bob())] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(
                shown.contains("redacted") && shown.contains("bob"),
                "{shown}"
            );
        }
    }

    #[test]
    fn bytes_format_is_stable() {
        let mut r = IdentityRegistry::default();
        r.add(bob()).unwrap();
        r.add(Identity::new("ann", "x", "", vec![], strings(&["c"])).unwrap())
            .unwrap();
        let bytes = r.to_bytes().unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value,
            json!({
                "version": 1,
                "identities": [
                    {"ident": "ann", "secret": "x", "owner": "", "pubchans": [], "subchans": ["c"]},
                    {"ident": "bob", "secret": "s3cret", "owner": "acme", "pubchans": ["a", "b"], "subchans": ["b", "c"]},
                ],
            })
        );
        assert_eq!(IdentityRegistry::from_bytes(&bytes).unwrap(), r);
    }

    #[test]
    fn bad_bytes_are_refused_without_echoing_them() {
        let ident = |secret: Value, pubchans: Value| json!({"ident": "bob", "secret": secret, "owner": "o", "pubchans": pubchans, "subchans": []});
        let doc = |identities: Vec<Value>| {
            serde_json::to_vec(&json!({"version": 1, "identities": identities})).unwrap()
        };
        assert!(
            IdentityRegistry::from_bytes(&doc(vec![]))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            IdentityRegistry::from_bytes(br#"{"version": 2, "identities": []}"#),
            Err(IdentityError::UnsupportedVersion(2))
        );
        let cases = [
            b"".to_vec(),
            b"not json".to_vec(),
            b"[]".to_vec(),
            br#"{"version": "1", "identities": []}"#.to_vec(),
            br#"{"version": 1, "identities": [], "extra": 1}"#.to_vec(),
            doc(vec![
                ident(json!("topsecret"), json!([])),
                ident(json!("topsecret"), json!([])),
            ]),
            doc(vec![ident(json!(""), json!([]))]),
            doc(vec![ident(json!(12345), json!([]))]),
            doc(vec![ident(json!("topsecret"), json!([".."]))]),
            doc(vec![ident(json!("topsecret"), json!("topsecret"))]),
        ];
        assert!(
            IdentityRegistry::from_bytes(&doc(vec![ident(json!("topsecret"), json!([]))])).is_ok()
        );
        for (i, bytes) in cases.iter().enumerate() {
            let err = IdentityRegistry::from_bytes(bytes).unwrap_err();
            assert!(matches!(err, IdentityError::Decode(_)), "{i}: {err:?}");
            let shown = err.to_string();
            assert!(
                !shown.contains("topsecret") && !shown.contains("12345"),
                "{shown}"
            );
        }
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| vars.get(k).cloned()
    }

    #[test]
    fn env_backend() {
        let lookup = env(&[
            ("HPFEEDS_BOB_SECRET", "s3cret"),
            ("HPFEEDS_BOB_PUBCHANS", "a,b"),
            ("HPFEEDS_BOB_SUBCHANS", "c"),
            ("HPFEEDS_BOB_OWNER", "acme"),
            ("HPFEEDS_ANN_SECRET", "x"),
            ("HPFEEDS_EVE_SECRET", ""),
            ("HPFEEDS_EVE_PUBCHANS", "a"),
            ("HPFEEDS_ODD_SECRET", "y"),
            ("HPFEEDS_ODD_PUBCHANS", ",a,, b ,..,."),
            ("HPFEEDS_ODD_SUBCHANS", ""),
            ("HPFEEDS_ODD_OWNER", ""),
            ("HPFEEDS_Δ_SECRET", "z"),
        ]);
        assert_eq!(
            from_env("bob", &lookup),
            Some(
                Identity::new(
                    "bob",
                    "s3cret",
                    "acme",
                    strings(&["a", "b"]),
                    strings(&["c"])
                )
                .unwrap()
            )
        );
        // The ident keeps its case; only the variable names are upper-cased.
        assert_eq!(from_env("Bob", &lookup).unwrap().ident, "Bob");
        // Owner defaults to the ident; unset lists are empty.
        assert_eq!(
            from_env("ann", &lookup),
            Some(Identity::new("ann", "x", "ann", vec![], vec![]).unwrap())
        );
        // An empty secret is no identity, nor is a missing one.
        assert_eq!(from_env("eve", &lookup), None);
        assert_eq!(from_env("nobody", &lookup), None);
        assert_eq!(from_env("", &lookup), None);
        // Entries are not trimmed; empty and dot entries are dropped; an empty owner stays.
        assert_eq!(
            from_env("odd", &lookup),
            Some(Identity::new("odd", "y", "", strings(&["a", " b "]), vec![]).unwrap())
        );
        // Unicode upper-casing, as Python's str.upper().
        assert_eq!(from_env("δ", &lookup).unwrap().secret, "z");
    }

    #[test]
    fn users_json_file() {
        let text = r#"{
            "bob": {"owner": "acme", "secret": "s3cret", "pubchans": ["a", "b"], "subchans": ["c"], "extra": 1},
            "ann": {"owner": "ann", "secret": "x", "pubchans": [], "subchans": []}
        }"#;
        assert_eq!(
            parse_users_json(text).unwrap(),
            [
                Identity::new("ann", "x", "ann", vec![], vec![]).unwrap(),
                Identity::new(
                    "bob",
                    "s3cret",
                    "acme",
                    strings(&["a", "b"]),
                    strings(&["c"])
                )
                .unwrap(),
            ]
        );
        assert_eq!(parse_users_json("{}").unwrap(), []);
        // The last of two entries for an ident wins.
        let twice = r#"{"a": {"owner": "1", "secret": "s", "pubchans": [], "subchans": []},
                        "a": {"owner": "2", "secret": "s", "pubchans": [], "subchans": []}}"#;
        assert_eq!(parse_users_json(twice).unwrap()[0].owner, "2");

        let entry = json!({"owner": "o", "secret": "topsecret", "pubchans": [], "subchans": []});
        let with = |field: &str, v: Option<Value>| {
            let mut e = entry.clone();
            match v {
                Some(v) => e[field] = v,
                None => {
                    e.as_object_mut().unwrap().remove(field);
                }
            }
            json!({ "bob": e }).to_string()
        };
        let file_errors = [
            "".to_owned(),
            "[]".to_owned(),
            "{\"bob\": \"topsecret\"}".to_owned(),
            "{\"bob\": {\"secret\": \"topsecret\"".to_owned(),
            with("secret", None),
            with("secret", Some(json!(12345))),
            with("owner", None),
            with("owner", Some(Value::Null)),
            with("pubchans", None),
            with("pubchans", Some(json!("a"))),
            with("subchans", Some(json!([1]))),
        ];
        for text in file_errors {
            let err = parse_users_json(&text).unwrap_err();
            assert!(
                matches!(err, IdentityError::UsersFile(_)),
                "{text}: {err:?}"
            );
            let shown = err.to_string();
            assert!(
                !shown.contains("topsecret") && !shown.contains("12345"),
                "{shown}"
            );
        }
        assert_eq!(
            parse_users_json(&with("secret", Some(json!("")))),
            Err(IdentityError::EmptySecret("bob".to_owned()))
        );
        assert!(matches!(
            parse_users_json(&with("subchans", Some(json!([""])))),
            Err(IdentityError::InvalidChannel { .. })
        ));
        assert!(matches!(
            parse_users_json(
                r#"{"": {"owner": "o", "secret": "s", "pubchans": [], "subchans": []}}"#
            ),
            Err(IdentityError::InvalidIdent(_))
        ));
    }

    // ---- properties ------------------------------------------------------------------------

    fn channel() -> impl Strategy<Value = String> {
        // Any non-empty string of up to 255 bytes but the two dot segments.
        "\\PC{1,60}".prop_filter("valid channel", |c| is_valid_channel(c))
    }

    fn identity() -> impl Strategy<Value = Identity> {
        (
            "\\PC{1,40}",
            "\\PC{1,40}",
            "\\PC{0,20}",
            prop::collection::vec(channel(), 0..5),
            prop::collection::vec(channel(), 0..5),
        )
            .prop_filter("valid ident", |(ident, ..)| validate_ident(ident).is_ok())
            .prop_map(|(ident, secret, owner, pubchans, subchans)| Identity {
                ident,
                secret,
                owner,
                pubchans,
                subchans,
            })
    }

    proptest! {
        #[test]
        fn bytes_round_trip(identities in prop::collection::vec(identity(), 0..8)) {
            let mut r = IdentityRegistry::default();
            for identity in identities {
                r.put(identity).unwrap();
            }
            let back = IdentityRegistry::from_bytes(&r.to_bytes().unwrap()).unwrap();
            prop_assert_eq!(&back, &r);
        }

        #[test]
        fn verify_accepts_exactly_the_right_secret(
            nonce in any::<[u8; 4]>(),
            secret in "\\PC{1,30}",
            other in "\\PC{1,30}",
        ) {
            let id = Identity::new("x", &secret, "x", vec![], vec![]).unwrap();
            prop_assert!(id.verify(&nonce, &auth_hash(&nonce, &secret)));
            prop_assert_eq!(id.verify(&nonce, &auth_hash(&nonce, &other)), secret == other);
        }

        #[test]
        fn access_matches_the_channel_lists(id in identity(), probe in channel()) {
            let access = id.access("hpfeeds");
            let path = channel_path("hpfeeds", &probe).unwrap();
            prop_assert_eq!(access.allows(&path, Modes::WRITE), id.may_publish(&probe));
            prop_assert_eq!(access.allows(&path, Modes::READ), id.may_subscribe(&probe));
            for chan in id.pubchans.iter().chain(&id.subchans) {
                let path = channel_path("hpfeeds", chan).unwrap();
                prop_assert_eq!(access.allows(&path, Modes::WRITE), id.may_publish(chan));
                prop_assert_eq!(access.allows(&path, Modes::READ), id.may_subscribe(chan));
            }
        }
    }
}
