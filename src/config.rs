//! What the server can be told. [`Config::default`] is what the binary runs
//! with when given no options.

use std::time::Duration;

/// Bytes asked of the kernel per `read`: one buffer for the whole server,
/// so its size costs nothing per connection. One `recv` of up to 2 MiB
/// takes everything a busy socket has queued (many 64 KiB loopback
/// segments) in one system call, and the kernel sends one window update for
/// it instead of one per segment: against 64 KiB reads this cut the server's
/// CPU per GB by a quarter under flood (0.63 to 0.45 s/GB at 100 clients).
/// The server rounds it down to a multiple of `max_read`, so that a block is
/// always cut into full frames plus one remainder.
pub const DEFAULT_READ_BUFFER: usize = 2 * 1024 * 1024;

/// Bytes one connection may be read per wakeup before the others get their
/// turn (then it is revisited without waiting for a new event): one full
/// read block, that is one `recv` per busy connection per wakeup, about a
/// millisecond of a fast client's data. The server rounds it down to a
/// multiple of `max_read` (at least one frame) and never reads more than it
/// in one wakeup.
pub const DEFAULT_READ_BUDGET: usize = DEFAULT_READ_BUFFER;

/// How long printed frames may wait in the output buffer before the loop
/// blocks: none. The buffer is written before every blocking poll (or when
/// a read block's lines pass 64 KiB); under load, coalescing (below) already makes each
/// write carry many messages. A lag above zero bounds poll with a timeout,
/// and arming that timer on every wakeup costs more than the write it saves
/// (measured on this VM: 7.2 us per chat message with 1 ms, 5.6 with 0).
pub const DEFAULT_FLUSH_LAG: Duration = Duration::ZERO;

/// How long the loop lets readiness events gather after a wakeup that found
/// only a few (see [`Config::coalesce`]).
pub const DEFAULT_COALESCE: Duration = Duration::from_micros(500);

/// Listen backlog: mio's own default is 128, too few for a burst of clients.
pub const DEFAULT_BACKLOG: u32 = 1024;

/// How long the drain after SIGINT/SIGTERM may take before the process
/// gives up on it and exits 1 (`--shutdown-timeout`).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client behind a proxy may take to send its PROXY header.
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds of the duration options, checked when arguments are parsed, so
/// that no value can overflow a deadline later. Each says why.
pub mod bounds {
    use std::time::Duration;

    /// `--idle-timeout`: the sweep keeps idle times in wrapping `u32`
    /// milliseconds and compares within half their range (24.8 days).
    pub const IDLE_TIMEOUT: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(24 * 24 * 3600));
    /// `--keepalive`: TCP counts keepalive time in whole seconds, at most
    /// 32767 on Linux (`MAX_TCP_KEEPIDLE`).
    pub const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(32767));
    /// `--stats`: a line at least every day, at most every millisecond.
    pub const STATS: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(24 * 3600));
    /// `--flush-lag`: how long a printed line may wait; ten seconds is
    /// already far past interactive.
    pub const FLUSH_LAG: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(10));
    /// `--coalesce`: a latency the loop adds between polls under chat load;
    /// a second is far past useful (500 us already gathers dozens of
    /// messages).
    pub const COALESCE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(1));
    /// `--shutdown-timeout`: a drain of a day is as long as anyone waits.
    pub const SHUTDOWN_TIMEOUT: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(24 * 3600));
    /// `--proxy-timeout`: a proxy sends its header at once; an hour is
    /// already far past any proxy's connect.
    pub const PROXY_TIMEOUT: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(3600));
}

/// Everything that shapes how the server behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bytes per frame (`--max-read`, default 25).
    pub max_read: usize,
    /// Bytes written to every new client; empty for none.
    pub greeting: Vec<u8>,
    /// Print TEXT unchanged instead of escaping it (`--raw`).
    pub raw: bool,
    /// Start each frame line with the client's address (`--tag`).
    pub tag: bool,
    /// Text lines or JSON lines (`--format`).
    pub format: crate::output::Format,
    /// Connections served at once; `None` derives it from the open-file limit.
    pub max_connections: Option<usize>,
    /// Listen backlog.
    pub backlog: u32,
    /// Close a client that has sent nothing for this long.
    pub idle_timeout: Option<Duration>,
    /// TCP keepalive idle time on accepted sockets.
    pub keepalive: Option<Duration>,
    /// Log a statistics line this often.
    pub stats_interval: Option<Duration>,
    /// Bytes asked of the kernel per `read` (see [`DEFAULT_READ_BUFFER`]).
    pub read_buffer: usize,
    /// Bytes read from one connection per wakeup (see [`DEFAULT_READ_BUDGET`]).
    pub read_budget: usize,
    /// Longest time printed frames wait before they are written out.
    pub flush_lag: Duration,
    /// After a wakeup that found fewer events than the event buffer holds,
    /// pause this long before polling again, so that under load one
    /// `epoll_wait` and one context switch serve many messages. Zero polls
    /// again at once.
    pub coalesce: Duration,
    /// How long the drain after a signal may take before the process exits
    /// 1 (only when the server handles signals, see
    /// [`crate::Server::stop_on_signals`]).
    pub shutdown_timeout: Duration,
    /// Reactors, each on its own thread (`--threads`; 1: the caller's
    /// thread only).
    pub threads: usize,
    /// Expect a PROXY protocol header (v1 or v2) from every client: the
    /// client's real address comes from it (`--proxy-protocol`).
    pub proxy_protocol: bool,
    /// Who may send a PROXY header (`--proxy-from`); anyone else is closed
    /// without a greeting.
    pub proxy_from: Vec<ipnet::IpNet>,
    /// How long a client may take to send its whole PROXY header.
    pub proxy_timeout: Duration,
    /// Who may connect (`--allow`); empty: everyone not denied.
    pub allow: Vec<ipnet::IpNet>,
    /// Who may not connect (`--deny`); a match here wins over `allow`.
    pub deny: Vec<ipnet::IpNet>,
    /// The most connections one client address may hold at once
    /// (`--max-per-source`; behind a proxy, the address the PROXY header
    /// names).
    pub max_per_source: Option<u32>,
    /// What a worker of `--workers` shares with its supervisor (the cap's
    /// counts across workers, its published counters); `None` for a server
    /// on its own.
    pub worker: Option<WorkerShare>,
    /// Print `Listening to:` first (a worker leaves it to its supervisor).
    pub announce: bool,
    /// Publish the reactors' counters for a reader (the metrics endpoint:
    /// see [`crate::Server::metrics_source`]), as `--stats` does.
    pub publish_counters: bool,
}

/// What a worker of `--workers` shares with its supervisor and the other
/// workers (memory mapped by all of them, see `crate::workers::shm`): the
/// open-connection count of every worker, which the cap is checked against,
/// and the slots where this worker's reactors publish their counters.
#[derive(Debug, Clone, Copy)]
pub struct WorkerShare {
    /// Every worker's open connections, by worker id.
    pub open: &'static [crate::workers::shm::WorkerSlot],
    /// This worker's id (its slot in `open`).
    pub id: usize,
    /// Whether the cap can be reached before every worker runs out of
    /// descriptors: only then is it checked against the sum of `open`
    /// (else each worker's own open-file limit is the bound).
    pub cap_binding: bool,
    /// One slot per reactor of this worker, for its published counters.
    pub published: &'static [crate::reactor::stats::Published],
    /// The socket on which the supervisor hands over clients that another
    /// worker could not serve (open for the life of the process).
    pub handoff: Option<std::os::fd::RawFd>,
}

impl WorkerShare {
    /// Takes a connection slot under `cap`, if one is free: adds one to this
    /// worker's own count, then (when the cap can bind) checks the sum over
    /// all workers and backs off if it is past `cap`. One update that a
    /// death cannot tear: whenever the worker dies, only its own count is
    /// left, which the supervisor clears. Two workers taking the last slot
    /// at once may both back off; neither goes over the cap.
    #[inline]
    pub fn take(&self, cap: usize) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let mine = &self.open[self.id].open;
        mine.fetch_add(1, SeqCst);
        if self.cap_binding {
            let all: u64 = self.open.iter().map(|w| w.open.load(SeqCst)).sum();
            if all > cap as u64 {
                mine.fetch_sub(1, SeqCst);
                return false;
            }
        }
        true
    }

    /// Gives back a slot taken by [`WorkerShare::take`].
    #[inline]
    pub fn release(&self) {
        self.open[self.id]
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The proxies trusted by default: this host only.
pub fn loopback_nets() -> Vec<ipnet::IpNet> {
    vec![
        ipnet::IpNet::V4(ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::new(127, 0, 0, 0), 8)),
        ipnet::IpNet::V6(ipnet::Ipv6Net::new_assert(std::net::Ipv6Addr::LOCALHOST, 128)),
    ]
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_read: crate::protocol::MAX_READ,
            greeting: crate::protocol::GREETING.to_vec(),
            raw: false,
            tag: false,
            format: crate::output::Format::Text,
            max_connections: None,
            backlog: DEFAULT_BACKLOG,
            idle_timeout: None,
            keepalive: None,
            stats_interval: None,
            read_buffer: DEFAULT_READ_BUFFER,
            read_budget: DEFAULT_READ_BUDGET,
            flush_lag: DEFAULT_FLUSH_LAG,
            coalesce: DEFAULT_COALESCE,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            threads: 1,
            proxy_protocol: false,
            proxy_from: loopback_nets(),
            proxy_timeout: DEFAULT_PROXY_TIMEOUT,
            allow: Vec::new(),
            deny: Vec::new(),
            max_per_source: None,
            worker: None,
            announce: true,
            publish_counters: false,
        }
    }
}
