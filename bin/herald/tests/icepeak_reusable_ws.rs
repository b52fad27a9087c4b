//! The `?method=reusable` multi-subscription WebSocket protocol on the real binary
//! (seed-contracts 1.4): reply shapes, updates, unsubscribe, malformed requests, close codes,
//! the first-subscription deadline and token checks.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "reusable-secret";

async fn reusable(s: &herald_testkit::Server) -> Ws {
    ws_connect(&s.icepeak_ws("/?method=reusable")).await
}

fn subscribe(paths: &[&str]) -> String {
    json!({"type": "subscribe", "paths": paths}).to_string()
}

fn ok_subscribed(paths: Value) -> Value {
    json!({
        "type": "subscribe",
        "code": 200,
        "message": "You've been successfully subscribed to the paths",
        "extra": {},
        "paths": paths,
    })
}

#[tokio::test]
async fn subscribe_reply_update_and_unsubscribe_have_icepeaks_shapes() {
    let s = start(&[]).await;
    icepeak_put(&s, "/a/b", r#"{"k":[1,2]}"#).await;
    icepeak_put(&s, "/c", "3").await;
    let mut ws = reusable(&s).await;

    send_text(&mut ws, &subscribe(&["a/b", "c", "missing/x"])).await;
    assert_eq!(
        next_json(&mut ws).await,
        ok_subscribed(json!([
            {"path": "a/b", "value": {"k": [1, 2]}},
            {"path": "c", "value": 3},
            {"path": "missing/x", "value": null},
        ]))
    );

    // A write at a subscribed path.
    icepeak_put(&s, "/a/b", "5").await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "update", "path": "a/b", "value": 5})
    );
    // A write above: the full value at the subscribed path.
    icepeak_put(&s, "/missing", r#"{"x":{"deep":true}}"#).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "update", "path": "missing/x", "value": {"deep": true}})
    );
    // A write below.
    icepeak_put(&s, "/missing/x/more", "1").await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "update", "path": "missing/x", "value": {"deep": true, "more": 1}})
    );
    // Removal: null.
    let r = delete(&format!("{}/c?durable", s.icepeak_url())).await;
    assert_eq!(r.status, 202);
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "update", "path": "c", "value": null})
    );
    // A sibling: nothing.
    icepeak_put(&s, "/a/z", "1").await;
    assert_silent(&mut ws, QUIET).await;

    // Unsubscribe lists only the paths that were subscribed.
    send_text(
        &mut ws,
        r#"{"type":"unsubscribe","paths":["a/b","never/subscribed"]}"#,
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({
            "type": "unsubscribe",
            "paths": ["a/b"],
            "code": 200,
            "message": "You've been successfully unsubscribed from the paths",
            "extra": {},
        })
    );
    icepeak_put(&s, "/a/b", "6").await;
    assert_silent(&mut ws, QUIET).await;
    // The other subscriptions still work.
    icepeak_put(&s, "/c", "7").await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "update", "path": "c", "value": 7})
    );
    // Unsubscribing twice: nothing left to remove.
    send_text(&mut ws, r#"{"type":"unsubscribe","paths":["a/b"]}"#).await;
    assert_eq!(next_json(&mut ws).await["paths"], json!([]));
    stop(s).await;
}

#[tokio::test]
async fn paths_may_have_a_leading_slash_and_the_root_can_be_subscribed() {
    let s = start(&[]).await;
    icepeak_put(&s, "/r", "1").await;
    let mut ws = reusable(&s).await;
    send_text(&mut ws, &subscribe(&[""])).await;
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["code"], 200, "{reply}");
    assert_eq!(reply["paths"], json!([{"path": "", "value": {"r": 1}}]));
    icepeak_put(&s, "/r", "2").await;
    let update = next_json(&mut ws).await;
    assert_eq!(update["type"], "update");
    assert_eq!(update["value"], json!({"r": 2}));
    stop(s).await;
}

#[tokio::test]
async fn many_quick_writes_coalesce_to_the_final_value() {
    const WRITES: u64 = 200;
    let s = start(&[]).await;
    let mut ws = reusable(&s).await;
    send_text(&mut ws, &subscribe(&["n"])).await;
    assert_eq!(next_json(&mut ws).await["code"], 200);
    let c = client();
    for i in 1..=WRITES {
        let r = send(c.put(format!("{}/n", s.icepeak_url())).body(i.to_string())).await;
        assert_eq!(r.status, 202);
    }
    let mut last = 0;
    let mut frames = 0;
    while last != WRITES {
        let m = next_json(&mut ws).await;
        assert_eq!(m["type"], "update");
        let v = m["value"].as_u64().expect("number");
        assert!(v > last, "{v} after {last}");
        last = v;
        frames += 1;
    }
    assert!(frames <= WRITES);
    assert_silent(&mut ws, QUIET).await;
    stop(s).await;
}

#[tokio::test]
async fn malformed_paths_get_400_without_a_paths_key_and_the_connection_stays_open() {
    let s = start(&[]).await;
    let mut ws = reusable(&s).await;
    let cases = [
        (r#"{"type":"subscribe","paths":"a"}"#, "subscribe"),
        (r#"{"type":"subscribe"}"#, "subscribe"),
        (r#"{"type":"subscribe","paths":["a",1]}"#, "subscribe"),
        (r#"{"type":"subscribe","paths":[null]}"#, "subscribe"),
        (r#"{"type":"unsubscribe","paths":{"a":1}}"#, "unsubscribe"),
        (r#"{"type":"unsubscribe","paths":[["a"]]}"#, "unsubscribe"),
    ];
    for (msg, kind) in cases {
        send_text(&mut ws, msg).await;
        let reply = next_json(&mut ws).await;
        let obj = reply.as_object().expect("object reply");
        assert_eq!(reply["type"], kind, "{msg}: {reply}");
        assert_eq!(reply["code"], 400, "{msg}: {reply}");
        let expected = if kind == "subscribe" {
            "Subscribe request payload is malformed"
        } else {
            "Unsubscribe request payload is malformed"
        };
        assert_eq!(reply["message"], expected, "{msg}");
        assert!(!obj.contains_key("paths"), "{msg}: {reply}");
        assert!(obj.contains_key("extra"), "{msg}: {reply}");
    }
    // Still usable.
    send_text(&mut ws, &subscribe(&["ok"])).await;
    assert_eq!(next_json(&mut ws).await["code"], 200);
    stop(s).await;
}

async fn close_code_after(s: &herald_testkit::Server, msg: Message) -> u16 {
    let mut ws = reusable(s).await;
    within("send", ws.send(msg)).await.expect("send");
    expect_close(&mut ws).await.0
}

#[tokio::test]
async fn bad_messages_close_the_connection_with_icepeaks_codes() {
    let s = start(&[]).await;
    let big = format!(
        r#"{{"type":"subscribe","paths":["{}"]}}"#,
        "x".repeat(1_000_001)
    );
    assert_eq!(close_code_after(&s, Message::text(big)).await, 3001);
    assert_eq!(
        close_code_after(&s, Message::binary(b"{}".to_vec())).await,
        3002
    );
    assert_eq!(close_code_after(&s, Message::text("{not json")).await, 3003);
    for not_object in ["[1,2]", "\"subscribe\"", "42", "null"] {
        assert_eq!(
            close_code_after(&s, Message::text(not_object)).await,
            3004,
            "{not_object}"
        );
    }
    for bad_type in [
        r#"{"paths":["a"]}"#,
        r#"{"type":"subcribe","paths":["a"]}"#,
        r#"{"type":1,"paths":["a"]}"#,
        r#"{"type":null}"#,
    ] {
        assert_eq!(
            close_code_after(&s, Message::text(bad_type)).await,
            3005,
            "{bad_type}"
        );
    }
    // The same after a successful subscribe.
    let mut ws = reusable(&s).await;
    send_text(&mut ws, &subscribe(&["a"])).await;
    assert_eq!(next_json(&mut ws).await["code"], 200);
    send_text(&mut ws, "[]").await;
    assert_eq!(expect_close(&mut ws).await.0, 3004);
    stop(s).await;
}

#[tokio::test]
async fn a_message_of_exactly_the_limit_is_accepted() {
    let s = start(&[]).await;
    let mut ws = reusable(&s).await;
    // Pad with whitespace to exactly 1,000,000 bytes.
    let head = r#"{"type":"subscribe","paths":["a"]}"#;
    let msg = format!("{head}{}", " ".repeat(1_000_000 - head.len()));
    assert_eq!(msg.len(), 1_000_000);
    send_text(&mut ws, &msg).await;
    assert_eq!(next_json(&mut ws).await["code"], 200);
    stop(s).await;
}

#[tokio::test]
async fn no_subscription_within_the_deadline_closes_the_connection() {
    let s = start(&["--first-subscription-deadline-timeout", "300000"]).await;
    let started = std::time::Instant::now();
    let mut ws = reusable(&s).await;
    let (code, _reason) = expect_close(&mut ws).await;
    let elapsed = started.elapsed();
    assert_eq!(code, 1008);
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");

    // A failed (malformed) subscribe does not count.
    let mut ws = reusable(&s).await;
    send_text(&mut ws, r#"{"type":"subscribe","paths":"x"}"#).await;
    assert_eq!(next_json(&mut ws).await["code"], 400);
    assert_eq!(expect_close(&mut ws).await.0, 1008);

    // A subscribe in time keeps the connection open past the deadline.
    let mut ws = reusable(&s).await;
    send_text(&mut ws, &subscribe(&["d"])).await;
    assert_eq!(next_json(&mut ws).await["code"], 200);
    assert_silent(&mut ws, Duration::from_millis(600)).await;
    icepeak_put(&s, "/d", "1").await;
    assert_eq!(next_json(&mut ws).await["value"], 1);
    stop(s).await;
}

#[tokio::test]
async fn with_auth_subscribe_checks_the_token() {
    let s = start(&["--enable-jwt-auth", "--jwt-secret", SECRET]).await;
    let writer = cli_token(&["--jwt-secret", SECRET, "--path", "/:rw"]).await;
    let r = send(
        client()
            .put(format!("{}/foo/a?durable", s.icepeak_url()))
            .bearer_auth(&writer)
            .body("1"),
    )
    .await;
    assert_eq!(r.status, 202, "{r:?}");

    // The handshake itself needs no token.
    let mut ws = reusable(&s).await;

    // No token: 401.
    send_text(&mut ws, &subscribe(&["foo/a"])).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({
            "type": "subscribe",
            "code": 401,
            "message": "No authorisation token provided",
            "extra": {},
            "paths": ["foo/a"],
        })
    );

    // A garbage or badly signed token: 403, extra null.
    let forged = hs256(
        "wrong-secret",
        &json!({"icepeak": icepeak_claim(&[(&["foo"], &["read"])])}),
    );
    for token in ["garbage", forged.as_str()] {
        send_text(
            &mut ws,
            &json!({"type": "subscribe", "paths": ["foo/a"], "token": token}).to_string(),
        )
        .await;
        let reply = next_json(&mut ws).await;
        assert_eq!(reply["type"], "subscribe", "{reply}");
        assert_eq!(reply["code"], 403, "{reply}");
        assert!(
            reply["message"]
                .as_str()
                .unwrap()
                .starts_with("Error while extracting claim from JWT"),
            "{reply}"
        );
        assert_eq!(reply["extra"], Value::Null, "{reply}");
        assert_eq!(reply["paths"], json!(["foo/a"]), "{reply}");
    }

    // Valid token, some paths not allowed: 403 listing them as segment arrays.
    let reader = cli_token(&["--jwt-secret", SECRET, "--path", "foo:r"]).await;
    send_text(
        &mut ws,
        &json!({"type": "subscribe", "paths": ["foo/a", "bar/b", "foobar", "baz"], "token": reader})
            .to_string(),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({
            "type": "subscribe",
            "code": 403,
            "message": "Some paths are not authorised by the provided JWT claim",
            "extra": {"unauthorisedPaths": [["bar", "b"], ["foobar"], ["baz"]]},
            "paths": ["foo/a", "bar/b", "foobar", "baz"],
        })
    );
    // Nothing was subscribed by the refused request.
    icepeak_put_auth(&s, "/bar/b", "2", &writer).await;
    assert_silent(&mut ws, QUIET).await;

    // A write-only token does not allow reading.
    let write_only = cli_token(&["--jwt-secret", SECRET, "--path", "foo:w"]).await;
    send_text(
        &mut ws,
        &json!({"type": "subscribe", "paths": ["foo/a"], "token": write_only}).to_string(),
    )
    .await;
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["code"], 403, "{reply}");
    assert_eq!(reply["extra"]["unauthorisedPaths"], json!([["foo", "a"]]));

    // Allowed: subscribed, with updates.
    send_text(
        &mut ws,
        &json!({"type": "subscribe", "paths": ["foo/a"], "token": reader}).to_string(),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        ok_subscribed(json!([{"path": "foo/a", "value": 1}]))
    );
    icepeak_put_auth(&s, "/foo/a", "3", &writer).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "update", "path": "foo/a", "value": 3})
    );
    stop(s).await;
}

#[tokio::test]
async fn with_auth_an_unauthorised_first_subscribe_does_not_stop_the_deadline() {
    let s = start(&[
        "--enable-jwt-auth",
        "--jwt-secret",
        SECRET,
        "--first-subscription-deadline-timeout",
        "300000",
    ])
    .await;
    let mut ws = reusable(&s).await;
    send_text(&mut ws, &subscribe(&["foo"])).await;
    assert_eq!(next_json(&mut ws).await["code"], 401);
    assert_eq!(expect_close(&mut ws).await.0, 1008);
    stop(s).await;
}

async fn icepeak_put_auth(s: &herald_testkit::Server, path: &str, body: &str, token: &str) {
    let r = send(
        client()
            .put(format!("{}{path}?durable", s.icepeak_url()))
            .bearer_auth(token)
            .body(body.to_owned()),
    )
    .await;
    assert_eq!(r.status, 202, "{r:?}");
}

#[tokio::test]
async fn a_message_far_over_the_limit_still_gets_3001() {
    let s = start(&[]).await;
    let big = format!(
        r#"{{"type":"subscribe","paths":["{}"]}}"#,
        "x".repeat(3_000_000)
    );
    assert_eq!(close_code_after(&s, Message::text(big)).await, 3001);
    stop(s).await;
}

#[tokio::test]
async fn subscriptions_are_a_set_per_connection() {
    let s = start(&[]).await;
    let mut ws = reusable(&s).await;
    // The same path twice in one request, and again in a second request.
    send_text(&mut ws, &subscribe(&["dup", "dup"])).await;
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["code"], 200, "{reply}");
    send_text(&mut ws, &subscribe(&["dup"])).await;
    assert_eq!(next_json(&mut ws).await["code"], 200);
    // One update per write, not one per subscribe.
    icepeak_put(&s, "/dup", "1").await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "update", "path": "dup", "value": 1})
    );
    assert_silent(&mut ws, QUIET).await;
    // One unsubscribe removes it.
    send_text(&mut ws, r#"{"type":"unsubscribe","paths":["dup"]}"#).await;
    assert_eq!(next_json(&mut ws).await["paths"], json!(["dup"]));
    icepeak_put(&s, "/dup", "2").await;
    assert_silent(&mut ws, QUIET).await;
    stop(s).await;
}

#[tokio::test]
async fn updates_and_unsubscribe_replies_use_the_path_as_the_client_wrote_it() {
    let s = start(&[]).await;
    let mut ws = reusable(&s).await;
    send_text(&mut ws, &subscribe(&["/lead/x"])).await;
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["paths"], json!([{"path": "/lead/x", "value": null}]));
    icepeak_put(&s, "/lead/x", "1").await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "update", "path": "/lead/x", "value": 1})
    );
    send_text(&mut ws, r#"{"type":"unsubscribe","paths":["/lead/x"]}"#).await;
    assert_eq!(next_json(&mut ws).await["paths"], json!(["/lead/x"]));
    stop(s).await;
}
