//! HdrHistogram's bucket layout (Tene; the `hdrhistogram` crate) with sparse counts.
//!
//! With 2 significant digits over `[1, 2^50]` a dense HdrHistogram holds 5,633 `u64` counters
//! (45 KB) from its first value on; a numeric input of an experiment has one per arm, so a few
//! hundred experiments with numeric inputs took hundreds of megabytes before any traffic. Here
//! the same buckets (`bucket = 56 - lz(v | 255)`, `sub = v >> bucket`, index
//! `(bucket + 1) * 128 + sub - 128`) count into a widening [`Widening`] table (bytes until a bucket passes 254) that holds only the buckets
//! used, and quantiles follow `Histogram::value_at_quantile` exactly (the highest value
//! equivalent to the first bucket whose cumulative count reaches `ceil(q n)`); the suite checks
//! both against the crate on random data.

use super::count_table::{Counter as _, Widening};
use crate::each_table;

/// `2 * 10^2` needs 8 bits of sub-bucket: 256 sub-buckets, the upper 128 used past bucket 0.
const HALF_MAGNITUDE: u32 = 7;
const SUB_MASK: u64 = 255;
/// `64 - unit magnitude (0) - sub-bucket magnitude (8)`.
const LZ_BASE: u32 = 56;
/// Largest value tracked; larger ones are clamped to it.
pub const MAX: u64 = 1 << 50;
/// Buckets up to [`MAX`].
const INDICES: usize = index_of(MAX) + 1;

#[inline]
const fn bucket_of(v: u64) -> u32 {
    LZ_BASE - (v | SUB_MASK).leading_zeros()
}

/// The counts index of value `v` (as `Histogram::index_for`).
#[inline]
const fn index_of(v: u64) -> usize {
    let b = bucket_of(v);
    let sub = v >> b;
    (((b + 1) << HALF_MAGNITUDE) as u64 + sub - (1 << HALF_MAGNITUDE)) as usize
}

/// The lowest value of counts index `i` and the width of its bucket.
fn range_of(i: usize) -> (u64, u64) {
    let mut b = (i >> HALF_MAGNITUDE) as i64 - 1;
    let mut sub = (i as u64 & ((1 << HALF_MAGNITUDE) - 1)) + (1 << HALF_MAGNITUDE);
    if b < 0 {
        sub -= 1 << HALF_MAGNITUDE;
        b = 0;
    }
    (sub << b, 1 << b)
}

/// A histogram of non-negative integers with 2 significant digits.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SparseHdr {
    /// Counts per bucket, in counters as narrow as they allow.
    counts: Widening,
    total: u64,
}

impl Default for SparseHdr {
    fn default() -> Self {
        SparseHdr {
            counts: Widening::new(INDICES, 1),
            total: 0,
        }
    }
}

impl SparseHdr {
    /// Hint the cache line of `v`'s counter (see [`crate::hint`]).
    #[inline]
    pub fn prefetch(&self, v: u64) {
        self.counts.prefetch(index_of(v.min(MAX)));
    }

    /// Count `v` (clamped to [`MAX`]).
    #[inline]
    pub fn record(&mut self, v: u64) {
        self.counts.add_one(index_of(v.min(MAX)), 0);
        self.total += 1;
    }

    /// Values counted.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The values at quantiles `qs` (ascending), in one pass: as `value_at_quantile`, 0 when
    /// empty.
    pub fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [u64; N] {
        let mut out = [0u64; N];
        // one column: never in nibbles (those are two-column tables), but read them right anyway
        let rows: Vec<(usize, u64)> = each_table!(&self.counts, t => t
            .sorted()
            .into_iter()
            .map(|(i, row)| (i, row[0].get()))
            .collect(), _n => self.counts.wide().sorted().into_iter().map(|(i, row)| (i, row[0])).collect());
        let mut rows = rows.iter();
        let mut cum = 0u64;
        let mut at = None;
        for (q, o) in qs.iter().zip(out.iter_mut()) {
            let q = q.min(1.0);
            let target = ((q * self.total as f64).ceil() as u64).max(1);
            while cum < target {
                let Some((i, row)) = rows.next() else { break };
                cum += row;
                at = Some(*i);
            }
            if let Some(i) = at {
                let (lo, width) = range_of(i);
                *o = if q == 0.0 { lo } else { lo + width - 1 };
            }
        }
        out
    }

    /// Add another histogram's counts.
    pub fn merge(&mut self, other: &SparseHdr) {
        self.counts.merge(&other.counts);
        self.total += other.total;
    }

    /// Memory of the counts, in bytes.
    pub fn bytes(&self) -> usize {
        self.counts.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::Histogram;
    use proptest::prelude::*;

    fn reference() -> Histogram<u64> {
        Histogram::new_with_bounds(1, MAX, 2).expect("valid bounds")
    }

    proptest! {
        /// Same quantiles as the `hdrhistogram` crate, value for value.
        #[test]
        fn quantiles_match_the_hdrhistogram_crate(
            values in proptest::collection::vec(
                prop_oneof![0u64..300, 0u64..100_000, 0u64..(1u64 << 50), Just(1u64 << 50)],
                1..400,
            ),
            qs in proptest::collection::vec(0.0f64..=1.0, 1..6),
        ) {
            let (mut ours, mut theirs) = (SparseHdr::default(), reference());
            for &v in &values {
                ours.record(v);
                theirs.record(v).expect("in range");
            }
            let mut qs = qs;
            qs.sort_by(f64::total_cmp);
            for &q in &qs {
                prop_assert_eq!(ours.quantiles([q])[0], theirs.value_at_quantile(q), "q {}", q);
            }
            prop_assert_eq!(ours.quantiles([0.0, 0.5, 1.0]), [
                theirs.value_at_quantile(0.0),
                theirs.value_at_quantile(0.5),
                theirs.value_at_quantile(1.0),
            ]);
        }
    }

    #[test]
    fn index_layout_matches_the_dense_histogram() {
        // every value up to MAX has an index within the dense histogram's counts
        assert!(INDICES <= reference().distinct_values());
        assert_eq!(SparseHdr::default().quantiles([0.5]), [0]);
    }

    #[test]
    fn memory_follows_distinct_buckets() {
        let mut h = SparseHdr::default();
        for i in 0..10_000u64 {
            h.record([200, 700, 1000][(i % 3) as usize]);
        }
        assert!(h.bytes() < 1024, "{} bytes", h.bytes());
        assert!(reference().distinct_values() * 8 > 40_000);
    }
}
