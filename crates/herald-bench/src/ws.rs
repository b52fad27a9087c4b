//! WebSocket client connections for the subscriber scenarios.

use std::net::IpAddr;

use anyhow::Context;
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::args::Target;

/// A client WebSocket over plain TCP.
pub type Socket = WebSocketStream<TcpStream>;

/// Read buffer of each client socket. tungstenite's default (128 KiB) is zero-filled on the
/// first read, which would cost 1.25 GiB of client memory for 10,000 idle subscribers; our
/// frames are small.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Opens a WebSocket to `path` (with its query, if any) on `target`, from `source` (port
/// chosen by the kernel) when given, with a 4 KiB read buffer.
///
/// Binding a source address is how one machine opens more than the ~28,000 connections its
/// ephemeral port range allows towards one server address (see [`crate::net`]).
///
/// # Errors
/// When the TCP connection or the WebSocket handshake fails.
pub async fn connect(
    target: &Target,
    path: &str,
    source: Option<IpAddr>,
) -> anyhow::Result<Socket> {
    connect_with(target, path, source, READ_BUFFER_BYTES).await
}

/// [`connect`] with a read buffer of `read_buffer_bytes`: larger for a subscriber that
/// receives a lot, so that it reads with fewer system calls.
///
/// # Errors
/// When the TCP connection or the WebSocket handshake fails.
pub async fn connect_with(
    target: &Target,
    path: &str,
    source: Option<IpAddr>,
    read_buffer_bytes: usize,
) -> anyhow::Result<Socket> {
    let stream = crate::net::connect(target.addr(), source).await?;
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer_bytes)
        .write_buffer_size(0);
    let (socket, _response) =
        tokio_tungstenite::client_async_with_config(target.ws_url(path), stream, Some(config))
            .await
            .with_context(|| format!("WebSocket handshake on {}", strip_query(path)))?;
    Ok(socket)
}

/// `path` without its query, for messages: a `/listen` query holds a session token.
fn strip_query(path: &str) -> &str {
    path.split_once('?').map_or(path, |(p, _)| p)
}

/// Opens a WebSocket like [`connect`] and waits for its first data frame (the subscribed
/// path's current value), so the subscription is known to be registered.
///
/// # Errors
/// When connecting fails, or the socket fails or closes before its first frame.
pub async fn connect_subscribed(
    target: &Target,
    path: &str,
    source: Option<IpAddr>,
) -> anyhow::Result<Socket> {
    let mut socket = connect(target, path, source).await?;
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(_) | Message::Binary(_))) => return Ok(socket),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e).context("WebSocket failed before its first frame"),
            None => anyhow::bail!("WebSocket closed before its first frame"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_stay_out_of_messages() {
        assert_eq!(strip_query("/listen?jwt=secret&s=a:b"), "/listen");
        assert_eq!(strip_query("/a/b"), "/a/b");
    }
}
