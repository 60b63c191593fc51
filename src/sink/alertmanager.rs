//! Alertmanager v2 API (`POST /api/v2/alerts`, a JSON array of postable alerts). Alertmanager
//! resolves an alert that is not re-sent within its `resolve_timeout`, so active alerts are
//! re-posted periodically with their original `startsAt`; an alert whose experiment leaves the
//! configuration is posted once more with `endsAt` and no longer re-sent.

use super::{Delivery, Shared};
use crate::check::{Alert, Check};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Labels and annotations every posted alert gets beyond its own fields.
#[derive(Clone, Debug, Default)]
pub struct Decor {
    /// `severity` label per check (see [`default_severity`]).
    pub severity: BTreeMap<Check, String>,
    /// `runbook_url` annotation template (`{check}`, `{experiment}`, `{subject}`).
    pub runbook_url: Option<String>,
    /// `dashboard_url` annotation template (same placeholders).
    pub dashboard_url: Option<String>,
    /// Where `generatorURL` points: this base, then `/api/v1/experiments/{experiment}` (or
    /// `/api/v1/report` for an instrument's alert).
    pub external_url: String,
}

impl Decor {
    /// From `[alerts]` (`severity`, `runbook_url`, `dashboard_url`, `external_url`, by
    /// default `http://<listen>`).
    pub fn from_settings(a: &crate::config::AlertSettings, listen: &str) -> Decor {
        Decor {
            severity: Check::ALL
                .iter()
                .filter_map(|c| a.severity.get(c.as_str()).map(|s| (*c, s.clone())))
                .collect(),
            runbook_url: a.runbook_url.clone(),
            dashboard_url: a.dashboard_url.clone(),
            external_url: a
                .external_url
                .clone()
                .unwrap_or_else(|| format!("http://{listen}")),
        }
    }
}

/// The severity of a check unless configured: the assignment leaking into what is measured
/// (the result is wrong) is `critical`; an instrument that moved or a deterministic change
/// (the result needs a look) is `warning`.
pub fn default_severity(c: Check) -> &'static str {
    match c {
        Check::Srm
        | Check::InputDivergence
        | Check::AssignmentMismatch
        | Check::MultipleExposure
        | Check::ClusterMixed
        | Check::ArmPredictable
        | Check::OverlapDependence => "critical",
        Check::ThresholdDensity
        | Check::ThresholdCompliance
        | Check::JudgeVersionChange
        | Check::JudgeScoreShift
        | Check::SubstrateChange
        | Check::SamplingSkew => "warning",
    }
}

/// One postable alert.
#[derive(Clone, Debug, Serialize)]
pub struct Posted {
    labels: BTreeMap<&'static str, String>,
    annotations: BTreeMap<&'static str, String>,
    #[serde(rename = "startsAt")]
    starts_at: String,
    #[serde(rename = "endsAt", skip_serializing_if = "Option::is_none")]
    ends_at: Option<String>,
    #[serde(rename = "generatorURL")]
    generator_url: String,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Posted {
    /// Labels: alertname `armwatch_<check>`, check, severity, experiment, subject, value
    /// (bounded: one alert per check, experiment and subject).
    pub fn new(a: &Alert, decor: &Decor) -> Posted {
        let mut labels = BTreeMap::new();
        labels.insert("alertname", format!("armwatch_{}", a.check.as_str()));
        labels.insert("check", a.check.as_str().to_string());
        labels.insert(
            "severity",
            decor
                .severity
                .get(&a.check)
                .cloned()
                .unwrap_or_else(|| default_severity(a.check).to_string()),
        );
        labels.insert("subject", a.subject.clone());
        if let Some(e) = &a.experiment {
            labels.insert("experiment", e.clone());
        }
        if let Some(v) = &a.value {
            labels.insert("value", v.clone());
        }
        let fill = |t: &String| {
            t.replace("{check}", a.check.as_str())
                .replace("{experiment}", a.experiment.as_deref().unwrap_or(""))
                .replace("{subject}", &a.subject)
        };
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
        if let Some(t) = &decor.runbook_url {
            annotations.insert("runbook_url", fill(t));
        }
        if let Some(t) = &decor.dashboard_url {
            annotations.insert("dashboard_url", fill(t));
        }
        let base = decor.external_url.trim_end_matches('/');
        let generator_url = match &a.experiment {
            Some(e) => format!("{base}/api/v1/experiments/{}", url_path(e)),
            None => format!("{base}/api/v1/report"),
        };
        Posted {
            labels,
            annotations,
            starts_at: now(),
            ends_at: None,
            generator_url,
        }
    }

    /// Whether `other` is the same alert (same labels).
    fn same(&self, other: &Posted) -> bool {
        self.labels == other.labels
    }
}

/// `s` as one URL path segment (percent-encoded beyond the unreserved characters).
fn url_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The HTTP client of the webhooks: a 10 s timeout per request, `ca` (PEM) trusted besides the
/// system's roots.
pub fn client(ca: Option<&[u8]>) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    for c in ca
        .and_then(|pem| reqwest::Certificate::from_pem_bundle(pem).ok())
        .into_iter()
        .flatten()
    {
        builder = builder.add_root_certificate(c);
    }
    builder.build()
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

/// One webhook sink.
pub(super) struct Target {
    pub name: String,
    pub url: String,
    pub client: reqwest::Client,
    pub resend: Duration,
    pub decor: Decor,
}

/// Deliver the alerts of `q` to one Alertmanager: new ones at once (with every other alert
/// waiting, in one post), retried with backoff until delivered; the active set re-posted on
/// the resend cadence; at shutdown, what is still undelivered after the grace is counted as
/// dropped.
pub(super) async fn sink(t: Target, mut q: mpsc::Receiver<Arc<Delivery>>, shared: Shared) {
    let mut active: Vec<Posted> = Vec::new();
    let mut pending: Vec<Arc<Delivery>> = Vec::new();
    let mut resend = tokio::time::interval(t.resend);
    resend.tick().await;
    let mut closed = false;
    loop {
        if pending.is_empty() {
            if closed {
                return;
            }
            tokio::select! {
                d = q.recv() => match d {
                    Some(d) => pending.push(d),
                    None => closed = true,
                },
                _ = resend.tick() => {
                    if !active.is_empty() {
                        let ok = post(&t.client, &t.url, &active).await;
                        shared.count(&t.name, ok);
                    }
                }
            }
            continue;
        }
        while let Ok(d) = q.try_recv() {
            pending.push(d);
        }
        // this batch: the new alerts join the active set, resolutions leave it
        let mut batch: Vec<Posted> = Vec::new();
        for d in &pending {
            let mut p = Posted::new(&d.out.alert, &t.decor);
            if d.out.resolved {
                p.ends_at = Some(now());
                if let Some(i) = active.iter().position(|a| a.same(&p)) {
                    p.starts_at = active.remove(i).starts_at;
                }
            } else if let Some(a) = active.iter().find(|a| a.same(&p)) {
                p.starts_at = a.starts_at.clone();
            } else {
                active.push(p.clone());
            }
            batch.push(p);
        }
        if shared
            .retry(&t.name, || post(&t.client, &t.url, &batch))
            .await
        {
            for d in pending.drain(..) {
                d.settle(true, &shared.acks);
            }
        } else {
            shared.give_up(&t.name, std::mem::take(&mut pending), &mut q);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(check: Check, experiment: Option<&str>) -> Alert {
        Alert::sample(check, experiment, "tier", Some("pro"))
    }

    #[test]
    fn labels_annotations_and_generator_url() {
        let mut decor = Decor {
            runbook_url: Some("https://runbooks.example/armwatch#{check}".into()),
            dashboard_url: Some(
                "https://grafana.example/d/armwatch?var-experiment={experiment}".into(),
            ),
            external_url: "http://armwatch.monitoring:9898/".into(),
            ..Decor::default()
        };
        decor.severity.insert(Check::Srm, "page".into());
        let p = serde_json::to_value(Posted::new(
            &alert(Check::InputDivergence, Some("prompt variant")),
            &decor,
        ))
        .unwrap();
        assert_eq!(p["labels"]["severity"], "critical");
        assert_eq!(
            p["annotations"]["runbook_url"],
            "https://runbooks.example/armwatch#input_divergence"
        );
        assert_eq!(
            p["annotations"]["dashboard_url"],
            "https://grafana.example/d/armwatch?var-experiment=prompt variant"
        );
        assert_eq!(
            p["generatorURL"],
            "http://armwatch.monitoring:9898/api/v1/experiments/prompt%20variant"
        );
        assert!(p.get("endsAt").is_none());
        let srm = serde_json::to_value(Posted::new(&alert(Check::Srm, Some("e")), &decor)).unwrap();
        assert_eq!(srm["labels"]["severity"], "page", "configured per check");
        let judge = serde_json::to_value(Posted::new(&alert(Check::JudgeScoreShift, None), &decor))
            .unwrap();
        assert_eq!(judge["labels"]["severity"], "warning");
        assert_eq!(
            judge["generatorURL"],
            "http://armwatch.monitoring:9898/api/v1/report"
        );
    }
}
