//! Predicting the arm from the watched inputs jointly (`arm_predictable`).
//!
//! A Bayesian mixture of "experts", each a table of Dirichlet-smoothed arm counts keyed by one
//! input's value, by a pair of inputs' values, or by all model inputs together, plus a null
//! expert that always predicts the design weights `theta0`. Before each event's arm is seen
//! every expert predicts `q_f(arm | x) = (c[arm] + k theta0[arm]) / (n + k)` from its cell, and
//! the mixture predicts `q = sum_f w_f q_f` with `w_f` proportional to the prior weight times the
//! expert's past predictive likelihood (Bayesian model averaging). Then
//! `prod_t q_t(arm_t | x_t) / theta0(arm_t) = sum_f pi_f E_f`, an average of per-expert
//! plug-in e-processes (design notes section 2): under "the arm is independent of the inputs
//! (and of the past) with shares theta0", each is a test martingale, whatever the model
//! learned. Predictions never reach zero (smoothing, and the null expert's share of the
//! mixture). Pairs catch a leak that lives only in a combination of two inputs, each balanced on
//! its own, which a marginal test per input cannot see.
//!
//! Memory is fixed: `EXPERTS x CELLS x (arms + 1)` counters, values hashed into cells (a
//! collision only merges two cells and costs power, never validity).

use crate::stats::auc::Roc;
use crate::stats::sequential::Design;

/// Inputs the model reads (the first watched inputs of the experiment).
pub const MODEL_INPUTS: usize = 8;
/// Single-input, pair and joint experts.
pub const EXPERTS: usize = MODEL_INPUTS + MODEL_INPUTS * (MODEL_INPUTS - 1) / 2 + 1;
/// Cells per expert (a power of two).
pub const CELLS: usize = 1024;
const CELL_BITS: u32 = CELLS.trailing_zeros();
/// Dirichlet concentration of a cell's prior around `theta0`.
pub const CONCENTRATION: f64 = 50.0;
/// Prior weight of the null expert.
pub const NULL_WEIGHT: f64 = 0.5;
/// The value key of an input an event does not carry.
pub const MISSING: u64 = 0x6d69_7373_696e_6721;

/// The inputs of expert `f`: one, two, or all (`None`).
fn expert_inputs(f: usize) -> (usize, Option<usize>, bool) {
    if f < MODEL_INPUTS {
        return (f, None, false);
    }
    let mut p = f - MODEL_INPUTS;
    for i in 0..MODEL_INPUTS {
        let row = MODEL_INPUTS - 1 - i;
        if p < row {
            return (i, Some(i + 1 + p), false);
        }
        p -= row;
    }
    (0, None, true)
}

/// The online model of one experiment.
#[derive(Clone, Debug)]
pub struct ArmModel {
    arms: usize,
    /// (first input, second input, joint) per expert.
    layout: Box<[(u8, u8, bool)]>,
    /// `EXPERTS * CELLS * (arms + 1)` counts; the last of each cell is its total.
    tables: Box<[u32]>,
    /// `pi_f E_f / scale` per expert.
    weights: Box<[f64]>,
    /// `pi_0 / scale`: the null expert (its `E` is always 1).
    null_weight: f64,
    /// `ln scale`.
    log_scale: f64,
    /// Arm counts of the events the model saw.
    pub counts: Box<[u64]>,
    /// Prequential ROC of `q(arm = a)` per arm (one-vs-rest).
    pub roc: Vec<Roc>,
    /// Whether the detector fired.
    pub fired: bool,
    /// Whether the detector fired on evidence but the AUC margin held it back (for the report).
    pub evidence_only: bool,
}

impl ArmModel {
    /// A fresh model for `design`.
    pub fn new(design: &Design) -> ArmModel {
        let arms = design.arms();
        let layout: Box<[(u8, u8, bool)]> = (0..EXPERTS)
            .map(|f| {
                let (i, j, joint) = expert_inputs(f);
                (i as u8, j.map_or(u8::MAX, |j| j as u8), joint)
            })
            .collect();
        let pi = (1.0 - NULL_WEIGHT) / EXPERTS as f64;
        ArmModel {
            arms,
            layout,
            tables: vec![0; EXPERTS * CELLS * (arms + 1)].into(),
            weights: vec![pi; EXPERTS].into(),
            null_weight: NULL_WEIGHT,
            log_scale: 0.0,
            counts: vec![0; arms].into(),
            roc: (0..if arms == 2 { 1 } else { arms })
                .map(|_| Roc::default())
                .collect(),
            fired: false,
            evidence_only: false,
        }
    }

    #[inline]
    fn cell(&self, f: usize, keys: &[u64; MODEL_INPUTS]) -> usize {
        const M: u64 = 0x9E37_79B9_7F4A_7C15;
        let (i, j, joint) = self.layout[f];
        let h = if joint {
            keys.iter().fold(0xA076_1D64_78BD_642F, |h, k| {
                (h ^ k).wrapping_mul(M).rotate_left(31)
            })
        } else {
            let h =
                (keys[i as usize] ^ (f as u64).wrapping_mul(0xE703_7ED1_A0B4_28DB)).wrapping_mul(M);
            if j == u8::MAX {
                h
            } else {
                (h.rotate_left(31) ^ keys[j as usize]).wrapping_mul(M)
            }
        };
        (h >> (64 - CELL_BITS)) as usize
    }

    /// Predict the arm of an event with input value keys `keys` (`MISSING` where absent), then
    /// learn it. `active` is the number of model inputs the experiment has so far: experts
    /// reading an input not yet seen have not started (their `E` stays 1).
    pub fn observe(
        &mut self,
        design: &Design,
        keys: &[u64; MODEL_INPUTS],
        active: usize,
        arm: usize,
    ) {
        let arms = self.arms;
        if arm >= arms {
            return;
        }
        let w0 = design.weights();
        let stride = arms + 1;
        let mut q = [0f64; 64];
        let mut total = self.null_weight;
        for (a, t) in w0.iter().enumerate() {
            q[a] = self.null_weight * t;
        }
        let mut factor = [1f64; EXPERTS];
        for (f, fac) in factor.iter_mut().enumerate() {
            let (i, j, joint) = self.layout[f];
            let started = if joint {
                active >= 2
            } else {
                (i as usize) < active && (j == u8::MAX || (j as usize) < active)
            };
            let w = self.weights[f];
            total += w;
            if !started {
                for (a, t) in w0.iter().enumerate() {
                    q[a] += w * t;
                }
                continue;
            }
            let base = (f * CELLS + self.cell(f, keys)) * stride;
            let row = &mut self.tables[base..base + stride];
            let inv = 1.0 / (f64::from(row[arms]) + CONCENTRATION);
            for (a, t) in w0.iter().enumerate() {
                q[a] += w * (f64::from(row[a]) + CONCENTRATION * t) * inv;
            }
            *fac = (f64::from(row[arm]) + CONCENTRATION * w0[arm]) * inv / w0[arm];
            row[arm] = row[arm].saturating_add(1);
            row[arms] = row[arms].saturating_add(1);
        }
        let inv_total = 1.0 / total;
        if arms == 2 {
            self.roc[0].record(q[1] * inv_total, arm == 1);
        } else {
            for (a, r) in self.roc.iter_mut().enumerate() {
                r.record(q[a] * inv_total, arm == a);
            }
        }
        let mut sum = self.null_weight;
        for (w, f) in self.weights.iter_mut().zip(factor) {
            *w *= f;
            sum += *w;
        }
        self.counts[arm] += 1;
        if !(1e-150..=1e150).contains(&sum) {
            let inv = 1.0 / sum;
            for w in self.weights.iter_mut() {
                *w *= inv;
            }
            self.null_weight *= inv;
            self.log_scale += sum.ln();
        }
    }

    /// `ln prod_t q_t(arm_t) / theta0(arm_t)`: the e-value against the design weights.
    pub fn log_e_design(&self) -> f64 {
        let sum: f64 = self.null_weight + self.weights.iter().sum::<f64>();
        self.log_scale + sum.ln()
    }

    /// The e-value for "the arm does not depend on the inputs" with the arm shares left free:
    /// the design e-value divided by the likelihood ratio of the maximum-likelihood shares
    /// (universal inference, Wasserman, Ramdas & Balakrishnan 2020), so a pure sample ratio
    /// mismatch is not reported as predictability.
    pub fn log_e(&self, design: &Design) -> f64 {
        self.log_e_design() - crate::stats::sequential::mle_log_lr(&self.counts, design)
    }

    /// Events seen.
    pub fn n(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The prequential AUC (one-vs-rest mean over arms when there are more than two) with its
    /// Hanley-McNeil interval at quantile `z`.
    pub fn auc(&self, z: f64) -> (f64, f64, f64) {
        let k = self.roc.len() as f64;
        self.roc.iter().fold((0.0, 0.0, 0.0), |acc, r| {
            let (a, lo, hi) = r.interval(z);
            (acc.0 + a / k, acc.1 + lo / k, acc.2 + hi / k)
        })
    }

    /// The expert with the largest weight: which inputs predict the arm.
    pub fn top_expert(&self) -> Option<(usize, Option<usize>, bool, f64)> {
        let best = (0..EXPERTS).max_by(|&a, &b| self.weights[a].total_cmp(&self.weights[b]))?;
        let sum: f64 = self.null_weight + self.weights.iter().sum::<f64>();
        let (i, j, joint) = expert_inputs(best);
        Some((i, j, joint, self.weights[best] / sum))
    }

    /// Fixed memory of the model.
    pub fn memory_bytes(&self) -> usize {
        self.tables.len() * 4 + self.roc.len() * 2 * crate::stats::auc::BINS * 4
    }

    /// Merge another partition: counts, tables and ROC add; the evidence is sequence-dependent,
    /// so the merged e-value is the larger of the two (each valid on its own).
    pub fn merge(&mut self, o: &ArmModel) {
        if o.arms != self.arms {
            return;
        }
        for (a, b) in self.tables.iter_mut().zip(o.tables.iter()) {
            *a = a.saturating_add(*b);
        }
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += b;
        }
        for (a, b) in self.roc.iter_mut().zip(&o.roc) {
            a.merge(b);
        }
        if o.log_e_design() > self.log_e_design() {
            self.weights.clone_from(&o.weights);
            self.null_weight = o.null_weight;
            self.log_scale = o.log_scale;
        }
        self.fired |= o.fired;
    }
}
