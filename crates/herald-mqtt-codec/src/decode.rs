//! Decoding: the fixed header (checked as soon as its bytes are present) and each packet's
//! body, for a known protocol.

use bytes::{Bytes, BytesMut};

use crate::props::{self, Ctx};
use crate::wire::{Reader, Varint, malformed, protocol_error, read_varint};
use crate::{
    Ack, Auth, ConnAck, Connect, DecodeError, Disconnect, Packet, Properties, Protocol, Publish,
    QoS, SubAck, SubOptions, Subscribe, UnsubAck, Unsubscribe, Will,
};

/// Incremental decoder state: the connection's protocol (unknown until its CONNECT) and its
/// maximum packet size.
#[derive(Debug, Clone)]
pub struct Decoder {
    protocol: Option<Protocol>,
    max_packet_size: u32,
}

impl Decoder {
    /// Before CONNECT the protocol is unknown; `max_packet_size` bounds every packet (whole
    /// packet bytes).
    pub fn new(max_packet_size: u32) -> Self {
        Self {
            protocol: None,
            max_packet_size,
        }
    }

    /// Set once the CONNECT is decoded (decode() also sets it itself when it decodes a
    /// CONNECT). A client sets it before reading the CONNACK.
    pub fn set_protocol(&mut self, p: Protocol) {
        self.protocol = Some(p);
    }

    /// The protocol of the connection, once known.
    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    /// Changes the maximum packet size (whole packet bytes) for the packets still to come.
    pub fn set_max_packet_size(&mut self, max: u32) {
        self.max_packet_size = max;
    }

    /// The maximum packet size in force (whole packet bytes).
    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// Decodes one packet from the front of `buf`, consuming exactly its bytes (use
    /// `split_to(..).freeze()` so payloads are zero-copy `Bytes` slices). Ok(None) when more
    /// bytes are needed (nothing consumed).
    ///
    /// While the protocol is unknown, only CONNECT is accepted (anything else: Protocol error).
    /// The first byte is checked as soon as it is present, and the size check happens as soon as
    /// the remaining-length varint is complete. A remaining length varint longer than 4 bytes is
    /// Malformed. On error nothing is consumed either; the connection is not expected to go on.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(header) = FixedHeader::parse(buf, self.protocol, self.max_packet_size)? else {
            return Ok(None);
        };
        if buf.len() < header.total {
            return Ok(None);
        }
        let packet = buf.split_to(header.total).freeze();
        match decode_body(&header, packet.slice(header.len..), self.protocol) {
            Ok(decoded) => {
                if let Packet::Connect(connect) = &decoded {
                    self.protocol = Some(connect.protocol);
                }
                Ok(Some(decoded))
            }
            Err(err) => {
                // Put the bytes back (a copy, on this rare path only).
                let mut restored = BytesMut::with_capacity(packet.len() + buf.len());
                restored.extend_from_slice(&packet);
                restored.extend_from_slice(buf);
                *buf = restored;
                Err(err)
            }
        }
    }
}

/// One-shot helper: decode exactly one packet from a complete buffer for a known protocol
/// (None = expect CONNECT). Returns the packet and the number of bytes it took, or Ok(None)
/// when `bytes` holds less than a whole packet. Binary fields are copied out of `bytes`.
pub fn decode_packet(
    bytes: &[u8],
    protocol: Option<Protocol>,
    max_packet_size: u32,
) -> Result<Option<(Packet, usize)>, DecodeError> {
    let Some(header) = FixedHeader::parse(bytes, protocol, max_packet_size)? else {
        return Ok(None);
    };
    let Some(body) = bytes.get(header.len..header.total) else {
        return Ok(None);
    };
    let packet = decode_body(&header, Bytes::copy_from_slice(body), protocol)?;
    Ok(Some((packet, header.total)))
}

/// A checked fixed header.
#[derive(Debug)]
struct FixedHeader {
    /// The first byte: packet type and flags.
    first: u8,
    /// The length of the fixed header itself (2 to 5 bytes).
    len: usize,
    /// The length of the whole packet.
    total: usize,
}

impl FixedHeader {
    /// Parses the fixed header at the front of `buf`: Ok(None) until it is complete, an error
    /// as soon as the bytes present show one.
    fn parse(
        buf: &[u8],
        protocol: Option<Protocol>,
        max: u32,
    ) -> Result<Option<FixedHeader>, DecodeError> {
        let Some((&first, rest)) = buf.split_first() else {
            return Ok(None);
        };
        check_first_byte(first, protocol)?;
        let Varint::Done(remaining, varint_len) = read_varint(rest)? else {
            return Ok(None);
        };
        let len = 1 + varint_len;
        let size = len as u64 + u64::from(remaining);
        if size > u64::from(max) {
            return Err(DecodeError::TooLarge { size, max });
        }
        let Ok(total) = usize::try_from(size) else {
            return Err(DecodeError::TooLarge { size, max });
        };
        Ok(Some(FixedHeader { first, len, total }))
    }
}

/// Checks the packet type and flags of a first byte against the protocol state.
fn check_first_byte(first: u8, protocol: Option<Protocol>) -> Result<(), DecodeError> {
    let kind = first >> 4;
    let flags = first & 0x0f;
    match (kind, protocol) {
        (0, _) => return malformed("reserved packet type 0"),
        (1, _) => {}
        (_, None) => return protocol_error("the first packet must be CONNECT"),
        (15, Some(Protocol::V311)) => return protocol_error("AUTH on MQTT 3.1.1"),
        _ => {}
    }
    match kind {
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return malformed("PUBLISH with QoS 3");
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return match protocol {
                    Some(Protocol::V5) => protocol_error("PUBLISH with QoS 0 and DUP"),
                    _ => malformed("PUBLISH with QoS 0 and DUP"),
                };
            }
            Ok(())
        }
        6 | 8 | 10 if flags != 0b0010 => malformed("reserved fixed header flags not 0010"),
        6 | 8 | 10 => Ok(()),
        _ if flags != 0 => malformed("reserved fixed header flags not 0"),
        _ => Ok(()),
    }
}

/// Decodes a packet body; the first byte was checked by [`check_first_byte`].
fn decode_body(
    header: &FixedHeader,
    body: Bytes,
    protocol: Option<Protocol>,
) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(body);
    let kind = header.first >> 4;
    if kind == 1 {
        return decode_connect(&mut r).map(Packet::Connect);
    }
    let Some(protocol) = protocol else {
        return protocol_error("the first packet must be CONNECT");
    };
    let v5 = protocol == Protocol::V5;
    let packet = match kind {
        2 => Packet::ConnAck(decode_connack(&mut r, v5)?),
        3 => Packet::Publish(decode_publish(&mut r, header.first, v5)?),
        4 => Packet::PubAck(decode_ack(&mut r, v5)?),
        5 => Packet::PubRec(decode_ack(&mut r, v5)?),
        6 => Packet::PubRel(decode_ack(&mut r, v5)?),
        7 => Packet::PubComp(decode_ack(&mut r, v5)?),
        8 => Packet::Subscribe(decode_subscribe(&mut r, v5)?),
        9 => Packet::SubAck(decode_suback(&mut r, v5)?),
        10 => Packet::Unsubscribe(decode_unsubscribe(&mut r, v5)?),
        11 => Packet::UnsubAck(decode_unsuback(&mut r, v5)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect(decode_disconnect(&mut r, v5)?),
        15 if v5 => Packet::Auth(decode_auth(&mut r)?),
        _ => return protocol_error("AUTH on MQTT 3.1.1"),
    };
    r.finish("bytes after the end of the packet")?;
    Ok(packet)
}

/// Properties when `v5`, none otherwise.
fn props_if(r: &mut Reader, v5: bool, ctx: Ctx) -> Result<Properties, DecodeError> {
    if v5 {
        props::decode(r, ctx)
    } else {
        Ok(Properties::default())
    }
}

/// A reason code and properties that may both be left out (V5 acks, DISCONNECT, AUTH).
fn optional_reason(r: &mut Reader, ctx: Ctx) -> Result<(u8, Properties), DecodeError> {
    if r.is_empty() {
        return Ok((0, Properties::default()));
    }
    let reason = r.u8("truncated reason code")?;
    if r.is_empty() {
        return Ok((reason, Properties::default()));
    }
    Ok((reason, props::decode(r, ctx)?))
}

fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.string("truncated protocol name")?;
    let level = r.u8("truncated protocol level")?;
    let protocol = match (name.as_str(), level) {
        ("MQTT", 4) | ("MQIsdp", 3) => Protocol::V311,
        ("MQTT", 5) => Protocol::V5,
        _ => return Err(DecodeError::UnsupportedProtocol { name, level }),
    };
    let v5 = protocol == Protocol::V5;
    let flags = r.u8("truncated connect flags")?;
    if flags & 0x01 != 0 {
        return malformed("reserved connect flag set");
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let Some(will_qos) = QoS::from_u8((flags >> 3) & 0b11) else {
        return malformed("will QoS 3");
    };
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return protocol_error("will QoS or retain without the will flag");
    }
    if password_flag && !username_flag && !v5 {
        return malformed("password without user name");
    }
    let keep_alive = r.u16("truncated keep alive")?;
    let properties = props_if(r, v5, Ctx::Connect)?;
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return protocol_error("authentication data without authentication method");
    }
    let client_id = r.string("truncated client identifier")?;
    let will = if will_flag {
        let properties = props_if(r, v5, Ctx::Will)?;
        let topic = r.string("truncated will topic")?;
        let payload = r.binary("truncated will payload")?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = match username_flag {
        true => Some(r.string("truncated user name")?),
        false => None,
    };
    let password = match password_flag {
        true => Some(r.binary("truncated password")?),
        false => None,
    };
    r.finish("bytes after the end of the CONNECT")?;
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        properties,
        client_id,
        will,
        username,
        password,
    })
}

fn decode_connack(r: &mut Reader, v5: bool) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("truncated acknowledge flags")?;
    if flags & 0xfe != 0 {
        return malformed("reserved acknowledge flags set");
    }
    let code = r.u8("truncated connect reason code")?;
    let properties = props_if(r, v5, Ctx::ConnAck)?;
    Ok(ConnAck {
        session_present: flags & 0x01 != 0,
        code,
        properties,
    })
}

fn decode_publish(r: &mut Reader, first: u8, v5: bool) -> Result<Publish, DecodeError> {
    let Some(qos) = QoS::from_u8((first >> 1) & 0b11) else {
        return malformed("PUBLISH with QoS 3");
    };
    let topic = r.string("truncated topic name")?;
    let packet_id = match qos {
        QoS::AtMostOnce => 0,
        _ => r.packet_id()?,
    };
    let properties = props_if(r, v5, Ctx::Publish)?;
    Ok(Publish {
        dup: first & 0b1000 != 0,
        qos,
        retain: first & 0b0001 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

fn decode_ack(r: &mut Reader, v5: bool) -> Result<Ack, DecodeError> {
    let packet_id = r.packet_id()?;
    let (reason, properties) = match v5 {
        true => optional_reason(r, Ctx::Ack)?,
        false => (0, Properties::default()),
    };
    Ok(Ack {
        packet_id,
        reason,
        properties,
    })
}

fn decode_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = props_if(r, v5, Ctx::Subscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string("truncated topic filter")?;
        let options = r.u8("truncated subscription options")?;
        filters.push((filter, sub_options(options, v5)?));
    }
    if filters.is_empty() {
        return protocol_error("SUBSCRIBE without topic filters");
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

/// The subscription options byte (MQTT 5.0 section 3.8.3.1, 3.1.1 section 3.8.3.1).
fn sub_options(byte: u8, v5: bool) -> Result<SubOptions, DecodeError> {
    if !v5 {
        if byte & 0xfc != 0 {
            return malformed("reserved subscription option bits set");
        }
        return match QoS::from_u8(byte) {
            Some(qos) => Ok(SubOptions::new(qos)),
            None => malformed("subscription with QoS 3"),
        };
    }
    if byte & 0xc0 != 0 {
        return malformed("reserved subscription option bits set");
    }
    let Some(qos) = QoS::from_u8(byte & 0b11) else {
        return protocol_error("subscription with QoS 3");
    };
    let retain_handling = (byte >> 4) & 0b11;
    if retain_handling == 3 {
        return protocol_error("retain handling 3");
    }
    Ok(SubOptions {
        qos,
        no_local: byte & 0b0100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

fn decode_suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = props_if(r, v5, Ctx::SubAck)?;
    let reasons = r.rest().to_vec();
    if reasons.is_empty() {
        return protocol_error("SUBACK without reason codes");
    }
    Ok(SubAck {
        packet_id,
        properties,
        reasons,
    })
}

fn decode_unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = props_if(r, v5, Ctx::Unsubscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string("truncated topic filter")?);
    }
    if filters.is_empty() {
        return protocol_error("UNSUBSCRIBE without topic filters");
    }
    Ok(Unsubscribe {
        packet_id,
        properties,
        filters,
    })
}

fn decode_unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    if !v5 {
        return Ok(UnsubAck {
            packet_id,
            properties: Properties::default(),
            reasons: Vec::new(),
        });
    }
    let properties = props::decode(r, Ctx::UnsubAck)?;
    let reasons = r.rest().to_vec();
    if reasons.is_empty() {
        return protocol_error("UNSUBACK without reason codes");
    }
    Ok(UnsubAck {
        packet_id,
        properties,
        reasons,
    })
}

fn decode_disconnect(r: &mut Reader, v5: bool) -> Result<Disconnect, DecodeError> {
    let (reason, properties) = match v5 {
        true => optional_reason(r, Ctx::Disconnect)?,
        false => (0, Properties::default()),
    };
    Ok(Disconnect { reason, properties })
}

/// AUTH: empty (success, no properties), or a reason code and properties (unlike DISCONNECT,
/// the property length may not be left out alone).
fn decode_auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    if r.is_empty() {
        return Ok(Auth {
            reason: 0,
            properties: Properties::default(),
        });
    }
    let reason = r.u8("truncated reason code")?;
    let properties = props::decode(r, Ctx::Auth)?;
    Ok(Auth { reason, properties })
}
