//! Anytime-valid test of multinomial counts against known weights.
//!
//! Lindon & Malek, "Anytime-Valid Inference for Multinomial Count Data", NeurIPS 2022
//! (arXiv 2011.03567); reference implementation: Optimizely's `ssrm-test`. With a
//! `Dirichlet(k * theta0)` mixture over the arm probabilities, the Bayes factor against
//! `H0: p = theta0` is
//!
//! ```text
//! log BF_n = lnG(A) - lnG(A+n) + sum_i [lnG(a_i + x_i) - lnG(a_i)] - sum_i x_i ln theta0_i
//! ```
//!
//! with `a_i = k theta0_i`, `A = k`. It is a nonnegative martingale under H0, so by Ville's
//! inequality `P(sup_n BF_n >= 1/alpha) <= alpha`: it may be checked after every event. An
//! equal-weight average over a grid of `k` is again an e-process; small `k` catches large
//! imbalances early, large `k` catches small ones eventually.
//!
//! The state is just the counts (the Bayes factor is a function of them), which makes it
//! mergeable across partitions; the per-`k` factors are kept incrementally in linear scale so
//! that an update costs a multiply-divide per grid point and reading the value one `ln`.

use smallvec::SmallVec;
use statrs::function::gamma::ln_gamma;

/// The null hypothesis (design weights) and the mixture grid, shared by many e-processes.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Design {
    weights: Box<[f64]>,
    ln_weights: Box<[f64]>,
    ks: Box<[f64]>,
}

impl Design {
    /// `weights` must be positive and sum to one; `ks` positive and non-empty (checked by the
    /// config layer; here they are normalised defensively).
    pub fn new(weights: &[f64], ks: &[f64]) -> Design {
        let total: f64 = weights.iter().sum();
        let weights: Box<[f64]> = weights.iter().map(|w| w / total).collect();
        let ln_weights = weights.iter().map(|w| w.ln()).collect();
        Design {
            weights,
            ln_weights,
            ks: ks.into(),
        }
    }

    /// Number of arms.
    pub fn arms(&self) -> usize {
        self.weights.len()
    }

    /// Design weight of each arm.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// The concentration grid.
    pub fn ks(&self) -> &[f64] {
        &self.ks
    }

    /// `ln theta0` per arm.
    pub fn ln_weights(&self) -> &[f64] {
        &self.ln_weights
    }
}

/// `sum_a x_a ln((x_a / n) / theta0_a) = n KL(p_hat || theta0)`: the log-likelihood ratio of the
/// maximum-likelihood arm shares against the design. Subtracting it from a stratified
/// design-null log e-value turns it into the universal-inference e-value for the composite null
/// "the arm is independent of the stratum, with any marginal" (Wasserman, Ramdas & Balakrishnan,
/// "Universal inference", PNAS 2020, running-MLE form: the denominator is the null likelihood
/// maximised over all data so far, so the ratio is dominated by a test martingale for every
/// null marginal and stays anytime-valid).
pub fn mle_log_lr(counts: &[u64], design: &Design) -> f64 {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    counts
        .iter()
        .zip(design.ln_weights.iter())
        .filter(|(&x, _)| x > 0)
        .map(|(&x, lw)| x as f64 * ((x as f64 / n).ln() - lw))
        .sum()
}

/// One Dirichlet-multinomial e-process (a mixture over the design's `k` grid). Two arms and
/// the default four-point grid live inline (no heap allocation): an experiment holds one per
/// value of every watched input.
///
/// Each grid point's Bayes factor is kept as `exp(base) * m_k` with linear-scale `m_k`: an
/// update multiplies every `m_k` by its ratio (no logarithm), and the mixture's log e-value
/// costs one `ln`. `base` absorbs the scale whenever the largest `m_k` drifts far from 1, so
/// it never overflows; a grid point more than ~1e300 times smaller than the largest may
/// underflow to zero, which changes the mixture by less than 1e-300 relative.
///
/// The total count is the counts' sum, not a field (an experiment holds one e-process per
/// value of every input: 8 bytes each), but it is written in snapshots as before.
#[derive(Clone, Debug, PartialEq)]
pub struct DmEProcess {
    counts: SmallVec<[u64; 2]>,
    base: f64,
    m: SmallVec<[f64; 4]>,
}

/// [`DmEProcess`] as snapshots hold it (with its total count).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename = "DmEProcess")]
struct DmWire<C, M> {
    counts: C,
    n: u64,
    base: f64,
    m: M,
}

impl serde::Serialize for DmEProcess {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        DmWire {
            counts: &self.counts[..],
            n: self.n(),
            base: self.base,
            m: &self.m[..],
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for DmEProcess {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w: DmWire<SmallVec<[u64; 2]>, SmallVec<[f64; 4]>> = DmWire::deserialize(d)?;
        let sum = w.counts.iter().try_fold(0u64, |a, &c| a.checked_add(c));
        if sum != Some(w.n) {
            return Err(serde::de::Error::custom(format!(
                "e-process: counts {:?} do not sum to its total {}",
                w.counts, w.n
            )));
        }
        Ok(DmEProcess {
            counts: w.counts,
            base: w.base,
            m: w.m,
        })
    }
}

const RESCALE_HI: f64 = 1e150;
const RESCALE_LO: f64 = 1e-150;

impl DmEProcess {
    /// A fresh e-process (value 1) for `design`.
    pub fn new(design: &Design) -> DmEProcess {
        DmEProcess::empty(design.arms(), design.ks.len())
    }

    /// Heap bytes of an e-process over `arms` arms and a `grid`-point grid: what does not fit
    /// its inline room (two arms, four points). Every e-process of one design has the same, so
    /// a table of them is counted without visiting each.
    pub fn heap_bytes(arms: usize, grid: usize) -> usize {
        let spilled = |n: usize, inline: usize| if n > inline { n * 8 } else { 0 };
        spilled(arms, 2) + spilled(grid, 4)
    }

    /// A fresh e-process over `arms` arms and a grid of `grid` points (what [`Self::new`]
    /// gives for such a design).
    pub fn empty(arms: usize, grid: usize) -> DmEProcess {
        DmEProcess {
            counts: smallvec::smallvec![0; arms],
            base: 0.0,
            m: smallvec::smallvec![1.0; grid],
        }
    }

    /// Whether this is [`Self::empty`]: nothing counted, nothing merged.
    pub fn is_fresh(&self) -> bool {
        self.n() == 0 && self.base == 0.0 && self.m.iter().all(|&m| m == 1.0)
    }

    /// Points of its concentration grid.
    pub fn grid(&self) -> usize {
        self.m.len()
    }

    /// Count one observation in `arm`: `BF_n = BF_{n-1} (a_j + x_j) / ((A + n - 1) theta0_j)`.
    /// Returns the factor by which the mixture grew (`E_n / E_{n-1}`), so a product of
    /// e-processes can be kept up to date without a logarithm per event.
    #[inline]
    pub fn observe(&mut self, design: &Design, arm: usize) -> f64 {
        // counts stay far below 2^63: the signed conversion is one instruction
        let x = self.counts[arm] as i64 as f64;
        let n = self.n() as i64 as f64;
        let w = design.weights[arm];
        let (before, after, hi) = match (
            <&mut [f64; 4]>::try_from(&mut self.m[..]),
            <&[f64; 4]>::try_from(&design.ks[..]),
        ) {
            // the default grid, in fixed-size arrays the compiler can vectorise
            (Ok(m), Ok(ks)) => {
                let before = (m[0] + m[1]) + (m[2] + m[3]);
                let num: [f64; 4] = std::array::from_fn(|i| ks[i] * w + x);
                let den: [f64; 4] = std::array::from_fn(|i| (ks[i] + n) * w);
                let f: [f64; 4] = std::array::from_fn(|i| num[i] / den[i]);
                *m = std::array::from_fn(|i| m[i] * f[i]);
                let after = (m[0] + m[1]) + (m[2] + m[3]);
                (before, after, m[0].max(m[1]).max(m[2].max(m[3])))
            }
            _ => {
                let (mut before, mut after, mut hi) = (0.0, 0.0, 0.0f64);
                for (m, k) in self.m.iter_mut().zip(design.ks.iter()) {
                    before += *m;
                    *m *= (k * w + x) / ((k + n) * w);
                    after += *m;
                    hi = hi.max(*m);
                }
                (before, after, hi)
            }
        };
        self.counts[arm] += 1;
        if !(RESCALE_LO..=RESCALE_HI).contains(&hi) {
            self.rescale();
        }
        after / before
    }

    #[cold]
    fn rescale(&mut self) {
        let hi = self.m.iter().copied().fold(0.0f64, f64::max);
        if hi > 0.0 && hi.is_finite() {
            self.base += hi.ln();
            for m in self.m.iter_mut() {
                *m /= hi;
            }
        }
    }

    /// `log BF` of grid point `i`.
    pub fn log_bf(&self, i: usize) -> f64 {
        self.base + self.m[i].ln()
    }

    /// The log e-value: `ln mean_k BF_n(k)`.
    #[inline]
    pub fn log_e(&self) -> f64 {
        let sum: f64 = self.m.iter().sum();
        self.base + (sum / self.m.len() as f64).ln()
    }

    /// Counts per arm.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Total count.
    #[inline]
    pub fn n(&self) -> u64 {
        match self.counts[..] {
            [a, b] => a + b,
            ref all => all.iter().sum(),
        }
    }

    /// Largest deviation of an observed arm share from its design weight (0 when empty).
    pub fn max_share_deviation(&self, design: &Design) -> f64 {
        let n = self.n();
        if n == 0 {
            return 0.0;
        }
        let n = n as f64;
        self.counts
            .iter()
            .zip(design.weights.iter())
            .map(|(&c, w)| (c as f64 / n - w).abs())
            .fold(0.0, f64::max)
    }

    /// Combine with the counts of another partition; the Bayes factor is recomputed from the
    /// closed form, which depends on the counts alone.
    pub fn merge(&mut self, other: &DmEProcess, design: &Design) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        let logs: Vec<f64> = design
            .ks
            .iter()
            .map(|&k| log_bayes_factor(&self.counts, design.weights(), k))
            .collect();
        self.base = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        for (m, l) in self.m.iter_mut().zip(&logs) {
            *m = (l - self.base).exp();
        }
    }
}

/// The closed-form `log BF` of `counts` against `theta0` with concentration `k`.
pub fn log_bayes_factor(counts: &[u64], theta0: &[f64], k: f64) -> f64 {
    let n: u64 = counts.iter().sum();
    let mut out = ln_gamma(k) - ln_gamma(k + n as f64);
    for (&x, &t) in counts.iter().zip(theta0) {
        let a = k * t;
        out += ln_gamma(a + x as f64) - ln_gamma(a) - x as f64 * t.ln();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The e-process as it was laid out before its total count became the counts' sum: the
    /// serialized form snapshots hold.
    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(rename = "DmEProcess")]
    struct Earlier {
        counts: SmallVec<[u64; 2]>,
        n: u64,
        base: f64,
        m: SmallVec<[f64; 4]>,
    }

    #[test]
    fn serialized_with_its_total_as_before() {
        let design = Design::new(&[0.5, 0.3, 0.2], &[10.0, 1000.0]);
        let mut ep = DmEProcess::new(&design);
        for arm in [0, 1, 1, 2, 0, 0] {
            ep.observe(&design, arm);
        }
        let bytes = postcard::to_allocvec(&ep).unwrap();
        let earlier: Earlier = postcard::from_bytes(&bytes).unwrap();
        assert_eq!((earlier.counts.as_slice(), earlier.n), (&[3, 2, 1][..], 6));
        assert_eq!(postcard::to_allocvec(&earlier).unwrap(), bytes);
        assert_eq!(postcard::from_bytes::<DmEProcess>(&bytes).unwrap(), ep);
        // a total that is not the counts' sum is refused
        let wrong = Earlier { n: 7, ..earlier };
        let bytes = postcard::to_allocvec(&wrong).unwrap();
        assert!(postcard::from_bytes::<DmEProcess>(&bytes).is_err());
    }

    /// Lindon & Malek Bayes factors, `../shared/design/statistics.md` section 1.
    #[test]
    fn shared_vectors_closed_form() {
        let half = [0.5, 0.5];
        let cases = [
            ([2600u64, 2400], 100.0, 1.954980),
            ([2600, 2400], 10000.0, 1.130721),
            ([600, 400], 100.0, 17.098940),
            ([600, 400], 10000.0, 1.770790),
        ];
        for (counts, k, want) in cases {
            let got = log_bayes_factor(&counts, &half, k);
            assert!(
                (got - want).abs() < 1e-5,
                "{counts:?} k={k}: {got} vs {want}"
            );
        }
        assert!((log_bayes_factor(&[600, 400], &half, 100.0).exp() / 2.66671e7 - 1.0).abs() < 1e-5);
    }

    /// The `ssrm-test` sequence for design [0.4, 0.4, 0.2], k = 10000.
    #[test]
    fn shared_vectors_streaming_three_arms() {
        let design = Design::new(&[0.4, 0.4, 0.2], &[10000.0]);
        let mut e = DmEProcess::new(&design);
        let checkpoints: [([u64; 3], f64); 4] = [
            ([20, 17, 9], 0.996015),
            ([38, 38, 17], 0.991768),
            ([42, 44, 21], 0.989755),
            ([60, 63, 32], 0.985463),
        ];
        for (target, want) in checkpoints {
            // feed arms round-robin until the counts reach the checkpoint
            while e.counts() != target {
                for (arm, &t) in target.iter().enumerate() {
                    if e.counts()[arm] < t {
                        e.observe(&design, arm);
                    }
                }
            }
            assert!(
                (e.log_e().exp() - want).abs() < 1e-6,
                "{target:?}: {}",
                e.log_e().exp()
            );
        }
    }

    #[test]
    fn mixture_is_mean_of_factors() {
        let design = Design::new(&[0.5, 0.5], &[100.0, 10000.0]);
        let mut e = DmEProcess::new(&design);
        for i in 0..1000 {
            e.observe(&design, usize::from(i % 5 < 3));
        }
        let want = (log_bayes_factor(e.counts(), &[0.5, 0.5], 100.0).exp()
            + log_bayes_factor(e.counts(), &[0.5, 0.5], 10000.0).exp())
            / 2.0;
        assert!((e.log_e() - want.ln()).abs() < 1e-9);
    }

    /// A long, very unbalanced stream forces rescaling; the value stays exact.
    #[test]
    fn rescaling_keeps_exact_values() {
        let design = Design::new(&[0.5, 0.5], &[10.0, 10000.0]);
        let mut e = DmEProcess::new(&design);
        for i in 0..200_000u64 {
            e.observe(&design, usize::from(i % 10 < 7));
        }
        let closed: Vec<f64> = [10.0, 10000.0]
            .iter()
            .map(|&k| log_bayes_factor(e.counts(), design.weights(), k))
            .collect();
        let hi = closed.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mixture = hi + (closed.iter().map(|l| (l - hi).exp()).sum::<f64>() / 2.0).ln();
        assert!(
            (e.log_e() - mixture).abs() < 1e-6 * mixture.abs(),
            "{} vs {mixture}",
            e.log_e()
        );
        assert!(e.log_e() > 1000.0);
    }

    proptest! {
        /// The incremental update equals the closed form whatever the order of arrivals.
        #[test]
        fn streaming_matches_closed_form(arms in proptest::collection::vec(0usize..3, 0..400)) {
            let design = Design::new(&[0.5, 0.3, 0.2], &[10.0, 1000.0]);
            let mut e = DmEProcess::new(&design);
            for &a in &arms { e.observe(&design, a); }
            for (i, k) in [10.0, 1000.0].iter().enumerate() {
                let closed = log_bayes_factor(e.counts(), design.weights(), *k);
                prop_assert!((e.log_bf(i) - closed).abs() < 1e-7 * (1.0 + closed.abs()));
            }
        }

        /// Merging two partitions equals one pass over both streams.
        #[test]
        fn merge_equals_concatenation(a in proptest::collection::vec(0usize..2, 0..200),
                                      b in proptest::collection::vec(0usize..2, 0..200)) {
            let design = Design::new(&[0.6, 0.4], &[10.0, 100.0, 1000.0]);
            let (mut x, mut y, mut all) = (DmEProcess::new(&design), DmEProcess::new(&design), DmEProcess::new(&design));
            for &i in &a { x.observe(&design, i); all.observe(&design, i); }
            for &i in &b { y.observe(&design, i); all.observe(&design, i); }
            x.merge(&y, &design);
            prop_assert_eq!(x.counts(), all.counts());
            prop_assert!((x.log_e() - all.log_e()).abs() < 1e-7 * (1.0 + all.log_e().abs()));
        }
    }
}
