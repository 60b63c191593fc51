//! `arm_predictable`: the online arm model ([`crate::state::predict`]) predicts the arm from
//! the watched inputs better than the design does. Needs evidence (the universal-inference
//! e-value of the model's prequential predictions >= `1/alpha`) and magnitude (prequential AUC
//! at least `0.5 + min_auc_margin`).

use super::alert::rfc3339;
use super::{Alert, Check, EvalContext};
use crate::state::experiment::Experiment;

/// Counted events between exact evaluations once the design evidence has crossed (the AUC and
/// the penalty cost O(bins) and O(arms)).
const RECHECK_EVERY: u64 = 16;

/// The expert with the most posterior weight, by input names (`"tier x locale"`), and its
/// weight.
pub fn top_predictor(exp: &Experiment) -> (String, f64) {
    let name = |k: u64| {
        exp.inputs
            .iter()
            .find(|x| x.name_key == k)
            .map_or("?", |x| &*x.name)
            .to_string()
    };
    match exp.model.as_deref().and_then(|m| m.top_expert()) {
        Some((_, _, true, s)) => ("all model inputs together".to_string(), s),
        Some((i, Some(j), false, s)) => (format!("{} x {}", name(i), name(j)), s),
        Some((i, None, false, s)) => (name(i), s),
        None => (String::new(), 0.0),
    }
}

/// Evaluate after a counted event of `exp`.
#[inline]
pub fn evaluate(exp: &mut Experiment, ctx: &EvalContext) -> Option<Alert> {
    let m = exp.model.as_deref_mut()?;
    if m.fired {
        return None;
    }
    // the penalty is >= 0: the design evidence bounds the evidence
    let n = m.n();
    if n % RECHECK_EVERY != 0 || m.log_e_design() < ctx.log_threshold {
        return None;
    }
    let log_e = m.log_e(&exp.design);
    if log_e < ctx.log_threshold {
        return None;
    }
    let (auc, lo, hi) = m.auc(crate::stats::proportion::Z95);
    if auc - 0.5 < ctx.min_auc_margin {
        m.evidence_only = true;
        return None;
    }
    m.fired = true;
    let (top, _) = top_predictor(exp);
    Some(Alert {
        check: Check::ArmPredictable,
        experiment: Some(exp.id.to_string()),
        subject: exp.id.to_string(),
        value: Some(top.clone()),
        evidence: log_e,
        evidence_threshold: ctx.log_threshold,
        magnitude: auc - 0.5,
        first_event: ctx.seq,
        ts: rfc3339(ctx.ts_ms),
        message: format!(
            "the arm of {} can be predicted from its inputs: prequential AUC {:.3} (95% interval {:.3}-{:.3}) after {} units, \
             best predictor {top}; the assignment is not independent of what the model sees",
            exp.id, auc, lo, hi, n
        ),
        details: super::alert::details(&crate::report::integrity::predictability(
            exp,
            ctx.log_threshold,
        )),
    })
}
