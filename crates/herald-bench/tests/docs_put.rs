//! `docs-put` against both APIs of an in-process server: writes succeed and are counted.

mod common;

use std::time::Duration;

use herald_bench::http::ClientKind;
use herald_bench::scenario::{Api, docs_put};

fn options(target: herald_bench::args::Target, api: Api, kind: ClientKind) -> docs_put::Options {
    docs_put::Options {
        target,
        api,
        clients: 4,
        value_bytes: 100,
        duration: Duration::from_millis(300),
        warmup: Duration::ZERO,
        keys_per_client: None,
        prefix: "/bench/put".into(),
        http_client: kind,
        pid: Some(std::process::id()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_put_counts_successful_writes_on_both_apis() -> anyhow::Result<()> {
    let server = common::start().await?;
    for (target, api) in [
        (server.icepeak.clone(), Api::Icepeak),
        (server.http.clone(), Api::Main),
    ] {
        for kind in [ClientKind::Hyper, ClientKind::Reqwest] {
            let report = docs_put::run(&options(target.clone(), api, kind)).await?;
            assert!(report.writes > 0, "{api} {kind}: no writes");
            assert!(
                report.errors.is_empty(),
                "{api} {kind}: {:?}",
                report.errors
            );
            assert_eq!(report.latency.count, report.writes);
            assert!(report.writes_per_second > 0.0);
            assert!(report.cpu.is_some_and(|c| c.server_cores.is_some()));
            // The table renders every figure.
            assert!(report.to_string().contains("writes/s"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_put_reports_error_statuses() -> anyhow::Result<()> {
    let server = common::start().await?;
    // The main API has no `?durable` and answers 404 for paths outside `/docs`: point the
    // Icepeak-style requests at it to get a failing status on every write.
    let mut opts = options(server.http.clone(), Api::Icepeak, ClientKind::Hyper);
    opts.duration = Duration::from_millis(100);
    let report = docs_put::run(&opts).await?;
    assert_eq!(report.writes, 0);
    assert!(
        report.errors.get("404").is_some_and(|n| *n > 0),
        "{:?}",
        report.errors
    );
    Ok(())
}
