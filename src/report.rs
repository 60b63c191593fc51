//! The JSON report: what `armwatch replay` prints and `/api/v1/report` serves. Metrics are
//! published from the same structure, so the two never disagree.

use crate::detect::{shares, Alert};
use crate::engine::Engine;
use crate::event::{Kind, RejectReason};
use crate::state::experiment::Experiment;
use crate::state::input::InputState;
use crate::state::judge::JudgeState;
use crate::state::strata::TAIL_LABEL;
use crate::stats::divergence::{chi_square_p, js_distance, kl, psi};
use crate::stats::moments::smd;
use crate::stats::proportion::share;
use serde::Serialize;

pub(crate) mod integrity;
pub use integrity::{
    AssignmentReport, CandidateReport, ClustersReport, ExposureReport, MismatchExample,
    PredictabilityReport, MIN_CLUSTERS_PER_ARM,
};
use std::collections::BTreeMap;

/// The whole report. `E` is how the experiments are held: built (the default, what the HTTP
/// side and the metrics keep) or [`LazyExperiments`], each built only while it is serialized
/// (what `replay` prints: a thousand experiments' reports are tens of megabytes at once).
#[derive(Clone, Debug, Serialize)]
pub struct Report<E = BTreeMap<String, ExperimentReport>> {
    /// Event counts.
    pub events: EventsReport,
    /// Every alert fired (they stay active).
    pub alerts: Vec<Alert>,
    /// Per experiment.
    pub experiments: E,
    /// Per judge endpoint.
    pub judges: BTreeMap<String, JudgeReport>,
    /// Per router.
    pub routers: BTreeMap<String, RouterReport>,
    /// Eval-set sampling against production (present once tracked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling: Option<SamplingReport>,
    /// The statistics' memory against `limits.max_memory_bytes`.
    pub memory: MemoryReport,
    /// The input partitions this view merges (the daemon with checkpoints): which this replica
    /// owns and which come from other replicas' checkpoints.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionView>,
}

/// One input partition in a merged view.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionView {
    /// `topic/partition`.
    pub partition: String,
    /// `owned` (this replica's live state) or `checkpoint` (another replica's, as of its last
    /// checkpoint).
    pub source: &'static str,
    /// The first offset not in the view.
    pub next_offset: i64,
    /// Messages its state has counted (offsets start at 0: equal to `next_offset` while
    /// nothing was lost to retention).
    pub messages: u64,
}

/// Memory of the statistics.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    /// Estimated bytes at the last count.
    pub state_bytes: usize,
    /// `limits.max_memory_bytes`.
    pub budget_bytes: usize,
    /// New experiments are refused (reason `memory_limit`) while the state is over budget.
    pub refusing_new_experiments: bool,
    /// Messages of new experiments refused for memory.
    pub refused_messages: u64,
    /// The experiments' estimated bytes by part, counted when the report is built.
    pub experiments_by_part: crate::state::experiment::MemoryParts,
}

/// Eval sets against production.
#[derive(Clone, Debug, Serialize)]
pub struct SamplingReport {
    /// Time zone of hour-of-week.
    pub timezone: String,
    /// Production (prompt) events counted.
    pub production_events: u64,
    /// Per eval set.
    pub eval_sets: BTreeMap<String, EvalSetReport>,
}

/// One eval set.
#[derive(Clone, Debug, Serialize)]
pub struct EvalSetReport {
    /// Samples seen.
    pub samples: u64,
    /// Samples counted in the evidence (after the production warm-up).
    pub samples_in_evidence: u64,
    /// Per dimension (`hour_of_week` and each segment input).
    pub dimensions: BTreeMap<String, crate::detect::sampling::DimensionFigures>,
    /// Whether `sampling_skew` fired.
    pub alert: bool,
}

/// One router.
#[derive(Clone, Debug, Serialize)]
pub struct RouterReport {
    /// Whether a rule is declared (compliance is checked only then).
    pub declared: bool,
    /// The threshold in use.
    pub threshold: Option<f64>,
    /// Decisions seen.
    pub decisions: u64,
    /// Decisions within the band around the threshold.
    pub in_band: u64,
    /// In-band decisions against the rule.
    pub disagree: u64,
    /// `disagree / in_band`.
    pub disagreement_share: f64,
    /// Log e-value for "disagreement share above tolerance".
    pub compliance_log_evalue: f64,
    /// Whether `threshold_compliance` fired.
    pub compliance_alert: bool,
    /// The last density look: McCrary theta, z and p (`None` before the first look).
    pub density: Option<DensityReport>,
    /// Whether `threshold_density` fired.
    pub density_alert: bool,
}

/// The last McCrary look of a router.
#[derive(Clone, Debug, Serialize)]
pub struct DensityReport {
    /// Looks taken (at 1000, 2000, 4000, ... decisions).
    pub looks: u32,
    /// `ln f+ - ln f-` at the threshold.
    pub theta: f64,
    /// Its standard error.
    pub se: f64,
    /// `theta / se`.
    pub z: f64,
    /// Two-sided p-value of that look.
    pub p: f64,
    /// Binomial complement: counts below/above in the smallest symmetric window with 20 per
    /// side, and its exact p-value.
    pub window: Option<(f64, u64, u64, f64)>,
}

/// One judge endpoint.
#[derive(Clone, Debug, Serialize)]
pub struct JudgeReport {
    /// Versions in order of appearance.
    pub versions: Vec<JudgeVersionReport>,
    /// Control judgments in the baseline.
    pub baseline_n: u64,
    /// Baseline control mean.
    pub baseline_mean: f64,
    /// Baseline control standard deviation.
    pub baseline_sd: f64,
    /// Control judgments after the baseline.
    pub post_n: u64,
    /// Their mean.
    pub post_mean: f64,
    /// `(post_mean - baseline_mean) / baseline_sd`.
    pub shift_sd: f64,
    /// Log e-value of the shift test (mSPRT).
    pub log_evalue: f64,
    /// Log e-value the alert needs.
    pub evidence_threshold: f64,
    /// Two-sided CUSUM statistic (in sd units, k = 0.5).
    pub cusum: f64,
    /// Change-point estimate: the post-baseline control judgment where the CUSUM began to rise.
    pub onset_index: u64,
    /// Whether `judge_score_shift` fired.
    pub alert: bool,
}

/// One version behind a judge endpoint.
#[derive(Clone, Debug, Serialize)]
pub struct JudgeVersionReport {
    /// Version.
    pub version: String,
    /// First judgment's time (epoch ms).
    pub first_ts_ms: i64,
    /// Judgments.
    pub judgments: u64,
    /// Share of the judge's judgments.
    pub share: f64,
    /// Control-set judgments.
    pub control_n: u64,
    /// Their mean score.
    pub control_mean: f64,
}

/// Accepted and rejected counts.
#[derive(Clone, Debug, Serialize)]
pub struct EventsReport {
    /// Accepted events.
    pub accepted: u64,
    /// Accepted events by kind.
    pub accepted_by_kind: BTreeMap<&'static str, u64>,
    /// Rejected events by reason (reasons with a zero count omitted).
    pub rejected: BTreeMap<&'static str, u64>,
}

/// One experiment.
#[derive(Clone, Debug, Serialize)]
pub struct ExperimentReport {
    /// Declared in config.
    pub declared: bool,
    /// Present when the design was assumed (undeclared experiment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Arms in design order.
    pub arms: Vec<String>,
    /// Design weights.
    pub design: Vec<f64>,
    /// Counted exposures per arm: first exposures of units (events without `unit` count each).
    pub counts: Vec<u64>,
    /// Unit de-duplication.
    pub units: UnitsReport,
    /// First event time (epoch ms).
    pub first_ts_ms: Option<i64>,
    /// Last event time (epoch ms).
    pub last_ts_ms: Option<i64>,
    /// Sample ratio mismatch.
    pub srm: SrmReport,
    /// Watched inputs.
    pub inputs: BTreeMap<String, InputReport>,
    /// Input occurrences not watched because the per-experiment input limit was reached.
    pub inputs_over_limit: u64,
    /// Times statistics restarted because an undeclared experiment gained an arm.
    pub restarts: u32,
    /// Declared substrate inputs: each value, when it appeared, and its events per arm.
    pub substrates: BTreeMap<String, Vec<SubstrateValueReport>>,
    /// The declared hash assignment re-derived (`assignment_mismatch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assignment: Option<AssignmentReport>,
    /// Units in more than one arm (`multiple_exposure`), when events carry `unit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiple_exposure: Option<ExposureReport>,
    /// Clusters of a cluster-randomized experiment (`cluster_mixed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clusters: Option<ClustersReport>,
    /// The arm predicted from the inputs (`arm_predictable`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictability: Option<PredictabilityReport>,
}

/// One value of a substrate input.
#[derive(Clone, Debug, Serialize)]
pub struct SubstrateValueReport {
    /// The value.
    pub value: String,
    /// First event time (epoch ms).
    pub first_ts_ms: i64,
    /// Events per arm, in arm order.
    pub events_per_arm: Vec<u64>,
}

/// First-exposure counting.
#[derive(Clone, Debug, Serialize)]
pub struct UnitsReport {
    /// Units counted (first exposures).
    pub counted: u64,
    /// Events of already-counted units (not counted again).
    pub repeat_events: u64,
    /// Events of new units after the filter filled (not counted).
    pub uncounted_events: u64,
    /// Whether new units are no longer counted (`limits.units_per_experiment` reached).
    pub filter_full: bool,
}

/// SRM figures.
#[derive(Clone, Debug, Serialize)]
pub struct SrmReport {
    /// Current log e-value (anytime-valid evidence).
    pub log_evalue: f64,
    /// Log e-value the alert needs.
    pub evidence_threshold: f64,
    /// Sequential p-value `min_n 1/E_n` (anytime-valid).
    pub sequential_p: f64,
    /// Fixed-sample Pearson chi-square p (descriptive only: not valid under peeking).
    pub chi_square_p: f64,
    /// Observed shares.
    pub shares: Vec<f64>,
    /// Largest share deviation from design.
    pub max_share_deviation: f64,
    /// Whether the alert fired.
    pub alert: bool,
}

/// One watched input.
#[derive(Clone, Debug, Serialize)]
pub struct InputReport {
    /// Events that carried the input.
    pub events: u64,
    /// Log e-value for "the arm depends on the value" (marginal left free): what alerts.
    pub log_evalue: f64,
    /// Log e-value of the strata against the design weights (includes any overall SRM).
    pub log_evalue_vs_design: f64,
    /// Arm shares over all values of the input.
    pub pooled_shares: Vec<f64>,
    /// Log e-value the alert needs (`ln(m / alpha)`).
    pub evidence_threshold: f64,
    /// Whether the alert fired.
    pub alert: bool,
    /// Exactly tracked values.
    pub strata: usize,
    /// Tail values promoted to exact tracking.
    pub promotions: u64,
    /// Values with the largest evidence, most first (up to 5).
    pub top_values: Vec<ValueReport>,
    /// The arm the divergences compare against.
    pub reference_arm: String,
    /// Descriptive divergences of each other arm's value distribution from the reference's.
    pub divergence: BTreeMap<String, DivergenceReport>,
    /// Per-arm numeric summaries, when the input had numeric values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numeric: Option<BTreeMap<String, NumericReport>>,
}

/// One value (stratum) of an input.
#[derive(Clone, Debug, Serialize)]
pub struct ValueReport {
    /// The value (or bin, or `__other__`).
    pub value: String,
    /// Events with it.
    pub events: u64,
    /// Its contribution to the input's log e-value.
    pub log_evalue: f64,
    /// Arm shares within it.
    pub shares: Vec<f64>,
}

/// Fixed-sample divergences between two arms (descriptive).
#[derive(Clone, Debug, Serialize)]
pub struct DivergenceReport {
    /// KL(reference || arm).
    pub kl: f64,
    /// Jensen-Shannon distance.
    pub js: f64,
    /// Population stability index.
    pub psi: f64,
}

/// Numeric summary of one arm.
#[derive(Clone, Debug, Serialize)]
pub struct NumericReport {
    /// Values seen.
    pub n: u64,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub sd: f64,
    /// Median (from the histogram: non-negative values, 3 decimals).
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Standardized mean difference against the reference arm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smd: Option<f64>,
}

/// The experiments' reports, each built while it is serialized (in id order, as the map).
pub struct LazyExperiments<'a>(&'a Engine);

impl Serialize for LazyExperiments<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut order: Vec<&Experiment> = self.0.experiments().iter().collect();
        order.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        ser.collect_map(
            order
                .into_iter()
                .map(|e| (&*e.id, experiment_report(e, self.0))),
        )
    }
}

impl Report {
    /// Build from the engine's state.
    pub fn build(engine: &Engine) -> Report {
        Report::build_with(engine, |engine| {
            engine
                .experiments()
                .iter()
                .map(|e| (e.id.to_string(), experiment_report(e, engine)))
                .collect()
        })
    }
}

impl<'a> Report<LazyExperiments<'a>> {
    /// The same report with each experiment's part built only while it is serialized.
    pub fn lazy(engine: &'a Engine) -> Report<LazyExperiments<'a>> {
        Report::build_with(engine, LazyExperiments)
    }
}

impl<E> Report<E> {
    fn build_with<'a>(engine: &'a Engine, experiments: impl FnOnce(&'a Engine) -> E) -> Report<E> {
        let accepted_by_kind: BTreeMap<&'static str, u64> = Kind::ALL
            .iter()
            .map(|k| (k.as_str(), engine.accepted()[k.index()]))
            .collect();
        let rejected = RejectReason::ALL
            .iter()
            .filter(|r| engine.rejected()[r.index()] > 0)
            .map(|r| (r.as_str(), engine.rejected()[r.index()]))
            .collect();
        let (state_bytes, budget_bytes) = engine.memory();
        Report {
            partitions: Vec::new(),
            memory: MemoryReport {
                state_bytes,
                budget_bytes,
                refusing_new_experiments: state_bytes >= budget_bytes,
                refused_messages: engine.rejected()[RejectReason::MemoryLimit.index()],
                experiments_by_part: engine.experiments().iter().fold(
                    Default::default(),
                    |mut sum, e| {
                        sum.add(&e.memory_parts());
                        sum
                    },
                ),
            },
            events: EventsReport {
                accepted: engine.accepted().iter().sum(),
                accepted_by_kind,
                rejected,
            },
            alerts: engine.alerts().to_vec(),
            experiments: experiments(engine),
            routers: engine
                .routers()
                .iter()
                .map(|r| {
                    let rep = RouterReport {
                        declared: r.cfg.is_some(),
                        threshold: r.threshold,
                        decisions: r.decisions,
                        in_band: r.in_band,
                        disagree: r.disagree,
                        disagreement_share: share(r.disagree, r.in_band),
                        compliance_log_evalue: r.compliance.log_e,
                        compliance_alert: r.compliance.fired,
                        density: r.density_test.last.map(|(m, p)| DensityReport {
                            looks: r.density_test.looks,
                            theta: m.theta,
                            se: m.se,
                            z: m.z,
                            p,
                            window: r.density_test.window,
                        }),
                        density_alert: r.density_test.fired,
                    };
                    (r.name.to_string(), rep)
                })
                .collect(),
            sampling: {
                let (production, sets) = engine.sampling();
                production.map(|p| SamplingReport {
                    timezone: p.cfg.timezone.to_string(),
                    production_events: p.n,
                    eval_sets: sets
                        .iter()
                        .map(|s| {
                            let dims = (0..s.dims.len())
                                .map(|d| {
                                    (
                                        s.dims[d].name.to_string(),
                                        crate::detect::sampling::figures(s, p, d),
                                    )
                                })
                                .collect();
                            (
                                s.name.to_string(),
                                EvalSetReport {
                                    samples: s.n,
                                    samples_in_evidence: s.n_evidence,
                                    dimensions: dims,
                                    alert: s.detector.fired,
                                },
                            )
                        })
                        .collect(),
                })
            },
            judges: engine
                .judges()
                .iter()
                .map(|j| (j.name.to_string(), judge_report(j, engine.alpha())))
                .collect(),
        }
    }
}

/// The arm descriptive comparisons use: `control` when present, else the first.
pub fn reference_arm(exp: &Experiment) -> usize {
    exp.arms.iter().position(|a| &**a == "control").unwrap_or(0)
}

fn experiment_report(e: &Experiment, engine: &Engine) -> ExperimentReport {
    let alpha = engine.alpha();
    ExperimentReport {
        declared: e.declared,
        note: (!e.declared)
            .then(|| "undeclared experiment: equal design weights assumed".to_string()),
        arms: e.arms.iter().map(|a| a.to_string()).collect(),
        design: e.design.weights().to_vec(),
        counts: e.srm.counts().to_vec(),
        units: UnitsReport {
            counted: e.units.as_ref().map_or(0, |u| u.inserted()),
            repeat_events: e.repeat_events,
            uncounted_events: e.uncounted_events,
            filter_full: e.units.as_ref().is_some_and(|u| u.is_full()),
        },
        first_ts_ms: (e.srm.n() > 0).then_some(e.first_ts_ms),
        last_ts_ms: (e.srm.n() > 0).then_some(e.last_ts_ms),
        srm: SrmReport {
            log_evalue: e.srm.log_e(),
            evidence_threshold: (1.0 / alpha).ln(),
            sequential_p: e.srm_state.p_value(),
            chi_square_p: chi_square_p(e.srm.counts(), e.design.weights()),
            shares: shares(e.srm.counts()),
            max_share_deviation: e.srm.max_share_deviation(&e.design),
            alert: e.srm_state.fired,
        },
        inputs: e
            .inputs
            .iter()
            .map(|inp| (inp.name.to_string(), input_report(e, inp, alpha)))
            .collect(),
        inputs_over_limit: e.inputs_over_limit,
        restarts: e.restarts,
        substrates: e
            .substrates
            .iter()
            .map(|s| {
                let values = s
                    .values
                    .iter()
                    .map(|v| SubstrateValueReport {
                        value: v.value.to_string(),
                        first_ts_ms: v.first_ts_ms,
                        events_per_arm: v.per_arm.clone(),
                    })
                    .collect();
                (s.name.to_string(), values)
            })
            .collect(),
        assignment: integrity::assignment(e, (1.0 / alpha).ln()),
        multiple_exposure: integrity::exposure(e, engine.levels()),
        clusters: integrity::clusters(e),
        predictability: integrity::predictability(e, (1.0 / alpha).ln()),
    }
}

fn input_report(e: &Experiment, inp: &InputState, alpha: f64) -> InputReport {
    let reference = reference_arm(e);
    let dists = inp.strata.arm_distributions(e.arms.len());
    let divergence = e
        .arms
        .iter()
        .enumerate()
        .filter(|(a, _)| *a != reference)
        .map(|(a, name)| {
            let (r, c) = (&dists[reference], &dists[a]);
            (
                name.to_string(),
                DivergenceReport {
                    kl: kl(r, c),
                    js: js_distance(r, c),
                    psi: psi(r, c),
                },
            )
        })
        .collect();
    let mut top: Vec<ValueReport> = inp
        .strata
        .slots()
        .iter()
        .map(|s| (inp.strata.label(s), &s.ep))
        .chain(std::iter::once((TAIL_LABEL, inp.strata.tail())))
        .filter(|(_, ep)| ep.n() > 0)
        .map(|(label, ep)| ValueReport {
            value: label.to_string(),
            events: ep.n(),
            log_evalue: inp.strata.contribution(ep, &e.design),
            shares: shares(ep.counts()),
        })
        .collect();
    top.sort_by(|a, b| {
        b.log_evalue
            .total_cmp(&a.log_evalue)
            .then_with(|| a.value.cmp(&b.value))
    });
    top.truncate(5);
    let numeric = inp.numeric.as_ref().map(|num| {
        e.arms
            .iter()
            .enumerate()
            .map(|(a, name)| {
                let m = &num.moments[a];
                let [p50, p90, p99] = num.quantiles(a, [0.5, 0.9, 0.99]);
                (
                    name.to_string(),
                    NumericReport {
                        n: m.n(),
                        mean: m.mean(),
                        sd: m.variance().sqrt(),
                        p50,
                        p90,
                        p99,
                        smd: if a == reference {
                            None
                        } else {
                            smd(m, &num.moments[reference])
                        },
                    },
                )
            })
            .collect()
    });
    InputReport {
        events: inp.n,
        log_evalue: inp.strata.log_e_independence(&e.design),
        log_evalue_vs_design: inp.strata.log_e(),
        pooled_shares: shares(inp.strata.totals()),
        evidence_threshold: (1.0 / alpha).ln() + e.ln_alpha_divisor(),
        alert: inp.detector.fired,
        strata: inp.strata.slots().len(),
        promotions: inp.strata.promotions(),
        top_values: top,
        reference_arm: e
            .arms
            .get(reference)
            .map(|a| a.to_string())
            .unwrap_or_default(),
        divergence,
        numeric,
    }
}

fn judge_report(j: &JudgeState, alpha: f64) -> JudgeReport {
    let total: u64 = j.versions.iter().map(|v| v.judgments).sum();
    let sd = j.baseline.variance().sqrt();
    let (cusum, onset_index, _) = j.cusum.peak();
    JudgeReport {
        versions: j
            .versions
            .iter()
            .map(|v| JudgeVersionReport {
                version: v.version.to_string(),
                first_ts_ms: v.first_ts_ms,
                judgments: v.judgments,
                share: share(v.judgments, total),
                control_n: v.control.n(),
                control_mean: v.control.mean(),
            })
            .collect(),
        baseline_n: j.baseline.n(),
        baseline_mean: j.baseline.mean(),
        baseline_sd: sd,
        post_n: j.post.n(),
        post_mean: j.post.mean(),
        shift_sd: if sd > 0.0 && j.post.n() > 0 {
            (j.post.mean() - j.baseline.mean()) / sd
        } else {
            0.0
        },
        log_evalue: j.detector.log_e,
        evidence_threshold: (1.0 / alpha).ln(),
        cusum,
        onset_index,
        alert: j.detector.shift_fired,
    }
}
