//! Re-keying by unit (`[kafka.repartition]`), the way Kafka Streams repartitions a stream
//! before a keyed aggregation: when the input topics are keyed at random (or by request), a
//! unit's events land on several partitions, and per-partition state would count the unit
//! once per partition. Each replica runs a router: a member of the group `<group_id>.router`
//! over the input topics that re-produces every message, unchanged, to the partition of the
//! repartition topic its unit hashes to; the engines consume that topic instead.
//!
//! **Nothing twice.** The router commits an input offset only once everything before it is
//! acknowledged, so after a crash or a rebalance it re-produces from there: copies. Each
//! re-produced record's key names the input partition and offset it came from; a repartition
//! partition's state keeps, per input partition, the first input offset it has not applied
//! ([`crate::partitions::Part::upstream`], checkpointed with the state) and drops what is
//! below it. That is exact because one producer writes an input partition's events to a
//! repartition partition in input order (acks from all replicas, idempotent: no gap, no
//! reordering), so an offset is below the mark only if its own copy was applied. Two routers
//! writing one input partition for a moment (a rebalance) interleave two such ordered streams,
//! and each offset still gets in exactly once.
//!
//! The routing and the key codec are pure; [`spawn`] is the IO.

use super::kafka::client_config;
use super::state_topic::Deliveries;
use crate::checkpoint::partition_key;
use crate::config::KafkaSettings;
use crate::event::{Body, Inputs, Limits};
use crate::metrics::Metrics;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The magic of a re-produced record's key.
const MAGIC: &[u8; 4] = b"AWR1";

/// Write the key of a record re-produced from `offset` of input partition `from` (`AWR1`,
/// the offset as i64 little endian, the partition's name) into `out`.
pub fn provenance(from: &str, offset: i64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(from.as_bytes());
}

/// The input partition and offset a re-produced record's key names (`None`: not one).
#[inline]
pub fn parse_provenance(key: &[u8]) -> Option<(&[u8], i64)> {
    if key.get(..4)? != MAGIC {
        return None;
    }
    let offset = i64::from_le_bytes(key.get(4..12)?.try_into().ok()?);
    Some((&key[12..], offset))
}

/// What a message is routed by: a prompt's unit (else its experiment), a judgment's judge, a
/// routing decision's router, a sample's eval set (the state each of them feeds lives in
/// one partition then); a message that does not decode by its Kafka key, else its bytes (it
/// is counted as rejected by whichever partition gets it).
pub fn route_hash(payload: Option<&[u8]>, key: Option<&[u8]>, limits: &Limits) -> u64 {
    let hash = twox_hash::XxHash3_64::oneshot;
    let Some(payload) = payload else {
        return key.map_or(0, hash);
    };
    let mut inputs = Inputs::new();
    let Ok(ev) = crate::event::decode_into(payload, limits, &mut inputs) else {
        return hash(key.unwrap_or(payload));
    };
    let by = match &ev.body {
        Body::Judgment(j) => Some(&j.judge),
        Body::Routing(r) => Some(&r.router),
        Body::Sample(s) => Some(&s.eval_set),
        Body::Prompt => ev.unit.as_ref().or(ev.experiment.as_ref()),
    };
    match by {
        Some(v) => hash(v.as_bytes()),
        None => hash(key.unwrap_or(payload)),
    }
}

/// The partition of `partitions` that `hash` goes to.
#[inline]
pub fn target(hash: u64, partitions: i32) -> i32 {
    (hash % partitions.max(1) as u64) as i32
}

/// The input partitions' names as the engines' batches carry them: an index per name, the
/// table shared with the batches (replaced, never changed, when a name is added).
#[derive(Default)]
pub struct Upstream {
    names: Arc<Vec<String>>,
    last: Option<u32>,
}

impl Upstream {
    /// The index of input partition `name` (added when new); `None` when it is not UTF-8.
    #[inline]
    pub fn index(&mut self, name: &[u8]) -> Option<u32> {
        if let Some(i) = self.last {
            if self.names.get(i as usize).map(|n| n.as_bytes()) == Some(name) {
                return Some(i);
            }
        }
        let i = match self.names.iter().position(|n| n.as_bytes() == name) {
            Some(i) => i as u32,
            None => {
                let name = std::str::from_utf8(name).ok()?.to_string();
                let mut names = Vec::clone(&self.names);
                names.push(name);
                self.names = Arc::new(names);
                (self.names.len() - 1) as u32
            }
        };
        self.last = Some(i);
        Some(i)
    }

    /// The table the indexes point into.
    pub fn names(&self) -> &Arc<Vec<String>> {
        &self.names
    }
}

/// Input offsets are committed after at most this long or this many messages (each commit
/// waits for every record before it to be acknowledged).
const COMMIT_EVERY: Duration = Duration::from_millis(500);
const COMMIT_MESSAGES: usize = 50_000;
/// How long one commit waits for acknowledgements; past it (a slow or paused broker) the
/// commit is put off, not failed: librdkafka keeps retrying until `message.timeout.ms`, and
/// only a delivery that fails for good stops the router.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// What became of a commit.
#[derive(Debug, PartialEq)]
enum Acked {
    /// Everything acknowledged; the input offsets stored.
    Stored,
    /// Not all acknowledged yet: nothing stored, the next commit tries again.
    Pending,
    /// A delivery failed for good: nothing stored (the restart re-produces from the last
    /// commit rather than go past a gap).
    Failed,
}

/// The repartition topic's partition count (it must exist: see
/// [`super::state_topic::ensure`]).
fn partitions_of(producer: &BaseProducer<Deliveries>, topic: &str) -> Result<i32, KafkaError> {
    let md = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let n = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    match i32::try_from(n) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(KafkaError::MetadataFetch(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        )),
    }
}

/// The input partitions a router has re-produced from: the last offset re-produced of each
/// since the last commit (`-1`: none), written by the router loop (an atomic store per
/// message, no lock) and taken by a commit, in the loop or at a revoke.
#[derive(Default)]
struct Marks {
    all: Mutex<Vec<Arc<Mark>>>,
}

struct Mark {
    topic: String,
    partition: i32,
    /// Its name in re-produced keys ([`partition_key`]).
    name: String,
    last: AtomicI64,
}

/// What the router loop and its consumer's rebalance callback share.
struct Shared {
    producer: BaseProducer<Deliveries>,
    marks: Marks,
}

impl Shared {
    /// Wait until every record re-produced so far is acknowledged, then store the input
    /// offsets they came from (committed by the consumer's auto-commit, or at once by a
    /// revoke).
    fn flush_and_store<C: rdkafka::consumer::ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
    ) -> Acked {
        let before = self.producer.context().failed.load(Ordering::Relaxed);
        let flushed = self.producer.flush(ACK_WAIT);
        if self.producer.context().failed.load(Ordering::Relaxed) > before {
            tracing::error!("router: re-keyed records not acknowledged: stopping, so that the restart re-produces them from the last committed input offsets");
            return Acked::Failed;
        }
        if flushed.is_err() {
            tracing::warn!("router: re-keyed records not acknowledged within 10 s (a slow or paused broker?): input offsets not committed yet");
            return Acked::Pending;
        }
        if let Ok(all) = self.marks.all.lock() {
            for m in all.iter() {
                let last = m.last.swap(-1, Ordering::Relaxed);
                if last >= 0 {
                    // not assigned any more (a rebalance took it): its next router re-produces
                    let _ = consumer.store_offset(&m.topic, m.partition, last);
                }
            }
        }
        Acked::Stored
    }
}

/// The router consumer's callbacks: before partitions are revoked, everything re-produced is
/// acknowledged and its input offsets committed, so that the next owner starts where this
/// one stopped (nothing for the engines to drop).
struct RouterContext {
    shared: Arc<Shared>,
}

impl ClientContext for RouterContext {
    super::client_log::route_client_log!();
}

impl rdkafka::consumer::ConsumerContext for RouterContext {
    fn pre_rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Revoke(_) = rebalance {
            // (not all acknowledged: the next owner re-produces from the last commit, and the
            // engines drop the copies)
            if self.shared.flush_and_store(consumer) == Acked::Stored {
                if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
                {
                    tracing::debug!(error = %e, "router: commit at revoke");
                }
            }
        }
    }
}

/// Start this replica's router: consume the input topics in the group
/// `<group_id>.router`, re-produce each message to its partition of the repartition topic,
/// commit input offsets once acknowledged. Runs until `stop` is set; a delivery that fails
/// for good (librdkafka's retries exhausted) sets `stop` too, so that the daemon exits and
/// its restart re-produces from the last commit, rather than leave a gap.
pub fn spawn(
    k: &KafkaSettings,
    limits: Limits,
    metrics: Arc<Mutex<Metrics>>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Result<(), String>>, KafkaError> {
    let group = k.router_group();
    let producer: BaseProducer<Deliveries> = client_config(
        k,
        &[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
            ("queue.buffering.max.messages", "1000000"),
        ],
    )
    .create_with_context(Deliveries::new("re-keyed record"))?;
    let topic = k.repartition_topic();
    let partitions = partitions_of(&producer, &topic)?;
    if partitions != k.repartition.partitions {
        tracing::warn!(%topic, partitions, configured = k.repartition.partitions, "the repartition topic exists with another partition count than kafka.repartition.partitions: its own count is used");
    }
    let shared = Arc::new(Shared {
        producer,
        marks: Marks::default(),
    });
    let consumer: BaseConsumer<RouterContext> = client_config(
        k,
        &[
            ("group.id", &group),
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "false"),
            // what a crashed router's successor re-produces is at most this much (and the
            // engines drop it): shorter than librdkafka's 5 s
            ("auto.commit.interval.ms", "1000"),
            ("auto.offset.reset", "earliest"),
            ("fetch.queue.backoff.ms", "10"),
        ],
    )
    .create_with_context(RouterContext {
        shared: Arc::clone(&shared),
    })?;
    let topics: Vec<&str> = k.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    tracing::info!(%topic, partitions, %group, "re-keying the input topics by unit");
    std::thread::Builder::new()
        .name("armwatch-router".into())
        .spawn(move || {
            Router {
                shared,
                partitions,
                limits,
                metrics,
                marks: Vec::new(),
                routed: 0,
                unroutable: 0,
                errors: crate::daemon::RateLimiter::new(1),
            }
            .run(&consumer, &topic, &stop)
        })
        .map_err(|_| KafkaError::Global(RDKafkaErrorCode::Fail))
}

struct Router {
    shared: Arc<Shared>,
    partitions: i32,
    limits: Limits,
    metrics: Arc<Mutex<Metrics>>,
    /// The router's own handles on the shared marks (no lock to find one).
    marks: Vec<Arc<Mark>>,
    /// Messages re-produced since the last commit.
    routed: u64,
    /// Messages the producer refused outright since the last commit.
    unroutable: u64,
    errors: crate::daemon::RateLimiter,
}

impl Router {
    /// Route until `stop`; an error when deliveries failed (the daemon stops then).
    fn run(
        mut self,
        consumer: &BaseConsumer<RouterContext>,
        topic: &str,
        stop: &AtomicBool,
    ) -> Result<(), String> {
        let mut key = Vec::with_capacity(64);
        let mut since = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let wait = if self.routed == 0 {
                Duration::from_millis(100)
            } else {
                Duration::ZERO
            };
            match consumer.poll(wait) {
                Some(Ok(m)) => {
                    let mark = self.mark(m.topic(), m.partition());
                    provenance(&mark.name, m.offset(), &mut key);
                    let p = target(
                        route_hash(m.payload(), m.key(), &self.limits),
                        self.partitions,
                    );
                    let mut rec = BaseRecord::<[u8], [u8]>::to(topic)
                        .partition(p)
                        .key(&key[..]);
                    if let Some(v) = m.payload() {
                        rec = rec.payload(v);
                    }
                    self.send(rec, stop);
                    // after the send: a commit (here or at a revoke) flushes it first
                    mark.last.store(m.offset(), Ordering::Relaxed);
                    self.routed += 1;
                }
                Some(Err(e)) if self.errors.allow().is_some() => {
                    tracing::warn!(error = %e, "router: consume error");
                }
                Some(Err(_)) | None => {}
            }
            self.shared.producer.poll(Duration::ZERO);
            if self.routed > 0
                && (self.routed as usize >= COMMIT_MESSAGES || since.elapsed() >= COMMIT_EVERY)
            {
                if self.commit(consumer) == Acked::Failed {
                    stop.store(true, Ordering::Relaxed);
                    return Err("re-keyed records not acknowledged (see the log): the restart re-produces them from the last committed input offsets".into());
                }
                since = Instant::now();
            }
        }
        if self.routed > 0 {
            let _ = self.commit(consumer);
        }
        if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            tracing::debug!(error = %e, "router: final commit");
        }
        Ok(())
    }

    /// The mark of `(topic, partition)` (made when new).
    fn mark(&mut self, topic: &str, partition: i32) -> Arc<Mark> {
        if let Some(m) = self
            .marks
            .iter()
            .find(|m| m.partition == partition && m.topic == topic)
        {
            return Arc::clone(m);
        }
        let m = Arc::new(Mark {
            topic: topic.to_string(),
            partition,
            name: partition_key(topic, partition),
            last: AtomicI64::new(-1),
        });
        if let Ok(mut all) = self.shared.marks.all.lock() {
            all.push(Arc::clone(&m));
        }
        self.marks.push(Arc::clone(&m));
        m
    }

    /// Queue `rec`, waiting for room while the producer's queue is full.
    fn send(&mut self, mut rec: BaseRecord<'_, [u8], [u8]>, stop: &AtomicBool) {
        loop {
            match self.shared.producer.send(rec) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    self.shared.producer.poll(Duration::from_millis(5));
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
                Err((e, _)) => {
                    // refused before it was queued (larger than the producer takes): the
                    // engines never see it; counted, and the input offset moves on
                    self.unroutable += 1;
                    if self.errors.allow().is_some() {
                        tracing::error!(error = %e, "router: a message could not be re-produced (dropped)");
                    }
                    return;
                }
            }
        }
    }

    /// [`Shared::flush_and_store`], and the counts into the metrics.
    fn commit(&mut self, consumer: &BaseConsumer<RouterContext>) -> Acked {
        let acked = self.shared.flush_and_store(consumer);
        if acked != Acked::Stored {
            return acked;
        }
        if let Ok(m) = self.metrics.lock() {
            m.repartition_messages
                .with_label_values(&["routed"])
                .inc_by(self.routed - self.unroutable);
            m.repartition_messages
                .with_label_values(&["unroutable"])
                .inc_by(self.unroutable);
        }
        self.routed = 0;
        self.unroutable = 0;
        Acked::Stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key codec round-trips; anything else is not a provenance.
    #[test]
    fn provenance_round_trip() {
        let mut k = Vec::new();
        provenance("llm.events/3", 1_234_567_890_123, &mut k);
        assert_eq!(
            parse_provenance(&k),
            Some((&b"llm.events/3"[..], 1_234_567_890_123))
        );
        assert_eq!(parse_provenance(b"AWR1\x01"), None);
        assert_eq!(parse_provenance(b"user-17"), None);
        assert_eq!(parse_provenance(b""), None);
    }

    /// A unit's prompt events go to one partition whatever their Kafka key; judgments by
    /// judge, routing decisions by router; what does not decode by its key, else its bytes.
    #[test]
    fn routed_by_unit_judge_router() {
        let l = Limits::default();
        let prompt = |arm: &str, tier: &str| {
            format!(
                r#"{{"kind":"prompt","ts":1700000000000,"experiment":"e","arm":"{arm}","unit":"u-42","inputs":{{"tier":"{tier}"}}}}"#
            )
        };
        let a = route_hash(Some(prompt("control", "pro").as_bytes()), Some(b"k1"), &l);
        let b = route_hash(Some(prompt("control", "free").as_bytes()), Some(b"k2"), &l);
        assert_eq!(a, b);
        assert_eq!(a, twox_hash::XxHash3_64::oneshot(b"u-42"));
        let judgment = br#"{"kind":"judgment","ts":1700000000000,"judge":"grader","judge_version":"v1","score":0.5}"#;
        assert_eq!(
            route_hash(Some(judgment), Some(b"x"), &l),
            twox_hash::XxHash3_64::oneshot(b"grader")
        );
        assert_eq!(
            route_hash(Some(b"{broken"), Some(b"kk"), &l),
            twox_hash::XxHash3_64::oneshot(b"kk")
        );
        assert_eq!(
            route_hash(Some(b"{broken"), None, &l),
            twox_hash::XxHash3_64::oneshot(b"{broken")
        );
        for h in [0, 1, u64::MAX, a] {
            assert!((0..7).contains(&target(h, 7)));
        }
    }

    /// Names get stable indexes; the shared table is replaced (not changed) when one is added.
    #[test]
    fn upstream_names_indexed() {
        let mut u = Upstream::default();
        assert_eq!(u.index(b"t/0"), Some(0));
        let before = Arc::clone(u.names());
        assert_eq!(u.index(b"t/1"), Some(1));
        assert_eq!(u.index(b"t/0"), Some(0));
        assert_eq!(before.len(), 1);
        assert_eq!(u.names().as_slice(), ["t/0".to_string(), "t/1".to_string()]);
        assert_eq!(u.index(&[0xff, 0xfe]), None);
    }
}
