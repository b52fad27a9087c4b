//! `--threads` (and the config file's `threads`): the async runtime gets that many workers,
//! says so in its log, and serves as usual.

mod common;

use common::{icepeak_put, next_json, start, stop, ws_connect};
use serde_json::json;

/// With one worker, a subscriber still gets a write made by another connection: everything
/// (both connections, the engine's actors) shares the one thread.
#[tokio::test]
async fn one_worker_thread_serves_writes_and_subscribers() {
    let s = start(&["--threads", "1"]).await;
    assert!(
        s.log().contains("worker_threads=1"),
        "the log names the worker count: {}",
        s.log()
    );
    let mut ws = ws_connect(&s.icepeak_ws("/sensors/1")).await;
    assert_eq!(next_json(&mut ws).await, json!(null));
    icepeak_put(&s, "/sensors/1", r#"{"t": 21}"#).await;
    assert_eq!(next_json(&mut ws).await, json!({"t": 21}));
    stop(s).await;
}

#[tokio::test]
async fn the_config_file_sets_the_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(&config, "threads = 3\n").unwrap();
    let s = start(&["--config", config.to_str().unwrap()]).await;
    assert!(s.log().contains("worker_threads=3"), "{}", s.log());
    stop(s).await;
}
