//! A client of Herald's stream listen API (`GET /listen`, IorioDB-compatible) over WebSocket or
//! server-sent events, and the pieces the listen scenarios share.
//!
//! The scenarios:
//! - [`listen_fanout`](super::listen_fanout): publish-to-deliver throughput, latency and loss
//!   with many listeners;
//! - [`listen_idle`](super::listen_idle): server memory per idle listen connection.
//!
//! The wire format (`crates/herald-transport-iorio/src/listen.rs`): `GET
//! /listen?jwt=TOKEN&s=bucket:stream:from` subscribes to a stream the session may read,
//! replaying from seqnum `from`; streams the caller may not read are skipped silently. The
//! server then pushes batches, each a JSON array of entries
//! `{"meta":{"id":seq,"t":ms,"bucket","stream",..},"data":..}`, plus two markers: a gap
//! (`meta.gap = {from, to}`: events no longer retained) and a reset (`meta.reset`: the stream was
//! deleted and created again). Over WebSocket a batch is a text frame, and text frames sent to
//! the server are commands (`{"cmd":"subscribe",..}`) answered with `{"ok":..}` objects. Over
//! SSE a batch is an event's `data`; the stream starts with an id-only event whose id lists the
//! starting position of every subscribed stream.
//!
//! [`Listen::open`] returns only once the subscription is known to be in place: over WebSocket
//! it sends a `subscribe` command for the same stream, which is answered `already subscribed`
//! (or, had the query's entry been skipped, subscribes now); over SSE it waits for the id-only
//! event and checks that it names one stream. A stream the session may not read is an error
//! either way (`no-perm`, or no id-only event before the timeout).

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::mqtt::{Encoding, Header};
use crate::args::Target;
use crate::{sse, ws};

/// How payload headers are written in the listen scenarios: as text, so that the listen API
/// shows each event as a JSON string (binary data would be base64).
pub const ENCODING: Encoding = Encoding::Hex;

/// How the listeners connect (`--transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A WebSocket (`GET /listen` with an upgrade): one text frame per batch.
    Ws,
    /// Server-sent events (`GET /listen` with `Accept: text/event-stream`): one event per batch.
    Sse,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
        })
    }
}

/// One stream to listen to.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The bucket.
    pub bucket: String,
    /// The stream in the bucket.
    pub stream: String,
    /// Replay from this seqnum (every retained event with `seq >= from`); `None`: only events
    /// appended after the subscription.
    pub from: Option<u64>,
}

impl Subscription {
    /// `/listen?jwt=TOKEN&s=bucket:stream[:from]`.
    pub fn path(&self, token: &str) -> String {
        let from = self.from.map(|f| format!(":{f}")).unwrap_or_default();
        format!(
            "/listen?jwt={token}&s={}:{}{from}",
            self.bucket, self.stream
        )
    }
}

/// How to open a listen connection.
#[derive(Debug, Clone, Copy)]
pub struct Connect<'a> {
    /// The server's main HTTP API.
    pub target: &'a Target,
    /// WebSocket or SSE.
    pub transport: Transport,
    /// A session token (`POST /sessions`).
    pub token: &'a str,
    /// Source address of the socket, or `None` for the kernel's choice.
    pub source: Option<IpAddr>,
    /// WebSocket read buffer, bytes (SSE reads what hyper reads).
    pub read_buffer: usize,
    /// Give up when the connection is not set up and subscribed within this time.
    pub timeout: Duration,
}

/// A batch as received: the text of a JSON array of entries.
#[derive(Debug)]
pub enum Batch {
    /// A WebSocket text frame.
    Ws(Utf8Bytes),
    /// An SSE event's data.
    Sse(String),
}

impl Batch {
    /// The JSON text.
    pub fn as_str(&self) -> &str {
        match self {
            Batch::Ws(t) => t.as_str(),
            Batch::Sse(s) => s,
        }
    }
}

/// An open listen connection.
#[derive(Debug)]
pub struct Listen {
    inner: Inner,
    /// Batches that arrived while the subscription was being confirmed.
    early: VecDeque<Batch>,
}

#[derive(Debug)]
enum Inner {
    Ws(Box<ws::Socket>),
    Sse(sse::EventStream),
}

impl Listen {
    /// Opens a listen connection subscribed to `sub`, and returns once the subscription is in
    /// place (see the module docs).
    ///
    /// # Errors
    /// When connecting fails, the server refuses the subscription, or it takes longer than
    /// `how.timeout`.
    pub async fn open(how: Connect<'_>, sub: &Subscription) -> anyhow::Result<Listen> {
        tokio::time::timeout(how.timeout, Self::open_inner(how, sub))
            .await
            .with_context(|| {
                format!(
                    "listen connection to {}:{} ({}) not subscribed within {:?}",
                    sub.bucket, sub.stream, how.transport, how.timeout
                )
            })?
    }

    async fn open_inner(how: Connect<'_>, sub: &Subscription) -> anyhow::Result<Listen> {
        let path = sub.path(how.token);
        let mut early = VecDeque::new();
        let inner = match how.transport {
            Transport::Ws => {
                let mut socket =
                    ws::connect_with(how.target, &path, how.source, how.read_buffer).await?;
                confirm_ws(&mut socket, sub, &mut early).await?;
                Inner::Ws(Box::new(socket))
            }
            Transport::Sse => {
                let mut stream = sse::connect(how.target, &path, how.source).await?;
                confirm_sse(&mut stream, &mut early).await?;
                Inner::Sse(stream)
            }
        };
        Ok(Listen { inner, early })
    }

    /// The next batch; `None` when the server closed the connection. Cancel-safe.
    ///
    /// # Errors
    /// On a transport or protocol error.
    pub async fn next_batch(&mut self) -> anyhow::Result<Option<Batch>> {
        if let Some(batch) = self.early.pop_front() {
            return Ok(Some(batch));
        }
        match &mut self.inner {
            Inner::Ws(socket) => loop {
                match socket.next().await {
                    Some(Ok(Message::Text(t))) if t.as_str().starts_with('[') => {
                        return Ok(Some(Batch::Ws(t)));
                    }
                    // Command replies; pings are answered by tungstenite as it reads.
                    Some(Ok(Message::Close(_))) | None => return Ok(None),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e).context("listen WebSocket failed"),
                }
            },
            Inner::Sse(stream) => loop {
                match stream.next().await? {
                    Some(event) if !event.data.is_empty() => {
                        return Ok(Some(Batch::Sse(event.data)));
                    }
                    Some(_) => {}
                    None => return Ok(None),
                }
            },
        }
    }

    /// Closes the connection: a close frame over WebSocket; SSE just drops it.
    pub async fn close(self) {
        if let Inner::Ws(socket) = self.inner {
            let mut socket = *socket;
            let _ = socket.close(None).await;
        }
    }
}

/// Sends a `subscribe` command for `sub` and waits for its answer: `already subscribed` (the
/// query subscribed it) or `ok` (subscribed now) are fine, anything else is an error.
async fn confirm_ws(
    socket: &mut ws::Socket,
    sub: &Subscription,
    early: &mut VecDeque<Batch>,
) -> anyhow::Result<()> {
    let mut command = serde_json::json!({
        "cmd": "subscribe",
        "bucket": sub.bucket,
        "stream": sub.stream,
        "id": "herald-bench",
    });
    if let Some(from) = sub.from {
        command["from"] = from.into();
    }
    socket
        .send(Message::text(command.to_string()))
        .await
        .context("cannot send the subscribe command")?;
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().starts_with('[') => {
                early.push_back(Batch::Ws(t))
            }
            Some(Ok(Message::Text(t))) => {
                #[derive(Deserialize)]
                struct Reply {
                    ok: bool,
                    #[serde(default)]
                    reason: Option<String>,
                }
                let reply: Reply = serde_json::from_str(t.as_str())
                    .with_context(|| format!("unexpected answer to subscribe: {t}"))?;
                match (reply.ok, reply.reason.as_deref()) {
                    (true, _) | (false, Some("already subscribed")) => return Ok(()),
                    (false, reason) => bail!(
                        "subscribing to {}:{} refused: {}",
                        sub.bucket,
                        sub.stream,
                        reason.unwrap_or("no reason given")
                    ),
                }
            }
            Some(Ok(Message::Close(frame))) => bail!("the server closed the WebSocket: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e).context("listen WebSocket failed while subscribing"),
            None => bail!("the server closed the WebSocket while subscribing"),
        }
    }
}

/// Waits for the id-only event that opens a listen event stream and checks that it names one
/// stream (the server skips streams the session may not read, and sends nothing when none is
/// left).
async fn confirm_sse(
    stream: &mut sse::EventStream,
    early: &mut VecDeque<Batch>,
) -> anyhow::Result<()> {
    loop {
        match stream.next().await? {
            Some(event) if event.data.is_empty() => {
                let id = event.id.unwrap_or_default();
                // `1.h-e-n`: a version, then one group per subscribed stream.
                let streams = id.split('.').skip(1).count();
                if streams != 1 {
                    bail!("the event stream names {streams} subscribed streams (id {id:?}), not 1");
                }
                return Ok(());
            }
            Some(event) => early.push_back(Batch::Sse(event.data)),
            None => bail!("the server ended the event stream before it started"),
        }
    }
}

/// Checks a bucket or stream name given as `flag`: letters, digits, `-`, `_` and `.` only, so
/// that it is the same as an MQTT topic level, in a `/listen` query and in a URL path.
///
/// # Errors
/// When it has other characters or is empty.
pub fn check_name(flag: &str, name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        bail!("{flag} must be letters, digits, '-', '_' or '.', got {name:?}");
    }
    Ok(())
}

/// One entry of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// An event: its seqnum, its payload header when the data is a string that has one, and
    /// the size of its data (as a string, else 0).
    Event {
        /// The event's seqnum (`meta.id`).
        seq: u64,
        /// The payload header ([`ENCODING`]).
        header: Option<Header>,
        /// Bytes of data.
        bytes: usize,
    },
    /// Events `from..=to` are no longer retained.
    Gap {
        /// The first missing seqnum.
        from: u64,
        /// The last missing seqnum.
        to: u64,
    },
    /// The stream was deleted and created again; seqnums start at 1.
    Reset,
}

/// Parses a batch.
///
/// # Errors
/// When the text is not a JSON array of listen entries.
pub fn parse_batch(text: &str) -> anyhow::Result<Vec<Entry>> {
    #[derive(Deserialize)]
    struct Raw {
        meta: Meta,
        #[serde(default)]
        data: Data,
    }
    #[derive(Deserialize)]
    struct Meta {
        id: u64,
        #[serde(default)]
        gap: Option<Gap>,
        #[serde(default)]
        reset: Option<IgnoredAny>,
    }
    #[derive(Deserialize)]
    struct Gap {
        from: u64,
        to: u64,
    }
    let raw: Vec<Raw> = serde_json::from_str(text).context("a batch that is not listen JSON")?;
    Ok(raw
        .into_iter()
        .map(|r| match (r.meta.gap, r.meta.reset) {
            (Some(g), _) => Entry::Gap {
                from: g.from,
                to: g.to,
            },
            (None, Some(_)) => Entry::Reset,
            (None, None) => Entry::Event {
                seq: r.meta.id,
                header: r.data.header,
                bytes: r.data.bytes,
            },
        })
        .collect())
}

/// An entry's `data`, reduced to what the scenarios use while it is parsed (no copy of the
/// string is made).
#[derive(Debug, Default)]
struct Data {
    header: Option<Header>,
    bytes: usize,
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DataVisitor;
        impl<'de> Visitor<'de> for DataVisitor {
            type Value = Data;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("event data")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Data, E> {
                Ok(Data {
                    header: ENCODING.parse(v.as_bytes()),
                    bytes: v.len(),
                })
            }

            fn visit_unit<E: de::Error>(self) -> Result<Data, E> {
                Ok(Data::default())
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Data, E> {
                Ok(Data::default())
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Data, E> {
                Ok(Data::default())
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Data, E> {
                Ok(Data::default())
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Data, E> {
                Ok(Data::default())
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Data, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Data::default())
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Data, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Data::default())
            }
        }
        d.deserialize_any(DataVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::mqtt::{KIND_DATA, KIND_PROBE};

    #[test]
    fn paths() {
        let mut sub = Subscription {
            bucket: "bench".into(),
            stream: "s-r1".into(),
            from: Some(1),
        };
        assert_eq!(sub.path("T"), "/listen?jwt=T&s=bench:s-r1:1");
        sub.from = None;
        assert_eq!(sub.path("T"), "/listen?jwt=T&s=bench:s-r1");
    }

    #[test]
    fn names() {
        assert!(check_name("--stream", "fanout-1_a.b").is_ok());
        for bad in ["", "a/b", "a:b", "a b", "a+", "a#", "a?b", "a&s=x"] {
            assert!(check_name("--stream", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn batches_parse() {
        let payload = ENCODING.payload(80, 9, 2, 41, KIND_DATA);
        let text = std::str::from_utf8(&payload).unwrap();
        let batch = format!(
            r#"[{{"meta":{{"id":42,"t":1,"bucket":"b","stream":"s","ct":"application/octet-stream","origin":"hb1-p2"}},"data":"{text}"}},
                {{"meta":{{"id":50,"t":0,"bucket":"b","stream":"s","gap":{{"from":43,"to":50}}}},"data":null}},
                {{"meta":{{"id":0,"bucket":"b","stream":"s","reset":{{"epoch":7}}}},"data":null}},
                {{"meta":{{"id":1,"t":2,"bucket":"b","stream":"s"}},"data":{{"x":[1,2,{{"y":null}}]}}}},
                {{"meta":{{"id":2,"t":2,"bucket":"b","stream":"s"}},"data":"not\u0020ours"}}]"#
        );
        let entries = parse_batch(&batch).unwrap();
        match entries[0] {
            Entry::Event {
                seq: 42,
                header: Some(h),
                bytes: 80,
            } => assert_eq!((h.run_id, h.publisher, h.counter), (9, 2, 41)),
            other => panic!("{other:?}"),
        }
        assert_eq!(entries[1], Entry::Gap { from: 43, to: 50 });
        assert_eq!(entries[2], Entry::Reset);
        assert_eq!(
            entries[3],
            Entry::Event {
                seq: 1,
                header: None,
                bytes: 0
            }
        );
        assert_eq!(
            entries[4],
            Entry::Event {
                seq: 2,
                header: None,
                bytes: 8
            }
        );
        assert!(parse_batch(r#"{"ok":true}"#).is_err());
        let probe = ENCODING.payload(58, 1, 0, 0, KIND_PROBE);
        assert!(probe.is_ascii());
    }
}
