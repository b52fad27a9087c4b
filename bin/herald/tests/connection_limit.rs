//! `--max-connections`: at the cap, new connections wait to be served until one closes.
//! `--http-idle-timeout`: a connection waiting too long for a request head is closed.

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

#[tokio::test]
async fn connections_waiting_for_a_request_head_are_closed_after_the_idle_timeout() {
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
    // A request whose body is slow is being answered: the head timeout does not cut it.
    let body = b"{\"slow\": true}";
    let head = format!(
        "PUT /slow HTTP/1.1\r\nHost: herald\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut slow = connect_and_send(addr, head.as_bytes()).await;
    within("half a body", slow.write_all(&body[..4]))
        .await
        .unwrap();

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

    within("the rest of the body", slow.write_all(&body[4..]))
        .await
        .unwrap();
    let answered = within("the slow PUT's answer", read_response(&mut slow)).await;
    assert_eq!(answered.status, 202, "{answered:?}");
    assert!(started.elapsed() > Duration::from_secs(1));
    assert_eq!(
        icepeak_get(&s, "/slow").await,
        Some(serde_json::json!({"slow": true}))
    );
    s.stop().await.unwrap();
}
