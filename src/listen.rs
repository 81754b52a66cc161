//! Addresses and listeners: resolving a host as Go does, and binding a
//! listening socket with the options the server needs.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

/// Resolves `host` and `port`, IPv4 addresses first (as Go's
/// `ResolveTCPAddr` prefers them). `[::1]` is accepted for `::1`.
pub fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let mut addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    addrs.sort_by_key(|a| a.is_ipv6());
    addrs.dedup();
    if addrs.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no addresses found"));
    }
    Ok(addrs)
}

/// A listening socket on `addr` with `backlog`, `SO_REUSEADDR` set (as Go
/// sets it) and non-blocking.
pub fn listen(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// `count` listening sockets on `addr`, for as many reactors: one socket
/// when `count` is 1; else each with `SO_REUSEPORT`, so that the kernel
/// spreads new connections over them. With port 0, the first bind picks the
/// port and the others join it.
pub fn listen_many(addr: SocketAddr, backlog: u32, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    if count <= 1 {
        return Ok(vec![listen(addr, backlog)?]);
    }
    let first = listen_reuseport(addr, backlog)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(listen_reuseport(addr, backlog)?);
    }
    Ok(listeners)
}

/// A listening socket with `SO_REUSEPORT` (and `SO_REUSEADDR`), non-blocking.
fn listen_reuseport(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_listeners_share_one_port() {
        let listeners = listen_many("127.0.0.1:0".parse().expect("addr"), 16, 3).expect("listen");
        assert_eq!(listeners.len(), 3);
        let port = listeners[0].local_addr().expect("addr").port();
        assert_ne!(port, 0);
        for l in &listeners {
            assert_eq!(l.local_addr().expect("addr").port(), port);
        }
        // A plain bind to that port is refused: the group owns it.
        assert!(listen(format!("127.0.0.1:{port}").parse().expect("addr"), 16).is_err());
    }

    #[test]
    fn resolves_ipv4_first() {
        let addrs = resolve("localhost", 7).expect("localhost resolves");
        assert!(addrs[0].is_ipv4(), "{addrs:?}");
        assert_eq!(
            resolve("[::1]", 7).expect("::1").first().map(|a| a.to_string()),
            Some("[::1]:7".into())
        );
        assert!(resolve("no-such-host.invalid", 7).is_err());
    }
}
