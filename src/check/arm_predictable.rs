//! `arm_predictable`: the online arm model ([`crate::state::predict`]) predicts the arm from
//! the watched inputs better than the design does. Needs evidence (the universal-inference
//! e-value of the model's prequential predictions >= `1/alpha`) and magnitude (prequential AUC
//! at least `0.5 + min_auc_margin`). The model's evidence is order-dependent: across
//! partitions it combines as the product of the per-partition e-processes (still an
//! e-process), see [`crate::state::predict::ArmModel::merge`].

use super::alert::{details, rfc3339};
use super::{Alert, Check, EvalContext, Exposure, Module};
use crate::metrics::{gauge_vec, set_interval, Labels};
use crate::state::experiment::Experiment;
use crate::state::predict::{ArmModel, MISSING, MODEL_INPUTS};
use crate::stats::proportion::Z95;
use prometheus::{GaugeVec, Registry};
use serde::Serialize;

/// The check.
pub struct ArmPredictable;

/// Counted events between exact evaluations once the design evidence has crossed (the AUC and
/// the penalty cost O(bins) and O(arms)).
const RECHECK_EVERY: u64 = 16;

/// Detector state.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PredictableState {
    /// Whether the alert fired.
    pub fired: bool,
    /// The evidence crossed but the AUC margin held the alert back.
    pub evidence_only: bool,
}

/// `arm_predictable`.
#[derive(Clone, Debug, Serialize)]
pub struct PredictabilityReport {
    /// Events (first exposures) the model predicted.
    pub events: u64,
    /// Log e-value, arm shares left free (what the alert reads).
    pub log_evalue: f64,
    /// Log e-value against the design weights.
    pub log_evalue_design: f64,
    /// Log e-value the alert needs.
    pub evidence_threshold: f64,
    /// Prequential AUC of the model's predictions.
    pub auc: f64,
    /// Its 95% Hanley-McNeil interval.
    pub auc_interval_95: [f64; 2],
    /// The inputs (single, pair or all) whose expert carries most posterior weight.
    pub top_predictor: String,
    /// That expert's posterior weight.
    pub top_predictor_weight: f64,
    /// Fixed memory of the model.
    pub memory_bytes: usize,
    /// Whether the alert fired.
    pub alert: bool,
    /// The evidence crossed but the AUC margin held the alert back.
    pub evidence_without_margin: bool,
}

/// Its metrics.
pub struct PredictableMetrics {
    log_e: GaugeVec,
    auc: GaugeVec,
}

impl Module<Experiment> for ArmPredictable {
    type State = PredictableState;
    /// Present once the model has seen inputs.
    type Section = Option<PredictabilityReport>;
    type Metrics = PredictableMetrics;

    #[inline]
    fn on_event(
        st: &mut PredictableState,
        exp: &mut Experiment,
        u: &Exposure<'_>,
        ctx: &EvalContext,
        out: &mut Vec<Alert>,
    ) {
        if u.obs.counted {
            learn(exp, &u.obs.keys, u.obs.arm);
            if let Some(a) = evaluate(st, exp, ctx) {
                out.push(a);
            }
        }
    }

    fn merge(st: &mut PredictableState, _: &Experiment, o: &PredictableState, _: &Experiment) {
        st.fired |= o.fired;
        st.evidence_only |= o.evidence_only;
    }

    /// The model starts over with the statistics.
    fn restart(st: &mut PredictableState) {
        *st = PredictableState::default();
    }

    fn section(st: &PredictableState, e: &Experiment, levels: &EvalContext) -> Self::Section {
        predictability(st, e, levels.log_threshold)
    }

    fn absent(s: &Self::Section) -> bool {
        s.is_none()
    }

    fn metrics(r: &Registry) -> PredictableMetrics {
        PredictableMetrics {
            log_e: gauge_vec(r, "armwatch_arm_predictable_log_evalue", "Joint arm model: log e-value that the arm depends on the watched inputs (arm shares left free).", &["experiment"]),
            auc: gauge_vec(r, "armwatch_arm_predictable_auc", "Joint arm model: prequential AUC with its 95% interval: bound = estimate | lower | upper.", &["experiment", "bound"]),
        }
    }

    fn publish(
        m: &mut PredictableMetrics,
        _: &mut Labels,
        exp: &str,
        _: &[String],
        s: &Self::Section,
    ) {
        let Some(p) = s else { return };
        m.log_e.with_label_values(&[exp]).set(p.log_evalue);
        set_interval(&m.auc, exp, p.auc, p.auc_interval_95);
    }
}

/// The update: the online arm model predicts the counted event's arm from its inputs' stratum
/// keys, then learns it (allocated with the first counted event carrying inputs).
#[inline]
fn learn(exp: &mut Experiment, keys: &[u64; MODEL_INPUTS], arm: usize) {
    if exp.inputs.is_empty() || exp.arms.len() < 2 {
        return;
    }
    let design = &exp.design;
    let model = exp
        .model
        .get_or_insert_with(|| Box::new(ArmModel::new(design)));
    let n = exp.inputs.len().min(MODEL_INPUTS);
    for inp in &exp.inputs[model.inputs()..n] {
        model.add_input(inp.name_key);
    }
    // `keys` is by input index; the model reads by slot (inputs sorted by name hash)
    let mut by_slot = [MISSING; MODEL_INPUTS];
    for (inp, key) in exp.inputs[..n].iter().zip(keys) {
        if let Some(s) = model.slot(inp.name_key) {
            by_slot[s] = *key;
        }
    }
    model.observe(design, &by_slot, arm);
}

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

/// The predictability section of `e`.
fn predictability(
    st: &PredictableState,
    e: &Experiment,
    log_threshold: f64,
) -> Option<PredictabilityReport> {
    let m = e.model.as_deref()?;
    let (auc, lo, hi) = m.auc(Z95);
    let (top, weight) = top_predictor(e);
    Some(PredictabilityReport {
        events: m.n(),
        log_evalue: m.log_e(&e.design),
        log_evalue_design: m.log_e_design(),
        evidence_threshold: log_threshold,
        auc,
        auc_interval_95: [lo, hi],
        top_predictor: top,
        top_predictor_weight: weight,
        memory_bytes: m.memory_bytes(),
        alert: st.fired,
        evidence_without_margin: st.evidence_only,
    })
}

/// Evaluate after a counted exposure.
#[inline]
fn evaluate(st: &mut PredictableState, exp: &Experiment, ctx: &EvalContext) -> Option<Alert> {
    let m = exp.model.as_deref()?;
    if st.fired {
        return None;
    }
    let n = m.n();
    if n % RECHECK_EVERY != 0 || m.log_e_design() < ctx.log_threshold {
        return None;
    }
    let log_e = m.log_e(&exp.design);
    if log_e < ctx.log_threshold {
        return None;
    }
    let (auc, lo, hi) = m.auc(Z95);
    if auc - 0.5 < ctx.min_auc_margin {
        st.evidence_only = true;
        return None;
    }
    st.fired = true;
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
        details: details(&predictability(st, exp, ctx.log_threshold)),
    })
}
