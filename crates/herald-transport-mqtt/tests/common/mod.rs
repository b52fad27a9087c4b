//! A small MQTT client over the codec, and a broker on an ephemeral port, for the tests.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herald_auth::users::PasswordCost;
use herald_engine::{Accounts, AccountsOptions, Retained, Topics, TopicsOptions};
use herald_mqtt_codec::{
    Ack, ConnAck, Connect, Decoder, Packet, Properties, Protocol, Publish, QoS, SubOptions,
    Subscribe, encode,
};
use herald_store::{MemoryStore, Store};
use herald_transport_mqtt::{Mqtt, MqttConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long any single wait may take before the test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test watches for something that must not arrive.
pub const QUIET: Duration = Duration::from_millis(300);

pub const ADMIN: (&str, &str) = ("root", "root-pw");
pub const USER: (&str, &str) = ("joe", "joe-pw");

/// A broker on 127.0.0.1:0 with users `root` (admin) and `joe` (no grants).
pub struct Broker {
    pub addr: SocketAddr,
    pub topics: Topics,
    pub accounts: Accounts,
    pub retained: Retained,
    pub store: Arc<dyn Store>,
    shutdown: CancellationToken,
    served: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Broker {
    pub async fn start() -> Self {
        Self::start_with(MqttConfig::default(), TopicsOptions::default()).await
    }

    pub async fn start_with(config: MqttConfig, topics_options: TopicsOptions) -> Self {
        Self::start_on(Arc::new(MemoryStore::default()), config, topics_options).await
    }

    /// A broker on `store`; users are added unless they exist (a restart).
    pub async fn start_on(
        store: Arc<dyn Store>,
        config: MqttConfig,
        topics_options: TopicsOptions,
    ) -> Self {
        let (topics, _actor) = Topics::open(store.clone(), topics_options).await.unwrap();
        let accounts = Accounts::open(
            store.clone(),
            AccountsOptions {
                password_cost: PasswordCost::MINIMUM,
                ..AccountsOptions::default()
            },
        )
        .await
        .unwrap();
        if !accounts.user_exists(ADMIN.0) {
            accounts.add_user(ADMIN.0, ADMIN.1, true).await.unwrap();
            accounts.add_user(USER.0, USER.1, false).await.unwrap();
        }
        let shutdown = CancellationToken::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mqtt = Mqtt::open(
            topics.clone(),
            accounts.clone(),
            store.clone(),
            config,
            shutdown.clone(),
        )
        .await
        .unwrap();
        let retained = mqtt.retained().clone();
        let served = tokio::spawn(async move { mqtt.serve(listener).await });
        Self {
            addr,
            topics,
            accounts,
            retained,
            store,
            shutdown,
            served: Some(served),
        }
    }

    /// Shuts down as Herald does: connections close (saving their sessions), then the
    /// topics engine stops and the store is synced. Returns the store.
    pub async fn stop(mut self) -> Arc<dyn Store> {
        self.shutdown.cancel();
        if let Some(served) = self.served.take() {
            tokio::time::timeout(WAIT, served)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
        self.topics.shutdown().await.unwrap();
        self.store.sync().unwrap();
        self.store.clone()
    }

    /// Connects as the admin with a clean session.
    pub async fn admin(&self, protocol: Protocol, id: &str) -> Client {
        let (c, ack) = Client::connect(self.addr, protocol, |c| {
            c.client_id = id.to_owned();
            login(c, ADMIN);
        })
        .await;
        assert_eq!(ack.code, 0, "{ack:?}");
        c
    }
}

/// Sets a CONNECT's user name and password.
pub fn login(c: &mut Connect, (user, password): (&str, &str)) {
    c.username = Some(user.to_owned());
    c.password = Some(Bytes::copy_from_slice(password.as_bytes()));
}

pub fn sub(qos: QoS) -> SubOptions {
    SubOptions {
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: 0,
    }
}

pub fn publish(topic: &str, payload: &[u8], qos: QoS, packet_id: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.to_owned(),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload),
    }
}

pub fn ack(packet_id: u16) -> Ack {
    Ack {
        packet_id,
        reason: 0,
        properties: Properties::default(),
    }
}

/// A CONNECT with a clean start, keep-alive 0 and no credentials.
fn bare_connect(protocol: Protocol) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 0,
        properties: Properties::default(),
        client_id: String::new(),
        will: None,
        username: None,
        password: None,
    }
}

/// A raw MQTT client: every packet is sent and received explicitly.
pub struct Client {
    pub stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
    pub protocol: Protocol,
}

impl Client {
    /// Connects and returns the CONNACK; `f` adjusts the CONNECT (clean start, keep-alive
    /// 0 and no credentials by default).
    pub async fn connect(
        addr: SocketAddr,
        protocol: Protocol,
        f: impl FnOnce(&mut Connect),
    ) -> (Client, ConnAck) {
        let mut connect = bare_connect(protocol);
        f(&mut connect);
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut decoder = Decoder::new(16 * 1024 * 1024);
        decoder.set_protocol(protocol);
        let mut client = Client {
            stream,
            buf: BytesMut::new(),
            decoder,
            protocol,
        };
        client.send(Packet::Connect(connect)).await;
        match client.recv().await {
            Packet::ConnAck(ack) => (client, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects as the admin and sends `then` in the same write as the CONNECT (a pipelining
    /// client); returns the client before reading anything.
    pub async fn connect_pipelined(
        addr: SocketAddr,
        protocol: Protocol,
        then: &[Packet],
    ) -> Client {
        let mut connect = bare_connect(protocol);
        login(&mut connect, ADMIN);
        let mut out = BytesMut::new();
        encode(&Packet::Connect(connect), protocol, &mut out);
        for p in then {
            encode(p, protocol, &mut out);
        }
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&out).await.unwrap();
        let mut decoder = Decoder::new(16 * 1024 * 1024);
        decoder.set_protocol(protocol);
        Client {
            stream,
            buf: BytesMut::new(),
            decoder,
            protocol,
        }
    }

    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        encode(&packet, self.protocol, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next packet, or `None` when nothing comes within `wait` or the connection ends.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Packet> {
        tokio::time::timeout(wait, async {
            loop {
                if let Some(p) = self.decoder.decode(&mut self.buf).unwrap() {
                    return Some(p);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    pub async fn recv(&mut self) -> Packet {
        match self.try_recv(WAIT).await {
            Some(p) => p,
            None => panic!("no packet within {WAIT:?}"),
        }
    }

    /// The next PUBLISH (answering nothing).
    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Asserts that nothing arrives for a while.
    pub async fn assert_quiet(&mut self) {
        if let Some(p) = self.try_recv(QUIET).await {
            panic!("expected nothing, got {p:?}");
        }
    }

    /// Reads until the server closes the connection (within [`WAIT`]); returns what came.
    pub async fn until_closed(&mut self) -> Vec<Packet> {
        let mut got = Vec::new();
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                while let Ok(Some(p)) = self.decoder.decode(&mut self.buf) {
                    got.push(p);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the server did not close the connection; got {got:?}"
        );
        while let Ok(Some(p)) = self.decoder.decode(&mut self.buf) {
            got.push(p);
        }
        got
    }

    /// Subscribes and returns the SUBACK codes.
    pub async fn subscribe(&mut self, filters: &[(&str, SubOptions)]) -> Vec<u8> {
        self.subscribe_with(filters, Properties::default()).await
    }

    pub async fn subscribe_with(
        &mut self,
        filters: &[(&str, SubOptions)],
        properties: Properties,
    ) -> Vec<u8> {
        self.send(Packet::Subscribe(Subscribe {
            packet_id: 77,
            properties,
            filters: filters.iter().map(|(f, o)| ((*f).to_owned(), *o)).collect(),
        }))
        .await;
        match self.recv().await {
            Packet::SubAck(a) => {
                assert_eq!(a.packet_id, 77);
                a.reasons
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes and completes the QoS flow; returns the reason code of the PUBACK / PUBREC.
    pub async fn publish(&mut self, p: Publish) -> u8 {
        let (qos, id) = (p.qos, p.packet_id);
        self.send(Packet::Publish(p)).await;
        match qos {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => match self.recv().await {
                Packet::PubAck(a) if a.packet_id == id => a.reason,
                other => panic!("expected PUBACK {id}, got {other:?}"),
            },
            QoS::ExactlyOnce => {
                let code = match self.recv().await {
                    Packet::PubRec(a) if a.packet_id == id => a.reason,
                    other => panic!("expected PUBREC {id}, got {other:?}"),
                };
                if code < 0x80 {
                    self.send(Packet::PubRel(ack(id))).await;
                    match self.recv().await {
                        Packet::PubComp(a) if a.packet_id == id => {}
                        other => panic!("expected PUBCOMP {id}, got {other:?}"),
                    }
                }
                code
            }
        }
    }

    pub async fn disconnect(mut self) {
        self.send(Packet::Disconnect(herald_mqtt_codec::Disconnect {
            reason: 0,
            properties: Properties::default(),
        }))
        .await;
        let _ = self.until_closed().await;
    }
}
