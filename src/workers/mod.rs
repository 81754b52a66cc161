//! `--workers N`: past one process's descriptor cap, as nginx's master and
//! workers do. A supervisor process binds the port (one `SO_REUSEPORT`
//! listener per worker, or the one socket systemd passed) and starts N
//! worker processes of the same binary; each is a whole server (one reactor,
//! or `--threads` of them) under its own open-file limit.
//!
//! - **Descriptors**: a worker gets its listener as descriptor 3, a status
//!   pipe as 4 (its summary, written at exit) and the shared counters as 5
//!   (see [`shm`]). The supervisor keeps the listeners, so a worker that
//!   dies is replaced on the same socket and no connection is refused.
//! - **The transcript**: each worker writes whole-line batches to a pipe of
//!   its own; the supervisor passes only whole lines on to its stdout (see
//!   [`merge`]), so no line is split or interleaved, whatever stdout is. The
//!   cost: every transcript byte crosses one more pipe, read and written
//!   once more by the supervisor. A slow stdout slows the supervisor, then
//!   the workers' pipes fill, then the workers slow their clients: nothing
//!   is lost.
//! - **The cap**: `--max-connections` counts every worker's connections in
//!   shared memory; a client over it gets the `ERR server full` line from
//!   whichever worker accepted it.
//! - **Signals**: the first SIGINT/SIGTERM is passed to every worker (from
//!   the signal handler, so even a supervisor blocked on stdout passes it
//!   on), which drain; a second is passed on too and the supervisor exits
//!   at once (130/143). A drain still running `--shutdown-timeout` after
//!   the first signal (plus a second of grace) ends the supervisor with
//!   status 1, and the workers with it.
//! - **Failures**: a worker that dies is restarted with backoff (100 ms,
//!   doubling to 10 s, back to 100 ms once a worker has lived 10 s), and
//!   logged; its clients saw their connections closed. The summary adds up
//!   the workers' own summaries.

pub mod merge;
pub mod shm;

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::config::SharedCount;
use crate::reactor::Summary;
use crate::reactor::shutdown::{EXIT_NOW, Line, arm_timer, monotonic_ns, repeat_is_the_same, try_note};
use merge::LineMerger;
use shm::Counters;

/// The most workers one supervisor runs (the signal handler keeps their
/// PIDs in a fixed table).
pub const MAX_WORKERS: usize = 1024;

/// Where a worker finds its listener.
pub const LISTENER_FD: RawFd = 3;
/// Where a worker writes its summary when it exits.
pub const STATUS_FD: RawFd = 4;
/// Where a worker finds the shared counters.
pub const COUNTERS_FD: RawFd = 5;

/// The token of the supervisor's signal pipe (workers' pipes are their ids).
const SIGNALS: Token = Token(usize::MAX);
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

/// What the supervisor runs.
#[derive(Debug)]
pub struct Plan {
    /// The binary to run as a worker (this one).
    pub program: PathBuf,
    /// The arguments every worker gets, after `--worker-id I
    /// --worker-count N` (so they may end with `-- HOST PORT`).
    pub args: Vec<OsString>,
    /// One listener per worker (bound with `SO_REUSEPORT`), or one that
    /// every worker polls.
    pub listeners: Vec<std::net::TcpListener>,
    /// How many workers.
    pub workers: usize,
    /// The workers' `--shutdown-timeout`.
    pub shutdown_timeout: Duration,
}

/// One worker's slot.
#[derive(Debug)]
struct Worker {
    id: usize,
    child: Option<Child>,
    stdout: Option<ChildStdout>,
    status: Option<File>,
    merger: LineMerger,
    /// Its pipe may hold more than one read took: read again next turn
    /// without waiting for an event (as the reactor's run queue).
    more: bool,
    started: Instant,
    backoff: Duration,
    restart_at: Option<Instant>,
    /// Exits in a row within [`QUICK_EXIT`] of starting.
    quick_exits: u32,
}

/// A worker that exits this soon after it started did not get going.
const QUICK_EXIT: Duration = Duration::from_secs(1);
/// Quick exits in a row after which the supervisor gives up: a worker that
/// cannot start (bad arguments, a broken binary) is no flapping to wait out.
const MAX_QUICK_EXITS: u32 = 5;
/// The status with which a worker says its arguments are wrong (clap's).
const USAGE_ERROR: i32 = 2;

/// Worker PIDs, for the signal handlers (0: none).
static PIDS: [AtomicI32; MAX_WORKERS] = [const { AtomicI32::new(0) }; MAX_WORKERS];
/// Set by the first SIGINT or SIGTERM.
static SIGNALLED: AtomicBool = AtomicBool::new(false);
/// When the first came, in monotonic nanoseconds.
static FIRST_AT_NS: AtomicU64 = AtomicU64::new(0);
/// Counts the handler's forwards, so that a reap can tell whether one ran
/// while a PID was out of the table.
static FORWARDS: AtomicU64 = AtomicU64::new(0);
/// How long the drain may take, in microseconds.
static DRAIN_US: AtomicU64 = AtomicU64::new(0);

/// Sends `signal` to every worker. Async-signal-safe.
fn signal_workers(signal: i32) {
    for pid in &PIDS {
        let pid = pid.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill has no memory effects. A PID is in the table only
            // while its process is unreaped (it is taken out before each
            // reap and put back if the child still runs), so it is ours.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

/// The supervisor's signal handlers: pass SIGINT/SIGTERM on to the workers;
/// exit at once on the second; exit 1 when the drain outlives its bound.
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
                signal_hook::low_level::exit(128 + signal);
            }
            FIRST_AT_NS.store(monotonic_ns(), Ordering::SeqCst);
            FORWARDS.fetch_add(1, Ordering::SeqCst);
            signal_workers(libc::SIGTERM);
            arm_timer(DRAIN_US.load(Ordering::SeqCst));
        };
        // SAFETY: the action calls only `clock_gettime`, `kill`,
        // `setitimer`, `poll`, `write` and `_exit` and touches only atomics:
        // async-signal-safe.
        unsafe { signal_hook::low_level::register(signal, action) }?;
    }
    let on_alarm = || {
        if SIGNALLED.load(Ordering::SeqCst) {
            let mut line = Line::new();
            line.push(b"simple_tcp_server: the workers' drain took longer than --shutdown-timeout; exiting\n");
            try_note(line.as_bytes());
            signal_workers(libc::SIGKILL);
            signal_hook::low_level::exit(1);
        }
    };
    // SAFETY: as above.
    unsafe { signal_hook::low_level::register(SIGALRM, on_alarm) }?;
    Ok(())
}

/// Runs the workers until SIGINT/SIGTERM, passing their transcripts to
/// `out`; returns their summaries added up. An error when `out` can no
/// longer be written (the workers are then stopped), when a worker cannot
/// get going (it exits at once, again and again, or says its arguments are
/// wrong), or when the supervisor itself cannot go on.
pub fn supervise(plan: Plan, mut out: File) -> io::Result<Summary> {
    if plan.workers == 0 || plan.workers > MAX_WORKERS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("--workers must be 1 to {MAX_WORKERS}"),
        ));
    }
    install_handlers(plan.shutdown_timeout)?;
    let mut poll = Poll::new()?;
    let mut signals = signal_hook_mio::v1_0::Signals::new([libc::SIGINT, libc::SIGTERM, libc::SIGCHLD])?;
    poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
    let (counters, counters_fd) = Counters::create(plan.workers)?;
    let now = Instant::now();
    let mut workers: Vec<Worker> = (0..plan.workers)
        .map(|id| Worker {
            id,
            child: None,
            stdout: None,
            status: None,
            merger: LineMerger::default(),
            more: false,
            started: now,
            backoff: MIN_RESTART_BACKOFF,
            restart_at: Some(now),
            quick_exits: 0,
        })
        .collect();
    let mut events = Events::with_capacity(256);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut lines = Vec::with_capacity(READ_CHUNK);
    let mut total = Summary::default();
    let mut stopping = false;
    let mut announced_ready = false;
    let mut told = false;
    let mut failure: Option<io::Error> = None;
    loop {
        let now = Instant::now();
        if !stopping {
            for worker in workers.iter_mut() {
                if worker.restart_at.is_some_and(|at| at <= now) {
                    worker.restart_at = None;
                    if let Err(e) = spawn(&plan, worker, &counters_fd, poll.registry()) {
                        warn!(
                            "worker {}: cannot start: {e}; retrying in {:?}",
                            worker.id, worker.backoff
                        );
                        worker.restart_at = Some(now + worker.backoff);
                        worker.backoff = (worker.backoff * 2).min(MAX_RESTART_BACKOFF);
                    }
                }
            }
            if !announced_ready && workers.iter().all(|w| w.child.is_some()) {
                announced_ready = true;
                if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                    warn!("cannot notify systemd (READY=1): {e}");
                }
            }
        }
        if stopping && workers.iter().all(|w| w.child.is_none() && w.stdout.is_none()) {
            break;
        }
        let timeout = if workers.iter().any(|w| w.more) {
            Some(Duration::ZERO)
        } else if stopping {
            None
        } else {
            workers
                .iter()
                .filter_map(|w| w.restart_at)
                .min()
                .map(|at| at.saturating_duration_since(now))
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut reap = false;
        for event in events.iter() {
            if event.token() == SIGNALS {
                for signal in signals.pending() {
                    match signal {
                        libc::SIGCHLD => reap = true,
                        _ if !stopping => {
                            info!("signal {signal}: stopping the workers");
                            stopping = true;
                        }
                        _ => {}
                    }
                }
            } else if let Some(worker) = workers.get_mut(event.token().0) {
                worker.more = true;
            }
        }
        if stopping && !told {
            told = true;
            if !SIGNALLED.swap(true, Ordering::SeqCst) {
                // Stopping for another reason than a signal (a failure).
                FIRST_AT_NS.store(monotonic_ns(), Ordering::SeqCst);
            }
            // From here too (a repeat only drains a worker), in case the
            // signal handler found a worker's PID out of its table.
            signal_workers(libc::SIGTERM);
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Stopping]) {
                debug!("cannot notify systemd (STOPPING=1): {e}");
            }
        }
        // One read per worker per turn, so that one flooding worker cannot
        // hold the others' lines, the reaping or the stop back.
        for worker in workers.iter_mut().filter(|w| w.more) {
            match pass_chunk(worker, &mut buf, &mut lines, &mut out, poll.registry()) {
                Ok(more) => worker.more = more,
                Err(e) => {
                    failure = Some(crate::output::OutputError::wrap(e));
                    break;
                }
            }
        }
        if failure.is_some() {
            // Nothing more can be printed: stop everyone.
            signal_workers(libc::SIGTERM);
            break;
        }
        if reap || stopping {
            for worker in workers.iter_mut() {
                match reap_worker(
                    worker, &counters, &mut total, stopping, &mut buf, &mut lines, &mut out, &poll,
                ) {
                    Ok(()) => {}
                    Err(e) if crate::output::OutputError::of(&e).is_some() => failure = Some(e),
                    Err(e) => {
                        error!("{e}; stopping every worker");
                        failure = Some(e);
                    }
                }
            }
            if failure.is_some() && !stopping {
                stopping = true;
                signal_workers(libc::SIGTERM);
            }
            if failure
                .as_ref()
                .is_some_and(|e| crate::output::OutputError::of(e).is_some())
            {
                break;
            }
        }
    }
    if failure.is_none() {
        arm_timer(0);
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// Starts worker `worker.id`: this very binary (`/proc/self/exe`, which
/// stays valid when the file on disk is replaced or removed).
fn spawn(plan: &Plan, worker: &mut Worker, counters: &OwnedFd, registry: &mio::Registry) -> io::Result<()> {
    let listener = if plan.listeners.len() == 1 {
        &plan.listeners[0]
    } else {
        &plan.listeners[worker.id]
    };
    let (status_read, status_write) = std::io::pipe()?;
    let fds = [listener.as_raw_fd(), status_write.as_raw_fd(), counters.as_raw_fd()];
    let supervisor = std::process::id() as libc::pid_t;
    let mut command = Command::new("/proc/self/exe");
    // The worker's own options first: the user's may end with `-- HOST PORT`.
    command
        .arg0(&plan.program)
        .arg("--worker-id")
        .arg(worker.id.to_string())
        .arg("--worker-count")
        .arg(plan.workers.to_string())
        .args(&plan.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: between fork and exec the closure calls only `prctl`,
    // `getppid`, `fcntl` and `dup2` (async-signal-safe) on descriptors the
    // supervisor holds open for the whole spawn, and allocates nothing.
    unsafe { command.pre_exec(move || place_fds(&fds, supervisor)) };
    let mut child = command.spawn()?;
    drop(status_write);
    let watched = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout pipe"))
        .and_then(|stdout| {
            set_nonblocking(stdout.as_raw_fd())?;
            registry.register(&mut SourceFd(&stdout.as_raw_fd()), Token(worker.id), Interest::READABLE)?;
            Ok(stdout)
        });
    let stdout = match watched {
        Ok(stdout) => stdout,
        Err(e) => {
            // A worker the supervisor cannot watch must not run untracked.
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    PIDS[worker.id].store(child.id() as i32, Ordering::SeqCst);
    // A signal that came while this worker was starting must reach it too.
    if SIGNALLED.load(Ordering::SeqCst) {
        // SAFETY: kill has no memory effects; the child is ours, unreaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    info!("worker {} started (pid {})", worker.id, child.id());
    worker.child = Some(child);
    worker.stdout = Some(stdout);
    worker.status = Some(File::from(OwnedFd::from(status_read)));
    worker.started = Instant::now();
    worker.more = false;
    Ok(())
}

/// Puts the listener, the status pipe and the counters at descriptors 3, 4
/// and 5 of the child (copies first, so that no source is overwritten
/// before it is copied), and ties the child's life to the supervisor's.
/// Runs between fork and exec.
fn place_fds(fds: &[RawFd; 3], supervisor: libc::pid_t) -> io::Result<()> {
    // A worker outlives no supervisor: if it goes, the worker drains.
    // SAFETY: prctl sets a flag of this process; no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // The supervisor may have died before the flag was set.
    // SAFETY: getppid has no arguments.
    if unsafe { libc::getppid() } != supervisor {
        return Err(io::Error::other("the supervisor is gone"));
    }
    let mut high = [0; 3];
    for (i, &fd) in fds.iter().enumerate() {
        // SAFETY: F_DUPFD_CLOEXEC copies an open descriptor to one >= 10.
        high[i] = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        if high[i] < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    for (i, &fd) in high.iter().enumerate() {
        // SAFETY: dup2 onto 3, 4, 5; the copy is not close-on-exec.
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

/// Reads once from worker `worker`'s pipe and passes its whole lines on.
/// `Ok(true)` when the pipe may hold more (the read filled the buffer); at
/// end of file the pipe is dropped. `Err` only when `out` fails.
fn pass_chunk(
    worker: &mut Worker,
    buf: &mut [u8],
    lines: &mut Vec<u8>,
    out: &mut File,
    registry: &mio::Registry,
) -> io::Result<bool> {
    let Some(stdout) = worker.stdout.as_mut() else {
        return Ok(false);
    };
    loop {
        match stdout.read(buf) {
            Ok(0) => {
                let _ = registry.deregister(&mut SourceFd(&stdout.as_raw_fd()));
                worker.stdout = None;
                if worker.merger.unfinished() > 0 {
                    warn!(
                        "worker {}: its transcript ended inside a line ({} bytes dropped, so that no line is split)",
                        worker.id,
                        worker.merger.unfinished()
                    );
                    worker.merger.clear();
                }
                return Ok(false);
            }
            Ok(n) => {
                lines.clear();
                worker.merger.push(&buf[..n], lines);
                if !lines.is_empty() {
                    out.write_all(lines)?;
                }
                return Ok(n == buf.len());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                warn!("worker {}: reading its transcript: {e}", worker.id);
                let _ = registry.deregister(&mut SourceFd(&stdout.as_raw_fd()));
                worker.stdout = None;
                return Ok(false);
            }
        }
    }
}

/// If worker `worker` has exited: passes on the rest of its transcript,
/// adds its summary, gives back its share of the shared count, and (unless
/// stopping) schedules its restart. `Err` when `out` fails, or when the
/// worker cannot get going (the supervisor then stops).
#[allow(clippy::too_many_arguments)]
fn reap_worker(
    worker: &mut Worker,
    counters: &Counters,
    total: &mut Summary,
    stopping: bool,
    buf: &mut [u8],
    lines: &mut Vec<u8>,
    out: &mut File,
    poll: &Poll,
) -> io::Result<()> {
    let Some(child) = worker.child.as_mut() else {
        return Ok(());
    };
    // Out of the signal handlers' table before the reap, so that no handler
    // can signal a PID the kernel has given to someone else; back in if the
    // child still runs.
    let forwards = FORWARDS.load(Ordering::SeqCst);
    let pid = PIDS[worker.id].swap(0, Ordering::SeqCst);
    let status = match child.try_wait() {
        Ok(Some(status)) => status,
        Ok(None) => {
            PIDS[worker.id].store(pid, Ordering::SeqCst);
            if FORWARDS.load(Ordering::SeqCst) != forwards {
                // A signal handler may have run while the PID was out of the
                // table (a repeat only drains a worker).
                // SAFETY: kill has no memory effects; the child is unreaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            return Ok(());
        }
        Err(e) => {
            PIDS[worker.id].store(pid, Ordering::SeqCst);
            warn!("worker {}: cannot learn whether it exited: {e}", worker.id);
            return Ok(());
        }
    };
    worker.child = None;
    // Everything it wrote before it exited is in the pipe; the writer is
    // gone, so reading to the end terminates.
    if let Some(stdout) = worker.stdout.as_ref() {
        let fd = stdout.as_raw_fd();
        // SAFETY: F_GETFL/F_SETFL on the pipe we own.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) };
        while worker.stdout.is_some() {
            pass_chunk(worker, buf, lines, out, poll.registry())?;
        }
    }
    worker.more = false;
    let mut report = String::new();
    if let Some(mut status_pipe) = worker.status.take() {
        let _ = status_pipe.read_to_string(&mut report);
    }
    match parse_report(&report) {
        Some(summary) => total.add(&summary),
        None => warn!(
            "worker {}: exited ({status}) without a summary: its counts are not in the total",
            worker.id
        ),
    }
    // Its connections were closed by the kernel with it: give their slots
    // back.
    let left = counters.worker(worker.id).swap(0, Ordering::SeqCst);
    if left > 0 {
        counters.all().fetch_sub(left, Ordering::SeqCst);
        debug!("worker {}: {left} connections closed with it", worker.id);
    }
    if stopping {
        debug!("worker {} exited ({status})", worker.id);
        return Ok(());
    }
    let lived = worker.started.elapsed();
    worker.quick_exits = if lived < QUICK_EXIT { worker.quick_exits + 1 } else { 0 };
    if status.code() == Some(USAGE_ERROR) || worker.quick_exits >= MAX_QUICK_EXITS {
        return Err(io::Error::other(format!(
            "worker {} cannot get going: it exited ({status}) {} time(s) in a row right after starting",
            worker.id, worker.quick_exits
        )));
    }
    if lived >= HEALTHY_LIFE {
        worker.backoff = MIN_RESTART_BACKOFF;
    }
    warn!(
        "worker {} exited ({status}) after {lived:.1?}; restarting it in {:?}",
        worker.id, worker.backoff
    );
    worker.restart_at = Some(Instant::now() + worker.backoff);
    worker.backoff = (worker.backoff * 2).min(MAX_RESTART_BACKOFF);
    Ok(())
}

/// A worker's side: the listener, counters and status pipe its supervisor
/// put at descriptors 3, 4 and 5.
#[derive(Debug)]
pub struct WorkerSide {
    /// The listener to serve (shared with the supervisor, which keeps it
    /// for the worker's replacement).
    pub listener: std::net::TcpListener,
    /// The counts shared with the other workers.
    pub count: SharedCount,
    /// Where the summary goes at exit.
    status: File,
}

impl WorkerSide {
    /// Takes descriptors 3, 4 and 5 as worker `id` of `count`.
    ///
    /// # Safety
    ///
    /// Descriptors 3, 4 and 5 must be the ones a supervisor passed (a
    /// listening TCP socket, the write end of a pipe, the counters' memory
    /// file) and belong to nothing else in the process: call it once, at
    /// start, before anything else opens files.
    pub unsafe fn take(id: usize, count: usize) -> io::Result<WorkerSide> {
        if id >= count || count > MAX_WORKERS {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad worker id"));
        }
        for fd in [LISTENER_FD, STATUS_FD, COUNTERS_FD] {
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
        let (listener, status, counters) = unsafe {
            (
                OwnedFd::from_raw_fd(LISTENER_FD),
                OwnedFd::from_raw_fd(STATUS_FD),
                OwnedFd::from_raw_fd(COUNTERS_FD),
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
        let counters = Counters::open(&counters, count)?;
        Ok(WorkerSide {
            listener: socket.into(),
            count: SharedCount {
                all: counters.all(),
                mine: counters.worker(id),
            },
            status: File::from(status),
        })
    }

    /// Hands the worker's summary to the supervisor.
    pub fn report(mut self, summary: &Summary) -> io::Result<()> {
        self.status.write_all(format_report(summary).as_bytes())
    }
}

/// A summary as a worker reports it.
fn format_report(s: &Summary) -> String {
    format!(
        "summary accepted={} closed={} rejected={} idle_closed={} frames={} bytes={} open_at_stop={} denied={} proxy_refused={}\n",
        s.accepted, s.closed, s.rejected, s.idle_closed, s.frames, s.bytes, s.open_at_stop, s.denied, s.proxy_refused
    )
}

/// The summary in a worker's report, if it is one.
fn parse_report(text: &str) -> Option<Summary> {
    let line = text.lines().find(|l| l.starts_with("summary "))?;
    let mut s = Summary::default();
    for field in line.split_whitespace().skip(1) {
        let (key, value) = field.split_once('=')?;
        let value: u64 = value.parse().ok()?;
        match key {
            "accepted" => s.accepted = value,
            "closed" => s.closed = value,
            "rejected" => s.rejected = value,
            "idle_closed" => s.idle_closed = value,
            "frames" => s.frames = value,
            "bytes" => s.bytes = value,
            "open_at_stop" => s.open_at_stop = value,
            "denied" => s.denied = value,
            "proxy_refused" => s.proxy_refused = value,
            _ => {}
        }
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        let s = Summary {
            accepted: 1,
            closed: 2,
            rejected: 3,
            idle_closed: 4,
            frames: 5,
            bytes: 6,
            open_at_stop: 7,
            denied: 8,
            proxy_refused: 9,
        };
        assert_eq!(parse_report(&format_report(&s)), Some(s));
        assert_eq!(parse_report(""), None);
        assert_eq!(parse_report("summary accepted=x"), None);
    }
}
