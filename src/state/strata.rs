//! Stratified e-process: one Dirichlet-multinomial e-process per value of an input.
//!
//! Design notes section 2: under the design, `P(arm | v) = theta0` for every pre-assignment
//! value `v`, so each stratum's factor is a test martingale, and since each event updates only
//! the factor of its own stratum, the product over strata is one too. Memory is bounded: the
//! first `max_strata` values get a stratum each; later values share a pooled tail stratum, and
//! a tail value whose Count-Min estimate grows past twice the smallest tracked stratum is
//! promoted, the evicted stratum's factor being frozen (a stopped martingale stays a
//! martingale). Routing an event to a stratum uses only the past and the event's own input
//! value, never its arm, so validity does not depend on the routing rule.

use crate::stats::sequential::{mle_log_lr, Design, DmEProcess};
use crate::stats::sketch::CountMin;
use smallvec::SmallVec;

/// Label of the pooled tail stratum.
pub const TAIL_LABEL: &str = "__other__";

/// One tracked value.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Stratum {
    /// Hash identity of the value.
    pub key: u64,
    /// The value, for display: `(start, len)` in the table's label text ([`Strata::label`]),
    /// one allocation per input instead of one per value.
    label: (u32, u32),
    /// Its e-process.
    pub ep: DmEProcess,
    /// Occurrences credited before the stratum was tracked (its sketch estimate at promotion,
    /// as in Space-Saving), so a new stratum is not the next eviction victim.
    credit: u64,
}

impl Stratum {
    /// Estimated occurrences of the value: tracked count plus credit.
    fn frequency(&self) -> u64 {
        self.ep.n() + self.credit
    }
}

/// Value key -> slot: open addressing (linear probing) over `slot + 1` (0: empty), the keys
/// read from the slots themselves, at most half full: 4 bytes per entry where a `HashMap`
/// took ~34 (an input's table of 64 strata: 512 bytes, not 2 KB). Rebuilt when it grows or a
/// stratum is replaced (promotions are rare), so it never needs a deletion.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct SlotIndex {
    table: Box<[u32]>,
}

impl SlotIndex {
    #[inline]
    fn home(key: u64, mask: usize) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize & mask
    }

    /// The slot of `key`.
    #[inline]
    fn get(&self, key: u64, slots: &[Stratum]) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let mask = self.table.len() - 1;
        let mut i = Self::home(key, mask);
        loop {
            let v = self.table[i] as usize;
            if v == 0 {
                return None;
            }
            if slots.get(v - 1).is_some_and(|s| s.key == key) {
                return Some(v - 1);
            }
            i = (i + 1) & mask;
        }
    }

    /// The entry where a lookup of `key` starts.
    #[inline]
    fn home_entry(&self, key: u64) -> Option<&u32> {
        let mask = self.table.len().checked_sub(1)?;
        self.table.get(Self::home(key, mask))
    }

    /// The slot named by `key`'s home entry (not necessarily `key`'s).
    #[inline]
    fn at_home(&self, key: u64) -> Option<usize> {
        (*self.home_entry(key)? as usize).checked_sub(1)
    }

    /// Index every slot (after one was added or replaced).
    fn rebuild(&mut self, slots: &[Stratum]) {
        let want = (slots.len() * 2).next_power_of_two().max(8);
        if self.table.len() < want {
            self.table = vec![0; want].into();
        } else {
            self.table.fill(0);
        }
        for (n, s) in slots.iter().enumerate() {
            self.place(n, s.key);
        }
    }

    /// Index slot `n` (the last one added), growing first when half full.
    fn push(&mut self, slots: &[Stratum]) {
        if slots.len() * 2 > self.table.len() {
            self.rebuild(slots);
        } else if let Some(last) = slots.last() {
            self.place(slots.len() - 1, last.key);
        }
    }

    /// Put slot `n`, whose value is `key`, in the first free entry from its home.
    fn place(&mut self, n: usize, key: u64) {
        let mask = self.table.len() - 1;
        let mut i = Self::home(key, mask);
        while self.table[i] != 0 {
            i = (i + 1) & mask;
        }
        // slots are at most `max_strata` (a config bound far below u32::MAX)
        self.table[i] = u32::try_from(n + 1).unwrap_or(u32::MAX);
    }

    fn bytes(&self) -> usize {
        self.table.len() * 4
    }
}

/// What a table holds once more values arrived than it has strata (or a merge pooled some):
/// the pooled tail, the evicted strata's counts, the sketch that decides promotions. Most
/// inputs never get there, so it is boxed: an input's table is ~140 bytes smaller until then,
/// and the fields counting a value reads are closer together.
#[derive(Clone, Debug)]
struct Overflow {
    tail: DmEProcess,
    /// Counts of evicted strata, kept for the descriptive distributions.
    evicted_counts: SmallVec<[u64; 2]>,
    sketch: Option<CountMin>,
    min_hint: u64,
    promotions: u64,
    /// Bytes of `labels` no stratum points to.
    label_garbage: usize,
}

impl Overflow {
    fn new(arms: usize, grid: usize) -> Overflow {
        Overflow {
            tail: DmEProcess::empty(arms, grid),
            evicted_counts: smallvec::smallvec![0; arms],
            sketch: None,
            min_hint: 0,
            promotions: 0,
            label_garbage: 0,
        }
    }
}

/// A bounded table of strata for one input.
#[derive(Clone, Debug)]
pub struct Strata {
    index: SlotIndex,
    slots: Vec<Stratum>,
    /// `None` until the table first overflows.
    overflow: Option<Box<Overflow>>,
    frozen_log_e: f64,
    /// The product of the active strata's e-values (tail included) as `exp(active_base) *
    /// active_lin`: an event multiplies `active_lin` by its stratum's growth factor (no
    /// logarithm per event), and `active_lin` is folded into `active_base` when it drifts far
    /// from 1.
    active_base: f64,
    active_lin: f64,
    /// `exp(threshold - frozen_log_e - active_base)` for the last threshold asked about, so
    /// that [`Self::below`] compares in linear scale (a cache, rebuilt after a restore).
    gate: Gate,
    max_strata: usize,
    /// Arm counts over all values of the input (the pooled marginal).
    totals: SmallVec<[u64; 2]>,
    /// The strata's labels, one after the other (a replaced stratum's label stays until the
    /// text is compacted, when half of it is such garbage).
    labels: String,
    /// Points of the design's concentration grid (an empty tail's, for snapshots).
    grid: u32,
}

/// Heap bytes of a count vector that outgrew its inline room.
fn spilled(v: &SmallVec<[u64; 2]>) -> usize {
    if v.spilled() {
        v.len() * 8
    } else {
        0
    }
}

/// [`Strata`] as snapshots hold it: the fields of its earlier layout, where the overflow's
/// fields were the table's own (an empty tail before any overflow).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename = "Strata")]
struct StrataWire<I, S, T, E, C, L> {
    index: I,
    slots: S,
    tail: T,
    evicted_counts: E,
    sketch: C,
    frozen_log_e: f64,
    active_base: f64,
    active_lin: f64,
    min_hint: u64,
    max_strata: usize,
    promotions: u64,
    totals: E,
    labels: L,
    label_garbage: usize,
}

impl serde::Serialize for Strata {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let empty;
        let (tail, evicted, sketch, min_hint, promotions, garbage) = match &self.overflow {
            Some(o) => (
                &o.tail,
                &o.evicted_counts[..],
                o.sketch.as_ref(),
                o.min_hint,
                o.promotions,
                o.label_garbage,
            ),
            None => {
                empty = Overflow::new(self.totals.len(), self.grid as usize);
                (&empty.tail, &empty.evicted_counts[..], None, 0, 0, 0)
            }
        };
        StrataWire {
            index: &self.index,
            slots: &self.slots[..],
            tail,
            evicted_counts: evicted,
            sketch,
            frozen_log_e: self.frozen_log_e,
            active_base: self.active_base,
            active_lin: self.active_lin,
            min_hint,
            max_strata: self.max_strata,
            promotions,
            totals: &self.totals[..],
            labels: &self.labels[..],
            label_garbage: garbage,
        }
        .serialize(s)
    }
}

/// [`StrataWire`] as read.
type OwnedWire =
    StrataWire<SlotIndex, Vec<Stratum>, DmEProcess, SmallVec<[u64; 2]>, Option<CountMin>, String>;

impl<'de> serde::Deserialize<'de> for Strata {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w: OwnedWire = StrataWire::deserialize(d)?;
        let grid = u32::try_from(w.tail.grid()).unwrap_or(u32::MAX);
        let overflowed = !w.tail.is_fresh()
            || w.evicted_counts.iter().any(|&c| c > 0)
            || w.sketch.is_some()
            || w.min_hint > 0
            || w.promotions > 0
            || w.label_garbage > 0;
        Ok(Strata {
            index: w.index,
            slots: w.slots,
            overflow: overflowed.then(|| {
                Box::new(Overflow {
                    tail: w.tail,
                    evicted_counts: w.evicted_counts,
                    sketch: w.sketch,
                    min_hint: w.min_hint,
                    promotions: w.promotions,
                    label_garbage: w.label_garbage,
                })
            }),
            frozen_log_e: w.frozen_log_e,
            active_base: w.active_base,
            active_lin: w.active_lin,
            gate: Gate::default(),
            max_strata: w.max_strata,
            totals: w.totals,
            labels: w.labels,
            grid,
        })
    }
}

/// See [`Strata::below`].
#[derive(Clone, Copy, Debug, Default)]
struct Gate {
    valid: bool,
    threshold: f64,
    lin: f64,
}

/// Bounds of `active_lin` before it is folded into `active_base`.
const LIN_HI: f64 = 1e100;
const LIN_LO: f64 = 1e-100;

/// Minimum sketch estimate before a tail value can be promoted.
const PROMOTE_MIN: u32 = 32;

impl Strata {
    /// An empty table.
    pub fn new(design: &Design, max_strata: usize) -> Strata {
        Strata {
            index: SlotIndex::default(),
            slots: Vec::new(),
            overflow: None,
            frozen_log_e: 0.0,
            active_base: 0.0,
            active_lin: 1.0,
            gate: Gate::default(),
            max_strata,
            totals: smallvec::smallvec![0; design.arms()],
            labels: String::new(),
            grid: u32::try_from(design.ks().len()).unwrap_or(u32::MAX),
        }
    }

    /// The overflow state, created empty on first use.
    fn overflow_mut(&mut self) -> &mut Overflow {
        let (arms, grid) = (self.totals.len(), self.grid as usize);
        self.overflow
            .get_or_insert_with(|| Box::new(Overflow::new(arms, grid)))
    }

    /// Count one event whose input has identity `key` (label built only for a new stratum).
    #[inline]
    pub fn observe(
        &mut self,
        design: &Design,
        key: u64,
        label: impl FnOnce() -> Box<str>,
        arm: usize,
    ) {
        self.totals[arm] += 1;
        let slot = match self.index.get(key, &self.slots) {
            Some(i) => i,
            None if self.slots.len() < self.max_strata => self.insert(design, key, &label()),
            None => match self.maybe_promote(design, key, label) {
                Some(i) => i,
                None => {
                    let grew = self.overflow_mut().tail.observe(design, arm);
                    self.grow(grew);
                    return;
                }
            },
        };
        let grew = self.slots[slot].ep.observe(design, arm);
        self.grow(grew);
    }

    /// Multiply the active product by one stratum's growth factor.
    #[inline]
    fn grow(&mut self, factor: f64) {
        self.active_lin *= factor;
        if !(LIN_LO..=LIN_HI).contains(&self.active_lin) {
            self.fold();
        }
    }

    /// Move `active_lin`'s scale into `active_base`.
    #[cold]
    fn fold(&mut self) {
        if self.active_lin > 0.0 && self.active_lin.is_finite() {
            self.active_base += self.active_lin.ln();
            self.active_lin = 1.0;
            self.gate.valid = false;
        } else {
            self.resum();
        }
    }

    /// Hint the index entry of `key` (its home: where a lookup starts).
    #[inline]
    pub fn prefetch_index(&self, key: u64) {
        crate::hint::prefetch(self.index.home_entry(key));
    }

    /// Hint the stratum of `key`: the one its home index entry (which
    /// [`Self::prefetch_index`] brought in) names, without reading that stratum's key (that
    /// read would wait for the very miss the hint is for); after a collision it is another
    /// stratum's, which costs nothing but the hint.
    #[inline]
    pub fn prefetch_stratum(&self, key: u64) {
        if let Some(s) = self.index.at_home(key).and_then(|i| self.slots.get(i)) {
            // a stratum spans two or three lines: its first and its last
            crate::hint::prefetch(Some(s));
            crate::hint::prefetch(Some(&s.credit));
        }
    }

    /// The display value of stratum `s` of this table.
    pub fn label(&self, s: &Stratum) -> &str {
        let (start, len) = (s.label.0 as usize, s.label.1 as usize);
        self.labels.get(start..start + len).unwrap_or_default()
    }

    /// Append `label` to the label text.
    fn push_label(&mut self, label: &str) -> (u32, u32) {
        // labels are display values cut to a few hundred bytes; a table's text stays far
        // below 4 GB (at most `max_strata` labels plus as much garbage)
        let start = u32::try_from(self.labels.len()).unwrap_or(u32::MAX);
        self.labels.push_str(label);
        (start, u32::try_from(label.len()).unwrap_or(0))
    }

    fn insert(&mut self, design: &Design, key: u64, label: &str) -> usize {
        let i = self.slots.len();
        let label = self.push_label(label);
        if i == self.slots.capacity() {
            // by half (not double), never past `max_strata`: an input of 18 values holds 18
            // strata of ~100 bytes, not 32, and a full table exactly its cap
            let more = (i / 2).max(4).min(self.max_strata.saturating_sub(i)).max(1);
            self.slots.reserve_exact(more);
        }
        self.slots.push(Stratum {
            key,
            label,
            ep: DmEProcess::new(design),
            credit: 0,
        });
        self.index.push(&self.slots);
        i
    }

    fn maybe_promote(
        &mut self,
        design: &Design,
        key: u64,
        label: impl FnOnce() -> Box<str>,
    ) -> Option<usize> {
        let width = 16 * self.max_strata.max(64);
        let over = self.overflow_mut();
        let est = over
            .sketch
            .get_or_insert_with(|| CountMin::new(width))
            .add(key);
        if est < PROMOTE_MIN || u64::from(est) <= 2 * over.min_hint {
            return None;
        }
        // the hint is a lower bound of the smallest stratum; refresh it before deciding
        let (victim, min_n) = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.frequency()))
            .min_by_key(|&(_, n)| n)?;
        self.overflow_mut().min_hint = min_n;
        if u64::from(est) <= 2 * min_n {
            return None;
        }
        let label = self.push_label(&label());
        let old = std::mem::replace(
            &mut self.slots[victim],
            Stratum {
                key,
                label,
                ep: DmEProcess::new(design),
                credit: u64::from(est),
            },
        );
        let old_log_e = old.ep.log_e();
        self.frozen_log_e += old_log_e;
        self.active_base -= old_log_e;
        self.gate.valid = false;
        let over = self.overflow_mut();
        for (e, c) in over.evicted_counts.iter_mut().zip(old.ep.counts()) {
            *e += c;
        }
        over.label_garbage += old.label.1 as usize;
        over.promotions += 1;
        let garbage = over.label_garbage;
        self.index.rebuild(&self.slots);
        if garbage * 2 > self.labels.len() {
            self.compact_labels();
        }
        Some(victim)
    }

    /// Rewrite the label text without the labels of replaced strata.
    fn compact_labels(&mut self) {
        let garbage = self.overflow.as_ref().map_or(0, |o| o.label_garbage);
        let mut text = String::with_capacity(self.labels.len().saturating_sub(garbage));
        for s in &mut self.slots {
            let (start, len) = (s.label.0 as usize, s.label.1 as usize);
            let at = u32::try_from(text.len()).unwrap_or(u32::MAX);
            text.push_str(self.labels.get(start..start + len).unwrap_or_default());
            s.label.0 = at;
        }
        self.labels = text;
        if let Some(o) = &mut self.overflow {
            o.label_garbage = 0;
        }
    }

    /// [`Self::log_e`] from the running product: O(1), exact up to floating-point drift of the
    /// incremental product (see [`Self::resum`]).
    #[inline]
    pub fn log_e_fast(&self) -> f64 {
        self.frozen_log_e + self.active_base + self.active_lin.ln()
    }

    /// Whether [`Self::log_e_fast`] is below `threshold`, compared in linear scale: no
    /// logarithm per event while the threshold and the scale stay as they are.
    #[inline]
    pub fn below(&mut self, threshold: f64) -> bool {
        if !self.gate.valid || self.gate.threshold.to_bits() != threshold.to_bits() {
            self.gate = Gate {
                valid: true,
                threshold,
                lin: (threshold - self.frozen_log_e - self.active_base).exp(),
            };
        }
        self.active_lin < self.gate.lin
    }

    /// Arm counts over all values.
    pub fn totals(&self) -> &[u64] {
        &self.totals
    }

    /// `n KL(p_hat || theta0)` of the pooled arm counts (see [`mle_log_lr`]).
    pub fn pooled_penalty(&self, design: &Design) -> f64 {
        mle_log_lr(&self.totals, design)
    }

    /// Log e-value for "the arm does not depend on the value" with an unknown marginal: the
    /// stratified design-null evidence minus what the pooled marginal alone explains.
    pub fn log_e_independence(&self, design: &Design) -> f64 {
        self.log_e() - self.pooled_penalty(design)
    }

    /// One stratum's share of [`Self::log_e_independence`]: its log e-value re-based from the
    /// design weights to the pooled shares, `log_e + sum_a x_a (ln theta0_a - ln p_hat_a)`.
    pub fn contribution(&self, ep: &DmEProcess, design: &Design) -> f64 {
        let n: u64 = self.totals.iter().sum();
        let rebase: f64 = ep
            .counts()
            .iter()
            .zip(self.totals.iter().zip(design.ln_weights()))
            .filter(|(&x, _)| x > 0)
            .map(|(&x, (&t, lw))| x as f64 * (lw - (t as f64 / n as f64).ln()))
            .sum();
        ep.log_e() + rebase
    }

    /// The log e-value of the product over all strata against the design weights.
    pub fn log_e(&self) -> f64 {
        self.frozen_log_e + self.active_log_e()
    }

    /// The active strata's log e-values (tail included), summed directly.
    fn active_log_e(&self) -> f64 {
        self.slots.iter().map(|s| s.ep.log_e()).sum::<f64>()
            + self.overflow.as_ref().map_or(0.0, |o| o.tail.log_e())
    }

    /// Recompute the running product from the strata (removes floating drift).
    pub fn resum(&mut self) {
        self.active_base = self.active_log_e();
        self.active_lin = 1.0;
        self.gate.valid = false;
    }

    /// Heap memory held, in bytes (estimated from capacities).
    pub fn memory_bytes(&self) -> usize {
        self.index.bytes()
            + self.slots.capacity() * std::mem::size_of::<Stratum>()
            + self.labels.capacity()
            // the overflow counted before it exists: a reservation, so that tables overflowing
            // together (as a thousand experiments' inputs do) never grow the state past what
            // the memory budget admitted with the experiment
            + std::mem::size_of::<Overflow>()
            + self.overflow.as_ref().map_or(0, |o| {
                o.sketch.as_ref().map_or(0, CountMin::bytes) + spilled(&o.evicted_counts)
            })
            + spilled(&self.totals)
            // each stratum's e-process past its inline room (more than two arms), and the tail's
            + (self.slots.capacity() + 1)
                * DmEProcess::heap_bytes(self.totals.len(), self.grid as usize)
    }

    /// Active strata.
    pub fn slots(&self) -> &[Stratum] {
        &self.slots
    }

    /// The pooled tail stratum, once the table has overflowed.
    pub fn tail(&self) -> Option<&DmEProcess> {
        self.overflow.as_ref().map(|o| &o.tail)
    }

    /// The frozen evidence of evicted strata.
    pub fn frozen_log_e(&self) -> f64 {
        self.frozen_log_e
    }

    /// How many tail values were promoted.
    pub fn promotions(&self) -> u64 {
        self.overflow.as_ref().map_or(0, |o| o.promotions)
    }

    /// Per-arm distributions over strata (tail and evicted values pooled into the last cell),
    /// for descriptive divergences: `out[arm][cell]`.
    pub fn arm_distributions(&self, arms: usize) -> Vec<Vec<u64>> {
        let mut out = vec![Vec::with_capacity(self.slots.len() + 1); arms];
        for s in &self.slots {
            for (a, dist) in out.iter_mut().enumerate() {
                dist.push(s.ep.counts()[a]);
            }
        }
        for (a, dist) in out.iter_mut().enumerate() {
            dist.push(
                self.overflow
                    .as_ref()
                    .map_or(0, |o| o.tail.counts()[a] + o.evicted_counts[a]),
            );
        }
        out
    }

    /// Merge another partition's table: matching values are merged, others inserted while
    /// there is room, the rest pooled into the tail (counts-based, closed-form evidence). Exact
    /// when every value has its own stratum on both sides; otherwise the counts are exact and
    /// the evidence is a valid e-value over a different grouping of the events.
    pub fn merge(&mut self, other: &Strata, design: &Design) {
        for s in &other.slots {
            match self.index.get(s.key, &self.slots) {
                Some(i) => self.slots[i].ep.merge(&s.ep, design),
                None if self.slots.len() < self.max_strata => {
                    let i = self.insert(design, s.key, other.label(s));
                    self.slots[i].ep.merge(&s.ep, design);
                }
                None => self.overflow_mut().tail.merge(&s.ep, design),
            }
        }
        // the tail merges even with an empty one: that recomputes its evidence from the counts
        match (&other.overflow, self.overflow.is_some()) {
            (Some(o), _) => {
                let mine = self.overflow_mut();
                mine.tail.merge(&o.tail, design);
                for (a, b) in mine.evicted_counts.iter_mut().zip(o.evicted_counts.iter()) {
                    *a += b;
                }
            }
            (None, true) => {
                let empty = DmEProcess::new(design);
                self.overflow_mut().tail.merge(&empty, design);
            }
            (None, false) => {}
        }
        self.frozen_log_e += other.frozen_log_e;
        for (a, b) in self.totals.iter_mut().zip(other.totals.iter()) {
            *a += b;
        }
        self.resum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::key_of;

    fn design() -> Design {
        Design::new(&[0.5, 0.5], &[10.0, 100.0, 1000.0, 10000.0])
    }

    /// The table as it was laid out before its overflow was boxed: the serialized form
    /// snapshots hold.
    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(rename = "Strata")]
    struct Earlier {
        index: SlotIndex,
        slots: Vec<Stratum>,
        tail: DmEProcess,
        evicted_counts: SmallVec<[u64; 2]>,
        sketch: Option<CountMin>,
        frozen_log_e: f64,
        active_base: f64,
        active_lin: f64,
        min_hint: u64,
        max_strata: usize,
        promotions: u64,
        totals: SmallVec<[u64; 2]>,
        labels: String,
        label_garbage: usize,
    }

    /// Before and after it overflows, and after a merge, a table writes the earlier layout's
    /// bytes and reads them back into the same table (same evidence, same bytes again); a
    /// table that never overflowed holds no overflow after the round trip either.
    #[test]
    fn serialized_form_is_the_earlier_layouts() {
        let d = design();
        let mut s = Strata::new(&d, 4);
        let mut rng = 7u64;
        let round_trip = |s: &Strata| {
            let bytes = postcard::to_allocvec(s).unwrap();
            let earlier: Earlier = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(postcard::to_allocvec(&earlier).unwrap(), bytes);
            let back: Strata = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(postcard::to_allocvec(&back).unwrap(), bytes);
            assert_eq!(back.log_e().to_bits(), s.log_e().to_bits());
            assert_eq!(back.overflow.is_some(), s.overflow.is_some());
            assert_eq!(back.promotions(), s.promotions());
            back
        };
        for i in 0..6_000u64 {
            step(&mut rng);
            // three values first (no overflow), then five others: four of them pooled in the
            // tail at first, promoted once they outnumber the first three
            let v = if i < 1_000 {
                format!("v{}", (rng >> 40) % 3)
            } else {
                format!("w{}", (rng >> 40) % 5)
            };
            s.observe(
                &d,
                key_of(&v),
                || v.clone().into(),
                (rng >> 20) as usize % 2,
            );
            if i == 999 {
                assert!(round_trip(&s).overflow.is_none());
            }
        }
        assert!(s.promotions() > 0 && s.tail().is_some_and(|t| t.n() > 0));
        round_trip(&s);
        let mut fresh = Strata::new(&d, 4);
        fresh.merge(&s, &d);
        round_trip(&fresh);
    }

    /// One step of Knuth's MMIX linear congruential generator.
    fn step(rng: &mut u64) {
        *rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
    }

    /// A strong leak over more values than strata: the running product folds its scale many
    /// times and strata are evicted, and it still tracks the direct sum; the linear-scale gate
    /// agrees with the logarithm on either side of the evidence.
    /// The estimate counts what each stratum's e-process holds on the heap once the design has
    /// more arms than fit inline (it did not: a 16-arm adversarial stream's strata were
    /// estimated at 69 MB for 145 MB held), and nothing more for two arms.
    #[test]
    fn many_arms_count_their_e_processes_heap() {
        let grid = [10.0, 100.0, 1000.0, 10000.0];
        for arms in [2usize, 16] {
            let d = Design::new(&vec![1.0 / arms as f64; arms], &grid);
            let mut s = Strata::new(&d, 64);
            for v in 0..40u64 {
                let label = format!("v{v}");
                s.observe(
                    &d,
                    key_of(&label),
                    || label.clone().into(),
                    (v as usize) % arms,
                );
            }
            let inline = s.index.bytes()
                + s.slots.capacity() * std::mem::size_of::<Stratum>()
                + s.labels.capacity()
                + std::mem::size_of::<Overflow>();
            let heap: usize = s
                .slots
                .iter()
                .map(|x| x.ep.counts().len() * 8)
                .filter(|_| arms > 2)
                .sum();
            assert!(heap == 0 || heap >= 40 * 16 * 8);
            assert!(
                s.memory_bytes() >= inline + heap,
                "{arms} arms: {} estimated, {} held",
                s.memory_bytes(),
                inline + heap
            );
            if arms == 2 {
                assert_eq!(s.memory_bytes(), inline);
            }
        }
    }

    #[test]
    fn running_product_folds_and_gates_exactly() {
        let d = design();
        let mut s = Strata::new(&d, 4);
        let mut rng = 99u64;
        for i in 0..40_000u64 {
            step(&mut rng);
            // the second half moves to values the table has not seen: they must be promoted
            let v = format!("v{}", (rng >> 40) % 6 + if i < 4_000 { 0 } else { 6 });
            let arm = usize::from(v.ends_with(['1', '3', '7']) || (rng >> 20).is_multiple_of(4));
            s.observe(&d, key_of(&v), || v.clone().into(), arm);
            let (fast, exact) = (s.log_e_fast(), s.log_e());
            assert!(
                (fast - exact).abs() < 1e-9 * (1.0 + exact.abs()),
                "{i}: {fast} vs {exact}"
            );
            // one threshold asked after every event (as a check does), crossed between folds
            assert_eq!(s.below(300.0), fast < 300.0, "{i}: evidence {fast}");
            if i % 97 == 0 {
                for t in [fast - 0.5, fast + 0.5] {
                    assert_eq!(s.below(t), fast < t, "{i}: threshold {t}, evidence {fast}");
                }
            }
        }
        assert!(s.promotions() > 0, "no stratum was evicted");
        assert!(
            s.log_e() > 2.0 * LIN_HI.ln(),
            "the product never folded: {}",
            s.log_e()
        );
    }

    #[test]
    fn running_sum_is_exact_and_product_is_sum_of_logs() {
        let d = design();
        let mut s = Strata::new(&d, 8);
        let mut rng = 12345u64;
        for i in 0..5000u64 {
            step(&mut rng);
            let v = format!("v{}", i % 5);
            s.observe(
                &d,
                key_of(&v),
                || v.clone().into(),
                (rng >> 33) as usize % 2,
            );
            assert!((s.log_e() - s.log_e_fast()).abs() < 1e-9);
        }
        let tail = s.tail().map_or(0.0, DmEProcess::log_e);
        let direct: f64 = s.slots().iter().map(|x| x.ep.log_e()).sum::<f64>() + tail;
        assert!((s.log_e() - direct).abs() < 1e-12);
        // contributions re-based to the pooled shares add up to the independence e-value
        let parts: f64 = s
            .slots()
            .iter()
            .map(|x| s.contribution(&x.ep, &d))
            .sum::<f64>()
            + s.tail().map_or(0.0, |t| s.contribution(t, &d));
        assert!((parts - s.log_e_independence(&d)).abs() < 1e-8);
    }

    /// An overall imbalance that is the same in every value is not a divergence: the
    /// independence e-value stays low where the design-null one explodes.
    #[test]
    fn uniform_imbalance_is_not_divergence() {
        let d = design();
        let mut s = Strata::new(&d, 8);
        let mut rng = 99u64;
        for i in 0..40_000u64 {
            step(&mut rng);
            let u = (rng >> 11) as f64 / (1u64 << 53) as f64;
            let v = format!("v{}", i % 4);
            s.observe(&d, key_of(&v), || v.clone().into(), usize::from(u < 0.56));
        }
        assert!(s.log_e() > 50.0, "design-null evidence {}", s.log_e());
        assert!(
            s.log_e_independence(&d) < 3.0,
            "independence evidence {}",
            s.log_e_independence(&d)
        );
    }

    /// Many values of similar frequency (a tool-catalog hash) must not churn the table.
    #[test]
    fn uniform_high_cardinality_does_not_thrash() {
        let d = design();
        let mut s = Strata::new(&d, 64);
        let mut rng = 7u64;
        for i in 0..100_000u64 {
            step(&mut rng);
            let v = format!("t{}", (rng >> 33) % 500);
            s.observe(&d, key_of(&v), || v.clone().into(), (i % 2) as usize);
        }
        assert_eq!(s.slots().len(), 64);
        assert!(s.promotions() < 20, "promotions {}", s.promotions());
    }

    /// Through many promotions (label text compacted on the way) every stratum keeps its own
    /// label, and the text stays bounded.
    #[test]
    fn labels_survive_promotions_and_compaction() {
        let d = design();
        let mut s = Strata::new(&d, 4);
        for round in 0..40u64 {
            for _ in 0..(100 * (round + 1)) {
                let v = format!("value-{round}");
                s.observe(&d, key_of(&v), || v.clone().into(), (round % 2) as usize);
            }
        }
        assert!(s.promotions() > 8, "promotions {}", s.promotions());
        for x in s.slots() {
            assert_eq!(key_of(s.label(x)), x.key, "label {:?}", s.label(x));
        }
        assert!(
            s.labels.len() <= 2 * 4 * "value-40".len() + 16,
            "{} bytes",
            s.labels.len()
        );
    }

    #[test]
    fn memory_is_bounded_and_heavy_hitter_is_promoted() {
        let d = design();
        let mut s = Strata::new(&d, 4);
        for i in 0..20_000u64 {
            // 4 rare values first fill the table, then a flood of unique values plus one heavy one
            let v = if i < 4 {
                format!("rare{i}")
            } else if i % 3 == 0 {
                "heavy".to_string()
            } else {
                format!("u{i}")
            };
            s.observe(&d, key_of(&v), || v.clone().into(), (i % 2) as usize);
        }
        assert_eq!(s.slots().len(), 4);
        assert!(s.slots().iter().any(|x| s.label(x) == "heavy"));
        assert!(
            s.promotions() >= 1 && s.promotions() <= 4,
            "promotions {}",
            s.promotions()
        );
        let total: u64 = s.arm_distributions(2).iter().flatten().sum();
        assert_eq!(total, 20_000);
    }

    /// The strata grow by half, never past `max_strata` (4, 8, 12, 18, 27, ... slots): 18
    /// values hold 18 slots and 19 hold 27 (doubling: 32), a full table of 64 exactly 64.
    #[test]
    fn slots_grow_by_half_up_to_the_cap() {
        let d = design();
        let mut s = Strata::new(&d, 64);
        let add = |s: &mut Strata, values: std::ops::Range<u64>| {
            for i in values {
                let v = format!("v{i}");
                s.observe(&d, key_of(&v), || v.clone().into(), (i % 2) as usize);
            }
            (s.slots.len(), s.slots.capacity())
        };
        assert_eq!(add(&mut s, 0..18), (18, 18));
        assert_eq!(add(&mut s, 18..19), (19, 27));
        assert_eq!(add(&mut s, 19..200), (64, 64));
    }
}
