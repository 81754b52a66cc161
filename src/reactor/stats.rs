//! Counting what the server does: the [`Summary`] that `run` returns (and
//! the binary logs at exit), the counters each reactor publishes once per
//! wakeup for others to read ([`Published`]: the `--stats` line, the
//! supervisor of `--workers`), and the periodic `--stats` line itself.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use log::info;

use super::Core;

/// Declares [`Summary`]'s counters once: the struct, its field names in
/// order, and its conversion to and from an array (what [`Published`]
/// stores, and what a worker's counters are read back from).
macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident, )*) => {
        /// Counts of what the server did, returned by
        /// [`super::Server::run`].
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Summary {
            $( $(#[doc = $doc])* pub $name: u64, )*
        }

        impl Summary {
            /// The counters' names, in the order of [`Summary::to_array`].
            pub const NAMES: [&'static str; COUNTERS] = [$(stringify!($name),)*];

            /// The counters as an array, in the order of [`Summary::NAMES`].
            pub fn to_array(&self) -> [u64; COUNTERS] {
                [$(self.$name,)*]
            }

            /// The counters from an array made by [`Summary::to_array`].
            pub fn from_array(values: [u64; COUNTERS]) -> Summary {
                let [$($name,)*] = values;
                Summary { $($name,)* }
            }
        }

        /// How many counters a [`Summary`] has.
        pub const COUNTERS: usize = [$(stringify!($name),)*].len();
    };
}

counters! {
    /// Connections accepted and served (announced with `Connection from`).
    accepted,
    /// Connections closed (all the announced ones, at the end of `run`).
    closed,
    /// Of `closed`: the client closed (end of file).
    closed_eof,
    /// Of `closed`: the client reset the connection.
    closed_reset,
    /// Of `closed`: any other error on the socket.
    closed_error,
    /// Of `closed`: nothing received for `--idle-timeout`.
    closed_idle,
    /// Of `closed`: the server was stopping.
    closed_shutdown,
    /// Connections cut when the worker process serving them died (counted
    /// by the supervisor of `--workers`; they have no `Closed connection`
    /// line).
    lost,
    /// Clients turned away at the cap (`ERR server full`).
    rejected,
    /// Clients closed without a greeting by `--allow`/`--deny`.
    denied,
    /// Behind `--proxy-protocol`: connections from outside `--proxy-from`.
    proxy_untrusted,
    /// Behind `--proxy-protocol`: a header that is not a valid PROXY header
    /// (or none before the connection closed).
    proxy_invalid,
    /// Behind `--proxy-protocol`: no whole header within `--proxy-timeout`.
    proxy_timeout,
    /// Frames printed.
    frames,
    /// Bytes received and printed.
    bytes,
    /// Connections still open when the server was stopped.
    open_at_stop,
    /// Clients closed because their address held `--max-per-source`
    /// connections already.
    refused_per_source,
    /// Failed accepts (any error but "nothing to accept").
    accept_errors,
    /// Pauses of accepting for want of descriptors or memory.
    accept_pauses,
    /// Transcript bytes written to the output.
    out_bytes,
    /// Transcript lines written to the output.
    out_lines,
    /// Nanoseconds spent in writes to the output (most of it blocked, when
    /// the output is slow).
    out_write_ns,
}

impl Summary {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Summary) {
        let mut sum = self.to_array();
        // Wrapping: counters read from memory another process writes may
        // hold anything, and this runs in signal handlers.
        for (a, b) in sum.iter_mut().zip(other.to_array()) {
            *a = a.wrapping_add(b);
        }
        *self = Summary::from_array(sum);
    }

    /// Connections closed without a greeting behind `--proxy-protocol`,
    /// for whatever reason.
    pub fn proxy_refused(&self) -> u64 {
        self.proxy_untrusted + self.proxy_invalid + self.proxy_timeout
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connection{} ({} open at stop, {} rejected, {} idle-closed), {} frames, {} bytes",
            self.accepted,
            if self.accepted == 1 { "" } else { "s" },
            self.open_at_stop,
            self.rejected,
            self.closed_idle,
            self.frames,
            self.bytes
        )?;
        if self.lost > 0 {
            write!(f, ", {} lost with their worker", self.lost)?;
        }
        if self.denied > 0 {
            write!(f, ", {} denied", self.denied)?;
        }
        if self.refused_per_source > 0 {
            write!(f, ", {} over --max-per-source", self.refused_per_source)?;
        }
        if self.proxy_untrusted > 0 {
            write!(f, ", {} not from a trusted proxy", self.proxy_untrusted)?;
        }
        if self.proxy_invalid > 0 {
            write!(f, ", {} without a valid PROXY header", self.proxy_invalid)?;
        }
        if self.proxy_timeout > 0 {
            write!(f, ", {} without a PROXY header in time", self.proxy_timeout)?;
        }
        Ok(())
    }
}

/// A reactor's counters as it last published them (once per wakeup), in
/// cache lines of its own. It may live in memory shared between processes
/// (a worker's, which its supervisor reads): any bytes are valid counters.
#[derive(Debug, Default)]
#[repr(C, align(128))]
pub struct Published {
    /// [`Summary::to_array`].
    counts: [AtomicU64; COUNTERS],
    /// Connections the reactor has open.
    active: AtomicU64,
    /// Transcript bytes buffered, not yet written.
    backlog: AtomicU64,
    /// When the write to the output in flight began, in monotonic
    /// nanoseconds (0: none), stored before each write that may block.
    writing_since_ns: AtomicU64,
}

impl Published {
    /// Publishes `stats` and the open connections (relaxed stores: readers
    /// want recent counts, not a consistent cut).
    #[inline]
    pub fn store(&self, stats: &Summary, active: u64) {
        for (slot, value) in self.counts.iter().zip(stats.to_array()) {
            slot.store(value, Ordering::Relaxed);
        }
        self.active.store(active, Ordering::Relaxed);
    }

    /// The counters last published.
    pub fn load(&self) -> Summary {
        Summary::from_array(std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)))
    }

    /// The open connections last published.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// A write of `backlog` bytes to the output begins at `now_ns`
    /// (monotonic), or (with 0, 0) the write in flight has ended.
    #[inline]
    pub fn writing(&self, now_ns: u64, backlog: u64) {
        self.backlog.store(backlog, Ordering::Relaxed);
        self.writing_since_ns.store(now_ns, Ordering::Relaxed);
    }

    /// Transcript bytes buffered when last published.
    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    /// When the write in flight began (monotonic nanoseconds), if one is.
    pub fn writing_since_ns(&self) -> Option<u64> {
        Some(self.writing_since_ns.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }

    /// Back to zero (a slot of a worker about to be restarted).
    pub fn clear(&self) {
        self.store(&Summary::default(), 0);
        self.writing(0, 0);
    }
}

/// Counters over all reactors (and workers) at one moment, and how fast
/// they grew since the last line: the `--stats` line's text.
pub fn stats_line(now: &Summary, active: u64, before: &Summary, secs: f64, spread: &str) -> String {
    let secs = secs.max(1e-9);
    let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
    format!(
        "stats: active {} accepted {} closed {} rejected {} bytes_in {} frames {} denied {} proxy_refused {} | {:.0} accepts/s {:.0} closes/s {:.2} MB/s {:.0} frames/s{spread}",
        active,
        now.accepted,
        now.closed,
        now.rejected,
        now.bytes,
        now.frames,
        now.denied,
        now.proxy_refused(),
        rate(now.accepted, before.accepted),
        rate(now.closed, before.closed),
        rate(now.bytes, before.bytes) / 1e6,
        rate(now.frames, before.frames),
    )
}

/// Periodic statistics (`--stats`).
#[derive(Debug)]
pub struct StatsTimer {
    /// Time between lines.
    pub interval: Duration,
    /// When the next line is due.
    pub next: Instant,
    /// Counters at the previous line, for rates.
    pub last: Summary,
    /// When the previous line was logged.
    pub last_at: Instant,
}

impl StatsTimer {
    /// A timer logging every `interval`, starting at `now`.
    pub fn new(interval: Duration, now: Instant) -> StatsTimer {
        StatsTimer {
            interval,
            next: now + interval,
            last: Summary::default(),
            last_at: now,
        }
    }

    /// The line for `total` (with `active` open and `spread` after it) at
    /// `now`; the timer moves on to the next interval.
    pub fn line(&mut self, now: Instant, total: Summary, active: u64, spread: &str) -> String {
        let secs = now.duration_since(self.last_at).as_secs_f64();
        let line = stats_line(&total, active, &self.last, secs, spread);
        self.last = total;
        self.last_at = now;
        self.next = now + self.interval;
        line
    }
}

impl Core {
    /// Logs one `--stats` line, for all reactors together.
    pub(super) fn log_stats(&mut self) {
        // This reactor's own counts are fresher than what it last published
        // (its output's counts, published with each wakeup, are as fresh
        // as the line needs).
        self.shared.publish_counts(self.id, &self.stats, self.connections.len());
        let (total, active) = self.shared.totals();
        // With several reactors, how the clients are spread over them.
        let mut spread = String::new();
        if self.shared.balance.len() > 1 {
            spread.push_str(" | per reactor");
            for count in self.shared.actives() {
                let _ = write!(spread, " {count}");
            }
        }
        let now = self.now;
        let Some(timer) = self.stats_timer.as_mut() else { return };
        info!("{}", timer.line(now, total, active, &spread));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_through_arrays_and_published_slots() {
        let mut s = Summary::default();
        for (i, name) in Summary::NAMES.iter().enumerate() {
            assert!(!name.is_empty());
            let mut values = s.to_array();
            values[i] = i as u64 + 1;
            s = Summary::from_array(values);
        }
        assert_eq!(s.accepted, 1);
        assert_eq!(s.out_write_ns, COUNTERS as u64, "the last counter is the last field");
        let p = Published::default();
        p.store(&s, 7);
        assert_eq!((p.load(), p.active()), (s, 7));
        p.clear();
        assert_eq!((p.load(), p.active()), (Summary::default(), 0));
        let mut twice = s;
        twice.add(&s);
        assert_eq!(twice.to_array(), s.to_array().map(|v| 2 * v));
    }
}
