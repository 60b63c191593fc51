//! `assignment_mismatch`: the declared hash assignment re-derived for every exposure; logged
//! arms that disagree with it beyond the tolerance mean a second assignment path or a key that
//! includes something else. The test is a plug-in e-process on the units' mismatch share
//! ([`crate::stats::proportion::RateEProcess`]) in the experiment's statistics
//! ([`crate::state::assignment`]), with candidate keys `<declared key>:{input.NAME}` scored to
//! say what the key includes.

use super::alert::{details, rfc3339};
use super::{Alert, Check, EvalContext, Exposure, Module};
use crate::metrics::{gauge_vec, Labels};
use crate::state::assignment::MIN_EXPLAIN;
use crate::state::experiment::Experiment;
use prometheus::{GaugeVec, Registry};
use serde::Serialize;

/// The check.
pub struct AssignmentMismatch;

/// Mismatched units needed before an alert (the explanation needs as many).
pub const MIN_MISMATCHES: u64 = MIN_EXPLAIN;

/// Detector state.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct MismatchState {
    /// Whether the alert fired.
    pub fired: bool,
}

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

/// Its metrics.
pub struct MismatchMetrics {
    log_e: GaugeVec,
    ratio: GaugeVec,
    candidate_agreement: GaugeVec,
}

impl Module<Experiment> for AssignmentMismatch {
    type State = MismatchState;
    /// Present for experiments that declare their assignment.
    type Section = Option<AssignmentReport>;
    type Metrics = MismatchMetrics;

    #[inline]
    fn on_event(
        st: &mut MismatchState,
        exp: &mut Experiment,
        u: &Exposure<'_>,
        ctx: &EvalContext,
        out: &mut Vec<Alert>,
    ) {
        if !u.obs.exposure {
            return;
        }
        // the update: the declared hash re-derived for the event (its unit's first exposure
        // feeds the evidence; repeats are checked too)
        if u.obs.assigned {
            if let Some(a) = &mut exp.assignment {
                a.observe(u.ev, u.obs.arm, u.obs.counted);
            }
        }
        if let Some(a) = evaluate(st, exp, ctx) {
            out.push(a);
        }
    }

    fn merge(st: &mut MismatchState, _: &Experiment, o: &MismatchState, _: &Experiment) {
        st.fired |= o.fired;
    }

    fn section(st: &MismatchState, e: &Experiment, levels: &EvalContext) -> Self::Section {
        assignment(st, e, levels.log_threshold)
    }

    fn absent(s: &Self::Section) -> bool {
        s.is_none()
    }

    fn redact(section: &mut Self::Section) {
        for x in section.iter_mut().flat_map(|a| &mut a.examples) {
            x.unit = crate::report::pseudonym(&x.unit);
        }
    }

    fn metrics(r: &Registry) -> MismatchMetrics {
        MismatchMetrics {
            log_e: gauge_vec(r, "armwatch_assignment_mismatch_log_evalue", "Assignment re-derivation: log e-value that the mismatch share of units exceeds the tolerance.", &["experiment"]),
            ratio: gauge_vec(r, "armwatch_assignment_mismatch_ratio", "Share of checked units whose logged arm differs from the declared hash's.", &["experiment"]),
            candidate_agreement: gauge_vec(r, "armwatch_assignment_candidate_agreement_ratio", "Share of events whose logged arm the candidate key <declared key>:{input} reproduces.", &["experiment", "input"]),
        }
    }

    fn publish(
        m: &mut MismatchMetrics,
        labels: &mut Labels,
        exp: &str,
        _: &[String],
        s: &Self::Section,
    ) {
        let Some(a) = s else { return };
        m.log_e.with_label_values(&[exp]).set(a.log_evalue);
        m.ratio.with_label_values(&[exp]).set(a.mismatch_rate);
        for c in &a.candidates {
            if let Some(input) = labels.input(&c.input) {
                m.candidate_agreement
                    .with_label_values(&[exp, &input])
                    .set(c.agreement);
            }
        }
    }
}

/// The assignment section of `e`.
fn assignment(st: &MismatchState, e: &Experiment, log_threshold: f64) -> Option<AssignmentReport> {
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
        alert: st.fired,
    })
}

/// Evaluate after an exposure of `exp`.
#[inline]
fn evaluate(st: &mut MismatchState, exp: &Experiment, ctx: &EvalContext) -> Option<Alert> {
    let a = exp.assignment.as_ref()?;
    if st.fired || a.test.log_e() < ctx.log_threshold || a.test.successes() < MIN_MISMATCHES {
        return None;
    }
    st.fired = true;
    let section = assignment(st, exp, ctx.log_threshold)?;
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
    let why = match a.explanation() {
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
        details: details(&section),
    })
}
