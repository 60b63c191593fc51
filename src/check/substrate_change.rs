//! `substrate_change`: a declared substrate input (an embedding model, a retrieval index)
//! takes a new value while the experiment runs. A fact, not a statistical finding: it alerts
//! at the first event with the new value. Its statistics are the values' first times and
//! events per arm (counts: they merge exactly); the check keeps no state of its own, a value
//! is new once.

use super::alert::rfc3339;
use super::{Alert, Check, EvalContext, Exposure, Module};
use crate::metrics::{int_gauge_vec, Labels};
use crate::state::experiment::Experiment;
use prometheus::{IntGaugeVec, Registry};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;

/// The check.
pub struct SubstrateChange;

/// One value of a substrate input.
#[derive(Clone, Debug, Serialize)]
pub struct SubstrateValueReport {
    /// The value.
    pub value: String,
    /// First event time (epoch ms).
    pub first_ts_ms: i64,
    /// Events per arm, in arm order.
    pub events_per_arm: Vec<u64>,
}

impl Module<Experiment> for SubstrateChange {
    type State = ();
    /// Each declared substrate input: each value, when it appeared, and its events per arm.
    type Section = BTreeMap<String, Vec<SubstrateValueReport>>;
    type Metrics = IntGaugeVec;

    #[inline]
    fn on_event(
        _: &mut (),
        e: &mut Experiment,
        u: &Exposure<'_>,
        ctx: &EvalContext,
        out: &mut Vec<Alert>,
    ) {
        // every exposure, repeats included: a value is new whoever brings it
        if !u.obs.exposure {
            return;
        }
        if let Some((k, i)) = e.observe_substrates(u.ev, u.obs.arm, ctx.seq) {
            if let Some(a) = change(e, k, i, ctx) {
                out.push(a);
            }
        }
    }

    fn merge(_: &mut (), _: &Experiment, _: &(), _: &Experiment) {}

    fn section(_: &(), e: &Experiment, _: &EvalContext) -> Self::Section {
        e.substrates
            .iter()
            .map(|s| {
                let values = s
                    .values
                    .iter()
                    .map(|v| SubstrateValueReport {
                        value: v.value.to_string(),
                        first_ts_ms: v.first_ts_ms,
                        events_per_arm: v.per_arm.clone(),
                    })
                    .collect();
                (s.name.to_string(), values)
            })
            .collect()
    }

    fn metrics(r: &Registry) -> IntGaugeVec {
        int_gauge_vec(
            r,
            "armwatch_substrate_value_events",
            "Events per substrate input value and arm (at most 16 values per input).",
            &["experiment", "input", "value", "arm"],
        )
    }

    fn publish(m: &mut IntGaugeVec, _: &mut Labels, exp: &str, arms: &[String], s: &Self::Section) {
        for (input, values) in s {
            for v in values {
                for (arm, n) in arms.iter().zip(&v.events_per_arm) {
                    m.with_label_values(&[exp, input, &v.value, arm])
                        .set(*n as i64);
                }
            }
        }
    }
}

/// Value `i` of substrate `k` of `e` was first seen.
fn change(e: &Experiment, k: usize, i: usize, ctx: &EvalContext) -> Option<Alert> {
    let (experiment, arms, s) = (&e.id, &e.arms, e.substrates.get(k)?);
    let new = s.values.get(i)?;
    let old = s.values.get(i.checked_sub(1)?)?;
    let exposure: Vec<serde_json::Value> = s
        .values
        .iter()
        .map(|v| json!({"value": &*v.value, "first_seen": rfc3339(v.first_ts_ms), "events_per_arm": arms.iter().map(|a| a.to_string()).zip(v.per_arm.iter().copied()).collect::<BTreeMap<_, _>>()}))
        .collect();
    Some(Alert::deterministic(
        Check::SubstrateChange,
        Some(experiment.to_string()),
        s.name.to_string(),
        new.value.to_string(),
        ctx,
        format!(
            "substrate `{}` changed in {experiment} while it runs: {} -> {} (first seen {}); results before and after \
             measure different systems, and if the new value reaches one arm more than the other the comparison is confounded",
            s.name,
            old.value,
            new.value,
            rfc3339(new.first_ts_ms)
        ),
        json!({ "old_value": &*old.value, "new_value": &*new.value, "values": exposure }),
    ))
}
