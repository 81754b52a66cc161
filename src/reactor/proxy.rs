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
use std::time::Duration;

use log::debug;
use mio::Registry;

use super::accept::Refusal;
use super::connection::{PEER_CLOSED, PROXY_PENDING, QUIET};
use super::{Close, Core};
use crate::output::Transcript;
pub(super) use crate::proxy_header::MAX_HEADER;
use crate::proxy_header::{Parsed, parse};

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
            Parsed::Proxy { client, len, .. } if client == proxy => (len, None),
            Parsed::Proxy { client, len, .. } => (len, Some(client)),
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
                self.refuse(Refusal::BadHeader, peer, &detail);
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
