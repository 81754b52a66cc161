//! Addresses as people type them (`HOST:PORT`, `[V6]:PORT`, a bare host),
//! resolving and connecting with retries, and dial.go's connection checks
//! over TCP and UDP.

use std::io;
use std::net::{Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
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

/// Connects to the first of `addrs` that answers, each attempt bounded by
/// `timeout`.
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
/// backoff (and, with `policy.wait`, refused connections until the wait is
/// over). The whole connect, every attempt and pause, ends within
/// `policy.timeout` (or `policy.wait`, when that is longer) and by
/// `policy.deadline`.
pub fn dial(host: &str, port: u16, policy: &RetryPolicy) -> Result<TcpStream, ClientError> {
    let addrs = resolve(host, port)?;
    let target = format!("tcp {}", addrs[0]);
    let bound = std::time::Instant::now() + policy.timeout.max(policy.wait.unwrap_or_default());
    let policy = &RetryPolicy {
        deadline: Some(policy.deadline.map_or(bound, |d| d.min(bound))),
        ..policy.clone()
    };
    retry(policy, Op::Dial, &format!("dial {target}"), || {
        let bound = policy
            .attempt_timeout()
            .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))?;
        connect_any(&addrs, bound)
    })
    .map_err(|Failed { err, attempts }| ClientError::Dial {
        target,
        port,
        err,
        attempts,
        timeout: policy.timeout,
    })
}

/// The transport of a `dial` check, by Go's names.
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
    /// UDP over IPv4 only.
    Udp4,
    /// UDP over IPv6 only.
    Udp6,
}

impl Network {
    /// Every network we dial, in the order the help lists them.
    pub const ALL: [Network; 6] = [
        Network::Tcp,
        Network::Tcp4,
        Network::Tcp6,
        Network::Udp,
        Network::Udp4,
        Network::Udp6,
    ];

    /// Go's name for the network.
    pub fn name(self) -> &'static str {
        match self {
            Network::Tcp => "tcp",
            Network::Tcp4 => "tcp4",
            Network::Tcp6 => "tcp6",
            Network::Udp => "udp",
            Network::Udp4 => "udp4",
            Network::Udp6 => "udp6",
        }
    }

    /// The network called `name`, if we dial it.
    pub fn from_name(name: &str) -> Option<Network> {
        Network::ALL.into_iter().find(|n| n.name() == name)
    }

    fn is_udp(self) -> bool {
        matches!(self, Network::Udp | Network::Udp4 | Network::Udp6)
    }

    fn accepts(self, addr: &SocketAddr) -> bool {
        match self {
            Network::Tcp4 | Network::Udp4 => addr.is_ipv4(),
            Network::Tcp6 | Network::Udp6 => addr.is_ipv6(),
            Network::Tcp | Network::Udp => true,
        }
    }
}

/// Whether `word` is a network name in Go's sense (`tcp5` is one, though
/// no such network exists), rather than a host: `tcp`, `udp` or `ip` and
/// digits, `ip:PROTO`, or one of the `unix` networks.
fn looks_like_network(word: &str) -> bool {
    let digits_after = |prefix: &str| {
        word.strip_prefix(prefix)
            .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit()))
    };
    digits_after("tcp")
        || digits_after("udp")
        || digits_after("ip")
        || word.starts_with("ip:")
        || word.starts_with("ip4:")
        || word.starts_with("ip6:")
        || matches!(word, "unix" | "unixgram" | "unixpacket")
}

/// `dial`'s arguments: an optional network name, then addresses. An
/// unknown network or an address we cannot split is an error for the
/// usage message, found before anything is dialled.
pub fn parse_dial_args(args: &[String]) -> Result<(Network, Vec<String>), String> {
    let (network, addrs) = match args.first() {
        Some(first) => match Network::from_name(first) {
            Some(network) => (network, &args[1..]),
            None if looks_like_network(first) => {
                let names: Vec<&str> = Network::ALL.iter().map(|n| n.name()).collect();
                return Err(format!(
                    "unknown network `{first}`: tcp_client dials {}",
                    names.join(", ")
                ));
            }
            None => (Network::Tcp, args),
        },
        None => (Network::Tcp, args),
    };
    if addrs.is_empty() {
        return Err("no address given".into());
    }
    for addr in addrs {
        split_host_port(addr, 80)?;
    }
    Ok((network, addrs.to_vec()))
}

/// How `addr`, an IPv6 address without brackets, should have been written.
fn bracketed(addr: &str) -> String {
    match addr.rsplit_once(':') {
        Some((head, port))
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && head.parse::<Ipv6Addr>().is_ok() =>
        {
            format!("[{head}]:{port}")
        }
        _ => format!("[{addr}]"),
    }
}

/// Splits `HOST:PORT`, `[V6]:PORT`, `[V6]` or a bare host (port
/// `default_port`). An IPv6 address needs its brackets, as Go's dialer
/// says: `::1:5000` is refused with a hint to write `[::1]:5000`.
pub fn split_host_port(addr: &str, default_port: u16) -> Result<(String, u16), String> {
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| format!("missing `]` in `{addr}`"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port `{p}` in `{addr}`"))?,
            None if after.is_empty() => default_port,
            None => return Err(format!("unexpected `{after}` after `]` in `{addr}`")),
        };
        return Ok((host.to_string(), port));
    }
    match addr.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => Err(format!(
            "too many colons in `{addr}`: write an IPv6 address in brackets, as `{}`",
            bracketed(addr)
        )),
        Some((host, port)) => Ok((
            host.to_string(),
            port.parse().map_err(|_| format!("bad port `{port}` in `{addr}`"))?,
        )),
        None => Ok((addr.to_string(), default_port)),
    }
}

/// dial.go for one address: connects over `network` and returns
/// `(local, remote)`.
pub fn dial_check(network: Network, addr: &str, timeout: Duration) -> io::Result<(SocketAddr, SocketAddr)> {
    let (host, port) = split_host_port(addr, 80).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let addrs: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()?
        .filter(|a| network.accepts(a))
        .collect();
    if addrs.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no suitable address found"));
    }
    if network.is_udp() {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for remote in &addrs {
            let bind: SocketAddr = if remote.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
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
        assert!(split_host_port("host:http", 80).is_err());
        assert!(split_host_port("[::1", 80).is_err());
    }

    #[test]
    fn bare_ipv6_needs_brackets_and_says_how() {
        let err = split_host_port("::1:5000", 80).expect_err("ambiguous");
        assert!(
            err.contains("write an IPv6 address in brackets, as `[::1]:5000`"),
            "{err}"
        );
        let err = split_host_port("::1", 80).expect_err("ambiguous");
        assert!(err.ends_with("as `[::1]`"), "{err}");
    }

    #[test]
    fn dial_arguments() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_dial_args(&args(&["udp6", "[::1]:53"])),
            Ok((Network::Udp6, args(&["[::1]:53"])))
        );
        assert_eq!(
            parse_dial_args(&args(&["example.com", "tcp5.example.com:80"])),
            Ok((Network::Tcp, args(&["example.com", "tcp5.example.com:80"])))
        );
        for bad in [&["tcp5", "127.0.0.1:80"][..], &["unix", "/tmp/s"], &["ip4:icmp", "h"]] {
            let err = parse_dial_args(&args(bad)).expect_err("unknown network");
            assert!(err.starts_with(&format!("unknown network `{}`", bad[0])), "{err}");
        }
        assert!(parse_dial_args(&args(&["tcp"])).is_err());
        assert!(parse_dial_args(&args(&["tcp", "::1:5000"])).is_err());
    }
}
