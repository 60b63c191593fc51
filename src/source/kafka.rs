//! The Kafka source: a consumer-group member on a dedicated thread (`BaseConsumer::poll`, no
//! async hop per message), storing offsets only after a message has been processed.

use crate::config::KafkaSettings;
use crate::daemon::{DeadLetter, EngineLoop, RateLimiter};
use crate::event::RejectReason;
use crate::http::Shared;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Consumer callbacks: readiness (straight into the HTTP state) on assignment, lag from
/// statistics.
pub struct Context {
    shared: Arc<Shared>,
    lag: Arc<Mutex<Vec<(String, i32, i64)>>>,
}

impl ClientContext for Context {
    fn stats(&self, s: Statistics) {
        let mut out = Vec::new();
        for (topic, t) in &s.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    out.push((topic.clone(), *p, part.consumer_lag));
                }
            }
        }
        if let Ok(mut l) = self.lag.lock() {
            *l = out;
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for Context {
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        match r {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                self.shared.ready.store(true, Ordering::Relaxed);
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked");
                self.shared.ready.store(false, Ordering::Relaxed);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// librdkafka settings shared by the consumer and producers: the brokers, then `defaults` of
/// the client at hand, then the user's options last (they win).
pub fn client_config(k: &KafkaSettings, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    for (key, v) in defaults {
        c.set(*key, *v);
    }
    for (key, v) in &k.options {
        c.set(key, v);
    }
    c
}

/// Create the consumer (subscribed) for `k`.
pub fn consumer(
    k: &KafkaSettings,
    shared: Arc<Shared>,
    lag: Arc<Mutex<Vec<(String, i32, i64)>>>,
) -> Result<BaseConsumer<Context>, KafkaError> {
    let c = client_config(
        k,
        &[
            ("group.id", &k.group_id),
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("statistics.interval.ms", "5000"),
            // librdkafka (2.4+) stops fetching a partition for fetch.queue.backoff.ms (1 s by
            // default) once its local queue passes queued.min.messages; a consumer that is
            // slower than the fetcher then drains the queue and sits idle for most of that
            // second (measured: 0.14x the bare consumer's rate). A short backoff keeps the
            // queue fed; the thresholds still bound its memory.
            ("fetch.queue.backoff.ms", "10"),
        ],
    );
    let consumer: BaseConsumer<Context> = c.create_with_context(Context { shared, lag })?;
    let topics: Vec<&str> = k.topics.iter().map(|t| t.as_str()).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// Rejected messages to a dead-letter topic, with the reason in a header.
pub struct KafkaDeadLetter {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
}

impl KafkaDeadLetter {
    /// A producer for `topic`.
    pub fn new(k: &KafkaSettings, topic: &str) -> Result<KafkaDeadLetter, KafkaError> {
        Ok(KafkaDeadLetter {
            producer: client_config(k, &[]).create()?,
            topic: topic.to_string(),
        })
    }
}

impl DeadLetter for KafkaDeadLetter {
    fn forward(&mut self, payload: &[u8], reason: RejectReason) -> bool {
        let headers = OwnedHeaders::new().insert(Header {
            key: "armwatch-reject-reason",
            value: Some(reason.as_str()),
        });
        let rec = BaseRecord::<(), [u8]>::to(&self.topic)
            .payload(payload)
            .headers(headers);
        self.producer.send(rec).is_ok()
    }

    fn flush(&mut self) {
        use rdkafka::producer::Producer;
        if let Err(e) = self.producer.flush(Duration::from_secs(10)) {
            tracing::warn!(error = %e, "dead letters not all delivered at shutdown");
        }
    }
}

/// Messages consumed and the time since the first: the drain rate, logged at the end.
#[derive(Default)]
struct Drain {
    messages: u64,
    first: Option<std::time::Instant>,
}

impl Drain {
    #[inline]
    fn message(&mut self) {
        if self.messages == 0 {
            self.first = Some(std::time::Instant::now());
        }
        self.messages += 1;
    }

    fn log(&self, lp: &EngineLoop) {
        let secs = self.first.map_or(0.0, |t| t.elapsed().as_secs_f64());
        // the engine's share of the wall time, from the sampled processing histogram, and
        // the publishes (report, metrics) that shared the engine thread with it
        let (busy, publishes, publish_mean) = lp
            .metrics()
            .lock()
            .map(|m| {
                let (n, sum) = (
                    m.processing.get_sample_count(),
                    m.processing.get_sample_sum(),
                );
                let busy = if n == 0 || secs == 0.0 {
                    0.0
                } else {
                    sum / n as f64 * self.messages as f64 / secs
                };
                let p = m.publish_seconds.get_sample_count();
                let mean = m.publish_seconds.get_sample_sum() / p.max(1) as f64;
                (busy, p, mean)
            })
            .unwrap_or_default();
        tracing::info!(
            messages = self.messages,
            seconds = secs,
            messages_per_second = self.messages as f64 / secs.max(1e-9),
            engine_busy_share = busy,
            publishes,
            publish_mean_seconds = publish_mean,
            "drained"
        );
    }
}

/// Consume until `stop` is set (or `max_messages` have been consumed). Runs on its own thread.
pub fn consume(
    consumer: BaseConsumer<Context>,
    mut lp: EngineLoop,
    stop: Arc<AtomicBool>,
    lag: Arc<Mutex<Vec<(String, i32, i64)>>>,
    max_messages: Option<u64>,
) -> EngineLoop {
    let mut errors = RateLimiter::new(1);
    let mut drain = Drain::default();
    let mut polls = 0u64;
    while !stop.load(Ordering::Relaxed) && max_messages.is_none_or(|m| drain.messages < m) {
        let polled = consumer.poll(Duration::from_millis(100));
        let idle = polled.is_none();
        polls = polls.wrapping_add(1);
        match polled {
            Some(Ok(msg)) => {
                drain.message();
                let _ = lp.on_message(msg.payload());
                if let Err(e) = consumer.store_offset_from_message(&msg) {
                    if errors.allow().is_some() {
                        tracing::warn!(error = %e, "could not store offset");
                    }
                }
            }
            Some(Err(e)) if errors.allow().is_some() => tracing::warn!(error = %e, "consume error"),
            Some(Err(_)) => {}
            None => {}
        }
        // the clock is read once per 64 messages (or when idle), not per message
        if (idle || polls & 63 == 0) && lp.publish_due() {
            if let Ok(m) = lp.metrics().lock() {
                m.source_ready
                    .set(i64::from(lp.shared().ready.load(Ordering::Relaxed)));
                if let Ok(l) = lag.lock() {
                    for (t, p, n) in l.iter() {
                        m.consumer_lag
                            .with_label_values(&[t, &p.to_string()])
                            .set(*n);
                    }
                }
            }
            lp.publish();
        }
    }
    drain.log(&lp);
    lp.publish();
    lp.flush_dead_letter();
    if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
        tracing::warn!(error = %e, "final offset commit failed");
    }
    lp
}
