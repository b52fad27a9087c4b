//! What an MQTT publish keeps beside its payload: the protocol attributes of its event.
//!
//! The engine stores them opaquely (`NewEvent::attrs`); this module owns their format:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version, 1 |
//! | 1 | flags: bits 0-1 the publish QoS, bit 2 the retain flag, bit 3 set when the publisher
//! gave the content type (else the event's content type is Herald's default) |
//! | rest | fields, each a tag byte then its value |
//!
//! Tags: 1 message expiry interval (u32 BE, seconds), 2 payload format indicator (u8),
//! 3 response topic (u16 BE length + UTF-8), 4 correlation data (u16 BE length + bytes),
//! 5 user property (two u16-length UTF-8 strings), 6 message id (u64 BE; retained publishes
//! only, so a subscriber that got the message as retained can skip its live copy). The content
//! type is the event's own content
//! type. Decoding never fails: an unknown version or a bad field ends what is read, so an
//! event always reaches subscribers.

use bytes::{BufMut, Bytes, BytesMut};
use herald_mqtt_codec::{Properties, QoS};

const VERSION: u8 = 1;
const TAG_EXPIRY: u8 = 1;
const TAG_PAYLOAD_FORMAT: u8 = 2;
const TAG_RESPONSE_TOPIC: u8 = 3;
const TAG_CORRELATION: u8 = 4;
const TAG_USER_PROPERTY: u8 = 5;
const TAG_MESSAGE_ID: u8 = 6;

/// The MQTT side of a stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MessageAttrs {
    /// The QoS it was published with.
    pub(crate) qos: QoS,
    /// Whether it was published with the retain flag.
    pub(crate) retain: bool,
    /// Whether the publisher gave the content type (forwarded to MQTT 5 subscribers only
    /// then).
    pub(crate) explicit_content_type: bool,
    /// Its MQTT 5 publish properties worth forwarding (not the topic alias or subscription
    /// identifiers, which are per connection, and not the content type).
    pub(crate) properties: Properties,
    /// A random id given to retained publishes (see the module documentation).
    pub(crate) id: Option<u64>,
}

impl MessageAttrs {
    /// What an event appended by another protocol counts as: delivered at the subscription's
    /// QoS, since it was acknowledged only once durable.
    pub(crate) fn foreign() -> Self {
        Self {
            qos: QoS::ExactlyOnce,
            retain: false,
            explicit_content_type: true,
            properties: Properties::default(),
            id: None,
        }
    }

    /// Encodes the attributes; `None` when a field does not fit its length prefix (the
    /// caller refuses the publish).
    pub(crate) fn encode(&self) -> Option<Bytes> {
        let p = &self.properties;
        if self.id.is_none() && p.is_empty() {
            // The common case (no properties): two bytes, shared instead of allocated.
            return Some(plain(self.qos as u8 | self.flags_without_qos()));
        }
        let mut out = BytesMut::with_capacity(2);
        out.put_u8(VERSION);
        out.put_u8(self.qos as u8 | self.flags_without_qos());
        if let Some(e) = p.message_expiry_interval {
            out.put_u8(TAG_EXPIRY);
            out.put_u32(e);
        }
        if let Some(f) = p.payload_format_indicator {
            out.put_u8(TAG_PAYLOAD_FORMAT);
            out.put_u8(f);
        }
        if let Some(t) = &p.response_topic {
            out.put_u8(TAG_RESPONSE_TOPIC);
            put16(&mut out, t.as_bytes())?;
        }
        if let Some(c) = &p.correlation_data {
            out.put_u8(TAG_CORRELATION);
            put16(&mut out, c)?;
        }
        for (k, v) in &p.user_properties {
            out.put_u8(TAG_USER_PROPERTY);
            put16(&mut out, k.as_bytes())?;
            put16(&mut out, v.as_bytes())?;
        }
        if let Some(id) = self.id {
            out.put_u8(TAG_MESSAGE_ID);
            out.put_u64(id);
        }
        Some(out.freeze())
    }

    /// Decodes what [`MessageAttrs::encode`] wrote; anything else (an event from another
    /// protocol) is [`MessageAttrs::foreign`].
    pub(crate) fn decode(bytes: &[u8]) -> Self {
        let [VERSION, flags, rest @ ..] = bytes else {
            return Self::foreign();
        };
        let mut out = Self {
            qos: QoS::from_u8(flags & 3).unwrap_or(QoS::ExactlyOnce),
            retain: flags & 4 != 0,
            explicit_content_type: flags & 8 != 0,
            properties: Properties::default(),
            id: None,
        };
        if rest.is_empty() {
            // The common case (see `encode`), built in place: filling in a copy of `foreign()`
            // field by field stalled on the copy (3 % of the samples of 1 -> 1,000 fan-out).
            return out;
        }
        let mut r = Reader(rest);
        let mut id = None;
        let p = &mut out.properties;
        while let Some(tag) = r.u8() {
            let ok = match tag {
                TAG_EXPIRY => r.u32().map(|v| p.message_expiry_interval = Some(v)),
                TAG_PAYLOAD_FORMAT => r.u8().map(|v| p.payload_format_indicator = Some(v)),
                TAG_RESPONSE_TOPIC => r.string().map(|v| p.response_topic = Some(v)),
                TAG_CORRELATION => r
                    .bytes16()
                    .map(|v| p.correlation_data = Some(Bytes::copy_from_slice(v))),
                TAG_USER_PROPERTY => r
                    .string()
                    .and_then(|k| Some((k, r.string()?)))
                    .map(|kv| p.user_properties.push(kv)),
                TAG_MESSAGE_ID => r
                    .take(8)
                    .and_then(|b| b.try_into().ok())
                    .map(|b| id = Some(u64::from_be_bytes(b))),
                _ => None,
            };
            if ok.is_none() {
                break;
            }
        }
        out.id = id;
        out
    }
}

impl MessageAttrs {
    fn flags_without_qos(&self) -> u8 {
        let retain = if self.retain { 4 } else { 0 };
        let ct = if self.explicit_content_type { 8 } else { 0 };
        retain | ct
    }
}

/// The shared encoding of attributes without fields: `[VERSION, flags]`.
fn plain(flags: u8) -> Bytes {
    static ALL: [[u8; 2]; 16] = [
        [VERSION, 0],
        [VERSION, 1],
        [VERSION, 2],
        [VERSION, 3],
        [VERSION, 4],
        [VERSION, 5],
        [VERSION, 6],
        [VERSION, 7],
        [VERSION, 8],
        [VERSION, 9],
        [VERSION, 10],
        [VERSION, 11],
        [VERSION, 12],
        [VERSION, 13],
        [VERSION, 14],
        [VERSION, 15],
    ];
    match ALL.get(usize::from(flags)) {
        Some(b) => Bytes::from_static(b),
        None => Bytes::copy_from_slice(&[VERSION, flags]),
    }
}

fn put16(out: &mut BytesMut, b: &[u8]) -> Option<()> {
    out.put_u16(u16::try_from(b.len()).ok()?);
    out.put_slice(b);
    Some(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn bytes16(&mut self) -> Option<&'a [u8]> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().ok()?);
        self.take(usize::from(len))
    }
    fn string(&mut self) -> Option<String> {
        std::str::from_utf8(self.bytes16()?).ok().map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use herald_mqtt_codec::PropertyValues;

    use super::*;

    #[test]
    fn round_trip() {
        let attrs = MessageAttrs {
            qos: QoS::AtLeastOnce,
            retain: true,
            explicit_content_type: true,
            properties: Properties::from(PropertyValues {
                message_expiry_interval: Some(60),
                payload_format_indicator: Some(1),
                response_topic: Some("r/t".into()),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
                ..PropertyValues::default()
            }),
            id: Some(7),
        };
        let bytes = attrs.encode().unwrap();
        assert_eq!(MessageAttrs::decode(&bytes), attrs);
        let plain = MessageAttrs {
            qos: QoS::AtMostOnce,
            retain: false,
            explicit_content_type: false,
            properties: Properties::default(),
            id: None,
        };
        assert_eq!(&plain.encode().unwrap()[..], [1, 0]);
        assert_eq!(MessageAttrs::decode(&[1, 0]), plain);
    }

    #[test]
    fn anything_else_is_foreign_or_cut_short() {
        assert_eq!(MessageAttrs::decode(b""), MessageAttrs::foreign());
        assert_eq!(MessageAttrs::decode(b"\x02\x00"), MessageAttrs::foreign());
        // A truncated field ends decoding; what came before stays.
        let cut = MessageAttrs::decode(&[1, 1, TAG_PAYLOAD_FORMAT, 1, TAG_EXPIRY, 0, 0]);
        assert_eq!(cut.qos, QoS::AtLeastOnce);
        assert_eq!(cut.properties.payload_format_indicator, Some(1));
        assert_eq!(cut.properties.message_expiry_interval, None);
        let too_long = MessageAttrs {
            properties: Properties::from(PropertyValues {
                response_topic: Some("x".repeat(70_000)),
                ..PropertyValues::default()
            }),
            ..MessageAttrs::foreign()
        };
        assert!(too_long.encode().is_none());
    }
}
