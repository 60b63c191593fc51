//! The Kafka shell of checkpoints ([`crate::checkpoint`]): the compacted state topic (created
//! if missing), a producer that writes a checkpoint's records and waits until they are
//! durable, and a reader that collects the latest records of the whole topic.

use super::client_log::Quiet;
use super::kafka::client_config;
use crate::checkpoint::Collector;
use crate::config::KafkaSettings;
use crate::config::Settings;
use crate::daemon::CheckpointStore;
use crate::partitions::{MergedView, Viewed};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// [`ensure`], waiting for the brokers: while none answers (a broker restarting, a network
/// not yet up) it tries again every few seconds, saying so in the log (not ready meanwhile);
/// an answer that refuses (no right to create topics, a bad configuration) ends the wait.
pub async fn ensure_waiting(k: &KafkaSettings) -> Result<(), KafkaError> {
    let mut tries = 0u32;
    loop {
        match ensure(k).await {
            Err(e) if unreachable(&e) => {
                tries += 1;
                tracing::warn!(error = %e, tries, "state topic: no broker answers yet; trying again in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            other => return other,
        }
    }
}

/// An error that says no broker answered (try again), not that one refused.
fn unreachable(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    let code = match e {
        KafkaError::AdminOp(c) => Some(*c),
        e => e.rdkafka_error_code(),
    };
    matches!(
        code,
        Some(
            OperationTimedOut
                | RequestTimedOut
                | BrokerTransportFailure
                | AllBrokersDown
                | NetworkException
                | BrokerNotAvailable
                | LeaderNotAvailable
        )
    )
}

/// Create the state topic if it does not exist: one partition, compacted (only the latest
/// record per key is kept: each partition's last commit and the chunks it names); and, when
/// re-keying, the repartition topic (`kafka.repartition.partitions`, retention as the
/// broker's default: it is a queue between the routers and the engines).
pub async fn ensure(k: &KafkaSettings) -> Result<(), KafkaError> {
    let state_topic = k.state_topic();
    let state = NewTopic::new(&state_topic, 1, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "compact")
        // a chunk is up to ~900 KB
        .set("max.message.bytes", "1048588");
    create(k, &state, "state topic (compacted)").await?;
    if k.repartition.enabled {
        let topic = k.repartition_topic();
        let new = NewTopic::new(
            &topic,
            k.repartition.partitions,
            TopicReplication::Fixed(-1),
        );
        create(k, &new, "repartition topic").await?;
    }
    Ok(())
}

/// Create `new` unless it exists (`what` names it in the log).
async fn create(k: &KafkaSettings, new: &NewTopic<'_>, what: &str) -> Result<(), KafkaError> {
    let admin: AdminClient<Quiet> = client_config(k, &[]).create_with_context(Quiet)?;
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(10)));
    // the admin request waits for a broker without bound while none answers: bounded here
    let res = tokio::time::timeout(Duration::from_secs(15), admin.create_topics([new], &opts))
        .await
        .map_err(|_| KafkaError::AdminOp(RDKafkaErrorCode::OperationTimedOut))??;
    for r in res {
        match r {
            Ok(topic) => tracing::info!(%topic, "{what} created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(
                    |_| tracing::error!(topic = %t, error = %code, "cannot create the {what}"),
                )
            }
        }
    }
    Ok(())
}

/// A producer's delivery callback: counts failed deliveries and logs each, naming `what` was
/// not delivered (the state topic's checkpoint records, the router's re-keyed records); a
/// writer that waits for its acknowledgements ([`Deliveries::waited`]) is woken by each.
pub(crate) struct Deliveries {
    pub(crate) what: &'static str,
    pub(crate) failed: AtomicU64,
    /// Delivery reports received, delivered or not.
    reported: AtomicU64,
    /// Wakes [`Deliveries::wait_reported`] (`None`: nobody waits, no wake per message).
    wake: Option<(Mutex<()>, Condvar)>,
}

impl Deliveries {
    pub(crate) fn new(what: &'static str) -> Deliveries {
        Deliveries {
            what,
            failed: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            wake: None,
        }
    }

    /// For a producer whose writer sleeps until its records are acknowledged.
    pub(crate) fn waited(what: &'static str) -> Deliveries {
        Deliveries {
            wake: Some((Mutex::new(()), Condvar::new())),
            ..Deliveries::new(what)
        }
    }

    /// Delivery reports received so far.
    pub(crate) fn reported(&self) -> u64 {
        self.reported.load(Ordering::Acquire)
    }

    /// Sleep until `at_least` reports have been received (true) or `deadline` passes (false).
    /// Not `BaseProducer::poll` in a loop: a poll of less than a millisecond left does not
    /// block (its timeout rounds down to 0 ms), so a 1 ms poll spins its whole millisecond,
    /// measured as a busy writer thread on a 2-core machine whose broker needed that core.
    pub(crate) fn wait_reported(&self, at_least: u64, deadline: Instant) -> bool {
        let Some((m, c)) = &self.wake else {
            return self.reported() >= at_least;
        };
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.reported() >= at_least {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = c
                .wait_timeout(g, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

impl ClientContext for Deliveries {
    super::client_log::route_client_log!();
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            tracing::warn!(error = %e, "{} not delivered", self.what);
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        match &self.wake {
            Some((m, c)) => {
                // under the lock: a waiter between its check and its sleep is not missed
                let _g = m.lock().unwrap_or_else(|e| e.into_inner());
                self.reported.fetch_add(1, Ordering::Release);
                c.notify_all();
            }
            None => {
                self.reported.fetch_add(1, Ordering::Release);
            }
        }
    }
}

/// Writes checkpoints to the state topic: every record of one partition's checkpoint to the
/// same state partition (in order: the commit lands after its chunks), acknowledged by all
/// in-sync replicas before the write returns.
pub struct KafkaCheckpointStore {
    /// Polled by its own thread, which wakes the writer at each acknowledgement.
    producer: ThreadedProducer<Deliveries>,
    topic: String,
    partitions: i32,
}

/// How long a checkpoint may take to become durable before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

impl KafkaCheckpointStore {
    /// A producer for the state topic of `k`.
    pub fn new(k: &KafkaSettings) -> Result<KafkaCheckpointStore, KafkaError> {
        let producer: ThreadedProducer<Deliveries> = client_config(
            k,
            &[
                ("acks", "all"),
                ("linger.ms", "0"),
                ("message.max.bytes", "1048588"),
            ],
        )
        .create_with_context(Deliveries::waited("checkpoint record"))?;
        let topic = k.state_topic();
        let md = producer
            .client()
            .fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let partitions = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(1, |t| t.partitions().len().max(1) as i32);
        Ok(KafkaCheckpointStore {
            producer,
            topic,
            partitions,
        })
    }
}

impl CheckpointStore for KafkaCheckpointStore {
    fn write(&mut self, records: &[(String, Option<Vec<u8>>)]) -> Result<(), String> {
        let ctx = self.producer.context();
        let failed = ctx.failed.load(Ordering::Relaxed);
        let reported = ctx.reported();
        let deadline = Instant::now() + WRITE_TIMEOUT;
        // the input partition's key (a commit's, a chunk's up to `#`) places every record of
        // its checkpoints in one state partition, in order
        for (k, v) in records {
            let owner = k.split_once('#').map_or(k.as_str(), |(p, _)| p);
            let partition =
                (twox_hash::XxHash3_64::oneshot(owner.as_bytes()) % self.partitions as u64) as i32;
            let mut rec = BaseRecord::to(&self.topic)
                .key(k.as_str())
                .partition(partition);
            if let Some(v) = v {
                rec = rec.payload(v.as_slice());
            }
            loop {
                match self.producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                        if Instant::now() < deadline =>
                    {
                        rec = r;
                        // room comes with acknowledgements
                        let wait = (Instant::now() + Duration::from_millis(10)).min(deadline);
                        ctx.wait_reported(ctx.reported() + 1, wait);
                    }
                    Err((e, _)) => return Err(e.to_string()),
                }
            }
        }
        // not `flush`: it sleeps in steps of up to 100 ms between checks (measured: ~100 ms
        // per checkpoint on a local broker), here each delivery report wakes the wait
        if !ctx.wait_reported(reported + records.len() as u64, deadline) {
            return Err("not acknowledged in time".into());
        }
        if ctx.failed.load(Ordering::Relaxed) != failed {
            return Err("a record was not delivered".into());
        }
        Ok(())
    }
}

/// A consumer of the state topic outside the group (`{group_id}.armwatch-state-{role}`, never
/// committing), assigned every partition from the start; returns it and the partitions.
fn reader(
    k: &KafkaSettings,
    role: &str,
    timeout: Duration,
) -> Result<(BaseConsumer<Quiet>, Vec<i32>), KafkaError> {
    let topic = k.state_topic();
    let group = format!("{}.armwatch-state-{role}", k.group_id);
    let consumer: BaseConsumer<Quiet> = client_config(
        k,
        &[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
        ],
    )
    .create_with_context(Quiet)?;
    let md = consumer.fetch_metadata(Some(&topic), timeout)?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    if !partitions.is_empty() {
        consumer.assign(&tpl)?;
    }
    Ok((consumer, partitions))
}

/// Read the state topic of `k` from its start to its end (as of now) and keep the latest
/// record of each key of the partitions `wanted` (`None`: all).
///
/// The end is found by a fence, not by the high watermark: a tombstone under a key of its own
/// is written to each state partition first, and each partition is read until its fence comes
/// back. Records written before the read began (acknowledged or still landing) are before the
/// fence; and the broker of the tests (tansu) reports a high watermark that stops short of the
/// last records of a multi-record batch (measured: 1 after a batch of 2 at offsets 0-1).
pub fn read(
    k: &KafkaSettings,
    wanted: Option<Vec<String>>,
    timeout: Duration,
) -> Result<Collector, KafkaError> {
    let topic = k.state_topic();
    let (consumer, partitions) = reader(k, "reader", timeout)?;
    let mut out = Collector::new(wanted);
    if partitions.is_empty() {
        return Ok(out);
    }
    let fence = format!(
        "~fence/{:016x}",
        twox_hash::XxHash3_64::oneshot(
            format!("{} {:?}", std::process::id(), std::time::SystemTime::now()).as_bytes()
        )
    );
    let producer: BaseProducer<Quiet> =
        client_config(k, &[("acks", "all"), ("linger.ms", "0")]).create_with_context(Quiet)?;
    for &p in &partitions {
        producer
            .send(BaseRecord::<str, [u8]>::to(&topic).key(&fence).partition(p))
            .map_err(|(e, _)| e)?;
    }
    producer.flush(timeout)?;
    let deadline = Instant::now() + timeout;
    let mut open = partitions;
    while !open.is_empty() {
        if Instant::now() >= deadline {
            return Err(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let key = m.key().unwrap_or_default();
                if key == fence.as_bytes() {
                    open.retain(|&p| p != m.partition());
                } else if !key.starts_with(b"~fence/") {
                    out.add(key, m.payload());
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "reading the state topic"),
            None => {}
        }
    }
    Ok(out)
}

/// Follow the state topic (every partition's checkpoints, as other replicas write them) and,
/// every `every`, publish into `out` each partition's newest complete checkpoint as an engine
/// for the merged view (decoding only those that changed), until `stop` is set.
pub fn follow(
    k: &KafkaSettings,
    settings: Settings,
    every: Duration,
    out: Arc<MergedView>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, KafkaError> {
    let (consumer, _) = reader(k, "view", Duration::from_secs(10))?;
    let worker = std::thread::Builder::new()
        .name("armwatch-state-view".into())
        .spawn(move || {
            let mut collected = Collector::new(None);
            // partition key -> (generation, next offset) of the engine published
            let mut published: HashMap<String, (u64, i64)> = HashMap::new();
            let mut view: Vec<Viewed> = Vec::new();
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        let key = m.key().unwrap_or_default();
                        if !key.starts_with(b"~fence/") {
                            collected.add(key, m.payload());
                        }
                    }
                    Some(Err(e)) => tracing::debug!(error = %e, "following the state topic"),
                    None => {}
                }
                if last.elapsed() < every {
                    continue;
                }
                last = Instant::now();
                let owned: Vec<String> = out.owned.lock().map(|o| o.clone()).unwrap_or_default();
                let before = view.len();
                view.retain(|v| !owned.contains(&v.key));
                published.retain(|k, _| !owned.contains(k));
                let mut changed = view.len() != before;
                for key in collected.partitions() {
                    if owned.contains(&key) {
                        continue; // this replica's own: its live state is in the view
                    }
                    let Ok(Some(cp)) = collected.checkpoint(&key) else {
                        continue; // incomplete or refused: the last good view stays
                    };
                    if published.get(&key) == Some(&(cp.generation, cp.next_offset)) {
                        continue;
                    }
                    match crate::snapshot::read(&settings, &cp.snapshot) {
                        Ok(engine) => {
                            published.insert(key.clone(), (cp.generation, cp.next_offset));
                            view.retain(|v| v.key != key);
                            view.push(Viewed {
                                key,
                                next_offset: cp.next_offset,
                                engine: Arc::new(engine),
                            });
                            changed = true;
                        }
                        Err(e) => {
                            tracing::debug!(partition = %key, error = %e, "checkpoint not viewable")
                        }
                    }
                }
                if changed {
                    if let Ok(mut o) = out.others.lock() {
                        *o = Arc::new(view.clone());
                    }
                }
            }
        })
        .map_err(|e| {
            tracing::error!(error = %e, "cannot start the state view thread");
            KafkaError::Global(RDKafkaErrorCode::Fail)
        })?;
    Ok(worker)
}
