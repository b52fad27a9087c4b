//! A publish's payload is decoded as a slice of the connection's read buffer. An event that
//! kept that slice in its topic's window would keep the whole buffer (up to 64 KiB) alive,
//! which the window's budget does not count: a publisher mixing one publish to a quiet topic
//! into each large read made every quiet topic hold a read buffer. A small run of publishes
//! (and every QoS 1 publish) gets a copy of its own.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use herald_core::topic::{Retention, RetentionRules};
use herald_core::{Path, PathLimits, PathPattern};
use herald_engine::TopicsOptions;
use herald_mqtt_codec::{Packet, Protocol, QoS, encode};
use herald_transport_mqtt::MqttConfig;

const PAYLOAD: usize = 100;

fn path(topic: &str) -> Path {
    Path::parse_url(&format!("/{topic}"), &PathLimits::default()).unwrap()
}

/// Writes `out` and waits for the PUBACKs of its QoS 1 publishes, `ids` in order.
async fn send_and_sync(p: &mut Client, out: &BytesMut, ids: &[u16]) {
    p.send_raw(out).await;
    for &id in ids {
        match p.recv().await {
            Packet::PubAck(ack) => assert_eq!(ack.packet_id, id, "{ack:?}"),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_quiet_topics_event_does_not_keep_the_read_buffer() {
    let protocol = Protocol::V311;
    // Memory-only topics, so that reads come from the windows (a durable topic's may come
    // from the store).
    let memory_only = Retention {
        memory_only: true,
        ..Retention::default()
    };
    let pattern = PathPattern::parse("/mem/#", &PathLimits::default()).unwrap();
    let options = TopicsOptions {
        rules: RetentionRules::new(vec![(pattern, memory_only)]),
        memory_window_events: 10_000,
        ..TopicsOptions::default()
    };
    let b = Broker::start_with(MqttConfig::default(), options).await;
    let mut p = b.admin(protocol, "pub").await;
    let put = |out: &mut BytesMut, topic: &str, payload: &[u8], qos: QoS, id: u16| {
        encode(
            &Packet::Publish(publish(topic, payload, qos, id)),
            protocol,
            out,
        );
    };
    let hot = Bytes::from(vec![b'h'; PAYLOAD]);
    let hot_packets = |out: &mut BytesMut, n: usize| {
        for _ in 0..n {
            put(out, "mem/hot", &hot, QoS::AtMostOnce, 0);
        }
    };

    // Large reads first, so that the connection reads into a large buffer.
    let mut out = BytesMut::new();
    hot_packets(&mut out, 2_000);
    put(&mut out, "mem/hot", b"sync", QoS::AtLeastOnce, 1);
    send_and_sync(&mut p, &out, &[1]).await;

    // One write: a QoS 0 publish to a quiet topic, many to the hot one with another QoS 0
    // publish to a quiet topic among them (read while the hot ones are held: a run of its
    // own), a QoS 1 publish to a third quiet topic, many more to the hot one.
    let cold = Bytes::from(vec![b'c'; PAYLOAD]);
    let mut out = BytesMut::new();
    put(&mut out, "mem/cold", &cold, QoS::AtMostOnce, 0);
    hot_packets(&mut out, 150);
    put(&mut out, "mem/cold2", &cold, QoS::AtMostOnce, 0);
    hot_packets(&mut out, 150);
    put(&mut out, "mem/cold1", &cold, QoS::AtLeastOnce, 2);
    hot_packets(&mut out, 300);
    put(&mut out, "mem/hot", b"sync", QoS::AtLeastOnce, 3);
    send_and_sync(&mut p, &out, &[2, 3]).await;

    // Where the hot payloads right after a quiet topic's would start if its event still
    // sliced the read buffer: past its payload and a hot publish's header (and one hot publish
    // further, should the first hot publish be copied).
    let mut one = BytesMut::new();
    hot_packets(&mut one, 1);
    let (packet, header) = (one.len(), one.len() - PAYLOAD);
    let hot_events = b.topics.read(&path("mem/hot"), 2_002, 600).await.unwrap();
    assert_eq!(hot_events.len(), 600);
    assert!(hot_events.iter().all(|e| e.data == hot));
    // Each quiet topic, with the index of the first hot publish after it.
    for (topic, next) in [("mem/cold", 0), ("mem/cold2", 150), ("mem/cold1", 300)] {
        let events = b.topics.read(&path(topic), 1, 10).await.unwrap();
        assert_eq!(events.len(), 1, "{topic}");
        assert_eq!(events[0].data, cold, "{topic}");
        let at = events[0].data.as_ptr() as usize;
        for (k, offset) in [(0, PAYLOAD + header), (1, PAYLOAD + packet + header)] {
            let gap = (hot_events[next + k].data.as_ptr() as usize).wrapping_sub(at);
            assert_ne!(
                gap, offset,
                "{topic}'s event is a slice of the read buffer (hot publish {next} + {k} follows it there)"
            );
        }
    }
    // The publishes of one read to one topic go to the engine in runs, memory-only as it is
    // (the first write's, read in a few reads of up to 64 KiB): each run's payloads are
    // either its slices of the read buffer (a run that fills much of it) or one copy, one
    // after the other. Only where a run ends (a read's end) may the next payload be
    // anywhere (about 15 here, as the read room grows from 64 bytes); publishes appended one
    // by one, each with a copy of its own, are apart almost everywhere (1,964 measured).
    let first_write = b.topics.read(&path("mem/hot"), 1, 2_000).await.unwrap();
    assert_eq!(first_write.len(), 2_000);
    let apart = first_write
        .windows(2)
        .filter(|pair| {
            let gap = (pair[1].data.as_ptr() as usize).wrapping_sub(pair[0].data.as_ptr() as usize);
            gap != packet && gap != PAYLOAD
        })
        .count();
    assert!(
        apart <= 200,
        "{apart} of 1,999 hot payloads start apart from the one before"
    );
    p.disconnect().await;
}
