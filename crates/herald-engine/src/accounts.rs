//! Durable IorioDB-style accounts: users, role grants and session tokens, kept in the store.
//!
//! [`Accounts`] wraps a [`Registry`] (the pure part, in `herald-auth`) and makes it durable:
//! the whole registry is the store snapshot [`SNAPSHOT`], rewritten with [`Durability::Sync`]
//! on every change.
//!
//! # Ordering
//! A change clones the current registry, applies itself to the clone, writes the clone, and only
//! then swaps it in. So a change is visible only once it is durable, and a failed write leaves
//! the registry as it was. Writers are serialised (one change at a time, under a lock held for
//! the write); each change runs to completion on the blocking pool, so dropping the future that
//! asked for it never leaves a change durable but invisible. Readers ([`Accounts::access`],
//! [`Accounts::verify_session`], ...) never wait for writers: they take the current registry
//! (an `Arc`) under a read lock held for a pointer copy.
//!
//! # Passwords and sessions
//! Passwords are hashed with argon2id ([`AccountsOptions::password_cost`]) on
//! [`AccountsOptions::max_concurrent_hashes`] threads of their own (each hash takes the cost's
//! memory, so concurrent logins must not multiply it without bound; and on tokio's blocking
//! pool every one of its many threads kept its own malloc arena holding such a block: 10,000
//! MQTT logins left ~900 MiB resident). [`Accounts::login`] spends the same time for an
//! unknown user as for a known one (it verifies against a dummy hash of the same cost), so
//! timing does not tell which users exist.
//!
//! A successful login is remembered for [`LOGIN_CACHE_TTL`] as a keyed hash (HMAC-SHA-256
//! with a random per-process key) of the user name and password, together with the stored
//! password hash it was checked against: logging in again with the same password (an MQTT
//! device reconnecting, many devices of one user) skips argon2, and a password change or
//! removal invalidates it. Failed logins are never cached.
//! Sessions are HS512 tokens (`herald_auth::session`) signed with
//! [`AccountsOptions::session_secret`], or else with a random secret generated on first open
//! and kept in the snapshot, so sessions survive restarts.
//!
//! # Example
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use herald_auth::{PasswordCost, Permission, Resource};
//! use herald_core::{Modes, Path, PathLimits};
//! use herald_engine::{Accounts, AccountsOptions};
//! use herald_store::MemoryStore;
//!
//! let options = AccountsOptions {
//!     password_cost: PasswordCost::MINIMUM, // tests only: cheap hashes
//!     ..AccountsOptions::default()
//! };
//! let accounts = Accounts::open(Arc::new(MemoryStore::default()), options).await.unwrap();
//! accounts.add_user("bob", "s3cret", false).await.unwrap();
//! accounts
//!     .grant("bob", &Resource::new("sensors", None).unwrap(), Permission::Get)
//!     .await
//!     .unwrap();
//!
//! let token = accounts.login("bob", "s3cret").await.unwrap().expect("good credentials");
//! let user = accounts.verify_session(&token).unwrap();
//! let path = Path::parse_url("/sensors/t1", &PathLimits::default()).unwrap();
//! assert!(accounts.access(Some(&user)).allows(&path, Modes::READ));
//! assert_eq!(accounts.login("bob", "wrong").await.unwrap(), None);
//! # });
//! ```

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use herald_auth::session::{self, SessionError};
use herald_auth::users::{self, PasswordCost};
use herald_auth::{Acl, Permission, Registry, Resource, UsersError};
use herald_core::Access;
use herald_store::{Durability, Store, StoreError};

use crate::durable::DurableValue;
use tokio::sync::Semaphore;

/// The name of the store snapshot holding the registry.
pub const SNAPSHOT: &str = "accounts";

/// The name of the user [`Accounts::ensure_admin`] creates.
pub const ADMIN_USER: &str = "admin";

/// How [`Accounts`] signs sessions and hashes passwords.
#[derive(Clone)]
pub struct AccountsOptions {
    /// The HS512 session secret (`--session-secret`). `None`: use the secret kept in the
    /// accounts snapshot, generating a random 32-byte one on first open.
    pub session_secret: Option<Vec<u8>>,
    /// How long a session token is valid. Default 24 hours, as in IorioDB.
    pub session_ttl: Duration,
    /// The argon2id cost of new password hashes. Default [`PasswordCost::DEFAULT`]; tests may
    /// use [`PasswordCost::MINIMUM`].
    pub password_cost: PasswordCost,
    /// How many password hashes and verifications (logins, new users, password changes) run
    /// at once; the others wait their turn. Each holds `password_cost.memory_kib` of memory
    /// while it runs. Default: the number of CPUs. 0 counts as 1.
    pub max_concurrent_hashes: usize,
}

impl Default for AccountsOptions {
    fn default() -> Self {
        Self {
            session_secret: None,
            session_ttl: Duration::from_secs(24 * 60 * 60),
            password_cost: PasswordCost::DEFAULT,
            max_concurrent_hashes: std::thread::available_parallelism()
                .map_or(1, NonZeroUsize::get),
        }
    }
}

impl fmt::Debug for AccountsOptions {
    /// Never prints the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountsOptions")
            .field(
                "session_secret",
                &self.session_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("session_ttl", &self.session_ttl)
            .field("password_cost", &self.password_cost)
            .field("max_concurrent_hashes", &self.max_concurrent_hashes)
            .finish()
    }
}

/// Why an accounts operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountsError {
    /// The registry refused the change (IorioDB's `user-exists`, `illegal-username`, an
    /// unknown user or role, ...); nothing changed.
    #[error(transparent)]
    Users(#[from] UsersError),
    /// A session secret could not be generated or a token could not be minted.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The store failed; the change was not made (or, when opening, nothing was loaded).
    #[error("accounts storage failed: {0}")]
    Store(#[from] StoreError),
    /// The stored accounts snapshot cannot be read (corrupt, or written by a newer version).
    #[error("the stored accounts cannot be read: {0}")]
    Corrupt(#[source] UsersError),
    /// [`AccountsOptions::session_secret`] is empty.
    #[error("the session secret is empty")]
    EmptySessionSecret,
    /// A background task panicked or was cancelled at shutdown.
    #[error("an accounts task failed: {0}")]
    Task(String),
}

/// The durable accounts handle. Cheap to clone; every clone sees the same accounts.
#[derive(Clone)]
pub struct Accounts {
    inner: Arc<Inner>,
}

struct Inner {
    /// The current, durable registry.
    registry: DurableValue<Registry>,
    secret: Vec<u8>,
    session_ttl: Duration,
    cost: PasswordCost,
    /// Bounds the password hashes running at once; a permit is held until the hash is done,
    /// even if the caller went away meanwhile.
    hashing: Arc<Semaphore>,
    /// What unknown users' logins are verified against.
    dummy_hash: String,
    /// The threads that run the hashes.
    workers: std::sync::mpsc::Sender<HashJob>,
    /// Recent successful logins; see the module documentation.
    logins: LoginCache,
}

/// How long a successful login is remembered (see the module documentation).
pub const LOGIN_CACHE_TTL: Duration = Duration::from_secs(600);

/// Most logins remembered at once; beyond, the oldest are forgotten.
const LOGIN_CACHE_MAX: usize = 10_000;

type HashJob = Box<dyn FnOnce() + Send>;

/// Remembered successful logins: user name → (keyed hash of name and password, the password
/// hash it was verified against, when).
struct LoginCache {
    key: Vec<u8>,
    entries: Mutex<HashMap<String, RememberedLogin>>,
}

/// The keyed hash of a name and password, the password hash it was checked against, when.
type RememberedLogin = ([u8; 32], String, Instant);

impl LoginCache {
    fn mac(&self, name: &str, password: &str) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(password.as_bytes());
        mac
    }

    /// Whether `name` logged in with `password` recently, against `stored_hash`.
    fn hit(&self, name: &str, password: &str, stored_hash: &str) -> bool {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((digest, hash, at)) = entries.get(name) else {
            return false;
        };
        hash == stored_hash
            && at.elapsed() < LOGIN_CACHE_TTL
            && self.mac(name, password).verify_slice(digest).is_ok()
    }

    fn insert(&self, name: &str, password: &str, stored_hash: String) {
        let digest: [u8; 32] = self.mac(name, password).finalize().into_bytes().into();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= LOGIN_CACHE_MAX && !entries.contains_key(name) {
            entries.retain(|_, (_, _, at)| at.elapsed() < LOGIN_CACHE_TTL);
            if entries.len() >= LOGIN_CACHE_MAX {
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, (_, _, at))| *at)
                    .map(|(n, _)| n.clone());
                if let Some(oldest) = oldest {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(name.to_owned(), (digest, stored_hash, Instant::now()));
    }
}

/// Starts `n` hashing threads fed by the returned sender; they end when it is dropped.
fn start_hash_workers(n: usize) -> std::sync::mpsc::Sender<HashJob> {
    let (tx, rx) = std::sync::mpsc::channel::<HashJob>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..n {
        let rx = rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("herald-hash-{i}"))
            .spawn(move || {
                loop {
                    let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a password hashing thread");
        }
    }
    tx
}

impl fmt::Debug for Accounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accounts")
            .field("users", &self.inner.current().user_names().len())
            .finish_non_exhaustive()
    }
}

impl Accounts {
    /// Loads the accounts from `store` (none yet is an empty registry). Without
    /// [`AccountsOptions::session_secret`] and without a stored secret, generates one and
    /// stores it before returning.
    ///
    /// # Errors
    /// [`AccountsError::Store`], [`AccountsError::Corrupt`],
    /// [`AccountsError::EmptySessionSecret`], [`AccountsError::Session`] (the random number
    /// generator failed).
    pub async fn open(
        store: Arc<dyn Store>,
        options: AccountsOptions,
    ) -> Result<Accounts, AccountsError> {
        let loader = store.clone();
        let loaded = blocking(move || loader.snapshot(SNAPSHOT)).await??;
        let (mut seq, mut registry) = match loaded {
            Some((seq, bytes)) => (
                seq,
                Registry::from_bytes(&bytes).map_err(AccountsError::Corrupt)?,
            ),
            None => (0, Registry::default()),
        };
        let secret = match (options.session_secret, registry.session_secret()) {
            (Some(secret), _) if secret.is_empty() => {
                return Err(AccountsError::EmptySessionSecret);
            }
            (Some(secret), _) => secret,
            (None, Some(stored)) => stored.to_vec(),
            (None, None) => {
                let secret = session::generate_secret()?;
                registry.set_session_secret(secret.clone());
                let bytes = registry.to_bytes()?;
                let writer = store.clone();
                seq += 1;
                blocking(move || writer.put_snapshot(SNAPSHOT, seq, &bytes, Durability::Sync))
                    .await??;
                secret
            }
        };
        Ok(Accounts {
            inner: Arc::new(Inner {
                registry: DurableValue::new(store, SNAPSHOT, registry, seq),
                secret,
                session_ttl: options.session_ttl,
                cost: options.password_cost,
                hashing: Arc::new(Semaphore::new(
                    options
                        .max_concurrent_hashes
                        .clamp(1, Semaphore::MAX_PERMITS),
                )),
                dummy_hash: users::dummy_hash(options.password_cost),
                workers: start_hash_workers(options.max_concurrent_hashes.clamp(1, 64)),
                logins: LoginCache {
                    key: session::generate_secret()?,
                    entries: Mutex::new(HashMap::new()),
                },
            }),
        })
    }

    /// What `user` may do (see `herald_auth::users`): `None` or a name that is not a user is
    /// anonymous; an admin has [`Access::Full`]. Cheap and non-blocking.
    pub fn access(&self, user: Option<&str>) -> Access {
        self.inner.current().access_for(user)
    }

    /// Checks a user's password and, if it matches, mints a session token valid for
    /// [`AccountsOptions::session_ttl`]. `Ok(None)` means bad credentials: an unknown user, a
    /// wrong password, or a password longer than `herald_auth::users::MAX_PASSWORD_LEN`.
    /// The argon2 work runs on the hashing threads and takes as long for an unknown user;
    /// a login repeated with the same password within [`LOGIN_CACHE_TTL`] skips it.
    ///
    /// # Errors
    /// [`AccountsError::Session`] if minting fails (a clock beyond `u64` seconds),
    /// [`AccountsError::Task`].
    pub async fn login(&self, name: &str, password: &str) -> Result<Option<String>, AccountsError> {
        if password.len() > users::MAX_PASSWORD_LEN {
            return Ok(None);
        }
        let registry = self.inner.current();
        let (known, hash) = match registry.user(name) {
            Some(user) => (true, user.password_hash().to_owned()),
            None => (false, self.inner.dummy_hash.clone()),
        };
        let cached = known && self.inner.logins.hit(name, password, &hash);
        if !cached {
            let (pw, h) = (password.to_owned(), hash.clone());
            let matches = self
                .hashing(move || users::verify_password(&pw, &h))
                .await?;
            if !(known && matches) {
                return Ok(None);
            }
            self.inner.logins.insert(name, password, hash);
        }
        let token = session::mint(
            name,
            self.inner.session_ttl.as_secs(),
            &self.inner.secret,
            unix_now(),
        )?;
        Ok(Some(token))
    }

    /// Verifies a session token and returns its user name. The user must still exist.
    ///
    /// # Errors
    /// `herald_auth::session::verify`'s errors, and [`SessionError::UnknownUser`] when the
    /// user has been removed since the token was minted.
    pub fn verify_session(&self, token: &str) -> Result<String, SessionError> {
        let name = session::verify(token, &self.inner.secret, unix_now())?;
        if self.inner.current().user(&name).is_none() {
            return Err(SessionError::UnknownUser);
        }
        Ok(name)
    }

    /// Adds a user (durably). The password is hashed on the blocking pool.
    ///
    /// # Errors
    /// [`AccountsError::Users`] with [`UsersError::IllegalUsername`],
    /// [`UsersError::UserExists`], [`UsersError::EmptyPassword`] or
    /// [`UsersError::PasswordTooLong`]; [`AccountsError::Store`].
    pub async fn add_user(
        &self,
        name: &str,
        password: &str,
        admin: bool,
    ) -> Result<(), AccountsError> {
        // Cheap checks first, so that a refused request costs no hashing.
        users::validate_username(name)?;
        users::validate_password(password)?;
        if self.inner.current().user(name).is_some() {
            return Err(UsersError::UserExists(name.to_owned()).into());
        }
        let hash = self.hash(password).await?;
        let name = name.to_owned();
        self.change(move |r| r.add_user(&name, hash, admin)).await
    }

    /// Changes a user's password (durably). Existing sessions stay valid until they expire.
    ///
    /// # Errors
    /// [`AccountsError::Users`] with [`UsersError::UnknownUser`],
    /// [`UsersError::EmptyPassword`] or [`UsersError::PasswordTooLong`];
    /// [`AccountsError::Store`].
    pub async fn set_password(&self, name: &str, password: &str) -> Result<(), AccountsError> {
        users::validate_password(password)?;
        if self.inner.current().user(name).is_none() {
            return Err(UsersError::UnknownUser(name.to_owned()).into());
        }
        let hash = self.hash(password).await?;
        let name = name.to_owned();
        self.change(move |r| r.set_password_hash(&name, hash)).await
    }

    /// Removes a user and its grants (durably). Its sessions stop verifying at once. Returns
    /// whether the user existed.
    ///
    /// # Errors
    /// [`AccountsError::Store`].
    pub async fn remove_user(&self, name: &str) -> Result<bool, AccountsError> {
        let name = name.to_owned();
        self.change(move |r| Ok(r.remove_user(&name))).await
    }

    /// Every user name, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.inner.current().user_names()
    }

    /// Whether `name` is an admin user.
    pub fn is_admin(&self, name: &str) -> bool {
        self.inner.current().is_admin(name)
    }

    /// Whether `name` is a user.
    pub fn user_exists(&self, name: &str) -> bool {
        self.inner.current().user(name).is_some()
    }

    /// Gives `role` (a user, `anonymous`, `g-authenticated` or `g-admin`) `permission` on
    /// `resource`, durably; see `herald_auth::Registry::grant`. Granting what is already held
    /// succeeds and writes nothing. Whether the caller may grant is not checked here.
    ///
    /// # Errors
    /// [`AccountsError::Users`] with [`UsersError::UnknownRole`] or
    /// [`UsersError::AdminUsersMisplaced`]; [`AccountsError::Store`].
    pub async fn grant(
        &self,
        role: &str,
        resource: &Resource,
        permission: Permission,
    ) -> Result<(), AccountsError> {
        let (role, resource) = (role.to_owned(), resource.clone());
        self.change(move |r| r.grant(&role, &resource, permission).map(drop))
            .await
    }

    /// Takes `permission` on `resource` away from `role`, durably; see
    /// `herald_auth::Registry::revoke`. Revoking what is not held succeeds and writes nothing.
    ///
    /// # Errors
    /// As [`Accounts::grant`].
    pub async fn revoke(
        &self,
        role: &str,
        resource: &Resource,
        permission: Permission,
    ) -> Result<(), AccountsError> {
        let (role, resource) = (role.to_owned(), resource.clone());
        self.change(move |r| r.revoke(&role, &resource, permission).map(drop))
            .await
    }

    /// Who holds what on `resource` (see `herald_auth::Registry::acl`).
    pub fn acl(&self, resource: &Resource) -> Acl {
        self.inner.current().acl(resource)
    }

    /// Creates the admin user [`ADMIN_USER`] with `password` unless a user of that name exists
    /// (whatever its password or flag). Returns whether it was created.
    ///
    /// # Errors
    /// As [`Accounts::add_user`], except that an existing `admin` is not an error.
    pub async fn ensure_admin(&self, password: &str) -> Result<bool, AccountsError> {
        match self.add_user(ADMIN_USER, password, true).await {
            Ok(()) => Ok(true),
            Err(AccountsError::Users(UsersError::UserExists(_))) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn hash(&self, password: &str) -> Result<String, AccountsError> {
        let (password, cost) = (password.to_owned(), self.inner.cost);
        Ok(self
            .hashing(move || users::hash_password(&password, cost))
            .await??)
    }

    /// Runs password hashing work `f` on the hashing threads once a hashing permit is free.
    /// The permit moves into the job, so a caller that goes away does not free it early.
    async fn hashing<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AccountsError> {
        let permit = self
            .inner
            .hashing
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| AccountsError::Task(e.to_string()))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: HashJob = Box::new(move || {
            let out = f();
            drop(permit);
            let _ = tx.send(out);
        });
        self.inner
            .workers
            .send(job)
            .map_err(|_| AccountsError::Task("the hashing threads are gone".to_owned()))?;
        rx.await
            .map_err(|_| AccountsError::Task("a hashing job was lost".to_owned()))
    }

    /// Applies `f` to a copy of the registry, persists the copy if it differs, then makes it
    /// current. Runs to completion on the blocking pool even if the caller goes away.
    async fn change<T, F>(&self, f: F) -> Result<T, AccountsError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Registry) -> Result<T, UsersError> + Send + 'static,
    {
        let inner = self.inner.clone();
        blocking(move || inner.change(f)).await?
    }
}

impl Inner {
    fn current(&self) -> Arc<Registry> {
        self.registry.current()
    }

    fn change<T>(
        &self,
        f: impl FnOnce(&mut Registry) -> Result<T, UsersError>,
    ) -> Result<T, AccountsError> {
        self.registry.change(
            |r| f(r).map_err(AccountsError::from),
            |r| r.to_bytes().map_err(AccountsError::from),
        )
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AccountsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AccountsError::Task(e.to_string()))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use herald_store::MemoryStore;

    use super::*;

    /// A cost that makes one hash take a noticeable time (tens of milliseconds).
    const SLOW: PasswordCost = PasswordCost {
        memory_kib: 8192,
        iterations: 8,
        parallelism: 1,
    };

    async fn accounts(max_concurrent_hashes: usize) -> Accounts {
        let options = AccountsOptions {
            password_cost: SLOW,
            max_concurrent_hashes,
            ..AccountsOptions::default()
        };
        Accounts::open(Arc::new(MemoryStore::default()), options)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashes_wait_for_a_permit() {
        let accounts = accounts(1).await;
        let held = accounts
            .inner
            .hashing
            .clone()
            .acquire_owned()
            .await
            .unwrap();
        let login = tokio::spawn({
            let accounts = accounts.clone();
            async move { accounts.login("bob", "pw").await }
        });
        let change = tokio::spawn({
            let accounts = accounts.clone();
            async move { accounts.add_user("bob", "pw", false).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!login.is_finished() && !change.is_finished());
        drop(held);
        change.await.unwrap().unwrap();
        assert_eq!(login.await.unwrap().unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_login_keeps_its_permit_until_its_hash_is_done() {
        let accounts = accounts(1).await;
        let hashing = accounts.inner.hashing.clone();
        let login = tokio::spawn({
            let accounts = accounts.clone();
            async move { accounts.login("bob", "pw").await }
        });
        while hashing.available_permits() == 1 {
            tokio::task::yield_now().await;
        }
        // The client goes away while its hash runs: the hash goes on, and so does its permit.
        login.abort();
        assert!(login.await.unwrap_err().is_cancelled());
        assert_eq!(hashing.available_permits(), 0);
        let _permit = tokio::time::timeout(Duration::from_secs(10), hashing.acquire())
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_repeated_login_skips_the_hash_until_the_password_changes() {
        let accounts = accounts(1).await;
        accounts.add_user("bob", "pw", false).await.unwrap();
        assert!(accounts.login("bob", "pw").await.unwrap().is_some());
        // With the only hashing permit held, a remembered login still succeeds at once...
        let held = accounts
            .inner
            .hashing
            .clone()
            .acquire_owned()
            .await
            .unwrap();
        let again = tokio::time::timeout(Duration::from_secs(5), accounts.login("bob", "pw"))
            .await
            .expect("a remembered login does not wait for a hash");
        assert!(again.unwrap().is_some());
        // ...while a wrong password still needs (and waits for) a hash.
        let wrong = tokio::spawn({
            let accounts = accounts.clone();
            async move { accounts.login("bob", "nope").await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!wrong.is_finished());
        drop(held);
        assert_eq!(wrong.await.unwrap().unwrap(), None);
        // A new password: the old one no longer works, remembered or not.
        accounts.set_password("bob", "new").await.unwrap();
        assert_eq!(accounts.login("bob", "pw").await.unwrap(), None);
        assert!(accounts.login("bob", "new").await.unwrap().is_some());
        // A removed user cannot log in with a remembered password either.
        accounts.remove_user("bob").await.unwrap();
        assert_eq!(accounts.login("bob", "new").await.unwrap(), None);
    }

    #[test]
    fn the_limit_defaults_to_the_cpus_and_is_at_least_one() {
        assert!(AccountsOptions::default().max_concurrent_hashes >= 1);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let accounts = rt.block_on(accounts(0));
        assert_eq!(accounts.inner.hashing.available_permits(), 1);
    }
}
