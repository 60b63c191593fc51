//! Alert sinks: the log (always), an Alertmanager v2 webhook, a Kafka topic. They run on their
//! own task, fed through a bounded channel: a slow sink never stalls the engine.

pub mod alertmanager;

use crate::check::Alert;
use crate::metrics::Metrics;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Where alerts go besides the log.
pub struct SinkConfig {
    /// Alertmanager v2 `.../api/v2/alerts` URL (http or https).
    pub webhook: Option<String>,
    /// Extra CA certificates (PEM) the webhook's certificate may chain to.
    pub webhook_ca: Option<Vec<u8>>,
    /// Kafka producer and topic.
    pub kafka: Option<(FutureProducer<crate::source::client_log::Quiet>, String)>,
    /// Re-send cadence for Alertmanager (active alerts expire there unless refreshed).
    pub resend: Duration,
    /// Also print each alert as one JSON line on stdout (the demo).
    pub stdout: bool,
    /// Where delivered alerts are acknowledged (to the engine thread, which records them in
    /// the checkpointed state).
    pub acks: Option<std::sync::mpsc::Sender<(usize, usize)>>,
}

/// An alert on its way to the sinks, with what to acknowledge once every sink has taken it:
/// `(partition index, alert index)` for alerts whose delivery the checkpointed state records.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The alert.
    pub alert: Alert,
    /// Acknowledged on `SinkConfig::acks` once delivered.
    pub ack: Option<(usize, usize)>,
}

/// Deliver alerts from `rx` until the channel closes.
pub async fn run(mut rx: mpsc::Receiver<Outgoing>, cfg: SinkConfig, metrics: Arc<Mutex<Metrics>>) {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    for ca in cfg
        .webhook_ca
        .as_deref()
        .and_then(|pem| reqwest::Certificate::from_pem_bundle(pem).ok())
        .into_iter()
        .flatten()
    {
        builder = builder.add_root_certificate(ca);
    }
    let client = match builder.build() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(error = %e, "the webhook client cannot be built: alerts go to the other sinks only");
            None
        }
    };
    let mut active: Vec<alertmanager::Posted> = Vec::new();
    let mut resend = tokio::time::interval(cfg.resend);
    resend.tick().await;
    let count = |sink: &str, ok: bool| {
        if let Ok(m) = metrics.lock() {
            m.sink_deliveries
                .with_label_values(&[sink, if ok { "ok" } else { "error" }])
                .inc();
        }
    };
    loop {
        tokio::select! {
            a = rx.recv() => {
                let Some(Outgoing { alert, ack }) = a else { break };
                // acknowledged unless a sink that cannot retry later failed (the webhook's
                // alerts are re-sent on the resend cadence)
                let mut delivered = true;
                let json = serde_json::to_string(&alert).unwrap_or_default();
                tracing::warn!(target: "armwatch::alert", check = alert.check.as_str(), experiment = alert.experiment.as_deref().unwrap_or(""),
                    subject = alert.subject.as_str(), value = alert.value.as_deref().unwrap_or(""), evidence = alert.evidence,
                    magnitude = alert.magnitude, first_event = alert.first_event, "{}", alert.message.escape_debug());
                count("log", true);
                if cfg.stdout {
                    println!("{json}");
                }
                if let Some((producer, topic)) = &cfg.kafka {
                    let key = alert.experiment.clone().unwrap_or_default();
                    let rec = FutureRecord::to(topic).key(&key).payload(&json);
                    let ok = producer.send(rec, Duration::from_secs(5)).await.is_ok();
                    if !ok {
                        tracing::warn!(topic, "alert not delivered to Kafka");
                        delivered = false;
                    }
                    count("kafka", ok);
                }
                if let (Some(url), Some(client)) = (&cfg.webhook, &client) {
                    active.push(alertmanager::Posted::new(&alert));
                    let ok = alertmanager::post(client, url, &active[active.len() - 1..]).await;
                    count("alertmanager", ok);
                }
                if let (Some(ack), Some(acks), true) = (ack, &cfg.acks, delivered) {
                    let _ = acks.send(ack);
                }
            }
            _ = resend.tick() => {
                if let (Some(url), Some(client)) = (&cfg.webhook, &client) {
                    if !active.is_empty() {
                        let ok = alertmanager::post(client, url, &active).await;
                        count("alertmanager", ok);
                    }
                }
            }
        }
    }
}
