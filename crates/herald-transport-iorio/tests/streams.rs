//! IorioDB stream routes: append, query, patch, delete, listing (seed contract 2.3, 2.4).

mod common;

use common::{TestServer, assert_error, assert_no_perm, config, json_body};
use serde_json::{Value, json};

#[tokio::test]
async fn post_then_query() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;

    let resp = s.post_event(&admin, "b", "s", &json!({"n": 1})).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["location"], "/streams/b/s/?limit=1&from=1");
    // The body was read: the connection stays open for the next append.
    assert!(resp.headers().get("connection").is_none());
    let body = json_body(resp).await;
    assert_eq!(body["meta"]["id"], 1);
    assert!(body["meta"]["t"].as_u64().unwrap() > 1_600_000_000_000);
    for n in 2..=5 {
        assert_eq!(s.append(&admin, "b", "s", &json!({"n": n})).await, n);
    }

    let get = |q: &'static str| {
        let s = &s;
        let admin = admin.clone();
        async move {
            let resp = s
                .http
                .get(s.url(&format!("/streams/b/s{q}")))
                .header("x-session", admin)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let v = json_body(resp).await;
            v.as_array()
                .unwrap()
                .iter()
                .map(|e| e["data"]["n"].as_u64().unwrap())
                .collect::<Vec<_>>()
        }
    };
    // limit defaults to 1: the last event.
    assert_eq!(get("").await, [5]);
    assert_eq!(get("?limit=3").await, [3, 4, 5]);
    assert_eq!(get("?limit=2&from=2").await, [2, 3]);
    // The Location form (trailing slash) works too.
    assert_eq!(get("/?limit=1&from=1").await, [1]);
    // Non-integers fall back to the defaults.
    assert_eq!(get("?limit=x&from=y").await, [5]);
    assert_eq!(get("?limit=-1").await, [5]);
    assert_eq!(get("?limit=0").await, Vec::<u64>::new());

    // The entry shape.
    let resp = s
        .http
        .get(s.url("/streams/b/s?limit=1&from=1"))
        .header("x-session", &admin)
        .send()
        .await
        .unwrap();
    let v = json_body(resp).await;
    let entry = &v[0];
    assert_eq!(entry["meta"]["id"], 1);
    assert!(entry["meta"]["t"].is_u64());
    assert_eq!(entry["data"], json!({"n": 1}));

    // An empty (missing) stream is [].
    let resp = s
        .http
        .get(s.url("/streams/b/none?limit=5"))
        .header("x-session", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(json_body(resp).await, json!([]));

    // download= sets Content-Disposition (sanitized).
    let resp = s
        .http
        .get(s.url("/streams/b/s?download=my%22file.json"))
        .header("x-session", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-disposition"],
        "attachment; filename=\"myfile.json\""
    );
}

#[tokio::test]
async fn query_limit_is_capped() {
    let s = TestServer::start(common::config()).await;
    let admin = s.admin_token().await;
    let path = herald_core::Path::parse_url("/b/many", &Default::default()).unwrap();
    let events: Vec<_> = (0..1500)
        .map(|i| herald_engine::NewEvent::json(format!("{i}")))
        .collect();
    s.topics.append(path, events, None).await.unwrap();
    let resp = s
        .http
        .get(s.url("/streams/b/many?limit=100000&from=1"))
        .header("x-session", &admin)
        .send()
        .await
        .unwrap();
    let v = json_body(resp).await;
    assert_eq!(v.as_array().unwrap().len(), 1000);
}

#[tokio::test]
async fn post_errors() {
    let mut cfg = config();
    cfg.max_event_bytes = 100;
    let s = TestServer::start(cfg).await;
    let admin = s.admin_token().await;
    let url = s.url("/streams/b/s");

    // Wrong content type: 415, no body.
    let resp = s
        .http
        .post(&url)
        .header("x-session", &admin)
        .header("content-type", "application/xml")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    assert!(resp.bytes().await.unwrap().is_empty());

    // Invalid JSON: 400 invalid-body.
    let resp = s
        .http
        .post(&url)
        .header("x-session", &admin)
        .header("content-type", "application/json")
        .body("{\"a\":")
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "invalid-body").await;

    // Too large: 413 JSON.
    let resp = s
        .http
        .post(&url)
        .header("x-session", &admin)
        .header("content-type", "application/json")
        .body(format!("\"{}\"", "x".repeat(200)))
        .send()
        .await
        .unwrap();
    assert_error(resp, 413, "too-large").await;

    // A token that cannot be decoded: 400 with an empty body.
    let resp = s
        .http
        .post(&url)
        .header("x-session", "not-a-jwt")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.bytes().await.unwrap().is_empty());
    // ... also through ?jwt=.
    let resp = s
        .http
        .get(s.url("/streams/b/s?jwt=garbage"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.bytes().await.unwrap().is_empty());

    // Anonymous cannot write outside public: 401 no-perm.
    let resp = s.http.post(&url).json(&json!({})).send().await.unwrap();
    assert_no_perm(resp).await;

    // Unsupported method: 405.
    let resp = s
        .http
        .put(&url)
        .header("x-session", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);

    // Accept that excludes JSON: 406.
    let resp = s
        .http
        .get(&url)
        .header("x-session", &admin)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 406);
}

#[tokio::test]
async fn permissions_follow_grants() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;
    let bob = s.user("bob").await;

    // Own bucket: everything.
    assert_eq!(s.append(&bob, "_user_bob", "x", &json!(1)).await, 1);
    // Someone else's: no.
    assert_no_perm(s.post_event(&bob, "_user_admin", "x", &json!(1)).await).await;
    // Public: anyone reads, nobody but admin writes.
    assert_eq!(s.append(&admin, "public", "news", &json!("hi")).await, 1);
    let resp = s
        .http
        .get(s.url("/streams/public/news"))
        .send()
        .await
        .unwrap();
    assert_eq!(json_body(resp).await[0]["data"], "hi");
    assert_no_perm(s.post_event(&bob, "public", "news", &json!(1)).await).await;

    // Reading needs get.
    let resp = s
        .http
        .get(s.url("/streams/_user_admin/x"))
        .header("x-session", &bob)
        .send()
        .await
        .unwrap();
    assert_no_perm(resp).await;

    // Delete needs delete.
    s.append(&admin, "shared", "s", &json!(1)).await;
    let resp = s
        .http
        .delete(s.url("/streams/shared/s"))
        .header("x-session", &bob)
        .send()
        .await
        .unwrap();
    assert_no_perm(resp).await;
}

#[tokio::test]
async fn patch_applies_to_the_last_event() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;
    let url = s.url("/streams/b/doc");
    let patch = |body: Value, ct: &'static str| {
        let s = &s;
        let admin = admin.clone();
        let url = url.clone();
        async move {
            s.http
                .patch(url)
                .header("x-session", admin)
                .header("content-type", ct)
                .body(body.to_string())
                .send()
                .await
                .unwrap()
        }
    };
    const JP: &str = "application/json-patch+json";

    // Empty stream: 400 not-found.
    let resp = patch(json!([{"op": "add", "path": "/a", "value": 1}]), JP).await;
    assert_error(resp, 400, "not-found").await;

    s.append(&admin, "b", "doc", &json!({"items": []})).await;
    let resp = patch(json!([{"op": "add", "path": "/items/-", "value": 1}]), JP).await;
    assert_eq!(resp.status(), 200);
    let body = json_body(resp).await;
    assert_eq!(body["meta"]["id"], 2);
    assert!(body["meta"]["t"].is_u64());

    let resp = s
        .http
        .get(s.url("/streams/b/doc"))
        .header("x-session", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(json_body(resp).await[0]["data"], json!({"items": [1]}));

    // The raw patch went to `doc-$patch`.
    let resp = s
        .http
        .get(s.url("/streams/b/doc-$patch"))
        .header("x-session", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_body(resp).await[0]["data"],
        json!([{"op": "add", "path": "/items/-", "value": 1}])
    );

    // Wrong content type: 415.
    let resp = patch(json!([]), "application/json").await;
    assert_eq!(resp.status(), 415);
    // Invalid patch / failed application: 400 invalid-body.
    let resp = patch(json!({"not": "a patch"}), JP).await;
    assert_error(resp, 400, "invalid-body").await;
    let resp = patch(json!([{"op": "test", "path": "/items/0", "value": 99}]), JP).await;
    assert_error(resp, 400, "invalid-body").await;
    let resp = patch(json!([{"op": "remove", "path": "/nope"}]), JP).await;
    assert_error(resp, 400, "invalid-body").await;
}

#[tokio::test]
async fn patch_conflict_is_409_with_iorio_body() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;
    s.append(&admin, "b", "race", &json!({"n": 0})).await;
    // Many concurrent patches on the same last event: some must conflict, none may be lost.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let http = s.http.clone();
        let url = s.url("/streams/b/race");
        let admin = admin.clone();
        tasks.push(tokio::spawn(async move {
            let resp = http
                .patch(url)
                .header("x-session", admin)
                .header("content-type", "application/json-patch+json")
                .body(json!([{"op": "replace", "path": "/n", "value": i}]).to_string())
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }));
    }
    let mut ok = 0;
    let mut conflicts = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            200 => ok += 1,
            409 => {
                conflicts += 1;
                assert_eq!(body["type"], "error");
                assert_eq!(body["reason"]["reason"], "confict");
                assert_eq!(body["reason"]["field"], "seqnum");
                assert!(body["reason"]["expected"].is_u64());
                assert!(body["reason"]["got"].is_u64());
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert!(ok >= 1);
    let info = s
        .topics
        .info(&herald_core::Path::parse_url("/b/race", &Default::default()).unwrap())
        .await
        .unwrap()
        .unwrap();
    // One event per successful patch, plus the first.
    assert_eq!(info.last, 1 + ok);
    assert_eq!(ok + conflicts, 20);
}

#[tokio::test]
async fn patch_copy_bomb_is_refused() {
    let mut cfg = config();
    cfg.max_event_bytes = 64 * 1024;
    let s = TestServer::start(cfg).await;
    let admin = s.admin_token().await;
    s.append(&admin, "b", "bomb", &json!({"a": "x".repeat(1000)}))
        .await;
    let ops: Vec<Value> = (0..100)
        .map(|i| json!({"op": "copy", "from": "", "path": format!("/c{i}")}))
        .collect();
    let resp = s
        .http
        .patch(s.url("/streams/b/bomb"))
        .header("x-session", &admin)
        .header("content-type", "application/json-patch+json")
        .body(Value::Array(ops).to_string())
        .send()
        .await
        .unwrap();
    assert_error(resp, 413, "too-large").await;
}

/// Copying a document into its own deepest array doubles its depth: twelve such copies (an
/// 800 KB patch) used to build a document 400,000 levels deep and overflow the stack.
#[tokio::test]
async fn patch_depth_bomb_is_refused() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;
    let nested = (0..99).fold(json!([]), |v, _| json!([v]));
    s.append(&admin, "b", "deep", &nested).await;
    let mut depth = 100;
    let mut ops = Vec::new();
    for _ in 0..12 {
        let path = format!("{}/-", "/0".repeat(depth - 1));
        ops.push(json!({"op": "copy", "from": "", "path": path}));
        depth *= 2;
    }
    let resp = s
        .http
        .patch(s.url("/streams/b/deep"))
        .header("x-session", &admin)
        .header("content-type", "application/json-patch+json")
        .body(Value::Array(ops).to_string())
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "invalid-body").await;
    // Nothing was stored, and the server still answers.
    let resp = s
        .http
        .get(s.url("/streams/b/deep?limit=10"))
        .header("x-session", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(json_body(resp).await.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn delete_then_recreate() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;
    s.append(&admin, "b", "gone", &json!(1)).await;
    s.append(&admin, "b", "gone", &json!(2)).await;
    let resp = s
        .http
        .delete(s.url("/streams/b/gone"))
        .header("x-session", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = s
        .http
        .get(s.url("/streams/b/gone"))
        .header("x-session", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(json_body(resp).await, json!([]));
    // Numbering restarts at 1.
    assert_eq!(s.append(&admin, "b", "gone", &json!(3)).await, 1);
}

#[tokio::test]
async fn listing_shows_only_what_the_caller_may_list() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;
    let bob = s.user("bob").await;
    s.append(&admin, "secret", "s1", &json!(1)).await;
    s.append(&admin, "public", "p1", &json!(1)).await;
    s.append(&admin, "public", "p2", &json!(1)).await;
    s.append(&bob, "_user_bob", "mine", &json!(1)).await;

    let buckets = |token: Option<String>| {
        let s = &s;
        async move {
            let mut req = s.http.get(s.url("/buckets/"));
            if let Some(t) = token {
                req = req.header("x-session", t);
            }
            json_body(req.send().await.unwrap()).await
        }
    };
    assert_eq!(
        buckets(Some(admin.clone())).await,
        json!({"status": "ok", "data": ["_user_bob", "public", "secret"]})
    );
    assert_eq!(
        buckets(Some(bob.clone())).await,
        json!({"status": "ok", "data": ["_user_bob", "public"]})
    );
    assert_eq!(
        buckets(None).await,
        json!({"status": "ok", "data": ["public"]})
    );

    let streams = |bucket: &'static str, token: String| {
        let s = &s;
        async move {
            s.http
                .get(s.url(&format!("/streams/{bucket}")))
                .header("x-session", token)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        json_body(streams("public", bob.clone()).await).await,
        json!({"status": "ok", "data": ["p1", "p2"]})
    );
    assert_eq!(
        json_body(streams("secret", admin.clone()).await).await,
        json!({"status": "ok", "data": ["s1"]})
    );
    assert_no_perm(streams("secret", bob.clone()).await).await;
    // The trailing-slash form.
    let resp = s.http.get(s.url("/streams/public/")).send().await.unwrap();
    assert_eq!(
        json_body(resp).await,
        json!({"status": "ok", "data": ["p1", "p2"]})
    );

    // A stream-level list grant shows just that stream.
    let res = herald_auth::Resource::new("secret", Some("s1")).unwrap();
    s.accounts
        .grant("bob", &res, herald_auth::Permission::List)
        .await
        .unwrap();
    assert_eq!(
        json_body(streams("secret", bob.clone()).await).await,
        json!({"status": "ok", "data": ["s1"]})
    );
    assert_eq!(
        buckets(Some(bob)).await,
        json!({"status": "ok", "data": ["_user_bob", "public", "secret"]})
    );
}

#[tokio::test]
async fn streams_survive_on_fjall() {
    let s = TestServer::start_fjall(config()).await;
    let admin = s.admin_token().await;
    for n in 1..=3 {
        assert_eq!(s.append(&admin, "b", "f", &json!({"n": n})).await, n);
    }
    let resp = s
        .http
        .get(s.url("/streams/b/f?limit=10&from=2"))
        .header("x-session", &admin)
        .send()
        .await
        .unwrap();
    let v = json_body(resp).await;
    assert_eq!(v[0]["data"]["n"], 2);
    assert_eq!(v[1]["data"]["n"], 3);
}

#[tokio::test]
async fn patch_needs_write_on_the_patch_stream_too() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;
    s.append(&admin, "shared", "doc", &json!({"n": 0})).await;
    let bob = s.user("bob").await;
    let doc = herald_auth::Resource::new("shared", Some("doc")).unwrap();
    for perm in [herald_auth::Permission::Get, herald_auth::Permission::Put] {
        s.accounts.grant("bob", &doc, perm).await.unwrap();
    }
    let patch = || {
        s.http
            .patch(s.url("/streams/shared/doc"))
            .header("x-session", &bob)
            .header("content-type", "application/json-patch+json")
            .body(r#"[{"op":"replace","path":"/n","value":1}]"#)
            .send()
    };
    // A grant on `doc` alone does not let bob write into `doc-$patch`.
    assert_no_perm(patch().await.unwrap()).await;
    let resp = s
        .http
        .get(s.url("/streams/shared/doc"))
        .header("x-session", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(json_body(resp).await[0]["data"], json!({"n": 0}));

    let log = herald_auth::Resource::new("shared", Some("doc-$patch")).unwrap();
    s.accounts
        .grant("bob", &log, herald_auth::Permission::Put)
        .await
        .unwrap();
    assert_eq!(patch().await.unwrap().status(), 200);
}
