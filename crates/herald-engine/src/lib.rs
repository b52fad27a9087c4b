//! Herald's engine: the runtime that owns state and fans changes out to subscribers.
//!
//! The engine sits between the protocol adapters and the store. It is the only place that
//! mutates Herald's data, so the ordering and durability rules live here: a write is applied,
//! committed to the [`Store`](herald_store::Store) with group commit, and only then made visible
//! to readers and pushed to subscribers.
//!
//! What it is **not**: it speaks no wire protocol (adapters do) and stores nothing itself (the
//! store does).
//!
//! # Layout
//! - [`accounts`]: durable IorioDB-style users, grants and sessions ([`Accounts`] handle).
//! - [`hpfeeds`]: durable hpfeeds identities ([`HpfeedsIdentities`] handle), env backend.
//! - [`docs`]: the document actor ([`Docs`] handle, [`Write`], [`Subscriber`]).
//! - [`keyed`]: durable values by key, one small write per change ([`KeyedRecords`]).
//! - [`inbox`]: the per-connection coalescing mailbox ([`Inbox`]) updates are pushed into.
//! - [`topics`]: append-only event logs ([`Topics`] handle, [`Listener`], [`Delivery`]).
//! - [`retained`]: one kept message per topic for new subscribers ([`Retained`], MQTT's
//!   retained messages).
//!
//! # Example
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use herald_core::{Path, PathLimits};
//! use herald_engine::{Docs, DocsOptions, Write};
//! use herald_store::MemoryStore;
//!
//! let (docs, _task) = Docs::open(Arc::new(MemoryStore::default()), DocsOptions::default())
//!     .await
//!     .unwrap();
//! let path = Path::parse_url("/users/1", &PathLimits::default()).unwrap();
//! let sub = docs.subscriber();
//! assert_eq!(sub.subscribe(vec![path.clone()]).await.unwrap(), vec![None]);
//!
//! docs.write(Write::Put { path: path.clone(), value: serde_json::json!({"name": "ada"}) })
//!     .await
//!     .unwrap();
//! let updates = sub.inbox().recv().await;
//! assert_eq!(&updates[0].1[..], br#"{"name":"ada"}"#);
//! assert_eq!(&docs.get(path).await.unwrap().unwrap()[..], br#"{"name":"ada"}"#);
//! # });
//! ```

pub mod accounts;
pub mod docs;
mod durable;
pub mod hpfeeds;
pub mod inbox;
pub mod keyed;
pub mod retained;
pub mod topics;

pub use accounts::{Accounts, AccountsError, AccountsOptions};
pub use docs::{Docs, DocsError, DocsOptions, Pending, Subscriber, Write};
pub use hpfeeds::{HpfeedsError, HpfeedsIdentities, HpfeedsOptions};
pub use inbox::{Inbox, Update};
pub use keyed::KeyedRecords;
pub use retained::{Retained, RetainedError, RetainedMessage, RetainedOptions};
pub use topics::{
    Appended, DEFAULT_MEMORY_BUDGET, DEFAULT_WINDOW_BUDGET, Delivery, Event, EventParts, LastTopic,
    Listener, MIN_MEMORY_SHARE, NewEvent, PendingAppend, RememberedAppend, TopicInfo, Topics,
    TopicsError, TopicsOptions, TryEnqueueError, Wire, footprint,
};
