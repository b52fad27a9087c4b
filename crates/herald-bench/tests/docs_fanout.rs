//! `docs-fanout` against an in-process server: every subscriber gets the last write.

mod common;

use std::time::Duration;

use herald_bench::http::ClientKind;
use herald_bench::scenario::docs_fanout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_fanout_delivers_the_last_write_to_every_subscriber() -> anyhow::Result<()> {
    let server = common::start().await?;
    let report = docs_fanout::run(&docs_fanout::Options {
        target: server.icepeak,
        subscribers: 8,
        path: "/bench/x".into(),
        rate: "50/s".parse()?,
        duration: Duration::from_millis(300),
        grace: Duration::from_secs(5),
        connect_concurrency: 4,
        connect_timeout: Duration::from_secs(10),
        http_client: ClientKind::Hyper,
        pid: None,
    })
    .await?;
    assert_eq!(report.connected, 8);
    assert!(report.writes > 0);
    assert!(report.write_errors.is_empty(), "{:?}", report.write_errors);
    assert_eq!(report.got_last, 8);
    assert_eq!((report.unparsed, report.dropped), (0, 0));
    assert!(report.delivered > 0 && report.delivered <= report.expected);
    assert_eq!(report.latency.count, report.delivered);
    assert!(report.to_string().contains("change->ws p99"));
    Ok(())
}
