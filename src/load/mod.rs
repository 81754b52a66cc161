//! The load generator behind `tcp_load`: one thread, one mio poll, many
//! non-blocking connections, big writes, no per-byte work, so that the
//! server, not the generator, is what gets measured.
//!
//! Modes:
//! - **hold**: open N connections (a bounded number connecting at once), read
//!   each greeting, send one message each, hold them; report connect time,
//!   greetings, errors by kind, and the server's memory per connection.
//! - **flood**: C connections each stream B bytes of `NAME says: LINE` text
//!   in large writes, half-close, and wait for the server to close; report
//!   MB/s from first connect to last close.
//! - **chat**: R messages per second spread over N connections, paced on a
//!   1 ms tick; report the server's CPU time per message (from /proc) and
//!   whether it kept up.
//! - **churn**: short-lived connections at a paced rate beside held ones.
//! - **probe** ([`probe`]): a few clients send numbered messages and watch
//!   the server's transcript (a file) for them: send-to-print latency.
//!
//! Connections are spread over several loopback source addresses
//! (127.0.0.1, 127.0.0.2, ...) so that ephemeral ports and TIME_WAIT never
//! limit a run.
//!
//! # Layout
//!
//! - this file: what a run is told ([`LoadConfig`], [`Mode`]), how it fails
//!   ([`LoadError`]), and [`run`], which connects everyone and hands over to
//!   the mode.
//! - `conn`: opening connections (source addresses,
//!   `IP_BIND_ADDRESS_NO_PORT`) and one connection's life: connecting, the
//!   greeting (and noticing when none comes), failures by kind.
//! - `hold`, `flood`, `chat`, `churn`: each mode's main phase; `pace`: R
//!   per second for T seconds.
//! - `report`: the [`Report`] and its verdict, for a person or as one JSON
//!   line; `json`: reading such lines back.
//! - `procs`: `--procs N`, generator processes past one process's
//!   descriptor cap, their reports added up.
//! - `proc`: the server's memory, threads and CPU time, from `/proc`.
//!
//! # Honest numbers
//!
//! A run is clean only if every connection did what it was asked and the
//! server acknowledged it: flood and chat bytes count when the server closed
//! the connection after our half-close (so after reading every byte), a
//! churned connection when the server closed it after printing its
//! message. Any failure, a run cut short (`--timeout`, a signal, a server
//! that sends no greeting), or a rate out of reach makes it not clean, and
//! [`Report::reason`] says why.

mod chat;
mod churn;
mod conn;
mod flood;
mod hold;
mod json;
mod pace;
mod probe;
mod proc;
pub mod procs;
mod report;

use std::io::{self, BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use slab::Slab;

pub use chat::{CHAT_MAX_SEQ, CHAT_MESSAGE_LEN, ChatId, chat_message};
pub use conn::{bind_address_no_port, default_sources, sources_from};
pub use probe::{ProbeConfig, ProbeReport, probe};
pub use proc::{ProcSample, sample_process};
pub use report::Report;

use crate::duration::format as format_duration;
use conn::Conn;
use flood::payload;

/// The signal source's token, outside the slab's keys.
const SIGNALS: Token = Token(usize::MAX);
/// How long a phase waits in one poll when nothing is due sooner.
const POLL_TICK: Duration = Duration::from_millis(50);

/// What a run does.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Open and hold connections.
    Hold {
        /// Connections to open.
        conns: usize,
        /// How long to hold them once all are up.
        hold: Duration,
    },
    /// Stream bytes through every connection.
    Flood {
        /// Connections.
        conns: usize,
        /// Bytes each connection sends.
        bytes: u64,
        /// Bytes per write.
        write_size: usize,
    },
    /// Paced small messages, each with its own identifier (see
    /// [`chat_message`]).
    Chat {
        /// Connections.
        conns: usize,
        /// Messages per second, over all connections.
        rate: u64,
        /// How long to send.
        secs: Duration,
        /// How often the generator wakes to send what is due: 1 ms keeps
        /// the stream smooth; a longer tick costs the generator fewer
        /// wakeups when many processes share the rate.
        tick: Duration,
    },
    /// Connection churn: hold some connections open while others come and
    /// go (connect, greeting, one message, close) at a paced rate.
    Churn {
        /// Connections held open throughout.
        hold: usize,
        /// New short-lived connections per second.
        rate: u64,
        /// How long to churn.
        secs: Duration,
    },
}

impl Mode {
    /// The mode's name.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Hold { .. } => "hold",
            Mode::Flood { .. } => "flood",
            Mode::Chat { .. } => "chat",
            Mode::Churn { .. } => "churn",
        }
    }

    /// Connections opened before the mode's main phase.
    pub fn conns(&self) -> usize {
        match self {
            Mode::Hold { conns, .. } | Mode::Flood { conns, .. } | Mode::Chat { conns, .. } => *conns,
            Mode::Churn { hold, .. } => *hold,
        }
    }
}

/// How to run the load.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The server.
    pub target: SocketAddr,
    /// Local addresses to connect from, round robin.
    pub sources: Vec<IpAddr>,
    /// The mode.
    pub mode: Mode,
    /// Connections connecting (or awaiting their greeting) at once.
    pub in_flight: usize,
    /// Bytes of greeting to expect from the server on each connection (0 for
    /// a server that sends none).
    pub greeting_len: usize,
    /// The server's process id, for memory, threads and CPU from /proc.
    pub server_pid: Option<i32>,
    /// Bound on the whole run: whatever is not done by then is reported as
    /// timed out, and the run is not clean.
    pub timeout: Duration,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// SIGINT and SIGTERM end the run early, with the report so far (not
    /// clean). For binaries: a library user may not want its signals taken.
    pub stop_on_signals: bool,
    /// Say on stderr when the main phase begins, for a script that starts
    /// something beside the run: `tcp_load: all N connections are up` when
    /// every one is, `tcp_load: M of N connections are up` when not.
    pub announce: bool,
    /// Which generator process this is: 0 alone, 1 up under `--procs`. It
    /// is part of every chat message's identifier.
    pub proc_index: u16,
    /// Run as one of `--procs` generator processes: after connecting, and
    /// after the main phase, print `ready` (then `done`) on stdout and wait
    /// for a line on stdin before going on; end of input stops the run.
    pub coordinated: bool,
}

/// A run that could not go on.
#[derive(Debug)]
pub enum LoadError {
    /// The generator ran out of file descriptors.
    OutOfFiles {
        /// Connections open at the time.
        open: usize,
        /// The generator's open-file limit.
        limit: u64,
    },
    /// Anything else.
    Io(io::Error),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::OutOfFiles { open, limit } => write!(
                f,
                "out of file descriptors with {open} connections open (the open-file limit is {limit}); \
                 lower --conns or raise `ulimit -n`"
            ),
            LoadError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LoadError {}

impl From<io::Error> for LoadError {
    fn from(e: io::Error) -> LoadError {
        LoadError::Io(e)
    }
}

/// The run's moving parts.
struct Run {
    cfg: LoadConfig,
    poll: Poll,
    conns: Slab<Conn>,
    report: Report,
    /// Connections started so far.
    opened: usize,
    /// Connections connecting or awaiting their greeting.
    in_flight: usize,
    /// Connections finished (failed, or flood connections the server closed).
    finished: usize,
    /// Connections (not churn ones) the server closed after reading all
    /// they sent: a flood connection may be done before the others are up.
    closed_clean: usize,
    /// Slab keys of greeted connections, for the chat's round robin.
    ready: Vec<usize>,
    payload: Vec<u8>,
    started: Instant,
    /// `started` + the run's `--timeout`.
    deadline: Instant,
    last_greeting: Instant,
    /// Reset whenever greeting bytes arrive, or a connection starts waiting
    /// for its greeting while none was: a stalled greeting is noticed from it.
    greeting_clock: Instant,
    /// Connections connected and waiting for their greeting.
    awaiting: usize,
    /// Flood: when the server closed the last connection it closed.
    last_close: Option<Instant>,
    /// Churn: when the last short-lived connection completed.
    last_churn: Option<Instant>,
    /// Chat: the paced phase's length (at least the --secs asked), for rates.
    paced_secs: f64,
    progress: indicatif::ProgressBar,
    signals: Option<signal_hook_mio::v1_0::Signals>,
}

/// Says on stderr that the main phase begins with `up` of the `asked`
/// connections: `all N connections are up` only when every one is.
fn announce(up: usize, asked: usize) {
    let _ = if up >= asked {
        writeln!(io::stderr(), "tcp_load: all {asked} connections are up")
    } else {
        writeln!(io::stderr(), "tcp_load: {up} of {asked} connections are up")
    };
}

/// Runs the load described by `cfg`.
pub fn run(cfg: LoadConfig) -> Result<Report, LoadError> {
    let conns = cfg.mode.conns();
    let progress = if cfg.progress {
        let bar = indicatif::ProgressBar::with_draw_target(Some(conns as u64), indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) = indicatif::ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(cfg.mode.name());
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let payload = match &cfg.mode {
        Mode::Flood { write_size, .. } => payload((*write_size).max(1)),
        _ => Vec::new(),
    };
    let poll = Poll::new()?;
    let signals = if cfg.stop_on_signals {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM])?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        Some(signals)
    } else {
        None
    };
    let now = Instant::now();
    let mut run = Run {
        report: Report {
            mode: cfg.mode.name().into(),
            conns,
            server_before: cfg.server_pid.and_then(|pid| sample_process(pid).ok()),
            ..Report::default()
        },
        poll,
        conns: Slab::with_capacity(conns),
        opened: 0,
        in_flight: 0,
        finished: 0,
        closed_clean: 0,
        ready: Vec::with_capacity(conns),
        payload,
        started: now,
        deadline: now + cfg.timeout,
        last_greeting: now,
        greeting_clock: now,
        awaiting: 0,
        last_close: None,
        last_churn: None,
        paced_secs: 0.0,
        progress,
        signals,
        cfg,
    };
    let result = run.go();
    run.progress.finish_and_clear();
    result?;
    Ok(run.report)
}

impl Run {
    fn go(&mut self) -> Result<(), LoadError> {
        let mut events = Events::with_capacity(1024);
        // Connect everyone (flood starts streaming as each is greeted).
        self.connect_all(&mut events)?;
        self.report.connect_secs = self.last_greeting.duration_since(self.started).as_secs_f64();
        // Under --procs, the parent adds up how many each process holds.
        let up = self.count_up();
        self.barrier(&format!("ready {up}"))?;
        if self.cfg.announce && !self.cfg.coordinated && !self.stopping() {
            announce(up, self.cfg.mode.conns());
        }
        if !self.stopping() {
            match self.cfg.mode.clone() {
                Mode::Hold { hold, .. } => self.hold(hold, &mut events)?,
                Mode::Flood { conns, .. } => self.finish_flood(conns, &mut events)?,
                Mode::Chat { rate, secs, tick, .. } => self.chat(rate, secs, tick, &mut events)?,
                Mode::Churn { rate, secs, .. } => self.churn(rate, secs, &mut events)?,
            }
        }
        self.barrier("done")?;
        if matches!(self.cfg.mode, Mode::Chat { .. }) {
            self.chat_acknowledged(&mut events)?;
        }
        self.report.elapsed_secs = self.started.elapsed().as_secs_f64();
        self.report.judge();
        Ok(())
    }

    /// Whether the run has been stopped (interrupted, out of time, no
    /// greeting).
    fn stopping(&self) -> bool {
        self.report.stopped.is_some()
    }

    /// Stops the run, for `why` (the first reason given stands).
    fn stop(&mut self, why: String) {
        if self.report.stopped.is_none() {
            self.report.stopped = Some(why);
        }
    }

    /// The error kind for connections that a stop leaves unfinished.
    fn stop_kind(&self) -> &'static str {
        match self.report.stopped.as_deref() {
            Some(s) if s.starts_with("interrupted") => "interrupted",
            Some(s) if s.starts_with("the parent") => "interrupted",
            _ => "timeout",
        }
    }

    /// Stops the run if `--timeout` has passed; returns whether it has.
    fn out_of_time(&mut self) -> bool {
        if Instant::now() >= self.deadline {
            let timeout = format_duration(self.cfg.timeout);
            self.stop(format!("the run did not finish within --timeout {timeout}"));
            return true;
        }
        false
    }

    /// Notes SIGINT and SIGTERM.
    fn take_signals(&mut self) {
        let pending: Vec<i32> = match self.signals.as_mut() {
            Some(signals) => signals.pending().collect(),
            None => return,
        };
        for signal in pending {
            let name = match signal {
                signal_hook::consts::SIGINT => "SIGINT",
                signal_hook::consts::SIGTERM => "SIGTERM",
                _ => "a signal",
            };
            self.stop(format!("interrupted by {name}"));
        }
    }

    /// Waits up to `wait` (never past the deadline) for events and handles
    /// them; stops the run on a signal or at the deadline.
    fn poll_events(&mut self, events: &mut Events, wait: Duration) -> Result<(), LoadError> {
        if self.out_of_time() {
            return Ok(());
        }
        let wait = wait.min(self.deadline.saturating_duration_since(Instant::now()));
        match self.poll.poll(events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        if events.iter().any(|e| e.token() == SIGNALS) {
            self.take_signals();
        }
        self.dispatch(events);
        self.out_of_time();
        Ok(())
    }

    /// Polls until `until` (or the deadline, or a stop).
    fn settle(&mut self, until: Instant, events: &mut Events) -> Result<(), LoadError> {
        while !self.stopping() && Instant::now() < until {
            self.poll_events(events, until.saturating_duration_since(Instant::now()))?;
        }
        Ok(())
    }

    /// With `coordinated`, tells the parent process that this one reached
    /// `name` and waits for its go; end of input stops the run.
    fn barrier(&mut self, line: &str) -> Result<(), LoadError> {
        if !self.cfg.coordinated {
            return Ok(());
        }
        let mut out = io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        drop(out);
        let mut line = String::new();
        let n = io::stdin().lock().read_line(&mut line)?;
        self.take_signals();
        if n == 0 {
            self.stop("the parent process stopped the run".into());
        }
        Ok(())
    }

    /// Connections greeted and still open or done cleanly (not churn ones).
    fn count_up(&self) -> usize {
        let open = self
            .conns
            .iter()
            .filter(|(_, c)| !c.churn && matches!(c.phase, conn::Phase::Ready | conn::Phase::Draining))
            .count();
        open + self.closed_clean
    }

    /// Held connections still open.
    fn count_held(&self) -> usize {
        self.conns
            .iter()
            .filter(|(_, c)| !c.churn && c.phase == conn::Phase::Ready)
            .count()
    }
}
