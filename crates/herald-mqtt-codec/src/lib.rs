//! A pure (no I/O) MQTT 3.1.1 and MQTT 5.0 packet codec.
//!
//! It turns bytes into [`Packet`]s and back, for Herald's MQTT broker, for tests acting as
//! clients, for the load generator and for the fuzz target. It knows nothing of sockets,
//! sessions or the engine.
//!
//! - [`Decoder`] decodes a byte stream incrementally: it reads one packet from the front of a
//!   `BytesMut` when the packet is complete, zero-copy (payloads and binary fields are slices
//!   of the received bytes). It holds the connection's [`Protocol`], learnt from its CONNECT,
//!   and its maximum packet size. [`decode_packet`] decodes one packet from a slice.
//! - [`encode`] writes a packet for a protocol; [`encoded_len`] says how long it would be.
//! - [`topic`] validates topic names and filters, parses shared subscriptions and matches.
//! - [`reason`] names the MQTT 5 reason codes; [`connack_code_v311`] maps them to 3.1.1
//!   CONNACK return codes and [`DecodeError::reason_code`] answers a decoding error.
//!
//! # Example
//! ```
//! use herald_mqtt_codec::{
//!     BytesMut, Connect, Decoder, Packet, Properties, PropertyValues, Protocol, Publish, QoS,
//!     encode, encoded_len,
//! };
//!
//! let connect = Packet::Connect(Connect {
//!     protocol: Protocol::V5,
//!     clean_start: true,
//!     keep_alive: 60,
//!     properties: Properties::from(PropertyValues {
//!         session_expiry_interval: Some(300),
//!         ..PropertyValues::default()
//!     }),
//!     client_id: "c1".into(),
//!     will: None,
//!     username: None,
//!     password: None,
//! });
//! let publish = Packet::Publish(Publish {
//!     dup: false,
//!     qos: QoS::AtLeastOnce,
//!     retain: false,
//!     topic: "sensors/1".into(),
//!     packet_id: 7,
//!     properties: Properties::default(),
//!     payload: "21.5".into(),
//! });
//!
//! let mut wire = BytesMut::new();
//! encode(&connect, Protocol::V5, &mut wire);
//! encode(&publish, Protocol::V5, &mut wire);
//! assert_eq!(wire.len(), encoded_len(&connect, Protocol::V5) + encoded_len(&publish, Protocol::V5));
//!
//! // The server side: the protocol is unknown until the CONNECT.
//! let mut decoder = Decoder::new(1024 * 1024);
//! let mut received = wire.split_to(3); // a partial packet: nothing yet
//! assert_eq!(decoder.decode(&mut received), Ok(None));
//! received.unsplit(wire);
//! assert_eq!(decoder.decode(&mut received), Ok(Some(connect)));
//! assert_eq!(decoder.protocol(), Some(Protocol::V5));
//! assert_eq!(decoder.decode(&mut received), Ok(Some(publish)));
//! assert!(received.is_empty());
//! ```
//!
//! # What is checked
//! Decoding checks what the specifications make a Malformed Packet or a Protocol Error and
//! the codec can see in one packet (see [`DecodeError`]):
//! - the fixed header: packet type, reserved flags (0010 for PUBREL, SUBSCRIBE, UNSUBSCRIBE),
//!   PUBLISH QoS 3 and DUP with QoS 0, a minimal remaining length of at most 4 bytes, the
//!   maximum packet size (as soon as the length is known, before the body is buffered) and,
//!   before the protocol is known, that the packet is a CONNECT;
//! - every field's presence (a length beyond the packet is malformed) and no bytes after the
//!   last field; strings are UTF-8 without U+0000; packet identifiers are not 0 where present;
//! - CONNECT: protocol name and level ("MQTT" 4 or 5, "MQIsdp" 3), the reserved flag, will
//!   QoS and retain only with a will, a V311 password only with a user name, authentication
//!   data only with a method;
//! - SUBSCRIBE options (reserved bits, QoS 3, retain handling 3), at least one filter in
//!   SUBSCRIBE and UNSUBSCRIBE and one code in SUBACK and V5 UNSUBACK, the reserved CONNACK
//!   flags, AUTH only on V5;
//! - properties (V5): a known identifier permitted in the packet (MQTT 5.0 table 2-4), at most
//!   once (except user properties, and subscription identifiers in PUBLISH), and the values
//!   the specification restricts (0/1 flags, maximum QoS 0/1, non-zero receive maximum,
//!   maximum packet size, topic alias and subscription identifier).
//!
//! # Limits
//! Left to the caller: the protocol's state machine (a second CONNECT, packet identifier
//! bookkeeping, topic aliases, a V5 PUBLISH with an empty topic and no alias), topic name and
//! filter validity (use [`topic`]), which reason codes are valid in which packet, and which
//! packets flow in which direction. Every packet must fit in memory: the maximum packet size
//! given to the [`Decoder`] is the guard against large announcements. Encoding cannot fail;
//! see [`encode`] for what it keeps well-formed and what the caller must.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::indexing_slicing))]

mod decode;
mod encode;
mod error;
mod packet;
mod props;
pub mod reason;
pub mod topic;
mod types;
mod wire;

pub use bytes::{Bytes, BytesMut};

pub use decode::{Decoder, decode_packet};
pub use encode::{encode, encode_plain_publish, encoded_len, plain_publish_len};
pub use error::DecodeError;
pub use packet::{
    Ack, Auth, ConnAck, Connect, Disconnect, Packet, Publish, SubAck, SubOptions, Subscribe,
    UnsubAck, Unsubscribe, Will,
};
pub use props::{Properties, PropertyValues};
pub use topic::{parse_shared, topic_matches, valid_topic_filter, valid_topic_name};
pub use types::{Protocol, QoS, connack_code_v311};
