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
//! - `broker` (still to come): the TCP listener, authentication against the engine's hpfeeds
//!   identities, and the publish / subscribe loop.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::indexing_slicing))]

pub mod frame;
