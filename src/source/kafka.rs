//! The Kafka source: a consumer-group member on a dedicated thread (`BaseConsumer::poll`, no
//! async hop per message), storing offsets only after a message has been processed.

use crate::config::KafkaSettings;
use crate::daemon::{DeadLetter, EngineLoop, RateLimiter};
use crate::event::{Decoded, Inputs, Limits, RejectReason};
use crate::http::Shared;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
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
    /// The process's CPU seconds at the first message.
    first_cpu: Option<f64>,
}

impl Drain {
    /// Count `n` messages about to be processed.
    fn messages(&mut self, n: usize) {
        if self.first.is_none() {
            self.first = Some(std::time::Instant::now());
            self.first_cpu = crate::process::cpu_seconds("self");
        }
        self.messages += n as u64;
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
        // every thread's (consumer, librdkafka, engine, HTTP): the cost of a message
        let cpu = crate::process::cpu_seconds("self")
            .zip(self.first_cpu)
            .map_or(f64::NAN, |(now, first)| now - first);
        tracing::info!(
            messages = self.messages,
            seconds = secs,
            cpu_seconds = cpu,
            messages_per_second = self.messages as f64 / secs.max(1e-9),
            engine_busy_share = busy,
            publishes,
            publish_mean_seconds = publish_mean,
            "drained"
        );
    }
}

/// Payloads copied out of librdkafka's buffers and decoded on the consumer thread, so that
/// the state updates and detectors run on a thread of their own while the consumer thread
/// keeps polling and decoding the next batch (a two-stage pipeline). Batches are recycled (no
/// allocation per message once warm) and come back to the consumer thread after processing,
/// which then stores the offsets they carry: a message's offset is stored only after it has
/// been processed, as before.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    /// `(start, end)` in `bytes`; `None` for a message without payload.
    spans: Vec<Option<(u32, u32)>>,
    /// The messages with a payload, decoded, in order.
    decoded: Decoded,
    /// The last offset of each (topic index, partition) in the batch.
    last: Vec<(usize, i32, i64)>,
}

/// A batch is sent at this many messages, at this many bytes, or when the queue runs dry.
const BATCH_MESSAGES: usize = 512;
const BATCH_BYTES: usize = 1 << 20;

impl Batch {
    fn push(&mut self, msg: &BorrowedMessage<'_>, topics: &mut Vec<String>) {
        self.spans.push(msg.payload().and_then(|p| {
            let start = u32::try_from(self.bytes.len()).ok()?;
            let end = u32::try_from(self.bytes.len() + p.len()).ok()?;
            self.bytes.extend_from_slice(p);
            Some((start, end))
        }));
        let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
        // partition first (an integer), the topic name only to confirm: a batch holds a few
        // partitions, and the topic list is searched only for a partition new to the batch
        if let Some(l) = self
            .last
            .iter_mut()
            .find(|(t, p, _)| *p == partition && topics[*t] == topic)
        {
            l.2 = l.2.max(offset);
            return;
        }
        let t = match topics.iter().position(|t| t == topic) {
            Some(t) => t,
            None => {
                topics.push(topic.to_string());
                topics.len() - 1
            }
        };
        self.last.push((t, partition, offset));
    }

    fn full(&self) -> bool {
        self.spans.len() >= BATCH_MESSAGES || self.bytes.len() >= BATCH_BYTES
    }

    /// Decode every message with a payload (on the consumer thread, before sending).
    fn decode(&mut self, limits: &Limits) {
        for &(a, b) in self.spans.iter().flatten() {
            self.decoded
                .push(&self.bytes, a as usize..b as usize, limits);
        }
    }

    /// Apply the batch's messages in order.
    fn apply(&self, lp: &mut EngineLoop) {
        let mut next = 0;
        for span in &self.spans {
            match span.and_then(|(a, b)| self.bytes.get(a as usize..b as usize)) {
                Some(payload) => {
                    let mut inputs = Inputs::new();
                    let ev = self.decoded.event(next, &self.bytes, &mut inputs);
                    next += 1;
                    let _ = lp.on_decoded(payload, ev);
                }
                None => {
                    let _ = lp.on_message(None);
                }
            }
        }
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
        self.decoded.clear();
        self.last.clear();
    }
}

/// Batches in flight between the two threads (bounds the copy buffers to a few MB).
const BATCHES_IN_FLIGHT: usize = 4;

/// Consume until `stop` is set (or `max_messages` have been consumed). Runs on its own thread
/// (the consumer thread: poll, copy, store offsets) and starts the engine thread, which it
/// joins before the final offset commit.
pub fn consume(
    consumer: BaseConsumer<Context>,
    lp: EngineLoop,
    stop: Arc<AtomicBool>,
    lag: Arc<Mutex<Vec<(String, i32, i64)>>>,
    max_messages: Option<u64>,
) -> std::io::Result<EngineLoop> {
    let limits = *lp.engine().decode_limits();
    let (to_engine, from_poller) = std::sync::mpsc::sync_channel::<Batch>(BATCHES_IN_FLIGHT);
    let (to_poller, from_engine) = std::sync::mpsc::channel::<Batch>();
    let engine = std::thread::Builder::new()
        .name("armwatch-engine".into())
        .spawn(move || process(lp, &from_poller, &to_poller, &lag))?;
    let mut errors = RateLimiter::new(1);
    let mut topics: Vec<String> = Vec::new();
    let mut spare: Vec<Batch> = Vec::new();
    let mut cur = Batch::default();
    let mut polled_messages = 0u64;
    let store = |b: &Batch, topics: &[String], errors: &mut RateLimiter| {
        for (t, p, o) in &b.last {
            if let Err(e) = consumer.store_offset(&topics[*t], *p, *o) {
                if errors.allow().is_some() {
                    tracing::warn!(error = %e, "could not store offset");
                }
            }
        }
    };
    while !stop.load(Ordering::Relaxed) && max_messages.is_none_or(|m| polled_messages < m) {
        while let Ok(mut b) = from_engine.try_recv() {
            store(&b, &topics, &mut errors);
            b.clear();
            spare.push(b);
        }
        // block only while there is nothing to hand over
        let wait = if cur.spans.is_empty() {
            Duration::from_millis(100)
        } else {
            Duration::ZERO
        };
        let polled = consumer.poll(wait);
        let idle = polled.is_none();
        match polled {
            Some(Ok(msg)) => {
                polled_messages += 1;
                cur.push(&msg, &mut topics);
            }
            Some(Err(e)) if errors.allow().is_some() => tracing::warn!(error = %e, "consume error"),
            Some(Err(_)) | None => {}
        }
        if cur.full() || (idle && !cur.spans.is_empty()) {
            cur.decode(&limits);
            let next = spare.pop().unwrap_or_default();
            if to_engine.send(std::mem::replace(&mut cur, next)).is_err() {
                break; // the engine thread is gone; its join below says why
            }
        }
    }
    if !cur.spans.is_empty() {
        cur.decode(&limits);
        let _ = to_engine.send(cur);
    }
    drop(to_engine);
    // the engine returns every batch before it ends; their offsets are stored, then committed
    for b in from_engine.iter() {
        store(&b, &topics, &mut errors);
    }
    let lp = engine
        .join()
        .map_err(|_| std::io::Error::other("the engine thread panicked"))?;
    if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
        tracing::warn!(error = %e, "final offset commit failed");
    }
    Ok(lp)
}

/// The engine thread: process batches in order, hand each back for its offsets, publish on
/// the cadence (also while no messages arrive).
fn process(
    mut lp: EngineLoop,
    batches: &std::sync::mpsc::Receiver<Batch>,
    done: &std::sync::mpsc::Sender<Batch>,
    lag: &Mutex<Vec<(String, i32, i64)>>,
) -> EngineLoop {
    use std::sync::mpsc::RecvTimeoutError;
    let mut drain = Drain::default();
    loop {
        match batches.recv_timeout(Duration::from_millis(100)) {
            Ok(b) => {
                drain.messages(b.spans.len());
                b.apply(&mut lp);
                // the consumer thread may already be gone at shutdown: nothing to store then
                let _ = done.send(b);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if lp.publish_due() {
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
    lp
}
