//! `srm`: sample ratio mismatch, the Dirichlet-multinomial e-process of the experiment's arm
//! counts against its design weights (design notes section 1), checked after every counted
//! exposure. The e-process is a function of the counts, so it merges exactly across
//! partitions; the running supremum behind the sequential p-value is a maximum over a path and
//! merges as the larger of the two (a lower bound of the merged stream's).

use super::alert::rfc3339;
use super::{Exposure, describe_shares, shares, Alert, Check, EvalContext, Module};
use crate::metrics::{gauge_vec, Labels};
use crate::state::experiment::Experiment;
use crate::stats::divergence::chi_square_p;
use prometheus::{GaugeVec, Registry};
use serde::Serialize;
use serde_json::json;

/// The check.
pub struct Srm;

/// Detector state of one experiment.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SrmState {
    /// Whether the alert has fired.
    pub fired: bool,
    /// Running supremum of the log e-value: the sequential p-value is `exp(-sup)`.
    pub sup_log_e: f64,
}

impl SrmState {
    /// Sequential (anytime-valid) p-value `min_n 1/E_n`.
    pub fn p_value(&self) -> f64 {
        (-self.sup_log_e).exp().min(1.0)
    }
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

/// Its metrics.
pub struct SrmMetrics {
    log_e: GaugeVec,
    p: GaugeVec,
    chi2_p: GaugeVec,
}

impl Module<Experiment> for Srm {
    type State = SrmState;
    type Section = SrmReport;
    type Metrics = SrmMetrics;

    #[inline]
    fn on_event(
        st: &mut SrmState,
        exp: &mut Experiment,
        u: &Exposure<'_>,
        ctx: &EvalContext,
        out: &mut Vec<Alert>,
    ) {
        if u.obs.counted {
            out.extend(evaluate(st, exp, ctx));
        }
    }

    fn merge(st: &mut SrmState, _: &Experiment, o: &SrmState, _: &Experiment) {
        st.fired |= o.fired;
        st.sup_log_e = st.sup_log_e.max(o.sup_log_e);
    }

    fn restart(st: &mut SrmState) {
        st.sup_log_e = 0.0;
    }

    fn section(st: &SrmState, e: &Experiment, levels: &EvalContext) -> SrmReport {
        SrmReport {
            log_evalue: e.srm.log_e(),
            evidence_threshold: levels.log_threshold,
            sequential_p: st.p_value(),
            chi_square_p: chi_square_p(e.srm.counts(), e.design.weights()),
            shares: shares(e.srm.counts()),
            max_share_deviation: e.srm.max_share_deviation(&e.design),
            alert: st.fired,
        }
    }

    fn metrics(r: &Registry) -> SrmMetrics {
        SrmMetrics {
            log_e: gauge_vec(r, "armwatch_srm_log_evalue", "SRM: log e-value of the Dirichlet-multinomial e-process (alert at ln(1/alpha)).", &["experiment"]),
            p: gauge_vec(r, "armwatch_srm_sequential_pvalue", "SRM: anytime-valid sequential p-value.", &["experiment"]),
            chi2_p: gauge_vec(r, "armwatch_srm_chisquare_pvalue", "SRM: fixed-sample chi-square p-value (descriptive; not valid under continuous monitoring).", &["experiment"]),
        }
    }

    fn publish(m: &mut SrmMetrics, _: &mut Labels, exp: &str, _: &[String], s: &SrmReport) {
        m.log_e.with_label_values(&[exp]).set(s.log_evalue);
        m.p.with_label_values(&[exp]).set(s.sequential_p);
        m.chi2_p.with_label_values(&[exp]).set(s.chi_square_p);
    }
}

/// Evaluate after a counted exposure of `exp`.
#[inline]
fn evaluate(st: &mut SrmState, exp: &Experiment, ctx: &EvalContext) -> Option<Alert> {
    let threshold = ctx.log_threshold;
    let log_e = exp.srm.log_e();
    st.sup_log_e = st.sup_log_e.max(log_e);
    if st.fired || log_e < threshold || exp.arms.len() < 2 {
        return None;
    }
    let magnitude = exp.srm.max_share_deviation(&exp.design);
    if magnitude < ctx.min_share_deviation {
        return None;
    }
    st.fired = true;
    let observed = shares(exp.srm.counts());
    let arms: Vec<&str> = exp.arms.iter().map(|a| &**a).collect();
    let detail = describe_shares(&arms, &observed, exp.design.weights(), "design");
    Some(Alert {
        check: Check::Srm,
        experiment: Some(exp.id.to_string()),
        subject: exp.id.to_string(),
        value: None,
        evidence: log_e,
        evidence_threshold: threshold,
        magnitude,
        first_event: ctx.seq,
        ts: rfc3339(ctx.ts_ms),
        message: format!(
            "sample ratio mismatch in {}: {} after {} events{}",
            exp.id,
            detail,
            exp.srm.n(),
            if exp.declared {
                ""
            } else {
                " (undeclared experiment: equal weights assumed)"
            }
        ),
        details: json!({
            "arms": arms,
            "counts": exp.srm.counts(),
            "shares": observed,
            "design": exp.design.weights(),
            "design_assumed": !exp.declared,
        }),
    })
}
