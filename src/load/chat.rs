//! Chat: paced small messages, round robin over the greeted connections.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use mio::Events;

use super::{LoadError, Run, sample_process};

impl Run {
    /// Chat: paced messages, round robin over the greeted connections.
    pub(super) fn chat(&mut self, rate: u64, secs: Duration, events: &mut Events) -> Result<(), LoadError> {
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
