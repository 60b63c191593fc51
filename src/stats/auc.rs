//! Streaming area under the ROC curve over binned scores, with the Hanley-McNeil interval.
//!
//! Scores in [0, 1] are counted in `BINS` equal bins per class; the AUC is the Mann-Whitney
//! statistic over those counts, ties (same bin) counted one half, so memory (a sparse table of
//! the bins used, at most `BINS` x 2 counters) and the cost of a read are bounded. Hanley & McNeil, "The meaning and use of the area under a receiver operating
//! characteristic (ROC) curve", Radiology 143 (1982), eq. 2:
//! `SE^2 = (A(1-A) + (n1-1)(Q1-A^2) + (n2-1)(Q2-A^2)) / (n1 n2)`,
//! `Q1 = A/(2-A)`, `Q2 = 2A^2/(1+A)`.

use super::count_table::{nibbles, Counter as _, Widening};
use crate::each_table;

/// Score bins per class.
pub const BINS: usize = 1024;

/// Binned scores of positives and negatives.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Roc {
    /// Per bin: `[positives, negatives]`, in counters as narrow as the counts allow.
    bins: Widening,
    n_pos: u64,
    n_neg: u64,
}

impl Default for Roc {
    fn default() -> Self {
        Roc {
            bins: Widening::new(BINS, 2),
            n_pos: 0,
            n_neg: 0,
        }
    }
}

impl Roc {
    /// Record one score (clamped to [0, 1]).
    #[inline]
    pub fn record(&mut self, score: f64, positive: bool) {
        let b = ((score.clamp(0.0, 1.0) * BINS as f64) as usize).min(BINS - 1);
        self.bins.add_one(b, usize::from(!positive));
        if positive {
            self.n_pos += 1;
        } else {
            self.n_neg += 1;
        }
    }

    /// Memory of the bins, in bytes.
    pub fn bytes(&self) -> usize {
        self.bins.bytes()
    }

    /// Positives and negatives recorded.
    pub fn counts(&self) -> (u64, u64) {
        (self.n_pos, self.n_neg)
    }

    /// The AUC (0.5 when a class is empty).
    pub fn auc(&self) -> f64 {
        if self.n_pos == 0 || self.n_neg == 0 {
            return 0.5;
        }
        // the bins used, in score order (empty bins add nothing)
        let mut below = 0f64; // negatives in lower bins
        let mut wins = 0f64;
        let mut step = |p: f64, n: f64| {
            wins += p * (below + 0.5 * n);
            below += n;
        };
        each_table!(&self.bins, t => {
            for (_, row) in t.sorted() {
                step(row[0].get() as f64, row[1].get() as f64);
            }
        }, packed => {
            for (_, row) in packed.sorted() {
                let [p, n] = nibbles(row[0]);
                step(p as f64, n as f64);
            }
        });
        wins / (self.n_pos as f64 * self.n_neg as f64)
    }

    /// The AUC with its normal-approximation interval at quantile `z` (Hanley-McNeil).
    pub fn interval(&self, z: f64) -> (f64, f64, f64) {
        let a = self.auc();
        let se = hanley_mcneil_se(a, self.n_pos, self.n_neg);
        (a, (a - z * se).max(0.0), (a + z * se).min(1.0))
    }

    /// Add another partition's counts.
    pub fn merge(&mut self, o: &Roc) {
        self.bins.merge(&o.bins);
        self.n_pos += o.n_pos;
        self.n_neg += o.n_neg;
    }
}

/// Hanley-McNeil standard error of an AUC `a` from `n1` positives and `n2` negatives.
pub fn hanley_mcneil_se(a: f64, n1: u64, n2: u64) -> f64 {
    if n1 == 0 || n2 == 0 {
        return 0.5;
    }
    let (n1, n2) = (n1 as f64, n2 as f64);
    let q1 = a / (2.0 - a);
    let q2 = 2.0 * a * a / (1.0 + a);
    let v = (a * (1.0 - a) + (n1 - 1.0) * (q1 - a * a) + (n2 - 1.0) * (q2 - a * a)) / (n1 * n2);
    v.max(0.0).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_and_tied_extremes() {
        let mut r = Roc::default();
        for _ in 0..10 {
            r.record(0.9, true);
            r.record(0.1, false);
        }
        assert_eq!(r.auc(), 1.0);
        let mut t = Roc::default();
        for _ in 0..10 {
            t.record(0.5, true);
            t.record(0.5, false);
        }
        assert_eq!(t.auc(), 0.5);
        assert_eq!(Roc::default().auc(), 0.5);
    }
}
