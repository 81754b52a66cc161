//! The idle sweep (`--idle-timeout`), Redis-style: a few slab keys per
//! step, every connection once per period, so that no event pays for the
//! number of connections.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use super::connection::PROXY_PENDING;
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
    pub(super) fn sweep_step<W: Write>(&mut self, out: &mut Transcript<'_, W>) -> io::Result<()> {
        let Some(sweep) = self.sweep.as_mut() else {
            return Ok(());
        };
        sweep.next = self.now + sweep.step;
        // Keys at or past `key_end` are free: the walk, and so the cost of a
        // step, follows the connections in use, not the slab's capacity
        // (reserved up to `--max-connections`).
        let span = self.key_end;
        if span == 0 {
            return Ok(());
        }
        let per_step = span.div_ceil(SWEEP_STEPS as usize);
        let timeout = sweep.timeout_ms;
        let mut key = sweep.cursor % span;
        let mut idle = Vec::new();
        for _ in 0..per_step {
            // A connection whose PROXY header is pending is not a client
            // yet: `--proxy-timeout` is its bound, not the idle timeout.
            if let Some(conn) = self.connections.get(key)
                && !conn.has(PROXY_PENDING)
                && self.now_ms.wrapping_sub(conn.last_active) >= timeout
            {
                idle.push(key);
            }
            key = (key + 1) % span;
        }
        sweep.cursor = key;
        for key in idle {
            // Data may have landed since the loop last polled: read it. A
            // read that finds data makes the client active, so it stays;
            // one that finds none (or the end) closes it.
            match self.read_ready(key, self.read_budget, out)? {
                Some(reason) => self.close(key, reason, out),
                None => {
                    if self
                        .connections
                        .get(key)
                        .is_some_and(|conn| self.now_ms.wrapping_sub(conn.last_active) >= timeout)
                    {
                        self.close(key, Close::Idle, out);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use crate::config::Config;
    use crate::reactor::tests::{reactor_with_client, transcript, wait_queued};

    #[test]
    fn data_that_lands_before_the_sweep_keeps_the_client() {
        let config = Config {
            idle_timeout: Some(Duration::from_secs(1)),
            ..Config::default()
        };
        let sink = std::sync::Mutex::new(Vec::new());
        let mut out = transcript(&sink);
        let (mut server, mut client, key) = reactor_with_client(config, &mut out);
        // The client has been silent for 2 s of the server's clock...
        server.core.now_ms = 10_000;
        server.core.connections[key].last_active = 8_000;
        // ...and its data lands after the loop last polled, before the sweep.
        client.write_all(b"still here").expect("send");
        wait_queued(&server, key, 10);
        server.core.sweep_step(&mut out).expect("sweep");
        assert!(
            server.core.connections.contains(key),
            "closed a client that had just sent data"
        );
        assert_eq!(server.core.stats.closed_idle, 0);
        let text = String::from_utf8(out.pending_bytes().to_vec()).expect("UTF-8");
        assert!(text.contains("<10:still here>\n"), "{text}");
        assert!(!text.contains("Closed connection"), "{text}");

        // Silent past the timeout again, with nothing queued: now it goes.
        server.core.now_ms = 20_000;
        server.core.sweep_step(&mut out).expect("sweep");
        assert!(!server.core.connections.contains(key));
        assert_eq!(server.core.stats.closed_idle, 1);
        assert_eq!(server.core.key_end, 0, "the sweep's walk shrinks with the connections");
    }
}
