//! Decoding an MQTT byte stream never panics, and gives the same packets, error and leftover
//! bytes whether the stream arrives whole or in chunks (a failed decode consumes nothing and
//! keeps failing the same way). Every decoded packet re-encodes for the connection's protocol
//! to at most the bytes it came from, `encoded_len` agrees, and the encoding decodes again to
//! the same packet. While the decoder waits, the announced packet is within the maximum size.
//!
//! Input: the first byte chooses the protocol state (`% 3`: unknown, 3.1.1, 5.0), the maximum
//! packet size (`/ 3 % 8`) and the chunk sizes (`/ 24`, 0 = one byte at a time); the rest is the
//! stream.
#![no_main]

use bytes::BytesMut;
use herald_mqtt_codec::{
    DecodeError, Decoder, Packet, Protocol, decode_packet, encode, encoded_len,
};
use libfuzzer_sys::fuzz_target;

const MAX_SIZES: [u32; 8] = [u32::MAX, 1 << 20, 65_536, 1024, 256, 64, 16, 5];

#[derive(Debug, PartialEq)]
struct Outcome {
    packets: Vec<Packet>,
    error: Option<DecodeError>,
    leftover: Vec<u8>,
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let state = [None, Some(Protocol::V311), Some(Protocol::V5)][usize::from(first % 3)];
    let max = MAX_SIZES[usize::from(first / 3 % 8)];
    let whole = decode_whole(stream, state, max);
    let chunked = decode_chunked(stream, state, max, first / 24);
    assert_eq!(chunked, whole);
});

fn decoder(state: Option<Protocol>, max: u32) -> Decoder {
    let mut decoder = Decoder::new(max);
    if let Some(p) = state {
        decoder.set_protocol(p);
    }
    decoder
}

fn decode_whole(data: &[u8], state: Option<Protocol>, max: u32) -> Outcome {
    let mut decoder = decoder(state, max);
    let mut buf = BytesMut::from(data);
    let mut packets = Vec::new();
    let error = loop {
        let before = buf.len();
        let protocol_before = decoder.protocol();
        match decoder.decode(&mut buf) {
            Ok(Some(packet)) => {
                let consumed = before - buf.len();
                let protocol = decoder.protocol().expect("known after a packet");
                if let Packet::Connect(c) = &packet {
                    assert_eq!(c.protocol, protocol);
                }
                check_round_trip(&packet, protocol, protocol_before, consumed);
                packets.push(packet);
            }
            Ok(None) => {
                check_waiting(&buf, max);
                break None;
            }
            Err(err) => {
                assert_eq!(
                    buf,
                    data[data.len() - before..],
                    "a failed decode consumes nothing"
                );
                break Some(err);
            }
        }
    };
    Outcome {
        packets,
        error,
        leftover: buf.to_vec(),
    }
}

/// The packet encodes to at most `consumed` bytes, as many as `encoded_len` says, which decode
/// to the same packet.
fn check_round_trip(
    packet: &Packet,
    protocol: Protocol,
    protocol_before: Option<Protocol>,
    consumed: usize,
) {
    let mut out = BytesMut::new();
    encode(packet, protocol, &mut out);
    assert_eq!(out.len(), encoded_len(packet, protocol));
    assert!(out.len() <= consumed, "{} > {consumed}", out.len());
    let again = decode_packet(&out, protocol_before, u32::MAX);
    assert_eq!(again, Ok(Some((packet.clone(), out.len()))));
    // Through a decoder too, with the maximum set to the exact size.
    let mut decoder = decoder(protocol_before, out.len() as u32);
    assert_eq!(decoder.decode(&mut out), Ok(Some(packet.clone())));
    assert!(out.is_empty());
}

fn decode_chunked(data: &[u8], state: Option<Protocol>, max: u32, seed: u8) -> Outcome {
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
    let mut decoder = decoder(state, max);
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let mut error: Option<DecodeError> = None;
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
                    Ok(Some(packet)) => packets.push(packet),
                    Ok(None) => {
                        check_waiting(&buf, max);
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
        packets,
        error,
        leftover: buf.to_vec(),
    }
}

/// After `Ok(None)` the buffer holds less than a fixed header, or less than a packet whose
/// announced size is within the maximum.
fn check_waiting(buf: &[u8], max: u32) {
    let mut remaining: u64 = 0;
    for (i, &byte) in buf.iter().skip(1).take(4).enumerate() {
        remaining |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let total = 2 + i as u64 + remaining;
            assert!(total <= u64::from(max), "waiting for {total} > {max} bytes");
            assert!((buf.len() as u64) < total);
            return;
        }
    }
    assert!(
        buf.len() < 5,
        "a complete remaining length is at most 4 bytes"
    );
}
