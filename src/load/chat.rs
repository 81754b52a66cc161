//! Chat: R messages per second for T seconds (R x T in all), round robin
//! over the greeted connections; then every connection is half-closed, and
//! only messages on connections the server closed (having read them all)
//! count as acknowledged.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use mio::Events;

use super::pace::Schedule;
use super::{LoadError, Run, sample_process};

/// Pacing tick: the loop sends what is due, then waits at most this long.
const TICK: Duration = Duration::from_millis(1);
/// How far past its `--secs` the paced phase may run to send what is due
/// before it gives up: the rate was out of reach.
pub(super) const PACE_GRACE: Duration = Duration::from_millis(100);
/// The paced loops look at the clock every this many writes or connects,
/// so that a rate out of reach cannot hold them past their end.
pub(super) const CLOCK_EVERY: u64 = 256;
/// Time for the server to read what is in flight before its CPU time is
/// sampled.
const SETTLE: Duration = Duration::from_millis(200);
/// How long after our half-close the server may take to close every
/// connection; it closes each as soon as it has read the end of it.
pub(super) const CLOSE_WAIT: Duration = Duration::from_secs(5);

impl Run {
    /// The paced phase, and the server's CPU time over it.
    pub(super) fn chat(&mut self, rate: u64, secs: Duration, events: &mut Events) -> Result<(), LoadError> {
        let schedule = Schedule::new(rate, secs);
        self.report.rate_target = rate;
        self.report.asked = schedule.total;
        let before = self.cfg.server_pid.and_then(|pid| sample_process(pid).ok());
        let start = Instant::now();
        let end = start + secs;
        let give_up = end + PACE_GRACE;
        let mut cursor = 0usize;
        let mut tried = 0u64;
        let mut message = Vec::with_capacity(64);
        self.progress.set_length(secs.as_secs().max(1));
        self.progress.set_position(0);
        'paced: while !self.stopping() {
            let due = schedule.due(start.elapsed());
            let mut writes = 0u64;
            while tried < due && !self.ready.is_empty() {
                writes += 1;
                if writes.is_multiple_of(CLOCK_EVERY) && Instant::now() >= give_up {
                    break 'paced;
                }
                cursor = (cursor + 1) % self.ready.len();
                let key = self.ready[cursor];
                let Some(conn) = self.conns.get_mut(key) else {
                    self.ready.swap_remove(cursor);
                    continue;
                };
                tried += 1;
                message.clear();
                let _ = write!(message, "client {key} says: {}", self.report.messages);
                match conn.stream.write(&message) {
                    Ok(w) => {
                        conn.sent += w as u64;
                        conn.messages += 1;
                        self.report.messages += 1;
                        self.report.bytes_sent += w as u64;
                    }
                    // Not sent: the server has not read what came before.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.report.blocked_writes += 1,
                    Err(e) => self.lose(key, &e),
                }
            }
            let now = Instant::now();
            if tried >= schedule.total || self.ready.is_empty() || now >= give_up {
                break;
            }
            self.progress.set_position(now.duration_since(start).as_secs());
            let wait = TICK.min(end.saturating_duration_since(now));
            self.poll_events(events, wait)?;
        }
        self.paced_secs = start.elapsed().max(secs).as_secs_f64();
        let elapsed = start.elapsed().as_secs_f64();
        // Let the server drain what is in flight before sampling its CPU.
        self.settle(Instant::now() + SETTLE, events)?;
        let after = self.cfg.server_pid.and_then(|pid| sample_process(pid).ok());
        if let (Some(b), Some(a)) = (before, after) {
            let cpu = a.cpu_secs - b.cpu_secs;
            if self.report.messages > 0 {
                self.report.cpu_us_per_msg = Some(cpu * 1e6 / self.report.messages as f64);
            }
            self.report.server_cpu_util = Some(cpu / elapsed);
        }
        self.report.server_after = after;
        Ok(())
    }

    /// After the paced phase: half-closes every connection and waits for
    /// the server to close each, which it does once it has read everything;
    /// the achieved rate counts those messages only.
    pub(super) fn chat_acknowledged(&mut self, events: &mut Events) -> Result<(), LoadError> {
        self.close_and_wait(CLOSE_WAIT, events)?;
        if self.paced_secs > 0.0 {
            self.report.rate_achieved = self.report.messages_acked as f64 / self.paced_secs;
        }
        Ok(())
    }
}
