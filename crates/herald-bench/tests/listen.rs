//! `listen-fanout` and `listen-idle` against an in-process stream server (IorioDB API and MQTT
//! broker over one topics engine): every listener gets every seqnum, over WebSocket and SSE.

mod streams_server;

use std::time::Duration;

use herald_bench::scenario::fanout::{Publish, Topics};
use herald_bench::scenario::listen::Transport;
use herald_bench::scenario::listen_fanout;
use herald_bench::scenario::listen_idle;
use herald_mqtt_codec::{Protocol, QoS};

fn fanout(server: &streams_server::Streams, transport: Transport) -> listen_fanout::Options {
    listen_fanout::Options {
        target: server.http.clone(),
        mqtt: server.mqtt.clone(),
        transport,
        bucket: "bench".into(),
        stream: "fanout".into(),
        topics: Topics::One,
        subscribers: 4,
        publishers: 1,
        publish: Publish {
            payload_bytes: 100,
            qos: QoS::AtMostOnce,
            rate: None,
            window: 100,
            inflight: 16,
            duration: Duration::from_millis(300),
            drain: Duration::from_secs(2),
        },
        protocol: Protocol::V311,
        connect_concurrency: 4,
        connect_timeout: Duration::from_secs(10),
        user: "admin".into(),
        password: streams_server::ADMIN_PASSWORD.into(),
        // The server runs in this process.
        pid: Some(std::process::id()),
    }
}

fn fanout_with(
    server: &streams_server::Streams,
    transport: Transport,
    change: impl FnOnce(&mut Publish),
) -> listen_fanout::Options {
    let mut opts = fanout(server, transport);
    change(&mut opts.publish);
    opts
}

fn check(report: &listen_fanout::Report) {
    let f = &report.figures;
    assert!(f.published > 0, "{report}");
    assert_eq!(report.stored, f.published, "{report}");
    assert!(f.delivered > 0, "{report}");
    assert_eq!(f.lost, 0, "{report}");
    assert_eq!(f.delivered, f.expected, "{report}");
    assert_eq!((f.out_of_order, report.resets), (0, 0), "{report}");
    assert!(f.errors.is_empty(), "{report}");
    assert_eq!(f.latency.count, f.delivered, "{report}");
    assert!(report.rss_before.is_some() && report.rss_after.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_fanout_over_websocket_delivers_every_seqnum() -> anyhow::Result<()> {
    let server = streams_server::start_streams().await?;
    let report = listen_fanout::run(&fanout(&server, Transport::Ws)).await?;
    check(&report);
    assert_eq!(report.figures.expected, report.stored * 4);
    assert!(report.to_string().contains("latency p99.9"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_fanout_over_sse_with_distinct_streams_and_qos1() -> anyhow::Result<()> {
    let server = streams_server::start_streams().await?;
    let report = listen_fanout::run(&listen_fanout::Options {
        topics: Topics::Distinct,
        publishers: 2,
        ..fanout_with(&server, Transport::Sse, |p| p.qos = QoS::AtLeastOnce)
    })
    .await?;
    check(&report);
    // Two streams, each listened to by two of the four subscribers.
    assert_eq!(report.figures.expected, report.stored * 2);
    assert_eq!(report.figures.acked, report.figures.published);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_fanout_at_a_fixed_rate() -> anyhow::Result<()> {
    let server = streams_server::start_streams().await?;
    let report = listen_fanout::run(&listen_fanout::Options {
        ..fanout_with(&server, Transport::Sse, |p| p.rate = "200/s".parse().ok())
    })
    .await?;
    check(&report);
    // 300 ms at 200/s: about 60 messages.
    assert!((40..=80).contains(&report.figures.published), "{report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_fanout_refuses_a_wrong_password() -> anyhow::Result<()> {
    let server = streams_server::start_streams().await?;
    let result = listen_fanout::run(&listen_fanout::Options {
        password: "wrong".into(),
        ..fanout(&server, Transport::Ws)
    })
    .await;
    let error = format!("{:#}", result.expect_err("a wrong password must fail"));
    assert!(error.contains("login"), "{error}");
    Ok(())
}

fn idle(server: &streams_server::Streams, transport: Transport) -> listen_idle::Options {
    listen_idle::Options {
        target: server.http.clone(),
        transport,
        connections: 40,
        pid: std::process::id(),
        bucket: "bench".into(),
        prefix: "idle".into(),
        settle: Duration::from_millis(50),
        connect_concurrency: 8,
        connect_timeout: Duration::from_secs(10),
        setup_timeout: Duration::from_secs(20),
        // Exercise the source-address path: 127.0.0.1 and 127.0.0.2.
        source_ips: Some(2),
        user: "admin".into(),
        password: streams_server::ADMIN_PASSWORD.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_idle_over_websocket_and_sse() -> anyhow::Result<()> {
    let server = streams_server::start_streams().await?;
    for transport in [Transport::Ws, Transport::Sse] {
        let report = listen_idle::run(&idle(&server, transport)).await?;
        assert_eq!(
            (report.figures.established, report.figures.failed),
            (40, 0),
            "{report}"
        );
        assert_eq!(report.closed_by_server, 0, "{report}");
        assert_eq!(report.source_ips, 2);
        assert!(report.figures.rss_before > 0 && report.figures.rss_after > 0);
        assert!(report.to_string().contains("server RSS per connection"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_idle_fails_without_read_permission() -> anyhow::Result<()> {
    let server = streams_server::start_streams().await?;
    // `reader` may not read bucket `bench`: the server skips the stream, which the WebSocket
    // client learns from its subscribe command (`no-perm`) and the SSE client from the missing
    // first event.
    for transport in [Transport::Ws, Transport::Sse] {
        let result = listen_idle::run(&listen_idle::Options {
            connections: 2,
            user: "reader".into(),
            connect_timeout: Duration::from_millis(500),
            ..idle(&server, transport)
        })
        .await;
        let error = format!(
            "{:#}",
            result.expect_err("no connection may be established")
        );
        assert!(
            error.contains("no connection could be established"),
            "{error}"
        );
        if transport == Transport::Ws {
            assert!(error.contains("no-perm"), "{error}");
        }
    }
    Ok(())
}
