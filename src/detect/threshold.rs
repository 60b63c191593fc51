//! Routing thresholds: `threshold_density` and `threshold_compliance`.
//!
//! `threshold_density`: McCrary's test ([`crate::stats::mccrary`]) on the fixed fine histogram
//! of scores, re-binned at each look. Looks happen at 1000, 2000, 4000, ... decisions, look j
//! (from 0) at level `alpha / 2^(j+1)`: the levels sum to alpha, so checking it continuously
//! keeps the false-alarm level (Bonferroni alpha spending). An alert also needs
//! `|theta| >= min_log_density_ratio`.
//!
//! `threshold_compliance`: near a sharp routing threshold every decision should follow the
//! rule (`score < threshold` takes the `below` route). A share of in-band decisions that
//! disagree means overrides, jitter or a fuzzy design, and the regression-discontinuity reading
//! of the router no longer holds.
//!
//! Test of `H0: p <= tolerance` for the disagreement probability `p`, by a plug-in e-process
//! (Robbins 1970; Ramdas et al., "Game-theoretic statistics and safe anytime-valid inference",
//! Stat. Sci. 2023): each in-band decision multiplies `E` by `q / p0` if it disagrees and
//! `(1 - q) / (1 - p0)` if it agrees, where `q >= p0` is the Krichevsky-Trofimov estimate from
//! the decisions before it. For every `p <= p0` the expected factor is at most 1, so `E` is a
//! nonnegative supermartingale under H0.

use super::alert::rfc3339;
use super::{Alert, Check, EvalContext};
use crate::state::router::{Decision, RouterState};
use crate::stats::mccrary::{binomial_window_p, dc_density, two_sided_p, McCrary};
use serde_json::json;

/// Detector state of one router.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ComplianceState {
    /// Log e-value.
    pub log_e: f64,
    /// Whether the alert fired.
    pub fired: bool,
}

/// After a routing decision.
pub fn compliance(r: &mut RouterState, decision: Decision, ctx: &EvalContext) -> Option<Alert> {
    let cfg = r.cfg.as_ref()?;
    let x = match decision {
        Decision::Unchecked => return None,
        Decision::Agrees => false,
        Decision::Disagrees => true,
    };
    let p0 = cfg.tolerance;
    // the estimate from the decisions before this one (counts already include it)
    let (k, n) = (r.disagree - u64::from(x), r.in_band - 1);
    let q = ((k as f64 + 0.5) / (n as f64 + 1.0)).clamp(p0, 1.0 - 1e-9);
    r.compliance.log_e += if x {
        (q / p0).ln()
    } else {
        ((1.0 - q) / (1.0 - p0)).ln()
    };
    let share = r.disagree as f64 / r.in_band as f64;
    if r.compliance.fired || r.compliance.log_e < ctx.log_threshold || share <= p0 {
        return None;
    }
    r.compliance.fired = true;
    Some(Alert {
        check: Check::ThresholdCompliance,
        experiment: None,
        subject: r.name.to_string(),
        value: None,
        evidence: r.compliance.log_e,
        evidence_threshold: ctx.log_threshold,
        magnitude: share,
        first_event: ctx.seq,
        ts: rfc3339(ctx.ts_ms),
        message: format!(
            "router `{}` does not follow its rule near the threshold: {:.1}% of {} decisions within {} of {} disagree \
             (tolerance {:.1}%): overrides, jitter or a fuzzy design",
            r.name,
            100.0 * share,
            r.in_band,
            cfg.band,
            r.threshold.unwrap_or(f64::NAN),
            100.0 * p0
        ),
        details: json!({"in_band": r.in_band, "disagree": r.disagree, "share": share, "tolerance": p0, "band": cfg.band, "threshold": r.threshold, "below": cfg.below}),
    })
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
pub fn density(r: &mut RouterState, ctx: &EvalContext) -> Option<Alert> {
    let d = r.density.as_ref()?;
    let n = d.moments.n();
    let t = &mut r.density_test;
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
