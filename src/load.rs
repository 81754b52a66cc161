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
//!
//! Connections are spread over several loopback source addresses
//! (127.0.0.1, 127.0.0.2, ...) so that ephemeral ports and TIME_WAIT never
//! limit a run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

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

/// What the server's process looked like, from /proc.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    /// Resident memory, bytes.
    pub rss: u64,
    /// Threads.
    pub threads: u64,
    /// User + system CPU time, seconds.
    pub cpu_secs: f64,
}

/// Reads `/proc/PID/status` and `/proc/PID/stat`.
pub fn sample_process(pid: i32) -> io::Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::other("bad /proc stat"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the name.
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ProcSample {
        rss: field("VmRSS:") * 1024,
        threads: field("Threads:"),
        cpu_secs: (ticks(11) + ticks(12)) as f64 / hz,
    })
}

/// The outcome of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// hold, flood or chat.
    pub mode: String,
    /// Connections asked for.
    pub conns: usize,
    /// Connections that connected and were greeted.
    pub established: usize,
    /// Greetings received.
    pub greetings: usize,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// From the first connect to the last greeting, seconds.
    pub connect_secs: f64,
    /// From the first connect to the end of the run, seconds.
    pub elapsed_secs: f64,
    /// Payload bytes written.
    pub bytes_sent: u64,
    /// Messages written (hold and chat).
    pub messages: u64,
    /// Flood: payload MB/s (10^6 bytes) from first connect to last close.
    pub mb_per_sec: f64,
    /// Chat: messages per second asked for and achieved.
    pub rate_target: u64,
    /// Chat: achieved messages per second.
    pub rate_achieved: f64,
    /// Chat: writes that found a connection's buffer full (the server fell
    /// behind).
    pub blocked_writes: u64,
    /// Churn: short-lived connections completed (greeted, message sent,
    /// closed by the server after it printed the message).
    pub churned: u64,
    /// The server before the run (with `server_pid`).
    pub server_before: Option<ProcSample>,
    /// The server with all connections up (hold) or at the end (others).
    pub server_after: Option<ProcSample>,
    /// Chat: the server's CPU time per message, microseconds.
    pub cpu_us_per_msg: Option<f64>,
    /// Chat: the server's CPU use during the paced phase, in cores.
    pub server_cpu_util: Option<f64>,
    /// Chat: whether the load generator held the rate and the server kept up.
    pub kept_up: Option<bool>,
}

impl Report {
    /// Server CPU time (user + system) between the two samples, seconds.
    pub fn server_cpu_secs(&self) -> Option<f64> {
        Some(self.server_after?.cpu_secs - self.server_before?.cpu_secs)
    }

    /// Hold: server RSS growth per established connection, bytes.
    pub fn rss_per_conn(&self) -> Option<f64> {
        if self.mode != "hold" {
            return None;
        }
        let (before, after) = (self.server_before?, self.server_after?);
        (self.established > 0).then(|| (after.rss as f64 - before.rss as f64) / self.established as f64)
    }

    /// Total errors.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// A few lines for a person.
    pub fn human(&self) -> String {
        let mut s = String::new();
        if self.mode == "churn" {
            let _ = writeln!(
                s,
                "churn: {} connections held, {} established in all, {} greeted",
                self.conns, self.established, self.greetings
            );
        } else {
            let _ = writeln!(
                s,
                "{}: {} of {} connections established, {} greeted, in {:.2} s",
                self.mode, self.established, self.conns, self.greetings, self.connect_secs
            );
        }
        if self.errors.is_empty() {
            let _ = writeln!(s, "errors: none");
        } else {
            let list: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(s, "errors: {}", list.join(", "));
        }
        match self.mode.as_str() {
            "flood" => {
                let _ = writeln!(
                    s,
                    "sent {} bytes in {:.3} s: {:.1} MB/s",
                    self.bytes_sent, self.elapsed_secs, self.mb_per_sec
                );
            }
            "churn" => {
                let _ = writeln!(
                    s,
                    "churned {} connections in {:.1} s ({:.0}/s of {}/s asked) beside {} held",
                    self.churned,
                    self.elapsed_secs - self.connect_secs,
                    self.rate_achieved,
                    self.rate_target,
                    self.conns
                );
            }
            "chat" => {
                let _ = writeln!(
                    s,
                    "sent {} messages: {:.0}/s of {}/s asked, {} writes blocked",
                    self.messages, self.rate_achieved, self.rate_target, self.blocked_writes
                );
                if let (Some(us), Some(util)) = (self.cpu_us_per_msg, self.server_cpu_util) {
                    let _ = writeln!(s, "server CPU: {us:.2} us per message, {:.0}% of a core", util * 100.0);
                }
                if let Some(kept_up) = self.kept_up {
                    let _ = writeln!(s, "kept up: {}", if kept_up { "yes" } else { "no" });
                }
            }
            _ => {}
        }
        if let (Some(before), Some(after)) = (self.server_before, self.server_after) {
            let _ = writeln!(
                s,
                "server RSS: {} kB before, {} kB after{}; threads: {}",
                before.rss / 1024,
                after.rss / 1024,
                self.rss_per_conn()
                    .map(|b| format!(" ({b:.1} bytes per connection)"))
                    .unwrap_or_default(),
                after.threads
            );
        }
        s
    }

    /// One JSON object on one line.
    pub fn json(&self) -> String {
        fn num(v: Option<f64>) -> String {
            match v {
                Some(v) if v.is_finite() => format!("{v:.3}"),
                _ => "null".into(),
            }
        }
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(k, v)| format!("\"{}\":{v}", k.replace(['"', '\\'], "_")))
            .collect();
        format!(
            concat!(
                "{{\"mode\":\"{}\",\"conns\":{},\"established\":{},\"greetings\":{},\"errors\":{{{}}},",
                "\"connect_secs\":{:.3},\"elapsed_secs\":{:.3},\"bytes_sent\":{},\"messages\":{},",
                "\"mb_per_sec\":{:.3},\"rate_target\":{},\"rate_achieved\":{:.1},\"blocked_writes\":{},\"churned\":{},",
                "\"server_rss_before\":{},\"server_rss_after\":{},\"rss_per_conn\":{},\"server_threads\":{},",
                "\"server_cpu_secs\":{},\"cpu_us_per_msg\":{},\"server_cpu_util\":{},\"kept_up\":{}}}"
            ),
            self.mode,
            self.conns,
            self.established,
            self.greetings,
            errors.join(","),
            self.connect_secs,
            self.elapsed_secs,
            self.bytes_sent,
            self.messages,
            self.mb_per_sec,
            self.rate_target,
            self.rate_achieved,
            self.blocked_writes,
            self.churned,
            self.server_before.map_or("null".into(), |p| p.rss.to_string()),
            self.server_after.map_or("null".into(), |p| p.rss.to_string()),
            num(self.rss_per_conn()),
            self.server_after.map_or("null".into(), |p| p.threads.to_string()),
            num(self.server_cpu_secs()),
            num(self.cpu_us_per_msg),
            num(self.server_cpu_util),
            self.kept_up.map_or("null".into(), |k| k.to_string()),
        )
    }
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

/// Where one connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// connect() in progress.
    Connecting,
    /// Connected, reading the greeting.
    Greeting,
    /// Greeted: sending (flood), holding (hold) or chatting (chat).
    Ready,
    /// Flood: all sent, write side closed, waiting for the server to close.
    Draining,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    phase: Phase,
    /// A short-lived churn connection (not one of the held ones).
    churn: bool,
    /// Greeting bytes received.
    greeted: usize,
    /// Payload bytes written.
    sent: u64,
}

/// The text every connection sends: `NAME says: LINE`, repeated, no
/// delimiter, as client.go writes it. Printable, like real chat.
fn payload(len: usize) -> Vec<u8> {
    let mut text = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while text.len() < len {
        let _ = write!(text, "wong says: line {i} of the flood ");
        i += 1;
    }
    text.truncate(len);
    text
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

    /// Starts connections up to the in-flight bound.
    fn open_more(&mut self) -> Result<(), LoadError> {
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
    fn open_one(&mut self, n: usize, churn: bool) -> Result<(), LoadError> {
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
        });
        self.in_flight += 1;
        Ok(())
    }

    fn fail(&mut self, e: &io::Error) {
        *self.report.errors.entry(error_kind(e)).or_default() += 1;
        self.finished += 1;
    }

    fn fail_kind(&mut self, kind: &str) {
        *self.report.errors.entry(kind.into()).or_default() += 1;
        self.finished += 1;
    }

    /// Drops connection `key` after a failure.
    fn drop_conn(&mut self, key: usize) {
        if let Some(conn) = self.conns.try_remove(key)
            && matches!(conn.phase, Phase::Connecting | Phase::Greeting)
        {
            self.in_flight -= 1;
        }
    }

    fn time_out_unfinished(&mut self) {
        let stuck: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Connecting | Phase::Greeting))
            .map(|(k, _)| k)
            .collect();
        for key in stuck {
            self.fail_kind("timeout");
            self.drop_conn(key);
        }
        let never = self.cfg.mode.conns() - self.opened;
        if never > 0 {
            *self.report.errors.entry("not started (timeout)".into()).or_default() += never as u64;
            self.opened = self.cfg.mode.conns();
        }
    }

    fn dispatch(&mut self, events: &Events) {
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
                        Phase::Draining => {
                            // The server printed everything and closed: done.
                            if self.conns.remove(key).churn {
                                self.report.churned += 1;
                            } else {
                                self.finished += 1;
                            }
                        }
                        Phase::Greeting => {
                            self.fail_kind("closed before greeting");
                            self.drop_conn(key);
                        }
                        _ => {
                            self.fail_kind("closed by server");
                            self.drop_conn(key);
                            self.ready.retain(|&k| k != key);
                        }
                    }
                    return;
                }
                Ok(n) => {
                    if conn.phase == Phase::Greeting {
                        if buf[..n].starts_with(b"ERR") {
                            self.fail_kind("server full");
                            self.drop_conn(key);
                            return;
                        }
                        conn.greeted += n;
                        if conn.greeted >= self.cfg.greeting_len {
                            self.greeted(key);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let was_draining = conn.phase == Phase::Draining;
                    self.fail(&e);
                    self.drop_conn(key);
                    if !was_draining {
                        self.ready.retain(|&k| k != key);
                    }
                    return;
                }
            }
        }
    }

    /// Connection `key` is connected and greeted.
    fn greeted(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.phase = Phase::Ready;
        self.in_flight -= 1;
        self.report.established += 1;
        if self.cfg.greeting_len > 0 {
            self.report.greetings += 1;
        }
        if conn.churn {
            // One message, then close our side and wait for the server's close.
            let message = format!("churn {key} says bye");
            match conn.stream.write(message.as_bytes()) {
                Ok(n) => {
                    self.report.bytes_sent += n as u64;
                    self.report.messages += 1;
                    let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                    conn.phase = Phase::Draining;
                }
                Err(e) => {
                    self.fail(&e);
                    self.conns.remove(key);
                }
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
                        self.report.bytes_sent += n as u64;
                        self.report.messages += 1;
                    }
                    Err(e) => {
                        self.fail(&e);
                        self.conns.remove(key);
                        self.ready.pop();
                    }
                }
            }
            Mode::Flood { .. } => self.on_writable(key),
            Mode::Chat { .. } | Mode::Churn { .. } => {}
        }
    }

    /// Flood: writes until the socket is full or the connection's bytes are
    /// all out, then half-closes.
    fn on_writable(&mut self, key: usize) {
        let Mode::Flood { bytes, .. } = self.cfg.mode else {
            return;
        };
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.phase != Phase::Ready {
            return;
        }
        while conn.sent < bytes {
            let n = (bytes - conn.sent).min(self.payload.len() as u64) as usize;
            match conn.stream.write(&self.payload[..n]) {
                Ok(n) => {
                    conn.sent += n as u64;
                    self.report.bytes_sent += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(&e);
                    self.conns.remove(key);
                    return;
                }
            }
        }
        // Everything is out: half-close and wait for the server's close.
        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        conn.phase = Phase::Draining;
    }

    /// Hold: everyone is up; sample the server and keep the connections.
    fn hold(&mut self, hold: Duration, events: &mut Events) -> Result<(), LoadError> {
        // Let the server finish printing the last messages.
        let settle = Instant::now() + Duration::from_millis(300);
        while Instant::now() < settle {
            self.poll.poll(events, Some(Duration::from_millis(50)))?;
            self.dispatch(events);
        }
        self.report.server_after = self.cfg.server_pid.and_then(|pid| sample_process(pid).ok());
        let until = Instant::now() + hold;
        while Instant::now() < until {
            self.poll
                .poll(events, Some(until.saturating_duration_since(Instant::now())))?;
            self.dispatch(events);
        }
        Ok(())
    }

    /// Flood: waits until the server has closed every connection.
    fn finish_flood(&mut self, conns: usize, deadline: Instant, events: &mut Events) -> Result<(), LoadError> {
        self.progress.set_position(0);
        while self.finished < conns {
            if Instant::now() >= deadline {
                let left = self.conns.len();
                *self.report.errors.entry("timeout".into()).or_default() += left as u64;
                break;
            }
            self.poll.poll(events, Some(Duration::from_millis(50)))?;
            self.dispatch(events);
            self.progress.set_position(self.finished as u64);
        }
        let secs = self.started.elapsed().as_secs_f64();
        self.report.mb_per_sec = self.report.bytes_sent as f64 / secs / 1e6;
        self.report.server_after = self.cfg.server_pid.and_then(|pid| sample_process(pid).ok());
        Ok(())
    }

    /// Churn: paced short-lived connections beside the held ones.
    fn churn(&mut self, rate: u64, secs: Duration, events: &mut Events) -> Result<(), LoadError> {
        /// Short-lived connections in progress at most; past that the
        /// server is behind and the generator waits.
        const MAX_CHURN_IN_FLIGHT: usize = 4096;
        self.report.rate_target = rate;
        let start = Instant::now();
        let end = start + secs;
        let mut started = 0u64;
        self.progress.set_length(secs.as_secs().max(1));
        self.progress.set_position(0);
        while Instant::now() < end {
            let due = (rate as f64 * start.elapsed().as_secs_f64()) as u64;
            while started < due && self.conns.len() < self.cfg.mode.conns() + MAX_CHURN_IN_FLIGHT {
                self.open_one(started as usize, true)?;
                started += 1;
            }
            self.progress.set_position(start.elapsed().as_secs());
            self.poll.poll(events, Some(Duration::from_millis(1)))?;
            self.dispatch(events);
        }
        let churning = start.elapsed().as_secs_f64();
        // Let the last ones finish.
        let settle = Instant::now() + Duration::from_secs(5);
        while self.conns.len() > self.cfg.mode.conns() && Instant::now() < settle {
            self.poll.poll(events, Some(Duration::from_millis(10)))?;
            self.dispatch(events);
        }
        self.report.rate_achieved = self.report.churned as f64 / churning;
        self.report.server_after = self.cfg.server_pid.and_then(|pid| sample_process(pid).ok());
        Ok(())
    }

    /// Chat: paced messages, round robin over the greeted connections.
    fn chat(&mut self, rate: u64, secs: Duration, events: &mut Events) -> Result<(), LoadError> {
        self.report.rate_target = rate;
        let tick = Duration::from_millis(1);
        let before = self.cfg.server_pid.and_then(|pid| sample_process(pid).ok());
        let start = Instant::now();
        let end = start + secs;
        let mut cursor = 0usize;
        let mut message = Vec::with_capacity(64);
        self.progress.set_length(secs.as_secs().max(1));
        self.progress.set_position(0);
        loop {
            let now = Instant::now();
            if now >= end || self.ready.is_empty() {
                break;
            }
            let due = (rate as f64 * now.duration_since(start).as_secs_f64()) as u64;
            let mut budget = due.saturating_sub(self.report.messages + self.report.blocked_writes);
            while budget > 0 {
                budget -= 1;
                cursor = (cursor + 1) % self.ready.len();
                let key = self.ready[cursor];
                let Some(conn) = self.conns.get_mut(key) else { continue };
                message.clear();
                let n = self.report.messages;
                let _ = write!(message, "client {key} says: {n}");
                match conn.stream.write(&message) {
                    Ok(w) => {
                        self.report.messages += 1;
                        self.report.bytes_sent += w as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.report.blocked_writes += 1,
                    Err(e) => {
                        self.fail(&e);
                        self.conns.remove(key);
                        self.ready.swap_remove(cursor);
                        if self.ready.is_empty() {
                            break;
                        }
                    }
                }
            }
            self.progress.set_position(now.duration_since(start).as_secs());
            let wait = tick.min(end.saturating_duration_since(Instant::now()));
            self.poll.poll(events, Some(wait))?;
            self.dispatch(events);
        }
        let elapsed = start.elapsed().as_secs_f64();
        // Let the server drain what is in flight before sampling its CPU.
        let settle = Instant::now() + Duration::from_millis(200);
        while Instant::now() < settle {
            self.poll.poll(events, Some(Duration::from_millis(20)))?;
            self.dispatch(events);
        }
        self.report.rate_achieved = self.report.messages as f64 / elapsed;
        let after = self.cfg.server_pid.and_then(|pid| sample_process(pid).ok());
        if let (Some(b), Some(a)) = (before, after) {
            let cpu = a.cpu_secs - b.cpu_secs;
            if self.report.messages > 0 {
                self.report.cpu_us_per_msg = Some(cpu * 1e6 / self.report.messages as f64);
            }
            let util = cpu / elapsed;
            self.report.server_cpu_util = Some(util);
            self.report.kept_up =
                Some(self.report.blocked_writes == 0 && self.report.rate_achieved >= 0.99 * rate as f64 && util < 0.95);
        } else {
            self.report.kept_up =
                Some(self.report.blocked_writes == 0 && self.report.rate_achieved >= 0.99 * rate as f64);
        }
        self.report.server_after = after;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_printable_chat_text() {
        let p = payload(1000);
        assert_eq!(p.len(), 1000);
        assert!(p.starts_with(b"wong says: line 0 of the flood wong says: line 1"));
        assert!(crate::output::text::is_plain_text(&p));
    }

    #[test]
    fn sources_spread_over_loopback() {
        let s = default_sources("127.0.0.1:5".parse().expect("addr"), 3);
        assert_eq!(s.len(), 3);
        assert_eq!(s[2], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        assert_eq!(default_sources("[::1]:5".parse().expect("addr"), 3).len(), 1);
    }

    #[test]
    fn json_is_one_line() {
        let mut r = Report {
            mode: "hold".into(),
            ..Report::default()
        };
        r.errors.insert("refused".into(), 2);
        let j = r.json();
        assert!(!j.contains('\n'));
        assert!(j.starts_with("{\"mode\":\"hold\""));
        assert!(j.contains("\"errors\":{\"refused\":2}"));
    }

    #[test]
    fn samples_this_process() {
        let s = sample_process(std::process::id() as i32).expect("/proc");
        assert!(s.rss > 0 && s.threads >= 1);
    }
}
