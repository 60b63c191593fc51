//! Judge drift: `judge_version_change` (a new model version behind a stable endpoint name,
//! alerted at once: it is a deterministic event) and `judge_score_shift` (the judge's mean score
//! on the fixed control set moves away from its baseline).
//!
//! The shift test uses the two-sample mSPRT of [`crate::stats::msprt`] (variance `s2 (1/n +
//! 1/n0)`, `s2` the reference variance as a plug-in, mixing variance `(tau_sd * sd)^2`) in two
//! ways, averaged (see [`score_shift`]): the post-baseline mean against the frozen baseline
//! (drift within a version; a two-sided CUSUM, k = 0.5 sd, dates its onset), and, per version
//! switch, the scores since the switch against all before it (the onset is the switch).

use super::alert::rfc3339;
use super::{Alert, Check, EvalContext};
use crate::state::judge::JudgeState;
use crate::stats::moments::Moments;
use crate::stats::msprt::log_mixture_bf;
use crate::stats::proportion::share;
use serde_json::json;

/// Detector state of one judge.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct JudgeDetector {
    /// Whether `judge_score_shift` fired.
    pub shift_fired: bool,
    /// Current log e-value of the shift test.
    pub log_e: f64,
}

/// After the first judgment of version `v` (not the judge's first version).
pub fn version_change(j: &JudgeState, v: usize, ctx: &EvalContext) -> Option<Alert> {
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

/// The version whose first post-baseline control judgment coincides with `onset`.
pub fn version_at(j: &JudgeState, onset: u64) -> Option<&str> {
    let tol = (j.post.n() / 20).max(10);
    j.versions
        .iter()
        .skip(1)
        .filter_map(|v| Some((v, v.first_post_index?)))
        .filter(|(_, i)| i.abs_diff(onset) <= tol)
        .min_by_key(|(_, i)| i.abs_diff(onset))
        .map(|(v, _)| &*v.version)
}

/// `ln` of the two-sample mixture Bayes factor of `after` against `before`, with `before`'s
/// variance (0 until both sides have data and `before` has at least 10 values).
fn two_sample(before: &Moments, after: &Moments, tau_sd: f64) -> f64 {
    let s2 = before.variance();
    if before.n() < 10 || after.n() == 0 || s2 <= 0.0 {
        return 0.0;
    }
    let v = s2 * (1.0 / after.n() as f64 + 1.0 / before.n() as f64);
    log_mixture_bf(after.mean() - before.mean(), v, tau_sd * tau_sd * s2)
}

/// After a control-set judgment. The evidence is an average of e-processes (itself one): the
/// frozen-baseline comparison with weight 1/2, and for the j-th version switch (j = 1, 2, ...)
/// the comparison of control scores since the switch against all before it, weight 2^-(j+1).
/// A switch is an event of the version stream, not of the scores, so each of those starts at a
/// stopping time and is 1 until then.
pub fn score_shift(j: &mut JudgeState, ctx: &EvalContext) -> Option<Alert> {
    if j.baseline.n() < j.cfg.baseline {
        return None;
    }
    let tau = j.cfg.tau_sd;
    // (log weight + log e-value, shift in sd, which switch): every component, started or not
    // (a component not started has e-value 1), with weights 1/2, 1/4, 1/8, ... and the mass of
    // switches still to come at e-value 1
    let base_sd = j.baseline.variance().sqrt();
    let mut terms: smallvec::SmallVec<[(f64, f64, Option<usize>); 8]> = smallvec::SmallVec::new();
    let base_shift = if base_sd > 0.0 {
        (j.post.mean() - j.baseline.mean()) / base_sd
    } else {
        0.0
    };
    terms.push((
        0.5f64.ln() + two_sample(&j.baseline, &j.post, tau),
        base_shift,
        None,
    ));
    let mut used = 0.5;
    for (k, s) in j.switches.iter().enumerate() {
        let w = 0.5f64.powi(k as i32 + 2);
        used += w;
        let sd = s.before.variance().sqrt();
        let shift = if sd > 0.0 {
            (s.since.mean() - s.before.mean()) / sd
        } else {
            0.0
        };
        terms.push((
            w.ln() + two_sample(&s.before, &s.since, tau),
            shift,
            Some(k),
        ));
    }
    if used < 1.0 {
        terms.push(((1.0 - used).ln(), 0.0, None));
    }
    let hi = terms.iter().map(|t| t.0).fold(f64::NEG_INFINITY, f64::max);
    let log_e = hi + terms.iter().map(|t| (t.0 - hi).exp()).sum::<f64>().ln();
    j.detector.log_e = log_e;
    let (_, shift_sd, which) =
        terms
            .iter()
            .copied()
            .fold((f64::NEG_INFINITY, 0.0, None), |a, t| {
                if t.0 > a.0 {
                    t
                } else {
                    a
                }
            });
    if j.detector.shift_fired || log_e < ctx.log_threshold || shift_sd.abs() < j.cfg.min_shift_sd {
        return None;
    }
    j.detector.shift_fired = true;
    let (onset, onset_ts, version) = match which {
        Some(k) => {
            let s = &j.switches[k];
            let v = &j.versions[s.version];
            (
                v.first_post_index.unwrap_or(0),
                s.ts_ms,
                Some(v.version.to_string()),
            )
        }
        None => {
            let (_, onset, ts) = j.cusum.peak();
            (onset, ts, version_at(j, onset).map(str::to_string))
        }
    };
    let (before_mean, after_mean) = match which {
        Some(k) => (j.switches[k].before.mean(), j.switches[k].since.mean()),
        None => (j.baseline.mean(), j.post.mean()),
    };
    let at_version = version.as_deref().map_or(String::new(), |v| {
        format!(", coinciding with the switch to version {v}")
    });
    Some(Alert {
        check: Check::JudgeScoreShift,
        experiment: None,
        subject: j.name.to_string(),
        value: version.clone(),
        evidence: log_e,
        evidence_threshold: ctx.log_threshold,
        magnitude: shift_sd,
        first_event: ctx.seq,
        ts: rfc3339(ctx.ts_ms),
        message: format!(
            "judge `{}` scores the fixed control set {:+.2} sd differently ({:.3} -> {:.3}) since about {}{}: a lift \
             that shows in the control set is the ruler changing, not the product",
            j.name,
            shift_sd,
            before_mean,
            after_mean,
            rfc3339(onset_ts),
            at_version
        ),
        details: json!({
            "baseline_n": j.baseline.n(), "baseline_mean": j.baseline.mean(), "baseline_sd": base_sd,
            "post_n": j.post.n(), "post_mean": j.post.mean(),
            "before_mean": before_mean, "after_mean": after_mean,
            "shift_sd": shift_sd,
            "onset_index": onset, "onset_ts": rfc3339(onset_ts),
            "onset_version": version,
            "explained_by": if which.is_some() { "version_switch" } else { "baseline" },
        }),
    })
}
