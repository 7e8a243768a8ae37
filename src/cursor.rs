//! Live-read cursors (protocol section 10.1): the number of fixed intervals
//! since 2024-10-09T00:00:00Z, never going backwards for a client that echoes
//! one, so CDN cache keys keep moving.

use std::time::Duration;

use rand::Rng;

use crate::storage::Millis;

/// 2024-10-09T00:00:00Z in milliseconds since the Unix epoch.
pub const CURSOR_EPOCH_MS: Millis = 1_728_432_000_000;

/// The cursor to answer at `now` to a client that echoed `client`.
///
/// Normally the current interval number; when the client's cursor is already
/// at or past it, a strictly greater one, advanced by a random 1–3600 s of
/// jitter (at least one interval).
pub fn next_cursor(now: Millis, interval: Duration, client: Option<u64>) -> u64 {
    let interval_ms = interval.as_millis().max(1) as u64;
    let current = now.saturating_sub(CURSOR_EPOCH_MS) / interval_ms;
    match client {
        Some(c) if c >= current => {
            let jitter_ms = rand::rng().random_range(1..=3600u64) * 1000;
            c + jitter_ms.div_ceil(interval_ms).max(1)
        }
        _ => current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWENTY: Duration = Duration::from_secs(20);

    #[test]
    fn counts_intervals_from_the_epoch() {
        assert_eq!(next_cursor(CURSOR_EPOCH_MS, TWENTY, None), 0);
        assert_eq!(next_cursor(CURSOR_EPOCH_MS + 19_999, TWENTY, None), 0);
        assert_eq!(next_cursor(CURSOR_EPOCH_MS + 40_000, TWENTY, None), 2);
        // An old cursor from the client does not hold us back.
        assert_eq!(next_cursor(CURSOR_EPOCH_MS + 40_000, TWENTY, Some(1)), 2);
    }

    #[test]
    fn a_colliding_cursor_always_moves_forward_within_bounds() {
        let now = CURSOR_EPOCH_MS + 1_000_000;
        let current = next_cursor(now, TWENTY, None);
        for client in [current, current + 7] {
            for _ in 0..200 {
                let c = next_cursor(now, TWENTY, Some(client));
                assert!(c > client);
                assert!(
                    c <= client + 180,
                    "jitter is at most 3600 s = 180 intervals"
                );
            }
        }
    }
}
