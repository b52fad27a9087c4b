//! Memory bounds, in a test binary of its own: it measures this process's resident memory, so
//! no other test may run beside it.

mod common;

use std::time::Duration;

use common::*;
use herald_mqtt_codec::{Packet, Properties, Protocol, QoS};

/// Resident set size of this process (the broker runs in it), in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test]
async fn a_client_that_never_reads_is_not_read_either() {
    let config = herald_transport_mqtt::MqttConfig {
        send_buffer_bytes: 1024,
        ..Default::default()
    };
    let b = Broker::start_with(config, Default::default()).await;
    let mut p = b.admin(Protocol::V311, "pub").await;
    let mut big = publish("big/t", &[7u8; 64 * 1024], QoS::AtLeastOnce, 1);
    big.retain = true;
    p.publish(big).await;
    // 5,000 SUBSCRIBEs (60 KB), each answered with the 64 KiB retained message, from a client
    // that never reads: without a bound the broker would queue 320 MiB of answers.
    let c = b.admin(Protocol::V311, "flooder").await;
    let mut flood = bytes::BytesMut::new();
    for _ in 0..5000 {
        herald_mqtt_codec::encode(
            &Packet::Subscribe(herald_mqtt_codec::Subscribe {
                packet_id: 1,
                properties: Properties::default(),
                filters: vec![("big/t".into(), sub(QoS::AtMostOnce))],
            }),
            Protocol::V311,
            &mut flood,
        );
    }
    let before = rss_bytes();
    let mut stream = c.stream;
    tokio::io::AsyncWriteExt::write_all(&mut stream, &flood)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = rss_bytes().saturating_sub(before);
    assert!(grown < 64 << 20, "memory grew by {} MiB", grown >> 20);
}
