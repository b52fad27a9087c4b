//! The store record of one topic event.
//!
//! Layout, version 1:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | version, always [`RECORD_VERSION`] |
//! | 8 | `t_ms`, the append time in ms since the Unix epoch, big-endian |
//! | 1 | `ct_len`, the content type's length in bytes |
//! | `ct_len` | the content type, UTF-8 |
//! | rest | the event's data |
//!
//! The format is canonical: a record that decodes encodes back to the same bytes.

/// The version byte [`encode_record`] writes and the only one [`decode_record`] accepts.
pub const RECORD_VERSION: u8 = 1;

/// The longest content type a record can hold, in bytes. Protocol adapters refuse longer ones
/// before they reach [`encode_record`].
pub const MAX_CONTENT_TYPE_LEN: usize = u8::MAX as usize;

/// The size of a record without its content type and data: version, `t_ms` and `ct_len`.
pub const RECORD_HEADER_LEN: usize = 1 + 8 + 1;

/// One decoded event record, borrowing from the bytes it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordRef<'a> {
    /// When the event was appended, in ms since the Unix epoch.
    pub t_ms: u64,
    /// The event's content type (e.g. `application/json`); may be empty.
    pub content_type: &'a str,
    /// The event's data.
    pub data: &'a [u8],
}

impl RecordRef<'_> {
    /// Encodes the record; see [`encode_record`].
    ///
    /// # Errors
    /// [`RecordError::ContentTypeTooLong`] when the content type is over
    /// [`MAX_CONTENT_TYPE_LEN`] bytes.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        encode_record(self.t_ms, self.content_type, self.data)
    }
}

/// Why bytes are not a record, or a record cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The bytes end before the header or the content type does.
    #[error("event record is truncated")]
    Truncated,
    /// The version byte is not [`RECORD_VERSION`].
    #[error("event record has unknown version {0}")]
    UnknownVersion(u8),
    /// The content type is not valid UTF-8.
    #[error("event record's content type is not valid UTF-8")]
    ContentTypeNotUtf8,
    /// Encoding only: the content type is longer than [`MAX_CONTENT_TYPE_LEN`] bytes.
    #[error("content type is {len} bytes, more than the limit of {MAX_CONTENT_TYPE_LEN}")]
    ContentTypeTooLong {
        /// The content type's length in bytes.
        len: usize,
    },
}

/// Encodes an event as a store record (the layout is in the module documentation).
///
/// Callers are expected to have refused content types over [`MAX_CONTENT_TYPE_LEN`] bytes
/// already, with an error of their protocol; this one is a backstop, never a panic or a silent
/// truncation.
///
/// # Errors
/// [`RecordError::ContentTypeTooLong`] when `content_type` is over [`MAX_CONTENT_TYPE_LEN`]
/// bytes.
pub fn encode_record(t_ms: u64, content_type: &str, data: &[u8]) -> Result<Vec<u8>, RecordError> {
    let ct_len = u8::try_from(content_type.len()).map_err(|_| RecordError::ContentTypeTooLong {
        len: content_type.len(),
    })?;
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + content_type.len() + data.len());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&t_ms.to_be_bytes());
    out.push(ct_len);
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

/// Decodes a store record written by [`encode_record`]. Never panics, whatever the bytes.
///
/// # Errors
/// [`RecordError::Truncated`], [`RecordError::UnknownVersion`] or
/// [`RecordError::ContentTypeNotUtf8`] when `bytes` is not a version 1 record.
pub fn decode_record(bytes: &[u8]) -> Result<RecordRef<'_>, RecordError> {
    let (&version, rest) = bytes.split_first().ok_or(RecordError::Truncated)?;
    if version != RECORD_VERSION {
        return Err(RecordError::UnknownVersion(version));
    }
    let (t_ms, rest) = rest
        .split_first_chunk::<8>()
        .ok_or(RecordError::Truncated)?;
    let (&ct_len, rest) = rest.split_first().ok_or(RecordError::Truncated)?;
    let (content_type, data) = rest
        .split_at_checked(usize::from(ct_len))
        .ok_or(RecordError::Truncated)?;
    let content_type =
        std::str::from_utf8(content_type).map_err(|_| RecordError::ContentTypeNotUtf8)?;
    Ok(RecordRef {
        t_ms: u64::from_be_bytes(*t_ms),
        content_type,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_as_documented() {
        let bytes = encode_record(0x0102_0304_0506_0708, "a/b", b"xyz").unwrap();
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
                data: b"xyz",
            }
        );
        assert_eq!(rec.encode().unwrap(), bytes);
    }

    #[test]
    fn empty_content_type_and_data() {
        let bytes = encode_record(u64::MAX, "", b"").unwrap();
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
        let bytes = encode_record(7, &longest, b"d").unwrap();
        assert_eq!(decode_record(&bytes).unwrap().content_type, longest);
        let too_long = "é".repeat(128);
        assert_eq!(
            encode_record(7, &too_long, b"d"),
            Err(RecordError::ContentTypeTooLong { len: 256 })
        );
    }

    #[test]
    fn refuses_malformed_records() {
        let good = encode_record(5, "ct", b"data").unwrap();
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
        let mut v2 = good.clone();
        v2[0] = 2;
        assert_eq!(decode_record(&v2), Err(RecordError::UnknownVersion(2)));
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
