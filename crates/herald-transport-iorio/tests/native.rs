//! Herald's native topics API: /topics, /events, /retention.

mod common;

use common::{TestServer, config, json_body};
use serde_json::{Value, json};

async fn post(
    s: &TestServer,
    token: &str,
    path: &str,
    ct: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = s
        .http
        .post(s.url(path))
        .header("authorization", format!("Bearer {token}"))
        .body(body);
    if let Some(ct) = ct {
        req = req.header("content-type", ct);
    }
    req.send().await.unwrap()
}

async fn get(s: &TestServer, token: Option<&str>, path: &str) -> reqwest::Response {
    let mut req = s.http.get(s.url(path));
    if let Some(t) = token {
        req = req.header("x-session", t);
    }
    req.send().await.unwrap()
}

async fn assert_herald_error(resp: reqwest::Response, status: u16) -> String {
    assert_eq!(resp.status(), status);
    let body = json_body(resp).await;
    body["error"].as_str().expect("an error message").to_owned()
}

#[tokio::test]
async fn append_any_content_type_and_read_back() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;

    let resp = post(
        &s,
        &admin,
        "/events/a/b",
        Some("text/plain; charset=utf-8"),
        b"hello".to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["location"], "/events/a/b?from=1&limit=1");
    let body = json_body(resp).await;
    assert_eq!(body["seq"], 1);
    let epoch = body["epoch"].as_u64().unwrap();
    assert!(body["t"].is_u64());

    let resp = post(&s, &admin, "/events/a/b", None, vec![0xff, 0x00, 0x01]).await;
    assert_eq!(json_body(resp).await["seq"], 2);
    let resp = post(
        &s,
        &admin,
        "/events/a/b",
        Some("application/json"),
        br#"{"x":1}"#.to_vec(),
    )
    .await;
    assert_eq!(json_body(resp).await["seq"], 3);

    // JSON content types must carry JSON.
    let resp = post(
        &s,
        &admin,
        "/events/a/b",
        Some("application/json"),
        b"{nope".to_vec(),
    )
    .await;
    assert_herald_error(resp, 400).await;

    let resp = get(&s, Some(&admin), "/events/a/b?from=1").await;
    let v = json_body(resp).await;
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["epoch"], epoch);
    assert_eq!(v["first"], 1);
    assert_eq!(v["last"], 3);
    assert_eq!(
        v["events"][0]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "t")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<serde_json::Map<_, _>>(),
        json!({"seq": 1, "ct": "text/plain; charset=utf-8", "data": "hello"})
            .as_object()
            .unwrap()
            .clone()
    );
    assert_eq!(v["events"][1]["ct"], "application/octet-stream");
    assert_eq!(v["events"][1]["enc"], "base64");
    assert_eq!(v["events"][1]["data"], "/wAB");
    assert_eq!(v["events"][2]["data"], json!({"x": 1}));

    // The IorioDB view of the same topic embeds non-JSON as strings with meta.ct.
    let resp = get(&s, Some(&admin), "/streams/a/b?limit=3&from=1").await;
    let v = json_body(resp).await;
    assert_eq!(v[0]["meta"]["ct"], "text/plain; charset=utf-8");
    assert_eq!(v[0]["data"], "hello");
    assert_eq!(v[1]["meta"]["enc"], "base64");
    assert!(v[2]["meta"].get("ct").is_none());
}

#[tokio::test]
async fn read_windows_and_order() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;
    for i in 1..=10 {
        post(
            &s,
            &admin,
            "/events/w/t",
            Some("application/json"),
            i.to_string().into_bytes(),
        )
        .await;
    }
    let seqs = |v: Value| -> Vec<u64> {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };
    let q = |query: &'static str| {
        let s = &s;
        let admin = admin.clone();
        async move { json_body(get(s, Some(&admin), &format!("/events/w/t{query}")).await).await }
    };
    assert_eq!(seqs(q("?limit=3").await), [8, 9, 10]);
    assert_eq!(seqs(q("?from=4&limit=2").await), [4, 5]);
    assert_eq!(seqs(q("?before=4&limit=2").await), [2, 3]);
    assert_eq!(seqs(q("?from=3&before=6").await), [3, 4, 5]);
    assert_eq!(seqs(q("?limit=3&order=desc").await), [10, 9, 8]);
    assert_eq!(seqs(q("?from=9").await), [9, 10]);

    let resp = get(&s, Some(&admin), "/events/w/t?limit=x").await;
    assert_herald_error(resp, 400).await;
    let resp = get(&s, Some(&admin), "/events/w/t?order=sideways").await;
    assert_herald_error(resp, 400).await;
    let resp = get(&s, Some(&admin), "/events/w/missing").await;
    assert_herald_error(resp, 404).await;
}

#[tokio::test]
async fn conditional_append() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;
    let resp = post(
        &s,
        &admin,
        "/events/c/t?expect_last=0",
        Some("text/plain"),
        b"1".to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let resp = post(
        &s,
        &admin,
        "/events/c/t?expect_last=0",
        Some("text/plain"),
        b"2".to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 409);
    assert_eq!(
        json_body(resp).await,
        json!({"error": "conflict", "expected": 0, "got": 1})
    );
    let resp = post(
        &s,
        &admin,
        "/events/c/t?expect_last=1",
        Some("text/plain"),
        b"2".to_vec(),
    )
    .await;
    assert_eq!(json_body(resp).await["seq"], 2);
}

#[tokio::test]
async fn topics_metadata_listing_and_delete() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;
    let bob = s.user("bob").await;
    post(
        &s,
        &admin,
        "/events/x/one",
        Some("text/plain"),
        b"abc".to_vec(),
    )
    .await;
    post(
        &s,
        &admin,
        "/events/x/two",
        Some("text/plain"),
        b"abc".to_vec(),
    )
    .await;
    post(
        &s,
        &bob,
        "/events/_user_bob/mine",
        Some("text/plain"),
        b"abc".to_vec(),
    )
    .await;

    let resp = get(&s, Some(&admin), "/topics/x/one").await;
    let v = json_body(resp).await;
    assert_eq!(v["path"], "/x/one");
    assert_eq!(v["first"], 1);
    assert_eq!(v["last"], 1);
    assert!(v["epoch"].as_u64().unwrap() > 0);
    assert!(v["bytes"].as_u64().unwrap() >= 3);
    assert!(v["retention"].is_object());
    assert_eq!(v["retention_override"], false);
    assert_herald_error(get(&s, Some(&admin), "/topics/x/none").await, 404).await;

    // Listing shows what the caller may list.
    let resp = get(&s, Some(&admin), "/topics").await;
    assert_eq!(
        json_body(resp).await,
        json!({"topics": ["/_user_bob/mine", "/x/one", "/x/two"], "truncated": false})
    );
    let resp = get(&s, Some(&bob), "/topics/").await;
    assert_eq!(
        json_body(resp).await,
        json!({"topics": ["/_user_bob/mine"], "truncated": false})
    );
    let resp = get(&s, Some(&admin), "/topics/x?list&limit=1").await;
    assert_eq!(
        json_body(resp).await,
        json!({"topics": ["/x/one"], "truncated": true})
    );

    // Permissions: anonymous 401 (+WWW-Authenticate), users 403.
    let resp = get(&s, None, "/topics/x/one").await;
    assert_eq!(resp.headers()["www-authenticate"], "jwt");
    assert_herald_error(resp, 401).await;
    assert_herald_error(get(&s, Some(&bob), "/topics/x/one").await, 403).await;
    let resp = s
        .http
        .delete(s.url("/topics/x/one"))
        .header("x-session", &bob)
        .send()
        .await
        .unwrap();
    assert_herald_error(resp, 403).await;
    // Bad token: 401 JSON.
    assert_herald_error(get(&s, Some("junk"), "/topics/x/one").await, 401).await;
    // Unsupported method: 405 JSON.
    let resp = s
        .http
        .put(s.url("/topics/x/one"))
        .header("x-session", &admin)
        .send()
        .await
        .unwrap();
    assert_herald_error(resp, 405).await;

    let resp = s
        .http
        .delete(s.url("/topics/x/one"))
        .header("x-session", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_herald_error(get(&s, Some(&admin), "/topics/x/one").await, 404).await;
    // The root is not a topic.
    let resp = post(&s, &admin, "/events/", Some("text/plain"), b"x".to_vec()).await;
    assert_herald_error(resp, 400).await;
    assert_herald_error(get(&s, Some(&admin), "/retention").await, 400).await;
}

#[tokio::test]
async fn retention_overrides() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;
    let bob = s.user("bob").await;
    for i in 0..10 {
        post(
            &s,
            &admin,
            "/events/r/t",
            Some("application/json"),
            i.to_string().into_bytes(),
        )
        .await;
    }
    let resp = get(&s, Some(&admin), "/retention/r/t").await;
    assert_eq!(
        json_body(resp).await,
        json!({"path": "/r/t", "retention": {"memory_only": false}, "override": false})
    );
    let resp = s
        .http
        .put(s.url("/retention/r/t"))
        .header("x-session", &admin)
        .json(&json!({"max_events": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        json_body(resp).await,
        json!({"path": "/r/t", "retention": {"max_events": 3, "memory_only": false}, "override": true})
    );
    // Enforced within the (test) retention interval.
    let mut first = 0;
    for _ in 0..200 {
        let v = json_body(get(&s, Some(&admin), "/topics/r/t").await).await;
        first = v["first"].as_u64().unwrap();
        if first == 8 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(first, 8);

    // Invalid retention: 400. Non-admin: 403.
    let resp = s
        .http
        .put(s.url("/retention/r/t"))
        .header("x-session", &admin)
        .json(&json!({"max_evnts": 3}))
        .send()
        .await
        .unwrap();
    assert_herald_error(resp, 400).await;
    assert_herald_error(get(&s, Some(&bob), "/retention/r/t").await, 403).await;
    // Not even on topics bob may grant on (his own bucket): overrides replace the operator's
    // rules, so a user could lift its own size limits.
    let resp = s
        .http
        .put(s.url("/retention/_user_bob/t"))
        .header("x-session", &bob)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_herald_error(resp, 403).await;
    let resp = get(&s, Some(&admin), "/retention/_user_bob/t").await;
    assert_eq!(json_body(resp).await["override"], false);
    let resp = s
        .http
        .delete(s.url("/retention/_user_bob/t"))
        .header("x-session", &bob)
        .send()
        .await
        .unwrap();
    assert_herald_error(resp, 403).await;

    let resp = s
        .http
        .delete(s.url("/retention/r/t"))
        .header("x-session", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = get(&s, Some(&admin), "/retention/r/t").await;
    assert_eq!(json_body(resp).await["override"], false);
}
