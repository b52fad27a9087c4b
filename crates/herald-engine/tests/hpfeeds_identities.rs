//! The durable hpfeeds identities: persistence across reopen (memory and fjall), the `env`
//! backend behind the stored identities, and that a failed store write changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald_auth::hpfeeds::{Identity, IdentityError, auth_hash};
use herald_engine::hpfeeds::{PutAll, SNAPSHOT};
use herald_engine::{HpfeedsError, HpfeedsIdentities, HpfeedsOptions};
use herald_store::{Append, Durability, LogBounds, MemoryStore, Store, StoreError};
use herald_store_fjall::FjallStore;

/// How long any single wait may take before the test fails instead of hanging.
const WAIT: Duration = Duration::from_secs(10);

fn chans(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn identity(ident: &str, secret: &str, pubchans: &[&str], subchans: &[&str]) -> Identity {
    Identity::new(ident, secret, ident, chans(pubchans), chans(subchans)).expect("valid identity")
}

async fn open(store: Arc<dyn Store>, options: HpfeedsOptions) -> HpfeedsIdentities {
    tokio::time::timeout(WAIT, HpfeedsIdentities::open(store, options))
        .await
        .expect("open timed out")
        .expect("open failed")
}

/// An `env` backend over a fixed map.
fn env(vars: &[(&str, &str)]) -> HpfeedsOptions {
    let vars: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    HpfeedsOptions::with_env(move |name| vars.get(name).cloned())
}

/// Waits until `store` is referenced only by the caller.
async fn wait_released<T: ?Sized>(store: &Arc<T>) {
    tokio::time::timeout(WAIT, async {
        while Arc::strong_count(store) > 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("store still referenced");
}

/// A store that can be closed and opened again: a shared `MemoryStore`, or a fjall directory.
enum Backend {
    Memory(Arc<MemoryStore>),
    Fjall {
        dir: tempfile::TempDir,
        store: Option<Arc<FjallStore>>,
    },
}

impl Backend {
    fn all() -> Vec<Backend> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FjallStore::open(dir.path()).expect("open fjall");
        vec![
            Backend::Memory(Arc::new(MemoryStore::default())),
            Backend::Fjall {
                dir,
                store: Some(Arc::new(store)),
            },
        ]
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Memory(_) => "memory",
            Backend::Fjall { .. } => "fjall",
        }
    }

    fn store(&self) -> Arc<dyn Store> {
        match self {
            Backend::Memory(s) => s.clone(),
            Backend::Fjall { store, .. } => store.clone().expect("store is open"),
        }
    }

    /// Drop every handle first.
    async fn restart(&mut self) {
        match self {
            Backend::Memory(s) => wait_released(s).await,
            Backend::Fjall { dir, store } => {
                let current = store.take().expect("store is open");
                wait_released(&current).await;
                drop(current);
                *store = Some(Arc::new(
                    FjallStore::open(dir.path()).expect("reopen fjall"),
                ));
            }
        }
    }
}

#[tokio::test]
async fn identities_survive_a_restart() {
    for mut backend in Backend::all() {
        let name = backend.name();
        let ids = open(backend.store(), HpfeedsOptions::default()).await;
        assert!(ids.list().is_empty(), "{name}");
        ids.add(identity("bob", "pw-bob", &["a"], &["b"]))
            .await
            .unwrap();
        ids.add(identity("carol", "pw-carol", &[], &["a"]))
            .await
            .unwrap();
        ids.add(identity("dave", "pw-dave", &[], &[]))
            .await
            .unwrap();
        // put replaces and reports the replaced identity.
        let replaced = ids
            .put(identity("carol", "new-carol", &["c"], &["a"]))
            .await
            .unwrap();
        assert_eq!(replaced, Some(identity("carol", "pw-carol", &[], &["a"])));
        assert!(ids.remove("dave").await.unwrap());
        assert!(!ids.remove("dave").await.unwrap());
        let before = ids.list();
        drop(ids);

        backend.restart().await;
        let ids = open(backend.store(), HpfeedsOptions::default()).await;
        assert_eq!(ids.list(), before, "{name}");
        assert_eq!(
            ids.list()
                .iter()
                .map(|i| i.ident.as_str())
                .collect::<Vec<_>>(),
            ["bob", "carol"]
        );
        let carol = ids.lookup("carol").expect("carol is stored");
        let nonce = [0xde, 0xad, 0xbe, 0xef];
        assert!(
            carol.verify(&nonce, &auth_hash(&nonce, "new-carol")),
            "{name}"
        );
        assert!(!carol.verify(&nonce, &auth_hash(&nonce, "pw-carol")));
        assert!(carol.may_publish("c"));
        assert_eq!(ids.get("dave"), None);
        assert_eq!(ids.lookup("dave"), None);
    }
}

#[tokio::test]
async fn add_refuses_duplicates_and_invalid_identities() {
    let ids = open(Arc::new(MemoryStore::default()), HpfeedsOptions::default()).await;
    ids.add(identity("bob", "pw", &["a"], &[])).await.unwrap();
    assert!(matches!(
        ids.add(identity("bob", "other", &[], &[])).await,
        Err(HpfeedsError::Identity(IdentityError::IdentExists(i))) if i == "bob"
    ));
    let mut bad = identity("eve", "pw", &[], &[]);
    bad.pubchans.push(String::new());
    assert!(matches!(
        ids.put(bad.clone()).await,
        Err(HpfeedsError::Identity(IdentityError::InvalidChannel { .. }))
    ));
    bad.pubchans.clear();
    bad.secret.clear();
    assert!(matches!(
        ids.add(bad).await,
        Err(HpfeedsError::Identity(IdentityError::EmptySecret(_)))
    ));
    assert_eq!(ids.list(), [identity("bob", "pw", &["a"], &[])]);
}

#[tokio::test]
async fn put_all_is_one_write_all_or_nothing() {
    let store = Arc::new(MemoryStore::default());
    let ids = open(store.clone(), HpfeedsOptions::default()).await;
    ids.add(identity("bob", "pw", &[], &[])).await.unwrap();
    let (seq, _) = store.snapshot(SNAPSHOT).unwrap().unwrap();

    let done = ids
        .put_all(vec![
            identity("carol", "1", &[], &[]),
            identity("bob", "2", &["x"], &[]),
            identity("ann", "3", &[], &[]),
            identity("carol", "4", &[], &[]),
        ])
        .await
        .unwrap();
    assert_eq!(
        done,
        PutAll {
            created: chans(&["ann", "carol"]),
            replaced: chans(&["bob"]),
        }
    );
    let (after, _) = store.snapshot(SNAPSHOT).unwrap().unwrap();
    assert_eq!(after, seq + 1, "one snapshot write");
    assert_eq!(ids.get("carol").unwrap().secret, "4", "the last one wins");
    assert_eq!(ids.get("bob").unwrap().secret, "2");

    let mut bad = identity("zed", "5", &[], &[]);
    bad.subchans.push("..".to_owned());
    let before = ids.list();
    assert!(
        ids.put_all(vec![identity("new", "6", &[], &[]), bad])
            .await
            .is_err()
    );
    assert_eq!(ids.list(), before, "nothing of a refused batch is stored");
    assert_eq!(store.snapshot(SNAPSHOT).unwrap().unwrap().0, after);
}

#[tokio::test]
async fn the_env_backend_comes_after_the_stored_identities() {
    let options = env(&[
        ("HPFEEDS_BOB_SECRET", "env-bob"),
        ("HPFEEDS_ENVY_SECRET", "env-envy"),
        ("HPFEEDS_ENVY_PUBCHANS", "a,b"),
        ("HPFEEDS_ENVY_OWNER", "acme"),
    ]);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let ids = open(store.clone(), options).await;
    ids.add(identity("bob", "stored-bob", &[], &[]))
        .await
        .unwrap();

    // Stored first: bob's stored secret wins over the environment's.
    assert_eq!(ids.lookup("bob").unwrap().secret, "stored-bob");
    let envy = ids.lookup("envy").expect("from the environment");
    assert_eq!(
        envy,
        Identity::new("envy", "env-envy", "acme", chans(&["a", "b"]), vec![]).unwrap()
    );
    // The env backend is neither listed nor gettable, and removing does not touch it.
    assert_eq!(ids.get("envy"), None);
    assert_eq!(ids.list().len(), 1);
    assert!(!ids.remove("envy").await.unwrap());
    assert!(ids.lookup("envy").is_some());
    // Once the stored bob is gone, the environment's bob answers.
    assert!(ids.remove("bob").await.unwrap());
    assert_eq!(ids.lookup("bob").unwrap().secret, "env-bob");
    assert_eq!(ids.lookup("nobody"), None);
    drop(ids);

    // Without the backend only stored identities exist.
    let ids = open(store, HpfeedsOptions::default()).await;
    assert_eq!(ids.lookup("envy"), None);
    assert_eq!(ids.lookup("bob"), None);
    assert!(format!("{:?}", HpfeedsOptions::with_process_env()).contains("true"));
}

#[tokio::test]
async fn secrets_are_not_in_debug_output() {
    let ids = open(Arc::new(MemoryStore::default()), HpfeedsOptions::default()).await;
    ids.add(identity("bob", "topsecret", &[], &[]))
        .await
        .unwrap();
    let shown = format!("{ids:?} {:?}", ids.list());
    assert!(!shown.contains("topsecret"), "{shown}");
}

#[tokio::test]
async fn a_corrupt_snapshot_is_refused() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    store
        .put_snapshot(SNAPSHOT, 1, b"not json", Durability::Sync)
        .unwrap();
    let err = HpfeedsIdentities::open(store, HpfeedsOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, HpfeedsError::Corrupt(_)), "{err:?}");
}

/// A `MemoryStore` whose snapshot writes fail while `fail` is set.
#[derive(Default)]
struct FailingSnapshots {
    inner: MemoryStore,
    fail: AtomicBool,
}

impl Store for FailingSnapshots {
    fn append(&self, records: &[Append<'_>], durability: Durability) -> Result<(), StoreError> {
        self.inner.append(records, durability)
    }
    fn read(&self, log: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.inner.read(log, from, limit)
    }
    fn bounds(&self, log: &str) -> Result<Option<LogBounds>, StoreError> {
        self.inner.bounds(log)
    }
    fn trim(&self, log: &str, before: u64, durability: Durability) -> Result<(), StoreError> {
        self.inner.trim(log, before, durability)
    }
    fn list_logs(&self, prefix: &str) -> Result<Vec<(String, LogBounds)>, StoreError> {
        self.inner.list_logs(prefix)
    }
    fn delete_log(&self, log: &str, durability: Durability) -> Result<(), StoreError> {
        self.inner.delete_log(log, durability)
    }
    fn put_snapshot(
        &self,
        name: &str,
        seq: u64,
        data: &[u8],
        durability: Durability,
    ) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Engine(Box::new(std::io::Error::other(
                "injected snapshot failure",
            ))));
        }
        self.inner.put_snapshot(name, seq, data, durability)
    }
    fn snapshot(&self, name: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.inner.snapshot(name)
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync()
    }
}

#[tokio::test]
async fn a_failed_write_leaves_the_identities_unchanged() {
    let store = Arc::new(FailingSnapshots::default());
    let ids = open(store.clone(), HpfeedsOptions::default()).await;
    ids.add(identity("bob", "pw", &["a"], &[])).await.unwrap();
    let (_, durable) = store.snapshot(SNAPSHOT).unwrap().unwrap();
    let before = ids.list();

    store.fail.store(true, Ordering::SeqCst);
    assert!(matches!(
        ids.add(identity("carol", "pw", &[], &[])).await,
        Err(HpfeedsError::Store(_))
    ));
    assert!(matches!(
        ids.put(identity("bob", "other", &[], &[])).await,
        Err(HpfeedsError::Store(_))
    ));
    assert!(matches!(
        ids.remove("bob").await,
        Err(HpfeedsError::Store(_))
    ));
    assert!(matches!(
        ids.put_all(vec![identity("dan", "pw", &[], &[])]).await,
        Err(HpfeedsError::Store(_))
    ));
    // Nothing became visible, and the durable snapshot is what it was.
    assert_eq!(ids.list(), before);
    assert_eq!(ids.lookup("carol"), None);
    assert_eq!(ids.lookup("bob").unwrap().secret, "pw");
    assert_eq!(store.snapshot(SNAPSHOT).unwrap().unwrap().1, durable);
    // A change that changes nothing writes nothing, so it succeeds even now.
    assert_eq!(
        ids.put(identity("bob", "pw", &["a"], &[])).await.unwrap(),
        Some(identity("bob", "pw", &["a"], &[]))
    );
    assert!(!ids.remove("nobody").await.unwrap());

    store.fail.store(false, Ordering::SeqCst);
    ids.add(identity("carol", "pw", &[], &[])).await.unwrap();
    drop(ids);
    wait_released(&store).await;
    let ids = open(store, HpfeedsOptions::default()).await;
    assert_eq!(ids.list().len(), 2);
}
