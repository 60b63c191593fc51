//! `threshold_density`: McCrary's test ([`crate::stats::mccrary`]) on the fixed fine histogram
//! of scores, re-binned at each look. Looks happen at 1000, 2000, 4000, ... decisions, look j
//! (from 0) at level `alpha / 2^(j+1)`: the levels sum to alpha, so checking it continuously
//! keeps the false-alarm level (Bonferroni alpha spending). An alert also needs
//! `|theta| >= min_log_density_ratio`.
//!
//! Looks are taken at fixed decision counts of one router's stream, so its state is taken
//! whole across partitions, not combined (key routing events by router name).

use super::alert::rfc3339;
use super::{Alert, Check, EvalContext, Module};
use crate::metrics::{gauge_vec, Labels};
use crate::state::router::{Decision, RouterState};
use crate::stats::mccrary::{binomial_window_p, dc_density, two_sided_p, McCrary};
use prometheus::{GaugeVec, Registry};
use serde::Serialize;
use serde_json::json;

/// The check.
pub struct ThresholdDensity;

/// The last McCrary look of a router.
#[derive(Clone, Debug, Serialize)]
pub struct DensityReport {
    /// Looks taken (at 1000, 2000, 4000, ... decisions).
    pub looks: u32,
    /// `ln f+ - ln f-` at the threshold.
    pub theta: f64,
    /// Its standard error.
    pub se: f64,
    /// `theta / se`.
    pub z: f64,
    /// Two-sided p-value of that look.
    pub p: f64,
    /// Binomial complement: counts below/above in the smallest symmetric window with 20 per
    /// side, and its exact p-value.
    pub window: Option<(f64, u64, u64, f64)>,
}

/// `threshold_density` of one router.
#[derive(Clone, Debug, Serialize)]
pub struct DensitySection {
    /// The last look (`None` before the first).
    pub last_look: Option<DensityReport>,
    /// Whether the alert fired.
    pub alert: bool,
}

impl Module<RouterState> for ThresholdDensity {
    type State = DensityTest;
    type Section = DensitySection;
    type Metrics = GaugeVec;

    fn on_event(
        st: &mut DensityTest,
        r: &mut RouterState,
        _: &Decision,
        ctx: &EvalContext,
        out: &mut Vec<Alert>,
    ) {
        if let Some(a) = density(st, r, ctx) {
            out.push(a);
        }
    }

    /// Taken whole with its router (see the module notes).
    fn merge(_: &mut DensityTest, _: &RouterState, _: &DensityTest, _: &RouterState) {}

    fn section(t: &DensityTest, _: &RouterState, _: &EvalContext) -> DensitySection {
        DensitySection {
            last_look: t.last.map(|(m, p)| DensityReport {
                looks: t.looks,
                theta: m.theta,
                se: m.se,
                z: m.z,
                p,
                window: t.window,
            }),
            alert: t.fired,
        }
    }

    fn metrics(r: &Registry) -> GaugeVec {
        gauge_vec(
            r,
            "armwatch_router_density",
            "McCrary density test at the routing threshold, last look: stat = theta | se | z | p.",
            &["router", "stat"],
        )
    }

    fn publish(m: &mut GaugeVec, _: &mut Labels, router: &str, _: &[String], s: &DensitySection) {
        if let Some(d) = &s.last_look {
            for (stat, v) in [("theta", d.theta), ("se", d.se), ("z", d.z), ("p", d.p)] {
                m.with_label_values(&[router, stat]).set(v);
            }
        }
    }
}

/// State of the density test of one router.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DensityTest {
    /// Looks taken.
    pub looks: u32,
    /// The last look's result and p-value.
    pub last: Option<(McCrary, f64)>,
    /// The last look's binomial window complement: (half-width, below, above, p).
    pub window: Option<(f64, u64, u64, f64)>,
    /// Whether the alert fired.
    pub fired: bool,
}

/// Decisions at the first look.
pub const FIRST_LOOK: u64 = 1000;

/// After a routing decision: take a look when one is due.
fn density(t: &mut DensityTest, r: &RouterState, ctx: &EvalContext) -> Option<Alert> {
    let d = r.density.as_ref()?;
    let n = d.moments.n();
    if t.fired || n != FIRST_LOOK << t.looks {
        return None;
    }
    let level = ctx.alpha / f64::from(2u32).powi(t.looks as i32 + 1);
    t.looks += 1;
    let m = dc_density(
        &d.points(),
        d.threshold,
        n,
        d.moments.variance().sqrt(),
        d.min,
        d.max,
    )?;
    let p = two_sided_p(m.z);
    t.last = Some((m, p));
    // the smallest window (a few McCrary bins wide) with at least 20 values on each side
    t.window = (1..=16).map(|k| k as f64 * m.bin).find_map(|h| {
        let (below, above) = d.window(h);
        (below >= 20 && above >= 20).then(|| (h, below, above, binomial_window_p(below, above)))
    });
    let min_theta = r.cfg.as_ref().map_or(0.1, |c| c.min_log_density_ratio);
    if p >= level || m.theta.abs() < min_theta {
        return None;
    }
    t.fired = true;
    let side = if m.theta < 0.0 { "below" } else { "above" };
    Some(Alert {
        check: Check::ThresholdDensity,
        experiment: None,
        subject: r.name.to_string(),
        value: Some(format!("{}", d.threshold)),
        evidence: -p.ln(),
        evidence_threshold: -level.ln(),
        magnitude: m.theta,
        first_event: ctx.seq,
        ts: rfc3339(ctx.ts_ms),
        message: format!(
            "scores of router `{}` pile up just {side} its threshold {}: the density jumps by a factor {:.2} at the threshold \
             (McCrary theta {:.3}, z {:.2}, p {:.2e} at look {} of its alpha-spending schedule): something nudges scores across it",
            r.name,
            d.threshold,
            m.theta.exp(),
            m.theta,
            m.z,
            p,
            t.looks
        ),
        details: json!({"theta": m.theta, "se": m.se, "z": m.z, "p": p, "level": level, "look": t.looks, "n": n, "bin": m.bin, "bandwidth": m.bw,
            "binomial_window": t.window.map(|(h, below, above, p)| json!({"half_width": h, "below": below, "above": above, "p": p}))}),
    })
}
