//! Units (or clusters) seen in more than one arm, in fixed memory.
//!
//! Following every unit of a large experiment would take memory proportional to its users. A
//! unit is followed only when its hash falls in a fixed sample: the top `level` bits of a mixed
//! 64-bit hash are zero (rate `2^-level`). When more than `cap` units are followed, `level`
//! grows by one and the units outside the smaller sample are dropped (adaptive sampling,
//! Gibbons & Matias 1998, "New sampling-based summary statistics"; Flajolet 1990). Membership
//! depends only on the id, never on the arm or on when it was seen, so the followed units are a
//! uniform random sample of all units seen and the share of them seen in more than one arm
//! estimates the population share with a binomial (Wilson) interval.

use super::id_arms::IdArms;
use super::units::{Exposure, UnitFilter};
use crate::stats::proportion::{share, wilson};

/// A consistent hash sample of ids with the arms each was seen in.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ExposureSample {
    arms_of: IdArms,
    cap: usize,
    level: u32,
    mixed: u64,
    /// Estimated ids seen in more than one of the partitions merged into this sample, counted
    /// once per extra partition: each partition counted the id's first exposure, so the merged
    /// counts hold this many ids twice (zero when the input is keyed by unit).
    #[serde(default)]
    duplicates: f64,
}

#[inline]
fn mix(h: u64) -> u64 {
    // a multiply spreads every bit of the id hash into the top bits the sample reads
    h.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29) ^ h
}

/// Whether id hash `h` is in the sample at `level` (rate `2^-level`): a consistent sample
/// (the same ids at every level below), also the rule of the units followed across
/// experiments ([`super::overlap`]).
#[inline]
pub(crate) fn in_sample(h: u64, level: u32) -> bool {
    level == 0 || mix(h).leading_zeros() >= level
}

impl ExposureSample {
    /// An empty sample that follows at most `cap` ids.
    pub fn new(cap: usize) -> ExposureSample {
        ExposureSample {
            arms_of: IdArms::default(),
            cap: cap.max(1),
            level: 0,
            mixed: 0,
            duplicates: 0.0,
        }
    }

    #[inline]
    fn sampled(&self, h: u64) -> bool {
        in_sample(h, self.level)
    }

    /// Record id hash `h` seen in `arm` (< 64). True when this makes the id mixed.
    #[inline]
    pub fn observe(&mut self, h: u64, arm: usize) -> bool {
        self.record(h, arm, None).0
    }

    /// Record id `h` seen in `arm` and tell whether it is a first exposure: from this sample
    /// while it follows every id and `units` is in its exact phase, else from `units`. When the
    /// sample first halves it hands its ids to `units` (see [`super::units`]). Returns (the id
    /// just became mixed, the exposure). With `frozen` (the statistics are over
    /// `limits.max_memory_bytes`) nothing grows: a new id is not followed and not counted
    /// (`Full`).
    #[inline]
    pub fn observe_first(
        &mut self,
        h: u64,
        arm: usize,
        units: &mut UnitFilter,
        frozen: bool,
    ) -> (bool, Exposure) {
        if frozen {
            return self.observe_frozen(h, arm, units);
        }
        let exact = units.is_exact() && self.level == 0;
        let (newly, before) = self.record(h, arm, Some(units));
        let exposure = if !exact {
            units.observe_hash(h)
        } else if before == 0 {
            units.count_new()
        } else {
            Exposure::Repeat
        };
        (newly, exposure)
    }

    /// Hint the slot of id `h` into the cache (see [`crate::hint`]).
    #[inline]
    pub fn prefetch(&self, h: u64) {
        self.arms_of.prefetch(h);
    }

    /// [`Self::observe_first`] without growing: an id followed already gets `arm` in its mask,
    /// any other id is left out, and nothing new is counted (`Full` for a new id). Used while
    /// the statistics are over `limits.max_memory_bytes`.
    #[inline]
    fn observe_frozen(&mut self, h: u64, arm: usize, units: &UnitFilter) -> (bool, Exposure) {
        let before = self.arms_of.get(h);
        let newly = if before != 0 {
            self.record(h, arm, None).0
        } else {
            false
        };
        let seen = before != 0 || (!units.is_exact() && units.contains(h));
        (
            newly,
            if seen {
                Exposure::Repeat
            } else {
                Exposure::Full
            },
        )
    }

    /// Hand every followed id to `units` and end its exact phase (the sample is about to
    /// sample, or is merged).
    pub fn hand_over(&self, units: &mut UnitFilter) {
        if units.is_exact() {
            for (h, _) in self.arms_of.iter() {
                units.absorb(h);
            }
            units.end_exact();
        }
    }

    /// Record `h` in `arm` when sampled: (newly mixed, its arm mask before; 0 when new or not
    /// sampled).
    #[inline]
    fn record(&mut self, h: u64, arm: usize, units: Option<&mut UnitFilter>) -> (bool, u64) {
        if !self.sampled(h) {
            return (false, 0);
        }
        let bit = 1u64 << (arm & 63);
        let m = self.arms_of.insert(h, arm);
        let newly = m != 0 && m & bit == 0 && m.count_ones() == 1;
        if newly {
            self.mixed += 1;
        }
        if self.arms_of.len() > self.cap {
            if let Some(u) = units {
                self.hand_over(u);
            }
            self.shrink();
        }
        (newly, m)
    }

    fn shrink(&mut self) {
        while self.arms_of.len() > self.cap && self.level < 63 {
            self.level += 1;
            let level = self.level;
            self.arms_of.retain(|h| in_sample(h, level));
        }
        self.mixed = self.masks().filter(|m| m.count_ones() > 1).count() as u64;
    }

    /// Ids followed now.
    pub fn followed(&self) -> u64 {
        self.arms_of.len() as u64
    }

    /// Followed ids seen in more than one arm.
    pub fn mixed(&self) -> u64 {
        self.mixed
    }

    /// The sampling rate, `2^-level`.
    pub fn sample_rate(&self) -> f64 {
        0.5f64.powi(self.level as i32)
    }

    /// Estimated ids seen in all (followed / sample rate).
    pub fn estimated_ids(&self) -> f64 {
        self.followed() as f64 / self.sample_rate()
    }

    /// Estimated share of ids seen in more than one arm.
    pub fn rate(&self) -> f64 {
        share(self.mixed, self.followed())
    }

    /// Wilson interval of the share at normal quantile `z`.
    pub fn interval(&self, z: f64) -> (f64, f64) {
        wilson(self.mixed, self.followed(), z)
    }

    /// Bytes held (bounded by `cap`).
    pub fn memory_bytes(&self) -> usize {
        self.arms_of.bytes()
    }

    /// Arm masks of followed ids, for callers that need the ids' arms (e.g. clusters per arm).
    pub fn masks(&self) -> impl Iterator<Item = u64> + '_ {
        self.arms_of.iter().map(|(_, m)| m)
    }

    /// Estimated ids counted in more than one merged partition (see the field).
    pub fn duplicates(&self) -> f64 {
        self.duplicates
    }

    /// Merge another partition's sample (same ids hash the same way). Ids followed by both are
    /// counted in [`Self::duplicates`] (scaled by the sample rate): with an input keyed by
    /// anything but the unit, a unit's events land in several partitions, and each
    /// partition's state counts its first exposure. The merged sample follows up to the sum of
    /// the two caps: partition-owned engines each follow a share of the units
    /// ([`crate::config::Settings::for_partitions`]), and their view follows as many as one
    /// engine would.
    pub fn merge(&mut self, o: &ExposureSample) {
        self.cap = self.cap.saturating_add(o.cap);
        let level = self.level.max(o.level);
        let mut shared = 0u64;
        for (h, m) in o.arms_of.iter() {
            if self.arms_of.or_mask(h, m) != 0 && in_sample(h, level) {
                shared += 1;
            }
        }
        self.duplicates += o.duplicates + shared as f64 / 0.5f64.powi(level as i32);
        self.level = level;
        self.arms_of.retain(|h| in_sample(h, level));
        self.shrink();
    }
}

/// Mixed cluster names kept for the report.
pub const MAX_MIXED_NAMES: usize = 20;

/// The clusters of a cluster-randomized experiment.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Clusters {
    /// Clusters and their arms.
    pub sample: ExposureSample,
    /// The first mixed clusters, by name.
    pub mixed_names: Vec<Box<str>>,
    /// Exposure events without a `cluster` (not counted).
    pub missing: u64,
}

impl Clusters {
    /// Follow at most `cap` clusters.
    pub fn new(cap: usize) -> Clusters {
        Clusters {
            sample: ExposureSample::new(cap),
            mixed_names: Vec::new(),
            missing: 0,
        }
    }

    /// Record `cluster` (hash `h`) seen in `arm`, deciding whether it is new with `units` (see
    /// [`ExposureSample::observe_first`]): (it just became mixed, the exposure).
    #[inline]
    pub fn observe_first(
        &mut self,
        cluster: &str,
        h: u64,
        arm: usize,
        units: &mut UnitFilter,
        frozen: bool,
    ) -> (bool, Exposure) {
        let (newly, exposure) = self.sample.observe_first(h, arm, units, frozen);
        if newly && self.mixed_names.len() < MAX_MIXED_NAMES {
            self.mixed_names.push(super::display_label(cluster));
        }
        (newly, exposure)
    }

    /// Clusters per arm among the followed ones (a mixed cluster counts in each of its arms).
    pub fn per_arm(&self, arms: usize) -> Vec<u64> {
        let mut n = vec![0u64; arms];
        for m in self.sample.masks() {
            for (a, c) in n.iter_mut().enumerate() {
                *c += (m >> a) & 1;
            }
        }
        n
    }

    /// Heap memory held, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.sample.memory_bytes() + self.mixed_names.iter().map(|n| n.len() + 16).sum::<usize>()
    }

    /// Merge another partition's clusters.
    pub fn merge(&mut self, o: &Clusters) {
        self.sample.merge(&o.sample);
        for n in &o.mixed_names {
            if self.mixed_names.len() < MAX_MIXED_NAMES && !self.mixed_names.contains(n) {
                self.mixed_names.push(n.clone());
            }
        }
        self.missing += o.missing;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::key_of;

    #[test]
    fn memory_stays_flat_and_estimate_holds() {
        let mut s = ExposureSample::new(4096);
        let mut truth_mixed = 0u64;
        let n = 200_000u64;
        for u in 0..n {
            let h = key_of(&format!("u{u}"));
            s.observe(h, 0);
            if u % 50 == 0 {
                // 2% of units cross over
                s.observe(h, 1);
                truth_mixed += 1;
            }
        }
        assert!(s.followed() <= 4096);
        assert!(s.sample_rate() < 0.05);
        let truth = truth_mixed as f64 / n as f64;
        let (lo, hi) = s.interval(2.58);
        assert!(lo <= truth && truth <= hi, "{lo} {truth} {hi}");
        let est = s.estimated_ids();
        assert!((est / n as f64 - 1.0).abs() < 0.1, "{est}");
    }

    /// Partitions keyed by unit, each following a quarter of the cap, merge into the sample one
    /// engine with the whole cap keeps: the same level, the same ids, the same mixed ones.
    #[test]
    fn partitions_with_a_share_of_the_cap_merge_into_one_engines_sample() {
        let (cap, parts, n) = (2_000usize, 4u64, 3_000u64);
        let mut one = ExposureSample::new(cap);
        let mut shares: Vec<ExposureSample> = (0..parts)
            .map(|_| ExposureSample::new(cap / parts as usize))
            .collect();
        for u in 0..n {
            let h = key_of(&format!("u{u}"));
            let arms: &[usize] = if u % 7 == 0 { &[0, 1] } else { &[0] };
            for &arm in arms {
                one.observe(h, arm);
                shares[(h % parts) as usize].observe(h, arm);
            }
        }
        let mut merged = shares[0].clone();
        for s in &shares[1..] {
            merged.merge(s);
        }
        assert!(one.sample_rate() < 1.0, "the cap was reached");
        assert_eq!(merged.sample_rate(), one.sample_rate());
        assert_eq!(merged.followed(), one.followed());
        assert_eq!(merged.mixed(), one.mixed());
        assert_eq!(merged.duplicates(), 0.0);
    }
}
