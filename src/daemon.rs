//! The IO shell around one [`Engine`]: feeds it messages, forwards new alerts to the sink task,
//! logs rejections at a bounded rate, and publishes metrics and the report at a fixed cadence.
//! Kafka (`run`) and the simulator (`demo`) both drive it.

use crate::detect::Alert;
use crate::engine::Engine;
use crate::event::{Event, Kind, RejectReason};
use crate::http::Shared;
use crate::metrics::Metrics;
use prometheus::Histogram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// At most `per_second` log lines per second; the rest are counted.
pub struct RateLimiter {
    per_second: u32,
    window: Instant,
    used: u32,
    suppressed: u64,
}

impl RateLimiter {
    /// A limiter allowing `per_second` events per second.
    pub fn new(per_second: u32) -> RateLimiter {
        RateLimiter {
            per_second,
            window: Instant::now(),
            used: 0,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last allowed one)` when this one may be logged.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.used = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Something that forwards rejected messages (the dead-letter topic).
pub trait DeadLetter {
    /// Forward `payload` rejected for `reason`; false when it could not be queued.
    fn forward(&mut self, payload: &[u8], reason: RejectReason) -> bool;

    /// Deliver what is queued (at shutdown).
    fn flush(&mut self) {}
}

/// The engine and everything it reports to.
pub struct EngineLoop {
    engine: Engine,
    metrics: Arc<Mutex<Metrics>>,
    processing: Histogram,
    shared: Arc<Shared>,
    alerts: mpsc::Sender<Alert>,
    reject_log: RateLimiter,
    dead_letter: Option<Box<dyn DeadLetter + Send>>,
    publish_every: Duration,
    last_publish: Instant,
    n: u64,
    /// Counted here and added to the metrics when they are published, so that a flood of bad
    /// messages takes no lock per message: rejected-log lines suppressed, dead letters
    /// queued, dead letters dropped.
    pending: [u64; 3],
}

impl EngineLoop {
    /// Wire an engine to its outputs.
    pub fn new(
        engine: Engine,
        metrics: Arc<Mutex<Metrics>>,
        shared: Arc<Shared>,
        alerts: mpsc::Sender<Alert>,
        rejected_log_per_second: u32,
        dead_letter: Option<Box<dyn DeadLetter + Send>>,
    ) -> EngineLoop {
        let processing = metrics
            .lock()
            .map(|m| m.processing.clone())
            .expect("metrics lock is not poisoned at startup");
        EngineLoop {
            engine,
            metrics,
            processing,
            shared,
            alerts,
            reject_log: RateLimiter::new(rejected_log_per_second),
            dead_letter,
            publish_every: Duration::from_millis(500),
            last_publish: Instant::now(),
            n: 0,
            pending: [0; 3],
        }
    }

    /// Process one message (`None`: a message without payload).
    #[inline]
    pub fn on_message(&mut self, payload: Option<&[u8]>) -> Result<Kind, RejectReason> {
        self.handle(payload, |engine| match payload {
            Some(p) => engine.process(p),
            None => {
                engine.count_rejected(RejectReason::Empty);
                Err(RejectReason::Empty)
            }
        })
    }

    /// [`Self::on_message`] for a message already decoded (on the consumer thread): `payload`
    /// is its bytes, for the dead-letter topic and the log when it is rejected.
    pub fn on_decoded(
        &mut self,
        payload: &[u8],
        decoded: Result<Event<'_>, RejectReason>,
    ) -> Result<Kind, RejectReason> {
        self.handle(Some(payload), |engine| engine.process_decoded(decoded))
    }

    #[inline]
    fn handle(
        &mut self,
        payload: Option<&[u8]>,
        process: impl FnOnce(&mut Engine) -> Result<Kind, RejectReason>,
    ) -> Result<Kind, RejectReason> {
        let timer = (self.n & 63 == 0).then(Instant::now);
        self.n += 1;
        let res = process(&mut self.engine);
        if let Some(t) = timer {
            self.processing.observe(t.elapsed().as_secs_f64());
        }
        if let Err(reason) = res {
            self.rejected(payload.unwrap_or_default(), reason);
        }
        for a in self.engine.take_new_alerts() {
            if self.alerts.try_send(a.clone()).is_err() {
                tracing::error!(
                    check = a.check.as_str(),
                    "alert channel full: alert kept in the report but not sent to sinks"
                );
            }
        }
        res
    }

    fn rejected(&mut self, payload: &[u8], reason: RejectReason) {
        if let Some(suppressed) = self.reject_log.allow() {
            let preview = String::from_utf8_lossy(&payload[..payload.len().min(160)]);
            tracing::warn!(reason = reason.as_str(), suppressed_since_last = suppressed, bytes = payload.len(), preview = %preview, "rejected message");
        } else {
            self.pending[0] += 1;
        }
        if let Some(dl) = &mut self.dead_letter {
            let ok = dl.forward(payload, reason);
            self.pending[if ok { 1 } else { 2 }] += 1;
        }
    }

    /// Take a reloaded configuration: the engine continues from its own state under the new
    /// settings, reconciled as a restart from a snapshot would be (experiments declared anew or
    /// differently restart, the rest keep their statistics), the state moved, not copied.
    /// Settings that only a restart applies (Kafka, HTTP, logging) are not read here.
    pub fn reconfigure(&mut self, settings: &crate::config::Settings) {
        let old = std::mem::replace(&mut self.engine, Engine::new(settings));
        self.engine = old.reconfigured(settings);
        tracing::info!(
            experiments = self.engine.experiments().len(),
            "configuration reloaded"
        );
        self.count_reload("applied");
    }

    /// Count a configuration reload by result.
    pub fn count_reload(&self, result: &str) {
        if let Ok(m) = self.metrics.lock() {
            m.config_reloads.with_label_values(&[result]).inc();
        }
    }

    /// Whether the publish cadence is due.
    #[inline]
    pub fn publish_due(&self) -> bool {
        self.last_publish.elapsed() >= self.publish_every
    }

    /// Publish metrics and the report now: the report is built once, here; the HTTP handlers
    /// serialize it at most once per publish and serve the same bytes to every client.
    pub fn publish(&mut self) {
        self.last_publish = Instant::now();
        self.engine.count_memory();
        let report = self.engine.report();
        let text = match self.metrics.lock() {
            Ok(mut m) => {
                let [suppressed, queued, dropped] = std::mem::take(&mut self.pending);
                m.rejected_log_suppressed.inc_by(suppressed);
                m.dead_letter.with_label_values(&["queued"]).inc_by(queued);
                m.dead_letter
                    .with_label_values(&["dropped"])
                    .inc_by(dropped);
                m.publish(&self.engine, &report);
                // the cost of this publish lands in the next scrape
                m.publish_seconds
                    .observe(self.last_publish.elapsed().as_secs_f64());
                m.encode()
            }
            Err(_) => String::new(),
        };
        self.shared.set(text.into_bytes(), report);
    }

    /// Deliver queued dead letters (at shutdown).
    pub fn flush_dead_letter(&mut self) {
        if let Some(dl) = &mut self.dead_letter {
            dl.flush();
        }
    }

    /// The engine (for the final report).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Shared state for the HTTP handlers.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Mutex<Metrics>> {
        &self.metrics
    }
}
