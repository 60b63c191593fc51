//! The Kafka shell of checkpoints ([`crate::checkpoint`]): the compacted state topic (created
//! if missing), a producer that writes a checkpoint's records and waits until they are
//! durable, and a reader that collects the latest records of the whole topic.

use super::kafka::client_config;
use crate::checkpoint::Collector;
use crate::config::KafkaSettings;
use crate::daemon::CheckpointStore;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Create the state topic if it does not exist: one partition, compacted (only the latest
/// record per key is kept: each partition's last commit and the chunks it names).
pub async fn ensure(k: &KafkaSettings) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(k, &[]).create()?;
    let topic = k.state_topic();
    let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "compact")
        // a chunk is up to ~900 KB
        .set("max.message.bytes", "1048588");
    let res = admin
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for r in res {
        match r {
            Ok(_) => tracing::info!(%topic, "state topic created (compacted)"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(topic = %t, error = %code, "cannot create the state topic")
                })
            }
        }
    }
    Ok(())
}

/// Counts failed deliveries.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            tracing::warn!(error = %e, "checkpoint record not delivered");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Writes checkpoints to the state topic: every record of one partition's checkpoint to the
/// same state partition (in order: the commit lands after its chunks), acknowledged by all
/// in-sync replicas before the write returns.
pub struct KafkaCheckpointStore {
    producer: BaseProducer<Deliveries>,
    topic: String,
    partitions: i32,
}

/// How long a checkpoint may take to become durable before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

impl KafkaCheckpointStore {
    /// A producer for the state topic of `k`.
    pub fn new(k: &KafkaSettings) -> Result<KafkaCheckpointStore, KafkaError> {
        let producer: BaseProducer<Deliveries> = client_config(
            k,
            &[
                ("acks", "all"),
                ("linger.ms", "0"),
                ("message.max.bytes", "1048588"),
            ],
        )
        .create_with_context(Deliveries::default())?;
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
    fn write(&mut self, records: &[(String, Vec<u8>)]) -> Result<(), String> {
        let failed = self.producer.context().failed.load(Ordering::Relaxed);
        let deadline = Instant::now() + WRITE_TIMEOUT;
        // the commit's key (the last record's) places every record of the checkpoint
        let key = records.last().map_or("", |r| r.0.as_str());
        let partition =
            (twox_hash::XxHash3_64::oneshot(key.as_bytes()) % self.partitions as u64) as i32;
        for (k, v) in records {
            let mut rec = BaseRecord::to(&self.topic)
                .key(k.as_str())
                .payload(v.as_slice())
                .partition(partition);
            loop {
                match self.producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                        if Instant::now() < deadline =>
                    {
                        rec = r;
                        self.producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => return Err(e.to_string()),
                }
            }
        }
        self.producer
            .flush(deadline.saturating_duration_since(Instant::now()))
            .map_err(|e| e.to_string())?;
        if self.producer.context().failed.load(Ordering::Relaxed) != failed {
            return Err("a record was not delivered".into());
        }
        Ok(())
    }
}

/// Read the state topic of `k` from its start to its end (as of now) and keep the latest
/// record of each key of the partitions `wanted` (`None`: all).
pub fn read(
    k: &KafkaSettings,
    wanted: Option<Vec<String>>,
    timeout: Duration,
) -> Result<Collector, KafkaError> {
    let topic = k.state_topic();
    let group = format!("{}.armwatch-state-reader", k.group_id);
    let consumer: BaseConsumer = client_config(
        k,
        &[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "false"),
        ],
    )
    .create()?;
    let md = consumer.fetch_metadata(Some(&topic), timeout)?;
    let mut tpl = TopicPartitionList::new();
    // the last offset to read of each partition
    let mut last: Vec<(i32, i64)> = Vec::new();
    for t in md.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(&topic, p.id(), timeout)?;
            if high > low {
                tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)?;
                last.push((p.id(), high - 1));
            }
        }
    }
    let mut out = Collector::new(wanted);
    if last.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    let mut position: Vec<(i32, i64)> = last.iter().map(|&(p, _)| (p, -1)).collect();
    while position
        .iter()
        .zip(&last)
        .any(|(&(_, at), &(_, end))| at < end)
    {
        if Instant::now() >= deadline {
            return Err(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                out.add(m.key().unwrap_or_default(), m.payload());
                if let Some(p) = position.iter_mut().find(|p| p.0 == m.partition()) {
                    p.1 = m.offset();
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "reading the state topic"),
            None => {}
        }
    }
    Ok(out)
}
