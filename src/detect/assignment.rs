//! `assignment_mismatch`: the logged arms disagree with the declared hash assignment more often
//! than the tolerance allows. Evidence is the one-sided plug-in e-process of the mismatch rate
//! of first exposures against the tolerance ([`crate::stats::proportion`]); the alert names
//! examples and, when a candidate key reproduces the logged arms, the input the assignment
//! service hashed in.

use super::alert::rfc3339;
use super::{Alert, Check, EvalContext};
use crate::state::assignment::MIN_EXPLAIN;
use crate::state::experiment::Experiment;

/// Mismatched first exposures needed before an alert (with the evidence), so the alert can
/// already explain the mismatch in most cases.
pub const MIN_MISMATCHES: u64 = MIN_EXPLAIN;

/// Evaluate after an event of `exp` (cheap unless the evidence has crossed).
#[inline]
pub fn evaluate(exp: &mut Experiment, ctx: &EvalContext) -> Option<Alert> {
    let a = exp.assignment.as_mut()?;
    if a.fired || a.test.log_e() < ctx.log_threshold || a.test.successes() < MIN_MISMATCHES {
        return None;
    }
    a.fired = true;
    // the details are the report's section, with the arm names resolved
    let section = crate::report::integrity::assignment(exp, ctx.log_threshold)?;
    let a = exp.assignment.as_ref()?;
    let shown: Vec<String> = section
        .examples
        .iter()
        .take(3)
        .map(|e| {
            format!(
                "{} logged {} expected {}",
                e.unit,
                e.logged,
                e.expected.as_deref().unwrap_or("(no arm's range)")
            )
        })
        .collect();
    let explanation = a.explanation();
    let why = match explanation {
        Some(c) => format!(
            "; the logged arms follow hash(<declared key>:{{input.{}}}) ({:.1}% of {} events): the assignment key includes {}",
            c.input,
            100.0 * c.agreement(),
            c.scored,
            c.input
        ),
        None => String::new(),
    };
    Some(Alert {
        check: Check::AssignmentMismatch,
        experiment: Some(exp.id.to_string()),
        subject: exp.id.to_string(),
        value: section.key_includes_input.clone(),
        evidence: a.test.log_e(),
        evidence_threshold: ctx.log_threshold,
        magnitude: a.test.rate(),
        first_event: ctx.seq,
        ts: rfc3339(ctx.ts_ms),
        message: format!(
            "logged arms disagree with the declared assignment hash in {}: {:.2}% of {} units (tolerance {:.2}%), e.g. {}{why}",
            exp.id,
            100.0 * a.test.rate(),
            a.test.n(),
            100.0 * a.test.p0(),
            shown.join(", ")
        ),
        details: super::alert::details(&section),
    })
}
