//! Property tests for [`herald_transport_hpfeeds::frame`]: every frame variant round trips
//! through `encode` and `Decoder::decode`; decoding a byte stream cut into arbitrary chunks gives
//! the same frames, error and leftover as decoding it whole; arbitrary bytes never panic, every
//! frame decoded from them encodes back to the bytes it came from, and the decoder waits only
//! for frames within their opcode's limit.

use bytes::{BufMut, Bytes, BytesMut};
use herald_transport_hpfeeds::frame::{
    AUTH_HASH_LEN, Decoder, Frame, FrameError, HEADER_LEN, MAX_STR8_LEN, NONCE_LEN, Opcode,
    encode_publish,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// Strings that fit a str8, up to its limit, with multi-byte characters.
fn str8() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_.-]{0,12}",
        // At most 63 characters of at most 4 bytes: 252 bytes.
        "\\PC{0,63}",
        (0..=MAX_STR8_LEN).prop_map(|n| "x".repeat(n)),
        (0..=MAX_STR8_LEN / 2).prop_map(|n| "é".repeat(n)),
    ]
}

fn payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        vec(any::<u8>(), 0..16),
        vec(any::<u8>(), 0..600),
        // Often a frame header of its own, to confuse a decoder that misplaces the end.
        vec(prop_oneof![Just(0u8), Just(3), any::<u8>()], 0..32),
    ]
    .prop_map(Bytes::from)
}

/// Any frame that [`Frame::encode`] accepts.
fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        "\\PC{0,100}".prop_map(Frame::error),
        (str8(), any::<[u8; NONCE_LEN]>()).prop_map(|(name, nonce)| Frame::info(name, nonce)),
        (str8(), vec(any::<u8>(), 0..=AUTH_HASH_LEN + 10)).prop_map(|(ident, mut hash)| {
            // OP_AUTH frames are 5 + 256 + 20 bytes at most.
            hash.truncate(256 + AUTH_HASH_LEN - 1 - ident.len());
            Frame::auth(ident, hash)
        }),
        (str8(), str8(), payload()).prop_map(|(i, c, p)| Frame::publish(i, c, p)),
        (str8(), "\\PC{0,300}").prop_map(|(i, c)| Frame::subscribe(i, c)),
        (str8(), "\\PC{0,300}").prop_map(|(i, c)| Frame::unsubscribe(i, c)),
    ]
}

fn encode_all(frames: &[Frame]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for frame in frames {
        frame.encode(&mut buf).expect("generated frames encode");
    }
    buf.to_vec()
}

/// What decoding a stream gives: its frames, then the error that stopped it if any, and the
/// bytes left in the buffer.
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Frame>,
    error: Option<FrameError>,
    leftover: Vec<u8>,
}

/// Decodes `data` fed in chunks ending at `cuts` (indexes into `data`, any order), draining
/// the decoder after each chunk. After an error the rest is still fed, and the decoder must
/// keep giving the same error.
fn decode_in_chunks(data: &[u8], cuts: &[Index]) -> Outcome {
    let mut ends: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
    ends.push(data.len());
    ends.sort_unstable();
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut error: Option<FrameError> = None;
    let mut start = 0;
    for end in ends {
        buf.extend_from_slice(&data[start..end]);
        start = end;
        if let Some(err) = &error {
            assert_eq!(decoder.decode(&mut buf).as_ref(), Err(err), "sticky");
            continue;
        }
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {
                    check_waiting(&buf);
                    break;
                }
                Err(err) => {
                    error = Some(err);
                    break;
                }
            }
        }
    }
    Outcome {
        frames,
        error,
        leftover: buf.to_vec(),
    }
}

/// Decodes `data` in one go, and checks that every frame encodes back to the bytes it was
/// decoded from.
fn decode_whole(data: &[u8]) -> Outcome {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::from(data);
    let mut frames = Vec::new();
    let error = loop {
        let before = data.len() - buf.len();
        match decoder.decode(&mut buf) {
            Ok(Some(frame)) => {
                let consumed = &data[before..data.len() - buf.len()];
                assert_eq!(frame.encoded_len(), consumed.len());
                assert_eq!(frame.to_bytes().expect("a decoded frame encodes"), consumed);
                frames.push(frame);
            }
            Ok(None) => {
                check_waiting(&buf);
                break None;
            }
            Err(err) => break Some(err),
        }
    };
    Outcome {
        frames,
        error,
        leftover: buf.to_vec(),
    }
}

/// After `Ok(None)` the buffer is less than a header, or less than a frame whose announced
/// length is within its opcode's limit.
fn check_waiting(buf: &[u8]) {
    let Some((&[a, b, c, d, op], _)) = buf.split_first_chunk::<HEADER_LEN>() else {
        return;
    };
    let len = usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap();
    let opcode = Opcode::from_u8(op).expect("a known opcode");
    assert!(len >= HEADER_LEN && len <= opcode.max_frame_len(), "{len}");
    assert!(buf.len() < len);
}

/// Bytes that are often almost a stream of frames: valid frames with a few bytes overwritten,
/// cut short or followed by garbage; or plain garbage with plausible headers.
fn stream_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..256),
        (
            vec(frame(), 0..5),
            vec((any::<Index>(), any::<u8>()), 0..3),
            proptest::option::of(any::<Index>()),
            vec(any::<u8>(), 0..12),
        )
            .prop_map(|(frames, flips, cut, tail)| {
                let mut bytes = encode_all(&frames);
                if !bytes.is_empty() {
                    for (at, b) in flips {
                        let at = at.index(bytes.len());
                        bytes[at] = b;
                    }
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut.index(bytes.len() + 1));
                }
                bytes.extend_from_slice(&tail);
                bytes
            }),
        vec(
            (0u32..64, 0u8..8, vec(any::<u8>(), 0..64)).prop_map(|(len, op, body)| {
                let mut v = Vec::new();
                v.put_u32(len);
                v.put_u8(op);
                v.extend_from_slice(&body);
                v
            }),
            0..6
        )
        .prop_map(|parts| parts.concat()),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_frame_round_trips(frame in frame()) {
        let bytes = frame.to_bytes().unwrap();
        prop_assert_eq!(bytes.len(), frame.encoded_len());
        let mut appended = BytesMut::from(&b"xy"[..]);
        frame.encode(&mut appended).unwrap();
        prop_assert_eq!(&appended[2..], &bytes[..]);
        if let Frame::Publish { ident, channel, payload } = &frame {
            let mut dst = BytesMut::new();
            encode_publish(ident, channel, payload, &mut dst).unwrap();
            prop_assert_eq!(&dst[..], &bytes[..]);
        }
        let mut buf = BytesMut::from(&bytes[..]);
        let mut decoder = Decoder::new();
        prop_assert_eq!(decoder.decode(&mut buf), Ok(Some(frame)));
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoder.decode(&mut buf), Ok(None));
    }

    #[test]
    fn a_frame_stream_decodes_the_same_in_any_chunks(
        frames in vec(frame(), 0..8),
        cuts in vec(any::<Index>(), 0..16),
    ) {
        let bytes = encode_all(&frames);
        let whole = decode_whole(&bytes);
        prop_assert_eq!(&whole, &Outcome { frames, error: None, leftover: Vec::new() });
        prop_assert_eq!(decode_in_chunks(&bytes, &cuts), whole);
    }

    #[test]
    fn any_bytes_decode_the_same_in_any_chunks(
        bytes in stream_like_bytes(),
        cuts in vec(any::<Index>(), 0..16),
    ) {
        let whole = decode_whole(&bytes);
        prop_assert_eq!(decode_in_chunks(&bytes, &cuts), whole);
    }

    #[test]
    fn byte_by_byte_is_the_same_as_whole(bytes in stream_like_bytes()) {
        let mut decoder = Decoder::new();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut error = None;
        for &b in &bytes {
            buf.put_u8(b);
            // A frame is at least 5 bytes, so one byte completes at most one.
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {}
                Err(err) => {
                    error = Some(err);
                    break;
                }
            }
        }
        let whole = decode_whole(&bytes);
        prop_assert_eq!(frames, whole.frames);
        prop_assert_eq!(error, whole.error);
    }
}
