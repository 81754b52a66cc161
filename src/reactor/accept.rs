//! Accepting clients: the accept pass and its budget, the pause and
//! backoff when descriptors or memory run out, and the cap
//! (`--max-connections`) with its one-line refusal.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::Core;
use super::access;
use super::balance::Client;
use super::connection::{COUNTED, Connection, PROXY_PENDING, QUIET, READ_INTEREST, WANTS_WRITE, write_greeting};
use crate::net_error::{self, AcceptAction};
use crate::output::Transcript;

/// Connections accepted per wakeup before clients already connected get a
/// turn; the rest are accepted on the next pass without waiting for an event.
const ACCEPT_BUDGET: usize = 256;

/// First pause after a descriptor or memory shortage, doubled on every
/// failed retry up to [`MAX_ACCEPT_BACKOFF`]. A closing connection ends the
/// pause early.
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause between accept retries while short of descriptors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_millis(500);

/// What a client over `--max-connections` is told before it is closed.
pub const SERVER_FULL: &[u8] = b"ERR server full, try again later\n";

/// What a client whose address holds `--max-per-source` connections is told
/// before it is closed.
pub const PER_SOURCE_FULL: &[u8] = b"ERR too many connections from your address, try again later\n";

/// Accept-side state: pauses, backoff and burst logging.
#[derive(Debug)]
pub(super) struct AcceptState {
    /// More clients may be waiting: the last pass stopped at its budget, or a
    /// connection closed during a pause.
    pub(super) ready: bool,
    /// Accepting is paused (descriptor shortage) until then.
    pub(super) paused_until: Option<Instant>,
    /// The next pause's length.
    pub(super) backoff: Duration,
    /// When the current shortage began, for one log line when it ends.
    pub(super) shortage_since: Option<Instant>,
    /// Failed accepts in the current shortage.
    pub(super) shortage_errors: u64,
}

impl AcceptState {
    pub(super) fn new() -> AcceptState {
        AcceptState {
            ready: false,
            paused_until: None,
            backoff: MIN_ACCEPT_BACKOFF,
            shortage_since: None,
            shortage_errors: 0,
        }
    }
}

impl Core {
    /// Accepts waiting clients, up to [`ACCEPT_BUDGET`].
    pub(super) fn accept_ready<W: Write>(
        &mut self,
        registry: &Registry,
        out: &mut Transcript<'_, W>,
    ) -> io::Result<()> {
        self.accept.ready = false;
        if self.accept.paused_until.is_some() {
            // Paused for a shortage: the timer or a closing connection resumes.
            return Ok(());
        }
        for _ in 0..ACCEPT_BUDGET {
            let Some(listener) = self.listener.as_ref() else {
                return Ok(());
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    // The cap counts every reactor's connections: a slot is
                    // taken before the client is served.
                    if self.shared.try_open() {
                        // Served here, or handed to a less busy reactor.
                        if let Some((stream, peer)) = self.shared.place(self.id, (stream, peer)) {
                            self.add(stream, peer, registry, out);
                        }
                    } else {
                        self.reject(stream, peer);
                    }
                }
                // The backlog is empty.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.end_shortage();
                    return Ok(());
                }
                // The socket no longer listens: a process sharing it (the
                // supervisor of `--workers`, at its first signal) shut it
                // down. Those connected are still served.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // A worker's supervisor shuts the listener down at its
                    // first signal, which comes to the worker just after.
                    if self.shared.stop.load(Ordering::SeqCst) || self.config.worker.is_some() {
                        debug!("accept: {e}: the listener was shut down");
                    } else {
                        warn!("accept: {e}: the listening socket was shut down; serving those connected");
                    }
                    if let Some(mut listener) = self.listener.take() {
                        let _ = registry.deregister(&mut listener);
                    }
                    return Ok(());
                }
                Err(e) => match net_error::accept_action(&e) {
                    // That one client's problem: take the next.
                    AcceptAction::Retry => {
                        self.stats.accept_errors += 1;
                        debug!("accept: {e}; next");
                    }
                    AcceptAction::Backoff => {
                        self.stats.accept_errors += 1;
                        self.stats.accept_pauses += 1;
                        self.start_pause(&e);
                        return Ok(());
                    }
                    AcceptAction::Fatal => {
                        error!("accept: {e}; the listener is unusable");
                        return Err(e);
                    }
                },
            }
        }
        // Budget spent: come back without waiting for an event.
        self.accept.ready = true;
        Ok(())
    }

    /// Out of descriptors or memory: pause accepting; log once per shortage.
    fn start_pause(&mut self, e: &io::Error) {
        let accept = &mut self.accept;
        if accept.shortage_since.is_none() {
            // Descriptors are the process's: one line when the first reactor
            // runs short, not one per reactor.
            if self.shared.short_reactors.fetch_add(1, Ordering::Relaxed) == 0 {
                warn!(
                    "accept: {e}; pausing accepts while {} connections are open (clients wait in the backlog)",
                    self.shared.open.load(Ordering::Relaxed)
                );
            }
            accept.shortage_since = Some(self.now);
            accept.backoff = MIN_ACCEPT_BACKOFF;
        }
        accept.shortage_errors += 1;
        accept.paused_until = Some(self.now + accept.backoff);
        accept.backoff = (accept.backoff * 2).min(MAX_ACCEPT_BACKOFF);
    }

    /// The backlog is empty again: say how long the shortage lasted. (Not
    /// on the first accept that works: while the backlog is full, every
    /// close lets one more in and the next accept fails again, and that is
    /// still the same shortage.)
    fn end_shortage(&mut self) {
        if let Some(since) = self.accept.shortage_since.take() {
            if self.shared.short_reactors.fetch_sub(1, Ordering::Relaxed) == 1 {
                info!(
                    "accept: resumed after {:.0?} ({} retries)",
                    self.now.duration_since(since),
                    self.accept.shortage_errors
                );
            }
            self.accept.shortage_errors = 0;
            self.accept.backoff = MIN_ACCEPT_BACKOFF;
        }
    }

    /// Turns a client away at the cap: one line, then close. Logs once per
    /// burst.
    fn reject(&mut self, stream: TcpStream, peer: SocketAddr) {
        // Best effort: the line fits any fresh socket's buffer.
        let _ = (&stream).write(SERVER_FULL);
        self.stats.rejected += 1;
        // One line per burst, whichever reactors turn the burst away.
        if self.shared.full_rejects.fetch_add(1, Ordering::Relaxed) == 0 {
            warn!(
                "server full ({} connections): turning new clients away, starting with {peer}",
                self.max_connections
            );
        }
    }

    /// Serves the clients a worker's supervisor handed over (accepted from
    /// the listener of a worker that could not serve them): each is placed
    /// as if this reactor had accepted it.
    pub(super) fn receive_handed<W: Write>(&mut self, registry: &Registry, out: &mut Transcript<'_, W>) {
        let Some(fd) = self.config.worker.and_then(|w| w.handoff) else {
            return;
        };
        // SAFETY: the handoff descriptor stays open for the life of the
        // worker process (its `WorkerSide` owns it).
        let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let mut messages = Vec::new();
        match crate::workers::handoff::receive(&socket, &mut messages) {
            Ok(true) => {}
            Ok(false) => {
                // The supervisor is gone: nothing more will come.
                let _ = registry.deregister(&mut mio::unix::SourceFd(&fd));
            }
            Err(e) => warn!("receiving handed-over clients: {e}"),
        }
        for message in messages {
            for fd in message.fds {
                let stream = std::net::TcpStream::from(fd);
                // Gone already: nothing to serve.
                let Ok(peer) = stream.peer_addr() else { continue };
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let stream = TcpStream::from_std(stream);
                if !self.shared.try_open() {
                    self.reject(stream, peer);
                    continue;
                }
                match message.what {
                    crate::workers::handoff::Handed::Queued => {
                        if let Some((stream, peer)) = self.shared.place(self.id, (stream, peer)) {
                            self.add(stream, peer, registry, out);
                        }
                    }
                    crate::workers::handoff::Handed::Client { client, .. } => {
                        self.add_proxied(stream, peer, client, registry, out);
                    }
                }
            }
        }
    }

    /// Serves a client whose PROXY header another worker read (it named
    /// `client`, and this worker counts that address): the header is gone
    /// from the stream, what follows is the client's. Its cap slot is taken.
    fn add_proxied<W: Write>(
        &mut self,
        mut stream: TcpStream,
        proxy: SocketAddr,
        client: SocketAddr,
        registry: &Registry,
        out: &mut Transcript<'_, W>,
    ) {
        self.refresh_access();
        let refusal = if !self.access.is_open() && !self.access.permits(client.ip()) {
            Some(Refusal::Denied)
        } else if self.shared.per_source.as_ref().is_some_and(|p| !p.take(client.ip())) {
            Some(Refusal::PerSource)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.shared.release(self.id);
            if let Refusal::PerSource = refusal {
                let _ = (&stream).write(PER_SOURCE_FULL);
            }
            self.refuse(refusal, client, &format!(" (through {proxy})"));
            return;
        }
        let entry = self.connections.vacant_entry();
        let key = entry.key();
        if let Err(e) = registry.register(&mut stream, Token(key), READ_INTEREST) {
            warn!("[{key}] {client}: cannot watch the connection: {e}; closed");
            self.shared.release(self.id);
            if let Some(per_source) = &self.shared.per_source {
                per_source.release(client.ip());
            }
            return;
        }
        let _ = socket2::SockRef::from(&stream).set_out_of_band_inline(true);
        self.last_churn = Some(self.now);
        let mut conn = Connection::new(stream, client, self.now_ms);
        if self.shared.per_source.is_some() {
            conn.flags |= COUNTED;
        }
        entry.insert(conn);
        self.key_end = self.key_end.max(key + 1);
        debug!("[{key}] {proxy}: a client of this worker's, {client}, handed over");
        self.start(key, registry, out);
        // What came after the header may be here already.
        if let Ok(Some(reason)) = self.read_ready(key, self.read_budget, out) {
            self.close(key, reason, out);
        }
    }

    /// Serves clients another reactor accepted and handed to this one.
    pub(super) fn adopt<W: Write>(&mut self, clients: Vec<Client>, registry: &Registry, out: &mut Transcript<'_, W>) {
        for (stream, peer) in clients {
            self.add(stream, peer, registry, out);
        }
    }

    /// Registers a new client. Unless a PROXY header must come first, it
    /// is started at once: `Connection from`, then the greeting.
    fn add<W: Write>(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        registry: &Registry,
        out: &mut Transcript<'_, W>,
    ) {
        if self.shared.full_rejects.load(Ordering::Relaxed) > 0 {
            let turned_away = self.shared.full_rejects.swap(0, Ordering::Relaxed);
            if turned_away > 0 {
                info!("room again: {turned_away} clients were turned away while full");
            }
        }
        // Behind a proxy, the peer must be a trusted proxy; else the peer
        // is the client, and the access rules and the per-source limit
        // apply to it now.
        self.refresh_access();
        let refusal = if self.config.proxy_protocol {
            (!access::contains(&self.config.proxy_from, peer.ip())).then_some(Refusal::UntrustedProxy)
        } else if !self.access.is_open() && !self.access.permits(peer.ip()) {
            Some(Refusal::Denied)
        } else if self.shared.per_source.as_ref().is_some_and(|p| !p.take(peer.ip())) {
            Some(Refusal::PerSource)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.shared.release(self.id);
            if let Refusal::PerSource = refusal {
                let _ = (&stream).write(PER_SOURCE_FULL);
            }
            self.refuse(refusal, peer, "");
            return;
        }
        let counted = !self.config.proxy_protocol && self.shared.per_source.is_some();
        let entry = self.connections.vacant_entry();
        let key = entry.key();
        if let Err(e) = registry.register(&mut stream, Token(key), READ_INTEREST) {
            // epoll itself is out of room (max_user_watches): drop this one.
            warn!("[{key}] {peer}: cannot watch the connection: {e}; closed");
            self.shared.release(self.id);
            if counted && let Some(per_source) = &self.shared.per_source {
                per_source.release(peer.ip());
            }
            return;
        }
        // Urgent (out-of-band) data stays in the stream, where it was sent,
        // instead of being set aside where nobody reads it: every byte a
        // client sends is printed.
        if let Err(e) = socket2::SockRef::from(&stream).set_out_of_band_inline(true) {
            debug!("[{key}] {peer}: SO_OOBINLINE: {e}");
        }
        if let Some(idle) = self.config.keepalive {
            let keepalive = socket2::TcpKeepalive::new().with_time(idle).with_interval(idle);
            if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
                debug!("[{key}] {peer}: keepalive: {e}");
            }
        }
        self.last_churn = Some(self.now);
        let mut conn = Connection::new(stream, peer, self.now_ms);
        if counted {
            conn.flags |= COUNTED;
        }
        if self.config.proxy_protocol {
            // Nothing is printed or sent until the header names the client.
            conn.flags |= PROXY_PENDING;
            self.proxy_pending.insert(key);
            entry.insert(conn);
            self.key_end = self.key_end.max(key + 1);
            debug!("[{key}] {peer}: connected; waiting for the PROXY header");
            return;
        }
        entry.insert(conn);
        self.key_end = self.key_end.max(key + 1);
        self.start(key, registry, out);
    }

    /// A client is served: `Connection from` (unless it is a proxy's own
    /// connection), then the greeting, finished on WRITABLE if the socket
    /// does not take it at once.
    pub(super) fn start<W: Write>(&mut self, key: usize, registry: &Registry, out: &mut Transcript<'_, W>) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        let peer = conn.peer();
        if !conn.has(QUIET) {
            self.stats.accepted += 1;
            out.connected(peer);
        }
        let mut sent = 0;
        match write_greeting(&mut conn.stream, &self.config.greeting, &mut sent) {
            Ok(true) => {}
            Ok(false) => {
                // The rest goes out when the socket becomes writable.
                debug!(
                    "[{key}] {peer}: greeting: {} bytes wait for WRITABLE",
                    self.config.greeting.len() - sent as usize
                );
                match registry.reregister(&mut conn.stream, Token(key), READ_INTEREST | Interest::WRITABLE) {
                    Ok(()) => {
                        conn.flags |= WANTS_WRITE;
                        self.greetings_in_progress.insert(key, sent);
                    }
                    Err(e) => debug!("[{key}] {peer}: cannot wait to greet: {e}"),
                }
            }
            // The client is gone or not listening; what it sent is still read
            // and printed, and the read side closes the connection.
            Err(e) => debug!("[{key}] {peer}: greeting: {e}"),
        }
        debug!("[{key}] {peer}: connected");
    }

    /// Counts and logs (once per burst) a client closed without a greeting.
    pub(super) fn refuse(&mut self, refusal: Refusal, peer: SocketAddr, detail: &str) {
        let (burst, what) = match refusal {
            Refusal::Denied => {
                self.stats.denied += 1;
                (&self.shared.denied_burst, "denied by --allow/--deny")
            }
            Refusal::UntrustedProxy => {
                self.stats.proxy_untrusted += 1;
                (&self.shared.untrusted_burst, "not a trusted proxy (--proxy-from)")
            }
            Refusal::BadHeader => {
                self.stats.proxy_invalid += 1;
                (&self.shared.proxy_burst, "no valid PROXY header")
            }
            Refusal::LateHeader => {
                self.stats.proxy_timeout += 1;
                (&self.shared.proxy_burst, "no PROXY header in time")
            }
            Refusal::PerSource => {
                self.stats.refused_per_source += 1;
                (
                    &self.shared.per_source_burst,
                    "holds --max-per-source connections already",
                )
            }
        };
        if let Some(before) = self.shared.note(burst, self.now) {
            let earlier = if before > 0 {
                format!(" (the burst before: {before})")
            } else {
                String::new()
            };
            let how = match refusal {
                Refusal::PerSource => "closed",
                _ => "closed without a greeting",
            };
            warn!("{peer}: {what}{detail}; {how}{earlier}; more like it are counted, not logged");
        }
    }
}

/// Why a client is closed without a greeting.
#[derive(Debug, Clone, Copy)]
pub(super) enum Refusal {
    /// `--allow`/`--deny` say no.
    Denied,
    /// Behind `--proxy-protocol`, the peer is not in `--proxy-from`.
    UntrustedProxy,
    /// The PROXY header is missing or malformed.
    BadHeader,
    /// The PROXY header did not come whole within `--proxy-timeout`.
    LateHeader,
    /// The client's address holds `--max-per-source` connections already
    /// (told so in one line).
    PerSource,
}
