//! The packets: one struct per packet shape, and [`Packet`], the sum of all of them.

use bytes::Bytes;

use crate::{Properties, Protocol, QoS};

/// The will message of a CONNECT: published by the server when the connection is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// The topic to publish to.
    pub topic: String,
    /// The message (at most 65535 bytes on the wire).
    pub payload: Bytes,
    /// The QoS to publish with.
    pub qos: QoS,
    /// Whether to retain the message.
    pub retain: bool,
    /// Will properties (V5): payload format, message expiry, content type, response topic,
    /// correlation data, will delay interval, user properties.
    pub properties: Properties,
}

/// CONNECT: the first packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The protocol the client speaks. When encoding, it decides the layout (the `protocol`
    /// argument of [`encode`](crate::encode) is not used for CONNECT).
    pub protocol: Protocol,
    /// Clean Start (V5), "clean session" in 3.1.1.
    pub clean_start: bool,
    /// Keep alive in seconds, 0 = none.
    pub keep_alive: u16,
    /// CONNECT properties (V5).
    pub properties: Properties,
    /// The client identifier; may be empty.
    pub client_id: String,
    /// The will message, if any.
    pub will: Option<Will>,
    /// The user name, if any.
    pub username: Option<String>,
    /// The password, if any. On V311 a password requires a user name: encoding leaves out a
    /// password without one.
    pub password: Option<Bytes>,
}

/// CONNACK: the server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Whether the server had a session for the client.
    pub session_present: bool,
    /// On V5 a reason code (0x00 success, 0x80.. errors, see [`reason`](crate::reason)); on
    /// V311 the return code 0..=5 (see [`connack_code_v311`](crate::connack_code_v311)).
    pub code: u8,
    /// CONNACK properties (V5).
    pub properties: Properties,
}

/// PUBLISH: an application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Whether this is a re-delivery; encoding writes it only for QoS 1 and 2.
    pub dup: bool,
    /// The QoS of this delivery.
    pub qos: QoS,
    /// The retain flag.
    pub retain: bool,
    /// The topic name; may be empty on V5 when a topic alias is given. The codec checks only
    /// that it is a string: see [`valid_topic_name`](crate::valid_topic_name).
    pub topic: String,
    /// 0 for QoS 0 (not on the wire); non-zero otherwise (0 on the wire with QoS>0 is
    /// malformed).
    pub packet_id: u16,
    /// PUBLISH properties (V5).
    pub properties: Properties,
    /// The message, a zero-copy slice of the received bytes when decoded.
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP share this shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The packet identifier acknowledged.
    pub packet_id: u16,
    /// The reason code (V5; always 0 on V311).
    pub reason: u8,
    /// Properties (V5): reason string, user properties.
    pub properties: Properties,
}

/// The options of one subscription in a SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    /// The maximum QoS the client accepts.
    pub qos: QoS,
    /// No Local (V5): do not send the client its own messages.
    pub no_local: bool,
    /// Retain As Published (V5): keep the retain flag of forwarded messages.
    pub retain_as_published: bool,
    /// Retain Handling (V5): 0 send retained messages, 1 only for a new subscription, 2 never.
    pub retain_handling: u8,
}

impl SubOptions {
    /// Options with `qos` and every V5 option off (what a V311 SUBSCRIBE decodes to).
    pub fn new(qos: QoS) -> Self {
        Self {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }
    }
}

/// SUBSCRIBE: a client's request for subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// The packet identifier.
    pub packet_id: u16,
    /// SUBSCRIBE properties (V5): subscription identifier, user properties.
    pub properties: Properties,
    /// The topic filters and their options; at least one. The codec checks only that filters
    /// are strings: see [`valid_topic_filter`](crate::valid_topic_filter).
    pub filters: Vec<(String, SubOptions)>,
}

/// SUBACK: the server's answer to SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// The packet identifier of the SUBSCRIBE.
    pub packet_id: u16,
    /// SUBACK properties (V5): reason string, user properties.
    pub properties: Properties,
    /// One code per filter, at least one. V311: 0, 1, 2 or 0x80.
    pub reasons: Vec<u8>,
}

/// UNSUBSCRIBE: a client's request to remove subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// The packet identifier.
    pub packet_id: u16,
    /// UNSUBSCRIBE properties (V5): user properties.
    pub properties: Properties,
    /// The topic filters; at least one.
    pub filters: Vec<String>,
}

/// UNSUBACK: the server's answer to UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// The packet identifier of the UNSUBSCRIBE.
    pub packet_id: u16,
    /// UNSUBACK properties (V5): reason string, user properties.
    pub properties: Properties,
    /// V5: one reason code per filter, at least one. V311: always empty (not encoded).
    pub reasons: Vec<u8>,
}

/// DISCONNECT: the end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// The reason code (V5); always 0 on V311.
    pub reason: u8,
    /// DISCONNECT properties (V5): session expiry interval, reason string, server reference,
    /// user properties.
    pub properties: Properties,
}

/// AUTH: extended authentication exchange (V5 only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// The reason code: 0x00 success, 0x18 continue authentication, 0x19 re-authenticate.
    pub reason: u8,
    /// AUTH properties: authentication method and data, reason string, user properties.
    pub properties: Properties,
}

/// Any MQTT control packet.
// The variants are unboxed on purpose (the API matches on `Packet::Connect(Connect)`): a
// CONNECT holds two `Properties`, so every `Packet` takes about 840 bytes, moved rarely.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (type 1).
    Connect(Connect),
    /// CONNACK (type 2).
    ConnAck(ConnAck),
    /// PUBLISH (type 3).
    Publish(Publish),
    /// PUBACK (type 4).
    PubAck(Ack),
    /// PUBREC (type 5).
    PubRec(Ack),
    /// PUBREL (type 6).
    PubRel(Ack),
    /// PUBCOMP (type 7).
    PubComp(Ack),
    /// SUBSCRIBE (type 8).
    Subscribe(Subscribe),
    /// SUBACK (type 9).
    SubAck(SubAck),
    /// UNSUBSCRIBE (type 10).
    Unsubscribe(Unsubscribe),
    /// UNSUBACK (type 11).
    UnsubAck(UnsubAck),
    /// PINGREQ (type 12).
    PingReq,
    /// PINGRESP (type 13).
    PingResp,
    /// DISCONNECT (type 14).
    Disconnect(Disconnect),
    /// AUTH (type 15, V5 only).
    Auth(Auth),
}

impl Packet {
    /// The packet's name for logs: "CONNECT", "PUBLISH", ...
    pub fn kind(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}
