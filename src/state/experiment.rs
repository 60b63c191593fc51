//! The state of one experiment: its design, overall arm counts (SRM) and watched inputs.

use super::assignment::AssignmentState;
use super::exposure::{Clusters, ExposureSample};
use super::input::InputState;
use super::numeric::Bins;
use super::predict::{ArmModel, MISSING, MODEL_INPUTS};
use super::substrate::SubstrateState;
use super::units::{Exposure, UnitFilter};
use super::{key_of, Identity};
use crate::config::{ExperimentSettings, Settings, UnitOfAssignment};
use crate::event::{Event, InputValue, RejectReason};
use crate::stats::sequential::{Design, DmEProcess};
use std::collections::HashMap;

/// Bounds and grid shared by all experiments.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ExperimentLimits {
    /// Dirichlet concentration grid.
    pub k_grid: Vec<f64>,
    /// Arms of an undeclared experiment at most.
    pub max_arms: usize,
    /// Watched inputs at most.
    pub max_inputs: usize,
    /// Exact strata per input.
    pub max_strata: usize,
    /// Units counted per experiment (first exposures) before counting stops.
    pub units: u64,
    /// Units (and clusters) followed for multiple exposures.
    pub exposure_sample: usize,
}

impl ExperimentLimits {
    /// From settings.
    pub fn from_settings(s: &Settings) -> ExperimentLimits {
        ExperimentLimits {
            k_grid: s.alerts.k_grid.clone(),
            max_arms: s.limits.max_arms,
            max_inputs: s.limits.max_inputs_per_experiment,
            max_strata: s.limits.max_strata_per_input,
            units: s.limits.units_per_experiment,
            exposure_sample: s.limits.exposure_sample_units,
        }
    }
}

/// State of one experiment.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Experiment {
    /// Experiment id.
    pub id: super::name::Name,
    /// Declared in config (otherwise equal weights are assumed).
    pub declared: bool,
    /// A hash of the declaration (0 when undeclared): a reloaded configuration that declares
    /// the experiment differently restarts its statistics.
    pub design_key: u64,
    /// Arm names, in design order (inline heads: every event's arm is looked up here).
    pub arms: Vec<super::name::Name>,
    /// Null hypothesis: design weights.
    pub design: Design,
    /// Overall arm counts and their e-process.
    pub srm: DmEProcess,
    /// Watched inputs.
    pub inputs: Vec<InputState>,
    /// Inputs seen but not watched because `max_inputs` was reached.
    pub inputs_over_limit: u64,
    /// Times the statistics restarted because an undeclared experiment gained an arm.
    pub restarts: u32,
    /// First and last event time (epoch ms).
    pub first_ts_ms: i64,
    /// Last event time.
    pub last_ts_ms: i64,
    /// First exposure per unit (allocated when the first event with a `unit` arrives).
    pub units: Option<UnitFilter>,
    /// Events of units already counted (not counted again).
    pub repeat_events: u64,
    /// Events of new units after the unit filter filled up (not counted).
    pub uncounted_events: u64,
    /// Declared substrate inputs.
    pub substrates: Vec<SubstrateState>,
    /// The declared hash assignment, re-derived per event.
    pub assignment: Option<Box<AssignmentState>>,
    /// Units followed for multiple exposures (allocated with the first `unit`).
    pub exposures: Option<ExposureSample>,
    /// Clusters of a cluster-randomized experiment (their first exposures are what SRM and
    /// divergence count).
    pub clusters: Option<Box<Clusters>>,
    /// The online arm model (allocated with the first counted event carrying inputs).
    pub model: Option<Box<ArmModel>>,
    treatment_inputs: Vec<Box<str>>,
    watch_inputs: Option<Vec<Box<str>>>,
    numeric_bins: Vec<(Box<str>, Box<[f64]>)>,
    limits: ExperimentLimits,
    /// Input name hash -> input index (>= 0) or ignored-name index (-1 - i): one hash and one
    /// compare per input per event instead of a scan.
    name_index: HashMap<u64, i32, Identity>,
    /// Per position in an event's inputs, the input (>= 0) or ignored name (-1 - i) found
    /// there last ([`NO_INPUT`]: none).
    input_order: [i16; INPUT_ORDER],
    ignored: Vec<Box<str>>,
    alpha_divisor: usize,
    ln_alpha_divisor: f64,
    /// Text of a non-string substrate value (reused: no allocation per event).
    scratch: String,
    /// Which phase of which experiment this is, for a phased experiment (from the
    /// declaration: set again at every restore, not snapshotted).
    #[serde(skip)]
    pub phase: Option<crate::config::PhaseOf>,
    /// Set by the engine while the statistics are over `limits.max_memory_bytes`: new units
    /// (and unit-less events) are not counted, so the state stops growing; a stopped
    /// e-process is still an e-process.
    pub frozen: bool,
}

/// Estimated bytes of an experiment's state by part (see [`Experiment::memory_parts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemoryParts {
    /// Strata of the watched inputs (values, their e-processes, the heavy-hitter sketch).
    pub strata: usize,
    /// Per-arm histograms and moments of numeric inputs.
    pub numeric: usize,
    /// The first-exposure unit filter.
    pub units: usize,
    /// The multiple-exposure sample (and clusters).
    pub exposures: usize,
    /// The arm model's expert tables.
    pub model: usize,
    /// The rest: the experiment's own struct, names, indexes.
    pub other: usize,
}

impl MemoryParts {
    /// All parts.
    pub fn total(&self) -> usize {
        self.strata + self.numeric + self.units + self.exposures + self.model + self.other
    }

    /// Add another experiment's parts.
    pub fn add(&mut self, o: &MemoryParts) {
        self.strata += o.strata;
        self.numeric += o.numeric;
        self.units += o.units;
        self.exposures += o.exposures;
        self.model += o.model;
        self.other += o.other;
    }
}

/// Positions of an event's inputs remembered by [`Experiment::input_at`].
const INPUT_ORDER: usize = 16;
/// An [`Experiment::input_at`] position with nothing remembered.
const NO_INPUT: i16 = i16::MIN;

/// Ignored (treatment or unwatched) input names remembered at most.
const MAX_IGNORED: usize = 256;

/// Inputs of one event whose cache lines are hinted before they are counted (events with
/// more count the rest directly).
const PREFETCHED_INPUTS: usize = 16;

/// What one event touched, for the checks ([`crate::check`]).
#[derive(Clone, Copy, Debug)]
pub struct Observed {
    /// Arm index.
    pub arm: usize,
    /// An exposure (prompt) event, not a value carried by another kind.
    pub exposure: bool,
    /// The exposure reached the unit's first-exposure decision (not a cluster experiment's
    /// event without `cluster`): the declared assignment is re-derived for it.
    pub assigned: bool,
    /// The statistics restarted (an undeclared experiment gained an arm).
    pub restarted: bool,
    /// Whether the event was counted (not a repeat exposure of a unit).
    pub counted: bool,
    /// Bit i set when input i was updated.
    pub touched: u64,
    /// The counted event's stratum key per watched input (by input index; `MISSING` where
    /// absent), for the arm model.
    pub keys: [u64; MODEL_INPUTS],
    /// The event carried a unit (the multiple-exposure sample may have changed).
    pub unit: bool,
    /// The event's cluster just became mixed.
    pub cluster_mixed: bool,
}

impl Default for Observed {
    fn default() -> Observed {
        Observed {
            arm: 0,
            exposure: false,
            assigned: false,
            restarted: false,
            counted: false,
            touched: 0,
            keys: [MISSING; MODEL_INPUTS],
            unit: false,
            cluster_mixed: false,
        }
    }
}

impl Experiment {
    /// A declared experiment (arms in name order).
    pub fn declared(cfg: &ExperimentSettings, limits: &ExperimentLimits) -> Experiment {
        let arms: Vec<Box<str>> = cfg.arms.keys().map(|a| a.as_str().into()).collect();
        let weights: Vec<f64> = cfg.arms.values().copied().collect();
        let mut e = Experiment::with_design(&cfg.id, arms, &weights, limits);
        e.declared = true;
        e.design_key = Experiment::design_key_of(cfg);
        e.treatment_inputs = cfg
            .treatment_inputs
            .iter()
            .map(|s| s.as_str().into())
            .collect();
        e.substrates = cfg
            .substrate_inputs
            .iter()
            .map(|s| SubstrateState::new(s))
            .collect();
        e.watch_inputs = cfg
            .watch_inputs
            .as_ref()
            .map(|w| w.iter().map(|s| s.as_str().into()).collect());
        e.numeric_bins = cfg
            .numeric_bins
            .iter()
            .map(|(k, v)| (k.as_str().into(), v.clone().into()))
            .collect();
        e.assignment = cfg
            .assignment
            .as_ref()
            .map(|a| Box::new(AssignmentState::new(a, &e.arms)));
        if cfg.unit_of_assignment == UnitOfAssignment::Cluster {
            e.clusters = Some(Box::new(Clusters::new(limits.exposure_sample)));
        }
        e.phase = cfg.phase.clone();
        e.set_alpha_divisor();
        e
    }

    /// The [`Self::design_key`] a declaration gives (its every field).
    pub fn design_key_of(cfg: &ExperimentSettings) -> u64 {
        // the end is a date on the calendar, not the design: moving it keeps the statistics
        let design = ExperimentSettings {
            ends_at: None,
            ..cfg.clone()
        };
        key_of(&format!("{design:?}"))
    }

    /// An undeclared experiment, first seen with `arm`.
    pub fn undeclared(id: &str, limits: &ExperimentLimits) -> Experiment {
        Experiment::with_design(id, Vec::new(), &[], limits)
    }

    fn with_design(
        id: &str,
        arms: Vec<Box<str>>,
        weights: &[f64],
        limits: &ExperimentLimits,
    ) -> Experiment {
        let design = Design::new(weights, &limits.k_grid);
        let mut e = Experiment {
            id: super::name::Name::new(id),
            declared: false,
            design_key: 0,
            srm: DmEProcess::new(&design),
            arms: arms.into_iter().map(super::name::Name::from).collect(),
            design,
            inputs: Vec::new(),
            inputs_over_limit: 0,
            restarts: 0,
            first_ts_ms: i64::MAX,
            last_ts_ms: i64::MIN,
            units: None,
            repeat_events: 0,
            uncounted_events: 0,
            substrates: Vec::new(),
            assignment: None,
            exposures: None,
            clusters: None,
            model: None,
            treatment_inputs: Vec::new(),
            watch_inputs: None,
            numeric_bins: Vec::new(),
            limits: limits.clone(),
            name_index: HashMap::default(),
            input_order: [NO_INPUT; INPUT_ORDER],
            ignored: Vec::new(),
            alpha_divisor: 1,
            ln_alpha_divisor: 0.0,
            scratch: String::new(),
            phase: None,
            frozen: false,
        };
        e.set_alpha_divisor();
        e
    }

    /// Memory held by the experiment, in bytes: an estimate from the structures' sizes and
    /// capacities (allocator overhead not included), for `limits.max_memory_bytes`.
    pub fn memory_bytes(&self) -> usize {
        self.memory_parts().total()
    }

    /// [`Self::memory_bytes`] by part, for the report (what to shrink or cap).
    pub fn memory_parts(&self) -> MemoryParts {
        use std::mem::size_of;
        let (mut strata, mut numeric) = (0, 0);
        for i in &self.inputs {
            strata += i.name.len() + i.strata.memory_bytes() + i.bins.bytes();
            numeric += i.numeric.as_ref().map_or(0, |n| n.bytes());
        }
        MemoryParts {
            strata,
            numeric,
            units: self.units.as_ref().map_or(0, UnitFilter::bytes),
            exposures: self
                .exposures
                .as_ref()
                .map_or(0, ExposureSample::memory_bytes)
                + self
                    .clusters
                    .as_ref()
                    .map_or(0, |c| size_of::<Clusters>() + c.memory_bytes()),
            model: self.model.as_ref().map_or(0, |m| m.memory_bytes()),
            other: size_of::<Experiment>()
                + self.id.len()
                + self
                    .arms
                    .iter()
                    .map(|a| a.len() + size_of::<super::name::Name>())
                    .sum::<usize>()
                + self.inputs.capacity() * size_of::<InputState>()
                + DmEProcess::heap_bytes(self.arms.len(), self.design.ks().len())
                + self.name_index.capacity() * 17
                + self.ignored.iter().map(|n| n.len() + 16).sum::<usize>()
                + self
                    .assignment
                    .as_ref()
                    .map_or(0, |_| size_of::<AssignmentState>())
                + self
                    .substrates
                    .iter()
                    .map(|s| s.values.capacity() * 64)
                    .sum::<usize>()
                + self.limits.k_grid.len() * 8,
        }
    }

    /// The number of inputs the experiment-level alpha is split over (Bonferroni).
    pub fn alpha_divisor(&self) -> usize {
        self.alpha_divisor
    }

    /// `ln` of [`Self::alpha_divisor`], added to the per-check log threshold.
    #[inline]
    pub fn ln_alpha_divisor(&self) -> f64 {
        self.ln_alpha_divisor
    }

    fn set_alpha_divisor(&mut self) {
        self.alpha_divisor = self
            .watch_inputs
            .as_ref()
            .map_or(self.limits.max_inputs, |w| w.len().max(1));
        self.ln_alpha_divisor = (self.alpha_divisor as f64).ln();
    }

    /// Its limits.
    pub fn limits(&self) -> &ExperimentLimits {
        &self.limits
    }

    /// Whether `name` is an input the treatment is meant to change.
    pub fn is_treatment_input(&self, name: &str) -> bool {
        self.treatment_inputs.iter().any(|t| &**t == name)
    }

    /// An event of `arm_name`: its arm (added to an undeclared experiment, restarting its
    /// statistics) and whether the statistics restarted.
    fn observed(&mut self, arm_name: &str) -> Result<Observed, RejectReason> {
        let restarts = self.restarts;
        let arm = self.arm_index(arm_name)?;
        Ok(Observed {
            arm,
            restarted: self.restarts != restarts,
            ..Observed::default()
        })
    }

    fn arm_index(&mut self, arm: &str) -> Result<usize, RejectReason> {
        if let Some(i) = self.arms.iter().position(|a| a.is(arm)) {
            return Ok(i);
        }
        if self.declared || self.arms.len() >= self.limits.max_arms {
            return Err(RejectReason::UnknownArm);
        }
        // undeclared: equal weights over the arms seen so far; restart the statistics
        self.arms.push(super::name::Name::new(arm));
        let w = vec![1.0 / self.arms.len() as f64; self.arms.len()];
        self.design = Design::new(&w, &self.limits.k_grid);
        self.srm = DmEProcess::new(&self.design);
        for i in &mut self.inputs {
            i.reset(&self.design, self.limits.max_strata);
        }
        self.model = None;
        if self.arms.len() > 1 {
            self.restarts += 1;
        }
        Ok(self.arms.len() - 1)
    }

    /// [`Self::input_index`] of the input at position `p` of an event's object: producers
    /// write the inputs in the same order event after event, so the input found at `p` last
    /// time is tried first (a name compare, no hash, no map: the common case).
    #[inline]
    fn input_at(&mut self, p: usize, name: &str) -> Option<usize> {
        if let Some(&v) = self.input_order.get(p) {
            if v >= 0 {
                if self.inputs.get(v as usize).is_some_and(|x| x.name.is(name)) {
                    return Some(v as usize);
                }
            } else if v != NO_INPUT
                && self
                    .ignored
                    .get((-1 - v) as usize)
                    .is_some_and(|n| **n == *name)
            {
                return None;
            }
        }
        let (found, code) = self.input_code(name);
        if let Some(slot) = self.input_order.get_mut(p) {
            *slot = code.and_then(|c| i16::try_from(c).ok()).unwrap_or(NO_INPUT);
        }
        found
    }

    #[inline]
    fn input_index(&mut self, name: &str) -> Option<usize> {
        self.input_code(name).0
    }

    /// The input `name` is (or `None`: not watched), with its `name_index` code when it has
    /// one (the input, or `-1 - i` for ignored name `i`).
    #[inline]
    fn input_code(&mut self, name: &str) -> (Option<usize>, Option<i32>) {
        let h = key_of(name);
        if let Some(&v) = self.name_index.get(&h) {
            if v >= 0 && self.inputs[v as usize].name.is(name) {
                return (Some(v as usize), Some(v));
            }
            if v < 0 && *self.ignored[(-1 - v) as usize] == *name {
                return (None, Some(v));
            }
        }
        let found = self.resolve_input(name);
        if self.name_index.contains_key(&h) {
            return (found, None); // a 64-bit collision: resolved, not cached
        }
        let code = match found {
            Some(i) => i32::try_from(i).ok(),
            None if self.ignored.len() < MAX_IGNORED
                && self.inputs.len() < self.limits.max_inputs =>
            {
                self.ignored.push(name.into());
                Some(-(self.ignored.len() as i32))
            }
            None => None,
        };
        if let Some(c) = code {
            self.name_index.insert(h, c);
        }
        (found, code)
    }

    fn resolve_input(&mut self, name: &str) -> Option<usize> {
        if let Some(i) = self.inputs.iter().position(|x| x.name.is(name)) {
            return Some(i);
        }
        if self.is_treatment_input(name) {
            return None;
        }
        if let Some(w) = &self.watch_inputs {
            if !w.iter().any(|x| &**x == name) {
                return None;
            }
        }
        if self.inputs.len() >= self.limits.max_inputs {
            self.inputs_over_limit += 1;
            return None;
        }
        let bins = self
            .numeric_bins
            .iter()
            .find(|(n, _)| &**n == name)
            .map_or(Bins::HalfOctave, |(_, e)| Bins::Edges(e.clone()));
        self.inputs.push(InputState::new(
            name,
            &self.design,
            self.limits.max_strata,
            bins,
        ));
        Some(self.inputs.len() - 1)
    }

    /// Count one exposure event: its unit's first exposure, or every event without a unit.
    pub fn observe(&mut self, ev: &Event<'_>) -> Result<Observed, RejectReason> {
        let arm_name = ev.arm.as_deref().ok_or(RejectReason::MissingField)?;
        // the unit's slot in the exposure sample is the likeliest miss: hinted before the arm
        // is looked up, so that the two overlap
        let unit_key = ev.unit.as_deref().map(key_of);
        if let (Some(h), Some(sample)) = (unit_key, &self.exposures) {
            sample.prefetch(h);
        }
        let mut obs = self.observed(arm_name)?;
        obs.exposure = true;
        let arm = obs.arm;
        self.first_ts_ms = self.first_ts_ms.min(ev.ts_ms);
        self.last_ts_ms = self.last_ts_ms.max(ev.ts_ms);
        let (cap, units_cap) = (self.limits.exposure_sample, self.limits.units);
        // the randomization unit: the cluster in a cluster experiment, else the unit; its
        // sample (clusters, or the units' exposure sample) decides what is new while exact
        let exposure = match (&mut self.clusters, unit_key) {
            (Some(clusters), _) => {
                if let Some(h) = unit_key {
                    self.exposures
                        .get_or_insert_with(|| ExposureSample::new(cap))
                        .observe(h, arm);
                    obs.unit = true;
                }
                let Some(c) = ev.cluster.as_deref() else {
                    clusters.missing += 1;
                    return Ok(obs);
                };
                let units = self
                    .units
                    .get_or_insert_with(|| UnitFilter::exact(units_cap));
                let (mixed, exposure) =
                    clusters.observe_first(c, key_of(c), arm, units, self.frozen);
                obs.cluster_mixed = mixed;
                Some(exposure)
            }
            (None, Some(h)) => {
                obs.unit = true;
                let units = self
                    .units
                    .get_or_insert_with(|| UnitFilter::exact(units_cap));
                let sample = self
                    .exposures
                    .get_or_insert_with(|| ExposureSample::new(cap));
                Some(sample.observe_first(h, arm, units, self.frozen).1)
            }
            (None, None) if self.frozen => Some(Exposure::Full),
            (None, None) => None,
        };
        let first = match exposure {
            None | Some(Exposure::First) => true,
            Some(Exposure::Repeat) => {
                self.repeat_events += 1;
                false
            }
            Some(Exposure::Full) => {
                self.uncounted_events += 1;
                false
            }
        };
        obs.assigned = true;
        if !first {
            return Ok(obs);
        }
        obs.counted = true;
        self.srm.observe(&self.design, arm);
        // in three passes, so that the cache misses of the inputs overlap instead of queueing
        // (an experiment's state is cold when a fleet's events interleave): each input's
        // key, with a hint for its index entry; then, that entry at hand, a hint for its
        // stratum; then the updates
        let mut todo = [(0u8, 0u32, 0u64); PREFETCHED_INPUTS];
        let mut n = 0;
        for (p, (name, value)) in ev.inputs.iter().enumerate() {
            if let Some(i) = self.input_at(p, name) {
                if obs.touched & (1 << i) != 0 {
                    continue; // a repeated key in one object counts once
                }
                obs.touched |= 1 << i;
                let input = &self.inputs[i];
                let key = input.key(value);
                match todo.get_mut(n) {
                    Some(t) => {
                        input.prefetch(value, key, arm);
                        *t = (i as u8, p as u32, key);
                        n += 1;
                    }
                    // past the first few, at once (the order of inputs does not matter)
                    None => self.count_input(&mut obs, i, value, key),
                }
            }
        }
        for &(i, _, key) in &todo[..n] {
            self.inputs[usize::from(i)].strata.prefetch_stratum(key);
        }
        for &(i, p, key) in &todo[..n] {
            if let Some((_, value)) = ev.inputs.get(p as usize) {
                self.count_input(&mut obs, usize::from(i), value, key);
            }
        }
        Ok(obs)
    }

    /// Count `value` (stratum `key`) of input `i` in the event's arm, and hand its key to the
    /// arm model.
    #[inline]
    fn count_input(&mut self, obs: &mut Observed, i: usize, value: &InputValue<'_>, key: u64) {
        self.inputs[i].observe_key(&self.design, value, key, obs.arm);
        if let Some(k) = obs.keys.get_mut(i) {
            *k = key;
        }
    }

    /// Substrate values of an exposure event (every event, repeats included): the
    /// `substrate_change` check's update. Returns (substrate, value) of a value first seen.
    pub fn observe_substrates(
        &mut self,
        ev: &Event<'_>,
        arm: usize,
        seq: u64,
    ) -> Option<(usize, usize)> {
        let mut change = None;
        for (k, s) in self.substrates.iter_mut().enumerate() {
            let Some((_, v)) = ev.inputs.iter().find(|(n, _)| **n == *s.name) else {
                continue;
            };
            let text = v.as_text(&mut self.scratch);
            if let Some(i) = s.observe(text, arm, self.arms.len(), ev.ts_ms, seq) {
                change.get_or_insert((k, i));
            }
        }
        change
    }

    /// Count one value of an input carried by a non-exposure event of this experiment (e.g. the
    /// `judge_version` of a judgment): same watched-input rules and divergence machinery. The
    /// input is `touched` when it is watched.
    pub fn observe_input(
        &mut self,
        arm_name: &str,
        name: &str,
        value: &InputValue<'_>,
    ) -> Result<Observed, RejectReason> {
        let mut obs = self.observed(arm_name)?;
        if let Some(i) = self.input_index(name) {
            self.inputs[i].observe(&self.design, value, obs.arm);
            obs.touched = 1 << i;
        }
        Ok(obs)
    }

    /// The unit filter with its exact phase ended: every unit of the sample whose ids are the
    /// randomization units (the clusters, or the units) handed over.
    fn units_handed_over(&self) -> Option<UnitFilter> {
        let sample = match &self.clusters {
            Some(c) => Some(&c.sample),
            None => self.exposures.as_ref(),
        };
        self.units.clone().map(|mut u| {
            if let Some(s) = sample {
                s.hand_over(&mut u);
            }
            u
        })
    }

    /// Estimated randomization units (clusters, or units) counted in more than one merged
    /// partition (see [`ExposureSample::duplicates`]).
    pub fn units_in_several_partitions(&self) -> f64 {
        match &self.clusters {
            Some(c) => c.sample.duplicates(),
            None => self
                .exposures
                .as_ref()
                .map_or(0.0, ExposureSample::duplicates),
        }
    }

    /// Merge the state of the same experiment from another partition (same design).
    pub fn merge(&mut self, other: &Experiment) {
        if self.arms != other.arms {
            return; // designs differ (undeclared arms seen in another order): cannot merge
        }
        self.srm.merge(&other.srm, &self.design);
        for o in &other.inputs {
            match self.inputs.iter().position(|i| i.name == o.name) {
                Some(i) => self.inputs[i].merge(o, &self.design),
                None if self.inputs.len() < self.limits.max_inputs => self.inputs.push(o.clone()),
                None => self.inputs_over_limit += o.n,
            }
        }
        self.inputs_over_limit += other.inputs_over_limit;
        self.repeat_events += other.repeat_events;
        self.uncounted_events += other.uncounted_events;
        // the unit filters take over from the exact samples before they merge
        self.units = self.units_handed_over();
        merge_opt(
            &mut self.units,
            &other.units_handed_over(),
            UnitFilter::merge,
        );
        merge_opt(&mut self.exposures, &other.exposures, ExposureSample::merge);
        merge_opt(&mut self.clusters, &other.clusters, |a, b| a.merge(b));
        merge_opt(&mut self.assignment, &other.assignment, |a, b| a.merge(b));
        merge_opt(&mut self.model, &other.model, |a, b| a.merge(b));
        self.first_ts_ms = self.first_ts_ms.min(other.first_ts_ms);
        self.last_ts_ms = self.last_ts_ms.max(other.last_ts_ms);
    }
}

/// Merge an optional part of another partition's state into ours.
fn merge_opt<T: Clone>(a: &mut Option<T>, b: &Option<T>, merge: impl Fn(&mut T, &T)) {
    match (a.as_mut(), b) {
        (Some(x), Some(y)) => merge(x, y),
        (None, Some(y)) => *a = Some(y.clone()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;
    use crate::engine::Engine;

    /// The same events with their inputs written in any order (treatment and ignored inputs
    /// among them, moving position from event to event) give the same report as one fixed
    /// order: the per-position input cache never attributes a value to the wrong input.
    #[test]
    fn input_order_per_event_does_not_change_the_state() {
        let settings = Settings::from_toml(
            "[[experiment]]\nid = \"e\"\narms = { control = 0.5, treatment = 0.5 }\ntreatment_inputs = [\"fragment\"]\nwatch_inputs = [\"tier\", \"locale\", \"n\"]",
        )
        .unwrap();
        let (mut fixed, mut shuffled) = (Engine::new(&settings), Engine::new(&settings));
        let mut state = 7u64;
        for i in 0..3_000u64 {
            let fields = [
                format!(r#""tier":"t{}""#, i % 3),
                format!(r#""locale":"l{}""#, (i / 3) % 5),
                format!(r#""n":{}"#, (i * 7) % 40),
                format!(r#""fragment":"f{}""#, i % 2),
                format!(r#""other":"o{}""#, i % 4),
            ];
            let arm = if (i * 13) % 7 < 3 {
                "control"
            } else {
                "treatment"
            };
            let event = |order: &[usize]| {
                let inputs: Vec<&str> = order.iter().map(|&k| fields[k].as_str()).collect();
                format!(
                    r#"{{"kind":"prompt","ts":{i},"experiment":"e","arm":"{arm}","unit":"u{i}","inputs":{{{}}}}}"#,
                    inputs.join(",")
                )
            };
            let _ = fixed.process(event(&[0, 1, 2, 3, 4]).as_bytes());
            // a random permutation, changing every event (and sometimes a field left out)
            let mut order = vec![0usize, 1, 2, 3, 4];
            for k in (1..order.len()).rev() {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                order.swap(k, (state >> 33) as usize % (k + 1));
            }
            if i % 11 == 0 {
                order.retain(|&k| k != 4);
            }
            let _ = shuffled.process(event(&order).as_bytes());
        }
        let strip = |e: &Engine| {
            let mut r = serde_json::to_value(e.report()).unwrap();
            r["memory"] = serde_json::Value::Null;
            r
        };
        assert_eq!(strip(&fixed), strip(&shuffled));
        let x = &fixed.experiments()[0];
        assert_eq!(x.inputs.len(), 3);
        assert!(x.inputs.iter().all(|i| i.n == 3_000));
    }
}
