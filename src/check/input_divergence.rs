//! `input_divergence`: an input decided before assignment whose arm shares differ between its
//! values. The stratified e-process of design notes section 2, one per watched input, each at
//! level `alpha / m` (Bonferroni over the experiment's `m` watched inputs).
//!
//! The null is "the arm does not depend on the value" with the marginal left free: the
//! stratified Dirichlet-multinomial evidence is divided by the likelihood ratio of the pooled
//! maximum-likelihood shares (universal inference, see [`crate::stats::sequential::mle_log_lr`]).
//! Against the design weights alone, an overall imbalance would make every input "diverge";
//! that is the `srm` check's finding, not a leak through an input. The strata are counts and
//! merge exactly across partitions.

use super::alert::rfc3339;
use super::{describe_shares, shares, Alert, Check, EvalContext, Exposure, Module};
use crate::metrics::{gauge_vec, Labels};
use crate::state::experiment::Experiment;
use crate::state::input::InputState;
use crate::state::strata::TAIL_LABEL;
use crate::stats::divergence::{js_distance, kl, psi};
use crate::stats::moments::smd;
use crate::stats::sequential::DmEProcess;
use prometheus::{GaugeVec, Registry};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;

/// The check.
pub struct InputDivergence;

/// Detector state of one input.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DivergenceState {
    /// Whether the alert has fired.
    pub fired: bool,
    /// When the evidence passes but the magnitude does not, the O(strata) attribution is
    /// retried only every few events of this input.
    next_exact_at: u64,
}

/// Its metrics.
pub struct DivergenceMetrics {
    log_e: GaugeVec,
    kl: GaugeVec,
    js: GaugeVec,
    psi: GaugeVec,
    smd: GaugeVec,
}

impl Module<Experiment> for InputDivergence {
    /// By input index.
    type State = Vec<DivergenceState>;
    /// By input name.
    type Section = BTreeMap<String, InputReport>;
    type Metrics = DivergenceMetrics;

    #[inline]
    fn on_event(
        st: &mut Vec<DivergenceState>,
        exp: &mut Experiment,
        u: &Exposure<'_>,
        ctx: &EvalContext,
        out: &mut Vec<Alert>,
    ) {
        let mut touched = u.obs.touched;
        while touched != 0 {
            let j = touched.trailing_zeros() as usize;
            touched &= touched - 1;
            if st.len() <= j {
                st.resize_with(exp.inputs.len().max(j + 1), Default::default);
            }
            if let Some(a) = evaluate(&mut st[j], exp, j, ctx) {
                out.push(a);
            }
        }
    }

    fn merge(
        st: &mut Vec<DivergenceState>,
        e: &Experiment,
        o: &Vec<DivergenceState>,
        oe: &Experiment,
    ) {
        for (d, inp) in o.iter().zip(&oe.inputs) {
            if let Some(i) = e.inputs.iter().position(|x| x.name == inp.name) {
                if st.len() <= i {
                    st.resize_with(i + 1, Default::default);
                }
                st[i].fired |= d.fired;
            }
        }
    }

    fn redact(section: &mut Self::Section) {
        for v in section.values_mut().flat_map(|i| &mut i.top_values) {
            v.value = crate::report::pseudonym(&v.value);
        }
    }

    fn section(st: &Vec<DivergenceState>, e: &Experiment, levels: &EvalContext) -> Self::Section {
        e.inputs
            .iter()
            .enumerate()
            .map(|(i, inp)| {
                (
                    inp.name.to_string(),
                    input_report(st.get(i), e, inp, levels),
                )
            })
            .collect()
    }

    fn metrics(r: &Registry) -> DivergenceMetrics {
        DivergenceMetrics {
            log_e: gauge_vec(r, "armwatch_input_divergence_log_evalue", "Arm-conditional input divergence: log e-value per watched input.", &["experiment", "input"]),
            kl: gauge_vec(r, "armwatch_input_divergence_kl", "KL(reference arm || arm) of an input's value distribution (nats, descriptive).", &["experiment", "input", "arm"]),
            js: gauge_vec(r, "armwatch_input_divergence_js", "Jensen-Shannon distance between the reference arm's and an arm's value distribution.", &["experiment", "input", "arm"]),
            psi: gauge_vec(r, "armwatch_input_divergence_psi", "Population stability index of an arm's value distribution against the reference arm.", &["experiment", "input", "arm"]),
            smd: gauge_vec(r, "armwatch_input_smd", "Standardized mean difference of a numeric input against the reference arm.", &["experiment", "input", "arm"]),
        }
    }

    fn publish(
        m: &mut DivergenceMetrics,
        labels: &mut Labels,
        exp: &str,
        _: &[String],
        inputs: &Self::Section,
    ) {
        for (name, inp) in inputs {
            let Some(input) = labels.input(name) else {
                continue;
            };
            let input = &*input;
            m.log_e.with_label_values(&[exp, input]).set(inp.log_evalue);
            for (arm, d) in &inp.divergence {
                let Some(arm) = labels.arm(arm) else {
                    continue;
                };
                let arm = &*arm;
                m.kl.with_label_values(&[exp, input, arm]).set(d.kl);
                m.js.with_label_values(&[exp, input, arm]).set(d.js);
                m.psi.with_label_values(&[exp, input, arm]).set(d.psi);
            }
            for (arm, n) in inp.numeric.iter().flatten() {
                if let (Some(smd), Some(arm)) = (n.smd, labels.arm(arm)) {
                    m.smd.with_label_values(&[exp, input, &arm]).set(smd);
                }
            }
        }
    }
}

/// The arm descriptive comparisons use: `control` when present, else the first.
pub fn reference_arm(exp: &Experiment) -> usize {
    exp.arms.iter().position(|a| &**a == "control").unwrap_or(0)
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
        .chain(s.tail().map(|t| (TAIL_LABEL, t)));
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
fn evaluate(
    st: &mut DivergenceState,
    exp: &mut Experiment,
    i: usize,
    ctx: &EvalContext,
) -> Option<Alert> {
    let threshold = ctx.log_threshold + exp.ln_alpha_divisor();
    let input = &mut exp.inputs[i];
    // the design-null evidence bounds the independence evidence (the penalty is >= 0)
    if st.fired || exp.arms.len() < 2 || input.strata.below(threshold) {
        return None;
    }
    if input.n < st.next_exact_at {
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
        st.next_exact_at = exp.inputs[i].n + RECHECK_EVERY;
        return None;
    }
    let value_shares = shares(&value_counts);
    let arms: Vec<&str> = exp.arms.iter().map(|a| &**a).collect();
    let detail = describe_shares(&arms, &value_shares, &pooled, "all values");
    let input = &exp.inputs[i];
    st.fired = true;
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
             the assignment leaks into the inputs, so arm differences may be population differences. \
             Does the assignment (a routing hash, a targeting rule, a prompt template) read `{}`, or are \
             one arm's events with {} = {:?} lost or filtered after assignment (a client-specific crash, \
             a bot filter, a join)?",
            input.name,
            exp.id,
            input.name,
            value,
            detail,
            value_n,
            input.name,
            input.name,
            value,
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

/// One watched input.
#[derive(Clone, Debug, Serialize)]
pub struct InputReport {
    /// Events that carried the input.
    pub events: u64,
    /// Log e-value for "the arm depends on the value" (marginal left free): what alerts.
    pub log_evalue: f64,
    /// Log e-value of the strata against the design weights (includes any overall SRM).
    pub log_evalue_vs_design: f64,
    /// Arm shares over all values of the input.
    pub pooled_shares: Vec<f64>,
    /// Log e-value the alert needs (`ln(m / alpha)`).
    pub evidence_threshold: f64,
    /// Whether the alert fired.
    pub alert: bool,
    /// Exactly tracked values.
    pub strata: usize,
    /// Tail values promoted to exact tracking.
    pub promotions: u64,
    /// Values with the largest evidence, most first (up to 5).
    pub top_values: Vec<ValueReport>,
    /// The arm the divergences compare against.
    pub reference_arm: String,
    /// Descriptive divergences of each other arm's value distribution from the reference's.
    pub divergence: BTreeMap<String, DivergenceReport>,
    /// Per-arm numeric summaries, when the input had numeric values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numeric: Option<BTreeMap<String, NumericReport>>,
}

/// One value (stratum) of an input.
#[derive(Clone, Debug, Serialize)]
pub struct ValueReport {
    /// The value (or bin, or `__other__`).
    pub value: String,
    /// Events with it.
    pub events: u64,
    /// Its contribution to the input's log e-value.
    pub log_evalue: f64,
    /// Arm shares within it.
    pub shares: Vec<f64>,
}

/// Fixed-sample divergences between two arms (descriptive).
#[derive(Clone, Debug, Serialize)]
pub struct DivergenceReport {
    /// KL(reference || arm).
    pub kl: f64,
    /// Jensen-Shannon distance.
    pub js: f64,
    /// Population stability index.
    pub psi: f64,
}

/// Numeric summary of one arm.
#[derive(Clone, Debug, Serialize)]
pub struct NumericReport {
    /// Values seen.
    pub n: u64,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub sd: f64,
    /// Median (from the histogram: non-negative values, 3 decimals).
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Standardized mean difference against the reference arm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smd: Option<f64>,
}

fn input_report(
    st: Option<&DivergenceState>,
    e: &Experiment,
    inp: &InputState,
    levels: &EvalContext,
) -> InputReport {
    let reference = reference_arm(e);
    let dists = inp.strata.arm_distributions(e.arms.len());
    let divergence = e
        .arms
        .iter()
        .enumerate()
        .filter(|(a, _)| *a != reference)
        .map(|(a, name)| {
            let (r, c) = (&dists[reference], &dists[a]);
            (
                name.to_string(),
                DivergenceReport {
                    kl: kl(r, c),
                    js: js_distance(r, c),
                    psi: psi(r, c),
                },
            )
        })
        .collect();
    let mut top: Vec<ValueReport> = inp
        .strata
        .slots()
        .iter()
        .map(|s| (inp.strata.label(s), &s.ep))
        .chain(inp.strata.tail().map(|t| (TAIL_LABEL, t)))
        .filter(|(_, ep)| ep.n() > 0)
        .map(|(label, ep)| ValueReport {
            value: label.to_string(),
            events: ep.n(),
            log_evalue: inp.strata.contribution(ep, &e.design),
            shares: shares(ep.counts()),
        })
        .collect();
    top.sort_by(|a, b| {
        b.log_evalue
            .total_cmp(&a.log_evalue)
            .then_with(|| a.value.cmp(&b.value))
    });
    top.truncate(5);
    let numeric = inp.numeric.as_ref().map(|num| {
        e.arms
            .iter()
            .enumerate()
            .map(|(a, name)| {
                let m = &num.moments[a];
                let [p50, p90, p99] = num.quantiles(a, [0.5, 0.9, 0.99]);
                (
                    name.to_string(),
                    NumericReport {
                        n: m.n(),
                        mean: m.mean(),
                        sd: m.variance().sqrt(),
                        p50,
                        p90,
                        p99,
                        smd: if a == reference {
                            None
                        } else {
                            smd(m, &num.moments[reference])
                        },
                    },
                )
            })
            .collect()
    });
    InputReport {
        events: inp.n,
        log_evalue: inp.strata.log_e_independence(&e.design),
        log_evalue_vs_design: inp.strata.log_e(),
        pooled_shares: shares(inp.strata.totals()),
        evidence_threshold: levels.log_threshold + e.ln_alpha_divisor(),
        alert: st.is_some_and(|d| d.fired),
        strata: inp.strata.slots().len(),
        promotions: inp.strata.promotions(),
        top_values: top,
        reference_arm: e
            .arms
            .get(reference)
            .map(|a| a.to_string())
            .unwrap_or_default(),
        divergence,
        numeric,
    }
}
