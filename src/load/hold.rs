//! Hold: everyone is up; sample the server and keep the connections for
//! `--hold` (never past `--timeout`).

use std::time::{Duration, Instant};

use mio::Events;

use super::{LoadError, Run, sample_process};

/// Time for the server to print the last connections' messages before its
/// memory is sampled.
const SETTLE: Duration = Duration::from_millis(300);

impl Run {
    pub(super) fn hold(&mut self, hold: Duration, events: &mut Events) -> Result<(), LoadError> {
        self.settle(Instant::now() + SETTLE, events)?;
        self.report.server_after = self.cfg.server_pid.and_then(|pid| sample_process(pid).ok());
        self.settle(Instant::now() + hold, events)?;
        self.report.held = self.count_held();
        Ok(())
    }
}
