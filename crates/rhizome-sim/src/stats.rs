//! Pure helpers: the reconnect schedule, the action mix, percentiles and per-second buckets.

use crate::ReturnMode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// When client `index` of `clients` reconnects, counted from the storm's start (the first at 0,
/// the others before `window`):
/// - [`ReturnMode::Burst`]: all at 0;
/// - [`ReturnMode::Even`]: `window * i / n`, a constant rate;
/// - [`ReturnMode::Ramp`]: `window * sqrt(i / n)`. Then `n * (t / window)²` clients have
///   returned by `t`, so the arrival rate, its derivative, grows linearly from 0 to `2n / window`.
pub fn reconnect_offset(index: usize, clients: usize, window: Duration, mode: ReturnMode) -> Duration {
    if clients == 0 {
        return Duration::ZERO;
    }
    match mode {
        ReturnMode::Burst => Duration::ZERO,
        ReturnMode::Even => {
            let nanos = window.as_nanos() * index as u128 / clients as u128;
            Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
        }
        ReturnMode::Ramp => window.mul_f64((index as f64 / clients as f64).sqrt()),
    }
}

/// Whether queued action `index` is a CRDT operation, for a share of `share` (0…1): spread
/// through the queue, `floor(n * share)` of the first `n` actions are.
pub fn is_crdt(index: usize, share: f64) -> bool {
    let before = (index as f64 * share).floor();
    let after = ((index + 1) as f64 * share).floor();
    after > before
}

/// The `p`-quantile (0…1) of `sorted` by the nearest-rank method; `None` when empty.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Counts per whole second since a start; the last bucket takes everything later.
#[derive(Debug)]
pub struct Buckets {
    counts: Vec<AtomicU64>,
}

impl Buckets {
    /// `seconds` buckets (at least one).
    pub fn new(seconds: usize) -> Buckets {
        Buckets { counts: (0..seconds.max(1)).map(|_| AtomicU64::new(0)).collect() }
    }

    /// Counts one event `elapsed` after the start.
    pub fn add(&self, elapsed: Duration) {
        let i = (elapsed.as_secs() as usize).min(self.counts.len() - 1);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts up to the last non-empty bucket.
    pub fn snapshot(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        while v.last() == Some(&0) {
            v.pop();
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets_ms(clients: usize, mode: ReturnMode) -> Vec<u128> {
        let w = Duration::from_millis(1000);
        (0..clients).map(|i| reconnect_offset(i, clients, w, mode).as_millis()).collect()
    }

    #[test]
    fn even_returns_are_spread_evenly_over_the_window() {
        assert_eq!(offsets_ms(4, ReturnMode::Even), [0, 250, 500, 750]);
        let w = Duration::from_millis(1000);
        assert_eq!(reconnect_offset(0, 1, w, ReturnMode::Even), Duration::ZERO);
        assert_eq!(reconnect_offset(3, 4, Duration::ZERO, ReturnMode::Even), Duration::ZERO);
    }

    #[test]
    fn a_burst_returns_everyone_at_the_start_whatever_the_window() {
        assert_eq!(offsets_ms(5, ReturnMode::Burst), [0; 5]);
    }

    #[test]
    fn a_ramp_returns_clients_at_a_linearly_growing_rate() {
        // sqrt(i / 4) of a second: 0, 0.5, 0.707…, 0.866….
        assert_eq!(offsets_ms(4, ReturnMode::Ramp), [0, 500, 707, 866]);
        let offsets = offsets_ms(1000, ReturnMode::Ramp);
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "in order");
        assert!(offsets.iter().all(|&t| t < 1000), "within the window");
        // A rate growing linearly from 0: a quarter of the clients in the first half, and in
        // each of the four quarters of the window 1, 3, 5 and 7 sixteenths of them.
        let in_quarter = |q: u128| offsets.iter().filter(|&&t| t >= q * 250 && t < (q + 1) * 250).count();
        assert_eq!([in_quarter(0), in_quarter(1), in_quarter(2), in_quarter(3)], [63, 187, 313, 437]);
    }

    #[test]
    fn the_crdt_share_is_spread_through_the_queue() {
        let count = |n: usize, share: f64| (0..n).filter(|&i| is_crdt(i, share)).count();
        assert_eq!(count(1000, 0.0), 0);
        assert_eq!(count(1000, 1.0), 1000);
        assert_eq!(count(1000, 0.25), 250);
        assert_eq!(count(10, 0.3), 3);
        // spread, not bunched at one end
        assert_eq!((0..500).filter(|&i| is_crdt(i, 0.5)).count(), 250);
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn buckets_count_per_second_and_clamp_the_tail() {
        let b = Buckets::new(3);
        b.add(Duration::from_millis(10));
        b.add(Duration::from_millis(999));
        b.add(Duration::from_millis(1000));
        b.add(Duration::from_secs(50));
        assert_eq!(b.snapshot(), [2, 1, 1]);
        assert_eq!(Buckets::new(5).snapshot(), Vec::<u64>::new());
    }
}
