//! The PROXY protocol (HAProxy's, v1 text and v2 binary): behind a proxy,
//! every connection opens with a header that names the real client.
//!
//! The header is read with `MSG_PEEK` until it is whole: the bytes wait in
//! the kernel, not in the server, so a header split across reads costs no
//! memory per connection and does not grow the 32-byte connection state.
//! Only then is exactly the header consumed, and what follows it is read and
//! framed like any client's bytes. While a header is pending, the
//! connection's `last_active` is its accept time, for `--proxy-timeout`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use log::debug;
use mio::Registry;
use ppp::{HeaderResult, PartialResult, v1, v2};

use super::accept::Refusal;
use super::connection::{PEER_CLOSED, PROXY_PENDING, QUIET};
use super::{Close, Core};
use crate::output::Transcript;

/// The longest header accepted. A v1 header is at most 107 bytes; v2 is 16
/// bytes and the addresses (12 or 36 bytes for IPv4/IPv6) plus whatever
/// TLVs the proxy adds, which HAProxy keeps far below this.
pub(super) const MAX_HEADER: usize = 4096;

/// What the bytes at the start of a connection say.
#[derive(Debug, PartialEq)]
pub(super) enum Parsed {
    /// Not a whole header yet: wait for more.
    Incomplete,
    /// A header of `len` bytes naming the client at `client`.
    Proxy { client: SocketAddr, len: usize },
    /// A header of `len` bytes for a connection of the proxy's own (v2
    /// `LOCAL`, as in HAProxy's health checks, or v1 `UNKNOWN`): served
    /// under the proxy's address.
    Local { len: usize },
    /// Not a PROXY header.
    Invalid(String),
}

/// A v1 header starts so.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 header, CRLF included (the spec's 107 bytes).
const V1_MAX: usize = 107;

/// Parses the start of a connection, `bytes` (everything peeked so far).
pub(super) fn parse(bytes: &[u8]) -> Parsed {
    if bytes.is_empty() {
        return Parsed::Incomplete;
    }
    // A v1 header is a line: whole exactly when its CRLF has come. (The
    // parser would judge a line cut inside a port as a bad port, and one
    // with fields missing before its CRLF as incomplete.)
    if V1_PREFIX.starts_with(&bytes[..bytes.len().min(V1_PREFIX.len())]) {
        return match bytes.windows(2).position(|w| w == b"\r\n") {
            None if bytes.len() < V1_MAX => Parsed::Incomplete,
            None => Parsed::Invalid(format!("no CRLF in the first {V1_MAX} bytes of a v1 header")),
            Some(end) => match v1::Header::try_from(&bytes[..end + 2]) {
                Ok(header) => v1_parsed(&header),
                Err(e) => Parsed::Invalid(format!("not a PROXY header: {e}")),
            },
        };
    }
    let result = HeaderResult::parse(bytes);
    if result.is_incomplete() {
        return if bytes.len() >= MAX_HEADER {
            Parsed::Invalid(format!("no complete header in {MAX_HEADER} bytes"))
        } else {
            Parsed::Incomplete
        };
    }
    match result {
        HeaderResult::V1(Ok(header)) => v1_parsed(&header),
        HeaderResult::V2(Ok(header)) => {
            let len = header.len();
            match (header.command, header.addresses) {
                (v2::Command::Local, _) => Parsed::Local { len },
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => Parsed::Proxy {
                    client: SocketAddr::from((a.source_address, a.source_port)),
                    len,
                },
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => Parsed::Proxy {
                    client: SocketAddr::from((a.source_address, a.source_port)),
                    len,
                },
                // Unix sockets or an unspecified family: the spec says to
                // use the connection's own addresses.
                (v2::Command::Proxy, _) => Parsed::Local { len },
            }
        }
        HeaderResult::V1(Err(e)) => Parsed::Invalid(format!("not a PROXY header: {e}")),
        HeaderResult::V2(Err(e)) => Parsed::Invalid(format!("not a PROXY header: {e}")),
    }
}

/// What a whole v1 header says.
fn v1_parsed(header: &v1::Header<'_>) -> Parsed {
    let len = header.header.len();
    match header.addresses {
        v1::Addresses::Tcp4(a) => Parsed::Proxy {
            client: SocketAddr::from((a.source_address, a.source_port)),
            len,
        },
        v1::Addresses::Tcp6(a) => Parsed::Proxy {
            client: SocketAddr::from((a.source_address, a.source_port)),
            len,
        },
        v1::Addresses::Unknown => Parsed::Local { len },
    }
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
            // A header naming the very connection it came on is the proxy
            // speaking for itself: HAProxy's v1 health checks do this.
            Parsed::Proxy { client, len } if client == proxy => (len, None),
            Parsed::Proxy { client, len } => (len, Some(client)),
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
        match client {
            Some(client) => {
                if !self.access.is_open() && !self.access.permits(client.ip()) {
                    conn.flags |= QUIET;
                    self.refuse(Refusal::Denied, client, &format!(" (through {proxy})"));
                    return Ok(Some(Close::Refused));
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

/// How often pending headers are checked for `--proxy-timeout`: a tenth of
/// it, within 10 ms to 1 s.
pub(super) fn proxy_check_period(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: v2::Command, client: &str, server: &str) -> Vec<u8> {
        let client: SocketAddr = client.parse().expect("addr");
        let server: SocketAddr = server.parse().expect("addr");
        v2::Builder::with_addresses(v2::Version::Two | command, v2::Protocol::Stream, (client, server))
            .build()
            .expect("a v2 header")
    }

    #[test]
    fn v1_headers_whole_and_split() {
        let header = b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 50000\r\n";
        let mut stream = header.to_vec();
        stream.extend_from_slice(b"hello");
        let whole = Parsed::Proxy {
            client: "127.0.0.2:40000".parse().expect("addr"),
            len: header.len(),
        };
        assert_eq!(parse(&stream), whole);
        for cut in 1..header.len() {
            assert_eq!(parse(&header[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        assert_eq!(
            parse(b"PROXY TCP6 ::2 ::1 1 2\r\n"),
            Parsed::Proxy {
                client: "[::2]:1".parse().expect("addr"),
                len: 24
            }
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Parsed::Local { len: 15 });
    }

    #[test]
    fn v2_headers_whole_split_and_local() {
        let header = v2(v2::Command::Proxy, "127.0.0.3:41000", "127.0.0.1:50000");
        let mut stream = header.clone();
        stream.extend_from_slice(b"data after");
        assert_eq!(
            parse(&stream),
            Parsed::Proxy {
                client: "127.0.0.3:41000".parse().expect("addr"),
                len: header.len()
            }
        );
        for cut in 1..header.len() {
            assert_eq!(parse(&header[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        let v6 = v2(v2::Command::Proxy, "[2001:db8::7]:9", "[::1]:50000");
        assert!(matches!(parse(&v6), Parsed::Proxy { client, .. } if client.to_string() == "[2001:db8::7]:9"));
        let local = v2(v2::Command::Local, "127.0.0.1:1", "127.0.0.1:2");
        assert_eq!(parse(&local), Parsed::Local { len: local.len() });
    }

    #[test]
    fn anything_else_is_refused() {
        for junk in [&b"GET / HTTP/1.1\r\n"[..], b"hello\r\n", b"PROXY TCP4 1.2.3.4\r\n"] {
            assert!(matches!(parse(junk), Parsed::Invalid(_)), "{junk:?}");
        }
        // A line that never ends is refused once it is too long to be one.
        let endless = vec![b'P'; MAX_HEADER];
        assert!(matches!(parse(&endless), Parsed::Invalid(_)));
    }
}
