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
    /// Counted exposures by UTC hour of day and arm (`hour * arms + arm`): where in the day
    /// an imbalance lives (an arm whose telemetry stops for a window, an arm that starts
    /// later). Counts: they merge exactly.
    #[serde(default)]
    pub by_hour: Vec<u64>,
}

/// Hours of the day.
const HOURS: usize = 24;

/// One hour of the day in which the arm counts depart from the design.
#[derive(Clone, Debug, Serialize)]
pub struct HourSlice {
    /// `"02:00-03:00 UTC"`.
    pub hour: String,
    /// Counted exposures per arm in that hour (all days).
    pub counts: Vec<u64>,
    /// Their shares.
    pub shares: Vec<f64>,
    /// Log e-value of that hour's counts against the design (the SRM e-process's closed form
    /// on the slice; each slice at level `alpha / 24`).
    pub log_evalue: f64,
}

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

/// The hours whose own evidence passes `ln(24 / alpha)` (Bonferroni over the day's slices),
/// most evidence first, and a one-sentence hint when there are any: the arm most short of
/// its design share over those hours.
fn localize(st: &SrmState, e: &Experiment, log_threshold: f64) -> (Vec<HourSlice>, Option<String>) {
    let arms = e.arms.len();
    if arms < 2 || st.by_hour.len() != HOURS * arms {
        return (Vec::new(), None);
    }
    let level = log_threshold + (HOURS as f64).ln();
    let mut hot: Vec<HourSlice> = (0..HOURS)
        .filter_map(|h| {
            let counts = st.by_hour[h * arms..(h + 1) * arms].to_vec();
            let log_evalue = log_e_of(&counts, &e.design);
            (log_evalue >= level).then(|| HourSlice {
                hour: format!("{h:02}:00-{:02}:00 UTC", (h + 1) % HOURS),
                shares: shares(&counts),
                counts,
                log_evalue,
            })
        })
        .collect();
    hot.sort_by(|a, b| b.log_evalue.total_cmp(&a.log_evalue));
    let Some(top) = hot.first() else {
        return (hot, None);
    };
    // the arm furthest below its design share in the strongest hour
    let (arm, share, w) = top
        .shares
        .iter()
        .zip(e.design.weights())
        .enumerate()
        .map(|(a, (s, w))| (a, *s, *w))
        .min_by(|x, y| (x.1 - x.2).total_cmp(&(y.1 - y.2)))
        .unwrap_or((0, 0.0, 0.0));
    let hint = format!(
        "the imbalance sits in {} of the day: {} has {:.1}% of the exposures in {} (design {:.1}%); \
         telemetry lost for one arm in that window, or an arm that starts, pauses or ramps at that time?",
        if hot.len() == 1 { "one hour".to_string() } else { format!("{} hours", hot.len()) },
        e.arms.get(arm).map_or("an arm", |a| &**a),
        100.0 * share,
        top.hour,
        100.0 * w,
    );
    (hot, Some(hint))
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
    /// The hours of the day whose own counts depart from the design (each at `alpha / 24`),
    /// most evidence first: where the imbalance lives.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_hour: Vec<HourSlice>,
    /// A cause hint from where it lives, when it lives in some hours.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub localization: Option<String>,
}

impl SrmReport {
    /// With the hours where the imbalance lives, when there is an imbalance to explain (the
    /// alert fired or the evidence has crossed): 24 closed-form e-values per experiment are not
    /// worth computing at every publish for balanced experiments, which have none to show.
    fn localized(mut self, st: &SrmState, e: &Experiment, log_threshold: f64) -> SrmReport {
        if st.fired || self.log_evalue >= log_threshold {
            (self.by_hour, self.localization) = localize(st, e, log_threshold);
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
            let hour = (u.ev.ts_ms.rem_euclid(86_400_000) / 3_600_000) as usize;
            if let Some(c) = st.by_hour.get_mut(hour * arms + u.obs.arm) {
                *c += 1;
            }
            out.extend(evaluate(st, exp, ctx));
        }
    }

    fn merge(st: &mut SrmState, _: &Experiment, o: &SrmState, _: &Experiment) {
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
            by_hour: Vec::new(),
            localization: None,
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
    let (hours, hint) = localize(st, exp, threshold);
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
            hint.map_or(String::new(), |h| format!("; {h}"))
        ),
        details: json!({
            "arms": arms,
            "counts": exp.srm.counts(),
            "shares": observed,
            "design": exp.design.weights(),
            "design_assumed": !exp.declared,
            "by_hour": hours,
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
        let hours: Vec<&str> = srm.by_hour.iter().map(|h| &h.hour[..5]).collect();
        let mut sorted = hours.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec!["02:00", "03:00"], "{hours:?}");
        assert!(srm.by_hour.iter().all(|h| h.shares[1] < 0.01));
        for seed in 0..20 {
            let clean = stream(false, 100 + seed).report();
            let srm = &clean.experiments["e"].checks.srm;
            assert!(srm.by_hour.is_empty() && srm.localization.is_none(), "seed {seed}: {:?}", srm.by_hour);
        }
    }
}
