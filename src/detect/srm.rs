//! `srm`: sample ratio mismatch, the Dirichlet-multinomial e-process of the experiment's arm
//! counts against its design weights (design notes section 1), checked after every event.

use super::alert::rfc3339;
use super::{describe_shares, shares, Alert, Check, EvalContext};
use crate::state::experiment::Experiment;
use serde_json::json;

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

    /// Merge flags of another partition.
    pub fn merge(&mut self, o: &SrmState) {
        self.fired |= o.fired;
        self.sup_log_e = self.sup_log_e.max(o.sup_log_e);
    }
}

/// Evaluate after an event of `exp`.
#[inline]
pub fn evaluate(exp: &mut Experiment, ctx: &EvalContext) -> Option<Alert> {
    let threshold = ctx.log_threshold;
    let log_e = exp.srm.log_e();
    let st = &mut exp.srm_state;
    st.sup_log_e = st.sup_log_e.max(log_e);
    if st.fired || log_e < threshold || exp.arms.len() < 2 {
        return None;
    }
    let magnitude = exp.srm.max_share_deviation(&exp.design);
    if magnitude < ctx.min_share_deviation {
        return None;
    }
    exp.srm_state.fired = true;
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
