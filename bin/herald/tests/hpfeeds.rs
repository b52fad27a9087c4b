//! The hpfeeds broker of the real binary: identities added offline with `herald hpfeeds add`,
//! then publish / subscribe over TCP with the wire codec, the ready file entry, `--hpfeeds off`,
//! the broker name, and the broker's metrics.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use herald_auth::hpfeeds::auth_hash;
use herald_transport_hpfeeds::frame::{Decoder, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw hpfeeds client.
struct Client {
    stream: TcpStream,
    rbuf: BytesMut,
    name: String,
    nonce: [u8; 4],
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = within("hpfeeds connect", TcpStream::connect(addr))
            .await
            .expect("connects");
        let mut c = Client {
            stream,
            rbuf: BytesMut::new(),
            name: String::new(),
            nonce: [0; 4],
        };
        match c.recv().await {
            Some(Frame::Info { name, nonce }) => {
                c.name = name;
                c.nonce = nonce;
            }
            other => panic!("expected OP_INFO, got {other:?}"),
        }
        c
    }

    async fn login(addr: SocketAddr, ident: &str, secret: &str) -> Client {
        let mut c = Client::connect(addr).await;
        let hash = auth_hash(&c.nonce, secret).to_vec();
        c.send(&Frame::auth(ident, hash)).await;
        c
    }

    async fn send(&mut self, frame: &Frame) {
        let bytes = frame.to_bytes().expect("encodes");
        within("hpfeeds send", self.stream.write_all(&bytes))
            .await
            .expect("sent");
    }

    /// The next frame, or `None` at EOF.
    async fn recv(&mut self) -> Option<Frame> {
        within("hpfeeds frame", async {
            loop {
                if let Some(frame) = Decoder::new().decode(&mut self.rbuf).expect("valid frame") {
                    return Some(frame);
                }
                self.rbuf.reserve(64 * 1024);
                match self.stream.read_buf(&mut self.rbuf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    async fn expect_publish(&mut self) -> (String, String, Vec<u8>) {
        match self.recv().await {
            Some(Frame::Publish {
                ident,
                channel,
                payload,
            }) => (ident, channel, payload.to_vec()),
            other => panic!("expected OP_PUBLISH, got {other:?}"),
        }
    }

    /// Subscribes, and waits until the broker has processed it: publishes a marker on `sync`
    /// (which the identity may publish and subscribe to) and waits for it to come back.
    async fn subscribe_synced(&mut self, ident: &str, chan: &str, sync: &str) {
        self.send(&Frame::subscribe(ident, chan)).await;
        self.send(&Frame::subscribe(ident, sync)).await;
        self.send(&Frame::publish(ident, sync, "marker")).await;
        loop {
            let (_, channel, payload) = self.expect_publish().await;
            if channel == sync && payload == b"marker" {
                return;
            }
        }
    }
}

/// `herald hpfeeds add` on `data`, offline.
async fn add_identity(data: &Path, ident: &str, secret: &str, pubchans: &str, subchans: &str) {
    let data = data.to_str().expect("UTF-8 path");
    let mut args = vec![
        "hpfeeds",
        "add",
        ident,
        "--secret",
        secret,
        "--data-dir",
        data,
    ];
    if !pubchans.is_empty() {
        args.extend(["--pubchans", pubchans]);
    }
    if !subchans.is_empty() {
        args.extend(["--subchans", subchans]);
    }
    let out = run_cli(&args).await;
    assert!(out.status.success(), "herald hpfeeds add failed: {out:?}");
}

/// Numbers the runs, so that each has its own ready file and log.
static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// `herald serve` on `data` with every listener on an ephemeral port (hpfeeds too, unless
/// `extra` says otherwise).
async fn serve(dir: &Path, data: &Path, extra: &[&str]) -> Proc {
    let hpfeeds = if extra.contains(&"--hpfeeds") {
        &[][..]
    } else {
        &["--hpfeeds", "127.0.0.1:0"][..]
    };
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ready = dir.join(format!("ready-{n}.json"));
    let mut cmd = command();
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args(["--icepeak", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--metrics", "127.0.0.1:0"])
        .args(hpfeeds)
        .arg("--ready-file")
        .arg(&ready)
        .args(extra);
    Proc::spawn(cmd, ready, dir.join(format!("herald-{n}.log"))).await
}

#[tokio::test]
async fn identities_added_offline_publish_and_subscribe() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    add_identity(&data, "sensor", "s3cret", "events,sync-s", "sync-s").await;
    add_identity(&data, "reader", "r3ader", "sync-r", "events,sync-r").await;
    let p = serve(dir.path(), &data, &[]).await;
    let addrs = p.addrs();
    let addr = addrs["hpfeeds"];

    let mut reader = Client::login(addr, "reader", "r3ader").await;
    assert_eq!(reader.name, "hpfeeds");
    reader.subscribe_synced("reader", "events", "sync-r").await;
    let mut sensor = Client::login(addr, "sensor", "s3cret").await;
    sensor
        .send(&Frame::publish("sensor", "events", &b"\x01attack\xff"[..]))
        .await;
    assert_eq!(
        reader.expect_publish().await,
        ("sensor".into(), "events".into(), b"\x01attack\xff".to_vec())
    );

    // The error cases keep their exact texts.
    let mut bad = Client::login(addr, "sensor", "wrong").await;
    assert_eq!(
        bad.recv().await,
        Some(Frame::error("Authentication failed for sensor"))
    );
    assert_eq!(bad.recv().await, None);
    sensor.send(&Frame::subscribe("sensor", "events")).await;
    assert_eq!(
        sensor.recv().await,
        Some(Frame::error(
            "Authkey not allowed to sub here. ident=sensor, chan=events"
        ))
    );
    assert_eq!(sensor.recv().await, None);

    // The broker's metrics are on the metrics listener.
    let url = format!("http://{}/metrics", addrs["metrics"]);
    let body = within("hpfeeds metrics", async {
        loop {
            let body = get(&url).await.body;
            if body.contains("hpfeeds_broker_receive_publish_count") {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    for needle in [
        "hpfeeds_broker_client_connections",
        "hpfeeds_broker_connection_made",
        "hpfeeds_broker_connection_ready{ident=\"reader\"}",
        "hpfeeds_broker_connection_error{ident=\"sensor\",category=\"invalid-secret\"}",
        "hpfeeds_broker_receive_publish_count{ident=\"sensor\",chan=\"events\"}",
        "hpfeeds_broker_receive_publish_size_bucket{ident=\"sensor\",chan=\"events\",le=\"1024\"}",
        "hpfeeds_broker_subscriptions{ident=\"reader\",chan=\"events\"} 1",
        "hpfeeds_client_authenticated_connections{ident=\"reader\",owner=\"reader\"} 1",
    ] {
        assert!(body.contains(needle), "no {needle} in:\n{body}");
    }
    p.stop().await;
}

#[tokio::test]
async fn hpfeeds_publishes_are_stored_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    add_identity(&data, "sensor", "s3cret", "events,sync-s", "events,sync-s").await;
    let p = serve(dir.path(), &data, &["--hpfeeds-name", "herald-broker"]).await;
    let addr = p.addrs()["hpfeeds"];
    let mut sensor = Client::login(addr, "sensor", "s3cret").await;
    assert_eq!(sensor.name, "herald-broker");
    sensor.subscribe_synced("sensor", "events", "sync-s").await;
    for i in 0..20u8 {
        sensor
            .send(&Frame::publish("sensor", "events", vec![i]))
            .await;
    }
    for i in 0..20u8 {
        assert_eq!(sensor.expect_publish().await.2, vec![i]);
    }
    drop(sensor);
    p.stop().await;

    // The identity and the events are in the data directory.
    let p = serve(dir.path(), &data, &[]).await;
    let addr = p.addrs()["hpfeeds"];
    let mut sensor = Client::login(addr, "sensor", "s3cret").await;
    sensor.subscribe_synced("sensor", "events", "sync-s").await;
    p.stop().await;
    let store = herald_store_fjall::FjallStore::open(&data.join("store")).expect("store");
    let logs = herald_store::Store::list_logs(&store, "t:").expect("logs");
    let events = logs
        .iter()
        .find(|(name, _)| name.ends_with(":/hpfeeds/events"))
        .unwrap_or_else(|| panic!("no topic log for /hpfeeds/events in {logs:?}"));
    assert_eq!(events.1.last, 20, "{logs:?}");
}

#[tokio::test]
async fn the_testkit_serves_hpfeeds_on_an_ephemeral_port_and_off_turns_it_off() {
    let s = start(&[]).await;
    let c = Client::connect(s.hpfeeds_addr()).await;
    assert_eq!(c.name, "hpfeeds");
    stop(s).await;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let p = serve(dir.path(), &data, &["--hpfeeds", "off"]).await;
    assert!(!p.addrs().contains_key("hpfeeds"));
    p.stop().await;
}
