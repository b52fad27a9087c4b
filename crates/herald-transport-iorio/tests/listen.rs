//! `/listen` over long-polling, server-sent events and WebSocket: replay from a seqnum, live
//! events, gap and reset markers, resume without loss or duplicates, command replies and the
//! permission check.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, config, json_body};
use futures_util::{SinkExt, StreamExt};
use herald_core::Path;
use herald_core::topic::Retention;
use herald_engine::NewEvent;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

fn path(p: &str) -> Path {
    Path::parse_url(p, &Default::default()).unwrap()
}

async fn append(s: &TestServer, topic: &str, n: u64) -> u64 {
    s.topics
        .append(
            path(topic),
            vec![NewEvent::json(json!({"n": n}).to_string())],
            None,
        )
        .await
        .unwrap()
        .last
}

fn ids(batch: &Value) -> Vec<u64> {
    batch
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["meta"]["id"].as_u64().unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Long-poll

#[tokio::test]
async fn long_poll_waits_for_the_first_batch() {
    let mut cfg = config();
    cfg.long_poll_timeout = Duration::from_secs(5);
    let s = TestServer::start(cfg).await;
    let admin = s.admin_token().await;
    let url = s.url(&format!("/listen?jwt={admin}&s=b:lp&1700000000.123"));
    let poll = tokio::spawn({
        let http = s.http.clone();
        async move { http.get(url).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!poll.is_finished(), "held until an event arrives");
    append(&s, "/b/lp", 7).await;
    let resp = tokio::time::timeout(WAIT, poll).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let batch = json_body(resp).await;
    let entry = &batch[0];
    assert_eq!(entry["meta"]["id"], 1);
    assert_eq!(entry["meta"]["bucket"], "b");
    assert_eq!(entry["meta"]["stream"], "lp");
    assert!(entry["meta"]["t"].is_u64());
    assert_eq!(entry["data"], json!({"n": 7}));
}

#[tokio::test]
async fn long_poll_replays_from_a_seqnum_and_times_out_with_204() {
    let mut cfg = config();
    cfg.long_poll_timeout = Duration::from_millis(300);
    let s = TestServer::start(cfg).await;
    let admin = s.admin_token().await;
    for n in 1..=3 {
        append(&s, "/b/r", n).await;
    }
    // Replay from 2 (from disk, not a cache), across two streams.
    append(&s, "/b/other", 1).await;
    let resp = s
        .http
        .get(s.url(&format!("/listen?jwt={admin}&s=b:r:2&s=b:other:1")))
        .send()
        .await
        .unwrap();
    let batch = json_body(resp).await;
    let mut got: Vec<(String, u64)> = batch
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["meta"]["stream"].as_str().unwrap().to_owned(),
                e["meta"]["id"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, [("other".into(), 1), ("r".into(), 2), ("r".into(), 3)]);

    // Nothing new: 204 after the timeout, empty body.
    let started = Instant::now();
    let resp = s
        .http
        .get(s.url(&format!("/listen?jwt={admin}&s=b:r:4")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(resp.bytes().await.unwrap().is_empty());

    // A bad token: 400, no data.
    let resp = s
        .http
        .get(s.url("/listen?jwt=garbage&s=b:r:1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.bytes().await.unwrap().is_empty());

    // Streams the caller may not read are skipped silently: nothing arrives.
    let bob = s.user("bob").await;
    let resp = s
        .http
        .get(s.url(&format!(
            "/listen?jwt={bob}&s=b:r:1&s=bad-entry&s=b:r:notanumber"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}

#[tokio::test]
async fn long_poll_batches_are_bounded() {
    let mut cfg = config();
    cfg.max_batch_events = 4;
    let s = TestServer::start(cfg).await;
    let admin = s.admin_token().await;
    for n in 1..=10 {
        append(&s, "/b/big", n).await;
    }
    let mut from = 1;
    let mut seen = Vec::new();
    while from <= 10 {
        let resp = s
            .http
            .get(s.url(&format!("/listen?jwt={admin}&s=b:big:{from}")))
            .send()
            .await
            .unwrap();
        let batch = json_body(resp).await;
        let got = ids(&batch);
        assert!(got.len() <= 4);
        from = got.last().unwrap() + 1;
        seen.extend(got);
    }
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
}

#[tokio::test]
async fn gap_marker_after_retention_trimmed() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;
    let topic = path("/b/g");
    for n in 1..=5 {
        append(&s, "/b/g", n).await;
    }
    s.topics
        .set_retention(
            &topic,
            Some(Retention {
                max_events: Some(2),
                ..Retention::default()
            }),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while s.topics.info(&topic).await.unwrap().unwrap().first != 4 {
        assert!(Instant::now() < deadline, "retention did not run");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let resp = s
        .http
        .get(s.url(&format!("/listen?jwt={admin}&s=b:g:1")))
        .send()
        .await
        .unwrap();
    let batch = json_body(resp).await;
    assert_eq!(
        batch[0],
        json!({"meta": {"id": 3, "t": 0, "bucket": "b", "stream": "g", "gap": {"from": 1, "to": 3}}, "data": null})
    );
    assert_eq!(ids(&batch), [3, 4, 5]);
    assert_eq!(batch[1]["data"], json!({"n": 4}));
}

// ---------------------------------------------------------------------------------------------
// Server-sent events

/// A minimal SSE reader over a streaming reqwest response.
struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

#[derive(Debug, Default)]
struct SseMessage {
    id: Option<String>,
    data: Option<String>,
}

impl SseReader {
    async fn open(s: &TestServer, query: &str, last_event_id: Option<&str>) -> SseReader {
        let mut req = s
            .http
            .get(s.url(&format!("/listen?{query}")))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        SseReader {
            resp,
            buf: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped).
    async fn next(&mut self) -> SseMessage {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut msg = SseMessage::default();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        msg.id = Some(v.trim_start().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        let v = v.strip_prefix(' ').unwrap_or(v);
                        match &mut msg.data {
                            Some(d) => {
                                d.push('\n');
                                d.push_str(v);
                            }
                            None => msg.data = Some(v.to_owned()),
                        }
                    }
                }
                if msg.id.is_some() || msg.data.is_some() {
                    return msg;
                }
                continue;
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("an SSE event in time")
                .unwrap()
                .expect("the stream is still open");
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Reads events until `n` entries arrived; returns their `(stream, id)` and the last id.
    async fn entries(&mut self, n: usize) -> (Vec<(String, u64)>, String) {
        let mut out = Vec::new();
        let mut last_id = String::new();
        while out.len() < n {
            let msg = self.next().await;
            if let Some(id) = msg.id {
                last_id = id;
            }
            if let Some(data) = msg.data {
                let batch: Value = serde_json::from_str(&data).unwrap();
                for e in batch.as_array().unwrap() {
                    out.push((
                        e["meta"]["stream"].as_str().unwrap().to_owned(),
                        e["meta"]["id"].as_u64().unwrap(),
                    ));
                }
            }
        }
        (out, last_id)
    }
}

#[tokio::test]
async fn sse_delivers_and_resumes_with_last_event_id() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;
    append(&s, "/b/e1", 1).await;
    let query = format!("jwt={admin}&s=b:e1&s=b:e2");

    // The first event only carries the starting position.
    let mut sse = SseReader::open(&s, &query, None).await;
    let first = sse.next().await;
    assert!(first.data.is_none());
    let start_id = first.id.unwrap();
    assert!(start_id.starts_with("1."));

    // Dropped before anything arrived: resuming from the starting id loses nothing.
    drop(sse);
    append(&s, "/b/e1", 2).await;
    append(&s, "/b/e2", 1).await;
    let mut sse = SseReader::open(&s, &query, Some(&start_id)).await;
    let _ = sse.next().await; // the new starting id
    let (mut got, last_id) = sse.entries(2).await;
    got.sort();
    assert_eq!(got, [("e1".into(), 2), ("e2".into(), 1)]);

    // Live events, then a drop, more appends, and a resume from the last id seen.
    append(&s, "/b/e2", 2).await;
    let (got, last_id2) = sse.entries(1).await;
    assert_eq!(got, [("e2".into(), 2)]);
    assert_ne!(last_id, last_id2);
    drop(sse);
    append(&s, "/b/e1", 3).await;
    append(&s, "/b/e2", 3).await;
    append(&s, "/b/e2", 4).await;
    let mut sse = SseReader::open(&s, &query, Some(&last_id2)).await;
    let _ = sse.next().await;
    let (mut got, _) = sse.entries(3).await;
    got.sort();
    assert_eq!(got, [("e1".into(), 3), ("e2".into(), 3), ("e2".into(), 4)]);

    // A garbage Last-Event-ID is ignored: the s= entries apply (here: only new events).
    let mut sse = SseReader::open(&s, &query, Some("bogus")).await;
    let _ = sse.next().await;
    append(&s, "/b/e1", 4).await;
    let (got, _) = sse.entries(1).await;
    assert_eq!(got, [("e1".into(), 4)]);
}

#[tokio::test]
async fn sse_split_batches_each_resume_exactly() {
    let mut cfg = config();
    cfg.max_batch_events = 2;
    let s = TestServer::start(cfg).await;
    let admin = s.admin_token().await;
    for n in 1..=5 {
        append(&s, "/b/split", n).await;
    }
    let query = format!("jwt={admin}&s=b:split:1");
    let mut sse = SseReader::open(&s, &query, None).await;
    let _start = sse.next().await;
    let first = sse.next().await;
    let batch: Value = serde_json::from_str(first.data.as_deref().unwrap()).unwrap();
    assert_eq!(ids(&batch), [1, 2]);
    let id_after_2 = first.id.unwrap();
    drop(sse);
    // Resuming from the first batch's id continues at 3, whatever s= says.
    let mut sse = SseReader::open(&s, &query, Some(&id_after_2)).await;
    let _ = sse.next().await;
    let (got, _) = sse.entries(3).await;
    assert_eq!(got.iter().map(|(_, id)| *id).collect::<Vec<_>>(), [3, 4, 5]);
}

#[tokio::test]
async fn sse_batches_stay_within_the_byte_limit_and_each_resumes_exactly() {
    const LIMIT: usize = 200;
    let mut cfg = config();
    cfg.max_batch_bytes = LIMIT;
    let s = TestServer::start(cfg).await;
    let admin = s.admin_token().await;
    for n in 1..=7 {
        append(&s, "/b/sz", n).await;
    }
    // An entry over the limit travels alone.
    let big = json!({"big": "x".repeat(LIMIT)}).to_string();
    s.topics
        .append(path("/b/sz"), vec![NewEvent::json(big)], None)
        .await
        .unwrap();
    append(&s, "/b/sz", 9).await;

    let query = format!("jwt={admin}&s=b:sz:1");
    let mut sse = SseReader::open(&s, &query, None).await;
    let _start = sse.next().await;
    let mut seen = Vec::new();
    let mut batches = Vec::new();
    while seen.len() < 9 {
        let msg = sse.next().await;
        let Some(data) = msg.data else { continue };
        let got = ids(&serde_json::from_str(&data).unwrap());
        assert!(data.len() <= LIMIT || got.len() == 1, "{data}");
        seen.extend(got.iter().copied());
        batches.push((got, msg.id.unwrap()));
    }
    assert_eq!(seen, (1..=9).collect::<Vec<_>>());
    assert!(batches.len() >= 5, "{batches:?}");
    // Every batch's id resumes right after its last entry.
    for (got, id) in batches.iter().take(batches.len() - 1) {
        let mut sse = SseReader::open(&s, &query, Some(id)).await;
        let _ = sse.next().await;
        let (next, _) = sse.entries(1).await;
        assert_eq!(next[0].1, got.last().unwrap() + 1, "after {got:?}");
    }
}

#[tokio::test]
async fn sse_resume_after_delete_starts_with_a_reset() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;
    append(&s, "/b/x", 1).await;
    let query = format!("jwt={admin}&s=b:x:1");
    let mut sse = SseReader::open(&s, &query, None).await;
    let _ = sse.next().await;
    let (_, id) = sse.entries(1).await;
    drop(sse);
    s.topics.delete(&path("/b/x")).await.unwrap();
    append(&s, "/b/x", 10).await;
    let mut sse = SseReader::open(&s, &query, Some(&id)).await;
    let _ = sse.next().await;
    let msg = sse.next().await;
    let batch: Value = serde_json::from_str(msg.data.as_deref().unwrap()).unwrap();
    let reset = &batch[0];
    assert_eq!(reset["meta"]["id"], 0);
    assert!(reset["meta"]["reset"]["epoch"].as_u64().unwrap() > 0);
    assert_eq!(reset["data"], Value::Null);
    // The new incarnation's first event follows (in this or the next batch).
    let next = match batch.get(1) {
        Some(e) => e.clone(),
        None => {
            let msg = sse.next().await;
            serde_json::from_str::<Value>(msg.data.as_deref().unwrap()).unwrap()[0].clone()
        }
    };
    assert_eq!(next["meta"]["id"], 1);
    assert_eq!(next["data"], json!({"n": 10}));
}

// ---------------------------------------------------------------------------------------------
// WebSocket

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(s: &TestServer, query: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(s.ws_url(&format!("/listen?{query}")))
        .await
        .unwrap();
    ws
}

/// The next text frame as JSON.
async fn ws_next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .unwrap();
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn ws_command(ws: &mut Ws, cmd: Value) -> Value {
    ws.send(Message::text(cmd.to_string())).await.unwrap();
    ws_next(ws).await
}

/// The next `n` entries a WebSocket listener receives, however they are batched.
async fn ws_entries(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        out.extend(ws_next(ws).await.as_array().unwrap().iter().cloned());
    }
    out
}

/// Listeners of one stream share each event's rendering, made once by whichever listener
/// gets to it first: over every transport they all receive the same entries, and a listener
/// of another stream gets its own.
#[tokio::test]
async fn listeners_of_a_stream_receive_the_same_entries_over_every_transport() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;
    let query = format!("jwt={admin}&s=b:shared:1");
    let mut sse = SseReader::open(&s, &query, None).await;
    let _start = sse.next().await;
    let mut ws1 = ws_connect(&s, &query).await;
    let mut ws2 = ws_connect(&s, &query).await;
    let mut other = ws_connect(&s, &format!("jwt={admin}&s=b:other:1")).await;

    let events = [
        NewEvent::json(r#"{"n":1}"#),
        NewEvent::new("text/plain".into(), "hi \"there\"").with_origin("sensor-1".into()),
        NewEvent::new("application/octet-stream".into(), vec![0xff, 0, 1]),
    ];
    for e in events {
        s.topics
            .append(path("/b/shared"), vec![e], None)
            .await
            .unwrap();
    }
    s.topics
        .append(path("/b/other"), vec![NewEvent::json("2")], None)
        .await
        .unwrap();

    let expected = [
        json!({"meta": {"id": 1, "bucket": "b", "stream": "shared"}, "data": {"n": 1}}),
        json!({"meta": {"id": 2, "bucket": "b", "stream": "shared", "ct": "text/plain",
            "origin": "sensor-1"}, "data": "hi \"there\""}),
        json!({"meta": {"id": 3, "bucket": "b", "stream": "shared",
            "ct": "application/octet-stream", "enc": "base64"}, "data": "/wAB"}),
    ];
    let without_time = |mut entries: Vec<Value>| {
        for e in &mut entries {
            assert!(e["meta"]["t"].as_u64().unwrap() > 0, "{e}");
            e["meta"].as_object_mut().unwrap().remove("t");
        }
        entries
    };
    let first = ws_entries(&mut ws1, 3).await;
    assert_eq!(without_time(first.clone()), expected);
    assert_eq!(ws_entries(&mut ws2, 3).await, first);
    let mut from_sse = Vec::new();
    while from_sse.len() < 3 {
        if let Some(data) = sse.next().await.data {
            let batch: Value = serde_json::from_str(&data).unwrap();
            from_sse.extend(batch.as_array().unwrap().iter().cloned());
        }
    }
    assert_eq!(from_sse, first);
    let theirs = without_time(ws_entries(&mut other, 1).await);
    assert_eq!(
        theirs,
        [json!({"meta": {"id": 1, "bucket": "b", "stream": "other"}, "data": 2})]
    );
}

#[tokio::test]
async fn websocket_reconnect_misses_nothing_and_repeats_nothing() {
    const TOTAL: u64 = 400;
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;
    let writer = {
        let topics = s.topics.clone();
        tokio::spawn(async move {
            for n in 1..=TOTAL {
                topics
                    .append(path("/b/w"), vec![NewEvent::json(n.to_string())], None)
                    .await
                    .unwrap();
                if n % 7 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    let mut seen: Vec<u64> = Vec::new();
    let mut reconnects = 0;
    while seen.last().copied().unwrap_or(0) < TOTAL {
        let from = seen.last().map_or(1, |l| l + 1);
        let mut ws = ws_connect(&s, &format!("jwt={admin}&s=b:w:{from}")).await;
        // Take a few batches, then drop the connection while appends continue.
        for _ in 0..3 {
            let batch = ws_next(&mut ws).await;
            for e in batch.as_array().unwrap() {
                assert_eq!(e["meta"]["stream"], "w");
                let id = e["meta"]["id"].as_u64().unwrap();
                assert_eq!(e["data"], json!(id));
                seen.push(id);
            }
            if seen.last().copied() == Some(TOTAL) {
                break;
            }
        }
        drop(ws);
        reconnects += 1;
    }
    writer.await.unwrap();
    assert_eq!(seen, (1..=TOTAL).collect::<Vec<_>>());
    assert!(reconnects > 1);
}

#[tokio::test]
async fn websocket_commands() {
    let mut cfg = config();
    cfg.max_listen_subscriptions = 2;
    let s = TestServer::start(cfg).await;
    let admin = s.admin_token().await;
    let bob = s.user("bob").await;
    append(&s, "/b/c", 1).await;
    append(&s, "/b/c", 2).await;

    let mut ws = ws_connect(&s, &format!("jwt={bob}")).await;
    assert_eq!(
        ws_command(&mut ws, json!({"cmd": "ping", "id": 1})).await,
        json!({"ok": true, "id": 1, "type": "ping"})
    );
    // Unlike IorioDB, subscribing checks read permission.
    assert_eq!(
        ws_command(
            &mut ws,
            json!({"cmd": "subscribe", "bucket": "b", "stream": "c", "id": 2})
        )
        .await,
        json!({"ok": false, "id": 2, "reason": "no-perm"})
    );
    for (cmd, reason) in [
        (
            json!({"cmd": "subscribe", "stream": "c", "id": 3}),
            "missing bucket",
        ),
        (
            json!({"cmd": "subscribe", "bucket": "b", "id": 3}),
            "missing stream",
        ),
        (
            json!({"cmd": "unsubscribe", "id": 3}),
            "missing bucket and stream",
        ),
        (json!({"cmd": "fly", "id": 3}), "unknown command"),
        (
            json!({"cmd": "unsubscribe", "bucket": "_user_bob", "stream": "x", "id": 3}),
            "not subscribed",
        ),
    ] {
        assert_eq!(
            ws_command(&mut ws, cmd).await,
            json!({"ok": false, "id": 3, "reason": reason})
        );
    }
    ws.send(Message::text("{not json")).await.unwrap();
    assert_eq!(ws_next(&mut ws).await["reason"], "invalid-json");
    // bullet's plain-text heartbeat.
    ws.send(Message::text("ping")).await.unwrap();
    let msg = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(msg, Message::text("pong"));

    // Own bucket: subscribe, get live events, unsubscribe.
    assert_eq!(
        ws_command(
            &mut ws,
            json!({"cmd": "subscribe", "bucket": "_user_bob", "stream": "x", "id": 4})
        )
        .await,
        json!({"ok": true, "id": 4, "type": "subscribe"})
    );
    assert_eq!(
        ws_command(
            &mut ws,
            json!({"cmd": "subscribe", "bucket": "_user_bob", "stream": "x", "id": 5})
        )
        .await,
        json!({"ok": false, "id": 5, "reason": "already subscribed"})
    );
    append(&s, "/_user_bob/x", 42).await;
    let batch = ws_next(&mut ws).await;
    assert_eq!(batch[0]["meta"]["bucket"], "_user_bob");
    assert_eq!(batch[0]["data"], json!({"n": 42}));
    // Subscribe with `from` replays (an extension).
    assert_eq!(
        ws_command(
            &mut ws,
            json!({"cmd": "subscribe", "bucket": "public", "stream": "p", "id": 6, "from": 1})
        )
        .await["ok"],
        true
    );
    assert_eq!(
        ws_command(
            &mut ws,
            json!({"cmd": "subscribe", "bucket": "_user_bob", "stream": "y", "id": 7})
        )
        .await,
        json!({"ok": false, "id": 7, "reason": "too-many-subscriptions"})
    );
    assert_eq!(
        ws_command(
            &mut ws,
            json!({"cmd": "unsubscribe", "bucket": "_user_bob", "stream": "x", "id": 8})
        )
        .await,
        json!({"ok": true, "id": 8, "type": "unsubscribe"})
    );
    append(&s, "/_user_bob/x", 43).await;
    append(&s, "/public/p", 1).await;
    let batch = ws_next(&mut ws).await;
    assert_eq!(
        batch[0]["meta"]["stream"], "p",
        "nothing more from the unsubscribed stream"
    );

    // The admin may subscribe to b:c, with a replay.
    let mut ws = ws_connect(&s, &format!("jwt={admin}")).await;
    assert_eq!(
        ws_command(
            &mut ws,
            json!({"cmd": "subscribe", "bucket": "b", "stream": "c", "id": 1, "from": 1})
        )
        .await["ok"],
        true
    );
    assert_eq!(ids(&ws_next(&mut ws).await), [1, 2]);
}

#[tokio::test]
async fn websocket_query_subscriptions_skip_unreadable_streams() {
    let s = TestServer::start(config()).await;
    let bob = s.user("bob").await;
    append(&s, "/b/hidden", 1).await;
    append(&s, "/_user_bob/mine", 1).await;
    let mut ws = ws_connect(&s, &format!("jwt={bob}&s=b:hidden:1&s=_user_bob:mine:1")).await;
    let batch = ws_next(&mut ws).await;
    assert_eq!(batch.as_array().unwrap().len(), 1);
    assert_eq!(batch[0]["meta"]["stream"], "mine");
    // The upgrade with a bad token is refused before upgrading.
    let err = tokio_tungstenite::connect_async(s.ws_url("/listen?jwt=garbage&s=b:hidden"))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 400),
        other => panic!("unexpected error {other:?}"),
    }
}

#[tokio::test]
async fn websocket_reset_marker_after_delete() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;
    append(&s, "/b/d", 1).await;
    let mut ws = ws_connect(&s, &format!("jwt={admin}&s=b:d:1")).await;
    assert_eq!(ids(&ws_next(&mut ws).await), [1]);
    s.topics.delete(&path("/b/d")).await.unwrap();
    append(&s, "/b/d", 2).await;
    let mut entries = Vec::new();
    while entries.len() < 2 {
        entries.extend(ws_next(&mut ws).await.as_array().unwrap().clone());
    }
    assert_eq!(entries[0]["meta"]["id"], 0);
    assert!(entries[0]["meta"]["reset"]["epoch"].is_u64());
    assert_eq!(entries[1]["meta"]["id"], 1);
    assert_eq!(entries[1]["data"], json!({"n": 2}));
}

#[tokio::test]
async fn websocket_commands_are_rate_limited() {
    let mut cfg = config();
    cfg.ws_commands_per_second = 2;
    let s = TestServer::start(cfg).await;
    let mut ws = ws_connect(&s, "").await;
    let mut limited = false;
    for id in 0..5 {
        let reply = ws_command(&mut ws, json!({"cmd": "ping", "id": id})).await;
        if reply["reason"] == "rate-limited" {
            limited = true;
        }
    }
    assert!(limited);
}

#[tokio::test]
async fn post_listen_runs_one_command() {
    let s = TestServer::start(config()).await;
    let resp = s
        .http
        .post(s.url("/listen"))
        .body(json!({"cmd": "ping", "id": 9}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        json_body(resp).await,
        json!({"ok": true, "id": 9, "type": "ping"})
    );
    let resp = s
        .http
        .post(s.url("/listen"))
        .body(json!({"cmd": "subscribe", "bucket": "b", "stream": "s", "id": 1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_body(resp).await,
        json!({"ok": false, "id": 1, "reason": "no-perm"})
    );
}

#[tokio::test]
async fn shutdown_ends_every_kind_of_listener() {
    let mut cfg = config();
    let shutdown = cfg.shutdown.clone();
    cfg.long_poll_timeout = WAIT * 10;
    let s = TestServer::start(cfg).await;
    let admin = s.admin_token().await;
    append(&s, "/b/s", 1).await;

    let mut ws = ws_connect(&s, &format!("jwt={admin}&s=b:s")).await;
    let sse = s
        .http
        .get(s.url(&format!("/listen?jwt={admin}&s=b:s")))
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let poll = {
        let (http, url) = (s.http.clone(), s.url(&format!("/listen?jwt={admin}&s=b:s")));
        tokio::spawn(async move { http.get(url).send().await.unwrap().status() })
    };
    // Let the long-poll request reach its handler before shutting down.
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.cancel();

    let status = tokio::time::timeout(WAIT, poll)
        .await
        .expect("long-poll ended")
        .unwrap();
    assert_eq!(status, 204);
    let body = tokio::time::timeout(WAIT, sse.text())
        .await
        .expect("event stream ended")
        .unwrap();
    assert!(body.starts_with("id: "), "{body:?}");
    let close = loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
}
