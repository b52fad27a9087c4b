//! A real server on 127.0.0.1:0 around the IorioDB router, with helpers for the tests.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_auth::PasswordCost;
use herald_engine::{Accounts, AccountsOptions, Topics, TopicsOptions};
use herald_store::{MemoryStore, Store};
use herald_transport_iorio::{IorioConfig, router};
use serde_json::{Value, json};

/// The admin's password in every test server.
pub const ADMIN_PASSWORD: &str = "secret";

pub struct TestServer {
    pub addr: SocketAddr,
    pub topics: Topics,
    pub accounts: Accounts,
    pub http: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
}

/// A config for tests: generous session rate limit (every test client is 127.0.0.1).
pub fn config() -> IorioConfig {
    IorioConfig {
        session_attempts_per_minute: 10_000,
        ..IorioConfig::default()
    }
}

/// Fast retention enforcement for gap tests.
pub fn topics_options() -> TopicsOptions {
    TopicsOptions {
        retention_interval: Duration::from_millis(20),
        ..TopicsOptions::default()
    }
}

impl TestServer {
    /// A server on a [`MemoryStore`].
    pub async fn start(config: IorioConfig) -> TestServer {
        Self::start_on(Arc::new(MemoryStore::default()), config, None).await
    }

    /// A server on a fjall store in a temporary directory.
    pub async fn start_fjall(config: IorioConfig) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let store = herald_store_fjall::FjallStore::open(dir.path()).unwrap();
        Self::start_on(Arc::new(store), config, Some(dir)).await
    }

    async fn start_on(
        store: Arc<dyn Store>,
        config: IorioConfig,
        dir: Option<tempfile::TempDir>,
    ) -> TestServer {
        let (topics, _task) = Topics::open(store.clone(), topics_options()).await.unwrap();
        let accounts = Accounts::open(
            store,
            AccountsOptions {
                password_cost: PasswordCost::MINIMUM,
                ..AccountsOptions::default()
            },
        )
        .await
        .unwrap();
        accounts.ensure_admin(ADMIN_PASSWORD).await.unwrap();
        // Merged into a router with a fallback, as the binary does.
        let app = axum::Router::new()
            .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "no such route") })
            .merge(router(topics.clone(), accounts.clone(), config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        TestServer {
            addr,
            topics,
            accounts,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Logs in and returns the session token.
    pub async fn login(&self, user: &str, password: &str) -> String {
        let resp = self
            .http
            .post(self.url("/sessions"))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "login of {user}");
        let body: Value = resp.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    pub async fn admin_token(&self) -> String {
        self.login("admin", ADMIN_PASSWORD).await
    }

    /// Creates a user and returns its token.
    pub async fn user(&self, name: &str) -> String {
        self.accounts.add_user(name, "pw", false).await.unwrap();
        self.login(name, "pw").await
    }

    /// POSTs a JSON event as `token`; returns the response.
    pub async fn post_event(
        &self,
        token: &str,
        bucket: &str,
        stream: &str,
        body: &Value,
    ) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/streams/{bucket}/{stream}")))
            .header("x-session", token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// POSTs a JSON event and returns its seqnum.
    pub async fn append(&self, token: &str, bucket: &str, stream: &str, body: &Value) -> u64 {
        let resp = self.post_event(token, bucket, stream, body).await;
        assert_eq!(resp.status(), 201);
        let v: Value = resp.json().await.unwrap();
        v["meta"]["id"].as_u64().unwrap()
    }
}

/// Parses a response body as JSON, asserting the content type.
pub async fn json_body(resp: reqwest::Response) -> Value {
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(ct.as_deref(), Some("application/json"));
    resp.json().await.unwrap()
}

/// Asserts IorioDB's error body.
pub async fn assert_error(resp: reqwest::Response, status: u16, code: &str) {
    assert_eq!(resp.status(), status);
    let body = json_body(resp).await;
    assert_eq!(body["type"], code, "body: {body}");
}

/// Asserts 401 no-perm with `WWW-Authenticate: jwt`.
pub async fn assert_no_perm(resp: reqwest::Response) {
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "jwt");
    let body = json_body(resp).await;
    assert_eq!(body, json!({"type": "no-perm", "reason": "No Permission"}));
}
