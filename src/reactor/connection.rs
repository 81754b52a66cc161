//! One client's state. It lives in the server's slab, once per connection,
//! so every byte counts: 32 bytes, which the slab stores without a separate
//! tag (the `family` field's spare values hold it).
//!
//! What is kept, and why:
//! - the socket (4 bytes: a descriptor);
//! - the peer's address (23 bytes, stored flat: IP, port, IPv6 scope), for
//!   the `Closed connection` line and `--tag`: after a reset the kernel no
//!   longer knows it;
//! - when the client last sent data (4 bytes), for `--idle-timeout`;
//! - a few flags.
//!
//! Not kept: a read buffer (the server reads through one shared block, and
//! frames never span reads, so nothing of a connection's data outlives its
//! read), and the greeting's progress (almost every greeting goes out in one
//! write; the rare one that does not is tracked by the server beside the
//! slab).

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use mio::Interest;
use mio::net::TcpStream;

/// The connection sits in the server's run queue (its read budget ran out
/// with data left), so it is revisited without a new event.
pub(crate) const QUEUED: u8 = 1;
/// The peer has closed its side (or the socket has an error): a short read
/// no longer means "drained", so read on to end of file.
pub(crate) const PEER_CLOSED: u8 = 2;
/// Registered for WRITABLE too, because the greeting is not all out.
pub(crate) const WANTS_WRITE: u8 = 4;
/// Urgent (out-of-band) data arrived: Linux ends a read at the urgent mark,
/// so a short read does not mean drained until a read says `WouldBlock`.
pub(crate) const URGENT: u8 = 8;
/// Behind `--proxy-protocol`: the PROXY header has not come yet, so nothing
/// has been printed or sent; `last_active` is the accept time.
pub(crate) const PROXY_PENDING: u8 = 16;
/// The proxy's own connection (a health check): served, but no
/// `Connection from` / `Closed connection` lines.
pub(crate) const QUIET: u8 = 32;
/// Counted against `--max-per-source` under its address: given back when
/// it closes.
pub(crate) const COUNTED: u8 = 64;

/// What a connection is registered for: readable, and on Linux priority
/// too, which is how urgent data announces itself (see [`URGENT`]).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) const READ_INTEREST: Interest = Interest::READABLE.add(Interest::PRIORITY);
/// What a connection is registered for.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) const READ_INTEREST: Interest = Interest::READABLE;

/// The address family of the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// A connected client.
#[derive(Debug)]
pub(crate) struct Connection {
    /// The socket, registered with the server's poll under this slab key.
    pub(crate) stream: TcpStream,
    /// The peer's IP: an IPv4 address in the first four bytes.
    ip: [u8; 16],
    /// The peer's IPv6 scope id (link-local addresses), else 0.
    scope_id: u32,
    /// When the client last sent data, in the server's coarse milliseconds
    /// (wrapping); drives `--idle-timeout`.
    pub(crate) last_active: u32,
    /// The peer's port.
    port: u16,
    /// Which of IPv4 and IPv6 `ip` holds.
    family: Family,
    /// [`QUEUED`], [`PEER_CLOSED`], [`WANTS_WRITE`], [`URGENT`],
    /// [`PROXY_PENDING`], [`QUIET`], [`COUNTED`].
    pub(crate) flags: u8,
}

impl Connection {
    pub(crate) fn new(stream: TcpStream, peer: SocketAddr, now_ms: u32) -> Connection {
        let (ip, scope_id, port, family) = flatten(peer);
        Connection {
            stream,
            ip,
            scope_id,
            last_active: now_ms,
            port,
            family,
            flags: 0,
        }
    }

    /// Replaces the peer's address (with the client's, from a PROXY
    /// header).
    pub(crate) fn set_peer(&mut self, peer: SocketAddr) {
        (self.ip, self.scope_id, self.port, self.family) = flatten(peer);
    }

    /// The client's address.
    pub(crate) fn peer(&self) -> SocketAddr {
        match self.family {
            Family::V4 => {
                let [a, b, c, d, ..] = self.ip;
                SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), self.port)
            }
            Family::V6 => SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(self.ip), self.port, 0, self.scope_id)),
        }
    }

    /// Whether any of `flags` is set.
    #[inline]
    pub(crate) fn has(&self, flags: u8) -> bool {
        self.flags & flags != 0
    }
}

/// An address as the connection stores it: IP bytes, scope id, port, family.
fn flatten(peer: SocketAddr) -> ([u8; 16], u32, u16, Family) {
    match peer {
        SocketAddr::V4(a) => {
            let mut ip = [0u8; 16];
            ip[..4].copy_from_slice(&a.ip().octets());
            (ip, 0, a.port(), Family::V4)
        }
        SocketAddr::V6(a) => (a.ip().octets(), a.scope_id(), a.port(), Family::V6),
    }
}

/// Writes what remains of `greeting` after `sent` bytes, advancing `sent`.
/// `Ok(true)` once it is all out, `Ok(false)` if the socket is full (finish
/// on WRITABLE).
pub(crate) fn write_greeting(stream: &mut TcpStream, greeting: &[u8], sent: &mut u32) -> io::Result<bool> {
    loop {
        let done = *sent as usize;
        if done >= greeting.len() {
            return Ok(true);
        }
        match stream.write(&greeting[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            // Greetings are capped below 4 GiB, so this cannot wrap.
            Ok(n) => *sent += n as u32,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_32_bytes_and_the_slab_needs_no_tag() {
        assert_eq!(std::mem::size_of::<Connection>(), 32);
        // A spare value of `family` is free for an enum's tag, as in the
        // slab's `Entry<Connection>`.
        assert_eq!(std::mem::size_of::<Option<Connection>>(), 32);
    }

    #[test]
    fn keeps_the_peer_address_whole() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let std_stream = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        for peer in [
            "127.0.0.1:44581",
            "255.255.255.255:65535",
            "[::1]:50000",
            "[::ffff:1.2.3.4]:1",
            "[fe80::1%7]:80",
            "[2001:db8::dead:beef]:0",
        ] {
            let peer: SocketAddr = peer.parse().expect("address");
            let stream = TcpStream::from_std(std_stream.try_clone().expect("clone"));
            let mut conn = Connection::new(stream, peer, 0);
            assert_eq!(conn.peer(), peer);
            assert_eq!(conn.peer().to_string(), peer.to_string());
            // And after a PROXY header replaces it.
            conn.set_peer("[2001:db8::1]:7".parse().expect("addr"));
            conn.set_peer(peer);
            assert_eq!(conn.peer(), peer);
        }
    }
}
