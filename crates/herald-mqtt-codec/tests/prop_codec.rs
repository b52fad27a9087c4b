//! Property tests: arbitrary valid packets of each protocol round-trip through encode and
//! decode, `encoded_len` agrees with `encode`, chunked decoding equals whole decoding, and no
//! input makes the decoder panic.

use herald_mqtt_codec::{
    Ack, Auth, Bytes, BytesMut, ConnAck, Connect, DecodeError, Decoder, Disconnect, Packet,
    Properties, PropertyValues, Protocol, Publish, QoS, SubAck, SubOptions, Subscribe, UnsubAck,
    Unsubscribe, Will, decode_packet, encode, encode_plain_publish, encoded_len, plain_publish_len,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

/// Where a property list sits (MQTT 5.0 table 2-4 decides what it may hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Connect,
    Will,
    ConnAck,
    Publish,
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

fn string() -> impl Strategy<Value = String> {
    "[^\\x00]{0,8}"
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..12).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    option::of(0u8..=1)
}

/// Properties with every field set or not, each value valid.
fn any_properties() -> impl Strategy<Value = Properties> {
    (
        (
            flag(),
            option::of(any::<u32>()),
            option::of(string()),
            option::of(string()),
            option::of(binary()),
            vec(1u32..=268_435_455, 0..3),
            option::of(any::<u32>()),
            option::of(string()),
            option::of(any::<u16>()),
        ),
        (
            option::of(string()),
            option::of(binary()),
            flag(),
            option::of(any::<u32>()),
            flag(),
            option::of(string()),
            option::of(string()),
            option::of(string()),
            option::of(1u16..),
        ),
        (
            option::of(any::<u16>()),
            option::of(1u16..),
            flag(),
            flag(),
            vec((string(), string()), 0..3),
            option::of(1u32..),
            flag(),
            flag(),
            flag(),
        ),
    )
        .prop_map(|(a, b, c)| {
            Properties::from(PropertyValues {
                payload_format_indicator: a.0,
                message_expiry_interval: a.1,
                content_type: a.2,
                response_topic: a.3,
                correlation_data: a.4,
                subscription_identifiers: a.5,
                session_expiry_interval: a.6,
                assigned_client_identifier: a.7,
                server_keep_alive: a.8,
                authentication_method: b.0,
                authentication_data: b.1,
                request_problem_information: b.2,
                will_delay_interval: b.3,
                request_response_information: b.4,
                response_information: b.5,
                server_reference: b.6,
                reason_string: b.7,
                receive_maximum: b.8,
                topic_alias_maximum: c.0,
                topic_alias: c.1,
                maximum_qos: c.2,
                retain_available: c.3,
                user_properties: c.4,
                maximum_packet_size: c.5,
                wildcard_subscription_available: c.6,
                subscription_identifier_available: c.7,
                shared_subscription_available: c.8,
            })
        })
}

/// Keeps only what `ctx` permits (and what is valid there).
fn restrict(mut p: Properties, ctx: Ctx) -> Properties {
    use Ctx::*;
    macro_rules! keep {
        ($allowed:expr, $($field:ident),+) => {
            if !$allowed {
                $(p.$field = Default::default();)+
            }
        };
    }
    keep!(
        matches!(ctx, Publish | Will),
        payload_format_indicator,
        message_expiry_interval,
        content_type,
        response_topic,
        correlation_data
    );
    keep!(matches!(ctx, Publish | Subscribe), subscription_identifiers);
    if ctx == Subscribe {
        p.subscription_identifiers.truncate(1);
    }
    keep!(
        matches!(ctx, Connect | ConnAck | Disconnect),
        session_expiry_interval
    );
    keep!(
        ctx == ConnAck,
        assigned_client_identifier,
        server_keep_alive,
        response_information,
        maximum_qos,
        retain_available,
        wildcard_subscription_available,
        subscription_identifier_available,
        shared_subscription_available
    );
    keep!(
        matches!(ctx, Connect | ConnAck | Auth),
        authentication_method,
        authentication_data
    );
    if ctx == Connect && p.authentication_method.is_none() {
        p.authentication_data = None;
    }
    keep!(
        ctx == Connect,
        request_problem_information,
        request_response_information
    );
    keep!(ctx == Will, will_delay_interval);
    keep!(matches!(ctx, ConnAck | Disconnect), server_reference);
    keep!(
        matches!(ctx, ConnAck | Ack | SubAck | UnsubAck | Disconnect | Auth),
        reason_string
    );
    keep!(
        matches!(ctx, Connect | ConnAck),
        receive_maximum,
        topic_alias_maximum,
        maximum_packet_size
    );
    keep!(ctx == Publish, topic_alias);
    p
}

fn props(proto: Protocol, ctx: Ctx) -> BoxedStrategy<Properties> {
    match proto {
        Protocol::V311 => Just(Properties::default()).boxed(),
        Protocol::V5 => any_properties().prop_map(move |p| restrict(p, ctx)).boxed(),
    }
}

fn will(proto: Protocol) -> impl Strategy<Value = Will> {
    (
        string(),
        binary(),
        qos(),
        any::<bool>(),
        props(proto, Ctx::Will),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
}

fn connect(proto: Protocol) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        any::<u16>(),
        props(proto, Ctx::Connect),
        string(),
        option::of(will(proto)),
        option::of(string()),
        option::of(binary()),
    )
        .prop_map(
            move |(clean_start, keep_alive, properties, client_id, will, username, password)| {
                let password = password.filter(|_| proto == Protocol::V5 || username.is_some());
                Packet::Connect(Connect {
                    protocol: proto,
                    clean_start,
                    keep_alive,
                    properties,
                    client_id,
                    will,
                    username,
                    password,
                })
            },
        )
}

/// A reason code: any byte on V5, 0 on V311.
fn reason(proto: Protocol) -> BoxedStrategy<u8> {
    match proto {
        Protocol::V311 => Just(0).boxed(),
        Protocol::V5 => any::<u8>().boxed(),
    }
}

fn ack(proto: Protocol) -> impl Strategy<Value = Ack> {
    (1u16.., reason(proto), props(proto, Ctx::Ack)).prop_map(|(packet_id, reason, properties)| {
        Ack {
            packet_id,
            reason,
            properties,
        }
    })
}

fn publish(proto: Protocol) -> impl Strategy<Value = Packet> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        string(),
        1u16..,
        props(proto, Ctx::Publish),
        vec(any::<u8>(), 0..64),
    )
        .prop_map(|(qos, dup, retain, topic, id, properties, payload)| {
            let qos0 = qos == QoS::AtMostOnce;
            Packet::Publish(Publish {
                dup: dup && !qos0,
                qos,
                retain,
                topic,
                packet_id: if qos0 { 0 } else { id },
                properties,
                payload: payload.into(),
            })
        })
}

fn sub_options(proto: Protocol) -> BoxedStrategy<SubOptions> {
    match proto {
        Protocol::V311 => qos().prop_map(SubOptions::new).boxed(),
        Protocol::V5 => (qos(), any::<bool>(), any::<bool>(), 0u8..=2)
            .prop_map(
                |(qos, no_local, retain_as_published, retain_handling)| SubOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                },
            )
            .boxed(),
    }
}

fn packet(proto: Protocol) -> BoxedStrategy<Packet> {
    let v5 = proto == Protocol::V5;
    let connack = (any::<bool>(), any::<u8>(), props(proto, Ctx::ConnAck)).prop_map(
        |(session_present, code, properties)| {
            Packet::ConnAck(ConnAck {
                session_present,
                code,
                properties,
            })
        },
    );
    let subscribe = (
        1u16..,
        props(proto, Ctx::Subscribe),
        vec((string(), sub_options(proto)), 1..4),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters,
            })
        });
    let suback = (1u16.., props(proto, Ctx::SubAck), vec(any::<u8>(), 1..4)).prop_map(
        |(packet_id, properties, reasons)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reasons,
            })
        },
    );
    let unsubscribe = (1u16.., props(proto, Ctx::Unsubscribe), vec(string(), 1..4)).prop_map(
        |(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        },
    );
    let unsuback = (
        1u16..,
        props(proto, Ctx::UnsubAck),
        vec(any::<u8>(), if v5 { 1..4 } else { 0..1 }),
    )
        .prop_map(|(packet_id, properties, reasons)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reasons,
            })
        });
    let disconnect = (reason(proto), props(proto, Ctx::Disconnect))
        .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }));
    let common = prop_oneof![
        connect(proto),
        connack,
        publish(proto),
        ack(proto).prop_map(Packet::PubAck),
        ack(proto).prop_map(Packet::PubRec),
        ack(proto).prop_map(Packet::PubRel),
        ack(proto).prop_map(Packet::PubComp),
        subscribe,
        suback,
        unsubscribe,
        unsuback,
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect,
    ];
    if v5 {
        let auth = (any::<u8>(), props(proto, Ctx::Auth))
            .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }));
        prop_oneof![13 => common, 1 => auth].boxed()
    } else {
        common.boxed()
    }
}

fn proto() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::V311), Just(Protocol::V5)]
}

/// A protocol and a packet valid in it.
fn proto_packet() -> impl Strategy<Value = (Protocol, Packet)> {
    proto().prop_flat_map(|p| (Just(p), packet(p)))
}

fn encoded(packet: &Packet, proto: Protocol) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, proto, &mut out);
    out.to_vec()
}

/// The outcome of decoding a whole stream: the packets, then the error or the leftover.
#[derive(Debug, PartialEq)]
struct Outcome {
    packets: Vec<Packet>,
    error: Option<DecodeError>,
    leftover: Vec<u8>,
}

/// Decodes `data` fed in chunks of the given sizes (cycled; an empty list means all at once).
fn decode_chunked(data: &[u8], protocol: Option<Protocol>, max: u32, sizes: &[usize]) -> Outcome {
    let mut decoder = Decoder::new(max);
    if let Some(p) = protocol {
        decoder.set_protocol(p);
    }
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let mut rest = data;
    // Empty chunks too (decoding an unchanged buffer must give the same answer), but never
    // only empty ones.
    let stuck = !sizes.is_empty() && sizes.iter().all(|&n| n == 0);
    let mut sizes = sizes.iter().cycle();
    loop {
        let n = match sizes.next() {
            Some(&n) if !stuck => n,
            Some(_) => 1,
            None => rest.len(),
        };
        let n = n.min(rest.len());
        let (chunk, after) = rest.split_at(n);
        rest = after;
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.clone();
            match decoder.decode(&mut buf) {
                Ok(Some(p)) => packets.push(p),
                Ok(None) => {
                    assert_eq!(buf, before, "waiting consumes nothing");
                    break;
                }
                Err(error) => {
                    assert_eq!(buf, before, "an error consumes nothing");
                    // The error is the front packet's: more bytes do not change it.
                    buf.extend_from_slice(rest);
                    assert_eq!(decoder.decode(&mut buf), Err(error.clone()));
                    return Outcome {
                        packets,
                        error: Some(error),
                        leftover: buf.to_vec(),
                    };
                }
            }
        }
        if rest.is_empty() {
            return Outcome {
                packets,
                error: None,
                leftover: buf.to_vec(),
            };
        }
    }
}

/// A decoded packet re-encodes to bytes that decode to the same packet.
fn check_reencodes(packet: &Packet, proto: Protocol) -> Result<(), TestCaseError> {
    let bytes = encoded(packet, proto);
    prop_assert_eq!(bytes.len(), encoded_len(packet, proto));
    let again = decode_packet(&bytes, Some(proto), u32::MAX);
    prop_assert_eq!(again, Ok(Some((packet.clone(), bytes.len()))));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The direct QoS 0 writer gives the bytes of the general encoder, whatever the topic
    /// (multi-byte characters, over the 65,535-byte field limit) and payload sizes (across
    /// the remaining-length varint's steps).
    #[test]
    fn plain_publish_matches_the_general_encoder(
        proto in proto(),
        topic in prop_oneof![
            "[a-z/é€]{0,40}",
            (65_530usize..65_540).prop_map(|n| "é".repeat(n / 2)),
        ],
        payload_len in prop_oneof![0usize..200, 16_370usize..16_400, 2_097_140usize..2_097_160],
        retain in any::<bool>(),
    ) {
        let payload = vec![7u8; payload_len];
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain,
            topic: topic.clone(),
            packet_id: 0,
            properties: Properties::default(),
            payload: Bytes::from(payload.clone()),
        });
        let mut direct = BytesMut::from(&b"before"[..]);
        let written = encode_plain_publish(&topic, retain, &payload, proto, &mut direct);
        prop_assert_eq!(&direct[..6], b"before");
        let direct = &direct[6..];
        prop_assert_eq!(written, direct.len());
        prop_assert_eq!(plain_publish_len(&topic, &payload, proto), direct.len());
        prop_assert_eq!(direct, &encoded(&packet, proto)[..]);
    }

    #[test]
    fn round_trip((proto, packet) in proto_packet()) {
        let bytes = encoded(&packet, proto);
        prop_assert_eq!(bytes.len(), encoded_len(&packet, proto));
        let state = match packet {
            Packet::Connect(_) => None,
            _ => Some(proto),
        };
        let decoded = decode_packet(&bytes, state, u32::MAX);
        prop_assert_eq!(decoded, Ok(Some((packet.clone(), bytes.len()))));
        // The same through a decoder, which then knows the protocol.
        let mut decoder = Decoder::new(bytes.len() as u32);
        if let Some(p) = state {
            decoder.set_protocol(p);
        }
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert_eq!(decoder.decode(&mut buf), Ok(Some(packet)));
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoder.protocol(), Some(proto));
        // One byte less than its size is too large.
        let mut decoder = Decoder::new(bytes.len() as u32 - 1);
        decoder.set_protocol(proto);
        let mut buf = BytesMut::from(&bytes[..]);
        let too_large = matches!(decoder.decode(&mut buf), Err(DecodeError::TooLarge { .. }));
        prop_assert!(too_large);
    }

    #[test]
    fn chunked_equals_whole(
        (proto, packets) in proto().prop_flat_map(|p| (Just(p), vec(packet(p), 0..6))),
        sizes in vec(0usize..9, 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        // The stream of a session: a CONNECT, then packets of its protocol.
        let hello = Packet::Connect(Connect {
            protocol: proto,
            clean_start: true,
            keep_alive: 0,
            properties: Properties::default(),
            client_id: "c".into(),
            will: None,
            username: None,
            password: None,
        });
        let mut stream = encoded(&hello, proto);
        for p in &packets {
            stream.extend(encoded(p, proto));
        }
        let full = stream.len();
        // Cut the stream anywhere: the tail stays buffered.
        let end = cut.index(full + 1);
        let stream = &stream[..end];
        let whole = decode_chunked(stream, None, u32::MAX, &[]);
        prop_assert_eq!(&whole.error, &None);
        let chunked = decode_chunked(stream, None, u32::MAX, &sizes);
        prop_assert_eq!(&chunked, &whole);
        if end == full {
            let mut expected = vec![hello];
            expected.extend(packets);
            prop_assert_eq!(whole.packets, expected);
            prop_assert!(whole.leftover.is_empty());
        }
    }

    #[test]
    fn byte_soup_never_panics(
        state in 0u8..3,
        max in prop_oneof![Just(u32::MAX), 0u32..300],
        data in vec(any::<u8>(), 0..300),
        sizes in vec(0usize..9, 1..8),
    ) {
        let protocol = [None, Some(Protocol::V311), Some(Protocol::V5)][usize::from(state)];
        let whole = decode_chunked(&data, protocol, max, &[]);
        let chunked = decode_chunked(&data, protocol, max, &sizes);
        prop_assert_eq!(&chunked, &whole);
        let mut proto = protocol;
        for p in &whole.packets {
            if let Packet::Connect(c) = p {
                proto = Some(c.protocol);
            }
            if let Some(proto) = proto {
                check_reencodes(p, proto)?;
            }
        }
        let _ = decode_packet(&data, protocol, max);
    }

    #[test]
    fn mutated_packets_never_panic(
        (proto, packet) in proto_packet(),
        flips in vec((any::<prop::sample::Index>(), 1u8..), 1..4),
        state_known in any::<bool>(),
    ) {
        let mut bytes = encoded(&packet, proto);
        for (at, xor) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= xor;
        }
        let state = state_known.then_some(proto);
        if let Ok(Some((decoded, _))) = decode_packet(&bytes, state, u32::MAX) {
            let proto = match &decoded {
                Packet::Connect(c) => c.protocol,
                _ => proto,
            };
            check_reencodes(&decoded, proto)?;
        }
    }
}
