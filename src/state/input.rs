//! One watched input of one experiment: its strata (categorical values or numeric bins) and,
//! for numeric values, per-arm quantiles and moments.

use super::numeric::{Bins, NumericSummary};
use super::strata::Strata;
use super::{display_label, key_of};
use crate::event::InputValue;
use crate::stats::sequential::Design;

/// State of one watched input.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct InputState {
    /// Input name.
    pub name: Box<str>,
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
            name: name.into(),
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
        self.n += 1;
        match value {
            InputValue::Str(s) => {
                let key = key_of(s);
                self.strata.observe(design, key, || display_label(s), arm);
                key
            }
            InputValue::Bool(b) => {
                let s = if *b { "true" } else { "false" };
                let key = key_of(s);
                self.strata.observe(design, key, || s.into(), arm);
                key
            }
            InputValue::Num(x) => {
                let i = self.bins.index(*x);
                let bins = &self.bins;
                let key = Bins::key(i);
                self.strata
                    .observe(design, key, || bins.label(i).into(), arm);
                self.numeric
                    .get_or_insert_with(|| NumericSummary::new(design.arms()))
                    .record(arm, *x);
                key
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
