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
//!   `IP_BIND_ADDRESS_NO_PORT`) and one connection's life up to its greeting.
//! - `hold`, `flood`, `chat`, `churn`: each mode's main phase.
//! - `report`: the [`Report`], for a person or as one JSON line.
//! - `proc`: the server's memory, threads and CPU time, from `/proc`.

mod chat;
mod churn;
mod conn;
mod flood;
mod hold;
mod proc;
mod report;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::{Events, Poll};
use slab::Slab;

pub use conn::{bind_address_no_port, default_sources};
pub use proc::{ProcSample, sample_process};
pub use report::Report;

use conn::Conn;
use flood::payload;

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
    /// Paced small messages.
    Chat {
        /// Connections.
        conns: usize,
        /// Messages per second, over all connections.
        rate: u64,
        /// How long to send.
        secs: Duration,
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
    /// timed out.
    pub timeout: Duration,
    /// Show a progress bar on stderr.
    pub progress: bool,
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
    /// Slab keys of greeted connections, for the chat's round robin.
    ready: Vec<usize>,
    payload: Vec<u8>,
    started: Instant,
    last_greeting: Instant,
    progress: indicatif::ProgressBar,
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
    let now = Instant::now();
    let mut run = Run {
        report: Report {
            mode: cfg.mode.name().into(),
            conns,
            server_before: cfg.server_pid.and_then(|pid| sample_process(pid).ok()),
            ..Report::default()
        },
        poll: Poll::new()?,
        conns: Slab::with_capacity(conns),
        opened: 0,
        in_flight: 0,
        finished: 0,
        ready: Vec::with_capacity(conns),
        payload,
        started: now,
        last_greeting: now,
        progress,
        cfg,
    };
    let result = run.go();
    run.progress.finish_and_clear();
    result?;
    Ok(run.report)
}

impl Run {
    fn go(&mut self) -> Result<(), LoadError> {
        let deadline = self.started + self.cfg.timeout;
        let mut events = Events::with_capacity(1024);
        // Phase 1: connect everyone (flood starts streaming as each is greeted).
        while self.opened < self.cfg.mode.conns() || self.in_flight > 0 {
            self.open_more()?;
            if Instant::now() >= deadline {
                self.time_out_unfinished();
                break;
            }
            self.poll.poll(&mut events, Some(Duration::from_millis(50)))?;
            self.dispatch(&events);
            self.progress.set_position(self.report.established as u64);
        }
        self.report.connect_secs = self.last_greeting.duration_since(self.started).as_secs_f64();
        match self.cfg.mode.clone() {
            Mode::Hold { hold, .. } => self.hold(hold, &mut events)?,
            Mode::Flood { conns, .. } => self.finish_flood(conns, deadline, &mut events)?,
            Mode::Chat { rate, secs, .. } => self.chat(rate, secs, &mut events)?,
            Mode::Churn { rate, secs, .. } => self.churn(rate, secs, &mut events)?,
        }
        self.report.elapsed_secs = self.started.elapsed().as_secs_f64();
        Ok(())
    }
}
