//! The durable hpfeeds identities: persistence across reopen (memory and fjall), the `env`
//! backend behind the stored identities, and that a failed store write changes nothing.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Backend, GatedStore, wait_released};
use herald_auth::hpfeeds::{Identity, IdentityError, auth_hash};
use herald_engine::hpfeeds::{PutAll, SNAPSHOT};
use herald_engine::{HpfeedsError, HpfeedsIdentities, HpfeedsOptions};
use herald_store::{Durability, MemoryStore, Store};

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

#[tokio::test]
async fn a_failed_write_leaves_the_identities_unchanged() {
    let store = Arc::new(GatedStore::new_open());
    let ids = open(store.clone(), HpfeedsOptions::default()).await;
    ids.add(identity("bob", "pw", &["a"], &[])).await.unwrap();
    let (_, durable) = store.snapshot(SNAPSHOT).unwrap().unwrap();
    let before = ids.list();

    store.fail_snapshots.store(true, Ordering::SeqCst);
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

    store.fail_snapshots.store(false, Ordering::SeqCst);
    ids.add(identity("carol", "pw", &[], &[])).await.unwrap();
    drop(ids);
    wait_released(&store).await;
    let ids = open(store, HpfeedsOptions::default()).await;
    assert_eq!(ids.list().len(), 2);
}
