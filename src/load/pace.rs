//! Pacing: R events per second for T seconds is R x T events, the i-th
//! due at i/R seconds, the first at once.

use std::time::Duration;

/// When each of a run's paced events (messages, connections) is due.
#[derive(Debug, Clone, Copy)]
pub(super) struct Schedule {
    rate: u64,
    secs: Duration,
    /// R x T, rounded down.
    pub(super) total: u64,
}

impl Schedule {
    pub(super) fn new(rate: u64, secs: Duration) -> Schedule {
        let total = u128::from(rate) * secs.as_nanos() / 1_000_000_000;
        Schedule {
            rate,
            secs,
            total: u64::try_from(total).unwrap_or(u64::MAX),
        }
    }

    /// Events due `elapsed` after the start: every one whose time has come,
    /// and all of them once the T seconds are over.
    pub(super) fn due(&self, elapsed: Duration) -> u64 {
        if elapsed >= self.secs {
            return self.total;
        }
        let passed = u128::from(self.rate) * elapsed.as_nanos() / 1_000_000_000;
        u64::try_from(passed + 1).unwrap_or(u64::MAX).min(self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_per_second_for_t_seconds_is_r_times_t() {
        // Exactly R x T, none lost at either end: churn --rate 1
        // --secs 1 opens 1 (not 0), --rate 10 opens 10 (not 9), chat
        // --rate 100 --secs 1 sends 100 (not 98.9).
        for (rate, ms, total) in [
            (1, 1000, 1),
            (10, 1000, 10),
            (100, 1000, 100),
            (3, 1500, 4),
            (50000, 10_000, 500_000),
        ] {
            let s = Schedule::new(rate, Duration::from_millis(ms));
            assert_eq!(s.total, total, "{rate}/s for {ms} ms");
            // The first is due at once, the last before the end.
            assert_eq!(s.due(Duration::ZERO), 1.min(total));
            let last_at = Duration::from_nanos((total - 1) * 1_000_000_000 / rate);
            assert!(last_at < Duration::from_millis(ms));
            assert_eq!(s.due(last_at), total, "{rate}/s for {ms} ms");
            assert_eq!(s.due(Duration::from_millis(ms)), total);
        }
        let s = Schedule::new(10, Duration::from_secs(1));
        assert_eq!(s.due(Duration::from_millis(450)), 5);
    }

    #[test]
    fn huge_rates_do_not_overflow() {
        let s = Schedule::new(u64::MAX, Duration::from_secs(3600));
        assert_eq!(s.total, u64::MAX);
        assert!(s.due(Duration::from_millis(1)) > 0);
    }
}
