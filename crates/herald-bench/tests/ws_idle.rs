//! `ws-idle` against an in-process server: connections are counted and RSS is read.

mod common;

use std::time::Duration;

use herald_bench::scenario::ws_idle;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_idle_establishes_every_connection() -> anyhow::Result<()> {
    let server = common::start().await?;
    let report = ws_idle::run(&ws_idle::Options {
        target: server.icepeak,
        connections: 50,
        // The server runs in this process.
        pid: std::process::id(),
        prefix: "/idle".into(),
        settle: Duration::from_millis(50),
        connect_concurrency: 16,
        connect_timeout: Duration::from_secs(10),
        // Exercise the source-address path: 127.0.0.1 and 127.0.0.2.
        source_ips: Some(2),
    })
    .await?;
    assert_eq!((report.figures.established, report.figures.failed), (50, 0));
    assert_eq!(report.source_ips, 2);
    assert!(report.figures.rss_before > 0 && report.figures.rss_after > 0);
    assert!(report.to_string().contains("server RSS per connection"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_idle_refuses_a_missing_server_process() -> anyhow::Result<()> {
    let server = common::start().await?;
    let result = ws_idle::run(&ws_idle::Options {
        target: server.icepeak,
        connections: 1,
        pid: u32::MAX,
        prefix: "/idle".into(),
        settle: Duration::ZERO,
        connect_concurrency: 1,
        connect_timeout: Duration::from_secs(5),
        source_ips: None,
    })
    .await;
    assert!(result.is_err());
    Ok(())
}
