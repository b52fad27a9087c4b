//! Helpers shared by the integration tests: starting the real `herald` binary (through
//! `herald_testkit`), HTTP requests (reqwest, and a raw HTTP/1.1 client for requests reqwest
//! would normalise), WebSocket clients, and token minting.
//!
//! Every await on a socket is bounded by [`T`] (or an explicit shorter wait).

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_testkit::Server;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

/// The bound on any single socket operation (request, frame, handshake).
pub(crate) const T: Duration = Duration::from_secs(5);
/// How long "nothing arrives" is observed.
pub(crate) const QUIET: Duration = Duration::from_millis(300);
/// How long a server may take to start (the testkit's own limit is 30 s).
const START: Duration = Duration::from_secs(40);

/// The `herald` binary under test.
pub(crate) fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_herald"))
}

/// Awaits `fut` for at most [`T`], panicking with `what` on timeout.
pub(crate) async fn within<F: IntoFuture>(what: &str, fut: F) -> F::Output {
    within_for(T, what, fut).await
}

/// Awaits `fut` for at most `limit`, panicking with `what` on timeout.
pub(crate) async fn within_for<F: IntoFuture>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut.into_future()).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Starts `herald serve` on ephemeral loopback ports with a fresh data directory.
pub(crate) async fn start(args: &[&str]) -> Server {
    within_for(START, "server start", Server::start(bin(), args))
        .await
        .expect("herald starts")
}

/// Stops a server gracefully and checks it exited cleanly.
pub(crate) async fn stop(server: Server) {
    within_for(Duration::from_secs(25), "server stop", server.stop())
        .await
        .expect("herald stops cleanly");
}

// ---------------------------------------------------------------------------------------------
// HTTP through reqwest
// ---------------------------------------------------------------------------------------------

/// A response, read completely.
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) content_type: Option<String>,
    pub(crate) body: String,
}

impl Resp {
    /// The body parsed as JSON (panics when it is not).
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// Asserts status, and that the body is a JSON object with a string `error`.
    pub(crate) fn assert_json_error(&self, status: u16) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/json"),
            "{self:?}"
        );
        assert!(self.json()["error"].is_string(), "{self:?}");
    }
}

/// A client with no proxy and a per-request timeout.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(T)
        .build()
        .expect("reqwest client")
}

/// Sends a request and reads the whole response (bounded by [`T`]).
pub(crate) async fn send(rb: reqwest::RequestBuilder) -> Resp {
    within("HTTP request", async move {
        let resp = rb.send().await.expect("request is answered");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| v.to_str().expect("ascii content type").to_owned());
        let body = resp.text().await.expect("body is read");
        Resp {
            status,
            content_type,
            body,
        }
    })
    .await
}

pub(crate) async fn get(url: &str) -> Resp {
    send(client().get(url)).await
}

/// PUT with a raw body and no Content-Type header.
pub(crate) async fn put(url: &str, body: &str) -> Resp {
    send(client().put(url).body(body.to_owned())).await
}

pub(crate) async fn delete(url: &str) -> Resp {
    send(client().delete(url)).await
}

/// GET that must answer 200 with JSON; returns the value.
pub(crate) async fn get_json(url: &str) -> Value {
    let r = get(url).await;
    assert_eq!(r.status, 200, "GET {url}: {r:?}");
    r.json()
}

/// Durable Icepeak PUT that must answer 202.
pub(crate) async fn icepeak_put(server: &Server, path: &str, body: &str) {
    let url = format!("{}{path}?durable", server.icepeak_url());
    let r = put(&url, body).await;
    assert_eq!(r.status, 202, "PUT {url}: {r:?}");
    assert_eq!(r.body, "", "PUT {url}");
}

/// The value at `path` read through the Icepeak listener (`None` on 404).
pub(crate) async fn icepeak_get(server: &Server, path: &str) -> Option<Value> {
    let r = get(&format!("{}{path}", server.icepeak_url())).await;
    match r.status {
        200 => Some(r.json()),
        404 => None,
        _ => panic!("GET {path}: {r:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 (for requests that a URL library would rewrite, e.g. `%2e%2e`)
// ---------------------------------------------------------------------------------------------

/// A raw response.
#[derive(Debug, Clone)]
pub(crate) struct RawResp {
    pub(crate) status: u16,
    /// Header names in lower case.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl RawResp {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body_str()))
    }
}

/// Sends one HTTP/1.1 request exactly as given (no normalisation of `target`) and reads the
/// response. Adds `Host`, `Content-Length` (when there is a body and no `Transfer-Encoding`)
/// and `Connection: close` (unless a `Connection` header is given).
pub(crate) async fn raw_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResp {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n");
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("connection") {
        head.push_str("Connection: close\r\n");
    }
    if !body.is_empty() && !has("transfer-encoding") && !has("content-length") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    within("raw HTTP request", async move {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(&bytes).await.expect("write request");
        read_response(&mut stream).await
    })
    .await
}

/// Reads one HTTP/1.1 response (Content-Length, chunked, or until EOF).
pub(crate) async fn read_response(stream: &mut TcpStream) -> RawResp {
    let mut buf = Vec::new();
    let header_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read response");
        assert!(n > 0, "connection closed before the response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..header_end]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut rest = buf[header_end + 4..].to_vec();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = if status == 101 {
        rest
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().expect("numeric content-length");
        while rest.len() < len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "connection closed in the body");
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else {
        stream.read_to_end(&mut rest).await.expect("read body");
        if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            dechunk(&rest)
        } else {
            rest
        }
    };
    RawResp {
        status,
        headers,
        body,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = find(data, b"\r\n") {
        let size = std::str::from_utf8(&data[..i]).expect("chunk size");
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .expect("hex chunk size");
        if size == 0 {
            break;
        }
        let start = i + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}

/// Headers of a WebSocket upgrade request.
pub(crate) const UPGRADE_HEADERS: &[(&str, &str)] = &[
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

/// Sends a raw WebSocket handshake (plus `extra` headers) and returns the response; on 101 the
/// stream is returned too, with any bytes already read after the head in `body`.
pub(crate) async fn raw_ws_handshake(
    addr: SocketAddr,
    target: &str,
    extra: &[(&str, &str)],
) -> (RawResp, TcpStream) {
    let mut head = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in UPGRADE_HEADERS.iter().chain(extra) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    within("raw WebSocket handshake", async move {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("write");
        let resp = read_response(&mut stream).await;
        (resp, stream)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// WebSocket through tokio-tungstenite
// ---------------------------------------------------------------------------------------------

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Connects a WebSocket client (the handshake must succeed).
pub(crate) async fn ws_connect(url: &str) -> Ws {
    ws_connect_req(url.into_client_request().expect("ws url")).await
}

/// Connects with a `Authorization: Bearer` header.
pub(crate) async fn ws_connect_bearer(url: &str, token: &str) -> Ws {
    let mut req = url.into_client_request().expect("ws url");
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().expect("header value"),
    );
    ws_connect_req(req).await
}

async fn ws_connect_req(req: tungstenite::handshake::client::Request) -> Ws {
    let uri = req.uri().clone();
    let (ws, resp) = within("ws connect", tokio_tungstenite::connect_async(req))
        .await
        .unwrap_or_else(|e| panic!("ws connect to {uri}: {e}"));
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// The next data or close message, skipping pings and pongs; `None` when the stream ended.
pub(crate) async fn next_msg_for(ws: &mut Ws, limit: Duration) -> Option<Message> {
    within_for(limit, "next websocket message", async {
        loop {
            match ws.next().await {
                None => return None,
                Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::Protocol(_),
                )) => {
                    return None;
                }
                Some(Err(e)) => panic!("websocket error: {e}"),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => return Some(m),
            }
        }
    })
    .await
}

/// The next text frame (panics on anything else or on timeout).
pub(crate) async fn next_text(ws: &mut Ws) -> String {
    match next_msg_for(ws, T).await {
        Some(Message::Text(t)) => t.as_str().to_owned(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// The next text frame parsed as JSON.
pub(crate) async fn next_json(ws: &mut Ws) -> Value {
    let t = next_text(ws).await;
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {t:?}"))
}

/// Asserts that no data frame arrives within `wait` (pings and pongs are fine).
pub(crate) async fn assert_silent(ws: &mut Ws, wait: Duration) {
    let got = tokio::time::timeout(wait, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    })
    .await;
    if let Ok(m) = got {
        panic!("expected silence for {wait:?}, got {m:?}");
    }
}

/// Sends a text frame.
pub(crate) async fn send_text(ws: &mut Ws, text: &str) {
    within("ws send", ws.send(Message::text(text.to_owned())))
        .await
        .expect("ws send");
}

/// Reads until the server closes; returns the close code and reason of its close frame.
pub(crate) async fn expect_close(ws: &mut Ws) -> (u16, String) {
    loop {
        match next_msg_for(ws, T).await {
            Some(Message::Close(Some(frame))) => {
                return (u16::from(frame.code), frame.reason.as_str().to_owned());
            }
            Some(Message::Close(None)) => panic!("close frame without a code"),
            Some(Message::Text(_) | Message::Binary(_)) => continue,
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

/// Asserts that the stream ends (a close frame or EOF) within [`T`].
pub(crate) async fn expect_end(ws: &mut Ws) {
    match next_msg_for(ws, T).await {
        None | Some(Message::Close(_)) => {}
        Some(other) => panic!("expected the end of the stream, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

/// Unix seconds now.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// An HS256 token over arbitrary claims, signed with `secret` by the `jsonwebtoken` crate.
pub(crate) fn hs256(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token encodes")
}

/// The `icepeak` claim for `(prefix, modes)` entries.
pub(crate) fn icepeak_claim(entries: &[(&[&str], &[&str])]) -> Value {
    let whitelist: Vec<Value> = entries
        .iter()
        .map(|(prefix, modes)| serde_json::json!({"prefix": prefix, "modes": modes}))
        .collect();
    serde_json::json!({"version": 1, "whitelist": whitelist})
}

/// Unpadded base64url (for hand-made unsigned tokens).
pub(crate) fn b64url(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Mints a token with the real CLI: `herald token <args>`.
pub(crate) async fn cli_token(args: &[&str]) -> String {
    let out = run_cli(&[&["token"], args].concat()).await;
    assert!(out.status.success(), "herald token failed: {out:?}");
    String::from_utf8(out.stdout)
        .expect("UTF-8 token")
        .trim()
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Runs `herald <args>` to completion (bounded) with a clean environment.
pub(crate) async fn run_cli(args: &[&str]) -> std::process::Output {
    let mut cmd = command();
    cmd.args(args).stdin(Stdio::null());
    within_for(
        Duration::from_secs(20),
        "herald command",
        cmd.kill_on_drop(true).output(),
    )
    .await
    .expect("herald runs")
}

/// Runs `herald ARGS` to completion (bounded by 60 s) with a clean environment (see
/// [`command`]) plus `env`, and `stdin` piped in when given.
pub(crate) async fn run_with<E: AsRef<std::ffi::OsStr>>(
    args: &[&str],
    env: &[(&str, E)],
    stdin: Option<&str>,
) -> std::process::Output {
    let mut cmd = command();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("herald starts");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        // A command that fails before reading its input (a refused call) may have exited
        // already: its output says what happened, the broken pipe does not.
        if let Err(e) = pipe.write_all(input.as_bytes()).await {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
        }
        drop(pipe);
    }
    within_for(
        Duration::from_secs(60),
        "herald command",
        child.wait_with_output(),
    )
    .await
    .expect("herald ran")
}

pub(crate) fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
pub(crate) fn assert_ok(out: &std::process::Output) {
    assert!(out.status.success(), "{}{}", stdout(out), stderr(out));
}

#[track_caller]
pub(crate) fn assert_fails(out: &std::process::Output, message: &str) {
    assert!(!out.status.success(), "unexpected success: {}", stdout(out));
    assert!(stderr(out).contains(message), "{}", stderr(out));
}

/// A `herald` command without any inherited Herald, hpfeeds, JWT or proxy settings.
pub(crate) fn command() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("HERALD_")
            || k.starts_with("HPFEEDS_")
            || k == "JWT_SECRET"
            || k.to_ascii_lowercase().ends_with("_proxy")
        {
            cmd.env_remove(k);
        }
    }
    // The hpfeeds broker is on by default on 127.0.0.1:10000, which parallel tests would fight
    // over; a test that wants it passes --hpfeeds (flags win over the environment).
    cmd.env("HERALD_HPFEEDS", "off");
    cmd.env("HERALD_MQTT", "off");
    cmd.env("RUST_LOG", "info");
    cmd
}

/// A `herald serve` process started by hand (for CLI and configuration tests), killed on drop.
pub(crate) struct Proc {
    pub(crate) child: tokio::process::Child,
    pub(crate) ready: PathBuf,
    pub(crate) log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` (stdout and stderr to `log`) and waits for `ready` to appear.
    pub(crate) async fn spawn(
        mut cmd: tokio::process::Command,
        ready: PathBuf,
        log: PathBuf,
    ) -> Proc {
        let file = std::fs::File::create(&log).expect("log file");
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("herald spawns");
        within_for(START, "herald ready file", async {
            loop {
                if ready.exists() {
                    return;
                }
                if let Some(status) = child.try_wait().expect("try_wait") {
                    panic!(
                        "herald exited with {status}:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        Proc { child, ready, log }
    }

    /// The listeners written to the ready file.
    pub(crate) fn addrs(&self) -> std::collections::HashMap<String, SocketAddr> {
        let text = std::fs::read_to_string(&self.ready).expect("ready file");
        let map: std::collections::HashMap<String, String> =
            serde_json::from_str(&text).expect("ready file is JSON");
        map.into_iter()
            .map(|(k, v)| (k, v.parse().expect("socket address")))
            .collect()
    }

    /// SIGTERM, then waits for a clean exit.
    pub(crate) async fn stop(mut self) {
        let pid = self.child.id().expect("running").to_string();
        let status = within("kill -TERM", command_kill(&pid)).await;
        assert!(status.success(), "kill -TERM failed");
        let status = within_for(Duration::from_secs(25), "herald exit", self.child.wait())
            .await
            .expect("wait");
        assert!(
            status.success(),
            "herald exited with {status}:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

pub(crate) async fn command_kill(pid: &str) -> std::process::ExitStatus {
    tokio::process::Command::new("kill")
        .args(["-TERM", pid])
        .status()
        .await
        .expect("kill runs")
}

/// Sends a request head announcing `body` but holds the body back until the answer arrives
/// (as clients that write head and body separately may do), then sends the body and a
/// `GET {next}` on the same connection. A server that answers early without reading the body
/// must either say `Connection: close` or keep the connection usable: closing it silently
/// breaks keep-alive clients (e.g. Python `requests` raises `RemoteDisconnected` on its next
/// request). Returns the early answer and, when the connection was kept, the second answer.
pub(crate) async fn early_answer_keeps_connection_usable(
    addr: SocketAddr,
    head: &str,
    body: &[u8],
    next: &str,
) -> (RawResp, Option<RawResp>) {
    within("early answer and reuse", async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "{head}\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.expect("write head");
        let first = read_response(&mut stream).await;
        if first
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            return (first, None);
        }
        // Kept alive: the held-back body and the next request must both be understood.
        let mut rest = body.to_vec();
        rest.extend_from_slice(format!("GET {next} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes());
        let written = stream.write_all(&rest).await;
        let mut probe = [0u8; 1];
        let peeked = stream.peek(&mut probe).await;
        assert!(
            written.is_ok() && matches!(peeked, Ok(n) if n > 0),
            "the server closed the connection after answering {} without `Connection: close` \
             (write: {written:?}, read: {peeked:?}); first answer: {first:?}",
            first.status
        );
        let second = read_response(&mut stream).await;
        (first, Some(second))
    })
    .await
}
