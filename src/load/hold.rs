//! Hold: everyone is up; sample the server and keep the connections.

use std::time::{Duration, Instant};

use mio::Events;

use super::{LoadError, Run, sample_process};

impl Run {
    /// Hold: everyone is up; sample the server and keep the connections.
    pub(super) fn hold(&mut self, hold: Duration, events: &mut Events) -> Result<(), LoadError> {
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
}
