//! `--max-connections`: at the cap, new connections wait to be served until one closes.

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use herald_testkit::Server;

use common::{bin, within};

#[tokio::test]
async fn connections_over_the_limit_wait_until_one_closes() {
    let s = Server::start(bin(), &["--max-connections", "2"])
        .await
        .unwrap();
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let (mut ws, _) = within(
            "connect",
            tokio_tungstenite::connect_async(s.icepeak_ws("/x")),
        )
        .await
        .unwrap();
        // The first frame proves the connection is served.
        within("first frame", ws.next()).await.unwrap().unwrap();
        sockets.push(ws);
    }

    let client = reqwest::Client::new();
    let third = tokio::spawn({
        let url = format!("{}/x", s.icepeak_url());
        let client = client.clone();
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served past --max-connections 2"
    );

    // One subscriber leaves: the waiting request is served.
    drop(sockets.pop());
    let status = within("third request", third).await.unwrap().unwrap();
    assert_eq!(status, 404);

    // The metrics listener is not counted against the limit.
    let m = client
        .get(format!("{}/healthcheck", s.metrics_url()))
        .send();
    assert_eq!(within("metrics", m).await.unwrap().status(), 200);
    drop(sockets);
    s.stop().await.unwrap();
}
