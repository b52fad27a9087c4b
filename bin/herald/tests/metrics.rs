//! The metrics listener of the real binary (seed-contracts 1.7): `/healthcheck` and the
//! Prometheus text with Icepeak's and Herald's metric names.

mod common;

use std::time::Duration;

use common::*;

/// Polls `/metrics` until `pred` holds (metrics are updated asynchronously).
async fn metrics_until(
    s: &herald_testkit::Server,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let url = format!("{}/metrics", s.metrics_url());
    within(what, async {
        loop {
            let r = get(&url).await;
            assert_eq!(r.status, 200, "{r:?}");
            if pred(&r.body) {
                return r.body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l.trim() == line)
}

#[tokio::test]
async fn healthcheck_is_200_with_an_empty_body() {
    let s = start(&[]).await;
    let r = get(&format!("{}/healthcheck", s.metrics_url())).await;
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    stop(s).await;
}

#[tokio::test]
async fn metrics_expose_icepeak_and_herald_names() {
    let s = start(&[]).await;
    // Some traffic on both listeners.
    icepeak_put(&s, "/m", "1").await;
    assert_eq!(icepeak_get(&s, "/m").await, Some(serde_json::json!(1)));
    let r = put(&format!("{}/docs/m2", s.http_url()), "2").await;
    assert_eq!(r.status, 204);

    let mut ws = ws_connect(&s.icepeak_ws("/m")).await;
    assert_eq!(next_text(&mut ws).await, "1");

    let text = metrics_until(&s, "metrics with one open websocket", |t| {
        has_line(t, r#"herald_connections{protocol="icepeak-ws"} 1"#)
    })
    .await;
    let r = get(&format!("{}/metrics", s.metrics_url())).await;
    assert!(
        r.content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("text/plain")),
        "{r:?}"
    );
    for name in [
        "icepeak_subscriber_count",
        "herald_doc_writes_total",
        "http_request_duration_seconds_bucket",
        "herald_http_requests_total",
        "herald_connections_total",
        "icepeak_internal_queue_items_added",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from:\n{text}"
        );
    }
    // The histogram carries Icepeak's labels.
    assert!(
        text.lines()
            .any(|l| l.starts_with("http_request_duration_seconds_bucket")
                && l.contains(r#"method="PUT""#)
                && l.contains(r#"status="202""#)),
        "{text}"
    );
    // Both durable writes were counted.
    let writes: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("herald_doc_writes_total "))
        .expect("herald_doc_writes_total sample")
        .trim()
        .parse()
        .expect("number");
    assert!(writes >= 2.0, "{writes}");
    // One subscription is active.
    assert!(has_line(&text, "icepeak_subscriber_count 1"), "{text}");

    // A second socket, then both closed: the gauge follows.
    let mut ws2 = ws_connect(&s.icepeak_ws("/?method=reusable")).await;
    send_text(&mut ws2, r#"{"type":"subscribe","paths":["m"]}"#).await;
    assert_eq!(next_json(&mut ws2).await["code"], 200);
    metrics_until(&s, "two open websockets", |t| {
        has_line(t, r#"herald_connections{protocol="icepeak-ws"} 2"#)
    })
    .await;
    drop(ws);
    drop(ws2);
    metrics_until(&s, "no open websockets", |t| {
        has_line(t, r#"herald_connections{protocol="icepeak-ws"} 0"#)
            && has_line(t, "icepeak_subscriber_count 0")
    })
    .await;

    // Any other path serves the metrics too.
    let r = get(&format!("{}/anything", s.metrics_url())).await;
    assert!(r.body.contains("herald_doc_writes_total"));
    stop(s).await;
}
