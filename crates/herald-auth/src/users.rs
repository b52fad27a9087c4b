//! The user registry: users with argon2id password hashes and an admin flag, role grants on
//! IorioDB resources, and the [`Access`] each principal ends up with (seed contract 2.2, 2.5).
//!
//! Everything here is pure: no I/O, no clock, no locking. `herald-engine`'s `accounts` module
//! keeps a [`Registry`] durable (it persists [`Registry::to_bytes`] on every change) and runs
//! the expensive password hashing off the async runtime.
//!
//! # Roles
//! A grant is held by a **role**:
//! - a user (see [`validate_username`] for which names are allowed);
//! - the pseudo-user [`ANONYMOUS`], whose grants apply to requests without a token;
//! - the group [`GROUP_AUTHENTICATED`], whose grants apply to every user;
//! - the group [`GROUP_ADMIN`], the admins (who have full access anyway).
//!
//! # Resources and permissions
//! A [`Resource`] is an IorioDB bucket (covering the topic pattern `/bucket/#`) or a stream
//! (`/bucket/stream` exactly). Each [`Permission`] maps to one access mode
//! ([`Permission::modes`]). [`Permission::AdminUsers`] is special: it is not a grant but the
//! user's admin flag, and it can only be granted to a user on the bucket
//! [`PERMISSIONS_BUCKET`]. Who may grant what (only admins may grant `adminusers`, the `grant`
//! permission on a resource to grant anything else there) is the caller's decision.
//!
//! # Access
//! [`Registry::access_for`] computes what a principal may do: [`Access::Full`] for an admin,
//! otherwise the union of its own grants, its groups' grants and two built-ins that cannot be
//! revoked: get and list on the bucket [`PUBLIC_BUCKET`] for everyone (anonymous included), and
//! get, put, delete, list and grant on the user's own bucket `_user_<name>`
//! ([`user_bucket`]).
//!
//! # Example
//! ```
//! use herald_auth::users::{PasswordCost, Permission, Registry, Resource, hash_password};
//! use herald_core::{Modes, Path, PathLimits};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut registry = Registry::default();
//! let hash = hash_password("s3cret", PasswordCost::MINIMUM)?;
//! registry.add_user("bob", hash, false)?;
//! registry.grant("bob", &Resource::new("sensors", None)?, Permission::Put)?;
//!
//! let access = registry.access_for(Some("bob"));
//! let limits = PathLimits::default();
//! assert!(access.allows(&Path::parse_url("/sensors/t1", &limits)?, Modes::WRITE));
//! assert!(access.allows(&Path::parse_url("/_user_bob/notes", &limits)?, Modes::WRITE));
//! assert!(!access.allows(&Path::parse_url("/_user_eve/notes", &limits)?, Modes::READ));
//! assert!(registry.access_for(None).allows(&Path::parse_url("/public/x", &limits)?, Modes::READ));
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use herald_core::{Access, Grant, Modes, Path, PathError, PathLimits, PathPattern};
use serde::{Deserialize, Serialize};

use crate::token::BASE64URL;

/// The pseudo-user whose grants apply to requests without a token. No user may be called so.
pub const ANONYMOUS: &str = "anonymous";

/// The group every user belongs to.
pub const GROUP_AUTHENTICATED: &str = "g-authenticated";

/// The group of the admins. Admins have full access, so grants to it change nothing today; it
/// exists because IorioDB has it and clients may grant to it.
pub const GROUP_ADMIN: &str = "g-admin";

/// The groups, in the order [`Registry::acl`] lists them.
pub const GROUPS: [&str; 2] = [GROUP_ADMIN, GROUP_AUTHENTICATED];

/// The prefix reserved for group names: no user name starts with it.
pub const GROUP_PREFIX: &str = "g-";

/// IorioDB's magic bucket on which [`Permission::AdminUsers`] (the admin flag) is granted.
pub const PERMISSIONS_BUCKET: &str = "$$iorio.permissions$$";

/// The bucket everyone, anonymous included, may read and list.
pub const PUBLIC_BUCKET: &str = "public";

/// The prefix of each user's own bucket (`_user_<name>`).
pub const USER_BUCKET_PREFIX: &str = "_user_";

/// The longest user name, in bytes (all allowed characters are ASCII).
pub const MAX_USERNAME_LEN: usize = 64;

/// The longest accepted password, in bytes. Longer ones are refused (not truncated) so that a
/// hostile client cannot make the server hash megabytes.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// The current version of the [`Registry::to_bytes`] format.
pub const FORMAT_VERSION: u64 = 1;

/// Why a registry operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UsersError {
    /// The name breaks the rules of [`validate_username`] (IorioDB's `illegal-username`).
    #[error(
        "illegal user name {0:?}: use 1 to 64 of A-Z a-z 0-9 _ . -, not starting with . or -, not 'anonymous' and not starting with 'g-'"
    )]
    IllegalUsername(String),
    /// A user of that name already exists (IorioDB's `user-exists`).
    #[error("user {0:?} already exists")]
    UserExists(String),
    /// No user of that name exists.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// The role of a grant is neither a user, [`ANONYMOUS`] nor a group.
    #[error("unknown role {0:?}: not a user, 'anonymous' or a group")]
    UnknownRole(String),
    /// [`Permission::AdminUsers`] was granted or revoked on something other than a user on the
    /// bucket [`PERMISSIONS_BUCKET`].
    #[error("the adminusers permission can only be given to a user on bucket {PERMISSIONS_BUCKET}")]
    AdminUsersMisplaced,
    /// The password is empty.
    #[error("the password is empty")]
    EmptyPassword,
    /// The password is longer than [`MAX_PASSWORD_LEN`].
    #[error("the password is longer than {MAX_PASSWORD_LEN} bytes")]
    PasswordTooLong,
    /// The argon2 parameters are out of range, or hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The registry could not be serialised.
    #[error("cannot serialise the accounts: {0}")]
    Encode(String),
    /// Serialised registry bytes could not be read.
    #[error("invalid accounts data: {0}")]
    Decode(String),
    /// Serialised registry bytes have a format version this build does not know.
    #[error("accounts data has format version {0}, this build reads only version {FORMAT_VERSION}")]
    UnsupportedVersion(u64),
}

/// An IorioDB permission name, as used in `/access` requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// `get`: read events and subscribe.
    Get,
    /// `put`: append and patch.
    Put,
    /// `delete`: delete streams.
    Delete,
    /// `grant`: grant and revoke permissions on the resource.
    Grant,
    /// `list`: list buckets and streams.
    List,
    /// `adminusers`: the admin flag (see the module documentation).
    #[serde(rename = "adminusers")]
    AdminUsers,
}

impl Permission {
    /// Every permission, in order.
    pub const ALL: [Permission; 6] = [
        Permission::Get,
        Permission::Put,
        Permission::Delete,
        Permission::Grant,
        Permission::List,
        Permission::AdminUsers,
    ];

    /// Parses IorioDB's permission name (`get`, `put`, `delete`, `grant`, `list`,
    /// `adminusers`; lower case only). `None` for anything else.
    pub fn parse(s: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The IorioDB name.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Get => "get",
            Permission::Put => "put",
            Permission::Delete => "delete",
            Permission::Grant => "grant",
            Permission::List => "list",
            Permission::AdminUsers => "adminusers",
        }
    }

    /// The access mode the permission gives on its resource: get = READ, put = WRITE,
    /// delete = DELETE, list = LIST, grant = ADMIN. [`Permission::AdminUsers`] gives no mode on
    /// its resource (it makes the user an admin instead), so it is [`Modes::NONE`].
    pub fn modes(self) -> Modes {
        match self {
            Permission::Get => Modes::READ,
            Permission::Put => Modes::WRITE,
            Permission::Delete => Modes::DELETE,
            Permission::Grant => Modes::ADMIN,
            Permission::List => Modes::LIST,
            Permission::AdminUsers => Modes::NONE,
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a grant is on: a bucket, or one stream of a bucket.
///
/// # Invariants
/// The bucket and the stream are valid path segments (non-empty, not `.` or `..`, at most
/// [`PathLimits::default`]'s segment size).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resource {
    bucket: String,
    stream: Option<String>,
}

impl Resource {
    /// The bucket `bucket`, or its stream `stream`.
    ///
    /// # Errors
    /// [`PathError`] when a name is not a valid path segment.
    pub fn new(bucket: &str, stream: Option<&str>) -> Result<Resource, PathError> {
        let segments = std::iter::once(bucket).chain(stream);
        Path::from_segments(segments, &PathLimits::default())?;
        Ok(Resource {
            bucket: bucket.to_owned(),
            stream: stream.map(str::to_owned),
        })
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The stream's name, if the resource is a stream.
    pub fn stream(&self) -> Option<&str> {
        self.stream.as_deref()
    }

    /// The topic path: `/bucket` or `/bucket/stream`.
    pub fn path(&self) -> Path {
        let segments = std::iter::once(self.bucket.as_str()).chain(self.stream.as_deref());
        // Validated in `new`, so this cannot fail; the root would be a safe fallback anyway
        // because `pattern` never widens it (see there).
        Path::from_segments(segments, &PathLimits::default()).unwrap_or_default()
    }

    /// The topics a grant on the resource covers: `/bucket/#` for a bucket (the bucket and
    /// every stream in it), exactly `/bucket/stream` for a stream.
    pub fn pattern(&self) -> PathPattern {
        let path = self.path();
        if self.stream.is_some() {
            PathPattern::exact(&path)
        } else {
            PathPattern::prefix(&path)
        }
    }
}

impl fmt::Display for Resource {
    /// `bucket` or `bucket/stream`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.stream {
            Some(s) => write!(f, "{}/{s}", self.bucket),
            None => f.write_str(&self.bucket),
        }
    }
}

/// The bucket every user owns: `_user_<name>`.
pub fn user_bucket(name: &str) -> String {
    format!("{USER_BUCKET_PREFIX}{name}")
}

/// Checks a new user name (IorioDB's `illegal-username`). The rule: 1 to
/// [`MAX_USERNAME_LEN`] characters, each an ASCII letter, digit, `_`, `.` or `-`; not starting
/// with `.` or `-`; not [`ANONYMOUS`]; not starting with [`GROUP_PREFIX`] (`g-`, reserved for
/// groups). Names are case-sensitive.
///
/// The rule keeps every name usable as a path segment (in `_user_<name>`), in URLs and on a
/// command line without quoting, and keeps users apart from the other roles.
///
/// # Errors
/// [`UsersError::IllegalUsername`].
pub fn validate_username(name: &str) -> Result<(), UsersError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    let ok = !name.is_empty()
        && name.len() <= MAX_USERNAME_LEN
        && name.chars().all(allowed)
        && !name.starts_with(['.', '-'])
        && name != ANONYMOUS
        && !name.starts_with(GROUP_PREFIX);
    if ok {
        Ok(())
    } else {
        Err(UsersError::IllegalUsername(name.to_owned()))
    }
}

/// Checks a new password: not empty and at most [`MAX_PASSWORD_LEN`] bytes.
///
/// # Errors
/// [`UsersError::EmptyPassword`], [`UsersError::PasswordTooLong`].
pub fn validate_password(password: &str) -> Result<(), UsersError> {
    if password.is_empty() {
        Err(UsersError::EmptyPassword)
    } else if password.len() > MAX_PASSWORD_LEN {
        Err(UsersError::PasswordTooLong)
    } else {
        Ok(())
    }
}

/// The argon2id cost parameters new password hashes are made with. Verification always uses
/// the parameters stored in the hash, so changing the cost only affects new hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordCost {
    /// Memory, in KiB (at least `8 * parallelism`).
    pub memory_kib: u32,
    /// Number of passes (at least 1).
    pub iterations: u32,
    /// Degree of parallelism (lanes, at least 1).
    pub parallelism: u32,
}

impl PasswordCost {
    /// The argon2 crate's defaults (19 MiB, 2 passes, 1 lane: the OWASP recommendation).
    pub const DEFAULT: PasswordCost = PasswordCost {
        memory_kib: Params::DEFAULT_M_COST,
        iterations: Params::DEFAULT_T_COST,
        parallelism: Params::DEFAULT_P_COST,
    };

    /// The cheapest valid parameters (8 KiB, 1 pass, 1 lane). **Only for tests**: such hashes
    /// are trivial to brute-force.
    pub const MINIMUM: PasswordCost = PasswordCost {
        memory_kib: Params::MIN_M_COST,
        iterations: Params::MIN_T_COST,
        parallelism: Params::MIN_P_COST,
    };

    fn params(self) -> Result<Params, UsersError> {
        Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| UsersError::Hash(e.to_string()))
    }
}

impl Default for PasswordCost {
    fn default() -> Self {
        PasswordCost::DEFAULT
    }
}

/// Hashes a password with argon2id and a random 16-byte salt, into a PHC string
/// (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`). Slow on purpose (tens of milliseconds with
/// the default cost): call it off the async runtime.
///
/// # Errors
/// [`validate_password`]'s errors; [`UsersError::Hash`] for invalid cost parameters or when
/// the system's random number generator fails.
pub fn hash_password(password: &str, cost: PasswordCost) -> Result<String, UsersError> {
    validate_password(password)?;
    let params = cost.params()?;
    let blocks = params.block_count();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| UsersError::Hash(e.to_string()))?;
    let mut output = [0u8; 32];
    // In the memory the thread keeps, as `verify_password` does (see there why).
    with_argon2_memory(blocks, |memory| {
        argon2.hash_password_into_with_memory(password.as_bytes(), &salt, &mut output, memory)
    })
    .map_err(|e| UsersError::Hash(e.to_string()))?;
    Ok(phc(cost, &salt, &output))
}

/// The argon2id (version 19) PHC string of `cost`, `salt` and `output`.
fn phc(cost: PasswordCost, salt: &[u8], output: &[u8]) -> String {
    format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        cost.memory_kib,
        cost.iterations,
        cost.parallelism,
        BASE64_STANDARD_NO_PAD.encode(salt),
        BASE64_STANDARD_NO_PAD.encode(output)
    )
}

/// Whether `password` matches the PHC string `phc`. The comparison is constant-time and uses
/// the parameters stored in `phc`. A `phc` that does not parse, or names no argon2 variant,
/// never matches. As slow as [`hash_password`].
///
/// argon2 works in memory of the hash's cost (19 MiB at [`PasswordCost::DEFAULT`]); each
/// thread that verifies (or hashes) keeps that memory for the next time (up to 64 MiB)
/// instead of allocating it per call. Allocated per call, glibc kept up to three such blocks
/// per hashing thread: 10 MQTT logins at once took a fresh server from 11 to 148-168 MB of
/// RSS, for good; with the memory kept, 52 MB (its two hashing threads' 19 MiB each).
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(hash) = argon2::PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm.as_str()) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    let mut buffer = [0u8; 64];
    let Some(out) = buffer.get_mut(..expected.len()) else {
        return false;
    };
    let computed = with_argon2_memory(blocks, |memory| {
        argon2.hash_password_into_with_memory(password.as_bytes(), salt.as_ref(), out, memory)
    });
    computed.is_ok() && bool::from(subtle::ConstantTimeEq::ct_eq(&*out, expected.as_bytes()))
}

/// The most argon2 memory a thread keeps between verifications (64 MiB, in 1 KiB blocks): a
/// stored hash of a higher cost gets memory of its own for the call.
const KEPT_ARGON2_BLOCKS: usize = 64 * 1024;

std::thread_local! {
    /// This thread's argon2 memory (see [`verify_password`]).
    static ARGON2_MEMORY: std::cell::RefCell<Vec<argon2::Block>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on `blocks` blocks of argon2 memory: this thread's, grown to `blocks` if need be,
/// when `blocks` is at most [`KEPT_ARGON2_BLOCKS`]; else memory allocated for the call.
fn with_argon2_memory<T>(blocks: usize, f: impl FnOnce(&mut [argon2::Block]) -> T) -> T {
    if blocks > KEPT_ARGON2_BLOCKS {
        return f(&mut vec![argon2::Block::new(); blocks]);
    }
    ARGON2_MEMORY.with_borrow_mut(|memory| {
        if memory.len() < blocks {
            memory.resize(blocks, argon2::Block::new());
        }
        f(memory.get_mut(..blocks).unwrap_or_default())
    })
}

/// A well-formed argon2id PHC string with `cost`'s parameters that no password matches (its
/// salt and output are all zeros, computed by nobody). Verifying against it takes as long as
/// verifying against a real hash of the same cost, which lets a login for an unknown user spend
/// the same time as one for a known user. Building it costs nothing.
pub fn dummy_hash(cost: PasswordCost) -> String {
    phc(cost, &[0; 16], &[0; 32])
}

/// The PHC strings' base64 (standard alphabet, no padding).
const BASE64_STANDARD_NO_PAD: base64::engine::GeneralPurpose =
    base64::engine::general_purpose::STANDARD_NO_PAD;

/// One user.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    hash: String,
    admin: bool,
}

impl User {
    /// The argon2 PHC string of the user's password.
    pub fn password_hash(&self) -> &str {
        &self.hash
    }

    /// Whether the user is an admin (full access; IorioDB's `adminusers`).
    pub fn is_admin(&self) -> bool {
        self.admin
    }
}

impl fmt::Debug for User {
    /// Never prints the hash.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("hash", &"[redacted]")
            .field("admin", &self.admin)
            .finish()
    }
}

/// Who holds which permissions on a resource, as `GET /access/...` reports it. Both lists are
/// sorted by name and each permission list is in [`Permission::ALL`] order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    /// Users (and [`ANONYMOUS`]) with their permissions.
    pub users: Vec<(String, Vec<Permission>)>,
    /// Groups with their permissions.
    pub groups: Vec<(String, Vec<Permission>)>,
}

/// The users, their grants and the session secret: everything the accounts snapshot holds.
///
/// # Invariants
/// - Every user name passed [`validate_username`] when the user was added.
/// - Every grant's role is a user, [`ANONYMOUS`] or one of [`GROUPS`]; removing a user removes
///   its grants.
/// - No grant holds [`Permission::AdminUsers`] (that is [`User::is_admin`]) and no grant set is
///   empty, so equal registries have equal grants.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Registry {
    users: BTreeMap<String, User>,
    grants: BTreeMap<String, BTreeMap<Resource, BTreeSet<Permission>>>,
    session_secret: Option<Vec<u8>>,
}

impl fmt::Debug for Registry {
    /// Never prints hashes or the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("users", &self.users)
            .field("grants", &self.grants)
            .field(
                "session_secret",
                &self.session_secret.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

impl Registry {
    /// Adds a user with an already computed password hash (see [`hash_password`]).
    ///
    /// # Errors
    /// [`UsersError::IllegalUsername`], [`UsersError::UserExists`].
    pub fn add_user(&mut self, name: &str, hash: String, admin: bool) -> Result<(), UsersError> {
        validate_username(name)?;
        if self.users.contains_key(name) {
            return Err(UsersError::UserExists(name.to_owned()));
        }
        self.users.insert(name.to_owned(), User { hash, admin });
        Ok(())
    }

    /// Replaces a user's password hash.
    ///
    /// # Errors
    /// [`UsersError::UnknownUser`].
    pub fn set_password_hash(&mut self, name: &str, hash: String) -> Result<(), UsersError> {
        let user = self
            .users
            .get_mut(name)
            .ok_or_else(|| UsersError::UnknownUser(name.to_owned()))?;
        user.hash = hash;
        Ok(())
    }

    /// Removes a user and every grant it holds. Returns whether the user existed.
    pub fn remove_user(&mut self, name: &str) -> bool {
        self.grants.remove(name);
        self.users.remove(name).is_some()
    }

    /// The user called `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// Every user name, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Whether `name` is a user with the admin flag.
    pub fn is_admin(&self, name: &str) -> bool {
        self.users.get(name).is_some_and(|u| u.admin)
    }

    /// The session secret kept in the registry, if one was stored.
    pub fn session_secret(&self) -> Option<&[u8]> {
        self.session_secret.as_deref()
    }

    /// Stores the session secret.
    pub fn set_session_secret(&mut self, secret: Vec<u8>) {
        self.session_secret = Some(secret);
    }

    fn check_role(&self, role: &str) -> Result<(), UsersError> {
        if self.users.contains_key(role) || role == ANONYMOUS || GROUPS.contains(&role) {
            Ok(())
        } else {
            Err(UsersError::UnknownRole(role.to_owned()))
        }
    }

    fn admin_flag_target(
        &mut self,
        role: &str,
        resource: &Resource,
    ) -> Result<&mut User, UsersError> {
        if resource.bucket != PERMISSIONS_BUCKET || resource.stream.is_some() {
            return Err(UsersError::AdminUsersMisplaced);
        }
        self.check_role(role)?;
        self.users
            .get_mut(role)
            .ok_or(UsersError::AdminUsersMisplaced)
    }

    /// Gives `role` `permission` on `resource`. Granting [`Permission::AdminUsers`] to a user
    /// on [`PERMISSIONS_BUCKET`] sets its admin flag. Returns whether anything changed.
    ///
    /// # Errors
    /// [`UsersError::UnknownRole`], [`UsersError::AdminUsersMisplaced`].
    pub fn grant(
        &mut self,
        role: &str,
        resource: &Resource,
        permission: Permission,
    ) -> Result<bool, UsersError> {
        if permission == Permission::AdminUsers {
            let user = self.admin_flag_target(role, resource)?;
            return Ok(!std::mem::replace(&mut user.admin, true));
        }
        self.check_role(role)?;
        Ok(self
            .grants
            .entry(role.to_owned())
            .or_default()
            .entry(resource.clone())
            .or_default()
            .insert(permission))
    }

    /// Takes `permission` on `resource` away from `role` (clearing the admin flag for
    /// [`Permission::AdminUsers`], as in [`Registry::grant`]). Built-in access (the public
    /// bucket, the user's own bucket) cannot be revoked. Returns whether anything changed.
    ///
    /// # Errors
    /// [`UsersError::UnknownRole`], [`UsersError::AdminUsersMisplaced`].
    pub fn revoke(
        &mut self,
        role: &str,
        resource: &Resource,
        permission: Permission,
    ) -> Result<bool, UsersError> {
        if permission == Permission::AdminUsers {
            let user = self.admin_flag_target(role, resource)?;
            return Ok(std::mem::replace(&mut user.admin, false));
        }
        self.check_role(role)?;
        let Some(resources) = self.grants.get_mut(role) else {
            return Ok(false);
        };
        let Some(permissions) = resources.get_mut(resource) else {
            return Ok(false);
        };
        let removed = permissions.remove(&permission);
        if permissions.is_empty() {
            resources.remove(resource);
        }
        if resources.is_empty() {
            self.grants.remove(role);
        }
        Ok(removed)
    }

    /// Who holds what on exactly `resource`: the explicit grants on it, plus for a bucket the
    /// built-ins (get and list on [`PUBLIC_BUCKET`] for [`ANONYMOUS`] and
    /// [`GROUP_AUTHENTICATED`]; get, put, delete, grant and list on `_user_<name>` for that
    /// user) and, on [`PERMISSIONS_BUCKET`], `adminusers` for every admin. Grants on the
    /// bucket are not repeated for its streams.
    pub fn acl(&self, resource: &Resource) -> Acl {
        let mut roles: BTreeMap<&str, BTreeSet<Permission>> = BTreeMap::new();
        for (role, resources) in &self.grants {
            if let Some(permissions) = resources.get(resource) {
                roles.entry(role).or_default().extend(permissions);
            }
        }
        if resource.stream.is_none() {
            if resource.bucket == PUBLIC_BUCKET {
                for role in [ANONYMOUS, GROUP_AUTHENTICATED] {
                    roles
                        .entry(role)
                        .or_default()
                        .extend([Permission::Get, Permission::List]);
                }
            }
            if let Some(owner) = resource.bucket.strip_prefix(USER_BUCKET_PREFIX)
                && self.users.contains_key(owner)
            {
                roles.entry(owner).or_default().extend(OWNER_PERMISSIONS);
            }
            if resource.bucket == PERMISSIONS_BUCKET {
                for (name, user) in &self.users {
                    if user.admin {
                        roles
                            .entry(name)
                            .or_default()
                            .insert(Permission::AdminUsers);
                    }
                }
            }
        }
        let mut acl = Acl::default();
        for (role, permissions) in roles {
            let entry = (role.to_owned(), permissions.into_iter().collect());
            if GROUPS.contains(&role) {
                acl.groups.push(entry);
            } else {
                acl.users.push(entry);
            }
        }
        acl
    }

    /// What `user` may do; `None`, or a name that is not a user, is anonymous. An admin has
    /// [`Access::Full`]; anyone else the grants described in the module documentation.
    pub fn access_for(&self, user: Option<&str>) -> Access {
        let user = user.filter(|name| self.users.contains_key(*name));
        if let Some(name) = user
            && self.is_admin(name)
        {
            return Access::Full;
        }
        let mut grants = Vec::new();
        let roles = match user {
            Some(name) => vec![name, GROUP_AUTHENTICATED],
            None => vec![ANONYMOUS],
        };
        for role in roles {
            if let Some(resources) = self.grants.get(role) {
                for (resource, permissions) in resources {
                    let modes = permissions
                        .iter()
                        .fold(Modes::NONE, |acc, p| acc | p.modes());
                    grants.push(Grant {
                        pattern: resource.pattern(),
                        modes,
                    });
                }
            }
        }
        grants.extend(bucket_grant(PUBLIC_BUCKET, Modes::READ | Modes::LIST));
        if let Some(name) = user {
            let owner = OWNER_PERMISSIONS
                .iter()
                .fold(Modes::NONE, |acc, p| acc | p.modes());
            grants.extend(bucket_grant(&user_bucket(name), owner));
        }
        Access::Grants(grants)
    }

    /// Serialises the registry (format version [`FORMAT_VERSION`], JSON).
    ///
    /// # Errors
    /// [`UsersError::Encode`] if JSON serialisation fails (it does not for these types).
    pub fn to_bytes(&self) -> Result<Vec<u8>, UsersError> {
        let wire = Wire {
            version: FORMAT_VERSION,
            session_secret: self.session_secret.as_ref().map(|s| BASE64URL.encode(s)),
            users: self
                .users
                .iter()
                .map(|(name, u)| WireUser {
                    name: name.clone(),
                    hash: u.hash.clone(),
                    admin: u.admin,
                })
                .collect(),
            grants: self
                .grants
                .iter()
                .flat_map(|(role, resources)| {
                    resources
                        .iter()
                        .map(move |(resource, permissions)| WireGrant {
                            role: role.clone(),
                            bucket: resource.bucket.clone(),
                            stream: resource.stream.clone(),
                            permissions: permissions.iter().copied().collect(),
                        })
                })
                .collect(),
        };
        serde_json::to_vec(&wire).map_err(|e| UsersError::Encode(e.to_string()))
    }

    /// Reads bytes written by [`Registry::to_bytes`].
    ///
    /// User names are not re-validated (a later, stricter rule must not lock existing users
    /// out), but duplicates, grants to unknown roles, invalid resources and `adminusers`
    /// grants are refused.
    ///
    /// # Errors
    /// [`UsersError::UnsupportedVersion`], [`UsersError::Decode`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Registry, UsersError> {
        #[derive(Deserialize)]
        struct Version {
            version: u64,
        }
        let decode = |e: serde_json::Error| UsersError::Decode(e.to_string());
        let Version { version } = serde_json::from_slice(bytes).map_err(decode)?;
        if version != FORMAT_VERSION {
            return Err(UsersError::UnsupportedVersion(version));
        }
        let wire: Wire = serde_json::from_slice(bytes).map_err(decode)?;
        let mut registry = Registry::default();
        if let Some(secret) = wire.session_secret {
            let secret = BASE64URL
                .decode(secret)
                .map_err(|e| UsersError::Decode(format!("session secret: {e}")))?;
            registry.session_secret = Some(secret);
        }
        for u in wire.users {
            if registry.users.contains_key(&u.name) {
                return Err(UsersError::Decode(format!("duplicate user {:?}", u.name)));
            }
            registry.users.insert(
                u.name,
                User {
                    hash: u.hash,
                    admin: u.admin,
                },
            );
        }
        for g in wire.grants {
            let resource = Resource::new(&g.bucket, g.stream.as_deref())
                .map_err(|e| UsersError::Decode(format!("grant resource: {e}")))?;
            registry
                .check_role(&g.role)
                .map_err(|e| UsersError::Decode(e.to_string()))?;
            if g.permissions.contains(&Permission::AdminUsers) {
                return Err(UsersError::Decode(
                    "adminusers is a user flag, not a grant".to_owned(),
                ));
            }
            if g.permissions.is_empty() {
                continue;
            }
            registry
                .grants
                .entry(g.role)
                .or_default()
                .entry(resource)
                .or_default()
                .extend(g.permissions);
        }
        Ok(registry)
    }
}

/// What a user may do on its own bucket.
const OWNER_PERMISSIONS: [Permission; 5] = [
    Permission::Get,
    Permission::Put,
    Permission::Delete,
    Permission::Grant,
    Permission::List,
];

/// A grant on `/bucket/#`; `None` only if `bucket` is not a valid segment (never for the
/// names used here).
fn bucket_grant(bucket: &str, modes: Modes) -> Option<Grant> {
    let path = Path::from_segments([bucket], &PathLimits::default()).ok()?;
    Some(Grant {
        pattern: PathPattern::prefix(&path),
        modes,
    })
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    version: u64,
    session_secret: Option<String>,
    users: Vec<WireUser>,
    grants: Vec<WireGrant>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireUser {
    name: String,
    hash: String,
    admin: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireGrant {
    role: String,
    bucket: String,
    stream: Option<String>,
    permissions: Vec<Permission>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn p(s: &str) -> Path {
        Path::parse_url(s, &PathLimits::default()).unwrap()
    }

    fn bucket(b: &str) -> Resource {
        Resource::new(b, None).unwrap()
    }

    fn stream(b: &str, s: &str) -> Resource {
        Resource::new(b, Some(s)).unwrap()
    }

    /// A registry with users bob (plain) and root (admin); hashes are placeholders.
    fn sample() -> Registry {
        let mut r = Registry::default();
        r.add_user("bob", "hash-bob".to_owned(), false).unwrap();
        r.add_user("root", "hash-root".to_owned(), true).unwrap();
        r
    }

    #[test]
    fn username_rule() {
        for ok in [
            "a",
            "bob",
            "Bob_1",
            "x.y-z",
            "_hidden",
            &"a".repeat(64),
            "admin",
            "g",
        ] {
            assert_eq!(validate_username(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            &"a".repeat(65),
            "anonymous",
            "g-admin",
            "g-authenticated",
            "g-x",
            ".bob",
            "-bob",
            "bo b",
            "bob/x",
            "bøb",
            "a:b",
            "$$",
            "bob\n",
        ] {
            assert_eq!(
                validate_username(bad),
                Err(UsersError::IllegalUsername(bad.to_owned())),
                "{bad:?}"
            );
        }
        // Case matters, so `Anonymous` is a name like any other.
        assert_eq!(validate_username("Anonymous"), Ok(()));
    }

    #[test]
    fn permission_names_and_modes() {
        for perm in Permission::ALL {
            assert_eq!(Permission::parse(perm.as_str()), Some(perm));
            assert_eq!(perm.to_string(), perm.as_str());
            assert_eq!(
                serde_json::to_value(perm).unwrap(),
                Value::String(perm.as_str().to_owned())
            );
        }
        assert_eq!(Permission::parse("GET"), None);
        assert_eq!(Permission::parse("iorio.get"), None);
        assert_eq!(Permission::parse(""), None);
        assert_eq!(Permission::Get.modes(), Modes::READ);
        assert_eq!(Permission::Put.modes(), Modes::WRITE);
        assert_eq!(Permission::Delete.modes(), Modes::DELETE);
        assert_eq!(Permission::List.modes(), Modes::LIST);
        assert_eq!(Permission::Grant.modes(), Modes::ADMIN);
        assert_eq!(Permission::AdminUsers.modes(), Modes::NONE);
    }

    #[test]
    fn resources_and_their_patterns() {
        let b = bucket("b");
        assert_eq!(b.pattern().to_string(), "/b/#");
        assert_eq!(b.to_string(), "b");
        assert_eq!(b.stream(), None);
        let s = stream("b", "s");
        assert_eq!(s.pattern().to_string(), "/b/s");
        assert_eq!(s.to_string(), "b/s");
        assert_eq!((s.bucket(), s.stream()), ("b", Some("s")));
        assert!(s.pattern().matches(&p("/b/s")));
        assert!(!s.pattern().matches(&p("/b/s/x")));
        assert!(b.pattern().matches(&p("/b")));
        assert!(!b.pattern().matches(&p("/bb")));
        // Wildcard characters are literal.
        assert!(!bucket("#").pattern().matches(&p("/x")));
        for (bk, st) in [
            ("", None),
            ("..", None),
            (".", None),
            ("b", Some("")),
            ("b", Some("..")),
        ] {
            assert!(Resource::new(bk, st).is_err(), "{bk:?} {st:?}");
        }
        assert!(Resource::new(&"x".repeat(2000), None).is_err());
        assert!(Resource::new(PERMISSIONS_BUCKET, None).is_ok());
    }

    #[test]
    fn users_are_added_changed_and_removed() {
        let mut r = sample();
        assert_eq!(
            r.add_user("bob", "h".to_owned(), false),
            Err(UsersError::UserExists("bob".to_owned()))
        );
        assert_eq!(
            r.add_user("anonymous", "h".to_owned(), false),
            Err(UsersError::IllegalUsername("anonymous".to_owned()))
        );
        assert_eq!(r.user_names(), ["bob", "root"]);
        assert!(r.is_admin("root"));
        assert!(!r.is_admin("bob"));
        assert!(!r.is_admin("nobody"));
        r.set_password_hash("bob", "new".to_owned()).unwrap();
        assert_eq!(r.user("bob").unwrap().password_hash(), "new");
        assert_eq!(
            r.set_password_hash("eve", "x".to_owned()),
            Err(UsersError::UnknownUser("eve".to_owned()))
        );
        r.grant("bob", &bucket("b"), Permission::Get).unwrap();
        assert!(r.remove_user("bob"));
        assert!(!r.remove_user("bob"));
        // Re-creating the user does not bring old grants back.
        r.add_user("bob", "h".to_owned(), false).unwrap();
        assert!(!r.access_for(Some("bob")).allows(&p("/b/s"), Modes::READ));
    }

    #[test]
    fn access_of_each_kind_of_principal() {
        let mut r = sample();
        r.grant("bob", &bucket("b"), Permission::Put).unwrap();
        r.grant("bob", &stream("c", "s"), Permission::Get).unwrap();
        r.grant(GROUP_AUTHENTICATED, &bucket("shared"), Permission::Get)
            .unwrap();
        r.grant(ANONYMOUS, &bucket("open"), Permission::Put)
            .unwrap();

        let bob = r.access_for(Some("bob"));
        assert!(bob.allows(&p("/b/s"), Modes::WRITE));
        assert!(!bob.allows(&p("/b/s"), Modes::READ));
        assert!(bob.allows(&p("/c/s"), Modes::READ));
        assert!(!bob.allows(&p("/c/t"), Modes::READ));
        assert!(bob.allows(&p("/shared/x"), Modes::READ));
        assert!(
            !bob.allows(&p("/open/x"), Modes::WRITE),
            "anonymous grants are not bob's"
        );
        assert!(bob.allows(&p("/public/x"), Modes::READ | Modes::LIST));
        assert!(!bob.allows(&p("/public/x"), Modes::WRITE));
        assert!(bob.allows(&p("/_user_bob/x"), Modes::ALL | Modes::ADMIN));
        assert!(bob.allows(&p("/_user_bob"), Modes::LIST));
        assert!(!bob.allows(&p("/_user_root/x"), Modes::READ));
        assert!(!bob.allows(&p("/_user_bobby"), Modes::READ));

        let anon = r.access_for(None);
        assert!(anon.allows(&p("/public/x"), Modes::READ | Modes::LIST));
        assert!(anon.allows(&p("/open/x"), Modes::WRITE));
        assert!(!anon.allows(&p("/shared/x"), Modes::READ));
        assert!(!anon.allows(&p("/_user_bob/x"), Modes::READ));
        // An unknown name is anonymous, even one that has a user bucket name.
        assert_eq!(r.access_for(Some("eve")), anon);
        assert_eq!(r.access_for(Some("anonymous")), anon);

        assert_eq!(r.access_for(Some("root")), Access::Full);
    }

    #[test]
    fn grants_need_a_known_role_and_adminusers_is_the_admin_flag() {
        let mut r = sample();
        assert_eq!(
            r.grant("eve", &bucket("b"), Permission::Get),
            Err(UsersError::UnknownRole("eve".to_owned()))
        );
        assert_eq!(
            r.grant(GROUP_ADMIN, &bucket("b"), Permission::Get),
            Ok(true)
        );
        assert_eq!(
            r.grant(GROUP_ADMIN, &bucket("b"), Permission::Get),
            Ok(false)
        );
        assert_eq!(r.revoke("bob", &bucket("b"), Permission::Get), Ok(false));
        assert_eq!(
            r.revoke("eve", &bucket("b"), Permission::Get),
            Err(UsersError::UnknownRole("eve".to_owned()))
        );

        let perms = bucket(PERMISSIONS_BUCKET);
        assert_eq!(r.grant("bob", &perms, Permission::AdminUsers), Ok(true));
        assert!(r.is_admin("bob"));
        assert_eq!(r.access_for(Some("bob")), Access::Full);
        assert_eq!(r.grant("bob", &perms, Permission::AdminUsers), Ok(false));
        assert_eq!(r.revoke("bob", &perms, Permission::AdminUsers), Ok(true));
        assert!(!r.is_admin("bob"));
        assert_eq!(r.revoke("bob", &perms, Permission::AdminUsers), Ok(false));
        for (role, res) in [
            ("bob", bucket("b")),
            ("bob", stream(PERMISSIONS_BUCKET, "s")),
            (GROUP_AUTHENTICATED, perms.clone()),
            (ANONYMOUS, perms.clone()),
        ] {
            assert_eq!(
                r.grant(role, &res, Permission::AdminUsers),
                Err(UsersError::AdminUsersMisplaced),
                "{role} {res}"
            );
        }
        assert_eq!(
            r.grant("eve", &perms, Permission::AdminUsers),
            Err(UsersError::UnknownRole("eve".to_owned()))
        );
    }

    #[test]
    fn acl_lists_explicit_and_built_in_holders() {
        let mut r = sample();
        r.grant("bob", &bucket("b"), Permission::List).unwrap();
        r.grant("bob", &bucket("b"), Permission::Get).unwrap();
        r.grant(GROUP_AUTHENTICATED, &bucket("b"), Permission::Put)
            .unwrap();
        r.grant("bob", &stream("b", "s"), Permission::Delete)
            .unwrap();
        assert_eq!(
            r.acl(&bucket("b")),
            Acl {
                users: vec![("bob".to_owned(), vec![Permission::Get, Permission::List])],
                groups: vec![(GROUP_AUTHENTICATED.to_owned(), vec![Permission::Put])],
            }
        );
        assert_eq!(
            r.acl(&stream("b", "s")),
            Acl {
                users: vec![("bob".to_owned(), vec![Permission::Delete])],
                groups: vec![],
            }
        );
        assert_eq!(r.acl(&bucket("none")), Acl::default());
        assert_eq!(
            r.acl(&bucket("_user_bob")),
            Acl {
                users: vec![(
                    "bob".to_owned(),
                    vec![
                        Permission::Get,
                        Permission::Put,
                        Permission::Delete,
                        Permission::Grant,
                        Permission::List
                    ]
                )],
                groups: vec![],
            }
        );
        assert_eq!(r.acl(&bucket("_user_eve")), Acl::default());
        assert_eq!(
            r.acl(&bucket(PUBLIC_BUCKET)),
            Acl {
                users: vec![(
                    ANONYMOUS.to_owned(),
                    vec![Permission::Get, Permission::List]
                )],
                groups: vec![(
                    GROUP_AUTHENTICATED.to_owned(),
                    vec![Permission::Get, Permission::List]
                )],
            }
        );
        assert_eq!(
            r.acl(&bucket(PERMISSIONS_BUCKET)),
            Acl {
                users: vec![("root".to_owned(), vec![Permission::AdminUsers])],
                groups: vec![],
            }
        );
    }

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password("s3cret", PasswordCost::MINIMUM).unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{hash}");
        assert!(verify_password("s3cret", &hash));
        assert!(!verify_password("s3cret ", &hash));
        assert!(!verify_password("", &hash));
        // Salted: the same password hashes differently each time.
        assert_ne!(
            hash,
            hash_password("s3cret", PasswordCost::MINIMUM).unwrap()
        );
        assert!(!verify_password("s3cret", "not a phc string"));
        assert!(!verify_password("s3cret", ""));
        assert_eq!(
            hash_password("", PasswordCost::MINIMUM),
            Err(UsersError::EmptyPassword)
        );
        assert_eq!(
            hash_password(&"x".repeat(MAX_PASSWORD_LEN + 1), PasswordCost::MINIMUM),
            Err(UsersError::PasswordTooLong)
        );
        assert!(hash_password(&"x".repeat(MAX_PASSWORD_LEN), PasswordCost::MINIMUM).is_ok());
        let bad_cost = PasswordCost {
            memory_kib: 1,
            ..PasswordCost::MINIMUM
        };
        assert!(matches!(
            hash_password("x", bad_cost),
            Err(UsersError::Hash(_))
        ));
        assert_eq!(PasswordCost::default(), PasswordCost::DEFAULT);
        assert_eq!(PasswordCost::DEFAULT.memory_kib, 19 * 1024);
    }

    #[test]
    fn verification_reuses_its_threads_memory_and_takes_any_argon2_variant() {
        let cost = PasswordCost {
            memory_kib: 64,
            ..PasswordCost::MINIMUM
        };
        use argon2::{PasswordHasher, PasswordVerifier};
        // What `hash_password` writes, the argon2 crate reads and verifies.
        let ours = hash_password("pw", cost).unwrap();
        let parsed = argon2::PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(b"pw", &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"pW", &parsed).is_err());
        // The variants and the version the argon2 crate writes, hashed by it directly.
        for algorithm in [Algorithm::Argon2id, Algorithm::Argon2i, Algorithm::Argon2d] {
            let argon2 = Argon2::new(algorithm, Version::V0x13, cost.params().unwrap());
            let phc = argon2.hash_password(b"pw").unwrap().to_string();
            assert!(verify_password("pw", &phc), "{phc}");
            assert!(!verify_password("pW", &phc), "{phc}");
        }
        let kept = || ARGON2_MEMORY.with_borrow(|m| (m.len(), m.as_ptr()));
        let (len, at) = kept();
        assert_eq!(len, 64, "the thread keeps the memory of the last cost");
        // A cheaper hash uses part of it; nothing is allocated again.
        assert!(verify_password(
            "s3cret",
            &hash_password("s3cret", PasswordCost::MINIMUM).unwrap()
        ));
        assert_eq!(kept(), (len, at));
        // A truncated or altered hash matches nothing, and a foreign algorithm neither.
        let phc = hash_password("s3cret", cost).unwrap();
        assert!(!verify_password("s3cret", &phc[..phc.len() - 4]));
        assert!(!verify_password(
            "s3cret",
            &phc.replace("argon2id", "scrypt")
        ));
        assert!(!verify_password("s3cret", &phc.replace("v=19", "v=7")));
    }

    #[test]
    fn dummy_hash_is_well_formed_and_matches_nothing() {
        let dummy = dummy_hash(PasswordCost::MINIMUM);
        assert!(argon2::PasswordHash::new(&dummy).is_ok(), "{dummy}");
        let real = hash_password("x", PasswordCost::MINIMUM).unwrap();
        // Same shape and length as a real hash of the same cost.
        assert_eq!(dummy.len(), real.len());
        for password in ["", "x", "password", "secret"] {
            assert!(!verify_password(password, &dummy));
        }
        assert!(dummy_hash(PasswordCost::DEFAULT).starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
    }

    #[test]
    fn bytes_format_is_stable() {
        let mut r = sample();
        r.set_session_secret(vec![1, 2, 3]);
        r.grant("bob", &stream("b", "s"), Permission::Put).unwrap();
        r.grant("bob", &stream("b", "s"), Permission::Get).unwrap();
        r.grant(ANONYMOUS, &bucket("o"), Permission::List).unwrap();
        let bytes = r.to_bytes().unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value,
            json!({
                "version": 1,
                "session_secret": "AQID",
                "users": [
                    {"name": "bob", "hash": "hash-bob", "admin": false},
                    {"name": "root", "hash": "hash-root", "admin": true},
                ],
                "grants": [
                    {"role": "anonymous", "bucket": "o", "stream": null, "permissions": ["list"]},
                    {"role": "bob", "bucket": "b", "stream": "s", "permissions": ["get", "put"]},
                ],
            })
        );
        assert_eq!(Registry::from_bytes(&bytes).unwrap(), r);
        assert_eq!(
            Registry::from_bytes(&Registry::default().to_bytes().unwrap()).unwrap(),
            Registry::default()
        );
    }

    #[test]
    fn bad_bytes_are_refused() {
        let base = json!({"version": 1, "session_secret": null, "users": [], "grants": []});
        let with = |key: &str, v: Value| {
            let mut x = base.clone();
            x[key] = v;
            serde_json::to_vec(&x).unwrap()
        };
        assert!(Registry::from_bytes(&serde_json::to_vec(&base).unwrap()).is_ok());
        assert_eq!(
            Registry::from_bytes(&with("version", json!(2))),
            Err(UsersError::UnsupportedVersion(2))
        );
        let user = json!({"name": "bob", "hash": "h", "admin": false});
        let cases = [
            b"".to_vec(),
            b"not json".to_vec(),
            b"[]".to_vec(),
            with("version", json!("1")),
            with("users", json!([user, user])),
            with("session_secret", json!("!!")),
            with(
                "grants",
                json!([{"role": "eve", "bucket": "b", "stream": null, "permissions": ["get"]}]),
            ),
            with(
                "grants",
                json!([{"role": "anonymous", "bucket": "..", "stream": null, "permissions": ["get"]}]),
            ),
            with(
                "grants",
                json!([{"role": "anonymous", "bucket": "b", "stream": null, "permissions": ["adminusers"]}]),
            ),
            with(
                "grants",
                json!([{"role": "anonymous", "bucket": "b", "stream": null, "permissions": ["root"]}]),
            ),
            with("extra", json!(1)),
        ];
        for bytes in cases {
            assert!(
                matches!(Registry::from_bytes(&bytes), Err(UsersError::Decode(_))),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn debug_hides_hashes_and_the_secret() {
        let mut r = sample();
        r.set_session_secret(b"topsecret".to_vec());
        let shown = format!("{r:?}");
        assert!(!shown.contains("hash-bob"), "{shown}");
        assert!(!shown.contains("116"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    // ---- properties ------------------------------------------------------------------------

    const NAMES: [&str; 3] = ["ann", "bob", "cy"];
    const BUCKETS: [&str; 4] = ["a", "b", PUBLIC_BUCKET, PERMISSIONS_BUCKET];

    #[derive(Debug, Clone)]
    enum Op {
        Add(usize, bool),
        Remove(usize),
        Grant(usize, usize, Option<usize>, Permission),
        Revoke(usize, usize, Option<usize>, Permission),
    }

    fn role(i: usize) -> &'static str {
        // Users first, then the other roles.
        [
            NAMES[0],
            NAMES[1],
            NAMES[2],
            ANONYMOUS,
            GROUP_AUTHENTICATED,
            GROUP_ADMIN,
        ][i % 6]
    }

    fn resource(b: usize, s: Option<usize>) -> Resource {
        Resource::new(BUCKETS[b % BUCKETS.len()], s.map(|s| ["s", "t"][s % 2])).unwrap()
    }

    fn op() -> impl Strategy<Value = Op> {
        let perm = prop::sample::select(Permission::ALL.to_vec());
        prop_oneof![
            (0..3usize, any::<bool>()).prop_map(|(u, a)| Op::Add(u, a)),
            (0..3usize).prop_map(Op::Remove),
            (
                0..6usize,
                0..4usize,
                prop::option::of(0..2usize),
                perm.clone()
            )
                .prop_map(|(r, b, s, p)| Op::Grant(r, b, s, p)),
            (0..6usize, 0..4usize, prop::option::of(0..2usize), perm)
                .prop_map(|(r, b, s, p)| Op::Revoke(r, b, s, p)),
        ]
    }

    /// Applies ops, ignoring refused ones (they must leave the registry unchanged).
    fn build(ops: &[Op]) -> Registry {
        let mut r = Registry::default();
        for op in ops {
            let before = r.clone();
            let res = match op {
                Op::Add(u, admin) => r
                    .add_user(NAMES[*u], format!("h{u}"), *admin)
                    .map(|()| true),
                Op::Remove(u) => Ok(r.remove_user(NAMES[*u])),
                Op::Grant(ro, b, s, p) => r.grant(role(*ro), &resource(*b, *s), *p),
                Op::Revoke(ro, b, s, p) => r.revoke(role(*ro), &resource(*b, *s), *p),
            };
            match res {
                Err(_) | Ok(false) => assert_eq!(r, before, "{op:?}"),
                Ok(true) => assert_ne!(r, before, "{op:?}"),
            }
        }
        r
    }

    fn principals() -> Vec<Option<&'static str>> {
        let mut all: Vec<Option<&str>> = NAMES.iter().copied().map(Some).collect();
        all.extend([None, Some("stranger")]);
        all
    }

    proptest! {
        #[test]
        fn nobody_gets_another_users_bucket(ops in prop::collection::vec(op(), 0..40)) {
            let r = build(&ops);
            for who in principals() {
                if who.is_some_and(|w| r.is_admin(w)) {
                    continue;
                }
                let access = r.access_for(who);
                for other in NAMES.iter().chain(&["stranger", "anonymous"]) {
                    if Some(*other) == who && r.user(other).is_some() {
                        continue;
                    }
                    let own = p(&format!("/_user_{other}/x"));
                    let bare = p(&format!("/_user_{other}"));
                    for needed in [Modes::READ, Modes::WRITE, Modes::DELETE, Modes::LIST, Modes::ADMIN] {
                        prop_assert!(!access.allows(&own, needed), "{who:?} {needed} on {own}");
                        prop_assert!(!access.allows(&bare, needed), "{who:?} {needed} on {bare}");
                    }
                }
            }
        }

        #[test]
        fn grant_then_revoke_restores_the_previous_access(
            ops in prop::collection::vec(op(), 0..30),
            ro in 0..6usize,
            b in 0..4usize,
            s in prop::option::of(0..2usize),
            perm in prop::sample::select(Permission::ALL.to_vec()),
        ) {
            let before = build(&ops);
            let mut r = before.clone();
            let res = resource(b, s);
            match r.grant(role(ro), &res, perm) {
                Ok(true) => {
                    prop_assert_eq!(r.revoke(role(ro), &res, perm), Ok(true));
                    prop_assert_eq!(&r, &before);
                    for who in principals() {
                        prop_assert_eq!(r.access_for(who), before.access_for(who));
                    }
                }
                // Already held, or refused: nothing changed.
                Ok(false) | Err(_) => prop_assert_eq!(&r, &before),
            }
        }

        #[test]
        fn bytes_round_trip(ops in prop::collection::vec(op(), 0..30), secret in prop::option::of(prop::collection::vec(any::<u8>(), 0..40))) {
            let mut r = build(&ops);
            if let Some(secret) = secret {
                r.set_session_secret(secret);
            }
            let back = Registry::from_bytes(&r.to_bytes().unwrap()).unwrap();
            prop_assert_eq!(&back, &r);
            for who in principals() {
                prop_assert_eq!(back.access_for(who), r.access_for(who));
            }
        }
    }
}
