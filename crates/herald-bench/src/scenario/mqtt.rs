//! A small MQTT 3.1.1 / 5.0 client for the MQTT scenarios, over `herald_mqtt_codec` and tokio
//! TCP streams, and the pieces the scenarios share: broker flags, payload headers and the
//! publisher loop.
//!
//! The scenarios:
//! - [`mqtt_fanout`](super::mqtt_fanout): publish-to-deliver throughput, latency and loss with
//!   many subscribers on one topic, or on one topic per publisher (`--topics distinct`);
//! - [`mqtt_publish`](super::mqtt_publish): acknowledged QoS 1 publishes per second from many
//!   publishers, and the acknowledgement latency;
//! - [`mqtt_idle`](super::mqtt_idle): broker memory per idle, subscribed connection.
//!
//! The client is only what the scenarios need: CONNECT with an optional user name and
//! password (clean session, keep-alive 60 s), one SUBSCRIBE, PUBLISH at QoS 0 or 1 with the
//! packet identifiers of the unacknowledged ones tracked, PUBACK for QoS 1 deliveries, PINGREQ.
//! It encodes with the codec crate Herald's broker also uses, but the codec is a pure
//! translation of the specification (it has its own conformance tests), while the broker code
//! that is measured (`herald-transport-mqtt`) is not shared.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use herald_mqtt_codec::{
    Bytes, BytesMut, Connect, Decoder, Packet, Properties, Protocol, Publish, QoS, SubOptions,
    Subscribe, encode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::args::{Target, parse_duration};
use crate::report;
use crate::scenario::unix_nanos;

/// Largest packet accepted from the broker (Herald's default maximum packet size).
pub const MAX_PACKET: u32 = 1024 * 1024;
/// Payload header: run id, send time, publisher, counter, kind.
pub const HEADER_BYTES: usize = 8 + 8 + 4 + 8 + 1;
/// Kind byte of a measured message.
pub const KIND_DATA: u8 = 0;
/// Kind byte of a probe message (sent before the measurement, not counted).
pub const KIND_PROBE: u8 = 1;
/// Publishers writing as fast as allowed batch packets up to this many bytes per write.
const WRITE_BATCH: usize = 64 * 1024;
/// Keep-alive announced in CONNECT, seconds. Long-lived connections send PINGREQ at half of it.
pub const KEEP_ALIVE_SECS: u16 = 60;
/// A publisher blocked by its window this long publishes another window anyway (counted as a
/// stall): a broker that drops a subscriber's messages must not freeze the run.
const WINDOW_STALL: Duration = Duration::from_secs(1);

/// How to reach and authenticate to the broker; shared by the MQTT scenarios.
#[derive(Debug, Clone, clap::Args)]
pub struct Broker {
    /// The broker's MQTT listener.
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Target,
    /// User name of every connection. [default: none, anonymous]
    #[arg(long, env = "MQTT_BENCH_USERNAME")]
    pub username: Option<String>,
    /// Password of every connection (needs --username).
    #[arg(long, env = "MQTT_BENCH_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// MQTT protocol version: 3.1.1 or 5.
    #[arg(long, value_parser = parse_protocol, default_value = "3.1.1")]
    pub protocol: Protocol,
    /// Give up on a connection whose TCP connect, CONNACK or SUBACK takes longer.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,
}

/// Parses `3.1.1` (also `4`, `v311`) or `5` (also `5.0`, `v5`).
///
/// # Errors
/// For anything else.
pub fn parse_protocol(s: &str) -> anyhow::Result<Protocol> {
    match s.trim().to_ascii_lowercase().as_str() {
        "3.1.1" | "311" | "v311" | "4" => Ok(Protocol::V311),
        "5" | "5.0" | "v5" => Ok(Protocol::V5),
        other => bail!("unknown MQTT protocol {other:?} (use 3.1.1 or 5)"),
    }
}

/// `3.1.1` or `5`.
pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::V311 => "3.1.1",
        Protocol::V5 => "5",
    }
}

/// Parses a QoS level given as 0 or 1 (the scenarios do not use QoS 2).
///
/// # Errors
/// For anything else.
pub fn parse_qos(s: &str) -> anyhow::Result<QoS> {
    match s.trim() {
        "0" => Ok(QoS::AtMostOnce),
        "1" => Ok(QoS::AtLeastOnce),
        other => bail!("QoS must be 0 or 1, got {other:?}"),
    }
}

/// The read side of a connection: a buffer and the decoder. [`Reader::next_packet`] is
/// cancel-safe (bytes read stay in the buffer), so it can sit in a `select!`.
#[derive(Debug)]
pub struct Reader {
    read: OwnedReadHalf,
    buf: BytesMut,
    decoder: Decoder,
    chunk: usize,
}

/// A PUBLISH read in place by [`Reader::buffered_publish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishSeen {
    /// Its QoS.
    pub qos: QoS,
    /// Its packet identifier (0 for QoS 0).
    pub packet_id: u16,
    /// Its payload's header, when the payload is long enough to hold one.
    pub header: Option<Header>,
}

impl Reader {
    /// The next packet, if it is a whole QoS 0 or 1 PUBLISH, read in place: no topic string
    /// and no shared payload are made, as the codec would (a subscriber's hot path). `None`
    /// when the next packet is anything else, incomplete, or not well formed:
    /// [`Reader::buffered`] then decodes it (and reports what is wrong).
    pub fn buffered_publish(&mut self, protocol: Protocol) -> Option<PublishSeen> {
        take_publish(&mut self.buf, protocol)
    }

    /// The next packet already in the buffer, if a whole one is there.
    ///
    /// # Errors
    /// When the broker sent a malformed packet.
    pub fn buffered(&mut self) -> anyhow::Result<Option<Packet>> {
        self.decoder
            .decode(&mut self.buf)
            .map_err(|e| anyhow::anyhow!("malformed packet from the broker: {e}"))
    }

    /// Reads once from the socket into the buffer; `Ok(0)` when the broker closed it.
    ///
    /// # Errors
    /// On a transport error.
    pub async fn fill(&mut self) -> anyhow::Result<usize> {
        if self.buf.capacity() - self.buf.len() < self.chunk / 2 {
            self.buf.reserve(self.chunk);
        }
        Ok(self.read.read_buf(&mut self.buf).await?)
    }

    /// The next packet, reading as needed.
    ///
    /// # Errors
    /// When the broker closes the connection, on a transport error or a malformed packet.
    pub async fn next_packet(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(p) = self.buffered()? {
                return Ok(p);
            }
            if self.fill().await? == 0 {
                bail!("the broker closed the connection");
            }
        }
    }
}

/// A connected MQTT client (CONNACK received).
#[derive(Debug)]
pub struct Client {
    /// Incoming packets.
    pub reader: Reader,
    /// The socket's write half.
    pub write: OwnedWriteHalf,
    /// The protocol spoken.
    pub protocol: Protocol,
    /// The broker's Receive Maximum (MQTT 5 CONNACK), else 65,535.
    pub receive_maximum: u16,
}

impl Client {
    /// Opens a TCP connection (from `source` when given), sends CONNECT and waits for a
    /// successful CONNACK. `read_chunk` is the read buffer's growth step: small for idle
    /// connections, large for subscribers under load.
    ///
    /// # Errors
    /// When connecting fails, the broker refuses the CONNECT, or it takes longer than
    /// `--connect-timeout`.
    pub async fn connect(
        broker: &Broker,
        client_id: &str,
        source: Option<IpAddr>,
        read_chunk: usize,
    ) -> anyhow::Result<Client> {
        tokio::time::timeout(
            broker.connect_timeout,
            Self::connect_inner(broker, client_id, source, read_chunk),
        )
        .await
        .with_context(|| {
            format!(
                "no CONNACK from {} within {:?}",
                broker.addr.authority(),
                broker.connect_timeout
            )
        })?
    }

    async fn connect_inner(
        broker: &Broker,
        client_id: &str,
        source: Option<IpAddr>,
        read_chunk: usize,
    ) -> anyhow::Result<Client> {
        let stream = crate::net::connect(broker.addr.addr(), source).await?;
        let (read, mut write) = stream.into_split();
        let connect = Packet::Connect(Connect {
            protocol: broker.protocol,
            clean_start: true,
            keep_alive: KEEP_ALIVE_SECS,
            properties: Properties::default(),
            client_id: client_id.to_owned(),
            will: None,
            username: broker.username.clone(),
            password: broker
                .password
                .as_ref()
                .map(|p| Bytes::copy_from_slice(p.as_bytes())),
        });
        let mut out = BytesMut::new();
        encode(&connect, broker.protocol, &mut out);
        write.write_all(&out).await?;
        let mut decoder = Decoder::new(MAX_PACKET);
        decoder.set_protocol(broker.protocol);
        let mut reader = Reader {
            read,
            buf: BytesMut::with_capacity(read_chunk.max(64)),
            decoder,
            chunk: read_chunk.max(64),
        };
        let receive_maximum = match reader.next_packet().await? {
            Packet::ConnAck(ack) if ack.code == 0 => ack.properties.receive_maximum,
            Packet::ConnAck(ack) => bail!(
                "CONNECT refused with code 0x{:02x}{}",
                ack.code,
                ack.properties
                    .reason_string
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
            other => bail!("expected CONNACK, got {}", other.kind()),
        };
        Ok(Client {
            reader,
            write,
            protocol: broker.protocol,
            receive_maximum: receive_maximum.unwrap_or(u16::MAX),
        })
    }

    /// Subscribes to one filter and waits for the SUBACK (within `timeout`).
    ///
    /// # Errors
    /// When the broker refuses the subscription, answers something else, or is late.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: QoS,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let packet = Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(filter.to_owned(), SubOptions::new(qos))],
        });
        let mut out = BytesMut::new();
        encode(&packet, self.protocol, &mut out);
        self.write.write_all(&out).await?;
        let ack = tokio::time::timeout(timeout, async {
            loop {
                match self.reader.next_packet().await? {
                    Packet::SubAck(ack) => return anyhow::Ok(ack),
                    // A retained message or other traffic before the SUBACK: ignored.
                    Packet::Publish(_) | Packet::PingResp => {}
                    other => bail!("expected SUBACK, got {}", other.kind()),
                }
            }
        })
        .await
        .with_context(|| format!("no SUBACK within {timeout:?}"))??;
        match ack.reasons.first() {
            Some(code) if *code < 0x80 => Ok(()),
            Some(code) => bail!("subscription to {filter:?} refused with code 0x{code:02x}"),
            None => bail!("empty SUBACK"),
        }
    }
}

/// Appends a PUBLISH to `out`.
pub fn push_publish(
    out: &mut BytesMut,
    protocol: Protocol,
    topic: &str,
    qos: QoS,
    packet_id: u16,
    payload: Bytes,
) {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.to_owned(),
        packet_id,
        properties: Properties::default(),
        payload,
    });
    encode(&packet, protocol, out);
}

/// Appends a PUBACK for `packet_id` to `out`.
pub fn push_puback(out: &mut BytesMut, protocol: Protocol, packet_id: u16) {
    let packet = Packet::PubAck(herald_mqtt_codec::Ack {
        packet_id,
        reason: 0,
        properties: Properties::default(),
    });
    encode(&packet, protocol, out);
}

/// A PINGREQ.
pub fn pingreq(protocol: Protocol) -> BytesMut {
    let mut out = BytesMut::new();
    encode(&Packet::PingReq, protocol, &mut out);
    out
}

/// A normal DISCONNECT.
pub fn disconnect(protocol: Protocol) -> BytesMut {
    let mut out = BytesMut::new();
    encode(
        &Packet::Disconnect(herald_mqtt_codec::Disconnect {
            reason: 0,
            properties: Properties::default(),
        }),
        protocol,
        &mut out,
    );
    out
}

/// A payload: run id, send time (wall clock, ns), publisher, counter, kind, then `x` padding.
pub fn payload(bytes: usize, run_id: u64, publisher: u32, counter: u64, kind: u8) -> Bytes {
    let mut p = Vec::with_capacity(bytes.max(HEADER_BYTES));
    p.extend_from_slice(&run_id.to_be_bytes());
    p.extend_from_slice(&unix_nanos().to_be_bytes());
    p.extend_from_slice(&publisher.to_be_bytes());
    p.extend_from_slice(&counter.to_be_bytes());
    p.push(kind);
    p.resize(bytes.max(HEADER_BYTES), b'x');
    Bytes::from(p)
}

/// How a payload's header is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The [`HEADER_BYTES`] bytes as they are (the MQTT scenarios).
    Binary,
    /// The same bytes in lowercase hexadecimal ([`Encoding::header_bytes`] ASCII characters),
    /// so that the whole payload is text: Herald's listen API shows text events as JSON
    /// strings, other bytes in base64 (the listen scenarios).
    Hex,
}

impl Encoding {
    /// The size of the header, the least payload size.
    pub fn header_bytes(self) -> usize {
        match self {
            Encoding::Binary => HEADER_BYTES,
            Encoding::Hex => 2 * HEADER_BYTES,
        }
    }

    /// A payload of `bytes` bytes (at least the header): the header, then `x` padding.
    pub fn payload(
        self,
        bytes: usize,
        run_id: u64,
        publisher: u32,
        counter: u64,
        kind: u8,
    ) -> Bytes {
        match self {
            Encoding::Binary => payload(bytes, run_id, publisher, counter, kind),
            Encoding::Hex => {
                const DIGITS: &[u8; 16] = b"0123456789abcdef";
                let binary = payload(HEADER_BYTES, run_id, publisher, counter, kind);
                let mut p = Vec::with_capacity(bytes.max(2 * HEADER_BYTES));
                for b in binary.iter() {
                    p.push(DIGITS[usize::from(b >> 4)]);
                    p.push(DIGITS[usize::from(b & 0x0f)]);
                }
                p.resize(bytes.max(2 * HEADER_BYTES), b'x');
                Bytes::from(p)
            }
        }
    }

    /// Parses the header of a payload; `None` when it is too short or malformed.
    pub fn parse(self, p: &[u8]) -> Option<Header> {
        match self {
            Encoding::Binary => parse_payload(p),
            Encoding::Hex => {
                let hex = p.get(..2 * HEADER_BYTES)?;
                let mut binary = [0u8; HEADER_BYTES];
                for (out, pair) in binary.iter_mut().zip(hex.chunks_exact(2)) {
                    let text = std::str::from_utf8(pair).ok()?;
                    *out = u8::from_str_radix(text, 16).ok()?;
                }
                parse_payload(&binary)
            }
        }
    }
}

/// The header of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The run id (messages of other runs are ignored).
    pub run_id: u64,
    /// Send time, ns since the Unix epoch.
    pub sent: u64,
    /// The publisher's number.
    pub publisher: u32,
    /// The publisher's counter.
    pub counter: u64,
    /// [`KIND_DATA`] or [`KIND_PROBE`].
    pub kind: u8,
}

/// Parses the header of a payload; `None` when it is too short.
pub fn parse_payload(p: &[u8]) -> Option<Header> {
    let u64_at = |i: usize| Some(u64::from_be_bytes(p.get(i..i + 8)?.try_into().ok()?));
    Some(Header {
        run_id: u64_at(0)?,
        sent: u64_at(8)?,
        publisher: u32::from_be_bytes(p.get(16..20)?.try_into().ok()?),
        counter: u64_at(20)?,
        kind: *p.get(28)?,
    })
}

/// [`Reader::buffered_publish`] on a buffer.
fn take_publish(buf: &mut BytesMut, protocol: Protocol) -> Option<PublishSeen> {
    let b = &buf[..];
    let first = *b.first()?;
    let qos = match (first >> 4, (first >> 1) & 3) {
        (3, 0) => QoS::AtMostOnce,
        (3, 1) => QoS::AtLeastOnce,
        _ => return None,
    };
    let (len, used) = varint(b.get(1..)?)?;
    let total = 1 + used + len;
    if total > MAX_PACKET as usize {
        return None;
    }
    let body = b.get(1 + used..total)?;
    let topic_len = usize::from(u16::from_be_bytes(body.get(..2)?.try_into().ok()?));
    let mut at = 2 + topic_len;
    let mut packet_id = 0;
    if qos == QoS::AtLeastOnce {
        packet_id = u16::from_be_bytes(body.get(at..at + 2)?.try_into().ok()?);
        if packet_id == 0 {
            return None;
        }
        at += 2;
    }
    if protocol == Protocol::V5 {
        let (props, used) = varint(body.get(at..)?)?;
        at += used + props;
    }
    let header = parse_payload(body.get(at..)?);
    bytes::Buf::advance(buf, total);
    Some(PublishSeen {
        qos,
        packet_id,
        header,
    })
}

/// An MQTT variable byte integer at the start of `b` and its length in bytes; `None` when
/// incomplete or longer than four bytes.
fn varint(b: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, &byte) in b.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// A short client identifier: `hb<run>-<role><i>` (at most 23 characters, the MQTT 3.1.1
/// guarantee).
pub fn client_id(run_id: u64, role: char, i: usize) -> String {
    format!("hb{}-{role}{i}", run_id % 1_000_000_000)
}

/// How far each subscriber has got with each publisher's messages (highest counter + 1),
/// for the fan-out window.
#[derive(Debug)]
pub struct Progress {
    publishers: usize,
    /// `subscribers × publishers`, row per subscriber.
    seen: Vec<AtomicU64>,
    /// One per publisher, notified when a subscriber moves.
    pub moved: Vec<Notify>,
}

impl Progress {
    /// All zero.
    pub fn new(subscribers: usize, publishers: usize) -> Self {
        Self {
            publishers,
            seen: (0..subscribers * publishers)
                .map(|_| AtomicU64::new(0))
                .collect(),
            moved: (0..publishers).map(|_| Notify::new()).collect(),
        }
    }

    /// Subscriber `sub` has seen counter `next - 1` of `publisher`.
    pub fn advance(&self, sub: usize, publisher: usize, next: u64) {
        if let Some(a) = self.seen.get(sub * self.publishers + publisher) {
            a.fetch_max(next, Ordering::AcqRel);
        }
    }

    /// Subscriber `sub` gets only `publisher`'s messages: it never holds the others back.
    pub fn only(&self, sub: usize, publisher: usize) {
        for p in (0..self.publishers).filter(|p| *p != publisher) {
            self.advance(sub, p, u64::MAX);
        }
    }

    /// Subscriber `sub` is gone: it no longer holds any publisher back.
    pub fn release(&self, sub: usize) {
        for p in 0..self.publishers {
            self.advance(sub, p, u64::MAX);
        }
        for n in &self.moved {
            n.notify_one();
        }
    }

    /// The least progress over the subscribers with `publisher`'s messages.
    pub fn floor(&self, publisher: usize) -> u64 {
        self.seen
            .iter()
            .skip(publisher)
            .step_by(self.publishers.max(1))
            .map(|a| a.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX)
    }
}

/// What a publisher does.
#[derive(Debug, Clone)]
pub struct PublisherPlan {
    /// Topic published to.
    pub topic: String,
    /// Publish number `k` goes to `<topic>/<k>` instead: every publish to a topic not
    /// used before, so the broker creates a topic per publish.
    pub new_topics: bool,
    /// QoS of every publish.
    pub qos: QoS,
    /// Payload size, bytes.
    pub payload_bytes: usize,
    /// How the payload header is written.
    pub encoding: Encoding,
    /// Run id in every payload.
    pub run_id: u64,
    /// This publisher's number.
    pub number: u32,
    /// When to send the first message.
    pub first: Instant,
    /// When to stop publishing.
    pub end: Instant,
    /// Time between messages, or `None` for as fast as allowed.
    pub period: Option<Duration>,
    /// QoS 1: most unacknowledged publishes at once.
    pub inflight: usize,
    /// Fan-out: most messages ahead of the slowest subscriber.
    pub window: Option<(Arc<Progress>, u64)>,
    /// QoS 1: how long to wait for the last acknowledgements after `end`.
    pub drain: Duration,
}

/// What a publisher did.
#[derive(Debug)]
pub struct PublisherResult {
    /// Publishes written to the socket.
    pub published: u64,
    /// QoS 1: positive PUBACKs.
    pub acked: u64,
    /// QoS 1: PUBACKs with a reason code of 0x80 or more (MQTT 5).
    pub refused: u64,
    /// QoS 1: publishes still unacknowledged when the drain ended.
    pub unacked: u64,
    /// Times the window held the publisher back for a whole second.
    pub window_stalls: u64,
    /// When the last publish was written.
    pub last_publish: Option<Instant>,
    /// When the last PUBACK arrived.
    pub last_ack: Option<Instant>,
    /// QoS 1: send-to-PUBACK latency, ns.
    pub ack_latency: Histogram<u64>,
    /// Transport or protocol failures, by text.
    pub errors: report::Errors,
}

/// What the read side of a publisher collects.
struct AckSide {
    acked: u64,
    refused: u64,
    last_ack: Option<Instant>,
    latency: Histogram<u64>,
    errors: report::Errors,
}

/// Publishes per `plan` until `plan.end` (QoS 1: then waits up to `plan.drain` for the
/// outstanding PUBACKs), and hands back the write half, still open (dropping it would close
/// the connection): some brokers drop what a closing connection has not relayed yet, so the
/// caller closes it after its own drain.
pub async fn publisher(client: Client, plan: PublisherPlan) -> (PublisherResult, OwnedWriteHalf) {
    let qos1 = plan.qos == QoS::AtLeastOnce;
    let inflight = plan
        .inflight
        .clamp(1, usize::from(client.receive_maximum.max(1)));
    let permits = Arc::new(Semaphore::new(inflight));
    let pending: Arc<Mutex<HashMap<u16, Instant>>> =
        Arc::new(Mutex::new(HashMap::with_capacity(inflight)));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let protocol = client.protocol;
    let mut reader = client.reader;
    let mut write = client.write;

    // The read side: PUBACKs (QoS 1), and anything unexpected counted as an error.
    let read_task = {
        let permits = permits.clone();
        let pending = pending.clone();
        tokio::spawn(async move {
            let mut side = AckSide {
                acked: 0,
                refused: 0,
                last_ack: None,
                latency: report::latency_histogram().expect("constant histogram bounds"),
                errors: report::Errors::new(),
            };
            loop {
                let packet = tokio::select! {
                    p = reader.next_packet() => p,
                    _ = stop_rx.changed() => break,
                };
                match packet {
                    Ok(Packet::PubAck(ack)) => {
                        let sent = pending
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&ack.packet_id);
                        let Some(sent) = sent else {
                            *side
                                .errors
                                .entry("PUBACK for an unknown packet id".into())
                                .or_default() += 1;
                            continue;
                        };
                        let now = Instant::now();
                        side.latency
                            .saturating_record((now.duration_since(sent).as_nanos() as u64).max(1));
                        if ack.reason >= 0x80 {
                            side.refused += 1;
                            *side
                                .errors
                                .entry(format!("PUBACK reason 0x{:02x}", ack.reason))
                                .or_default() += 1;
                        } else {
                            side.acked += 1;
                        }
                        side.last_ack = Some(now);
                        permits.add_permits(1);
                    }
                    Ok(Packet::PingResp) => {}
                    Ok(Packet::Disconnect(d)) => {
                        *side
                            .errors
                            .entry(format!("DISCONNECT 0x{:02x} to a publisher", d.reason))
                            .or_default() += 1;
                        break;
                    }
                    Ok(other) => {
                        *side
                            .errors
                            .entry(format!("unexpected {} to a publisher", other.kind()))
                            .or_default() += 1;
                    }
                    Err(e) => {
                        *side.errors.entry(format!("publisher: {e:#}")).or_default() += 1;
                        break;
                    }
                }
            }
            // Wake a writer waiting for a permit that will never come.
            permits.close();
            side
        })
    };

    let mut result = PublisherResult {
        published: 0,
        acked: 0,
        refused: 0,
        unacked: 0,
        window_stalls: 0,
        last_publish: None,
        last_ack: None,
        ack_latency: report::latency_histogram().expect("constant histogram bounds"),
        errors: report::Errors::new(),
    };
    let packet_len = plan.payload_bytes + plan.topic.len() + 16;
    let batch = (WRITE_BATCH / packet_len).max(1) as u64;
    let mut out = BytesMut::with_capacity(WRITE_BATCH + packet_len);
    let mut next_id: u16 = 0;
    let mut blocked_since: Option<Instant> = None;
    let mut forced_floor = 0u64;
    tokio::time::sleep_until(plan.first).await;
    let outcome: anyhow::Result<()> = async {
        loop {
            let now = Instant::now();
            if now >= plan.end || read_task.is_finished() {
                return Ok(());
            }
            let mut n = batch;
            if let Some(period) = plan.period {
                let due = (now.duration_since(plan.first).as_nanos() / period.as_nanos().max(1))
                    as u64
                    + 1;
                let ahead = due.saturating_sub(result.published);
                if ahead == 0 {
                    let next = plan.first + period.mul_f64(result.published as f64);
                    crate::pace::sleep_until(next.min(plan.end)).await;
                    continue;
                }
                n = n.min(ahead);
            }
            if let Some((progress, window)) = &plan.window {
                let floor = progress.floor(plan.number as usize).max(forced_floor);
                let allowed = floor
                    .saturating_add(*window)
                    .saturating_sub(result.published);
                if allowed == 0 {
                    let since = *blocked_since.get_or_insert(now);
                    if now.duration_since(since) >= WINDOW_STALL {
                        result.window_stalls += 1;
                        forced_floor = result.published;
                        blocked_since = None;
                        continue;
                    }
                    let wait = progress.moved[plan.number as usize].notified();
                    let _ = tokio::time::timeout(Duration::from_millis(5), wait).await;
                    continue;
                }
                blocked_since = None;
                n = n.min(allowed);
            }
            if qos1 {
                let available = permits.available_permits() as u64;
                if available == 0 {
                    match tokio::time::timeout_at(plan.end, permits.acquire()).await {
                        Err(_) => return Ok(()),
                        Ok(Err(_)) => return Ok(()), // closed: the read side ended
                        Ok(Ok(p)) => p.forget(),
                    }
                    n = 1;
                } else {
                    n = n.min(available);
                    match permits.try_acquire_many(n as u32) {
                        Ok(p) => p.forget(),
                        Err(_) => continue,
                    }
                }
            }
            out.clear();
            {
                let mut pending = qos1.then(|| pending.lock().unwrap_or_else(|e| e.into_inner()));
                let sent = Instant::now();
                for i in 0..n {
                    let id = if let Some(pending) = pending.as_mut() {
                        // Next free identifier (one still unacknowledged is skipped).
                        loop {
                            next_id = next_id.checked_add(1).unwrap_or(1);
                            if !pending.contains_key(&next_id) {
                                break;
                            }
                        }
                        pending.insert(next_id, sent);
                        next_id
                    } else {
                        0
                    };
                    let topic = if plan.new_topics {
                        Cow::Owned(format!("{}/{}", plan.topic, result.published + i))
                    } else {
                        Cow::Borrowed(plan.topic.as_str())
                    };
                    push_publish(
                        &mut out,
                        protocol,
                        &topic,
                        plan.qos,
                        id,
                        plan.encoding.payload(
                            plan.payload_bytes,
                            plan.run_id,
                            plan.number,
                            result.published + i,
                            KIND_DATA,
                        ),
                    );
                }
            }
            write.write_all(&out).await?;
            result.published += n;
            result.last_publish = Some(Instant::now());
        }
    }
    .await;
    if let Err(e) = outcome {
        *result
            .errors
            .entry(format!("publisher transport: {e}"))
            .or_default() += 1;
    }
    if qos1 {
        // Wait for the outstanding acknowledgements.
        let all = u32::try_from(inflight).unwrap_or(u32::MAX);
        if let Ok(Ok(p)) = tokio::time::timeout(plan.drain, permits.acquire_many(all)).await {
            p.forget();
        }
    }
    let _ = stop_tx.send(true);
    let side = match read_task.await {
        Ok(side) => side,
        Err(e) => {
            *result
                .errors
                .entry(format!("publisher read task: {e}"))
                .or_default() += 1;
            return (result, write);
        }
    };
    result.acked = side.acked;
    result.refused = side.refused;
    result.last_ack = side.last_ack;
    result.ack_latency = side.latency;
    for (k, v) in side.errors {
        *result.errors.entry(k).or_default() += v;
    }
    if qos1 {
        result.unacked = pending.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
    }
    (result, write)
}

#[cfg(test)]
mod tests {
    use herald_mqtt_codec::{Packet, Properties, PropertyValues, Publish, encode};

    use super::*;

    /// Publishes read in place give what the codec decodes, consume exactly their bytes, and
    /// leave anything else (another packet, a partial or malformed one) to the codec.
    #[test]
    fn publishes_are_read_in_place_as_the_codec_reads_them() {
        let publish = |qos, packet_id, topic: &str, properties, counter| {
            Packet::Publish(Publish {
                dup: false,
                qos,
                retain: false,
                topic: topic.into(),
                packet_id,
                properties,
                payload: payload(100, 7, 2, counter, KIND_DATA),
            })
        };
        let props = Properties::from(PropertyValues {
            subscription_identifiers: vec![3, 300_000],
            user_properties: vec![("k".into(), "v".repeat(200))],
            ..PropertyValues::default()
        });
        for protocol in [Protocol::V311, Protocol::V5] {
            let packets = [
                publish(QoS::AtMostOnce, 0, "a/b", Properties::default(), 1),
                publish(QoS::AtLeastOnce, 9, &"t".repeat(300), props.clone(), 2),
                Packet::PingResp,
                publish(QoS::AtMostOnce, 0, "", Properties::default(), 3),
            ];
            let mut buf = BytesMut::new();
            for p in &packets {
                encode(p, protocol, &mut buf);
            }
            let whole = buf.len();
            // A partial publish at the end.
            encode(&packets[0], protocol, &mut buf);
            buf.truncate(whole + 5);

            let mut decoder = Decoder::new(MAX_PACKET);
            decoder.set_protocol(protocol);
            let mut seen = Vec::new();
            loop {
                if let Some(p) = take_publish(&mut buf, protocol) {
                    seen.push(format!(
                        "{:?} {} {:?}",
                        p.qos,
                        p.packet_id,
                        p.header.map(|h| h.counter)
                    ));
                    continue;
                }
                match decoder.decode(&mut buf).unwrap() {
                    Some(Packet::PingResp) => seen.push("ping".into()),
                    Some(other) => panic!("left to the codec: {other:?}"),
                    None => break,
                }
            }
            assert_eq!(
                seen,
                [
                    "AtMostOnce 0 Some(1)",
                    "AtLeastOnce 9 Some(2)",
                    "ping",
                    "AtMostOnce 0 Some(3)"
                ],
                "{protocol:?}"
            );
            assert_eq!(buf.len(), 5, "the partial packet is left whole");
        }
        // Malformed: QoS 3, a packet identifier of 0, a topic length beyond the packet.
        for bad in [
            &[0x36u8, 2, 0, 0][..],
            &[0x32, 4, 0, 0, 0, 0],
            &[0x30, 2, 0, 9],
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(take_publish(&mut buf, Protocol::V311).is_none(), "{bad:?}");
            assert_eq!(&buf[..], bad);
        }
    }

    #[test]
    fn payload_round_trip() {
        let p = payload(100, 7, 3, 42, KIND_DATA);
        assert_eq!(p.len(), 100);
        let h = parse_payload(&p).unwrap();
        assert_eq!(
            (h.run_id, h.publisher, h.counter, h.kind),
            (7, 3, 42, KIND_DATA)
        );
        assert!(h.sent > 0);
        assert_eq!(payload(10, 1, 0, 0, KIND_PROBE).len(), HEADER_BYTES);
        assert!(parse_payload(&p[..20]).is_none());
    }

    #[test]
    fn hex_payload_round_trip() {
        let p = Encoding::Hex.payload(100, 7, 3, 42, KIND_PROBE);
        assert_eq!(p.len(), 100);
        assert!(p.is_ascii());
        let h = Encoding::Hex.parse(&p).unwrap();
        assert_eq!(
            (h.run_id, h.publisher, h.counter, h.kind),
            (7, 3, 42, KIND_PROBE)
        );
        assert_eq!(Encoding::Hex.payload(10, 1, 0, 0, KIND_DATA).len(), 58);
        assert!(Encoding::Hex.parse(&p[..57]).is_none());
        assert!(Encoding::Hex.parse(&[b'g'; 58]).is_none());
        let b = Encoding::Binary.payload(40, 1, 2, 3, KIND_DATA);
        assert_eq!(Encoding::Binary.parse(&b).unwrap().counter, 3);
    }

    #[test]
    fn protocols_and_qos() {
        assert_eq!(parse_protocol("3.1.1").unwrap(), Protocol::V311);
        assert_eq!(parse_protocol("5").unwrap(), Protocol::V5);
        assert!(parse_protocol("3").is_err());
        assert_eq!(parse_qos("1").unwrap(), QoS::AtLeastOnce);
        assert!(parse_qos("2").is_err());
        assert!(client_id(u64::MAX, 's', 99_999).len() <= 23);
    }

    #[test]
    fn publish_encodes_and_decodes() {
        let mut out = BytesMut::new();
        push_publish(
            &mut out,
            Protocol::V5,
            "bench/x",
            QoS::AtLeastOnce,
            9,
            payload(100, 1, 0, 5, KIND_DATA),
        );
        let mut d = Decoder::new(MAX_PACKET);
        d.set_protocol(Protocol::V5);
        match d.decode(&mut out).unwrap() {
            Some(Packet::Publish(p)) => {
                assert_eq!((p.topic.as_str(), p.packet_id), ("bench/x", 9));
                assert_eq!(parse_payload(&p.payload).unwrap().counter, 5);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn progress_floor() {
        let p = Progress::new(3, 2);
        p.advance(0, 0, 10);
        p.advance(1, 0, 4);
        p.advance(2, 0, 7);
        assert_eq!(p.floor(0), 4);
        assert_eq!(p.floor(1), 0);
        p.release(1);
        assert_eq!(p.floor(0), 7);
        p.only(0, 1);
        assert_eq!((p.floor(0), p.floor(1)), (7, 0));
    }
}
