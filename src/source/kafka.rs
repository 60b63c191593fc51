//! The Kafka source: a consumer-group member on a dedicated thread (`BaseConsumer::poll`, no
//! async hop per message), storing offsets only after a message has been processed.

use super::batch::Batch;
use super::Source;
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

/// The consumer as a [`Source`]: polls into batches, marks each message's offset, and stores
/// the offsets of a batch once it has been applied (at-least-once); commits at the end.
pub struct KafkaSource {
    consumer: BaseConsumer<Context>,
    /// Topic names by stream index (the batches' marks).
    topics: Vec<String>,
    errors: RateLimiter,
    polled: u64,
    max_messages: Option<u64>,
}

impl KafkaSource {
    /// Poll `consumer` (at most `max_messages`, then end).
    pub fn new(consumer: BaseConsumer<Context>, max_messages: Option<u64>) -> KafkaSource {
        KafkaSource {
            consumer,
            topics: Vec::new(),
            errors: RateLimiter::new(1),
            polled: 0,
            max_messages,
        }
    }
}

/// The index of `topic` in `topics` (added when new).
fn stream(topics: &mut Vec<String>, topic: &str) -> usize {
    match topics.iter().position(|t| t == topic) {
        Some(t) => t,
        None => {
            topics.push(topic.to_string());
            topics.len() - 1
        }
    }
}

impl Source for KafkaSource {
    fn fill(&mut self, batch: &mut Batch) -> std::io::Result<bool> {
        loop {
            if self.max_messages.is_some_and(|m| self.polled >= m) {
                return Ok(false);
            }
            // block only while there is nothing to hand over
            let wait = if batch.is_empty() {
                Duration::from_millis(100)
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(wait) {
                Some(Ok(msg)) => {
                    self.polled += 1;
                    batch.push(msg.payload());
                    let (partition, offset) = (msg.partition(), msg.offset());
                    let stream = stream(&mut self.topics, msg.topic());
                    batch.mark(stream, partition, offset);
                    if batch.full() {
                        return Ok(true);
                    }
                }
                Some(Err(e)) => {
                    if self.errors.allow().is_some() {
                        tracing::warn!(error = %e, "consume error");
                    }
                }
                // the queue ran dry: hand over what there is (or nothing, so that the loop
                // looks at its stop flag)
                None => return Ok(true),
            }
        }
    }

    fn done(&mut self, batch: &Batch) {
        for &(t, p, o) in batch.marks() {
            let Some(topic) = self.topics.get(t) else {
                continue;
            };
            if let Err(e) = self.consumer.store_offset(topic, p, o) {
                if self.errors.allow().is_some() {
                    tracing::warn!(error = %e, "could not store offset");
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Err(e) = self
            .consumer
            .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        {
            tracing::warn!(error = %e, "final offset commit failed");
        }
    }
}

/// Consume until `stop` is set (or `max_messages` have been consumed): the consumer thread
/// polls, copies, decodes and stores offsets, the engine thread applies ([`super::drive`])
/// and takes the last of `reloads` (valid configurations) before each publish.
pub fn consume(
    consumer: BaseConsumer<Context>,
    lp: EngineLoop,
    stop: Arc<AtomicBool>,
    lag: Arc<Mutex<Vec<(String, i32, i64)>>>,
    max_messages: Option<u64>,
    reloads: std::sync::mpsc::Receiver<crate::config::Settings>,
) -> std::io::Result<EngineLoop> {
    super::drive(
        KafkaSource::new(consumer, max_messages),
        lp,
        &stop,
        move |lp| {
            if let Some(settings) = reloads.try_iter().last() {
                lp.reconfigure(&settings);
            }
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
        },
    )
}
