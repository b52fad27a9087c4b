//! An in-process Herald (memory store, Icepeak listener and main API on `127.0.0.1:0`) for the
//! scenario smoke tests.

use std::sync::Arc;

use herald_bench::args::Target;
use herald_engine::{Docs, DocsOptions};
use herald_store::{MemoryStore, Store};

/// The two listeners of the in-process server. It runs until the test's runtime stops.
pub(crate) struct Server {
    pub(crate) icepeak: Target,
    // Each test file compiles this module on its own, and only some of them use the main API.
    #[allow(dead_code, reason = "used by docs_put.rs only")]
    pub(crate) http: Target,
}

pub(crate) async fn start() -> anyhow::Result<Server> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let (docs, _task) = Docs::open(store, DocsOptions::default()).await?;
    let icepeak = herald_transport_icepeak::router(docs.clone(), Default::default());
    let http = herald_transport_http::router(docs, Default::default());
    Ok(Server {
        icepeak: serve(icepeak).await?,
        http: serve(http).await?,
    })
}

async fn serve(app: axum::Router) -> anyhow::Result<Target> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}").parse()
}
