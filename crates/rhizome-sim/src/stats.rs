//! Pure helpers: the reconnect schedule, the action mix, percentiles and per-second buckets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// When client `index` of `clients` reconnects, counted from the storm's start: spread evenly
/// over `window` (the first at 0, the last just before `window`).
pub fn reconnect_offset(index: usize, clients: usize, window: Duration) -> Duration {
    if clients == 0 {
        return Duration::ZERO;
    }
    let nanos = window.as_nanos() * index as u128 / clients as u128;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
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

    #[test]
    fn reconnects_are_spread_evenly_over_the_window() {
        let w = Duration::from_millis(1000);
        let offsets: Vec<u128> = (0..4).map(|i| reconnect_offset(i, 4, w).as_millis()).collect();
        assert_eq!(offsets, [0, 250, 500, 750]);
        assert_eq!(reconnect_offset(0, 1, w), Duration::ZERO);
        assert_eq!(reconnect_offset(3, 4, Duration::ZERO), Duration::ZERO);
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
