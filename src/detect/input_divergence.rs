//! `input_divergence`: an input decided before assignment whose arm shares differ between its
//! values. The stratified e-process of design notes section 2, one per watched input, each at
//! level `alpha / m` (Bonferroni over the experiment's `m` watched inputs).
//!
//! The null is "the arm does not depend on the value" with the marginal left free: the
//! stratified Dirichlet-multinomial evidence is divided by the likelihood ratio of the pooled
//! maximum-likelihood shares (universal inference, see [`crate::stats::sequential::mle_log_lr`]).
//! Against the design weights alone, an overall imbalance would make every input "diverge";
//! that is the `srm` check's finding, not a leak through an input.

use super::alert::rfc3339;
use super::{describe_shares, shares, Alert, Check, EvalContext};
use crate::state::experiment::Experiment;
use crate::state::strata::TAIL_LABEL;
use crate::stats::sequential::DmEProcess;
use serde_json::json;

/// Detector state of one input.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DivergenceState {
    /// Whether the alert has fired.
    pub fired: bool,
    /// When the evidence passes but the magnitude does not, the O(strata) attribution is
    /// retried only every few events of this input.
    next_exact_at: u64,
}

impl DivergenceState {
    /// Merge flags of another partition.
    pub fn merge(&mut self, o: &DivergenceState) {
        self.fired |= o.fired;
    }
}

const RECHECK_EVERY: u64 = 8;

/// The value contributing most to the independence evidence, with its e-process.
pub fn top_stratum(exp: &Experiment, input: usize) -> Option<(String, &DmEProcess, f64)> {
    let s = &exp.inputs[input].strata;
    let mut best: Option<(String, &DmEProcess, f64)> = None;
    let cands = s
        .slots()
        .iter()
        .map(|x| (s.label(x), &x.ep))
        .chain(std::iter::once((TAIL_LABEL, s.tail())));
    for (label, ep) in cands {
        if ep.n() == 0 {
            continue;
        }
        let le = s.contribution(ep, &exp.design);
        if best.as_ref().is_none_or(|b| le > b.2) {
            best = Some((label.to_string(), ep, le));
        }
    }
    best
}

/// Evaluate input `i` of `exp` after an event touched it.
#[inline]
pub fn evaluate(exp: &mut Experiment, i: usize, ctx: &EvalContext) -> Option<Alert> {
    let threshold = ctx.log_threshold + exp.ln_alpha_divisor();
    let input = &mut exp.inputs[i];
    // the design-null evidence bounds the independence evidence (the penalty is >= 0)
    if input.detector.fired || exp.arms.len() < 2 || input.strata.log_e_fast() < threshold {
        return None;
    }
    if input.n < input.detector.next_exact_at {
        return None;
    }
    let penalty = input.strata.pooled_penalty(&exp.design);
    if input.strata.log_e_fast() - penalty < threshold {
        return None;
    }
    input.strata.resum();
    let log_e = input.strata.log_e_fast() - penalty;
    if log_e < threshold {
        return None;
    }
    let (value, ep, value_log_e) = top_stratum(exp, i)?;
    let pooled = shares(exp.inputs[i].strata.totals());
    let magnitude = shares(ep.counts())
        .iter()
        .zip(&pooled)
        .map(|(s, p)| (s - p).abs())
        .fold(0.0, f64::max);
    let value_counts = ep.counts().to_vec();
    let value_n = ep.n();
    if magnitude < ctx.min_share_deviation {
        exp.inputs[i].detector.next_exact_at = exp.inputs[i].n + RECHECK_EVERY;
        return None;
    }
    let value_shares = shares(&value_counts);
    let arms: Vec<&str> = exp.arms.iter().map(|a| &**a).collect();
    let detail = describe_shares(&arms, &value_shares, &pooled, "all values");
    let input = &mut exp.inputs[i];
    input.detector.fired = true;
    Some(Alert {
        check: Check::InputDivergence,
        experiment: Some(exp.id.to_string()),
        subject: input.name.to_string(),
        value: Some(value.clone()),
        evidence: log_e,
        evidence_threshold: threshold,
        magnitude,
        first_event: ctx.seq,
        ts: rfc3339(ctx.ts_ms),
        message: format!(
            "arm assignment depends on input `{}` in {}: where {} = {:?} the arms are {} ({} events); \
             the assignment leaks into the inputs, so arm differences may be population differences",
            input.name,
            exp.id,
            input.name,
            value,
            detail,
            value_n
        ),
        details: json!({
            "arms": arms,
            "value_counts": value_counts,
            "value_shares": value_shares,
            "value_log_evalue": value_log_e,
            "pooled_shares": pooled,
            "design": exp.design.weights(),
            "alpha_divisor": exp.alpha_divisor(),
            "design_assumed": !exp.declared,
        }),
    })
}
