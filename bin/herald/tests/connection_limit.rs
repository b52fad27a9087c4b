//! `--max-connections`: at the cap, new connections wait to be served until one closes.
//! `--http-idle-timeout`: a connection waiting too long for a request head is closed, and a
//! request body from which nothing arrives for that long gets 408.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald_testkit::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{bin, icepeak_get, read_response, within, within_for};

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

/// Connects to `addr` and sends `bytes` (possibly nothing).
async fn connect_and_send(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = within("connect", TcpStream::connect(addr)).await.unwrap();
    if !bytes.is_empty() {
        within("write", stream.write_all(bytes)).await.unwrap();
    }
    stream
}

/// Reads until the server closes `stream`; returns what it sent and when it closed.
async fn until_closed(stream: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return (got, Instant::now()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A PUT of `body` to `path` on the Icepeak listener: the request head alone.
fn put_head(path: &str, body: &[u8]) -> String {
    format!(
        "PUT {path} HTTP/1.1\r\nHost: herald\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
}

#[tokio::test]
async fn clients_that_keep_the_server_waiting_are_cut_off_after_the_idle_timeout() {
    let s = Server::start(bin(), &["--http-idle-timeout", "1"])
        .await
        .unwrap();
    let addr = s.addr("icepeak");
    let started = Instant::now();
    // Connects and sends nothing; sends half a request head; is answered once and then idles.
    let mut silent = connect_and_send(addr, b"").await;
    let mut half = connect_and_send(addr, b"GET /x HTTP/1.1\r\nHost: herald\r\n").await;
    let mut kept = connect_and_send(addr, b"GET /x HTTP/1.1\r\nHost: herald\r\n\r\n").await;
    let first = within("the answer", read_response(&mut kept)).await;
    assert_eq!(first.status, 404, "{first:?}");
    // Sends part of a body and stops.
    let mut stalled = connect_and_send(addr, put_head("/stalled", b"{\"a\": 1}").as_bytes()).await;
    within("part of a body", stalled.write_all(b"{\"a\""))
        .await
        .unwrap();
    // Sends a body slowly but steadily, over twice the timeout: it is answered.
    let body = b"{\"steady\": true}";
    let mut steady = connect_and_send(addr, put_head("/steady", body).as_bytes()).await;
    let trickle = tokio::spawn(async move {
        for piece in body.chunks(3) {
            tokio::time::sleep(Duration::from_millis(400)).await;
            steady.write_all(piece).await.unwrap();
        }
        steady
    });

    for (what, stream) in [
        ("silent", &mut silent),
        ("half a head", &mut half),
        ("kept alive", &mut kept),
    ] {
        let (got, closed) = within_for(Duration::from_secs(10), what, until_closed(stream)).await;
        assert!(
            got.is_empty(),
            "{what}: the server sent {:?}",
            String::from_utf8_lossy(&got)
        );
        let after = closed - started;
        assert!(
            after >= Duration::from_millis(900),
            "{what} closed after {after:?}, before the timeout"
        );
    }

    let timed_out = within("the stalled PUT's answer", read_response(&mut stalled)).await;
    assert_eq!(timed_out.status, 408, "{timed_out:?}");
    assert!(
        timed_out
            .body_str()
            .contains("nothing of the request body for 1 s"),
        "{timed_out:?}"
    );
    let mut steady = within("the trickle", trickle).await.unwrap();
    let answered = within("the steady PUT's answer", read_response(&mut steady)).await;
    assert_eq!(answered.status, 202, "{answered:?}");
    assert!(started.elapsed() > Duration::from_secs(2));
    assert_eq!(
        icepeak_get(&s, "/steady").await,
        Some(serde_json::json!({"steady": true}))
    );
    assert_eq!(icepeak_get(&s, "/stalled").await, None);
    s.stop().await.unwrap();
}
