//! The hpfeeds wire codec (`seed-contracts.md` section 3.1): framing, the per-opcode size
//! limits and the fields of each opcode. Pure: no I/O, no clock, no randomness.
//!
//! # Framing
//!
//! | bytes | field |
//! |---|---|
//! | 4 | total frame length, big-endian, **including** this 5-byte header |
//! | 1 | opcode ([`Opcode`]) |
//! | rest | the opcode's fields |
//!
//! | opcode | fields | largest frame ([`Opcode::max_frame_len`]) |
//! |---|---|---|
//! | 0 `OP_ERROR` | UTF-8 text to the end of the frame | 5 + 1 MiB |
//! | 1 `OP_INFO` | str8 broker name, 4-byte nonce | 5 + 256 + 20 |
//! | 2 `OP_AUTH` | str8 ident, SHA-1(nonce ‖ secret) (20 bytes) | 5 + 256 + 20 |
//! | 3 `OP_PUBLISH` | str8 ident, str8 channel, payload to the end of the frame | 5 + 1 MiB |
//! | 4 `OP_SUBSCRIBE` | str8 ident, channel to the end of the frame (no length byte) | 1 MiB |
//! | 5 `OP_UNSUBSCRIBE` | as `OP_SUBSCRIBE` | 1 MiB |
//!
//! A str8 is one length byte then that many bytes of UTF-8, so it holds at most
//! [`MAX_STR8_LEN`] bytes.
//!
//! # Decoding
//!
//! [`Decoder::decode`] takes frames off the front of a [`BytesMut`] as they complete. It checks
//! a frame's 5-byte header (known opcode, length at least 5 and at most the opcode's limit)
//! as soon as the header is in, **before** any of the body is: a peer that announces an
//! oversize frame is refused at once, so a reader that reads only while `decode` returns
//! `Ok(None)` never holds more than one frame's limit plus one read.
//!
//! Choices where the Python broker (hpfeeds 3.x) is loose or undefined:
//! - Text fields (idents, channels, the broker name, error text) are decoded as UTF-8 into
//!   [`String`]s, and invalid UTF-8 is a protocol error ([`FrameError::NotUtf8`]). Python
//!   decodes them with `.decode('utf-8')` too, and its broker's connection dies on the
//!   exception; Herald's channels become topic path segments and idents are compared and
//!   logged as text, so there is no use for undecodable ones.
//! - The AUTH digest is kept as raw [`Bytes`] of whatever length was sent (the rest of the
//!   frame after the ident). Python compares it with the expected 20-byte digest, so a digest of
//!   the wrong length simply fails authentication (`Authentication failed for <ident>`); the
//!   broker can do the same.
//! - A str8 whose length byte runs past the end of the frame, or that is missing, is
//!   [`FrameError::Truncated`] (Python silently takes the shorter string, or crashes on a missing
//!   length byte).
//! - An INFO nonce that is not exactly [`NONCE_LEN`] bytes is [`FrameError::BadNonce`].
//! - A length below the header's 5 bytes is [`FrameError::TooShort`] (Python reads it as a
//!   signed integer and misbehaves).
//!
//! [`Decoder::peek_opcode`] gives the opcode of the next frame as soon as its header is in
//! (checked the same way), without its body: what a broker needs to refuse a first frame that
//! is not `OP_AUTH`, whatever follows.
//!
//! A failed `decode` leaves the buffer as it was, so calling it again gives the same error: the
//! stream cannot be resynchronised and the caller should drop the connection (after an
//! `OP_ERROR` if it likes).
//!
//! The format is canonical: a decoded frame encodes back to exactly the bytes it came from.
//!
//! # Encoding
//!
//! [`encode`] (or [`Frame::encode`], [`Frame::to_bytes`], and [`encode_publish`] for a fan-out
//! that holds borrowed fields) refuses, with an [`EncodeError`] and leaving the buffer as it
//! was, a str8 field over [`MAX_STR8_LEN`] bytes and a frame over its opcode's limit: what it
//! writes, any hpfeeds peer accepts. A broker relaying an event too large for one PUBLISH frame
//! has to skip it.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The size of a frame header: the 4-byte length and the opcode.
pub const HEADER_LEN: usize = 5;

/// hpfeeds' `MAXBUF`, 1 MiB: the base of the size limits (see [`Opcode::max_frame_len`]).
pub const MAX_BUF: usize = 1024 * 1024;

/// The longest string a str8 field holds, in bytes.
pub const MAX_STR8_LEN: usize = u8::MAX as usize;

/// The length of the nonce in an `OP_INFO` frame.
pub const NONCE_LEN: usize = 4;

/// The length of a well-formed `OP_AUTH` digest (SHA-1). The codec keeps whatever length was
/// sent; see the module documentation.
pub const AUTH_HASH_LEN: usize = 20;

/// The largest frame of any opcode ([`Opcode::Error`] and [`Opcode::Publish`]): 5 + 1 MiB.
pub const MAX_FRAME_LEN: usize = HEADER_LEN + MAX_BUF;

/// The limit of `OP_INFO` and `OP_AUTH` frames: header, a 256-byte string allowance and a
/// 20-byte digest.
const SMALL_FRAME_LEN: usize = HEADER_LEN + 256 + AUTH_HASH_LEN;

/// A frame's opcode, the fifth byte of its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// `OP_ERROR` (0): an error text; the sender closes the connection after it.
    Error,
    /// `OP_INFO` (1): the broker's name and the nonce to authenticate with.
    Info,
    /// `OP_AUTH` (2): an ident and its proof of the secret.
    Auth,
    /// `OP_PUBLISH` (3): a payload on a channel.
    Publish,
    /// `OP_SUBSCRIBE` (4).
    Subscribe,
    /// `OP_UNSUBSCRIBE` (5).
    Unsubscribe,
}

impl Opcode {
    /// The opcode of a wire byte; `None` for the unknown ones (above 5).
    #[must_use]
    pub const fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => Self::Error,
            1 => Self::Info,
            2 => Self::Auth,
            3 => Self::Publish,
            4 => Self::Subscribe,
            5 => Self::Unsubscribe,
            _ => return None,
        })
    }

    /// The wire byte of the opcode.
    #[must_use]
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Error => 0,
            Self::Info => 1,
            Self::Auth => 2,
            Self::Publish => 3,
            Self::Subscribe => 4,
            Self::Unsubscribe => 5,
        }
    }

    /// The largest frame of this opcode, header included: 5 + 256 + 20 for `OP_INFO` and
    /// `OP_AUTH`, 5 + 1 MiB for `OP_ERROR` and `OP_PUBLISH`, 1 MiB for the others (the limits
    /// of hpfeeds' `SIZES` table).
    #[must_use]
    pub const fn max_frame_len(self) -> usize {
        match self {
            Self::Info | Self::Auth => SMALL_FRAME_LEN,
            Self::Error | Self::Publish => MAX_FRAME_LEN,
            Self::Subscribe | Self::Unsubscribe => MAX_BUF,
        }
    }

    /// The protocol's name of the opcode, e.g. `OP_PUBLISH`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Error => "OP_ERROR",
            Self::Info => "OP_INFO",
            Self::Auth => "OP_AUTH",
            Self::Publish => "OP_PUBLISH",
            Self::Subscribe => "OP_SUBSCRIBE",
            Self::Unsubscribe => "OP_UNSUBSCRIBE",
        }
    }
}

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A text field of a frame, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// The ident of `OP_AUTH`, `OP_PUBLISH`, `OP_SUBSCRIBE` and `OP_UNSUBSCRIBE`.
    Ident,
    /// The channel of `OP_PUBLISH`, `OP_SUBSCRIBE` and `OP_UNSUBSCRIBE`.
    Channel,
    /// The broker name of `OP_INFO`.
    Name,
    /// The text of `OP_ERROR`.
    Text,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ident => "ident",
            Self::Channel => "channel",
            Self::Name => "broker name",
            Self::Text => "error text",
        })
    }
}

/// Why bytes received are not an hpfeeds frame: a protocol error, after which the connection
/// should be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The opcode byte is above 5.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u8),
    /// The length field is below the header's 5 bytes.
    #[error("{opcode} frame length {len} is less than the {HEADER_LEN}-byte header")]
    TooShort {
        /// The frame's opcode.
        opcode: Opcode,
        /// The length field.
        len: u32,
    },
    /// The length field is over the opcode's limit ([`Opcode::max_frame_len`]).
    #[error("{opcode} frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// The frame's opcode.
        opcode: Opcode,
        /// The length field.
        len: u32,
        /// The opcode's limit.
        max: usize,
    },
    /// The frame ends before a str8 field's length byte or its last byte.
    #[error("{opcode} frame ends inside its {field}")]
    Truncated {
        /// The frame's opcode.
        opcode: Opcode,
        /// The field cut short.
        field: Field,
    },
    /// A text field is not valid UTF-8.
    #[error("{field} of {opcode} frame is not valid UTF-8")]
    NotUtf8 {
        /// The frame's opcode.
        opcode: Opcode,
        /// The field.
        field: Field,
    },
    /// The nonce of an `OP_INFO` frame is not [`NONCE_LEN`] bytes.
    #[error("OP_INFO nonce is {len} bytes, not {NONCE_LEN}")]
    BadNonce {
        /// The nonce's length.
        len: usize,
    },
}

/// Why a [`Frame`] cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A str8 field is over [`MAX_STR8_LEN`] bytes.
    #[error("{field} is {len} bytes, more than the {MAX_STR8_LEN} a str8 field holds")]
    Str8TooLong {
        /// The field.
        field: Field,
        /// Its length in bytes.
        len: usize,
    },
    /// The frame would be over its opcode's limit ([`Opcode::max_frame_len`]).
    #[error("{opcode} frame would be {len} bytes, over the limit of {max} bytes")]
    TooLarge {
        /// The frame's opcode.
        opcode: Opcode,
        /// The frame's length, header included.
        len: usize,
        /// The opcode's limit.
        max: usize,
    },
}

/// One hpfeeds message.
///
/// The constructors do not check lengths; [`encode`] does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Frame {
    /// `OP_ERROR`: the error text.
    Error(String),
    /// `OP_INFO`, the broker's greeting.
    Info {
        /// The broker's name (`hpfeeds` by default).
        name: String,
        /// The random nonce the client hashes its secret with.
        nonce: [u8; NONCE_LEN],
    },
    /// `OP_AUTH`, the client's first message.
    Auth {
        /// Who the client claims to be.
        ident: String,
        /// SHA-1(nonce ‖ secret), raw; [`AUTH_HASH_LEN`] bytes when well-formed, but kept
        /// whatever its length (a wrong length fails authentication, it is not a protocol
        /// error).
        hash: Bytes,
    },
    /// `OP_PUBLISH`. From a client, `ident` is its own; from the broker, the publisher's.
    Publish {
        /// The publisher's ident.
        ident: String,
        /// The channel.
        channel: String,
        /// The payload, opaque bytes.
        payload: Bytes,
    },
    /// `OP_SUBSCRIBE`.
    Subscribe {
        /// The subscriber's ident (the broker does not check it).
        ident: String,
        /// The channel; not a str8, so it may be over [`MAX_STR8_LEN`] bytes (though no
        /// PUBLISH can name such a channel).
        channel: String,
    },
    /// `OP_UNSUBSCRIBE`.
    Unsubscribe {
        /// The subscriber's ident (the broker does not check it).
        ident: String,
        /// The channel, as in [`Frame::Subscribe`].
        channel: String,
    },
}

impl Frame {
    /// An `OP_ERROR` frame.
    pub fn error(text: impl Into<String>) -> Self {
        Self::Error(text.into())
    }

    /// An `OP_INFO` frame.
    pub fn info(name: impl Into<String>, nonce: [u8; NONCE_LEN]) -> Self {
        Self::Info {
            name: name.into(),
            nonce,
        }
    }

    /// An `OP_AUTH` frame with an already computed digest.
    pub fn auth(ident: impl Into<String>, hash: impl Into<Bytes>) -> Self {
        Self::Auth {
            ident: ident.into(),
            hash: hash.into(),
        }
    }

    /// An `OP_PUBLISH` frame.
    pub fn publish(
        ident: impl Into<String>,
        channel: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> Self {
        Self::Publish {
            ident: ident.into(),
            channel: channel.into(),
            payload: payload.into(),
        }
    }

    /// An `OP_SUBSCRIBE` frame.
    pub fn subscribe(ident: impl Into<String>, channel: impl Into<String>) -> Self {
        Self::Subscribe {
            ident: ident.into(),
            channel: channel.into(),
        }
    }

    /// An `OP_UNSUBSCRIBE` frame.
    pub fn unsubscribe(ident: impl Into<String>, channel: impl Into<String>) -> Self {
        Self::Unsubscribe {
            ident: ident.into(),
            channel: channel.into(),
        }
    }

    /// The frame's opcode.
    #[must_use]
    pub const fn opcode(&self) -> Opcode {
        match self {
            Self::Error(_) => Opcode::Error,
            Self::Info { .. } => Opcode::Info,
            Self::Auth { .. } => Opcode::Auth,
            Self::Publish { .. } => Opcode::Publish,
            Self::Subscribe { .. } => Opcode::Subscribe,
            Self::Unsubscribe { .. } => Opcode::Unsubscribe,
        }
    }

    /// The length of the encoded frame, header included, whether or not it is within the
    /// limits [`encode`] checks.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        let body = match self {
            Self::Error(text) => text.len(),
            Self::Info { name, .. } => 1 + name.len() + NONCE_LEN,
            Self::Auth { ident, hash } => 1 + ident.len() + hash.len(),
            Self::Publish {
                ident,
                channel,
                payload,
            } => 1 + ident.len() + 1 + channel.len() + payload.len(),
            Self::Subscribe { ident, channel } | Self::Unsubscribe { ident, channel } => {
                1 + ident.len() + channel.len()
            }
        };
        HEADER_LEN.saturating_add(body)
    }

    /// Appends the encoded frame to `dst`; see [`encode`].
    ///
    /// # Errors
    /// As [`encode`].
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        encode(self, dst)
    }

    /// The encoded frame; see [`encode`].
    ///
    /// # Errors
    /// As [`encode`].
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut dst = BytesMut::with_capacity(self.encoded_len().min(MAX_FRAME_LEN));
        encode(self, &mut dst)?;
        Ok(dst.freeze())
    }
}

/// Appends `frame`, encoded, to `dst`.
///
/// # Errors
/// [`EncodeError::Str8TooLong`] when a str8 field (ident, `OP_PUBLISH` channel, broker name)
/// is over [`MAX_STR8_LEN`] bytes, [`EncodeError::TooLarge`] when the frame would be over its
/// opcode's limit. `dst` is left as it was.
pub fn encode(frame: &Frame, dst: &mut BytesMut) -> Result<(), EncodeError> {
    match frame {
        Frame::Error(text) => write_frame(Opcode::Error, &[Part::Raw(text.as_bytes())], dst),
        Frame::Info { name, nonce } => write_frame(
            Opcode::Info,
            &[str8(Field::Name, name)?, Part::Raw(nonce)],
            dst,
        ),
        Frame::Auth { ident, hash } => write_frame(
            Opcode::Auth,
            &[str8(Field::Ident, ident)?, Part::Raw(hash)],
            dst,
        ),
        Frame::Publish {
            ident,
            channel,
            payload,
        } => encode_publish(ident, channel, payload, dst),
        Frame::Subscribe { ident, channel } => write_frame(
            Opcode::Subscribe,
            &[str8(Field::Ident, ident)?, Part::Raw(channel.as_bytes())],
            dst,
        ),
        Frame::Unsubscribe { ident, channel } => write_frame(
            Opcode::Unsubscribe,
            &[str8(Field::Ident, ident)?, Part::Raw(channel.as_bytes())],
            dst,
        ),
    }
}

/// Appends an `OP_PUBLISH` frame to `dst`, from borrowed fields: the same bytes as encoding
/// [`Frame::publish`]`(ident, channel, payload)`, without building the frame.
///
/// # Errors
/// As [`encode`]; `dst` is left as it was.
pub fn encode_publish(
    ident: &str,
    channel: &str,
    payload: &[u8],
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    write_frame(
        Opcode::Publish,
        &[
            str8(Field::Ident, ident)?,
            str8(Field::Channel, channel)?,
            Part::Raw(payload),
        ],
        dst,
    )
}

/// A piece of a frame body, its str8 length already checked.
enum Part<'a> {
    Str8(u8, &'a [u8]),
    Raw(&'a [u8]),
}

impl Part<'_> {
    fn len(&self) -> usize {
        match self {
            Self::Str8(_, s) => 1 + s.len(),
            Self::Raw(b) => b.len(),
        }
    }
}

fn str8<'a>(field: Field, s: &'a str) -> Result<Part<'a>, EncodeError> {
    let len = u8::try_from(s.len()).map_err(|_| EncodeError::Str8TooLong {
        field,
        len: s.len(),
    })?;
    Ok(Part::Str8(len, s.as_bytes()))
}

fn write_frame(opcode: Opcode, parts: &[Part<'_>], dst: &mut BytesMut) -> Result<(), EncodeError> {
    let len = parts
        .iter()
        .fold(HEADER_LEN, |len, part| len.saturating_add(part.len()));
    let max = opcode.max_frame_len();
    let too_large = EncodeError::TooLarge { opcode, len, max };
    if len > max {
        return Err(too_large);
    }
    let len_field = u32::try_from(len).map_err(|_| too_large)?;
    dst.reserve(len);
    dst.put_u32(len_field);
    dst.put_u8(opcode.as_u8());
    for part in parts {
        match part {
            Part::Str8(n, s) => {
                dst.put_u8(*n);
                dst.put_slice(s);
            }
            Part::Raw(b) => dst.put_slice(b),
        }
    }
    Ok(())
}

/// Takes hpfeeds frames off the front of a buffer as they complete; see the module
/// documentation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decoder {
    _private: (),
}

impl Decoder {
    /// A decoder with the limits of [`Opcode::max_frame_len`].
    #[must_use]
    pub const fn new() -> Self {
        Self { _private: () }
    }

    /// The first frame of `src`, removed from it, or `Ok(None)` while the frame is incomplete
    /// (and its header, once in, is valid). Never panics, whatever the bytes.
    ///
    /// The payload of `OP_PUBLISH` and the digest of `OP_AUTH` share `src`'s memory.
    ///
    /// # Errors
    /// A [`FrameError`] as soon as the header is in when the opcode or length is bad, or when
    /// the whole frame is in and its fields are malformed. `src` is left as it was, so the same
    /// error comes again.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(header) = src.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let (opcode, len) = check_header(header)?;
        let Some(body) = src.get(HEADER_LEN..len) else {
            return Ok(None);
        };
        let parsed = parse_body(opcode, body)?;
        let tail = match parsed.tail_at {
            Some(at) => {
                let mut frame = src.split_to(len);
                frame.advance(HEADER_LEN + at);
                frame.freeze()
            }
            None => {
                src.advance(len);
                Bytes::new()
            }
        };
        Ok(Some(parsed.fields.into_frame(tail)))
    }

    /// The opcode of the first frame of `src` as soon as its 5-byte header is in and valid,
    /// without waiting for the body, checking it or removing anything; `Ok(None)` while the
    /// header is incomplete. The Python broker refuses a first frame that is not `OP_AUTH` on
    /// its opcode alone, whatever its body holds; this lets a broker do the same without
    /// buffering the body of a frame it refuses anyway.
    ///
    /// # Errors
    /// As [`Decoder::decode`] for the header (an unknown opcode, a length below 5 or over the
    /// opcode's limit). `src` is never changed.
    pub fn peek_opcode(&self, src: &[u8]) -> Result<Option<Opcode>, FrameError> {
        let Some(header) = src.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        check_header(header).map(|(opcode, _)| Some(opcode))
    }
}

/// The opcode and total length of a frame header, if within the limits.
fn check_header(header: &[u8; HEADER_LEN]) -> Result<(Opcode, usize), FrameError> {
    let [a, b, c, d, op] = *header;
    let opcode = Opcode::from_u8(op).ok_or(FrameError::UnknownOpcode(op))?;
    let len = u32::from_be_bytes([a, b, c, d]);
    let max = opcode.max_frame_len();
    let too_large = FrameError::TooLarge { opcode, len, max };
    let len_usize = usize::try_from(len).map_err(|_| too_large.clone())?;
    if len_usize < HEADER_LEN {
        return Err(FrameError::TooShort { opcode, len });
    }
    if len_usize > max {
        return Err(too_large);
    }
    Ok((opcode, len_usize))
}

/// A checked frame body: its text fields, and where its raw tail (the `OP_AUTH` digest or
/// the `OP_PUBLISH` payload) starts in the body, when it has one.
struct Parsed {
    fields: Fields,
    tail_at: Option<usize>,
}

enum Fields {
    Error(String),
    Info {
        name: String,
        nonce: [u8; NONCE_LEN],
    },
    Auth {
        ident: String,
    },
    Publish {
        ident: String,
        channel: String,
    },
    Subscribe {
        ident: String,
        channel: String,
    },
    Unsubscribe {
        ident: String,
        channel: String,
    },
}

impl Fields {
    fn into_frame(self, tail: Bytes) -> Frame {
        match self {
            Self::Error(text) => Frame::Error(text),
            Self::Info { name, nonce } => Frame::Info { name, nonce },
            Self::Auth { ident } => Frame::Auth { ident, hash: tail },
            Self::Publish { ident, channel } => Frame::Publish {
                ident,
                channel,
                payload: tail,
            },
            Self::Subscribe { ident, channel } => Frame::Subscribe { ident, channel },
            Self::Unsubscribe { ident, channel } => Frame::Unsubscribe { ident, channel },
        }
    }
}

fn parse_body(opcode: Opcode, body: &[u8]) -> Result<Parsed, FrameError> {
    let mut r = Reader {
        opcode,
        rest: body,
        at: 0,
    };
    let (fields, tail_at) = match opcode {
        Opcode::Error => (Fields::Error(r.rest_str(Field::Text)?), None),
        Opcode::Info => {
            let name = r.str8(Field::Name)?;
            let nonce = <[u8; NONCE_LEN]>::try_from(r.rest)
                .map_err(|_| FrameError::BadNonce { len: r.rest.len() })?;
            (Fields::Info { name, nonce }, None)
        }
        Opcode::Auth => {
            let ident = r.str8(Field::Ident)?;
            (Fields::Auth { ident }, Some(r.at))
        }
        Opcode::Publish => {
            let ident = r.str8(Field::Ident)?;
            let channel = r.str8(Field::Channel)?;
            (Fields::Publish { ident, channel }, Some(r.at))
        }
        Opcode::Subscribe => {
            let ident = r.str8(Field::Ident)?;
            let channel = r.rest_str(Field::Channel)?;
            (Fields::Subscribe { ident, channel }, None)
        }
        Opcode::Unsubscribe => {
            let ident = r.str8(Field::Ident)?;
            let channel = r.rest_str(Field::Channel)?;
            (Fields::Unsubscribe { ident, channel }, None)
        }
    };
    Ok(Parsed { fields, tail_at })
}

/// Reads the fields of one frame body from the front.
struct Reader<'a> {
    opcode: Opcode,
    rest: &'a [u8],
    /// How far into the body `rest` starts.
    at: usize,
}

impl Reader<'_> {
    fn str8(&mut self, field: Field) -> Result<String, FrameError> {
        let truncated = FrameError::Truncated {
            opcode: self.opcode,
            field,
        };
        let (&n, after_len) = self.rest.split_first().ok_or(truncated.clone())?;
        let (s, rest) = after_len
            .split_at_checked(usize::from(n))
            .ok_or(truncated)?;
        let s = self.utf8(field, s)?;
        self.rest = rest;
        self.at += 1 + usize::from(n);
        Ok(s)
    }

    /// The rest of the body as text.
    fn rest_str(&mut self, field: Field) -> Result<String, FrameError> {
        let s = self.utf8(field, self.rest)?;
        self.at += self.rest.len();
        self.rest = &[];
        Ok(s)
    }

    fn utf8(&self, field: Field, bytes: &[u8]) -> Result<String, FrameError> {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| FrameError::NotUtf8 {
                opcode: self.opcode,
                field,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame: header for `opcode` with the right length, then `body`.
    fn raw(opcode: u8, body: &[u8]) -> Vec<u8> {
        let mut v = u32::try_from(HEADER_LEN + body.len())
            .unwrap()
            .to_be_bytes()
            .to_vec();
        v.push(opcode);
        v.extend_from_slice(body);
        v
    }

    /// Decodes every frame of `bytes`, which must be whole frames.
    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = Decoder::new().decode(&mut buf)? {
            frames.push(frame);
        }
        assert!(buf.is_empty(), "leftover {buf:?}");
        Ok(frames)
    }

    fn decode_one(bytes: &[u8]) -> Result<Frame, FrameError> {
        let mut frames = decode_all(bytes)?;
        assert_eq!(frames.len(), 1);
        Ok(frames.pop().unwrap())
    }

    /// A header alone: `len` and `opcode`.
    fn header(len: u32, opcode: u8) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u32(len);
        b.put_u8(opcode);
        b
    }

    // The byte vectors of hpfeeds' own tests/test_protocol.py.
    const PY_PUBLISH: &[u8] = b"\x00\x00\x00\x18\x03\x05ident\x04chansomedata";
    const PY_SUBSCRIBE: &[u8] = b"\x00\x00\x00\x0f\x04\x05identchan";
    const PY_AUTH: &[u8] =
        b"\x00\x00\x00\x1f\x02\x05ident\xbf\xa9^\x11I\xcd\x9es\x80\xfd\xfcaJW\tZ\xb7\x19\xc1\xb4";

    #[test]
    fn publish_layout() {
        let frame = Frame::publish("ident", "chan", &b"somedata"[..]);
        assert_eq!(frame.to_bytes().unwrap(), PY_PUBLISH);
        assert_eq!(frame.encoded_len(), PY_PUBLISH.len());
        assert_eq!(decode_one(PY_PUBLISH).unwrap(), frame);
        let mut dst = BytesMut::new();
        encode_publish("ident", "chan", b"somedata", &mut dst).unwrap();
        assert_eq!(dst, PY_PUBLISH);
    }

    #[test]
    fn subscribe_and_unsubscribe_layout() {
        let frame = Frame::subscribe("ident", "chan");
        assert_eq!(frame.to_bytes().unwrap(), PY_SUBSCRIBE);
        assert_eq!(decode_one(PY_SUBSCRIBE).unwrap(), frame);
        let unsub = b"\x00\x00\x00\x0f\x05\x05identchan";
        assert_eq!(
            Frame::unsubscribe("ident", "chan").to_bytes().unwrap(),
            &unsub[..]
        );
        assert_eq!(
            decode_one(unsub).unwrap(),
            Frame::unsubscribe("ident", "chan")
        );
    }

    #[test]
    fn auth_layout() {
        // msgauth(b'rand', 'ident', 'secret'): the digest is SHA1(b'rand' + b'secret').
        let hash = &PY_AUTH[HEADER_LEN + 6..];
        assert_eq!(hash.len(), AUTH_HASH_LEN);
        let frame = Frame::auth("ident", Bytes::copy_from_slice(hash));
        assert_eq!(frame.to_bytes().unwrap(), PY_AUTH);
        assert_eq!(decode_one(PY_AUTH).unwrap(), frame);
    }

    #[test]
    fn info_and_error_layout() {
        let info = Frame::info("hpfeeds", [1, 2, 3, 4]);
        let bytes = b"\x00\x00\x00\x11\x01\x07hpfeeds\x01\x02\x03\x04";
        assert_eq!(info.to_bytes().unwrap(), &bytes[..]);
        assert_eq!(decode_one(bytes).unwrap(), info);

        let error = Frame::error("First message was not AUTH");
        let bytes = b"\x00\x00\x00\x1f\x00First message was not AUTH";
        assert_eq!(error.to_bytes().unwrap(), &bytes[..]);
        assert_eq!(decode_one(bytes).unwrap(), error);
        assert_eq!(decode_one(&raw(0, b"")).unwrap(), Frame::error(""));
    }

    #[test]
    fn empty_fields() {
        for frame in [
            Frame::publish("", "", Bytes::new()),
            Frame::subscribe("", ""),
            Frame::unsubscribe("", ""),
            Frame::auth("", Bytes::new()),
            Frame::info("", [0; 4]),
        ] {
            let bytes = frame.to_bytes().unwrap();
            assert_eq!(decode_one(&bytes).unwrap(), frame);
        }
        assert_eq!(
            Frame::publish("", "", Bytes::new()).to_bytes().unwrap(),
            &[0, 0, 0, 7, 3, 0, 0][..]
        );
    }

    #[test]
    fn incremental_byte_by_byte() {
        // As hpfeeds' test_unpack_2: nothing until the last byte is in.
        let mut stream = PY_PUBLISH.to_vec();
        stream.extend_from_slice(PY_SUBSCRIBE);
        let mut decoder = Decoder::new();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for (i, &b) in stream.iter().enumerate() {
            buf.put_u8(b);
            if let Some(frame) = decoder.decode(&mut buf).unwrap() {
                frames.push((i, frame));
                assert!(buf.is_empty());
            }
        }
        assert_eq!(
            frames,
            [
                (
                    PY_PUBLISH.len() - 1,
                    Frame::publish("ident", "chan", "somedata")
                ),
                (stream.len() - 1, Frame::subscribe("ident", "chan")),
            ]
        );
        assert_eq!(decoder.decode(&mut buf), Ok(None));
    }

    #[test]
    fn several_frames_in_one_buffer_and_a_partial_one() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(PY_AUTH);
        buf.extend_from_slice(PY_PUBLISH);
        buf.extend_from_slice(&PY_SUBSCRIBE[..7]);
        let mut decoder = Decoder::new();
        assert!(matches!(
            decoder.decode(&mut buf),
            Ok(Some(Frame::Auth { .. }))
        ));
        assert!(matches!(
            decoder.decode(&mut buf),
            Ok(Some(Frame::Publish { .. }))
        ));
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(buf, &PY_SUBSCRIBE[..7]);
    }

    #[test]
    fn payload_shares_the_buffer() {
        let mut buf = BytesMut::from(PY_PUBLISH);
        let start = buf.as_ptr();
        let Some(Frame::Publish { payload, .. }) = Decoder::new().decode(&mut buf).unwrap() else {
            panic!("not a publish");
        };
        assert_eq!(payload.as_ptr(), start.wrapping_add(PY_PUBLISH.len() - 8));
    }

    #[test]
    fn header_limits_are_checked_before_the_body() {
        let cases: [(u8, usize); 6] = [
            (0, HEADER_LEN + MAX_BUF),
            (1, HEADER_LEN + 256 + 20),
            (2, HEADER_LEN + 256 + 20),
            (3, HEADER_LEN + MAX_BUF),
            (4, MAX_BUF),
            (5, MAX_BUF),
        ];
        for (op, max) in cases {
            let opcode = Opcode::from_u8(op).unwrap();
            assert_eq!(opcode.max_frame_len(), max);
            assert_eq!(opcode.as_u8(), op);
            let max32 = u32::try_from(max).unwrap();
            // At the limit, the decoder waits for the body.
            let mut buf = header(max32, op);
            assert_eq!(Decoder::new().decode(&mut buf), Ok(None), "{opcode}");
            // One over, it refuses with only the header in.
            for len in [max32 + 1, u32::MAX] {
                let mut buf = header(len, op);
                let err = FrameError::TooLarge { opcode, len, max };
                assert_eq!(Decoder::new().decode(&mut buf), Err(err), "{opcode}");
                assert_eq!(buf.len(), HEADER_LEN, "nothing consumed");
            }
            for len in 0..5 {
                assert_eq!(
                    Decoder::new().decode(&mut header(len, op)),
                    Err(FrameError::TooShort { opcode, len })
                );
            }
        }
        assert_eq!(MAX_FRAME_LEN, HEADER_LEN + MAX_BUF);
    }

    #[test]
    fn unknown_opcodes() {
        for op in [6, 7, 100, 255] {
            assert_eq!(Opcode::from_u8(op), None);
            // Checked first, whatever the length.
            for len in [0, 10, u32::MAX] {
                assert_eq!(
                    Decoder::new().decode(&mut header(len, op)),
                    Err(FrameError::UnknownOpcode(op))
                );
            }
        }
    }

    #[test]
    fn peek_opcode_needs_only_the_header_and_ignores_the_body() {
        let decoder = Decoder::new();
        for n in 0..HEADER_LEN {
            assert_eq!(decoder.peek_opcode(&PY_PUBLISH[..n]), Ok(None), "{n}");
        }
        for n in HEADER_LEN..=PY_PUBLISH.len() {
            let got = decoder.peek_opcode(&PY_PUBLISH[..n]);
            assert_eq!(got, Ok(Some(Opcode::Publish)), "{n}");
        }
        // A body that would not decode (a truncated ident, invalid UTF-8) still has an opcode.
        assert_eq!(
            decoder.peek_opcode(&raw(4, b"")),
            Ok(Some(Opcode::Subscribe))
        );
        assert_eq!(
            decoder.peek_opcode(&raw(0, b"\xff")),
            Ok(Some(Opcode::Error))
        );
        assert_eq!(decoder.peek_opcode(&raw(2, b"")), Ok(Some(Opcode::Auth)));
        // Bad headers are the decoder's errors.
        assert_eq!(
            decoder.peek_opcode(&header(5, 9)),
            Err(FrameError::UnknownOpcode(9))
        );
        assert!(matches!(
            decoder.peek_opcode(&header(282, 2)),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            decoder.peek_opcode(&header(4, 3)),
            Err(FrameError::TooShort { .. })
        ));
    }

    #[test]
    fn fewer_than_five_bytes_wait() {
        for n in 0..HEADER_LEN {
            let mut buf = BytesMut::from(&PY_PUBLISH[..n]);
            assert_eq!(Decoder::new().decode(&mut buf), Ok(None));
            assert_eq!(buf.len(), n);
        }
        // Even when the bytes so far are already hopeless: the opcode is not in yet.
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(Decoder::new().decode(&mut buf), Ok(None));
    }

    #[test]
    fn truncated_str8_fields() {
        use Field::{Channel, Ident, Name};
        let truncated = |op, field| {
            Err(FrameError::Truncated {
                opcode: Opcode::from_u8(op).unwrap(),
                field,
            })
        };
        // hpfeeds' msghdr(1, b'abcdefg'): the name's length byte is 'a' (97).
        assert_eq!(
            decode_one(b"\x00\x00\x00\x0c\x01abcdefg"),
            truncated(1, Name)
        );
        assert_eq!(decode_one(&raw(1, b"")), truncated(1, Name));
        for op in [2, 3, 4, 5] {
            assert_eq!(decode_one(&raw(op, b"")), truncated(op, Ident), "{op}");
            assert_eq!(decode_one(&raw(op, b"\x03ab")), truncated(op, Ident));
        }
        assert_eq!(decode_one(&raw(3, b"\x02ab")), truncated(3, Channel));
        assert_eq!(
            decode_one(&raw(3, b"\x02ab\x05chan")),
            truncated(3, Channel)
        );
    }

    #[test]
    fn invalid_utf8_is_a_protocol_error() {
        use Field::{Channel, Ident, Name, Text};
        let not_utf8 = |op, field| {
            Err(FrameError::NotUtf8 {
                opcode: Opcode::from_u8(op).unwrap(),
                field,
            })
        };
        assert_eq!(decode_one(&raw(0, b"ab\xff")), not_utf8(0, Text));
        assert_eq!(decode_one(&raw(1, b"\x01\xc3abcd")), not_utf8(1, Name));
        assert_eq!(decode_one(&raw(2, b"\x01\x80")), not_utf8(2, Ident));
        assert_eq!(decode_one(&raw(3, b"\x01\x80\x00")), not_utf8(3, Ident));
        assert_eq!(
            decode_one(&raw(3, b"\x01a\x01\xfe\xff")),
            not_utf8(3, Channel)
        );
        assert_eq!(
            decode_one(&raw(4, b"\x01a\xed\xa0\x80")),
            not_utf8(4, Channel)
        );
        assert_eq!(decode_one(&raw(5, b"\x01\xffchan")), not_utf8(5, Ident));
        // The payload is opaque.
        assert_eq!(
            decode_one(&raw(3, b"\x01a\x01b\xff\xfe")).unwrap(),
            Frame::publish("a", "b", &b"\xff\xfe"[..])
        );
    }

    #[test]
    fn info_nonce_must_be_four_bytes() {
        for nonce in [&b""[..], b"abc", b"abcde"] {
            let mut body = b"\x02hp".to_vec();
            body.extend_from_slice(nonce);
            assert_eq!(
                decode_one(&raw(1, &body)),
                Err(FrameError::BadNonce { len: nonce.len() })
            );
        }
    }

    #[test]
    fn auth_digest_of_any_length_is_kept() {
        for len in [0, 1, 19, 21, 275 - 5] {
            let hash = vec![0xab; len];
            let frame = Frame::auth("ident", hash.clone());
            let bytes = frame.to_bytes().unwrap();
            assert_eq!(decode_one(&bytes).unwrap(), frame, "{len}");
        }
    }

    #[test]
    fn errors_are_sticky_and_consume_nothing() {
        let mut bad = raw(3, b"\x01\xff\x00");
        bad.extend_from_slice(PY_SUBSCRIBE);
        let mut buf = BytesMut::from(&bad[..]);
        let mut decoder = Decoder::new();
        let err = decoder.decode(&mut buf).unwrap_err();
        assert_eq!(buf, &bad[..]);
        assert_eq!(decoder.decode(&mut buf), Err(err));
    }

    #[test]
    fn str8_limit_on_encoding() {
        type Make = fn(&str) -> Frame;
        let cases: [(Make, Field); 6] = [
            (|s| Frame::publish(s, "c", "p"), Field::Ident),
            (|s| Frame::publish("i", s, "p"), Field::Channel),
            (|s| Frame::info(s, [9; 4]), Field::Name),
            (|s| Frame::auth(s, Bytes::new()), Field::Ident),
            (|s| Frame::subscribe(s, "c"), Field::Ident),
            (|s| Frame::unsubscribe(s, "c"), Field::Ident),
        ];
        for (make, field) in cases {
            let ok = make(&"x".repeat(MAX_STR8_LEN));
            assert_eq!(decode_one(&ok.to_bytes().unwrap()).unwrap(), ok);
            let bad = make(&"é".repeat(128));
            let mut dst = BytesMut::from(&b"keep"[..]);
            assert_eq!(
                bad.encode(&mut dst),
                Err(EncodeError::Str8TooLong { field, len: 256 })
            );
            assert_eq!(dst, &b"keep"[..], "nothing written");
        }
        // A subscribe channel is not a str8.
        let long_channel = Frame::subscribe("i", "c".repeat(1000));
        assert_eq!(
            decode_one(&long_channel.to_bytes().unwrap()).unwrap(),
            long_channel
        );
    }

    #[test]
    fn frame_limits_on_encoding() {
        // The largest publish: empty ident and channel take 2 bytes of the 1 MiB.
        let payload = Bytes::from(vec![7; MAX_BUF - 2]);
        let at_limit = Frame::publish("", "", payload.clone());
        let bytes = at_limit.to_bytes().unwrap();
        assert_eq!(bytes.len(), MAX_FRAME_LEN);
        assert_eq!(decode_one(&bytes).unwrap(), at_limit);
        let over = Frame::publish("a", "", payload);
        let mut dst = BytesMut::new();
        assert_eq!(
            over.encode(&mut dst),
            Err(EncodeError::TooLarge {
                opcode: Opcode::Publish,
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN
            })
        );
        assert!(dst.is_empty());

        let text = "e".repeat(MAX_BUF);
        assert_eq!(Frame::error(text.clone()).encoded_len(), MAX_FRAME_LEN);
        assert!(Frame::error(text.clone()).to_bytes().is_ok());
        assert!(matches!(
            Frame::error(text + "e").to_bytes(),
            Err(EncodeError::TooLarge { .. })
        ));

        // OP_AUTH: 281 bytes at most.
        let ident = "i".repeat(MAX_STR8_LEN);
        assert!(Frame::auth(ident.clone(), vec![0; 20]).to_bytes().is_ok());
        assert_eq!(
            Frame::auth(ident, vec![0; 21]).to_bytes(),
            Err(EncodeError::TooLarge {
                opcode: Opcode::Auth,
                len: 282,
                max: 281
            })
        );

        // OP_SUBSCRIBE: 1 MiB, header included.
        let channel = "c".repeat(MAX_BUF - HEADER_LEN - 1);
        assert!(Frame::subscribe("", channel.clone()).to_bytes().is_ok());
        assert!(matches!(
            Frame::unsubscribe("", channel + "c").to_bytes(),
            Err(EncodeError::TooLarge {
                opcode: Opcode::Unsubscribe,
                ..
            })
        ));
    }

    #[test]
    fn error_messages() {
        assert_eq!(FrameError::UnknownOpcode(9).to_string(), "unknown opcode 9");
        assert_eq!(
            FrameError::TooShort {
                opcode: Opcode::Publish,
                len: 3
            }
            .to_string(),
            "OP_PUBLISH frame length 3 is less than the 5-byte header"
        );
        assert_eq!(
            FrameError::TooLarge {
                opcode: Opcode::Auth,
                len: 282,
                max: 281
            }
            .to_string(),
            "OP_AUTH frame of 282 bytes is over the limit of 281 bytes"
        );
        assert_eq!(
            FrameError::Truncated {
                opcode: Opcode::Publish,
                field: Field::Channel
            }
            .to_string(),
            "OP_PUBLISH frame ends inside its channel"
        );
        assert_eq!(
            FrameError::NotUtf8 {
                opcode: Opcode::Subscribe,
                field: Field::Ident
            }
            .to_string(),
            "ident of OP_SUBSCRIBE frame is not valid UTF-8"
        );
        assert_eq!(
            FrameError::BadNonce { len: 3 }.to_string(),
            "OP_INFO nonce is 3 bytes, not 4"
        );
        assert_eq!(
            EncodeError::Str8TooLong {
                field: Field::Name,
                len: 300
            }
            .to_string(),
            "broker name is 300 bytes, more than the 255 a str8 field holds"
        );
    }
}
