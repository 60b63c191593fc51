//! `overlap_dependence`: two experiments that share units are not assigned independently
//! (non-orthogonal layers: the same salt, nested bucket ranges, one experiment's arm feeding
//! the other's targeting). The evidence is the pair table's universal-inference e-value
//! ([`crate::state::overlap`]), checked after every shared unit at
//! `alpha / limits.max_overlap_pairs` (Bonferroni over the pairs that can be tracked, a number
//! fixed before the stream starts). Counts: the state merges exactly.

use super::alert::rfc3339;
use super::{shares, Alert, Check, EvalContext, Module};
use crate::metrics::{gauge_vec, Labels};
use crate::state::overlap::PairState;
use prometheus::{GaugeVec, Registry};
use serde::Serialize;
use serde_json::json;

/// The check.
pub struct OverlapDependence;

/// Detector state of one pair.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DependenceState {
    /// Whether the alert has fired.
    pub fired: bool,
}

/// `overlap_dependence` of one pair.
#[derive(Clone, Debug, Serialize)]
pub struct DependenceSection {
    /// Log e-value of "the two arms are independent".
    pub log_evalue: f64,
    /// What the alert needs (`ln(max_overlap_pairs / alpha)`).
    pub evidence_threshold: f64,
    /// Largest gap between the first experiment's arm share within one arm of the second and
    /// its share over all shared units.
    pub max_share_gap: f64,
    /// Whether the alert fired.
    pub alert: bool,
}

impl Module<PairState> for OverlapDependence {
    type State = DependenceState;
    type Section = DependenceSection;
    type Metrics = GaugeVec;

    fn on_event(
        st: &mut DependenceState,
        p: &mut PairState,
        _: &(),
        ctx: &EvalContext,
        out: &mut Vec<Alert>,
    ) {
        if st.fired {
            return;
        }
        let threshold = ctx.log_threshold + p.ln_divisor;
        let log_e = p.log_e();
        if log_e < threshold {
            return;
        }
        let gap = p.max_share_gap();
        if gap < ctx.min_share_deviation {
            return;
        }
        st.fired = true;
        out.push(alert(p, log_e, threshold, gap, ctx));
    }

    fn merge(st: &mut DependenceState, _: &PairState, o: &DependenceState, _: &PairState) {
        st.fired |= o.fired;
    }

    fn restart(st: &mut DependenceState) {
        st.fired = false;
    }

    fn section(st: &DependenceState, p: &PairState, levels: &EvalContext) -> DependenceSection {
        DependenceSection {
            log_evalue: p.log_e(),
            evidence_threshold: levels.log_threshold + p.ln_divisor,
            max_share_gap: p.max_share_gap(),
            alert: st.fired,
        }
    }

    fn metrics(r: &Registry) -> GaugeVec {
        gauge_vec(
            r,
            "armwatch_overlap_dependence_log_evalue",
            "overlap_dependence: log e-value that the arms of two experiments sharing units are dependent (alert at ln(max_overlap_pairs/alpha)).",
            &["experiment", "other_experiment"],
        )
    }

    fn publish(
        m: &mut GaugeVec,
        labels: &mut Labels,
        first: &str,
        arms: &[String],
        s: &DependenceSection,
    ) {
        // `arms` carries the second experiment's id (a pair has two subjects)
        if let Some(second) = arms.first().and_then(|o| labels.experiment(o)) {
            m.with_label_values(&[first, &second]).set(s.log_evalue);
        }
    }
}

/// The alert: the pair, and the first's arm shares within each arm of the second.
fn alert(p: &PairState, log_e: f64, threshold: f64, gap: f64, ctx: &EvalContext) -> Alert {
    let counts = p.counts();
    let within: Vec<String> = counts
        .iter()
        .zip(&p.second_arms)
        .filter(|(row, _)| row.iter().sum::<u64>() > 0)
        .map(|(row, b)| {
            let s = shares(row);
            let parts: Vec<String> = p
                .first_arms
                .iter()
                .zip(&s)
                .map(|(a, x)| format!("{a} {:.1}%", 100.0 * x))
                .collect();
            format!("where {} is {b}: {}", p.second, parts.join(", "))
        })
        .collect();
    Alert {
        check: Check::OverlapDependence,
        experiment: Some(p.first.to_string()),
        subject: p.second.to_string(),
        value: None,
        evidence: log_e,
        evidence_threshold: threshold,
        magnitude: gap,
        first_event: ctx.seq,
        ts: rfc3339(ctx.ts_ms),
        message: format!(
            "experiments {} and {} are not assigned independently: over {} units in both, {} \
             (independent assignment gives the same shares in every arm of {}); do they hash with \
             the same salt, or carve one's buckets out of the other's?",
            p.first,
            p.second,
            p.units,
            within.join("; "),
            p.second
        ),
        details: json!({
            "first": &*p.first,
            "second": &*p.second,
            "first_arms": p.first_arms,
            "second_arms": p.second_arms,
            "counts_by_second_arm": counts,
            "units": p.units,
        }),
    }
}
