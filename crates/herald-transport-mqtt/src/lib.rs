//! The MQTT adapter: an MQTT 3.1.1 and 5.0 broker over Herald's topics.
//!
//! MQTT topic `a/b/c` is Herald topic `/a/b/c` (see [`names`](crate) rules below), so a
//! publish is appended to the topic's log, kept per its retention, and seen by subscribers of
//! every protocol; an event appended by another protocol reaches MQTT subscribers.
//!
//! The broker serves TCP ([`Mqtt::serve`]) and MQTT over WebSocket ([`ws::router`], `GET
//! /mqtt` with subprotocol `mqtt`, merged into the main HTTP listener); both are the same
//! broker, sessions included.
//!
//! # Behaviour
//! - **Authentication**: user name and password of a Herald user, or a session token (from
//!   `POST /sessions`) as the password. Without a user name the client is anonymous (the
//!   `anonymous` role's grants), accepted only when [`MqttConfig::allow_anonymous`] is set
//!   (the binary sets it on loopback listeners, or with `--allow-anonymous`).
//! - **Authorization**: publishing needs write on the topic, subscribing to a filter without
//!   wildcards needs read on it; a wildcard subscription is accepted and delivers only the
//!   topics the client may read. A refused publish is answered with reason 0x87 in a PUBACK or
//!   PUBREC (MQTT 5, QoS 1 or 2), or by closing the connection (QoS 0, and MQTT 3.1.1, which
//!   has no negative acknowledgement). A refused subscription gets 0x87 (MQTT 5) or 0x80.
//! - **Acknowledged means durable**: PUBACK and PUBREC are sent once the event is committed.
//! - **Sessions**: a session's messages wait in the topic logs while it is disconnected (no
//!   copy per session), and unacknowledged QoS 1 and 2 messages are resent with DUP on
//!   reconnect. Persistent sessions are saved to disk when their subscriptions change and when
//!   their connection ends, so they survive a restart; after a crash they resume from the last
//!   save (QoS 1 and 2 messages since may come again). MQTT 3.1.1 persistent sessions and
//!   long MQTT 5 expiry intervals end after [`MqttConfig::max_session_expiry`]. A will
//!   waiting for its delay is not kept across a restart. A session belongs to the user who
//!   made it: a client id whose session belongs to another user is refused (reason 0x85,
//!   3.1.1 return code 2) rather than handing over the session and its queued messages (MQTT
//!   itself only knows client ids; Mosquitto would let any user take the session over).
//! - **Retained messages** are stored durably beside the topics (`herald_engine::retained`).
//! - **Slow subscribers**: at most [`MqttConfig::send_buffer_bytes`] are queued per
//!   connection; beyond that the broker stops reading the session's topics, so memory stays
//!   bounded and messages wait in the logs. Messages that retention trims meanwhile are lost
//!   and counted (`herald_mqtt_messages_lost_total`).
//! - **Shared subscriptions** (`$share/{group}/{filter}`): each message goes to one member of
//!   the group, round-robin among the members with room in their queue. A QoS 1 or 2 message
//!   in flight to a member whose session ends is not given to another member.
//! - **Not supported yet**: enhanced authentication (AUTH).
//! - **Names**: Herald paths have no empty or dot segments, so MQTT topics with an empty
//!   level (`a//b`, `/a`, `a/`) or a `.`/`..` level are refused as invalid topic names.
//!   IorioDB's `bucket!stream` form is the stream `/bucket/stream`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::indexing_slicing))]

mod attrs;
mod broker;
mod conn;
mod names;
mod persist;
mod session;
mod shared;
pub mod ws;

pub use broker::{Mqtt, MqttConfig, OpenError};

/// The content type of MQTT publishes that do not give one (MQTT 5 Content Type).
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";
