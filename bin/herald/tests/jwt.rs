//! JWT authorisation on the Icepeak listener (seed-contracts 1.5): HTTP and the legacy
//! WebSocket handshake, with tokens minted by the real `herald token` CLI and by hand.

mod common;

use common::*;
use serde_json::{Value, json};

const SECRET: &str = "jwt-test-secret";

async fn auth_server() -> herald_testkit::Server {
    start(&["--enable-jwt-auth", "--jwt-secret", SECRET]).await
}

fn claims(entries: &[(&[&str], &[&str])]) -> Value {
    json!({ "icepeak": icepeak_claim(entries) })
}

/// GET/PUT with a bearer token (or none).
async fn get_as(s: &herald_testkit::Server, path: &str, token: Option<&str>) -> Resp {
    let mut rb = client().get(format!("{}{path}", s.icepeak_url()));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    send(rb).await
}

async fn put_as(s: &herald_testkit::Server, path: &str, body: &str, token: Option<&str>) -> Resp {
    let mut rb = client()
        .put(format!("{}{path}?durable", s.icepeak_url()))
        .body(body.to_owned());
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    send(rb).await
}

fn assert_401(r: &Resp, body: Value) {
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.content_type.as_deref(), Some("application/json"), "{r:?}");
    assert_eq!(r.json(), body, "{r:?}");
}

#[tokio::test]
async fn cli_tokens_grant_exactly_their_modes() {
    let s = auth_server().await;
    let admin = cli_token(&["--jwt-secret", SECRET, "--path", "/:rw"]).await;
    let reader = cli_token(&["--jwt-secret", SECRET, "--path", "foo:r", "--expires", "60"]).await;
    let writer = cli_token(&["-s", SECRET, "-p", "foo/w:w", "-e", "60"]).await;
    let both = cli_token(&["-s", SECRET, "-p", "foo:r", "-p", "bar:rw"]).await;

    assert_eq!(put_as(&s, "/foo/a", "1", Some(&admin)).await.status, 202);

    // Read allowed: 200 with the value, on the prefix itself and below it.
    let r = get_as(&s, "/foo/a", Some(&reader)).await;
    assert_eq!((r.status, r.body.as_str()), (200, "1"));
    let r = get_as(&s, "/foo", Some(&reader)).await;
    assert_eq!(r.json(), json!({"a":1}));
    // Allowed but absent: 404, not 401.
    assert_eq!(get_as(&s, "/foo/none", Some(&reader)).await.status, 404);

    // Writing with a read-only token: 401 not allowed, and no change.
    let r = put_as(&s, "/foo/a", "2", Some(&reader)).await;
    assert_401(&r, json!({"error": "not allowed"}));
    let r = send(
        client()
            .delete(format!("{}/foo/a?durable", s.icepeak_url()))
            .bearer_auth(&reader),
    )
    .await;
    assert_401(&r, json!({"error": "not allowed"}));
    assert_eq!(get_as(&s, "/foo/a", Some(&reader)).await.body, "1");

    // Outside the prefix, and a prefix by characters only.
    for path in ["/", "/bar", "/foobar", "/fo"] {
        let r = get_as(&s, path, Some(&reader)).await;
        assert_401(&r, json!({"error": "not allowed"}));
    }

    // Write-only: may write below its prefix, may not read.
    assert_eq!(put_as(&s, "/foo/w/x", "9", Some(&writer)).await.status, 202);
    assert_401(
        &get_as(&s, "/foo/w/x", Some(&writer)).await,
        json!({"error": "not allowed"}),
    );
    assert_401(
        &put_as(&s, "/foo/x", "9", Some(&writer)).await,
        json!({"error": "not allowed"}),
    );
    assert_eq!(get_as(&s, "/foo/w/x", Some(&admin)).await.body, "9");

    // Several entries.
    assert_eq!(get_as(&s, "/foo/a", Some(&both)).await.status, 200);
    assert_eq!(put_as(&s, "/bar/b", "1", Some(&both)).await.status, 202);
    assert_401(
        &put_as(&s, "/foo/b", "1", Some(&both)).await,
        json!({"error": "not allowed"}),
    );
    stop(s).await;
}

#[tokio::test]
async fn missing_and_malformed_tokens_are_invalid_token_format() {
    let s = auth_server().await;
    let invalid = json!({"error": "invalid token format"});
    assert_401(&get_as(&s, "/foo", None).await, invalid.clone());
    assert_401(&put_as(&s, "/foo", "1", None).await, invalid.clone());
    for garbage in ["garbage", "a.b.c", "x.y", "eyJhbGciOiJIUzI1NiJ9..", ""] {
        let r = get_as(&s, "/foo", Some(garbage)).await;
        assert_401(&r, invalid.clone());
    }
    // The same in the query parameter.
    let r = get(&format!("{}/foo?access_token=garbage", s.icepeak_url())).await;
    assert_401(&r, invalid.clone());
    // A header with another scheme does not count as a token.
    let r = send(
        client()
            .get(format!("{}/foo", s.icepeak_url()))
            .header("Authorization", "Basic dXNlcjpwYXNz"),
    )
    .await;
    assert_401(&r, invalid);
    stop(s).await;
}

#[tokio::test]
async fn bad_signature_expired_and_not_yet_valid_tokens_are_data_null() {
    let s = auth_server().await;
    let grant = claims(&[(&["foo"], &["read", "write"])]);
    let data_null = json!({"data": null});

    let forged = hs256("not-the-secret", &grant);
    assert_401(&get_as(&s, "/foo", Some(&forged)).await, data_null.clone());

    let mut expired = grant.clone();
    expired["exp"] = json!(now() - 10);
    let expired = hs256(SECRET, &expired);
    assert_401(&get_as(&s, "/foo", Some(&expired)).await, data_null.clone());

    let mut early = grant.clone();
    early["nbf"] = json!(now() + 60);
    let early = hs256(SECRET, &early);
    assert_401(&get_as(&s, "/foo", Some(&early)).await, data_null.clone());

    // An unsigned token (alg none) is refused when a secret is configured.
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64url(grant.to_string().as_bytes());
    let unsigned = format!("{header}.{payload}.");
    assert_401(
        &get_as(&s, "/foo", Some(&unsigned)).await,
        data_null.clone(),
    );

    // The same claims, valid in time and correctly signed, pass.
    let mut good = grant.clone();
    good["exp"] = json!(now() + 60);
    good["nbf"] = json!(now() - 10);
    let good = hs256(SECRET, &good);
    assert_eq!(get_as(&s, "/foo", Some(&good)).await.status, 404);
    assert_eq!(put_as(&s, "/foo", "1", Some(&good)).await.status, 202);
    assert_eq!(get_as(&s, "/foo", Some(&good)).await.body, "1");
    stop(s).await;
}

#[tokio::test]
async fn a_missing_or_broken_icepeak_claim_is_reported() {
    let s = auth_server().await;
    let no_claim = hs256(SECRET, &json!({"sub": "someone", "exp": now() + 60}));
    assert_401(
        &get_as(&s, "/foo", Some(&no_claim)).await,
        json!({"error": "Icepeak claim missing."}),
    );
    let broken = hs256(SECRET, &json!({"icepeak": {"version": 1}}));
    let r = get_as(&s, "/foo", Some(&broken)).await;
    assert_eq!(r.status, 401);
    let msg = r.json()["error"].as_str().unwrap().to_owned();
    assert!(msg.contains("whitelist"), "{msg}");
    stop(s).await;
}

#[tokio::test]
async fn access_token_query_works_and_the_header_wins() {
    let s = auth_server().await;
    let admin = cli_token(&["--jwt-secret", SECRET, "--path", "/:rw"]).await;
    let reader = cli_token(&["--jwt-secret", SECRET, "--path", "foo:r"]).await;
    assert_eq!(put_as(&s, "/foo", "1", Some(&admin)).await.status, 202);

    let r = get(&format!("{}/foo?access_token={reader}", s.icepeak_url())).await;
    assert_eq!((r.status, r.body.as_str()), (200, "1"));
    let r = put(
        &format!("{}/q?durable&access_token={admin}", s.icepeak_url()),
        "2",
    )
    .await;
    assert_eq!(r.status, 202);

    // Valid header, garbage query: allowed.
    let r = send(
        client()
            .get(format!("{}/foo?access_token=garbage", s.icepeak_url()))
            .bearer_auth(&reader),
    )
    .await;
    assert_eq!(r.status, 200);
    // Garbage header, valid query: the header is used, so refused.
    let r = send(
        client()
            .get(format!("{}/foo?access_token={reader}", s.icepeak_url()))
            .bearer_auth("garbage"),
    )
    .await;
    assert_401(&r, json!({"error": "invalid token format"}));
    // Read-only header, admin query: the header decides, so a write is refused.
    let r = send(
        client()
            .put(format!(
                "{}/foo?durable&access_token={admin}",
                s.icepeak_url()
            ))
            .bearer_auth(&reader)
            .body("3"),
    )
    .await;
    assert_401(&r, json!({"error": "not allowed"}));
    stop(s).await;
}

#[tokio::test]
async fn methods_other_than_get_put_delete_are_refused_with_401() {
    let s = auth_server().await;
    let admin = cli_token(&["--jwt-secret", SECRET, "--path", "/:rw"]).await;
    for m in [
        reqwest::Method::POST,
        reqwest::Method::PATCH,
        reqwest::Method::OPTIONS,
    ] {
        let r = send(
            client()
                .request(m.clone(), format!("{}/foo", s.icepeak_url()))
                .bearer_auth(&admin)
                .body("1"),
        )
        .await;
        assert_401(&r, json!({"error": "not allowed"}));
    }
    // Non-standard methods are still 400 {} (checked before auth).
    let method = reqwest::Method::from_bytes(b"FOO").unwrap();
    let r = send(client().request(method, format!("{}/foo", s.icepeak_url()))).await;
    assert_eq!((r.status, r.body.as_str()), (400, "{}"));
    stop(s).await;
}

#[tokio::test]
async fn websocket_handshake_needs_read_permission() {
    let s = auth_server().await;
    let admin = cli_token(&["--jwt-secret", SECRET, "--path", "/:rw"]).await;
    let reader = cli_token(&["--jwt-secret", SECRET, "--path", "foo:r"]).await;
    assert_eq!(put_as(&s, "/foo/a", "1", Some(&admin)).await.status, 202);
    let addr = s.addr("icepeak");

    // No token.
    let (r, _) = raw_ws_handshake(addr, "/foo/a", &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), json!({"error": "invalid token format"}));
    // Outside the grant (also by character prefix).
    for target in ["/bar", "/foobar", "/"] {
        let bearer = format!("Bearer {reader}");
        let (r, _) = raw_ws_handshake(addr, target, &[("Authorization", &bearer)]).await;
        assert_eq!(r.status, 401, "{target}: {r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json(), json!({"error": "not allowed"}), "{target}");
    }
    // Expired.
    let mut expired = claims(&[(&["foo"], &["read"])]);
    expired["exp"] = json!(now() - 10);
    let expired = hs256(SECRET, &expired);
    let (r, _) = raw_ws_handshake(addr, &format!("/foo?access_token={expired}"), &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), json!({"data": null}));
    // A write-only token cannot subscribe.
    let writer = hs256(SECRET, &claims(&[(&["foo"], &["write"])]));
    let (r, _) = raw_ws_handshake(addr, &format!("/foo?access_token={writer}"), &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), json!({"error": "not allowed"}));

    // Allowed, by header and by query.
    let mut ws = ws_connect_bearer(&s.icepeak_ws("/foo/a"), &reader).await;
    assert_eq!(next_text(&mut ws).await, "1");
    let mut ws2 = ws_connect(&s.icepeak_ws(&format!("/foo?access_token={reader}"))).await;
    assert_eq!(next_json(&mut ws2).await, json!({"a":1}));
    assert_eq!(put_as(&s, "/foo/a", "2", Some(&admin)).await.status, 202);
    assert_eq!(next_text(&mut ws).await, "2");
    assert_eq!(next_json(&mut ws2).await, json!({"a":2}));
    stop(s).await;
}

#[tokio::test]
async fn auth_without_a_secret_decodes_but_does_not_verify() {
    let s = start(&["--enable-jwt-auth"]).await;
    // Signed with anything, even expired: the claim alone decides.
    let mut c = claims(&[(&["foo"], &["read"])]);
    c["exp"] = json!(now() - 100);
    let t = hs256("whatever", &c);
    assert_eq!(get_as(&s, "/foo", Some(&t)).await.status, 404);
    assert_401(
        &get_as(&s, "/bar", Some(&t)).await,
        json!({"error": "not allowed"}),
    );
    // An unsigned token minted by the CLI without a secret works too.
    let unsigned = cli_token(&["--path", "foo:rw"]).await;
    assert!(unsigned.ends_with('.'), "{unsigned}");
    assert_eq!(put_as(&s, "/foo", "1", Some(&unsigned)).await.status, 202);
    // Still no token at all is refused.
    assert_401(
        &get_as(&s, "/foo", None).await,
        json!({"error": "invalid token format"}),
    );
    stop(s).await;
}

#[tokio::test]
async fn early_401_to_a_put_keeps_keep_alive_clients_working() {
    let s = auth_server().await;
    let addr = s.addr("icepeak");
    for head in [
        "PUT /foo/x HTTP/1.1",
        "PUT /foo/x?durable HTTP/1.1",
        "DELETE /foo/x HTTP/1.1",
        "POST /foo/x HTTP/1.1",
    ] {
        let (first, second) =
            early_answer_keeps_connection_usable(addr, head, b"3", "/foo/x").await;
        assert_eq!(first.status, 401, "{head}: {first:?}");
        if let Some(second) = second {
            assert_eq!(second.status, 401, "{head}: {second:?}");
            assert_eq!(second.json(), json!({"error": "invalid token format"}));
        }
    }
    stop(s).await;
}
