//! The broker over TLS: a self-signed certificate made with `rcgen`, clients trusting exactly
//! that certificate, and certificate reloading.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herald_auth::hpfeeds::{Identity, auth_hash};
use herald_engine::{HpfeedsIdentities, HpfeedsOptions, Topics, TopicsOptions};
use herald_store::MemoryStore;
use herald_transport_hpfeeds::frame::{Decoder, Frame};
use herald_transport_hpfeeds::{BrokerError, HpfeedsConfig, TlsFiles, serve};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

const IO: Duration = Duration::from_secs(10);

/// A self-signed certificate for `localhost`: its DER and the PEM of it and of its key.
struct Cert {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn self_signed() -> Cert {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    Cert {
        der: ck.cert.der().clone(),
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
    }
}

/// Writes `cert` over the files (each through a rename, as certificate tools do).
fn install(cert: &Cert, cert_path: &Path, key_path: &Path) {
    for (path, text) in [(cert_path, &cert.cert_pem), (key_path, &cert.key_pem)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    cert_path: PathBuf,
    key_path: PathBuf,
}

fn files_with(cert: &Cert) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    install(cert, &cert_path, &key_path);
    Setup {
        _dir: dir,
        cert_path,
        key_path,
    }
}

async fn start(tls: TlsFiles) -> (SocketAddr, CancellationToken) {
    start_with(HpfeedsConfig {
        tls: Some(tls),
        ..HpfeedsConfig::default()
    })
    .await
}

async fn start_with(config: HpfeedsConfig) -> (SocketAddr, CancellationToken) {
    let store = Arc::new(MemoryStore::default());
    let (topics, _actor) = Topics::open(store.clone(), TopicsOptions::default())
        .await
        .unwrap();
    let identities = HpfeedsIdentities::open(store, HpfeedsOptions::default())
        .await
        .unwrap();
    let chans = vec!["chan1".to_owned()];
    identities
        .put(Identity::new("alice", "alice-secret", "owner", chans.clone(), chans).unwrap())
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        topics,
        identities,
        config,
        shutdown.clone(),
    ));
    (addr, shutdown)
}

fn connector(trusted: &CertificateDer<'static>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

struct Client {
    stream: TlsStream<TcpStream>,
    rbuf: BytesMut,
    decoder: Decoder,
    nonce: [u8; 4],
}

impl Client {
    /// Connects trusting only `trusted`; the handshake error when the broker's certificate is
    /// another.
    async fn connect(
        addr: SocketAddr,
        trusted: &CertificateDer<'static>,
    ) -> std::io::Result<Client> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let stream = tokio::time::timeout(IO, connector(trusted).connect(name, tcp))
            .await
            .expect("handshake in time")?;
        let mut c = Client {
            stream,
            rbuf: BytesMut::new(),
            decoder: Decoder::new(),
            nonce: [0; 4],
        };
        match c.recv().await {
            Some(Frame::Info { name, nonce }) => {
                assert_eq!(name, "hpfeeds");
                c.nonce = nonce;
            }
            other => panic!("expected OP_INFO first, got {other:?}"),
        }
        Ok(c)
    }

    async fn login(addr: SocketAddr, trusted: &CertificateDer<'static>) -> Client {
        let mut c = Client::connect(addr, trusted).await.unwrap();
        let hash = auth_hash(&c.nonce, "alice-secret");
        c.send(&Frame::auth("alice", Bytes::copy_from_slice(&hash)))
            .await;
        c
    }

    async fn send(&mut self, frame: &Frame) {
        self.stream
            .write_all(&frame.to_bytes().unwrap())
            .await
            .unwrap();
        self.stream.flush().await.unwrap();
    }

    async fn recv(&mut self) -> Option<Frame> {
        tokio::time::timeout(IO, async {
            loop {
                if let Some(frame) = self.decoder.decode(&mut self.rbuf).unwrap() {
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
        .expect("a frame or EOF in time")
    }

    /// Publishes on chan1 (subscribed) and waits for the message to come back.
    async fn round_trip(&mut self, payload: &[u8]) {
        self.send(&Frame::publish(
            "alice",
            "chan1",
            Bytes::copy_from_slice(payload),
        ))
        .await;
        match self.recv().await {
            Some(Frame::Publish {
                ident,
                channel,
                payload: got,
            }) => {
                assert_eq!((ident.as_str(), channel.as_str()), ("alice", "chan1"));
                assert_eq!(got, payload);
            }
            other => panic!("expected OP_PUBLISH, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn auth_publish_and_subscribe_over_tls() {
    let cert = self_signed();
    let setup = files_with(&cert);
    let (addr, shutdown) = start(TlsFiles::new(&setup.cert_path, &setup.key_path)).await;

    let mut sub = Client::login(addr, &cert.der).await;
    sub.send(&Frame::subscribe("alice", "chan1")).await;
    sub.round_trip(b"sync").await;
    let mut publisher = Client::login(addr, &cert.der).await;
    for i in 0..100u32 {
        publisher
            .send(&Frame::publish(
                "alice",
                "chan1",
                Bytes::from(i.to_be_bytes().to_vec()),
            ))
            .await;
    }
    for i in 0..100u32 {
        match sub.recv().await {
            Some(Frame::Publish { payload, .. }) => assert_eq!(payload, &i.to_be_bytes()[..]),
            other => panic!("expected OP_PUBLISH, got {other:?}"),
        }
    }
    // A refusal still arrives over TLS before the close.
    publisher.send(&Frame::subscribe("alice", "nope")).await;
    assert_eq!(
        publisher.recv().await,
        Some(Frame::error(
            "Authkey not allowed to sub here. ident=alice, chan=nope"
        ))
    );
    assert_eq!(publisher.recv().await, None);

    // Plain hpfeeds on the TLS listener gets nothing usable.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(
            &Frame::auth("alice", Bytes::from_static(&[0; 20]))
                .to_bytes()
                .unwrap(),
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(IO, plain.read_to_end(&mut buf)).await;
    assert!(
        !buf.starts_with(&[0, 0, 0]),
        "no hpfeeds frame in the clear: {buf:?}"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_changed_certificate_is_used_by_new_connections() {
    let first = self_signed();
    let second = self_signed();
    let setup = files_with(&first);
    let tls = TlsFiles {
        reload_interval: Duration::from_millis(50),
        ..TlsFiles::new(&setup.cert_path, &setup.key_path)
    };
    let (addr, shutdown) = start(tls).await;

    let mut old = Client::login(addr, &first.der).await;
    old.send(&Frame::subscribe("alice", "chan1")).await;
    old.round_trip(b"before").await;
    assert!(Client::connect(addr, &second.der).await.is_err());

    install(&second, &setup.cert_path, &setup.key_path);
    let mut new = wait_for(addr, &second.der).await;
    new.send(&Frame::subscribe("alice", "chan1")).await;
    new.round_trip(b"after").await;
    assert!(
        Client::connect(addr, &first.der).await.is_err(),
        "new connections no longer get the first certificate"
    );
    // The connection made before the change keeps working (and got the new one's message).
    assert!(
        matches!(old.recv().await, Some(Frame::Publish { payload, .. }) if payload == b"after"[..])
    );
    old.round_trip(b"still").await;

    // A bad pair (the second certificate with the first key) is refused: the second stays.
    std::fs::write(&setup.key_path, &first.key_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    Client::connect(addr, &second.der)
        .await
        .expect("the previous certificate is kept when the new pair is bad")
        .round_trip_after_login()
        .await;
    // Garbage too.
    std::fs::write(&setup.cert_path, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(Client::connect(addr, &second.der).await.is_ok());
    // A good pair again is picked up.
    install(&first, &setup.cert_path, &setup.key_path);
    wait_for(addr, &first.der).await;
    shutdown.cancel();
}

impl Client {
    async fn round_trip_after_login(mut self) {
        let hash = auth_hash(&self.nonce, "alice-secret");
        self.send(&Frame::auth("alice", Bytes::copy_from_slice(&hash)))
            .await;
        self.send(&Frame::subscribe("alice", "chan1")).await;
        self.round_trip(b"x").await;
    }
}

/// Connects trusting `trusted` until the broker presents it.
async fn wait_for(addr: SocketAddr, trusted: &CertificateDer<'static>) -> Client {
    for _ in 0..200 {
        if let Ok(mut c) = Client::connect(addr, trusted).await {
            let hash = auth_hash(&c.nonce, "alice-secret");
            c.send(&Frame::auth("alice", Bytes::copy_from_slice(&hash)))
                .await;
            return c;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the broker never presented the new certificate");
}

#[tokio::test]
async fn bad_files_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let store = Arc::new(MemoryStore::default());
    let (topics, _actor) = Topics::open(store.clone(), TopicsOptions::default())
        .await
        .unwrap();
    let identities = HpfeedsIdentities::open(store, HpfeedsOptions::default())
        .await
        .unwrap();
    let config = HpfeedsConfig {
        tls: Some(TlsFiles::new(&cert, &key)),
        ..HpfeedsConfig::default()
    };
    let err = serve(
        listener,
        topics,
        identities,
        config,
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BrokerError::Tls(_)), "{err}");
    assert!(err.to_string().contains("cert.pem"), "{err}");
}

const HANDSHAKE_FAILED: &str = r#"hpfeeds_broker_tls_handshake_error{category="failed"}"#;
const HANDSHAKE_TIMEOUT: &str = r#"hpfeeds_broker_tls_handshake_error{category="timeout"}"#;

/// Reads until the broker closes the connection (EOF or a reset), within `IO`.
async fn expect_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    tokio::time::timeout(IO, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the broker closes the connection");
    buf
}

#[test]
fn failed_tls_handshakes_are_counted() {
    common::with_metrics(|m| async move {
        let cert = self_signed();
        let setup = files_with(&cert);
        let (addr, shutdown) = start(TlsFiles::new(&setup.cert_path, &setup.key_path)).await;
        // Plain TCP garbage: not a ClientHello.
        for garbage in [&b"GET / HTTP/1.0\r\n\r\n"[..], &[0, 0, 0, 31, 2, 5, b'a']] {
            let mut plain = TcpStream::connect(addr).await.unwrap();
            plain.write_all(garbage).await.unwrap();
            let answer = expect_closed(&mut plain).await;
            assert!(
                !answer.starts_with(&[0, 0, 0]),
                "no hpfeeds frame: {answer:?}"
            );
        }
        common::eventually(HANDSHAKE_FAILED, || m.count(HANDSHAKE_FAILED) == 2).await;
        // A client that does not trust the certificate fails too.
        let other = self_signed();
        assert!(Client::connect(addr, &other.der).await.is_err());
        common::eventually(HANDSHAKE_FAILED, || m.count(HANDSHAKE_FAILED) == 3).await;
        // None of these became an hpfeeds connection; a good handshake counts nothing.
        assert_eq!(m.count("hpfeeds_broker_connection_made"), 0);
        let mut c = Client::login(addr, &cert.der).await;
        c.send(&Frame::subscribe("alice", "chan1")).await;
        c.round_trip(b"x").await;
        assert_eq!(m.count("hpfeeds_broker_connection_made"), 1);
        assert_eq!(m.count(HANDSHAKE_FAILED), 3);
        assert_eq!(m.count(HANDSHAKE_TIMEOUT), 0);
        shutdown.cancel();
    });
}

#[test]
fn a_tls_handshake_that_never_completes_times_out() {
    common::with_metrics(|m| async move {
        let cert = self_signed();
        let setup = files_with(&cert);
        let (addr, shutdown) = start_with(HpfeedsConfig {
            tls: Some(TlsFiles::new(&setup.cert_path, &setup.key_path)),
            auth_timeout: Duration::from_millis(300),
            ..HpfeedsConfig::default()
        })
        .await;
        // One client sends nothing; another the first bytes of a TLS record, then stalls.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled.write_all(&[0x16, 0x03, 0x01, 0x00]).await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(expect_closed(&mut silent).await.is_empty());
        assert!(expect_closed(&mut stalled).await.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(250));
        common::eventually(HANDSHAKE_TIMEOUT, || m.count(HANDSHAKE_TIMEOUT) == 2).await;
        assert_eq!(m.count(HANDSHAKE_FAILED), 0);
        assert_eq!(m.count("hpfeeds_broker_connection_made"), 0);
        shutdown.cancel();
    });
}
