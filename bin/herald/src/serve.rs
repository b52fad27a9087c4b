//! `herald serve`: opens the store, starts the engine and every listener, and shuts down
//! cleanly on SIGINT/SIGTERM.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use herald_auth::JwtConfig;
use herald_core::tree::PatchLimits;
use herald_engine::{
    Accounts, AccountsOptions, Docs, DocsOptions, HpfeedsIdentities, HpfeedsOptions, Topics,
    TopicsOptions,
};
use herald_store::Store;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{Listen, ServeArgs, Settings};
use crate::datadir;
use crate::http1;
use crate::limit::ConnectionLimit;
use crate::tls_listener::TlsListener;

/// How long listeners get to finish in-flight requests after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let settings = Settings::load(args)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = settings.threads {
        builder.worker_threads(threads);
    }
    let runtime = builder
        .enable_all()
        .thread_name("herald")
        .build()
        .context("cannot start the async runtime")?;
    tracing::info!(
        worker_threads = runtime.metrics().num_workers(),
        "async runtime started"
    );
    runtime.block_on(serve(settings))
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let signals = ShutdownSignals::install()?;
    let metrics = match settings.metrics {
        Listen::On(_) => Some(install_metrics()?),
        Listen::Off => None,
    };

    datadir::create(&settings.data_dir)?;
    let opened = Instant::now();
    let store = datadir::open_store(&settings.data_dir)?;
    tracing::info!(
        dir = %settings.data_dir.join("store").display(),
        elapsed_ms = opened.elapsed().as_millis() as u64,
        "store opened"
    );

    let (docs, docs_task) = Docs::open(
        store.clone(),
        DocsOptions {
            queue_capacity: settings.queue_capacity,
            snapshot_every: settings.snapshot_every,
            // A patched value may be as large as a PUT could write.
            patch_limits: PatchLimits {
                max_bytes: settings.max_body_bytes,
                ..PatchLimits::default()
            },
            ..DocsOptions::default()
        },
    )
    .await
    .context("cannot load the document tree")?;

    let (topics, topics_task) = Topics::open(
        store.clone(),
        TopicsOptions {
            rules: settings.retention.clone(),
            memory_budget_bytes: settings.memory_only_budget,
            window_budget_bytes: settings.durable_window_budget,
            ..TopicsOptions::default()
        },
    )
    .await
    .context("cannot load the topics")?;
    let accounts = open_accounts(&settings, store.clone()).await?;
    // One handle for the hpfeeds broker and the admin API on --http, so that changes made
    // through the API apply to the next hpfeeds authentication at once.
    let hpfeeds_ids = HpfeedsIdentities::open(
        store.clone(),
        if settings.hpfeeds_env_auth {
            HpfeedsOptions::with_process_env()
        } else {
            HpfeedsOptions::default()
        },
    )
    .await
    .context("cannot load the hpfeeds identities")?;

    let jwt = settings.enable_jwt_auth.then(|| JwtConfig {
        secret: settings.jwt_secret.clone().map(String::into_bytes),
    });
    if settings.enable_jwt_auth && settings.jwt_secret.is_none() {
        tracing::warn!("JWT auth is on without a secret: tokens are decoded but NOT verified");
    }
    if !settings.enable_jwt_auth {
        tracing::info!(
            "JWT auth is off: every client of the Icepeak and /docs APIs has full access \
             (event streams always use sessions and grants)"
        );
    }

    let shutdown = CancellationToken::new();
    let serving = Serving {
        shutdown: shutdown.clone(),
        limit: Some(ConnectionLimit::new(settings.max_connections)),
        idle_timeout: Duration::from_secs(settings.http_idle_timeout),
    };
    let mut servers = tokio::task::JoinSet::new();
    let mut bound: BTreeMap<&'static str, SocketAddr> = BTreeMap::new();

    if let Listen::On(addr) = settings.icepeak {
        let config = herald_transport_icepeak::IcepeakConfig {
            jwt: jwt.clone(),
            max_body_bytes: settings.max_body_bytes,
            ping_interval: (settings.websocket_ping_interval > 0)
                .then(|| Duration::from_secs(settings.websocket_ping_interval)),
            pong_timeout: Duration::from_secs(settings.websocket_pong_timeout),
            first_subscription_deadline: Duration::from_micros(
                settings.first_subscription_deadline_timeout,
            ),
            ..Default::default()
        };
        let app = with_http_metrics(
            herald_transport_icepeak::router(docs.clone(), config),
            "icepeak",
            metrics.is_some(),
        );
        let local = start(&mut servers, "icepeak", addr, app, &serving).await?;
        bound.insert("icepeak", local);
    }
    // One broker for --mqtt and MQTT over WebSocket on --http.
    let mqtt = if settings.mqtt != Listen::Off || settings.http != Listen::Off {
        let config = settings.mqtt_config();
        let anonymous = config.allow_anonymous;
        let mqtt = herald_transport_mqtt::Mqtt::open(
            topics.clone(),
            accounts.clone(),
            store.clone(),
            config,
            shutdown.clone(),
        )
        .await
        .context("cannot start the MQTT broker")?;
        tracing::info!(
            retained = mqtt.retained().len(),
            anonymous,
            "mqtt broker ready"
        );
        Some(mqtt)
    } else {
        None
    };
    if let Listen::On(addr) = settings.http {
        let config = herald_transport_http::HttpConfig {
            jwt: jwt.clone(),
            max_body_bytes: settings.max_body_bytes,
            ..Default::default()
        };
        let iorio = herald_transport_iorio::IorioConfig {
            max_event_bytes: settings.max_event_bytes,
            long_poll_timeout: Duration::from_secs(settings.long_poll_timeout),
            session_attempts_per_minute: settings.session_attempts_per_minute,
            ping_interval: (settings.websocket_ping_interval > 0)
                .then(|| Duration::from_secs(settings.websocket_ping_interval)),
            shutdown: shutdown.clone(),
            ..Default::default()
        };
        let app = herald_transport_http::router(docs.clone(), config)
            .merge(herald_transport_iorio::router(
                topics.clone(),
                accounts.clone(),
                iorio,
            ))
            .merge(herald_transport_hpfeeds::admin::router(
                hpfeeds_ids.clone(),
                accounts.clone(),
            ));
        let app = match &mqtt {
            Some(mqtt) => app.merge(herald_transport_mqtt::ws::router(mqtt.clone())),
            None => app,
        };
        let app = with_http_metrics(app, "http", metrics.is_some());
        let local = start_with_tls(
            &mut servers,
            "http",
            addr,
            app,
            &serving,
            settings.http_tls.as_ref(),
        )
        .await?;
        bound.insert("http", local);
    }
    if let Listen::On(addr) = settings.hpfeeds {
        let local = start_hpfeeds(
            &mut servers,
            &settings,
            addr,
            &hpfeeds_ids,
            &topics,
            &shutdown,
        )
        .await?;
        bound.insert("hpfeeds", local);
    }
    if let (Listen::On(addr), Some(mqtt)) = (settings.mqtt, &mqtt) {
        if let Some(tls) = &settings.mqtt_tls {
            // Fail at startup rather than in the listener task (the broker loads them again).
            herald_tls::load_server_config(tls).map_err(anyhow::Error::msg)?;
        }
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind the MQTT listener to {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!(
            listener = "mqtt",
            addr = %local,
            tls = settings.mqtt_tls.is_some(),
            "listening"
        );
        let mqtt = mqtt.clone();
        servers.spawn(async move {
            if let Err(e) = mqtt.serve(listener).await {
                tracing::error!(listener = "mqtt", error = %e, "listener failed");
            }
        });
        bound.insert("mqtt", local);
    }
    if let (Listen::On(addr), Some(handle)) = (settings.metrics, metrics) {
        let local = start(
            &mut servers,
            "metrics",
            addr,
            metrics_router(handle),
            &Serving {
                shutdown: serving.shutdown.clone(),
                limit: None,
                idle_timeout: serving.idle_timeout,
            },
        )
        .await?;
        bound.insert("metrics", local);
    }

    if let Some(path) = &settings.ready_file {
        write_ready_file(path, &bound)?;
    }
    tracing::info!(data_dir = %settings.data_dir.display(), "herald is ready");

    signals.wait().await;
    tracing::info!("shutdown requested: draining listeners");
    shutdown.cancel();
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("listeners did not drain within {DRAIN_TIMEOUT:?}; closing them");
        servers.abort_all();
    }
    if let Some(mqtt) = mqtt {
        // MQTT over WebSocket connections outlive the HTTP server's drain; their sessions
        // are saved as they close.
        mqtt.closed().await;
    }
    tracing::info!("writing the final snapshot");
    if let Err(e) = docs.shutdown().await {
        tracing::warn!(error = %e, "document engine was already stopped");
    }
    let _ = docs_task.await;
    drop(docs);
    if let Err(e) = topics.shutdown().await {
        tracing::warn!(error = %e, "topics engine was already stopped");
    }
    let _ = topics_task.await;
    drop(topics);
    drop(accounts);
    drop(hpfeeds_ids);
    store.sync().context("final sync of the store failed")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Opens the user registry and, when `HERALD_ADMIN_PASSWORD` is set and there is no user
/// `admin` yet, creates it. There is no built-in default password.
async fn open_accounts(settings: &Settings, store: Arc<dyn Store>) -> anyhow::Result<Accounts> {
    let accounts = Accounts::open(
        store,
        AccountsOptions {
            session_secret: settings.session_secret.clone().map(String::into_bytes),
            session_ttl: Duration::from_secs(settings.session_ttl),
            ..AccountsOptions::default()
        },
    )
    .await
    .context("cannot load the user registry")?;
    match std::env::var("HERALD_ADMIN_PASSWORD") {
        Ok(password) if !password.is_empty() => {
            if accounts
                .ensure_admin(&password)
                .await
                .context("cannot create the admin user from HERALD_ADMIN_PASSWORD")?
            {
                tracing::info!("created user 'admin' from HERALD_ADMIN_PASSWORD");
            } else {
                tracing::info!(
                    "user 'admin' already exists; HERALD_ADMIN_PASSWORD is ignored (change it \
                     with `herald user passwd admin`)"
                );
            }
        }
        _ if accounts.user_names().is_empty() => tracing::warn!(
            "there are no users yet: set HERALD_ADMIN_PASSWORD on first start, or run \
             `herald user add NAME --password-stdin --admin --data-dir DIR` before starting"
        ),
        _ => {}
    }
    Ok(accounts)
}

/// Binds `addr` and runs the hpfeeds broker until `shutdown` is
/// cancelled.
async fn start_hpfeeds(
    servers: &mut tokio::task::JoinSet<()>,
    settings: &Settings,
    addr: SocketAddr,
    identities: &HpfeedsIdentities,
    topics: &Topics,
    shutdown: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let identities = identities.clone();
    let stored = identities.list().len();
    if stored == 0 && !settings.hpfeeds_env_auth {
        tracing::warn!(
            "there are no hpfeeds identities and --hpfeeds-env-auth is off: no hpfeeds client \
             can authenticate (add some with `herald hpfeeds add`)"
        );
    } else {
        tracing::info!(
            stored,
            env = settings.hpfeeds_env_auth,
            "hpfeeds identities loaded"
        );
    }
    if let Some(tls) = &settings.hpfeeds_tls {
        // Fail at startup rather than in the listener task (the broker loads them again).
        herald_transport_hpfeeds::tls::load_server_config(tls).map_err(anyhow::Error::msg)?;
    }
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the hpfeeds listener to {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(
        listener = "hpfeeds",
        addr = %local,
        tls = settings.hpfeeds_tls.is_some(),
        "listening"
    );
    let config = settings.hpfeeds_config(settings.max_connections);
    let topics = topics.clone();
    let token = shutdown.clone();
    servers.spawn(async move {
        if let Err(e) =
            herald_transport_hpfeeds::serve(listener, topics, identities, config, token).await
        {
            tracing::error!(listener = "hpfeeds", error = %e, "listener failed");
        }
    });
    Ok(local)
}

/// What every HTTP listener shares.
struct Serving {
    /// Cancelled on SIGINT/SIGTERM.
    shutdown: CancellationToken,
    /// The cap on open connections, for the data listeners (the metrics listener has none).
    limit: Option<ConnectionLimit>,
    /// `--http-idle-timeout`.
    idle_timeout: Duration,
}

/// Binds `addr` and serves `app` until `shutdown` is cancelled.
async fn start(
    servers: &mut tokio::task::JoinSet<()>,
    name: &'static str,
    addr: SocketAddr,
    app: Router,
    serving: &Serving,
) -> anyhow::Result<SocketAddr> {
    start_with_tls(servers, name, addr, app, serving, None).await
}

/// [`start`], over TLS when `tls` is given.
async fn start_with_tls(
    servers: &mut tokio::task::JoinSet<()>,
    name: &'static str,
    addr: SocketAddr,
    app: Router,
    serving: &Serving,
    tls: Option<&herald_tls::TlsFiles>,
) -> anyhow::Result<SocketAddr> {
    let (stop, idle) = (serving.shutdown.clone(), serving.idle_timeout);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the {name} listener to {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(listener = name, addr = %local, tls = tls.is_some(), "listening");
    if let Some(files) = tls {
        let tls_listener = TlsListener::new(listener, files.clone(), name, stop.clone())
            .map_err(|e| anyhow::anyhow!("--{name}-tls-cert / --{name}-tls-key: {e}"))?;
        match &serving.limit {
            Some(limit) => servers.spawn(http1::serve(limit.wrap(tls_listener), app, stop, idle)),
            None => servers.spawn(http1::serve(tls_listener, app, stop, idle)),
        };
        return Ok(local);
    }
    // Small pushes (WebSocket updates, short HTTP answers) must not wait for Nagle's algorithm
    // and the peer's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    match &serving.limit {
        Some(limit) => servers.spawn(http1::serve(limit.wrap(listener), app, stop, idle)),
        None => servers.spawn(http1::serve(listener, app, stop, idle)),
    };
    Ok(local)
}

fn write_ready_file(
    path: &std::path::Path,
    bound: &BTreeMap<&'static str, SocketAddr>,
) -> anyhow::Result<()> {
    let json: BTreeMap<&str, String> = bound.iter().map(|(k, v)| (*k, v.to_string())).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&json)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// SIGINT and SIGTERM handlers, installed when made. They are made before any listener
/// opens and before the ready file is written, so a signal sent as soon as Herald says it
/// is ready starts a clean shutdown instead of killing the process.
struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    #[cfg(unix)]
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        })
    }

    #[cfg(not(unix))]
    fn install() -> anyhow::Result<Self> {
        Ok(Self {})
    }

    /// Waits for the first signal.
    #[cfg(unix)]
    async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    #[cfg(not(unix))]
    async fn wait(self) {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}

/// Installs the Prometheus recorder. Histograms get explicit buckets so they render as
/// Prometheus histograms, not summaries.
fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    // Icepeak's buckets: exponential from 1 ms, factor 2, 12 buckets.
    let icepeak: Vec<f64> = (0..12).map(|i| 0.001 * f64::powi(2.0, i)).collect();
    let fine: Vec<f64> = (0..16).map(|i| 0.000_05 * f64::powi(2.0, i)).collect();
    let sizes: Vec<f64> = (0..12).map(|i| f64::powi(2.0, i)).collect();
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("http_request_duration_seconds".into()),
            &icepeak,
        )?
        .set_buckets_for_metric(Matcher::Full("herald_store_commit_seconds".into()), &fine)?
        .set_buckets_for_metric(Matcher::Full("herald_doc_commit_batch_size".into()), &sizes)?
        .set_buckets_for_metric(Matcher::Full("herald_topic_commit_seconds".into()), &fine)?
        .set_buckets_for_metric(
            Matcher::Full("herald_topic_commit_batch_events".into()),
            &sizes,
        )?
        .set_buckets_for_metric(
            Matcher::Full("hpfeeds_broker_receive_publish_size".into()),
            &herald_transport_hpfeeds::PUBLISH_SIZE_BUCKETS,
        )?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// The metrics listener: Icepeak answers 200 on `/healthcheck` and metrics on every other path.
fn metrics_router(handle: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/healthcheck",
            axum::routing::get(|| async { StatusCode::OK }),
        )
        .fallback(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
                    .into_response()
            }
        })
}

/// Records `http_request_duration_seconds{method,status}` (Icepeak's name) and
/// `herald_http_requests_total{listener,method,status}` for every request, when metrics are on
/// (without a recorder the labels would still be built for nothing on every request).
fn with_http_metrics(app: Router, listener: &'static str, enabled: bool) -> Router {
    if !enabled {
        return app;
    }
    app.layer(middleware::from_fn(
        move |req: Request, next: Next| async move {
            let started = Instant::now();
            let method: &'static str = match *req.method() {
                Method::GET => "GET",
                Method::HEAD => "HEAD",
                Method::PUT => "PUT",
                Method::POST => "POST",
                Method::DELETE => "DELETE",
                Method::PATCH => "PATCH",
                Method::OPTIONS => "OPTIONS",
                _ => "OTHER",
            };
            let resp: Response = next.run(req).await;
            let status = resp.status().as_u16().to_string();
            metrics::histogram!(
                "http_request_duration_seconds",
                "method" => method,
                "status" => status.clone()
            )
            .record(started.elapsed().as_secs_f64());
            metrics::counter!(
                "herald_http_requests_total",
                "listener" => listener,
                "method" => method,
                "status" => status
            )
            .increment(1);
            resp
        },
    ))
}
