//! `srm`: sample ratio mismatch, the Dirichlet-multinomial e-process of the experiment's arm
//! counts against its design weights (design notes section 1), checked after every counted
//! exposure. The e-process is a function of the counts, so it merges exactly across
//! partitions; the running supremum behind the sequential p-value is a maximum over a path and
//! merges as the larger of the two (a lower bound of the merged stream's).

use super::alert::rfc3339;
use super::{describe_shares, shares, Alert, Check, EvalContext, Exposure, Module};
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
    /// Counted exposures by UTC hour of day and arm (`hour * arms + arm`): where in the day
    /// an imbalance lives (an arm whose telemetry stops for a window, an arm that starts
    /// later). Counts: they merge exactly.
    #[serde(default)]
    pub by_hour: Vec<u64>,
    /// Counted exposures by UTC day and arm: the day an arm started late, paused or lost its
    /// telemetry. Counts, aligned by day when merged.
    #[serde(default)]
    pub by_day: DayCounts,
}

/// Hours of the day.
const HOURS: usize = 24;
/// Days kept per experiment (later days are counted in the last one).
const MAX_DAYS: usize = 400;
const DAY_MS: i64 = 86_400_000;

/// Counts per (UTC day, arm) from the experiment's first day.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DayCounts {
    /// The first day (days since the epoch).
    pub day0: i64,
    /// `day * arms + arm`, from `day0`.
    pub counts: Vec<u64>,
}

impl DayCounts {
    #[inline]
    fn add(&mut self, ts_ms: i64, arm: usize, arms: usize, n: u64) {
        let day = ts_ms.div_euclid(DAY_MS);
        // the common case: a day already counted
        if let Ok(d) = usize::try_from(day - self.day0) {
            if let Some(c) = self.counts.get_mut(d * arms + arm) {
                *c += n;
                return;
            }
        }
        self.add_slow(day, arm, arms, n);
    }

    #[cold]
    fn add_slow(&mut self, day: i64, arm: usize, arms: usize, n: u64) {
        if self.counts.is_empty() {
            self.day0 = day;
        }
        if day < self.day0 {
            // an event before the first day (late, within the watermark): shift the days
            let shift = usize::try_from(self.day0 - day)
                .unwrap_or(MAX_DAYS)
                .min(MAX_DAYS);
            let mut v = vec![0; shift * arms];
            v.extend_from_slice(&self.counts);
            v.truncate(MAX_DAYS * arms);
            self.counts = v;
            self.day0 = day;
        }
        let d = usize::try_from(day - self.day0)
            .unwrap_or(0)
            .min(MAX_DAYS - 1);
        if self.counts.len() < (d + 1) * arms {
            self.counts.resize((d + 1) * arms, 0);
        }
        if let Some(c) = self.counts.get_mut(d * arms + arm) {
            *c += n;
        }
    }

    fn merge(&mut self, o: &DayCounts, arms: usize) {
        if arms == 0 {
            return;
        }
        for (i, c) in o.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
            let (d, arm) = (i / arms, i % arms);
            self.add((o.day0 + d as i64) * DAY_MS, arm, arms, *c);
        }
    }
}

/// A slice of the exposures (an hour of the day, a day, a value of an input, a stage of the
/// pipeline) in which the arm counts depart from the design.
#[derive(Clone, Debug, Serialize)]
pub struct Slice {
    /// `"02:00-03:00 UTC"`, `"2026-01-03"`, `"client=ios"`, `"judged"`.
    pub slice: String,
    /// Counts per arm in it.
    pub counts: Vec<u64>,
    /// Their shares.
    pub shares: Vec<f64>,
    /// Log e-value of the slice's counts against the design (the SRM e-process's closed form
    /// on the slice).
    pub log_evalue: f64,
    /// What it had to reach: `ln(1/alpha)` plus the slice's share of the multiple-testing
    /// correction (see [`localize`]).
    pub level: f64,
}

/// Back-compatible name of an hour's slice.
pub type HourSlice = Slice;

/// The log e-value of `counts` against `design` (the SRM mixture over the concentration grid,
/// in closed form: a function of the counts).
fn log_e_of(counts: &[u64], design: &crate::stats::sequential::Design) -> f64 {
    let ks = design.ks();
    let logs: Vec<f64> = ks
        .iter()
        .map(|&k| crate::stats::sequential::log_bayes_factor(counts, design.weights(), k))
        .collect();
    let hi = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    hi + (logs.iter().map(|l| (l - hi).exp()).sum::<f64>() / ks.len().max(1) as f64).ln()
}

/// Where an imbalance lives: the slices whose own evidence passes their level, most evidence
/// first, per dimension.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Localization {
    /// Hours of the day, each at `alpha / 24` (Bonferroni over the day's hours).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_hour: Vec<Slice>,
    /// Days, day `d` (1 = the experiment's first) at `alpha * 6 / (pi^2 d^2)`: the levels sum to
    /// alpha however long it runs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_day: Vec<Slice>,
    /// Values of the watched inputs (a client, a platform, a region), each at
    /// `alpha / (inputs * strata per input)`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_segment: Vec<Slice>,
    /// Stages of the pipeline after exposure (`judged`: judgments per arm), each at `alpha / 2`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_stage: Vec<Slice>,
    /// One sentence per dimension that has slices: where, and the likely causes from the
    /// SRM taxonomy (Fabijan et al., KDD 2019: assignment, execution, log processing, analysis,
    /// interference).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hints: Vec<String>,
}

fn slice(name: String, counts: Vec<u64>, e: &Experiment, level: f64) -> Option<Slice> {
    if counts.iter().sum::<u64>() == 0 {
        return None;
    }
    let log_evalue = log_e_of(&counts, &e.design);
    (log_evalue >= level).then(|| Slice {
        slice: name,
        shares: shares(&counts),
        counts,
        log_evalue,
        level,
    })
}

/// The arm furthest below its design share in `s`: (arm name, share, design weight).
fn short_arm<'a>(s: &Slice, e: &'a Experiment) -> (&'a str, f64, f64) {
    let (arm, share, w) = s
        .shares
        .iter()
        .zip(e.design.weights())
        .enumerate()
        .map(|(a, (x, w))| (a, *x, *w))
        .min_by(|x, y| (x.1 - x.2).total_cmp(&(y.1 - y.2)))
        .unwrap_or((0, 0.0, 0.0));
    (e.arms.get(arm).map_or("an arm", |a| &**a), share, w)
}

fn ranked(mut v: Vec<Slice>) -> Vec<Slice> {
    v.sort_by(|a, b| b.log_evalue.total_cmp(&a.log_evalue));
    v
}

/// Where the imbalance of `e` lives, at `ln(1/alpha) = log_threshold`.
fn localize(st: &SrmState, e: &Experiment, log_threshold: f64) -> Localization {
    let arms = e.arms.len();
    let mut out = Localization::default();
    if arms < 2 {
        return out;
    }
    if st.by_hour.len() == HOURS * arms {
        let level = log_threshold + (HOURS as f64).ln();
        out.by_hour = ranked(
            (0..HOURS)
                .filter_map(|h| {
                    let name = format!("{h:02}:00-{:02}:00 UTC", (h + 1) % HOURS);
                    slice(
                        name,
                        st.by_hour[h * arms..(h + 1) * arms].to_vec(),
                        e,
                        level,
                    )
                })
                .collect(),
        );
    }
    let days = st.by_day.counts.len() / arms;
    out.by_day = ranked(
        (0..days)
            .filter_map(|d| {
                let n = (d + 1) as f64;
                let level = log_threshold + (std::f64::consts::PI.powi(2) * n * n / 6.0).ln();
                let date =
                    chrono::DateTime::from_timestamp_millis((st.by_day.day0 + d as i64) * DAY_MS)
                        .map_or_else(
                            || format!("day {}", d + 1),
                            |t| t.format("%Y-%m-%d").to_string(),
                        );
                slice(
                    date,
                    st.by_day.counts[d * arms..(d + 1) * arms].to_vec(),
                    e,
                    level,
                )
            })
            .collect(),
    );
    // a segment is tested against the other segments (its arm shares against the input's
    // pooled shares: the stratum's share of the universal-inference e-value of
    // `input_divergence`), so an imbalance everywhere names no segment; and it is named only
    // where the imbalance concentrates (further from the design than the whole experiment),
    // not where a concentrated one elsewhere leaves the rest closer to the design
    let overall = e.srm.max_share_deviation(&e.design);
    let deviation = |c: &[u64]| {
        let sh = shares(c);
        sh.iter()
            .zip(e.design.weights())
            .map(|(x, w)| (x - w).abs())
            .fold(0.0, f64::max)
    };
    let watched: Vec<_> = e
        .inputs
        .iter()
        .filter(|i| &*i.name != JUDGE_VERSION)
        .collect();
    let segment_level =
        log_threshold + ((watched.len().max(1) * e.limits().max_strata.max(1)) as f64).ln();
    out.by_segment = ranked(
        watched
            .iter()
            .flat_map(|i| {
                i.strata.slots().iter().filter_map(move |s| {
                    let log_evalue = i.strata.contribution(&s.ep, &e.design);
                    let named = log_evalue >= segment_level
                        && s.ep.n() > 0
                        && deviation(s.ep.counts()) > overall;
                    named.then(|| Slice {
                        slice: format!("{}={}", i.name, i.strata.label(s)),
                        counts: s.ep.counts().to_vec(),
                        shares: shares(s.ep.counts()),
                        log_evalue,
                        level: segment_level,
                    })
                })
            })
            .collect(),
    );
    out.by_stage = stages(e, log_threshold);
    out.hints = hints(&out, e, true);
    out
}

/// The stages around exposure, each at `alpha / 2`:
/// - `assigned` (a declared hash assignment): the hash's arms of the counted exposures against
///   the design. Imbalanced too: the units of one arm do not reach exposure (or the ranges do
///   not match the weights); balanced while the exposures are not: the logged arms are not the
///   hash's (the assignment stage, `assignment_mismatch`).
/// - `judged`: whether the arm shares of the judgments (counted under the experiment's
///   `judge_version` input) differ from those of the counted exposures, with any marginal (the
///   universal-inference e-value of the stage x arm table, as `input_divergence`'s). Judgments
///   follow exposures: an imbalance of the exposures alone is not the judged stage's.
fn stages(e: &Experiment, log_threshold: f64) -> Vec<Slice> {
    if e.arms.len() < 2 {
        return Vec::new();
    }
    let level = log_threshold + 2f64.ln();
    let mut out = Vec::new();
    if let Some(a) = &e.assignment {
        if let Some(a) = slice("assigned".into(), a.hashed.clone(), e, level) {
            out.push(a);
        }
    }
    let Some(j) = e.inputs.iter().find(|i| &*i.name == JUDGE_VERSION) else {
        return out;
    };
    let (exposed, judged) = (e.srm.counts(), j.strata.totals());
    if judged.iter().sum::<u64>() == 0 || exposed.len() != judged.len() {
        return out;
    }
    let both: Vec<u64> = exposed.iter().zip(judged).map(|(a, b)| a + b).collect();
    let log_evalue = log_e_of(exposed, &e.design) + log_e_of(judged, &e.design)
        - crate::stats::sequential::mle_log_lr(&both, &e.design);
    if log_evalue >= level {
        out.push(Slice {
            slice: "judged".into(),
            counts: judged.to_vec(),
            shares: shares(judged),
            log_evalue,
            level,
        });
    }
    out
}

/// The input the judgments of an experiment's arms are counted under (see the engine).
const JUDGE_VERSION: &str = "judge_version";

/// One sentence per dimension with slices; `imbalanced`: the exposures themselves depart from
/// the design (the SRM is what is being explained).
fn hints(l: &Localization, e: &Experiment, imbalanced: bool) -> Vec<String> {
    let mut out = Vec::new();
    let count = |n: usize, one: &str, many: &str| {
        if n == 1 {
            one.to_string()
        } else {
            format!("{n} {many}")
        }
    };
    if let Some(top) = l.by_hour.first() {
        let (arm, share, w) = short_arm(top, e);
        out.push(format!(
            "the imbalance sits in {} of the day: {arm} has {:.1}% of the exposures in {} (design {:.1}%); \
             telemetry lost for one arm in that window, or an arm that starts, pauses or ramps at that time?",
            count(l.by_hour.len(), "one hour", "hours"),
            100.0 * share,
            top.slice,
            100.0 * w,
        ));
    }
    if let Some(top) = l.by_day.first() {
        let (arm, share, w) = short_arm(top, e);
        out.push(format!(
            "{} stand out: {arm} has {:.1}% of the exposures on {} (design {:.1}%); an arm that started later, \
             was paused or ramped, or lost its telemetry that day (execution stage)?",
            count(l.by_day.len(), "one day", "days"),
            100.0 * share,
            top.slice,
            100.0 * w,
        ));
    }
    let overall = shares(e.srm.counts());
    // the whole experiment's share of `arm`
    let overall_share = |arm: &str| {
        e.arms
            .iter()
            .position(|a| &**a == arm)
            .and_then(|a| overall.get(a))
            .copied()
            .unwrap_or(0.0)
    };
    if let Some(top) = l.by_segment.first() {
        let (arm, share, _) = short_arm(top, e);
        let all = overall_share(arm);
        out.push(format!(
            "{} stand out: {arm} has {:.1}% of the exposures where {} ({:.1}% overall); a bug, redirect or \
             crash in one arm for that client or segment, or a bot filter that treats the arms differently?",
            count(l.by_segment.len(), "one segment", "segments"),
            100.0 * share,
            top.slice,
            100.0 * all,
        ));
    }
    for st in &l.by_stage {
        let (arm, share, w) = short_arm(st, e);
        let all = overall_share(arm);
        out.push(if st.slice == "assigned" {
            format!(
                "the declared hash itself gives {arm} {:.1}% of the exposed units (design {:.1}%): units of one \
                 arm do not reach exposure (a crash or redirect before it is logged: execution stage), or the \
                 bucket ranges do not match the weights?",
                100.0 * share,
                100.0 * w,
            )
        } else {
            format!(
                "the judgments do not follow the exposures: {arm} has {:.1}% of the judgments but {:.1}% of the \
                 exposures; judgments lost for one arm (a judge that times out or fails on one arm's outputs, a \
                 join that drops them)?",
                100.0 * share,
                100.0 * all,
            )
        });
    }
    // a declared hash that assigns the exposed units as designed while the logged arms are not
    // (the exposures are imbalanced): the assignment stage
    let hashed = e
        .assignment
        .as_ref()
        .map_or(0, |a| a.hashed.iter().sum::<u64>());
    if imbalanced && hashed > 0 && !l.by_stage.iter().any(|s| s.slice == "assigned") {
        out.push(format!(
            "the declared hash assigns the {hashed} exposed units it could re-derive as designed: the logged \
             arms are not the hash's (assignment stage: a second assignment service, overrides, a key or \
             salt that differs; see assignment_mismatch)?"
        ));
    }
    out
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
    /// Where the imbalance lives (when there is one to explain): hours, days, segments and
    /// stages whose own counts depart from the design, with cause hints.
    #[serde(flatten)]
    pub localization: Localization,
}

impl SrmReport {
    /// With the hours where the imbalance lives, when there is an imbalance to explain (the
    /// alert fired or the evidence has crossed): 24 closed-form e-values per experiment are not
    /// worth computing at every publish for balanced experiments, which have none to show.
    fn localized(mut self, st: &SrmState, e: &Experiment, log_threshold: f64) -> SrmReport {
        if st.fired || self.log_evalue >= log_threshold {
            self.localization = localize(st, e, log_threshold);
        } else {
            // the judged stage can lose one arm's judgments while the exposures stay balanced
            // (one closed form: cheap at every publish)
            self.localization.by_stage = stages(e, log_threshold)
                .into_iter()
                .filter(|s| s.slice == "judged")
                .collect();
            self.localization.hints = hints(&self.localization, e, false);
        }
        self
    }
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
            // the update: the counted exposure in its hour of the day
            let arms = exp.arms.len();
            if st.by_hour.len() != HOURS * arms {
                st.by_hour = vec![0; HOURS * arms];
            }
            let hour = (u.ev.ts_ms.rem_euclid(DAY_MS) / 3_600_000) as usize;
            if let Some(c) = st.by_hour.get_mut(hour * arms + u.obs.arm) {
                *c += 1;
            }
            st.by_day.add(u.ev.ts_ms, u.obs.arm, arms, 1);
            if let Some(a) = evaluate(st, exp, ctx) {
                out.push(a);
            }
        }
    }

    fn merge(st: &mut SrmState, e: &Experiment, o: &SrmState, _: &Experiment) {
        st.by_day.merge(&o.by_day, e.arms.len());
        st.fired |= o.fired;
        st.sup_log_e = st.sup_log_e.max(o.sup_log_e);
        if st.by_hour.len() == o.by_hour.len() {
            for (a, b) in st.by_hour.iter_mut().zip(&o.by_hour) {
                *a += b;
            }
        } else if st.by_hour.is_empty() {
            st.by_hour = o.by_hour.clone();
        }
    }

    fn restart(st: &mut SrmState) {
        st.sup_log_e = 0.0;
        st.by_hour.clear();
        st.by_day = DayCounts::default();
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
            localization: Localization::default(),
        }
        .localized(st, e, levels.log_threshold)
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
    let place = localize(st, exp, threshold);
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
            "sample ratio mismatch in {}: {} after {} events{}{}",
            exp.id,
            detail,
            exp.srm.n(),
            if exp.declared {
                ""
            } else {
                " (undeclared experiment: equal weights assumed)"
            },
            place
                .hints
                .iter()
                .map(|h| format!("; {h}"))
                .collect::<String>()
        ),
        details: json!({
            "arms": arms,
            "counts": exp.srm.counts(),
            "shares": observed,
            "design": exp.design.weights(),
            "design_assumed": !exp.declared,
            "localization": place,
        }),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;
    use crate::engine::Engine;
    use rand::{Rng, SeedableRng};

    /// Exposures a minute apart over ~70 days, 50/50; with `loss`, the treatment arm's events
    /// between 02:00 and 04:00 UTC never arrive (telemetry lost in one arm for a window).
    fn stream(loss: bool, seed: u64) -> Engine {
        let settings = Settings::from_toml(
            "[[experiment]]\nid = \"e\"\narms = { control = 0.5, treatment = 0.5 }",
        )
        .unwrap();
        let mut engine = Engine::new(&settings);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        for i in 0..100_000i64 {
            let ts = 1_767_225_600_000 + i * 60_000;
            let treatment = rng.random::<bool>();
            let hour = (ts.rem_euclid(86_400_000) / 3_600_000) as usize;
            if loss && treatment && (2..4).contains(&hour) {
                continue;
            }
            let arm = if treatment { "treatment" } else { "control" };
            let ev = format!(r#"{{"kind":"prompt","ts":{ts},"experiment":"e","arm":"{arm}"}}"#);
            engine.process(ev.as_bytes()).unwrap();
        }
        engine
    }

    /// The alert says where the imbalance lives: the two hours of lost telemetry, the arm
    /// short of its share, and a cause hint; a balanced stream localizes nothing.
    #[test]
    fn srm_localizes_a_window_of_lost_telemetry() {
        let lossy = stream(true, 1);
        let alert = lossy
            .alerts()
            .iter()
            .find(|a| a.check == crate::check::Check::Srm)
            .expect("srm fired");
        assert!(
            alert.message.contains("treatment has") && alert.message.contains("telemetry lost"),
            "{}",
            alert.message
        );
        let report = lossy.report();
        let srm = &report.experiments["e"].checks.srm;
        let hours: Vec<&str> = srm
            .localization
            .by_hour
            .iter()
            .map(|h| &h.slice[..5])
            .collect();
        let mut sorted = hours.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec!["02:00", "03:00"], "{hours:?}");
        assert!(srm.localization.by_hour.iter().all(|h| h.shares[1] < 0.01));
        // lost every day alike: no day stands out
        assert!(
            srm.localization.by_day.is_empty(),
            "{:?}",
            srm.localization.by_day
        );
        for seed in 0..20 {
            let clean = stream(false, 100 + seed).report();
            let srm = &clean.experiments["e"].checks.srm;
            let l = &srm.localization;
            assert!(
                l.by_hour.is_empty()
                    && l.by_day.is_empty()
                    && l.by_segment.is_empty()
                    && l.hints.is_empty(),
                "seed {seed}: {l:?}"
            );
        }
    }

    /// 60 days, 50/50, with a fault: `day` loses the treatment's exposures on days 20-24,
    /// `segment` loses 30% of the treatment's exposures from `client=ios` throughout, `judged`
    /// loses 20% of the treatment's judgments (exposures balanced).
    fn faulty(fault: &str, seed: u64) -> crate::report::Report {
        let settings = Settings::from_toml(
            "[[experiment]]\nid = \"e\"\narms = { control = 0.5, treatment = 0.5 }",
        )
        .unwrap();
        let mut engine = Engine::new(&settings);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        for i in 0..60_000i64 {
            let ts = 1_767_225_600_000 + i * 86_400; // 1,000 a day
            let treatment = rng.random::<bool>();
            let client = ["web", "android", "ios"][rng.random_range(0..3)];
            let day = i / 1_000;
            let lost = match fault {
                "day" => treatment && (20..25).contains(&day),
                "segment" => treatment && client == "ios" && rng.random::<f64>() < 0.3,
                _ => false,
            };
            if lost {
                continue;
            }
            let arm = if treatment { "treatment" } else { "control" };
            let ev = format!(
                r#"{{"kind":"prompt","ts":{ts},"experiment":"e","arm":"{arm}","unit":"u{i}","inputs":{{"client":"{client}"}}}}"#
            );
            engine.process(ev.as_bytes()).unwrap();
            if !(fault == "judged" && treatment && rng.random::<f64>() < 0.2) {
                let j = format!(
                    r#"{{"kind":"judgment","ts":{ts},"experiment":"e","arm":"{arm}","judge":"q","judge_version":"v1","score":3}}"#
                );
                engine.process(j.as_bytes()).unwrap();
            }
        }
        engine.report()
    }

    /// Each fault is localized in its own dimension, with its hint, and nowhere else.
    #[test]
    fn srm_localizes_a_day_a_segment_and_a_stage() {
        let r = faulty("day", 1);
        let l = &r.experiments["e"].checks.srm.localization;
        let mut days: Vec<&str> = l.by_day.iter().map(|d| d.slice.as_str()).collect();
        days.sort_unstable();
        assert_eq!(
            days,
            [
                "2026-01-21",
                "2026-01-22",
                "2026-01-23",
                "2026-01-24",
                "2026-01-25"
            ],
            "{l:?}"
        );
        assert!(l.by_segment.is_empty() && l.by_stage.is_empty(), "{l:?}");
        assert!(
            l.hints
                .iter()
                .any(|h| h.contains("5 days") && h.contains("started later")),
            "{:?}",
            l.hints
        );

        let r = faulty("segment", 2);
        let l = &r.experiments["e"].checks.srm.localization;
        assert_eq!(
            l.by_segment.first().map(|d| d.slice.as_str()),
            Some("client=ios"),
            "{l:?}"
        );
        assert_eq!(l.by_segment.len(), 1, "{:?}", l.by_segment);
        assert!(l.by_day.is_empty(), "{:?}", l.by_day);
        assert!(
            l.hints.iter().any(|h| h.contains("where client=ios")),
            "{:?}",
            l.hints
        );
        let alert = r
            .alerts
            .iter()
            .find(|a| a.check == crate::check::Check::Srm)
            .expect("srm fired");
        assert!(alert.message.contains("client=ios"), "{}", alert.message);

        // judgments lost for one arm: the exposures are balanced, so only the report says it
        // (the SRM check alerts on exposures), when asked for a localization
        let r = faulty("judged", 3);
        let srm = &r.experiments["e"].checks.srm;
        assert!(!srm.alert);
        let l = &srm.localization;
        assert_eq!(
            l.by_stage.first().map(|d| d.slice.as_str()),
            Some("judged"),
            "{l:?}"
        );
        assert!(
            l.by_day.is_empty() && l.by_segment.is_empty() && l.by_hour.is_empty(),
            "{l:?}"
        );
        assert!(
            l.hints.iter().any(|h| h.contains("judgments lost")),
            "{:?}",
            l.hints
        );
        // and none of it on a clean stream
        for seed in 10..15 {
            let r = faulty("none", seed);
            let l = &r.experiments["e"].checks.srm.localization;
            assert!(l.hints.is_empty(), "seed {seed}: {l:?}");
        }
    }

    /// A hash-assigned experiment: `execution` loses 20% of the hash-treatment units'
    /// exposures (the hash's arms of the exposed units are imbalanced too: the assigned stage
    /// is named), `assignment` logs 10% of the hash-treatment units as control (the hash's
    /// arms stay balanced: the hint points at the assignment stage).
    fn hashed(fault: &str) -> crate::report::Report {
        let settings = Settings::from_toml(
            "[[experiment]]\nid = \"h\"\narms = { control = 0.5, treatment = 0.5 }\n\
             [experiment.assignment]\nsalt = \"h\"\nbuckets = 100\n\
             ranges = { control = [0, 50], treatment = [50, 100] }\ntolerance = 0.2",
        )
        .unwrap();
        let mut engine = Engine::new(&settings);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        for i in 0..20_000i64 {
            let unit = format!("u{i}");
            let bucket = twox_hash::XxHash3_64::oneshot(format!("h:{unit}").as_bytes()) % 100;
            let mut treatment = bucket >= 50;
            match fault {
                "execution" if treatment && rng.random::<f64>() < 0.2 => continue,
                "assignment" if treatment && rng.random::<f64>() < 0.1 => treatment = false,
                _ => {}
            }
            let arm = if treatment { "treatment" } else { "control" };
            let ts = 1_767_225_600_000 + i * 1_000;
            let ev = format!(
                r#"{{"kind":"prompt","ts":{ts},"experiment":"h","arm":"{arm}","unit":"{unit}"}}"#
            );
            engine.process(ev.as_bytes()).unwrap();
        }
        engine.report()
    }

    #[test]
    fn srm_localizes_the_assigned_stage() {
        let r = hashed("execution");
        let srm = &r.experiments["h"].checks.srm;
        assert!(srm.alert);
        let l = &srm.localization;
        assert_eq!(
            l.by_stage
                .iter()
                .map(|s| s.slice.as_str())
                .collect::<Vec<_>>(),
            ["assigned"],
            "{l:?}"
        );
        assert!(
            l.hints.iter().any(|h| h.contains("do not reach exposure")),
            "{:?}",
            l.hints
        );

        let r = hashed("assignment");
        let srm = &r.experiments["h"].checks.srm;
        assert!(srm.alert);
        let l = &srm.localization;
        assert!(l.by_stage.is_empty(), "{l:?}");
        assert!(
            l.hints.iter().any(|h| h.contains("assignment stage")),
            "{:?}",
            l.hints
        );

        let r = hashed("none");
        let l = &r.experiments["h"].checks.srm.localization;
        assert!(l.hints.is_empty() && l.by_stage.is_empty(), "{l:?}");
    }
}
