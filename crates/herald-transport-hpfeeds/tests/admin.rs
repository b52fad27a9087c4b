//! The hpfeeds identities admin API over real HTTP, sharing its `HpfeedsIdentities` with a
//! broker on another port: who may call it, CRUD, invalid bodies, and that an identity PUT
//! through the API authenticates over hpfeeds at once (and a removed one no longer does).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herald_auth::hpfeeds::auth_hash;
use herald_auth::users::PasswordCost;
use herald_engine::{
    Accounts, AccountsOptions, HpfeedsIdentities, HpfeedsOptions, Topics, TopicsOptions,
};
use herald_store::MemoryStore;
use herald_transport_hpfeeds::frame::{Decoder, Frame};
use herald_transport_hpfeeds::{HpfeedsConfig, admin, serve};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const IO: Duration = Duration::from_secs(10);

struct Setup {
    base: String,
    hpfeeds: SocketAddr,
    admin_token: String,
    user_token: String,
    http: reqwest::Client,
    identities: HpfeedsIdentities,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn setup() -> Setup {
    let store = Arc::new(MemoryStore::default());
    let (topics, _actor) = Topics::open(store.clone(), TopicsOptions::default())
        .await
        .unwrap();
    let identities = HpfeedsIdentities::open(store.clone(), HpfeedsOptions::default())
        .await
        .unwrap();
    let accounts = Accounts::open(
        store,
        AccountsOptions {
            password_cost: PasswordCost::MINIMUM,
            ..AccountsOptions::default()
        },
    )
    .await
    .unwrap();
    accounts.add_user("root", "root-pw", true).await.unwrap();
    accounts.add_user("joe", "joe-pw", false).await.unwrap();
    let admin_token = accounts.login("root", "root-pw").await.unwrap().unwrap();
    let user_token = accounts.login("joe", "joe-pw").await.unwrap().unwrap();

    let shutdown = CancellationToken::new();
    let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", http_listener.local_addr().unwrap());
    let app = admin::router(identities.clone(), accounts);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(http_listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .unwrap();
    });
    let hp_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hpfeeds = hp_listener.local_addr().unwrap();
    let (ids, stop) = (identities.clone(), shutdown.clone());
    tokio::spawn(async move {
        serve(hp_listener, topics, ids, HpfeedsConfig::default(), stop)
            .await
            .unwrap();
    });
    Setup {
        base,
        hpfeeds,
        admin_token,
        user_token,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        identities,
        _shutdown: shutdown.drop_guard(),
    }
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request as the admin (`X-Session`).
    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .header("X-Session", &self.admin_token)
    }

    async fn put(&self, ident: &str, body: Value) -> (StatusCode, Value) {
        let resp = self
            .admin(
                reqwest::Method::PUT,
                &format!("/hpfeeds/identities/{ident}"),
            )
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.admin(reqwest::Method::GET, path).send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

/// The next frame; `None` when nothing came within `wait`. EOF panics.
async fn next(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
    wait: Duration,
) -> Option<Frame> {
    tokio::time::timeout(wait, async {
        loop {
            if let Some(f) = decoder.decode(buf).unwrap() {
                return f;
            }
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) => panic!("connection closed without a frame"),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// Authenticates over hpfeeds as `ident`; `true` when the broker accepted it (it answers a
/// failure with OP_ERROR and a close, a success with nothing).
async fn hpfeeds_auth(addr: SocketAddr, ident: &str, secret: &str) -> bool {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buf = BytesMut::new();
    let mut decoder = Decoder::new();
    let Some(Frame::Info { nonce, .. }) = next(&mut stream, &mut buf, &mut decoder, IO).await
    else {
        panic!("expected OP_INFO first");
    };
    let hash = auth_hash(&nonce, secret);
    let auth = Frame::auth(ident, Bytes::copy_from_slice(&hash));
    stream.write_all(&auth.to_bytes().unwrap()).await.unwrap();
    // Subscribing to a channel outside subchans would also answer with an error; a quiet
    // connection after AUTH means success.
    match next(
        &mut stream,
        &mut buf,
        &mut decoder,
        Duration::from_millis(300),
    )
    .await
    {
        None => true,
        Some(Frame::Error(message)) => {
            assert_eq!(message, format!("Authentication failed for {ident}"));
            false
        }
        other => panic!("unexpected answer to AUTH: {other:?}"),
    }
}

#[tokio::test]
async fn only_admins_may_call_it() {
    let s = setup().await;
    let paths = ["/hpfeeds/identities", "/hpfeeds/identities/bob"];
    for path in paths {
        for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
            if path == paths[0] && method == reqwest::Method::DELETE {
                continue;
            }
            let anon = s
                .http
                .request(method.clone(), s.url(path))
                .send()
                .await
                .unwrap();
            assert_eq!(anon.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
            let body: Value = anon.json().await.unwrap();
            assert!(body["error"].as_str().unwrap().contains("authentication"));
            let bad = s
                .http
                .request(method.clone(), s.url(path))
                .header("X-Session", "not-a-token")
                .send()
                .await
                .unwrap();
            assert_eq!(bad.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
            let user = s
                .http
                .request(method.clone(), s.url(path))
                .header("X-Session", &s.user_token)
                .send()
                .await
                .unwrap();
            assert_eq!(user.status(), StatusCode::FORBIDDEN, "{method} {path}");
            let body: Value = user.json().await.unwrap();
            assert!(body["error"].as_str().unwrap().contains("not an admin"));
        }
    }
    // PUT as a non-admin changes nothing, even with a valid body; Bearer works like X-Session.
    let put = s
        .http
        .put(s.url("/hpfeeds/identities/bob"))
        .bearer_auth(&s.user_token)
        .json(&json!({"secret": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::FORBIDDEN);
    assert!(s.identities.list().is_empty());
    let put = s
        .http
        .put(s.url("/hpfeeds/identities/bob"))
        .bearer_auth(&s.admin_token)
        .json(&json!({"secret": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn create_replace_show_list_delete() {
    let s = setup().await;
    assert_eq!(
        s.get("/hpfeeds/identities").await,
        (StatusCode::OK, json!({"identities": []}))
    );
    assert_eq!(
        s.get("/hpfeeds/identities/bob").await.0,
        StatusCode::NOT_FOUND
    );

    let (status, body) = s
        .put(
            "bob",
            json!({"secret": "s1", "owner": "Bob", "pubchans": ["a", "b"], "subchans": ["c"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let bob = json!({"ident": "bob", "owner": "Bob", "pubchans": ["a", "b"], "subchans": ["c"]});
    assert_eq!(body, bob);
    assert_eq!(
        s.get("/hpfeeds/identities/bob").await,
        (StatusCode::OK, bob.clone())
    );
    assert_eq!(s.identities.get("bob").unwrap().secret, "s1");

    // Replacing: owner defaults to the ident, channels to [].
    let (status, body) = s.put("bob", json!({"secret": "s2"})).await;
    assert_eq!(status, StatusCode::OK);
    let bob2 = json!({"ident": "bob", "owner": "bob", "pubchans": [], "subchans": []});
    assert_eq!(body, bob2);
    assert_eq!(s.identities.get("bob").unwrap().secret, "s2");

    // An ident with a slash and a space, percent-encoded in the path; "ident" in the body may
    // repeat it.
    let (status, _) = s
        .put(
            "a%2Fb%20c",
            json!({"ident": "a/b c", "secret": "x", "subchans": ["weird/chan"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, list) = s.get("/hpfeeds/identities").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        list,
        json!({"identities": [
            {"ident": "a/b c", "owner": "a/b c", "pubchans": [], "subchans": ["weird/chan"]},
            bob2,
        ]})
    );
    assert!(!list.to_string().contains("\"secret\""), "never secrets");

    let del = s
        .admin(reqwest::Method::DELETE, "/hpfeeds/identities/a%2Fb%20c")
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    let del = s
        .admin(reqwest::Method::DELETE, "/hpfeeds/identities/a%2Fb%20c")
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NOT_FOUND);
    let body: Value = del.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no hpfeeds identity")
    );
    assert_eq!(
        s.identities
            .list()
            .iter()
            .map(|i| i.ident.as_str())
            .collect::<Vec<_>>(),
        ["bob"]
    );
}

#[tokio::test]
async fn invalid_bodies_are_refused() {
    let s = setup().await;
    let cases = [
        (json!({}), "missing field `secret`"),
        (json!({"secret": ""}), "is empty"),
        (json!({"secret": 5}), "invalid type"),
        (json!({"secret": "x", "pubchans": "a"}), "invalid type"),
        (json!({"secret": "x", "pubchans": [""]}), "invalid channel"),
        (
            json!({"secret": "x", "subchans": [".."]}),
            "invalid channel",
        ),
        (json!({"secret": "x", "pubchan": ["a"]}), "unknown field"),
        (
            json!({"secret": "x", "ident": "other"}),
            "not the path's ident",
        ),
        (json!(["secret"]), "invalid body"),
    ];
    for (body, message) in cases {
        let (status, answer) = s.put("bob", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(message), "{body}: {error}");
    }
    let not_json = s
        .admin(reqwest::Method::PUT, "/hpfeeds/identities/bob")
        .body("secret=x")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    let long = "i".repeat(256);
    let (status, answer) = s.put(&long, json!({"secret": "x"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("invalid hpfeeds ident")
    );
    let huge = json!({"secret": "x".repeat(admin::MAX_BODY_BYTES)});
    let (status, _) = s.put("bob", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(s.identities.list().is_empty(), "nothing was stored");
}

#[tokio::test]
async fn changes_apply_to_new_hpfeeds_connections_at_once() {
    let s = setup().await;
    assert!(!hpfeeds_auth(s.hpfeeds, "sensor", "s3cret").await);
    let (status, _) = s
        .put(
            "sensor",
            json!({"secret": "s3cret", "pubchans": ["events"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(hpfeeds_auth(s.hpfeeds, "sensor", "s3cret").await);
    assert!(!hpfeeds_auth(s.hpfeeds, "sensor", "wrong").await);

    let (status, _) = s.put("sensor", json!({"secret": "rotated"})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!hpfeeds_auth(s.hpfeeds, "sensor", "s3cret").await);
    assert!(hpfeeds_auth(s.hpfeeds, "sensor", "rotated").await);

    let del = s
        .admin(reqwest::Method::DELETE, "/hpfeeds/identities/sensor")
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    assert!(!hpfeeds_auth(s.hpfeeds, "sensor", "rotated").await);
}
