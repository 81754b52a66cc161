//! The reactor: one thread, one `mio::Poll`, every connection's state in one
//! `Slab` keyed by its token. [`Server`] (in `pool`) runs one reactor, on
//! the caller's thread, or N of them sharing nothing on the per-message
//! path (`--threads`).
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
//! server or makes it spin. Only a failing poll or a broken listener ends a
//! reactor (the others go on), and only an output that can no longer be
//! written ends [`Server::run`].

mod accept;
mod access;
mod balance;
mod connection;
mod pool;
mod proxy;
pub mod shutdown;
pub mod stats;
mod sweep;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use log::{debug, info};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;

use crate::config::Config;
use crate::output::Transcript;
use accept::AcceptState;
pub use accept::{PER_SOURCE_FULL, SERVER_FULL};
use access::Access;
use connection::{
    COUNTED, Connection, PEER_CLOSED, PROXY_PENDING, QUEUED, QUIET, READ_INTEREST, URGENT, WANTS_WRITE, write_greeting,
};
use pool::Shared;
pub use pool::{AccessRules, MAX_GREETING, Server, Stopper};
use stats::StatsTimer;
pub use stats::Summary;
use sweep::Sweep;

/// The listener's token: outside the slab's key range, like all special tokens.
const LISTENER: Token = Token(usize::MAX);
/// The reactor's waker: a [`Stopper`] or another reactor asks it to look at
/// the shared stop flag.
const STOP: Token = Token(usize::MAX - 1);
/// A worker's handoff socket (reactor 0 only): clients its supervisor
/// accepted for it.
const HANDOFF: Token = Token(usize::MAX - 2);

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

/// Bytes of a read block framed at a time before the lines are written: the
/// input and its lines (1.25 times as much) then stay inside a 1 MiB L2
/// cache.
const FRAME_WINDOW: usize = 256 * 1024;

/// The framing window for a line format: a JSON line carries about four
/// times a text line's bytes, so its window is a quarter, to keep a
/// window's lines in the same cache.
fn frame_window(format: crate::output::Format) -> usize {
    match format {
        crate::output::Format::Text => FRAME_WINDOW,
        crate::output::Format::Json => FRAME_WINDOW / 4,
    }
}

/// Bytes read from a connection at shutdown when the kernel cannot say how
/// many are queued (it always can on Linux).
const SHUTDOWN_READ_CAP: usize = 4 * 1024 * 1024;

/// Slab entries reserved up front (virtual memory only until used).
const SLAB_PREALLOC_LIMIT: usize = 1 << 20;

/// One reactor: its poll, its events, and the state its loop works on.
struct Reactor {
    /// This reactor's poll instance.
    poll: Poll,
    /// Readiness events, reused for every `poll` call.
    events: Events,
    /// Everything else, apart from `poll` so the loop can borrow both.
    core: Core,
}

struct Core {
    /// Which reactor this is (0 runs on the caller's thread and logs the
    /// `--stats` line).
    id: usize,
    /// What the reactors share: the stop flag, the open-connection count
    /// behind the global cap, the published counters.
    shared: Arc<Shared>,
    /// The listening socket; `None` once the server is stopping.
    listener: Option<TcpListener>,
    /// Every connected client, keyed by its token.
    connections: Slab<Connection>,
    /// The cap on open connections, over all reactors.
    max_connections: usize,
    /// Greeting, flags and tunables.
    config: Config,
    /// The one read buffer, shared by all connections (a multiple of
    /// `max_read`, so blocks cut into full frames).
    read_buf: Vec<u8>,
    /// Bytes asked of the kernel per read: `read_buf`'s length, unless the
    /// buffer was made larger to hold a whole PROXY header.
    read_len: usize,
    /// Bytes read from one connection per wakeup (`--read-budget` rounded
    /// down to whole frames): reads never ask for more, so one full read
    /// block with the default budget is one `recv`.
    read_budget: usize,
    /// One past the highest slab key in use: the idle sweep walks keys below
    /// it, so its cost follows the connections, not the slab's capacity.
    key_end: usize,
    /// Bytes of a read block framed before the lines are written out (a
    /// multiple of `max_read`).
    frame_window: usize,
    /// Bytes of the greeting sent so far, for the rare connections whose
    /// greeting did not fit their socket at once (kept out of the slab so
    /// that every connection does not pay for it).
    greetings_in_progress: HashMap<usize, u32>,
    /// Connections whose read budget ran out with data left.
    run_queue: VecDeque<usize>,
    /// `--allow` and `--deny` as this reactor last took them from
    /// [`Shared`] (replaced on SIGHUP, see [`AccessRules`]).
    access: Arc<Access>,
    /// The rules' generation taken.
    access_generation: u64,
    /// Connections whose PROXY header has not come yet (beside the slab,
    /// and only while pending).
    proxy_pending: HashSet<usize>,
    /// When pending PROXY headers are next checked for `--proxy-timeout`.
    next_proxy_check: Instant,
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
    /// Closed without a greeting: denied, or no valid PROXY header (the
    /// refusal is counted and logged where it is decided).
    Refused,
}

impl Reactor {
    /// Reactor `id` on `poll` (where its waker is registered) and
    /// `listener`, which must be non-blocking.
    fn new(
        id: usize,
        poll: Poll,
        listener: std::net::TcpListener,
        config: Config,
        shared: Arc<Shared>,
    ) -> io::Result<Reactor> {
        let mut listener = TcpListener::from_std(listener);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let m = config.max_read.max(1);
        let read_len = (config.read_buffer.max(m) / m) * m;
        // Whole frames, at least one, and never more than one read block per
        // read: a budget that does not divide into reads would cut a frame
        // short or cost a second read for a few bytes.
        let read_budget = (config.read_budget.max(m) / m) * m;
        let now = Instant::now();
        let sweep = config.idle_timeout.map(|timeout| Sweep::new(timeout, now));
        // One stats line for all reactors, logged by the first.
        let stats_timer = config
            .stats_interval
            .filter(|_| id == 0)
            .map(|interval| StatsTimer::new(interval, now));
        let max_connections = shared.max_connections;
        let access = shared.access();
        let access_generation = shared.access_generation.load(Ordering::Acquire);
        let core = Core {
            id,
            shared,
            listener: Some(listener),
            // Each reactor's share of the cap (the kernel spreads clients
            // roughly evenly; a slab grows past its reserve if need be).
            connections: Slab::with_capacity(max_connections.div_ceil(config.threads.max(1)).min(SLAB_PREALLOC_LIMIT)),
            max_connections,
            // Room for a whole PROXY header even with tiny reads.
            read_buf: vec![
                0;
                if config.proxy_protocol {
                    read_len.max(proxy::MAX_HEADER)
                } else {
                    read_len
                }
            ],
            read_len,
            read_budget,
            key_end: 0,
            frame_window: (frame_window(config.format) / m).max(1) * m,
            greetings_in_progress: HashMap::new(),
            run_queue: VecDeque::new(),
            access,
            access_generation,
            proxy_pending: HashSet::new(),
            next_proxy_check: now,
            stopping: false,
            gathered: false,
            wake_bytes: 0,
            last_small_wake: None,
            last_churn: None,
            accept: AcceptState::new(),
            sweep,
            stats_timer,
            stats: Summary::default(),
            epoch: now,
            now,
            now_ms: 0,
            config,
        };
        Ok(Reactor {
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            core,
        })
    }

    /// Runs the loop until the shared stop flag is raised, then drains.
    /// Returns the counts, with the error that ended the loop early if one
    /// did (a failing poll, a broken listener: the connections are still
    /// drained); `Err` only when `out` can no longer be written.
    fn run<W: Write>(self, out: &mut Transcript<'_, W>) -> io::Result<pool::Ended> {
        let Reactor {
            mut poll,
            mut events,
            mut core,
        } = self;
        let ended = loop {
            let timeout = match core.before_poll(out) {
                Ok(timeout) => timeout,
                Err(e) => break Err(e),
            };
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break Err(e);
            }
            if let Err(e) = core.wakeup(&events, poll.registry(), out) {
                break Err(e);
            }
            if core.stopping {
                break Ok(());
            }
        };
        match ended {
            Ok(()) => Ok((core.shutdown(poll.registry(), out)?, None)),
            // The output is gone: nothing more can be printed.
            Err(e) if crate::output::OutputError::of(&e).is_some() => Err(e),
            Err(e) => {
                // This reactor cannot go on; what it has received is still
                // printed, and the other reactors keep serving.
                log::error!("reactor {}: {e}; closing its connections", core.id);
                Ok((core.shutdown(poll.registry(), out)?, Some(e)))
            }
        }
    }
}

impl Core {
    /// One wakeup: the events `poll` returned, then the run queue, timers,
    /// and the coalescing pause.
    fn wakeup<W: Write>(
        &mut self,
        events: &Events,
        registry: &Registry,
        out: &mut Transcript<'_, W>,
    ) -> io::Result<()> {
        self.tick();
        out.read_clock();
        let mut woken = 0;
        for event in events.iter() {
            woken += 1;
            match event.token() {
                LISTENER => self.accept_ready(registry, out)?,
                HANDOFF => self.receive_handed(registry, out),
                STOP => {
                    self.shared.woken(self.id);
                    self.adopt(self.shared.balance.take(self.id), registry, out);
                    if self.shared.stop.load(Ordering::SeqCst) {
                        if self.id == 0 {
                            match shutdown::signal_received() {
                                Some(signal) => info!("signal {signal}: stopping"),
                                None => debug!("stopping"),
                            }
                        }
                        self.shared.stopping();
                        self.stopping = true;
                    }
                }
                token => self.connection_event(token.0, event, registry, out)?,
            }
            out.flush_if_full()?;
        }
        if self.stopping {
            return Ok(());
        }
        self.after_events(registry, out)?;
        self.coalesce(woken, out)
    }

    /// Publishes this reactor's counters (with the output's), for the
    /// `--stats` line, the metrics and a worker's supervisor: stores into
    /// its own cache lines, nothing when nobody reads them.
    #[inline]
    fn publish<W: Write>(&mut self, active: usize, out: &Transcript<'_, W>) {
        publish(&self.shared, self.id, &mut self.stats, active, out);
    }

    /// Takes the access rules anew if they were replaced (one atomic load;
    /// called before each check).
    #[inline]
    fn refresh_access(&mut self) {
        let generation = self.shared.access_generation.load(Ordering::Acquire);
        if generation != self.access_generation {
            self.access = self.shared.access();
            self.access_generation = generation;
        }
    }

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
    fn coalesce<W: Write>(&mut self, woken: usize, out: &mut Transcript<'_, W>) -> io::Result<()> {
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
            // What was read is written before the pause, in one write with
            // what the last pause gathered: a line waits at most one window.
            out.flush()?;
            std::thread::sleep(window);
            self.gathered = true;
        }
        Ok(())
    }

    /// Work is queued that must not wait for an event.
    fn busy(&self) -> bool {
        !self.run_queue.is_empty() || self.accept.ready
    }

    /// Flushes what is due and computes how long `poll` may wait.
    fn before_poll<W: Write>(&mut self, out: &mut Transcript<'_, W>) -> io::Result<Option<Duration>> {
        self.tick();
        out.stamp(self.now);
        // After a coalescing pause, collect what gathered without blocking.
        let busy = self.busy() || self.gathered;
        if let Some(due) = out.deadline(self.config.flush_lag)
            && (due <= self.now || (!busy && self.config.flush_lag.is_zero()))
        {
            out.flush()?;
        }
        // Once per wakeup, after the output is written: what a reader sees
        // while this reactor waits is what it has done.
        self.publish(self.connections.len(), out);
        if busy {
            return Ok(Some(Duration::ZERO));
        }
        let deadline = [
            out.deadline(self.config.flush_lag),
            self.accept.paused_until,
            self.sweep
                .as_ref()
                .filter(|_| !self.connections.is_empty())
                .map(|s| s.next),
            self.stats_timer.as_ref().map(|s| s.next),
            (!self.proxy_pending.is_empty()).then_some(self.next_proxy_check),
        ]
        .into_iter()
        .flatten()
        .min();
        Ok(deadline.map(|d| d.saturating_duration_since(self.now)))
    }

    /// After a round of events: the run queue, paused accepts and timers.
    fn after_events<W: Write>(&mut self, registry: &Registry, out: &mut Transcript<'_, W>) -> io::Result<()> {
        // Each connection queued before this pass gets one more budget.
        for _ in 0..self.run_queue.len() {
            let Some(key) = self.run_queue.pop_front() else { break };
            match self.connections.get_mut(key) {
                Some(conn) if conn.has(QUEUED) => conn.flags &= !QUEUED,
                // Closed, or the key now belongs to someone else.
                _ => continue,
            }
            if let Some(reason) = self.read_ready(key, self.read_budget, out)? {
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
        if !self.proxy_pending.is_empty() && self.next_proxy_check <= self.now {
            self.expire_proxy_headers(out);
        }
        if self.stats_timer.as_ref().is_some_and(|s| s.next <= self.now) {
            self.log_stats();
        }
        Ok(())
    }

    /// One readiness event for connection `key`.
    fn connection_event<W: Write>(
        &mut self,
        key: usize,
        event: &Event,
        registry: &Registry,
        out: &mut Transcript<'_, W>,
    ) -> io::Result<()> {
        let Some(conn) = self.connections.get_mut(key) else {
            // Slab keys are reused: an event may outlive its connection.
            debug!("[{key}] event for a closed connection, ignored");
            return Ok(());
        };
        if event.is_read_closed() || event.is_error() {
            conn.flags |= PEER_CLOSED;
        }
        if event.is_priority() {
            // Urgent data: Linux ends a read at the urgent mark, so a short
            // read no longer means drained. Read to `WouldBlock` this time.
            conn.flags |= URGENT;
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
                if let Err(e) = registry.reregister(&mut conn.stream, Token(key), READ_INTEREST) {
                    self.close(key, Close::Error(e), out);
                    return Ok(());
                }
            }
        }
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        if readable && conn.has(PROXY_PENDING) {
            if let Some(reason) = self.proxy_ready(key, registry, out)? {
                self.close(key, reason, out);
            }
            return Ok(());
        }
        if readable
            && !conn.has(QUEUED)
            && let Some(reason) = self.read_ready(key, self.read_budget, out)?
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
        out: &mut Transcript<'_, W>,
    ) -> io::Result<Option<Close>> {
        let active = self.connections.len();
        let Some(conn) = self.connections.get_mut(key) else {
            return Ok(None);
        };
        if conn.has(PROXY_PENDING) {
            // Not a client's bytes yet: the header is read by `proxy_ready`.
            return Ok(None);
        }
        let peer = conn.peer();
        let full = self.read_len;
        // Whole frames, so that a read the budget cuts short still ends on a
        // frame boundary.
        let m = out.max_read();
        let mut left = budget.div_ceil(m).max(1) * m;
        loop {
            // Never ask for more than the budget leaves: one read block per
            // wakeup with the default budget.
            let want = left.min(full);
            match conn.stream.read(&mut self.read_buf[..want]) {
                Ok(0) => return Ok(Some(Close::Eof)),
                Ok(n) => {
                    if conn.has(QUIET) {
                        // A proxy's own connection that sends bytes is a
                        // client after all (the access rules were checked
                        // on its proxy when the header came): announced
                        // before its first frame.
                        conn.flags &= !QUIET;
                        self.stats.accepted += 1;
                        out.connected(peer);
                    }
                    conn.last_active = self.now_ms;
                    self.stats.bytes += n as u64;
                    self.wake_bytes += n;
                    // Frame and write a window at a time, so that a large
                    // block's lines go out while they are still in the cache.
                    // Windows are whole frames, so the cut is the same.
                    for part in self.read_buf[..n].chunks(self.frame_window) {
                        self.stats.frames += out.frames(peer, part);
                        if out.pending() >= crate::output::FLUSH_AT {
                            // A write that may block: what was counted is
                            // published first (for whoever reads it while
                            // this reactor waits on the output).
                            publish(&self.shared, self.id, &mut self.stats, active, out);
                            out.flush_if_full()?;
                        }
                    }
                    // A short read drained the socket (the kernel raises a
                    // new edge for every arrival), unless the peer has closed
                    // (read on to see the end of file) or sent urgent data
                    // (Linux ends a read at the urgent mark).
                    if cfg!(target_os = "linux") && n < want && !conn.has(PEER_CLOSED | URGENT) {
                        return Ok(None);
                    }
                    left -= n;
                    if left == 0 {
                        conn.flags |= QUEUED;
                        self.run_queue.push_back(key);
                        return Ok(None);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.flags &= !URGENT;
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Ok(Some(Close::Error(e))),
            }
        }
    }

    /// Closes connection `key`: prints `Closed connection`, frees its slot
    /// and lets a paused accept try again.
    fn close<W: Write>(&mut self, key: usize, reason: Close, out: &mut Transcript<'_, W>) {
        let Some(conn) = self.connections.try_remove(key) else {
            return;
        };
        if conn.has(WANTS_WRITE) {
            self.greetings_in_progress.remove(&key);
        }
        if conn.has(PROXY_PENDING) {
            self.proxy_pending.remove(&key);
        }
        let peer = conn.peer();
        match &reason {
            Close::Eof | Close::Shutdown | Close::Refused => debug!("[{key}] {peer}: closed ({reason:?})"),
            Close::Error(e) => debug!("[{key}] {peer}: closed: {e}"),
            Close::Idle => info!(
                "[{key}] {}: closed after {:?} without data (--idle-timeout)",
                peer,
                Duration::from_millis(u64::from(self.now_ms.wrapping_sub(conn.last_active)))
            ),
        }
        if conn.has(COUNTED)
            && let Some(per_source) = &self.shared.per_source
        {
            per_source.release(peer.ip());
        }
        // Only a client that was announced is announced closing (and
        // counted as closed, by why).
        if !conn.has(PROXY_PENDING | QUIET) {
            out.closed(peer);
            let stats = &mut self.stats;
            stats.closed += 1;
            match &reason {
                Close::Eof => stats.closed_eof += 1,
                Close::Error(e) if e.kind() == io::ErrorKind::ConnectionReset => stats.closed_reset += 1,
                Close::Error(_) => stats.closed_error += 1,
                Close::Idle => stats.closed_idle += 1,
                Close::Shutdown => stats.closed_shutdown += 1,
                // Refused connections are never announced.
                Close::Refused => {}
            }
        }
        self.last_churn = Some(self.now);
        // Dropping the stream closes the descriptor, which also removes it
        // from epoll: no deregister system call needed.
        drop(conn);
        self.shared.release(self.id);
        if key + 1 == self.key_end {
            // The top key is free: lower the sweep's bound past every free
            // key below it (each key is passed once per use, so this is
            // constant time on average).
            while self.key_end > 0 && !self.connections.contains(self.key_end - 1) {
                self.key_end -= 1;
            }
        }
        if self.accept.shortage_since.is_some() {
            self.accept.paused_until = None;
            self.accept.ready = true;
        }
    }

    /// Stops: no more accepts, every connection read one last time, printed,
    /// closed; the transcript flushed.
    fn shutdown<W: Write>(&mut self, registry: &Registry, out: &mut Transcript<'_, W>) -> io::Result<Summary> {
        // Closing the listener refuses whoever is still in the backlog.
        self.listener = None;
        // Clients another reactor accepted for this one are served (and
        // drained below) like the rest; no more come.
        self.adopt(self.shared.balance.close(self.id), registry, out);
        // A PROXY header that has come whole names a client whose bytes
        // follow it: serve it like the others. The rest were never clients.
        let pending: Vec<usize> = self.proxy_pending.iter().copied().collect();
        for key in pending {
            let reason = match self.proxy_ready(key, registry, out)? {
                Some(reason) => Some(reason),
                None if self.proxy_pending.contains(&key) => Some(Close::Shutdown),
                None => None,
            };
            if let Some(reason) = reason {
                self.close(key, reason, out);
            }
        }
        self.stats.open_at_stop = self.connections.iter().filter(|(_, c)| !c.has(QUIET)).count() as u64;
        self.publish(self.connections.len(), out);
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
        // The final counts, for whoever reads them (a worker's supervisor).
        self.publish(self.connections.len(), out);
        Ok(self.stats)
    }
}

/// Reactor `id` publishes `stats` (with its output's counts), its `active`
/// connections and its output's backlog, if anybody reads them.
#[inline]
fn publish<W: Write>(shared: &Shared, id: usize, stats: &mut Summary, active: usize, out: &Transcript<'_, W>) {
    if shared.publishing() {
        stats.out_bytes = out.written();
        stats.out_lines = out.lines_written();
        stats.out_write_ns = out.write_ns();
        shared.publish(id, stats, active, out.pending());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A reactor with `config` and one client it has accepted (not through
    /// `run`: the test drives the loop's steps itself).
    pub(super) fn reactor_with_client(
        config: Config,
        out: &mut Transcript<'_, Vec<u8>>,
    ) -> (Reactor, std::net::TcpStream, usize) {
        let loopback = std::net::Ipv4Addr::LOCALHOST.into();
        reactor_with_client_on((loopback, 0).into(), loopback, config, out)
    }

    /// [`reactor_with_client`] with the reactor listening on `listen` and
    /// the client connecting to `connect` (on the listener's port).
    pub(super) fn reactor_with_client_on(
        listen: std::net::SocketAddr,
        connect: std::net::IpAddr,
        config: Config,
        out: &mut Transcript<'_, Vec<u8>>,
    ) -> (Reactor, std::net::TcpStream, usize) {
        let listener = std::net::TcpListener::bind(listen).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = Server::from_listener(listener, config).expect("server");
        let mut reactor = server.into_reactors().pop().expect("a reactor");
        let client = std::net::TcpStream::connect((connect, port)).expect("connect");
        let deadline = Instant::now() + Duration::from_secs(30);
        while reactor.core.connections.is_empty() {
            assert!(
                Instant::now() < deadline,
                "the connection never reached the accept queue"
            );
            reactor.core.accept_ready(reactor.poll.registry(), out).expect("accept");
        }
        let key = reactor
            .core
            .connections
            .iter()
            .map(|(key, _)| key)
            .next()
            .expect("a connection");
        (reactor, client, key)
    }

    /// A transcript into `sink`, framing as the default config does.
    pub(super) fn transcript(sink: &std::sync::Mutex<Vec<u8>>) -> Transcript<'_, Vec<u8>> {
        Transcript::new(
            sink,
            crate::protocol::MAX_READ,
            false,
            false,
            crate::output::Format::Text,
        )
    }

    /// Waits until connection `key`'s socket has at least `n` bytes queued.
    pub(super) fn wait_queued(server: &Reactor, key: usize, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let queued = queued_bytes(&server.core.connections[key].stream).expect("FIONREAD");
            if queued >= n {
                return;
            }
            assert!(Instant::now() < deadline, "only {queued} of {n} bytes arrived");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn one_wakeup_reads_one_block_when_the_budget_is_one_block() {
        // A buffer that rounds down to whole frames (1010 -> 1000) and a
        // budget of the same unrounded size: one read, not a second one for
        // the 10 bytes of budget the rounding left over.
        let config = Config {
            read_buffer: 1010,
            read_budget: 1010,
            ..Config::default()
        };
        let sink = std::sync::Mutex::new(Vec::new());
        let mut out = transcript(&sink);
        let (mut server, mut client, key) = reactor_with_client(config, &mut out);
        client.write_all(&[b'a'; 10_000]).expect("send");
        wait_queued(&server, key, 10_000);
        let budget = server.core.read_budget;
        let close = server.core.read_ready(key, budget, &mut out).expect("read");
        assert!(close.is_none());
        assert_eq!(server.core.stats.bytes, 1000, "bytes read in one wakeup");
        assert_eq!(server.core.stats.frames, 40);
        assert!(
            server.core.connections[key].has(QUEUED),
            "the rest waits in the run queue"
        );
    }
}
