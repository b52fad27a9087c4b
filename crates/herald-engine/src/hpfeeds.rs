//! Durable hpfeeds identities: who may authenticate to the hpfeeds broker and on which
//! channels (seed contract 3.3).
//!
//! [`HpfeedsIdentities`] wraps an [`IdentityRegistry`] (the pure part, in `herald-auth`) and
//! makes it durable: the whole registry is the store snapshot [`SNAPSHOT`], rewritten with
//! [`Durability::Sync`](herald_store::Durability::Sync) on every change. The snapshot holds the secrets in clear, as every
//! hpfeeds authenticator does (the protocol hashes the secret with a fresh nonce per
//! connection, so the broker needs the secret itself).
//!
//! # Lookup
//! [`HpfeedsIdentities::lookup`] tries the stored identities first, then, when
//! [`HpfeedsOptions::env`] is set, the hpfeeds `env` backend (`HPFEEDS_<IDENT>_SECRET`,
//! `_PUBCHANS`, `_SUBCHANS`, `_OWNER`; see `herald_auth::hpfeeds::from_env`). The environment
//! is read on every lookup, like the reference broker does.
//!
//! # Ordering
//! As in [`accounts`](crate::accounts): a change clones the current registry, applies itself to
//! the clone, writes the clone, and only then swaps it in, so a change is visible only once it
//! is durable and a failed write leaves the identities as they were. Writers are serialised and
//! each change runs to completion on the blocking pool, so dropping the future that asked for
//! it never leaves a change durable but invisible. Readers never wait for writers.
//!
//! # Example
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use herald_auth::hpfeeds::{Identity, auth_hash};
//! use herald_engine::{HpfeedsIdentities, HpfeedsOptions};
//! use herald_store::MemoryStore;
//!
//! let store = Arc::new(MemoryStore::default());
//! let identities = HpfeedsIdentities::open(store, HpfeedsOptions::default()).await.unwrap();
//! let bob = Identity::new("bob", "s3cret", "bob", vec!["events".into()], vec![]).unwrap();
//! assert_eq!(identities.put(bob).await.unwrap(), None);
//!
//! let found = identities.lookup("bob").expect("stored");
//! let nonce = [1, 2, 3, 4];
//! assert!(found.verify(&nonce, &auth_hash(&nonce, "s3cret")));
//! assert!(found.may_publish("events"));
//! assert!(identities.lookup("eve").is_none());
//! # });
//! ```

use std::fmt;
use std::sync::Arc;

use herald_auth::hpfeeds::{self, Identity, IdentityError, IdentityRegistry};
use herald_store::{Store, StoreError};

use crate::durable::DurableValue;

/// The name of the store snapshot holding the identities.
pub const SNAPSHOT: &str = "hpfeeds-identities";

/// How the `env` backend reads a variable: its name in, its value out (`None` when unset).
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where [`HpfeedsIdentities::lookup`] looks besides the stored identities.
#[derive(Clone, Default)]
pub struct HpfeedsOptions {
    /// The `env` backend: `None` (the default) disables it; otherwise identities not stored
    /// are looked up in the variables this function reads.
    /// [`HpfeedsOptions::with_process_env`] reads the process environment; tests inject a map.
    pub env: Option<EnvLookup>,
}

impl HpfeedsOptions {
    /// The `env` backend on the process environment (a variable that is not valid Unicode
    /// counts as unset).
    pub fn with_process_env() -> HpfeedsOptions {
        HpfeedsOptions::with_env(|name| std::env::var(name).ok())
    }

    /// The `env` backend on the variables `lookup` returns.
    pub fn with_env(
        lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> HpfeedsOptions {
        HpfeedsOptions {
            env: Some(Arc::new(lookup)),
        }
    }
}

impl fmt::Debug for HpfeedsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HpfeedsOptions")
            .field("env", &self.env.is_some())
            .finish()
    }
}

/// Why an hpfeeds identities operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HpfeedsError {
    /// The registry refused the change (an invalid identity, or [`HpfeedsIdentities::add`] of
    /// an ident that exists); nothing changed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The store failed; the change was not made (or, when opening, nothing was loaded).
    #[error("hpfeeds identities storage failed: {0}")]
    Store(#[from] StoreError),
    /// The stored snapshot cannot be read (corrupt, or written by a newer version).
    #[error("the stored hpfeeds identities cannot be read: {0}")]
    Corrupt(#[source] IdentityError),
    /// A background task panicked or was cancelled at shutdown.
    #[error("an hpfeeds identities task failed: {0}")]
    Task(String),
}

/// What [`HpfeedsIdentities::put_all`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutAll {
    /// The idents that were new, sorted.
    pub created: Vec<String>,
    /// The idents whose identity was replaced, sorted.
    pub replaced: Vec<String>,
}

/// The durable hpfeeds identities handle. Cheap to clone; every clone sees the same identities.
#[derive(Clone)]
pub struct HpfeedsIdentities {
    inner: Arc<Inner>,
}

struct Inner {
    /// The current, durable registry.
    registry: DurableValue<IdentityRegistry>,
    env: Option<EnvLookup>,
}

impl fmt::Debug for HpfeedsIdentities {
    /// Never prints secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HpfeedsIdentities")
            .field("stored", &self.inner.current().len())
            .field("env", &self.inner.env.is_some())
            .finish_non_exhaustive()
    }
}

impl HpfeedsIdentities {
    /// Loads the identities from `store` (none yet is an empty registry).
    ///
    /// # Errors
    /// [`HpfeedsError::Store`], [`HpfeedsError::Corrupt`], [`HpfeedsError::Task`].
    pub async fn open(
        store: Arc<dyn Store>,
        options: HpfeedsOptions,
    ) -> Result<HpfeedsIdentities, HpfeedsError> {
        let loader = store.clone();
        let loaded = blocking(move || loader.snapshot(SNAPSHOT)).await??;
        let (seq, registry) = match loaded {
            Some((seq, bytes)) => (
                seq,
                IdentityRegistry::from_bytes(&bytes).map_err(HpfeedsError::Corrupt)?,
            ),
            None => (0, IdentityRegistry::default()),
        };
        Ok(HpfeedsIdentities {
            inner: Arc::new(Inner {
                registry: DurableValue::new(store, SNAPSHOT, registry, seq),
                env: options.env,
            }),
        })
    }

    /// The identity a client authenticating as `ident` is checked against: the stored one,
    /// else (with [`HpfeedsOptions::env`]) the one the environment defines, else `None`.
    /// Cheap and non-blocking (a read lock held for a pointer copy, then at most four
    /// environment reads).
    pub fn lookup(&self, ident: &str) -> Option<Identity> {
        if let Some(identity) = self.get(ident) {
            return Some(identity);
        }
        let env = self.inner.env.as_ref()?;
        hpfeeds::from_env(ident, |name| env(name))
    }

    /// The stored identity `ident` (the `env` backend is not consulted).
    pub fn get(&self, ident: &str) -> Option<Identity> {
        self.inner.current().get(ident).cloned()
    }

    /// Every stored identity, sorted by ident (the `env` backend cannot be listed).
    pub fn list(&self) -> Vec<Identity> {
        self.inner.current().iter().cloned().collect()
    }

    /// Stores a new identity (durably).
    ///
    /// # Errors
    /// [`HpfeedsError::Identity`] with [`IdentityError::IdentExists`] when a stored identity
    /// has that ident, or a validation error; [`HpfeedsError::Store`].
    pub async fn add(&self, identity: Identity) -> Result<(), HpfeedsError> {
        self.change(move |r| r.add(identity)).await
    }

    /// Stores an identity, replacing the stored one with the same ident if any (durably).
    /// Returns the replaced identity. Storing an identical identity writes nothing.
    ///
    /// # Errors
    /// [`HpfeedsError::Identity`] with a validation error; [`HpfeedsError::Store`].
    pub async fn put(&self, identity: Identity) -> Result<Option<Identity>, HpfeedsError> {
        self.change(move |r| r.put(identity)).await
    }

    /// Stores several identities as [`HpfeedsIdentities::put`] does, in one durable write:
    /// either all of them are stored or, on error, none. A later identity with the same ident
    /// as an earlier one wins.
    ///
    /// # Errors
    /// As [`HpfeedsIdentities::put`], for the first invalid identity.
    pub async fn put_all(&self, identities: Vec<Identity>) -> Result<PutAll, HpfeedsError> {
        self.change(move |r| {
            let before = r.clone();
            let mut done = PutAll::default();
            for identity in identities {
                let ident = identity.ident.clone();
                r.put(identity)?;
                if before.get(&ident).is_some() {
                    done.replaced.push(ident);
                } else {
                    done.created.push(ident);
                }
            }
            for list in [&mut done.created, &mut done.replaced] {
                list.sort();
                list.dedup();
            }
            Ok(done)
        })
        .await
    }

    /// Removes the stored identity `ident` (durably). Returns whether it existed. An identity
    /// the `env` backend defines is not affected.
    ///
    /// # Errors
    /// [`HpfeedsError::Store`].
    pub async fn remove(&self, ident: &str) -> Result<bool, HpfeedsError> {
        let ident = ident.to_owned();
        self.change(move |r| Ok(r.remove(&ident).is_some())).await
    }

    /// Applies `f` to a copy of the registry, persists the copy if it differs, then makes it
    /// current. Runs to completion on the blocking pool even if the caller goes away.
    async fn change<T, F>(&self, f: F) -> Result<T, HpfeedsError>
    where
        T: Send + 'static,
        F: FnOnce(&mut IdentityRegistry) -> Result<T, IdentityError> + Send + 'static,
    {
        let inner = self.inner.clone();
        blocking(move || inner.change(f)).await?
    }
}

impl Inner {
    fn current(&self) -> Arc<IdentityRegistry> {
        self.registry.current()
    }

    fn change<T>(
        &self,
        f: impl FnOnce(&mut IdentityRegistry) -> Result<T, IdentityError>,
    ) -> Result<T, HpfeedsError> {
        self.registry.change(
            |r| f(r).map_err(HpfeedsError::from),
            |r| r.to_bytes().map_err(HpfeedsError::from),
        )
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, HpfeedsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HpfeedsError::Task(e.to_string()))
}
