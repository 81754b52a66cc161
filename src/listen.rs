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

#[cfg(test)]
mod tests {
    use super::*;

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
