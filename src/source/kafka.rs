//! The Kafka source: a consumer-group member on a dedicated thread (no async hop per message)
//! that reads its partitions' messages in batches ([`super::fetch_queue`]) and polls the
//! consumer queue between batches for rebalances, commits and statistics. Without checkpoints
//! it stores offsets once a message has been processed; with checkpoints ([`Checkpoints`])
//! each assigned partition's state is restored from the state topic and consumption resumes
//! at the offset its checkpoint covers, a revoked partition's state is checkpointed before it
//! is released, and offsets are stored only up to durable checkpoints.

use super::batch::Batch;
use super::client_log::Quiet;
use super::fetch_queue::{FetchQueue, QueueSlot};
use super::Source;
use crate::checkpoint::partition_key;
use crate::config::KafkaSettings;
use crate::config::Settings;
use crate::daemon::Control;
use crate::daemon::{DeadLetter, EngineLoop, RateLimiter};
use crate::event::RejectReason;
use crate::http::Shared;
use crate::metrics::Metrics;
use crate::partitions::Part;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// Consumer callbacks: readiness (straight into the HTTP state) on assignment, lag from
/// statistics, and with checkpoints the restore and hand-over of partition state.
pub struct Context {
    lag: Arc<Mutex<Vec<(String, i32, i64)>>>,
    checkpoints: Option<Arc<Checkpoints>>,
    readiness: Arc<Readiness>,
    /// The batch queue assigned partitions forward to, once the source has made it.
    fetch: Arc<QueueSlot>,
}

/// What readiness is made of: partitions assigned (and restored) by the consumer's callbacks,
/// brokers answering by [`watch_brokers`].
pub struct Readiness {
    shared: Arc<Shared>,
    assigned: AtomicBool,
    reachable: AtomicBool,
}

impl Readiness {
    /// Ready while partitions are assigned and a broker answers.
    fn update(&self) {
        let ready = self.assigned.load(Ordering::Relaxed) && self.reachable.load(Ordering::Relaxed);
        self.shared.ready.store(ready, Ordering::Relaxed);
    }
}

/// Brokers that have not answered a metadata request for this long count as unreachable (a
/// paused or partitioned broker keeps its TCP connections open, so no disconnect says so).
const BROKER_SILENCE: Duration = Duration::from_secs(10);

/// Ask the brokers of `k` for metadata every 2 s (on a client of its own, so that a busy or
/// blocked consumer thread does not hide a silent broker) and mark the daemon not ready
/// while none has answered for `BROKER_SILENCE`, until `stop` is set.
pub fn watch_brokers(
    k: &KafkaSettings,
    readiness: Arc<Readiness>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, KafkaError> {
    use rdkafka::producer::Producer as _;
    let client: rdkafka::producer::BaseProducer<Quiet> =
        client_config(k, &[]).create_with_context(Quiet)?;
    let topic = k.topics.first().cloned().unwrap_or_default();
    std::thread::Builder::new()
        .name("armwatch-brokers".into())
        .spawn(move || {
            let mut last_answer = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let asked = std::time::Instant::now();
                if client
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(2))
                    .is_ok()
                {
                    last_answer = std::time::Instant::now();
                }
                let reachable = last_answer.elapsed() < BROKER_SILENCE;
                if reachable != readiness.reachable.swap(reachable, Ordering::Relaxed) {
                    if reachable {
                        tracing::info!("brokers answer again: ready");
                    } else {
                        tracing::warn!(
                            silent_seconds = last_answer.elapsed().as_secs(),
                            "no broker has answered for 10 s: not ready"
                        );
                    }
                }
                readiness.update();
                while asked.elapsed() < Duration::from_secs(2) && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
        .map_err(|_| KafkaError::Global(rdkafka::error::RDKafkaErrorCode::Fail))
}

/// The consumer's side of checkpointing: restores assigned partitions from the state topic,
/// asks the engine thread to checkpoint revoked ones, and stores the offsets of durable
/// checkpoints.
pub struct Checkpoints {
    settings: Settings,
    /// `(topic, partition)` by partition index (append-only: an index never changes).
    table: Mutex<Vec<(String, i32)>>,
    /// Partitions restored by the last assignment, for the next batch.
    assigned: Mutex<Vec<(usize, Part)>>,
    has_assigned: AtomicBool,
    controls: Mutex<mpsc::Sender<Control>>,
    /// `(partition index, next offset)` of durable checkpoints, from the engine thread.
    durable: Arc<Mutex<Vec<(usize, i64)>>>,
    metrics: Arc<Mutex<Metrics>>,
    /// Set once the engine thread has ended (its final checkpoints written): the revoke of
    /// the consumer's close has nothing left to ask.
    closing: AtomicBool,
}

/// How long a revoke waits for the engine thread's final checkpoints.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long reading the state topic at assignment may take.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

impl Checkpoints {
    /// Checkpointing for the engines of `settings`: revokes go to the engine thread over
    /// `controls`, which reports durable checkpoints in `durable`.
    pub fn new(
        settings: Settings,
        controls: mpsc::Sender<Control>,
        durable: Arc<Mutex<Vec<(usize, i64)>>>,
        metrics: Arc<Mutex<Metrics>>,
    ) -> Checkpoints {
        Checkpoints {
            settings,
            table: Mutex::new(Vec::new()),
            assigned: Mutex::new(Vec::new()),
            has_assigned: AtomicBool::new(false),
            controls: Mutex::new(controls),
            durable,
            metrics,
            closing: AtomicBool::new(false),
        }
    }

    /// The index of `(topic, partition)` (added when new).
    fn index(&self, topic: &str, partition: i32) -> usize {
        let Ok(mut t) = self.table.lock() else {
            return usize::MAX;
        };
        match t.iter().position(|(tt, p)| *p == partition && tt == topic) {
            Some(i) => i,
            None => {
                t.push((topic.to_string(), partition));
                t.len() - 1
            }
        }
    }

    fn count_restore(&self, result: &str) {
        if let Ok(m) = self.metrics.lock() {
            m.checkpoint_restores.with_label_values(&[result]).inc();
        }
    }

    /// Restore the partitions of `tpl` from the state topic and set each one's start offset:
    /// the checkpoint's next offset, or the earliest retained offset when there is none or it
    /// is refused (the state is rebuilt from there).
    fn restore(&self, tpl: &mut TopicPartitionList) {
        let wanted: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let keys: Vec<String> = wanted.iter().map(|(t, p)| partition_key(t, *p)).collect();
        let collected =
            super::state_topic::read(&self.settings.kafka, Some(keys.clone()), RESTORE_TIMEOUT);
        if let Err(e) = &collected {
            tracing::error!(error = %e, "cannot read the state topic: the assigned partitions are rebuilt from their earliest retained offsets");
        }
        let mut out = Vec::new();
        for ((topic, partition), key) in wanted.into_iter().zip(keys) {
            let index = self.index(&topic, partition);
            let found = match &collected {
                Ok(c) => c.checkpoint(&key).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let restored = found.and_then(|cp| match cp {
                None => Ok(None),
                Some(cp) => crate::snapshot::read(&self.settings, &cp.snapshot)
                    .map(|engine| Some((cp, engine)))
                    .map_err(|e| e.to_string()),
            });
            let (part, offset) = match restored {
                Ok(Some((cp, engine))) => {
                    self.count_restore("restored");
                    let offset = Offset::Offset(cp.next_offset);
                    (Part::restored(key, cp, engine), offset)
                }
                Ok(None) => {
                    self.count_restore("none");
                    (Part::fresh(key, &self.settings), Offset::Beginning)
                }
                Err(e) => {
                    self.count_restore("refused");
                    tracing::error!(partition = %key, error = %e, "checkpoint refused: the partition's state is rebuilt from its earliest retained offset");
                    (Part::fresh(key, &self.settings), Offset::Beginning)
                }
            };
            if let Err(e) = tpl.set_partition_offset(&topic, partition, offset) {
                tracing::warn!(error = %e, "cannot set the start offset");
            }
            out.push((index, part));
        }
        if let Ok(mut a) = self.assigned.lock() {
            a.extend(out);
            self.has_assigned.store(true, Ordering::Release);
        }
    }

    /// Have the engine thread checkpoint the partitions of `tpl` and drop them, then store the
    /// offsets their checkpoints cover (committed with the revoke).
    fn hand_over(&self, consumer: &BaseConsumer<Context>, tpl: &TopicPartitionList) {
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        let parts: Vec<usize> = tpl
            .elements()
            .iter()
            .map(|e| self.index(e.topic(), e.partition()))
            .collect();
        let (answer, answered) = mpsc::channel();
        let sent = self
            .controls
            .lock()
            .map(|c| c.send(Control::Revoke(parts, answer)).is_ok())
            .unwrap_or(false);
        if sent && answered.recv_timeout(REVOKE_TIMEOUT).is_err() {
            tracing::error!("the engine thread did not checkpoint the revoked partitions in time: their next owner resumes from their last checkpoint");
        }
        self.store_durable(consumer);
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "offset commit at revoke");
        }
    }

    /// Store the offsets of the checkpoints made durable since the last call.
    fn store_durable(&self, consumer: &BaseConsumer<Context>) {
        let durable = match self.durable.lock() {
            Ok(mut d) => std::mem::take(&mut *d),
            Err(_) => return,
        };
        if durable.is_empty() {
            return;
        }
        let Ok(table) = self.table.lock() else {
            return;
        };
        for (i, next) in durable {
            let Some((topic, p)) = table.get(i) else {
                continue;
            };
            // librdkafka commits the stored offset + 1: the next offset to read
            if next > 0 {
                if let Err(e) = consumer.store_offset(topic, *p, next - 1) {
                    tracing::debug!(error = %e, topic = %topic, partition = p, "offset of a checkpoint not stored (partition no longer assigned)");
                }
            }
        }
    }
}

impl ClientContext for Context {
    super::client_log::route_client_log!();

    /// Consumer lag per partition, read from the statistics JSON directly (only the lag is
    /// needed; a field the typed `Statistics` does not expect cannot drop the whole update).
    fn stats_raw(&self, raw: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(raw) else {
            return;
        };
        let mut out = Vec::new();
        if let Some(topics) = v["topics"].as_object() {
            for (topic, t) in topics {
                let Some(parts) = t["partitions"].as_object() else {
                    continue;
                };
                for (p, part) in parts {
                    // the lag behind the committed offset; before the group's first commit,
                    // behind what this consumer has read (`app_offset`)
                    let committed = part["consumer_lag"].as_i64().filter(|l| *l >= 0);
                    let read = match (part["hi_offset"].as_i64(), part["app_offset"].as_i64()) {
                        (Some(hi), Some(app)) if hi >= 0 && app >= 0 => Some((hi - app).max(0)),
                        _ => None,
                    };
                    let (Ok(p), Some(lag)) = (p.parse::<i32>(), committed.or(read)) else {
                        continue;
                    };
                    if p >= 0 && lag >= 0 {
                        out.push((topic.clone(), p, lag));
                    }
                }
            }
        }
        if let Ok(mut l) = self.lag.lock() {
            *l = out;
        }
    }
}

impl ConsumerContext for Context {
    /// The default rebalance with, when checkpointing, the state restored (and the start
    /// offsets set) before the partitions are assigned, and checkpointed before they are
    /// released.
    fn rebalance(&self, c: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(c.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let res = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Some(cp) = &self.checkpoints {
                    cp.restore(tpl);
                }
                // before the fetchers start: no message of theirs reaches the consumer queue
                let elements = tpl.elements();
                let parts = elements.iter().map(|e| (e.topic(), e.partition()));
                self.fetch.forward(c.client().native_ptr(), parts);
                let r = if cooperative {
                    c.incremental_assign(tpl)
                } else {
                    c.assign(tpl)
                };
                self.post_rebalance(c, &Rebalance::Assign(tpl));
                r
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if let Some(cp) = &self.checkpoints {
                    cp.hand_over(c, tpl);
                }
                let r = if cooperative {
                    c.incremental_unassign(tpl)
                } else {
                    c.unassign()
                };
                self.post_rebalance(c, &Rebalance::Revoke(tpl));
                r
            }
            other => {
                let e = KafkaError::Rebalance(other.into());
                self.post_rebalance(c, &Rebalance::Error(e));
                // drop everything (librdkafka's own default): a later assignment restores
                c.unassign()
            }
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, "rebalance assignment failed");
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        match r {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                self.readiness.assigned.store(true, Ordering::Relaxed);
                self.readiness.update();
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked");
                self.readiness.assigned.store(false, Ordering::Relaxed);
                self.readiness.update();
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

/// Build the librdkafka clients `run` builds (the group's consumer and a producer), without
/// using them: an option librdkafka refuses (an unknown name, a bad value, a SASL mechanism
/// or TLS setting this build cannot serve) fails here as it would at `run`.
pub fn check_clients(k: &KafkaSettings) -> Result<(), KafkaError> {
    let consumer: BaseConsumer<Quiet> =
        client_config(k, &[("group.id", &k.group_id)]).create_with_context(Quiet)?;
    drop(consumer);
    let producer: ThreadedProducer<Quiet> = client_config(k, &[]).create_with_context(Quiet)?;
    drop(producer);
    Ok(())
}

/// The partitions of the topics the engines read (`0` when none exists yet), asked of the
/// brokers once at startup: partition-owned engines split alpha over them.
pub fn engine_partitions(k: &KafkaSettings) -> Result<usize, KafkaError> {
    let client: BaseConsumer<Quiet> = client_config(k, &[]).create_with_context(Quiet)?;
    let mut n = 0;
    for topic in k.engine_topics() {
        let md = client.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        n += md
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .sum::<usize>();
    }
    Ok(n)
}

/// Create the consumer (subscribed) for `k`, checkpointing partition state when
/// `checkpoints` is given.
pub fn consumer(
    k: &KafkaSettings,
    shared: Arc<Shared>,
    lag: Arc<Mutex<Vec<(String, i32, i64)>>>,
    checkpoints: Option<Arc<Checkpoints>>,
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
    let consumer: BaseConsumer<Context> = c.create_with_context(Context {
        lag,
        checkpoints,
        readiness: Arc::new(Readiness {
            shared,
            assigned: AtomicBool::new(false),
            reachable: AtomicBool::new(true),
        }),
        fetch: Arc::default(),
    })?;
    // the repartition topic when re-keying (the routers read the inputs)
    let topics = k.engine_topics();
    let topics: Vec<&str> = topics.iter().map(|t| t.as_str()).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// Rejected messages to a dead-letter topic, with the reason in a header.
pub struct KafkaDeadLetter {
    producer: ThreadedProducer<Quiet>,
    topic: String,
}

impl KafkaDeadLetter {
    /// A producer for `topic`.
    pub fn new(k: &KafkaSettings, topic: &str) -> Result<KafkaDeadLetter, KafkaError> {
        Ok(KafkaDeadLetter {
            producer: client_config(k, &[]).create_with_context(Quiet)?,
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

/// The consumer as a [`Source`]: reads batches of messages (from the [`FetchQueue`] its
/// partitions forward to, or else one by one from the consumer queue), marks each message's
/// offset, and stores the offsets of a batch once it has been applied (at-least-once);
/// commits at the end.
pub struct KafkaSource {
    /// Declared before the consumer: dropped (its queue released) before the client is.
    fetch: Option<FetchQueue>,
    consumer: BaseConsumer<Context>,
    marks: Marks,
    errors: RateLimiter,
    polled: u64,
    max_messages: Option<u64>,
}

/// Where a message's position goes: the partition index of its engine (with checkpoints),
/// or the stream marks of the batch.
struct Marks {
    /// Topic names by stream index (the batches' marks).
    topics: Vec<String>,
    checkpoints: Option<Arc<Checkpoints>>,
    /// The last message's `(topic, partition)` and partition index (with checkpoints).
    last_part: Option<(String, i32, u32)>,
    /// Re-keyed input (the repartition topic): the input partitions the keys name.
    upstream: Option<super::repartition::Upstream>,
}

impl Marks {
    /// Add one message to `batch` with its position.
    #[inline]
    fn push(
        &mut self,
        batch: &mut Batch,
        (topic, partition, offset): (&str, i32, i64),
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) {
        match &self.checkpoints {
            Some(cp) => {
                let index = part_index(&mut self.last_part, cp, topic, partition);
                let from = self.upstream.as_mut().and_then(|u| {
                    let (name, at) = super::repartition::parse_provenance(key?)?;
                    Some((u.index(name)?, at))
                });
                match (from, &self.upstream) {
                    (Some(from), Some(u)) => {
                        batch.push_rekeyed(payload, (index, offset), from, u.names())
                    }
                    _ => batch.push_at(payload, index, offset),
                }
            }
            None => {
                batch.push(payload);
                let stream = stream(&mut self.topics, topic);
                batch.mark(stream, partition, offset);
            }
        }
    }
}

/// The readiness state of `consumer` (for [`watch_brokers`]).
pub fn readiness(consumer: &BaseConsumer<Context>) -> Arc<Readiness> {
    Arc::clone(&consumer.context().readiness)
}

impl KafkaSource {
    /// Poll `consumer` (at most `max_messages`, then end); `rekeyed`: it reads the
    /// repartition topic, whose keys name each message's input partition and offset.
    pub fn new(
        consumer: BaseConsumer<Context>,
        max_messages: Option<u64>,
        rekeyed: bool,
    ) -> KafkaSource {
        let checkpoints = consumer.context().checkpoints.clone();
        let slot = Arc::clone(&consumer.context().fetch);
        let fetch = FetchQueue::new(consumer.client().native_ptr(), slot);
        KafkaSource {
            fetch,
            consumer,
            marks: Marks {
                topics: Vec::new(),
                checkpoints,
                last_part: None,
                upstream: rekeyed.then(super::repartition::Upstream::default),
            },
            errors: RateLimiter::new(1),
            polled: 0,
            max_messages,
        }
    }

    /// Move restored partitions into `batch` (ahead of their first message).
    fn take_assigned(&self, batch: &mut Batch) {
        let Some(cp) = &self.marks.checkpoints else {
            return;
        };
        // a load first: the swap (a write) only when a rebalance left partitions
        if cp.has_assigned.load(Ordering::Relaxed) && cp.has_assigned.swap(false, Ordering::Acquire)
        {
            if let Ok(mut a) = cp.assigned.lock() {
                for (index, part) in a.drain(..) {
                    batch.assign(index, part);
                }
            }
        }
    }
}

/// A consume error, logged at a bounded rate.
fn consume_error(errors: &mut RateLimiter, e: &dyn std::fmt::Display) {
    if errors.allow().is_some() {
        tracing::warn!(error = %e, "consume error");
    }
}

/// The partition index of `(topic, partition)` (`last` caches it for runs of one partition).
#[inline]
fn part_index(
    last: &mut Option<(String, i32, u32)>,
    cp: &Checkpoints,
    topic: &str,
    partition: i32,
) -> u32 {
    match last {
        Some((t, p, i)) if *p == partition && t == topic => *i,
        _ => {
            let i = cp.index(topic, partition) as u32;
            *last = Some((topic.to_string(), partition, i));
            i
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
        // checkpoints become durable on their own schedule: their offsets are stored here too,
        // not only after an applied batch, so that an idle stream's last checkpoint is committed
        // (the group's committed offsets, and the consumer lag computed from them, would
        // otherwise stay where the traffic stopped)
        if let Some(cp) = &self.marks.checkpoints {
            cp.store_durable(&self.consumer);
        }
        loop {
            let left = match self.max_messages {
                Some(m) if self.polled >= m => return Ok(false),
                Some(m) => usize::try_from(m - self.polled).unwrap_or(usize::MAX),
                None => usize::MAX,
            };
            // the consumer queue: rebalances (which run inside the poll), commits, statistics,
            // errors, and the messages of any partition not forwarded to the batch queue; it
            // blocks only while there is nothing to hand over and no batch queue to wait on
            let wait = if self.fetch.is_none() && batch.is_empty() {
                100
            } else {
                0
            };
            let polled = self.consumer.poll(Duration::from_millis(wait));
            // a rebalance ran inside the poll: its partitions go in before any of their messages
            self.take_assigned(batch);
            let dry = match polled {
                Some(Ok(msg)) => {
                    self.polled += 1;
                    let at = (msg.topic(), msg.partition(), msg.offset());
                    self.marks.push(batch, at, msg.key(), msg.payload());
                    if batch.full() {
                        return Ok(true);
                    }
                    continue;
                }
                Some(Err(e)) => {
                    consume_error(&mut self.errors, &e);
                    false
                }
                None => true,
            };
            let Some(fetch) = &mut self.fetch else {
                if dry {
                    // the queue ran dry: hand over what there is (or nothing, so that the loop
                    // looks at its stop flag)
                    return Ok(true);
                }
                continue;
            };
            // the batch queue, until it runs dry or the batch is full; then back to the
            // consumer queue
            let mut read = 0;
            // block only while there is nothing to hand over (an assignment taken just now
            // goes to the engine at once)
            let mut wait = if batch.is_empty() { 100 } else { 0 };
            while let Some(m) = fetch.next(left - read, wait) {
                wait = 0;
                if let Some(e) = m.error() {
                    consume_error(&mut self.errors, &e);
                    continue;
                }
                read += 1;
                let at = (m.topic(), m.partition(), m.offset());
                self.marks.push(batch, at, m.key(), m.payload());
                if batch.full() || read == left {
                    break;
                }
            }
            self.polled += read as u64;
            if batch.full() || read == 0 {
                return Ok(true);
            }
        }
    }

    fn done(&mut self, batch: &Batch) {
        if let Some(cp) = &self.marks.checkpoints {
            // offsets follow durable checkpoints, not applied batches
            cp.store_durable(&self.consumer);
            return;
        }
        for &(t, p, o) in batch.marks() {
            let Some(topic) = self.marks.topics.get(t) else {
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
        if let Some(cp) = &self.marks.checkpoints {
            cp.store_durable(&self.consumer);
            cp.closing.store(true, Ordering::Release);
        }
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
    rekeyed: bool,
    reloads: std::sync::mpsc::Receiver<crate::config::Settings>,
) -> std::io::Result<EngineLoop> {
    super::drive(
        KafkaSource::new(consumer, max_messages, rekeyed),
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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, Producer};
    use std::time::Instant;

    const PARTITIONS: i32 = 3;

    /// `n` messages over the partitions of topic `t` on a fresh mock cluster, payload `i`
    /// (the send order) to partition `i % PARTITIONS`.
    fn cluster(n: usize) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
        let mock = MockCluster::new(1).expect("mock cluster");
        mock.create_topic("t", PARTITIONS, 1).expect("topic");
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .create()
            .expect("producer");
        for i in 0..n {
            let payload = i.to_string();
            let record = rdkafka::producer::BaseRecord::<(), _>::to("t")
                .partition(i as i32 % PARTITIONS)
                .payload(&payload);
            // far fewer than the producer's queue holds (100,000 messages)
            producer.send(record).map_err(|(e, _)| e).expect("queued");
        }
        producer.flush(Duration::from_secs(30)).expect("flushed");
        mock
    }

    fn source(
        mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        max: u64,
    ) -> KafkaSource {
        let k = KafkaSettings {
            brokers: mock.bootstrap_servers(),
            group_id: "g".into(),
            topics: vec!["t".into()],
            options: [
                ("session.timeout.ms", "6000"),
                ("max.poll.interval.ms", "10000"),
            ]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
            ..KafkaSettings::default()
        };
        let shared = Arc::new(Shared::new(false, None));
        let c = consumer(&k, shared, Arc::default(), None).expect("consumer");
        KafkaSource::new(c, Some(max), false)
    }

    /// Read batches from `src` until it ends (at most 60 s); the payloads (as numbers) in the
    /// order read.
    fn drain(src: &mut KafkaSource) -> Vec<usize> {
        let start = Instant::now();
        let mut seen = Vec::new();
        loop {
            let mut batch = Batch::default();
            let more = src.fill(&mut batch).expect("fill");
            assert!(batch.len() <= crate::source::batch::BATCH_MESSAGES);
            for i in 0..batch.len() {
                let p = batch.payload(i).expect("a payload");
                seen.push(
                    std::str::from_utf8(p)
                        .expect("utf-8")
                        .parse()
                        .expect("a number"),
                );
            }
            src.done(&batch);
            if !more {
                return seen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "read {} messages",
                seen.len()
            );
        }
    }

    /// The batch queue hands over every message once, each partition in its order, in batches
    /// no larger than a batch, and ends at `max_messages` exactly.
    #[test]
    fn batch_queue_reads_every_message_in_partition_order() {
        let n = 5_000;
        let mock = cluster(n);
        let mut src = source(&mock, n as u64 - 7);
        assert!(src.fetch.is_some(), "the batch queue is made");
        let seen = drain(&mut src);
        assert_eq!(seen.len(), n - 7, "stops at max_messages exactly");
        let mut next: Vec<usize> = (0..PARTITIONS as usize).collect();
        for &i in &seen {
            let p = i % PARTITIONS as usize;
            assert_eq!(
                i, next[p],
                "partition {p} in order, none twice, none skipped"
            );
            next[p] = i + PARTITIONS as usize;
        }
        src.finish();
    }
}
