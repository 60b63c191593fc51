//! `cluster_mixed`: a cluster of a cluster-randomized experiment seen in more than one arm. A
//! fact, not an estimate: the first one alerts at once, naming it. The clusters' arms are a
//! set and merge exactly.

use super::alert::details;
use super::{Alert, Check, EvalContext, Exposure, Module};
use crate::metrics::{int_gauge_vec, Labels};
use crate::state::experiment::Experiment;
use prometheus::{IntGaugeVec, Registry};
use serde::Serialize;

/// The check.
pub struct ClusterMixed;

/// Clusters per arm below which cluster-robust inference is unreliable.
pub const MIN_CLUSTERS_PER_ARM: u64 = 30;

/// Detector state.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ClusterState {
    /// Whether the alert fired.
    pub fired: bool,
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

/// Its metrics.
pub struct ClusterMetrics {
    mixed: IntGaugeVec,
    clusters: IntGaugeVec,
}

impl Module<Experiment> for ClusterMixed {
    type State = ClusterState;
    /// Present for cluster-randomized experiments.
    type Section = Option<ClustersReport>;
    type Metrics = ClusterMetrics;

    #[inline]
    fn on_event(
        st: &mut ClusterState,
        exp: &mut Experiment,
        u: &Exposure<'_>,
        ctx: &EvalContext,
        out: &mut Vec<Alert>,
    ) {
        if u.obs.cluster_mixed {
            if let Some(a) = evaluate(st, exp, ctx) {
                out.push(a);
            }
        }
    }

    fn merge(st: &mut ClusterState, _: &Experiment, o: &ClusterState, _: &Experiment) {
        st.fired |= o.fired;
    }

    fn section(st: &ClusterState, e: &Experiment, _: &EvalContext) -> Self::Section {
        clusters(st, e)
    }

    fn absent(s: &Self::Section) -> bool {
        s.is_none()
    }

    fn redact(section: &mut Self::Section) {
        for n in section.iter_mut().flat_map(|c| &mut c.mixed_names) {
            *n = crate::report::pseudonym(n);
        }
    }

    fn metrics(r: &Registry) -> ClusterMetrics {
        ClusterMetrics {
            mixed: int_gauge_vec(
                r,
                "armwatch_cluster_mixed_clusters",
                "Clusters of a cluster-randomized experiment seen in more than one arm.",
                &["experiment"],
            ),
            clusters: int_gauge_vec(
                r,
                "armwatch_cluster_clusters",
                "Clusters seen per arm of a cluster-randomized experiment.",
                &["experiment", "arm"],
            ),
        }
    }

    fn publish(
        m: &mut ClusterMetrics,
        labels: &mut Labels,
        exp: &str,
        arms: &[String],
        s: &Self::Section,
    ) {
        let Some(c) = s else { return };
        m.mixed.with_label_values(&[exp]).set(c.mixed as i64);
        for (arm, n) in arms.iter().zip(&c.clusters_per_arm) {
            if let Some(arm) = labels.arm(arm) {
                m.clusters.with_label_values(&[exp, &arm]).set(*n as i64);
            }
        }
    }
}

/// The cluster section of `e` (cluster-randomized experiments only).
fn clusters(st: &ClusterState, e: &Experiment) -> Option<ClustersReport> {
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
        alert: st.fired,
    })
}

/// Evaluate after an event whose cluster just became mixed.
fn evaluate(st: &mut ClusterState, exp: &Experiment, ctx: &EvalContext) -> Option<Alert> {
    let c = exp.clusters.as_ref()?;
    if st.fired || c.sample.mixed() == 0 {
        return None;
    }
    st.fired = true;
    let first = c.mixed_names.first().map_or("", |n| &**n).to_string();
    Some(Alert::deterministic(
        Check::ClusterMixed,
        Some(exp.id.to_string()),
        exp.id.to_string(),
        first.clone(),
        ctx,
        format!(
            "cluster `{first}` of the cluster-randomized experiment {} was seen in more than one arm: \
             a cluster must sit in one arm (see the report for every mixed cluster)",
            exp.id
        ),
        details(&clusters(st, exp)),
    ))
}
