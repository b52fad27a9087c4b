//! An in-process stream server for the listen scenario tests: the IorioDB-compatible API
//! (sessions, streams, `/listen`) and the MQTT broker over one topics engine and one user
//! registry on a memory store, as `herald serve` composes them, on `127.0.0.1:0`.

use std::sync::Arc;
use std::time::Duration;

use herald_bench::args::Target;
use herald_bench::scenario::mqtt::Broker;
use herald_mqtt_codec::Protocol;
use herald_store::{MemoryStore, Store};

/// The listeners of an in-process stream server: the main API (sessions, streams, `/listen`)
/// and the MQTT broker, over one memory store, with users `admin` and `reader` (no grants: it
/// may read only bucket `public` and its own), both with [`ADMIN_PASSWORD`].
pub(crate) struct Streams {
    // Each test file compiles this module on its own, and mqtt_fanout.rs needs only the broker.
    #[allow(dead_code, reason = "used by listen.rs only")]
    pub(crate) http: Target,
    pub(crate) mqtt: Target,
    #[allow(dead_code, reason = "used by mqtt_publish.rs only")]
    pub(crate) topics: herald_engine::Topics,
}

impl Streams {
    /// The MQTT broker, logged in to as `admin` over `protocol`.
    #[allow(dead_code, reason = "used by the MQTT tests only")]
    pub(crate) fn mqtt_admin(&self, protocol: Protocol) -> Broker {
        Broker {
            addr: self.mqtt.clone(),
            username: Some("admin".into()),
            password: Some(ADMIN_PASSWORD.into()),
            protocol,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// The password of the users of [`start_streams`]'s server.
pub(crate) const ADMIN_PASSWORD: &str = "bench-secret";

/// Starts the IorioDB-compatible API and the MQTT broker as `herald serve` composes them (one
/// topics engine and one user registry), on `127.0.0.1:0`. They run until the test's runtime
/// stops.
pub(crate) async fn start_streams() -> anyhow::Result<Streams> {
    use herald_engine::{Accounts, AccountsOptions, Topics, TopicsOptions};

    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let (topics, _task) = Topics::open(store.clone(), TopicsOptions::default()).await?;
    let accounts = Accounts::open(store.clone(), AccountsOptions::default()).await?;
    accounts.ensure_admin(ADMIN_PASSWORD).await?;
    accounts.add_user("reader", ADMIN_PASSWORD, false).await?;
    let iorio = herald_transport_iorio::IorioConfig {
        // Every test client is 127.0.0.1.
        session_attempts_per_minute: 0,
        ..Default::default()
    };
    let mqtt = herald_transport_mqtt::Mqtt::open(
        topics.clone(),
        accounts.clone(),
        store,
        herald_transport_mqtt::MqttConfig::default(),
        iorio.shutdown.clone(),
    )
    .await?;
    let app = herald_transport_iorio::router(topics.clone(), accounts, iorio);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http = listener.local_addr()?;
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mqtt_addr = listener.local_addr()?;
    tokio::spawn(async move { mqtt.serve(listener).await });
    Ok(Streams {
        http: format!("http://{http}").parse()?,
        mqtt: mqtt_addr.to_string().parse()?,
        topics,
    })
}
