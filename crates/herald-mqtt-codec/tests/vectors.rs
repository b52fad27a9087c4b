//! Hand-written byte vectors for every packet type in both protocol versions, every
//! `DecodeError` variant, the early size check and incremental decoding.

use herald_mqtt_codec::{
    Ack, Auth, Bytes, BytesMut, ConnAck, Connect, DecodeError, Decoder, Disconnect, Packet,
    Properties, PropertyValues, Protocol, Publish, QoS, SubAck, SubOptions, Subscribe, UnsubAck,
    Unsubscribe, Will, decode_packet, encode, encoded_len, reason,
};

const MIB: u32 = 1024 * 1024;
const V3: Option<Protocol> = Some(Protocol::V311);
const V5: Option<Protocol> = Some(Protocol::V5);

/// Bytes from hex pairs separated by spaces.
fn h(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect()
}

fn dec(hex: &str, protocol: Option<Protocol>) -> Result<Option<(Packet, usize)>, DecodeError> {
    decode_packet(&h(hex), protocol, MIB)
}

fn err(hex: &str, protocol: Option<Protocol>) -> DecodeError {
    dec(hex, protocol).expect_err(hex)
}

fn enc(packet: &Packet, protocol: Protocol) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, protocol, &mut out);
    assert_eq!(out.len(), encoded_len(packet, protocol));
    out.to_vec()
}

/// `hex` decodes (whole) to `packet` and `packet` encodes to `hex`.
fn exact(hex: &str, protocol: Option<Protocol>, packet: Packet) {
    decodes_to(hex, protocol, &packet);
    let proto = match &packet {
        Packet::Connect(c) => c.protocol,
        _ => protocol.expect("a protocol"),
    };
    assert_eq!(enc(&packet, proto), h(hex), "encoding {packet:?}");
}

/// `hex` decodes (whole) to `packet`.
fn decodes_to(hex: &str, protocol: Option<Protocol>, packet: &Packet) {
    let bytes = h(hex);
    assert_eq!(
        decode_packet(&bytes, protocol, MIB),
        Ok(Some((packet.clone(), bytes.len()))),
        "decoding {hex}"
    );
}

fn ack(packet_id: u16, reason: u8) -> Ack {
    Ack {
        packet_id,
        reason,
        properties: Properties::default(),
    }
}

fn connect(protocol: Protocol, client_id: &str) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
    }
}

fn publish(qos: QoS, topic: &str, packet_id: u16, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::from_static(payload),
    }
}

fn reason_string(s: &str) -> Properties {
    Properties::from(PropertyValues {
        reason_string: Some(s.into()),
        ..PropertyValues::default()
    })
}

// ---------------------------------------------------------------- MQTT 3.1.1

#[test]
fn v311_connect_from_mosquitto_pub() {
    // `mosquitto_pub -i c1 -t a -m x`: remaining length 14 (the brief's 0x0f is one too many).
    let hex = "10 0e 00 04 4d 51 54 54 04 02 00 3c 00 02 63 31";
    exact(hex, None, Packet::Connect(connect(Protocol::V311, "c1")));
    // Its PUBLISH and DISCONNECT.
    exact(
        "30 04 00 01 61 78",
        V3,
        Packet::Publish(publish(QoS::AtMostOnce, "a", 0, b"x")),
    );
    exact(
        "e0 00",
        V3,
        Packet::Disconnect(Disconnect {
            reason: 0,
            properties: Properties::default(),
        }),
    );
    // With 0x0f the decoder waits for one more byte; given one, it is a trailing byte.
    let short = "10 0f 00 04 4d 51 54 54 04 02 00 3c 00 02 63 31";
    assert_eq!(dec(short, None), Ok(None));
    let trailing = "10 0f 00 04 4d 51 54 54 04 02 00 3c 00 02 63 31 00";
    assert!(matches!(err(trailing, None), DecodeError::Malformed(_)));
}

#[test]
fn v311_connect_with_everything() {
    let hex = "10 1f 00 04 4d 51 54 54 04 ee 00 0a 00 02 63 32 \
               00 03 77 2f 74 00 03 62 79 65 00 01 75 00 02 70 77";
    let packet = Connect {
        keep_alive: 10,
        will: Some(Will {
            topic: "w/t".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"pw")),
        ..connect(Protocol::V311, "c2")
    };
    exact(hex, None, Packet::Connect(packet.clone()));
    // A decoder that already knows the protocol decodes a CONNECT the same way.
    decodes_to(hex, V5, &Packet::Connect(packet));
}

#[test]
fn mqtt_3_1_connect_is_v311() {
    let hex = "10 10 00 06 4d 51 49 73 64 70 03 02 00 3c 00 02 63 31";
    let packet = Packet::Connect(connect(Protocol::V311, "c1"));
    decodes_to(hex, None, &packet);
    // It encodes as 3.1.1.
    assert_eq!(
        enc(&packet, Protocol::V311),
        h("10 0e 00 04 4d 51 54 54 04 02 00 3c 00 02 63 31")
    );
}

#[test]
fn v311_packets() {
    let connack = |session_present, code| {
        Packet::ConnAck(ConnAck {
            session_present,
            code,
            properties: Properties::default(),
        })
    };
    exact("20 02 01 00", V3, connack(true, 0));
    exact("20 02 00 05", V3, connack(false, 5));
    exact(
        "3b 07 00 01 61 00 0a 78 79",
        V3,
        Packet::Publish(Publish {
            dup: true,
            retain: true,
            ..publish(QoS::AtLeastOnce, "a", 10, b"xy")
        }),
    );
    exact(
        "34 05 00 01 61 00 01",
        V3,
        Packet::Publish(publish(QoS::ExactlyOnce, "a", 1, b"")),
    );
    exact("40 02 00 0a", V3, Packet::PubAck(ack(10, 0)));
    exact("50 02 00 0a", V3, Packet::PubRec(ack(10, 0)));
    exact("62 02 00 0a", V3, Packet::PubRel(ack(10, 0)));
    exact("70 02 00 0a", V3, Packet::PubComp(ack(10, 0)));
    exact(
        "82 0c 00 01 00 03 61 2f 62 01 00 01 23 02",
        V3,
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![
                ("a/b".into(), SubOptions::new(QoS::AtLeastOnce)),
                ("#".into(), SubOptions::new(QoS::ExactlyOnce)),
            ],
        }),
    );
    exact(
        "90 04 00 01 01 80",
        V3,
        Packet::SubAck(SubAck {
            packet_id: 1,
            properties: Properties::default(),
            reasons: vec![1, 0x80],
        }),
    );
    exact(
        "a2 05 00 02 00 01 61",
        V3,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            properties: Properties::default(),
            filters: vec!["a".into()],
        }),
    );
    exact(
        "b0 02 00 02",
        V3,
        Packet::UnsubAck(UnsubAck {
            packet_id: 2,
            properties: Properties::default(),
            reasons: vec![],
        }),
    );
    exact("c0 00", V3, Packet::PingReq);
    exact("d0 00", V3, Packet::PingResp);
}

#[test]
fn v311_encoding_drops_v5_fields() {
    let props = reason_string("r");
    let a = Ack {
        packet_id: 3,
        reason: 0x80,
        properties: props.clone(),
    };
    assert_eq!(enc(&Packet::PubAck(a), Protocol::V311), h("40 02 00 03"));
    let d = Disconnect {
        reason: 0x8e,
        properties: props.clone(),
    };
    assert_eq!(enc(&Packet::Disconnect(d), Protocol::V311), h("e0 00"));
    let u = UnsubAck {
        packet_id: 2,
        properties: props.clone(),
        reasons: vec![0, 0x11],
    };
    assert_eq!(enc(&Packet::UnsubAck(u), Protocol::V311), h("b0 02 00 02"));
    let p = Publish {
        properties: Properties::from(PropertyValues {
            topic_alias: Some(1),
            ..PropertyValues::default()
        }),
        ..publish(QoS::AtMostOnce, "a", 0, b"x")
    };
    assert_eq!(
        enc(&Packet::Publish(p), Protocol::V311),
        h("30 04 00 01 61 78")
    );
    let s = Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![(
            "a".into(),
            SubOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2,
            },
        )],
    };
    assert_eq!(
        enc(&Packet::Subscribe(s), Protocol::V311),
        h("82 06 00 01 00 01 61 01")
    );
    // A password without a user name is not possible in 3.1.1: left out.
    let c = Connect {
        password: Some(Bytes::from_static(b"pw")),
        ..connect(Protocol::V311, "c1")
    };
    assert_eq!(
        enc(&Packet::Connect(c), Protocol::V311),
        h("10 0e 00 04 4d 51 54 54 04 02 00 3c 00 02 63 31")
    );
    // DUP is not written for QoS 0.
    let p = Publish {
        dup: true,
        ..publish(QoS::AtMostOnce, "a", 0, b"x")
    };
    assert_eq!(
        enc(&Packet::Publish(p), Protocol::V311),
        h("30 04 00 01 61 78")
    );
}

// ---------------------------------------------------------------- MQTT 5.0

#[test]
fn v5_connect_minimal() {
    let hex = "10 0f 00 04 4d 51 54 54 05 02 00 3c 00 00 02 63 31";
    exact(hex, None, Packet::Connect(connect(Protocol::V5, "c1")));
}

#[test]
fn v5_connect_with_properties_and_will() {
    let hex = "10 2e 00 04 4d 51 54 54 05 56 00 3c \
               0f 11 00 00 00 78 21 00 0a 26 00 01 6b 00 01 76 \
               00 00 \
               09 03 00 01 74 18 00 00 00 05 00 01 77 00 00 \
               00 01 70";
    let packet = Connect {
        properties: Properties::from(PropertyValues {
            session_expiry_interval: Some(120),
            receive_maximum: Some(10),
            user_properties: vec![("k".into(), "v".into())],
            ..PropertyValues::default()
        }),
        will: Some(Will {
            topic: "w".into(),
            payload: Bytes::new(),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Properties::from(PropertyValues {
                content_type: Some("t".into()),
                will_delay_interval: Some(5),
                ..PropertyValues::default()
            }),
        }),
        // A password without a user name is allowed in 5.0.
        password: Some(Bytes::from_static(b"p")),
        ..connect(Protocol::V5, "")
    };
    exact(hex, None, Packet::Connect(packet));
}

#[test]
fn v5_connack() {
    exact(
        "20 03 00 00 00",
        V5,
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: reason::SUCCESS,
            properties: Properties::default(),
        }),
    );
    exact(
        "20 0a 00 87 07 1f 00 04 6e 6f 70 65",
        V5,
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: reason::NOT_AUTHORIZED,
            properties: reason_string("nope"),
        }),
    );
    exact(
        "20 14 01 00 11 12 00 02 69 64 22 00 05 24 01 27 00 01 00 00 2a 00",
        V5,
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: 0,
            properties: Properties::from(PropertyValues {
                assigned_client_identifier: Some("id".into()),
                topic_alias_maximum: Some(5),
                maximum_qos: Some(1),
                maximum_packet_size: Some(65_536),
                shared_subscription_available: Some(0),
                ..PropertyValues::default()
            }),
        }),
    );
    // 3.1.1 form (no property length) is malformed on V5.
    assert!(matches!(err("20 02 00 00", V5), DecodeError::Malformed(_)));
}

#[test]
fn v5_publish() {
    exact(
        "30 05 00 01 61 00 78",
        V5,
        Packet::Publish(publish(QoS::AtMostOnce, "a", 0, b"x")),
    );
    // Empty topic with a topic alias.
    exact(
        "32 09 00 00 00 05 03 23 00 01 78",
        V5,
        Packet::Publish(Publish {
            properties: Properties::from(PropertyValues {
                topic_alias: Some(1),
                ..PropertyValues::default()
            }),
            ..publish(QoS::AtLeastOnce, "", 5, b"x")
        }),
    );
    exact(
        "35 17 00 01 61 00 07 11 01 01 02 00 00 00 3c 09 00 02 ab cd 0b 01 0b 81 01",
        V5,
        Packet::Publish(Publish {
            retain: true,
            properties: Properties::from(PropertyValues {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                correlation_data: Some(Bytes::from_static(&[0xab, 0xcd])),
                subscription_identifiers: vec![1, 129],
                ..PropertyValues::default()
            }),
            ..publish(QoS::ExactlyOnce, "a", 7, b"")
        }),
    );
}

#[test]
fn v5_acks_short_and_long_forms() {
    type MakeAck = fn(Ack) -> Packet;
    let kinds: [(u8, MakeAck); 4] = [
        (0x40, Packet::PubAck),
        (0x50, Packet::PubRec),
        (0x62, Packet::PubRel),
        (0x70, Packet::PubComp),
    ];
    for (first, make) in kinds {
        let f = format!("{first:02x}");
        // Short form: reason 0, no properties.
        exact(&format!("{f} 02 00 05"), V5, make(ack(5, 0)));
        // Reason only.
        exact(&format!("{f} 03 00 05 92"), V5, make(ack(5, 0x92)));
        // Long forms of the short ones are accepted and re-encoded short.
        decodes_to(&format!("{f} 04 00 05 00 00"), V5, &make(ack(5, 0)));
        decodes_to(&format!("{f} 04 00 05 10 00"), V5, &make(ack(5, 0x10)));
        // Reason and properties.
        let long = Ack {
            properties: reason_string("q"),
            ..ack(5, 0x97)
        };
        exact(&format!("{f} 08 00 05 97 04 1f 00 01 71"), V5, make(long));
        // Reason 0 with properties keeps the reason byte.
        let zero = Ack {
            properties: reason_string("q"),
            ..ack(5, 0)
        };
        exact(&format!("{f} 08 00 05 00 04 1f 00 01 71"), V5, make(zero));
    }
}

#[test]
fn v5_subscribe_family() {
    let options = SubOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: 2,
    };
    exact(
        "82 09 00 01 02 0b 07 00 01 61 2d",
        V5,
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::from(PropertyValues {
                subscription_identifiers: vec![7],
                ..PropertyValues::default()
            }),
            filters: vec![("a".into(), options)],
        }),
    );
    exact(
        "90 05 00 01 00 01 a2",
        V5,
        Packet::SubAck(SubAck {
            packet_id: 1,
            properties: Properties::default(),
            reasons: vec![
                reason::GRANTED_QOS_1,
                reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
            ],
        }),
    );
    exact(
        "a2 06 00 02 00 00 01 61",
        V5,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            properties: Properties::default(),
            filters: vec!["a".into()],
        }),
    );
    exact(
        "b0 04 00 02 00 11",
        V5,
        Packet::UnsubAck(UnsubAck {
            packet_id: 2,
            properties: Properties::default(),
            reasons: vec![reason::NO_SUBSCRIPTION_EXISTED],
        }),
    );
}

#[test]
fn v5_disconnect_auth_ping() {
    let disconnect = |reason, properties| Packet::Disconnect(Disconnect { reason, properties });
    exact("e0 00", V5, disconnect(0, Properties::default()));
    exact(
        "e0 01 04",
        V5,
        disconnect(reason::DISCONNECT_WITH_WILL, Properties::default()),
    );
    decodes_to("e0 02 00 00", V5, &disconnect(0, Properties::default()));
    let expiry = Properties::from(PropertyValues {
        session_expiry_interval: Some(0),
        ..PropertyValues::default()
    });
    exact(
        "e0 07 8e 05 11 00 00 00 00",
        V5,
        disconnect(reason::SESSION_TAKEN_OVER, expiry),
    );

    let auth = Packet::Auth(Auth {
        reason: reason::CONTINUE_AUTHENTICATION,
        properties: Properties::from(PropertyValues {
            authentication_method: Some("test".into()),
            authentication_data: Some(Bytes::new()),
            ..PropertyValues::default()
        }),
    });
    exact("f0 0c 18 0a 15 00 04 74 65 73 74 16 00 00", V5, auth);
    // The short AUTH, and its long form.
    let success = Packet::Auth(Auth {
        reason: 0,
        properties: Properties::default(),
    });
    exact("f0 00", V5, success.clone());
    decodes_to("f0 02 00 00", V5, &success);
    exact(
        "f0 02 19 00",
        V5,
        Packet::Auth(Auth {
            reason: reason::RE_AUTHENTICATE,
            properties: Properties::default(),
        }),
    );
    // Unlike DISCONNECT, AUTH may not leave out the property length alone.
    is_malformed("f0 01 18", V5);

    exact("c0 00", V5, Packet::PingReq);
    exact("d0 00", V5, Packet::PingResp);
}

// ---------------------------------------------------------------- errors

fn is_malformed(hex: &str, protocol: Option<Protocol>) {
    let e = err(hex, protocol);
    assert!(matches!(e, DecodeError::Malformed(_)), "{hex}: {e:?}");
    assert_eq!(e.reason_code(), reason::MALFORMED_PACKET);
}

fn is_protocol_error(hex: &str, protocol: Option<Protocol>) {
    let e = err(hex, protocol);
    assert!(matches!(e, DecodeError::Protocol(_)), "{hex}: {e:?}");
    assert_eq!(e.reason_code(), reason::PROTOCOL_ERROR);
}

#[test]
fn malformed_fixed_headers() {
    for p in [None, V3, V5] {
        is_malformed("00 00", p);
        // Remaining length longer than four bytes: known at the fourth.
        is_malformed("10 ff ff ff ff", p);
        is_malformed("10 ff ff ff ff 01", p);
        // Not minimally encoded.
        is_malformed("10 80 00", p);
    }
    for p in [V3, V5] {
        is_malformed("41 02 00 01", p); // PUBACK flags
        is_malformed("60 02 00 01", p); // PUBREL without 0010
        is_malformed("80 06 00 01 00 01 61 00", p); // SUBSCRIBE without 0010
        is_malformed("a0 05 00 01 00 01 61", p); // UNSUBSCRIBE without 0010
        is_malformed("c8 00", p);
        is_malformed("36 05 00 01 61 00 01", p); // QoS 3
        is_malformed("c0 01 00", p); // PINGREQ with a body
    }
    // The first byte alone shows it.
    assert!(matches!(err("36", V3), DecodeError::Malformed(_)));
    // QoS 0 with DUP: malformed in 3.1.1, a protocol error in 5.0.
    is_malformed("38 04 00 01 61 78", V3);
    is_protocol_error("38 05 00 01 61 00 78", V5);
}

#[test]
fn malformed_bodies() {
    is_malformed("40 02 00 00", V3); // packet id 0
    is_malformed("32 06 00 01 61 00 00 78", V3); // packet id 0 in PUBLISH QoS 1
    is_malformed("82 06 00 00 00 01 61 00", V3); // packet id 0 in SUBSCRIBE
    is_malformed("40 03 00 01 00", V3); // 3.1.1 ack of 3 bytes
    is_malformed("b0 03 00 01 00", V3); // 3.1.1 UNSUBACK with a payload
    is_malformed("e0 01 00", V3); // 3.1.1 DISCONNECT with a body
    is_malformed("30 04 00 02 c3 28", V3); // invalid UTF-8
    is_malformed("30 04 00 02 61 00", V3); // U+0000
    is_malformed("30 03 00 05 61", V3); // string beyond the packet
    is_malformed("30 01 00", V3); // truncated string length
    is_malformed("20 02 02 00", V3); // reserved CONNACK flag
    is_malformed("20 01 00", V3); // truncated CONNACK
    is_malformed("82 06 00 01 00 01 61 04", V3); // 3.1.1 options upper bits
    is_malformed("82 06 00 01 00 01 61 03", V3); // 3.1.1 QoS 3
    is_malformed("82 07 00 01 00 00 01 61 40", V5); // reserved options bits
    is_malformed("82 07 00 01 00 00 01 61 80", V5);
    is_malformed("82 06 00 01 00 00 01 61", V5); // options byte missing
    is_malformed("30 06 00 01 61 02 7f 00", V5); // unknown property 0x7f
    is_malformed("30 06 00 01 61 02 11 00", V5); // session expiry not in PUBLISH
    is_malformed("30 05 00 01 61 05 01", V5); // property length beyond the packet
    is_malformed("40 06 00 01 00 02 1f 00", V5); // truncated property value
    is_malformed("40 05 00 01 00 00 00", V5); // bytes after the properties
    is_malformed("e0 03 00 00 00", V5);
}

#[test]
fn malformed_connects() {
    // Reserved connect flag.
    is_malformed("10 0e 00 04 4d 51 54 54 04 03 00 3c 00 02 63 31", None);
    // Will QoS 3.
    is_malformed("10 0e 00 04 4d 51 54 54 04 1e 00 3c 00 02 63 31", None);
    // 3.1.1 password without user name.
    is_malformed(
        "10 11 00 04 4d 51 54 54 04 42 00 3c 00 02 63 31 00 01 70",
        None,
    );
    // Truncated: no client identifier.
    is_malformed("10 0a 00 04 4d 51 54 54 04 02 00 3c", None);
    // Truncated: the will is announced but missing.
    is_malformed("10 0e 00 04 4d 51 54 54 04 06 00 3c 00 02 63 31", None);
    // Protocol name not UTF-8.
    is_malformed("10 0e 00 04 4d 51 54 ff 04 02 00 3c 00 02 63 31", None);
    // V5 CONNECT without the property length.
    is_malformed("10 0e 00 04 4d 51 54 54 05 02 00 3c 00 02 63 31", None);
    // Property not allowed in CONNECT (topic alias).
    is_malformed(
        "10 12 00 04 4d 51 54 54 05 02 00 3c 03 23 00 01 00 02 63 31",
        None,
    );
}

#[test]
fn protocol_errors() {
    // Before the CONNECT, nothing else; detected from the first byte.
    is_protocol_error("30 04 00 01 61 78", None);
    is_protocol_error("20", None);
    is_protocol_error("c0 00", None);
    // AUTH on 3.1.1.
    is_protocol_error("f0 00", V3);
    // SUBSCRIBE, UNSUBSCRIBE without filters; SUBACK, V5 UNSUBACK without codes.
    is_protocol_error("82 02 00 01", V3);
    is_protocol_error("82 03 00 01 00", V5);
    is_protocol_error("a2 02 00 01", V3);
    is_protocol_error("a2 03 00 01 00", V5);
    is_protocol_error("90 02 00 01", V3);
    is_protocol_error("b0 03 00 01 00", V5);
    // Will QoS or retain without the will flag.
    is_protocol_error("10 0e 00 04 4d 51 54 54 04 0a 00 3c 00 02 63 31", None);
    is_protocol_error("10 0e 00 04 4d 51 54 54 04 22 00 3c 00 02 63 31", None);
    // V5 subscription options: QoS 3, retain handling 3.
    is_protocol_error("82 07 00 01 00 00 01 61 03", V5);
    is_protocol_error("82 07 00 01 00 00 01 61 30", V5);
    // Properties: duplicate, subscription identifier 0, zero receive maximum and maximum
    // packet size, a value out of range, authentication data without method.
    is_protocol_error("30 0a 00 01 61 06 23 00 01 23 00 02", V5);
    is_protocol_error("82 09 00 01 02 0b 00 00 01 61 00", V5);
    is_protocol_error("82 0b 00 01 04 0b 01 0b 02 00 01 61 00", V5);
    is_protocol_error("20 06 00 00 03 21 00 00", V5);
    is_protocol_error("20 08 00 00 05 27 00 00 00 00", V5);
    is_protocol_error("20 05 00 00 02 25 02", V5);
    is_protocol_error("30 06 00 01 61 02 01 02", V5);
    is_protocol_error(
        "10 12 00 04 4d 51 54 54 05 02 00 3c 03 16 00 00 00 02 63 31",
        None,
    );
    // Several subscription identifiers are fine in PUBLISH, user properties repeat anywhere.
    assert!(dec("30 09 00 01 61 04 0b 01 0b 01 78", V5).is_ok());
    is_malformed("40 0e 00 01 00 0b 26 00 00 00 00 26 00 00 00 00", V5);
    assert!(dec("40 0e 00 01 00 0a 26 00 00 00 00 26 00 00 00 00", V5).is_ok());
}

#[test]
fn unsupported_protocols() {
    let cases = [
        ("10 0e 00 04 4d 51 54 54 06 02 00 3c 00 02 63 31", "MQTT", 6),
        ("10 0e 00 04 4d 51 54 54 03 02 00 3c 00 02 63 31", "MQTT", 3),
        ("10 0e 00 04 48 54 54 50 04 02 00 3c 00 02 63 31", "HTTP", 4),
        (
            "10 10 00 06 4d 51 49 73 64 70 04 02 00 3c 00 02 63 31",
            "MQIsdp",
            4,
        ),
    ];
    for (hex, name, level) in cases {
        let e = err(hex, None);
        assert_eq!(
            e,
            DecodeError::UnsupportedProtocol {
                name: name.into(),
                level
            }
        );
        assert_eq!(e.reason_code(), reason::UNSUPPORTED_PROTOCOL_VERSION);
    }
}

#[test]
fn size_is_checked_from_the_header_alone() {
    // The largest announcement possible (256 MiB; a remaining length cannot say 1 GiB), with
    // only the five header bytes present.
    let mut decoder = Decoder::new(MIB);
    decoder.set_protocol(Protocol::V311);
    let mut buf = BytesMut::from(&h("30 ff ff ff 7f")[..]);
    let e = decoder.decode(&mut buf).unwrap_err();
    assert_eq!(
        e,
        DecodeError::TooLarge {
            size: 268_435_455 + 5,
            max: MIB
        }
    );
    assert_eq!(e.reason_code(), reason::PACKET_TOO_LARGE);
    assert_eq!(buf.len(), 5, "nothing consumed");
    // Also for a CONNECT before the protocol is known.
    let e = decode_packet(&h("10 80 80 40"), None, MIB).unwrap_err();
    assert_eq!(
        e,
        DecodeError::TooLarge {
            size: 1_048_576 + 4,
            max: MIB
        }
    );
    // The limit counts the whole packet: "30 04 00 01 61 78" is 6 bytes.
    assert!(decode_packet(&h("30 04 00 01 61 78"), V3, 6).is_ok());
    assert_eq!(
        decode_packet(&h("30 04"), V3, 5),
        Err(DecodeError::TooLarge { size: 6, max: 5 })
    );
    // A lowered limit applies to the next packet.
    let mut decoder = Decoder::new(MIB);
    decoder.set_protocol(Protocol::V311);
    decoder.set_max_packet_size(5);
    assert_eq!(decoder.max_packet_size(), 5);
    let mut buf = BytesMut::from(&h("30 04")[..]);
    assert!(matches!(
        decoder.decode(&mut buf),
        Err(DecodeError::TooLarge { .. })
    ));
}

// ---------------------------------------------------------------- the decoder

/// A V5 session's worth of packets, as one stream.
fn v5_stream() -> Vec<u8> {
    h("10 0f 00 04 4d 51 54 54 05 02 00 3c 00 00 02 63 31 \
       82 09 00 01 02 0b 07 00 01 61 2d \
       35 17 00 01 61 00 07 11 01 01 02 00 00 00 3c 09 00 02 ab cd 0b 01 0b 81 01 \
       62 02 00 05 \
       40 04 00 05 00 00 \
       c0 00 \
       a2 06 00 02 00 00 01 61 \
       f0 00 \
       e0 07 8e 05 11 00 00 00 00")
}

fn decode_all(decoder: &mut Decoder, buf: &mut BytesMut) -> Vec<Packet> {
    let mut packets = Vec::new();
    while let Some(p) = decoder.decode(buf).expect("valid stream") {
        packets.push(p);
    }
    packets
}

#[test]
fn byte_by_byte_equals_at_once() {
    let stream = v5_stream();
    let mut decoder = Decoder::new(MIB);
    assert_eq!(decoder.protocol(), None);
    let mut buf = BytesMut::from(&stream[..]);
    let whole = decode_all(&mut decoder, &mut buf);
    assert!(buf.is_empty());
    assert_eq!(whole.len(), 9);
    assert_eq!(decoder.protocol(), Some(Protocol::V5));
    let kinds: Vec<_> = whole.iter().map(Packet::kind).collect();
    assert_eq!(
        kinds,
        [
            "CONNECT",
            "SUBSCRIBE",
            "PUBLISH",
            "PUBREL",
            "PUBACK",
            "PINGREQ",
            "UNSUBSCRIBE",
            "AUTH",
            "DISCONNECT"
        ]
    );

    let mut decoder = Decoder::new(MIB);
    let mut buf = BytesMut::new();
    let mut one_by_one = Vec::new();
    for &byte in &stream {
        buf.extend_from_slice(&[byte]);
        let before = buf.len();
        match decoder.decode(&mut buf).expect("valid stream") {
            Some(p) => one_by_one.push(p),
            None => assert_eq!(buf.len(), before, "waiting consumes nothing"),
        }
    }
    assert!(buf.is_empty());
    assert_eq!(one_by_one, whole);
}

#[test]
fn payloads_are_zero_copy() {
    let stream = h("30 06 00 01 61 78 79 7a");
    let mut decoder = Decoder::new(MIB);
    decoder.set_protocol(Protocol::V311);
    let mut buf = BytesMut::from(&stream[..]);
    let start = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = decoder.decode(&mut buf).unwrap() else {
        panic!("a PUBLISH");
    };
    assert_eq!(p.payload, &b"xyz"[..]);
    assert_eq!(p.payload.as_ptr() as usize, start + 5);
}

#[test]
fn a_failed_decode_consumes_nothing() {
    let mut decoder = Decoder::new(MIB);
    decoder.set_protocol(Protocol::V311);
    let bytes = h("40 02 00 00 c0 00");
    let mut buf = BytesMut::from(&bytes[..]);
    let e = decoder.decode(&mut buf).unwrap_err();
    assert!(matches!(e, DecodeError::Malformed(_)));
    assert_eq!(buf.as_ref(), bytes);
    assert_eq!(decoder.decode(&mut buf), Err(e));
}

#[test]
fn decode_packet_reports_what_it_took() {
    let bytes = h("c0 00 d0 00");
    assert_eq!(
        decode_packet(&bytes, V3, MIB),
        Ok(Some((Packet::PingReq, 2)))
    );
    assert_eq!(
        decode_packet(&bytes[2..], V3, MIB),
        Ok(Some((Packet::PingResp, 2)))
    );
    assert_eq!(decode_packet(&[], V3, MIB), Ok(None));
    assert_eq!(decode_packet(&[0x30], V3, MIB), Ok(None));
    assert_eq!(decode_packet(&[0x30, 0x80], V3, MIB), Ok(None));
    assert_eq!(decode_packet(&[0x30, 0x04, 0x00], V3, MIB), Ok(None));
}

#[test]
fn kinds() {
    assert_eq!(Packet::PingResp.kind(), "PINGRESP");
    assert_eq!(Packet::PubComp(ack(1, 0)).kind(), "PUBCOMP");
    assert_eq!(Packet::Connect(connect(Protocol::V5, "")).kind(), "CONNECT");
}

#[test]
fn encoding_keeps_fields_well_formed() {
    // A string over 65535 bytes is truncated, at a character boundary.
    let long = "é".repeat(40_000);
    let p = Packet::Publish(publish(QoS::AtMostOnce, &long, 0, b""));
    let bytes = enc(&p, Protocol::V311);
    let (decoded, _) = decode_packet(&bytes, V3, u32::MAX).unwrap().unwrap();
    let Packet::Publish(d) = decoded else {
        panic!("a PUBLISH")
    };
    assert_eq!(d.topic.len(), 65_534);
    // Properties a packet does not permit are left out.
    let c = Packet::ConnAck(ConnAck {
        session_present: false,
        code: 0,
        properties: Properties::from(PropertyValues {
            topic_alias: Some(1),
            ..PropertyValues::default()
        }),
    });
    assert_eq!(enc(&c, Protocol::V5), h("20 03 00 00 00"));
}

/// Decodes a whole stream with a fresh decoder, and checks that re-encoding every packet
/// gives the stream back byte for byte.
fn decode_stream_exactly(stream: &[u8]) -> Vec<Packet> {
    let mut decoder = Decoder::new(MIB);
    let mut buf = BytesMut::from(stream);
    let packets = decode_all(&mut decoder, &mut buf);
    assert!(buf.is_empty());
    let protocol = decoder.protocol().expect("a CONNECT");
    let mut out = BytesMut::new();
    for p in &packets {
        encode(p, protocol, &mut out);
    }
    assert_eq!(out.as_ref(), stream);
    packets
}

#[test]
fn captured_from_mosquitto_pub() {
    // mosquitto_pub 2.0 `-i c1 -t a -m x`, as sent on the wire (CONNECT, PUBLISH, DISCONNECT).
    let v311 = h("10 0e 00 04 4d 51 54 54 04 02 00 3c 00 02 63 31 30 04 00 01 61 78 e0 00");
    let packets = decode_stream_exactly(&v311);
    assert_eq!(packets[0], Packet::Connect(connect(Protocol::V311, "c1")));
    assert_eq!(
        packets[1],
        Packet::Publish(publish(QoS::AtMostOnce, "a", 0, b"x"))
    );
    assert_eq!(packets[2].kind(), "DISCONNECT");

    // The same with `-V 5`: it asks for a Receive Maximum of 20.
    let v5 = h(
        "10 12 00 04 4d 51 54 54 05 02 00 3c 03 21 00 14 00 02 63 31 \
                30 05 00 01 61 00 78 e0 00",
    );
    let packets = decode_stream_exactly(&v5);
    let Packet::Connect(c) = &packets[0] else {
        panic!("a CONNECT")
    };
    assert_eq!(c.protocol, Protocol::V5);
    assert_eq!(c.properties.receive_maximum, Some(20));
    assert_eq!(
        packets[1],
        Packet::Publish(publish(QoS::AtMostOnce, "a", 0, b"x"))
    );

    // `-V 5 -i c1 -t a/b -m hi -q 1 -D publish user-property k v -u user -P pw`.
    let v5 = h(
        "10 1c 00 04 4d 51 54 54 05 c2 00 3c 03 21 00 14 00 02 63 31 \
                00 04 75 73 65 72 00 02 70 77 \
                32 11 00 03 61 2f 62 00 01 07 26 00 01 6b 00 01 76 68 69 e0 00",
    );
    let packets = decode_stream_exactly(&v5);
    let Packet::Connect(c) = &packets[0] else {
        panic!("a CONNECT")
    };
    assert_eq!(c.username.as_deref(), Some("user"));
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
    let Packet::Publish(p) = &packets[1] else {
        panic!("a PUBLISH")
    };
    assert_eq!(
        (p.qos, p.packet_id, &p.topic[..]),
        (QoS::AtLeastOnce, 1, "a/b")
    );
    assert_eq!(p.properties.user_properties, [("k".into(), "v".into())]);
    assert_eq!(p.payload, &b"hi"[..]);
}
