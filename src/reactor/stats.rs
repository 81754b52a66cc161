//! Counting what the server does: the [`Summary`] that `run` returns (and
//! the binary logs at exit), and the periodic `--stats` line.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use log::info;

use super::Core;

/// Counts of what the server did, returned by [`super::Server::run`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections closed (all of them, at the end of `run`).
    pub closed: u64,
    /// Connections turned away at the cap.
    pub rejected: u64,
    /// Connections closed for idling.
    pub idle_closed: u64,
    /// Frames printed.
    pub frames: u64,
    /// Bytes received and printed.
    pub bytes: u64,
    /// Connections still open when the server was stopped.
    pub open_at_stop: u64,
    /// Clients closed without a greeting by `--allow`/`--deny`.
    pub denied: u64,
    /// Connections closed without a greeting behind `--proxy-protocol`: not
    /// from a trusted proxy, or no valid PROXY header in time.
    pub proxy_refused: u64,
}

impl Summary {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Summary) {
        self.accepted += other.accepted;
        self.closed += other.closed;
        self.rejected += other.rejected;
        self.idle_closed += other.idle_closed;
        self.frames += other.frames;
        self.bytes += other.bytes;
        self.open_at_stop += other.open_at_stop;
        self.denied += other.denied;
        self.proxy_refused += other.proxy_refused;
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connections ({} open at stop, {} rejected, {} idle-closed), {} frames, {} bytes",
            self.accepted, self.open_at_stop, self.rejected, self.idle_closed, self.frames, self.bytes
        )?;
        if self.denied > 0 {
            write!(f, ", {} denied", self.denied)?;
        }
        if self.proxy_refused > 0 {
            write!(f, ", {} without a valid PROXY header", self.proxy_refused)?;
        }
        Ok(())
    }
}

/// Periodic statistics (`--stats`).
#[derive(Debug)]
pub(super) struct StatsTimer {
    pub(super) interval: Duration,
    pub(super) next: Instant,
    /// Counters at the previous line, for rates.
    pub(super) last: Summary,
    pub(super) last_at: Instant,
}

impl StatsTimer {
    /// A timer logging every `interval`, starting at `now`.
    pub(super) fn new(interval: Duration, now: Instant) -> StatsTimer {
        StatsTimer {
            interval,
            next: now + interval,
            last: Summary::default(),
            last_at: now,
        }
    }
}

impl Core {
    /// Logs one `--stats` line, for all reactors together.
    pub(super) fn log_stats(&mut self) {
        // This reactor's own counts are fresher than what it last published.
        self.shared.publish(self.id, &self.stats, self.connections.len());
        let (s, active) = self.shared.totals();
        let Some(timer) = self.stats_timer.as_mut() else { return };
        let secs = self.now.duration_since(timer.last_at).as_secs_f64().max(1e-9);
        let rate = |now: u64, then: u64| (now - then) as f64 / secs;
        // With several reactors, how the clients are spread over them.
        let mut spread = String::new();
        if self.shared.balance.len() > 1 {
            spread.push_str(" | per reactor");
            for count in self.shared.actives() {
                let _ = write!(spread, " {count}");
            }
        }
        info!(
            "stats: active {} accepted {} closed {} rejected {} bytes_in {} frames {} denied {} proxy_refused {} | {:.0} accepts/s {:.0} closes/s {:.2} MB/s {:.0} frames/s{spread}",
            active,
            s.accepted,
            s.closed,
            s.rejected,
            s.bytes,
            s.frames,
            s.denied,
            s.proxy_refused,
            rate(s.accepted, timer.last.accepted),
            rate(s.closed, timer.last.closed),
            rate(s.bytes, timer.last.bytes) / 1e6,
            rate(s.frames, timer.last.frames),
        );
        timer.last = s;
        timer.last_at = self.now;
        timer.next = self.now + timer.interval;
    }
}
