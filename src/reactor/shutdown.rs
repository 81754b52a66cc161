//! How the server stops when its process is told to: SIGINT and SIGTERM
//! start a drain (the loop's `shutdown`); a second one ends the process at
//! once (exit 130 or 143); and a drain still running `--shutdown-timeout`
//! after the first signal ends the process with status 1, saying how many
//! connections it did not finish.
//!
//! Both exits must work while the loop's thread is blocked in a write (a
//! stdout nobody reads), and the loop may not even have seen the first
//! signal yet. So neither depends on it: the signal handler itself counts
//! the signals and, on the first, arms an interval timer; on the second
//! signal, or when the timer's SIGALRM comes, a handler writes one line to
//! stderr (only if stderr can take it without blocking: it may be the pipe
//! that blocked the drain) and calls `_exit`. No thread is added.

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use super::Stopper;

use signal_hook::consts::{SIGALRM, SIGINT, SIGTERM};

/// Exit status after a second SIGINT: 128 + the signal, as shells report it.
const EXIT_SECOND_SIGINT: i32 = 128 + SIGINT;
/// Exit status after a second SIGTERM.
const EXIT_SECOND_SIGTERM: i32 = 128 + SIGTERM;
/// Exit status when the drain runs out of time.
const EXIT_DRAIN_TIMEOUT: i32 = 1;

/// Set by the first SIGINT or SIGTERM.
static SIGNALLED: AtomicBool = AtomicBool::new(false);
/// The first SIGINT or SIGTERM's number (0 before it).
static FIRST_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// When the first came, in monotonic nanoseconds.
static FIRST_AT_NS: AtomicU64 = AtomicU64::new(0);

/// A repeat this soon after the first signal is the same one, delivered
/// twice: `timeout` and a terminal signal a process and then its process
/// group, systemd its main process and then its control group. A person
/// pressing Ctrl-C twice takes longer.
pub const SAME_SIGNAL_WINDOW: Duration = Duration::from_millis(250);

/// Whether a repeat now is the first signal delivered twice (see
/// [`SAME_SIGNAL_WINDOW`]). Async-signal-safe.
pub(crate) fn repeat_is_the_same(first_at_ns: u64) -> bool {
    monotonic_ns().saturating_sub(first_at_ns) < SAME_SIGNAL_WINDOW.as_nanos() as u64
}

/// The monotonic clock in nanoseconds. Async-signal-safe (`clock_gettime`).
pub(crate) fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a pointer to a live
    // local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}
/// `--shutdown-timeout` in microseconds (0 until [`install`]).
static DRAIN_TIMEOUT_US: AtomicU64 = AtomicU64::new(0);
/// Whether the drain has finished (the timer then does nothing).
static DRAINED: AtomicBool = AtomicBool::new(false);
/// What the first signal stops (and whose open connections the timeout's
/// note counts).
static STOPPER: OnceLock<Stopper> = OnceLock::new();
/// The start of the timeout's note, formatted when installed (a handler
/// may not allocate).
static TIMEOUT_NOTE: OnceLock<String> = OnceLock::new();

/// A write of whole lines to the transcript is under way (set around each
/// batch by [`batch_started`] and [`batch_done`]).
static WRITING: AtomicBool = AtomicBool::new(false);
/// A forced exit waiting for the batch in flight: its status plus one (0:
/// none).
static EXIT_AFTER_BATCH: AtomicI32 = AtomicI32::new(0);

/// How long a forced exit waits for the line in flight: a reader that
/// takes bytes at all takes one line in far less; one that does not (a
/// stdout nobody reads) holds the exit up no longer than this.
const LINE_GRACE: Duration = Duration::from_millis(100);

/// Ends the process at once with `status`, from a signal handler, without
/// cutting a line when that can be helped: when a batch of lines is being
/// written, the writer finishes the line in flight and exits
/// ([`exit_after_line`], [`batch_done`]), but the exit waits at most
/// [`LINE_GRACE`]; past it (nobody reads stdout) the process exits anyway,
/// and the transcript may end inside a line, its last. With no write in
/// flight it exits now. Async-signal-safe.
pub(crate) fn force_exit(status: i32) {
    if WRITING.load(Ordering::SeqCst) {
        EXIT_AFTER_BATCH.store(status + 1, Ordering::SeqCst);
        arm_timer(LINE_GRACE.as_micros() as u64);
        return;
    }
    signal_hook::low_level::exit(status);
}

/// A batch of whole lines is about to be written to the transcript.
#[inline]
pub(crate) fn batch_started() {
    WRITING.store(true, Ordering::SeqCst);
}

/// The batch is written (or failed): if a forced exit was waiting for it,
/// the process ends here, with no line cut.
#[inline]
pub(crate) fn batch_done() {
    WRITING.store(false, Ordering::SeqCst);
    exit_if_overdue();
}

/// For a writer that has written part of a batch: if a forced exit is
/// waiting, writes `rest` (the unwritten part) up to and including its
/// first newline with `write`, and ends the process; else returns at once.
#[inline]
pub(crate) fn exit_after_line(rest: &[u8], mut write: impl FnMut(&[u8]) -> io::Result<usize>) {
    let pending = EXIT_AFTER_BATCH.load(Ordering::SeqCst);
    if pending == 0 {
        return;
    }
    let end = rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |i| i + 1);
    let mut line = &rest[..end];
    while !line.is_empty() {
        match write(line) {
            Ok(0) => break,
            Ok(n) => line = &line[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => break,
        }
    }
    signal_hook::low_level::exit(pending - 1);
}

/// A forced exit waited for its line past [`LINE_GRACE`] (or its batch is
/// done): it happens now.
/// For the SIGALRM handlers. Async-signal-safe.
pub(crate) fn exit_if_overdue() {
    let pending = EXIT_AFTER_BATCH.load(Ordering::SeqCst);
    if pending > 0 {
        signal_hook::low_level::exit(pending - 1);
    }
}

/// Whether `fd` can take bytes without blocking now. Async-signal-safe.
fn fd_writable(fd: libc::c_int) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: `poll` reads and writes one pollfd through a pointer to a live
    // local, and waits not at all.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
    ready == 1 && pfd.revents & libc::POLLOUT != 0
}

/// Set when a second SIGINT/SIGTERM must not end the process (a worker:
/// see [`Exits::WorkerOfSupervisor`]).
static REPEATS_DRAIN: AtomicBool = AtomicBool::new(false);

/// Which signal ends the process at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exits {
    /// A second SIGINT or SIGTERM (a server on its own).
    OnSecondSignal,
    /// Only SIGUSR2, which the supervisor of `--workers` sends for its own
    /// second signal: a worker may get each SIGINT/SIGTERM twice (from the
    /// terminal's process group or systemd's control group, and forwarded
    /// by the supervisor), so for a worker a repeated one only drains.
    WorkerOfSupervisor,
}

/// The signal a supervisor sends its workers to end them at once.
pub const EXIT_NOW: i32 = signal_hook::consts::SIGUSR2;

/// Installs the handlers: on the first SIGINT or SIGTERM, stop the server
/// (a flag and a write to each reactor's eventfd) and arm the drain timer;
/// on the second (or on SIGUSR2, for a worker), exit; on SIGALRM, exit if
/// the drain is not done.
pub(super) fn install(drain_timeout: Duration, stopper: Stopper, exits: Exits) -> io::Result<()> {
    REPEATS_DRAIN.store(exits == Exits::WorkerOfSupervisor, Ordering::SeqCst);
    DRAIN_TIMEOUT_US.store(
        u64::try_from(drain_timeout.as_micros()).unwrap_or(u64::MAX).max(1),
        Ordering::SeqCst,
    );
    if STOPPER.set(stopper).is_err() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the process's signals already stop another server",
        ));
    }
    let _ = TIMEOUT_NOTE.set(format!(
        "simple_tcp_server: the drain took longer than --shutdown-timeout {}; exiting with ",
        crate::duration::format(drain_timeout)
    ));
    for (signal, status, note) in [
        (
            SIGINT,
            EXIT_SECOND_SIGINT,
            &b"simple_tcp_server: second SIGINT: exiting at once, without finishing the drain\n"[..],
        ),
        (
            SIGTERM,
            EXIT_SECOND_SIGTERM,
            &b"simple_tcp_server: second SIGTERM: exiting at once, without finishing the drain\n"[..],
        ),
    ] {
        let action = move || {
            if SIGNALLED.swap(true, Ordering::SeqCst) {
                if REPEATS_DRAIN.load(Ordering::SeqCst) || repeat_is_the_same(FIRST_AT_NS.load(Ordering::SeqCst)) {
                    return;
                }
                try_note(note);
                force_exit(status);
                return;
            }
            FIRST_AT_NS.store(monotonic_ns(), Ordering::SeqCst);
            FIRST_SIGNAL.store(signal, Ordering::SeqCst);
            arm_timer(DRAIN_TIMEOUT_US.load(Ordering::SeqCst));
            if let Some(stopper) = STOPPER.get() {
                let _ = stopper.stop();
                if !REPEATS_DRAIN.load(Ordering::SeqCst) {
                    // Said at once, even when the loop is blocked on stdout.
                    note_stopping(signal, stopper.open() as u64);
                }
            }
        };
        // SAFETY: the action only touches atomics, calls `clock_gettime`,
        // `setitimer` (a plain system call), `poll` and `write` on descriptor
        // 2 (through `try_note`), `_exit`, and `Stopper::stop`, which stores
        // a flag and `write`s 8 bytes to each reactor's eventfd (see
        // `pool::StopFd`): all async-signal-safe; nothing allocates or takes
        // a lock.
        unsafe { signal_hook::low_level::register(signal, action) }?;
    }
    if exits == Exits::WorkerOfSupervisor {
        let now = || {
            try_note(b"simple_tcp_server: told by the supervisor to exit at once, without finishing the drain\n");
            force_exit(128 + EXIT_NOW);
        };
        // SAFETY: `poll`, `write` and `_exit` only: async-signal-safe.
        unsafe { signal_hook::low_level::register(EXIT_NOW, now) }?;
    }
    let on_alarm = || {
        exit_if_overdue();
        if SIGNALLED.load(Ordering::SeqCst) && !DRAINED.load(Ordering::SeqCst) {
            let open = STOPPER.get().map_or(0, |stopper| stopper.open());
            let mut line = Line::new();
            line.push(
                TIMEOUT_NOTE
                    .get()
                    .map_or(&b"simple_tcp_server: drain timed out; "[..], |s| s.as_bytes()),
            );
            line.push_decimal(open as u64);
            line.push(if open == 1 {
                &b" connection not finished\n"[..]
            } else {
                &b" connections not finished\n"[..]
            });
            try_note(line.as_bytes());
            force_exit(EXIT_DRAIN_TIMEOUT);
        }
    };
    // SAFETY: as above: atomics, a fixed buffer on the stack, a string
    // formatted before the handler was installed, `poll`, `write`, `_exit`.
    unsafe { signal_hook::low_level::register(SIGALRM, on_alarm) }?;
    // A supervisor starts its workers with SIGINT and SIGTERM blocked, so
    // that a stop during the start waits for these handlers: now they are
    // in. (Threads started later inherit this mask.)
    unblock(&[SIGINT, SIGTERM])
}

/// Unblocks `signals` for the calling thread (and the threads it starts
/// later).
pub fn unblock(signals: &[i32]) -> io::Result<()> {
    // SAFETY: sigemptyset, sigaddset and pthread_sigmask work on a local
    // set; no old mask is asked for.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Says on stderr, without blocking, that the first `signal` has started
/// the drain of `open` connections and that a second one exits at once.
/// Async-signal-safe.
pub(crate) fn note_stopping(signal: i32, open: u64) {
    let (name, again): (&[u8], &[u8]) = if signal == SIGINT {
        (b"SIGINT", b" (press Ctrl-C again to exit at once)\n")
    } else {
        (b"SIGTERM", b" (another SIGTERM exits at once)\n")
    };
    let mut line = Line::new();
    line.push(b"simple_tcp_server: ");
    line.push(name);
    line.push(b": stopping; draining ");
    line.push_decimal(open);
    line.push(if open == 1 { b" connection" } else { b" connections" });
    line.push(again);
    try_note(line.as_bytes());
}

/// The signal that started the drain, if one did.
pub(super) fn signal_received() -> Option<i32> {
    Some(FIRST_SIGNAL.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

/// The drain has finished: the timer, if armed, is disarmed and ignored.
pub(super) fn drained() {
    DRAINED.store(true, Ordering::SeqCst);
    arm_timer(0);
}

/// Arms the real-time interval timer to fire SIGALRM once after `micros`,
/// or disarms it when `micros` is 0. Async-signal-safe.
pub(crate) fn arm_timer(micros: u64) {
    let timer = libc::itimerval {
        it_interval: libc::timeval { tv_sec: 0, tv_usec: 0 },
        it_value: libc::timeval {
            tv_sec: libc::time_t::try_from(micros / 1_000_000).unwrap_or(libc::time_t::MAX),
            tv_usec: (micros % 1_000_000) as libc::suseconds_t,
        },
    };
    // SAFETY: setitimer reads one itimerval through a pointer to a live
    // local; passing no old value is allowed.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) };
}

/// Writes `line` to stderr if it can take it now without blocking; never
/// blocks, never panics, never fails. Async-signal-safe. Keep `line` under
/// `PIPE_BUF` (4096) bytes, so that a pipe that polls writable takes it
/// whole.
pub fn try_note(line: &[u8]) {
    if fd_writable(libc::STDERR_FILENO) {
        // SAFETY: `write` reads `line.len()` bytes from a live slice.
        let _ = unsafe { libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), line.len()) };
    }
}

/// A line built on the stack, without allocating (for signal handlers).
pub(crate) struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    pub(crate) fn new() -> Line {
        Line { buf: [0; 512], len: 0 }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    pub(crate) fn push_decimal(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_built_without_allocating() {
        let mut line = Line::new();
        line.push(b"open: ");
        line.push_decimal(0);
        line.push(b" ");
        line.push_decimal(18_446_744_073_709_551_615);
        assert_eq!(line.as_bytes(), b"open: 0 18446744073709551615");
        line.push(&[b'x'; 600]);
        assert_eq!(line.as_bytes().len(), 512, "a long line is cut, not overflowed");
    }
}
