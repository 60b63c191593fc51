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
//! Memory follows the cells used, up to `CELLS x arms` counters per expert (one sparse table
//! per expert that goes dense when full, [`CountTable`], in counters as narrow as its counts
//! allow): values are hashed into cells (a collision only
//! merges two cells and costs power, never validity), and a cell's total is the sum of its
//! arm counts. Inputs take slots in the
//! order of their names' hashes, and cells are salted by input names, so the model (and its
//! floating-point sums) does not depend on the order in which inputs appear in the messages:
//! the same events give the same figures from Kafka JSON or a Parquet replay.

use crate::each_table;
use crate::stats::auc::Roc;
use crate::stats::count_table::{
    has_room, nibble_add_at, nibbles, CountTable, Counter, Widening as Cells, NIBBLE_ROOM,
};
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
const fn expert_inputs(f: usize) -> (usize, Option<usize>, bool) {
    if f < MODEL_INPUTS {
        return (f, None, false);
    }
    let mut p = f - MODEL_INPUTS;
    let mut i = 0;
    while i < MODEL_INPUTS {
        let row = MODEL_INPUTS - 1 - i;
        if p < row {
            return (i, Some(i + 1 + p), false);
        }
        p -= row;
        i += 1;
    }
    (0, None, true)
}

/// Whether expert `f` can run with `n` slots taken (it has started): every slot it reads
/// exists, and the joint expert needs two.
fn reads_only(f: usize, n: usize) -> bool {
    match expert_inputs(f) {
        (_, _, true) => n >= 2,
        (i, j, false) => i < n && j.is_none_or(|j| j < n),
    }
}

/// `(first slot, second slot or u8::MAX, joint)` per expert: [`expert_inputs`] as a table for
/// the per-event loop.
const LAYOUT: [(u8, u8, bool); EXPERTS] = {
    let mut table = [(0u8, u8::MAX, false); EXPERTS];
    let mut f = 0;
    while f < EXPERTS {
        let (i, j, joint) = expert_inputs(f);
        table[f] = (
            i as u8,
            match j {
                Some(j) => j as u8,
                None => u8::MAX,
            },
            joint,
        );
        f += 1;
    }
    table
};

/// The expert reading slot `i` alone, slots `i < j`, or all slots.
fn expert_index(i: usize, j: Option<usize>, joint: bool) -> usize {
    if joint {
        return EXPERTS - 1;
    }
    match j {
        None => i,
        Some(j) => MODEL_INPUTS + (0..i).map(|r| MODEL_INPUTS - 1 - r).sum::<usize>() + (j - i - 1),
    }
}

#[inline]
fn mix(h: u64) -> u64 {
    let h = (h ^ (h >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^ (h >> 29)
}

/// What one event's prediction reads besides the tables, with its per-event constants.
struct Predict<'a> {
    w0: &'a [f64],
    arm: usize,
    /// `CONCENTRATION * w0[arm]`.
    k_arm: f64,
    /// `1 / w0[arm]`.
    inv_w0_arm: f64,
}

/// The mixture's prediction `q` as it is summed over the experts. Two arms keep only `q(1)`,
/// in a register: an array element summed in memory made every expert wait on the last one's
/// store (a store-forwarding chain of ~9 cycles per expert; the sums are the same, in the same
/// order).
trait Mixture {
    /// Two arms: a row's counts are read without a loop.
    const TWO: bool;
    /// `base * w0`: the null and idle experts' share.
    fn start(base: f64, w0: &[f64]) -> Self;
    /// Add `w * (count(a) + CONCENTRATION * w0[a]) * inv` for each arm kept.
    fn add(&mut self, w0: &[f64], w: f64, inv: f64, count: impl Fn(usize) -> f64);
    /// Record `q / total` in the ROC curves.
    fn record(&self, roc: &mut [Roc], inv_total: f64, arm: usize);
}

/// Two arms: `q(1)` only (the ROC of `q(arm = 1)`), and `CONCENTRATION * w0[1]`.
struct TwoArms {
    q: f64,
    k1: f64,
}

impl Mixture for TwoArms {
    const TWO: bool = true;
    #[inline]
    fn start(base: f64, w0: &[f64]) -> Self {
        TwoArms {
            q: base * w0[1],
            k1: CONCENTRATION * w0[1],
        }
    }
    #[inline]
    fn add(&mut self, _: &[f64], w: f64, inv: f64, count: impl Fn(usize) -> f64) {
        self.q += w * (count(1) + self.k1) * inv;
    }
    #[inline]
    fn record(&self, roc: &mut [Roc], inv_total: f64, arm: usize) {
        roc[0].record(self.q * inv_total, arm == 1);
    }
}

/// Any number of arms (up to 64): one sum per arm.
struct ManyArms([f64; 64]);

impl Mixture for ManyArms {
    const TWO: bool = false;
    #[inline]
    fn start(base: f64, w0: &[f64]) -> Self {
        let mut q = [0f64; 64];
        for (a, t) in w0.iter().enumerate() {
            q[a] = base * t;
        }
        ManyArms(q)
    }
    #[inline]
    fn add(&mut self, w0: &[f64], w: f64, inv: f64, count: impl Fn(usize) -> f64) {
        for (a, t) in w0.iter().enumerate() {
            self.0[a] += w * (count(a) + CONCENTRATION * t) * inv;
        }
    }
    #[inline]
    fn record(&self, roc: &mut [Roc], inv_total: f64, arm: usize) {
        for (a, r) in roc.iter_mut().enumerate() {
            r.record(self.0[a] * inv_total, arm == a);
        }
    }
}

impl Predict<'_> {
    /// Add an expert's prediction (weighted by `w`) from its cell's counts (`count(a)`, `n`
    /// in all) into `q`; returns its factor for the observed arm.
    #[inline]
    fn predict(
        &self,
        count: impl Fn(usize) -> u64,
        in_cell: u64,
        w: f64,
        q: &mut impl Mixture,
    ) -> f64 {
        // counts stay far below 2^63: the signed conversion is one instruction
        let inv = 1.0 / (in_cell as i64 as f64 + CONCENTRATION);
        let count = |a: usize| count(a) as i64 as f64;
        q.add(self.w0, w, inv, count);
        (count(self.arm) + self.k_arm) * inv * self.inv_w0_arm
    }

    /// [`Self::predict`] from `cell` of `table`, then count the arm there; also whether a
    /// count is one short of the counter's maximum (the table must widen before the next
    /// event).
    #[inline]
    fn learn<C: Counter, Q: Mixture>(
        &self,
        table: &mut CountTable<C>,
        cell: usize,
        w: f64,
        q: &mut Q,
    ) -> (f64, bool) {
        let arm = self.arm;
        let row = table.row_mut(cell);
        let in_cell: u64 = if Q::TWO {
            row[0].get() + row[1].get()
        } else {
            row.iter().map(|&c| c.get()).sum()
        };
        let factor = self.predict(|a| row[a].get(), in_cell, w, q);
        row[arm] = row[arm].plus(C::ONE);
        (factor, !has_room::<C>(row[arm].get()))
    }

    /// [`Self::learn`] for a two-arm table in nibbles.
    #[inline]
    fn learn_nibbles(
        &self,
        table: &mut CountTable<u8>,
        cell: usize,
        w: f64,
        q: &mut impl Mixture,
    ) -> (f64, bool) {
        // one lookup for the read and the count (a sparse table probes once)
        let b = &mut table.row_mut(cell)[0];
        let c = nibbles(*b);
        let factor = self.predict(|a| c[a & 1], c[0] + c[1], w, q);
        let now = nibble_add_at(b, self.arm);
        (factor, now >= NIBBLE_ROOM)
    }
}

/// The online model of one experiment.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ArmModel {
    arms: usize,
    /// Name hashes of the model's inputs, sorted: slot `s` is `names[s]`.
    names: Vec<u64>,
    /// Per expert, a salt from its inputs' names.
    salts: Box<[u64]>,
    /// Arm counts per cell, one table per expert.
    tables: Box<[Cells]>,
    /// `pi_f E_f / scale` per expert.
    weights: Box<[f64]>,
    /// `pi_0 / scale`: the null expert (its `E` is always 1).
    null_weight: f64,
    /// Sum of the weights of the experts not started (they predict the design weights).
    idle_weight: f64,
    /// Started experts, in index order.
    started: Vec<u8>,
    /// `ln scale`.
    log_scale: f64,
    /// Sum of the log e-values of partitions merged in (frozen at their merge).
    merged_log_e: f64,
    /// Bytes of the cell tables of the partitions merged in ([`Self::merge`]; 0 in a
    /// partition's own state, so not in snapshots).
    #[serde(skip)]
    merged_table_bytes: usize,
    /// Arm counts of the events the model saw.
    pub counts: Box<[u64]>,
    /// Prequential ROC of `q(arm = a)` per arm (one-vs-rest).
    pub roc: Vec<Roc>,
}

impl ArmModel {
    /// A fresh model for `design`.
    pub fn new(design: &Design) -> ArmModel {
        let arms = design.arms();
        let pi = (1.0 - NULL_WEIGHT) / EXPERTS as f64;
        ArmModel {
            arms,
            names: Vec::new(),
            salts: vec![0; EXPERTS].into(),
            tables: (0..EXPERTS).map(|_| Cells::new(CELLS, arms)).collect(),
            weights: vec![pi; EXPERTS].into(),
            null_weight: NULL_WEIGHT,
            idle_weight: 1.0 - NULL_WEIGHT,
            started: Vec::new(),
            log_scale: 0.0,
            merged_log_e: 0.0,
            merged_table_bytes: 0,
            counts: vec![0; arms].into(),
            roc: (0..if arms == 2 { 1 } else { arms })
                .map(|_| Roc::default())
                .collect(),
        }
    }

    /// Inputs the model reads.
    pub fn inputs(&self) -> usize {
        self.names.len()
    }

    /// The slot of the input whose name hashes to `name_key`.
    #[inline]
    pub fn slot(&self, name_key: u64) -> Option<usize> {
        self.names.binary_search(&name_key).ok()
    }

    /// Start reading the input whose name hashes to `name_key` (at most [`MODEL_INPUTS`]).
    /// Slots after it shift by one; the state of every started expert moves with its inputs,
    /// and the experts of the new input start with `E = 1`.
    pub fn add_input(&mut self, name_key: u64) {
        let Err(pos) = self.names.binary_search(&name_key) else {
            return;
        };
        if self.names.len() >= MODEL_INPUTS {
            return;
        }
        let old_n = self.names.len();
        self.names.insert(pos, name_key);
        let shift = |s: usize| if s >= pos { s + 1 } else { s };
        // where a started expert moves: the joint expert stays, the others follow their slots
        let moved = |f: usize| {
            let (i, j, joint) = expert_inputs(f);
            if joint {
                f
            } else {
                expert_index(shift(i), j.map(shift), false)
            }
        };
        let fresh = (1.0 - NULL_WEIGHT) / EXPERTS as f64 * (-self.log_scale).exp();
        let mut weights = vec![fresh; EXPERTS].into_boxed_slice();
        for f in (0..EXPERTS).filter(|&f| reads_only(f, old_n)) {
            weights[moved(f)] = self.weights[f];
        }
        let mut tables: Box<[Cells]> = (0..EXPERTS).map(|_| Cells::new(CELLS, self.arms)).collect();
        for f in (0..EXPERTS).filter(|&f| reads_only(f, old_n)) {
            tables[moved(f)] = std::mem::replace(&mut self.tables[f], Cells::new(CELLS, self.arms));
        }
        self.tables = tables;
        self.weights = weights;
        let n = self.names.len();
        self.started = (0..EXPERTS)
            .filter(|&f| reads_only(f, n))
            .map(|f| f as u8)
            .collect();
        self.idle_weight = (0..EXPERTS)
            .filter(|f| !self.started.contains(&(*f as u8)))
            .map(|f| self.weights[f])
            .sum();
        for (f, salt) in self.salts.iter_mut().enumerate() {
            let (i, j, joint) = expert_inputs(f);
            let name = |s: usize| self.names.get(s).copied().unwrap_or(0);
            *salt = if joint {
                0xA076_1D64_78BD_642F
            } else {
                mix(name(i)) ^ j.map_or(0x5851_F42D_4C95_7F2D, |j| mix(name(j)).rotate_left(17))
            };
        }
    }

    #[inline]
    fn cell(&self, f: usize, keys: &[u64; MODEL_INPUTS]) -> usize {
        const M: u64 = 0x9E37_79B9_7F4A_7C15;
        let (i, j, joint) = LAYOUT[f];
        let salt = self.salts[f];
        let h = if joint {
            keys[..self.names.len()]
                .iter()
                .fold(salt, |h, k| (h ^ k).wrapping_mul(M).rotate_left(31))
        } else {
            let h = (keys[i as usize] ^ salt).wrapping_mul(M);
            if j == u8::MAX {
                h
            } else {
                (h.rotate_left(31) ^ keys[j as usize]).wrapping_mul(M)
            }
        };
        (h >> (64 - CELL_BITS)) as usize
    }

    /// Predict the arm of an event with input value keys `keys` by slot (`MISSING` where
    /// absent), then learn it. Experts reading a slot not yet taken have not started (their `E`
    /// stays 1).
    pub fn observe(&mut self, design: &Design, keys: &[u64; MODEL_INPUTS], arm: usize) {
        if arm >= self.arms {
            return;
        }
        if self.arms == 2 {
            self.observe_in::<TwoArms>(design, keys, arm)
        } else {
            self.observe_in::<ManyArms>(design, keys, arm)
        }
    }

    /// [`Self::observe`] with the mixture summed in `Q`.
    #[inline(always)]
    fn observe_in<Q: Mixture>(&mut self, design: &Design, keys: &[u64; MODEL_INPUTS], arm: usize) {
        let w0 = design.weights();
        // the null expert and the experts not started both predict the design weights
        let base = self.null_weight + self.idle_weight;
        let mut q = Q::start(base, w0);
        let mut cells = [0u16; EXPERTS];
        let mut sum_w = base;
        for (c, &f) in cells.iter_mut().zip(&self.started) {
            let f = usize::from(f);
            *c = self.cell(f, keys) as u16;
            self.tables[f].prefetch(usize::from(*c));
            sum_w += self.weights[f];
        }
        let p = Predict {
            w0,
            arm,
            k_arm: CONCENTRATION * w0[arm],
            inv_w0_arm: 1.0 / w0[arm],
        };
        // the mixture's sum and the weights' new sum are two chains of dependent additions,
        // one term per expert: in one loop they run side by side (the same sums, in the same
        // order, as in two loops one after the other)
        let mut sum = base;
        for (&f, &cell) in self.started.iter().zip(&cells) {
            let f = usize::from(f);
            let (w, cell) = (&mut self.weights[f], usize::from(cell));
            let table = &mut self.tables[f];
            let (fac, full) = each_table!(table, t => p.learn(t, cell, *w, &mut q), n => p.learn_nibbles(n, cell, *w, &mut q));
            *w *= fac;
            sum += *w;
            if full {
                table.widen();
            }
        }
        q.record(&mut self.roc, 1.0 / sum_w, arm);
        self.counts[arm] += 1;
        if !(1e-150..=1e150).contains(&sum) {
            self.renormalize(sum);
        }
    }

    /// Divide every weight by `sum` (kept in `log_scale`) before they overflow or underflow.
    #[cold]
    fn renormalize(&mut self, sum: f64) {
        let inv = 1.0 / sum;
        for w in self.weights.iter_mut() {
            *w *= inv;
        }
        self.null_weight *= inv;
        self.idle_weight *= inv;
        self.log_scale += sum.ln();
    }

    /// `ln prod_t q_t(arm_t) / theta0(arm_t)`: the e-value against the design weights (times
    /// the frozen e-values of partitions merged in).
    pub fn log_e_design(&self) -> f64 {
        let sum: f64 = self.null_weight + self.weights.iter().sum::<f64>();
        self.log_scale + sum.ln() + self.merged_log_e
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

    /// The expert with the largest weight: which inputs (by name hash) predict the arm.
    pub fn top_expert(&self) -> Option<(u64, Option<u64>, bool, f64)> {
        let best = (0..EXPERTS).max_by(|&a, &b| self.weights[a].total_cmp(&self.weights[b]))?;
        let sum: f64 = self.null_weight + self.weights.iter().sum::<f64>();
        let (i, j, joint) = expert_inputs(best);
        let name = |s: usize| self.names.get(s).copied().unwrap_or(0);
        Some((name(i), j.map(name), joint, self.weights[best] / sum))
    }

    /// Memory of the model's tables and ROC.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<ArmModel>()
            + EXPERTS * 16
            + self.table_bytes()
            + self.roc.iter().map(Roc::bytes).sum::<usize>()
    }

    /// Bytes of the cell tables (with those of the partitions merged in).
    fn table_bytes(&self) -> usize {
        self.tables.iter().map(Cells::bytes).sum::<usize>() + self.merged_table_bytes
    }

    /// Merge another partition: counts and ROC add; the evidence is sequence-dependent, so
    /// the other partition's e-value is multiplied in, frozen at the merge (a product of
    /// e-processes over disjoint, under the null independent, events is one; a stopped one
    /// stays one), and this model's mixture goes on from its own weights. The larger of the
    /// two, which this did before, is not an e-value: its expectation can reach 2.
    ///
    /// The cell tables do not add: a merged model is the report's view, which reads the
    /// evidence, counts, ROC and weights, never a prediction. Adding them took two thirds of a
    /// publish at a thousand experiments on four partitions (each table widened to 64-bit
    /// counters, added, narrowed back). Were a merged model to learn on, its predictions
    /// would come from this partition's tables: still a test martingale (the prediction may
    /// be any function of the past), with the power of this partition's cells. Their bytes
    /// add, so the view's memory is what the partitions hold.
    pub fn merge(&mut self, o: &ArmModel) {
        if o.arms != self.arms || o.names != self.names {
            return;
        }
        self.merged_table_bytes += o.table_bytes();
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += b;
        }
        for (a, b) in self.roc.iter_mut().zip(&o.roc) {
            a.merge(b);
        }
        self.merged_log_e += o.log_e_design();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The single-input expert of slot 0.
    fn hot(m: &ArmModel) -> &Cells {
        &m.tables[0]
    }

    #[test]
    fn expert_index_inverts_expert_inputs() {
        for f in 0..EXPERTS {
            let (i, j, joint) = expert_inputs(f);
            assert_eq!(expert_index(i, j, joint), f);
        }
    }

    /// Inputs discovered in another order give the same model, to the bit.
    #[test]
    fn input_order_does_not_matter() {
        let design = Design::new(&[0.5, 0.5], &[10.0]);
        let (mut a, mut b) = (ArmModel::new(&design), ArmModel::new(&design));
        let names = [11u64, 7, 42, 3];
        for n in names {
            a.add_input(n);
        }
        for n in names.iter().rev() {
            b.add_input(*n);
        }
        for t in 0..5000u64 {
            let mut keys = [MISSING; MODEL_INPUTS];
            for (k, n) in names.iter().enumerate() {
                let slot = a.slot(*n).unwrap_or(0);
                keys[slot] = (t * 7 + k as u64) % 5;
            }
            let arm = usize::from((keys[0] + keys[1]) % 2 == 0 && t % 3 != 0);
            a.observe(&design, &keys, arm);
            b.observe(&design, &keys, arm);
        }
        assert_eq!(a.log_e_design().to_bits(), b.log_e_design().to_bits());
        assert!(a.log_e_design() > 10.0);
    }

    /// Counters widen from 4 to 8 to 16 to 32 bits before a count can saturate, expert by expert: a
    /// model that passed 65,535 events in one cell gives the same figures, to the bit, as one
    /// wide from the start; merges go back to the narrowest counters that hold the sums.
    #[test]
    fn narrow_counters_widen_exactly() {
        let design = Design::new(&[0.5, 0.5], &[10.0]);
        let mut narrow = ArmModel::new(&design);
        narrow.add_input(5);
        let mut wide = narrow.clone();
        for t in wide.tables.iter_mut() {
            *t = Cells::Widest(t.wide());
        }
        for t in 0..150_000u64 {
            let mut keys = [MISSING; MODEL_INPUTS];
            keys[0] = u64::from(t % 10 == 0); // one cell takes 90% of the events
            let arm = usize::from(t % 3 == 0);
            narrow.observe(&design, &keys, arm);
            wide.observe(&design, &keys, arm);
            if t == 60 {
                // past 14 in a cell: the nibbles have widened to bytes
                assert!(matches!(hot(&narrow), Cells::Byte(_)));
            }
            if t == 600 {
                // past 254 in a cell: the byte counters have widened to u16
                assert!(matches!(hot(&narrow), Cells::Narrow(_)));
            }
        }
        assert!(matches!(hot(&narrow), Cells::Wide(_)));
        // an expert that has not counted anything stays in nibbles
        assert!(matches!(narrow.tables[EXPERTS - 2], Cells::Nibble(_)));
        assert_eq!(
            narrow.log_e_design().to_bits(),
            wide.log_e_design().to_bits()
        );
        assert_eq!(narrow.auc(1.96), wide.auc(1.96));
        // a table merges in 64-bit counters, then back into the narrowest that hold the sums
        let mut merged = hot(&narrow).clone();
        merged.merge(hot(&narrow));
        if let Cells::Wide(t) = &merged {
            assert_eq!(t.max_count(), 2 * 90_000);
        } else {
            panic!("merged table is narrow");
        }
        // small tables merge back into byte counters, with the counts of both sides
        let mut small = ArmModel::new(&design);
        small.add_input(5);
        for t in 0..100u64 {
            let keys = [t % 2; MODEL_INPUTS];
            small.observe(&design, &keys, usize::from(t % 3 == 0));
        }
        let mut twice = hot(&small).clone();
        twice.merge(hot(&small));
        match &twice {
            Cells::Byte(t) => assert_eq!(t.max_count(), 2 * hot(&small).wide().max_count()),
            other => panic!("merged small table is not in bytes: {other:?}"),
        }
        // and tiny ones into nibbles
        let mut tiny = ArmModel::new(&design);
        tiny.add_input(5);
        for t in 0..10u64 {
            let keys = [t % 2; MODEL_INPUTS];
            tiny.observe(&design, &keys, usize::from(t % 3 == 0));
        }
        let mut two = hot(&tiny).clone();
        two.merge(hot(&tiny));
        assert!(matches!(two, Cells::Nibble(_)));
        assert_eq!(two.wide().max_count(), 2 * hot(&tiny).wide().max_count());
    }

    /// A merged model (the report's view) adds the counts and the ROC, multiplies the other
    /// partition's evidence in, and counts its tables' bytes without adding its cells.
    #[test]
    fn a_merge_adds_what_the_view_reads() {
        let design = Design::new(&[0.5, 0.5], &[10.0]);
        let mut a = ArmModel::new(&design);
        a.add_input(5);
        let mut b = a.clone();
        for t in 0..3000u64 {
            let keys = [t % 7; MODEL_INPUTS];
            let arm = usize::from(t % 7 < 3);
            if t % 2 == 0 {
                a.observe(&design, &keys, arm);
            } else {
                b.observe(&design, &keys, arm);
            }
        }
        let (cells_a, bytes_b) = (hot(&a).wide(), b.table_bytes());
        let (log_a, log_b) = (a.log_e_design(), b.log_e_design());
        let bytes = a.table_bytes();
        let mut roc = a.roc.clone();
        for (x, y) in roc.iter_mut().zip(&b.roc) {
            x.merge(y);
        }
        a.merge(&b);
        assert_eq!(a.n(), 3000);
        assert_eq!(
            a.log_e_design().to_bits(),
            (log_a + log_b).to_bits(),
            "the other partition's evidence multiplies in"
        );
        assert_eq!(a.auc(1.96), {
            let mut v = ArmModel::new(&design);
            v.roc = roc;
            v.auc(1.96)
        });
        assert_eq!(a.table_bytes(), bytes + bytes_b);
        assert_eq!(hot(&a).wide().max_count(), cells_a.max_count());
    }

    /// An input added mid-stream keeps the state of the experts already running.
    #[test]
    fn adding_an_input_moves_state_with_it() {
        let design = Design::new(&[0.5, 0.5], &[10.0]);
        let mut m = ArmModel::new(&design);
        m.add_input(100);
        for t in 0..2000u64 {
            let mut keys = [MISSING; MODEL_INPUTS];
            keys[0] = t % 2;
            m.observe(&design, &keys, (t % 2) as usize);
        }
        let before = m.log_e_design();
        let top = m.top_expert().map(|t| t.0);
        m.add_input(1); // sorts before 100: the old input moves to slot 1
        assert_eq!(m.slot(100), Some(1));
        assert_eq!(m.log_e_design().to_bits(), before.to_bits());
        assert_eq!(m.top_expert().map(|t| t.0), top);
    }
}
