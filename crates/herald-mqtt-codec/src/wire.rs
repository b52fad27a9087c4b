//! The wire primitives of MQTT: integers, Variable Byte Integers, strings and binary data, read
//! from a bounded [`Reader`] and written to a [`Sink`].
//!
//! Reading never panics: every read checks that its bytes are present and fails with
//! [`DecodeError::Malformed`] otherwise (inside a complete packet, missing bytes are malformed).

use bytes::{Buf, Bytes, BytesMut};

use crate::DecodeError;

/// The largest value a Variable Byte Integer can hold (four bytes).
pub(crate) const VARINT_MAX: u32 = 268_435_455;

/// The longest string or binary field (its length is a `u16`).
pub(crate) const FIELD_MAX: usize = u16::MAX as usize;

/// Shorthand for a malformed-packet error.
pub(crate) fn malformed<T>(what: &'static str) -> Result<T, DecodeError> {
    Err(DecodeError::Malformed(what))
}

/// Shorthand for a protocol error.
pub(crate) fn protocol_error<T>(what: &'static str) -> Result<T, DecodeError> {
    Err(DecodeError::Protocol(what))
}

/// The outcome of reading a Variable Byte Integer from a buffer that may be incomplete.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Varint {
    /// The value and the number of bytes it took.
    Done(u32, usize),
    /// The buffer ends before the last byte of the integer.
    Incomplete,
}

/// Reads a Variable Byte Integer from the front of `buf`. More than four bytes, or an encoding
/// longer than needed, is malformed.
pub(crate) fn read_varint(buf: &[u8]) -> Result<Varint, DecodeError> {
    let mut value: u32 = 0;
    for (i, &byte) in buf.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return malformed("variable byte integer not minimally encoded");
            }
            return Ok(Varint::Done(value, i + 1));
        }
        if i == 3 {
            return malformed("variable byte integer longer than 4 bytes");
        }
    }
    Ok(Varint::Incomplete)
}

/// The number of bytes the Variable Byte Integer encoding of `v` takes (values above
/// [`VARINT_MAX`] are written saturated, so they take 4).
pub(crate) fn varint_len(v: u32) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// A cursor over the bytes of one field group (a packet body, a property list).
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    /// Reads from `buf`.
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    /// Whether every byte was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Fails unless every byte was read.
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            malformed(what)
        }
    }

    /// The next `n` bytes, zero-copy.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        if n > self.buf.len() {
            return malformed(what);
        }
        Ok(self.buf.split_to(n))
    }

    /// Every byte left, zero-copy.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// The next `N` bytes, copied (a fixed-size field: no reference to the buffer is taken).
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let Some(Ok(array)) = self.buf.get(..N).map(<[u8; N]>::try_from) else {
            return malformed(what);
        };
        self.buf.advance(N);
        Ok(array)
    }

    /// A byte.
    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let [b] = self.array::<1>(what)?;
        Ok(b)
    }

    /// A big-endian two byte integer.
    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    /// A big-endian four byte integer.
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// A packet identifier, which must not be 0.
    pub(crate) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16("truncated packet identifier")? {
            0 => malformed("packet identifier 0"),
            id => Ok(id),
        }
    }

    /// A Variable Byte Integer, complete within this reader.
    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        match read_varint(&self.buf)? {
            Varint::Done(value, len) => {
                self.take(len, what)?;
                Ok(value)
            }
            Varint::Incomplete => malformed(what),
        }
    }

    /// Binary data: a two byte length and that many bytes, zero-copy.
    pub(crate) fn binary(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    /// A UTF-8 string: a two byte length and that many bytes of UTF-8 without U+0000.
    pub(crate) fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let len = usize::from(self.u16(what)?);
        // Copied straight out of the buffer: a string owns its bytes anyway.
        let Some(bytes) = self.buf.get(..len) else {
            return malformed(what);
        };
        let Ok(s) = std::str::from_utf8(bytes) else {
            return malformed("invalid UTF-8 in a string");
        };
        if s.contains('\0') {
            return malformed("U+0000 in a string");
        }
        let s = s.to_owned();
        self.buf.advance(len);
        Ok(s)
    }
}

/// Where encoded bytes go: a buffer, or a [`Counter`] that only measures.
pub(crate) trait Sink {
    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]);

    /// Appends a byte.
    fn put_u8(&mut self, b: u8) {
        self.put(&[b]);
    }

    /// Appends a big-endian two byte integer.
    fn put_u16(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }

    /// Appends a big-endian four byte integer.
    fn put_u32(&mut self, v: u32) {
        self.put(&v.to_be_bytes());
    }

    /// Appends a Variable Byte Integer; values above [`VARINT_MAX`] are saturated.
    fn put_varint(&mut self, v: u32) {
        let mut v = v.min(VARINT_MAX);
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.put_u8(byte);
                return;
            }
            self.put_u8(byte | 0x80);
        }
    }

    /// Appends binary data, truncated to 65535 bytes.
    fn put_binary(&mut self, b: &[u8]) {
        let b = b.get(..FIELD_MAX).unwrap_or(b);
        self.put_u16(b.len() as u16);
        self.put(b);
    }

    /// Appends a string, truncated at a character boundary to 65535 bytes.
    fn put_str(&mut self, s: &str) {
        let mut end = s.len().min(FIELD_MAX);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.put_binary(s.as_bytes().get(..end).unwrap_or_default());
    }
}

impl Sink for BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A [`Sink`] that counts the bytes it is given.
#[derive(Debug, Default)]
pub(crate) struct Counter(pub(crate) usize);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// The number of bytes `write` puts into a sink.
pub(crate) fn measure(write: impl FnOnce(&mut Counter)) -> usize {
    let mut counter = Counter::default();
    write(&mut counter);
    counter.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_varint(v: u32) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_varint(v);
        out.to_vec()
    }

    #[test]
    fn varint_round_trips_at_the_boundaries() {
        for v in [
            0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, VARINT_MAX,
        ] {
            let bytes = encode_varint(v);
            assert_eq!(bytes.len(), varint_len(v));
            assert_eq!(read_varint(&bytes), Ok(Varint::Done(v, bytes.len())));
        }
        assert_eq!(encode_varint(321), [0xc1, 0x02]);
        assert_eq!(encode_varint(u32::MAX), [0xff, 0xff, 0xff, 0x7f]);
    }

    #[test]
    fn varint_errors() {
        assert_eq!(read_varint(&[0x80, 0x80]), Ok(Varint::Incomplete));
        assert_eq!(read_varint(&[]), Ok(Varint::Incomplete));
        assert!(read_varint(&[0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        assert!(read_varint(&[0xff, 0xff, 0xff, 0x80]).is_err());
        assert!(read_varint(&[0x80, 0x00]).is_err());
    }

    #[test]
    fn strings_are_checked_and_truncated() {
        let mut r = Reader::new(Bytes::from_static(&[0, 2, b'a', 0]));
        assert!(r.string("s").is_err());
        let mut r = Reader::new(Bytes::from_static(&[0, 2, 0xc3, 0x28]));
        assert!(r.string("s").is_err());
        let mut r = Reader::new(Bytes::from_static(&[0, 3, b'a']));
        assert!(r.string("s").is_err());

        let long = "é".repeat(40_000);
        let mut out = BytesMut::new();
        out.put_str(&long);
        assert_eq!(out.len(), 2 + 65_534);
        let mut r = Reader::new(out.freeze());
        assert_eq!(r.string("s").map(|s| s.len()), Ok(65_534));
    }
}
