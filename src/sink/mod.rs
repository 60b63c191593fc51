//! Alert sinks: the log and stdout (inline, they cannot fail), a Kafka topic and any number of
//! Alertmanager v2 webhooks. Each delivering sink runs on a task of its own behind a bounded
//! queue (`alerts.queue_capacity`), so a hanging or failing one holds back nobody but itself;
//! it retries with exponential backoff (1 s doubling to 60 s), and at shutdown gets
//! [`SHUTDOWN_GRACE`] to finish. Nothing is lost silently: an alert that a queue cannot take,
//! or that a sink still holds at shutdown, is counted in `armwatch_alerts_dropped_total{sink,
//! reason}` and logged, and it is not acknowledged, so with checkpoints it is delivered again
//! after a restart (the checkpointed state is the replayable queue).

pub mod alertmanager;

use crate::check::Alert;
use crate::metrics::Metrics;
use crate::source::client_log::Quiet;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// How long the sinks may keep retrying once the daemon stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// First retry delay; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where alerts go besides the log.
pub struct SinkConfig {
    /// Alertmanager v2 `.../api/v2/alerts` URLs (http or https), each a sink of its own.
    pub webhooks: Vec<String>,
    /// Extra CA certificates (PEM) the webhooks' certificates may chain to.
    pub webhook_ca: Option<Vec<u8>>,
    /// Kafka producer and topic.
    pub kafka: Option<(FutureProducer<Quiet>, String)>,
    /// Re-send cadence for Alertmanager (active alerts expire there unless refreshed).
    pub resend: Duration,
    /// Also print each alert as one JSON line on stdout (the demo).
    pub stdout: bool,
    /// Where delivered alerts are acknowledged (to the engine thread, which records them in
    /// the checkpointed state).
    pub acks: Option<std::sync::mpsc::Sender<(usize, usize)>>,
    /// Alerts each delivering sink may hold (queued or being retried).
    pub queue_capacity: usize,
    /// Labels and annotations of the Alertmanager alerts.
    pub decor: alertmanager::Decor,
}

/// An alert on its way to the sinks, with what to acknowledge once every sink has taken it:
/// `(partition index, alert index)` for alerts whose delivery the checkpointed state records.
/// `resolved`: the alert ends (its experiment left the configuration): Alertmanager gets it
/// with `endsAt`, the Kafka topic with `"resolved": true`.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The alert.
    pub alert: Alert,
    /// Acknowledged on `SinkConfig::acks` once delivered.
    pub ack: Option<(usize, usize)>,
    /// A resolution, not a new alert.
    pub resolved: bool,
}

/// One alert on its way through every delivering sink: acknowledged when the last one has
/// delivered it, never when any lost it.
struct Delivery {
    out: Outgoing,
    left: AtomicUsize,
    lost: AtomicBool,
}

impl Delivery {
    /// One sink is done with it.
    fn settle(&self, delivered: bool, acks: &Option<std::sync::mpsc::Sender<(usize, usize)>>) {
        if !delivered {
            self.lost.store(true, Ordering::Relaxed);
        }
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 && !self.lost.load(Ordering::Relaxed) {
            if let (Some(ack), Some(acks)) = (self.out.ack, acks) {
                let _ = acks.send(ack);
            }
        }
    }
}

/// What every sink task shares.
#[derive(Clone)]
struct Shared {
    metrics: Arc<Mutex<Metrics>>,
    acks: Option<std::sync::mpsc::Sender<(usize, usize)>>,
    /// Set when the daemon stops: the time by which the sinks give up retrying.
    deadline: watch::Receiver<Option<Instant>>,
}

impl Shared {
    fn count(&self, sink: &str, ok: bool) {
        if let Ok(m) = self.metrics.lock() {
            m.sink_deliveries
                .with_label_values(&[sink, if ok { "ok" } else { "error" }])
                .inc();
        }
    }

    fn dropped(&self, sink: &str, reason: &str, n: usize) {
        if let Ok(m) = self.metrics.lock() {
            m.alerts_dropped
                .with_label_values(&[sink, reason])
                .inc_by(n as u64);
        }
    }

    /// Try `attempt` until it delivers, each try counted in the deliveries of `sink`, waiting
    /// 1 s doubling to 60 s between tries. False once the shutdown grace is over.
    async fn retry<F: std::future::Future<Output = bool>>(
        &self,
        sink: &str,
        mut attempt: impl FnMut() -> F,
    ) -> bool {
        let mut wait = FIRST_BACKOFF;
        loop {
            let ok = attempt().await;
            self.count(sink, ok);
            if ok {
                return true;
            }
            if self.out_of_time() {
                return false;
            }
            self.pause(wait).await;
            wait = (wait * 2).min(MAX_BACKOFF);
        }
    }

    /// The shutdown grace is over with `undelivered` and whatever `q` still holds not
    /// delivered by `sink`: counted as dropped, logged, never acknowledged.
    fn give_up(
        &self,
        sink: &str,
        mut undelivered: Vec<Arc<Delivery>>,
        q: &mut mpsc::Receiver<Arc<Delivery>>,
    ) {
        while let Ok(d) = q.try_recv() {
            undelivered.push(d);
        }
        self.dropped(sink, "shutdown", undelivered.len());
        tracing::error!(sink, alerts = undelivered.len(),
            "alerts not delivered before shutdown (not acknowledged: delivered again after a restart with checkpoints)");
        for d in undelivered {
            d.settle(false, &self.acks);
        }
    }

    /// Past the shutdown deadline.
    fn out_of_time(&self) -> bool {
        self.deadline.borrow().is_some_and(|d| Instant::now() >= d)
    }

    /// Wait `d`, or less when the shutdown deadline comes first.
    async fn pause(&self, d: Duration) {
        let until = match *self.deadline.borrow() {
            Some(deadline) => deadline.min(Instant::now() + d),
            None => Instant::now() + d,
        };
        let mut deadline = self.deadline.clone();
        tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => {}
            _ = deadline.changed() => {}
        }
    }
}

/// A delivering sink's queue.
struct Queue {
    name: String,
    tx: mpsc::Sender<Arc<Delivery>>,
}

/// Deliver alerts from `rx` until the channel closes, then give the sinks [`SHUTDOWN_GRACE`].
pub async fn run(mut rx: mpsc::Receiver<Outgoing>, cfg: SinkConfig, metrics: Arc<Mutex<Metrics>>) {
    let (set_deadline, deadline) = watch::channel(None);
    let shared = Shared {
        metrics,
        acks: cfg.acks.clone(),
        deadline,
    };
    let capacity = cfg.queue_capacity.max(1);
    let mut queues = Vec::new();
    let mut tasks = Vec::new();
    if let Some((producer, topic)) = cfg.kafka {
        let (tx, q) = mpsc::channel(capacity);
        queues.push(Queue {
            name: "kafka".into(),
            tx,
        });
        tasks.push(tokio::spawn(kafka_sink(q, producer, topic, shared.clone())));
    }
    if !cfg.webhooks.is_empty() {
        match alertmanager::client(cfg.webhook_ca.as_deref()) {
            Ok(client) => {
                for (i, url) in cfg.webhooks.iter().enumerate() {
                    let name = if i == 0 {
                        "alertmanager".to_string()
                    } else {
                        format!("alertmanager-{i}")
                    };
                    let (tx, q) = mpsc::channel(capacity);
                    queues.push(Queue {
                        name: name.clone(),
                        tx,
                    });
                    tasks.push(tokio::spawn(alertmanager::sink(
                        alertmanager::Target {
                            name,
                            url: url.clone(),
                            client: client.clone(),
                            resend: cfg.resend,
                            decor: cfg.decor.clone(),
                        },
                        q,
                        shared.clone(),
                    )));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the webhook client cannot be built: alerts go to the other sinks only");
            }
        }
    }
    let mut full_log = crate::daemon::RateLimiter::new(1);
    while let Some(out) = rx.recv().await {
        log_alert(&out);
        if cfg.stdout && !out.resolved {
            println!("{}", serde_json::to_string(&out.alert).unwrap_or_default());
        }
        shared.count("log", true);
        let d = Arc::new(Delivery {
            out,
            left: AtomicUsize::new(queues.len() + 1),
            lost: AtomicBool::new(false),
        });
        for q in &queues {
            if q.tx.try_send(d.clone()).is_err() {
                shared.dropped(&q.name, "queue_full", 1);
                if let Some(suppressed) = full_log.allow() {
                    tracing::error!(sink = %q.name, capacity, suppressed, check = d.out.alert.check.as_str(),
                        "alert queue full: alert not delivered to this sink (not acknowledged: delivered again after a restart with checkpoints)");
                }
                d.settle(false, &shared.acks);
            }
        }
        // the log's share
        d.settle(true, &shared.acks);
    }
    let _ = set_deadline.send(Some(Instant::now() + SHUTDOWN_GRACE));
    drop(queues);
    for t in tasks {
        let _ = t.await;
    }
}

/// The log line of an alert (strings from events escaped).
fn log_alert(out: &Outgoing) {
    let a = &out.alert;
    let (experiment, value) = (
        a.experiment.as_deref().unwrap_or(""),
        a.value.as_deref().unwrap_or(""),
    );
    if out.resolved {
        tracing::info!(target: "armwatch::alert", check = a.check.as_str(), experiment, subject = a.subject.as_str(), value, "resolved: {}", a.message.escape_debug());
    } else {
        tracing::warn!(target: "armwatch::alert", check = a.check.as_str(), experiment, subject = a.subject.as_str(), value, evidence = a.evidence,
            magnitude = a.magnitude, first_event = a.first_event, "{}", a.message.escape_debug());
    }
}

/// The Kafka sink: each alert as JSON keyed by its experiment, retried with backoff.
async fn kafka_sink(
    mut q: mpsc::Receiver<Arc<Delivery>>,
    producer: FutureProducer<Quiet>,
    topic: String,
    shared: Shared,
) {
    while let Some(d) = q.recv().await {
        let a = &d.out.alert;
        let mut json = serde_json::to_value(a).unwrap_or_default();
        if d.out.resolved {
            json["resolved"] = serde_json::Value::Bool(true);
        }
        let payload = json.to_string();
        let key = a.experiment.clone().unwrap_or_default();
        let (producer, topic, key, payload) = (&producer, &topic, &key, &payload);
        let delivered = shared
            .retry("kafka", || async move {
                let rec = FutureRecord::to(topic).key(key).payload(payload);
                let ok = producer.send(rec, Duration::from_secs(5)).await.is_ok();
                if !ok {
                    tracing::warn!(%topic, "alert not delivered to Kafka: retried");
                }
                ok
            })
            .await;
        if delivered {
            d.settle(true, &shared.acks);
        } else {
            shared.give_up("kafka", vec![d], &mut q);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Check;

    fn alert() -> Alert {
        Alert::sample(Check::Srm, Some("gone"), "gone", None)
    }

    /// An alert is posted and acknowledged once delivered; its resolution (the experiment left
    /// the configuration) is posted with `endsAt` and the same labels, and not acknowledged
    /// (nothing to record).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resolution_posts_ends_at_and_delivery_is_acknowledged() {
        let posts = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
        let seen = posts.clone();
        let app = axum::Router::new().route(
            "/api/v2/alerts",
            axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(v);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/v2/alerts", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let (acks_tx, acks) = std::sync::mpsc::channel();
        let (tx, rx) = mpsc::channel(16);
        let metrics = Arc::new(Mutex::new(Metrics::new(10)));
        let cfg = SinkConfig {
            webhooks: vec![url],
            webhook_ca: None,
            kafka: None,
            resend: Duration::from_secs(3600),
            stdout: false,
            acks: Some(acks_tx),
            queue_capacity: 8,
            decor: alertmanager::Decor {
                external_url: "http://armwatch:9898".into(),
                ..Default::default()
            },
        };
        let run = tokio::spawn(run(rx, cfg, metrics));
        tx.send(Outgoing {
            alert: alert(),
            ack: Some((0, 0)),
            resolved: false,
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        tx.send(Outgoing {
            alert: alert(),
            ack: None,
            resolved: true,
        })
        .await
        .unwrap();
        drop(tx);
        run.await.unwrap();
        assert_eq!(acks.try_iter().collect::<Vec<_>>(), vec![(0, 0)]);
        let posts = posts.lock().unwrap().clone();
        assert_eq!(posts.len(), 2, "{posts:?}");
        let (fired, resolved) = (&posts[0][0], &posts[1][0]);
        assert!(fired.get("endsAt").is_none());
        assert!(resolved["endsAt"].is_string());
        assert_eq!(fired["labels"], resolved["labels"]);
        assert_eq!(fired["startsAt"], resolved["startsAt"]);
    }
}
