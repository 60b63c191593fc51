//! The JSON report: what `armwatch replay` prints and `/api/v1/report` serves. Metrics are
//! published from the same structure, so the two never disagree.

use crate::check::{
    Alert, Check, EvalSetSections, ExperimentSections, JudgeSections, RouterSections, SamplingEnv,
    TrackedExperiment,
};
use crate::engine::Engine;
use crate::event::{Kind, RejectReason};
use serde::Serialize;
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
    /// Experiments seen on the same units (present once a unit is seen in two).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlaps: Option<OverlapsReport>,
    /// The statistics' memory against `limits.max_memory_bytes`.
    pub memory: MemoryReport,
    /// The input partitions this view merges (the daemon with checkpoints): which this replica
    /// owns and which come from other replicas' checkpoints.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionView>,
}

/// Pairs of experiments that share units (`overlap_dependence`).
#[derive(Clone, Debug, Serialize)]
pub struct OverlapsReport {
    /// Units followed across experiments (a consistent sample).
    pub followed_units: usize,
    /// The sample's rate (1: every unit).
    pub sample_rate: f64,
    /// Shared units of pairs beyond `limits.max_overlap_pairs` (not tested).
    pub units_of_untracked_pairs: u64,
    /// Per pair, most evidence first.
    pub pairs: Vec<PairReport>,
}

/// Two experiments seen on the same units.
#[derive(Clone, Debug, Serialize)]
pub struct PairReport {
    /// The first experiment (ids in byte order).
    pub first: String,
    /// The second.
    pub second: String,
    /// Units followed in both.
    pub units: u64,
    /// The first's arms.
    pub first_arms: Vec<String>,
    /// The second's arms.
    pub second_arms: Vec<String>,
    /// Units per arm of the second (rows) and of the first (columns).
    pub counts: Vec<Vec<u64>>,
    /// Its checks (`dependence`).
    #[serde(flatten)]
    pub checks: crate::check::PairSections,
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
    /// The hard limit (5/4 of the budget): past it the events of undeclared experiments are
    /// refused too.
    pub hard_limit_bytes: usize,
    /// The state passed the hard limit: undeclared experiments' events are refused.
    pub refusing_undeclared_events: bool,
    /// Messages refused for memory (of new experiments, and past the hard limit of
    /// undeclared ones).
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
    /// Its checks (`skew`).
    #[serde(flatten)]
    pub checks: EvalSetSections,
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
    /// Its checks (`compliance`, `density`).
    #[serde(flatten)]
    pub checks: RouterSections,
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
    /// Which phase of which experiment this is (a phased experiment is reported as one
    /// experiment per phase, `<id>/<phase>`, each tested against its own design at
    /// `alpha / phases`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<PhaseReport>,
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
    /// Input occurrences not watched because the per-experiment input limit was reached.
    pub inputs_over_limit: u64,
    /// Times statistics restarted because an undeclared experiment gained an arm.
    pub restarts: u32,
    /// Its checks, one section each (`srm`, `inputs`, `substrates`, `assignment`,
    /// `multiple_exposure`, `clusters`, `predictability`; the last four when they apply).
    #[serde(flatten)]
    pub checks: ExperimentSections,
}

/// One judge endpoint: its checks (`versions`, `score_shift`).
#[derive(Clone, Debug, Serialize)]
pub struct JudgeReport {
    /// Its checks.
    #[serde(flatten)]
    pub checks: JudgeSections,
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
    /// Units (clusters, in a cluster-randomized experiment) counted in more than one input
    /// partition, estimated from the multiple-exposure sample: each partition counted the
    /// unit's first exposure, so the counts hold these twice. Present when not zero: the input
    /// topic is not keyed by unit (see the README's "Durable state").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counted_in_several_partitions: Option<f64>,
}

/// The experiments' reports, each built while it is serialized (in id order, as the map).
pub struct LazyExperiments<'a>(&'a Engine);

impl Serialize for LazyExperiments<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut order: Vec<&TrackedExperiment> = self.0.experiments().iter().collect();
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

    /// The report as served unless `http.report_values = true`: what identifies people or
    /// tenants (unit ids, cluster names, input values, in the experiments' sections and in the
    /// alerts, their messages and details) replaced by its [`pseudonym`], `~` and 8 hex digits
    /// of the value's hash, the same wherever the value appears, so that a reader can still
    /// tell values apart and follow one through the report. A pseudonym of a low-entropy value
    /// (a tier, a locale) can be reversed by trying the candidates: it keeps values out of
    /// casual reach (a dashboard, a log of responses), it does not make them anonymous.
    ///
    /// Each experiment is copied and pseudonymized only while it is serialized: at a thousand
    /// experiments a whole copy took ~22 MB (the JSON value tree this replaced, ~77 MB and four
    /// times the plain serialization's time).
    pub fn redacted(&self) -> Report<RedactedExperiments<'_>> {
        Report {
            events: self.events.clone(),
            alerts: self.alerts.iter().map(redacted_alert).collect(),
            experiments: RedactedExperiments(&self.experiments),
            judges: self.judges.clone(),
            routers: self.routers.clone(),
            sampling: self.sampling.clone(),
            overlaps: self.overlaps.clone(),
            memory: self.memory.clone(),
            partitions: self.partitions.clone(),
        }
    }
}

/// The experiments of a report, each pseudonymized while it is serialized
/// ([`Report::redacted`]).
pub struct RedactedExperiments<'a>(&'a BTreeMap<String, ExperimentReport>);

impl Serialize for RedactedExperiments<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_map(self.0.iter().map(|(id, e)| (id, redacted_experiment(e))))
    }
}

/// Experiment `e` as [`Report::redacted`] serves it.
pub fn redacted_experiment(e: &ExperimentReport) -> ExperimentReport {
    let mut e = e.clone();
    e.checks.redact();
    e
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
                hard_limit_bytes: crate::engine::hard_limit(budget_bytes),
                refusing_undeclared_events: engine.stopped(),
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
                        checks: r.checks.sections(r, engine.levels()),
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
                            let env = SamplingEnv {
                                production: p,
                                levels: engine.levels(),
                            };
                            (
                                s.name.to_string(),
                                EvalSetReport {
                                    samples: s.n,
                                    samples_in_evidence: s.n_evidence,
                                    checks: s.checks.sections(s, env),
                                },
                            )
                        })
                        .collect(),
                })
            },
            judges: engine
                .judges()
                .iter()
                .map(|j| {
                    let checks = j.checks.sections(j, engine.levels());
                    (j.name.to_string(), JudgeReport { checks })
                })
                .collect(),
            overlaps: overlaps(engine),
        }
    }
}

/// A phase of a phased experiment.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseReport {
    /// The experiment's id (as events name it).
    pub experiment: String,
    /// The phase's name.
    pub name: String,
    /// Its start (RFC 3339; absent for the initial phase).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// How many phases the experiment has (each tested at `alpha / phases`).
    pub phases: u32,
}

fn overlaps(engine: &Engine) -> Option<OverlapsReport> {
    let (followed_units, sample_rate, units_of_untracked_pairs) = engine.shared_units();
    if followed_units == 0 && engine.pairs().is_empty() {
        return None;
    }
    let mut pairs: Vec<PairReport> = engine
        .pairs()
        .iter()
        .map(|p| PairReport {
            first: p.first.to_string(),
            second: p.second.to_string(),
            units: p.units,
            first_arms: p.first_arms.iter().map(|a| a.to_string()).collect(),
            second_arms: p.second_arms.iter().map(|a| a.to_string()).collect(),
            counts: p.counts(),
            checks: p.checks.sections(p, engine.levels()),
        })
        .collect();
    pairs.sort_by(|a, b| {
        b.checks
            .dependence
            .log_evalue
            .total_cmp(&a.checks.dependence.log_evalue)
    });
    Some(OverlapsReport {
        followed_units,
        sample_rate,
        units_of_untracked_pairs,
        pairs,
    })
}

fn experiment_report(e: &TrackedExperiment, engine: &Engine) -> ExperimentReport {
    ExperimentReport {
        phase: e.phase.as_ref().map(|p| PhaseReport {
            experiment: p.experiment.clone(),
            name: p.name.clone(),
            from: (p.from_ms != i64::MIN).then(|| crate::check::alert::rfc3339(p.from_ms)),
            phases: p.phases,
        }),
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
            counted_in_several_partitions: Some(e.units_in_several_partitions())
                .filter(|&d| d > 0.0),
        },
        first_ts_ms: (e.srm.n() > 0).then_some(e.first_ts_ms),
        last_ts_ms: (e.srm.n() > 0).then_some(e.last_ts_ms),
        inputs_over_limit: e.inputs_over_limit,
        restarts: e.restarts,
        checks: e.checks.sections(e, &engine.levels_for(&e.id)),
    }
}

/// The pseudonym of `v`.
pub fn pseudonym(v: &str) -> String {
    format!("~{:08x}", crate::state::key_of(v) >> 32)
}

/// Pseudonymize the string at `v` (if it is one), noting the pair in `seen`.
fn pseudonymize(v: Option<&mut serde_json::Value>, seen: &mut Vec<(String, String)>) {
    if let Some(serde_json::Value::String(s)) = v {
        let p = pseudonym(s);
        seen.push((std::mem::replace(s, p.clone()), p));
    }
}

/// Every element of the array at `v`, as mutable values.
fn each(v: Option<&mut serde_json::Value>) -> impl Iterator<Item = &mut serde_json::Value> {
    v.and_then(serde_json::Value::as_array_mut)
        .into_iter()
        .flatten()
}

/// The assignment examples' units and the mixed clusters' names of an alert's details (its
/// check's section, as JSON).
fn redact_details(v: &mut serde_json::Value, seen: &mut Vec<(String, String)>) {
    for x in each(v.get_mut("examples")) {
        pseudonymize(x.get_mut("unit"), seen);
    }
    for n in each(v.get_mut("mixed_names")) {
        pseudonymize(Some(n), seen);
    }
}

/// Alert `a` as [`Report::redacted`] serves it: its value (when it is data), its details'
/// units and cluster names, and where its message quotes them, pseudonymized.
pub fn redacted_alert(a: &Alert) -> Alert {
    let mut a = a.clone();
    let mut seen = Vec::new();
    if let (Check::InputDivergence | Check::ClusterMixed, Some(v)) = (a.check, &mut a.value) {
        let p = pseudonym(v);
        seen.push((std::mem::replace(v, p.clone()), p));
    }
    redact_details(&mut a.details, &mut seen);
    // where the messages quote a value: `"value"` (a stratum), `` `name` `` (a cluster), `unit
    // logged` (an assignment example); never a bare substring, which could sit inside an
    // experiment id
    for (v, p) in &seen {
        for (from, to) in [
            (format!("{v:?}"), format!("{p:?}")),
            (format!("`{v}`"), format!("`{p}`")),
            (format!(" {v} logged "), format!(" {p} logged ")),
        ] {
            a.message = a.message.replace(&from, &to);
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::sim::{Faults, SimExperiment, Simulator};

    /// The demo's experiments with a tier leak, an assignment key that includes the tier and
    /// mixed workspaces: after redaction no unit id, workspace name or input value of the
    /// events is left in the report (alerts, their messages and details included), each
    /// replaced by its pseudonym, and the experiment ids are untouched.
    #[test]
    fn redaction_leaves_no_unit_cluster_or_value() {
        let settings = Settings::from_toml(include_str!("../config/demo.toml")).unwrap();
        let mut sim = Simulator::new(
            5,
            vec![
                SimExperiment::random(
                    "prompt-variant",
                    Faults {
                        tier_leak: Some(("pro".into(), 0.6)),
                        ..Default::default()
                    },
                    None,
                ),
                SimExperiment::hash_assigned(
                    "ranker-v3",
                    Faults {
                        key_includes_tier: true,
                        ..Default::default()
                    },
                    5_000,
                ),
                SimExperiment::clustered(
                    "workspace-collab",
                    Faults {
                        mixed_clusters: 3,
                        ..Default::default()
                    },
                    50_000,
                    400,
                ),
            ],
        );
        let mut engine = Engine::new(&settings);
        let (mut units, mut values) = (
            std::collections::BTreeSet::new(),
            std::collections::BTreeSet::new(),
        );
        let mut buf = Vec::new();
        for _ in 0..60_000 {
            sim.next_event(&mut buf);
            let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            for k in ["unit", "cluster"] {
                if let Some(u) = v[k].as_str() {
                    units.insert(u.to_string());
                }
            }
            for (_, x) in v["inputs"].as_object().into_iter().flatten() {
                if let Some(s) = x.as_str() {
                    values.insert(s.to_string());
                }
            }
            let _ = engine.process(&buf);
        }
        let report = serde_json::to_value(engine.report()).unwrap();
        let checks: std::collections::BTreeSet<String> = report["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["check"].as_str().unwrap().to_string())
            .collect();
        for c in ["input_divergence", "assignment_mismatch", "cluster_mixed"] {
            assert!(checks.contains(c), "{c} fired: {checks:?}");
        }
        let before = report.to_string();
        assert!(before.contains("\"pro\""));
        let after = serde_json::to_value(engine.report().redacted())
            .unwrap()
            .to_string();
        // substrate values (model names) and judge versions are not user data: kept
        let kept = ["e5-v1", "e5-v2", "v1", "v2"];
        for u in units
            .iter()
            .chain(values.iter().filter(|v| !kept.contains(&v.as_str())))
        {
            for shown in [format!("{u:?}"), format!("`{u}`"), format!(" {u} logged")] {
                assert!(!after.contains(&shown), "{shown} left in the report");
            }
        }
        assert!(after.contains(&format!("{:?}", pseudonym("pro"))));
        for id in ["prompt-variant", "ranker-v3", "workspace-collab"] {
            assert!(after.contains(&format!("\"{id}\"")));
        }
    }
}
