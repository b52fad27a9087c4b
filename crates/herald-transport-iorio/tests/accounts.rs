//! Sessions, users, ACLs and ping (seed contract 2.2, 2.5), including IorioDB's resttest.py
//! expectations.

mod common;

use common::{ADMIN_PASSWORD, TestServer, assert_error, assert_no_perm, config, json_body};
use serde_json::{Value, json};

#[tokio::test]
async fn sessions_log_in_and_identify() {
    let s = TestServer::start(config()).await;
    let resp = s
        .http
        .post(s.url("/sessions"))
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["location"], "/session");
    let body = json_body(resp).await;
    assert_eq!(body["ok"], true);
    assert_eq!(body["username"], "admin");
    let token = body["token"].as_str().unwrap().to_owned();

    // GET /sessions: who am I (header or ?jwt=).
    let resp = s
        .http
        .get(s.url("/sessions"))
        .header("x-session", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(json_body(resp).await, json!({"username": "admin"}));
    let resp = s
        .http
        .get(s.url(&format!("/sessions?jwt={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(json_body(resp).await, json!({"username": "admin"}));
    let resp = s.http.get(s.url("/sessions")).send().await.unwrap();
    assert_eq!(json_body(resp).await, json!({"username": "anonymous"}));
    // A bad token: 401 no-perm.
    let resp = s
        .http
        .get(s.url("/sessions"))
        .header("x-session", "bad")
        .send()
        .await
        .unwrap();
    assert_no_perm(resp).await;

    // Bad credentials (unknown user, wrong password): 401 unauthorized + WWW-Authenticate.
    for (u, p) in [("someuser", "some password"), ("admin", "some password")] {
        let resp = s
            .http
            .post(s.url("/sessions"))
            .json(&json!({"username": u, "password": p}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["www-authenticate"], "jwt");
        let status = resp.status();
        let body = json_body(resp).await;
        assert_eq!(status, 401);
        assert_eq!(
            body,
            json!({"type": "unauthorized", "reason": "Unauthorized"})
        );
    }
    // Wrong content type: 415; broken JSON: 400.
    let resp = s
        .http
        .post(s.url("/sessions"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let resp = s
        .http
        .post(s.url("/sessions"))
        .header("content-type", "application/json")
        .body("{\"username\":")
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "invalid-body").await;
    // Other methods: 405.
    let resp = s.http.delete(s.url("/sessions")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
}

#[tokio::test]
async fn sessions_are_rate_limited_per_ip() {
    let mut cfg = config();
    cfg.session_attempts_per_minute = 3;
    let s = TestServer::start(cfg).await;
    for _ in 0..3 {
        let resp = s
            .http
            .post(s.url("/sessions"))
            .json(&json!({"username": "admin", "password": "wrong"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    // The 4th attempt within the minute, even with good credentials, is refused.
    let resp = s
        .http
        .post(s.url("/sessions"))
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(
        json_body(resp).await,
        json!({"type": "rate-limited", "reason": "Too Many Requests"})
    );
    let resp = s.http.get(s.url("/sessions")).send().await.unwrap();
    assert_eq!(resp.status(), 429);
}

/// The create-user checks of IorioDB's tools/resttest.py.
#[tokio::test]
async fn create_user_like_resttest() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;
    let create = |body: String, ct: &'static str| {
        let s = &s;
        let admin = admin.clone();
        async move {
            s.http
                .post(s.url("/users/"))
                .header("x-session", admin)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    const JSON: &str = "application/json";
    let body = |v: Value| v.to_string();

    assert_error(
        create(body(json!({"username": "temp1"})), JSON).await,
        400,
        "no-pass",
    )
    .await;
    assert_error(
        create(body(json!({"password": "p"})), JSON).await,
        400,
        "no-user",
    )
    .await;
    assert_error(create(body(json!({})), JSON).await, 400, "no-user-and-pass").await;

    let resp = create(
        body(json!({"username": "temp1", "password": "p"})),
        "application/xml",
    )
    .await;
    assert_eq!(resp.status(), 415);
    assert!(resp.bytes().await.unwrap().is_empty());

    let full = body(json!({"username": "temp1", "password": "p"}));
    let truncated = full[..full.len() - 1].to_owned();
    assert_error(create(truncated, JSON).await, 400, "invalid-body").await;

    let resp = create(full.clone(), JSON).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["location"], "/users/temp1");
    assert_eq!(json_body(resp).await, json!({"ok": true}));

    assert_error(create(full, JSON).await, 400, "user-exists").await;
    assert_error(
        create(
            body(json!({"username": "temp1 %$&/(", "password": "p"})),
            JSON,
        )
        .await,
        400,
        "illegal-username",
    )
    .await;

    // The new user can log in and owns its bucket.
    let temp = s.login("temp1", "p").await;
    assert_eq!(s.append(&temp, "_user_temp1", "x", &json!(1)).await, 1);

    // GET /users/ lists users (admin only).
    let resp = s
        .http
        .get(s.url("/users/"))
        .header("x-session", &admin)
        .send()
        .await
        .unwrap();
    let users = json_body(resp).await;
    assert!(
        users
            .as_array()
            .unwrap()
            .contains(&json!({"username": "temp1"}))
    );
    assert!(
        users
            .as_array()
            .unwrap()
            .contains(&json!({"username": "admin"}))
    );
    let resp = s
        .http
        .get(s.url("/users"))
        .header("x-session", &temp)
        .send()
        .await
        .unwrap();
    assert_no_perm(resp).await;

    // Non-admins cannot create users.
    let resp = s
        .http
        .post(s.url("/users/"))
        .header("x-session", &temp)
        .json(&json!({"username": "temp2", "password": "p"}))
        .send()
        .await
        .unwrap();
    assert_no_perm(resp).await;
    let resp = s
        .http
        .post(s.url("/users/"))
        .json(&json!({"username": "temp2", "password": "p"}))
        .send()
        .await
        .unwrap();
    assert_no_perm(resp).await;
}

#[tokio::test]
async fn change_password() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;
    let bob = s.user("bob").await;
    s.user("carol").await;
    let put = |token: Option<String>, user: &'static str, pw: &'static str| {
        let s = &s;
        async move {
            let mut req = s
                .http
                .put(s.url("/users/"))
                .json(&json!({"username": user, "password": pw}));
            if let Some(t) = token {
                req = req.header("x-session", t);
            }
            req.send().await.unwrap()
        }
    };
    // Own password: allowed.
    let resp = put(Some(bob.clone()), "bob", "new").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json_body(resp).await, json!({"ok": true}));
    s.login("bob", "new").await;
    // Someone else's: only admins.
    assert_no_perm(put(Some(bob.clone()), "carol", "x").await).await;
    assert_no_perm(put(None, "carol", "x").await).await;
    let resp = put(Some(admin.clone()), "carol", "x").await;
    assert_eq!(resp.status(), 200);
    s.login("carol", "x").await;
    // Unknown user.
    assert_error(put(Some(admin), "nobody", "x").await, 400, "unknown-error").await;
}

#[tokio::test]
async fn grant_and_revoke_like_resttest() {
    let s = TestServer::start(config()).await;
    let admin = s.admin_token().await;
    let bob = s.user("bob").await;
    let access = |path: &'static str, body: Value, token: String| {
        let s = &s;
        async move {
            s.http
                .post(s.url(path))
                .header("x-session", token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };

    // Bucket grant with `role`.
    assert_no_perm(s.post_event(&bob, "foo", "bob", &json!(1)).await).await;
    let resp = access(
        "/access/foo/",
        json!({"action": "grant", "role": "bob", "permission": "put"}),
        admin.clone(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json_body(resp).await, json!({"ok": true}));
    assert_eq!(s.append(&bob, "foo", "bob", &json!(1)).await, 1);
    let resp = access(
        "/access/foo",
        json!({"action": "revoke", "role": "bob", "permission": "put"}),
        admin.clone(),
    )
    .await;
    assert_eq!(json_body(resp).await, json!({"ok": true}));
    assert_no_perm(s.post_event(&bob, "foo", "bob", &json!(1)).await).await;

    // Stream grant with `username` (what tools/iorio.py sends).
    let resp = access(
        "/access/foo1/bob",
        json!({"action": "grant", "username": "bob", "permission": "put"}),
        admin.clone(),
    )
    .await;
    assert_eq!(json_body(resp).await, json!({"ok": true}));
    assert_eq!(s.append(&bob, "foo1", "bob", &json!(1)).await, 1);
    assert_no_perm(s.post_event(&bob, "foo1", "bobbob", &json!(1)).await).await;

    // GET shows the ACL.
    let resp = s
        .http
        .get(s.url("/access/foo1/bob/"))
        .header("x-session", &admin)
        .send()
        .await
        .unwrap();
    let acl = json_body(resp).await;
    assert!(
        acl["users"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "bob", "grants": ["put"]})),
        "{acl}"
    );
    assert!(acl["groups"].is_array());

    // Missing and invalid fields.
    let bad = |body: Value| access("/access/foo/", body, admin.clone());
    let resp = bad(json!({"role": "bob", "permission": "put"})).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        json_body(resp).await,
        json!({"type": "invalid-field", "field": "action", "value": null})
    );
    let resp = bad(json!({"action": "grant", "permission": "put"})).await;
    assert_eq!(
        json_body(resp).await,
        json!({"type": "invalid-field", "field": "role", "value": null})
    );
    let resp = bad(json!({"action": "grant", "role": "bob"})).await;
    assert_eq!(
        json_body(resp).await,
        json!({"type": "invalid-field", "field": "permission", "value": null})
    );
    let resp = bad(json!({"action": "grant", "role": "bob", "permission": "fly"})).await;
    assert_eq!(
        json_body(resp).await,
        json!({"type": "invalid-field", "field": "permission", "value": "fly"})
    );
    let resp = bad(json!({"action": "steal", "role": "bob", "permission": "get"})).await;
    assert_eq!(
        json_body(resp).await,
        json!({"type": "invalid-field", "field": "action", "value": "steal"})
    );
    // Unknown role.
    let resp = bad(json!({"action": "grant", "role": "nobody", "permission": "get"})).await;
    assert_error(resp, 400, "error").await;

    // Granting needs grant on the resource: bob has it on his own bucket only.
    let resp = access(
        "/access/foo/",
        json!({"action": "grant", "role": "bob", "permission": "get"}),
        bob.clone(),
    )
    .await;
    assert_no_perm(resp).await;
    let resp = access(
        "/access/_user_bob/",
        json!({"action": "grant", "role": "anonymous", "permission": "get"}),
        bob.clone(),
    )
    .await;
    assert_eq!(json_body(resp).await, json!({"ok": true}));
    let resp = s.http.get(s.url("/access/foo/")).send().await.unwrap();
    assert_no_perm(resp).await;
    // ... but never adminusers.
    let resp = access(
        "/access/_user_bob/",
        json!({"action": "grant", "role": "bob", "permission": "adminusers"}),
        bob,
    )
    .await;
    assert_no_perm(resp).await;
}

#[tokio::test]
async fn ping() {
    let s = TestServer::start(config()).await;
    let resp = s.http.get(s.url("/ping")).send().await.unwrap();
    assert_eq!(json_body(resp).await, json!({"pong": "herald"}));
    let resp = s
        .http
        .get(s.url("/ping"))
        .header("x-session", "garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.bytes().await.unwrap().is_empty());
    // Routes outside the router reach the caller's fallback.
    let resp = s.http.get(s.url("/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}
