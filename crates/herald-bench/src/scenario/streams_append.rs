//! `streams-append`: durable event appends to IorioDB-compatible streams from many concurrent
//! keep-alive clients.
//!
//! The scenario logs in once (`POST /sessions` with `--user` and `--password`) and every client
//! sends the session token in `X-Session`. Each client owns one HTTP/1.1 connection and sends
//! one `POST /streams/<bucket>/<stream>` at a time, waiting for the durable acknowledgement
//! (201 `{"meta":{"id":seq,"t":ms}}`) before the next. By default each client appends to a stream
//! of its own (`<stream>-r<run>-c<client>`); `--shared-stream` sends every client to one stream
//! (`<stream>-r<run>`), so the appends also contend for one sequence.
//!
//! Every event is the same JSON object of `--event-bytes` bytes. The seqnum of each 201 is
//! checked: per client it must grow (by exactly one on a stream of its own), else the answer
//! counts as a `bad-ack` error. After the run, the last seqnum of every stream written is read
//! back (`GET /streams/..?limit=1`) and compared with the acknowledgements received.
//!
//! Events per second counts successful appends that started inside the measurement window,
//! divided by the time from the window's start until the last of them was answered (as in
//! `docs-put`).
//!
//! The connection is a bare hyper HTTP/1.1 one, like `docs-put`'s default
//! ([`crate::http`]), here with the session header and the acknowledgement's body parsed.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Uri};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::args::{Target, parse_duration};
use crate::report::{self, CpuMeter, CpuUsage, Errors, Latency, Table};
use crate::scenario::unix_nanos;

/// The session header of IorioDB's API.
const SESSION_HEADER: &str = "x-session";
/// The smallest event `--event-bytes` allows: `{"p":""}`.
const MIN_EVENT_BYTES: usize = 8;

/// Flags of `herald-bench streams-append`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The main HTTP API of the server (`herald serve --http`), which serves the streams.
    #[arg(long, value_name = "http://HOST:PORT")]
    pub target: Target,
    /// Concurrent clients, each with one keep-alive connection and one request in flight.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Size of each event: a JSON object of exactly this many bytes.
    #[arg(long, default_value_t = 100)]
    pub event_bytes: usize,
    /// How long to measure.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Load applied before the measurement starts, not counted.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// Every client appends to one shared stream instead of a stream of its own.
    #[arg(long)]
    pub shared_stream: bool,
    /// Bucket of the streams written.
    #[arg(long, default_value = "bench")]
    pub bucket: String,
    /// Name prefix of the streams written (a run id and the client number are appended).
    #[arg(long, default_value = "append")]
    pub stream: String,
    /// User to log in as (`POST /sessions`); it needs write permission on the bucket.
    #[arg(long, default_value = "admin")]
    pub user: String,
    /// That user's password. Without one the clients send no session (anonymous).
    #[arg(long, env = "HERALD_ADMIN_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// The server's process id, to report its CPU use next to ours.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// Result of a `streams-append` run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `streams-append`.
    pub scenario: &'static str,
    /// The listener loaded.
    pub target: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Streams written: `clients`, or 1 with `--shared-stream`.
    pub streams: usize,
    /// Event size in bytes.
    pub event_bytes: usize,
    /// Length of the measurement window, seconds.
    pub duration_s: f64,
    /// Successful durable appends started in the window.
    pub events: u64,
    /// `events` over the time until the last of them was answered.
    pub events_per_second: f64,
    /// Request latency (send to full response) of the successful appends.
    pub latency: Latency,
    /// Failed requests started in the window, by status code, `transport` or `bad-ack`.
    pub errors: Errors,
    /// Connections opened again during the whole run because the server closed one (or a
    /// transport error dropped it). 0 when keep-alive holds.
    pub reconnects: u64,
    /// Every 201 received, warm-up and tail included.
    pub acked_total: u64,
    /// The sum of the last seqnums of the streams, read back after the run. Equal to
    /// `acked_total` unless an append was written but not acknowledged (a transport error).
    pub stored_total: u64,
    /// CPU use during the window.
    pub cpu: Option<CpuUsage>,
}

/// What one client measured.
struct ClientResult {
    ok: u64,
    /// Every 201, measured or not.
    acked: u64,
    reconnects: u64,
    errors: Errors,
    latency: Histogram<u64>,
    /// When the last request started in the window was answered.
    last_done: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

/// Runs the scenario.
///
/// # Errors
/// On invalid options, when the login fails, or when a client cannot connect before the run.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    if opts.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if opts.event_bytes < MIN_EVENT_BYTES {
        bail!("--event-bytes must be at least {MIN_EVENT_BYTES} (the event is a JSON object)");
    }
    let body = Bytes::from(event_body(opts.event_bytes));
    let session = match &opts.password {
        Some(password) => Some(login(&opts.target, &opts.user, password).await?),
        None => None,
    };
    let run_id = unix_nanos() / 1_000_000_000;
    let paths: Vec<String> = (0..opts.clients)
        .map(|c| stream_path(opts, run_id, c))
        .collect();

    let mut conns = Vec::with_capacity(opts.clients);
    for _ in 0..opts.clients {
        conns.push(crate::http::open(&opts.target).await?);
    }

    // Everyone starts together, a moment from now, once every task is spawned.
    let start = Instant::now() + Duration::from_millis(50);
    let window = Window {
        start,
        measure_from: start + opts.warmup,
        end: start + opts.warmup + opts.duration,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (conn, path) in conns.into_iter().zip(&paths) {
        let req = RequestTemplate {
            target: opts.target.clone(),
            uri: path.parse().with_context(|| format!("bad path {path:?}"))?,
            host: HeaderValue::from_str(opts.target.authority())?,
            session: session.clone(),
            body: body.clone(),
            own_stream: !opts.shared_stream,
        };
        tasks.spawn(client(conn, req, window));
    }

    tokio::time::sleep_until(window.measure_from).await;
    let meter = CpuMeter::start(opts.pid);
    let mut ok = 0;
    let mut acked_total = 0;
    let mut reconnects = 0;
    let mut errors = Errors::new();
    let mut latency = report::latency_histogram()?;
    let mut last_done = window.measure_from;
    while let Some(joined) = tasks.join_next().await {
        let r = joined.context("a client task panicked")??;
        ok += r.ok;
        acked_total += r.acked;
        reconnects += r.reconnects;
        for (k, v) in r.errors {
            *errors.entry(k).or_default() += v;
        }
        latency.add(&r.latency).context("cannot merge histograms")?;
        last_done = last_done.max(r.last_done.unwrap_or(last_done));
    }
    let cpu = meter.and_then(|m| m.stop());
    let elapsed = last_done.duration_since(window.measure_from).as_secs_f64();

    let mut streams = paths.clone();
    streams.dedup();
    let mut stored_total = 0;
    for path in &streams {
        stored_total += last_seq(&opts.target, path, session.as_ref()).await?;
    }
    Ok(Report {
        scenario: "streams-append",
        target: opts.target.to_string(),
        clients: opts.clients,
        streams: streams.len(),
        event_bytes: opts.event_bytes,
        duration_s: opts.duration.as_secs_f64(),
        events: ok,
        events_per_second: if elapsed > 0.0 {
            ok as f64 / elapsed
        } else {
            0.0
        },
        latency: Latency::from_nanos(&latency),
        errors,
        reconnects,
        acked_total,
        stored_total,
        cpu,
    })
}

/// A JSON object of exactly `bytes` bytes (at least [`MIN_EVENT_BYTES`]): `{"p":"xx…"}`.
fn event_body(bytes: usize) -> String {
    format!("{{\"p\":\"{}\"}}", "x".repeat(bytes - MIN_EVENT_BYTES))
}

/// `/streams/<bucket>/<stream>-r<run>[-c<client>]`.
fn stream_path(opts: &Options, run_id: u64, client: usize) -> String {
    if opts.shared_stream {
        format!("/streams/{}/{}-r{run_id}", opts.bucket, opts.stream)
    } else {
        format!(
            "/streams/{}/{}-r{run_id}-c{client}",
            opts.bucket, opts.stream
        )
    }
}

/// A reqwest client for the few requests outside the measurement (login, read-back).
fn setup_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the reqwest client")
}

/// Logs in with `POST /sessions`; returns the session token as a header value.
pub(crate) async fn login(
    target: &Target,
    user: &str,
    password: &str,
) -> anyhow::Result<HeaderValue> {
    #[derive(Deserialize)]
    struct Session {
        token: String,
    }
    let resp = setup_client()?
        .post(target.http_url("/sessions"))
        .json(&serde_json::json!({ "username": user, "password": password }))
        .send()
        .await
        .with_context(|| format!("cannot log in at {target}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    if status.as_u16() != 201 {
        bail!("login as {user:?} failed: {status} {text}");
    }
    let session: Session =
        serde_json::from_str(&text).with_context(|| format!("unexpected login answer {text}"))?;
    HeaderValue::from_str(&session.token).context("the session token is not a header value")
}

/// The seqnum of the newest event of a stream (`GET ..?limit=1`), 0 when it is empty.
pub(crate) async fn last_seq(
    target: &Target,
    path: &str,
    session: Option<&HeaderValue>,
) -> anyhow::Result<u64> {
    #[derive(Deserialize)]
    struct Entry {
        meta: Meta,
    }
    let mut req = setup_client()?.get(target.http_url(&format!("{path}?limit=1")));
    if let Some(token) = session {
        req = req.header(SESSION_HEADER, token.clone());
    }
    let resp = req.send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("cannot read back {path}: {status} {text}");
    }
    let entries: Vec<Entry> =
        serde_json::from_str(&text).with_context(|| format!("unexpected query answer {text}"))?;
    Ok(entries.last().map_or(0, |e| e.meta.id))
}

/// `meta` of an acknowledgement or a stored event.
#[derive(Deserialize)]
struct Meta {
    id: u64,
}

/// The body of a 201.
#[derive(Deserialize)]
struct Ack {
    meta: Meta,
}

/// Everything a client needs to build its requests.
struct RequestTemplate {
    target: Target,
    uri: Uri,
    host: HeaderValue,
    session: Option<HeaderValue>,
    body: Bytes,
    /// The stream is this client's alone, so its seqnums go up by exactly one.
    own_stream: bool,
}

impl RequestTemplate {
    fn build(&self) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(token) = &self.session {
            req = req.header(SESSION_HEADER, token.clone());
        }
        Ok(req.body(Full::new(self.body.clone()))?)
    }
}

/// Sends one append and reads the whole answer: its status, and the body when it is a 201.
async fn append(
    slot: &mut Option<SendRequest<Full<Bytes>>>,
    req: &RequestTemplate,
) -> anyhow::Result<(u16, Option<Bytes>)> {
    let sender = match slot {
        Some(s) if !s.is_closed() => s,
        _ => slot.insert(crate::http::open(&req.target).await?),
    };
    sender.ready().await?;
    let resp = sender.send_request(req.build()?).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, (status == 201).then_some(body)))
}

async fn client(
    conn: SendRequest<Full<Bytes>>,
    req: RequestTemplate,
    window: Window,
) -> anyhow::Result<ClientResult> {
    let mut result = ClientResult {
        ok: 0,
        acked: 0,
        reconnects: 0,
        errors: Errors::new(),
        latency: report::latency_histogram()?,
        last_done: None,
    };
    let mut slot = Some(conn);
    let mut last_id = 0;
    tokio::time::sleep_until(window.start).await;
    loop {
        let sent = Instant::now();
        if sent >= window.end {
            break;
        }
        if slot.as_ref().is_none_or(SendRequest::is_closed) {
            result.reconnects += 1;
        }
        let outcome = append(&mut slot, &req).await;
        let done = Instant::now();
        let measured = sent >= window.measure_from;
        if measured {
            result.last_done = Some(done);
        }
        let error = match outcome {
            Ok((201, Some(body))) => {
                result.acked += 1;
                match serde_json::from_slice::<Ack>(&body) {
                    Ok(ack) if ack_in_order(req.own_stream, last_id, ack.meta.id) => {
                        last_id = ack.meta.id;
                        if measured {
                            result.ok += 1;
                            let nanos = done.duration_since(sent).as_nanos() as u64;
                            result.latency.saturating_record(nanos);
                        }
                        None
                    }
                    Ok(ack) => {
                        last_id = ack.meta.id;
                        Some("bad-ack".to_owned())
                    }
                    Err(_) => Some("bad-ack".to_owned()),
                }
            }
            Ok((status, _)) => Some(status.to_string()),
            Err(_) => {
                // Do not spin against a server that is gone; the next append reconnects.
                slot = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
                Some("transport".to_owned())
            }
        };
        if let (Some(e), true) = (error, measured) {
            *result.errors.entry(e).or_default() += 1;
        }
    }
    Ok(result)
}

/// Whether an acknowledged seqnum follows the client's previous one: the next number on a
/// stream of its own, any larger one on a shared stream.
fn ack_in_order(own_stream: bool, last: u64, id: u64) -> bool {
    if own_stream {
        id == last + 1
    } else {
        id > last
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let streams = if self.streams == 1 && self.clients > 1 {
            "one shared stream".to_owned()
        } else {
            format!("{} streams", self.streams)
        };
        let mut t = Table::new(format!(
            "streams-append  target={} clients={} event={} B duration={} s ({streams})",
            self.target, self.clients, self.event_bytes, self.duration_s
        ));
        t.row("events", report::count(self.events));
        t.row("events/s", format!("{:.0}", self.events_per_second));
        self.latency.rows(&mut t, "latency");
        t.row("errors", report::errors_text(&self.errors));
        t.row("reconnects", report::count(self.reconnects));
        t.row(
            "acked / stored",
            format!(
                "{} / {}",
                report::count(self.acked_total),
                report::count(self.stored_total)
            ),
        );
        if let Some(cpu) = &self.cpu {
            cpu.row(&mut t);
        }
        t.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(shared: bool) -> Options {
        Options {
            target: "http://127.0.0.1:1".parse().unwrap(),
            clients: 2,
            event_bytes: 100,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            shared_stream: shared,
            bucket: "b".into(),
            stream: "s".into(),
            user: "admin".into(),
            password: None,
            pid: None,
        }
    }

    #[test]
    fn event_bodies_are_json_objects_of_the_size_asked() {
        for n in [MIN_EVENT_BYTES, 9, 100, 1000] {
            let body = event_body(n);
            assert_eq!(body.len(), n);
            assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["p"].is_string());
        }
    }

    #[test]
    fn paths() {
        assert_eq!(stream_path(&options(false), 7, 3), "/streams/b/s-r7-c3");
        assert_eq!(stream_path(&options(true), 7, 3), "/streams/b/s-r7");
    }

    #[test]
    fn ack_order() {
        assert!(ack_in_order(true, 0, 1));
        assert!(!ack_in_order(true, 1, 3));
        assert!(!ack_in_order(true, 2, 2));
        assert!(ack_in_order(false, 1, 3));
        assert!(!ack_in_order(false, 3, 3));
    }

    #[test]
    fn acks_parse() {
        let ack: Ack = serde_json::from_str(r#"{"meta":{"id":42,"t":1700000000000}}"#).unwrap();
        assert_eq!(ack.meta.id, 42);
    }
}
