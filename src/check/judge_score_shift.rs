//! `judge_score_shift`: the judge's mean score on the fixed control set moves away from its
//! baseline.
//!
//! The test uses the two-sample mSPRT of [`crate::stats::msprt`] (variance `s2 (1/n +
//! 1/n0)`, `s2` the reference variance as a plug-in, mixing variance `(tau_sd * sd)^2`) in two
//! ways, averaged (see `score_shift`): the post-baseline mean against the frozen baseline
//! (drift within a version; a two-sided CUSUM, k = 0.5 sd, dates its onset), and, per version
//! switch, the scores since the switch against all before it (the onset is the switch). The
//! baseline is the first control judgments of one stream: a judge's state is taken whole across
//! partitions (key judgment events by judge name), not combined.

use super::alert::rfc3339;
use super::{Alert, Check, EvalContext, JudgeUpdate, Module};
use crate::metrics::{gauge_vec, Labels};
use crate::state::judge::JudgeState;
use crate::stats::moments::Moments;
use crate::stats::msprt::log_mixture_bf;
use prometheus::{GaugeVec, Registry};
use serde::Serialize;
use serde_json::json;

/// The check.
pub struct JudgeScoreShift;

/// Detector state of one judge.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ShiftState {
    /// Whether the alert fired.
    pub fired: bool,
    /// Current log e-value of the shift test.
    pub log_e: f64,
}

/// `judge_score_shift` of one judge.
#[derive(Clone, Debug, Serialize)]
pub struct ScoreShiftReport {
    /// Control judgments in the baseline.
    pub baseline_n: u64,
    /// Baseline control mean.
    pub baseline_mean: f64,
    /// Baseline control standard deviation.
    pub baseline_sd: f64,
    /// Control judgments after the baseline.
    pub post_n: u64,
    /// Their mean.
    pub post_mean: f64,
    /// `(post_mean - baseline_mean) / baseline_sd`.
    pub shift_sd: f64,
    /// Log e-value of the shift test (mSPRT).
    pub log_evalue: f64,
    /// Log e-value the alert needs.
    pub evidence_threshold: f64,
    /// Two-sided CUSUM statistic (in sd units, k = 0.5).
    pub cusum: f64,
    /// Change-point estimate: the post-baseline control judgment where the CUSUM began to rise.
    pub onset_index: u64,
    /// Whether the alert fired.
    pub alert: bool,
}

/// Its metrics.
pub struct ShiftMetrics {
    log_e: GaugeVec,
    shift: GaugeVec,
    cusum: GaugeVec,
}

impl Module<JudgeState> for JudgeScoreShift {
    type State = ShiftState;
    type Section = ScoreShiftReport;
    type Metrics = ShiftMetrics;

    fn on_event(
        st: &mut ShiftState,
        j: &mut JudgeState,
        u: &JudgeUpdate,
        ctx: &EvalContext,
        out: &mut Vec<Alert>,
    ) {
        if u.control {
            if let Some(a) = score_shift(st, j, ctx) {
                out.push(a);
            }
        }
    }

    /// Taken whole with its judge (see the module notes).
    fn merge(_: &mut ShiftState, _: &JudgeState, _: &ShiftState, _: &JudgeState) {}

    fn section(st: &ShiftState, j: &JudgeState, levels: &EvalContext) -> ScoreShiftReport {
        let sd = j.baseline.variance().sqrt();
        let (cusum, onset_index, _) = j.cusum.peak();
        ScoreShiftReport {
            baseline_n: j.baseline.n(),
            baseline_mean: j.baseline.mean(),
            baseline_sd: sd,
            post_n: j.post.n(),
            post_mean: j.post.mean(),
            shift_sd: if sd > 0.0 && j.post.n() > 0 {
                (j.post.mean() - j.baseline.mean()) / sd
            } else {
                0.0
            },
            log_evalue: st.log_e,
            evidence_threshold: levels.log_threshold,
            cusum,
            onset_index,
            alert: st.fired,
        }
    }

    fn metrics(r: &Registry) -> ShiftMetrics {
        ShiftMetrics {
            log_e: gauge_vec(
                r,
                "armwatch_judge_score_shift_log_evalue",
                "Judge control-set score shift: log e-value of the two-sample mSPRT.",
                &["judge"],
            ),
            shift: gauge_vec(
                r,
                "armwatch_judge_control_shift_sd",
                "Judge control-set mean after the baseline minus baseline mean, in baseline sd.",
                &["judge"],
            ),
            cusum: gauge_vec(
                r,
                "armwatch_judge_control_cusum",
                "Two-sided CUSUM of standardized control-set scores (k = 0.5).",
                &["judge"],
            ),
        }
    }

    fn publish(
        m: &mut ShiftMetrics,
        _: &mut Labels,
        judge: &str,
        _: &[String],
        s: &ScoreShiftReport,
    ) {
        m.log_e.with_label_values(&[judge]).set(s.log_evalue);
        m.shift.with_label_values(&[judge]).set(s.shift_sd);
        m.cusum.with_label_values(&[judge]).set(s.cusum);
    }
}

/// The version whose first post-baseline control judgment coincides with `onset`.
fn version_at(j: &JudgeState, onset: u64) -> Option<&str> {
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
fn score_shift(st: &mut ShiftState, j: &JudgeState, ctx: &EvalContext) -> Option<Alert> {
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
    st.log_e = log_e;
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
    if st.fired || log_e < ctx.log_threshold || shift_sd.abs() < j.cfg.min_shift_sd {
        return None;
    }
    st.fired = true;
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
