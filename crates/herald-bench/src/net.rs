//! TCP connections from a chosen loopback source address, shared by every client here
//! (WebSocket, SSE, MQTT).
//!
//! One client address reaches about 28,000 connections to one server address: the ephemeral
//! port range (`/proc/sys/net/ipv4/ip_local_port_range`) is per source address. The idle
//! scenarios therefore spread their sockets over `127.0.0.1`, `127.0.0.2`, ... above
//! [`CONNECTIONS_PER_SOURCE`] connections to a loopback target ([`source_ips`] chooses how
//! many, [`loopback_source`] which one a connection uses).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, bail};
use tokio::net::{TcpSocket, TcpStream};

/// Connections per source address before more source addresses are used automatically; below
/// the ~28,000 ports of the default ephemeral range, leaving room for other sockets.
pub const CONNECTIONS_PER_SOURCE: usize = 25_000;

/// Opens a TCP connection to `addr` with `TCP_NODELAY`, from `source` (port chosen by the
/// kernel) when given.
///
/// # Errors
/// When the source address cannot be bound or the connection fails.
pub async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> anyhow::Result<TcpStream> {
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
    .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How many loopback source addresses `connections` connections to `target` use: `requested`
/// when given, else one per [`CONNECTIONS_PER_SOURCE`] connections to an IPv4 loopback target
/// when that is more than one, else 0 (the kernel chooses).
///
/// # Errors
/// When source addresses are requested for a target outside `127.0.0.0/8`.
pub fn source_ips(
    requested: Option<u8>,
    target: SocketAddr,
    connections: usize,
) -> anyhow::Result<u8> {
    let loopback_v4 = target.ip().is_loopback() && target.is_ipv4();
    let n = match requested {
        Some(n) => n,
        None if loopback_v4 => match connections.div_ceil(CONNECTIONS_PER_SOURCE) {
            0 | 1 => 0,
            n => u8::try_from(n).unwrap_or(u8::MAX),
        },
        None => 0,
    };
    if n > 0 && !loopback_v4 {
        bail!("--source-ips needs an IPv4 loopback target (127.0.0.0/8), not {target}");
    }
    Ok(n)
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

    #[test]
    fn source_counts() {
        let loopback: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let other: SocketAddr = "192.0.2.1:80".parse().unwrap();
        assert_eq!(source_ips(None, loopback, 10_000).unwrap(), 0);
        assert_eq!(source_ips(None, loopback, 25_001).unwrap(), 2);
        assert_eq!(source_ips(None, loopback, 100_000).unwrap(), 4);
        assert_eq!(source_ips(Some(3), loopback, 10).unwrap(), 3);
        assert_eq!(source_ips(None, other, 100_000).unwrap(), 0);
        assert!(source_ips(Some(2), other, 10).is_err());
        assert_eq!(source_ips(Some(0), other, 10).unwrap(), 0);
    }
}
