//! Time for the subscription engine: a wall clock that tokio's (pausable)
//! timer drives, and the webhook retry backoff (pure).

use std::time::Duration;

use tokio::time::Instant;

/// Wall-clock milliseconds since the Unix epoch, read as the wall time at
/// start plus tokio's monotonic time since then.
///
/// Leases and retry times are persisted as absolute wall-clock times, so a
/// restart resumes them rather than starting over. Deriving "now" from
/// tokio's clock keeps one run monotonic (a wall-clock step does not fire
/// every lease at once) and lets tests drive it with
/// `tokio::time::pause()`. Create it inside the runtime that will use it.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    wall0: u64,
    t0: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            wall0: crate::storage::now_ms(),
            t0: Instant::now(),
        }
    }

    /// The current time in Unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.wall0 + self.t0.elapsed().as_millis() as u64
    }

    /// The tokio instant at which this clock reads `ms` (now, if past).
    pub fn instant_at(&self, ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms.saturating_sub(self.now_ms()))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// First retry delay after a failed webhook delivery.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The delay before retry number `failures` (1 after the first failure):
/// 1 s doubling up to 60 s (PROTOCOL.md §7.1), scaled by `jitter`, a
/// factor in `[0.8, 1.2]` (±20 %) drawn by the caller.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let base = (BACKOFF_BASE * (1u32 << doublings)).min(BACKOFF_MAX);
    base.mul_f64(jitter.clamp(0.8, 1.2))
}

/// A random jitter factor in `[0.8, 1.2]`.
pub fn jitter() -> f64 {
    0.8 + rand::random::<f64>() * 0.4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff(n, 1.0).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX, 1.0), BACKOFF_MAX);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        assert_eq!(backoff(1, 0.8), Duration::from_millis(800));
        assert_eq!(backoff(7, 1.2), Duration::from_secs(72));
        // Out-of-range factors are clamped, never stretch the schedule.
        assert_eq!(backoff(1, 5.0), Duration::from_millis(1200));
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.8..=1.2).contains(&j), "{j}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn clock_follows_tokio_time() {
        let c = Clock::new();
        let t = c.now_ms();
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(c.now_ms() - t, 90_000);
        let at = c.instant_at(c.now_ms() + 1500);
        assert_eq!(at - Instant::now(), Duration::from_millis(1500));
    }
}
