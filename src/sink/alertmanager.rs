//! Alertmanager v2 API (`POST /api/v2/alerts`, a JSON array of postable alerts). Alertmanager
//! resolves an alert that is not re-sent within its `resolve_timeout`, so active alerts are
//! re-posted periodically with their original `startsAt`.

use crate::check::Alert;
use serde::Serialize;
use std::collections::BTreeMap;

/// One postable alert.
#[derive(Clone, Debug, Serialize)]
pub struct Posted {
    labels: BTreeMap<&'static str, String>,
    annotations: BTreeMap<&'static str, String>,
    #[serde(rename = "startsAt")]
    starts_at: String,
}

impl Posted {
    /// Labels: alertname `Armwatch<Check>`, check, experiment, subject, value (bounded: one
    /// alert per check, experiment and subject).
    pub fn new(a: &Alert) -> Posted {
        let mut labels = BTreeMap::new();
        labels.insert("alertname", format!("armwatch_{}", a.check.as_str()));
        labels.insert("check", a.check.as_str().to_string());
        labels.insert("severity", "critical".to_string());
        labels.insert("subject", a.subject.clone());
        if let Some(e) = &a.experiment {
            labels.insert("experiment", e.clone());
        }
        if let Some(v) = &a.value {
            labels.insert("value", v.clone());
        }
        let mut annotations = BTreeMap::new();
        annotations.insert("summary", a.message.clone());
        annotations.insert(
            "evidence",
            format!(
                "log e-value {:.2} (threshold {:.2})",
                a.evidence, a.evidence_threshold
            ),
        );
        annotations.insert("magnitude", format!("{:.4}", a.magnitude));
        annotations.insert("first_event", a.first_event.to_string());
        annotations.insert("event_ts", a.ts.clone());
        Posted {
            labels,
            annotations,
            starts_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }
}

/// POST alerts; true on a 2xx answer.
pub async fn post(client: &reqwest::Client, url: &str, alerts: &[Posted]) -> bool {
    match client.post(url).json(alerts).send().await {
        Ok(r) if r.status().is_success() => true,
        Ok(r) => {
            tracing::warn!(url, status = %r.status(), "Alertmanager refused alerts");
            false
        }
        Err(e) => {
            tracing::warn!(url, error = %e, "Alertmanager unreachable");
            false
        }
    }
}
