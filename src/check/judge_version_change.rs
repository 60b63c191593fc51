//! `judge_version_change`: a new model version behind a stable judge endpoint name. A
//! deterministic event, alerted at once: scores before and after are not comparable until the
//! control set shows they agree. The versions (first times, judgments) are the judge's
//! statistics; the check keeps no state of its own, a version is new once.

use super::alert::rfc3339;
use super::{Alert, Check, EvalContext, JudgeUpdate, Module};
use crate::metrics::{int_gauge_vec, Labels};
use crate::state::judge::JudgeState;
use crate::stats::proportion::share;
use prometheus::{IntGaugeVec, Registry};
use serde::Serialize;
use serde_json::json;

/// The check.
pub struct JudgeVersionChange;

/// One version behind a judge endpoint.
#[derive(Clone, Debug, Serialize)]
pub struct JudgeVersionReport {
    /// Version.
    pub version: String,
    /// First judgment's time (epoch ms).
    pub first_ts_ms: i64,
    /// Judgments.
    pub judgments: u64,
    /// Share of the judge's judgments.
    pub share: f64,
    /// Control-set judgments.
    pub control_n: u64,
    /// Their mean score.
    pub control_mean: f64,
}

impl Module<JudgeState> for JudgeVersionChange {
    type State = ();
    /// Versions in order of appearance.
    type Section = Vec<JudgeVersionReport>;
    type Metrics = IntGaugeVec;

    fn on_event(
        _: &mut (),
        j: &mut JudgeState,
        u: &JudgeUpdate,
        ctx: &EvalContext,
        out: &mut Vec<Alert>,
    ) {
        if let Some(v) = u.new_version {
            if let Some(a) = version_change(j, v, ctx) {
                out.push(a);
            }
        }
    }

    fn merge(_: &mut (), _: &JudgeState, _: &(), _: &JudgeState) {}

    fn section(_: &(), j: &JudgeState, _: &EvalContext) -> Self::Section {
        let total: u64 = j.versions.iter().map(|v| v.judgments).sum();
        j.versions
            .iter()
            .map(|v| JudgeVersionReport {
                version: v.version.to_string(),
                first_ts_ms: v.first_ts_ms,
                judgments: v.judgments,
                share: share(v.judgments, total),
                control_n: v.control.n(),
                control_mean: v.control.mean(),
            })
            .collect()
    }

    fn metrics(r: &Registry) -> IntGaugeVec {
        int_gauge_vec(
            r,
            "armwatch_judge_version_judgments",
            "Judgments per judge and model version.",
            &["judge", "version"],
        )
    }

    fn publish(m: &mut IntGaugeVec, _: &mut Labels, judge: &str, _: &[String], s: &Self::Section) {
        for v in s {
            m.with_label_values(&[judge, &v.version])
                .set(v.judgments as i64);
        }
    }
}

/// After the first judgment of version `v` (not the judge's first version).
fn version_change(j: &JudgeState, v: usize, ctx: &EvalContext) -> Option<Alert> {
    let (old, new) = (j.versions.get(v.checked_sub(1)?)?, j.versions.get(v)?);
    let total: u64 = j.versions.iter().map(|x| x.judgments).sum();
    Some(Alert::deterministic(
        Check::JudgeVersionChange,
        None,
        j.name.to_string(),
        new.version.to_string(),
        ctx,
        format!(
            "judge `{}` changed model version behind its endpoint: {} -> {} (first seen {}); scores before and after \
             are not comparable until the control set shows they agree",
            j.name,
            old.version,
            new.version,
            rfc3339(new.first_ts_ms)
        ),
        json!({
            "old_version": &*old.version,
            "new_version": &*new.version,
            "old_first_seen": rfc3339(old.first_ts_ms),
            "new_first_seen": rfc3339(new.first_ts_ms),
            "versions": j.versions.iter().map(|x| json!({"version": &*x.version, "judgments": x.judgments, "share": share(x.judgments, total)})).collect::<Vec<_>>(),
        }),
    ))
}
