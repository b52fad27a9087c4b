//! Decoding an hpfeeds byte stream never panics, and gives the same frames, error and leftover
//! bytes whether the stream arrives whole or in random chunks (a failed decode keeps failing the
//! same way). Every decoded frame re-encodes to exactly the bytes it was decoded from and decodes
//! again to the same frame; the decoder waits only for frames within their opcode's limit.
//!
//! Input: the first byte seeds the chunk sizes (0 = one byte at a time), the rest is the stream.
#![no_main]

use bytes::BytesMut;
use herald_transport_hpfeeds::frame::{Decoder, Frame, FrameError, HEADER_LEN, Opcode};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Frame>,
    error: Option<FrameError>,
    leftover: Vec<u8>,
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let whole = decode_whole(stream);
    let chunked = decode_chunked(stream, seed);
    assert_eq!(chunked, whole);
});

fn decode_whole(data: &[u8]) -> Outcome {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::from(data);
    let mut frames = Vec::new();
    let error = loop {
        let before = data.len() - buf.len();
        match decoder.decode(&mut buf) {
            Ok(Some(frame)) => {
                let consumed = &data[before..data.len() - buf.len()];
                let bytes = frame.to_bytes().expect("a decoded frame encodes");
                assert_eq!(bytes, consumed);
                assert_eq!(frame.encoded_len(), consumed.len());
                let mut again = BytesMut::from(&bytes[..]);
                assert_eq!(decoder.decode(&mut again), Ok(Some(frame.clone())));
                assert!(again.is_empty());
                frames.push(frame);
            }
            Ok(None) => {
                check_waiting(&buf);
                break None;
            }
            Err(err) => {
                assert_eq!(buf, data[before..], "a failed decode consumes nothing");
                break Some(err);
            }
        }
    };
    Outcome {
        frames,
        error,
        leftover: buf.to_vec(),
    }
}

fn decode_chunked(data: &[u8], seed: u8) -> Outcome {
    let mut rng = u32::from(seed).wrapping_mul(0x9e37_79b9) | 1;
    let mut next_size = move || {
        if seed == 0 {
            return 1;
        }
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        // Empty chunks too: decoding an unchanged buffer must give the same answer.
        (rng % 24) as usize
    };
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut error: Option<FrameError> = None;
    let mut rest = data;
    loop {
        let (chunk, after) = rest.split_at(next_size().min(rest.len()));
        rest = after;
        buf.extend_from_slice(chunk);
        if let Some(err) = &error {
            assert_eq!(
                decoder.decode(&mut buf).as_ref(),
                Err(err),
                "errors are sticky"
            );
        } else {
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
        if rest.is_empty() {
            break;
        }
    }
    Outcome {
        frames,
        error,
        leftover: buf.to_vec(),
    }
}

/// After `Ok(None)` the buffer holds less than a header, or less than a frame whose announced
/// length is within its opcode's limit.
fn check_waiting(buf: &[u8]) {
    let Some((&[a, b, c, d, op], _)) = buf.split_first_chunk::<HEADER_LEN>() else {
        return;
    };
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    let opcode = Opcode::from_u8(op).expect("a waiting frame has a known opcode");
    assert!((HEADER_LEN..=opcode.max_frame_len()).contains(&len));
    assert!(buf.len() < len);
}
