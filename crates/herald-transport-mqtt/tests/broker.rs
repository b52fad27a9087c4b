//! The MQTT broker on real sockets, driven packet by packet with the codec as the client.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use herald_core::{Path, PathLimits};
use herald_engine::NewEvent;
use herald_mqtt_codec::{Packet, Properties, PropertyValues, Protocol, QoS, Will, reason};

fn path(s: &str) -> Path {
    Path::parse_url(s, &PathLimits::default()).unwrap()
}

#[tokio::test]
async fn qos_0_1_2_both_ways_in_both_versions() {
    let b = Broker::start().await;
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut s = b.admin(protocol, "sub").await;
        assert_eq!(
            s.subscribe(&[("t/q", sub(QoS::ExactlyOnce))]).await,
            [2],
            "{protocol:?}"
        );
        let mut p = b.admin(protocol, "pub").await;
        assert_eq!(
            p.publish(publish("t/q", b"zero", QoS::AtMostOnce, 0)).await,
            0
        );
        assert_eq!(
            p.publish(publish("t/q", b"one", QoS::AtLeastOnce, 1)).await,
            0
        );
        assert_eq!(
            p.publish(publish("t/q", b"two", QoS::ExactlyOnce, 2)).await,
            0
        );

        let m = s.recv_publish().await;
        assert_eq!(
            (&m.payload[..], m.qos, m.topic.as_str()),
            (&b"zero"[..], QoS::AtMostOnce, "t/q")
        );
        let m = s.recv_publish().await;
        assert_eq!((&m.payload[..], m.qos), (&b"one"[..], QoS::AtLeastOnce));
        assert_ne!(m.packet_id, 0);
        s.send(Packet::PubAck(ack(m.packet_id))).await;
        let m = s.recv_publish().await;
        assert_eq!((&m.payload[..], m.qos), (&b"two"[..], QoS::ExactlyOnce));
        s.send(Packet::PubRec(ack(m.packet_id))).await;
        match s.recv().await {
            Packet::PubRel(a) => assert_eq!(a.packet_id, m.packet_id),
            other => panic!("expected PUBREL, got {other:?}"),
        }
        s.send(Packet::PubComp(ack(m.packet_id))).await;
        s.assert_quiet().await;
        p.disconnect().await;
        s.disconnect().await;
    }
    // Every publish is in the topic's history.
    let events = b.topics.read(&path("/t/q"), 1, 10).await.unwrap();
    assert_eq!(events.len(), 6);
}

#[tokio::test]
async fn packets_pipelined_behind_connect_are_handled_without_waiting_for_more() {
    let broker = Broker::start().await;
    for protocol in [Protocol::V311, Protocol::V5] {
        // CONNECT, SUBSCRIBE, PUBLISH (QoS 1) and PINGREQ in one write, then silence: each
        // must be answered from what is already buffered.
        let subscribe = Packet::Subscribe(herald_mqtt_codec::Subscribe {
            packet_id: 5,
            properties: Properties::default(),
            filters: vec![("pipe/t".to_owned(), sub(QoS::AtLeastOnce))],
        });
        let publish = Packet::Publish(publish("pipe/t", b"hi", QoS::AtLeastOnce, 6));
        let mut c = Client::connect_pipelined(
            broker.addr,
            protocol,
            &[subscribe, publish, Packet::PingReq],
        )
        .await;
        let mut got = Vec::new();
        while got.len() < 5 {
            match c.recv().await {
                Packet::ConnAck(a) => got.push(format!("connack {}", a.code)),
                Packet::SubAck(a) => got.push(format!("suback {}", a.packet_id)),
                Packet::PubAck(a) => got.push(format!("puback {}", a.packet_id)),
                Packet::PingResp => got.push("pingresp".to_owned()),
                Packet::Publish(p) => got.push(format!("publish {}", p.topic)),
                other => panic!("unexpected {other:?}"),
            }
        }
        got.sort();
        assert_eq!(
            got,
            [
                "connack 0",
                "pingresp",
                "puback 6",
                "publish pipe/t",
                "suback 5"
            ],
            "{protocol:?}"
        );
    }
    broker.stop().await;
}

#[tokio::test]
async fn delivered_qos_is_the_lower_of_publish_and_subscription() {
    let b = Broker::start().await;
    let mut s = b.admin(Protocol::V5, "sub").await;
    s.subscribe(&[("d/1", sub(QoS::AtLeastOnce))]).await;
    let mut p = b.admin(Protocol::V5, "pub").await;
    p.publish(publish("d/1", b"a", QoS::ExactlyOnce, 9)).await;
    p.publish(publish("d/1", b"b", QoS::AtMostOnce, 0)).await;
    let m = s.recv_publish().await;
    assert_eq!(m.qos, QoS::AtLeastOnce);
    s.send(Packet::PubAck(ack(m.packet_id))).await;
    assert_eq!(s.recv_publish().await.qos, QoS::AtMostOnce);
}

#[tokio::test]
async fn a_qos2_resend_is_not_appended_twice() {
    let b = Broker::start().await;
    let mut p = b.admin(Protocol::V311, "pub").await;
    p.send(Packet::Publish(publish(
        "x/y",
        b"once",
        QoS::ExactlyOnce,
        5,
    )))
    .await;
    assert!(matches!(p.recv().await, Packet::PubRec(a) if a.packet_id == 5));
    let mut again = publish("x/y", b"once", QoS::ExactlyOnce, 5);
    again.dup = true;
    p.send(Packet::Publish(again)).await;
    assert!(matches!(p.recv().await, Packet::PubRec(a) if a.packet_id == 5));
    p.send(Packet::PubRel(ack(5))).await;
    assert!(matches!(p.recv().await, Packet::PubComp(a) if a.packet_id == 5));
    assert_eq!(b.topics.read(&path("/x/y"), 1, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn retained_messages_set_replace_and_clear() {
    let b = Broker::start().await;
    let mut p = b.admin(Protocol::V311, "pub").await;
    let mut m = publish("r/a", b"first", QoS::AtLeastOnce, 1);
    m.retain = true;
    p.publish(m.clone()).await;
    m.payload = Bytes::from_static(b"second");
    m.packet_id = 2;
    p.publish(m.clone()).await;
    let mut other = publish("r/b", b"b", QoS::AtMostOnce, 0);
    other.retain = true;
    p.publish(other).await;
    // A non-retained publish does not replace the retained message.
    p.publish(publish("r/a", b"live", QoS::AtLeastOnce, 3))
        .await;

    let mut s = b.admin(Protocol::V311, "sub").await;
    s.subscribe(&[("r/+", sub(QoS::AtMostOnce))]).await;
    let mut got = [s.recv_publish().await, s.recv_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert!(got.iter().all(|m| m.retain));
    assert_eq!(&got[0].payload[..], b"second");
    assert_eq!(&got[1].payload[..], b"b");
    s.assert_quiet().await;

    // An empty retained publish clears it (and is delivered as a normal message).
    m.payload = Bytes::new();
    m.packet_id = 4;
    p.publish(m).await;
    let live = s.recv_publish().await;
    assert!(live.payload.is_empty() && !live.retain);
    let mut s2 = b.admin(Protocol::V311, "sub2").await;
    s2.subscribe(&[("r/a", sub(QoS::AtMostOnce))]).await;
    s2.assert_quiet().await;
    assert!(b.retained.get(&path("/r/a")).is_none());
}

#[tokio::test]
async fn retain_handling_and_retain_as_published() {
    let b = Broker::start().await;
    let mut p = b.admin(Protocol::V5, "pub").await;
    // QoS 1, so that the message is stored (and retained) before the subscriber comes: a
    // QoS 0 publish is not acknowledged, and could still be on its way.
    let mut m = publish("rh/t", b"kept", QoS::AtLeastOnce, 1);
    m.retain = true;
    p.publish(m.clone()).await;
    let mut s = b.admin(Protocol::V5, "sub").await;
    let mut never = sub(QoS::AtMostOnce);
    never.retain_handling = 2;
    s.subscribe(&[("rh/t", never)]).await;
    s.assert_quiet().await;
    let mut if_new = sub(QoS::AtMostOnce);
    if_new.retain_handling = 1;
    if_new.retain_as_published = true;
    // Not new any more (same filter): nothing.
    s.subscribe(&[("rh/t", if_new)]).await;
    s.assert_quiet().await;
    // A live retained publish keeps its flag with retain-as-published.
    p.publish(m).await;
    assert!(s.recv_publish().await.retain);
}

#[tokio::test]
async fn wildcards_and_dollar_topics() {
    let b = Broker::start().await;
    let mut s = b.admin(Protocol::V311, "sub").await;
    s.subscribe(&[("w/+/c", sub(QoS::AtMostOnce)), ("#", sub(QoS::AtMostOnce))])
        .await;
    let mut p = b.admin(Protocol::V311, "pub").await;
    p.publish(publish("w/b/c", b"1", QoS::AtMostOnce, 0)).await;
    p.publish(publish("$SYS/x", b"sys", QoS::AtMostOnce, 0))
        .await;
    p.publish(publish("other", b"2", QoS::AtMostOnce, 0)).await;
    // Matched by two filters, delivered once; `$SYS` not matched by `#`. (Two topics: either
    // may come first.)
    let mut got = [
        s.recv_publish().await.payload,
        s.recv_publish().await.payload,
    ];
    got.sort();
    assert_eq!(got, [&b"1"[..], &b"2"[..]]);
    s.assert_quiet().await;
    let mut sys = b.admin(Protocol::V311, "sys").await;
    sys.subscribe(&[("$SYS/#", sub(QoS::AtMostOnce))]).await;
    p.publish(publish("$SYS/x", b"sys", QoS::AtMostOnce, 0))
        .await;
    assert_eq!(&sys.recv_publish().await.payload[..], b"sys");
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_keeps_overlapping_filters() {
    let b = Broker::start().await;
    let mut s = b.admin(Protocol::V5, "sub").await;
    s.subscribe(&[("u/a", sub(QoS::AtMostOnce)), ("u/#", sub(QoS::AtMostOnce))])
        .await;
    s.send(Packet::Unsubscribe(herald_mqtt_codec::Unsubscribe {
        packet_id: 3,
        properties: Properties::default(),
        filters: vec!["u/a".into(), "nope".into()],
    }))
    .await;
    match s.recv().await {
        Packet::UnsubAck(a) => assert_eq!(a.reasons, [0, reason::NO_SUBSCRIPTION_EXISTED]),
        other => panic!("{other:?}"),
    }
    let mut p = b.admin(Protocol::V5, "pub").await;
    p.publish(publish("u/a", b"still", QoS::AtMostOnce, 0))
        .await;
    assert_eq!(&s.recv_publish().await.payload[..], b"still");
    s.send(Packet::Unsubscribe(herald_mqtt_codec::Unsubscribe {
        packet_id: 4,
        properties: Properties::default(),
        filters: vec!["u/#".into()],
    }))
    .await;
    assert!(matches!(s.recv().await, Packet::UnsubAck(_)));
    p.publish(publish("u/a", b"gone", QoS::AtMostOnce, 0)).await;
    s.assert_quiet().await;
}

/// A session works out how it delivers a topic once and keeps it: every change of its
/// subscriptions (a new overlapping one, one replaced, one removed) must show in the next
/// delivery of a topic it already got messages of.
#[tokio::test]
async fn deliveries_follow_every_change_of_the_subscriptions() {
    let b = Broker::start().await;
    let mut s = b.admin(Protocol::V5, "sub").await;
    let mut p = b.admin(Protocol::V5, "pub").await;
    let with_id = |id| {
        Properties::from(PropertyValues {
            subscription_identifiers: vec![id],
            ..PropertyValues::default()
        })
    };
    let unsubscribe = |filter: &str| {
        Packet::Unsubscribe(herald_mqtt_codec::Unsubscribe {
            packet_id: 5,
            properties: Properties::default(),
            filters: vec![filter.into()],
        })
    };
    // Each step: publish at QoS 1, then the QoS and identifiers the session gets it with.
    let mut step = async |s: &mut Client, body: &[u8]| {
        p.publish(publish("rt/a", body, QoS::AtLeastOnce, 1)).await;
        let got = s.recv_publish().await;
        assert_eq!(&got.payload[..], body);
        if got.qos == QoS::AtLeastOnce {
            s.send(Packet::PubAck(ack(got.packet_id))).await;
        }
        (got.qos, got.properties.subscription_identifiers.clone())
    };

    s.subscribe_with(&[("rt/a", sub(QoS::AtMostOnce))], with_id(1))
        .await;
    assert_eq!(step(&mut s, b"1").await, (QoS::AtMostOnce, vec![1]));
    s.subscribe_with(&[("rt/+", sub(QoS::AtLeastOnce))], with_id(2))
        .await;
    assert_eq!(step(&mut s, b"2").await, (QoS::AtLeastOnce, vec![1, 2]));
    s.send(unsubscribe("rt/+")).await;
    assert!(matches!(s.recv().await, Packet::UnsubAck(_)));
    assert_eq!(step(&mut s, b"3").await, (QoS::AtMostOnce, vec![1]));
    // The same filter again: it replaces the subscription (QoS 1, no identifier).
    s.subscribe(&[("rt/a", sub(QoS::AtLeastOnce))]).await;
    assert_eq!(step(&mut s, b"4").await, (QoS::AtLeastOnce, vec![]));
    s.send(unsubscribe("rt/a")).await;
    assert!(matches!(s.recv().await, Packet::UnsubAck(_)));
    p.publish(publish("rt/a", b"5", QoS::AtLeastOnce, 1)).await;
    s.assert_quiet().await;
}

#[tokio::test]
async fn persistent_session_keeps_subscriptions_and_queues_messages() {
    let b = Broker::start().await;
    let persistent = |c: &mut herald_mqtt_codec::Connect| {
        c.client_id = "keeper".into();
        c.clean_start = false;
        login(c, ADMIN);
    };
    let (mut s, ack1) = Client::connect(b.addr, Protocol::V311, persistent).await;
    assert!(!ack1.session_present);
    s.subscribe(&[("p/q", sub(QoS::AtLeastOnce))]).await;
    let mut p = b.admin(Protocol::V311, "pub").await;
    p.publish(publish("p/q", b"m1", QoS::AtLeastOnce, 1)).await;
    // Received but not acknowledged before the connection drops.
    let unacked = s.recv_publish().await;
    assert_eq!(&unacked.payload[..], b"m1");
    drop(s);
    for (i, m) in [b"m2", b"m3"].iter().enumerate() {
        p.publish(publish("p/q", *m, QoS::AtLeastOnce, 10 + i as u16))
            .await;
    }
    let (mut s, ack2) = Client::connect(b.addr, Protocol::V311, persistent).await;
    assert!(ack2.session_present);
    let again = s.recv_publish().await;
    assert!(again.dup, "the unacknowledged message is resent with DUP");
    assert_eq!(
        (&again.payload[..], again.packet_id),
        (&b"m1"[..], unacked.packet_id)
    );
    s.send(Packet::PubAck(ack(again.packet_id))).await;
    for want in [b"m2", b"m3"] {
        let m = s.recv_publish().await;
        assert_eq!(&m.payload[..], want);
        s.send(Packet::PubAck(ack(m.packet_id))).await;
    }
    s.assert_quiet().await;
    s.disconnect().await;
    // A clean start discards the session.
    let (_s, ack3) = Client::connect(b.addr, Protocol::V311, |c| {
        c.client_id = "keeper".into();
        login(c, ADMIN);
    })
    .await;
    assert!(!ack3.session_present);
}

#[tokio::test]
async fn persistent_sessions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let open = || async {
        let store: std::sync::Arc<dyn herald_store::Store> =
            std::sync::Arc::new(herald_store_fjall::FjallStore::open(dir.path()).unwrap());
        Broker::start_on(store, Default::default(), Default::default()).await
    };
    let connect = |c: &mut herald_mqtt_codec::Connect| {
        c.client_id = "durable".into();
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(3600);
        login(c, ADMIN);
    };
    let b = open().await;
    let (mut s, _) = Client::connect(b.addr, Protocol::V5, connect).await;
    s.subscribe(&[
        ("rs/+", sub(QoS::AtLeastOnce)),
        ("rs/exact", sub(QoS::ExactlyOnce)),
    ])
    .await;
    let mut p = b.admin(Protocol::V5, "pub").await;
    p.publish(publish("rs/a", b"m1", QoS::AtLeastOnce, 1)).await;
    let unacked = s.recv_publish().await;
    assert_eq!(&unacked.payload[..], b"m1");
    drop(s);
    p.publish(publish("rs/a", b"m2", QoS::AtLeastOnce, 2)).await;
    p.publish(publish("rs/exact", b"m3", QoS::ExactlyOnce, 3))
        .await;
    p.disconnect().await;
    // Let the broker notice the dropped connection and save the session.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let store = b.stop().await;
    drop(store);

    let b = open().await;
    let (mut s, ack1) = Client::connect(b.addr, Protocol::V5, connect).await;
    assert!(ack1.session_present);
    let again = s.recv_publish().await;
    assert!(again.dup);
    assert_eq!(
        (&again.payload[..], again.packet_id),
        (&b"m1"[..], unacked.packet_id)
    );
    s.send(Packet::PubAck(ack(again.packet_id))).await;
    // Two topics: their messages may come in either order.
    let (mut got, mut released) = (Vec::new(), 0);
    while got.len() < 2 || released < 1 {
        let Some(packet) = s.try_recv(WAIT).await else {
            panic!("after the restart got only {got:?}, {released} released");
        };
        match packet {
            Packet::Publish(m) if m.qos == QoS::ExactlyOnce => {
                s.send(Packet::PubRec(ack(m.packet_id))).await;
                got.push((m.payload, m.qos));
            }
            Packet::Publish(m) => {
                s.send(Packet::PubAck(ack(m.packet_id))).await;
                got.push((m.payload, m.qos));
            }
            Packet::PubRel(a) => {
                s.send(Packet::PubComp(ack(a.packet_id))).await;
                released += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    got.sort();
    assert_eq!(
        got,
        [
            (Bytes::from_static(b"m2"), QoS::AtLeastOnce),
            (Bytes::from_static(b"m3"), QoS::ExactlyOnce)
        ]
    );
    s.assert_quiet().await;
    // The subscriptions came back too: a new publish arrives.
    let mut p = b.admin(Protocol::V5, "pub").await;
    p.publish(publish("rs/new", b"m4", QoS::AtLeastOnce, 4))
        .await;
    assert_eq!(&s.recv_publish().await.payload[..], b"m4");
}

#[tokio::test]
async fn session_expiry_zero_ends_the_session_with_the_connection() {
    let b = Broker::start().await;
    let connect = |c: &mut herald_mqtt_codec::Connect| {
        c.client_id = "brief".into();
        c.clean_start = false;
        login(c, ADMIN);
    };
    let (s, _) = Client::connect(b.addr, Protocol::V5, connect).await;
    s.disconnect().await;
    let (_s, ack) = Client::connect(b.addr, Protocol::V5, connect).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn receive_maximum_bounds_messages_in_flight() {
    let b = Broker::start().await;
    let (mut s, _) = Client::connect(b.addr, Protocol::V5, |c| {
        c.client_id = "slow".into();
        c.properties.receive_maximum = Some(2);
        login(c, ADMIN);
    })
    .await;
    s.subscribe(&[("rm/t", sub(QoS::AtLeastOnce))]).await;
    let mut p = b.admin(Protocol::V5, "pub").await;
    for i in 0..5u16 {
        p.publish(publish("rm/t", &[b'0' + i as u8], QoS::AtLeastOnce, i + 1))
            .await;
    }
    let first = s.recv_publish().await;
    let second = s.recv_publish().await;
    s.assert_quiet().await;
    s.send(Packet::PubAck(ack(first.packet_id))).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"2");
    s.assert_quiet().await;
    assert_eq!(&second.payload[..], b"1");
}

#[tokio::test]
async fn will_is_sent_on_abnormal_close_only() {
    let b = Broker::start().await;
    let mut watcher = b.admin(Protocol::V311, "watcher").await;
    watcher.subscribe(&[("will/#", sub(QoS::AtMostOnce))]).await;
    let with_will = |id: &'static str| {
        move |c: &mut herald_mqtt_codec::Connect| {
            c.client_id = id.into();
            c.will = Some(Will {
                topic: format!("will/{id}"),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Properties::default(),
            });
            login(c, ADMIN);
        }
    };
    let (polite, _) = Client::connect(b.addr, Protocol::V311, with_will("polite")).await;
    polite.disconnect().await;
    watcher.assert_quiet().await;
    let (rude, _) = Client::connect(b.addr, Protocol::V311, with_will("rude")).await;
    drop(rude);
    let m = watcher.recv_publish().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("will/rude", &b"gone"[..])
    );
}

#[tokio::test]
async fn will_delay_is_cancelled_by_a_reconnect() {
    let b = Broker::start().await;
    let mut watcher = b.admin(Protocol::V5, "watcher").await;
    watcher.subscribe(&[("wd/#", sub(QoS::AtMostOnce))]).await;
    let connect = |c: &mut herald_mqtt_codec::Connect| {
        c.client_id = "delayed".into();
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(60);
        let properties = Properties::from(PropertyValues {
            will_delay_interval: Some(1),
            ..PropertyValues::default()
        });
        c.will = Some(Will {
            topic: "wd/x".into(),
            payload: Bytes::from_static(b"late"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties,
        });
        login(c, ADMIN);
    };
    let (c, _) = Client::connect(b.addr, Protocol::V5, connect).await;
    drop(c);
    let (c, ack) = Client::connect(b.addr, Protocol::V5, connect).await;
    assert!(ack.session_present);
    assert!(
        watcher
            .try_recv(Duration::from_millis(1500))
            .await
            .is_none()
    );
    drop(c);
    let m = watcher.try_recv(Duration::from_secs(3)).await;
    assert!(matches!(m, Some(Packet::Publish(p)) if &p.payload[..] == b"late"));
}

#[tokio::test]
async fn keep_alive_expiry_closes_the_connection() {
    let b = Broker::start().await;
    let (mut c, _) = Client::connect(b.addr, Protocol::V5, |c| {
        c.keep_alive = 1;
        login(c, ADMIN);
    })
    .await;
    let started = std::time::Instant::now();
    let got = c.until_closed().await;
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == reason::KEEP_ALIVE_TIMEOUT
            && d.properties.reason_string.as_deref() == Some("keep alive timeout"))
    );
}

#[tokio::test]
async fn a_second_connection_takes_the_session_over() {
    let b = Broker::start().await;
    let mut first = b.admin(Protocol::V5, "twin").await;
    let _second = b.admin(Protocol::V5, "twin").await;
    let got = first.until_closed().await;
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == reason::SESSION_TAKEN_OVER)
    );
}

#[tokio::test]
async fn authentication() {
    let b = Broker::start().await;
    let (_, bad) = Client::connect(b.addr, Protocol::V5, |c| login(c, ("joe", "wrong"))).await;
    assert_eq!(bad.code, reason::BAD_USER_NAME_OR_PASSWORD);
    assert_eq!(
        bad.properties.reason_string.as_deref(),
        Some("bad user name or password")
    );
    let (_, bad3) = Client::connect(b.addr, Protocol::V311, |c| login(c, ("nobody", "x"))).await;
    assert_eq!(bad3.code, 4);
    let (_, ok) = Client::connect(b.addr, Protocol::V311, |c| login(c, USER)).await;
    assert_eq!(ok.code, 0);
    // A session token works as the password.
    let token = b.accounts.login(USER.0, USER.1).await.unwrap().unwrap();
    let (_, ok) = Client::connect(b.addr, Protocol::V5, |c| login(c, (USER.0, &token))).await;
    assert_eq!(ok.code, 0);
    let (_, wrong_user) =
        Client::connect(b.addr, Protocol::V5, |c| login(c, (ADMIN.0, &token))).await;
    assert_eq!(wrong_user.code, reason::BAD_USER_NAME_OR_PASSWORD);
    // Anonymous is allowed by this configuration.
    let (_, anon) = Client::connect(b.addr, Protocol::V5, |_| {}).await;
    assert_eq!(anon.code, 0);
}

#[tokio::test]
async fn anonymous_refused_when_not_allowed() {
    let config = herald_transport_mqtt::MqttConfig {
        allow_anonymous: false,
        ..Default::default()
    };
    let b = Broker::start_with(config, Default::default()).await;
    let (_, v5) = Client::connect(b.addr, Protocol::V5, |_| {}).await;
    assert_eq!(v5.code, reason::NOT_AUTHORIZED);
    let (_, v3) = Client::connect(b.addr, Protocol::V311, |_| {}).await;
    assert_eq!(v3.code, 5);
}

#[tokio::test]
async fn grants_are_checked_on_publish_and_subscribe() {
    let b = Broker::start().await;
    let (mut joe, _) = Client::connect(b.addr, Protocol::V5, |c| login(c, USER)).await;
    assert_eq!(
        joe.subscribe(&[
            ("secret/s", sub(QoS::AtMostOnce)),
            ("_user_joe/x", sub(QoS::AtMostOnce))
        ])
        .await,
        [reason::NOT_AUTHORIZED, 0]
    );
    assert_eq!(
        joe.publish(publish("secret/s", b"x", QoS::AtLeastOnce, 1))
            .await,
        reason::NOT_AUTHORIZED
    );
    assert_eq!(
        joe.publish(publish("secret/s", b"x", QoS::ExactlyOnce, 2))
            .await,
        reason::NOT_AUTHORIZED
    );
    assert_eq!(
        joe.publish(publish("_user_joe/y", b"mine", QoS::AtLeastOnce, 3))
            .await,
        0
    );
    assert!(
        b.topics
            .read(&path("/secret/s"), 1, 1)
            .await
            .unwrap()
            .is_empty()
    );
    // A wildcard subscription is accepted but delivers only readable topics.
    assert_eq!(joe.subscribe(&[("#", sub(QoS::AtMostOnce))]).await, [0]);
    let mut admin = b.admin(Protocol::V5, "adm").await;
    admin
        .publish(publish("secret/s", b"hidden", QoS::AtLeastOnce, 1))
        .await;
    admin
        .publish(publish("_user_joe/x", b"visible", QoS::AtLeastOnce, 2))
        .await;
    assert_eq!(&joe.recv_publish().await.payload[..], b"visible");
    joe.assert_quiet().await;
    // QoS 0 without rights: DISCONNECT 0x87.
    joe.send(Packet::Publish(publish(
        "secret/s",
        b"x",
        QoS::AtMostOnce,
        0,
    )))
    .await;
    let got = joe.until_closed().await;
    assert!(
        matches!(got.last(), Some(Packet::Disconnect(d)) if d.reason == reason::NOT_AUTHORIZED)
    );
    // 3.1.1: the connection is closed.
    let (mut joe3, _) = Client::connect(b.addr, Protocol::V311, |c| login(c, USER)).await;
    joe3.send(Packet::Publish(publish(
        "secret/s",
        b"x",
        QoS::AtLeastOnce,
        1,
    )))
    .await;
    assert!(joe3.until_closed().await.is_empty());
}

#[tokio::test]
async fn malformed_and_oversize_packets_close_the_connection() {
    let config = herald_transport_mqtt::MqttConfig {
        max_packet_size: 1024,
        ..Default::default()
    };
    let b = Broker::start_with(config, Default::default()).await;
    // Not a CONNECT first.
    let mut raw = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, &[0xC0, 0x00])
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut raw, &mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    // Oversize, announced in the header only.
    let mut c = b.admin(Protocol::V5, "big").await;
    c.send_raw(&[0x30, 0xff, 0xff, 0x03]).await;
    let got = c.until_closed().await;
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == reason::PACKET_TOO_LARGE)
    );
    // Garbage after CONNECT: a reserved packet type.
    let mut c = b.admin(Protocol::V5, "junk").await;
    c.send_raw(&[0x00, 0x00]).await;
    let got = c.until_closed().await;
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == reason::MALFORMED_PACKET
            && d.properties.reason_string.as_deref().is_some_and(|r| r.starts_with("malformed")))
    );
    // The broker still serves.
    let _ok = b.admin(Protocol::V311, "fine").await;
}

#[tokio::test]
async fn connack_announces_limits_and_assigns_client_ids() {
    let b = Broker::start().await;
    let (_, ack) = Client::connect(b.addr, Protocol::V5, |c| login(c, ADMIN)).await;
    let props = &ack.properties;
    assert_eq!(props.maximum_packet_size, Some(1024 * 1024));
    assert!(props.receive_maximum.is_some() && props.topic_alias_maximum.is_some());
    assert!(
        props
            .assigned_client_identifier
            .as_deref()
            .is_some_and(|id| id.starts_with("herald-"))
    );
    assert_eq!(props.shared_subscription_available, Some(1));
    // 3.1.1 without a client id and without clean session: identifier rejected.
    let (_, ack) = Client::connect(b.addr, Protocol::V311, |c| {
        c.clean_start = false;
        login(c, ADMIN);
    })
    .await;
    assert_eq!(ack.code, 2);
}

#[tokio::test]
async fn topic_aliases_from_the_client() {
    let b = Broker::start().await;
    let mut s = b.admin(Protocol::V5, "sub").await;
    s.subscribe(&[("al/t", sub(QoS::AtMostOnce))]).await;
    let mut p = b.admin(Protocol::V5, "pub").await;
    let mut first = publish("al/t", b"1", QoS::AtLeastOnce, 1);
    first.properties.topic_alias = Some(3);
    p.publish(first).await;
    let mut second = publish("", b"2", QoS::AtLeastOnce, 2);
    second.properties.topic_alias = Some(3);
    p.publish(second).await;
    assert_eq!(s.recv_publish().await.topic, "al/t");
    let m = s.recv_publish().await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("al/t", &b"2"[..]));
    // An unknown alias is a protocol error.
    let mut bad = publish("", b"3", QoS::AtMostOnce, 0);
    bad.properties.topic_alias = Some(4);
    p.send(Packet::Publish(bad)).await;
    let got = p.until_closed().await;
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == reason::PROTOCOL_ERROR)
    );
}

#[tokio::test]
async fn properties_pass_through_and_expired_messages_are_dropped() {
    let b = Broker::start().await;
    let mut p = b.admin(Protocol::V5, "pub").await;
    let mut m = publish("pp/t", b"{}", QoS::AtLeastOnce, 1);
    m.retain = true;
    m.properties.content_type = Some("application/json".into());
    m.properties.user_properties = vec![("k".into(), "v".into())];
    m.properties.response_topic = Some("pp/reply".into());
    m.properties.correlation_data = Some(Bytes::from_static(b"\x01"));
    m.properties.message_expiry_interval = Some(100);
    p.publish(m).await;
    let mut short = publish("pp/short", b"brief", QoS::AtLeastOnce, 2);
    short.retain = true;
    short.properties.message_expiry_interval = Some(1);
    p.publish(short).await;

    let mut s = b.admin(Protocol::V5, "sub").await;
    let props = Properties::from(PropertyValues {
        subscription_identifiers: vec![42],
        ..PropertyValues::default()
    });
    s.subscribe_with(&[("pp/t", sub(QoS::AtMostOnce))], props)
        .await;
    let got = s.recv_publish().await;
    let gp = &got.properties;
    assert_eq!(gp.content_type.as_deref(), Some("application/json"));
    assert_eq!(gp.user_properties, [("k".to_owned(), "v".to_owned())]);
    assert_eq!(gp.response_topic.as_deref(), Some("pp/reply"));
    assert_eq!(gp.correlation_data.as_deref(), Some(&b"\x01"[..]));
    assert!(
        gp.message_expiry_interval
            .is_some_and(|e| (98..=100).contains(&e))
    );
    assert_eq!(gp.subscription_identifiers, [42]);
    // Without a content type from the publisher, none is added.
    p.publish(publish("pp/t", b"raw", QoS::AtMostOnce, 0)).await;
    assert_eq!(s.recv_publish().await.properties.content_type, None);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    s.subscribe(&[("pp/short", sub(QoS::AtMostOnce))]).await;
    s.assert_quiet().await;
}

#[tokio::test]
async fn no_local_skips_own_messages() {
    let b = Broker::start().await;
    let mut c = b.admin(Protocol::V5, "self").await;
    let mut options = sub(QoS::AtMostOnce);
    options.no_local = true;
    c.subscribe(&[("nl/t", options)]).await;
    c.publish(publish("nl/t", b"mine", QoS::AtLeastOnce, 1))
        .await;
    c.assert_quiet().await;
    let mut other = b.admin(Protocol::V5, "other").await;
    other
        .publish(publish("nl/t", b"theirs", QoS::AtMostOnce, 0))
        .await;
    assert_eq!(&c.recv_publish().await.payload[..], b"theirs");
}

#[tokio::test]
async fn shared_subscriptions_split_messages_within_a_group() {
    let b = Broker::start().await;
    let mut a1 = b.admin(Protocol::V5, "a1").await;
    let mut a2 = b.admin(Protocol::V5, "a2").await;
    let mut other = b.admin(Protocol::V311, "g2").await;
    assert_eq!(
        a1.subscribe(&[("$share/g1/sh/#", sub(QoS::AtMostOnce))])
            .await,
        [0]
    );
    assert_eq!(
        a2.subscribe(&[("$share/g1/sh/#", sub(QoS::AtMostOnce))])
            .await,
        [0]
    );
    assert_eq!(
        other
            .subscribe(&[("$share/g2/sh/+", sub(QoS::AtMostOnce))])
            .await,
        [0]
    );
    let mut p = b.admin(Protocol::V5, "pub").await;
    for i in 0..10u8 {
        p.publish(publish("sh/t", &[i], QoS::AtLeastOnce, u16::from(i) + 1))
            .await;
    }
    let mut g2 = Vec::new();
    for _ in 0..10 {
        g2.push(other.recv_publish().await.payload[0]);
    }
    assert_eq!(
        g2,
        (0..10).collect::<Vec<u8>>(),
        "the other group gets everything"
    );
    let mut g1 = Vec::new();
    let (mut n1, mut n2) = (0, 0);
    while g1.len() < 10 {
        tokio::select! {
            Some(Packet::Publish(m)) = a1.try_recv(WAIT) => { g1.push(m.payload[0]); n1 += 1; }
            Some(Packet::Publish(m)) = a2.try_recv(WAIT) => { g1.push(m.payload[0]); n2 += 1; }
            else => panic!("group g1 got only {g1:?}"),
        }
    }
    g1.sort_unstable();
    assert_eq!(
        g1,
        (0..10).collect::<Vec<u8>>(),
        "each message once within the group"
    );
    assert!(n1 > 0 && n2 > 0, "both members get some: {n1} and {n2}");
    a1.assert_quiet().await;
    a2.assert_quiet().await;
    // A member that leaves gets nothing more.
    a1.disconnect().await;
    p.publish(publish("sh/t", b"x", QoS::AtLeastOnce, 20)).await;
    assert_eq!(&a2.recv_publish().await.payload[..], b"x");
}

#[tokio::test]
async fn invalid_topics_are_refused() {
    let b = Broker::start().await;
    let mut c = b.admin(Protocol::V5, "s").await;
    assert_eq!(
        c.subscribe(&[
            ("a//b", sub(QoS::AtMostOnce)),
            ("a/#/b", sub(QoS::AtMostOnce))
        ])
        .await,
        [reason::TOPIC_FILTER_INVALID, reason::TOPIC_FILTER_INVALID]
    );
    assert_eq!(
        c.publish(publish("/lead", b"x", QoS::AtLeastOnce, 1)).await,
        reason::TOPIC_NAME_INVALID
    );
}

#[tokio::test]
async fn other_protocols_reach_mqtt_and_iorio_names_work() {
    let b = Broker::start().await;
    let mut s = b.admin(Protocol::V5, "sub").await;
    s.subscribe(&[("bk/st", sub(QoS::AtLeastOnce))]).await;
    // An event appended by another protocol (an HTTP POST, say).
    b.topics
        .append(
            path("/bk/st"),
            vec![NewEvent::json(&b"{\"a\":1}"[..])],
            None,
        )
        .await
        .unwrap();
    let m = s.recv_publish().await;
    assert_eq!(&m.payload[..], b"{\"a\":1}");
    assert_eq!(m.qos, QoS::AtLeastOnce);
    assert_eq!(
        m.properties.content_type.as_deref(),
        Some("application/json")
    );
    s.send(Packet::PubAck(ack(m.packet_id))).await;
    // `bucket!stream` is the same stream.
    let mut p = b.admin(Protocol::V311, "pub").await;
    p.publish(publish("bk!st", b"bang", QoS::AtLeastOnce, 1))
        .await;
    let m = s.recv_publish().await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("bk/st", &b"bang"[..]));
    let stored = b.topics.read_last(&path("/bk/st"), 1).await.unwrap();
    assert_eq!(&*stored[0].origin, "pub");
    assert_eq!(
        &*stored[0].content_type,
        herald_transport_mqtt::DEFAULT_CONTENT_TYPE
    );
}

#[tokio::test]
async fn messages_over_the_clients_maximum_packet_size_are_not_sent() {
    let b = Broker::start().await;
    let (mut s, _) = Client::connect(b.addr, Protocol::V5, |c| {
        c.properties.maximum_packet_size = Some(100);
        login(c, ADMIN);
    })
    .await;
    s.subscribe(&[("mp/t", sub(QoS::AtLeastOnce))]).await;
    let mut p = b.admin(Protocol::V5, "pub").await;
    p.publish(publish("mp/t", &[1u8; 200], QoS::AtLeastOnce, 1))
        .await;
    p.publish(publish("mp/t", b"small", QoS::AtLeastOnce, 2))
        .await;
    let m = s.recv_publish().await;
    assert_eq!(&m.payload[..], b"small");
}

#[tokio::test]
async fn another_users_session_cannot_be_taken_over() {
    let b = Broker::start().await;
    let joe = |c: &mut herald_mqtt_codec::Connect| {
        c.client_id = "joes-device".into();
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(600);
        login(c, USER);
    };
    let (mut c, ack) = Client::connect(b.addr, Protocol::V5, joe).await;
    assert_eq!(ack.code, 0);
    assert_eq!(
        c.subscribe(&[("_user_joe/q", sub(QoS::AtLeastOnce))]).await,
        [1]
    );
    // The admin may do anything, but not become joe's client: refused, joe stays connected.
    let (_, ack) = Client::connect(b.addr, Protocol::V5, |c| {
        c.client_id = "joes-device".into();
        c.clean_start = false;
        login(c, ADMIN);
    })
    .await;
    assert_eq!(ack.code, reason::CLIENT_IDENTIFIER_NOT_VALID);
    c.send(Packet::PingReq).await;
    assert!(matches!(c.recv().await, Packet::PingResp));
    // Nor take the session while joe is away.
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, ack) = Client::connect(b.addr, Protocol::V311, |c| {
        c.client_id = "joes-device".into();
        login(c, ADMIN);
    })
    .await;
    assert_eq!(ack.code, 2);
    let (_, ack) = Client::connect(b.addr, Protocol::V5, joe).await;
    assert!(ack.session_present);
}

#[tokio::test]
async fn persistent_sessions_are_bounded_in_number() {
    let config = herald_transport_mqtt::MqttConfig {
        max_sessions: 1,
        ..Default::default()
    };
    let b = Broker::start_with(config, Default::default()).await;
    let persistent = |id: &'static str| {
        move |c: &mut herald_mqtt_codec::Connect| {
            c.client_id = id.into();
            c.clean_start = false;
            login(c, ADMIN);
        }
    };
    let (a, _) = Client::connect(b.addr, Protocol::V311, persistent("first")).await;
    a.disconnect().await;
    let (c, _) = Client::connect(b.addr, Protocol::V311, persistent("second")).await;
    c.disconnect().await;
    // The first is kept; the second, beyond the maximum, ended with its connection.
    let (_a, ack) = Client::connect(b.addr, Protocol::V311, persistent("first")).await;
    assert!(ack.session_present);
    let (_c, ack) = Client::connect(b.addr, Protocol::V311, persistent("second")).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn keep_alive_is_pushed_back_by_every_packet() {
    let b = Broker::start().await;
    let (mut c, _) = Client::connect(b.addr, Protocol::V5, |c| {
        c.keep_alive = 1;
        login(c, ADMIN);
    })
    .await;
    // Three seconds of pings every 0.5 s: twice the 1.5 s limit, never reached.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.send(Packet::PingReq).await;
        assert!(matches!(c.recv().await, Packet::PingResp));
    }
    // Then silence: closed.
    let got = c.until_closed().await;
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == reason::KEEP_ALIVE_TIMEOUT)
    );
}

/// The payloads of a topic's history, oldest first.
async fn history(b: &Broker, topic: &str) -> Vec<Bytes> {
    let events = b.topics.read(&path(topic), 1, 1000).await.unwrap();
    events.iter().map(|e| e.data.clone()).collect()
}

#[tokio::test]
async fn qos_0_publishes_read_together_keep_their_order() {
    // QoS 0 publishes to one topic read back to back are appended together (one append per
    // run): runs end at another topic, another QoS, a retained publish or another packet.
    let b = Broker::start().await;
    for (protocol, root) in [(Protocol::V311, "h3"), (Protocol::V5, "h5")] {
        let mut s = b.admin(protocol, "sub").await;
        let filter = format!("{root}/#");
        s.subscribe(&[(filter.as_str(), sub(QoS::AtMostOnce))])
            .await;
        let mut p = b.admin(protocol, "pub").await;
        let (a, c) = (format!("{root}/a"), format!("{root}/c"));
        let mut sent: Vec<(String, Packet)> = Vec::new();
        for i in 0..5 {
            sent.push((
                a.clone(),
                Packet::Publish(publish(&a, format!("a{i}").as_bytes(), QoS::AtMostOnce, 0)),
            ));
        }
        sent.push((
            a.clone(),
            Packet::Publish(publish(&a, b"a-q1", QoS::AtLeastOnce, 7)),
        ));
        for i in 0..3 {
            sent.push((
                c.clone(),
                Packet::Publish(publish(&c, format!("c{i}").as_bytes(), QoS::AtMostOnce, 0)),
            ));
        }
        let mut retained = publish(&c, b"c-retained", QoS::AtMostOnce, 0);
        retained.retain = true;
        sent.push((c.clone(), Packet::Publish(retained)));
        for i in 5..7 {
            sent.push((
                a.clone(),
                Packet::Publish(publish(&a, format!("a{i}").as_bytes(), QoS::AtMostOnce, 0)),
            ));
        }
        let mut out = bytes::BytesMut::new();
        for (_, packet) in &sent {
            herald_mqtt_codec::encode(packet, protocol, &mut out);
        }
        herald_mqtt_codec::encode(&Packet::PingReq, protocol, &mut out);
        // One write: the broker reads them together.
        p.send_raw(&out).await;
        // The PUBACK (once durable) and the PINGRESP (at once), in either order.
        let (mut acked, mut pinged) = (false, false);
        for _ in 0..2 {
            match p.recv().await {
                Packet::PubAck(ack) if ack.packet_id == 7 => acked = true,
                Packet::PingResp => pinged = true,
                other => panic!("expected PUBACK 7 or PINGRESP, got {other:?}"),
            }
        }
        assert!(acked && pinged);

        let expected = |topic: &str| -> Vec<Bytes> {
            sent.iter()
                .filter(|(t, _)| t == topic)
                .map(|(_, p)| match p {
                    Packet::Publish(p) => p.payload.clone(),
                    _ => unreachable!(),
                })
                .collect()
        };
        // Delivered in order per topic, and all of them.
        let mut got: std::collections::BTreeMap<String, Vec<Bytes>> = Default::default();
        for _ in 0..sent.len() {
            let m = s.recv_publish().await;
            got.entry(m.topic.clone())
                .or_default()
                .push(m.payload.clone());
        }
        s.assert_quiet().await;
        assert_eq!(got[&a], expected(&a), "{protocol:?}");
        assert_eq!(got[&c], expected(&c), "{protocol:?}");
        // Kept in that order.
        assert_eq!(
            history(&b, &format!("/{a}")).await,
            expected(&a),
            "{protocol:?}"
        );
        assert_eq!(
            history(&b, &format!("/{c}")).await,
            expected(&c),
            "{protocol:?}"
        );
        p.disconnect().await;
        s.disconnect().await;
    }
}

#[tokio::test]
async fn qos_0_publishes_read_before_a_refused_one_are_kept() {
    // A QoS 0 publish the broker refuses ends the connection; those read before it in the
    // same read are still appended.
    let b = Broker::start().await;
    for (protocol, topic) in [(Protocol::V311, "kept/3"), (Protocol::V5, "kept/5")] {
        let mut p = b.admin(protocol, "pub").await;
        let mut out = bytes::BytesMut::new();
        for payload in [&b"one"[..], b"two"] {
            let packet = Packet::Publish(publish(topic, payload, QoS::AtMostOnce, 0));
            herald_mqtt_codec::encode(&packet, protocol, &mut out);
        }
        // A wildcard in a topic name: refused, and QoS 0 can only be refused by closing.
        let bad = Packet::Publish(publish("kept/+", b"bad", QoS::AtMostOnce, 0));
        herald_mqtt_codec::encode(&bad, protocol, &mut out);
        p.send_raw(&out).await;
        p.until_closed().await;
        let want = [Bytes::from_static(b"one"), Bytes::from_static(b"two")];
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = history(&b, &format!("/{topic}")).await;
            if got == want {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{protocol:?}: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn qos_0_publishes_wait_for_room_in_a_full_engine_queue() {
    // A queue of one append: runs of held QoS 0 publishes often find it full and wait for
    // room (back-pressure on the publisher); none is lost or reordered.
    let options = herald_engine::TopicsOptions {
        queue_capacity: 1,
        max_batch: 1,
        ..Default::default()
    };
    let b = Broker::start_with(herald_transport_mqtt::MqttConfig::default(), options).await;
    let mut p = b.admin(Protocol::V5, "pub").await;
    let mut out = bytes::BytesMut::new();
    let mut want: std::collections::BTreeMap<&str, Vec<Bytes>> = Default::default();
    for i in 0..300u32 {
        // Runs of 1 to 4 publishes per topic.
        let topic = ["full/a", "full/b", "full/c"][(i / (1 + i % 4)) as usize % 3];
        let payload = Bytes::from(i.to_string());
        let packet = Packet::Publish(publish(topic, &payload, QoS::AtMostOnce, 0));
        herald_mqtt_codec::encode(&packet, Protocol::V5, &mut out);
        want.entry(topic).or_default().push(payload);
    }
    let last = Packet::Publish(publish("full/a", b"last", QoS::AtLeastOnce, 1));
    herald_mqtt_codec::encode(&last, Protocol::V5, &mut out);
    want.entry("full/a")
        .or_default()
        .push(Bytes::from_static(b"last"));
    p.send_raw(&out).await;
    // Acknowledged once durable, so everything before it is appended.
    match p.recv().await {
        Packet::PubAck(ack) => assert_eq!((ack.packet_id, ack.reason), (1, 0)),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    for (topic, payloads) in want {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = history(&b, &format!("/{topic}")).await;
            if got == payloads {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{topic}: {got:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
