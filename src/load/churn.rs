//! Churn: R short-lived connections per second for T seconds (R x T in
//! all: connect, greeting, one message, half-close, the server's close)
//! beside the held ones.

use std::time::{Duration, Instant};

use mio::Events;

use super::chat::{CLOCK_EVERY, CLOSE_WAIT, PACE_GRACE};
use super::conn::Phase;
use super::pace::Schedule;
use super::{LoadError, Run, sample_process};

/// Short-lived connections in progress at most; past that the server is
/// behind and the generator waits.
const MAX_CHURN_IN_FLIGHT: usize = 4096;
/// Pacing tick.
const TICK: Duration = Duration::from_millis(1);

impl Run {
    pub(super) fn churn(&mut self, rate: u64, secs: Duration, events: &mut Events) -> Result<(), LoadError> {
        let schedule = Schedule::new(rate, secs);
        self.report.rate_target = rate;
        self.report.asked = schedule.total;
        let start = Instant::now();
        let end = start + secs;
        let give_up = end + PACE_GRACE;
        self.progress.set_length(secs.as_secs().max(1));
        self.progress.set_position(0);
        'paced: while !self.stopping() {
            let due = schedule.due(start.elapsed());
            let mut opened = 0u64;
            while self.report.churn_started < due && self.conns.len() < self.cfg.mode.conns() + MAX_CHURN_IN_FLIGHT {
                opened += 1;
                if opened.is_multiple_of(CLOCK_EVERY) && Instant::now() >= give_up {
                    break 'paced;
                }
                let n = self.report.churn_started as usize;
                self.report.churn_started += 1;
                self.open_one(n, true)?;
            }
            let now = Instant::now();
            if self.report.churn_started >= schedule.total || now >= give_up {
                break;
            }
            self.progress.set_position(now.duration_since(start).as_secs());
            self.poll_events(events, TICK.min(end.saturating_duration_since(now).max(TICK)))?;
        }
        // Let the last ones finish.
        let until = Instant::now() + CLOSE_WAIT;
        let churning = |run: &Run| run.conns.iter().any(|(_, c)| c.churn);
        while churning(self) && !self.stopping() && Instant::now() < until {
            self.poll_events(events, Duration::from_millis(10))?;
        }
        // What is left did not finish: not greeted, or not closed.
        let left: Vec<(usize, Phase)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.churn)
            .map(|(k, c)| (k, c.phase))
            .collect();
        for (key, phase) in left {
            let kind = match (self.stopping(), phase) {
                (true, _) => self.stop_kind(),
                (false, Phase::Draining) => "not closed by server",
                (false, _) => "timeout",
            };
            self.fail_kind(kind);
            self.drop_conn(key);
        }
        let last = self.last_churn.map_or(secs, |t| t.duration_since(start));
        self.report.churn_secs = last.max(secs).as_secs_f64();
        self.report.rate_achieved = self.report.churned as f64 / self.report.churn_secs;
        self.report.held = self.count_held();
        self.report.server_after = self.cfg.server_pid.and_then(|pid| sample_process(pid).ok());
        Ok(())
    }
}
