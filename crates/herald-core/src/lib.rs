//! Herald's domain core: paths, the JSON document tree, permissions, topics and the subscription
//! indexes.
//!
//! Everything here is pure: no I/O, no async runtime, no clocks. The engine (`herald-engine`)
//! owns state built from these types; protocol adapters translate their wire formats into them.
//!
//! # Layout
//! - [`path`]: [`Path`], the validated name of anything in Herald's namespace, and its parsing
//!   limits.
//! - [`grant`]: [`Modes`], [`PathPattern`], [`Grant`] and [`Access`]: the one permission model.
//! - [`tree`]: operations on the JSON document tree and [`DocOp`], the logged write.
//! - [`index`]: [`PathIndex`], the subscription trie used by document fan-out.
//! - [`topic`]: event logs: the store record format ([`topic::encode_record`],
//!   [`topic::decode_record`]), [`Retention`] limits and the [`RetentionRules`] choosing them by
//!   path, and [`PatternIndex`], the trie of wildcard subscriptions used by topic fan-out.
//!
//! # Example
//! ```
//! use herald_core::{tree, Access, Grant, Modes, Path, PathLimits, PathPattern};
//! use serde_json::json;
//!
//! let limits = PathLimits::default();
//! let path = Path::parse_url("/users/123/status", &limits).unwrap();
//!
//! let mut doc = json!({});
//! tree::put(&mut doc, &path, json!("online"));
//! assert_eq!(doc, json!({"users": {"123": {"status": "online"}}}));
//!
//! let access = Access::Grants(vec![Grant {
//!     pattern: PathPattern::prefix(&Path::parse_url("/users", &limits).unwrap()),
//!     modes: Modes::READ,
//! }]);
//! assert!(access.allows(&path, Modes::READ));
//! assert!(!access.allows(&path, Modes::WRITE));
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::indexing_slicing))]

pub mod grant;
pub mod index;
pub mod path;
pub mod topic;
pub mod tree;

pub use grant::{Access, Grant, Modes, ModesError, PathPattern, PatternError, PatternSegment};
pub use index::PathIndex;
pub use path::{Path, PathError, PathLimits};
pub use topic::{PatternIndex, RecordError, RecordRef, Retention, RetentionRules};
pub use tree::DocOp;
