//! `mqtt-publish` against Herald's MQTT broker in process.

mod streams_server;

use std::time::Duration;

use herald_bench::scenario::mqtt_publish;
use herald_core::{Path, PathLimits};
use herald_mqtt_codec::{Protocol, QoS};

/// With `--new-topics` every acknowledged publish created a topic of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_publish_to_new_topics_creates_one_per_publish() -> anyhow::Result<()> {
    let server = streams_server::start_streams().await?;
    let report = mqtt_publish::run(&mqtt_publish::Options {
        broker: server.mqtt_admin(Protocol::V311),
        prefix: "bench/new".into(),
        new_topics: true,
        publishers: 2,
        payload_bytes: 64,
        qos: QoS::AtLeastOnce,
        inflight: 4,
        rate: None,
        duration: Duration::from_millis(200),
        drain: Duration::from_secs(5),
        pid: None,
    })
    .await?;
    assert!(report.acked > 0, "{report}");
    assert_eq!(
        (report.acked, report.unacked),
        (report.published, 0),
        "{report}"
    );
    assert!(report.errors.is_empty(), "{report}");
    let prefix = Path::parse_url("/bench/new", &PathLimits::default())?;
    let created = server.topics.list(&prefix).len() as u64;
    assert_eq!(created, report.acked, "{report}");
    assert!(report.to_string().contains("new-topics"), "{report}");
    Ok(())
}
