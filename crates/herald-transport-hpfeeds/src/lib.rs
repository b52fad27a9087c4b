//! The hpfeeds adapter: Herald as a drop-in replacement for the hpfeeds broker
//! (`seed-contracts.md` section 3).
//!
//! hpfeeds channel `c` is Herald topic `/hpfeeds/c`: a PUBLISH appends an event to that topic,
//! and a SUBSCRIBE delivers the topic's new events as PUBLISH frames, whichever protocol
//! appended them. The crate only translates; the engine owns topics and identities.
//!
//! # Layout
//! - [`frame`]: the wire codec, pure (no I/O): framing, the per-opcode size limits, and the
//!   fields of each opcode. It checks a frame's announced length before any of its body is
//!   buffered.
//! - [`broker`]: the TCP (or TLS) listener ([`serve`]), authentication against the engine's hpfeeds
//!   identities, the publish / subscribe loop, back-pressure and metrics. Its documentation
//!   lists every behaviour and where it departs from the Python broker.
//! - [`admin`]: the HTTP admin API of the identities ([`admin::router`], merged into the
//!   main `--http` listener): list, show, create or replace, and remove identities, for
//!   admin sessions only.
//!
//!   | Method | Path | Answer |
//!   |---|---|---|
//!   | GET | `/hpfeeds/identities` | 200 `{"identities": [..]}` (never secrets) |
//!   | GET | `/hpfeeds/identities/{ident}` | 200 the identity, 404 |
//!   | PUT | `/hpfeeds/identities/{ident}` | body `{"secret","owner"?,"pubchans"?,"subchans"?}`: 201 created, 200 replaced, 400 invalid |
//!   | DELETE | `/hpfeeds/identities/{ident}` | 204, 404 |
//!
//!   No or an invalid session token is 401, a non-admin session 403.
//! - [`tls`]: the certificate and key of a TLS listener ([`HpfeedsConfig::tls`]), reloaded
//!   when their files change.
//!
//! # Example
//! ```no_run
//! # async fn run(topics: herald_engine::Topics, identities: herald_engine::HpfeedsIdentities)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use herald_transport_hpfeeds::{HpfeedsConfig, serve};
//! use tokio_util::sync::CancellationToken;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:10000").await?;
//! let shutdown = CancellationToken::new();
//! serve(listener, topics, identities, HpfeedsConfig::default(), shutdown).await?;
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::indexing_slicing))]

pub mod admin;
pub mod broker;
pub mod frame;

pub use broker::{BrokerError, HpfeedsConfig, PUBLISH_SIZE_BUCKETS, serve};
pub use herald_tls as tls;
pub use herald_tls::TlsFiles;
