//! MQTT 5 properties ([`Properties`]): decoding with the checks of MQTT 5.0 section 2.2.2
//! (known identifier, permitted in the packet, at most once, value in range) and encoding.

use bytes::Bytes;

use crate::DecodeError;
use crate::wire::{Reader, Sink, malformed, measure, protocol_error};

/// MQTT 5 properties. All optional; on 3.1.1 always empty (Default) and never encoded.
///
/// Encoding writes only the properties permitted in the packet at hand (MQTT 5.0 table 2-4) and
/// silently leaves out the others; decoding rejects a property the packet does not permit.
///
/// Most packets carry none, so an empty set is one null pointer: the values
/// ([`PropertyValues`], read and written through `Deref`) are boxed on the first write. A
/// packet is then small to move (a PUBLISH with the values inline was about 400 bytes).
#[derive(Clone, Default)]
pub struct Properties(Option<Box<PropertyValues>>);

/// The values of [`Properties`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyValues {
    /// 0x01 Payload Format Indicator: 0 unspecified bytes, 1 UTF-8 (PUBLISH, will).
    pub payload_format_indicator: Option<u8>,
    /// 0x02 Message Expiry Interval in seconds (PUBLISH, will).
    pub message_expiry_interval: Option<u32>,
    /// 0x03 Content Type (PUBLISH, will).
    pub content_type: Option<String>,
    /// 0x08 Response Topic (PUBLISH, will).
    pub response_topic: Option<String>,
    /// 0x09 Correlation Data (PUBLISH, will).
    pub correlation_data: Option<Bytes>,
    /// 0x0B Subscription Identifiers, 1..=268_435_455 (several in PUBLISH, at most one in
    /// SUBSCRIBE).
    pub subscription_identifiers: Vec<u32>,
    /// 0x11 Session Expiry Interval in seconds (CONNECT, CONNACK, DISCONNECT).
    pub session_expiry_interval: Option<u32>,
    /// 0x12 Assigned Client Identifier (CONNACK).
    pub assigned_client_identifier: Option<String>,
    /// 0x13 Server Keep Alive in seconds (CONNACK).
    pub server_keep_alive: Option<u16>,
    /// 0x15 Authentication Method (CONNECT, CONNACK, AUTH).
    pub authentication_method: Option<String>,
    /// 0x16 Authentication Data (CONNECT, CONNACK, AUTH).
    pub authentication_data: Option<Bytes>,
    /// 0x17 Request Problem Information, 0 or 1 (CONNECT).
    pub request_problem_information: Option<u8>,
    /// 0x18 Will Delay Interval in seconds (will).
    pub will_delay_interval: Option<u32>,
    /// 0x19 Request Response Information, 0 or 1 (CONNECT).
    pub request_response_information: Option<u8>,
    /// 0x1A Response Information (CONNACK).
    pub response_information: Option<String>,
    /// 0x1C Server Reference (CONNACK, DISCONNECT).
    pub server_reference: Option<String>,
    /// 0x1F Reason String (CONNACK, the four acks, SUBACK, UNSUBACK, DISCONNECT, AUTH).
    pub reason_string: Option<String>,
    /// 0x21 Receive Maximum, not 0 (CONNECT, CONNACK).
    pub receive_maximum: Option<u16>,
    /// 0x22 Topic Alias Maximum (CONNECT, CONNACK).
    pub topic_alias_maximum: Option<u16>,
    /// 0x23 Topic Alias, not 0 (PUBLISH).
    pub topic_alias: Option<u16>,
    /// 0x24 Maximum QoS, 0 or 1 (CONNACK).
    pub maximum_qos: Option<u8>,
    /// 0x25 Retain Available, 0 or 1 (CONNACK).
    pub retain_available: Option<u8>,
    /// 0x26 User Properties, name and value, in order (every packet with properties).
    pub user_properties: Vec<(String, String)>,
    /// 0x27 Maximum Packet Size, not 0 (CONNECT, CONNACK).
    pub maximum_packet_size: Option<u32>,
    /// 0x28 Wildcard Subscription Available, 0 or 1 (CONNACK).
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29 Subscription Identifier Available, 0 or 1 (CONNACK).
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A Shared Subscription Available, 0 or 1 (CONNACK).
    pub shared_subscription_available: Option<u8>,
}

/// No property set.
static NONE: PropertyValues = PropertyValues {
    payload_format_indicator: None,
    message_expiry_interval: None,
    content_type: None,
    response_topic: None,
    correlation_data: None,
    subscription_identifiers: Vec::new(),
    session_expiry_interval: None,
    assigned_client_identifier: None,
    server_keep_alive: None,
    authentication_method: None,
    authentication_data: None,
    request_problem_information: None,
    will_delay_interval: None,
    request_response_information: None,
    response_information: None,
    server_reference: None,
    reason_string: None,
    receive_maximum: None,
    topic_alias_maximum: None,
    topic_alias: None,
    maximum_qos: None,
    retain_available: None,
    user_properties: Vec::new(),
    maximum_packet_size: None,
    wildcard_subscription_available: None,
    subscription_identifier_available: None,
    shared_subscription_available: None,
};

impl Properties {
    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        self.0.as_deref().is_none_or(|v| *v == NONE)
    }

    /// The values for changing, if any was ever set; unlike writing through `DerefMut`,
    /// this does not box empty values (for taking one out on a hot path).
    pub fn values_mut(&mut self) -> Option<&mut PropertyValues> {
        self.0.as_deref_mut()
    }
}

impl std::ops::Deref for Properties {
    type Target = PropertyValues;

    fn deref(&self) -> &PropertyValues {
        self.0.as_deref().unwrap_or(&NONE)
    }
}

/// Writing boxes the values if they were not yet.
impl std::ops::DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut PropertyValues {
        self.0.get_or_insert_with(Box::default)
    }
}

impl From<PropertyValues> for Properties {
    fn from(values: PropertyValues) -> Self {
        if values == NONE {
            Self(None)
        } else {
            Self(Some(Box::new(values)))
        }
    }
}

/// Equal when the values are: an empty box equals no box.
impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Properties {}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// Where a property list sits: which properties it may hold depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ctx {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

/// Whether property `id` may appear in `ctx` (MQTT 5.0 table 2-4). Unknown ids never may.
fn allowed(id: u8, ctx: Ctx) -> bool {
    use Ctx::*;
    match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => matches!(ctx, Publish | Will),
        0x0B => matches!(ctx, Publish | Subscribe),
        0x11 => matches!(ctx, Connect | ConnAck | Disconnect),
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => ctx == ConnAck,
        0x15 | 0x16 => matches!(ctx, Connect | ConnAck | Auth),
        0x17 | 0x19 => ctx == Connect,
        0x18 => ctx == Will,
        0x1C => matches!(ctx, ConnAck | Disconnect),
        0x1F => matches!(ctx, ConnAck | Ack | SubAck | UnsubAck | Disconnect | Auth),
        0x21 | 0x22 | 0x27 => matches!(ctx, Connect | ConnAck),
        0x23 => ctx == Publish,
        0x26 => true,
        _ => false,
    }
}

/// Whether `id` is a property identifier MQTT 5 defines.
fn known(id: u8) -> bool {
    matches!(
        id,
        0x01..=0x03 | 0x08 | 0x09 | 0x0B | 0x11..=0x13 | 0x15..=0x19 | 0x1A | 0x1C | 0x1F | 0x21..=0x2A
    )
}

/// Sets a property that may appear once.
fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return protocol_error("duplicate property");
    }
    *slot = Some(value);
    Ok(())
}

/// A property byte that must be 0 or 1.
fn flag(r: &mut Reader, what: &'static str) -> Result<u8, DecodeError> {
    match r.u8("truncated property")? {
        v @ (0 | 1) => Ok(v),
        _ => protocol_error(what),
    }
}

/// A two byte property that must not be 0.
fn nonzero_u16(r: &mut Reader, what: &'static str) -> Result<u16, DecodeError> {
    match r.u16("truncated property")? {
        0 => protocol_error(what),
        v => Ok(v),
    }
}

/// Reads a property length and the properties it covers.
pub(crate) fn decode(r: &mut Reader, ctx: Ctx) -> Result<Properties, DecodeError> {
    let len = r.varint("truncated property length")?;
    let body = r.take(len as usize, "property length beyond the packet")?;
    let mut r = Reader::new(body);
    let mut p = Properties::default();
    const T: &str = "truncated property";
    while !r.is_empty() {
        let id = r.varint("truncated property identifier")?;
        let id = match u8::try_from(id) {
            Ok(id) if known(id) => id,
            _ => return malformed("unknown property identifier"),
        };
        if !allowed(id, ctx) {
            return malformed("property not allowed in this packet");
        }
        match id {
            0x01 => once(
                &mut p.payload_format_indicator,
                flag(&mut r, "payload format indicator not 0 or 1")?,
            )?,
            0x02 => once(&mut p.message_expiry_interval, r.u32(T)?)?,
            0x03 => once(&mut p.content_type, r.string(T)?)?,
            0x08 => once(&mut p.response_topic, r.string(T)?)?,
            0x09 => once(&mut p.correlation_data, r.binary(T)?)?,
            0x0B => {
                let v = r.varint(T)?;
                if v == 0 {
                    return protocol_error("subscription identifier 0");
                }
                if ctx != Ctx::Publish && !p.subscription_identifiers.is_empty() {
                    return protocol_error("duplicate property");
                }
                p.subscription_identifiers.push(v);
            }
            0x11 => once(&mut p.session_expiry_interval, r.u32(T)?)?,
            0x12 => once(&mut p.assigned_client_identifier, r.string(T)?)?,
            0x13 => once(&mut p.server_keep_alive, r.u16(T)?)?,
            0x15 => once(&mut p.authentication_method, r.string(T)?)?,
            0x16 => once(&mut p.authentication_data, r.binary(T)?)?,
            0x17 => once(
                &mut p.request_problem_information,
                flag(&mut r, "request problem information not 0 or 1")?,
            )?,
            0x18 => once(&mut p.will_delay_interval, r.u32(T)?)?,
            0x19 => once(
                &mut p.request_response_information,
                flag(&mut r, "request response information not 0 or 1")?,
            )?,
            0x1A => once(&mut p.response_information, r.string(T)?)?,
            0x1C => once(&mut p.server_reference, r.string(T)?)?,
            0x1F => once(&mut p.reason_string, r.string(T)?)?,
            0x21 => once(
                &mut p.receive_maximum,
                nonzero_u16(&mut r, "receive maximum 0")?,
            )?,
            0x22 => once(&mut p.topic_alias_maximum, r.u16(T)?)?,
            0x23 => once(&mut p.topic_alias, nonzero_u16(&mut r, "topic alias 0")?)?,
            0x24 => once(&mut p.maximum_qos, flag(&mut r, "maximum QoS not 0 or 1")?)?,
            0x25 => once(
                &mut p.retain_available,
                flag(&mut r, "retain available not 0 or 1")?,
            )?,
            0x26 => {
                let name = r.string(T)?;
                let value = r.string(T)?;
                p.user_properties.push((name, value));
            }
            0x27 => {
                let v = r.u32(T)?;
                if v == 0 {
                    return protocol_error("maximum packet size 0");
                }
                once(&mut p.maximum_packet_size, v)?;
            }
            0x28 => once(
                &mut p.wildcard_subscription_available,
                flag(&mut r, "wildcard subscription available not 0 or 1")?,
            )?,
            0x29 => once(
                &mut p.subscription_identifier_available,
                flag(&mut r, "subscription identifier available not 0 or 1")?,
            )?,
            0x2A => once(
                &mut p.shared_subscription_available,
                flag(&mut r, "shared subscription available not 0 or 1")?,
            )?,
            _ => return malformed("unknown property identifier"),
        }
    }
    Ok(p)
}

/// Writes the properties of `p` permitted in `ctx`, in identifier order.
struct Writer<'a, S> {
    out: &'a mut S,
    ctx: Ctx,
}

impl<S: Sink> Writer<'_, S> {
    fn start(&mut self, id: u8) -> bool {
        let ok = allowed(id, self.ctx);
        if ok {
            self.out.put_u8(id);
        }
        ok
    }

    fn byte(&mut self, id: u8, v: Option<u8>) {
        if let Some(v) = v
            && self.start(id)
        {
            self.out.put_u8(v);
        }
    }

    fn two(&mut self, id: u8, v: Option<u16>) {
        if let Some(v) = v
            && self.start(id)
        {
            self.out.put_u16(v);
        }
    }

    fn four(&mut self, id: u8, v: Option<u32>) {
        if let Some(v) = v
            && self.start(id)
        {
            self.out.put_u32(v);
        }
    }

    fn string(&mut self, id: u8, v: Option<&String>) {
        if let Some(v) = v
            && self.start(id)
        {
            self.out.put_str(v);
        }
    }

    fn binary(&mut self, id: u8, v: Option<&Bytes>) {
        if let Some(v) = v
            && self.start(id)
        {
            self.out.put_binary(v);
        }
    }
}

/// Writes the property list itself, without its length.
fn write_body<S: Sink>(p: &Properties, ctx: Ctx, out: &mut S) {
    let mut w = Writer { out, ctx };
    w.byte(0x01, p.payload_format_indicator);
    w.four(0x02, p.message_expiry_interval);
    w.string(0x03, p.content_type.as_ref());
    w.string(0x08, p.response_topic.as_ref());
    w.binary(0x09, p.correlation_data.as_ref());
    // Only PUBLISH may carry several subscription identifiers.
    let ids = match ctx {
        Ctx::Publish => p.subscription_identifiers.as_slice(),
        _ => p.subscription_identifiers.get(..1).unwrap_or_default(),
    };
    for &id in ids {
        if w.start(0x0B) {
            w.out.put_varint(id);
        }
    }
    w.four(0x11, p.session_expiry_interval);
    w.string(0x12, p.assigned_client_identifier.as_ref());
    w.two(0x13, p.server_keep_alive);
    w.string(0x15, p.authentication_method.as_ref());
    w.binary(0x16, p.authentication_data.as_ref());
    w.byte(0x17, p.request_problem_information);
    w.four(0x18, p.will_delay_interval);
    w.byte(0x19, p.request_response_information);
    w.string(0x1A, p.response_information.as_ref());
    w.string(0x1C, p.server_reference.as_ref());
    w.string(0x1F, p.reason_string.as_ref());
    w.two(0x21, p.receive_maximum);
    w.two(0x22, p.topic_alias_maximum);
    w.two(0x23, p.topic_alias);
    w.byte(0x24, p.maximum_qos);
    w.byte(0x25, p.retain_available);
    for (name, value) in &p.user_properties {
        if w.start(0x26) {
            w.out.put_str(name);
            w.out.put_str(value);
        }
    }
    w.four(0x27, p.maximum_packet_size);
    w.byte(0x28, p.wildcard_subscription_available);
    w.byte(0x29, p.subscription_identifier_available);
    w.byte(0x2A, p.shared_subscription_available);
}

/// The length of the property list `encode` writes for `ctx`, without its length prefix; 0 when
/// nothing of `p` is permitted there.
pub(crate) fn body_len(p: &Properties, ctx: Ctx) -> usize {
    measure(|c| write_body(p, ctx, c))
}

/// Writes the property length and the properties of `p` permitted in `ctx`.
pub(crate) fn encode<S: Sink>(p: &Properties, ctx: Ctx, out: &mut S) {
    let len = body_len(p, ctx);
    out.put_varint(u32::try_from(len).unwrap_or(u32::MAX));
    write_body(p, ctx, out);
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;

    fn decode_bytes(bytes: &'static [u8], ctx: Ctx) -> Result<Properties, DecodeError> {
        let mut r = Reader::new(Bytes::from_static(bytes));
        let p = decode(&mut r, ctx)?;
        assert!(r.is_empty());
        Ok(p)
    }

    #[test]
    fn decodes_and_encodes_publish_properties() {
        let bytes = [
            14, 0x01, 1, 0x0B, 0x81, 0x01, 0x0B, 5, 0x23, 0, 7, 0x26, 0, 1, b'k', 0, 0,
        ];
        // 14 is wrong on purpose (the list is 16 bytes): the extra bytes are beyond it.
        let mut r = Reader::new(Bytes::copy_from_slice(&bytes));
        assert!(decode(&mut r, Ctx::Publish).is_err());

        let mut fixed = bytes;
        fixed[0] = 16;
        let mut r = Reader::new(Bytes::copy_from_slice(&fixed));
        let p = decode(&mut r, Ctx::Publish).unwrap();
        assert!(r.is_empty());
        assert_eq!(p.payload_format_indicator, Some(1));
        assert_eq!(p.subscription_identifiers, [129, 5]);
        assert_eq!(p.topic_alias, Some(7));
        assert_eq!(p.user_properties, [("k".to_owned(), String::new())]);

        let mut out = BytesMut::new();
        encode(&p, Ctx::Publish, &mut out);
        assert_eq!(out.as_ref(), fixed);
    }

    #[test]
    fn checks() {
        let err = |bytes, ctx| decode_bytes(bytes, ctx).unwrap_err();
        assert!(matches!(
            err(&[2, 0x00, 0], Ctx::Publish),
            DecodeError::Malformed(_)
        ));
        assert!(matches!(
            err(&[2, 0x2B, 0], Ctx::ConnAck),
            DecodeError::Malformed(_)
        ));
        assert!(matches!(
            err(&[3, 0x23, 0, 1], Ctx::ConnAck),
            DecodeError::Malformed(_)
        ));
        assert!(matches!(
            err(&[3, 0x23, 0, 0], Ctx::Publish),
            DecodeError::Protocol(_)
        ));
        assert!(matches!(
            err(&[3, 0x21, 0, 0], Ctx::Connect),
            DecodeError::Protocol(_)
        ));
        assert!(matches!(
            err(&[5, 0x27, 0, 0, 0, 0], Ctx::Connect),
            DecodeError::Protocol(_)
        ));
        assert!(matches!(
            err(&[2, 0x0B, 0], Ctx::Subscribe),
            DecodeError::Protocol(_)
        ));
        assert!(matches!(
            err(&[4, 0x0B, 1, 0x0B, 2], Ctx::Subscribe),
            DecodeError::Protocol(_)
        ));
        assert!(matches!(
            err(&[4, 0x24, 1, 0x24, 1], Ctx::ConnAck),
            DecodeError::Protocol(_)
        ));
        assert!(matches!(
            err(&[2, 0x24, 2], Ctx::ConnAck),
            DecodeError::Protocol(_)
        ));
        assert!(matches!(
            err(&[2, 0x13, 0], Ctx::ConnAck),
            DecodeError::Malformed(_)
        ));
        assert!(matches!(
            err(&[3, 0x13, 0], Ctx::ConnAck),
            DecodeError::Malformed(_)
        ));
        assert!(matches!(
            err(&[0x80], Ctx::ConnAck),
            DecodeError::Malformed(_)
        ));
        // A two byte identifier is a known encoding of an unknown property.
        assert!(matches!(
            err(&[3, 0x81, 0x01, 0], Ctx::Publish),
            DecodeError::Malformed(_)
        ));
        let p = decode_bytes(&[6, 0x0B, 1, 0x26, 0, 0, 0], Ctx::Subscribe);
        assert!(matches!(p, Err(DecodeError::Malformed(_))));
        let p = decode_bytes(&[7, 0x0B, 1, 0x26, 0, 0, 0, 0], Ctx::Subscribe).unwrap();
        assert_eq!(p.subscription_identifiers, [1]);
    }

    #[test]
    fn encoding_leaves_out_what_the_packet_does_not_permit() {
        let p = Properties::from(PropertyValues {
            topic_alias: Some(3),
            reason_string: Some("r".into()),
            subscription_identifiers: vec![1, 2],
            ..PropertyValues::default()
        });
        assert!(!p.is_empty());
        assert_eq!(body_len(&p, Ctx::Connect), 0);
        assert_eq!(body_len(&p, Ctx::Ack), 4);
        assert_eq!(body_len(&p, Ctx::Subscribe), 2);
        assert_eq!(body_len(&p, Ctx::Publish), 7);
        assert!(Properties::default().is_empty());
    }
}
