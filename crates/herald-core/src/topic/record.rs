//! The store record of one topic event.
//!
//! Layout:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | version: [`RECORD_VERSION`] (1) without an origin, [`RECORD_VERSION_ORIGIN`] (2) with one |
//! | 8 | `t_ms`, the append time in ms since the Unix epoch, big-endian |
//! | 1 | `ct_len`, the content type's length in bytes |
//! | `ct_len` | the content type, UTF-8 |
//! | 1 | version 2 only: `origin_len`, the origin's length in bytes (1 to 255) |
//! | `origin_len` | version 2 only: the origin, UTF-8 (who published the event, e.g. an hpfeeds ident) |
//! | rest | the event's data |
//!
//! The format is canonical: a record that decodes encodes back to the same bytes (an event
//! without an origin is always written as version 1, so records written before origins existed
//! read back unchanged; a version 2 record with an empty origin is refused).

/// The version byte of a record without an origin.
pub const RECORD_VERSION: u8 = 1;

/// The version byte of a record with an origin.
pub const RECORD_VERSION_ORIGIN: u8 = 2;

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
    /// The event's data.
    pub data: &'a [u8],
}

impl RecordRef<'_> {
    /// Encodes the record; see [`encode_record`].
    ///
    /// # Errors
    /// As [`encode_record`].
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        encode_record(self.t_ms, self.content_type, self.origin, self.data)
    }
}

/// Why bytes are not a record, or a record cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The bytes end before the header, the content type or the origin does.
    #[error("event record is truncated")]
    Truncated,
    /// The version byte is not [`RECORD_VERSION`] or [`RECORD_VERSION_ORIGIN`].
    #[error("event record has unknown version {0}")]
    UnknownVersion(u8),
    /// The content type is not valid UTF-8.
    #[error("event record's content type is not valid UTF-8")]
    ContentTypeNotUtf8,
    /// The origin is not valid UTF-8, or empty in a version 2 record.
    #[error("event record's origin is empty or not valid UTF-8")]
    BadOrigin,
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
}

/// Encodes an event as a store record (the layout is in the module documentation); an empty
/// `origin` means none.
///
/// Callers are expected to have refused content types and origins over 255 bytes already, with
/// an error of their protocol; this is a backstop, never a panic or a silent truncation.
///
/// # Errors
/// [`RecordError::ContentTypeTooLong`] or [`RecordError::OriginTooLong`].
pub fn encode_record(
    t_ms: u64,
    content_type: &str,
    origin: &str,
    data: &[u8],
) -> Result<Vec<u8>, RecordError> {
    let ct_len = u8::try_from(content_type.len()).map_err(|_| RecordError::ContentTypeTooLong {
        len: content_type.len(),
    })?;
    let origin_len =
        u8::try_from(origin.len()).map_err(|_| RecordError::OriginTooLong { len: origin.len() })?;
    let extra = if origin.is_empty() {
        0
    } else {
        1 + origin.len()
    };
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + content_type.len() + extra + data.len());
    out.push(if origin.is_empty() {
        RECORD_VERSION
    } else {
        RECORD_VERSION_ORIGIN
    });
    out.extend_from_slice(&t_ms.to_be_bytes());
    out.push(ct_len);
    out.extend_from_slice(content_type.as_bytes());
    if !origin.is_empty() {
        out.push(origin_len);
        out.extend_from_slice(origin.as_bytes());
    }
    out.extend_from_slice(data);
    Ok(out)
}

/// Decodes a store record written by [`encode_record`]. Never panics, whatever the bytes.
///
/// # Errors
/// [`RecordError::Truncated`], [`RecordError::UnknownVersion`],
/// [`RecordError::ContentTypeNotUtf8`] or [`RecordError::BadOrigin`] when `bytes` is not a
/// record.
pub fn decode_record(bytes: &[u8]) -> Result<RecordRef<'_>, RecordError> {
    let (&version, rest) = bytes.split_first().ok_or(RecordError::Truncated)?;
    if version != RECORD_VERSION && version != RECORD_VERSION_ORIGIN {
        return Err(RecordError::UnknownVersion(version));
    }
    let (t_ms, rest) = rest
        .split_first_chunk::<8>()
        .ok_or(RecordError::Truncated)?;
    let (content_type, rest) = str8(rest)?;
    let content_type =
        std::str::from_utf8(content_type).map_err(|_| RecordError::ContentTypeNotUtf8)?;
    let (origin, data) = if version == RECORD_VERSION_ORIGIN {
        let (origin, data) = str8(rest)?;
        match std::str::from_utf8(origin) {
            Ok(o) if !o.is_empty() => (o, data),
            _ => return Err(RecordError::BadOrigin),
        }
    } else {
        ("", rest)
    };
    Ok(RecordRef {
        t_ms: u64::from_be_bytes(*t_ms),
        content_type,
        origin,
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
        let bytes = encode_record(0x0102_0304_0506_0708, "a/b", "", b"xyz").unwrap();
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
                data: b"xyz",
            }
        );
        assert_eq!(rec.encode().unwrap(), bytes);

        let with_origin = encode_record(1, "a", "id", b"x").unwrap();
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
            encode_record(1, "a", &"o".repeat(256), b""),
            Err(RecordError::OriginTooLong { len: 256 })
        );
    }

    #[test]
    fn empty_content_type_and_data() {
        let bytes = encode_record(u64::MAX, "", "", b"").unwrap();
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
        let bytes = encode_record(7, &longest, "", b"d").unwrap();
        assert_eq!(decode_record(&bytes).unwrap().content_type, longest);
        let too_long = "é".repeat(128);
        assert_eq!(
            encode_record(7, &too_long, "", b"d"),
            Err(RecordError::ContentTypeTooLong { len: 256 })
        );
    }

    #[test]
    fn refuses_malformed_records() {
        let good = encode_record(5, "ct", "", b"data").unwrap();
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
        let mut v3 = good.clone();
        v3[0] = 3;
        assert_eq!(decode_record(&v3), Err(RecordError::UnknownVersion(3)));
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
}
