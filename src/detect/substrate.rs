//! `substrate_change`: an input declared as substrate (`substrate_inputs`) takes a new value
//! while the experiment runs: the embedding model behind retrieval rotated, the serving model
//! was swapped. Deterministic, so alerted at once, with each arm's exposure to each value (a
//! rotation that reaches one arm more than the other confounds the comparison; the
//! `input_divergence` check on the same input tests that statistically).

use super::alert::rfc3339;
use super::{Alert, Check, EvalContext};
use crate::state::substrate::SubstrateState;
use serde_json::json;

/// After the first event of value `i` (not the first value).
pub fn change(
    experiment: &str,
    arms: &[Box<str>],
    s: &SubstrateState,
    i: usize,
    ctx: &EvalContext,
) -> Option<Alert> {
    let new = s.values.get(i)?;
    let old = s.values.get(i.checked_sub(1)?)?;
    let exposure: Vec<serde_json::Value> = s
        .values
        .iter()
        .map(|v| json!({"value": &*v.value, "first_seen": rfc3339(v.first_ts_ms), "events_per_arm": arms.iter().map(|a| a.to_string()).zip(v.per_arm.iter().copied()).collect::<std::collections::BTreeMap<_, _>>()}))
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
