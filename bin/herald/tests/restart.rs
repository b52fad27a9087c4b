//! Graceful restarts of the real binary on the same data directory: acknowledged data
//! survives, with and without snapshots in between.

mod common;

use common::*;
use serde_json::{Map, Value, json};

#[tokio::test]
async fn durable_put_survives_a_graceful_restart() {
    let mut s = start(&[]).await;
    icepeak_put(&s, "/foo/a", "123").await;
    let r = put(&format!("{}/docs/bar", s.http_url()), r#"{"x":[1,2]}"#).await;
    assert_eq!(r.status, 204);
    // A non-durable write answered before the stop is applied before the final snapshot.
    let r = put(&format!("{}/lazy", s.icepeak_url()), "true").await;
    assert_eq!(r.status, 202);
    icepeak_put(&s, "/gone", "1").await;
    let r = delete(&format!("{}/gone?durable", s.icepeak_url())).await;
    assert_eq!(r.status, 202);

    within_for(std::time::Duration::from_secs(30), "restart", s.restart())
        .await
        .expect("restart");
    let r = get(&format!("{}/foo/a", s.icepeak_url())).await;
    assert_eq!((r.status, r.body.as_str()), (200, "123"));
    assert_eq!(
        icepeak_get(&s, "/").await,
        Some(json!({"foo":{"a":123},"bar":{"x":[1,2]},"lazy":true}))
    );
    // New writes after the restart work and survive the next one.
    icepeak_put(&s, "/foo/b", "456").await;
    within_for(std::time::Duration::from_secs(30), "restart", s.restart())
        .await
        .expect("restart");
    assert_eq!(
        icepeak_get(&s, "/foo").await,
        Some(json!({"a":123,"b":456}))
    );
    // A subscriber after the restart sees the recovered value first.
    let mut ws = ws_connect(&s.icepeak_ws("/foo/b")).await;
    assert_eq!(next_text(&mut ws).await, "456");
    assert!(
        s.log().contains("stopped cleanly"),
        "no clean stop in the log:\n{}",
        s.log()
    );
    stop(s).await;
}

#[tokio::test]
async fn many_writes_across_snapshots_survive_restarts() {
    let mut s = start(&["--snapshot-every", "10"]).await;
    let mut expected = Map::new();
    for i in 0..35 {
        icepeak_put(&s, &format!("/many/k{i}"), &i.to_string()).await;
        expected.insert(format!("k{i}"), json!(i));
    }
    // Overwrites and deletes across snapshot boundaries too.
    for i in (0..35).step_by(7) {
        icepeak_put(&s, &format!("/many/k{i}"), &format!("\"v{i}\"")).await;
        expected.insert(format!("k{i}"), json!(format!("v{i}")));
    }
    for i in [3, 13, 23] {
        let r = delete(&format!("{}/many/k{i}?durable", s.icepeak_url())).await;
        assert_eq!(r.status, 202);
        expected.remove(&format!("k{i}"));
    }
    let expected = Value::Object(expected);
    assert_eq!(icepeak_get(&s, "/many").await.as_ref(), Some(&expected));

    within_for(std::time::Duration::from_secs(30), "restart", s.restart())
        .await
        .expect("restart");
    assert_eq!(icepeak_get(&s, "/many").await.as_ref(), Some(&expected));

    // And once more, with a few writes after the last snapshot only in the log.
    for i in 100..104 {
        icepeak_put(&s, &format!("/many/k{i}"), &i.to_string()).await;
    }
    within_for(std::time::Duration::from_secs(30), "restart", s.restart())
        .await
        .expect("restart");
    let got = icepeak_get(&s, "/many").await.expect("present");
    for i in 100..104 {
        assert_eq!(got[format!("k{i}")], json!(i));
    }
    assert_eq!(got.as_object().unwrap().len(), 32 + 4);
    stop(s).await;
}

#[tokio::test]
async fn root_replacements_and_null_documents_survive_restarts() {
    let mut s = start(&["--snapshot-every", "3"]).await;
    icepeak_put(&s, "/", "[1,2,3]").await;
    within_for(std::time::Duration::from_secs(30), "restart", s.restart())
        .await
        .expect("restart");
    assert_eq!(icepeak_get(&s, "/").await, Some(json!([1, 2, 3])));
    let r = delete(&format!("{}/?durable", s.icepeak_url())).await;
    assert_eq!(r.status, 202);
    within_for(std::time::Duration::from_secs(30), "restart", s.restart())
        .await
        .expect("restart");
    let r = get(&format!("{}/", s.icepeak_url())).await;
    assert_eq!((r.status, r.body.as_str()), (200, "null"));
    stop(s).await;
}
