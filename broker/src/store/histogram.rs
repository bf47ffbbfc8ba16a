//! A lock-free histogram with fixed integer bucket bounds, cheap enough for the journal's writer
//! thread (three relaxed atomic adds per observation, no allocation, no lock).
//!
//! The admin endpoint ([`crate::admin`]) reads a [`HistogramSnapshot`] at scrape time and encodes
//! it in the Prometheus format. A snapshot is not taken atomically across buckets: an observation
//! racing with it may show in `sum` but not yet in its bucket, which scrapers tolerate.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket upper bounds of the journal's fdatasync latency, in microseconds (50 µs to 2.5 s).
pub const FSYNC_MICROS_BOUNDS: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];

/// Bucket upper bounds of the records made durable by one group-commit fdatasync.
pub const BATCH_RECORDS_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

/// See the module documentation.
#[derive(Debug)]
pub struct Histogram {
    /// Inclusive upper bounds, ascending; one more bucket counts everything above the last.
    bounds: &'static [u64],
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// The counts of a [`Histogram`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Inclusive upper bounds of the finite buckets, ascending.
    pub bounds: Vec<u64>,
    /// Observations per bucket (not cumulative): `bounds.len() + 1` entries, the last one for
    /// values above every bound.
    pub counts: Vec<u64>,
    /// Sum of every observed value.
    pub sum: u64,
}

impl HistogramSnapshot {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl Histogram {
    /// An empty histogram with these bucket bounds (ascending).
    pub fn new(bounds: &'static [u64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "ascending bounds");
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn observe(&self, value: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// The current counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds.to_vec(),
            counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let h = Histogram::new(&[1, 10, 100]);
        for v in [0, 1, 2, 10, 11, 100, 101, 5000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.bounds, vec![1, 10, 100]);
        assert_eq!(s.counts, vec![2, 2, 2, 2]);
        assert_eq!(s.count(), 8);
        assert_eq!(s.sum, 1 + 2 + 10 + 11 + 100 + 101 + 5000);
    }
}
