//! `herald serve` configuration: flags, `HERALD_*` environment variables and a TOML file,
//! merged in that order of precedence over built-in defaults.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, bail};
use clap::Args;
use herald_core::topic::{Retention, RetentionRules};
use herald_core::{PathLimits, PathPattern};
use serde::Deserialize;

/// Where a listener binds, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listen {
    Off,
    On(SocketAddr),
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Listen::Off);
        }
        let mut addrs = s
            .to_socket_addrs()
            .map_err(|e| format!("expected HOST:PORT or 'off', got {s:?}: {e}"))?;
        addrs
            .next()
            .map(Listen::On)
            .ok_or_else(|| format!("{s:?} resolves to no address"))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Off => f.write_str("off"),
            Listen::On(a) => write!(f, "{a}"),
        }
    }
}

/// Options of `herald serve`. Each is optional here so that the environment and the config file
/// can fill what the command line leaves out.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TOML configuration file. Its keys are the option names below without the leading dashes
    /// (e.g. `data-dir = "/var/lib/herald"`, `icepeak = "0.0.0.0:3000"`).
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Directory of the embedded store (created if missing). [default: ./herald-data]
    #[arg(long, env = "HERALD_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Icepeak-compatible listener: HTTP GET/PUT/DELETE on document paths and WebSocket
    /// subscriptions on any path. [default: 127.0.0.1:3000]
    #[arg(long, env = "HERALD_ICEPEAK", value_name = "HOST:PORT|off")]
    icepeak: Option<Listen>,

    /// Main HTTP API: documents under /docs/{path} (GET, PUT, DELETE, PATCH), GET /health, and
    /// IorioDB-compatible event streams (/streams, /sessions, /users/, /access, /listen) with
    /// Herald's native /topics, /events and /retention. [default: 127.0.0.1:8080]
    #[arg(long, env = "HERALD_HTTP", value_name = "HOST:PORT|off")]
    http: Option<Listen>,

    /// PEM certificate chain (leaf first) for the --http listener: with --http-tls-key, it
    /// speaks HTTPS only (WebSocket clients, MQTT over WebSocket included, use wss://).
    /// Reloaded when the files change.
    #[arg(long, env = "HERALD_HTTP_TLS_CERT", value_name = "FILE")]
    http_tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, RSA or EC) of --http-tls-cert; both or neither.
    #[arg(long, env = "HERALD_HTTP_TLS_KEY", value_name = "FILE")]
    http_tls_key: Option<PathBuf>,

    /// Prometheus metrics listener (text format at /metrics, 200 at /healthcheck).
    /// [default: off]
    #[arg(long, env = "HERALD_METRICS", value_name = "HOST:PORT|off")]
    metrics: Option<Listen>,

    /// hpfeeds broker listener (TCP, or TLS with --hpfeeds-tls-cert). Every hpfeeds client authenticates with an identity
    /// (`herald hpfeeds add`, or `HPFEEDS_<IDENT>_SECRET` variables), so this listener may bind
    /// any address without --allow-anonymous. Channel C is the event stream /PREFIX/C.
    /// [default: 127.0.0.1:10000]
    #[arg(long, env = "HERALD_HPFEEDS", value_name = "HOST:PORT|off")]
    hpfeeds: Option<Listen>,

    /// MQTT 3.1.1 and 5.0 broker listener. Clients log in as Herald users (or with a session
    /// token as the password); clients without a user name are served with the anonymous
    /// role's grants only on a loopback address or with --allow-anonymous. MQTT topic a/b is
    /// the topic /a/b. [default: 127.0.0.1:1883]
    #[arg(long, env = "HERALD_MQTT", value_name = "HOST:PORT|off")]
    mqtt: Option<Listen>,

    /// Largest MQTT packet accepted, in bytes (announced to MQTT 5 clients as Maximum Packet
    /// Size). [default: 1048576]
    #[arg(long, env = "HERALD_MQTT_MAX_PACKET_SIZE", value_name = "BYTES")]
    mqtt_max_packet_size: Option<u32>,

    /// Seconds an MQTT session outlives its connection at most: MQTT 3.1.1 persistent
    /// sessions, and MQTT 5 session expiry intervals beyond it, end after this.
    /// [default: 604800 (7 days)]
    #[arg(long, env = "HERALD_MQTT_MAX_SESSION_EXPIRY", value_name = "SECONDS")]
    mqtt_max_session_expiry: Option<u64>,

    /// PEM certificate chain (leaf first) for the MQTT listener: with --mqtt-tls-key, --mqtt
    /// speaks MQTT over TLS only (clients use port 8883 by convention). Reloaded when the
    /// files change.
    #[arg(long, env = "HERALD_MQTT_TLS_CERT", value_name = "FILE")]
    mqtt_tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, RSA or EC) of --mqtt-tls-cert; both or neither.
    #[arg(long, env = "HERALD_MQTT_TLS_KEY", value_name = "FILE")]
    mqtt_tls_key: Option<PathBuf>,

    /// Broker name sent to hpfeeds clients (OP_INFO), also the publisher ident of events
    /// written through other protocols. [default: hpfeeds]
    #[arg(long, env = "HERALD_HPFEEDS_NAME", value_name = "NAME")]
    hpfeeds_name: Option<String>,

    /// First path segment of hpfeeds channels: channel C is the topic /PREFIX/C (IorioDB
    /// bucket PREFIX, stream C). [default: hpfeeds]
    #[arg(long, env = "HERALD_HPFEEDS_PREFIX", value_name = "PREFIX")]
    hpfeeds_prefix: Option<String>,

    /// Also accept hpfeeds identities defined by environment variables
    /// `HPFEEDS_<IDENT>_SECRET`, `_PUBCHANS`, `_SUBCHANS` and `_OWNER` (channel lists comma-separated),
    /// after the stored ones. [default: true]
    #[arg(
        long,
        env = "HERALD_HPFEEDS_ENV_AUTH",
        value_name = "BOOL",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    hpfeeds_env_auth: Option<bool>,

    /// Seconds an hpfeeds subscriber may leave its output buffer full before it gets
    /// "Backpressure deadline timer expired" and is disconnected. [default: 60]
    #[arg(
        long,
        env = "HERALD_HPFEEDS_BACKPRESSURE_DEADLINE",
        value_name = "SECONDS"
    )]
    hpfeeds_backpressure_deadline: Option<u64>,

    /// PEM certificate chain (leaf first) for the hpfeeds listener: with --hpfeeds-tls-key,
    /// the listener speaks TLS only (as the Python broker's `tls:` endpoint). Both files are
    /// checked every 5 seconds and reloaded when they change: new connections get the new
    /// certificate, open ones keep theirs; a pair that fails to load is logged and the
    /// previous one kept. [default: none, plain TCP]
    #[arg(long, env = "HERALD_HPFEEDS_TLS_CERT", value_name = "FILE")]
    hpfeeds_tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, RSA or EC) of --hpfeeds-tls-cert; both or neither.
    #[arg(long, env = "HERALD_HPFEEDS_TLS_KEY", value_name = "FILE")]
    hpfeeds_tls_key: Option<PathBuf>,

    /// Require a JSON Web Token on every request. Tokens carry an `icepeak` claim listing path
    /// prefixes and modes (see `herald token`).
    #[arg(long, env = "HERALD_ENABLE_JWT_AUTH")]
    enable_jwt_auth: bool,

    /// Secret that verifies HS256 token signatures (also read from JWT_SECRET). Without one,
    /// tokens are decoded but not verified, for use behind a proxy that verified them.
    #[arg(
        long,
        env = "HERALD_JWT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    jwt_secret: Option<String>,

    /// Serve anonymous clients on non-loopback addresses. Without authentication Herald only
    /// starts when every data listener binds a loopback address, unless this is given.
    #[arg(long, env = "HERALD_ALLOW_ANONYMOUS")]
    allow_anonymous: bool,

    /// Largest accepted request body in bytes; larger ones get 413. [default: 10485760]
    #[arg(long, env = "HERALD_MAX_BODY_BYTES", value_name = "BYTES")]
    max_body_bytes: Option<usize>,

    /// Most connections open at once on the data listeners (WebSockets included); at the
    /// limit new connections wait to be accepted. [default: 100000]
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,

    /// Seconds a client of the HTTP listeners (--icepeak, --http, --metrics) may keep the server
    /// waiting for what it owes: a complete request head, counted from when the server starts
    /// waiting for one (on a new connection, and on a keep-alive one after each response; past
    /// it the connection is closed), and the next piece of a request body (past it the request
    /// gets 408). A request being answered (a long poll, an SSE stream, a WebSocket) is not
    /// timed by it. [default: 30]
    #[arg(long, env = "HERALD_HTTP_IDLE_TIMEOUT", value_name = "SECONDS")]
    http_idle_timeout: Option<u64>,

    /// What memory-only topics keep in memory together, in bytes, about: each keeps at most
    /// an equal share (at least 64 KiB, at most 32 MiB) of its newest events, its whole
    /// history. [default: 268435456]
    #[arg(long, env = "HERALD_MEMORY_ONLY_BUDGET", value_name = "BYTES")]
    memory_only_budget: Option<usize>,

    /// What durable topics keep in memory together, in bytes, about: each keeps its newest
    /// events (at most 256 events / 256 KiB, and at most an equal share of this, but at
    /// least 64 KiB while subscribers follow it) for subscribers that are nearly caught up;
    /// older events are read from disk.
    /// [default: 268435456]
    #[arg(long, env = "HERALD_DURABLE_WINDOW_BUDGET", value_name = "BYTES")]
    durable_window_budget: Option<usize>,

    /// Worker threads that run the connections and the engine. Fewer than the CPUs leaves
    /// cores to other processes on the machine (a database, a load generator); the store's
    /// commits and background work run on threads of their own either way.
    /// [default: one per CPU]
    #[arg(long, env = "HERALD_THREADS", value_name = "N")]
    threads: Option<usize>,

    /// Document write queue size; Icepeak writes get 503 when it is full. [default: 4096]
    #[arg(long, env = "HERALD_QUEUE_CAPACITY", value_name = "N")]
    queue_capacity: Option<usize>,

    /// Snapshot the document tree after at least this many writes (and at least one snapshot's
    /// worth of log bytes, so large trees are not rewritten too often). Bounds what a restart
    /// replays. [default: 10000]
    #[arg(long, env = "HERALD_SNAPSHOT_EVERY", value_name = "WRITES")]
    snapshot_every: Option<u64>,

    /// Seconds between WebSocket pings; 0 disables them. [default: 30]
    #[arg(long, env = "HERALD_WEBSOCKET_PING_INTERVAL", value_name = "SECONDS")]
    websocket_ping_interval: Option<u64>,

    /// Seconds to wait for a pong after a ping interval before dropping a WebSocket client.
    /// [default: 30]
    #[arg(long, env = "HERALD_WEBSOCKET_PONG_TIMEOUT", value_name = "SECONDS")]
    websocket_pong_timeout: Option<u64>,

    /// Microseconds a `?method=reusable` WebSocket may stay open without a successful
    /// subscribe. [default: 1000000]
    #[arg(
        long,
        env = "HERALD_FIRST_SUBSCRIPTION_DEADLINE_TIMEOUT",
        value_name = "MICROSECONDS"
    )]
    first_subscription_deadline_timeout: Option<u64>,

    /// Secret that signs IorioDB-style session tokens (`POST /sessions`, HS512). Without one, a
    /// random secret is generated on first start and kept in the data directory, so sessions
    /// survive restarts.
    #[arg(
        long,
        env = "HERALD_SESSION_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    session_secret: Option<String>,

    /// Seconds a session token stays valid. [default: 86400]
    #[arg(long, env = "HERALD_SESSION_TTL", value_name = "SECONDS")]
    session_ttl: Option<u64>,

    /// Login attempts (`/sessions`) allowed per minute per client IP; 0 disables the limit.
    /// [default: 10]
    #[arg(long, env = "HERALD_SESSION_ATTEMPTS_PER_MINUTE", value_name = "N")]
    session_attempts_per_minute: Option<u32>,

    /// Largest event accepted on a stream, in bytes; larger ones get 413. [default: 1048576]
    #[arg(long, env = "HERALD_MAX_EVENT_BYTES", value_name = "BYTES")]
    max_event_bytes: Option<usize>,

    /// Seconds a long-poll `/listen` request is held without events before it gets 204.
    /// [default: 60]
    #[arg(long, env = "HERALD_LONG_POLL_TIMEOUT", value_name = "SECONDS")]
    long_poll_timeout: Option<u64>,

    /// Once every listener is bound, write their addresses as JSON to this file (useful with
    /// port 0, e.g. in tests).
    #[arg(long, env = "HERALD_READY_FILE", value_name = "FILE")]
    ready_file: Option<PathBuf>,
}

/// One `[[retention]]` table of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RetentionRule {
    /// Topic pattern (`/logs/#`, `/sensors/+/raw`).
    pattern: String,
    max_events: Option<u64>,
    max_bytes: Option<u64>,
    max_age_secs: Option<u64>,
    #[serde(default)]
    memory_only: bool,
}

/// The TOML file: the same names as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    data_dir: Option<PathBuf>,
    icepeak: Option<String>,
    http: Option<String>,
    metrics: Option<String>,
    hpfeeds: Option<String>,
    mqtt: Option<String>,
    http_tls_cert: Option<PathBuf>,
    http_tls_key: Option<PathBuf>,
    mqtt_max_packet_size: Option<u32>,
    mqtt_max_session_expiry: Option<u64>,
    mqtt_tls_cert: Option<PathBuf>,
    mqtt_tls_key: Option<PathBuf>,
    hpfeeds_name: Option<String>,
    hpfeeds_prefix: Option<String>,
    hpfeeds_env_auth: Option<bool>,
    hpfeeds_backpressure_deadline: Option<u64>,
    hpfeeds_tls_cert: Option<PathBuf>,
    hpfeeds_tls_key: Option<PathBuf>,
    enable_jwt_auth: Option<bool>,
    jwt_secret: Option<String>,
    allow_anonymous: Option<bool>,
    max_body_bytes: Option<usize>,
    max_connections: Option<usize>,
    http_idle_timeout: Option<u64>,
    memory_only_budget: Option<usize>,
    durable_window_budget: Option<usize>,
    threads: Option<usize>,
    queue_capacity: Option<usize>,
    snapshot_every: Option<u64>,
    websocket_ping_interval: Option<u64>,
    websocket_pong_timeout: Option<u64>,
    first_subscription_deadline_timeout: Option<u64>,
    session_secret: Option<String>,
    session_ttl: Option<u64>,
    session_attempts_per_minute: Option<u32>,
    max_event_bytes: Option<usize>,
    long_poll_timeout: Option<u64>,
    ready_file: Option<PathBuf>,
    #[serde(default)]
    retention: Vec<RetentionRule>,
}

/// The merged settings `serve` runs with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) data_dir: PathBuf,
    pub(crate) icepeak: Listen,
    pub(crate) http: Listen,
    pub(crate) metrics: Listen,
    pub(crate) hpfeeds: Listen,
    pub(crate) mqtt: Listen,
    /// The --http listener's TLS certificate and key files, when it speaks HTTPS.
    pub(crate) http_tls: Option<herald_tls::TlsFiles>,
    pub(crate) mqtt_max_packet_size: u32,
    pub(crate) mqtt_max_session_expiry: u64,
    /// The MQTT listener's TLS certificate and key files, when it speaks TLS.
    pub(crate) mqtt_tls: Option<herald_tls::TlsFiles>,
    pub(crate) hpfeeds_name: String,
    pub(crate) hpfeeds_prefix: String,
    pub(crate) hpfeeds_env_auth: bool,
    pub(crate) hpfeeds_backpressure_deadline: u64,
    /// The hpfeeds listener's TLS certificate and key files, when it speaks TLS.
    pub(crate) hpfeeds_tls: Option<herald_transport_hpfeeds::TlsFiles>,
    pub(crate) enable_jwt_auth: bool,
    pub(crate) jwt_secret: Option<String>,
    pub(crate) allow_anonymous: bool,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_connections: usize,
    pub(crate) http_idle_timeout: u64,
    pub(crate) memory_only_budget: usize,
    pub(crate) durable_window_budget: usize,
    /// Worker threads of the async runtime; `None`: one per CPU.
    pub(crate) threads: Option<usize>,
    pub(crate) queue_capacity: usize,
    pub(crate) snapshot_every: u64,
    pub(crate) websocket_ping_interval: u64,
    pub(crate) websocket_pong_timeout: u64,
    pub(crate) first_subscription_deadline_timeout: u64,
    pub(crate) session_secret: Option<String>,
    pub(crate) session_ttl: u64,
    pub(crate) session_attempts_per_minute: u32,
    pub(crate) max_event_bytes: usize,
    pub(crate) long_poll_timeout: u64,
    pub(crate) retention: RetentionRules,
    pub(crate) ready_file: Option<PathBuf>,
}

fn listen_from_file(key: &str, v: Option<String>) -> anyhow::Result<Option<Listen>> {
    v.map(|s| Listen::from_str(&s).map_err(|e| anyhow::anyhow!("config key {key}: {e}")))
        .transpose()
}

impl Settings {
    /// Merges flags and environment (already in `args`, clap reads both) over the file over the
    /// defaults. `JWT_SECRET` is honoured after `HERALD_JWT_SECRET`, as Icepeak reads it.
    pub(crate) fn load(args: ServeArgs) -> anyhow::Result<Settings> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let jwt_secret = args
            .jwt_secret
            .or_else(|| std::env::var("JWT_SECRET").ok().filter(|s| !s.is_empty()))
            .or(file.jwt_secret);
        let settings = Settings {
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            icepeak: args
                .icepeak
                .or(listen_from_file("icepeak", file.icepeak)?)
                .unwrap_or(Listen::On(SocketAddr::from(([127, 0, 0, 1], 3000)))),
            http: args
                .http
                .or(listen_from_file("http", file.http)?)
                .unwrap_or(Listen::On(SocketAddr::from(([127, 0, 0, 1], 8080)))),
            metrics: args
                .metrics
                .or(listen_from_file("metrics", file.metrics)?)
                .unwrap_or(Listen::Off),
            hpfeeds: args
                .hpfeeds
                .or(listen_from_file("hpfeeds", file.hpfeeds)?)
                .unwrap_or(Listen::On(SocketAddr::from(([127, 0, 0, 1], 10000)))),
            mqtt: args
                .mqtt
                .or(listen_from_file("mqtt", file.mqtt)?)
                .unwrap_or(Listen::On(SocketAddr::from(([127, 0, 0, 1], 1883)))),
            mqtt_max_packet_size: args
                .mqtt_max_packet_size
                .or(file.mqtt_max_packet_size)
                .unwrap_or(1024 * 1024),
            mqtt_max_session_expiry: args
                .mqtt_max_session_expiry
                .or(file.mqtt_max_session_expiry)
                .unwrap_or(7 * 24 * 3600),
            hpfeeds_name: args
                .hpfeeds_name
                .or(file.hpfeeds_name)
                .unwrap_or_else(|| "hpfeeds".to_owned()),
            hpfeeds_prefix: args
                .hpfeeds_prefix
                .or(file.hpfeeds_prefix)
                .unwrap_or_else(|| "hpfeeds".to_owned()),
            hpfeeds_env_auth: args
                .hpfeeds_env_auth
                .or(file.hpfeeds_env_auth)
                .unwrap_or(true),
            hpfeeds_backpressure_deadline: args
                .hpfeeds_backpressure_deadline
                .or(file.hpfeeds_backpressure_deadline)
                .unwrap_or(60),
            http_tls: tls_files(
                "--http-tls",
                args.http_tls_cert.or(file.http_tls_cert),
                args.http_tls_key.or(file.http_tls_key),
            )?,
            mqtt_tls: tls_files(
                "--mqtt-tls",
                args.mqtt_tls_cert.or(file.mqtt_tls_cert),
                args.mqtt_tls_key.or(file.mqtt_tls_key),
            )?,
            hpfeeds_tls: tls_files(
                "--hpfeeds-tls",
                args.hpfeeds_tls_cert.or(file.hpfeeds_tls_cert),
                args.hpfeeds_tls_key.or(file.hpfeeds_tls_key),
            )?,
            enable_jwt_auth: args.enable_jwt_auth || file.enable_jwt_auth.unwrap_or(false),
            jwt_secret,
            allow_anonymous: args.allow_anonymous || file.allow_anonymous.unwrap_or(false),
            max_body_bytes: args
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(10 * 1024 * 1024),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(100_000),
            http_idle_timeout: args
                .http_idle_timeout
                .or(file.http_idle_timeout)
                .unwrap_or(30),
            memory_only_budget: args
                .memory_only_budget
                .or(file.memory_only_budget)
                .unwrap_or(herald_engine::DEFAULT_MEMORY_BUDGET),
            durable_window_budget: args
                .durable_window_budget
                .or(file.durable_window_budget)
                .unwrap_or(herald_engine::DEFAULT_WINDOW_BUDGET),
            threads: args.threads.or(file.threads),
            queue_capacity: args.queue_capacity.or(file.queue_capacity).unwrap_or(4096),
            snapshot_every: args
                .snapshot_every
                .or(file.snapshot_every)
                .unwrap_or(10_000),
            websocket_ping_interval: args
                .websocket_ping_interval
                .or(file.websocket_ping_interval)
                .unwrap_or(30),
            websocket_pong_timeout: args
                .websocket_pong_timeout
                .or(file.websocket_pong_timeout)
                .unwrap_or(30),
            first_subscription_deadline_timeout: args
                .first_subscription_deadline_timeout
                .or(file.first_subscription_deadline_timeout)
                .unwrap_or(1_000_000),
            session_secret: args.session_secret.or(file.session_secret),
            session_ttl: args.session_ttl.or(file.session_ttl).unwrap_or(86_400),
            session_attempts_per_minute: args
                .session_attempts_per_minute
                .or(file.session_attempts_per_minute)
                .unwrap_or(10),
            max_event_bytes: args
                .max_event_bytes
                .or(file.max_event_bytes)
                .unwrap_or(1024 * 1024),
            long_poll_timeout: args
                .long_poll_timeout
                .or(file.long_poll_timeout)
                .unwrap_or(60),
            retention: retention_rules(&file.retention)?,
            ready_file: args.ready_file.or(file.ready_file),
        };
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.max_connections == 0 {
            bail!("--max-connections must be at least 1");
        }
        if self.threads == Some(0) {
            bail!("--threads must be at least 1");
        }
        if self.queue_capacity == 0 {
            bail!("--queue-capacity must be at least 1");
        }
        if self.snapshot_every == 0 {
            bail!("--snapshot-every must be at least 1");
        }
        if self.max_body_bytes == 0 {
            bail!("--max-body-bytes must be at least 1");
        }
        if self.max_event_bytes == 0 {
            bail!("--max-event-bytes must be at least 1");
        }
        if self.session_ttl == 0 {
            bail!("--session-ttl must be at least 1 second");
        }
        if self.long_poll_timeout == 0 {
            bail!("--long-poll-timeout must be at least 1 second");
        }
        if self.session_secret.as_deref() == Some("") {
            bail!("--session-secret must not be empty");
        }
        if self.mqtt_max_packet_size < 64 {
            bail!("--mqtt-max-packet-size must be at least 64 bytes");
        }
        if self.http_idle_timeout == 0 {
            bail!("--http-idle-timeout must be at least 1 second");
        }
        if self.hpfeeds_backpressure_deadline == 0 {
            bail!("--hpfeeds-backpressure-deadline must be at least 1 second");
        }
        self.hpfeeds_config(usize::MAX)
            .validate()
            .map_err(|e| anyhow::anyhow!("--hpfeeds-name / --hpfeeds-prefix: {e}"))?;
        if self.icepeak == Listen::Off && self.http == Listen::Off {
            bail!("both --icepeak and --http are off: there would be nothing to serve");
        }
        // Secure by default: without verified tokens, only loopback clients may connect unless
        // the operator says otherwise. The hpfeeds listener is not subject to this: every
        // hpfeeds client authenticates with an identity's secret.
        let authenticated = self.enable_jwt_auth && self.jwt_secret.is_some();
        if !authenticated && !self.allow_anonymous {
            for (name, listen) in [("--icepeak", self.icepeak), ("--http", self.http)] {
                if let Listen::On(addr) = listen
                    && !addr.ip().is_loopback()
                {
                    bail!(
                        "refusing to start: {name} binds {addr}, which is not a loopback \
                         address, and no authentication is configured. Enable \
                         --enable-jwt-auth with --jwt-secret (or JWT_SECRET), or pass \
                         --allow-anonymous to serve anonymous clients on this address."
                    );
                }
            }
        }
        Ok(())
    }
}

impl Settings {
    /// The hpfeeds broker settings; `max_connections` is the broker's own connection cap.
    pub(crate) fn hpfeeds_config(
        &self,
        max_connections: usize,
    ) -> herald_transport_hpfeeds::HpfeedsConfig {
        herald_transport_hpfeeds::HpfeedsConfig {
            name: self.hpfeeds_name.clone(),
            prefix: self.hpfeeds_prefix.clone(),
            backpressure_deadline: std::time::Duration::from_secs(
                self.hpfeeds_backpressure_deadline,
            ),
            max_connections,
            tls: self.hpfeeds_tls.clone(),
            ..herald_transport_hpfeeds::HpfeedsConfig::default()
        }
    }

    /// The MQTT broker settings (for `--mqtt` and MQTT over WebSocket on `--http`). Clients
    /// without a user name are served when every listener that speaks MQTT is on a loopback
    /// address, or with --allow-anonymous.
    pub(crate) fn mqtt_config(&self) -> herald_transport_mqtt::MqttConfig {
        let loopback = |l: Listen| match l {
            Listen::On(addr) => addr.ip().is_loopback(),
            Listen::Off => true,
        };
        herald_transport_mqtt::MqttConfig {
            max_packet_size: self.mqtt_max_packet_size,
            max_session_expiry: std::time::Duration::from_secs(self.mqtt_max_session_expiry),
            allow_anonymous: self.allow_anonymous || (loopback(self.mqtt) && loopback(self.http)),
            max_connections: self.max_connections,
            tls: self.mqtt_tls.clone(),
            ..herald_transport_mqtt::MqttConfig::default()
        }
    }
}

/// A listener's certificate and key: both or neither (`flag` names them in errors).
fn tls_files(
    flag: &str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> anyhow::Result<Option<herald_tls::TlsFiles>> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(herald_tls::TlsFiles::new(cert, key))),
        (Some(_), None) => bail!("{flag}-cert is set without {flag}-key: give both or neither"),
        (None, Some(_)) => bail!("{flag}-key is set without {flag}-cert: give both or neither"),
    }
}

/// Turns the file's `[[retention]]` tables into rules, checking each pattern.
fn retention_rules(rules: &[RetentionRule]) -> anyhow::Result<RetentionRules> {
    let limits = PathLimits::default();
    rules
        .iter()
        .map(|r| {
            let pattern = PathPattern::parse(&r.pattern, &limits)
                .with_context(|| format!("[[retention]] pattern {:?}", r.pattern))?;
            let retention = Retention {
                max_events: r.max_events,
                max_bytes: r.max_bytes,
                max_age_ms: r.max_age_secs.map(|s| s.saturating_mul(1000)),
                memory_only: r.memory_only,
            };
            Ok((pattern, retention))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map(RetentionRules::new)
}

/// The data directory when neither a flag, `HERALD_DATA_DIR` nor the config file names one.
pub(crate) const DEFAULT_DATA_DIR: &str = "./herald-data";

/// The `data-dir` key of a `serve` config file, for tools that work on the same data directory
/// (`herald user`).
pub(crate) fn data_dir_from_file(path: &Path) -> anyhow::Result<Option<PathBuf>> {
    Ok(read_file(path)?.data_dir)
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn load(argv: &[&str]) -> anyhow::Result<Settings> {
        let mut full = vec!["herald"];
        full.extend_from_slice(argv);
        Settings::load(Cli::try_parse_from(full)?.args)
    }

    #[test]
    fn defaults_are_loopback() {
        let s = load(&[]).unwrap();
        assert_eq!(s.icepeak.to_string(), "127.0.0.1:3000");
        assert_eq!(s.http.to_string(), "127.0.0.1:8080");
        assert_eq!(s.metrics, Listen::Off);
        assert_eq!(s.data_dir, PathBuf::from("./herald-data"));
        assert_eq!(s.hpfeeds.to_string(), "127.0.0.1:10000");
        assert_eq!(
            (s.hpfeeds_name.as_str(), s.hpfeeds_prefix.as_str()),
            ("hpfeeds", "hpfeeds")
        );
        assert!(s.hpfeeds_env_auth);
        assert_eq!(s.hpfeeds_backpressure_deadline, 60);
        assert_eq!(s.http_idle_timeout, 30);
    }

    #[test]
    fn hpfeeds_settings() {
        // Authenticated by design: a public address needs no --allow-anonymous.
        let s = load(&["--hpfeeds", "0.0.0.0:10000"]).unwrap();
        assert_eq!(s.hpfeeds.to_string(), "0.0.0.0:10000");
        let s = load(&[
            "--hpfeeds",
            "off",
            "--hpfeeds-name",
            "herald",
            "--hpfeeds-prefix",
            "feeds",
            "--hpfeeds-env-auth",
            "false",
            "--hpfeeds-backpressure-deadline",
            "5",
        ])
        .unwrap();
        assert_eq!(s.hpfeeds, Listen::Off);
        let c = s.hpfeeds_config(7);
        assert_eq!((c.name.as_str(), c.prefix.as_str()), ("herald", "feeds"));
        assert_eq!(c.backpressure_deadline, std::time::Duration::from_secs(5));
        assert_eq!(c.max_connections, 7);
        assert!(!s.hpfeeds_env_auth);
        assert!(
            !load(&["--hpfeeds-env-auth", "off"])
                .unwrap()
                .hpfeeds_env_auth
        );
        for bad in [
            &["--hpfeeds-prefix", ".."][..],
            &["--hpfeeds-prefix", ""][..],
            &["--hpfeeds-backpressure-deadline", "0"][..],
            &["--hpfeeds", "nonsense"][..],
        ] {
            assert!(load(bad).is_err(), "{bad:?}");
        }
        let long = "n".repeat(256);
        assert!(load(&["--hpfeeds-name", &long]).is_err());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("herald.toml");
        std::fs::write(
            &file,
            "hpfeeds = \"127.0.0.1:20000\"\nhpfeeds-name = \"b\"\nhpfeeds-prefix = \"p\"\n\
             hpfeeds-env-auth = false\nhpfeeds-backpressure-deadline = 9\n",
        )
        .unwrap();
        let s = load(&["--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(s.hpfeeds.to_string(), "127.0.0.1:20000");
        assert_eq!(
            (s.hpfeeds_name.as_str(), s.hpfeeds_prefix.as_str()),
            ("b", "p")
        );
        assert!(!s.hpfeeds_env_auth);
        assert_eq!(s.hpfeeds_backpressure_deadline, 9);
        assert!(s.hpfeeds_tls.is_none());
    }

    #[test]
    fn hpfeeds_tls_settings() {
        let s = load(&["--hpfeeds-tls-cert", "c.pem", "--hpfeeds-tls-key", "k.pem"]).unwrap();
        let tls = s.hpfeeds_config(1).tls.unwrap();
        assert_eq!(
            (tls.cert.as_path(), tls.key.as_path()),
            (Path::new("c.pem"), Path::new("k.pem"))
        );
        for bad in [
            &["--hpfeeds-tls-cert", "c.pem"][..],
            &["--hpfeeds-tls-key", "k.pem"][..],
        ] {
            let err = load(bad).unwrap_err().to_string();
            assert!(err.contains("both or neither"), "{err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("herald.toml");
        std::fs::write(
            &file,
            "hpfeeds-tls-cert = \"/c.pem\"\nhpfeeds-tls-key = \"/k.pem\"\n",
        )
        .unwrap();
        let s = load(&["--config", file.to_str().unwrap()]).unwrap();
        let tls = s.hpfeeds_tls.unwrap();
        assert_eq!(tls.key, PathBuf::from("/k.pem"));
        // A flag overrides the file.
        let s = load(&[
            "--config",
            file.to_str().unwrap(),
            "--hpfeeds-tls-cert",
            "x.pem",
        ])
        .unwrap();
        assert_eq!(s.hpfeeds_tls.unwrap().cert, PathBuf::from("x.pem"));
    }

    #[test]
    fn memory_budgets() {
        let s = load(&[]).unwrap();
        assert_eq!(
            (s.memory_only_budget, s.durable_window_budget),
            (
                herald_engine::DEFAULT_MEMORY_BUDGET,
                herald_engine::DEFAULT_WINDOW_BUDGET
            )
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("herald.toml");
        std::fs::write(
            &file,
            "memory-only-budget = 1000
durable-window-budget = 2000
",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let s = load(&["--config", f]).unwrap();
        assert_eq!(
            (s.memory_only_budget, s.durable_window_budget),
            (1000, 2000)
        );
        let s = load(&["--config", f, "--durable-window-budget", "3000"]).unwrap();
        assert_eq!(s.durable_window_budget, 3000);
    }

    #[test]
    fn non_loopback_without_auth_is_refused() {
        let err = load(&["--icepeak", "0.0.0.0:3000"]).unwrap_err();
        assert!(err.to_string().contains("refusing to start"), "{err}");
        assert!(load(&["--icepeak", "0.0.0.0:3000", "--allow-anonymous"]).is_ok());
        assert!(
            load(&[
                "--icepeak",
                "0.0.0.0:3000",
                "--enable-jwt-auth",
                "--jwt-secret",
                "s"
            ])
            .is_ok()
        );
        // Auth without a secret does not verify anything, so it does not count.
        assert!(load(&["--http", "0.0.0.0:8080", "--enable-jwt-auth"]).is_err());
    }

    #[test]
    fn file_fills_what_flags_leave_out() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("herald.toml");
        std::fs::write(
            &file,
            "data-dir = \"/tmp/x\"\nicepeak = \"127.0.0.1:4000\"\nhttp = \"off\"\nqueue-capacity = 7\n\
             http-idle-timeout = 5\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let s = load(&["--config", f, "--icepeak", "127.0.0.1:5000"]).unwrap();
        assert_eq!(s.icepeak.to_string(), "127.0.0.1:5000");
        assert_eq!(s.http, Listen::Off);
        assert_eq!(s.queue_capacity, 7);
        assert_eq!(s.http_idle_timeout, 5);
        assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn retention_rules_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("herald.toml");
        std::fs::write(
            &file,
            "[[retention]]\npattern = \"/logs/#\"\nmax-events = 5\nmax-age-secs = 2\n\n\
             [[retention]]\npattern = \"/chat/+\"\nmemory-only = true\n",
        )
        .unwrap();
        let s = load(&["--config", file.to_str().unwrap()]).unwrap();
        let p = |s: &str| herald_core::Path::parse_url(s, &PathLimits::default()).unwrap();
        let logs = s.retention.resolve(&p("/logs/a"));
        assert_eq!((logs.max_events, logs.max_age_ms), (Some(5), Some(2000)));
        assert!(s.retention.resolve(&p("/chat/room")).memory_only);
        assert_eq!(s.retention.resolve(&p("/other")), Retention::default());

        std::fs::write(&file, "[[retention]]\npattern = \"/a/#/b\"\n").unwrap();
        let err = load(&["--config", file.to_str().unwrap()]).unwrap_err();
        assert!(format!("{err:#}").contains("/a/#/b"), "{err:#}");
    }

    #[test]
    fn bad_values_are_reported() {
        assert!(load(&["--icepeak", "nonsense"]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "no-such-key = 1\n").unwrap();
        let err = load(&["--config", file.to_str().unwrap()]).unwrap_err();
        assert!(format!("{err:#}").contains("no-such-key"), "{err:#}");
        assert!(load(&["--icepeak", "off", "--http", "off"]).is_err());
        let err = load(&["--http-idle-timeout", "0"]).unwrap_err();
        assert!(
            format!("{err:#}").contains("--http-idle-timeout"),
            "{err:#}"
        );
    }
}
