//! The PROXY protocol (HAProxy's, v1 text and v2 binary): behind a proxy,
//! every connection opens with a header that names the real client.
//!
//! The header is read with `MSG_PEEK` until it is whole: the bytes wait in
//! the kernel, not in the server, so a header split across reads costs no
//! memory per connection and does not grow the 32-byte connection state.
//! Only then is exactly the header consumed, and what follows it is read and
//! framed like any client's bytes. While a header is pending, the
//! connection's `last_active` is its accept time, for `--proxy-timeout`.
//! The bytes are judged by [`crate::proxy_header::parse`], which refuses a
//! malformed header as soon as it can no longer become a valid one.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use log::debug;
use mio::Registry;

use super::accept::Refusal;
use super::connection::{PEER_CLOSED, PROXY_PENDING, QUIET};
use super::{Close, Core};
use crate::output::Transcript;
pub(super) use crate::proxy_header::MAX_HEADER;
use crate::proxy_header::{Parsed, parse};

/// Whether `a` and `b` are the same address and port, an IPv4-mapped IPv6
/// address being its IPv4 address: on a dual-stack listener, the peer of a
/// connection from 127.0.0.1 is `[::ffff:127.0.0.1]:P`, where a v1 header
/// about it says `127.0.0.1 ... P`.
fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip().to_canonical() == b.ip().to_canonical() && a.port() == b.port()
}

impl Core {
    /// Connection `key` is readable while its PROXY header is pending:
    /// peek at what has come; once the header is whole, consume exactly it
    /// and start serving the client it names. `Ok(Some(reason))` when the
    /// connection must close.
    pub(super) fn proxy_ready<W: Write>(
        &mut self,
        key: usize,
        registry: &Registry,
        out: &mut Transcript<'_, W>,
    ) -> io::Result<Option<Close>> {
        let Some(conn) = self.connections.get_mut(key) else {
            return Ok(None);
        };
        let peeked = loop {
            match conn.stream.peek(&mut self.read_buf[..MAX_HEADER]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Ok(Some(Close::Error(e))),
            }
        };
        let proxy = conn.peer();
        let (len, client) = match parse(&self.read_buf[..peeked]) {
            Parsed::Incomplete if peeked > 0 && !conn.has(PEER_CLOSED) => return Ok(None),
            Parsed::Incomplete => {
                let detail = if peeked == 0 {
                    ": closed before sending one".to_string()
                } else {
                    format!(": closed after {peeked} bytes of one")
                };
                self.refuse(Refusal::BadHeader, proxy, &detail);
                return Ok(Some(Close::Refused));
            }
            Parsed::Invalid(why) => {
                self.refuse(Refusal::BadHeader, proxy, &format!(": {why}"));
                return Ok(Some(Close::Refused));
            }
            Parsed::Proxy { client, server, len } => {
                // A header naming the very connection it came on (its source
                // the proxy's end, its destination this end) is the proxy
                // speaking for itself: HAProxy's v1 health checks do this.
                let own = same_endpoint(client, proxy)
                    && conn.stream.local_addr().is_ok_and(|local| same_endpoint(server, local));
                (len, (!own).then_some(client))
            }
            Parsed::Local { len } => (len, None),
        };
        // The header is whole: take exactly it; what follows is the client's.
        let mut taken = 0;
        while taken < len {
            match conn.stream.read(&mut self.read_buf[taken..len]) {
                Ok(0) => return Ok(Some(Close::Eof)),
                Ok(n) => taken += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Peeked bytes are there to read; anything else is a broken
                // connection.
                Err(e) => return Ok(Some(Close::Error(e))),
            }
        }
        conn.flags &= !PROXY_PENDING;
        self.proxy_pending.remove(&key);
        // --allow/--deny, the moment the header is whole: the client it
        // names, or for the proxy's own connection the proxy itself.
        let checked = client.unwrap_or(proxy);
        self.refresh_access();
        if !self.access.is_open() && !self.access.permits(checked.ip()) {
            if let Some(conn) = self.connections.get_mut(key) {
                conn.flags |= QUIET;
            }
            let detail = match client {
                Some(_) => format!(" (through {proxy})"),
                None => " (a proxy's own connection)".to_string(),
            };
            self.refuse(Refusal::Denied, checked, &detail);
            return Ok(Some(Close::Refused));
        }
        // --max-per-source counts the client the header names, in one
        // worker of several: the one its address belongs to.
        if let Some(client) = client
            && self.hand_to_owner(key, client, registry)
        {
            return Ok(None);
        }
        let Some(conn) = self.connections.get_mut(key) else {
            return Ok(None);
        };
        match client {
            Some(client) => {
                if let Some(per_source) = &self.shared.per_source {
                    if !per_source.take(client.ip()) {
                        conn.flags |= QUIET;
                        let _ = (&conn.stream).write(super::accept::PER_SOURCE_FULL);
                        self.refuse(Refusal::PerSource, client, &format!(" (through {proxy})"));
                        return Ok(Some(Close::Refused));
                    }
                    conn.flags |= super::connection::COUNTED;
                }
                conn.set_peer(client);
                debug!("[{key}] {proxy}: PROXY header for {client}");
            }
            None => {
                // The proxy's own connection (a health check: v2 LOCAL, v1
                // UNKNOWN, or a header naming the connection itself): served
                // under its address, not printed as a client.
                conn.flags |= QUIET;
                debug!("[{key}] {proxy}: PROXY header for the proxy itself (LOCAL); not printed");
            }
        }
        conn.last_active = self.now_ms;
        self.start(key, registry, out);
        // What came after the header is read now: no new edge may come.
        self.read_ready(key, self.read_budget, out)
    }

    /// Under `--workers` with `--max-per-source`, passes connection `key`,
    /// whose header named `client`, to the worker that counts `client`'s
    /// address (through the supervisor), if that is another worker; `true`
    /// when it has gone. When it cannot be passed, it is served here.
    fn hand_to_owner(&mut self, key: usize, client: SocketAddr, registry: &Registry) -> bool {
        let (Some(worker), Some(_)) = (self.config.worker, &self.shared.per_source) else {
            return false;
        };
        let Some(socket) = worker.handoff else { return false };
        let owner = owner_of(client.ip(), worker.open.len());
        if owner == worker.id {
            return false;
        }
        let Some(conn) = self.connections.get_mut(key) else {
            return false;
        };
        // SAFETY: the handoff descriptor stays open for the life of the
        // worker process (its `WorkerSide` owns it).
        let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(socket) };
        let what = crate::workers::handoff::Handed::Client { to: owner, client };
        if let Err(e) = crate::workers::handoff::send(&socket, &[conn.stream.as_raw_fd()], &what) {
            debug!("[{key}] {client}: cannot pass it to worker {owner} ({e}); served here");
            return false;
        }
        let _ = registry.deregister(&mut conn.stream);
        // Gone to another worker: its copy of the connection lives on there.
        self.connections.remove(key);
        self.shared.release(self.id);
        debug!("[{key}] {client}: passed to worker {owner}, which counts its address");
        true
    }

    /// Closes the connections whose PROXY header did not come within
    /// `--proxy-timeout`.
    pub(super) fn expire_proxy_headers<W: Write>(&mut self, out: &mut Transcript<'_, W>) {
        let timeout = u32::try_from(self.config.proxy_timeout.as_millis()).unwrap_or(u32::MAX / 2);
        let late: Vec<usize> = self
            .proxy_pending
            .iter()
            .copied()
            .filter(|&key| {
                self.connections
                    .get(key)
                    .is_some_and(|conn| self.now_ms.wrapping_sub(conn.last_active) >= timeout)
            })
            .collect();
        for key in late {
            if let Some(conn) = self.connections.get(key) {
                let peer = conn.peer();
                let detail = format!(": none within {:?} (--proxy-timeout)", self.config.proxy_timeout);
                self.refuse(Refusal::LateHeader, peer, &detail);
            }
            self.close(key, Close::Refused, out);
        }
        self.next_proxy_check = self.now + proxy_check_period(self.config.proxy_timeout);
    }
}

/// The worker (of `workers`) that counts the connections of address `ip`
/// under `--max-per-source`: a fixed hash of the address (an IPv4-mapped
/// IPv6 address counts as its IPv4 address).
pub(super) fn owner_of(ip: std::net::IpAddr, workers: usize) -> usize {
    let octets = match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    // FNV-1a: the same in every worker and every run.
    let hash = octets.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % workers.max(1) as u64) as usize
}

/// How often pending headers are checked for `--proxy-timeout`: a tenth of
/// it, within 10 ms to 1 s.
pub(super) fn proxy_check_period(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpStream};

    use super::*;
    use crate::config::Config;
    use crate::reactor::Reactor;
    use crate::reactor::tests::{reactor_with_client_on, transcript, wait_queued};

    /// A reactor behind `--proxy-protocol` (with `deny`) listening on
    /// `listen`, and a client connected to it from `connect`.
    fn proxied(
        listen: IpAddr,
        connect: IpAddr,
        deny: &[&str],
        out: &mut Transcript<'_, Vec<u8>>,
    ) -> (Reactor, TcpStream, usize) {
        let config = Config {
            proxy_protocol: true,
            deny: deny.iter().map(|net| net.parse().expect("net")).collect(),
            ..Config::default()
        };
        let (server, client, key) = reactor_with_client_on((listen, 0).into(), connect, config, out);
        client.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        (server, client, key)
    }

    /// Sends `header` and lets the reactor read it.
    fn send_header(
        server: &mut Reactor,
        client: &mut TcpStream,
        key: usize,
        header: &[u8],
        out: &mut Transcript<'_, Vec<u8>>,
    ) -> Option<Close> {
        client.write_all(header).expect("send");
        wait_queued(server, key, header.len());
        server
            .core
            .proxy_ready(key, server.poll.registry(), out)
            .expect("proxy_ready")
    }

    /// A v1 header naming `client`'s own connection, as HAProxy's v1
    /// health checks send (source: its end; destination: the server's).
    fn v1_naming(client: &TcpStream) -> Vec<u8> {
        let (me, server) = (client.local_addr().expect("addr"), client.peer_addr().expect("addr"));
        let family = if me.ip().to_canonical().is_ipv4() {
            "TCP4"
        } else {
            "TCP6"
        };
        format!(
            "PROXY {family} {} {} {} {}\r\n",
            me.ip().to_canonical(),
            server.ip().to_canonical(),
            me.port(),
            server.port()
        )
        .into_bytes()
    }

    /// Reads the greeting.
    fn greeted(client: &mut TcpStream) {
        let mut greeting = [0u8; 10];
        client.read_exact(&mut greeting).expect("greeting");
        assert_eq!(&greeting, b"Let's GO!\n");
    }

    #[test]
    fn endpoints_compare_as_canonical_addresses() {
        let v4: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().expect("addr");
        assert!(same_endpoint(v4, mapped));
        assert!(same_endpoint(mapped, v4));
        assert!(!same_endpoint(v4, "[::ffff:127.0.0.1]:5001".parse().expect("addr")));
        assert!(!same_endpoint(v4, "[::1]:5000".parse().expect("addr")));
        assert!(!same_endpoint(v4, "127.0.0.2:5000".parse().expect("addr")));
    }

    #[test]
    fn a_v1_health_check_on_a_dual_stack_listener_is_not_printed() {
        let sink = std::sync::Mutex::new(Vec::new());
        let mut out = transcript(&sink);
        let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        for connect in [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)] {
            let (mut server, mut client, key) = proxied(any6, connect, &[], &mut out);
            if connect.is_ipv4() {
                // The reactor sees the IPv4 client as IPv4-mapped.
                let peer = server.core.connections[key].peer();
                assert!(peer.to_string().starts_with("[::ffff:127.0.0.1]:"), "{peer}");
            }
            let header = v1_naming(&client);
            let close = send_header(&mut server, &mut client, key, &header, &mut out);
            assert!(close.is_none(), "{close:?}");
            greeted(&mut client);
            assert!(server.core.connections[key].has(QUIET), "not taken for the proxy's own");
            let text = String::from_utf8_lossy(out.pending_bytes()).into_owned();
            assert!(!text.contains("Connection from"), "{text}");
        }
    }

    #[test]
    fn the_proxys_address_to_another_destination_is_a_client() {
        // The proxy's own address and port as the source, but a destination
        // other than this end: a client of the proxy's host (ports are
        // shared across destinations), not the proxy speaking for itself.
        let sink = std::sync::Mutex::new(Vec::new());
        let mut out = transcript(&sink);
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (mut server, mut client, key) = proxied(loopback, loopback, &[], &mut out);
        let me = client.local_addr().expect("addr");
        let header = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} 7000\r\n", me.port());
        let close = send_header(&mut server, &mut client, key, header.as_bytes(), &mut out);
        assert!(close.is_none(), "{close:?}");
        greeted(&mut client);
        assert!(!server.core.connections[key].has(QUIET));
        let text = String::from_utf8_lossy(out.pending_bytes()).into_owned();
        assert!(text.contains(&format!("Connection from:  {me}\n")), "{text}");
    }

    #[test]
    fn a_denied_proxys_own_connections_are_refused_at_once() {
        let sink = std::sync::Mutex::new(Vec::new());
        let mut out = transcript(&sink);
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let local = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::Protocol::Stream,
            (
                "127.0.0.1:1".parse::<SocketAddr>().expect("addr"),
                "127.0.0.1:2".parse::<SocketAddr>().expect("addr"),
            ),
        )
        .build()
        .expect("a v2 header");
        for header in [b"PROXY UNKNOWN\r\n".to_vec(), local, Vec::new()] {
            let (mut server, mut client, key) = proxied(loopback, loopback, &["127.0.0.1/32"], &mut out);
            let header = if header.is_empty() { v1_naming(&client) } else { header };
            let close = send_header(&mut server, &mut client, key, &header, &mut out);
            assert!(matches!(close, Some(Close::Refused)), "{close:?}");
            server.core.close(key, Close::Refused, &mut out);
            let mut got = Vec::new();
            client.read_to_end(&mut got).expect("read");
            assert_eq!(got, b"", "no greeting for {}", header.escape_ascii());
        }
        let text = String::from_utf8_lossy(out.pending_bytes()).into_owned();
        assert_eq!(text, "", "nothing printed");
    }

    #[test]
    fn an_allowed_proxys_own_connection_is_served_quietly() {
        let sink = std::sync::Mutex::new(Vec::new());
        let mut out = transcript(&sink);
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (mut server, mut client, key) = proxied(loopback, loopback, &["10.0.0.0/8"], &mut out);
        let close = send_header(&mut server, &mut client, key, b"PROXY UNKNOWN\r\n", &mut out);
        assert!(close.is_none(), "{close:?}");
        greeted(&mut client);
        assert!(server.core.connections[key].has(QUIET));
    }
}
