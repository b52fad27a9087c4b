//! The legacy single-path WebSocket protocol on the real binary (seed-contracts 1.3): first
//! frame, notification rules (ancestor / equal / descendant, never siblings), coalescing,
//! ignored client messages, the `method` check and keepalive pings.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn first_frame_is_the_current_value_or_null() {
    let s = start(&[]).await;
    icepeak_put(&s, "/so/cool", r#"{"status":"freezing"}"#).await;

    let mut ws = ws_connect(&s.icepeak_ws("/so/cool")).await;
    assert_eq!(next_json(&mut ws).await, json!({"status":"freezing"}));
    let mut ws = ws_connect(&s.icepeak_ws("/so/cool/status")).await;
    assert_eq!(next_text(&mut ws).await, r#""freezing""#);
    let mut ws = ws_connect(&s.icepeak_ws("/")).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"so":{"cool":{"status":"freezing"}}})
    );
    let mut ws = ws_connect(&s.icepeak_ws("/does/not/exist")).await;
    assert_eq!(next_text(&mut ws).await, "null");
    // An explicit null looks the same.
    icepeak_put(&s, "/n", "null").await;
    let mut ws = ws_connect(&s.icepeak_ws("/n")).await;
    assert_eq!(next_text(&mut ws).await, "null");
    drop(ws);
    stop(s).await;
}

#[tokio::test]
async fn subscribers_get_the_full_value_after_writes_at_equal_descendant_and_ancestor_paths() {
    let s = start(&[]).await;
    icepeak_put(&s, "/", r#"{"a":{"b":{"c":1},"x":0}}"#).await;
    let mut sub = ws_connect(&s.icepeak_ws("/a/b")).await;
    assert_eq!(next_json(&mut sub).await, json!({"c":1}));

    // The same path.
    icepeak_put(&s, "/a/b", r#"{"c":2}"#).await;
    assert_eq!(next_json(&mut sub).await, json!({"c":2}));
    // A descendant path: the subscriber gets the complete value at its own path.
    icepeak_put(&s, "/a/b/d", "3").await;
    assert_eq!(next_json(&mut sub).await, json!({"c":2,"d":3}));
    // A deeper descendant, created with intermediates.
    icepeak_put(&s, "/a/b/e/f", "4").await;
    assert_eq!(next_json(&mut sub).await, json!({"c":2,"d":3,"e":{"f":4}}));
    // A delete below.
    let r = delete(&format!("{}/a/b/d?durable", s.icepeak_url())).await;
    assert_eq!(r.status, 202);
    assert_eq!(next_json(&mut sub).await, json!({"c":2,"e":{"f":4}}));
    // An ancestor path.
    icepeak_put(&s, "/a", r#"{"b":"replaced"}"#).await;
    assert_eq!(next_json(&mut sub).await, json!("replaced"));
    // The root, replaced.
    icepeak_put(&s, "/", r#"{"a":{"b":[1,2]}}"#).await;
    assert_eq!(next_json(&mut sub).await, json!([1, 2]));
    // The root, replaced by a document without the path: null.
    icepeak_put(&s, "/", r#"{"other":1}"#).await;
    assert_eq!(next_json(&mut sub).await, Value::Null);
    // And back.
    icepeak_put(&s, "/a/b", "5").await;
    assert_eq!(next_json(&mut sub).await, json!(5));
    // DELETE / makes everything null.
    let r = delete(&format!("{}/?durable", s.icepeak_url())).await;
    assert_eq!(r.status, 202);
    assert_eq!(next_json(&mut sub).await, Value::Null);
    stop(s).await;
}

#[tokio::test]
async fn root_subscriber_sees_every_write_and_descendants_see_removal_as_null() {
    let s = start(&[]).await;
    let mut root = ws_connect(&s.icepeak_ws("/")).await;
    assert_eq!(next_json(&mut root).await, json!({}));
    let mut leaf = ws_connect(&s.icepeak_ws("/p/q/r")).await;
    assert_eq!(next_json(&mut leaf).await, Value::Null);

    icepeak_put(&s, "/p/q/r", "1").await;
    assert_eq!(next_json(&mut root).await, json!({"p":{"q":{"r":1}}}));
    assert_eq!(next_json(&mut leaf).await, json!(1));

    // Deleting an ancestor removes the leaf's value: it is told null.
    let r = delete(&format!("{}/p/q?durable", s.icepeak_url())).await;
    assert_eq!(r.status, 202);
    assert_eq!(next_json(&mut root).await, json!({"p":{}}));
    assert_eq!(next_json(&mut leaf).await, Value::Null);

    // Replacing an ancestor with a scalar: null again (notified even though unchanged).
    icepeak_put(&s, "/p", "7").await;
    assert_eq!(next_json(&mut root).await, json!({"p":7}));
    assert_eq!(next_json(&mut leaf).await, Value::Null);
    stop(s).await;
}

#[tokio::test]
async fn sibling_subscribers_receive_nothing() {
    let s = start(&[]).await;
    icepeak_put(&s, "/sib", r#"{"a":{"v":1},"b":{"v":2}}"#).await;
    let mut sibling = ws_connect(&s.icepeak_ws("/sib/a")).await;
    let mut control = ws_connect(&s.icepeak_ws("/sib/b")).await;
    let mut cousin = ws_connect(&s.icepeak_ws("/sib/a/v")).await;
    let mut other_tree = ws_connect(&s.icepeak_ws("/elsewhere")).await;
    assert_eq!(next_json(&mut sibling).await, json!({"v":1}));
    assert_eq!(next_json(&mut control).await, json!({"v":2}));
    assert_eq!(next_json(&mut cousin).await, json!(1));
    assert_eq!(next_text(&mut other_tree).await, "null");

    icepeak_put(&s, "/sib/b/v", "3").await;
    icepeak_put(&s, "/sib/b/w", "4").await;
    assert_eq!(next_json(&mut control).await, json!({"v":3}));
    assert_eq!(next_json(&mut control).await, json!({"v":3,"w":4}));
    // The control got both updates; the others get nothing.
    assert_silent(&mut sibling, QUIET).await;
    assert_silent(&mut cousin, QUIET).await;
    assert_silent(&mut other_tree, QUIET).await;

    // A sibling *key* that shares a prefix by characters is still a sibling.
    icepeak_put(&s, "/sib/ab", "1").await;
    assert_silent(&mut sibling, QUIET).await;
    stop(s).await;
}

#[tokio::test]
async fn many_quick_writes_end_with_the_final_value_in_order() {
    const WRITES: u64 = 300;
    let s = start(&[]).await;
    let mut sub = ws_connect(&s.icepeak_ws("/fast")).await;
    assert_eq!(next_text(&mut sub).await, "null");

    // Fire the writes without reading the socket meanwhile, so updates pile up.
    let c = client();
    for i in 1..=WRITES {
        let url = format!("{}/fast", s.icepeak_url());
        let r = send(c.put(url).body(i.to_string())).await;
        assert_eq!(r.status, 202);
    }
    let mut frames = 0u64;
    let mut last = 0u64;
    while last != WRITES {
        let v = next_json(&mut sub).await;
        let v = v.as_u64().unwrap_or_else(|| panic!("unexpected frame {v}"));
        assert!(
            v > last,
            "frames out of order or repeated: {v} after {last}"
        );
        last = v;
        frames += 1;
    }
    assert_silent(&mut sub, QUIET).await;
    assert!(
        frames <= WRITES,
        "{frames} update frames for {WRITES} writes"
    );
    stop(s).await;
}

#[tokio::test]
async fn client_messages_are_ignored() {
    let s = start(&[]).await;
    let mut ws = ws_connect(&s.icepeak_ws("/ign")).await;
    assert_eq!(next_text(&mut ws).await, "null");
    send_text(&mut ws, r#"{"type":"subscribe","paths":["other"]}"#).await;
    send_text(&mut ws, "not json").await;
    futures_util::SinkExt::send(&mut ws, Message::binary(vec![0u8, 1, 2]))
        .await
        .unwrap();
    assert_silent(&mut ws, QUIET).await;
    // Still subscribed to its path, and to nothing else.
    icepeak_put(&s, "/other", "1").await;
    icepeak_put(&s, "/ign", "2").await;
    assert_eq!(next_json(&mut ws).await, json!(2));
    stop(s).await;
}

#[tokio::test]
async fn a_method_other_than_reusable_is_rejected_with_400() {
    let s = start(&[]).await;
    for target in ["/a?method=foo", "/?method=", "/a?method=Reusable"] {
        let (r, _) = raw_ws_handshake(s.addr("icepeak"), target, &[]).await;
        assert_eq!(r.status, 400, "{target}: {r:?}");
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; charset=utf-8"),
            "{target}"
        );
        assert_eq!(
            r.body_str(),
            "Invalid 'method' query parameter value, expecting 'reusable'"
        );
    }
    stop(s).await;
}

#[tokio::test]
async fn websocket_upgrades_are_served_on_any_path_and_with_a_query() {
    let s = start(&[]).await;
    icepeak_put(&s, "/q", "1").await;
    let mut ws = ws_connect(&s.icepeak_ws("/q?unrelated=1&durable")).await;
    assert_eq!(next_json(&mut ws).await, json!(1));
    stop(s).await;
}

#[tokio::test]
async fn the_server_pings_and_a_client_that_answers_stays_connected() {
    let s = start(&[
        "--websocket-ping-interval",
        "1",
        "--websocket-pong-timeout",
        "1",
    ])
    .await;
    let mut ws = ws_connect(&s.icepeak_ws("/ping")).await;
    assert_eq!(next_text(&mut ws).await, "null");
    // tokio-tungstenite answers pings while it is being read.
    let mut pings = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(3500) {
        match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
            Err(_) => {}
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        pings >= 2,
        "only {pings} pings in 3.5 s with a 1 s interval"
    );
    // Past interval + timeout, and still served.
    icepeak_put(&s, "/ping", "1").await;
    assert_eq!(next_json(&mut ws).await, json!(1));
    stop(s).await;
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_disconnected() {
    let s = start(&[
        "--websocket-ping-interval",
        "1",
        "--websocket-pong-timeout",
        "1",
    ])
    .await;
    // A hand-made client: handshake, then silence (it never sends a pong).
    let (resp, mut stream) = raw_ws_handshake(s.addr("icepeak"), "/silent", &[]).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    let started = Instant::now();
    let mut received = resp.body.clone();
    let closed = within_for(
        Duration::from_secs(8),
        "server drops the silent client",
        async {
            let mut buf = [0u8; 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                }
            }
        },
    );
    closed.await;
    let elapsed = started.elapsed();
    // Interval (1 s) + timeout (1 s), checked at the next ping tick: between 2 and ~3 s.
    assert!(
        elapsed >= Duration::from_millis(1500),
        "dropped too early: {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_secs(5),
        "dropped too late: {elapsed:?}"
    );
    // It saw the first frame (text "null": 0x81 0x04 "null") and at least one ping (0x89).
    assert!(received.starts_with(b"\x81\x04null"), "{received:?}");
    assert!(
        received.windows(2).any(|w| w == b"\x89\x00"),
        "no ping frame in {received:?}"
    );
    stop(s).await;
}

#[tokio::test]
async fn many_clients_on_one_path_all_get_the_update() {
    let s = start(&[]).await;
    icepeak_put(&s, "/so/cool", "null").await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut ws = ws_connect(&s.icepeak_ws("/so/cool")).await;
        assert_eq!(next_text(&mut ws).await, "null");
        clients.push(ws);
    }
    icepeak_put(&s, "/so/cool", r#"{"status":"freezing"}"#).await;
    for ws in &mut clients {
        assert_eq!(next_json(ws).await, json!({"status":"freezing"}));
    }
    stop(s).await;
}
