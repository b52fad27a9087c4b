//! Hostile and malformed requests on both data listeners: invalid JSON, oversize bodies, deep
//! nesting, invalid UTF-8 and dot segments in paths. Each must be refused without changing
//! the tree, and the server must stay healthy.

mod common;

use common::*;
use serde_json::{Value, json};

const LIMIT: &str = "1024";

async fn server() -> herald_testkit::Server {
    let s = start(&["--max-body-bytes", LIMIT]).await;
    icepeak_put(&s, "/", r#"{"keep":{"me":1}}"#).await;
    s
}

async fn assert_unchanged(s: &herald_testkit::Server) {
    assert_eq!(icepeak_get(s, "/").await, Some(json!({"keep":{"me":1}})));
}

/// `depth` nested arrays around a 0.
fn nested(depth: usize) -> String {
    format!("{}0{}", "[".repeat(depth), "]".repeat(depth))
}

/// The URL path of `n` segments `s0/s1/...`.
fn segments(n: usize) -> String {
    (0..n).map(|i| format!("/s{i}")).collect()
}

/// PUTs on both listeners: (Icepeak with `?durable`, Icepeak without, main API).
async fn put_everywhere(s: &herald_testkit::Server, path: &str, body: &str) -> [Resp; 3] {
    [
        put(&format!("{}{path}?durable", s.icepeak_url()), body).await,
        put(&format!("{}{path}", s.icepeak_url()), body).await,
        put(&format!("{}/docs{path}", s.http_url()), body).await,
    ]
}

#[tokio::test]
async fn invalid_json_bodies_are_400_with_a_json_error() {
    let s = server().await;
    for body in ["{oops", "", "[1,2", "{\"a\":1} trailing", "nul", "'single'"] {
        for r in put_everywhere(&s, "/keep", body).await {
            r.assert_json_error(400);
        }
    }
    // Invalid UTF-8 inside a JSON string.
    let r = raw_request(
        s.addr("icepeak"),
        "PUT",
        "/keep?durable",
        &[],
        b"\"\xff\xfe\"",
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.json()["error"].is_string());
    // JSON patch bodies that are not JSON.
    let r = send(
        client()
            .patch(format!("{}/docs/keep", s.http_url()))
            .header("Content-Type", "application/json-patch+json")
            .body("[{"),
    )
    .await;
    r.assert_json_error(400);
    assert_unchanged(&s).await;
    stop(s).await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let s = server().await;
    // A valid JSON string of 1025 bytes.
    let big = format!("\"{}\"", "x".repeat(1023));
    assert_eq!(big.len(), 1025);
    for r in put_everywhere(&s, "/keep", &big).await {
        r.assert_json_error(413);
    }
    // Exactly at the limit is fine.
    let ok = format!("\"{}\"", "x".repeat(1022));
    assert_eq!(ok.len(), 1024);
    let r = put(&format!("{}/ok?durable", s.icepeak_url()), &ok).await;
    assert_eq!(r.status, 202, "{r:?}");
    let r = put(&format!("{}/docs/ok2", s.http_url()), &ok).await;
    assert_eq!(r.status, 204, "{r:?}");

    // Without a Content-Length (chunked), the limit still holds.
    let chunked = format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    for (listener, target) in [("icepeak", "/keep?durable"), ("http", "/docs/keep")] {
        let r = raw_request(
            s.addr(listener),
            "PUT",
            target,
            &[("Transfer-Encoding", "chunked")],
            chunked.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 413, "{listener}: {r:?}");
        assert!(r.json()["error"].is_string());
    }
    // A lying Content-Length above the limit is refused before the body is read.
    let r = raw_request(
        s.addr("icepeak"),
        "PUT",
        "/keep?durable",
        &[("Content-Length", "1000000")],
        b"",
    )
    .await;
    assert_eq!(r.status, 413, "{r:?}");

    assert_eq!(icepeak_get(&s, "/keep").await, Some(json!({"me":1})));
    assert_eq!(
        icepeak_get(&s, "/ok").await,
        Some(Value::String("x".repeat(1022)))
    );
    stop(s).await;
}

#[tokio::test]
async fn too_deep_documents_are_400() {
    let s = server().await;
    // Beyond serde_json's own recursion limit.
    for r in put_everywhere(&s, "/keep", &nested(200)).await {
        r.assert_json_error(400);
    }
    // Parses, but 20 path segments + depth 90 is over Herald's limit of 100.
    let path = segments(20);
    let value = nested(89); // 89 arrays around a scalar: depth 90
    let [durable, _queued, http] = put_everywhere(&s, &path, &value).await;
    durable.assert_json_error(400);
    http.assert_json_error(400);
    // The same value one level higher up fits (10 + 90 = 100).
    let r = put(
        &format!("{}{}?durable", s.icepeak_url(), segments(10)),
        &value,
    )
    .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(
        get_json(&format!("{}{}", s.icepeak_url(), segments(10))).await,
        serde_json::from_str::<Value>(&value).unwrap()
    );
    // Nothing of the refused writes landed.
    assert_eq!(icepeak_get(&s, "/keep").await, Some(json!({"me":1})));
    assert_eq!(
        icepeak_get(&s, "/s0/s1/s2/s3/s4/s5/s6/s7/s8/s9/s10").await,
        None
    );
    stop(s).await;
}

#[tokio::test]
async fn queued_icepeak_writes_that_are_too_deep_are_refused_too() {
    // Herald documents "a document deeper than 100 levels is refused with 400"; that must hold
    // for an Icepeak PUT without `?durable` as well, not only for durable ones.
    let s = server().await;
    let r = put(&format!("{}{}", s.icepeak_url(), segments(20)), &nested(89)).await;
    r.assert_json_error(400);
    // A following durable write is ordered after it, so the tree is settled now.
    icepeak_put(&s, "/after", "1").await;
    assert_eq!(icepeak_get(&s, "/s0").await, None);
    stop(s).await;
}

#[tokio::test]
async fn invalid_utf8_and_dot_segments_in_paths_are_400() {
    let s = server().await;
    let targets = [
        "/%ff",
        "/keep/%ff%fe",
        "/keep/%C3",
        "/a/%2e%2e/b",
        "/a/../b",
        "/keep/..",
        "/..",
        "/./keep",
        "/a/%2E/b",
        "/a/.%2e/b",
    ];
    for target in targets {
        for (method, body) in [("GET", ""), ("PUT", "1"), ("DELETE", "")] {
            for (listener, prefix) in [("icepeak", ""), ("http", "/docs")] {
                let r = raw_request(
                    s.addr(listener),
                    method,
                    &format!("{prefix}{target}"),
                    &[],
                    body.as_bytes(),
                )
                .await;
                assert_eq!(r.status, 400, "{method} {listener} {prefix}{target}: {r:?}");
                assert!(r.json()["error"].is_string(), "{target}: {r:?}");
            }
        }
        // The legacy WebSocket handshake too.
        let (r, _) = raw_ws_handshake(s.addr("icepeak"), target, &[]).await;
        assert_eq!(r.status, 400, "ws {target}: {r:?}");
    }
    // Reusable subscribe with a dot segment: a 400 reply, not a subscription.
    let mut ws = ws_connect(&s.icepeak_ws("/?method=reusable")).await;
    send_text(&mut ws, r#"{"type":"subscribe","paths":["a/../keep"]}"#).await;
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["code"], 400, "{reply}");
    // Three dots is just a key.
    icepeak_put(&s, "/a/.../b", "1").await;
    assert_eq!(icepeak_get(&s, "/a").await, Some(json!({"...":{"b":1}})));
    stop(s).await;
}

#[tokio::test]
async fn the_server_stays_healthy_after_bad_input() {
    let s = server().await;
    // A burst of bad requests of every kind.
    for _ in 0..5 {
        put_everywhere(&s, "/keep", "{oops").await;
        put_everywhere(&s, "/keep", &nested(300)).await;
        put_everywhere(&s, "/keep", &"9".repeat(2000)).await;
        raw_request(s.addr("icepeak"), "GET", "/%ff", &[], b"").await;
        raw_request(s.addr("http"), "PUT", "/docs/../x", &[], b"1").await;
        // Garbage that is not HTTP at all.
        raw_garbage(s.addr("icepeak")).await;
        raw_garbage(s.addr("http")).await;
    }
    assert_unchanged(&s).await;
    icepeak_put(&s, "/keep/me", "2").await;
    assert_eq!(icepeak_get(&s, "/keep/me").await, Some(json!(2)));
    let r = get(&format!("{}/health", s.http_url())).await;
    assert_eq!(r.status, 200);
    let r = get(&format!("{}/healthcheck", s.metrics_url())).await;
    assert_eq!(r.status, 200);
    stop(s).await;
}

async fn raw_garbage(addr: std::net::SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within("garbage request", async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"\x00\x01\x02 NOT HTTP\r\n\r\n")
            .await
            .expect("write");
        // The server answers 400 or just closes; either way it must not hang.
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf).await;
    })
    .await;
}

#[tokio::test]
async fn early_errors_on_the_icepeak_listener_keep_keep_alive_clients_working() {
    let s = server().await;
    let addr = s.addr("icepeak");
    for (head, status) in [
        ("PUT /%ff HTTP/1.1", 400),
        ("PUT /a/%2e%2e/b HTTP/1.1", 400),
        ("FOO /keep HTTP/1.1", 400),
        ("POST /keep HTTP/1.1", 404),
        ("DELETE /nothing HTTP/1.1", 202),
    ] {
        let (first, second) = early_answer_keeps_connection_usable(addr, head, b"3", "/keep").await;
        assert_eq!(first.status, status, "{head}: {first:?}");
        if let Some(second) = second {
            assert_eq!(second.status, 200, "{head}: {second:?}");
        }
    }
    assert_unchanged(&s).await;
    stop(s).await;
}
