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
//!
//! The e-process is order-dependent: a router's decisions are one partition's (key routing
//! events by router name), so its state is taken whole across partitions, not combined.

use super::alert::rfc3339;
use super::{Alert, Check, EvalContext, Module};
use crate::metrics::{gauge_vec, Labels};
use crate::state::router::{Decision, RouterState};
use crate::stats::proportion::share;
use prometheus::{GaugeVec, Registry};
use serde::Serialize;
use serde_json::json;

/// The check.
pub struct ThresholdCompliance;

/// Detector state of one router.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ComplianceState {
    /// Log e-value.
    pub log_e: f64,
    /// Whether the alert fired.
    pub fired: bool,
}

/// `threshold_compliance` of one router.
#[derive(Clone, Debug, Serialize)]
pub struct ComplianceReport {
    /// `disagree / in_band`.
    pub disagreement_share: f64,
    /// Log e-value for "disagreement share above tolerance".
    pub log_evalue: f64,
    /// Log e-value the alert needs.
    pub evidence_threshold: f64,
    /// Whether the alert fired.
    pub alert: bool,
}

/// Its metrics.
pub struct ComplianceMetrics {
    log_e: GaugeVec,
    share: GaugeVec,
}

impl Module<RouterState> for ThresholdCompliance {
    type State = ComplianceState;
    type Section = ComplianceReport;
    type Metrics = ComplianceMetrics;

    fn on_event(
        st: &mut ComplianceState,
        r: &mut RouterState,
        decision: &Decision,
        ctx: &EvalContext,
        out: &mut Vec<Alert>,
    ) {
        if let Some(a) = compliance(st, r, *decision, ctx) {
            out.push(a);
        }
    }

    /// Taken whole with its router (see the module notes).
    fn merge(_: &mut ComplianceState, _: &RouterState, _: &ComplianceState, _: &RouterState) {}

    fn section(st: &ComplianceState, r: &RouterState, levels: &EvalContext) -> ComplianceReport {
        ComplianceReport {
            disagreement_share: share(r.disagree, r.in_band),
            log_evalue: st.log_e,
            evidence_threshold: levels.log_threshold,
            alert: st.fired,
        }
    }

    fn metrics(r: &Registry) -> ComplianceMetrics {
        ComplianceMetrics {
            log_e: gauge_vec(
                r,
                "armwatch_router_compliance_log_evalue",
                "Routing-rule compliance: log e-value for a disagreement share above tolerance.",
                &["router"],
            ),
            share: gauge_vec(
                r,
                "armwatch_router_disagreement_share",
                "Share of in-band routing decisions that disagree with the rule.",
                &["router"],
            ),
        }
    }

    fn publish(
        m: &mut ComplianceMetrics,
        _: &mut Labels,
        router: &str,
        _: &[String],
        s: &ComplianceReport,
    ) {
        m.log_e.with_label_values(&[router]).set(s.log_evalue);
        m.share
            .with_label_values(&[router])
            .set(s.disagreement_share);
    }
}

/// After a routing decision.
fn compliance(
    st: &mut ComplianceState,
    r: &RouterState,
    decision: Decision,
    ctx: &EvalContext,
) -> Option<Alert> {
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
    st.log_e += if x {
        (q / p0).ln()
    } else {
        ((1.0 - q) / (1.0 - p0)).ln()
    };
    let share = r.disagree as f64 / r.in_band as f64;
    if st.fired || st.log_e < ctx.log_threshold || share <= p0 {
        return None;
    }
    st.fired = true;
    Some(Alert {
        check: Check::ThresholdCompliance,
        experiment: None,
        subject: r.name.to_string(),
        value: None,
        evidence: st.log_e,
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
