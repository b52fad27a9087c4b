//! Retained messages: set, replace, clear, match, limits, and what survives a reopen of a real
//! store.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::p;
use herald_core::{PathLimits, PathPattern};
use herald_engine::retained::{Retained, RetainedError, RetainedMessage, RetainedOptions};
use herald_store::{MemoryStore, Store};
use herald_store_fjall::FjallStore;

fn msg(data: &'static [u8]) -> RetainedMessage {
    RetainedMessage {
        t_ms: 42,
        content_type: Arc::from("text/plain"),
        origin: Arc::from("dev-1"),
        attrs: Bytes::from_static(b"\x01"),
        data: Bytes::from_static(data),
    }
}

fn pat(s: &str) -> PathPattern {
    PathPattern::parse(s, &PathLimits::default()).unwrap()
}

#[tokio::test]
async fn set_replace_clear_and_match() {
    let r = Retained::open(Arc::new(MemoryStore::default()), RetainedOptions::default())
        .await
        .unwrap();
    assert!(r.is_empty());
    r.set(&p("/a/b"), Some(msg(b"one"))).await.unwrap();
    r.set(&p("/a/c"), Some(msg(b"two"))).await.unwrap();
    r.set(&p("/a/b"), Some(msg(b"three"))).await.unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r.get(&p("/a/b")).unwrap().data, &b"three"[..]);
    let all: Vec<_> = r
        .matching(&pat("/a/+"))
        .into_iter()
        .map(|(path, m)| (path.to_string(), m.data.clone()))
        .collect();
    assert_eq!(
        all,
        [
            ("/a/b".to_owned(), Bytes::from_static(b"three")),
            ("/a/c".to_owned(), Bytes::from_static(b"two"))
        ]
    );
    assert!(r.matching(&pat("/b/#")).is_empty());
    r.set(&p("/a/b"), None).await.unwrap();
    r.set(&p("/never"), None).await.unwrap();
    assert!(r.get(&p("/a/b")).is_none());
    assert_eq!(r.len(), 1);
}

#[tokio::test]
async fn limits_are_enforced() {
    let options = RetainedOptions {
        max_messages: 2,
        max_bytes: 10,
    };
    let r = Retained::open(Arc::new(MemoryStore::default()), options)
        .await
        .unwrap();
    r.set(&p("/a"), Some(msg(b"12345"))).await.unwrap();
    r.set(&p("/b"), Some(msg(b"1234"))).await.unwrap();
    assert!(matches!(
        r.set(&p("/c"), Some(msg(b"1"))).await,
        Err(RetainedError::Full { .. })
    ));
    // Replacing counts the new size instead of the old one.
    r.set(&p("/a"), Some(msg(b"123456"))).await.unwrap();
    assert!(matches!(
        r.set(&p("/a"), Some(msg(b"1234567"))).await,
        Err(RetainedError::Full { .. })
    ));
    assert_eq!(r.get(&p("/a")).unwrap().data, &b"123456"[..]);
    r.set(&p("/b"), None).await.unwrap();
    r.set(&p("/c"), Some(msg(b"1"))).await.unwrap();
}

#[tokio::test]
async fn survives_reopen_of_a_real_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store: Arc<dyn Store> = Arc::new(FjallStore::open(dir.path()).unwrap());
        let r = Retained::open(store.clone(), RetainedOptions::default())
            .await
            .unwrap();
        r.set(&p("/s/1"), Some(msg(b"old"))).await.unwrap();
        r.set(&p("/s/1"), Some(msg(b"new"))).await.unwrap();
        r.set(&p("/s/2"), Some(msg(b"gone"))).await.unwrap();
        r.set(&p("/s/2"), None).await.unwrap();
        // Cleared, then retained again: the log starts over.
        r.set(&p("/s/3"), Some(msg(b"x"))).await.unwrap();
        r.set(&p("/s/3"), None).await.unwrap();
        r.set(&p("/s/3"), Some(msg(b"back"))).await.unwrap();
        r.set(&p("/odd/a%2Fb"), Some(msg(b"slash"))).await.unwrap();
        store.sync().unwrap();
    }
    let store: Arc<dyn Store> = Arc::new(FjallStore::open(dir.path()).unwrap());
    let r = Retained::open(store, RetainedOptions::default())
        .await
        .unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(*r.get(&p("/s/1")).unwrap(), msg(b"new"));
    assert!(r.get(&p("/s/2")).is_none());
    assert_eq!(r.get(&p("/s/3")).unwrap().data, &b"back"[..]);
    assert_eq!(r.get(&p("/odd/a%2Fb")).unwrap().data, &b"slash"[..]);
    // Updates after the reopen go on from the stored sequence numbers.
    r.set(&p("/s/1"), Some(msg(b"newer"))).await.unwrap();
    assert_eq!(r.get(&p("/s/1")).unwrap().data, &b"newer"[..]);
}
