//! The alert record every sink receives.

use super::Check;
use serde::Serialize;

/// One fired alert.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Alert {
    /// Which check fired.
    pub check: Check,
    /// The experiment, when the check is per experiment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    /// The input, router, judge or eval set (the experiment itself for `srm`).
    pub subject: String,
    /// The stratum most to blame, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Log e-value at firing time.
    pub evidence: f64,
    /// The log e-value the evidence had to reach: `ln(1 / alpha')`.
    pub evidence_threshold: f64,
    /// Effect size (for SRM and divergence: largest arm-share deviation from design).
    pub magnitude: f64,
    /// 0-based position of the event at which it fired.
    pub first_event: u64,
    /// Event time at which it fired (RFC 3339, UTC).
    pub ts: String,
    /// One sentence for a human.
    pub message: String,
    /// Check-specific details (arm shares, design, counts).
    pub details: serde_json::Value,
}

impl Alert {
    /// Whether `other` is the same alert: an alert fires once per check, experiment, subject
    /// and value, so these say which one it is (its numbers are as of when it fired).
    pub fn same(&self, other: &Alert) -> bool {
        self.check == other.check
            && self.experiment == other.experiment
            && self.subject == other.subject
            && self.value == other.value
    }

    /// A hash of what [`Self::same`] compares.
    pub fn identity(&self) -> u64 {
        crate::state::key_of(&format!(
            "{}\u{0}{}\u{0}{}\u{0}{}",
            self.check.as_str(),
            self.experiment.as_deref().unwrap_or(""),
            self.subject,
            self.value.as_deref().unwrap_or("")
        ))
    }

    /// An alert for a deterministic event (a version or substrate change): a fact, not a
    /// statistical finding, so evidence and threshold are 0 and the magnitude 1.
    pub fn deterministic(
        check: Check,
        experiment: Option<String>,
        subject: String,
        value: String,
        ctx: &super::EvalContext,
        message: String,
        details: serde_json::Value,
    ) -> Alert {
        Alert {
            check,
            experiment,
            subject,
            value: Some(value),
            evidence: 0.0,
            evidence_threshold: 0.0,
            magnitude: 1.0,
            first_event: ctx.seq,
            ts: rfc3339(ctx.ts_ms),
            message,
            details,
        }
    }
}

#[cfg(test)]
impl Alert {
    /// An alert for unit tests of the sinks: `check` on `experiment`, subject and value given.
    pub fn sample(
        check: Check,
        experiment: Option<&str>,
        subject: &str,
        value: Option<&str>,
    ) -> Alert {
        Alert {
            check,
            experiment: experiment.map(str::to_string),
            subject: subject.into(),
            value: value.map(str::to_string),
            evidence: 9.0,
            evidence_threshold: 6.9,
            magnitude: 0.1,
            first_event: 7,
            ts: "2026-01-01T00:00:00.000Z".into(),
            message: "m".into(),
            details: serde_json::Value::Null,
        }
    }
}

/// An alert's `details` from the report section of its check (the same fields a reader finds
/// in `/api/v1/report`, as they were when the alert fired).
pub fn details(section: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(section).unwrap_or(serde_json::Value::Null)
}

/// RFC 3339 (UTC, milliseconds) of epoch milliseconds.
pub fn rfc3339(ts_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ts_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ts_ms.to_string())
}
