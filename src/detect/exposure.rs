//! `multiple_exposure` (units seen in more than one arm) and `cluster_mixed` (clusters of a
//! cluster-randomized experiment split across arms).
//!
//! Multiple exposure is estimated on a consistent hash sample of units
//! ([`crate::state::exposure`]); the alert needs the one-sided Wilson lower bound at level
//! `alpha` above the configured rate (GrowthBook's health check calls >= 1% of units
//! unhealthy). That bound is a fixed-sample interval checked repeatedly, so at a true rate
//! exactly at the threshold it can alarm more often than `alpha`; a stream without crossovers
//! has no mixed units and can never alarm. A mixed cluster is a fact, not an estimate: the
//! first one alerts at once, naming it.

use super::alert::rfc3339;
use super::{Alert, Check, EvalContext};
use crate::state::experiment::Experiment;
use crate::stats::proportion::{wilson, Z95};

/// Followed units needed before `multiple_exposure` can alert.
pub const MIN_FOLLOWED: u64 = 100;

/// Evaluate `multiple_exposure` after an event with a unit.
#[inline]
pub fn multiple(exp: &mut Experiment, ctx: &EvalContext) -> Option<Alert> {
    let s = exp.exposures.as_mut()?;
    if s.fired || s.mixed() == 0 || s.followed() < MIN_FOLLOWED || s.rate() <= ctx.exposure_rate {
        return None;
    }
    let (lo, _) = wilson(s.mixed(), s.followed(), ctx.z_alpha);
    if lo <= ctx.exposure_rate {
        return None;
    }
    s.fired = true;
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
        details: super::alert::details(&crate::report::integrity::exposure(exp, ctx)),
    })
}

/// Evaluate `cluster_mixed` after an event whose cluster just became mixed.
pub fn cluster(exp: &mut Experiment, ctx: &EvalContext) -> Option<Alert> {
    let c = exp.clusters.as_mut()?;
    if c.sample.fired || c.sample.mixed() == 0 {
        return None;
    }
    c.sample.fired = true;
    let first = c.mixed_names.first().map_or("", |n| &**n).to_string();
    Some(Alert::deterministic(
        Check::ClusterMixed,
        Some(exp.id.to_string()),
        exp.id.to_string(),
        first.clone(),
        ctx,
        format!(
            "cluster `{first}` of the cluster-randomized experiment {} was seen in more than one arm: \
             a cluster must sit in one arm (see the report for every mixed cluster)",
            exp.id
        ),
        super::alert::details(&crate::report::integrity::clusters(exp)),
    ))
}
