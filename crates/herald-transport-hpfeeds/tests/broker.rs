//! The broker on real sockets: an in-process `Topics` and `HpfeedsIdentities` on a
//! `MemoryStore`, clients writing raw frames with the crate's codec.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herald_auth::hpfeeds::{Identity, auth_hash};
use herald_core::{Path, PathLimits};
use herald_engine::{HpfeedsIdentities, HpfeedsOptions, NewEvent, Topics, TopicsOptions};
use herald_store::MemoryStore;
use herald_transport_hpfeeds::broker::{BACKPRESSURE_ERROR, CONTENT_TYPE, FIRST_MESSAGE_ERROR};
use herald_transport_hpfeeds::frame::{Decoder, Frame, MAX_BUF};
use herald_transport_hpfeeds::{HpfeedsConfig, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const IO: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);

struct Broker {
    addr: SocketAddr,
    topics: Topics,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Broker {
    async fn start(config: HpfeedsConfig) -> Broker {
        Broker::start_with(config, HpfeedsOptions::default()).await
    }

    async fn start_with(config: HpfeedsConfig, options: HpfeedsOptions) -> Broker {
        Broker::start_full(config, options, TopicsOptions::default()).await
    }

    async fn start_full(
        config: HpfeedsConfig,
        options: HpfeedsOptions,
        topics_options: TopicsOptions,
    ) -> Broker {
        let store = Arc::new(MemoryStore::default());
        let (topics, _actor) = Topics::open(store.clone(), topics_options).await.unwrap();
        let identities = HpfeedsIdentities::open(store, options).await.unwrap();
        let all = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        for (ident, pubs, subs) in [
            (
                "alice",
                &["chan1", "both", "sync-alice"][..],
                &["chan1", "both", "sync-alice"][..],
            ),
            ("bob", &["sync-bob"][..], &["chan1", "sync-bob", "bulk"][..]),
            (
                "carol",
                &["chan1", "bulk", "weird/chan"][..],
                &["weird/chan"][..],
            ),
            ("slow", &["sync-slow"][..], &["sync-slow", "bulk"][..]),
        ] {
            let id = Identity::new(
                ident,
                &secret(ident),
                &format!("{ident}-owner"),
                all(pubs),
                all(subs),
            )
            .unwrap();
            identities.put(id).await.unwrap();
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let topics = topics.clone();
            let shutdown = shutdown.clone();
            async move {
                serve(listener, topics, identities, config, shutdown)
                    .await
                    .unwrap();
            }
        });
        Broker {
            addr,
            topics,
            shutdown,
            task,
        }
    }

    async fn connect(&self) -> Client {
        Client::connect(self.addr).await
    }

    async fn login(&self, ident: &str) -> Client {
        let mut c = self.connect().await;
        c.auth(ident, &secret(ident)).await;
        c
    }
}

fn secret(ident: &str) -> String {
    format!("{ident}-secret")
}

fn topic(s: &str) -> Path {
    Path::parse_url(s, &PathLimits::default()).unwrap()
}

struct Client {
    stream: TcpStream,
    rbuf: BytesMut,
    decoder: Decoder,
    name: String,
    nonce: [u8; 4],
    syncs: u32,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect(addr).await.unwrap()).await
    }

    async fn from_stream(stream: TcpStream) -> Client {
        let mut c = Client {
            stream,
            rbuf: BytesMut::new(),
            decoder: Decoder::new(),
            name: String::new(),
            nonce: [0; 4],
            syncs: 0,
        };
        match c.recv().await {
            Some(Frame::Info { name, nonce }) => {
                c.name = name;
                c.nonce = nonce;
            }
            other => panic!("expected OP_INFO first, got {other:?}"),
        }
        c
    }

    async fn auth(&mut self, ident: &str, secret: &str) {
        let hash = auth_hash(&self.nonce, secret);
        self.send(&Frame::auth(ident, Bytes::copy_from_slice(&hash)))
            .await;
    }

    async fn send(&mut self, frame: &Frame) {
        self.raw(&frame.to_bytes().unwrap()).await;
    }

    async fn raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn publish(&mut self, ident: &str, chan: &str, payload: &[u8]) {
        self.send(&Frame::publish(
            ident,
            chan,
            Bytes::copy_from_slice(payload),
        ))
        .await;
    }

    /// The next frame; `None` at EOF (or a reset).
    async fn recv(&mut self) -> Option<Frame> {
        tokio::time::timeout(IO, self.recv_untimed())
            .await
            .expect("a frame or EOF in time")
    }

    async fn recv_untimed(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.rbuf).unwrap() {
                return Some(frame);
            }
            self.rbuf.reserve(64 * 1024);
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => {
                    assert!(self.rbuf.is_empty(), "EOF inside a frame");
                    return None;
                }
                Ok(_) => {}
            }
        }
    }

    async fn expect_publish(&mut self) -> (String, String, Bytes) {
        match self.recv().await {
            Some(Frame::Publish {
                ident,
                channel,
                payload,
            }) => (ident, channel, payload),
            other => panic!("expected OP_PUBLISH, got {other:?}"),
        }
    }

    /// An `OP_ERROR` with exactly `text`, then the close.
    async fn expect_error_and_close(&mut self, text: &str) {
        assert_eq!(self.recv().await, Some(Frame::error(text)));
        assert_eq!(self.recv().await, None, "closed after the error");
    }

    async fn expect_close_without_error(&mut self) {
        assert_eq!(self.recv().await, None);
    }

    async fn expect_nothing(&mut self) {
        if let Ok(frame) = tokio::time::timeout(QUIET, self.recv_untimed()).await {
            panic!("expected nothing, got {frame:?}");
        }
    }

    /// Subscribes to `chans` and waits until the broker has processed it: it publishes a
    /// marker on the client's own `sync-<ident>` channel after the subscriptions and waits for
    /// it to come back.
    async fn subscribe_synced(&mut self, ident: &str, chans: &[&str]) {
        let sync = format!("sync-{ident}");
        for chan in chans.iter().copied().chain([sync.as_str()]) {
            self.send(&Frame::subscribe(ident, chan)).await;
        }
        self.syncs += 1;
        let marker = format!("marker-{}", self.syncs);
        self.publish(ident, &sync, marker.as_bytes()).await;
        loop {
            let (_, chan, payload) = self.expect_publish().await;
            if chan == sync && payload == marker.as_bytes() {
                return;
            }
        }
    }
}

// ---- handshake and authentication --------------------------------------------------------

#[tokio::test]
async fn info_comes_first_with_the_name_and_a_fresh_nonce() {
    let broker = Broker::start(HpfeedsConfig::default()).await;
    let a = broker.connect().await;
    let b = broker.connect().await;
    assert_eq!(a.name, "hpfeeds");
    assert_ne!(a.nonce, b.nonce, "each connection gets its own nonce");

    let named = Broker::start(HpfeedsConfig {
        name: "herald-broker".into(),
        ..HpfeedsConfig::default()
    })
    .await;
    assert_eq!(named.connect().await.name, "herald-broker");
}

#[tokio::test]
async fn the_first_message_must_be_auth() {
    let broker = Broker::start(HpfeedsConfig::default()).await;
    for frame in [
        Frame::subscribe("alice", "chan1"),
        Frame::publish("alice", "chan1", "x"),
        Frame::unsubscribe("alice", "chan1"),
        Frame::error("hello"),
        Frame::info("x", [1, 2, 3, 4]),
    ] {
        let mut c = broker.connect().await;
        c.send(&frame).await;
        c.expect_error_and_close(FIRST_MESSAGE_ERROR).await;
    }
}

#[tokio::test]
async fn a_first_frame_that_is_not_auth_is_refused_whatever_its_body() {
    // The Python broker looks at the opcode of a complete first frame before its fields: any
    // opcode but OP_AUTH gets the error, even when the body would not decode.
    let broker = Broker::start(HpfeedsConfig::default()).await;
    let frame = |opcode: u8, body: &[u8]| {
        let mut v = u32::try_from(5 + body.len())
            .unwrap()
            .to_be_bytes()
            .to_vec();
        v.push(opcode);
        v.extend_from_slice(body);
        v
    };
    for bytes in [
        frame(4, b""),                // OP_SUBSCRIBE without its ident's length byte
        frame(5, b"\x09ab"),          // OP_UNSUBSCRIBE with a truncated ident
        frame(3, b"\x05alice\x09ab"), // OP_PUBLISH with a truncated channel
        frame(4, b"\x05alice\xff"),   // OP_SUBSCRIBE, channel not UTF-8
        frame(0, b"\xff\xfe"),        // OP_ERROR, text not UTF-8
        frame(1, b"\x02hp\x01"),      // OP_INFO with a 1-byte nonce
    ] {
        let mut c = broker.connect().await;
        c.raw(&bytes).await;
        c.expect_error_and_close(FIRST_MESSAGE_ERROR).await;
    }
    // On the header alone: the body of a frame refused anyway is not waited for (nor
    // buffered), while a partial header waits.
    let mut c = broker.connect().await;
    let header = frame(4, &vec![b'x'; MAX_BUF - 5]);
    c.raw(&header[..4]).await;
    c.expect_nothing().await;
    c.raw(&header[4..5]).await;
    c.expect_error_and_close(FIRST_MESSAGE_ERROR).await;
    // A malformed OP_AUTH, an unknown opcode or an oversize frame first are still protocol
    // errors: closed without a message (the Python broker drops these too).
    for bytes in [frame(2, b""), frame(9, b""), vec![0, 0, 1, 26, 2]] {
        let mut c = broker.connect().await;
        c.raw(&bytes).await;
        c.expect_close_without_error().await;
    }
}

#[tokio::test]
async fn unbounded_timeouts_do_not_break_connections() {
    // `Duration::MAX` means "never": a deadline that far does not fit an `Instant`, and must not
    // kill the connection. A 1-byte send buffer starts the back-pressure deadline at the first
    // delivery.
    let broker = Broker::start(HpfeedsConfig {
        auth_timeout: Duration::MAX,
        backpressure_deadline: Duration::MAX,
        send_buffer_bytes: 1,
        ..HpfeedsConfig::default()
    })
    .await;
    let mut alice = broker.login("alice").await;
    alice.subscribe_synced("alice", &["chan1"]).await;
    for i in 0..20u8 {
        alice.publish("alice", "chan1", &[i]).await;
    }
    for i in 0..20u8 {
        assert_eq!(&alice.expect_publish().await.2[..], &[i]);
    }
}

#[tokio::test]
async fn authentication_failures() {
    let broker = Broker::start(HpfeedsConfig::default()).await;
    // Unknown ident.
    let mut c = broker.connect().await;
    c.auth("nobody", "whatever").await;
    c.expect_error_and_close("Authentication failed for nobody")
        .await;
    // Wrong secret.
    let mut c = broker.connect().await;
    c.auth("alice", "wrong").await;
    c.expect_error_and_close("Authentication failed for alice")
        .await;
    // The right secret hashed with another nonce.
    let mut c = broker.connect().await;
    let hash = auth_hash(&[0, 0, 0, 0], &secret("alice"));
    c.send(&Frame::auth("alice", Bytes::copy_from_slice(&hash)))
        .await;
    c.expect_error_and_close("Authentication failed for alice")
        .await;
    // A digest of the wrong length.
    let mut c = broker.connect().await;
    c.send(&Frame::auth("alice", vec![0u8; 7])).await;
    c.expect_error_and_close("Authentication failed for alice")
        .await;
    // An empty ident.
    let mut c = broker.connect().await;
    c.auth("", "x").await;
    c.expect_error_and_close("Authentication failed for ").await;
    // Frames sent right after a failed AUTH do not matter.
    let mut c = broker.connect().await;
    c.auth("alice", "wrong").await;
    c.publish("alice", "chan1", b"x").await;
    c.expect_error_and_close("Authentication failed for alice")
        .await;
    assert!(
        broker
            .topics
            .read(&topic("/hpfeeds/chan1"), 1, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn successful_auth_gets_no_reply() {
    let broker = Broker::start(HpfeedsConfig::default()).await;
    let mut c = broker.login("alice").await;
    c.expect_nothing().await;
}

#[tokio::test]
async fn env_identities_when_enabled() {
    let env = |name: &str| match name {
        "HPFEEDS_DAVE_SECRET" => Some("dave-pw".to_owned()),
        "HPFEEDS_DAVE_PUBCHANS" | "HPFEEDS_DAVE_SUBCHANS" => Some("news,sync-dave".to_owned()),
        _ => None,
    };
    let broker = Broker::start_with(HpfeedsConfig::default(), HpfeedsOptions::with_env(env)).await;
    let mut c = broker.connect().await;
    c.auth("dave", "dave-pw").await;
    c.subscribe_synced("dave", &["news"]).await;
    c.publish("dave", "news", b"hi").await;
    assert_eq!(
        c.expect_publish().await,
        ("dave".into(), "news".into(), Bytes::from("hi"))
    );

    // Without the env backend, the same ident is unknown.
    let plain = Broker::start(HpfeedsConfig::default()).await;
    let mut c = plain.connect().await;
    c.auth("dave", "dave-pw").await;
    c.expect_error_and_close("Authentication failed for dave")
        .await;
}

#[tokio::test]
async fn silent_clients_are_dropped_after_the_auth_timeout() {
    let broker = Broker::start(HpfeedsConfig {
        auth_timeout: Duration::from_millis(200),
        ..HpfeedsConfig::default()
    })
    .await;
    let mut c = broker.connect().await;
    c.expect_close_without_error().await;
    // An authenticated client is not affected.
    let mut c = broker.login("alice").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.subscribe_synced("alice", &[]).await;
}

// ---- permissions -------------------------------------------------------------------------

#[tokio::test]
async fn publish_with_another_ident_is_refused() {
    let broker = Broker::start(HpfeedsConfig::default()).await;
    let mut c = broker.login("alice").await;
    c.publish("mallory", "chan1", b"x").await;
    c.expect_error_and_close("Invalid authkey in message, ident=mallory")
        .await;
}

#[tokio::test]
async fn publish_outside_pubchans_is_refused() {
    let broker = Broker::start(HpfeedsConfig::default()).await;
    let mut c = broker.login("bob").await;
    c.publish("bob", "chan1", b"x").await;
    c.expect_error_and_close("Authkey not allowed to pub here. ident=bob, chan=chan1")
        .await;
    assert!(
        broker
            .topics
            .read(&topic("/hpfeeds/chan1"), 1, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn subscribe_outside_subchans_is_refused() {
    let broker = Broker::start(HpfeedsConfig::default()).await;
    let mut c = broker.login("carol").await;
    // The ident inside SUBSCRIBE is not checked; the error names the authenticated one.
    c.send(&Frame::subscribe("someone", "chan1")).await;
    c.expect_error_and_close("Authkey not allowed to sub here. ident=carol, chan=chan1")
        .await;
}

#[tokio::test]
async fn channels_that_are_not_path_segments_are_not_allowed() {
    let broker = Broker::start(HpfeedsConfig::default()).await;
    for chan in ["", ".", ".."] {
        let mut c = broker.login("alice").await;
        c.publish("alice", chan, b"x").await;
        c.expect_error_and_close(&format!(
            "Authkey not allowed to pub here. ident=alice, chan={chan}"
        ))
        .await;
        let mut c = broker.login("alice").await;
        c.send(&Frame::subscribe("alice", chan)).await;
        c.expect_error_and_close(&format!(
            "Authkey not allowed to sub here. ident=alice, chan={chan}"
        ))
        .await;
    }
    // Unsubscribing from anything is fine.
    let mut c = broker.login("alice").await;
    c.send(&Frame::unsubscribe("alice", "..")).await;
    c.send(&Frame::unsubscribe("x", "never-subscribed")).await;
    c.subscribe_synced("alice", &[]).await;
}

#[tokio::test]
async fn a_channel_with_a_slash_is_one_segment() {
    let broker = Broker::start(HpfeedsConfig::default()).await;
    let mut carol = broker.login("carol").await;
    carol.send(&Frame::subscribe("carol", "weird/chan")).await;
    carol.publish("carol", "weird/chan", b"slash").await;
    assert_eq!(
        carol.expect_publish().await,
        ("carol".into(), "weird/chan".into(), Bytes::from("slash"))
    );
    let path = Path::from_segments(["hpfeeds", "weird/chan"], &PathLimits::default()).unwrap();
    let events = broker.topics.read(&path, 1, 10).await.unwrap();
    assert_eq!(events.len(), 1);
}

// ---- protocol errors ---------------------------------------------------------------------

#[tokio::test]
async fn protocol_errors_close_without_a_message() {
    let broker = Broker::start(HpfeedsConfig::default()).await;
    // An unknown opcode, before and after authentication.
    let mut c = broker.connect().await;
    c.raw(&[0, 0, 0, 6, 9, 0]).await;
    c.expect_close_without_error().await;
    let mut c = broker.login("alice").await;
    c.raw(&[0, 0, 0, 6, 6, 0]).await;
    c.expect_close_without_error().await;
    // An oversize frame: refused on its header alone.
    let mut c = broker.login("alice").await;
    let len = u32::try_from(MAX_BUF + 6).unwrap();
    let mut header = len.to_be_bytes().to_vec();
    header.push(3);
    c.raw(&header).await;
    c.expect_close_without_error().await;
    // An oversize AUTH.
    let mut c = broker.connect().await;
    c.raw(&[0, 0, 1, 26, 2]).await; // 282 > 281
    c.expect_close_without_error().await;
    // A length below the header.
    let mut c = broker.connect().await;
    c.raw(&[0, 0, 0, 2, 3]).await;
    c.expect_close_without_error().await;
    // A truncated field.
    let mut c = broker.login("alice").await;
    c.raw(&[0, 0, 0, 8, 3, 9, b'a', b'b']).await;
    c.expect_close_without_error().await;
    // Invalid UTF-8 in a channel.
    let mut c = broker.login("alice").await;
    c.raw(&[0, 0, 0, 13, 3, 5, b'a', b'l', b'i', b'c', b'e', 1, 0xff])
        .await;
    c.expect_close_without_error().await;
    // Frames only a broker sends, and a second AUTH.
    for frame in [
        Frame::info("x", [0; 4]),
        Frame::error("x"),
        Frame::auth("alice", vec![0u8; 20]),
    ] {
        let mut c = broker.login("alice").await;
        c.send(&frame).await;
        c.expect_close_without_error().await;
    }
    // The broker still works.
    let mut c = broker.login("alice").await;
    c.subscribe_synced("alice", &[]).await;
}

// ---- publish and subscribe ---------------------------------------------------------------

#[tokio::test]
async fn publish_subscribe_with_self_delivery_and_two_subscribers() {
    let broker = Broker::start(HpfeedsConfig::default()).await;
    let mut alice = broker.login("alice").await;
    let mut bob = broker.login("bob").await;
    alice.subscribe_synced("alice", &["chan1"]).await;
    bob.subscribe_synced("bob", &["chan1"]).await;

    alice.publish("alice", "chan1", b"data").await;
    let want = ("alice".to_owned(), "chan1".to_owned(), Bytes::from("data"));
    assert_eq!(
        alice.expect_publish().await,
        want,
        "the publisher gets its own"
    );
    assert_eq!(bob.expect_publish().await, want);

    // A publisher not subscribed gets nothing back; order is kept.
    let mut carol = broker.login("carol").await;
    for i in 0..50u32 {
        carol.publish("carol", "chan1", &i.to_be_bytes()).await;
    }
    for who in [&mut alice, &mut bob] {
        for i in 0..50u32 {
            let (ident, chan, payload) = who.expect_publish().await;
            assert_eq!((ident.as_str(), chan.as_str()), ("carol", "chan1"));
            assert_eq!(&payload[..], &i.to_be_bytes());
        }
    }
    carol.expect_nothing().await;
    // Empty and binary payloads pass untouched.
    alice.publish("alice", "chan1", b"").await;
    alice.publish("alice", "chan1", &[0, 255, 1, 254]).await;
    for who in [&mut alice, &mut bob] {
        assert_eq!(who.expect_publish().await.2, Bytes::new());
        assert_eq!(&who.expect_publish().await.2[..], &[0, 255, 1, 254]);
    }
    // Only subscribed channels are delivered.
    alice.publish("alice", "both", b"other").await;
    alice.expect_nothing().await;
    bob.expect_nothing().await;
}

#[tokio::test]
async fn nothing_published_before_a_subscription_is_replayed() {
    let broker = Broker::start(HpfeedsConfig::default()).await;
    let mut carol = broker.login("carol").await;
    carol.publish("carol", "chan1", b"old").await;
    // Wait until it is stored.
    for _ in 0..100 {
        if !broker
            .topics
            .read(&topic("/hpfeeds/chan1"), 1, 10)
            .await
            .unwrap()
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut bob = broker.login("bob").await;
    bob.subscribe_synced("bob", &["chan1"]).await;
    bob.expect_nothing().await;
    carol.publish("carol", "chan1", b"new").await;
    assert_eq!(bob.expect_publish().await.2, Bytes::from("new"));
}

#[tokio::test]
async fn unsubscribe_stops_delivery_without_a_reply() {
    let broker = Broker::start(HpfeedsConfig::default()).await;
    let mut alice = broker.login("alice").await;
    let mut bob = broker.login("bob").await;
    bob.subscribe_synced("bob", &["chan1"]).await;
    alice.publish("alice", "chan1", b"one").await;
    assert_eq!(bob.expect_publish().await.2, Bytes::from("one"));

    bob.send(&Frame::unsubscribe("bob", "chan1")).await;
    bob.subscribe_synced("bob", &[]).await;
    alice.publish("alice", "chan1", b"two").await;
    bob.expect_nothing().await;

    // Subscribing again works (and twice is the same as once).
    bob.subscribe_synced("bob", &["chan1", "chan1"]).await;
    alice.publish("alice", "chan1", b"three").await;
    assert_eq!(bob.expect_publish().await.2, Bytes::from("three"));
    bob.expect_nothing().await;
}

// ---- the engine side ---------------------------------------------------------------------

#[tokio::test]
async fn publishes_are_events_with_the_ident_as_origin() {
    let broker = Broker::start(HpfeedsConfig::default()).await;
    let mut alice = broker.login("alice").await;
    alice.subscribe_synced("alice", &["chan1"]).await;
    alice.publish("alice", "chan1", b"\x00raw bytes\xff").await;
    alice.expect_publish().await;
    let events = broker
        .topics
        .read(&topic("/hpfeeds/chan1"), 1, 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(&*e.origin, "alice");
    assert_eq!(&*e.content_type, CONTENT_TYPE);
    assert_eq!(&e.data[..], b"\x00raw bytes\xff");
}

#[tokio::test]
async fn events_from_other_protocols_reach_subscribers() {
    let broker = Broker::start(HpfeedsConfig {
        name: "herald-hp".into(),
        ..HpfeedsConfig::default()
    })
    .await;
    let mut bob = broker.login("bob").await;
    bob.subscribe_synced("bob", &["chan1"]).await;
    let t = topic("/hpfeeds/chan1");
    // Without an origin: the broker name stands in.
    broker
        .topics
        .append(t.clone(), vec![NewEvent::json(&b"{\"a\":1}"[..])], None)
        .await
        .unwrap();
    assert_eq!(
        bob.expect_publish().await,
        ("herald-hp".into(), "chan1".into(), Bytes::from("{\"a\":1}"))
    );
    // With one: it is the publisher ident.
    let event = NewEvent::json(&b"2"[..]).with_origin(Arc::from("someone"));
    broker
        .topics
        .append(t.clone(), vec![event], None)
        .await
        .unwrap();
    assert_eq!(bob.expect_publish().await.0, "someone");
    // Too large for one OP_PUBLISH: skipped, and what follows still arrives.
    let big = NewEvent::json(vec![b'1'; MAX_BUF]);
    broker
        .topics
        .append(t.clone(), vec![big], None)
        .await
        .unwrap();
    broker
        .topics
        .append(t.clone(), vec![NewEvent::json(&b"3"[..])], None)
        .await
        .unwrap();
    assert_eq!(bob.expect_publish().await.2, Bytes::from("3"));
}

#[tokio::test]
async fn the_topic_prefix_is_configurable() {
    let broker = Broker::start(HpfeedsConfig {
        prefix: "feeds".into(),
        ..HpfeedsConfig::default()
    })
    .await;
    let mut alice = broker.login("alice").await;
    alice.subscribe_synced("alice", &["chan1"]).await;
    alice.publish("alice", "chan1", b"x").await;
    alice.expect_publish().await;
    assert_eq!(
        broker
            .topics
            .read(&topic("/feeds/chan1"), 1, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        broker
            .topics
            .read(&topic("/hpfeeds/chan1"), 1, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn pipelined_publishes_keep_their_order() {
    let broker = Broker::start(HpfeedsConfig {
        max_in_flight: 3,
        ..HpfeedsConfig::default()
    })
    .await;
    let mut carol = broker.login("carol").await;
    // Everything in one write.
    let mut all = BytesMut::new();
    for i in 0..2000u32 {
        Frame::publish("carol", "chan1", Bytes::copy_from_slice(&i.to_be_bytes()))
            .encode(&mut all)
            .unwrap();
    }
    carol.raw(&all).await;
    let t = topic("/hpfeeds/chan1");
    let deadline = tokio::time::Instant::now() + IO;
    loop {
        let n = broker.topics.read(&t, 1, 5000).await.unwrap().len();
        if n == 2000 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {n} stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = broker.topics.read(&t, 1, 5000).await.unwrap();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(&e.data[..], &u32::try_from(i).unwrap().to_be_bytes());
    }
}

/// Retention rules that make `/hpfeeds/bulk` memory-only.
fn bulk_is_memory_only() -> herald_core::topic::RetentionRules {
    herald_core::topic::RetentionRules::new(vec![(
        herald_core::PathPattern::parse("/hpfeeds/bulk", &herald_core::PathLimits::default())
            .unwrap(),
        herald_core::topic::Retention {
            memory_only: true,
            ..Default::default()
        },
    )])
}

/// Waits until `t` holds `n` events and returns their payloads as numbers.
async fn stored_numbers(broker: &Broker, t: &Path, n: usize) -> Vec<u32> {
    stored_events(broker, t, n)
        .await
        .iter()
        .map(|e| u32::from_be_bytes(e.data[..].try_into().unwrap()))
        .collect()
}

/// Waits until `t` holds at least `n` events and returns them.
async fn stored_events(broker: &Broker, t: &Path, n: usize) -> Vec<herald_engine::Event> {
    let deadline = tokio::time::Instant::now() + IO;
    loop {
        let events = broker.topics.read(t, 1, 5000).await.unwrap();
        if events.len() >= n {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{t}: only {} stored",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes read together go to the engine in runs per channel: alternating runs on a
/// durable channel and a memory-only one (appended one at a time), with a subscribe between
/// them, keep each channel's order, and nothing is lost.
#[tokio::test]
async fn runs_of_publishes_to_several_channels_keep_each_order() {
    let rules = bulk_is_memory_only();
    let broker = Broker::start_full(
        HpfeedsConfig {
            max_in_flight: 7,
            ..HpfeedsConfig::default()
        },
        HpfeedsOptions::default(),
        TopicsOptions {
            rules,
            ..TopicsOptions::default()
        },
    )
    .await;
    let mut carol = broker.login("carol").await;
    let mut all = BytesMut::new();
    let (mut on_chan1, mut on_bulk) = (0u32, 0u32);
    for round in 0..40u32 {
        let (chan, counter) = if round % 2 == 0 {
            ("chan1", &mut on_chan1)
        } else {
            ("bulk", &mut on_bulk)
        };
        for _ in 0..(round % 5 + 1) {
            Frame::publish(
                "carol",
                chan,
                Bytes::copy_from_slice(&counter.to_be_bytes()),
            )
            .encode(&mut all)
            .unwrap();
            *counter += 1;
        }
        if round == 20 {
            Frame::subscribe("carol", "weird/chan")
                .encode(&mut all)
                .unwrap();
        }
    }
    carol.raw(&all).await;
    let chan1 = stored_numbers(&broker, &topic("/hpfeeds/chan1"), on_chan1 as usize).await;
    let bulk = stored_numbers(&broker, &topic("/hpfeeds/bulk"), on_bulk as usize).await;
    assert_eq!(chan1, (0..on_chan1).collect::<Vec<_>>());
    assert_eq!(bulk, (0..on_bulk).collect::<Vec<_>>());
}

/// A publish's payload is decoded as a slice of the connection's read buffer, and an event
/// keeping that slice in its topic's window would keep the whole buffer alive. The engine
/// gets copies: a short run of publishes to one channel in one allocation (all but its
/// first), a publish to a memory-only channel (appended at once) in one of its own. A run
/// that fills a good part of the buffer keeps its slices.
#[tokio::test]
async fn events_do_not_keep_slices_of_the_read_buffer() {
    const PAYLOAD: usize = 100;
    let broker = Broker::start_full(
        HpfeedsConfig::default(),
        HpfeedsOptions::default(),
        TopicsOptions {
            rules: bulk_is_memory_only(),
            ..TopicsOptions::default()
        },
    )
    .await;
    let mut carol = broker.login("carol").await;
    let payload = |i: u8| Bytes::from(vec![i; PAYLOAD]);
    let bulk = topic("/hpfeeds/bulk");
    // The memory-only channel is appended to at once once it is the one appended to last.
    carol.publish("carol", "bulk", &payload(200)).await;
    stored_events(&broker, &bulk, 1).await;
    // One write of 20 publishes to the memory-only channel, a run of 10 to a durable one,
    // one to another durable channel, another run of 10 to the first (about 4 KiB, one read
    // into a buffer of 16 KiB); then a write of a run of 60 (7 KiB).
    let writes = |runs: &[(&str, u8, u8)]| {
        let mut all = BytesMut::new();
        for &(chan, from, n) in runs {
            for i in from..from + n {
                Frame::publish("carol", chan, payload(i))
                    .encode(&mut all)
                    .unwrap();
            }
        }
        all
    };
    let first = writes(&[
        ("bulk", 0, 20),
        ("chan1", 0, 10),
        ("weird/chan", 0, 1),
        ("chan1", 20, 10),
    ]);
    // How far apart two payloads to `chan` are in the read buffer: a publish frame.
    let in_buffer = |chan: &str| {
        let mut one = BytesMut::new();
        Frame::publish("carol", chan, payload(0))
            .encode(&mut one)
            .unwrap();
        one.len()
    };
    carol.raw(&first).await;

    let ptr = |e: &herald_engine::Event| e.data.as_ptr() as usize;
    let chan1 = topic("/hpfeeds/chan1");
    let events = stored_events(&broker, &chan1, 20).await;
    assert_eq!(events.len(), 20);
    for (i, e) in events.iter().enumerate() {
        let want = if i < 10 { i } else { i + 10 };
        assert_eq!(e.data, payload(u8::try_from(want).unwrap()), "event {i}");
    }
    for run in [&events[..10], &events[10..]] {
        // The run's first was copied alone (a slice would share the read buffer with the
        // others read with it); the others follow each other in one copy.
        assert!(
            run[0].data.is_unique(),
            "a run's first payload has a copy of its own"
        );
        for pair in run[1..].windows(2) {
            assert_eq!(
                ptr(&pair[1]).wrapping_sub(ptr(&pair[0])),
                PAYLOAD,
                "a run's payloads are copied together"
            );
        }
    }
    let events = stored_events(&broker, &bulk, 21).await.split_off(1);
    assert_eq!(events.len(), 20);
    for pair in events.windows(2) {
        let gap = ptr(&pair[1]).wrapping_sub(ptr(&pair[0]));
        assert_ne!(
            gap,
            in_buffer("bulk"),
            "a memory-only channel's event slices the read buffer"
        );
    }
    assert!(
        events.iter().all(|e| e.data.is_unique()),
        "each has a copy of its own"
    );

    carol.raw(&writes(&[("chan1", 100, 60)])).await;
    let events = stored_events(&broker, &chan1, 80).await.split_off(20);
    assert_eq!(events.len(), 60);
    assert!(events[0].data.is_unique());
    for pair in events[1..].windows(2) {
        assert_eq!(
            ptr(&pair[1]).wrapping_sub(ptr(&pair[0])),
            in_buffer("chan1"),
            "a long run keeps its slices of the read buffer"
        );
    }
}

/// Publishes held when a later frame in the same read is refused are still appended, as
/// when each was appended on its own.
#[tokio::test]
async fn publishes_read_before_a_refused_one_are_kept() {
    let broker = Broker::start(HpfeedsConfig::default()).await;
    let mut alice = broker.login("alice").await;
    let mut all = BytesMut::new();
    for i in 0..3u32 {
        Frame::publish("alice", "chan1", Bytes::copy_from_slice(&i.to_be_bytes()))
            .encode(&mut all)
            .unwrap();
    }
    Frame::publish("mallory", "chan1", Bytes::from_static(b"x"))
        .encode(&mut all)
        .unwrap();
    alice.raw(&all).await;
    alice
        .expect_error_and_close("Invalid authkey in message, ident=mallory")
        .await;
    assert_eq!(
        stored_numbers(&broker, &topic("/hpfeeds/chan1"), 3).await,
        [0, 1, 2]
    );
}

// ---- back-pressure and shutdown ----------------------------------------------------------

#[tokio::test]
async fn a_subscriber_that_never_reads_is_cut_off_without_slowing_others() {
    let deadline = Duration::from_millis(500);
    let broker = Broker::start(HpfeedsConfig {
        backpressure_deadline: deadline,
        send_buffer_bytes: 64 * 1024,
        ..HpfeedsConfig::default()
    })
    .await;
    // The stuck subscriber: a small receive buffer, and it stops reading once subscribed.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(broker.addr).await.unwrap();
    let mut slow = Client::from_stream(stream).await;
    slow.auth("slow", &secret("slow")).await;
    slow.subscribe_synced("slow", &["bulk"]).await;
    // A subscriber that keeps up.
    let mut bob = broker.login("bob").await;
    bob.subscribe_synced("bob", &["bulk"]).await;

    const N: usize = 320;
    const SIZE: usize = 32 * 1024;
    let fast = tokio::spawn(async move {
        for i in 0..N {
            let (_, _, payload) = bob.expect_publish().await;
            assert_eq!(payload.len(), SIZE);
            assert_eq!(payload[0], u8::try_from(i % 256).unwrap());
        }
        bob
    });
    let started = tokio::time::Instant::now();
    let mut carol = broker.login("carol").await;
    for i in 0..N {
        carol
            .publish("carol", "bulk", &vec![u8::try_from(i % 256).unwrap(); SIZE])
            .await;
    }
    let mut bob = tokio::time::timeout(IO, fast)
        .await
        .expect("the fast subscriber keeps up")
        .unwrap();
    assert!(started.elapsed() < IO);

    // Give the deadline time to pass, then read what the stuck one was sent.
    tokio::time::sleep(deadline * 3).await;
    let mut publishes = 0;
    let last = loop {
        match slow.recv().await {
            Some(Frame::Publish { payload, .. }) => {
                assert_eq!(payload.len(), SIZE);
                publishes += 1;
            }
            other => break other,
        }
    };
    assert_eq!(last, Some(Frame::error(BACKPRESSURE_ERROR)));
    assert_eq!(slow.recv().await, None, "closed after the error");
    assert!(
        publishes < N,
        "{publishes} publishes reached the stuck subscriber"
    );
    // The others go on.
    carol.publish("carol", "bulk", &[7]).await;
    assert_eq!(&bob.expect_publish().await.2[..], &[7]);
}

#[tokio::test]
async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
    let broker = Broker::start(HpfeedsConfig {
        backpressure_deadline: Duration::from_millis(300),
        send_buffer_bytes: 16 * 1024,
        ..HpfeedsConfig::default()
    })
    .await;
    let mut bob = broker.login("bob").await;
    bob.subscribe_synced("bob", &["bulk"]).await;
    let mut carol = broker.login("carol").await;
    const N: usize = 200;
    for i in 0..N {
        carol
            .publish(
                "carol",
                "bulk",
                &vec![u8::try_from(i % 256).unwrap(); 8 * 1024],
            )
            .await;
    }
    for i in 0..N {
        if i % 40 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (_, _, payload) = bob.expect_publish().await;
        assert_eq!(payload[0], u8::try_from(i % 256).unwrap());
    }
}

#[tokio::test]
async fn shutdown_closes_connections_and_returns() {
    let broker = Broker::start(HpfeedsConfig::default()).await;
    let mut alice = broker.login("alice").await;
    alice.subscribe_synced("alice", &["chan1"]).await;
    let mut fresh = broker.connect().await;
    broker.shutdown.cancel();
    tokio::time::timeout(IO, broker.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alice.recv().await, None);
    assert_eq!(fresh.recv().await, None);
    assert!(TcpStream::connect(broker.addr).await.is_err());
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_a_memory_only_channel_is_told_and_closed() {
    // `/hpfeeds/bulk` keeps no history: only an in-memory window of 8 events.
    let rules = bulk_is_memory_only();
    let broker = Broker::start_full(
        HpfeedsConfig {
            send_buffer_bytes: 16 * 1024,
            ..HpfeedsConfig::default()
        },
        HpfeedsOptions::default(),
        TopicsOptions {
            rules,
            memory_window_events: 8,
            ..TopicsOptions::default()
        },
    )
    .await;
    // A subscriber that stops reading once subscribed, with a small receive buffer, so the
    // broker stops pulling events for it while the publisher goes on.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(broker.addr).await.unwrap();
    let mut slow = Client::from_stream(stream).await;
    slow.auth("slow", &secret("slow")).await;
    slow.subscribe_synced("slow", &["bulk"]).await;

    let mut carol = broker.login("carol").await;
    for i in 0..400u32 {
        carol
            .publish(
                "carol",
                "bulk",
                &[vec![0; 4096], i.to_be_bytes().to_vec()].concat(),
            )
            .await;
    }
    // What the stuck subscriber gets: some publishes, then the error, then the close.
    let last = loop {
        match tokio::time::timeout(IO, slow.recv())
            .await
            .expect("an answer")
        {
            Some(Frame::Publish { .. }) => continue,
            other => break other,
        }
    };
    match last {
        Some(Frame::Error(text)) => assert!(
            text.starts_with("Subscriber fell behind: ")
                && text.ends_with("messages on channel bulk are no longer retained"),
            "{text}"
        ),
        other => panic!("expected the fell-behind error, got {other:?}"),
    }
    assert_eq!(slow.recv().await, None, "closed after the error");
}

// ---- metrics -----------------------------------------------------------------------------

#[test]
fn metrics_have_the_python_names_and_labels() {
    common::with_metrics(|m| async move {
        let broker = Broker::start(HpfeedsConfig::default()).await;
        let mut alice = broker.login("alice").await;
        alice.subscribe_synced("alice", &["chan1"]).await;
        alice.publish("alice", "chan1", &[7; 3000]).await;
        assert_eq!(alice.expect_publish().await.2.len(), 3000);

        // Refusals, by category; an ident nobody authenticated as is never a label.
        let mut c = broker.connect().await;
        c.send(&Frame::subscribe("alice", "chan1")).await;
        c.expect_error_and_close(FIRST_MESSAGE_ERROR).await;
        let mut c = broker.connect().await;
        c.auth("nobody", "x").await;
        c.expect_error_and_close("Authentication failed for nobody")
            .await;
        let mut c = broker.connect().await;
        c.auth("alice", "wrong").await;
        c.expect_error_and_close("Authentication failed for alice")
            .await;
        let mut c = broker.login("bob").await;
        c.publish("bob", "chan1", b"x").await;
        c.expect_error_and_close("Authkey not allowed to pub here. ident=bob, chan=chan1")
            .await;

        let error = |ident: &str, category: &str| {
            format!("hpfeeds_broker_connection_error{{ident=\"{ident}\",category=\"{category}\"}}")
        };
        for (ident, category) in [
            ("", "invalid-first-message"),
            ("", "invalid-ident"),
            ("alice", "invalid-secret"),
            ("bob", "no-pub-permission"),
        ] {
            let key = error(ident, category);
            common::eventually(&key, || m.count(&key) == 1).await;
        }
        assert_eq!(m.count(&error("nobody", "invalid-ident")), 0);
        assert!(m.count("hpfeeds_broker_connection_made") >= 5);
        assert_eq!(
            m.count(r#"hpfeeds_broker_connection_ready{ident="alice"}"#),
            1
        );
        assert_eq!(
            m.count(r#"hpfeeds_broker_receive_publish_count{ident="alice",chan="chan1"}"#),
            1
        );
        assert_eq!(
            m.gauge(r#"hpfeeds_broker_subscriptions{ident="alice",chan="chan1"}"#),
            Some(1.0)
        );
        assert_eq!(
            m.gauge(
                r#"hpfeeds_client_authenticated_connections{ident="alice",owner="alice-owner"}"#
            ),
            Some(1.0)
        );
        // The buffer metrics of an authenticated connection, by ident: bytes read, payload bytes
        // queued for it, bytes written, and the two buffer gauges.
        let fill = r#"hpfeeds_broker_connection_send_buffer_fill{ident="alice"}"#;
        // Exactly the payloads delivered to alice: hers and the marker of subscribe_synced.
        assert_eq!(
            m.count(fill),
            3000 + "marker-1".len() as u64,
            "{:?}",
            m.keys()
        );
        let drain = r#"hpfeeds_broker_connection_send_buffer_drain{ident="alice"}"#;
        assert!(m.count(drain) >= 3000 + 5 + 1 + 5 + 1 + 5, "{:?}", m.keys());
        let read = r#"hpfeeds_broker_connection_receive_buffer_fill{ident="alice"}"#;
        assert!(m.count(read) >= 3000, "{:?}", m.keys());
        let send_size = r#"hpfeeds_broker_connection_send_buffer_size{ident="alice"}"#;
        let receive_size = r#"hpfeeds_broker_connection_receive_buffer_size{ident="alice"}"#;
        assert_eq!(m.gauge(send_size), Some(0.0), "{:?}", m.keys());
        assert_eq!(m.gauge(receive_size), Some(0.0), "{:?}", m.keys());
        // Half a frame waits in the receive buffer.
        alice.raw(&[0, 0, 0, 100, 3, 5]).await;
        common::eventually(receive_size, || m.gauge(receive_size) == Some(6.0)).await;

        // Closing gives everything back.
        drop(alice);
        let lost = r#"hpfeeds_broker_connection_lost{ident="alice"}"#;
        common::eventually(lost, || m.count(lost) == 1).await;
        assert_eq!(m.gauge(receive_size), Some(0.0));
        assert_eq!(m.gauge(send_size), Some(0.0));
        assert_eq!(
            m.gauge(r#"hpfeeds_broker_subscriptions{ident="alice",chan="chan1"}"#),
            Some(0.0)
        );
        assert_eq!(
            m.gauge(
                r#"hpfeeds_client_authenticated_connections{ident="alice",owner="alice-owner"}"#
            ),
            Some(0.0)
        );
        broker.shutdown.cancel();
        common::eventually("no connections", || {
            m.gauge("hpfeeds_broker_client_connections") == Some(0.0)
        })
        .await;
    });
}
