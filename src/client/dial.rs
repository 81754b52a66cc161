//! Resolving and connecting (with retries), and dial.go's connection
//! checks over TCP and UDP.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use super::{ClientError, Failed, RetryPolicy, retry};
use crate::net_error::Op;

/// Resolves `host:port` (IPv4 first), or says why not.
pub fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, ClientError> {
    crate::listen::resolve(host, port).map_err(|err| ClientError::Resolve {
        target: format!("{host}:{port}"),
        err,
    })
}

pub(super) fn connect_any(addrs: &[SocketAddr], timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Connects to `host:port`, retrying temporary errors with exponential
/// backoff (and, with `policy.wait`, refused connections until the deadline).
pub fn dial(host: &str, port: u16, policy: &RetryPolicy) -> Result<TcpStream, ClientError> {
    let addrs = resolve(host, port)?;
    let target = format!("tcp {}", addrs[0]);
    retry(policy, Op::Dial, &format!("dial {target}"), || {
        connect_any(&addrs, policy.timeout)
    })
    .map_err(|Failed { err, attempts }| ClientError::Dial { target, err, attempts })
}

/// The transport of a `dial` check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// TCP over IPv4 or IPv6.
    Tcp,
    /// TCP over IPv4 only.
    Tcp4,
    /// TCP over IPv6 only.
    Tcp6,
    /// UDP ("connecting" associates the socket with the peer; nothing is sent).
    Udp,
}

impl Network {
    /// Go's name for the network.
    pub fn name(self) -> &'static str {
        match self {
            Network::Tcp => "tcp",
            Network::Tcp4 => "tcp4",
            Network::Tcp6 => "tcp6",
            Network::Udp => "udp",
        }
    }
}

/// Splits `host:port`, `[v6]:port`, a bare host or a bare IPv6 address
/// (port `default_port`).
pub fn split_host_port(addr: &str, default_port: u16) -> Result<(String, u16), String> {
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| format!("missing `]` in {addr}"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port in {addr}"))?,
            None if after.is_empty() => default_port,
            None => return Err(format!("unexpected `{after}` after `]` in {addr}")),
        };
        return Ok((host.to_string(), port));
    }
    match addr.rsplit_once(':') {
        // More than one colon and no brackets: a bare IPv6 address.
        Some((host, _)) if host.contains(':') => Ok((addr.to_string(), default_port)),
        Some((host, port)) => Ok((
            host.to_string(),
            port.parse().map_err(|_| format!("bad port `{port}` in {addr}"))?,
        )),
        None => Ok((addr.to_string(), default_port)),
    }
}

/// dial.go for one address: connects over `network` and returns
/// `(local, remote)`.
pub fn dial_check(network: Network, addr: &str, timeout: Duration) -> io::Result<(SocketAddr, SocketAddr)> {
    let (host, port) = split_host_port(addr, 80).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()?
        .filter(|a| match network {
            Network::Tcp4 => a.is_ipv4(),
            Network::Tcp6 => a.is_ipv6(),
            Network::Tcp | Network::Udp => true,
        })
        .collect();
    if addrs.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no suitable address found"));
    }
    if network == Network::Udp {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for remote in &addrs {
            let bind: SocketAddr = if remote.is_ipv4() {
                "0.0.0.0:0".parse().map_err(io::Error::other)?
            } else {
                "[::]:0".parse().map_err(io::Error::other)?
            };
            let attempt = UdpSocket::bind(bind).and_then(|s| {
                s.connect(remote)?;
                Ok((s.local_addr()?, s.peer_addr()?))
            });
            match attempt {
                Ok(pair) => return Ok(pair),
                Err(e) => last = e,
            }
        }
        return Err(last);
    }
    let stream = connect_any(&addrs, timeout)?;
    Ok((stream.local_addr()?, stream.peer_addr()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_addresses() {
        assert_eq!(split_host_port("example.com", 80), Ok(("example.com".into(), 80)));
        assert_eq!(split_host_port("127.0.0.1:8080", 80), Ok(("127.0.0.1".into(), 8080)));
        assert_eq!(split_host_port("[::1]:81", 80), Ok(("::1".into(), 81)));
        assert_eq!(split_host_port("[::1]", 80), Ok(("::1".into(), 80)));
        assert_eq!(split_host_port("::1", 80), Ok(("::1".into(), 80)));
        assert!(split_host_port("host:http", 80).is_err());
        assert!(split_host_port("[::1", 80).is_err());
    }
}
