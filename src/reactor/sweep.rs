//! The idle sweep (`--idle-timeout`), Redis-style: a few slab keys per
//! step, every connection once per period, so that no event pays for the
//! number of connections.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use super::{Close, Core};
use crate::output::Transcript;

/// The idle sweep visits every connection once per period, in this many steps.
const SWEEP_STEPS: u32 = 10;

/// The idle sweep (Redis-style): a few slab keys per step, every connection
/// once per period, so the cost per event does not grow with connections.
#[derive(Debug)]
pub(super) struct Sweep {
    /// Idle time after which a client is closed, in milliseconds.
    pub(super) timeout_ms: u32,
    /// Time between steps.
    pub(super) step: Duration,
    /// When the next step is due.
    pub(super) next: Instant,
    /// The next slab key to look at.
    pub(super) cursor: usize,
}

impl Sweep {
    /// A sweep closing clients idle for `timeout`, starting at `now`.
    pub(super) fn new(timeout: Duration, now: Instant) -> Sweep {
        let period = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        Sweep {
            timeout_ms: u32::try_from(timeout.as_millis())
                .unwrap_or(u32::MAX / 2)
                .min(u32::MAX / 2),
            step: period / SWEEP_STEPS,
            next: now + period / SWEEP_STEPS,
            cursor: 0,
        }
    }
}

impl Core {
    /// One step of the idle sweep.
    pub(super) fn sweep_step<W: Write>(&mut self, out: &mut Transcript<W>) -> io::Result<()> {
        let Some(sweep) = self.sweep.as_mut() else {
            return Ok(());
        };
        sweep.next = self.now + sweep.step;
        let span = self.connections.capacity().max(1);
        let per_step = span.div_ceil(SWEEP_STEPS as usize);
        let timeout = sweep.timeout_ms;
        let mut key = sweep.cursor % span;
        let mut idle = Vec::new();
        for _ in 0..per_step {
            if let Some(conn) = self.connections.get(key)
                && self.now_ms.wrapping_sub(conn.last_active) >= timeout
            {
                idle.push(key);
            }
            key = (key + 1) % span;
        }
        sweep.cursor = key;
        for key in idle {
            // Print what it sent before its idle time began, if still queued.
            let reason = self
                .read_ready(key, self.config.read_budget, out)?
                .unwrap_or(Close::Idle);
            self.close(key, reason, out);
        }
        Ok(())
    }
}
