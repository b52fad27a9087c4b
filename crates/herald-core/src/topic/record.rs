//! The store record of one topic event.
//!
//! Layout:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | version: [`RECORD_VERSION`] (1) without an origin, [`RECORD_VERSION_ORIGIN`] (2) with one, [`RECORD_VERSION_ATTRS`] (3) with attributes |
//! | 8 | `t_ms`, the append time in ms since the Unix epoch, big-endian |
//! | 1 | `ct_len`, the content type's length in bytes |
//! | `ct_len` | the content type, UTF-8 |
//! | 1 | versions 2 and 3: `origin_len`, the origin's length in bytes (1 to 255; 0 allowed in version 3) |
//! | `origin_len` | versions 2 and 3: the origin, UTF-8 (who published the event, e.g. an hpfeeds ident) |
//! | 2 | version 3 only: `attrs_len`, the attributes' length in bytes (1 to 65,535), big-endian |
//! | `attrs_len` | version 3 only: the attributes, opaque bytes |
//! | rest | the event's data |
//!
//! Attributes are protocol metadata the core does not interpret (MQTT's QoS, retain flag and
//! publish properties, for instance); the adapter that wrote them reads them back, others
//! ignore them.
//!
//! The format is canonical: a record that decodes encodes back to the same bytes (an event
//! without an origin or attributes is always written as version 1, so records written before
//! origins existed read back unchanged; one with an origin and no attributes as version 2; a
//! version 2 record with an empty origin, or a version 3 one with empty attributes, is
//! refused).

/// The version byte of a record without an origin.
pub const RECORD_VERSION: u8 = 1;

/// The version byte of a record with an origin.
pub const RECORD_VERSION_ORIGIN: u8 = 2;

/// The version byte of a record with attributes.
pub const RECORD_VERSION_ATTRS: u8 = 3;

/// The longest attributes a record can hold, in bytes.
pub const MAX_ATTRS_LEN: usize = u16::MAX as usize;

/// The longest content type a record can hold, in bytes. Protocol adapters refuse longer ones
/// before they reach [`encode_record`].
pub const MAX_CONTENT_TYPE_LEN: usize = u8::MAX as usize;

/// The longest origin a record can hold, in bytes.
pub const MAX_ORIGIN_LEN: usize = u8::MAX as usize;

/// The size of a version 1 record without its content type and data: version, `t_ms` and
/// `ct_len`.
pub const RECORD_HEADER_LEN: usize = 1 + 8 + 1;

/// One decoded event record, borrowing from the bytes it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordRef<'a> {
    /// When the event was appended, in ms since the Unix epoch.
    pub t_ms: u64,
    /// The event's content type (e.g. `application/json`); may be empty.
    pub content_type: &'a str,
    /// Who published the event (an hpfeeds ident, a user); empty when not recorded.
    pub origin: &'a str,
    /// Protocol attributes, opaque to the core; empty when none.
    pub attrs: &'a [u8],
    /// The event's data.
    pub data: &'a [u8],
}

impl RecordRef<'_> {
    /// Encodes the record; see [`encode_record`].
    ///
    /// # Errors
    /// As [`encode_record`].
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        encode_record(
            self.t_ms,
            self.content_type,
            self.origin,
            self.attrs,
            self.data,
        )
    }
}

/// Why bytes are not a record, or a record cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The bytes end before the header, the content type or the origin does.
    #[error("event record is truncated")]
    Truncated,
    /// The version byte is not one of [`RECORD_VERSION`], [`RECORD_VERSION_ORIGIN`] and
    /// [`RECORD_VERSION_ATTRS`].
    #[error("event record has unknown version {0}")]
    UnknownVersion(u8),
    /// The content type is not valid UTF-8.
    #[error("event record's content type is not valid UTF-8")]
    ContentTypeNotUtf8,
    /// The origin is not valid UTF-8, or empty in a version 2 record.
    #[error("event record's origin is empty or not valid UTF-8")]
    BadOrigin,
    /// A version 3 record with empty attributes (not canonical).
    #[error("event record's attributes are empty")]
    EmptyAttrs,
    /// Encoding only: the content type is longer than [`MAX_CONTENT_TYPE_LEN`] bytes.
    #[error("content type is {len} bytes, more than the limit of {MAX_CONTENT_TYPE_LEN}")]
    ContentTypeTooLong {
        /// The content type's length in bytes.
        len: usize,
    },
    /// Encoding only: the origin is longer than [`MAX_ORIGIN_LEN`] bytes.
    #[error("origin is {len} bytes, more than the limit of {MAX_ORIGIN_LEN}")]
    OriginTooLong {
        /// The origin's length in bytes.
        len: usize,
    },
    /// Encoding only: the attributes are longer than [`MAX_ATTRS_LEN`] bytes.
    #[error("attributes are {len} bytes, more than the limit of {MAX_ATTRS_LEN}")]
    AttrsTooLong {
        /// The attributes' length in bytes.
        len: usize,
    },
}

/// Encodes an event as a store record (the layout is in the module documentation); an empty
/// `origin` or `attrs` means none.
///
/// Callers are expected to have refused content types and origins over 255 bytes already, with
/// an error of their protocol; this is a backstop, never a panic or a silent truncation.
///
/// # Errors
/// [`RecordError::ContentTypeTooLong`], [`RecordError::OriginTooLong`] or
/// [`RecordError::AttrsTooLong`].
pub fn encode_record(
    t_ms: u64,
    content_type: &str,
    origin: &str,
    attrs: &[u8],
    data: &[u8],
) -> Result<Vec<u8>, RecordError> {
    let mut out = Vec::new();
    encode_record_into(&mut out, t_ms, content_type, origin, attrs, data)?;
    Ok(out)
}

/// Appends the record [`encode_record`] makes to `out`, byte for byte the same: lets a caller
/// that stores many records together (a group commit) encode them into one buffer instead of
/// allocating one per record. The record starts at `out`'s former length.
///
/// # Errors
/// As [`encode_record`]; `out` is then left unchanged.
pub fn encode_record_into(
    out: &mut Vec<u8>,
    t_ms: u64,
    content_type: &str,
    origin: &str,
    attrs: &[u8],
    data: &[u8],
) -> Result<(), RecordError> {
    let ct_len = u8::try_from(content_type.len()).map_err(|_| RecordError::ContentTypeTooLong {
        len: content_type.len(),
    })?;
    let origin_len =
        u8::try_from(origin.len()).map_err(|_| RecordError::OriginTooLong { len: origin.len() })?;
    let attrs_len =
        u16::try_from(attrs.len()).map_err(|_| RecordError::AttrsTooLong { len: attrs.len() })?;
    let version = if !attrs.is_empty() {
        RECORD_VERSION_ATTRS
    } else if !origin.is_empty() {
        RECORD_VERSION_ORIGIN
    } else {
        RECORD_VERSION
    };
    let extra = match version {
        RECORD_VERSION => 0,
        RECORD_VERSION_ORIGIN => 1 + origin.len(),
        _ => 1 + origin.len() + 2 + attrs.len(),
    };
    out.reserve(RECORD_HEADER_LEN + content_type.len() + extra + data.len());
    out.push(version);
    out.extend_from_slice(&t_ms.to_be_bytes());
    out.push(ct_len);
    out.extend_from_slice(content_type.as_bytes());
    if version != RECORD_VERSION {
        out.push(origin_len);
        out.extend_from_slice(origin.as_bytes());
    }
    if version == RECORD_VERSION_ATTRS {
        out.extend_from_slice(&attrs_len.to_be_bytes());
        out.extend_from_slice(attrs);
    }
    out.extend_from_slice(data);
    Ok(())
}

/// Decodes a store record written by [`encode_record`]. Never panics, whatever the bytes.
///
/// # Errors
/// [`RecordError::Truncated`], [`RecordError::UnknownVersion`],
/// [`RecordError::ContentTypeNotUtf8`], [`RecordError::BadOrigin`] or
/// [`RecordError::EmptyAttrs`] when `bytes` is not a record.
pub fn decode_record(bytes: &[u8]) -> Result<RecordRef<'_>, RecordError> {
    let (&version, rest) = bytes.split_first().ok_or(RecordError::Truncated)?;
    if !(RECORD_VERSION..=RECORD_VERSION_ATTRS).contains(&version) {
        return Err(RecordError::UnknownVersion(version));
    }
    let (t_ms, rest) = rest
        .split_first_chunk::<8>()
        .ok_or(RecordError::Truncated)?;
    let (content_type, rest) = str8(rest)?;
    let content_type =
        std::str::from_utf8(content_type).map_err(|_| RecordError::ContentTypeNotUtf8)?;
    let (origin, rest) = if version == RECORD_VERSION {
        ("", rest)
    } else {
        let (origin, rest) = str8(rest)?;
        match std::str::from_utf8(origin) {
            Ok(o) if !o.is_empty() || version == RECORD_VERSION_ATTRS => (o, rest),
            _ => return Err(RecordError::BadOrigin),
        }
    };
    let (attrs, data) = if version == RECORD_VERSION_ATTRS {
        let (len, rest) = rest
            .split_first_chunk::<2>()
            .ok_or(RecordError::Truncated)?;
        let (attrs, data) = rest
            .split_at_checked(usize::from(u16::from_be_bytes(*len)))
            .ok_or(RecordError::Truncated)?;
        if attrs.is_empty() {
            return Err(RecordError::EmptyAttrs);
        }
        (attrs, data)
    } else {
        (&[][..], rest)
    };
    Ok(RecordRef {
        t_ms: u64::from_be_bytes(*t_ms),
        content_type,
        origin,
        attrs,
        data,
    })
}

/// Splits a one-byte-length-prefixed field off `bytes`.
fn str8(bytes: &[u8]) -> Result<(&[u8], &[u8]), RecordError> {
    let (&len, rest) = bytes.split_first().ok_or(RecordError::Truncated)?;
    rest.split_at_checked(usize::from(len))
        .ok_or(RecordError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_as_documented() {
        let bytes = encode_record(0x0102_0304_0506_0708, "a/b", "", b"", b"xyz").unwrap();
        assert_eq!(
            bytes,
            [
                1, 1, 2, 3, 4, 5, 6, 7, 8, 3, b'a', b'/', b'b', b'x', b'y', b'z'
            ]
        );
        let rec = decode_record(&bytes).unwrap();
        assert_eq!(
            rec,
            RecordRef {
                t_ms: 0x0102_0304_0506_0708,
                content_type: "a/b",
                origin: "",
                attrs: b"",
                data: b"xyz",
            }
        );
        assert_eq!(rec.encode().unwrap(), bytes);

        let with_origin = encode_record(1, "a", "id", b"", b"x").unwrap();
        assert_eq!(
            with_origin,
            [2, 0, 0, 0, 0, 0, 0, 0, 1, 1, b'a', 2, b'i', b'd', b'x']
        );
        let rec = decode_record(&with_origin).unwrap();
        assert_eq!((rec.origin, rec.data), ("id", &b"x"[..]));
        assert_eq!(rec.encode().unwrap(), with_origin);
        // A version 2 record must carry an origin (canonical form).
        let mut empty_origin = with_origin.clone();
        empty_origin[11] = 0;
        assert_eq!(
            decode_record(&empty_origin[..12]),
            Err(RecordError::BadOrigin)
        );
        assert_eq!(
            encode_record(1, "a", &"o".repeat(256), b"", b""),
            Err(RecordError::OriginTooLong { len: 256 })
        );
    }

    #[test]
    fn attributes_layout() {
        let bytes = encode_record(1, "c", "", b"\x07\x08", b"d").unwrap();
        assert_eq!(
            bytes,
            [3, 0, 0, 0, 0, 0, 0, 0, 1, 1, b'c', 0, 0, 2, 7, 8, b'd']
        );
        let rec = decode_record(&bytes).unwrap();
        assert_eq!(
            (rec.origin, rec.attrs, rec.data),
            ("", &[7, 8][..], &b"d"[..])
        );
        assert_eq!(rec.encode().unwrap(), bytes);
        let with_origin = encode_record(1, "c", "o", b"\x07", b"").unwrap();
        let rec = decode_record(&with_origin).unwrap();
        assert_eq!((rec.origin, rec.attrs, rec.data), ("o", &[7][..], &b""[..]));
        // Empty attributes are written as version 1 or 2, so a version 3 one is refused.
        let mut empty = bytes.clone();
        empty[13] = 0;
        assert_eq!(decode_record(&empty[..14]), Err(RecordError::EmptyAttrs));
        assert_eq!(decode_record(&bytes[..13]), Err(RecordError::Truncated));
        assert_eq!(decode_record(&bytes[..15]), Err(RecordError::Truncated));
        assert_eq!(
            encode_record(1, "c", "", &vec![0; MAX_ATTRS_LEN + 1], b""),
            Err(RecordError::AttrsTooLong {
                len: MAX_ATTRS_LEN + 1
            })
        );
    }

    #[test]
    fn empty_content_type_and_data() {
        let bytes = encode_record(u64::MAX, "", "", b"", b"").unwrap();
        assert_eq!(bytes.len(), RECORD_HEADER_LEN);
        let rec = decode_record(&bytes).unwrap();
        assert_eq!(
            (rec.t_ms, rec.content_type, rec.data),
            (u64::MAX, "", &b""[..])
        );
    }

    #[test]
    fn content_type_length_limit() {
        let longest = "x".repeat(MAX_CONTENT_TYPE_LEN);
        let bytes = encode_record(7, &longest, "", b"", b"d").unwrap();
        assert_eq!(decode_record(&bytes).unwrap().content_type, longest);
        let too_long = "é".repeat(128);
        assert_eq!(
            encode_record(7, &too_long, "", b"", b"d"),
            Err(RecordError::ContentTypeTooLong { len: 256 })
        );
    }

    #[test]
    fn refuses_malformed_records() {
        let good = encode_record(5, "ct", "", b"", b"data").unwrap();
        assert_eq!(decode_record(&[]), Err(RecordError::Truncated));
        // Every proper prefix that ends inside the header or the content type is truncated.
        for len in 1..RECORD_HEADER_LEN + 2 {
            assert_eq!(
                decode_record(&good[..len]),
                Err(RecordError::Truncated),
                "{len}"
            );
        }
        // Cutting the data short still leaves a valid (shorter) record.
        assert_eq!(decode_record(&good[..good.len() - 1]).unwrap().data, b"dat");
        let mut v4 = good.clone();
        v4[0] = 4;
        assert_eq!(decode_record(&v4), Err(RecordError::UnknownVersion(4)));
        let mut bad_utf8 = good.clone();
        bad_utf8[RECORD_HEADER_LEN] = 0xff;
        assert_eq!(
            decode_record(&bad_utf8),
            Err(RecordError::ContentTypeNotUtf8)
        );
        let mut long_ct = good;
        long_ct[RECORD_HEADER_LEN - 1] = 200;
        assert_eq!(decode_record(&long_ct), Err(RecordError::Truncated));
    }

    #[test]
    fn encoding_into_a_buffer_appends_the_same_bytes() {
        let cases = [
            RecordRef {
                t_ms: 0x0102_0304_0506_0708,
                content_type: "a/b",
                origin: "",
                attrs: b"",
                data: b"xyz",
            },
            RecordRef {
                t_ms: 1,
                content_type: "application/json",
                origin: "id",
                attrs: b"",
                data: b"{}",
            },
            RecordRef {
                t_ms: u64::MAX,
                content_type: "c",
                origin: "o",
                attrs: b"\x07\x08",
                data: b"d",
            },
            RecordRef {
                t_ms: 0,
                content_type: "",
                origin: "",
                attrs: b"",
                data: b"",
            },
        ];
        let mut out = b"prefix".to_vec();
        let mut expected = out.clone();
        for r in cases {
            encode_record_into(&mut out, r.t_ms, r.content_type, r.origin, r.attrs, r.data)
                .unwrap();
            expected.extend(r.encode().unwrap());
            assert_eq!(out, expected);
        }
        // A refused record leaves the buffer as it was.
        let long = "x".repeat(MAX_CONTENT_TYPE_LEN + 1);
        assert_eq!(
            encode_record_into(&mut out, 1, &long, "", b"", b"d"),
            Err(RecordError::ContentTypeTooLong { len: long.len() })
        );
        assert_eq!(
            encode_record_into(&mut out, 1, "c", &"o".repeat(256), b"", b"d"),
            Err(RecordError::OriginTooLong { len: 256 })
        );
        assert_eq!(out, expected);
    }
}
