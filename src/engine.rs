//! The sans-IO pipeline: bytes -> decode -> per-experiment state -> detectors -> alerts.
//!
//! One `Engine` is owned by one thread; there are no locks and, for a typical event, no heap
//! allocation. The IO shell feeds it messages and drains new alerts and reports.

use crate::check::{
    Alert, EvalContext, JudgeUpdate, Tracked, TrackedEvalSet, TrackedExperiment, TrackedJudge,
    TrackedPair, TrackedRouter,
};
use crate::config::{JudgeSettings, RouterSettings, SamplingSettings, Settings};
use crate::event::{
    decode_into, Body, Event, InputValue, Inputs, Judgment, Kind, Limits, RejectReason, Routing,
};
use crate::report::Report;
use crate::state::experiment::{Experiment, ExperimentLimits};
use crate::state::judge::JudgeState;
use crate::state::overlap::{PairState, SharedUnits};
use crate::state::router::RouterState;
use crate::state::sampling::{EvalSet, Production, MAX_EVAL_SETS};
use crate::state::{key_of, Identity};
use std::collections::HashMap;

/// The pipeline state.
#[derive(Clone, Debug)]
pub struct Engine {
    limits: Limits,
    exp_limits: ExperimentLimits,
    /// Alert levels; `seq` and `ts_ms` are set per event.
    levels: EvalContext,
    max_experiments: usize,
    experiments: Vec<TrackedExperiment>,
    index: HashMap<u64, usize, Identity>,
    last: usize,
    accepted: [u64; Kind::ALL.len()],
    rejected: [u64; RejectReason::ALL.len()],
    seq: u64,
    alerts: Vec<Alert>,
    delivered: usize,
    judges: Vec<TrackedJudge>,
    judge_index: HashMap<u64, usize, Identity>,
    judge_settings: Vec<JudgeSettings>,
    routers: Vec<TrackedRouter>,
    router_index: HashMap<u64, usize, Identity>,
    router_settings: Vec<RouterSettings>,
    production: Option<Production>,
    eval_sets: Vec<TrackedEvalSet>,
    k_grid: Vec<f64>,
    /// `limits.max_memory_bytes`.
    memory_budget: usize,
    /// Estimated bytes of the experiments' state, summed at most every
    /// [`MEMORY_RECOUNT_EVERY`] messages (and at each report), plus new experiments since.
    state_bytes: usize,
    /// `seq` of the next full count.
    memory_count_due: u64,
    /// `(state_bytes, seq)` at the last count: the growth per message since paces the next.
    last_count: (usize, u64),
    /// The fastest growth seen between two counts, in bytes per message (the largest, not the
    /// last: growth comes in bursts, e.g. after restarts freed state, and a pace set by a
    /// quiet interval would let a burst carry the state far past the budget).
    growth_per_message: f64,
    /// An experiment created by the message being processed (its memory is added to
    /// `state_bytes` once the message has been applied).
    created: Option<usize>,
    /// `limits.max_event_lateness_ms` (0: off).
    lateness_ms: i64,
    /// Stream time: the latest event time counted (`i64::MIN` before the first), advanced at
    /// most one lateness window per event (see [`Engine::apply`]).
    stream_ts_ms: i64,
    /// Phased experiments: the id's key -> each phase's start (event time) and experiment
    /// index, in order (usually empty).
    phased: HashMap<u64, Vec<(i64, usize)>, Identity>,
    /// The alert levels shared by `n` phases, at index `n` (a phase's checks run at
    /// `alpha / phases`).
    phase_levels: Vec<EvalContext>,
    /// Units followed across experiments (`overlap_dependence`).
    shared_units: SharedUnits,
    /// Pairs of experiments seen on the same units.
    pairs: Vec<TrackedPair>,
    pair_index: HashMap<u64, usize, Identity>,
    /// `limits.max_overlap_pairs`.
    max_pairs: usize,
    /// Shared units of pairs beyond `max_pairs` (not counted).
    pairs_over_limit: u64,
}

/// The hard limit of a memory budget: 5/4 of it. Past the budget, new experiments are refused
/// and tracked ones count no new unit (so most of their statistics stop growing), but judge
/// versions, substrate values and the restart an undeclared experiment makes on a new arm
/// still allocate; past the hard limit the events of undeclared experiments are refused too,
/// so nothing an event's producer chose grows the state further. Declared experiments go on:
/// the configuration bounds how many there are.
pub fn hard_limit(budget: usize) -> usize {
    budget.saturating_add(budget / 4)
}

/// Messages between two counts of the state's memory (a count walks every experiment's
/// inputs) while it is under 3/4 of the budget, or past the hard limit (stopped: it no longer
/// grows), plus [`MEMORY_RECOUNT_PER_EXPERIMENT`] per experiment, so the count's cost per
/// message stays constant however many experiments there are (fewer when the state grows
/// fast, see [`MEMORY_RECOUNT_MIN`])...
/// Odd, so that the count does not always land on the messages whose processing time the
/// daemon samples (every 64th): the sampled mean stays unbiased.
pub const MEMORY_RECOUNT_EVERY: u64 = 4095;
/// ... and while it is between 3/4 of the budget and the hard limit, where a few thousand
/// messages could carry it far past.
pub const MEMORY_RECOUNT_NEAR: u64 = 255;
/// The fewest messages between two counts paced by the state's growth (see
/// [`Engine::count_memory`]), plus one per eight experiments.
pub const MEMORY_RECOUNT_MIN: u64 = 63;
/// Messages added to the recount interval per experiment (even: the interval stays odd);
/// half of it close to the budget.
pub const MEMORY_RECOUNT_PER_EXPERIMENT: u64 = 8;

/// Everything an engine's events built (nothing its configuration gives): what a snapshot
/// holds ([`crate::snapshot`]) and what a reconfigured engine takes over. Alerts travel as
/// their JSON (their report form skips empty fields, which a binary format cannot).
#[derive(serde::Deserialize)]
pub(crate) struct EngineState {
    experiments: Vec<TrackedExperiment>,
    accepted: [u64; Kind::ALL.len()],
    rejected: [u64; RejectReason::ALL.len()],
    seq: u64,
    #[serde(deserialize_with = "alerts_from_json")]
    alerts: Vec<Alert>,
    delivered: usize,
    judges: Vec<TrackedJudge>,
    routers: Vec<TrackedRouter>,
    production: Option<Production>,
    eval_sets: Vec<TrackedEvalSet>,
    stream_ts_ms: i64,
    shared_units: SharedUnits,
    pairs: Vec<TrackedPair>,
    pairs_over_limit: u64,
}

/// [`EngineState`] borrowed from a running engine, for writing (no copy of the state); the
/// same fields in the same order, so it reads back as an [`EngineState`].
#[derive(serde::Serialize)]
pub(crate) struct EngineStateRef<'a> {
    experiments: &'a [TrackedExperiment],
    accepted: &'a [u64; Kind::ALL.len()],
    rejected: &'a [u64; RejectReason::ALL.len()],
    seq: u64,
    #[serde(serialize_with = "alerts_as_json")]
    alerts: &'a [Alert],
    delivered: usize,
    judges: &'a [TrackedJudge],
    routers: &'a [TrackedRouter],
    production: Option<&'a Production>,
    eval_sets: &'a [TrackedEvalSet],
    stream_ts_ms: i64,
    shared_units: &'a SharedUnits,
    pairs: &'a [TrackedPair],
    pairs_over_limit: u64,
}

fn alerts_as_json<S: serde::Serializer>(alerts: &&[Alert], ser: S) -> Result<S::Ok, S::Error> {
    use serde::ser::Error as _;
    let text: Result<Vec<String>, _> = alerts.iter().map(serde_json::to_string).collect();
    serde::Serialize::serialize(&text.map_err(S::Error::custom)?, ser)
}

fn alerts_from_json<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<Alert>, D::Error> {
    use serde::de::Error as _;
    let text: Vec<String> = serde::Deserialize::deserialize(de)?;
    text.iter()
        .map(|a| serde_json::from_str(a).map_err(D::Error::custom))
        .collect()
}

/// Judges (and routers) tracked at most.
pub const MAX_INSTRUMENTS: usize = 256;

impl Engine {
    /// An engine with the declared experiments of `settings` pre-registered.
    pub fn new(settings: &Settings) -> Engine {
        let exp_limits = ExperimentLimits::from_settings(settings);
        let mut e = Engine {
            limits: settings.limits.decode(),
            levels: EvalContext::levels(&settings.alerts),
            max_experiments: settings
                .limits
                .max_experiments
                .max(settings.experiments.len()),
            experiments: Vec::new(),
            index: HashMap::default(),
            last: 0,
            accepted: [0; Kind::ALL.len()],
            rejected: [0; RejectReason::ALL.len()],
            seq: 0,
            alerts: Vec::new(),
            delivered: 0,
            judges: Vec::new(),
            judge_index: HashMap::default(),
            judge_settings: settings.judges.clone(),
            routers: Vec::new(),
            router_index: HashMap::default(),
            router_settings: settings.routers.clone(),
            production: settings.sampling.clone().map(Production::new),
            eval_sets: Vec::new(),
            k_grid: settings.alerts.k_grid.clone(),
            exp_limits,
            memory_budget: usize::try_from(settings.limits.max_memory_bytes).unwrap_or(usize::MAX),
            state_bytes: 0,
            memory_count_due: 0,
            last_count: (0, 0),
            growth_per_message: 0.0,
            created: None,
            lateness_ms: i64::try_from(settings.limits.max_event_lateness_ms).unwrap_or(i64::MAX),
            stream_ts_ms: i64::MIN,
            phased: HashMap::default(),
            phase_levels: Vec::new(),
            shared_units: SharedUnits::new(settings.limits.overlap_sample_units),
            pairs: Vec::new(),
            pair_index: HashMap::default(),
            max_pairs: settings.limits.max_overlap_pairs,
            pairs_over_limit: 0,
        };
        for cfg in &settings.experiments {
            let exp = Tracked::new(Experiment::declared(cfg, &e.exp_limits));
            e.index.insert(key_of(&cfg.id), e.experiments.len());
            e.experiments.push(exp);
        }
        e.index_phases(settings);
        e
    }

    /// Route a phased experiment's events to its phases (by event time) and give each phase
    /// its declaration and its share of `alpha`.
    fn index_phases(&mut self, settings: &Settings) {
        self.phased.clear();
        for cfg in &settings.experiments {
            let Some(p) = &cfg.phase else { continue };
            let Some(&i) = self.index.get(&key_of(&cfg.id)) else {
                continue;
            };
            self.experiments[i].stats.phase = Some(p.clone());
            let starts = self.phased.entry(key_of(&p.experiment)).or_default();
            starts.push((p.from_ms, i));
            starts.sort_unstable();
            while self.phase_levels.len() <= p.phases as usize {
                let n = self.phase_levels.len() as u32;
                self.phase_levels.push(self.levels.shared_by(n));
            }
        }
    }

    /// The levels the checks of experiment `i` run at (a phase's share of `alpha`).
    #[inline]
    fn levels_of(&self, i: usize, ctx: &EvalContext) -> EvalContext {
        match &self.experiments[i].phase {
            Some(p) => EvalContext {
                seq: ctx.seq,
                ts_ms: ctx.ts_ms,
                ..self.phase_levels[p.phases as usize]
            },
            None => *ctx,
        }
    }

    /// The alert levels of experiment `id`'s checks (its report's thresholds).
    pub fn levels_for(&self, id: &str) -> EvalContext {
        match self.index.get(&key_of(id)) {
            Some(&i) if *self.experiments[i].id == *id => self.levels_of(i, &self.levels),
            _ => self.levels,
        }
    }

    /// Process one message. Returns the accepted kind or the rejection reason (already counted).
    #[inline]
    pub fn process(&mut self, payload: &[u8]) -> Result<Kind, RejectReason> {
        let mut inputs = Inputs::new();
        let ev = decode_into(payload, &self.limits, &mut inputs);
        self.process_decoded(&ev)
    }

    /// [`Self::process`] of a message decoded elsewhere (with [`Self::decode_limits`]), e.g.
    /// on the Kafka consumer thread. The event comes by reference: it is a few hundred bytes,
    /// copied at every call it crossed by value.
    #[inline]
    pub fn process_decoded(
        &mut self,
        decoded: &Result<Event<'_>, RejectReason>,
    ) -> Result<Kind, RejectReason> {
        let seq = self.seq;
        self.seq += 1;
        if seq >= self.memory_count_due {
            self.count_memory();
        }
        let res = match decoded {
            Ok(ev) => self.apply(ev, seq).map(|()| ev.kind()),
            Err(r) => Err(*r),
        };
        if let Some(i) = self.created.take() {
            self.state_bytes += self.experiments[i].memory_bytes();
        }
        match res {
            Ok(k) => self.accepted[k.index()] += 1,
            Err(r) => self.rejected[r.index()] += 1,
        }
        res
    }

    /// The decoder's limits (for decoding on another thread).
    pub fn decode_limits(&self) -> &Limits {
        &self.limits
    }

    /// Count a message refused before it reached the decoder (e.g. by the transport).
    pub fn count_rejected(&mut self, reason: RejectReason) {
        self.seq += 1;
        self.rejected[reason.index()] += 1;
    }

    /// The index of experiment `id`, tracking it on first sight (within the limits). With
    /// `ts_ms`, the events of a phased experiment go to the phase in force at their time (a
    /// phase's own id, `<id>/<phase>`, names it directly).
    fn experiment_index(&mut self, id: &str, ts_ms: Option<i64>) -> Result<usize, RejectReason> {
        let i = self.track(id, ts_ms)?;
        if self.stopped() && !self.experiments[i].declared {
            return Err(RejectReason::MemoryLimit);
        }
        Ok(i)
    }

    /// [`Self::experiment_index`] whatever the hard limit.
    #[inline]
    fn track(&mut self, id: &str, ts_ms: Option<i64>) -> Result<usize, RejectReason> {
        if self.experiments.get(self.last).is_some_and(|e| e.id.is(id)) {
            return Ok(self.last);
        }
        let key = key_of(id);
        if let (Some(ts), false) = (ts_ms, self.phased.is_empty()) {
            if let Some(starts) = self.phased.get(&key) {
                let j = starts.partition_point(|&(from, _)| from <= ts);
                return Ok(starts[j.saturating_sub(1)].1);
            }
        }
        let i = match self.index.get(&key) {
            Some(&i) if self.experiments[i].id.is(id) => i,
            Some(_) => return Err(RejectReason::ExperimentLimit), // 64-bit collision: refuse, never mix
            None => {
                if self.experiments.len() >= self.max_experiments {
                    return Err(RejectReason::ExperimentLimit);
                }
                if self.state_bytes >= self.memory_budget {
                    return Err(RejectReason::MemoryLimit);
                }
                self.created = Some(self.experiments.len());
                self.experiments
                    .push(Tracked::new(Experiment::undeclared(id, &self.exp_limits)));
                self.index.insert(key, self.experiments.len() - 1);
                self.experiments.len() - 1
            }
        };
        self.last = i;
        Ok(i)
    }

    /// Apply a decoded event to the state and run the detectors it concerns.
    ///
    /// The watermark (`limits.max_event_lateness_ms`, Kafka Streams' stream time): a live event
    /// more than the lateness behind the latest event time counted is refused as `late`, not
    /// mixed into statistics of a time it no longer belongs to (an hour-of-week cell, a
    /// substrate's first time, a judge's onset). Stream time follows the events counted, but
    /// moves at most one lateness window per event, so one event stamped far in the future
    /// cannot make the next ones late (a real gap is caught up in a few events).
    pub fn apply(&mut self, ev: &Event<'_>, seq: u64) -> Result<(), RejectReason> {
        // an eval set samples past traces: a sample's time is its trace's, behind the stream by
        // design; only live events (prompts, judgments, routing decisions) keep stream time
        let live = !matches!(ev.body, Body::Sample(_));
        // (before the first event the stream time is `i64::MIN`: nothing is behind it)
        if live
            && self.lateness_ms > 0
            && ev.ts_ms < self.stream_ts_ms.saturating_sub(self.lateness_ms)
        {
            return Err(RejectReason::Late);
        }
        let ctx = EvalContext {
            seq,
            ts_ms: ev.ts_ms,
            ..self.levels
        };
        let res = match &ev.body {
            Body::Prompt => self.apply_prompt(ev, &ctx),
            Body::Judgment(j) => self.apply_judgment(ev, j, &ctx),
            Body::Routing(r) => self.apply_routing(r, &ctx),
            Body::Sample(smp) => self.apply_sample(ev, &smp.eval_set, &ctx),
        };
        if live && res.is_ok() && ev.ts_ms > self.stream_ts_ms {
            self.stream_ts_ms = if self.stream_ts_ms == i64::MIN || self.lateness_ms == 0 {
                ev.ts_ms
            } else {
                ev.ts_ms
                    .min(self.stream_ts_ms.saturating_add(self.lateness_ms))
            };
        }
        res
    }

    fn apply_routing(&mut self, r: &Routing<'_>, ctx: &EvalContext) -> Result<(), RejectReason> {
        let settings = &self.router_settings;
        let i = instrument_index(
            &mut self.routers,
            &mut self.router_index,
            &r.router,
            |x| &x.name,
            || {
                let cfg = settings.iter().find(|c| c.name == *r.router).cloned();
                Tracked::new(RouterState::new(&r.router, cfg))
            },
        )?;
        let Tracked { stats, checks } = &mut self.routers[i];
        let decision = stats.observe(r.score, r.threshold, &r.route);
        checks.on_event(stats, &decision, ctx, &mut self.alerts);
        Ok(())
    }

    fn apply_judgment(
        &mut self,
        ev: &Event<'_>,
        j: &Judgment<'_>,
        ctx: &EvalContext,
    ) -> Result<(), RejectReason> {
        // the judge-version mix of an experiment's arms is an input of that experiment
        if let (Some(id), Some(arm)) = (ev.experiment.as_deref(), ev.arm.as_deref()) {
            let e = self.experiment_index(id, Some(ev.ts_ms))?;
            let ctx = self.levels_of(e, ctx);
            let exp = &mut self.experiments[e];
            let obs = exp.observe_input(
                arm,
                "judge_version",
                &InputValue::Str(j.judge_version.clone()),
            )?;
            exp.checks_after(ev, obs, &ctx, &mut self.alerts);
        }
        let settings = &self.judge_settings;
        let k = instrument_index(
            &mut self.judges,
            &mut self.judge_index,
            &j.judge,
            |x| &x.name,
            || {
                let cfg = settings.iter().find(|c| c.name == *j.judge).cloned();
                Tracked::new(JudgeState::new(
                    cfg.unwrap_or_else(|| JudgeSettings::discovered(&j.judge)),
                ))
            },
        )?;
        let Tracked { stats, checks } = &mut self.judges[k];
        let new_version = stats
            .observe(&j.judge_version, j.score, j.control, ev.ts_ms, ctx.seq)
            .and_then(|(v, new)| new.then_some(v));
        let update = JudgeUpdate {
            new_version,
            control: j.control,
        };
        checks.on_event(stats, &update, ctx, &mut self.alerts);
        Ok(())
    }

    fn apply_sample(
        &mut self,
        ev: &Event<'_>,
        name: &str,
        ctx: &EvalContext,
    ) -> Result<(), RejectReason> {
        let production = self
            .production
            .get_or_insert_with(|| Production::new(SamplingSettings::default()));
        let i = match self.eval_sets.iter().position(|s| &*s.name == name) {
            Some(i) => i,
            None if self.eval_sets.len() < MAX_EVAL_SETS => {
                self.eval_sets.push(Tracked::new(EvalSet::new(
                    name,
                    production,
                    self.k_grid.len(),
                )));
                self.eval_sets.len() - 1
            }
            None => return Err(RejectReason::InstrumentLimit),
        };
        let Tracked { stats, checks } = &mut self.eval_sets[i];
        stats.observe(production, ev.ts_ms, ev.inputs, &self.k_grid);
        checks.on_event(stats, &&*production, ctx, &mut self.alerts);
        Ok(())
    }

    fn apply_prompt(&mut self, ev: &Event<'_>, ctx: &EvalContext) -> Result<(), RejectReason> {
        if let Some(p) = &mut self.production {
            p.observe(ev.ts_ms, ev.inputs);
        }
        let id = ev.experiment.as_deref().ok_or(RejectReason::MissingField)?;
        let i = self.experiment_index(id, Some(ev.ts_ms))?;
        let levels = self.levels_of(i, ctx);
        let exp = &mut self.experiments[i];
        let obs = exp.observe(ev)?;
        exp.checks_after(ev, obs, &levels, &mut self.alerts);
        if self.experiments.len() > 1 {
            if let Some(unit) = ev.unit.as_deref() {
                // a pair's level is its own (alpha / max_overlap_pairs), not a phase's
                self.observe_overlap(i, key_of(unit), obs.arm, ctx);
            }
        }
        Ok(())
    }

    /// A unit seen in experiment `i`: when it is followed and this is its first time there,
    /// count it in the pair of `i` with each experiment it was seen in before (not another
    /// phase of the same experiment: its phases share units by design).
    fn observe_overlap(&mut self, i: usize, unit: u64, arm: usize, ctx: &EvalContext) {
        let e = &self.experiments[i];
        let before = self.shared_units.record(unit, key_of(&e.id), arm, e.frozen);
        for (other, b) in before {
            let Some(&j) = self.index.get(&other) else {
                continue;
            };
            let (e, f) = (&self.experiments[i], &self.experiments[j]);
            let same_experiment =
                matches!((&e.phase, &f.phase), (Some(p), Some(q)) if p.experiment == q.experiment);
            if j == i || same_experiment {
                continue;
            }
            let ((lo, a), (hi, b)) = if *e.id <= *f.id {
                ((i, arm), (j, usize::from(b)))
            } else {
                ((j, usize::from(b)), (i, arm))
            };
            let (lo, hi) = (&self.experiments[lo], &self.experiments[hi]);
            let key = pair_key(&lo.id, &hi.id);
            let k = match self.pair_index.get(&key) {
                Some(&k) => k,
                None if self.pairs.len() < self.max_pairs && !lo.frozen => {
                    self.pair_index.insert(key, self.pairs.len());
                    self.pairs.push(Tracked::new(PairState::new(
                        (&lo.id, &lo.arms, &lo.design),
                        (&hi.id, &hi.arms),
                        self.max_pairs,
                    )));
                    self.pairs.len() - 1
                }
                None => {
                    self.pairs_over_limit += 1;
                    continue;
                }
            };
            let Tracked { stats, checks } = &mut self.pairs[k];
            if !stats.matches(lo.arms.len(), hi.arms.len()) {
                *stats = PairState::new(
                    (&lo.id, &lo.arms, &lo.design),
                    (&hi.id, &hi.arms),
                    self.max_pairs,
                );
                checks.restart();
            }
            stats.observe(a, b);
            checks.on_event(stats, &(), ctx, &mut self.alerts);
        }
    }

    /// Alerts fired since the last call.
    pub fn take_new_alerts(&mut self) -> &[Alert] {
        let new = &self.alerts[self.delivered..];
        self.delivered = self.alerts.len();
        new
    }

    /// Alerts acknowledged by the sinks (with checkpoints: the rest are delivered again after
    /// a restart, at least once).
    pub fn delivered(&self) -> usize {
        self.delivered
    }

    /// The first `delivered` alerts were acknowledged after this state's snapshot was taken
    /// (a checkpoint's delivery record).
    pub fn restore_delivered(&mut self, delivered: u64) {
        let d = usize::try_from(delivered).unwrap_or(usize::MAX);
        self.delivered = self.delivered.max(d.min(self.alerts.len()));
    }

    /// The sinks acknowledged alert `index` (in order): counted as delivered.
    pub fn confirm_delivered(&mut self, index: usize) -> bool {
        if index == self.delivered && index < self.alerts.len() {
            self.delivered += 1;
            return true;
        }
        false
    }

    /// Every alert fired so far (all stay active).
    pub fn alerts(&self) -> &[Alert] {
        &self.alerts
    }

    /// Experiments tracked.
    pub fn experiments(&self) -> &[TrackedExperiment] {
        &self.experiments
    }

    /// Production reference and eval sets (sampling skew).
    pub fn sampling(&self) -> (Option<&Production>, &[TrackedEvalSet]) {
        (self.production.as_ref(), &self.eval_sets)
    }

    /// Routers tracked.
    pub fn routers(&self) -> &[TrackedRouter] {
        &self.routers
    }

    /// Judges tracked.
    pub fn judges(&self) -> &[TrackedJudge] {
        &self.judges
    }

    /// Accepted counts by kind, in `Kind::ALL` order.
    pub fn accepted(&self) -> &[u64; Kind::ALL.len()] {
        &self.accepted
    }

    /// Rejected counts by reason, in `RejectReason::ALL` order.
    pub fn rejected(&self) -> &[u64; RejectReason::ALL.len()] {
        &self.rejected
    }

    /// The anytime-valid level of one check.
    pub fn alpha(&self) -> f64 {
        self.levels.alpha
    }

    /// The alert levels every detector runs at.
    pub fn levels(&self) -> &EvalContext {
        &self.levels
    }

    /// Messages seen (accepted and rejected).
    pub fn seen(&self) -> u64 {
        self.seq
    }

    /// Count the memory of the experiments' state now, and freeze or thaw the experiments
    /// (see [`Experiment::frozen`]). The IO shell calls it before each report, the engine
    /// every [`MEMORY_RECOUNT_EVERY`] messages ([`MEMORY_RECOUNT_NEAR`] close to the budget).
    pub fn count_memory(&mut self) {
        self.state_bytes = std::mem::size_of::<Engine>()
            + self.experiments.capacity() * std::mem::size_of::<TrackedExperiment>()
            + self
                .experiments
                .iter()
                .map(|e| e.memory_bytes())
                .sum::<usize>()
            + self.index.capacity() * 17
            + self.shared_units.memory_bytes()
            + self.pairs.iter().map(|p| p.memory_bytes()).sum::<usize>();
        let over = self.state_bytes >= self.memory_budget;
        let near = self.state_bytes / 3 >= self.memory_budget / 4;
        let stopped = self.stopped();
        let per = MEMORY_RECOUNT_PER_EXPERIMENT * self.experiments.len() as u64;
        let mut interval = if near && !stopped {
            MEMORY_RECOUNT_NEAR + per / 2
        } else {
            MEMORY_RECOUNT_EVERY + per
        };
        // paced by the fastest growth per message seen: the next count comes before growth
        // at that rate could cover half the room left below the budget (the hard limit once
        // past it), but not more often than every 63 messages plus one per eight experiments
        // (a count walks them all); and no later than the messages seen so far (counts at 1,
        // 2, 4, ... messages from the start, before the rate is known)
        let (bytes, seq) = self.last_count;
        let grew = self.state_bytes.saturating_sub(bytes) as f64;
        let messages = self.seq.saturating_sub(seq).max(1) as f64;
        self.growth_per_message = self.growth_per_message.max(grew / messages);
        self.last_count = (self.state_bytes, self.seq);
        let floor = MEMORY_RECOUNT_MIN + self.experiments.len() as u64 / 8;
        interval = interval.min(self.seq.max(floor));
        if !stopped && self.growth_per_message > 0.0 {
            let target = if over {
                hard_limit(self.memory_budget)
            } else {
                self.memory_budget
            };
            let room = target.saturating_sub(self.state_bytes) as f64;
            // saturating float-to-int conversion
            let paced = (room / 2.0 / self.growth_per_message) as u64;
            interval = interval.min(paced.max(floor));
        }
        let interval = interval | 1;
        self.memory_count_due = self.seq + interval;
        for e in &mut self.experiments {
            e.frozen = over;
        }
    }

    /// Give this engine `bytes` of the memory budget (a replica's budget is shared by the
    /// engines of the partitions it owns) and recount.
    pub fn set_memory_budget(&mut self, bytes: usize) {
        self.memory_budget = bytes;
        self.count_memory();
    }

    /// `(estimated bytes of state at the last count, budget)`.
    pub fn memory(&self) -> (usize, usize) {
        (self.state_bytes, self.memory_budget)
    }

    /// Whether the state is past the hard limit ([`hard_limit`]): the events of undeclared
    /// experiments are refused (`memory_limit`).
    #[inline]
    pub fn stopped(&self) -> bool {
        self.state_bytes >= hard_limit(self.memory_budget)
    }

    /// The full report (the replay output and `/api/v1/report`).
    pub fn report(&self) -> Report {
        Report::build(self)
    }

    /// The state the events built, for a snapshot.
    pub(crate) fn state(&self) -> EngineStateRef<'_> {
        EngineStateRef {
            experiments: &self.experiments,
            accepted: &self.accepted,
            rejected: &self.rejected,
            seq: self.seq,
            alerts: &self.alerts,
            delivered: self.delivered,
            judges: &self.judges,
            routers: &self.routers,
            production: self.production.as_ref(),
            eval_sets: &self.eval_sets,
            stream_ts_ms: self.stream_ts_ms,
            shared_units: &self.shared_units,
            pairs: &self.pairs,
            pairs_over_limit: self.pairs_over_limit,
        }
    }

    /// The state the events built, moved out (the configuration is dropped).
    fn into_state(self) -> EngineState {
        EngineState {
            experiments: self.experiments,
            accepted: self.accepted,
            rejected: self.rejected,
            seq: self.seq,
            alerts: self.alerts,
            delivered: self.delivered,
            judges: self.judges,
            routers: self.routers,
            production: self.production,
            eval_sets: self.eval_sets,
            stream_ts_ms: self.stream_ts_ms,
            shared_units: self.shared_units,
            pairs: self.pairs,
            pairs_over_limit: self.pairs_over_limit,
        }
    }

    /// This engine's state under other settings (a configuration reload): reconciled as a
    /// restart from a snapshot would be, without copying the state.
    pub fn reconfigured(self, settings: &Settings) -> Engine {
        Engine::from_state(settings, self.into_state())
    }

    /// An engine for `settings` that continues from `state` (its indexes rebuilt).
    pub(crate) fn from_state(settings: &Settings, state: EngineState) -> Engine {
        let mut e = Engine::new(settings);
        e.index = index_by(&state.experiments, |x| &x.id);
        e.judge_index = index_by(&state.judges, |j| &j.name);
        e.router_index = index_by(&state.routers, |r| &r.name);
        e.alerts = state.alerts;
        e.max_experiments = e.max_experiments.max(state.experiments.len());
        e.experiments = state.experiments;
        e.accepted = state.accepted;
        e.rejected = state.rejected;
        e.seq = state.seq;
        e.delivered = state.delivered.min(e.alerts.len());
        e.judges = state.judges;
        e.routers = state.routers;
        e.production = state.production;
        e.eval_sets = state.eval_sets;
        e.stream_ts_ms = state.stream_ts_ms;
        e.pair_index = state
            .pairs
            .iter()
            .enumerate()
            .map(|(i, p)| (pair_key(&p.first, &p.second), i))
            .collect();
        e.shared_units = state.shared_units;
        e.pairs = state.pairs;
        e.pairs_over_limit = state.pairs_over_limit;
        e.reconcile(settings);
        e.count_memory();
        e
    }

    /// Bring restored state in line with `settings` (a restart or a reload with another
    /// configuration): an experiment declared anew, or declared differently, starts from fresh
    /// statistics (a new design is a new test); the others keep theirs. Declared judges and
    /// routers take their new settings.
    fn reconcile(&mut self, settings: &Settings) {
        for cfg in &settings.experiments {
            let key = Experiment::design_key_of(cfg);
            match self.index.get(&key_of(&cfg.id)).copied() {
                Some(i) if self.experiments[i].design_key == key => {}
                Some(i) => {
                    tracing::warn!(experiment = %cfg.id, "declared design changed: its statistics restart");
                    self.experiments[i] = Tracked::new(Experiment::declared(cfg, &self.exp_limits));
                }
                None => {
                    self.index.insert(key_of(&cfg.id), self.experiments.len());
                    self.experiments
                        .push(Tracked::new(Experiment::declared(cfg, &self.exp_limits)));
                }
            }
        }
        for j in &mut self.judges {
            if let Some(c) = settings.judges.iter().find(|c| *c.name == *j.name) {
                j.cfg = c.clone();
            }
        }
        for r in &mut self.routers {
            if let Some(c) = settings.routers.iter().find(|c| *c.name == *r.name) {
                r.cfg = Some(c.clone());
            }
        }
        self.max_experiments = self.max_experiments.max(self.experiments.len());
        self.index_phases(settings);
    }

    /// Merge the state of another engine over a disjoint part of the stream (another
    /// partition): counters add, experiment state merges, alerts are unioned, instruments
    /// seen by one partition only are taken over.
    pub fn merge(&mut self, other: &Engine) {
        for (a, b) in self.accepted.iter_mut().zip(other.accepted) {
            *a += b;
        }
        for (a, b) in self.rejected.iter_mut().zip(other.rejected) {
            *a += b;
        }
        self.seq += other.seq;
        self.stream_ts_ms = self.stream_ts_ms.max(other.stream_ts_ms);
        for o in &other.experiments {
            match self.experiment_index(&o.id, None) {
                Ok(i) => self.experiments[i].merge(o),
                Err(r) => self.rejected[r.index()] += o.srm.n(),
            }
        }
        // instruments (judges, routers, the eval sampler) are order-dependent detectors: one
        // seen in a single partition is taken whole (exact); one seen in several keeps the
        // first partition's state (a partial view: key instrument events by their name)
        for j in &other.judges {
            if !self.judge_index.contains_key(&key_of(&j.name))
                && self.judges.len() < MAX_INSTRUMENTS
            {
                self.judge_index.insert(key_of(&j.name), self.judges.len());
                self.judges.push(j.clone());
            }
        }
        for r in &other.routers {
            if !self.router_index.contains_key(&key_of(&r.name))
                && self.routers.len() < MAX_INSTRUMENTS
            {
                self.router_index
                    .insert(key_of(&r.name), self.routers.len());
                self.routers.push(r.clone());
            }
        }
        if let (Some(mine), Some(theirs)) = (&mut self.production, &other.production) {
            if mine.n == 0 && theirs.n > 0 {
                *mine = theirs.clone();
            }
        }
        for e in &other.eval_sets {
            if !self.eval_sets.iter().any(|x| x.name == e.name)
                && self.eval_sets.len() < MAX_EVAL_SETS
            {
                self.eval_sets.push(e.clone());
            }
        }
        self.shared_units.merge(&other.shared_units);
        self.pairs_over_limit += other.pairs_over_limit;
        for p in &other.pairs {
            let key = pair_key(&p.first, &p.second);
            match self.pair_index.get(&key) {
                Some(&k) => {
                    let Tracked { stats, checks } = &mut self.pairs[k];
                    stats.merge(&p.stats);
                    checks.merge(stats, &p.checks, &p.stats);
                }
                None if self.pairs.len() < self.max_pairs => {
                    self.pair_index.insert(key, self.pairs.len());
                    self.pairs.push(p.clone());
                }
                None => self.pairs_over_limit += p.units,
            }
        }
        for a in &other.alerts {
            if !self.alerts.iter().any(|x| x.same(a)) {
                self.alerts.push(a.clone());
            }
        }
    }

    /// Pairs of experiments seen on the same units.
    pub fn pairs(&self) -> &[TrackedPair] {
        &self.pairs
    }

    /// `(units followed across experiments, their sampling rate, shared units of pairs beyond
    /// the cap)`.
    pub fn shared_units(&self) -> (usize, f64, u64) {
        (
            self.shared_units.len(),
            self.shared_units.rate(),
            self.pairs_over_limit,
        )
    }
}

/// The identity of the pair of experiments `first` < `second` (no allocation).
fn pair_key(first: &str, second: &str) -> u64 {
    key_of(first).rotate_left(29) ^ key_of(second).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Name hash -> position, for a list restored from a snapshot.
fn index_by<T>(list: &[T], name: impl Fn(&T) -> &str) -> HashMap<u64, usize, Identity> {
    list.iter()
        .enumerate()
        .map(|(i, x)| (key_of(name(x)), i))
        .collect()
}

/// The index of instrument `name` (a judge or a router), tracking it on first sight; refused
/// beyond [`MAX_INSTRUMENTS`] or on a 64-bit hash collision (never mix two instruments).
fn instrument_index<T>(
    list: &mut Vec<T>,
    index: &mut HashMap<u64, usize, Identity>,
    name: &str,
    name_of: impl Fn(&T) -> &str,
    make: impl FnOnce() -> T,
) -> Result<usize, RejectReason> {
    let key = key_of(name);
    match index.get(&key) {
        Some(&i) if name_of(&list[i]) == name => Ok(i),
        Some(_) => Err(RejectReason::InstrumentLimit),
        None if list.len() >= MAX_INSTRUMENTS => Err(RejectReason::InstrumentLimit),
        None => {
            list.push(make());
            index.insert(key, list.len() - 1);
            Ok(list.len() - 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Faults, Simulator, Users};

    /// The adversarial producer (a thousand made-up experiments, sixteen arms and inputs, every
    /// value and unit new) against a 16 MiB budget: the counts come often enough (paced by the
    /// fastest growth seen, and at 1, 2, 4, ... messages from the start) that the state ends
    /// within the hard limit (5/4 of the budget). With a count every ~4,100 messages plus 8 per
    /// experiment it ended at 1.6 times the budget. Past the hard limit (here forced by a
    /// smaller budget) the events of undeclared experiments are refused, a declared
    /// experiment's are not.
    #[test]
    fn budget_holds_against_the_adversarial_producer() {
        let budget = 16 << 20;
        let settings = Settings::from_toml(&format!(
            "[limits]\nmax_memory_bytes = {budget}\n\n[[experiment]]\nid = \"declared\"\n\
             arms = {{ control = 0.5, treatment = 0.5 }}"
        ))
        .unwrap();
        let mut engine = Engine::new(&settings);
        let mut buf = Vec::new();
        for i in 0..64_000 {
            crate::sim::adversarial_event(i, &mut buf);
            let _ = engine.process(&buf);
        }
        engine.count_memory();
        let (state, _) = engine.memory();
        assert!(
            state > budget && state <= hard_limit(budget),
            "{state} bytes of state, budget {budget}"
        );
        let refused = engine.rejected()[RejectReason::MemoryLimit.index()];
        assert!(refused > 0);
        assert!(!engine.stopped());
        engine.set_memory_budget(state / 2);
        assert!(engine.stopped());
        let report = engine.report();
        assert!(report.memory.refusing_undeclared_events);
        assert_eq!(report.memory.hard_limit_bytes, hard_limit(state / 2));
        crate::sim::adversarial_event(0, &mut buf);
        assert_eq!(engine.process(&buf), Err(RejectReason::MemoryLimit));
        let declared = br#"{"kind":"prompt","ts":1767225600000,"experiment":"declared","arm":"control","inputs":{"tier":"free"}}"#;
        assert_eq!(engine.process(declared), Ok(Kind::Prompt));
        assert_eq!(
            engine.report().memory.refused_messages,
            refused + 1,
            "counted"
        );
    }

    /// Past `limits.max_memory_bytes` new experiments are refused as `memory_limit` (counted,
    /// reported) and the experiments already tracked stop counting new units (a stopped
    /// e-process is still one) while they still recognise the units they know: the state stops
    /// growing near the budget.
    #[test]
    fn memory_budget_refuses_new_experiments() {
        let budget = 4_000_000;
        let settings = Settings::from_toml(&format!(
            "[limits]\nmax_memory_bytes = {budget}\nmax_experiments = 100000"
        ))
        .unwrap();
        let mut engine = Engine::new(&settings);
        let event = |e: usize, u: usize| {
            format!(
                r#"{{"kind":"prompt","ts":1,"experiment":"exp-{e}","arm":"{}","unit":"u{u}","inputs":{{"tier":"t{}","locale":"l{}","tokens":{}}}}}"#,
                ["control", "treatment"][u % 2],
                u % 7,
                u % 5,
                u % 300
            )
        };
        for round in 0..40 {
            for e in 0..5_000 {
                let _ = engine.process(event(e, round * 5_000 + e).as_bytes());
            }
        }
        let refused = engine.rejected()[RejectReason::MemoryLimit.index()];
        let tracked = engine.experiments().len();
        assert!(
            refused > 0 && tracked > 10 && tracked < 5_000,
            "{tracked} tracked, {refused} refused"
        );
        // a tracked experiment: a known unit is a repeat, a new one is not counted
        let e0 = |e: &Engine| {
            let x = &e.experiments()[0];
            (x.srm.n(), x.repeat_events, x.uncounted_events)
        };
        let (n, repeats, uncounted) = e0(&engine);
        engine.process(event(0, 0).as_bytes()).unwrap();
        engine.process(event(0, 1_000_000).as_bytes()).unwrap();
        assert_eq!(e0(&engine), (n, repeats + 1, uncounted + 1));
        engine.count_memory();
        let report = engine.report();
        assert!(report.memory.refusing_new_experiments);
        assert_eq!(report.memory.refused_messages, refused);
        // over the budget by at most what grew between two counts
        assert!(
            report.memory.state_bytes < budget + budget / 2,
            "{} bytes of state",
            report.memory.state_bytes
        );
        assert_eq!(report.events.rejected.get("memory_limit"), Some(&refused));
    }

    /// The report `replay` streams (each experiment built while written) is the report.
    #[test]
    fn lazy_report_is_the_report() {
        let mut engine = Engine::new(&Settings::from_toml("").unwrap());
        let mut sim = Simulator::fleet(3, 20, 50);
        let mut buf = Vec::new();
        for _ in 0..5_000 {
            sim.next_event(&mut buf);
            let _ = engine.process(&buf);
        }
        assert!(engine.experiments().len() > 10);
        let built = serde_json::to_string(&engine.report()).unwrap();
        let lazy = serde_json::to_string(&Report::lazy(&engine)).unwrap();
        assert_eq!(built, lazy);
    }

    /// Two partitions processed apart and merged give the state of one pass over the stream.
    #[test]
    fn merged_partitions_equal_one_pass() {
        let settings = Settings::from_toml(
            "[[experiment]]\nid = \"prompt-variant\"\narms = { control = 0.5, treatment = 0.5 }\ntreatment_inputs = [\"fragment\"]",
        )
        .unwrap();
        let mut sim = Simulator::single_with_users(
            9,
            Faults {
                tier_leak: Some(("pro".into(), 0.53)),
                srm: None,
                ..Default::default()
            },
            Some(Users {
                pool: u32::MAX,
                emit_unit: false,
            }),
        );
        let (mut a, mut b, mut all) = (
            Engine::new(&settings),
            Engine::new(&settings),
            Engine::new(&settings),
        );
        let mut buf = Vec::new();
        for i in 0..6000 {
            sim.next_event(&mut buf);
            all.process(&buf).unwrap();
            if i % 3 == 0 {
                a.process(&buf)
            } else {
                b.process(&buf)
            }
            .unwrap();
        }
        a.merge(&b);
        let (m, w) = (&a.experiments()[0], &all.experiments()[0]);
        // no watch_inputs: alpha is split over limits.max_inputs_per_experiment
        assert_eq!(m.alpha_divisor(), 16);
        let watched = Settings::from_toml(
            "[[experiment]]\nid = \"e\"\narms = { a = 0.5, b = 0.5 }\nwatch_inputs = [\"tier\", \"locale\", \"temperature\"]",
        )
        .unwrap();
        let engine = Engine::new(&watched);
        let e = &engine.experiments()[0];
        assert_eq!(e.alpha_divisor(), 3);
        assert!((e.ln_alpha_divisor() - 3f64.ln()).abs() < 1e-15);
        assert_eq!(m.srm.counts(), w.srm.counts());
        assert!((m.srm.log_e() - w.srm.log_e()).abs() < 1e-9 * (1.0 + w.srm.log_e().abs()));
        for (x, y) in m.inputs.iter().zip(&w.inputs) {
            assert_eq!(x.name, y.name);
            assert_eq!(x.strata.totals(), y.strata.totals());
            if y.strata.tail().is_some_and(|t| t.n() > 0) {
                // more values than strata: each partition pooled different values, so the merged
                // evidence is a valid e-value over another grouping, not the single pass's
                assert_eq!(&*x.name, "tool_hash");
                continue;
            }
            let (lx, ly) = (
                x.strata.log_e_independence(&m.design),
                y.strata.log_e_independence(&w.design),
            );
            assert!(
                (lx - ly).abs() < 1e-7 * (1.0 + ly.abs()),
                "{}: {lx} vs {ly}",
                x.name
            );
        }
        assert_eq!(a.accepted(), all.accepted());
    }

    /// An input not keyed by unit: a unit's events land in several partitions and each
    /// partition counts its first exposure. The merged state says how many units are counted
    /// twice (exactly, while the multiple-exposure sample follows every unit); keyed by unit,
    /// none.
    #[test]
    fn units_split_across_partitions_are_counted() {
        let settings = Settings::from_toml(
            "[[experiment]]\nid = \"prompt-variant\"\narms = { control = 0.5, treatment = 0.5 }",
        )
        .unwrap();
        let mut sim =
            Simulator::single_with_users(3, Faults::default(), Some(Users::returning(3000)));
        let events: Vec<(String, Vec<u8>)> = (0..20_000)
            .map(|_| {
                let mut b = Vec::new();
                sim.next_event(&mut b);
                let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
                (v["unit"].as_str().unwrap().to_string(), b)
            })
            .collect();
        for keyed_by_unit in [false, true] {
            let (mut a, mut b) = (Engine::new(&settings), Engine::new(&settings));
            let mut units = [
                std::collections::HashSet::new(),
                std::collections::HashSet::new(),
            ];
            for (i, (unit, e)) in events.iter().enumerate() {
                let p = if keyed_by_unit {
                    (key_of(unit) % 2) as usize
                } else {
                    i % 2
                };
                units[p].insert(unit.clone());
                [&mut a, &mut b][p].process(e).unwrap();
            }
            a.merge(&b);
            let both = units[0].intersection(&units[1]).count();
            let m = &a.experiments()[0];
            assert_eq!(m.units_in_several_partitions(), both as f64);
            assert_eq!(m.srm.n(), (units[0].len() + units[1].len()) as u64);
            let reported = a.report().experiments["prompt-variant"]
                .units
                .counted_in_several_partitions;
            if keyed_by_unit {
                assert_eq!(both, 0);
                assert_eq!(reported, None);
            } else {
                assert!(both > 2000, "most returning units are in both: {both}");
                assert_eq!(reported, Some(both as f64));
            }
        }
    }

    /// The watermark: events more than the lateness behind the stream time are refused as
    /// `late`; one event stamped far ahead moves the stream time one window only.
    #[test]
    fn late_events_are_refused_and_the_watermark_resists_a_future_stamp() {
        let mut s = Settings::from_toml(
            "[[experiment]]\nid = \"e\"\narms = { control = 0.5, treatment = 0.5 }",
        )
        .unwrap();
        s.limits.max_event_lateness_ms = 1_000;
        let ev =
            |ts: i64| format!(r#"{{"kind":"prompt","ts":{ts},"experiment":"e","arm":"control"}}"#);
        let mut e = Engine::new(&s);
        let mut run = |ts: i64| {
            e.process(ev(ts).as_bytes())
                .map(|_| ())
                .map_err(|r| r.as_str())
        };
        assert_eq!(run(10_000), Ok(()));
        assert_eq!(run(9_200), Ok(()), "within the lateness");
        assert_eq!(run(8_900), Err("late"));
        assert_eq!(
            run(5_000_000_000),
            Ok(()),
            "counted, but the stream time moves one window"
        );
        assert_eq!(run(10_500), Ok(()), "the next ordinary event is not late");
        assert_eq!(run(9_900), Err("late"));
        s.limits.max_event_lateness_ms = 0;
        let mut off = Engine::new(&s);
        for ts in [10_000, 1, 5] {
            assert!(
                off.process(ev(ts).as_bytes()).is_ok(),
                "0 turns the watermark off"
            );
        }
    }
}
