//! Units shared by experiments (overlapping experiments): a consistent sample of units with
//! the arm each had in the first experiments it was seen in, and per pair of experiments the
//! table of their arms over the units in both.
//!
//! Two experiments that overlap on units are meant to be assigned independently (orthogonal
//! layers: different salts or hash seeds). If they share a salt, or one's bucket ranges are
//! carved out of the other's, one experiment's arm predicts the other's and each one's effect
//! estimate carries part of the other's treatment. The table of a pair is a stratified
//! Dirichlet-multinomial table ([`Strata`]): the strata are the second experiment's arms, the
//! counts the first's, and its universal-inference e-value tests "the first's arm does not
//! depend on the second's, with any marginal" (design notes section 2; Wasserman, Ramdas &
//! Balakrishnan, PNAS 2020), so an SRM in either experiment alone is not a dependence.
//!
//! The sample is consistent (Broder's bottom-k idea with a level: a unit is followed while
//! its mixed hash has at least `level` leading zeros), so a unit is followed in every
//! experiment or in none, and the sample, halved when full, never re-admits a unit: no unit is
//! counted twice in a pair. All of it is counts: it merges exactly across partitions keyed by
//! unit.

use super::strata::Strata;
use super::Identity;
use crate::stats::sequential::Design;
use smallvec::SmallVec;
use std::collections::HashMap;

/// Experiments remembered per followed unit (the first ones it was seen in): pairs among them
/// are tested.
pub const EXPERIMENTS_PER_UNIT: usize = 4;

/// The experiments one followed unit was seen in: (experiment id key, arm).
type Seen = SmallVec<[(u64, u16); EXPERIMENTS_PER_UNIT]>;

/// The followed units.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SharedUnits {
    units: HashMap<u64, Seen, Identity>,
    level: u32,
    cap: usize,
}

use super::exposure::in_sample;

impl SharedUnits {
    /// Follow at most `cap` units.
    pub fn new(cap: usize) -> SharedUnits {
        SharedUnits {
            units: HashMap::default(),
            level: 0,
            cap: cap.max(1),
        }
    }

    /// Unit `unit` seen in experiment `exp` (id key) in `arm`: the experiments it was seen in
    /// before, when this is its first time in `exp` and it is followed (else empty). With
    /// `frozen` (the statistics are over their memory budget) no new unit is followed.
    #[inline]
    pub fn record(&mut self, unit: u64, exp: u64, arm: usize, frozen: bool) -> Seen {
        if !in_sample(unit, self.level) {
            return Seen::new();
        }
        let seen = match self.units.entry(unit) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(_) if frozen => return Seen::new(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(Seen::new()),
        };
        if seen.iter().any(|&(e, _)| e == exp) || seen.len() >= EXPERIMENTS_PER_UNIT {
            return Seen::new();
        }
        let before = seen.clone();
        seen.push((exp, arm.min(usize::from(u16::MAX)) as u16));
        if self.units.len() > self.cap {
            self.shrink();
        }
        before
    }

    #[cold]
    fn shrink(&mut self) {
        while self.units.len() > self.cap && self.level < 63 {
            self.level += 1;
            let level = self.level;
            self.units.retain(|&h, _| in_sample(h, level));
        }
    }

    /// Units followed.
    pub fn len(&self) -> usize {
        self.units.len()
    }

    /// Whether no unit is followed.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// The sampling rate (`2^-level`).
    pub fn rate(&self) -> f64 {
        0.5f64.powi(self.level as i32)
    }

    /// Merge another partition's sample (units keyed by unit: disjoint), following up to the
    /// sum of the two caps (each partition's engine follows a share of the units, see
    /// [`crate::config::Settings::for_partitions`]).
    pub fn merge(&mut self, other: &SharedUnits) {
        self.level = self.level.max(other.level);
        self.cap = self.cap.saturating_add(other.cap);
        for (&h, seen) in &other.units {
            let mine = self.units.entry(h).or_default();
            for &(e, a) in seen {
                if mine.len() < EXPERIMENTS_PER_UNIT && !mine.iter().any(|&(x, _)| x == e) {
                    mine.push((e, a));
                }
            }
        }
        let level = self.level;
        self.units.retain(|&h, _| in_sample(h, level));
        self.shrink();
    }

    /// Heap bytes (estimated).
    pub fn memory_bytes(&self) -> usize {
        self.units.capacity() * (8 + std::mem::size_of::<Seen>() + 1)
    }
}

/// Two experiments seen on the same units: the first's arm counts per arm of the second.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PairState {
    /// The first experiment (ids in byte order).
    pub first: Box<str>,
    /// The second.
    pub second: Box<str>,
    /// The first's arms, as when the pair began.
    pub first_arms: Vec<Box<str>>,
    /// The second's arms.
    pub second_arms: Vec<Box<str>>,
    /// The first's design (the table's null is "any marginal", but the e-value is written
    /// against a design).
    pub design: Design,
    /// Strata: the second's arms; counts: the first's arms.
    pub table: Strata,
    /// Units counted in both.
    pub units: u64,
    /// `ln` of the Bonferroni divisor over pairs (`limits.max_overlap_pairs`).
    pub ln_divisor: f64,
}

impl PairState {
    /// A pair with no units yet.
    pub fn new(
        first: (&str, &[super::name::Name], &Design),
        second: (&str, &[super::name::Name]),
        max_pairs: usize,
    ) -> PairState {
        PairState {
            first: first.0.into(),
            second: second.0.into(),
            first_arms: first.1.iter().map(|a| Box::from(&**a)).collect(),
            second_arms: second.1.iter().map(|a| Box::from(&**a)).collect(),
            design: first.2.clone(),
            table: Strata::new(first.2, second.1.len().max(1)),
            units: 0,
            ln_divisor: (max_pairs.max(1) as f64).ln(),
        }
    }

    /// Whether the experiments' arms are still the ones the pair began with (an undeclared
    /// experiment that gains an arm restarts its statistics, and its pairs).
    pub fn matches(&self, first_arms: usize, second_arms: usize) -> bool {
        self.first_arms.len() == first_arms && self.second_arms.len() == second_arms
    }

    /// A unit seen in arm `a` of the first and `b` of the second.
    #[inline]
    pub fn observe(&mut self, a: usize, b: usize) {
        if a >= self.first_arms.len() || b >= self.second_arms.len() {
            return;
        }
        let arms = &self.second_arms;
        self.table
            .observe(&self.design, b as u64 + 1, || arms[b].clone(), a);
        self.units += 1;
    }

    /// Log e-value of "the first's arm does not depend on the second's".
    pub fn log_e(&self) -> f64 {
        self.table.log_e_independence(&self.design)
    }

    /// The table: `counts[b][a]`, units in arm `b` of the second and `a` of the first.
    pub fn counts(&self) -> Vec<Vec<u64>> {
        let mut out = vec![vec![0; self.first_arms.len()]; self.second_arms.len()];
        for s in self.table.slots() {
            if let Some(row) = (s.key as usize).checked_sub(1).and_then(|b| out.get_mut(b)) {
                for (c, x) in row.iter_mut().zip(s.ep.counts()) {
                    *c += x;
                }
            }
        }
        out
    }

    /// Largest gap between the first's arm share among units in one arm of the second and
    /// its share over all shared units (0 when independent).
    pub fn max_share_gap(&self) -> f64 {
        let totals = self.table.totals();
        let n: u64 = totals.iter().sum();
        if n == 0 {
            return 0.0;
        }
        self.counts()
            .iter()
            .filter(|row| row.iter().sum::<u64>() > 0)
            .flat_map(|row| {
                let m: u64 = row.iter().sum();
                row.iter()
                    .zip(totals)
                    .map(move |(&x, &t)| (x as f64 / m as f64 - t as f64 / n as f64).abs())
            })
            .fold(0.0, f64::max)
    }

    /// Merge the same pair from another partition.
    pub fn merge(&mut self, other: &PairState) {
        if self.matches(other.first_arms.len(), other.second_arms.len()) {
            self.table.merge(&other.table, &self.design);
            self.units += other.units;
        }
    }

    /// Heap bytes (estimated).
    pub fn memory_bytes(&self) -> usize {
        self.table.memory_bytes() + 64 * (self.first_arms.len() + self.second_arms.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_is_counted_once_per_experiment_and_the_sample_halves() {
        let mut s = SharedUnits::new(100);
        assert!(s.record(1, 10, 0, false).is_empty());
        assert_eq!(s.record(1, 20, 1, false).as_slice(), &[(10, 0)]);
        assert!(s.record(1, 20, 0, false).is_empty(), "second time in 20");
        for u in 0..1_000u64 {
            s.record(crate::state::key_of(&u.to_string()), 10, 0, false);
        }
        assert!(s.len() <= 100 && s.len() > 20, "{}", s.len());
        assert!(s.rate() < 1.0);
    }

    #[test]
    fn table_counts_and_gap() {
        let design = Design::new(&[0.5, 0.5], &[10.0, 100.0]);
        let arms = [
            crate::state::name::Name::new("c"),
            crate::state::name::Name::new("t"),
        ];
        let mut p = PairState::new(("a", &arms, &design), ("b", &arms), 16);
        for _ in 0..50 {
            p.observe(0, 0);
            p.observe(1, 1);
        }
        assert_eq!(p.counts(), vec![vec![50, 0], vec![0, 50]]);
        assert!((p.max_share_gap() - 0.5).abs() < 1e-12);
        assert!(p.log_e() > 30.0, "{}", p.log_e());
    }
}
