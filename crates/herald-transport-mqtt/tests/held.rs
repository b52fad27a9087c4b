//! QoS 0 publishes read together are appended as runs (see `Conn::hold`): whatever the mix of
//! topics (durable and memory-only), QoS levels and retain flags in one read, every topic's
//! history is its publishes in the order they were sent.

mod common;

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use common::*;
use herald_core::topic::{Retention, RetentionRules};
use herald_core::{Path, PathLimits, PathPattern};
use herald_engine::TopicsOptions;
use herald_mqtt_codec::{Packet, Protocol, QoS, encode};
use herald_transport_mqtt::MqttConfig;
use proptest::prelude::*;

const TOPICS: [&str; 4] = ["p/a", "p/b", "mem/c", "mem/d"];

/// Topics under `/mem/` are memory-only, the others durable.
fn options() -> TopicsOptions {
    let memory_only = Retention {
        memory_only: true,
        ..Retention::default()
    };
    let pattern = PathPattern::parse("/mem/#", &PathLimits::default()).unwrap();
    TopicsOptions {
        rules: RetentionRules::new(vec![(pattern, memory_only)]),
        memory_window_events: 1_000,
        ..TopicsOptions::default()
    }
}

/// One publish: topic index, QoS (0 or 1), retain flag.
fn publishes() -> impl Strategy<Value = Vec<(usize, u8, bool)>> {
    prop::collection::vec(
        (
            0..TOPICS.len(),
            prop_oneof![4 => Just(0u8), 1 => Just(1u8)],
            prop::bool::weighted(0.1),
        ),
        1..200,
    )
}

async fn check(protocol: Protocol, sent: Vec<(usize, u8, bool)>) {
    let b = Broker::start_with(MqttConfig::default(), options()).await;
    let mut p = b.admin(protocol, "pub").await;
    let mut out = BytesMut::new();
    let mut want: BTreeMap<usize, Vec<Bytes>> = BTreeMap::new();
    let mut acks = 0;
    for (i, &(topic, qos, retain)) in sent.iter().enumerate() {
        let payload = Bytes::from(format!("{i}"));
        let (qos, id) = match qos {
            0 => (QoS::AtMostOnce, 0),
            _ => {
                acks += 1;
                (QoS::AtLeastOnce, acks)
            }
        };
        let mut publish = publish(TOPICS[topic], &payload, qos, id);
        publish.retain = retain;
        encode(&Packet::Publish(publish), protocol, &mut out);
        want.entry(topic).or_default().push(payload);
    }
    // A QoS 1 publish to every topic last: once all are acknowledged, everything before them
    // has been appended (a topic's appends keep the connection's order).
    for (topic, name) in TOPICS.iter().enumerate() {
        acks += 1;
        let payload = Bytes::from_static(b"end");
        encode(
            &Packet::Publish(publish(name, &payload, QoS::AtLeastOnce, acks)),
            protocol,
            &mut out,
        );
        want.entry(topic).or_default().push(payload);
    }
    p.send_raw(&out).await;
    for _ in 0..acks {
        match p.recv().await {
            Packet::PubAck(ack) => assert_eq!(ack.reason, 0, "{ack:?}"),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    for (topic, payloads) in want {
        let path = Path::parse_url(&format!("/{}", TOPICS[topic]), &PathLimits::default()).unwrap();
        let events = b.topics.read(&path, 1, 10_000).await.unwrap();
        let got: Vec<Bytes> = events.iter().map(|e| e.data.clone()).collect();
        assert_eq!(got, payloads, "{protocol:?} {}", TOPICS[topic]);
    }
    p.disconnect().await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn every_topic_keeps_the_order_of_its_publishes(sent in publishes(), v5 in any::<bool>()) {
        let protocol = if v5 { Protocol::V5 } else { Protocol::V311 };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(check(protocol, sent));
    }
}
