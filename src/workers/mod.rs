//! `--workers N`: past one process's descriptor cap, as nginx's master and
//! workers do. A supervisor process binds the port (one `SO_REUSEPORT`
//! listener per worker, or the one socket systemd passed) and starts N
//! worker processes of the same binary; each is a whole server (one reactor,
//! or `--threads` of them) under its own open-file limit.
//!
//! - **Descriptors**: a worker gets its listener as descriptor 3, a status
//!   pipe as 4 (it says `ready` once it serves, `draining` when it begins
//!   to stop, `done` once its drain is complete and its last counts are
//!   published), the shared memory as 5 (see [`shm`]) and, as 6, a socket
//!   on which the supervisor hands it clients (see [`handoff`]).
//! - **Who gets new clients** (see [`steer`]): the kernel hashes each new
//!   client to one worker's listener, but only over the workers that are
//!   serving: a worker that is dead (waiting for its restart), stopped
//!   (SIGSTOP, which the supervisor learns from `waitid`), starting or
//!   draining gets none, so no new client waits on it; the clients the
//!   kernel had already queued for it are accepted by the supervisor and
//!   handed to the workers that serve. The supervisor keeps the listeners,
//!   so a worker that dies is replaced on the same socket.
//! - **The transcript**: each worker writes whole-line batches to a pipe of
//!   its own; the supervisor passes only whole lines on to its stdout (see
//!   [`merge`]), so no line is split or interleaved, whatever stdout is (a
//!   non-blocking pipe too: a write that would block waits until stdout
//!   takes bytes). The cost: every transcript byte crosses one more pipe. A
//!   slow stdout slows the supervisor, then the workers' pipes fill, then
//!   the workers slow their clients: nothing is lost.
//! - **The cap**: `--max-connections` counts every worker's connections in
//!   shared memory; a client over it gets the `ERR server full` line from
//!   whichever worker accepted it.
//! - **Signals**: the first SIGINT/SIGTERM stops the listeners at once (new
//!   clients are refused; under socket activation the socket is systemd's
//!   and stays open, and newcomers wait in its queue) and is passed to
//!   every worker, which drain (from the signal handler, so even a
//!   supervisor blocked on stdout passes it on); a second is passed on too
//!   and the supervisor exits at once (130/143). A drain still running
//!   `--shutdown-timeout` after the first signal (plus a second of grace)
//!   ends the supervisor with status 1, and the workers with it.
//! - **Failures**: a worker that dies after it was ready is restarted with
//!   backoff (100 ms, doubling to 10 s, back to 100 ms once a worker has
//!   lived 10 s), whatever killed it, and the others serve on; its clients
//!   saw their connections closed, and stderr says how it died and how many
//!   it held. A worker that exits before it is ready (bad arguments, a bind
//!   or limit failure) five times in a row, or with a usage error once,
//!   cannot get going: the supervisor stops.
//! - **Counts**: the summary, `--stats` and the exit status add up every
//!   worker, a dead one's counts up to its last wakeup. A worker that did
//!   not finish its drain (its drain timed out, or it died while draining)
//!   is named, its open connections are counted as not finished, and the
//!   supervisor exits 1.

pub mod handoff;
pub mod merge;
pub mod shm;
pub mod steer;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::config::WorkerShare;
use crate::reactor::Summary;
use crate::reactor::shutdown::{
    EXIT_NOW, Line, arm_timer, exit_if_overdue, force_exit, monotonic_ns, repeat_is_the_same, try_note,
};
use crate::reactor::stats::StatsTimer;
use merge::LineMerger;
use shm::Shm;

/// The most workers one supervisor runs (the signal handler keeps their
/// PIDs in a fixed table).
pub const MAX_WORKERS: usize = 1024;

/// Where a worker finds its listener.
pub const LISTENER_FD: RawFd = 3;
/// Where a worker says how it is doing (`ready`, `draining`, `done`).
pub const STATUS_FD: RawFd = 4;
/// Where a worker finds the shared memory.
pub const SHARED_FD: RawFd = 5;
/// Where a worker receives clients the supervisor hands over.
pub const HANDOFF_FD: RawFd = 6;

/// The token of the supervisor's signal pipe. A worker's transcript pipe
/// is its id; its status pipe, [`STATUS_TOKENS`] plus its id.
const SIGNALS: Token = Token(usize::MAX);
/// Where the status pipes' tokens start.
const STATUS_TOKENS: usize = MAX_WORKERS;
/// Where the handoff sockets' tokens start.
const HANDOFF_TOKENS: usize = 2 * MAX_WORKERS;
/// Bytes read from a worker's pipe at a time.
const READ_CHUNK: usize = 256 * 1024;
/// First pause before restarting a worker that died.
const MIN_RESTART_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause before a restart.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(10);
/// A worker that lived this long resets the backoff.
const HEALTHY_LIFE: Duration = Duration::from_secs(10);
/// Time the supervisor gives the workers past their own drain timeout.
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// Exits before being ready, in a row, after which the supervisor gives
/// up: a worker that cannot start (a broken binary, no descriptors) is no
/// flapping to wait out.
const MAX_EARLY_EXITS: u32 = 5;
/// The status with which a worker says its arguments are wrong (clap's).
const USAGE_ERROR: i32 = 2;
/// How long after handing on a worker's queue the supervisor looks at it
/// once more: a handshake under way when the worker stopped serving
/// completes in far less on any network a client of this server is on.
const RESCUE_AGAIN: Duration = Duration::from_millis(100);

/// What a worker writes on its status pipe once it serves.
pub const READY: &[u8] = b"ready\n";
/// What a worker writes when it begins to drain.
pub const DRAINING: &[u8] = b"draining\n";
/// What a worker writes once its drain is complete and its final counts
/// are published.
pub const DONE: &[u8] = b"done\n";

/// What the supervisor runs.
#[derive(Debug)]
pub struct Plan {
    /// The binary to run as a worker (this one).
    pub program: PathBuf,
    /// The arguments every worker gets, after `--worker-id I
    /// --worker-count N` (so they may end with `-- HOST PORT`).
    pub args: Vec<OsString>,
    /// One listener per worker (bound with `SO_REUSEPORT`, in worker
    /// order), or one that every worker polls.
    pub listeners: Vec<std::net::TcpListener>,
    /// Whether the listeners were bound here (not passed by a service
    /// manager): then they stop listening at the first signal.
    pub owns_listeners: bool,
    /// How many workers.
    pub workers: usize,
    /// Reactors per worker (`--threads`).
    pub threads: usize,
    /// The workers' `--shutdown-timeout`.
    pub shutdown_timeout: Duration,
    /// `--stats`: the supervisor logs the line for all workers.
    pub stats_interval: Option<Duration>,
    /// `--metrics`: the endpoint's listener; the supervisor serves every
    /// worker's counts there.
    pub metrics: Option<std::net::TcpListener>,
    /// The cap over all workers (for the metrics).
    pub max_connections: usize,
    /// Steer each client address to one worker (`--max-per-source`: that
    /// worker counts all its connections), rather than each connection.
    pub steer_by_address: bool,
    /// `--access-file`: the supervisor reads it (again on SIGHUP) and, when
    /// it is good, passes the rules to every worker through the shared
    /// memory; a worker never reads the file itself.
    pub access_file: Option<PathBuf>,
    /// The transcript's first line (`Listening to:`), written once new
    /// clients are steered: a client that reads it is steered too.
    pub first_line: Vec<u8>,
}

/// What the supervisor itself counts, for the metrics thread to read.
#[derive(Debug, Default)]
struct SupervisorStats {
    /// Workers running.
    live: AtomicU64,
    /// Workers started again after they ended.
    restarts: AtomicU64,
    /// Transcript bytes written to stdout.
    out_bytes: AtomicU64,
    /// Lines the supervisor wrote itself (`Listening to:`); the workers'
    /// lines it passes on are counted by the workers (a line is passed on
    /// whole or not at all).
    out_lines: AtomicU64,
    /// Nanoseconds spent writing to stdout.
    out_write_ns: AtomicU64,
    /// When the write to stdout in flight began (monotonic ns; 0: none).
    writing_since_ns: AtomicU64,
}

/// Every worker's counts, for the metrics endpoint: the shared memory
/// (dead workers' counts up to their last wakeup included) and what the
/// supervisor counts itself, stdout's numbers among them (the workers write
/// to the supervisor; the supervisor writes to stdout).
struct SupervisorSource {
    shared: Shm,
    stats: Arc<SupervisorStats>,
    workers: usize,
    threads: usize,
    max_connections: usize,
}

impl crate::metrics::Source for SupervisorSource {
    fn snapshot(&self) -> crate::metrics::Snapshot {
        let (mut totals, _) = self.shared.totals();
        let s = &self.stats;
        totals.out_bytes = s.out_bytes.load(Ordering::Relaxed);
        totals.out_lines += s.out_lines.load(Ordering::Relaxed);
        totals.out_write_ns = s.out_write_ns.load(Ordering::Relaxed);
        let mut open = Vec::new();
        let mut backlog = 0;
        for w in 0..self.workers {
            for (r, slot) in self.shared.published(w).iter().enumerate() {
                open.push((Some(w), r, slot.active()));
                backlog += slot.backlog();
            }
        }
        let since = s.writing_since_ns.load(Ordering::Relaxed);
        crate::metrics::Snapshot {
            totals,
            open,
            max_connections: self.max_connections as u64,
            backlog,
            blocked_for: if since == 0 {
                Duration::ZERO
            } else {
                Duration::from_nanos(monotonic_ns().saturating_sub(since))
            },
            workers: Some(crate::metrics::WorkerCounts {
                live: s.live.load(Ordering::Relaxed),
                restarts: s.restarts.load(Ordering::Relaxed),
            }),
            threads: self.threads,
            processes: self.workers,
        }
    }
}

/// How the workers ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every worker's counts added up (a dead one's up to its last
    /// wakeup).
    pub summary: Summary,
    /// Connections that workers had open when they ended their drain
    /// without finishing it.
    pub unfinished: u64,
    /// The workers that did not finish their drain, and how they ended.
    pub unfinished_workers: Vec<String>,
    /// What stopped the supervisor other than a signal, if anything: the
    /// output failed, or a worker could not get going. The workers were
    /// stopped and drained first.
    pub failure: Option<io::Error>,
}

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Started, not yet serving.
    Starting,
    /// Serving.
    Ready,
    /// Draining (told to stop, or stopping on its own).
    Draining,
    /// Its drain is done and its last counts published.
    Done,
}

/// One worker's slot.
#[derive(Debug)]
struct Worker {
    id: usize,
    /// The running process.
    pid: Option<libc::pid_t>,
    stdout: Option<ChildStdout>,
    status: Option<File>,
    /// Bytes of the status pipe not yet a whole line.
    status_tail: Vec<u8>,
    stage: Stage,
    /// Stopped by SIGSTOP (or another stop signal), not continued yet.
    stopped: bool,
    merger: LineMerger,
    /// Its pipe may hold more than one read took: read again next turn
    /// without waiting for an event (as the reactor's run queue).
    more: bool,
    started: Instant,
    backoff: Duration,
    restart_at: Option<Instant>,
    /// Exits before being ready, in a row.
    early_exits: u32,
    /// Processes started for this slot so far.
    starts: u64,
    /// The supervisor's end of the socket that hands clients to it.
    handoff: Option<OwnedFd>,
    /// When to look once more for clients queued on its listener while it
    /// cannot serve them (a handshake under way when it stopped serving
    /// may complete a moment later).
    rescue_at: Option<Instant>,
}

impl Worker {
    /// Whether new clients may be steered to it.
    fn serving(&self) -> bool {
        self.pid.is_some() && self.stage == Stage::Ready && !self.stopped
    }
}

/// Worker PIDs, for the signal handlers (0: none).
static PIDS: [AtomicI32; MAX_WORKERS] = [const { AtomicI32::new(0) }; MAX_WORKERS];
/// The listeners to stop at the first signal (-1: none).
static LISTENERS: [AtomicI32; MAX_WORKERS] = [const { AtomicI32::new(-1) }; MAX_WORKERS];
/// Set by the first SIGINT or SIGTERM.
static SIGNALLED: AtomicBool = AtomicBool::new(false);
/// When the first came, in monotonic nanoseconds.
static FIRST_AT_NS: AtomicU64 = AtomicU64::new(0);
/// How long the drain may take, in microseconds.
static DRAIN_US: AtomicU64 = AtomicU64::new(0);
/// The shared memory, for the first signal's note.
static SHARED: OnceLock<Shm> = OnceLock::new();

/// Sends `signal` to every worker. Async-signal-safe.
fn signal_workers(signal: i32) {
    for pid in &PIDS {
        let pid = pid.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill has no memory effects. A PID is in the table only
            // while its process is unreaped (it is taken out before the
            // reap), so it is ours.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

/// The listeners stop listening: clients queued on them and new ones are
/// refused (RST), in every process that shares them. Async-signal-safe.
fn stop_listening() {
    for fd in &LISTENERS {
        let fd = fd.swap(-1, Ordering::SeqCst);
        if fd >= 0 {
            // SAFETY: shutdown takes no pointers; the descriptor is one of
            // the plan's listeners, open until `supervise` returns (which
            // empties this table first).
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        }
    }
}

/// The supervisor's signal handlers: on the first SIGINT/SIGTERM stop the
/// listeners and pass it on to the workers; exit at once on the second;
/// exit 1 when the drain outlives its bound.
fn install_handlers(drain: Duration) -> io::Result<()> {
    use signal_hook::consts::{SIGALRM, SIGINT, SIGTERM};
    DRAIN_US.store(
        u64::try_from((drain + DRAIN_GRACE).as_micros()).unwrap_or(u64::MAX),
        Ordering::SeqCst,
    );
    for (signal, note) in [
        (
            SIGINT,
            &b"simple_tcp_server: second SIGINT: workers told, exiting at once\n"[..],
        ),
        (
            SIGTERM,
            &b"simple_tcp_server: second SIGTERM: workers told, exiting at once\n"[..],
        ),
    ] {
        let action = move || {
            if SIGNALLED.swap(true, Ordering::SeqCst) {
                // The same signal delivered twice (to this process and its
                // group, as `timeout` does) is one.
                if repeat_is_the_same(FIRST_AT_NS.load(Ordering::SeqCst)) {
                    return;
                }
                // The workers' own "at once": a repeated SIGINT/SIGTERM only
                // drains a worker (it may get each one twice).
                signal_workers(EXIT_NOW);
                try_note(note);
                force_exit(128 + signal);
                return;
            }
            FIRST_AT_NS.store(monotonic_ns(), Ordering::SeqCst);
            stop_listening();
            signal_workers(libc::SIGTERM);
            arm_timer(DRAIN_US.load(Ordering::SeqCst));
            if let Some(shared) = SHARED.get() {
                crate::reactor::shutdown::note_stopping(signal, shared.totals_now().1);
            }
        };
        // SAFETY: the action calls only `clock_gettime`, `shutdown`, `kill`,
        // `setitimer`, `poll`, `write` and `_exit`, and touches only
        // atomics and a buffer on its stack: async-signal-safe.
        unsafe { signal_hook::low_level::register(signal, action) }?;
    }
    let on_alarm = || {
        exit_if_overdue();
        if SIGNALLED.load(Ordering::SeqCst) {
            let mut line = Line::new();
            line.push(b"simple_tcp_server: the workers' drain took longer than --shutdown-timeout; exiting");
            if let Some(shared) = SHARED.get() {
                // What is known without the loop (which may be blocked on
                // stdout): the counts the workers last published.
                let (total, open) = shared.totals_now();
                line.push(b" with ");
                line.push_decimal(open);
                line.push(b" connections not finished; summary so far: ");
                line.push_decimal(total.accepted);
                line.push(b" connections, ");
                line.push_decimal(total.frames);
                line.push(b" frames, ");
                line.push_decimal(total.bytes);
                line.push(b" bytes");
            }
            line.push(b"; still draining:");
            for pid in &PIDS {
                let pid = pid.load(Ordering::SeqCst);
                if pid > 0 {
                    line.push(b" pid ");
                    line.push_decimal(pid as u64);
                }
            }
            line.push(b"\n");
            try_note(line.as_bytes());
            signal_workers(libc::SIGKILL);
            force_exit(1);
        }
    };
    // SAFETY: as above.
    unsafe { signal_hook::low_level::register(SIGALRM, on_alarm) }?;
    Ok(())
}

/// Runs the workers until SIGINT/SIGTERM, passing their transcripts to
/// `out` (after the plan's first line);
/// returns how they ended. When `out` can no longer be written, or a
/// worker cannot get going (it exits before it is ready again and again,
/// or says its arguments are wrong), every worker is stopped and drained,
/// and the outcome says what failed. An error only when the supervisor
/// itself cannot go on.
pub fn supervise(plan: Plan, out: File) -> io::Result<Outcome> {
    if plan.workers == 0 || plan.workers > MAX_WORKERS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("--workers must be 1 to {MAX_WORKERS}"),
        ));
    }
    let (shared, shared_fd) = Shm::create(plan.workers, plan.threads.max(1))?;
    if let Some(path) = &plan.access_file {
        // Read (and found good) by the caller already; read once more here,
        // so that the workers get exactly the text in force.
        let text = crate::rules::read_good(path).map_err(io::Error::other)?;
        shared.set_rules(&text)?;
    }
    let _ = SHARED.set(shared);
    if plan.owns_listeners {
        for (slot, listener) in LISTENERS.iter().zip(&plan.listeners) {
            slot.store(listener.as_raw_fd(), Ordering::SeqCst);
        }
    }
    install_handlers(plan.shutdown_timeout)?;
    let mut plan = plan;
    let stats = Arc::new(SupervisorStats::default());
    if let Some(listener) = plan.metrics.take() {
        let source = SupervisorSource {
            shared,
            stats: Arc::clone(&stats),
            workers: plan.workers,
            threads: plan.threads.max(1),
            max_connections: plan.max_connections,
        };
        crate::metrics::http::spawn(listener, Arc::new(source))?;
    }
    let mut supervisor = Supervisor::new(&plan, shared, shared_fd, out, stats)?;
    // Steered from the first client on, before any worker starts and before
    // anyone reads the address.
    supervisor.steer();
    write_counted(&mut supervisor.out, &plan.first_line, &supervisor.counts)
        .map_err(crate::output::OutputError::wrap)?;
    supervisor.counts.out_lines.fetch_add(1, Ordering::Relaxed);
    let result = supervisor.run();
    // The listeners close when the plan is dropped: no handler may touch
    // their descriptors after this.
    for slot in &LISTENERS {
        slot.store(-1, Ordering::SeqCst);
    }
    if result.is_ok() {
        arm_timer(0);
    }
    result
}

/// The supervisor's state.
struct Supervisor<'p> {
    plan: &'p Plan,
    shared: Shm,
    shared_fd: OwnedFd,
    out: File,
    poll: Poll,
    signals: signal_hook_mio::v1_0::Signals,
    workers: Vec<Worker>,
    buf: Vec<u8>,
    lines: Vec<u8>,
    stopping: bool,
    told: bool,
    announced_ready: bool,
    /// The workers new clients are steered to (`None`: not steered yet).
    steered: Option<Vec<usize>>,
    /// The output failed: the workers' lines are read and dropped.
    out_broken: bool,
    stats: Option<StatsTimer>,
    /// What the supervisor counts for the metrics.
    counts: Arc<SupervisorStats>,
    outcome: Outcome,
}

impl<'p> Supervisor<'p> {
    fn new(
        plan: &'p Plan,
        shared: Shm,
        shared_fd: OwnedFd,
        out: File,
        counts: Arc<SupervisorStats>,
    ) -> io::Result<Supervisor<'p>> {
        let poll = Poll::new()?;
        let mut signals =
            signal_hook_mio::v1_0::Signals::new([libc::SIGINT, libc::SIGTERM, libc::SIGCHLD, libc::SIGHUP])?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let now = Instant::now();
        let workers = (0..plan.workers)
            .map(|id| Worker {
                id,
                pid: None,
                stdout: None,
                status: None,
                status_tail: Vec::new(),
                stage: Stage::Starting,
                stopped: false,
                merger: LineMerger::default(),
                more: false,
                started: now,
                backoff: MIN_RESTART_BACKOFF,
                restart_at: Some(now),
                early_exits: 0,
                starts: 0,
                handoff: None,
                rescue_at: None,
            })
            .collect();
        Ok(Supervisor {
            plan,
            shared,
            shared_fd,
            out,
            poll,
            signals,
            workers,
            buf: vec![0u8; READ_CHUNK],
            lines: Vec::with_capacity(READ_CHUNK),
            stopping: false,
            told: false,
            announced_ready: false,
            steered: None,
            out_broken: false,
            stats: plan.stats_interval.map(|every| StatsTimer::new(every, now)),
            counts,
            outcome: Outcome::default(),
        })
    }

    /// The loop: start workers that are due, pass transcripts on, follow
    /// the workers' lives, until every worker has ended after a stop.
    fn run(&mut self) -> io::Result<Outcome> {
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            if !self.stopping {
                self.start_due(now);
            }
            if self.stopping && self.workers.iter().all(|w| w.pid.is_none() && w.stdout.is_none()) {
                break;
            }
            let timeout = if self.workers.iter().any(|w| w.more) {
                Some(Duration::ZERO)
            } else {
                let restart = self
                    .workers
                    .iter()
                    .filter(|_| !self.stopping)
                    .filter_map(|w| w.restart_at)
                    .min();
                let stats = self.stats.as_ref().map(|s| s.next);
                let rescue = self.workers.iter().filter_map(|w| w.rescue_at).min();
                restart
                    .into_iter()
                    .chain(stats)
                    .chain(rescue)
                    .min()
                    .map(|at| at.saturating_duration_since(now))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut children = false;
            for event in events.iter() {
                match event.token() {
                    SIGNALS => {
                        for signal in self.signals.pending() {
                            match signal {
                                libc::SIGCHLD => children = true,
                                libc::SIGHUP if self.plan.access_file.is_some() => self.reload_rules(),
                                libc::SIGHUP => info!("SIGHUP: no --access-file to read again"),
                                _ if !self.stopping => {
                                    info!("signal {signal}: stopping the workers");
                                    self.stopping = true;
                                }
                                _ => {}
                            }
                        }
                    }
                    Token(t) if (HANDOFF_TOKENS..HANDOFF_TOKENS + MAX_WORKERS).contains(&t) => {
                        self.pass_clients_on(t - HANDOFF_TOKENS);
                    }
                    Token(t) if t >= STATUS_TOKENS => {
                        if let Some(id) = t.checked_sub(STATUS_TOKENS) {
                            self.read_status(id);
                        }
                    }
                    Token(id) => {
                        if let Some(worker) = self.workers.get_mut(id) {
                            worker.more = true;
                        }
                    }
                }
            }
            if self.stopping && !self.told {
                self.tell_stop();
            }
            if self.stopping && self.outcome.failure.is_some() {
                // Stopping after a failure: nothing may start again.
                self.workers.iter_mut().for_each(|w| w.restart_at = None);
            }
            // One read per worker per turn, so that one flooding worker
            // cannot hold the others' lines, the reaping or the stop back.
            for i in 0..self.workers.len() {
                if self.workers[i].more {
                    self.workers[i].more = self.pass_chunk(i);
                }
            }
            if children {
                self.children()?;
            }
            self.steer();
            for i in 0..self.workers.len() {
                if self.workers[i].rescue_at.is_some_and(|at| at <= Instant::now()) {
                    self.rescue(i);
                }
            }
            if !self.announced_ready && self.workers.iter().all(|w| w.stage == Stage::Ready) {
                self.announced_ready = true;
                crate::notify::ready();
            }
            self.log_stats(now);
        }
        let mut outcome = std::mem::take(&mut self.outcome);
        for worker in &self.workers {
            outcome.summary.add(&self.shared.retired(worker.id));
        }
        Ok(outcome)
    }

    /// SIGHUP: reads the access file again; when it is good, passes its
    /// rules to every worker (through the shared memory, then SIGHUP); else
    /// the rules in force stay, and the workers are not told.
    fn reload_rules(&mut self) {
        let Some(path) = &self.plan.access_file else { return };
        match crate::rules::read_good(path) {
            Ok(text) => match self.shared.set_rules(&text) {
                Ok(()) => {
                    info!(
                        "SIGHUP: {} read again; telling every worker (each says when the rules are in force)",
                        path.display()
                    );
                    signal_workers(libc::SIGHUP);
                }
                Err(e) => warn!("SIGHUP: {}: {e}; the rules in force stay", path.display()),
            },
            Err(e) => warn!("SIGHUP: {e}; the rules in force stay"),
        }
    }

    /// Starts the workers whose (re)start is due.
    fn start_due(&mut self, now: Instant) {
        for i in 0..self.workers.len() {
            if self.workers[i].restart_at.is_some_and(|at| at <= now) {
                self.workers[i].restart_at = None;
                if let Err(e) = self.spawn(i) {
                    // As an exit before being ready: it did not get going.
                    let worker = &mut self.workers[i];
                    worker.early_exits += 1;
                    if worker.early_exits >= MAX_EARLY_EXITS {
                        let e = io::Error::other(format!(
                            "worker {} cannot get going: it cannot be started ({e}), {} times in a row",
                            worker.id, worker.early_exits
                        ));
                        self.give_up(e);
                        return;
                    }
                    warn!(
                        "worker {}: cannot start: {e}; retrying in {:?}",
                        worker.id, worker.backoff
                    );
                    worker.restart_at = Some(now + worker.backoff);
                    worker.backoff = (worker.backoff * 2).min(MAX_RESTART_BACKOFF);
                }
            }
        }
    }

    /// Tells every worker to stop (once): the signal handler did, unless
    /// the supervisor stops for another reason; from here too, in case a
    /// worker started after the handler ran.
    fn tell_stop(&mut self) {
        self.told = true;
        if !SIGNALLED.swap(true, Ordering::SeqCst) {
            // Stopping for another reason than a signal (a failure).
            FIRST_AT_NS.store(monotonic_ns(), Ordering::SeqCst);
            stop_listening();
        }
        // A repeat only drains a worker.
        signal_workers(libc::SIGTERM);
        crate::notify::stopping();
    }

    /// Nothing more can be done (the output failed, or a worker cannot get
    /// going): every worker is stopped and drained, then the supervisor
    /// ends with `e`.
    fn give_up(&mut self, e: io::Error) {
        if crate::output::OutputError::of(&e).is_none() {
            error!("{e}; stopping every worker");
        }
        if self.outcome.failure.is_none() {
            self.outcome.failure = Some(e);
        }
        self.stopping = true;
    }

    /// Starts worker `i`: this very binary (`/proc/self/exe`, which stays
    /// valid when the file on disk is replaced or removed).
    fn spawn(&mut self, i: usize) -> io::Result<()> {
        let plan = self.plan;
        let id = self.workers[i].id;
        let listener = if plan.listeners.len() == 1 {
            &plan.listeners[0]
        } else {
            &plan.listeners[id]
        };
        let (status_read, status_write) = std::io::pipe()?;
        let (handoff, worker_handoff) = handoff::pair()?;
        let fds = [
            listener.as_raw_fd(),
            status_write.as_raw_fd(),
            self.shared_fd.as_raw_fd(),
            worker_handoff.as_raw_fd(),
        ];
        let supervisor = std::process::id() as libc::pid_t;
        let mut command = Command::new("/proc/self/exe");
        // The worker's own options first: the user's may end with `-- HOST PORT`.
        command
            .arg0(&plan.program)
            .arg("--worker-id")
            .arg(id.to_string())
            .arg("--worker-count")
            .arg(plan.workers.to_string())
            .args(&plan.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: between fork and exec the closure calls only `sigprocmask`
        // and its set's helpers, `prctl`, `getppid`, `fcntl` and `dup2`
        // (async-signal-safe) on descriptors the supervisor holds open for
        // the whole spawn, and allocates nothing.
        unsafe { command.pre_exec(move || place_fds(&fds, supervisor)) };
        let mut child = command.spawn()?;
        drop(status_write);
        drop(worker_handoff);
        let pid = child.id() as libc::pid_t;
        let registry = self.poll.registry();
        let watched = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout pipe"))
            .and_then(|stdout| {
                set_nonblocking(stdout.as_raw_fd())?;
                registry.register(&mut SourceFd(&stdout.as_raw_fd()), Token(id), Interest::READABLE)?;
                let status = File::from(OwnedFd::from(status_read));
                set_nonblocking(status.as_raw_fd())?;
                registry.register(
                    &mut SourceFd(&status.as_raw_fd()),
                    Token(STATUS_TOKENS + id),
                    Interest::READABLE,
                )?;
                registry.register(
                    &mut SourceFd(&handoff.as_raw_fd()),
                    Token(HANDOFF_TOKENS + id),
                    Interest::READABLE,
                )?;
                Ok((stdout, status))
            });
        let (stdout, status) = match watched {
            Ok(pipes) => pipes,
            Err(e) => {
                // A worker the supervisor cannot watch must not run untracked.
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        // The process is followed by its PID from here (`waitid`), not by
        // `child`, which never waits for it.
        drop(child);
        PIDS[id].store(pid, Ordering::SeqCst);
        // A signal that came while this worker was starting must reach it too.
        if SIGNALLED.load(Ordering::SeqCst) {
            // SAFETY: kill has no memory effects; the child is ours, unreaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        info!("worker {id} started (pid {pid})");
        self.counts.live.fetch_add(1, Ordering::Relaxed);
        if self.workers[i].starts > 0 {
            self.counts.restarts.fetch_add(1, Ordering::Relaxed);
        }
        self.workers[i].starts += 1;
        let worker = &mut self.workers[i];
        worker.pid = Some(pid);
        worker.stdout = Some(stdout);
        worker.status = Some(status);
        worker.handoff = Some(handoff);
        worker.status_tail.clear();
        worker.stage = Stage::Starting;
        worker.stopped = false;
        worker.started = Instant::now();
        worker.more = false;
        Ok(())
    }

    /// Reads what worker `id` says on its status pipe.
    fn read_status(&mut self, id: usize) {
        let Some(worker) = self.workers.get_mut(id) else { return };
        let Some(status) = worker.status.as_mut() else { return };
        let mut chunk = [0u8; 64];
        loop {
            match status.read(&mut chunk) {
                Ok(0) => {
                    let _ = self.poll.registry().deregister(&mut SourceFd(&status.as_raw_fd()));
                    worker.status = None;
                    break;
                }
                Ok(n) => worker.status_tail.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    warn!("worker {id}: reading its status: {e}");
                    let _ = self.poll.registry().deregister(&mut SourceFd(&status.as_raw_fd()));
                    worker.status = None;
                    break;
                }
            }
        }
        let mut ready = None;
        while let Some(end) = worker.status_tail.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = worker.status_tail.drain(..=end).collect();
            worker.stage = match &line[..] {
                READY if worker.stage == Stage::Starting => {
                    ready = Some(worker.pid.unwrap_or(0));
                    Stage::Ready
                }
                DRAINING if worker.stage != Stage::Done => {
                    debug!("worker {id} is draining");
                    worker.rescue_at = Some(Instant::now());
                    Stage::Draining
                }
                DONE => Stage::Done,
                _ => worker.stage,
            };
        }
        if let Some(pid) = ready {
            // New clients go to it before it is said to be ready: whoever
            // reads the line may count on it.
            self.steer();
            info!("worker {id} is ready (pid {pid})");
        }
    }

    /// Reads once from worker `i`'s pipe and passes its whole lines on (or,
    /// once the output has failed, drops them). `true` when the pipe may
    /// hold more (the read filled the buffer); at end of file the pipe is
    /// dropped.
    fn pass_chunk(&mut self, i: usize) -> bool {
        let worker = &mut self.workers[i];
        let Some(stdout) = worker.stdout.as_mut() else {
            return false;
        };
        loop {
            match stdout.read(&mut self.buf) {
                Ok(0) => {
                    let _ = self.poll.registry().deregister(&mut SourceFd(&stdout.as_raw_fd()));
                    worker.stdout = None;
                    if worker.merger.unfinished() > 0 {
                        warn!(
                            "worker {}: its transcript ended inside a line ({} bytes dropped, so that no line is split)",
                            worker.id,
                            worker.merger.unfinished()
                        );
                        worker.merger.clear();
                    }
                    return false;
                }
                Ok(n) => {
                    self.lines.clear();
                    worker.merger.push(&self.buf[..n], &mut self.lines);
                    if !self.lines.is_empty()
                        && !self.out_broken
                        && let Err(e) = write_counted(&mut self.out, &self.lines, &self.counts)
                    {
                        // Nothing more can be printed: the workers are
                        // stopped, and what they still write is dropped.
                        self.out_broken = true;
                        self.give_up(crate::output::OutputError::wrap(e));
                    }
                    return n == self.buf.len();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("worker {}: reading its transcript: {e}", worker.id);
                    let _ = self.poll.registry().deregister(&mut SourceFd(&stdout.as_raw_fd()));
                    worker.stdout = None;
                    return false;
                }
            }
        }
    }

    /// Follows what `waitid` says of the workers: stopped, continued, or
    /// ended (then reaped). `Err` only when `waitid` itself fails.
    fn children(&mut self) -> io::Result<()> {
        // Stops and continues, each acted on as the call that consumes it
        // reports it.
        while let Some((pid, code, status)) = wait_child(libc::P_ALL, 0, libc::WSTOPPED | libc::WCONTINUED)? {
            let Some(i) = self.workers.iter().position(|w| w.pid == Some(pid)) else {
                continue;
            };
            match code {
                libc::CLD_STOPPED => {
                    self.workers[i].stopped = true;
                    // Steered away, and its queue handed on, before it is
                    // said.
                    self.steer();
                    self.rescue(i);
                    let others = if self.workers.iter().any(Worker::serving) {
                        "new clients go to the others until it continues"
                    } else {
                        "no other worker serves: new clients wait for one"
                    };
                    warn!(
                        "worker {i} (pid {pid}) was stopped by {}: {others}",
                        signal_name(status)
                    );
                }
                libc::CLD_CONTINUED => {
                    info!("worker {i} (pid {pid}) continues");
                    self.workers[i].stopped = false;
                }
                // Traced by someone: nothing to follow.
                _ => {}
            }
        }
        // Ends: looked at first without reaping, so that the PID leaves the
        // signal handlers' table while it is still ours (a zombie).
        while let Some((pid, _, _)) = wait_child(libc::P_ALL, 0, libc::WEXITED | libc::WNOWAIT)? {
            let index = self.workers.iter().position(|w| w.pid == Some(pid));
            if let Some(i) = index {
                PIDS[self.workers[i].id].store(0, Ordering::SeqCst);
            }
            let Some((_, code, status)) = wait_child(libc::P_PID, pid as libc::id_t, libc::WEXITED)? else {
                continue;
            };
            if let Some(i) = index {
                self.reap(i, pid, code, status);
            }
        }
        Ok(())
    }

    /// Worker `i` (`pid`) has ended (`code`, `status` as `waitid` said):
    /// passes on the rest of its transcript, retires its counts, gives back
    /// its connections' slots, and (unless stopping) schedules its restart,
    /// or gives up on a worker that cannot get going.
    fn reap(&mut self, i: usize, pid: libc::pid_t, code: i32, status: i32) {
        let id = self.workers[i].id;
        // Everything it wrote before it ended is in its pipes; the writers
        // are gone, so reading to the end terminates.
        if let Some(stdout) = self.workers[i].stdout.as_ref() {
            let fd = stdout.as_raw_fd();
            // SAFETY: F_GETFL/F_SETFL on the pipe we own.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            // SAFETY: as above.
            unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) };
            while self.workers[i].stdout.is_some() {
                self.pass_chunk(i);
            }
        }
        self.workers[i].more = false;
        if let Some(status) = self.workers[i].status.as_ref() {
            let fd = status.as_raw_fd();
            // SAFETY: as above, on the status pipe.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            // SAFETY: as above.
            unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) };
            while self.workers[i].status.is_some() {
                self.read_status(id);
            }
        }
        self.workers[i].pid = None;
        self.counts.live.fetch_sub(1, Ordering::Relaxed);
        let how = describe_end(code, status);
        let open = self.shared.open_of(id);
        let worker = &mut self.workers[i];
        let lived = worker.started.elapsed();
        let stage = worker.stage;
        if self.stopping {
            // A worker still starting when the stop came had no client yet:
            // nothing of it was left unfinished.
            if stage == Stage::Done || (stage == Stage::Starting && open == 0) {
                self.shared.retire(id, false, 0);
                debug!("worker {id} (pid {pid}) {how} at the stop");
            } else {
                // Those it had open when it ended were open at the stop, and
                // not finished.
                self.shared.retire(id, false, open);
                let what = format!(
                    "worker {id} (pid {pid}) {how} before finishing its drain, {open} connection{} open",
                    if open == 1 { "" } else { "s" }
                );
                warn!("{what}; its counts are those of its last wakeup");
                self.outcome.unfinished += open;
                self.outcome.unfinished_workers.push(what);
            }
            return;
        }
        // A death: its connections died with it (the kernel closed them).
        self.shared.retire(id, true, 0);
        self.workers[i].handoff = None;
        self.steer();
        self.rescue(i);
        let worker = &mut self.workers[i];
        if stage == Stage::Starting {
            worker.early_exits += 1;
            if (code == libc::CLD_EXITED && status == USAGE_ERROR) || worker.early_exits >= MAX_EARLY_EXITS {
                let e = io::Error::other(format!(
                    "worker {id} cannot get going: it {how} before it was ready, {} time{} in a row",
                    worker.early_exits,
                    if worker.early_exits == 1 { "" } else { "s" }
                ));
                self.give_up(e);
                return;
            }
        } else {
            worker.early_exits = 0;
        }
        if stage == Stage::Done && code == libc::CLD_EXITED && status == 0 {
            // Told to stop on its own (a signal to it alone), and drained:
            // no failure, no backoff.
            info!("worker {id} (pid {pid}) drained and exited after {lived:.1?}; starting it again");
            worker.backoff = MIN_RESTART_BACKOFF;
            worker.restart_at = Some(Instant::now());
            return;
        }
        if lived >= HEALTHY_LIFE {
            worker.backoff = MIN_RESTART_BACKOFF;
        }
        warn!(
            "worker {id} (pid {pid}) {how} after {lived:.1?}{}; {open} connection{} closed with it; restarting it in {:?}",
            if stage == Stage::Starting {
                ", before it was ready"
            } else {
                ""
            },
            if open == 1 { " was" } else { "s were" },
            worker.backoff
        );
        worker.restart_at = Some(Instant::now() + worker.backoff);
        worker.backoff = (worker.backoff * 2).min(MAX_RESTART_BACKOFF);
    }

    /// Points new clients at the workers that serve, when that set has
    /// changed (one listener per worker only: a shared listener is polled
    /// by every worker, so a missing one strands nobody).
    fn steer(&mut self) {
        // Once stopping (or signalled: the listeners may be shut down
        // already), nobody gets new clients.
        if self.plan.listeners.len() < 2 || self.stopping || SIGNALLED.load(Ordering::SeqCst) {
            return;
        }
        let mut serving: Vec<usize> = self.workers.iter().filter(|w| w.serving()).map(|w| w.id).collect();
        if self.plan.steer_by_address || serving.is_empty() {
            // By address, an address always goes to the same worker (which
            // counts all its connections), so the spread covers every
            // worker, serving or not: the queue of one that cannot serve
            // is handed on (see `rescue`) for as long as it cannot.
            // Nobody serving: the kernel's own spread, so that clients
            // wait for whichever worker comes back first.
            serving = self.workers.iter().map(|w| w.id).collect();
        }
        if self.steered.as_ref() == Some(&serving) {
            return;
        }
        // Who serves has changed: the queues of those who do not are looked
        // at again (clients that found nobody to go to before may now).
        let now = Instant::now();
        for worker in self.workers.iter_mut().filter(|w| !w.serving()) {
            worker.rescue_at = Some(worker.rescue_at.map_or(now, |at| at.min(now)));
        }
        match steer::steer(&self.plan.listeners[0], &serving, self.plan.steer_by_address) {
            Ok(()) => {
                debug!("new clients go to workers {serving:?}");
                self.steered = Some(serving);
            }
            Err(e) => {
                if self.steered.is_none() {
                    warn!("cannot steer new clients away from stopped or dead workers: {e}");
                }
                self.steered = Some(serving);
            }
        }
    }

    /// Worker `i` cannot serve (stopped, dead, draining): accepts the
    /// clients the kernel queued on its listener before new ones were
    /// steered away, and hands them to the workers that serve, in turn;
    /// then looks once more a moment later, for a handshake that was under
    /// way (one listener per worker only, and not while stopping).
    fn rescue(&mut self, i: usize) {
        let again = self.workers[i].rescue_at.take().is_none();
        // A worker that is starting serves its queue in a moment; one that
        // is stopped, draining, or dead and waiting to restart does not.
        let worker = &self.workers[i];
        let cannot = worker.stopped || worker.pid.is_none() || worker.stage == Stage::Draining;
        if self.plan.listeners.len() < 2 || self.stopping || SIGNALLED.load(Ordering::SeqCst) || !cannot {
            return;
        }
        let id = self.workers[i].id;
        let targets: Vec<usize> = (0..self.workers.len())
            .filter(|&t| t != i && self.workers[t].serving() && self.workers[t].handoff.is_some())
            .collect();
        if targets.is_empty() {
            // Nobody can take them now: looked at again when someone can
            // (see `steer`), or when this worker serves again.
            return;
        }
        let listener = &self.plan.listeners[id];
        let (mut handed, mut dropped, mut next) = (0, 0, 0);
        loop {
            let mut batch = Vec::with_capacity(handoff::PER_MESSAGE);
            while batch.len() < handoff::PER_MESSAGE {
                match listener.accept() {
                    Ok((stream, _)) => batch.push(stream),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        debug!("worker {id}'s listener: accept: {e}");
                        break;
                    }
                }
            }
            if batch.is_empty() {
                break;
            }
            let fds: Vec<RawFd> = batch.iter().map(AsRawFd::as_raw_fd).collect();
            // To the workers that serve, in turn; the next one if one's
            // queue is full.
            let taker = (0..targets.len()).map(|k| (next + k) % targets.len()).find(|&k| {
                self.workers[targets[k]]
                    .handoff
                    .as_ref()
                    .is_some_and(|socket| handoff::send(socket, &fds, &handoff::Handed::Queued).is_ok())
            });
            match taker {
                Some(k) => {
                    handed += batch.len();
                    next = (k + 1) % targets.len();
                }
                None => dropped += batch.len(),
            }
            // The supervisor's copies close here; a worker has its own.
            let full = batch.len() == handoff::PER_MESSAGE;
            drop(batch);
            if !full {
                break;
            }
        }
        if handed > 0 {
            info!("{handed} clients queued for worker {id} were handed to the others");
        }
        if dropped > 0 {
            warn!("{dropped} clients queued for worker {id} could not be handed over and were closed");
        }
        // By address, new clients keep coming to this worker's queue while
        // it cannot serve: look again and again.
        if again || self.plan.steer_by_address {
            self.workers[i].rescue_at = Some(Instant::now() + RESCUE_AGAIN);
        }
    }

    /// Worker `i` passes clients on: each to the worker it names (the one
    /// that counts the client's address), or back to `i` when that one is
    /// dead or stopped.
    fn pass_clients_on(&mut self, i: usize) {
        let Some(socket) = self.workers[i].handoff.as_ref() else {
            return;
        };
        let mut messages = Vec::new();
        if let Err(e) = handoff::receive(socket, &mut messages) {
            warn!("worker {i}: receiving clients to pass on: {e}");
        }
        for message in messages {
            let handoff::Handed::Client { to, .. } = message.what else {
                continue;
            };
            let fds: Vec<RawFd> = message.fds.iter().map(AsRawFd::as_raw_fd).collect();
            // A worker starting takes it once it runs; one dead or stopped
            // does not, and the sender serves it then (counted there).
            let sent = [to, i].into_iter().find(|&t| {
                self.workers.get(t).is_some_and(|w| {
                    (t == i || (w.pid.is_some() && !w.stopped))
                        && w.handoff
                            .as_ref()
                            .is_some_and(|s| handoff::send(s, &fds, &message.what).is_ok())
                })
            });
            if sent.is_none() {
                warn!("worker {i}: a client for worker {to} could not be passed on; closed");
            }
        }
    }

    /// Logs the `--stats` line for all workers, when it is due.
    fn log_stats(&mut self, now: Instant) {
        let Some(timer) = self.stats.as_mut() else { return };
        if timer.next > now {
            return;
        }
        let (total, active) = self.shared.totals();
        let mut spread = String::from(" | per worker");
        for worker in &self.workers {
            let _ = write!(spread, " {}", self.shared.open_of(worker.id));
        }
        info!("{}", timer.line(now, total, active, &spread));
    }
}

/// Writes `lines` to `out` (see [`crate::output::write_all_waiting`]),
/// counting them, and saying while it writes since when.
fn write_counted(out: &mut File, lines: &[u8], counts: &SupervisorStats) -> io::Result<()> {
    let started = monotonic_ns();
    counts.writing_since_ns.store(started, Ordering::Relaxed);
    let result = crate::output::write_all_waiting(out, lines);
    counts.writing_since_ns.store(0, Ordering::Relaxed);
    counts
        .out_write_ns
        .fetch_add(monotonic_ns().saturating_sub(started), Ordering::Relaxed);
    if result.is_ok() {
        counts.out_bytes.fetch_add(lines.len() as u64, Ordering::Relaxed);
    }
    result
}

/// One `waitid` for a child's change of state among `flags` (`WEXITED`,
/// `WSTOPPED`, `WCONTINUED`, `WNOWAIT`), without blocking: `(pid, code,
/// status)`, or `None` when no child has changed so.
fn wait_child(
    which: libc::idtype_t,
    id: libc::id_t,
    flags: libc::c_int,
) -> io::Result<Option<(libc::pid_t, i32, i32)>> {
    loop {
        // SAFETY: an all-zero siginfo_t is valid (waitid fills it).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes one siginfo_t through a pointer to a live
        // local.
        if unsafe { libc::waitid(which, id, &mut info, flags | libc::WNOHANG) } != 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECHILD) => return Ok(None),
                _ => return Err(e),
            }
        }
        // SAFETY: waitid filled `info` for a child's change of state (or
        // left si_pid zero: none).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        return Ok(Some((pid, info.si_code, status)));
    }
}

/// How a process ended, as `waitid` said, in words.
fn describe_end(code: i32, status: i32) -> String {
    match code {
        libc::CLD_EXITED => format!("exited with status {status}"),
        libc::CLD_DUMPED => format!("was killed by {} (core dumped)", signal_name(status)),
        _ => format!("was killed by {}", signal_name(status)),
    }
}

/// A signal's name, as `kill -l` spells it (with SIG).
fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

/// Puts the listener, the status pipe, the shared memory and the handoff
/// socket at descriptors 3 to 6 of the child (copies first, so that no
/// source is overwritten before it is copied), and ties the child's life to
/// the supervisor's.
/// Runs between fork and exec.
fn place_fds(fds: &[RawFd; 4], supervisor: libc::pid_t) -> io::Result<()> {
    // SIGINT, SIGTERM and SIGHUP wait (blocked) until the worker has
    // installed its handlers, which unblock them: a stop that comes while
    // it starts drains it, and a reload reloads it, instead of killing it.
    // SAFETY: sigemptyset, sigaddset and sigprocmask work on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // A worker outlives no supervisor: if it goes, the worker drains.
    // SAFETY: prctl sets a flag of this process; no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // The supervisor may have died before the flag was set.
    // SAFETY: getppid has no arguments.
    if unsafe { libc::getppid() } != supervisor {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    let mut high = [0; 4];
    for (i, &fd) in fds.iter().enumerate() {
        // SAFETY: F_DUPFD_CLOEXEC copies an open descriptor to one >= 10.
        high[i] = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        if high[i] < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    for (i, &fd) in high.iter().enumerate() {
        // SAFETY: dup2 onto 3 to 6; the copy is not close-on-exec.
        if unsafe { libc::dup2(fd, LISTENER_FD + i as RawFd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A worker's side: the listener, status pipe, shared memory and handoff
/// socket its supervisor put at descriptors 3 to 6.
#[derive(Debug)]
pub struct WorkerSide {
    /// The listener to serve (shared with the supervisor, which keeps it
    /// for the worker's replacement).
    pub listener: std::net::TcpListener,
    /// What the worker shares with the supervisor and the other workers
    /// (`cap_binding` still to be decided by the caller).
    pub share: WorkerShare,
    /// Where the worker says how it is doing.
    status: File,
    /// The memory it shares with the supervisor (the access rules).
    shared: Shm,
    /// Where the supervisor hands it clients (`share.handoff` is its
    /// descriptor, which the reactor polls: kept open here).
    _handoff: OwnedFd,
}

impl WorkerSide {
    /// Takes descriptors 3 to 6 as worker `id` of `count`, each with
    /// `reactors` reactors.
    ///
    /// # Safety
    ///
    /// Descriptors 3 to 6 must be the ones a supervisor passed (a listening
    /// TCP socket, the write end of a pipe, the shared memory file, a Unix
    /// socket) and belong to nothing else in the process: call it once, at
    /// start, before anything else opens files.
    pub unsafe fn take(id: usize, count: usize, reactors: usize) -> io::Result<WorkerSide> {
        if id >= count || count > MAX_WORKERS {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad worker id"));
        }
        for fd in [LISTENER_FD, STATUS_FD, SHARED_FD, HANDOFF_FD] {
            // SAFETY: F_GETFD only reads the descriptor's flags.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("descriptor {fd} is not open: --worker-id is for the supervisor's workers only"),
                ));
            }
        }
        // SAFETY: the caller promises these are the supervisor's descriptors
        // (checked open above; the listener's kind is checked below) and
        // that nothing else in this process owns them.
        let (listener, status, shared, handoff) = unsafe {
            (
                OwnedFd::from_raw_fd(LISTENER_FD),
                OwnedFd::from_raw_fd(STATUS_FD),
                OwnedFd::from_raw_fd(SHARED_FD),
                OwnedFd::from_raw_fd(HANDOFF_FD),
            )
        };
        let socket = socket2::Socket::from(listener);
        if socket.r#type()? != socket2::Type::STREAM || !socket.is_listener()? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "descriptor 3 is not a listening TCP socket",
            ));
        }
        socket.set_nonblocking(true)?;
        let shared = Shm::open(&shared, count, reactors)?;
        Ok(WorkerSide {
            listener: socket.into(),
            share: WorkerShare {
                open: shared.slots(),
                id,
                cap_binding: true,
                published: shared.published(id),
                handoff: Some(handoff.as_raw_fd()),
            },
            status: File::from(status),
            shared,
            _handoff: handoff,
        })
    }

    /// The access rules the supervisor passes on (the text of the access
    /// file it last found good; empty without one).
    pub fn access_rules(&self) -> Vec<u8> {
        self.shared.rules()
    }

    /// Where to read those rules again (on SIGHUP), from another thread.
    pub fn rules_source(&self) -> Box<dyn Fn() -> Vec<u8> + Send> {
        let shared = self.shared;
        Box::new(move || shared.rules())
    }

    /// A handle on the status pipe, to say `draining` from the reactor that
    /// begins the stop.
    pub fn status_pipe(&self) -> io::Result<File> {
        self.status.try_clone()
    }

    /// Tells the supervisor `what` ([`READY`], [`DRAINING`], [`DONE`]).
    pub fn say(&self, what: &[u8]) -> io::Result<()> {
        (&self.status).write_all(what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_are_described_in_words() {
        assert_eq!(describe_end(libc::CLD_EXITED, 1), "exited with status 1");
        assert_eq!(describe_end(libc::CLD_KILLED, libc::SIGKILL), "was killed by SIGKILL");
        assert_eq!(
            describe_end(libc::CLD_DUMPED, libc::SIGSEGV),
            "was killed by SIGSEGV (core dumped)"
        );
        assert_eq!(signal_name(64), "signal 64");
    }
}
