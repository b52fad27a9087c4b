//! WebSocket client connections for the subscriber scenarios.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::Context;
use futures_util::StreamExt;
use tokio::net::{TcpSocket, TcpStream};
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

/// Opens a WebSocket to `path` on `target`, from `source` (port chosen by the kernel) when
/// given.
///
/// Binding a source address is how one machine opens more than the ~28,000 connections its
/// ephemeral port range allows towards one server address: every `127.0.0.x` has its own port
/// range.
///
/// # Errors
/// When the TCP connection or the WebSocket handshake fails.
pub async fn connect(
    target: &Target,
    path: &str,
    source: Option<IpAddr>,
) -> anyhow::Result<Socket> {
    let addr = target.addr();
    let stream = match source {
        None => TcpStream::connect(addr).await,
        Some(ip) => {
            let socket = match addr {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            // Lets a port in TIME_WAIT from an earlier run be bound again.
            socket.set_reuseaddr(true)?;
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("cannot bind a client socket to {ip}"))?;
            socket.connect(addr).await
        }
    }
    .with_context(|| format!("cannot connect to {target}"))?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0);
    let (socket, _response) =
        tokio_tungstenite::client_async_with_config(target.ws_url(path), stream, Some(config))
            .await
            .with_context(|| format!("WebSocket handshake on {path} failed"))?;
    Ok(socket)
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

/// The `i`-th of `count` loopback source addresses, `127.0.0.1` to `127.0.0.{count}`, or
/// `None` when `count` is 0 (let the kernel choose).
pub fn loopback_source(i: usize, count: u8) -> Option<IpAddr> {
    if count == 0 {
        return None;
    }
    // `i % count` < 255, so the last octet stays within 1..=255.
    let octet = (i % usize::from(count)) as u8 + 1;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_round_robin() {
        assert_eq!(loopback_source(0, 0), None);
        assert_eq!(
            loopback_source(0, 3),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)))
        );
        assert_eq!(
            loopback_source(5, 3),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)))
        );
        assert_eq!(
            loopback_source(254, 255),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 255)))
        );
    }
}
