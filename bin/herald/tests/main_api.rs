//! Herald's main HTTP API (`--http`) on the real binary: `/docs/{path}` GET/PUT/DELETE/PATCH,
//! `/health`, the shared tree with the Icepeak listener, and auth.

mod common;

use common::*;
use serde_json::{Value, json};

fn docs(s: &herald_testkit::Server, path: &str) -> String {
    format!("{}/docs{path}", s.http_url())
}

async fn put_doc(s: &herald_testkit::Server, path: &str, value: &Value) {
    let r = send(
        client()
            .put(docs(s, path))
            .header("Content-Type", "application/json")
            .body(value.to_string()),
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (204, ""), "PUT {path}: {r:?}");
}

async fn get_doc(s: &herald_testkit::Server, path: &str) -> Option<Value> {
    let r = get(&docs(s, path)).await;
    match r.status {
        200 => {
            assert_eq!(r.content_type.as_deref(), Some("application/json"));
            Some(r.json())
        }
        404 => {
            r.assert_json_error(404);
            None
        }
        _ => panic!("GET {path}: {r:?}"),
    }
}

async fn patch(s: &herald_testkit::Server, path: &str, content_type: &str, body: &str) -> Resp {
    send(
        client()
            .patch(docs(s, path))
            .header("Content-Type", content_type)
            .body(body.to_owned()),
    )
    .await
}

#[tokio::test]
async fn get_put_delete() {
    let s = start(&[]).await;
    assert_eq!(get_doc(&s, "/a").await, None);
    put_doc(&s, "/a/b", &json!({"c": [1, 2]})).await;
    // Every write is durable before it is answered: visible right away.
    assert_eq!(get_doc(&s, "/a/b/c").await, Some(json!([1, 2])));
    assert_eq!(
        get_doc(&s, "").await,
        Some(json!({"a": {"b": {"c": [1, 2]}}}))
    );
    assert_eq!(
        get_doc(&s, "/").await,
        Some(json!({"a": {"b": {"c": [1, 2]}}}))
    );
    // PUT without a Content-Type works too.
    let r = put(&docs(&s, "/a/x"), "\"y\"").await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(get_doc(&s, "/a/x").await, Some(json!("y")));

    let r = delete(&docs(&s, "/a/b")).await;
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    assert_eq!(get_doc(&s, "/a").await, Some(json!({"x": "y"})));
    // Deleting something absent is fine.
    assert_eq!(delete(&docs(&s, "/a/b")).await.status, 204);

    let r = get(&format!("{}/health", s.http_url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"status": "ok"}));
    // Unknown routes and methods.
    get(&format!("{}/nope", s.http_url()))
        .await
        .assert_json_error(404);
    send(client().post(docs(&s, "/a")).body("1"))
        .await
        .assert_json_error(405);
    stop(s).await;
}

#[tokio::test]
async fn merge_patch_and_json_patch() {
    let s = start(&[]).await;
    put_doc(&s, "/p", &json!({"a": 1, "b": {"c": 2, "d": 3}})).await;

    let r = patch(
        &s,
        "/p",
        "application/merge-patch+json",
        r#"{"a":null,"b":{"c":20},"e":5}"#,
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (204, ""), "{r:?}");
    assert_eq!(
        get_doc(&s, "/p").await,
        Some(json!({"b": {"c": 20, "d": 3}, "e": 5}))
    );
    // With parameters on the media type, and at a missing path (treated as null).
    let r = patch(
        &s,
        "/fresh",
        "application/merge-patch+json; charset=utf-8",
        r#"{"k":1,"gone":null}"#,
    )
    .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(get_doc(&s, "/fresh").await, Some(json!({"k": 1})));

    let r = patch(
        &s,
        "/p",
        "application/json-patch+json",
        r#"[{"op":"test","path":"/e","value":5},{"op":"add","path":"/b/x","value":[1]},{"op":"remove","path":"/e"}]"#,
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (204, ""), "{r:?}");
    assert_eq!(
        get_doc(&s, "/p").await,
        Some(json!({"b": {"c": 20, "d": 3, "x": [1]}}))
    );

    // A failing test op: 409, nothing applied (not even the ops before it).
    let before = get_doc(&s, "/").await;
    let r = patch(
        &s,
        "/p",
        "application/json-patch+json",
        r#"[{"op":"add","path":"/z","value":1},{"op":"test","path":"/b/c","value":999}]"#,
    )
    .await;
    r.assert_json_error(409);
    assert_eq!(get_doc(&s, "/").await, before);
    // Removing something absent: also 409.
    patch(
        &s,
        "/p",
        "application/json-patch+json",
        r#"[{"op":"remove","path":"/nope"}]"#,
    )
    .await
    .assert_json_error(409);

    // Not a JSON Patch document: 400.
    for bad in [
        r#"{"op":"add"}"#,
        r#"[{"op":"frobnicate","path":"/a"}]"#,
        "[1]",
    ] {
        patch(&s, "/p", "application/json-patch+json", bad)
            .await
            .assert_json_error(400);
    }
    // Not JSON at all: 400.
    patch(&s, "/p", "application/merge-patch+json", "{oops")
        .await
        .assert_json_error(400);
    // Another content type, or none: 415.
    for ct in ["application/json", "text/plain"] {
        patch(&s, "/p", ct, r#"{"a":1}"#)
            .await
            .assert_json_error(415);
    }
    send(client().patch(docs(&s, "/p")).body(r#"{"a":1}"#))
        .await
        .assert_json_error(415);
    assert_eq!(get_doc(&s, "/").await, before);
    stop(s).await;
}

#[tokio::test]
async fn json_patch_bombs_are_refused() {
    let s = start(&[]).await;
    put_doc(&s, "/bomb", &json!(["0123456789"])).await;
    // Each copy doubles the array: 40 of them would need 2^40 elements.
    let doubling = vec![json!({"op": "copy", "from": "", "path": "/-"}); 40];
    patch(
        &s,
        "/bomb",
        "application/json-patch+json",
        &Value::Array(doubling).to_string(),
    )
    .await
    .assert_json_error(413);
    // Copying a value into its own innermost array doubles its depth.
    let deep = (1..60).fold(json!([]), |v, _| json!([v]));
    put_doc(&s, "/deep", &deep).await;
    let innermost = format!("{}/-", "/0".repeat(59));
    let deeper = vec![json!({"op": "copy", "from": "", "path": innermost}); 12];
    patch(
        &s,
        "/deep",
        "application/json-patch+json",
        &Value::Array(deeper).to_string(),
    )
    .await
    .assert_json_error(400);
    assert_eq!(get_doc(&s, "/bomb").await, Some(json!(["0123456789"])));
    assert_eq!(get_doc(&s, "/deep").await, Some(deep));
    stop(s).await;
}

#[tokio::test]
async fn the_tree_is_shared_with_the_icepeak_listener() {
    let s = start(&[]).await;
    // Icepeak subscribers see main-API writes.
    let mut ws = ws_connect(&s.icepeak_ws("/shared/k")).await;
    assert_eq!(next_text(&mut ws).await, "null");
    let mut reusable = ws_connect(&s.icepeak_ws("/?method=reusable")).await;
    send_text(&mut reusable, r#"{"type":"subscribe","paths":["shared"]}"#).await;
    assert_eq!(next_json(&mut reusable).await["code"], 200);

    put_doc(&s, "/shared/k", &json!({"from": "http"})).await;
    assert_eq!(next_json(&mut ws).await, json!({"from": "http"}));
    assert_eq!(
        next_json(&mut reusable).await,
        json!({"type": "update", "path": "shared", "value": {"k": {"from": "http"}}})
    );
    // Read on the other listener.
    assert_eq!(
        icepeak_get(&s, "/shared/k").await,
        Some(json!({"from": "http"}))
    );

    // Icepeak writes are visible on the main API.
    icepeak_put(&s, "/shared/k/from", "\"icepeak\"").await;
    assert_eq!(
        get_doc(&s, "/shared").await,
        Some(json!({"k": {"from": "icepeak"}}))
    );
    assert_eq!(next_json(&mut ws).await, json!({"from": "icepeak"}));

    // Patches and deletes notify too.
    let r = patch(
        &s,
        "/shared/k",
        "application/merge-patch+json",
        r#"{"n":1}"#,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(next_json(&mut ws).await, json!({"from": "icepeak", "n": 1}));
    assert_eq!(delete(&docs(&s, "/shared")).await.status, 204);
    assert_eq!(next_json(&mut ws).await, Value::Null);
    assert_eq!(icepeak_get(&s, "/shared").await, None);
    stop(s).await;
}

#[tokio::test]
async fn with_auth_tokens_are_required_and_modes_checked() {
    const SECRET: &str = "main-api-secret";
    let s = start(&["--enable-jwt-auth", "--jwt-secret", SECRET]).await;
    let reader = cli_token(&["--jwt-secret", SECRET, "--path", "foo:r"]).await;
    let writer = cli_token(&["--jwt-secret", SECRET, "--path", "foo:rw"]).await;

    // No token: 401.
    let r = get(&docs(&s, "/foo")).await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = put(&docs(&s, "/foo"), "1").await;
    assert_eq!(r.status, 401, "{r:?}");
    // Bad token: 401.
    let r = send(client().get(docs(&s, "/foo")).bearer_auth("garbage")).await;
    assert_eq!(r.status, 401, "{r:?}");

    // Token without write: 403, no change.
    for rb in [
        client().put(docs(&s, "/foo/a")).body("1"),
        client().delete(docs(&s, "/foo/a")),
        client()
            .patch(docs(&s, "/foo/a"))
            .header("Content-Type", "application/merge-patch+json")
            .body("{}"),
    ] {
        send(rb.bearer_auth(&reader)).await.assert_json_error(403);
    }
    // Reading outside the grant: 403.
    send(client().get(docs(&s, "/foobar")).bearer_auth(&reader))
        .await
        .assert_json_error(403);

    // With write.
    let r = send(
        client()
            .put(docs(&s, "/foo/a"))
            .bearer_auth(&writer)
            .body("1"),
    )
    .await;
    assert_eq!(r.status, 204, "{r:?}");
    let r = send(client().get(docs(&s, "/foo/a")).bearer_auth(&reader)).await;
    assert_eq!((r.status, r.body.as_str()), (200, "1"));
    // The query parameter works too.
    let r = get(&format!("{}?access_token={reader}", docs(&s, "/foo/a"))).await;
    assert_eq!(r.status, 200, "{r:?}");
    // /health needs no token.
    assert_eq!(get(&format!("{}/health", s.http_url())).await.status, 200);
    stop(s).await;
}

#[tokio::test]
async fn early_errors_keep_keep_alive_clients_working() {
    const SECRET: &str = "main-api-secret";
    let s = start(&["--enable-jwt-auth", "--jwt-secret", SECRET]).await;
    let reader = cli_token(&["--jwt-secret", SECRET, "--path", "foo:r"]).await;
    let addr = s.addr("http");
    for (head, status) in [
        // No token.
        ("PUT /docs/foo/x HTTP/1.1".to_owned(), 401),
        // Token without write.
        (
            format!("PUT /docs/foo/x?access_token={reader} HTTP/1.1"),
            403,
        ),
        // Bad path, unknown method, unknown route.
        ("PUT /docs/%ff HTTP/1.1".to_owned(), 400),
        ("POST /docs/foo HTTP/1.1".to_owned(), 405),
        ("PUT /nope HTTP/1.1".to_owned(), 404),
    ] {
        let (first, second) =
            early_answer_keeps_connection_usable(addr, &head, b"3", "/health").await;
        assert_eq!(first.status, status, "{head}: {first:?}");
        if let Some(second) = second {
            assert_eq!(second.status, 200, "{head}: {second:?}");
        }
    }
    stop(s).await;
}

/// Handlers see each client's own address (`src/http1.rs` gives it to them): the login rate
/// limit, a bucket of attempts per client IP, holds one client back and not another. Without
/// the address every client would share one bucket.
#[tokio::test]
async fn the_login_rate_limit_is_per_client_address() {
    let s = start(&[]).await;
    let url = format!("{}/sessions", s.http_url());
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(T)
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .expect("reqwest client")
    };
    let login = |client: &reqwest::Client| {
        send(
            client
                .post(&url)
                .json(&json!({"username": "nobody", "password": "wrong"})),
        )
    };
    let first = from([127, 0, 0, 1]);
    let mut statuses = Vec::new();
    while statuses.last() != Some(&429) && statuses.len() < 20 {
        statuses.push(login(&first).await.status);
    }
    let (last, before) = statuses.split_last().expect("one attempt at least");
    assert!(
        *last == 429 && !before.is_empty() && before.iter().all(|s| *s == 401),
        "{statuses:?}"
    );
    let other = login(&from([127, 0, 0, 2])).await;
    assert_eq!(
        other.status, 401,
        "another address has attempts left: {other:?}"
    );
    assert_eq!(
        login(&first).await.status,
        429,
        "the first is still held back"
    );
    stop(s).await;
}
