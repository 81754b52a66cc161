//! N reactors, one server: [`Server`] builds the reactors (one by default,
//! run on the caller's thread; `--threads N` runs N, each on its own thread
//! with its own poll, slab, read buffer and accept path), starts and stops
//! them together, and adds their counts into one [`Summary`].
//!
//! What the reactors share is off the per-message path: the stop flag and
//! their wakers, the count of open connections that the global
//! `--max-connections` cap is checked against (touched once per accept and
//! close), counters each publishes once per wakeup when `--stats` is on
//! (each in its own cache line), and the output sink (a lock per write of a
//! whole batch of lines).
//!
//! How clients reach the reactors: with listeners of their own
//! ([`Server::from_listeners`], bound with `SO_REUSEPORT`, as nginx's
//! `reuseport`), the kernel spreads new connections over them by a hash of
//! the addresses; with one listener ([`Server::from_listener`], e.g. a
//! socket-activated one), every reactor polls it and the first to accept a
//! client gets it. Either way a client stays on one reactor for its life,
//! so its frames stay in order. Because the kernel's spread is even only
//! on average, a reactor with more clients than another hands new ones over
//! before serving them (see [`super::balance`]).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use log::{debug, error, info};

use super::balance::{Balance, Client};
use super::stats::{Published, Summary};
use super::{Reactor, STOP, shutdown};
use crate::config::{Config, WorkerShare};
use crate::output::{OutputError, Transcript};

/// Greetings longer than this are refused (the sent count is a `u32`).
pub const MAX_GREETING: usize = 1 << 30;

/// Stops a running server from another thread (or a signal handler: it
/// only stores a flag and writes to each reactor's eventfd).
#[derive(Debug, Clone)]
pub struct Stopper(Arc<Shared>);

impl Stopper {
    /// Asks the server to stop: every reactor stops accepting, prints what
    /// it has received, and `run` returns.
    pub fn stop(&self) -> io::Result<()> {
        self.0.stop_all()
    }

    /// Connections open now, on all reactors.
    pub fn open(&self) -> usize {
        self.0.open.load(Ordering::Relaxed)
    }
}

/// A reactor's stop signal: an eventfd registered with its poll. Written
/// from a signal handler, so it is a plain `write` of a counter, nothing
/// more (mio's `Waker` is the same on Linux, but does not promise it).
#[derive(Debug)]
pub(super) struct StopFd(std::os::fd::OwnedFd);

impl StopFd {
    fn new() -> io::Result<StopFd> {
        // SAFETY: eventfd takes no pointers; the descriptor is ours.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(StopFd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// Resets the counter after a wakeup.
    fn clear(&self) {
        let mut count = [0u8; 8];
        // SAFETY: read writes at most 8 bytes into a live local.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
    }

    /// Wakes the reactor. Async-signal-safe.
    fn wake(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: write reads 8 bytes from a live local. A full counter
        // (EAGAIN) already wakes the poll, so that is no error.
        let n = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if n == 8 || io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Events that are logged once per burst (the first of a burst), and
/// counted: a burst ends after [`Burst::QUIET`] without one.
#[derive(Debug, Default)]
pub(super) struct Burst {
    /// Events in the current burst.
    count: AtomicU64,
    /// When the last one came, in milliseconds since the server's start,
    /// plus one (0: never).
    last_ms: AtomicU64,
}

impl Burst {
    /// Quiet time that ends a burst.
    const QUIET: Duration = Duration::from_secs(1);

    /// Notes one event at `now_ms`. When it starts a new burst, returns how
    /// many events the previous burst had (0 for the first burst), so the
    /// caller logs it; else `None`.
    fn note_at(&self, now_ms: u64) -> Option<u64> {
        let last = self.last_ms.swap(now_ms + 1, Ordering::Relaxed);
        if last == 0 || (now_ms + 1).saturating_sub(last) >= Burst::QUIET.as_millis() as u64 {
            let before = self.count.swap(1, Ordering::Relaxed);
            Some(if last == 0 { 0 } else { before })
        } else {
            self.count.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The connections each client address holds, for `--max-per-source`:
/// shards of address counts, so that reactors accepting at once seldom
/// wait on each other (touched once per accept and close, never per
/// message).
#[derive(Debug)]
pub(super) struct PerSource {
    /// The most one address may hold.
    max: u32,
    shards: Box<[Mutex<std::collections::HashMap<std::net::IpAddr, u32>>]>,
}

impl PerSource {
    /// Shards: a power of two well above the reactor counts people run.
    const SHARDS: usize = 64;

    fn new(max: u32) -> PerSource {
        PerSource {
            max,
            shards: (0..Self::SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// The shard that holds `ip`'s count, locked.
    fn shard(
        &self,
        ip: std::net::IpAddr,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, u32>> {
        use std::hash::{Hash, Hasher};
        // Fixed keys: an address's shard never changes.
        let mut h = std::hash::DefaultHasher::new();
        ip.hash(&mut h);
        let i = h.finish() as usize % self.shards.len();
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one more connection from `ip`, if it holds fewer than the
    /// most.
    pub(super) fn take(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        let mut shard = self.shard(ip);
        let held = shard.entry(ip).or_insert(0);
        if *held >= self.max {
            return false;
        }
        *held += 1;
        true
    }

    /// A connection from `ip` counted by [`PerSource::take`] has closed.
    pub(super) fn release(&self, ip: std::net::IpAddr) {
        let ip = ip.to_canonical();
        let mut shard = self.shard(ip);
        if let Some(held) = shard.get_mut(&ip) {
            *held -= 1;
            if *held == 0 {
                shard.remove(&ip);
            }
        }
    }
}

/// What to do once when the server begins to stop.
#[derive(Default)]
struct StopHook(Mutex<Option<Box<dyn FnOnce() + Send>>>);

impl std::fmt::Debug for StopHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StopHook")
    }
}

/// What the reactors share.
#[derive(Debug)]
pub(super) struct Shared {
    /// Raised to stop every reactor; each looks at it when its waker fires.
    pub(super) stop: AtomicBool,
    /// Connections open on all reactors together.
    pub(super) open: AtomicUsize,
    /// With `--workers`: what this worker shares with the others (their
    /// open counts, which the cap is checked against instead of `open`).
    worker: Option<WorkerShare>,
    /// The cap on `open`.
    pub(super) max_connections: usize,
    /// Clients turned away at the cap since the server last had room (for
    /// one log line per burst).
    pub(super) full_rejects: AtomicU64,
    /// Reactors whose accepts are paused for a shortage of descriptors (for
    /// one log line per shortage).
    pub(super) short_reactors: AtomicUsize,
    /// Clients denied by `--allow`/`--deny`, for logging per burst.
    pub(super) denied_burst: Burst,
    /// Connections from outside `--proxy-from`, for logging per burst.
    pub(super) untrusted_burst: Burst,
    /// Connections without a valid PROXY header (or none in time), for
    /// logging per burst.
    pub(super) proxy_burst: Burst,
    /// Clients over `--max-per-source`, for logging per burst.
    pub(super) per_source_burst: Burst,
    /// `--max-per-source`'s counts.
    pub(super) per_source: Option<PerSource>,
    /// `--allow`/`--deny`, which [`AccessRules`] may replace while the
    /// server runs.
    access: std::sync::RwLock<Arc<super::access::Access>>,
    /// Raised at each replacement: a reactor takes the new rules when it
    /// sees it change (one load per accept).
    pub(super) access_generation: AtomicU64,
    /// The server's start, the clock of the bursts.
    epoch: Instant,
    /// Called once when the server begins to stop (systemd's STOPPING=1).
    on_stop: StopHook,
    /// Each reactor's eventfd, by reactor id: it wakes the reactor to stop,
    /// or to take the clients handed to it.
    wakers: Vec<StopFd>,
    /// How many clients each reactor serves, and the clients handed over.
    pub(super) balance: Balance,
    /// Each reactor's counters, when `--stats` (or a worker's supervisor)
    /// wants them.
    published: Slots,
    /// Whether reactors publish their counters.
    publishing: bool,
}

impl Shared {
    /// Takes a slot under the cap, if one is free.
    #[inline]
    pub(super) fn try_open(&self) -> bool {
        let Some(worker) = self.worker else {
            if self.open.fetch_add(1, Ordering::Relaxed) >= self.max_connections {
                self.open.fetch_sub(1, Ordering::Relaxed);
                return false;
            }
            return true;
        };
        if !worker.take(self.max_connections) {
            return false;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Gives back a slot taken by [`Shared::try_open`], for a client that
    /// reactor `id` served (or was to serve).
    #[inline]
    pub(super) fn release(&self, id: usize) {
        self.balance.closed(id);
        self.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(worker) = self.worker {
            worker.release();
        }
    }

    /// Raises the stop flag and wakes every reactor. Async-signal-safe: an
    /// atomic store and a `write` per reactor.
    pub(super) fn stop_all(&self) -> io::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let mut result = Ok(());
        for waker in &self.wakers {
            if let Err(e) = waker.wake() {
                result = Err(e);
            }
        }
        result
    }

    /// Reactor `id` was woken: reset its eventfd.
    pub(super) fn woken(&self, id: usize) {
        self.wakers[id].clear();
    }

    /// Places `client`, just accepted by reactor `id`, with the reactor
    /// that [`Balance::place`] chooses: another one gets it in its inbox
    /// and is woken. Returns the client when `id` is to serve it (chosen,
    /// or the other takes no more).
    pub(super) fn place(&self, id: usize, client: Client) -> Option<Client> {
        let to = self.balance.place(id);
        if to == id {
            return Some(client);
        }
        if let Err(client) = self.balance.hand_over(id, to, client) {
            return Some(client);
        }
        if let Err(e) = self.wakers[to].wake() {
            // Not expected of an eventfd; the client is served at that
            // reactor's next wakeup.
            debug!("waking reactor {to}: {e}");
        }
        None
    }

    /// Reactor `id` has ended without serving the clients handed to it (it
    /// never started, or its output failed): they are closed.
    fn abandon(&self, id: usize) {
        for (_, peer) in self.balance.close(id) {
            debug!("{peer}: handed to reactor {id}, which has ended; closed");
            self.release(id);
        }
    }

    /// The access rules in force now.
    pub(super) fn access(&self) -> Arc<super::access::Access> {
        Arc::clone(&self.access.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether reactors publish their counters (somebody reads them).
    #[inline]
    pub(super) fn publishing(&self) -> bool {
        self.publishing
    }

    /// Reactor `id` publishes its counters, its open connections and its
    /// output's backlog (relaxed stores into its own cache lines).
    #[inline]
    pub(super) fn publish(&self, id: usize, stats: &Summary, active: usize, backlog: usize) {
        let slot = &self.published[id];
        slot.store(stats, active as u64);
        slot.writing(0, backlog as u64);
    }

    /// Reactor `id` publishes its counters and open connections only.
    pub(super) fn publish_counts(&self, id: usize, stats: &Summary, active: usize) {
        if self.publishing {
            self.published[id].store(stats, active as u64);
        }
    }

    /// Reactor `id`'s slot, for its transcript to say when a write is in
    /// flight; `None` when nobody reads it.
    pub(super) fn watch_slot(&self, id: usize) -> Option<&Published> {
        self.publishing.then(|| &self.published[id])
    }

    /// Runs the stop hook, if there is one and it has not run.
    pub(super) fn stopping(&self) {
        let hook = self.on_stop.0.lock().ok().and_then(|mut hook| hook.take());
        if let Some(hook) = hook {
            hook();
        }
    }

    /// Notes one event of `burst` at `now`; `Some(previous burst's count)`
    /// when this one starts a burst and should be logged.
    pub(super) fn note(&self, burst: &Burst, now: Instant) -> Option<u64> {
        burst.note_at(now.saturating_duration_since(self.epoch).as_millis() as u64)
    }

    /// The connections each reactor had open when it last published.
    pub(super) fn actives(&self) -> impl Iterator<Item = u64> + '_ {
        self.published.iter().map(Published::active)
    }

    /// Every reactor's published counters added up, and the connections
    /// they have open.
    pub(super) fn totals(&self) -> (Summary, u64) {
        let mut total = Summary::default();
        let mut active = 0;
        for p in self.published.iter() {
            total.add(&p.load());
            active += p.active();
        }
        (total, active)
    }
}

/// Where the reactors publish their counters: memory of their own, or a
/// worker's slots in the memory its supervisor reads.
#[derive(Debug)]
enum Slots {
    Own(Box<[Published]>),
    Shared(&'static [Published]),
}

impl std::ops::Deref for Slots {
    type Target = [Published];

    fn deref(&self) -> &[Published] {
        match self {
            Slots::Own(slots) => slots,
            Slots::Shared(slots) => slots,
        }
    }
}

/// The server: its reactors and what they share.
pub struct Server {
    /// Reactor 0 runs on the caller's thread, the others on their own.
    reactors: Vec<Reactor>,
    /// Stop flag, wakers, the global cap's count, published counters.
    shared: Arc<Shared>,
    /// The address the server listens on.
    local_addr: SocketAddr,
    /// SIGINT/SIGTERM stop this server (see [`Server::stop_on_signals`]).
    exits_on_signals: bool,
    /// Bytes per frame, escaping and tags, for the transcripts.
    config: Config,
}

impl Server {
    /// Binds `addr` and prepares a server with `config`: one listener per
    /// reactor, on `SO_REUSEPORT`, when `config.threads` is more than one.
    pub fn bind(addr: SocketAddr, config: Config) -> io::Result<Server> {
        let listeners = crate::listen::listen_many(addr, config.backlog, config.threads.max(1))?;
        Server::from_listeners(listeners, config)
    }

    /// A server on an already bound, listening socket (tests and benches
    /// bind port 0 and pass it in; systemd passes one too). With several
    /// reactors, all of them poll this one listener.
    pub fn from_listener(listener: std::net::TcpListener, config: Config) -> io::Result<Server> {
        Server::from_listeners(vec![listener], config)
    }

    /// A server with `config.threads` reactors on `listeners`: one each
    /// when there are as many listeners as reactors (bound to one address
    /// with `SO_REUSEPORT`), else every reactor polls every listener...
    /// which, for simplicity, is allowed only with a single listener.
    pub fn from_listeners(listeners: Vec<std::net::TcpListener>, config: Config) -> io::Result<Server> {
        if config.greeting.len() > MAX_GREETING {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "greeting too long"));
        }
        let threads = config.threads.max(1);
        if listeners.is_empty() || (listeners.len() != 1 && listeners.len() != threads) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} listeners for {threads} reactors: give one, or one per reactor",
                    listeners.len()
                ),
            ));
        }
        let local_addr = listeners[0].local_addr()?;
        for listener in &listeners {
            listener.set_nonblocking(true)?;
        }
        let max_connections = config
            .max_connections
            .unwrap_or_else(crate::limits::default_max_connections)
            .max(1);
        // The wakers must exist before `Shared` (which holds them) and the
        // reactors (which hold `Shared`): make the polls first.
        let mut polls = Vec::with_capacity(threads);
        let mut wakers = Vec::with_capacity(threads);
        for _ in 0..threads {
            let poll = mio::Poll::new()?;
            let waker = StopFd::new()?;
            poll.registry().register(
                &mut mio::unix::SourceFd(&waker.0.as_raw_fd()),
                STOP,
                mio::Interest::READABLE,
            )?;
            wakers.push(waker);
            polls.push(poll);
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            worker: config.worker,
            max_connections,
            full_rejects: AtomicU64::new(0),
            short_reactors: AtomicUsize::new(0),
            denied_burst: Burst::default(),
            untrusted_burst: Burst::default(),
            proxy_burst: Burst::default(),
            per_source_burst: Burst::default(),
            per_source: config.max_per_source.map(PerSource::new),
            access: std::sync::RwLock::new(Arc::new(super::access::Access::new(
                config.allow.clone(),
                config.deny.clone(),
            ))),
            access_generation: AtomicU64::new(0),
            epoch: Instant::now(),
            on_stop: StopHook::default(),
            wakers,
            balance: Balance::new(threads),
            published: match config.worker {
                Some(worker) if worker.published.len() == threads => Slots::Shared(worker.published),
                Some(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "the worker's shared memory has no slot for every reactor",
                    ));
                }
                None => Slots::Own((0..threads).map(|_| Published::default()).collect()),
            },
            publishing: config.stats_interval.is_some() || config.worker.is_some() || config.publish_counters,
        });
        if let Some(fd) = config.worker.and_then(|w| w.handoff) {
            // Clients handed over by the supervisor come to reactor 0, which
            // places them like the ones it accepts.
            polls[0]
                .registry()
                .register(&mut mio::unix::SourceFd(&fd), super::HANDOFF, mio::Interest::READABLE)?;
        }
        let mut reactors = Vec::with_capacity(threads);
        for (id, poll) in polls.into_iter().enumerate() {
            let listener = if listeners.len() == 1 {
                listeners[0].try_clone()?
            } else {
                listeners[id].try_clone()?
            };
            reactors.push(Reactor::new(id, poll, listener, config.clone(), Arc::clone(&shared))?);
        }
        Ok(Server {
            reactors,
            shared,
            local_addr,
            exits_on_signals: false,
            config,
        })
    }

    /// The reactors, for tests that drive a loop's steps themselves.
    #[cfg(test)]
    pub(super) fn into_reactors(self) -> Vec<Reactor> {
        self.reactors
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The connection cap in force, over all reactors.
    pub fn max_connections(&self) -> usize {
        self.shared.max_connections
    }

    /// How many reactors (threads) serve.
    pub fn threads(&self) -> usize {
        self.reactors.len()
    }

    /// A handle that replaces the access rules while the server runs.
    pub fn access_rules(&self) -> AccessRules {
        AccessRules(Arc::clone(&self.shared))
    }

    /// What the metrics endpoint reads: the counters every reactor
    /// publishes (with `Config::publish_counters`; else they stay zero).
    pub fn metrics_source(&self) -> std::sync::Arc<dyn crate::metrics::Source> {
        std::sync::Arc::new(MetricsSource(Arc::clone(&self.shared)))
    }

    /// A handle that stops the server from another thread.
    pub fn stopper(&mut self) -> io::Result<Stopper> {
        Ok(Stopper(Arc::clone(&self.shared)))
    }

    /// Stops the server cleanly on SIGINT and SIGTERM, as a process should:
    /// the first signal drains every reactor (stop accepting, print what was
    /// received, flush); a second one ends the process at once (exit 130 or
    /// 143); a drain that takes longer than the config's `shutdown_timeout`
    /// ends it with status 1. Only for the process's one server: the exits
    /// end the whole process.
    pub fn stop_on_signals(&mut self) -> io::Result<()> {
        self.stop_on_signals_as(shutdown::Exits::OnSecondSignal)
    }

    /// [`Server::stop_on_signals`] for a worker of `--workers`: a repeated
    /// SIGINT/SIGTERM only drains, and SIGUSR2 (the supervisor's second
    /// signal) exits at once.
    pub fn stop_on_signals_as(&mut self, exits: shutdown::Exits) -> io::Result<()> {
        shutdown::install(self.config.shutdown_timeout, Stopper(Arc::clone(&self.shared)), exits)?;
        self.exits_on_signals = true;
        Ok(())
    }

    /// Calls `hook` once, on a reactor's thread, when the server begins to
    /// stop (for systemd's `STOPPING=1`).
    pub fn on_stop(&mut self, hook: impl FnOnce() + Send + 'static) {
        if let Ok(mut slot) = self.shared.on_stop.0.lock() {
            *slot = Some(Box::new(hook));
        }
    }

    /// Runs every reactor, printing the transcript to `out`, until stopped.
    ///
    /// Returns the counts of all reactors added up. An error when `out` can
    /// no longer be written (every reactor then stops), or when every
    /// reactor has failed (a failing poll, a broken listener); one reactor's
    /// failure alone is logged, its connections are closed, and the others
    /// go on serving.
    pub fn run<W: Write + Send>(self, out: W) -> io::Result<Summary> {
        let Server {
            reactors,
            shared,
            local_addr,
            exits_on_signals,
            config,
        } = self;
        let sink = Mutex::new(out);
        let transcript = || Transcript::new(&sink, config.max_read, config.raw, config.tag, config.format);
        let mut first = transcript();
        // Every reactor's thread is up before `Listening to:` is printed (a
        // client that reads it finds them all), and none prints before it.
        let gate = Gate::default();
        let results: Vec<io::Result<Ended>> =
            std::thread::scope(|scope| {
                let mut reactors = reactors.into_iter();
                let reactor0 = reactors.next();
                let mut handles = Vec::new();
                for reactor in reactors {
                    let id = reactor.core.id;
                    let shared = &shared;
                    let transcript = &transcript;
                    let gate = &gate;
                    let spawned =
                        std::thread::Builder::new()
                            .name(format!("reactor-{id}"))
                            .spawn_scoped(scope, move || {
                                gate.wait();
                                let _ending = Ending(shared, id);
                                let mut out = transcript();
                                if let Some(slot) = shared.watch_slot(id) {
                                    out.watch(slot);
                                }
                                let result = reactor.run(&mut out);
                                end_of_reactor(shared, &result);
                                result
                            });
                    match spawned {
                        Ok(handle) => handles.push(handle),
                        // Its listener closes with it; the others serve.
                        Err(e) => {
                            error!("cannot start reactor {id}: {e}; serving with fewer threads");
                            shared.abandon(id);
                        }
                    }
                }
                if config.announce {
                    first.listening(local_addr);
                }
                let printed = first.flush();
                if printed.is_err() {
                    let _ = shared.stop_all();
                }
                gate.open();
                let mut results = Vec::with_capacity(handles.len() + 1);
                if let Err(e) = printed {
                    // Reactor 0 never runs: the others must not hand it
                    // clients.
                    shared.abandon(0);
                    results.push(Err(e));
                } else if let Some(reactor) = reactor0 {
                    let _ending = Ending(&shared, reactor.core.id);
                    if let Some(slot) = shared.watch_slot(reactor.core.id) {
                        first.watch(slot);
                    }
                    let result = reactor.run(&mut first);
                    end_of_reactor(&shared, &result);
                    results.push(result);
                }
                for handle in handles {
                    results.push(handle.join().unwrap_or_else(|_| {
                        Ok((Summary::default(), Some(io::Error::other("a reactor thread panicked"))))
                    }));
                }
                results
            });
        if exits_on_signals {
            shutdown::drained();
        }
        let reactors = results.len();
        let mut total = Summary::default();
        let mut failures = Vec::new();
        for result in results {
            let (summary, failure) = result?;
            total.add(&summary);
            failures.extend(failure);
        }
        // One reactor's failure was logged and the others served on; only
        // when every reactor failed did the server fail.
        if !failures.is_empty() && failures.len() == reactors {
            return Err(failures.swap_remove(0));
        }
        Ok(total)
    }
}

/// Replaces a running server's `--allow`/`--deny` rules: established
/// clients stay, new ones (and PROXY headers completed from now on) meet
/// the new rules.
#[derive(Debug, Clone)]
pub struct AccessRules(Arc<Shared>);

impl AccessRules {
    /// From now on, only `allow` may connect (everyone, when empty), and
    /// never `deny`.
    pub fn set(&self, allow: Vec<ipnet::IpNet>, deny: Vec<ipnet::IpNet>) {
        let rules = Arc::new(super::access::Access::new(allow, deny));
        *self.0.access.write().unwrap_or_else(|e| e.into_inner()) = rules;
        self.0.access_generation.fetch_add(1, Ordering::Release);
    }
}

/// The counters of one server's reactors, for the metrics endpoint.
struct MetricsSource(Arc<Shared>);

impl crate::metrics::Source for MetricsSource {
    fn snapshot(&self) -> crate::metrics::Snapshot {
        let shared = &self.0;
        let now = shutdown::monotonic_ns();
        let mut snapshot = crate::metrics::Snapshot {
            max_connections: shared.max_connections as u64,
            threads: shared.published.len(),
            processes: 1,
            ..crate::metrics::Snapshot::default()
        };
        for (id, slot) in shared.published.iter().enumerate() {
            snapshot.totals.add(&slot.load());
            snapshot.open.push((None, id, slot.active()));
            snapshot.backlog += slot.backlog();
            if let Some(since) = slot.writing_since_ns() {
                snapshot.blocked_for = snapshot
                    .blocked_for
                    .max(Duration::from_nanos(now.saturating_sub(since)));
            }
        }
        snapshot
    }
}

/// Holds the reactor threads back until `Listening to:` is printed.
#[derive(Debug, Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while !*open {
            open = self.opened.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn open(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.opened.notify_all();
    }
}

/// How a reactor ended: its counts, and the error that ended it early, if
/// one did (a failing poll, a broken listener). `Err` is the output's.
pub(super) type Ended = (Summary, Option<io::Error>);

/// Closes a reactor's inbox when it ends, however it ends (a panic too):
/// clients placed with it afterwards stay with the reactor that accepted
/// them, and any it had not taken are closed.
struct Ending<'a>(&'a Shared, usize);

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        self.0.abandon(self.1);
    }
}

/// A reactor has ended: if it was the output that failed, stop the others
/// too (they cannot print either).
fn end_of_reactor(shared: &Shared, result: &io::Result<Ended>) {
    if let Err(e) = result
        && OutputError::of(e).is_some()
    {
        info!("the transcript cannot be written: stopping every reactor");
        let _ = shared.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_are_logged_once_and_counted() {
        let burst = Burst::default();
        assert_eq!(burst.note_at(0), Some(0), "the first event starts a burst");
        for ms in 1..100 {
            assert_eq!(burst.note_at(ms * 5), None, "events within a second of each other");
        }
        // A second of quiet, then a new burst reports the last one's size.
        assert_eq!(burst.note_at(495 + 1000), Some(100));
        assert_eq!(burst.note_at(1500), None);
    }
}
