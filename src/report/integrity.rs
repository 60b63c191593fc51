//! Report sections of the assignment-integrity checks.

use crate::detect::predictable::top_predictor;
use crate::detect::EvalContext;
use crate::state::experiment::Experiment;
use crate::stats::proportion::Z95;
use serde::Serialize;

/// Clusters per arm below which cluster-robust inference is unreliable.
pub const MIN_CLUSTERS_PER_ARM: u64 = 30;

/// `assignment_mismatch`.
#[derive(Clone, Debug, Serialize)]
pub struct AssignmentReport {
    /// Hash function.
    pub hash: &'static str,
    /// Key template.
    pub key: String,
    /// First exposures checked (the evidence's draws).
    pub units_checked: u64,
    /// Of those, logged in another arm than the hash gives.
    pub units_mismatched: u64,
    /// Their share.
    pub mismatch_rate: f64,
    /// Tolerated share.
    pub tolerance: f64,
    /// Log e-value of "the mismatch rate is at most the tolerance".
    pub log_evalue: f64,
    /// Log e-value the alert needs.
    pub evidence_threshold: f64,
    /// Events checked, repeats included.
    pub events_checked: u64,
    /// Of those, mismatched.
    pub events_mismatched: u64,
    /// Events lacking a field the key needs.
    pub events_unresolved: u64,
    /// First mismatches.
    pub examples: Vec<MismatchExample>,
    /// Candidate keys `<declared key>:{input.NAME}` and how often each reproduces the logged arm.
    pub candidates: Vec<CandidateReport>,
    /// The input whose candidate key reproduces the logged arms (>= 90% of >= 20 events, and at
    /// least half of the declared key's disagreement removed).
    pub key_includes_input: Option<String>,
    /// Whether the alert fired.
    pub alert: bool,
}

/// One mismatched event.
#[derive(Clone, Debug, Serialize)]
pub struct MismatchExample {
    /// Unit (or cluster) id.
    pub unit: String,
    /// Arm in the event.
    pub logged: String,
    /// Arm the declared hash gives (`null`: the bucket is in no range).
    pub expected: Option<String>,
    /// Bucket.
    pub bucket: u64,
}

/// One candidate key.
#[derive(Clone, Debug, Serialize)]
pub struct CandidateReport {
    /// The input appended to the key.
    pub input: String,
    /// Events scored.
    pub scored: u64,
    /// Share whose logged arm it reproduces.
    pub agreement: f64,
}

/// `multiple_exposure`.
#[derive(Clone, Debug, Serialize)]
pub struct ExposureReport {
    /// Units followed (a consistent hash sample of all units).
    pub followed_units: u64,
    /// Followed units seen in more than one arm.
    pub mixed_units: u64,
    /// Estimated share of units seen in more than one arm.
    pub estimated_rate: f64,
    /// Its 95% Wilson interval.
    pub interval_95: [f64; 2],
    /// One-sided lower bound at the check's alpha (the alert needs it above `alert_rate`).
    pub lower_bound_at_alpha: f64,
    /// The configured alert rate.
    pub alert_rate: f64,
    /// Share of units followed.
    pub sample_rate: f64,
    /// Units seen, estimated from the sample.
    pub estimated_units: f64,
    /// Memory of the sample.
    pub memory_bytes: usize,
    /// Whether the alert fired.
    pub alert: bool,
}

/// `cluster_mixed` and the cluster design.
#[derive(Clone, Debug, Serialize)]
pub struct ClustersReport {
    /// Clusters seen per arm, in arm order (a mixed cluster counts in each of its arms).
    pub clusters_per_arm: Vec<u64>,
    /// Clusters seen in more than one arm.
    pub mixed: u64,
    /// The first of them.
    pub mixed_names: Vec<String>,
    /// Exposure events without a `cluster` (not counted).
    pub missing_cluster_events: u64,
    /// Share of clusters followed (1 unless more than `limits.exposure_sample_units`).
    pub sample_rate: f64,
    /// Present when an arm has fewer than 30 clusters.
    pub warning: Option<String>,
    /// Whether the alert fired.
    pub alert: bool,
}

/// `arm_predictable`.
#[derive(Clone, Debug, Serialize)]
pub struct PredictabilityReport {
    /// Events (first exposures) the model predicted.
    pub events: u64,
    /// Log e-value, arm shares left free (what the alert reads).
    pub log_evalue: f64,
    /// Log e-value against the design weights.
    pub log_evalue_design: f64,
    /// Log e-value the alert needs.
    pub evidence_threshold: f64,
    /// Prequential AUC of the model's predictions.
    pub auc: f64,
    /// Its 95% Hanley-McNeil interval.
    pub auc_interval_95: [f64; 2],
    /// The inputs (single, pair or all) whose expert carries most posterior weight.
    pub top_predictor: String,
    /// That expert's posterior weight.
    pub top_predictor_weight: f64,
    /// Fixed memory of the model.
    pub memory_bytes: usize,
    /// Whether the alert fired.
    pub alert: bool,
    /// The evidence crossed but the AUC margin held the alert back.
    pub evidence_without_margin: bool,
}

/// The assignment section of `e`.
pub fn assignment(e: &Experiment, log_threshold: f64) -> Option<AssignmentReport> {
    let a = e.assignment.as_ref()?;
    let arm = |i: usize| e.arms.get(i).map_or_else(String::new, |a| a.to_string());
    Some(AssignmentReport {
        hash: a.hash.as_str(),
        key: a.key.to_string(),
        units_checked: a.test.n(),
        units_mismatched: a.test.successes(),
        mismatch_rate: a.test.rate(),
        tolerance: a.test.p0(),
        log_evalue: a.test.log_e(),
        evidence_threshold: log_threshold,
        events_checked: a.events_checked,
        events_mismatched: a.events_mismatched,
        events_unresolved: a.unresolved,
        examples: a
            .examples
            .iter()
            .map(|x| MismatchExample {
                unit: x.unit.to_string(),
                logged: arm(x.logged),
                expected: x.expected.map(arm),
                bucket: x.bucket,
            })
            .collect(),
        candidates: a
            .candidates
            .iter()
            .map(|c| CandidateReport {
                input: c.input.to_string(),
                scored: c.scored,
                agreement: c.agreement(),
            })
            .collect(),
        key_includes_input: a.explanation().map(|c| c.input.to_string()),
        alert: a.fired,
    })
}

/// The multiple-exposure section of `e`.
pub fn exposure(e: &Experiment, levels: &EvalContext) -> Option<ExposureReport> {
    let x = e.exposures.as_ref()?;
    let (lo, hi) = x.interval(Z95);
    Some(ExposureReport {
        followed_units: x.followed(),
        mixed_units: x.mixed(),
        estimated_rate: x.rate(),
        interval_95: [lo, hi],
        lower_bound_at_alpha: x.interval(levels.z_alpha).0,
        alert_rate: levels.exposure_rate,
        sample_rate: x.sample_rate(),
        estimated_units: x.estimated_ids(),
        memory_bytes: x.memory_bytes(),
        alert: x.fired,
    })
}

/// The cluster section of `e` (cluster-randomized experiments only).
pub fn clusters(e: &Experiment) -> Option<ClustersReport> {
    let c = e.clusters.as_ref()?;
    let per_arm = c.per_arm(e.arms.len());
    let fewest = e
        .arms
        .iter()
        .zip(&per_arm)
        .min_by_key(|(_, n)| **n)
        .filter(|(_, n)| **n < MIN_CLUSTERS_PER_ARM && c.sample.sample_rate() == 1.0);
    Some(ClustersReport {
        warning: fewest.map(|(arm, n)| {
            format!(
                "arm {arm} has {n} clusters: cluster-robust inference needs about {MIN_CLUSTERS_PER_ARM} per arm"
            )
        }),
        clusters_per_arm: per_arm,
        mixed: c.sample.mixed(),
        mixed_names: c.mixed_names.iter().map(|n| n.to_string()).collect(),
        missing_cluster_events: c.missing,
        sample_rate: c.sample.sample_rate(),
        alert: c.sample.fired,
    })
}

/// The predictability section of `e`.
pub fn predictability(e: &Experiment, log_threshold: f64) -> Option<PredictabilityReport> {
    let m = e.model.as_deref()?;
    let (auc, lo, hi) = m.auc(Z95);
    let (top, weight) = top_predictor(e);
    Some(PredictabilityReport {
        events: m.n(),
        log_evalue: m.log_e(&e.design),
        log_evalue_design: m.log_e_design(),
        evidence_threshold: log_threshold,
        auc,
        auc_interval_95: [lo, hi],
        top_predictor: top,
        top_predictor_weight: weight,
        memory_bytes: m.memory_bytes(),
        alert: m.fired,
        evidence_without_margin: m.evidence_only,
    })
}
