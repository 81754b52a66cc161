//! Churn: paced short-lived connections beside held ones.

use std::time::{Duration, Instant};

use mio::Events;

use super::{LoadError, Run, sample_process};

impl Run {
    /// Churn: paced short-lived connections beside the held ones.
    pub(super) fn churn(&mut self, rate: u64, secs: Duration, events: &mut Events) -> Result<(), LoadError> {
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
}
