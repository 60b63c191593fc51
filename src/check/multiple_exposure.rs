//! `multiple_exposure`: units seen in more than one arm, estimated on a consistent hash sample
//! of units ([`crate::state::exposure`]); the alert needs the one-sided Wilson lower bound at
//! level `alpha` above the configured rate (GrowthBook's health check calls >= 1% of units
//! unhealthy). That bound is a fixed-sample interval checked repeatedly, so at a true rate
//! exactly at the threshold it can alarm more often than `alpha`; a stream without crossovers
//! has no mixed units and can never alarm. The sample is a set of (unit, arms) and merges
//! exactly.

use super::alert::{details, rfc3339};
use super::{Alert, Check, EvalContext, Exposure, Module};
use crate::metrics::{gauge_vec, int_gauge_vec, set_interval, Labels};
use crate::state::experiment::Experiment;
use crate::stats::proportion::{wilson, Z95};
use prometheus::{GaugeVec, IntGaugeVec, Registry};
use serde::Serialize;

/// The check.
pub struct MultipleExposure;

/// Followed units needed before `multiple_exposure` can alert.
pub const MIN_FOLLOWED: u64 = 100;

/// Detector state.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ExposureState {
    /// Whether the alert fired.
    pub fired: bool,
}

/// `multiple_exposure`.
#[derive(Clone, Debug, Serialize)]
pub struct ExposureReport {
    /// Units followed (a consistent hash sample of all units).
    pub followed_units: u64,
    /// Followed units seen in more than one arm.
    pub mixed_units: u64,
    /// Estimated share of units seen in more than one arm.
    pub estimated_rate: f64,
    /// Its 95% Wilson interval.
    pub interval_95: [f64; 2],
    /// One-sided lower bound at the check's alpha (the alert needs it above `alert_rate`).
    pub lower_bound_at_alpha: f64,
    /// The configured alert rate.
    pub alert_rate: f64,
    /// Share of units followed.
    pub sample_rate: f64,
    /// Units seen, estimated from the sample.
    pub estimated_units: f64,
    /// Memory of the sample.
    pub memory_bytes: usize,
    /// Whether the alert fired.
    pub alert: bool,
}

/// Its metrics.
pub struct ExposureMetrics {
    ratio: GaugeVec,
    followed: IntGaugeVec,
    memory: IntGaugeVec,
}

impl Module<Experiment> for MultipleExposure {
    type State = ExposureState;
    /// Present when events carry `unit`.
    type Section = Option<ExposureReport>;
    type Metrics = ExposureMetrics;

    #[inline]
    fn on_event(
        st: &mut ExposureState,
        exp: &mut Experiment,
        u: &Exposure<'_>,
        ctx: &EvalContext,
        out: &mut Vec<Alert>,
    ) {
        if u.obs.unit {
            if let Some(a) = evaluate(st, exp, ctx) {
                out.push(a);
            }
        }
    }

    fn merge(st: &mut ExposureState, _: &Experiment, o: &ExposureState, _: &Experiment) {
        st.fired |= o.fired;
    }

    fn section(st: &ExposureState, e: &Experiment, levels: &EvalContext) -> Self::Section {
        let x = e.exposures.as_ref()?;
        let (lo, hi) = x.interval(Z95);
        Some(ExposureReport {
            followed_units: x.followed(),
            mixed_units: x.mixed(),
            estimated_rate: x.rate(),
            interval_95: [lo, hi],
            lower_bound_at_alpha: x.interval(levels.z_alpha).0,
            alert_rate: levels.exposure_rate,
            sample_rate: x.sample_rate(),
            estimated_units: x.estimated_ids(),
            memory_bytes: x.memory_bytes(),
            alert: st.fired,
        })
    }

    fn absent(s: &Self::Section) -> bool {
        s.is_none()
    }

    fn metrics(r: &Registry) -> ExposureMetrics {
        ExposureMetrics {
            ratio: gauge_vec(r, "armwatch_multiple_exposure_ratio", "Estimated share of units seen in more than one arm, with its 95% interval: bound = estimate | lower | upper.", &["experiment", "bound"]),
            followed: int_gauge_vec(r, "armwatch_multiple_exposure_followed_units", "Units followed by the consistent hash sample.", &["experiment"]),
            memory: int_gauge_vec(r, "armwatch_multiple_exposure_sample_bytes", "Memory of the multiple-exposure sample.", &["experiment"]),
        }
    }

    fn publish(
        m: &mut ExposureMetrics,
        _: &mut Labels,
        exp: &str,
        _: &[String],
        s: &Self::Section,
    ) {
        let Some(x) = s else { return };
        set_interval(&m.ratio, exp, x.estimated_rate, x.interval_95);
        m.followed
            .with_label_values(&[exp])
            .set(x.followed_units as i64);
        m.memory
            .with_label_values(&[exp])
            .set(x.memory_bytes as i64);
    }
}

/// Evaluate after an event with a unit.
#[inline]
fn evaluate(st: &mut ExposureState, exp: &Experiment, ctx: &EvalContext) -> Option<Alert> {
    let s = exp.exposures.as_ref()?;
    if st.fired || s.mixed() == 0 || s.followed() < MIN_FOLLOWED || s.rate() <= ctx.exposure_rate {
        return None;
    }
    let (lo, _) = wilson(s.mixed(), s.followed(), ctx.z_alpha);
    if lo <= ctx.exposure_rate {
        return None;
    }
    st.fired = true;
    let (lo95, hi95) = s.interval(Z95);
    Some(Alert {
        check: Check::MultipleExposure,
        experiment: Some(exp.id.to_string()),
        subject: exp.id.to_string(),
        value: None,
        evidence: 0.0,
        evidence_threshold: 0.0,
        magnitude: s.rate(),
        first_event: ctx.seq,
        ts: rfc3339(ctx.ts_ms),
        message: format!(
            "units seen in more than one arm of {}: an estimated {:.2}% of units (95% interval {:.2}%-{:.2}%, alert rate {:.2}%); \
             two services may assign differently, and their outcomes mix both arms",
            exp.id,
            100.0 * s.rate(),
            100.0 * lo95,
            100.0 * hi95,
            100.0 * ctx.exposure_rate
        ),
        details: details(&<MultipleExposure as Module<Experiment>>::section(st, exp, ctx)),
    })
}
