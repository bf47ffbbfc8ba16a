//! Exact per-producer sequence accounting for the consumer.
//!
//! Every message sent by `mq-client producer` carries `producer-id` and `producer-seq` (1, 2, 3,
//! ...). The consumer records, per producer id, the set of sequence numbers it saw:
//!
//! * **duplicates**: a sequence number seen again (each extra sighting counts once);
//! * **gaps**: at the end, per producer, the numbers in `1..=highest seen` that never arrived;
//! * **redelivered**: messages flagged `redelivered: true` by the broker.
//!
//! Sets are stored as chunked bitmaps ([`SeqSet`]): one bit per sequence number in 4096-number
//! chunks, so a million in-order messages cost ~32 KiB and merging the sets of competing consumers
//! (a queue with `--parallelThreads`) is a word-wise OR with a popcount of the overlap.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::ops::AddAssign;

use fabricmq_client::Message;

const WORDS: usize = 64;
const CHUNK_BITS: u64 = (WORDS as u64) * 64;

/// A set of `u64` sequence numbers, stored as a sparse bitmap of 4096-bit chunks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    chunks: BTreeMap<u64, Box<[u64; WORDS]>>,
    len: u64,
    max: Option<u64>,
}

impl SeqSet {
    /// An empty set.
    pub fn new() -> SeqSet {
        SeqSet::default()
    }

    /// Adds `seq`; returns `false` if it was already present.
    pub fn insert(&mut self, seq: u64) -> bool {
        let chunk = self
            .chunks
            .entry(seq / CHUNK_BITS)
            .or_insert_with(|| Box::new([0; WORDS]));
        let bit = seq % CHUNK_BITS;
        let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
        if chunk[word] & mask != 0 {
            return false;
        }
        chunk[word] |= mask;
        self.len += 1;
        self.max = Some(self.max.map_or(seq, |m| m.max(seq)));
        true
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        let bit = seq % CHUNK_BITS;
        self.chunks
            .get(&(seq / CHUNK_BITS))
            .is_some_and(|c| c[(bit / 64) as usize] & (1u64 << (bit % 64)) != 0)
    }

    /// Number of distinct sequence numbers.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Highest sequence number in the set.
    pub fn max(&self) -> Option<u64> {
        self.max
    }

    /// Numbers in `1..=max()` that are not in the set (0 for an empty set).
    pub fn missing_below_max(&self) -> u64 {
        match self.max {
            None => 0,
            // `0` is not a valid producer-seq; if it was seen it does not fill a gap.
            Some(max) => max - (self.len - u64::from(self.contains(0))),
        }
    }

    /// Adds every number of `other`; returns how many were already present (the overlap).
    pub fn merge(&mut self, other: &SeqSet) -> u64 {
        let mut overlap = 0u64;
        for (&key, theirs) in &other.chunks {
            match self.chunks.entry(key) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(theirs.clone());
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    let ours = o.get_mut();
                    for (a, b) in ours.iter_mut().zip(theirs.iter()) {
                        overlap += u64::from((*a & *b).count_ones());
                        *a |= *b;
                    }
                }
            }
        }
        self.len = self.len + other.len - overlap;
        self.max = match (self.max, other.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        overlap
    }
}

/// Totals reported by the consumer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Messages processed.
    pub received: u64,
    /// Missing sequence numbers below the highest seen, summed over producers.
    pub gaps: u64,
    /// Sequence numbers seen more than once (each extra sighting counts).
    pub duplicates: u64,
    /// Messages carrying `redelivered: true`.
    pub redelivered: u64,
    /// Messages without usable `producer-id`/`producer-seq` headers (not sequence-checked).
    pub untracked: u64,
    /// Distinct producer ids seen.
    pub producers: u64,
}

impl AddAssign for Summary {
    fn add_assign(&mut self, o: Summary) {
        self.received += o.received;
        self.gaps += o.gaps;
        self.duplicates += o.duplicates;
        self.redelivered += o.redelivered;
        self.untracked += o.untracked;
        self.producers += o.producers;
    }
}

/// Sequence accounting of one message stream (one consumer, or several merged).
#[derive(Debug, Clone, Default)]
pub struct Accounting {
    producers: HashMap<String, SeqSet>,
    received: u64,
    duplicates: u64,
    redelivered: u64,
    untracked: u64,
}

impl Accounting {
    /// Empty accounting.
    pub fn new() -> Accounting {
        Accounting::default()
    }

    /// Records one received message from its `producer-id`, `producer-seq` and `redelivered` flag.
    pub fn record_message(&mut self, msg: &Message) {
        let seq = msg
            .header("producer-seq")
            .and_then(|s| s.trim().parse().ok());
        self.record(msg.header("producer-id"), seq, msg.redelivered);
    }

    /// Records one received message. Without a producer id or a valid seq it is only counted.
    pub fn record(&mut self, producer_id: Option<&str>, seq: Option<u64>, redelivered: bool) {
        self.received += 1;
        if redelivered {
            self.redelivered += 1;
        }
        let (Some(id), Some(seq)) = (producer_id, seq) else {
            self.untracked += 1;
            return;
        };
        // Look up by &str first so the common case allocates nothing.
        let seen = match self.producers.get_mut(id) {
            Some(set) => set,
            None => self.producers.entry(id.to_owned()).or_default(),
        };
        if !seen.insert(seq) {
            self.duplicates += 1;
        }
    }

    /// Merges the accounting of a consumer of the *same* stream (competing consumers on a queue):
    /// a sequence number seen by both counts as a duplicate.
    pub fn merge(&mut self, other: Accounting) {
        self.received += other.received;
        self.duplicates += other.duplicates;
        self.redelivered += other.redelivered;
        self.untracked += other.untracked;
        for (id, theirs) in other.producers {
            match self.producers.entry(id) {
                Entry::Vacant(v) => {
                    v.insert(theirs);
                }
                Entry::Occupied(mut o) => self.duplicates += o.get_mut().merge(&theirs),
            }
        }
    }

    /// Messages recorded so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The sequence numbers seen from one producer.
    pub fn seqs(&self, producer_id: &str) -> Option<&SeqSet> {
        self.producers.get(producer_id)
    }

    /// Totals; gaps are computed now (missing numbers below each producer's highest).
    pub fn summary(&self) -> Summary {
        Summary {
            received: self.received,
            gaps: self.producers.values().map(SeqSet::missing_below_max).sum(),
            duplicates: self.duplicates,
            redelivered: self.redelivered,
            untracked: self.untracked,
            producers: self.producers.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(events: &[(&str, u64)]) -> Accounting {
        let mut a = Accounting::new();
        for &(id, seq) in events {
            a.record(Some(id), Some(seq), false);
        }
        a
    }

    #[test]
    fn seqset_basics() {
        let mut s = SeqSet::new();
        assert!(s.is_empty());
        assert_eq!(s.missing_below_max(), 0);
        assert!(s.insert(1));
        assert!(s.insert(5000));
        assert!(!s.insert(5000));
        assert!(s.insert(u64::MAX));
        assert!(s.contains(1) && s.contains(5000) && s.contains(u64::MAX));
        assert!(!s.contains(2) && !s.contains(4999));
        assert_eq!(s.len(), 3);
        assert_eq!(s.max(), Some(u64::MAX));
    }

    #[test]
    fn in_order_stream_has_no_gaps_or_duplicates() {
        let a = acc(&(1..=10_000).map(|i| ("p-1", i)).collect::<Vec<_>>());
        let s = a.summary();
        assert_eq!(
            s,
            Summary {
                received: 10_000,
                producers: 1,
                ..Summary::default()
            }
        );
    }

    #[test]
    fn gaps_are_missing_numbers_below_the_highest() {
        // Missing 2, 3 and 7; nothing above 8 is a gap.
        let s = acc(&[("p", 1), ("p", 4), ("p", 5), ("p", 6), ("p", 8)]).summary();
        assert_eq!((s.received, s.gaps, s.duplicates), (5, 3, 0));
        // A stream that does not start at 1 has a gap for the beginning.
        assert_eq!(acc(&[("p", 3)]).summary().gaps, 2);
    }

    #[test]
    fn out_of_order_is_neither_gap_nor_duplicate() {
        let s = acc(&[("p", 3), ("p", 1), ("p", 2), ("p", 5), ("p", 4)]).summary();
        assert_eq!((s.gaps, s.duplicates), (0, 0));
    }

    #[test]
    fn duplicates_count_each_extra_sighting() {
        let s = acc(&[("p", 1), ("p", 2), ("p", 2), ("p", 2), ("p", 1), ("p", 3)]).summary();
        assert_eq!((s.received, s.gaps, s.duplicates), (6, 0, 3));
    }

    #[test]
    fn producers_are_accounted_separately() {
        let s = acc(&[("a", 1), ("b", 1), ("a", 2), ("b", 3), ("b", 3)]).summary();
        assert_eq!((s.producers, s.gaps, s.duplicates), (2, 1, 1));
    }

    #[test]
    fn redelivered_and_untracked() {
        let mut a = Accounting::new();
        a.record(Some("p"), Some(1), true);
        a.record(Some("p"), Some(1), true);
        a.record(None, Some(2), false);
        a.record(Some("p"), None, false);
        let s = a.summary();
        assert_eq!(
            (s.received, s.redelivered, s.duplicates, s.untracked, s.gaps),
            (4, 2, 1, 2, 0)
        );
    }

    #[test]
    fn seq_zero_does_not_fill_a_gap() {
        let s = acc(&[("p", 0), ("p", 2)]).summary();
        assert_eq!(s.gaps, 1);
    }

    #[test]
    fn merging_competing_consumers_is_exact() {
        // Two consumers on one queue: odd and even seqs, 4 delivered to both, 9 to nobody.
        let mut a = acc(&[("p", 1), ("p", 3), ("p", 4), ("p", 5), ("p", 7)]);
        let b = acc(&[("p", 2), ("p", 4), ("p", 6), ("p", 8), ("p", 10), ("q", 1)]);
        a.merge(b);
        let s = a.summary();
        assert_eq!(s.received, 11);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.gaps, 1);
        assert_eq!(s.producers, 2);
        assert_eq!(a.seqs("p").unwrap().len(), 9);
    }

    #[test]
    fn merge_keeps_duplicates_seen_inside_each_side() {
        let mut a = acc(&[("p", 1), ("p", 1)]);
        a.merge(acc(&[("p", 2), ("p", 2), ("p", 1)]));
        let s = a.summary();
        assert_eq!((s.received, s.duplicates, s.gaps), (5, 3, 0));
    }

    #[test]
    fn large_interleaved_merge_matches_naive_count() {
        let n = 100_000u64;
        let mut a = Accounting::new();
        let mut b = Accounting::new();
        for i in 1..=n {
            // Every 1000th message is lost, every 777th is delivered to both consumers.
            if i % 1000 == 0 {
                continue;
            }
            if i % 2 == 0 || i % 777 == 0 {
                a.record(Some("p"), Some(i), false);
            }
            if i % 2 == 1 || i % 777 == 0 {
                b.record(Some("p"), Some(i), false);
            }
        }
        a.merge(b);
        let s = a.summary();
        let lost = n / 1000;
        let both = (1..=n).filter(|i| i % 777 == 0 && i % 1000 != 0).count() as u64;
        assert_eq!(s.duplicates, both);
        // The highest seq (100000) is itself lost, so the gaps stop at 99999.
        assert_eq!(s.gaps, lost - 1);
        assert_eq!(s.received, n - lost + both);
    }

    #[test]
    fn summaries_add_up() {
        let mut total = acc(&[("p", 1), ("p", 3)]).summary();
        total += acc(&[("p", 1), ("p", 1)]).summary();
        assert_eq!(
            (
                total.received,
                total.gaps,
                total.duplicates,
                total.producers
            ),
            (4, 1, 1, 2)
        );
    }
}
