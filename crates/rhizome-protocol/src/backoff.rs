//! Reconnect delays: exponential backoff with full jitter, and the server's retry hint.
//!
//! Pure functions of the attempt number and a random source, so they are tested with a seeded
//! generator instead of sleeps.

use rand::Rng;
use std::time::Duration;

/// Longest retry hint honoured; a larger `Retry-After` is cut to this.
pub const RETRY_HINT_MAX: Duration = Duration::from_secs(3600);

/// Exponential backoff with full jitter: before attempt `n` (from 0) the client waits a
/// uniformly random time in `[0, min(max, base * 2^n)]`.
///
/// Full jitter (rather than `delay ± 50%` as `@logux/client` does) spreads thousands of
/// clients dropped at the same instant evenly over the whole window, so they do not come back
/// in waves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The window of the first retry.
    pub base: Duration,
    /// The largest window.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Duration::from_millis(500), max: Duration::from_secs(30) }
    }
}

impl Backoff {
    /// The window of attempt `attempt`: `min(max, base * 2^attempt)`.
    pub fn window(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay before attempt `attempt`. With a retry hint from the server (such as HTTP
    /// `Retry-After`), the client waits the hint plus a random part of the window, so clients
    /// told the same hint still spread out instead of returning together.
    pub fn delay(&self, attempt: u32, hint: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let window = self.window(attempt);
        let jitter = if window.is_zero() { Duration::ZERO } else { rng.gen_range(Duration::ZERO..=window) };
        match hint {
            Some(hint) => hint.min(RETRY_HINT_MAX) + jitter,
            None => jitter,
        }
    }
}

/// Reads a `Retry-After` header value given in seconds (the HTTP-date form is not used by
/// servers that shed load and is ignored).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs).map(|d| d.min(RETRY_HINT_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn backoff() -> Backoff {
        Backoff { base: Duration::from_millis(100), max: Duration::from_secs(5) }
    }

    #[test]
    fn the_window_doubles_up_to_the_maximum() {
        let b = backoff();
        let windows: Vec<u128> = (0..8).map(|n| b.window(n).as_millis()).collect();
        assert_eq!(windows, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(b.window(200), Duration::from_secs(5), "no overflow for large attempts");
    }

    #[test]
    fn delays_are_within_the_window_and_replay_with_the_seed() {
        let b = backoff();
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..10).map(|n| b.delay(n, None, &mut rng)).collect::<Vec<_>>()
        };
        let delays = run(7);
        assert_eq!(delays, run(7), "the same seed gives the same delays");
        assert_ne!(delays, run(8));
        for (n, d) in delays.iter().enumerate() {
            assert!(*d <= b.window(n as u32), "attempt {n}: {d:?}");
        }
    }

    #[test]
    fn jitter_is_full_not_centred() {
        // Over many draws of one attempt the delays cover the whole window, from near zero
        // to near the top: full jitter, not `window/2 ± x`.
        let b = backoff();
        let mut rng = StdRng::seed_from_u64(1);
        let window = b.window(5).as_millis() as f64;
        let draws: Vec<f64> = (0..2000).map(|_| b.delay(5, None, &mut rng).as_millis() as f64).collect();
        let min = draws.iter().cloned().fold(f64::MAX, f64::min);
        let max = draws.iter().cloned().fold(0.0, f64::max);
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!(min < window * 0.01, "min {min}");
        assert!(max > window * 0.99, "max {max}");
        assert!((mean - window / 2.0).abs() < window * 0.05, "mean {mean}");
    }

    #[test]
    fn a_retry_hint_is_a_floor_with_jitter_on_top() {
        let b = backoff();
        let mut rng = StdRng::seed_from_u64(3);
        for n in 0..10 {
            let d = b.delay(n, Some(Duration::from_secs(2)), &mut rng);
            assert!(d >= Duration::from_secs(2) && d <= Duration::from_secs(2) + b.window(n), "{d:?}");
        }
        let d = b.delay(0, Some(Duration::from_secs(1 << 40)), &mut rng);
        assert!(d <= RETRY_HINT_MAX + b.window(0));
    }

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(parse_retry_after(" 30 "), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("999999999"), Some(RETRY_HINT_MAX));
    }
}
