//! `mqtt-fanout` against Herald's MQTT broker in process: every subscriber gets every message.

mod streams_server;

use std::time::Duration;

use herald_bench::scenario::fanout::{Publish, Topics};
use herald_bench::scenario::mqtt_fanout;
use herald_mqtt_codec::{Protocol, QoS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_fanout_delivers_every_message() -> anyhow::Result<()> {
    let server = streams_server::start_streams().await?;
    for (topics, publishers, qos) in [
        (Topics::One, 1, QoS::AtMostOnce),
        (Topics::Distinct, 2, QoS::AtLeastOnce),
    ] {
        let report = mqtt_fanout::run(&mqtt_fanout::Options {
            broker: server.mqtt_admin(Protocol::V5),
            topic: "bench/fanout".into(),
            topics,
            subscribers: 4,
            publishers,
            publish: Publish {
                payload_bytes: 64,
                qos,
                rate: None,
                window: 100,
                inflight: 16,
                duration: Duration::from_millis(300),
                drain: Duration::from_secs(2),
            },
            pid: Some(std::process::id()),
        })
        .await?;
        let f = &report.figures;
        assert!(f.published > 0 && f.delivered > 0, "{report}");
        assert_eq!((f.lost, f.out_of_order), (0, 0), "{report}");
        assert_eq!(f.delivered, f.expected, "{report}");
        assert!(f.errors.is_empty(), "{report}");
        if qos == QoS::AtLeastOnce {
            assert_eq!(f.acked, f.published, "{report}");
        }
        assert!(report.to_string().contains("delivered/s"));
    }
    Ok(())
}
