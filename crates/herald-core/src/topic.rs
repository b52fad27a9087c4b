//! Topics: append-only event logs named by a [`Path`](crate::Path), and the pure parts of
//! handling them.
//!
//! - [`encode_record`] (or [`encode_record_into`], into a shared buffer) and [`decode_record`]:
//!   the byte format of one event in a topic's store log.
//! - [`Retention`] and [`RetentionRules`]: how much of a topic is kept, configured per path
//!   pattern, and the arithmetic eviction needs ([`trim_point_by_count`]).
//! - [`PatternIndex`]: wildcard subscriptions (`/a/+/#`), found by the topic an event is
//!   appended to.
//!
//! The engine (`herald-engine`) owns the logs, the clock and the subscribers; nothing here does
//! I/O.

mod pattern_index;
mod record;
mod retention;

pub use pattern_index::PatternIndex;
pub use record::{
    MAX_ATTRS_LEN, MAX_CONTENT_TYPE_LEN, MAX_ORIGIN_LEN, RECORD_HEADER_LEN, RECORD_VERSION,
    RECORD_VERSION_ATTRS, RECORD_VERSION_ORIGIN, RecordError, RecordRef, decode_record,
    encode_record, encode_record_into,
};
pub use retention::{Retention, RetentionRules, trim_point_by_count};
