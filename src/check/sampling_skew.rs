//! `sampling_skew`: an eval set that does not describe production. The eval set filled by a
//! 3am cron job describes overnight batch traffic, not customers. Per eval set and dimension
//! (hour-of-week in the configured time zone, and each configured segment input), the samples
//! are tested against production traffic as the reference (a plug-in e-process, see
//! [`crate::state::sampling::EvalSet::observe`]), each dimension at `alpha / D`. An alert also
//! needs the Jensen-Shannon distance to reach `min_js_distance`. Reported beside it: JS, KL and
//! coverage, the share of production traffic (weighted by `weight_input` when set) in cells
//! the sampler never reached.
//! The e-processes are order-dependent and production is one stream: the sampler's state is
//! taken whole across partitions, not combined.

use super::alert::rfc3339;
use super::{Alert, Check, EvalContext, Module, SamplingEnv};
use crate::metrics::{gauge_vec, Labels};
use crate::state::sampling::{Dimension, EvalSet, Production};
use crate::stats::divergence::{js_distance, kl};
use prometheus::{GaugeVec, Registry};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;

/// The check.
pub struct SamplingSkew;

/// Detector state of one eval set.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SkewState {
    /// Whether the alert fired.
    pub fired: bool,
}

/// `sampling_skew` of one eval set.
#[derive(Clone, Debug, Serialize)]
pub struct SkewReport {
    /// Per dimension (`hour_of_week` and each segment input).
    pub dimensions: BTreeMap<String, DimensionFigures>,
    /// Whether the alert fired.
    pub alert: bool,
}

impl Module<EvalSet> for SamplingSkew {
    type State = SkewState;
    type Section = SkewReport;
    type Metrics = GaugeVec;

    fn on_event(
        st: &mut SkewState,
        set: &mut EvalSet,
        production: &&Production,
        ctx: &EvalContext,
        out: &mut Vec<Alert>,
    ) {
        if let Some(a) = evaluate(st, set, production, ctx) {
            out.push(a);
        }
    }

    /// Taken whole with its eval set (see the module notes).
    fn merge(_: &mut SkewState, _: &EvalSet, _: &SkewState, _: &EvalSet) {}

    fn section(st: &SkewState, s: &EvalSet, env: SamplingEnv<'_>) -> SkewReport {
        SkewReport {
            dimensions: (0..s.dims.len())
                .map(|d| (s.dims[d].name.to_string(), figures(s, env.production, d)))
                .collect(),
            alert: st.fired,
        }
    }

    fn metrics(r: &Registry) -> GaugeVec {
        gauge_vec(r, "armwatch_sampling_skew", "Eval set against production per dimension: stat = log_evalue | js | kl | uncovered_share.", &["eval_set", "dimension", "stat"])
    }

    fn publish(m: &mut GaugeVec, labels: &mut Labels, set: &str, _: &[String], s: &SkewReport) {
        for (dim, f) in &s.dimensions {
            let Some(dim) = labels.instrument(dim) else {
                continue;
            };
            for (stat, v) in [
                ("log_evalue", f.log_evalue),
                ("js", f.js),
                ("kl", f.kl),
                ("uncovered_share", f.uncovered_share),
            ] {
                m.with_label_values(&[set, &dim, stat]).set(v);
            }
        }
    }
}

/// Figures of one dimension of one eval set.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DimensionFigures {
    /// Log e-value.
    pub log_evalue: f64,
    /// Jensen-Shannon distance between samples and production.
    pub js: f64,
    /// KL(production || samples).
    pub kl: f64,
    /// Share of production (weighted) in cells without a sample.
    pub uncovered_share: f64,
}

fn as_counts(d: &Dimension, cells: usize) -> Vec<u64> {
    (0..cells)
        .map(|i| d.counts.get(i).copied().unwrap_or(0.0) as u64)
        .collect()
}

/// The figures of dimension `d`.
fn figures(set: &EvalSet, production: &Production, d: usize) -> DimensionFigures {
    let pd = &production.dims[d];
    let cells = pd.counts.len().max(set.dims[d].counts.len());
    let (prod, samp) = (as_counts(pd, cells), as_counts(&set.dims[d], cells));
    let total_w: f64 = pd.weights.iter().sum();
    let uncovered: f64 = (0..cells)
        .filter(|&i| samp[i] == 0)
        .map(|i| pd.weights.get(i).copied().unwrap_or(0.0))
        .sum();
    DimensionFigures {
        log_evalue: set.log_e(d),
        js: js_distance(&prod, &samp),
        kl: kl(&prod, &samp),
        uncovered_share: if total_w > 0.0 {
            uncovered / total_w
        } else {
            0.0
        },
    }
}

fn cell_label(pd: &Dimension, i: usize) -> String {
    if &*pd.name == "hour_of_week" {
        const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
        format!("{} {:02}:00", DAYS[i / 24 % 7], i % 24)
    } else {
        pd.labels
            .get(i)
            .map_or_else(|| i.to_string(), |l| l.to_string())
    }
}

/// After a sample of `set`.
fn evaluate(
    st: &mut SkewState,
    set: &EvalSet,
    production: &Production,
    ctx: &EvalContext,
) -> Option<Alert> {
    if st.fired {
        return None;
    }
    let dims = set.dims.len();
    let threshold = ctx.log_threshold + (dims as f64).ln();
    let d = (0..dims).find(|&d| set.log_e(d) >= threshold)?;
    let f = figures(set, production, d);
    if f.js < production.cfg.min_js_distance {
        return None;
    }
    st.fired = true;
    let pd = &production.dims[d];
    let (pt, st) = (pd.total().max(1.0), set.dims[d].total().max(1.0));
    // the most over-sampled cell
    let top = (0..set.dims[d].counts.len())
        .max_by(|&a, &b| {
            let r = |i: usize| {
                set.dims[d].counts[i] / st - pd.counts.get(i).copied().unwrap_or(0.0) / pt
            };
            r(a).total_cmp(&r(b))
        })
        .unwrap_or(0);
    let (top_s, top_p) = (
        set.dims[d].counts.get(top).copied().unwrap_or(0.0) / st,
        pd.counts.get(top).copied().unwrap_or(0.0) / pt,
    );
    Some(Alert {
        check: Check::SamplingSkew,
        experiment: None,
        subject: set.name.to_string(),
        value: Some(pd.name.to_string()),
        evidence: f.log_evalue,
        evidence_threshold: threshold,
        magnitude: f.js,
        first_event: ctx.seq,
        ts: rfc3339(ctx.ts_ms),
        message: format!(
            "eval set `{}` does not describe production over {}: Jensen-Shannon distance {:.2}; {:.0}% of production traffic \
             falls where the sampler never reaches; most over-sampled: {} ({:.1}% of samples, {:.1}% of production)",
            set.name,
            pd.name,
            f.js,
            100.0 * f.uncovered_share,
            cell_label(pd, top),
            100.0 * top_s,
            100.0 * top_p
        ),
        details: json!({"dimension": &*pd.name, "js": f.js, "kl": f.kl, "uncovered_share": f.uncovered_share,
            "samples": set.n, "production": production.n, "top_cell": cell_label(pd, top), "top_sample_share": top_s, "top_production_share": top_p}),
    })
}
