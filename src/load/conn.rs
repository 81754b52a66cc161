//! Opening connections (source addresses, `IP_BIND_ADDRESS_NO_PORT`) and
//! one connection's life: connecting, the greeting, failures by kind.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Token};

use super::{LoadError, Mode, POLL_TICK, Run};

/// No greeting byte on any connection for this long while some wait for
/// one: the server sends none, or fewer bytes than `--greeting-len`. A
/// healthy server greets within milliseconds, even while accepting a
/// backlog of thousands.
const GREETING_STALL: Duration = Duration::from_secs(3);

/// Source addresses for a target: for an IPv4 loopback target, `count`
/// addresses from 127.0.0.1 up; otherwise the unspecified address (the
/// kernel picks).
pub fn default_sources(target: SocketAddr, count: usize) -> Vec<IpAddr> {
    match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => (1..=count.clamp(1, 254) as u8)
            .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
            .collect(),
        IpAddr::V4(_) => vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
        IpAddr::V6(_) => vec![IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)],
    }
}

/// `count` consecutive IPv4 addresses from `first`, skipping those whose
/// last byte is 0 or 255 (network and broadcast addresses elsewhere; best
/// left alone on loopback too).
pub fn sources_from(first: Ipv4Addr, count: usize) -> Vec<IpAddr> {
    let mut next = u32::from(first);
    let mut sources = Vec::with_capacity(count);
    while sources.len() < count {
        let last = next & 0xFF;
        if last != 0 && last != 255 {
            sources.push(IpAddr::V4(Ipv4Addr::from(next)));
        }
        match next.checked_add(1) {
            Some(n) => next = n,
            None => break,
        }
    }
    sources
}

/// Where one connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// connect() in progress.
    Connecting,
    /// Connected, reading the greeting.
    Greeting,
    /// Greeted: sending (flood), holding (hold) or chatting (chat).
    Ready,
    /// All sent, write side closed, waiting for the server to close (which
    /// it does once it has read and printed everything).
    Draining,
}

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) phase: Phase,
    /// A short-lived churn connection (not one of the held ones).
    pub(super) churn: bool,
    /// Greeting bytes received.
    pub(super) greeted: usize,
    /// Payload bytes written.
    pub(super) sent: u64,
    /// Messages written.
    pub(super) messages: u64,
}

/// Names an error for the report.
fn error_kind(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused".into(),
        io::ErrorKind::ConnectionReset => "reset".into(),
        io::ErrorKind::ConnectionAborted => "aborted".into(),
        io::ErrorKind::TimedOut => "timeout".into(),
        io::ErrorKind::AddrNotAvailable => "no local port".into(),
        io::ErrorKind::BrokenPipe => "broken pipe".into(),
        _ => match e.raw_os_error() {
            Some(errno) => format!("errno {errno}"),
            None => format!("{:?}", e.kind()),
        },
    }
}

/// Sets `IP_BIND_ADDRESS_NO_PORT` (Linux 4.2+): a socket bound to a source
/// address gets its port when it connects.
pub fn bind_address_no_port(socket: &socket2::Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local,
    // on a descriptor that `socket` owns for the whole call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a non-blocking connection from `source`.
fn start_connect(source: IpAddr, target: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    if !source.is_unspecified() {
        // Choose the port at connect time, from the whole 4-tuple, as an
        // unbound socket would: a port bound with bind(0) is taken for every
        // destination, and the search for a free one slows to a crawl once
        // tens of thousands of ports sit in TIME_WAIT.
        bind_address_no_port(&socket)?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
    }
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

impl Run {
    /// Phase 1: opens every connection (a bounded number at a time) and
    /// reads each greeting. Stops early on a signal, at the deadline, or
    /// when greetings stall; what is left unfinished is counted as failed.
    pub(super) fn connect_all(&mut self, events: &mut Events) -> Result<(), LoadError> {
        while self.opened < self.cfg.mode.conns() || self.in_flight > 0 {
            self.open_more()?;
            if self.stopping() {
                break;
            }
            self.check_greeting_stall();
            if self.stopping() {
                break;
            }
            self.poll_events(events, POLL_TICK)?;
            self.progress.set_position(self.report.established as u64);
        }
        if self.stopping() {
            self.abandon_unfinished();
        }
        Ok(())
    }

    /// Stops the run when connections have waited [`GREETING_STALL`] for a
    /// greeting and no greeting byte came to any of them, and says what to
    /// do about it.
    fn check_greeting_stall(&mut self) {
        if self.cfg.greeting_len == 0 || self.awaiting == 0 || self.greeting_clock.elapsed() < GREETING_STALL {
            return;
        }
        let most = self
            .conns
            .iter()
            .filter(|(_, c)| c.phase == Phase::Greeting)
            .map(|(_, c)| c.greeted)
            .max()
            .unwrap_or(0);
        let stall = GREETING_STALL.as_secs();
        let why = if most == 0 {
            format!(
                "{} connections were established but no greeting came in {stall} s: \
                 for a server run with --no-greeting, pass --greeting-len 0",
                self.awaiting
            )
        } else {
            format!(
                "greetings stopped at {most} bytes, fewer than --greeting-len {}: pass --greeting-len {most}",
                self.cfg.greeting_len
            )
        };
        self.stop(why);
    }

    /// After a stop: connections still connecting or waiting for their
    /// greeting, and those never started, are failures.
    pub(super) fn abandon_unfinished(&mut self) {
        let kind = match self.report.stopped.as_deref() {
            Some(s) if s.contains("greeting") => "no greeting",
            _ => self.stop_kind(),
        };
        let stuck: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Connecting | Phase::Greeting))
            .map(|(k, _)| k)
            .collect();
        for key in stuck {
            self.fail_kind(kind);
            self.drop_conn(key);
        }
        let never = self.cfg.mode.conns().saturating_sub(self.opened);
        if never > 0 {
            self.report.fail("not started", never as u64);
            self.opened = self.cfg.mode.conns();
        }
    }

    /// Starts connections up to the in-flight bound.
    pub(super) fn open_more(&mut self) -> Result<(), LoadError> {
        let total = self.cfg.mode.conns();
        while self.opened < total && self.in_flight < self.cfg.in_flight.max(1) {
            self.opened += 1;
            self.open_one(self.opened, false)?;
        }
        Ok(())
    }

    /// Starts connection number `n` (its source address follows from `n`);
    /// `churn` marks a short-lived one. A failure to connect is counted, not
    /// returned; running out of descriptors ends the run.
    pub(super) fn open_one(&mut self, n: usize, churn: bool) -> Result<(), LoadError> {
        let source = self.cfg.sources[n % self.cfg.sources.len().max(1)];
        let mut stream = match start_connect(source, self.cfg.target) {
            Ok(stream) => stream,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                return Err(LoadError::OutOfFiles {
                    open: self.conns.len(),
                    limit: crate::limits::nofile_limit().map(|l| l.0).unwrap_or(0),
                });
            }
            Err(e) => {
                self.fail(&e);
                return Ok(());
            }
        };
        let entry = self.conns.vacant_entry();
        self.poll
            .registry()
            .register(&mut stream, Token(entry.key()), Interest::READABLE | Interest::WRITABLE)?;
        entry.insert(Conn {
            stream,
            phase: Phase::Connecting,
            churn,
            greeted: 0,
            sent: 0,
            messages: 0,
        });
        self.in_flight += 1;
        Ok(())
    }

    pub(super) fn fail(&mut self, e: &io::Error) {
        self.report.fail(&error_kind(e), 1);
        self.finished += 1;
    }

    pub(super) fn fail_kind(&mut self, kind: &str) {
        self.report.fail(kind, 1);
        self.finished += 1;
    }

    /// Drops connection `key` after a failure.
    pub(super) fn drop_conn(&mut self, key: usize) {
        if let Some(conn) = self.conns.try_remove(key) {
            match conn.phase {
                Phase::Connecting => self.in_flight -= 1,
                Phase::Greeting => {
                    self.in_flight -= 1;
                    self.awaiting -= 1;
                }
                Phase::Ready | Phase::Draining => {}
            }
        }
    }

    /// Counts `e` against connection `key` and drops it, from the chat's
    /// round robin too.
    pub(super) fn lose(&mut self, key: usize, e: &io::Error) {
        self.fail(e);
        self.drop_conn(key);
        self.ready.retain(|&k| k != key);
    }

    /// As [`Run::lose`], for a failure without an `io::Error`.
    pub(super) fn lose_kind(&mut self, key: usize, kind: &str) {
        self.fail_kind(kind);
        self.drop_conn(key);
        self.ready.retain(|&k| k != key);
    }

    pub(super) fn dispatch(&mut self, events: &Events) {
        for event in events.iter() {
            let key = event.token().0;
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if conn.phase == Phase::Connecting {
                if let Ok(Some(e)) | Err(e) = conn.stream.take_error() {
                    self.fail(&e);
                    self.drop_conn(key);
                    continue;
                }
                match conn.stream.peer_addr() {
                    Ok(_) => conn.phase = Phase::Greeting,
                    // Not connected yet: a spurious event.
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => continue,
                    Err(e) => {
                        self.fail(&e);
                        self.drop_conn(key);
                        continue;
                    }
                }
                if self.awaiting == 0 {
                    self.greeting_clock = Instant::now();
                }
                self.awaiting += 1;
                if self.cfg.greeting_len == 0 {
                    self.greeted(key);
                    continue;
                }
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                self.on_readable(key);
            }
            if event.is_writable() {
                self.on_writable(key);
            }
        }
    }

    fn on_readable(&mut self, key: usize) {
        let mut buf = [0u8; 4096];
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    match conn.phase {
                        Phase::Draining => self.acknowledged(key),
                        Phase::Greeting => self.lose_kind(key, "closed before greeting"),
                        _ => self.lose_kind(key, "closed by server"),
                    }
                    return;
                }
                Ok(n) => {
                    if conn.phase == Phase::Greeting {
                        if buf[..n].starts_with(b"ERR") {
                            self.lose_kind(key, "server full");
                            return;
                        }
                        conn.greeted += n;
                        self.greeting_clock = Instant::now();
                        if conn.greeted >= self.cfg.greeting_len {
                            self.greeted(key);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.lose(key, &e);
                    return;
                }
            }
        }
    }

    /// The server closed connection `key` after our half-close: it read
    /// (and printed) everything we sent.
    fn acknowledged(&mut self, key: usize) {
        let conn = self.conns.remove(key);
        let now = Instant::now();
        if conn.churn {
            self.report.churned += 1;
            self.last_churn = Some(now);
        } else {
            self.finished += 1;
            self.closed_clean += 1;
            self.report.bytes_acked += conn.sent;
            self.report.messages_acked += conn.messages;
            self.last_close = Some(now);
        }
    }

    /// Connection `key` is connected and greeted.
    fn greeted(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.phase = Phase::Ready;
        self.in_flight -= 1;
        self.awaiting -= 1;
        self.report.established += 1;
        if self.cfg.greeting_len > 0 {
            self.report.greetings += 1;
        }
        if conn.churn {
            // One message, then close our side and wait for the server's close.
            let message = format!("churn {key} says bye");
            match conn.stream.write(message.as_bytes()) {
                Ok(n) => {
                    conn.sent += n as u64;
                    conn.messages += 1;
                    self.report.bytes_sent += n as u64;
                    self.report.messages += 1;
                    let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                    conn.phase = Phase::Draining;
                }
                Err(e) => self.lose(key, &e),
            }
            return;
        }
        self.last_greeting = Instant::now();
        self.ready.push(key);
        match self.cfg.mode {
            Mode::Hold { .. } => {
                let message = format!("client {key} says hello");
                match conn.stream.write(message.as_bytes()) {
                    Ok(n) => {
                        conn.sent += n as u64;
                        conn.messages += 1;
                        self.report.bytes_sent += n as u64;
                        self.report.messages += 1;
                    }
                    Err(e) => self.lose(key, &e),
                }
            }
            Mode::Flood { .. } => self.on_writable(key),
            Mode::Chat { .. } | Mode::Churn { .. } => {}
        }
    }

    /// Half-closes every held connection and waits for the server to close
    /// each; those it has not closed when it stops closing any for `wait`
    /// fail.
    pub(super) fn close_and_wait(&mut self, wait: Duration, events: &mut Events) -> Result<(), LoadError> {
        for (_, conn) in self.conns.iter_mut() {
            if !conn.churn && conn.phase == Phase::Ready {
                let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                conn.phase = Phase::Draining;
            }
        }
        self.ready.clear();
        // The server may take a while to close a million connections, but
        // it closes some all the time: wait as long as it does (within the
        // run's --timeout), and give up after `wait` without any.
        let draining = |run: &Run| {
            run.conns
                .iter()
                .filter(|(_, c)| !c.churn && c.phase == Phase::Draining)
                .count()
        };
        let mut left = draining(self);
        let mut until = Instant::now() + wait;
        while left > 0 && !self.stopping() && Instant::now() < until {
            self.poll_events(events, POLL_TICK.min(until.saturating_duration_since(Instant::now())))?;
            let now_left = draining(self);
            if now_left < left {
                until = Instant::now() + wait;
            }
            left = now_left;
        }
        let kind = if self.stopping() {
            self.stop_kind()
        } else {
            "not closed by server"
        };
        self.report.fail(kind, left as u64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_over_loopback() {
        let s = default_sources("127.0.0.1:5".parse().expect("addr"), 3);
        assert_eq!(s.len(), 3);
        assert_eq!(s[2], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        assert_eq!(default_sources("[::1]:5".parse().expect("addr"), 3).len(), 1);
    }
}
