//! Encoding: [`encode`] and [`encoded_len`] share one writer, run once into a byte counter and
//! once into the buffer, so they always agree.

use bytes::BytesMut;

use crate::props::{self, Ctx};
use crate::wire::{Sink, measure, varint_len};
use crate::{
    Ack, Auth, ConnAck, Connect, Disconnect, Packet, Properties, Protocol, Publish, QoS, SubAck,
    SubOptions, Subscribe, UnsubAck, Unsubscribe,
};

/// Appends the packet's wire form to `out`. On V311 properties and v5-only fields are not
/// written (reason codes of acks are dropped, SUBACK codes written as-is, UNSUBACK has no
/// payload, DISCONNECT is 2 bytes). On V5, PUBACK/PUBREC/PUBREL/PUBCOMP/DISCONNECT use the
/// short forms when reason is 0 and properties empty (the decoder accepts both short and long
/// forms); so does AUTH (2 bytes), and the acks and DISCONNECT leave out an empty property
/// list after a non-zero reason.
///
/// Encoding cannot fail, so it keeps what it writes well-formed where it can: properties a
/// packet does not permit are left out, strings and binary fields longer than 65535 bytes are
/// truncated, DUP is written only for QoS 1 and 2, and a V311 password without a user name is
/// left out. Values the caller must keep valid: packet identifiers (non-zero where required),
/// property values (e.g. a topic alias of 0), topic names and filters, and the packet size
/// (at most 268,435,455 bytes after the fixed header). A CONNECT is laid out for its own
/// [`Connect::protocol`]; an AUTH is always written in its V5 form (there is none in V311).
pub fn encode(packet: &Packet, protocol: Protocol, out: &mut BytesMut) {
    let body = body_len(packet, protocol);
    let remaining = u32::try_from(body).unwrap_or(u32::MAX);
    out.reserve(1 + varint_len(remaining) + body);
    out.put_u8(first_byte(packet));
    out.put_varint(remaining);
    write_body(packet, protocol, out);
}

/// A QoS 0 PUBLISH without properties (in MQTT 5, an empty property list): what a broker
/// sends most, written without building a [`Packet`] or measuring it twice. The bytes are
/// those [`encode`] writes for the same packet. Returns how many were written.
pub fn encode_plain_publish(
    topic: &str,
    retain: bool,
    payload: &[u8],
    protocol: Protocol,
    out: &mut BytesMut,
) -> usize {
    let body = plain_publish_body(topic, payload, protocol);
    let start = out.len();
    out.reserve(1 + varint_len(u32::try_from(body).unwrap_or(u32::MAX)) + body);
    out.put_u8(0x30 | u8::from(retain));
    out.put_varint(u32::try_from(body).unwrap_or(u32::MAX));
    out.put_str(topic);
    if protocol == Protocol::V5 {
        out.put_u8(0);
    }
    out.put(payload);
    out.len() - start
}

/// The number of bytes [`encode_plain_publish`] writes.
pub fn plain_publish_len(topic: &str, payload: &[u8], protocol: Protocol) -> usize {
    let body = plain_publish_body(topic, payload, protocol);
    1 + varint_len(u32::try_from(body).unwrap_or(u32::MAX)) + body
}

fn plain_publish_body(topic: &str, payload: &[u8], protocol: Protocol) -> usize {
    measure(|c| c.put_str(topic)) + usize::from(protocol == Protocol::V5) + payload.len()
}

/// The number of bytes `encode` would write (so the broker can enforce the client's Maximum
/// Packet Size before sending, e.g. by dropping reason_string / user_properties or skipping the
/// message).
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    let body = body_len(packet, protocol);
    1 + varint_len(u32::try_from(body).unwrap_or(u32::MAX)) + body
}

fn body_len(packet: &Packet, protocol: Protocol) -> usize {
    measure(|c| write_body(packet, protocol, c))
}

/// The packet type and flags.
fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => {
            let dup = p.dup && p.qos != QoS::AtMostOnce;
            0x30 | u8::from(dup) << 3 | (p.qos as u8) << 1 | u8::from(p.retain)
        }
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xa2,
        Packet::UnsubAck(_) => 0xb0,
        Packet::PingReq => 0xc0,
        Packet::PingResp => 0xd0,
        Packet::Disconnect(_) => 0xe0,
        Packet::Auth(_) => 0xf0,
    }
}

/// Writes everything after the fixed header.
fn write_body<S: Sink>(packet: &Packet, protocol: Protocol, out: &mut S) {
    let v5 = protocol == Protocol::V5;
    match packet {
        Packet::Connect(c) => write_connect(c, out),
        Packet::ConnAck(a) => write_connack(a, v5, out),
        Packet::Publish(p) => write_publish(p, v5, out),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            write_ack(a, v5, out)
        }
        Packet::Subscribe(s) => write_subscribe(s, v5, out),
        Packet::SubAck(s) => write_suback(s, v5, out),
        Packet::Unsubscribe(u) => write_unsubscribe(u, v5, out),
        Packet::UnsubAck(u) => write_unsuback(u, v5, out),
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => write_disconnect(d, v5, out),
        Packet::Auth(a) => write_auth(a, out),
    }
}

fn props_if<S: Sink>(p: &Properties, v5: bool, ctx: Ctx, out: &mut S) {
    if v5 {
        props::encode(p, ctx, out);
    }
}

/// A reason code and properties, in the shortest form: nothing when the reason is 0 and there
/// are no properties, the reason alone when there are no properties.
fn short_reason<S: Sink>(reason: u8, p: &Properties, ctx: Ctx, out: &mut S) {
    let has_props = props::body_len(p, ctx) > 0;
    if reason != 0 || has_props {
        out.put_u8(reason);
    }
    if has_props {
        props::encode(p, ctx, out);
    }
}

fn write_connect<S: Sink>(c: &Connect, out: &mut S) {
    let v5 = c.protocol == Protocol::V5;
    let password = c.password.as_ref().filter(|_| v5 || c.username.is_some());
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(will) = &c.will {
        flags |= 0x04 | (will.qos as u8) << 3 | u8::from(will.retain) << 5;
    }
    if password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    out.put_str("MQTT");
    out.put_u8(c.protocol.level());
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    props_if(&c.properties, v5, Ctx::Connect, out);
    out.put_str(&c.client_id);
    if let Some(will) = &c.will {
        props_if(&will.properties, v5, Ctx::Will, out);
        out.put_str(&will.topic);
        out.put_binary(&will.payload);
    }
    if let Some(username) = &c.username {
        out.put_str(username);
    }
    if let Some(password) = password {
        out.put_binary(password);
    }
}

fn write_connack<S: Sink>(a: &ConnAck, v5: bool, out: &mut S) {
    out.put_u8(u8::from(a.session_present));
    out.put_u8(a.code);
    props_if(&a.properties, v5, Ctx::ConnAck, out);
}

fn write_publish<S: Sink>(p: &Publish, v5: bool, out: &mut S) {
    out.put_str(&p.topic);
    if p.qos != QoS::AtMostOnce {
        out.put_u16(p.packet_id);
    }
    props_if(&p.properties, v5, Ctx::Publish, out);
    out.put(&p.payload);
}

fn write_ack<S: Sink>(a: &Ack, v5: bool, out: &mut S) {
    out.put_u16(a.packet_id);
    if v5 {
        short_reason(a.reason, &a.properties, Ctx::Ack, out);
    }
}

/// The subscription options byte; V311 has only the QoS.
fn options_byte(o: &SubOptions, v5: bool) -> u8 {
    let qos = o.qos as u8;
    if !v5 {
        return qos;
    }
    qos | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling & 0b11) << 4
}

fn write_subscribe<S: Sink>(s: &Subscribe, v5: bool, out: &mut S) {
    out.put_u16(s.packet_id);
    props_if(&s.properties, v5, Ctx::Subscribe, out);
    for (filter, options) in &s.filters {
        out.put_str(filter);
        out.put_u8(options_byte(options, v5));
    }
}

fn write_suback<S: Sink>(s: &SubAck, v5: bool, out: &mut S) {
    out.put_u16(s.packet_id);
    props_if(&s.properties, v5, Ctx::SubAck, out);
    out.put(&s.reasons);
}

fn write_unsubscribe<S: Sink>(u: &Unsubscribe, v5: bool, out: &mut S) {
    out.put_u16(u.packet_id);
    props_if(&u.properties, v5, Ctx::Unsubscribe, out);
    for filter in &u.filters {
        out.put_str(filter);
    }
}

fn write_unsuback<S: Sink>(u: &UnsubAck, v5: bool, out: &mut S) {
    out.put_u16(u.packet_id);
    if v5 {
        props::encode(&u.properties, Ctx::UnsubAck, out);
        out.put(&u.reasons);
    }
}

fn write_disconnect<S: Sink>(d: &Disconnect, v5: bool, out: &mut S) {
    if v5 {
        short_reason(d.reason, &d.properties, Ctx::Disconnect, out);
    }
}

fn write_auth<S: Sink>(a: &Auth, out: &mut S) {
    if a.reason != 0 || props::body_len(&a.properties, Ctx::Auth) > 0 {
        out.put_u8(a.reason);
        props::encode(&a.properties, Ctx::Auth, out);
    }
}
