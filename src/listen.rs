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

/// The machine's ephemeral port range (`net.ipv4.ip_local_port_range`),
/// from which outgoing connections take their local ports, if `/proc` says.
pub fn ephemeral_ports() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut ports = text.split_whitespace().map(|p| p.parse::<u16>().ok());
    Some((ports.next()??, ports.next()??))
}

/// Whether some socket on this machine listens on TCP port `port` (from
/// `/proc/net/tcp` and `tcp6`; `None` when they cannot be read).
pub fn someone_listens_on(port: u16) -> Option<bool> {
    let mut seen = false;
    let mut read_any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        read_any = true;
        seen |= text.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // State 0A is LISTEN; the local address ends with the port in hex.
            fields.get(3) == Some(&"0A")
                && fields
                    .get(1)
                    .and_then(|local| local.rsplit(':').next())
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        });
    }
    read_any.then_some(seen)
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

/// The listening socket passed by a service manager (systemd socket
/// activation: `LISTEN_FDS` and `LISTEN_PID` naming this process, the
/// socket at descriptor 3), made non-blocking; `None` when there is none
/// (also when `LISTEN_PID` is missing or names another process, as the
/// protocol says). The variables are removed so that no child process
/// takes them for its own. More than one socket, or one that is not a TCP
/// listener, is an error.
///
/// # Safety
///
/// Call it before the process starts any other thread: it changes the
/// environment, which another thread reading it at the same time would
/// race with; and the descriptors it takes must belong to nobody else in
/// the process (true at start, when they come from the service manager).
pub unsafe fn activated() -> io::Result<Option<std::net::TcpListener>> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id());
    let mut fds = if ours {
        listenfd::ListenFd::from_env()
    } else {
        listenfd::ListenFd::empty()
    };
    // SAFETY: the caller promises that no other thread runs, so nothing
    // reads the environment while it changes.
    unsafe {
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    match fds.len() {
        0 => Ok(None),
        1 => {
            let listener = fds.take_tcp_listener(0)?.ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "the passed socket is not a TCP listener")
            })?;
            // A TCP socket that is not listening (a connection, as
            // `Accept=yes` passes, or a socket bound without `listen()`)
            // would fail at the first client.
            if !socket2::SockRef::from(&listener).is_listener()? {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the passed socket is not listening (Accept=yes, or no listen()): give the server a \
                     listening socket (ListenStream= with Accept=no)",
                ));
            }
            listener.set_nonblocking(true)?;
            Ok(Some(listener))
        }
        n => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{n} sockets were passed; give the server exactly one (one ListenStream=)"),
        )),
    }
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
