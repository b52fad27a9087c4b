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

pub mod broker;
pub mod frame;
pub mod tls;

pub use broker::{BrokerError, HpfeedsConfig, PUBLISH_SIZE_BUCKETS, serve};
pub use tls::TlsFiles;
