//! One watched input of one experiment: its strata (categorical values or numeric bins) and,
//! for numeric values, per-arm quantiles and moments.

use super::numeric::{Bins, NumericSummary};
use super::strata::Strata;
use super::{display_label, key_of};
use crate::event::InputValue;
use crate::stats::sequential::Design;

/// A flag's value as a stratum sees it.
fn flag(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// State of one watched input.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct InputState {
    /// Input name.
    pub name: super::name::Name,
    /// Its [`key_of`] hash.
    pub name_key: u64,
    /// Stratified e-process over its values.
    pub strata: Strata,
    /// Present once a numeric value has been seen.
    pub numeric: Option<NumericSummary>,
    /// How numbers become strata.
    pub bins: Bins,
    /// Events that carried this input.
    pub n: u64,
}

impl InputState {
    /// A fresh input.
    pub fn new(name: &str, design: &Design, max_strata: usize, bins: Bins) -> InputState {
        InputState {
            name: super::name::Name::new(name),
            name_key: key_of(name),
            strata: Strata::new(design, max_strata),
            numeric: None,
            bins,
            n: 0,
        }
    }

    /// Count one event in `arm` with this input's `value`. Returns the value's stratum key
    /// (its hash, or its numeric bin's), which the arm model reuses.
    #[inline]
    pub fn observe(&mut self, design: &Design, value: &InputValue<'_>, arm: usize) -> u64 {
        let key = self.key(value);
        self.observe_key(design, value, key, arm);
        key
    }

    /// The stratum key of `value`: its hash, or its numeric bin's.
    #[inline]
    pub fn key(&self, value: &InputValue<'_>) -> u64 {
        match value {
            InputValue::Str(s) => key_of(s),
            InputValue::Bool(b) => key_of(flag(*b)),
            InputValue::Num(x) => Bins::key(self.bins.index(*x)),
        }
    }

    /// Hint the cache lines that counting `value` (stratum `key`) in `arm` reads first: the
    /// strata index's entry, and the numeric histogram's row.
    #[inline]
    pub fn prefetch(&self, value: &InputValue<'_>, key: u64, arm: usize) {
        self.strata.prefetch_index(key);
        if let (InputValue::Num(x), Some(n)) = (value, &self.numeric) {
            n.prefetch(arm, *x);
        }
    }

    /// [`Self::observe`] with the key computed by [`Self::key`].
    #[inline]
    pub fn observe_key(&mut self, design: &Design, value: &InputValue<'_>, key: u64, arm: usize) {
        self.n += 1;
        match value {
            InputValue::Str(s) => self.strata.observe(design, key, || display_label(s), arm),
            InputValue::Bool(b) => self.strata.observe(design, key, || flag(*b).into(), arm),
            InputValue::Num(x) => {
                let bins = &self.bins;
                self.strata
                    .observe(design, key, || bins.label(bins.index(*x)).into(), arm);
                self.numeric
                    .get_or_insert_with(|| NumericSummary::new(design.arms()))
                    .record(arm, *x);
            }
        }
    }

    /// Reset the statistics for a new design.
    pub fn reset(&mut self, design: &Design, max_strata: usize) {
        self.strata = Strata::new(design, max_strata);
        self.numeric = None;
        self.n = 0;
    }

    /// Merge another partition's state of the same input.
    pub fn merge(&mut self, other: &InputState, design: &Design) {
        self.strata.merge(&other.strata, design);
        match (&mut self.numeric, &other.numeric) {
            (Some(a), Some(b)) => a.merge(b),
            (None, Some(b)) => self.numeric = Some(b.clone()),
            _ => {}
        }
        self.n += other.n;
    }
}
