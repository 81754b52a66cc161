//! The reactor: one thread, one `mio::Poll`, every connection's state in one
//! `Slab` keyed by its token.
//!
//! The rules of the loop (mio's "Draining readiness" and "Spurious events"):
//! events are edge-triggered, so a readable socket is read until it is
//! drained, which on Linux is a short read unless the peer has closed (the
//! kernel raises a new edge for every arrival, as nginx relies on), else
//! `WouldBlock`. `Interrupted` is retried at once. A per-wakeup read budget
//! keeps one fast client from starving the rest; a connection cut off by it
//! goes into a run queue and is revisited without waiting for an event.
//! Events for tokens that are gone (slab keys are reused) are ignored.
//!
//! Failure stays local: an error on a connection closes that connection; a
//! shortage of descriptors pauses accepting, with backoff, and never ends the
//! server or makes it spin. Only a failing poll, a broken listener or an
//! output that can no longer be written ends [`Server::run`].

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;

use crate::config::Config;
use crate::connection::{Connection, PEER_CLOSED, QUEUED, WANTS_WRITE, write_greeting};
use crate::frame::Framer;
use crate::net_error::{self, AcceptAction};
use crate::transcript::Transcript;

/// The listener's token: outside the slab's key range, like all special tokens.
const LISTENER: Token = Token(usize::MAX);
/// The [`Stopper`]'s waker.
const STOP: Token = Token(usize::MAX - 1);
/// The SIGINT/SIGTERM pipe.
const SIGNALS: Token = Token(usize::MAX - 2);

/// Readiness events taken per `epoll_wait`.
const EVENTS_CAPACITY: usize = 1024;

/// Bytes read in one wakeup from which the loop does not pause to coalesce
/// events: that is bulk data, not chat, and pausing would only let a socket
/// buffer fill and the sender stall. A single loopback segment carries up to
/// 64 KiB, so the bound sits well below it; chat at 100,000 messages of
/// 100 bytes a second brings 5 kB per 500 us pause.
const COALESCE_MAX_BYTES: usize = 16 * 1024;

/// How many coalescing windows must pass after a connection was accepted or
/// closed before the loop pauses again: while connections come and go,
/// clients are waiting for greetings and closes.
const CHURN_QUIET_WINDOWS: u32 = 10;

/// Connections accepted per wakeup before clients already connected get a
/// turn; the rest are accepted on the next pass without waiting for an event.
const ACCEPT_BUDGET: usize = 256;

/// First pause after a descriptor or memory shortage, doubled on every
/// failed retry up to [`MAX_ACCEPT_BACKOFF`]. A closing connection ends the
/// pause early.
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause between accept retries while short of descriptors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_millis(500);

/// Bytes of a read block framed at a time before the lines are written: the
/// input and its lines (1.25 times as much) then stay inside a 1 MiB L2
/// cache.
const FRAME_WINDOW: usize = 256 * 1024;

/// What a client over `--max-connections` is told before it is closed.
pub const SERVER_FULL: &[u8] = b"ERR server full, try again later\n";

/// Bytes read from a connection at shutdown when the kernel cannot say how
/// many are queued (it always can on Linux).
const SHUTDOWN_READ_CAP: usize = 4 * 1024 * 1024;

/// The idle sweep visits every connection once per period, in this many steps.
const SWEEP_STEPS: u32 = 10;

/// Slab entries reserved up front (virtual memory only until used).
const SLAB_PREALLOC_LIMIT: usize = 1 << 20;

/// Greetings longer than this are refused (the sent count is a `u32`).
pub const MAX_GREETING: usize = 1 << 30;

/// Counts of what the server did, returned by [`Server::run`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections closed (all of them, at the end of `run`).
    pub closed: u64,
    /// Connections turned away at the cap.
    pub rejected: u64,
    /// Connections closed for idling.
    pub idle_closed: u64,
    /// Frames printed.
    pub frames: u64,
    /// Bytes received and printed.
    pub bytes: u64,
    /// Connections still open when the server was stopped.
    pub open_at_stop: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connections ({} open at stop, {} rejected, {} idle-closed), {} frames, {} bytes",
            self.accepted, self.open_at_stop, self.rejected, self.idle_closed, self.frames, self.bytes
        )
    }
}

/// Stops a running server from another thread.
#[derive(Debug, Clone)]
pub struct Stopper(Arc<Waker>);

impl Stopper {
    /// Asks the server to stop: it stops accepting, prints what it has
    /// received, and `run` returns.
    pub fn stop(&self) -> io::Result<()> {
        self.0.wake()
    }
}

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

/// The server: the poll, its events, and the state the loop works on.
pub struct Server {
    /// The one poll instance of the one thread.
    poll: Poll,
    /// Readiness events, reused for every `poll` call.
    events: Events,
    /// Everything else, apart from `poll` so the loop can borrow both.
    core: Core,
    /// The waker behind [`Stopper`]s, created on first request.
    waker: Option<Arc<Waker>>,
}

/// Accept-side state: pauses, backoff and burst logging.
#[derive(Debug)]
struct AcceptState {
    /// More clients may be waiting: the last pass stopped at its budget, or a
    /// connection closed during a pause.
    ready: bool,
    /// Accepting is paused (descriptor shortage) until then.
    paused_until: Option<Instant>,
    /// The next pause's length.
    backoff: Duration,
    /// When the current shortage began, for one log line when it ends.
    shortage_since: Option<Instant>,
    /// Failed accepts in the current shortage.
    shortage_errors: u64,
    /// Clients turned away at the cap since the server last had room.
    full_rejects: u64,
}

/// The idle sweep (Redis-style): a few slab keys per step, every connection
/// once per period, so the cost per event does not grow with connections.
#[derive(Debug)]
struct Sweep {
    /// Idle time after which a client is closed, in milliseconds.
    timeout_ms: u32,
    /// Time between steps.
    step: Duration,
    /// When the next step is due.
    next: Instant,
    /// The next slab key to look at.
    cursor: usize,
}

/// Periodic statistics (`--stats`).
#[derive(Debug)]
struct StatsTimer {
    interval: Duration,
    next: Instant,
    /// Counters at the previous line, for rates.
    last: Summary,
    last_at: Instant,
}

struct Core {
    /// The listening socket; `None` once the server is stopping.
    listener: Option<TcpListener>,
    /// The listener's address (with the real port when bound to port 0).
    local_addr: SocketAddr,
    /// Every connected client, keyed by its token.
    connections: Slab<Connection>,
    /// The cap on `connections.len()`.
    max_connections: usize,
    /// Greeting, flags and tunables.
    config: Config,
    /// Cuts blocks into frame lines.
    framer: Framer,
    /// The one read buffer, shared by all connections (a multiple of
    /// `max_read`, so blocks cut into full frames).
    read_buf: Vec<u8>,
    /// Bytes of a read block framed before the lines are written out (a
    /// multiple of `max_read`).
    frame_window: usize,
    /// Bytes of the greeting sent so far, for the rare connections whose
    /// greeting did not fit their socket at once (kept out of the slab so
    /// that every connection does not pay for it).
    greetings_in_progress: HashMap<usize, u32>,
    /// Connections whose read budget ran out with data left.
    run_queue: VecDeque<usize>,
    /// SIGINT/SIGTERM, when the binary asked for them.
    signals: Option<signal_hook_mio::v1_0::Signals>,
    /// A stop was requested.
    stopping: bool,
    /// The loop has just paused to let events gather: poll without waiting.
    gathered: bool,
    /// Bytes read since the last wakeup: bulk transfers are not paused.
    wake_bytes: usize,
    /// When the last wakeup that brought only small messages began.
    last_small_wake: Option<Instant>,
    /// When a connection was last accepted or closed (clients then wait on
    /// the server, so the loop does not pause).
    last_churn: Option<Instant>,
    accept: AcceptState,
    sweep: Option<Sweep>,
    stats_timer: Option<StatsTimer>,
    /// Counters.
    stats: Summary,
    /// The server's time zero, for the coarse millisecond clock.
    epoch: Instant,
    /// The time at the last wakeup (one clock read per wakeup).
    now: Instant,
    /// `now` in coarse milliseconds since `epoch` (wrapping).
    now_ms: u32,
}

/// Why a connection closes.
#[derive(Debug)]
enum Close {
    /// The client closed (read returned 0).
    Eof,
    /// Reset, or any other error on the socket.
    Error(io::Error),
    /// Nothing received for `--idle-timeout`.
    Idle,
    /// The server is stopping.
    Shutdown,
}

impl Server {
    /// Binds `addr` and prepares a server with `config`.
    pub fn bind(addr: SocketAddr, config: Config) -> io::Result<Server> {
        let listener = listen(addr, config.backlog)?;
        Server::from_listener(listener, config)
    }

    /// A server on an already bound, listening socket (tests and benches
    /// bind port 0 and pass it in). The socket is made non-blocking.
    pub fn from_listener(listener: std::net::TcpListener, config: Config) -> io::Result<Server> {
        if config.greeting.len() > MAX_GREETING {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "greeting too long"));
        }
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let max_connections = config
            .max_connections
            .unwrap_or_else(crate::limits::default_max_connections)
            .max(1);
        let framer = Framer::new(config.max_read, config.raw);
        let m = framer.max_read();
        let read_len = (config.read_buffer.max(m) / m) * m;
        let now = Instant::now();
        let sweep = config.idle_timeout.map(|timeout| {
            let period = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
            Sweep {
                timeout_ms: u32::try_from(timeout.as_millis())
                    .unwrap_or(u32::MAX / 2)
                    .min(u32::MAX / 2),
                step: period / SWEEP_STEPS,
                next: now + period / SWEEP_STEPS,
                cursor: 0,
            }
        });
        let stats_timer = config.stats_interval.map(|interval| StatsTimer {
            interval,
            next: now + interval,
            last: Summary::default(),
            last_at: now,
        });
        let core = Core {
            listener: Some(listener),
            local_addr,
            connections: Slab::with_capacity(max_connections.min(SLAB_PREALLOC_LIMIT)),
            max_connections,
            framer,
            read_buf: vec![0; read_len],
            frame_window: (FRAME_WINDOW / m).max(1) * m,
            greetings_in_progress: HashMap::new(),
            run_queue: VecDeque::new(),
            signals: None,
            stopping: false,
            gathered: false,
            wake_bytes: 0,
            last_small_wake: None,
            last_churn: None,
            accept: AcceptState {
                ready: false,
                paused_until: None,
                backoff: MIN_ACCEPT_BACKOFF,
                shortage_since: None,
                shortage_errors: 0,
                full_rejects: 0,
            },
            sweep,
            stats_timer,
            stats: Summary::default(),
            epoch: now,
            now,
            now_ms: 0,
            config,
        };
        Ok(Server {
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            core,
            waker: None,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.core.local_addr
    }

    /// The connection cap in force.
    pub fn max_connections(&self) -> usize {
        self.core.max_connections
    }

    /// A handle that stops the server from another thread.
    pub fn stopper(&mut self) -> io::Result<Stopper> {
        if self.waker.is_none() {
            self.waker = Some(Arc::new(Waker::new(self.poll.registry(), STOP)?));
        }
        let waker = self
            .waker
            .as_ref()
            .map(Arc::clone)
            .ok_or_else(|| io::Error::other("no waker"))?;
        Ok(Stopper(waker))
    }

    /// Stops the server cleanly on SIGINT and SIGTERM.
    pub fn stop_on_signals(&mut self) -> io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.core.signals = Some(signals);
        Ok(())
    }

    /// Runs the loop, printing the transcript to `out`, until stopped.
    ///
    /// Returns the counts when stopped; an error only when polling fails, the
    /// listener breaks, or `out` can no longer be written.
    pub fn run<W: Write>(self, out: W) -> io::Result<Summary> {
        let Server {
            mut poll,
            mut events,
            mut core,
            waker: _waker,
        } = self;
        let mut out = Transcript::new(out);
        out.addr_line("Listening to:  ", core.local_addr);
        out.flush()?;
        loop {
            let timeout = core.before_poll(&mut out)?;
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            core.tick();
            let registry = poll.registry();
            let mut woken = 0;
            for event in events.iter() {
                woken += 1;
                match event.token() {
                    LISTENER => core.accept_ready(registry, &mut out)?,
                    STOP => core.stopping = true,
                    SIGNALS => core.take_signals(),
                    token => core.connection_event(token.0, event, registry, &mut out)?,
                }
                out.flush_if_full()?;
            }
            if core.stopping {
                return core.shutdown(&mut out);
            }
            core.after_events(registry, &mut out)?;
            core.coalesce(woken);
        }
    }
}

impl Core {
    /// Reads the clock once per wakeup.
    fn tick(&mut self) {
        self.now = Instant::now();
        self.now_ms = self.now.duration_since(self.epoch).as_millis() as u32;
    }

    /// Under a steady stream of small messages, lets events gather for
    /// `--coalesce` before polling again, so that one `epoll_wait`, one
    /// context switch and one transcript write serve dozens of messages
    /// instead of one or two, at the price of that much transcript latency.
    ///
    /// Clients never wait on a message being printed, so the pause costs
    /// them nothing, except where the server answers: the greeting, and the
    /// close after end of file. So the loop pauses only in steady state:
    /// after two small wakeups in a row close together (the second within
    /// twice the window of the first), with no connection accepted or closed
    /// lately. A lone message, a burst of connections or the end of a stream
    /// is handled at once. A wakeup that filled the event buffer, left work
    /// queued, or moved bulk data (where a pause would only let a socket
    /// buffer fill and the sender stall) never pauses.
    fn coalesce(&mut self, woken: usize) {
        let window = self.config.coalesce;
        let bulk = std::mem::take(&mut self.wake_bytes) >= COALESCE_MAX_BYTES;
        self.gathered = false;
        let small = woken > 0 && woken < EVENTS_CAPACITY && !bulk && !window.is_zero() && !self.busy();
        let previous = std::mem::replace(&mut self.last_small_wake, small.then_some(self.now));
        let steady = previous.is_some_and(|t| self.now.duration_since(t) <= window * 2);
        let churning = self
            .last_churn
            .is_some_and(|t| self.now.duration_since(t) <= window * CHURN_QUIET_WINDOWS);
        if small && steady && !churning {
            std::thread::sleep(window);
            self.gathered = true;
        }
    }

    /// Work is queued that must not wait for an event.
    fn busy(&self) -> bool {
        !self.run_queue.is_empty() || self.accept.ready
    }

    /// Flushes what is due and computes how long `poll` may wait.
    fn before_poll<W: Write>(&mut self, out: &mut Transcript<W>) -> io::Result<Option<Duration>> {
        self.tick();
        out.stamp(self.now);
        // After a coalescing pause, collect what gathered without blocking.
        let busy = self.busy() || self.gathered;
        if let Some(due) = out.deadline(self.config.flush_lag)
            && (due <= self.now || (!busy && self.config.flush_lag.is_zero()))
        {
            out.flush()?;
        }
        if busy {
            return Ok(Some(Duration::ZERO));
        }
        let deadline = [
            out.deadline(self.config.flush_lag),
            self.accept.paused_until,
            self.sweep.as_ref().map(|s| s.next),
            self.stats_timer.as_ref().map(|s| s.next),
        ]
        .into_iter()
        .flatten()
        .min();
        Ok(deadline.map(|d| d.saturating_duration_since(self.now)))
    }

    /// After a round of events: the run queue, paused accepts and timers.
    fn after_events<W: Write>(&mut self, registry: &Registry, out: &mut Transcript<W>) -> io::Result<()> {
        // Each connection queued before this pass gets one more budget.
        for _ in 0..self.run_queue.len() {
            let Some(key) = self.run_queue.pop_front() else { break };
            match self.connections.get_mut(key) {
                Some(conn) if conn.has(QUEUED) => conn.flags &= !QUEUED,
                // Closed, or the key now belongs to someone else.
                _ => continue,
            }
            if let Some(reason) = self.read_ready(key, self.config.read_budget, out)? {
                self.close(key, reason, out);
            }
        }
        if let Some(until) = self.accept.paused_until
            && until <= self.now
        {
            self.accept.paused_until = None;
            self.accept.ready = true;
        }
        if self.accept.ready {
            self.accept_ready(registry, out)?;
        }
        if self.sweep.as_ref().is_some_and(|s| s.next <= self.now) {
            self.sweep_step(out)?;
        }
        if self.stats_timer.as_ref().is_some_and(|s| s.next <= self.now) {
            self.log_stats();
        }
        Ok(())
    }

    /// Accepts waiting clients, up to [`ACCEPT_BUDGET`].
    fn accept_ready<W: Write>(&mut self, registry: &Registry, out: &mut Transcript<W>) -> io::Result<()> {
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
                    if self.connections.len() >= self.max_connections {
                        self.reject(stream, peer);
                    } else {
                        self.add(stream, peer, registry, out);
                    }
                }
                // The backlog is empty.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.end_shortage();
                    return Ok(());
                }
                Err(e) => match net_error::accept_action(&e) {
                    // That one client's problem: take the next.
                    AcceptAction::Retry => debug!("accept: {e}; next"),
                    AcceptAction::Backoff => {
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
            warn!(
                "accept: {e}; pausing accepts while {} connections are open (clients wait in the backlog)",
                self.connections.len()
            );
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
            info!(
                "accept: resumed after {:.0?} ({} retries)",
                self.now.duration_since(since),
                self.accept.shortage_errors
            );
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
        if self.accept.full_rejects == 0 {
            warn!(
                "server full ({} connections): turning new clients away, starting with {peer}",
                self.max_connections
            );
        }
        self.accept.full_rejects += 1;
    }

    /// Registers a new client, prints `Connection from`, sends the greeting.
    fn add<W: Write>(&mut self, mut stream: TcpStream, peer: SocketAddr, registry: &Registry, out: &mut Transcript<W>) {
        if self.accept.full_rejects > 0 {
            info!(
                "room again: {} clients were turned away while full",
                self.accept.full_rejects
            );
            self.accept.full_rejects = 0;
        }
        let entry = self.connections.vacant_entry();
        let key = entry.key();
        if let Err(e) = registry.register(&mut stream, Token(key), Interest::READABLE) {
            // epoll itself is out of room (max_user_watches): drop this one.
            warn!("[{key}] {peer}: cannot watch the connection: {e}; closed");
            return;
        }
        if let Some(idle) = self.config.keepalive {
            let keepalive = socket2::TcpKeepalive::new().with_time(idle).with_interval(idle);
            if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
                debug!("[{key}] {peer}: keepalive: {e}");
            }
        }
        self.stats.accepted += 1;
        self.last_churn = Some(self.now);
        out.addr_line("Connection from:  ", peer);
        let mut conn = Connection::new(stream, peer, self.now_ms);
        let mut sent = 0;
        match write_greeting(&mut conn.stream, &self.config.greeting, &mut sent) {
            Ok(true) => {}
            Ok(false) => {
                // The rest goes out when the socket becomes writable.
                debug!(
                    "[{key}] {peer}: greeting: {} bytes wait for WRITABLE",
                    self.config.greeting.len() - sent as usize
                );
                match registry.reregister(&mut conn.stream, Token(key), Interest::READABLE | Interest::WRITABLE) {
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
        entry.insert(conn);
        debug!("[{key}] {peer}: connected");
    }

    /// One readiness event for connection `key`.
    fn connection_event<W: Write>(
        &mut self,
        key: usize,
        event: &Event,
        registry: &Registry,
        out: &mut Transcript<W>,
    ) -> io::Result<()> {
        let Some(conn) = self.connections.get_mut(key) else {
            // Slab keys are reused: an event may outlive its connection.
            debug!("[{key}] event for a closed connection, ignored");
            return Ok(());
        };
        if event.is_read_closed() || event.is_error() {
            conn.flags |= PEER_CLOSED;
        }
        if event.is_writable() && conn.has(WANTS_WRITE) {
            let sent = self.greetings_in_progress.entry(key).or_default();
            let done = match write_greeting(&mut conn.stream, &self.config.greeting, sent) {
                Ok(done) => done,
                Err(e) => {
                    // Given up: the read side decides when to close.
                    debug!("[{key}] {}: greeting: {e}", conn.peer());
                    true
                }
            };
            if done {
                // Greeted: stop asking for WRITABLE events.
                self.greetings_in_progress.remove(&key);
                conn.flags &= !WANTS_WRITE;
                if let Err(e) = registry.reregister(&mut conn.stream, Token(key), Interest::READABLE) {
                    self.close(key, Close::Error(e), out);
                    return Ok(());
                }
            }
        }
        if (event.is_readable() || event.is_read_closed() || event.is_error())
            && !conn.has(QUEUED)
            && let Some(reason) = self.read_ready(key, self.config.read_budget, out)?
        {
            self.close(key, reason, out);
        }
        Ok(())
    }

    /// Reads connection `key` until drained or out of budget, printing every
    /// block. `Ok(Some(reason))` when the connection must close; `Err` only
    /// when the transcript can no longer be written.
    fn read_ready<W: Write>(
        &mut self,
        key: usize,
        budget: usize,
        out: &mut Transcript<W>,
    ) -> io::Result<Option<Close>> {
        let Some(conn) = self.connections.get_mut(key) else {
            return Ok(None);
        };
        let mut tag_buf = [0u8; 64];
        let tag = if self.config.tag {
            format_tag(&mut tag_buf, conn.peer())
        } else {
            &[][..]
        };
        let full = self.read_buf.len();
        let mut budget = budget;
        loop {
            match conn.stream.read(&mut self.read_buf) {
                Ok(0) => return Ok(Some(Close::Eof)),
                Ok(n) => {
                    conn.last_active = self.now_ms;
                    self.stats.bytes += n as u64;
                    self.wake_bytes += n;
                    // Frame and write a window at a time, so that a large
                    // block's lines go out while they are still in the cache.
                    // Windows are whole frames, so the cut is the same.
                    for part in self.read_buf[..n].chunks(self.frame_window) {
                        self.stats.frames += self.framer.frame_block(out.buf(), tag, part);
                        out.flush_if_full()?;
                    }
                    // A short read drained the socket, unless the peer has
                    // closed: then read on to see the end of file.
                    if cfg!(target_os = "linux") && n < full && !conn.has(PEER_CLOSED) {
                        return Ok(None);
                    }
                    if n >= budget {
                        conn.flags |= QUEUED;
                        self.run_queue.push_back(key);
                        return Ok(None);
                    }
                    budget -= n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Ok(Some(Close::Error(e))),
            }
        }
    }

    /// Closes connection `key`: prints `Closed connection`, frees its slot
    /// and lets a paused accept try again.
    fn close<W: Write>(&mut self, key: usize, reason: Close, out: &mut Transcript<W>) {
        let Some(conn) = self.connections.try_remove(key) else {
            return;
        };
        if conn.has(WANTS_WRITE) {
            self.greetings_in_progress.remove(&key);
        }
        let peer = conn.peer();
        match &reason {
            Close::Eof | Close::Shutdown => debug!("[{key}] {peer}: closed ({reason:?})"),
            Close::Error(e) => debug!("[{key}] {peer}: closed: {e}"),
            Close::Idle => {
                info!(
                    "[{key}] {}: closed after {:?} without data (--idle-timeout)",
                    peer,
                    Duration::from_millis(u64::from(self.now_ms.wrapping_sub(conn.last_active)))
                );
                self.stats.idle_closed += 1;
            }
        }
        out.addr_line("Closed connection:  ", peer);
        self.stats.closed += 1;
        self.last_churn = Some(self.now);
        // Dropping the stream closes the descriptor, which also removes it
        // from epoll: no deregister system call needed.
        drop(conn);
        if self.accept.shortage_since.is_some() {
            self.accept.paused_until = None;
            self.accept.ready = true;
        }
    }

    /// One step of the idle sweep.
    fn sweep_step<W: Write>(&mut self, out: &mut Transcript<W>) -> io::Result<()> {
        let Some(sweep) = self.sweep.as_mut() else {
            return Ok(());
        };
        sweep.next = self.now + sweep.step;
        let span = self.connections.capacity().max(1);
        let per_step = span.div_ceil(SWEEP_STEPS as usize);
        let timeout = sweep.timeout_ms;
        let mut key = sweep.cursor % span;
        let mut idle = Vec::new();
        for _ in 0..per_step {
            if let Some(conn) = self.connections.get(key)
                && self.now_ms.wrapping_sub(conn.last_active) >= timeout
            {
                idle.push(key);
            }
            key = (key + 1) % span;
        }
        sweep.cursor = key;
        for key in idle {
            // Print what it sent before its idle time began, if still queued.
            let reason = self
                .read_ready(key, self.config.read_budget, out)?
                .unwrap_or(Close::Idle);
            self.close(key, reason, out);
        }
        Ok(())
    }

    /// Logs one `--stats` line.
    fn log_stats(&mut self) {
        let Some(timer) = self.stats_timer.as_mut() else { return };
        let s = self.stats;
        let secs = self.now.duration_since(timer.last_at).as_secs_f64().max(1e-9);
        let rate = |now: u64, then: u64| (now - then) as f64 / secs;
        info!(
            "stats: active {} accepted {} closed {} rejected {} bytes_in {} frames {} | {:.0} accepts/s {:.0} closes/s {:.2} MB/s {:.0} frames/s",
            self.connections.len(),
            s.accepted,
            s.closed,
            s.rejected,
            s.bytes,
            s.frames,
            rate(s.accepted, timer.last.accepted),
            rate(s.closed, timer.last.closed),
            rate(s.bytes, timer.last.bytes) / 1e6,
            rate(s.frames, timer.last.frames),
        );
        timer.last = s;
        timer.last_at = self.now;
        timer.next = self.now + timer.interval;
    }

    /// Drains the signal pipe; SIGINT and SIGTERM both stop the server.
    fn take_signals(&mut self) {
        if let Some(signals) = self.signals.as_mut() {
            for signal in signals.pending() {
                info!("signal {signal}: stopping");
                self.stopping = true;
            }
        }
    }

    /// Stops: no more accepts, every connection read one last time, printed,
    /// closed; the transcript flushed.
    fn shutdown<W: Write>(&mut self, out: &mut Transcript<W>) -> io::Result<Summary> {
        // Closing the listener refuses whoever is still in the backlog.
        self.listener = None;
        self.stats.open_at_stop = self.connections.len() as u64;
        let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
        for key in keys {
            let Some(conn) = self.connections.get_mut(key) else {
                continue;
            };
            // Everything the kernel has received is read and printed, however
            // much that is; what a client sends after this moment is not (it
            // learns so from the reset), so a client that keeps streaming
            // cannot hold the exit up.
            let queued = queued_bytes(&conn.stream).unwrap_or(SHUTDOWN_READ_CAP);
            // A short read no longer ends the drain.
            conn.flags |= PEER_CLOSED;
            let reason = self.read_ready(key, queued.max(1), out)?.unwrap_or(Close::Shutdown);
            self.close(key, reason, out);
        }
        out.flush()?;
        Ok(self.stats)
    }
}

/// Bytes waiting in a socket's receive queue (`FIONREAD`, alias `SIOCINQ`).
fn queued_bytes(stream: &TcpStream) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through a pointer to a live local, on
    // a descriptor that `stream` owns for the whole call.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut queued) };
    (rc == 0).then(|| usize::try_from(queued).unwrap_or(0))
}

/// Formats `ADDR ` into `buf`, for `--tag`.
fn format_tag(buf: &mut [u8; 64], peer: SocketAddr) -> &[u8] {
    let mut cursor = io::Cursor::new(&mut buf[..]);
    // The longest address with a scope id is 55 bytes, so this fits.
    let _ = write!(cursor, "{peer} ");
    let len = cursor.position() as usize;
    &buf[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_fit() {
        let mut buf = [0u8; 64];
        let v6: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535"
            .parse()
            .expect("addr");
        let tag = format_tag(&mut buf, v6);
        assert_eq!(tag, format!("{v6} ").as_bytes());
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
