//! The IO shell around the engines of the owned partitions ([`Partitions`]): feeds them
//! messages, forwards new alerts to the sink task, logs rejections at a bounded rate,
//! checkpoints the partitions' state, and publishes metrics and the merged report at a fixed
//! cadence. Kafka (`run`) and the simulator (`demo`) both drive it.

use crate::check::Alert;
use crate::engine::Engine;
use crate::event::{Event, Kind, RejectReason};
use crate::http::Shared;
use crate::metrics::Metrics;
use crate::partitions::{MergedView, Part, Partitions, Route, Viewed};
use crate::sink::Outgoing;
use crate::threads::EngineThreads;
use prometheus::Histogram;
use std::borrow::Cow;
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

/// Resolved alerts remembered at most (one per check, experiment and subject: bounded by the
/// alerts themselves; the cap only guards memory).
const MAX_RESOLVED: usize = 100_000;

/// `alerts` on their way to the sinks; with `ack = Some((part, first))` each is acknowledged as
/// `(part, first + i)` once delivered.
fn outgoing(alerts: &[Alert], ack: Option<(usize, usize)>) -> impl Iterator<Item = Outgoing> + '_ {
    alerts.iter().enumerate().map(move |(i, a)| Outgoing {
        alert: a.clone(),
        ack: ack.map(|(p, first)| (p, first + i)),
        resolved: false,
    })
}

/// Hand `out` to the sink task without ever blocking the engine thread. Returns how many the
/// full channel refused: counted in `armwatch_alerts_dropped_total{sink="all"}` and, not
/// acknowledged, delivered again after a restart with checkpoints.
fn send(tx: &mpsc::Sender<Outgoing>, out: impl IntoIterator<Item = Outgoing>) -> u64 {
    let mut dropped = 0;
    for o in out {
        if let Err(e) = tx.try_send(o) {
            dropped += 1;
            let check = match &e {
                mpsc::error::TrySendError::Full(o) | mpsc::error::TrySendError::Closed(o) => {
                    o.alert.check.as_str()
                }
            };
            tracing::error!(
                check,
                "alert channel full: alert kept in the report but not sent to sinks"
            );
        }
    }
    dropped
}

/// Hand partition `i`'s alerts not yet handed to the sinks; returns how many were refused.
fn hand_alerts(tx: &mpsc::Sender<Outgoing>, i: usize, p: &mut Part) -> u64 {
    let first = p.handed.min(p.engine.alerts().len());
    let dropped = send(tx, outgoing(&p.engine.alerts()[first..], Some((i, first))));
    p.handed = p.engine.alerts().len();
    dropped
}

/// Something that forwards rejected messages (the dead-letter topic).
pub trait DeadLetter {
    /// Forward `payload` rejected for `reason`; false when it could not be queued.
    fn forward(&mut self, payload: &[u8], reason: RejectReason) -> bool;

    /// Deliver what is queued (at shutdown).
    fn flush(&mut self) {}
}

/// Where checkpoints go (the Kafka state topic).
pub trait CheckpointStore {
    /// Write the records of checkpoints ([`crate::checkpoint::records`]; `None`: a
    /// tombstone) in order and return once they are durable (or failed).
    fn write(&mut self, records: &[(String, Option<Vec<u8>>)]) -> Result<(), String>;
}

/// One partition's checkpoint for the writer thread: its records, and the alerts to hand to
/// the sinks once it is durable.
struct Job {
    part: usize,
    key: String,
    generation: u64,
    next_offset: i64,
    records: Vec<(String, Option<Vec<u8>>)>,
    bytes: usize,
    alerts: Vec<Outgoing>,
    started: Instant,
    /// A checkpoint (false: a delivery record of the last one).
    snapshot: bool,
}

/// A job's outcome.
struct Written {
    part: usize,
    generation: u64,
    next_offset: i64,
    ok: bool,
    bytes: usize,
    seconds: f64,
    snapshot: bool,
}

/// Checkpoints waiting for the writer thread at most: past it a checkpoint is skipped (its
/// partition stays dirty for the next), so a slow or unreachable broker never blocks the engine
/// thread.
const JOBS_QUEUED: usize = 8;

/// How long a hand-over or a stop waits for its checkpoints to be written.
const WRITE_WAIT: Duration = Duration::from_secs(45);

/// The writer thread: writes each job's records and waits until they are durable, then hands
/// the job's alerts to the sinks (after a failure too: never withheld) and reports.
fn write_checkpoints(
    mut store: Box<dyn CheckpointStore + Send>,
    jobs: std::sync::mpsc::Receiver<Job>,
    written: std::sync::mpsc::Sender<Written>,
    alerts: mpsc::Sender<Outgoing>,
) {
    for job in jobs {
        let res = store.write(&job.records);
        if let Err(e) = &res {
            tracing::error!(partition = %job.key, error = %e, "checkpoint failed: the state stays in memory and is retried; consumer offsets stay at the last durable checkpoint");
        }
        for a in job.alerts {
            // this thread may wait for the sinks' dispatcher (it only queues): nothing dropped
            if alerts.blocking_send(a).is_err() {
                return; // the sinks are gone: the daemon is stopping
            }
        }
        let done = Written {
            part: job.part,
            generation: job.generation,
            next_offset: job.next_offset,
            ok: res.is_ok(),
            bytes: job.bytes,
            seconds: job.started.elapsed().as_secs_f64(),
            snapshot: job.snapshot,
        };
        if written.send(done).is_err() {
            return;
        }
    }
}

/// The publish cadence (metrics and report), unless publishing costs more than a tenth of it.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// How long a stop or a hand-over waits for the sinks to acknowledge the alerts handed to
/// them.
const ACK_WAIT: Duration = Duration::from_secs(5);

/// A request from the consumer's thread, which must wait for the answer.
pub enum Control {
    /// Checkpoint these partitions (by index) and stop owning them, then answer.
    Revoke(Vec<usize>, std::sync::mpsc::Sender<()>),
}

/// Checkpointing: the store, the cadence, what became durable, and the alerts' delivery.
///
/// Alerts are delivered at least once: a new alert is handed to the sinks once a checkpoint
/// holding it is durable (so a restart does not fire it anew), and counted as delivered when
/// the sinks acknowledge it; the next checkpoint records that. After a restart the alerts not
/// recorded as delivered are handed again (the same alert: same identity and first event, which
/// Alertmanager and a consumer of the alert topic deduplicate).
struct Checkpointing {
    /// Checkpoints on their way to the writer thread (`None` once it is told to end).
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
    /// What the writer thread made durable (or failed to).
    written: std::sync::mpsc::Receiver<Written>,
    /// Jobs sent and not yet reported.
    in_flight: usize,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    /// This process's writer id (random): its chunks never share a key with another's.
    writer: u64,
    /// `[kafka.checkpoint] interval_ms`: the shortest time between periodic checkpoints.
    every: Duration,
    last: Instant,
    /// What the last checkpoint round cost the engine thread (the snapshots' serialization):
    /// the next, periodic or for alerts, waits at least nine times that, so that checkpointing
    /// large states takes at most about a tenth of the engine thread (as publishing does).
    cost: Duration,
    /// `(partition index, next offset)` of checkpoints now durable: the consumer commits them
    /// (offsets never run ahead of a durable checkpoint).
    durable: Arc<Mutex<Vec<(usize, i64)>>>,
    controls: std::sync::mpsc::Receiver<Control>,
    /// `(partition index, alert index)` acknowledged by the sinks.
    acks: std::sync::mpsc::Receiver<(usize, usize)>,
    /// A new alert waits for a durable checkpoint.
    alerts_waiting: bool,
    /// The last checkpoint taken for alerts (at most one per [`ALERT_CHECKPOINT_EVERY`]).
    last_alert: Instant,
}

/// Checkpoints for alerts come at most once per this (of the partitions that fired: a burst
/// of alerts costs one checkpoint, not one each), or nine times the last round's
/// serialization when that is longer (`Checkpointing::cost`).
const ALERT_CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The engines and everything they report to.
pub struct EngineLoop {
    parts: Partitions,
    checkpointing: Option<Checkpointing>,
    /// Other replicas' partitions from their checkpoints (the state topic's tail), merged
    /// into the view.
    others: Option<Arc<MergedView>>,
    /// Partitions this replica handed over, as it left them, until the state topic's tail
    /// shows their next owner's checkpoints at least as far (so the view never goes back).
    handed_over: Vec<Viewed>,
    metrics: Arc<Mutex<Metrics>>,
    processing: Histogram,
    shared: Arc<Shared>,
    alerts: mpsc::Sender<Outgoing>,
    reject_log: RateLimiter,
    dead_letter: Option<Box<dyn DeadLetter + Send>>,
    /// 500 ms, or ten times what the last publish cost when that is more (merging the
    /// views of many partitions of a large fleet is costly: publishing stays under a tenth of
    /// the engine thread's time).
    publish_every: Duration,
    last_publish: Instant,
    n: u64,
    /// Counted here and added to the metrics when they are published, so that a flood of bad
    /// messages takes no lock per message: rejected-log lines suppressed, dead letters
    /// queued, dead letters dropped.
    /// Since the last publish: rejected log lines suppressed, dead letters queued, dead
    /// letters dropped, alerts the sinks' channel refused, re-keyed copies dropped.
    pending: [u64; 5],
    /// Experiments already warned about units counted in several partitions (key hashes).
    warned_split: std::collections::HashSet<u64>,
    /// Alerts already sent as resolved (identity hashes).
    resolved: std::collections::HashSet<u64>,
    /// The threads that serialize the owned partitions' checkpoints
    /// ([`EngineLoop::with_threads`]).
    threads: EngineThreads,
}

impl EngineLoop {
    /// Wire the partitions' engines to their outputs.
    pub fn new(
        parts: Partitions,
        metrics: Arc<Mutex<Metrics>>,
        shared: Arc<Shared>,
        alerts: mpsc::Sender<Outgoing>,
        rejected_log_per_second: u32,
        dead_letter: Option<Box<dyn DeadLetter + Send>>,
    ) -> EngineLoop {
        let processing = metrics
            .lock()
            .map(|m| m.processing.clone())
            .expect("metrics lock is not poisoned at startup");
        EngineLoop {
            parts,
            checkpointing: None,
            others: None,
            handed_over: Vec::new(),
            metrics,
            processing,
            shared,
            alerts,
            reject_log: RateLimiter::new(rejected_log_per_second),
            dead_letter,
            publish_every: PUBLISH_EVERY,
            last_publish: Instant::now(),
            n: 0,
            pending: [0; 5],
            warned_split: Default::default(),
            resolved: Default::default(),
            threads: EngineThreads::one(),
        }
    }

    /// Serialize the owned partitions' checkpoints on `threads` threads (1: the engine thread
    /// alone): each partition's snapshot is its own, and the engine thread waits for them.
    pub fn with_threads(mut self, threads: usize) -> EngineLoop {
        self.threads = EngineThreads::new(threads);
        self
    }

    /// Checkpoint the partitions' state to `store` every `every` (and before alerts are
    /// delivered, on revoke and at the end); what became durable goes to `durable`; the
    /// consumer's revokes arrive on `controls`, the sinks' acknowledgements on `acks`.
    pub fn with_checkpoints(
        mut self,
        store: Box<dyn CheckpointStore + Send>,
        every: Duration,
        durable: Arc<Mutex<Vec<(usize, i64)>>>,
        controls: std::sync::mpsc::Receiver<Control>,
        acks: std::sync::mpsc::Receiver<(usize, usize)>,
    ) -> EngineLoop {
        let seed = format!("{} {:?}", std::process::id(), std::time::SystemTime::now());
        let (jobs, queued) = std::sync::mpsc::sync_channel(JOBS_QUEUED);
        let (report, written) = std::sync::mpsc::channel();
        let sinks = self.alerts.clone();
        let writer_thread = std::thread::Builder::new()
            .name("armwatch-checkpoint".into())
            .spawn(move || write_checkpoints(store, queued, report, sinks))
            .map_err(|e| tracing::error!(error = %e, "cannot start the checkpoint writer"))
            .ok();
        self.checkpointing = Some(Checkpointing {
            jobs: Some(jobs),
            written,
            in_flight: 0,
            writer_thread,
            writer: twox_hash::XxHash3_64::oneshot(seed.as_bytes()),
            every,
            last: Instant::now(),
            cost: Duration::ZERO,
            durable,
            controls,
            acks,
            alerts_waiting: false,
            last_alert: Instant::now(),
        });
        self
    }

    /// Merge the partitions `others` holds (other replicas', from their checkpoints) into the
    /// report and metrics.
    pub fn with_merged_view(mut self, others: Arc<MergedView>) -> EngineLoop {
        self.others = Some(others);
        self
    }

    /// Other replicas' partitions for the view: from the state topic's tail, or as this
    /// replica handed them over when the tail is not that far yet.
    fn others(&mut self) -> Vec<Viewed> {
        let Some(tail) = self
            .others
            .as_ref()
            .and_then(|o| o.others.lock().ok().map(|o| Arc::clone(&o)))
        else {
            return Vec::new();
        };
        self.handed_over.retain(|h| {
            !tail
                .iter()
                .any(|t| t.key == h.key && t.next_offset >= h.next_offset)
        });
        let mut out: Vec<Viewed> = tail
            .iter()
            .filter(|t| !self.handed_over.iter().any(|h| h.key == t.key))
            .cloned()
            .collect();
        out.extend(self.handed_over.iter().cloned());
        out
    }

    /// Process one message of partition `part` at `offset` (`-1`: a source without offsets;
    /// `upstream`: the input partition and offset of a re-keyed message; `payload` `None`: a message without payload, `decoded` its event decoded with
    /// [`Self::decode_limits`], possibly on another thread).
    #[inline]
    pub fn on_message_at(
        &mut self,
        part: usize,
        offset: i64,
        upstream: Option<(&str, i64)>,
        payload: Option<&[u8]>,
        decoded: &Result<Event<'_>, RejectReason>,
    ) -> Option<Result<Kind, RejectReason>> {
        let timer = (self.n & 63 == 0).then(Instant::now);
        self.n += 1;
        let p = match self.parts.engine_for(part, offset, upstream) {
            Route::Apply(p) => p,
            Route::Unowned | Route::Duplicate => return None,
            Route::Repeated => {
                // counted at the next publish (no lock per message)
                self.pending[4] += 1;
                return None;
            }
        };
        let res = match payload {
            Some(_) => p.engine.process_decoded(decoded),
            None => {
                p.engine.count_rejected(RejectReason::Empty);
                Err(RejectReason::Empty)
            }
        };
        match &mut self.checkpointing {
            Some(c) => c.alerts_waiting |= p.engine.alerts().len() > p.handed,
            None => {
                let fresh = p.engine.take_new_alerts();
                self.pending[3] += send(&self.alerts, outgoing(fresh, None));
            }
        }
        if let Some(t) = timer {
            self.processing.observe(t.elapsed().as_secs_f64());
        }
        if let Err(reason) = res {
            self.rejected(payload.unwrap_or_default(), reason, part, offset);
        }
        Some(res)
    }

    /// The decoder's limits.
    pub fn decode_limits(&self) -> crate::event::Limits {
        self.parts.decode_limits()
    }

    /// Own partition `index` from now on, continuing from `part` (restored from its
    /// checkpoint, or fresh); its engine takes the running settings.
    pub fn assign(&mut self, index: usize, mut part: Part) {
        let settings = self.parts.settings().clone();
        let old = std::mem::replace(&mut part.engine, Engine::new(&settings));
        part.engine = old.reconfigured(&settings);
        // its checkpoint is durable: the alerts it holds that no sink acknowledged go out again
        part.handed = part.engine.delivered();
        if part.engine.alerts().len() > part.handed {
            tracing::info!(partition = %part.key, alerts = part.engine.alerts().len() - part.handed, "alerts not acknowledged before the hand-over: delivered again");
            self.pending[3] += hand_alerts(&self.alerts, index, &mut part);
        }
        tracing::info!(partition = %part.key, next_offset = part.next_offset, generation = part.generation, "partition state taken on");
        self.handed_over.retain(|h| h.key != part.key);
        self.parts.assign(index, part);
        self.count_owned();
    }

    fn count_owned(&self) {
        if let Ok(m) = self.metrics.lock() {
            m.partitions_owned.set(self.parts.len() as i64);
        }
        if let Some(view) = &self.others {
            if let Ok(mut owned) = view.owned.lock() {
                *owned = self.parts.iter().map(|(_, p)| p.key.clone()).collect();
            }
        }
    }

    /// Between batches: answer the consumer's requests, and checkpoint when due (the cadence,
    /// or alerts waiting for a durable state).
    pub fn between_batches(&mut self) {
        let Some(c) = &self.checkpointing else {
            return;
        };
        let revokes: Vec<Control> = c.controls.try_iter().collect();
        self.take_acks(Duration::ZERO);
        self.take_written(Duration::ZERO);
        let Some(c) = &self.checkpointing else {
            return;
        };
        // one periodic round at a time: the next waits until the last is durable, so that a
        // writer (or broker) slower than the cadence does not get snapshots it must skip after
        // the engine threads paid for serializing them
        let periodic = c.in_flight == 0 && c.last.elapsed() >= c.every.max(c.cost * 9);
        let for_alerts =
            c.alerts_waiting && c.last_alert.elapsed() >= ALERT_CHECKPOINT_EVERY.max(c.cost * 9);
        for Control::Revoke(parts, answer) in revokes {
            self.checkpoint_settled(|i, _| parts.contains(&i));
            for i in parts {
                if let Some(p) = self.parts.revoke(i) {
                    tracing::info!(partition = %p.key, next_offset = p.next_offset, "partition state handed over");
                    if self.others.is_some() {
                        self.handed_over.retain(|h| h.key != p.key);
                        self.handed_over.push(Viewed {
                            key: p.key,
                            next_offset: p.next_offset,
                            engine: Arc::new(p.engine),
                        });
                    }
                }
            }
            self.count_owned();
            let _ = answer.send(());
        }
        if periodic || for_alerts {
            let started = Instant::now();
            if periodic {
                self.checkpoint(|_, _| true);
            } else {
                self.checkpoint(|_, p| p.engine.alerts().len() > p.handed);
            }
            if let Some(c) = &mut self.checkpointing {
                if periodic {
                    c.last = Instant::now();
                }
                c.cost = started.elapsed();
                c.last_alert = Instant::now();
                c.alerts_waiting = false;
            }
        }
    }

    /// Take the sinks' acknowledgements, waiting up to `wait` for those of every alert handed
    /// to them (a clean stop or hand-over leaves none to deliver again).
    fn take_acks(&mut self, wait: Duration) {
        let Some(c) = &self.checkpointing else {
            return;
        };
        let deadline = Instant::now() + wait;
        // recorded by the next checkpoint
        let confirm = |parts: &mut Partitions, (i, alert): (usize, usize)| {
            if let Some(p) = parts.get_mut(i) {
                p.acked |= p.engine.confirm_delivered(alert);
            }
        };
        loop {
            for ack in c.acks.try_iter() {
                confirm(&mut self.parts, ack);
            }
            let settled = self
                .parts
                .iter()
                .all(|(_, p)| p.engine.delivered() >= p.handed);
            let left = deadline.saturating_duration_since(Instant::now());
            if settled || left.is_zero() {
                return;
            }
            if let Ok(ack) = c.acks.recv_timeout(left) {
                confirm(&mut self.parts, ack);
            }
        }
    }

    /// Checkpoint the partitions `which` selects and wait until it is written, then take the
    /// sinks' acknowledgements of the alerts it handed them and checkpoint those (a hand-over
    /// or a stop leaves nothing to deliver again).
    fn checkpoint_settled(&mut self, which: impl Fn(usize, &Part) -> bool) {
        self.checkpoint(&which);
        self.take_written(WRITE_WAIT);
        self.take_acks(ACK_WAIT);
        self.checkpoint(&which);
        self.take_written(WRITE_WAIT);
    }

    /// Checkpoint every owned partition with unsaved state (at the end), then once more with
    /// the sinks' acknowledgements of the alerts it handed them.
    pub fn checkpoint_all(&mut self) {
        if self.checkpointing.is_some() {
            self.checkpoint_settled(|_, _| true);
            self.stop_writer();
            for (_, p) in self.parts.iter() {
                tracing::info!(partition = %p.key, next_offset = p.next_offset, generation = p.generation, dirty = p.dirty, "final checkpoint");
            }
        }
    }

    /// Queue checkpoints of the dirty partitions `which` selects for the writer thread (the
    /// engine thread only serializes); their new alerts go to the sinks once written. A
    /// partition whose checkpoint finds the queue full stays dirty for the next. A partition
    /// that only had alerts acknowledged since its last checkpoint gets a delivery record of
    /// that checkpoint instead (a few bytes, not the state again).
    fn checkpoint(&mut self, which: impl Fn(usize, &Part) -> bool) {
        if self.checkpointing.is_none() {
            return;
        }
        // acknowledgements with no checkpoint to name take a checkpoint
        for (_, p) in self.parts.iter_mut() {
            p.dirty |= p.acked && p.generation == 0;
        }
        // the partitions' snapshots, serialized on the engine threads
        let started = Instant::now();
        let due: Vec<(usize, &Part)> = self
            .parts
            .iter()
            .filter(|&(i, p)| p.dirty && which(i, p))
            .collect();
        let mut snapshots = self
            .threads
            .map(due, |(i, p)| (i, crate::snapshot::write(&p.engine)))
            .into_iter()
            .peekable();
        let Some(c) = &mut self.checkpointing else {
            return;
        };
        for (i, p) in self.parts.iter_mut() {
            if !which(i, p) {
                continue;
            }
            if !p.dirty {
                self.pending[3] += hand_alerts(&self.alerts, i, p);
                if let (true, Some(jobs)) = (p.acked, &c.jobs) {
                    let delivered = p.engine.delivered() as u64;
                    let record = crate::checkpoint::delivery_record(
                        &p.key,
                        p.writer,
                        p.generation,
                        delivered,
                    );
                    let job = Job {
                        part: i,
                        key: p.key.clone(),
                        generation: p.generation,
                        next_offset: p.next_offset,
                        bytes: record.1.as_ref().map_or(0, Vec::len),
                        records: vec![record],
                        alerts: Vec::new(),
                        started,
                        snapshot: false,
                    };
                    if jobs.try_send(job).is_ok() {
                        c.in_flight += 1;
                        p.acked = false;
                    }
                }
                continue;
            }
            let Some(jobs) = &c.jobs else {
                return;
            };
            let Some((_, snapshot)) = snapshots.next_if(|(j, _)| *j == i) else {
                continue;
            };
            let generation = p.generation + 1;
            let records = crate::checkpoint::records(
                &p.key,
                c.writer,
                generation,
                p.next_offset,
                &p.upstream,
                &snapshot,
                &p.superseded,
            );
            let handed = p.handed.min(p.engine.alerts().len());
            let alerts: Vec<Outgoing> =
                outgoing(&p.engine.alerts()[handed..], Some((i, handed))).collect();
            let job = Job {
                part: i,
                key: p.key.clone(),
                generation,
                next_offset: p.next_offset,
                records,
                bytes: snapshot.len(),
                alerts,
                started,
                snapshot: true,
            };
            match jobs.try_send(job) {
                Ok(()) => {
                    c.in_flight += 1;
                    p.generation = generation;
                    p.writer = c.writer;
                    p.dirty = false;
                    p.acked = false;
                    p.superseded =
                        crate::checkpoint::chunk_keys(&p.key, c.writer, generation, snapshot.len());
                    p.handed = p.engine.alerts().len();
                }
                Err(_) => {
                    if let Ok(m) = self.metrics.lock() {
                        m.checkpoints.with_label_values(&["skipped"]).inc();
                    }
                }
            }
        }
    }

    /// Take the writer thread's reports (waiting up to `wait` until none is in flight): a
    /// written checkpoint's offset becomes committable; a failed one leaves its partition dirty.
    fn take_written(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let Some(c) = &mut self.checkpointing else {
                return;
            };
            let next = match c.written.try_recv() {
                Ok(w) => Some(w),
                Err(_) if c.in_flight == 0 => return,
                Err(_) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return;
                    }
                    c.written.recv_timeout(left).ok()
                }
            };
            let Some(w) = next else {
                return;
            };
            c.in_flight = c.in_flight.saturating_sub(1);
            if w.ok && w.snapshot {
                if let Ok(mut d) = c.durable.lock() {
                    d.push((w.part, w.next_offset));
                }
            } else if let Some(p) = self.parts.get_mut(w.part) {
                if w.ok {
                    tracing::debug!(partition = %p.key, generation = w.generation, "delivery recorded");
                } else if p.generation == w.generation && w.snapshot {
                    p.dirty = true; // rewritten by the next checkpoint
                } else if p.generation == w.generation {
                    p.acked = true; // recorded by the next checkpoint or delivery record
                }
            }
            if !w.snapshot {
                continue;
            }
            if let Ok(m) = self.metrics.lock() {
                if w.ok {
                    m.checkpoints.with_label_values(&["written"]).inc();
                    m.checkpoint_bytes.set(w.bytes as i64);
                    m.checkpoint_written_bytes.inc_by(w.bytes as u64);
                    m.checkpoint_seconds.observe(w.seconds);
                } else {
                    m.checkpoints.with_label_values(&["failed"]).inc();
                }
            }
        }
    }

    /// Stop the writer thread once its queue is written (at the end).
    pub fn stop_writer(&mut self) {
        if let Some(c) = &mut self.checkpointing {
            c.jobs = None;
            if let Some(t) = c.writer_thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Log (rate-limited), count and forward a rejected message. The log never carries the
    /// payload (it may hold unit ids or anything a producer wrote, and a newline or a colour
    /// code in it would forge log lines): the reason, the size, where it is (partition and
    /// offset, to fetch it) and a hash of its bytes (to match it with the dead-letter copy).
    fn rejected(&mut self, payload: &[u8], reason: RejectReason, part: usize, offset: i64) {
        if let Some(suppressed) = self.reject_log.allow() {
            let partition = self.parts.get_mut(part).map(|p| p.key.clone());
            tracing::warn!(
                reason = reason.as_str(),
                suppressed_since_last = suppressed,
                bytes = payload.len(),
                partition = partition.as_deref().unwrap_or("-"),
                offset,
                xxh3 = %format_args!("{:016x}", twox_hash::XxHash3_64::oneshot(payload)),
                "rejected message"
            );
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
        self.resolve_removed(settings);
        self.parts.reconfigure(settings);
        tracing::info!(partitions = self.parts.len(), "configuration reloaded");
        self.count_reload("applied");
    }

    /// The alerts of experiments the new configuration no longer declares end: each is sent
    /// to the sinks as resolved (Alertmanager gets `endsAt`), once.
    fn resolve_removed(&mut self, settings: &crate::config::Settings) {
        let kept: std::collections::HashSet<&str> =
            settings.experiments.iter().map(|e| e.id.as_str()).collect();
        let removed: Vec<String> = self
            .parts
            .settings()
            .experiments
            .iter()
            .map(|e| e.id.clone())
            .filter(|id| !kept.contains(id.as_str()))
            .collect();
        if !removed.is_empty() {
            tracing::info!(experiments = ?removed, "experiments left the configuration: their alerts resolved");
            self.resolve(&removed);
        }
    }

    /// The alerts of declared experiments whose `ends_at` has passed are resolved (checked at
    /// each publish; each alert once, the ones fired after the end too).
    fn resolve_ended(&mut self) {
        let now = chrono::Utc::now().timestamp_millis();
        let ended: Vec<String> = self
            .parts
            .settings()
            .experiments
            .iter()
            .filter(|e| e.ends_at.is_some_and(|t| t.0 <= now))
            .map(|e| e.id.clone())
            .collect();
        if !ended.is_empty() {
            self.resolve(&ended);
        }
    }

    /// Send every not yet resolved alert of `experiments` to the sinks as resolved.
    fn resolve(&mut self, experiments: &[String]) {
        let mut out = Vec::new();
        for (_, p) in self.parts.iter() {
            for a in p.engine.alerts() {
                let ended = a
                    .experiment
                    .as_ref()
                    .is_some_and(|e| experiments.contains(e));
                if ended && self.resolved.len() < MAX_RESOLVED && self.resolved.insert(a.identity())
                {
                    out.push(Outgoing {
                        alert: a.clone(),
                        ack: None,
                        resolved: true,
                    });
                }
            }
        }
        self.pending[3] += send(&self.alerts, out);
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
        self.resolve_ended();
        for (_, p) in self.parts.iter_mut() {
            p.engine.count_memory();
        }
        let others = self.others();
        let view = self.parts.view_with(&others);
        let mut report = view.report();
        report.partitions = self.parts.provenance(&others);
        warn_split_units(&mut self.warned_split, &report);
        let text = match self.metrics.lock() {
            Ok(mut m) => {
                let [suppressed, queued, dropped, alerts_refused, repeated] =
                    std::mem::take(&mut self.pending);
                if repeated > 0 {
                    m.repartition_messages
                        .with_label_values(&["repeated"])
                        .inc_by(repeated);
                }
                m.rejected_log_suppressed.inc_by(suppressed);
                m.alerts_dropped
                    .with_label_values(&["all", "queue_full"])
                    .inc_by(alerts_refused);
                m.dead_letter.with_label_values(&["queued"]).inc_by(queued);
                m.dead_letter
                    .with_label_values(&["dropped"])
                    .inc_by(dropped);
                m.publish(&view, &report);
                m.partitions_viewed.set(
                    report
                        .partitions
                        .iter()
                        .filter(|p| p.source == "checkpoint")
                        .count() as i64,
                );
                // the cost of this publish lands in the next scrape
                m.publish_seconds
                    .observe(self.last_publish.elapsed().as_secs_f64());
                m.encode()
            }
            Err(_) => String::new(),
        };
        self.shared.set(text.into_bytes(), report);
        // the whole cost, the metrics' text and dropping the view included
        drop(view);
        self.publish_every = PUBLISH_EVERY.max(self.last_publish.elapsed() * 10);
    }

    /// Deliver queued dead letters (at shutdown).
    pub fn flush_dead_letter(&mut self) {
        if let Some(dl) = &mut self.dead_letter {
            dl.flush();
        }
    }

    /// The merged view of the owned partitions' engines (for the final report).
    pub fn engine(&self) -> Cow<'_, Engine> {
        self.parts.view()
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

/// Say once per experiment that its units are counted in several partitions (the input is
/// not keyed by unit): its counts are inflated, and the report says by how much.
fn warn_split_units(warned: &mut std::collections::HashSet<u64>, report: &crate::report::Report) {
    for (id, e) in &report.experiments {
        let Some(d) = e.units.counted_in_several_partitions else {
            continue;
        };
        if warned.len() < 1024 && warned.insert(crate::state::key_of(id)) {
            tracing::warn!(
                experiment = ?crate::metrics::label_value(id),
                units = d.round(),
                counted = e.units.counted,
                "units counted in more than one input partition: key the input topic by unit \
                 (or experiment and unit) for exact unit counts"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::source::Batch;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A store whose writes wait until the test lets each one through, counting them.
    struct Gated {
        gate: std::sync::mpsc::Receiver<()>,
        writes: Arc<AtomicUsize>,
    }

    impl CheckpointStore for Gated {
        fn write(&mut self, _records: &[(String, Option<Vec<u8>>)]) -> Result<(), String> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.gate.recv().map_err(|e| e.to_string())
        }
    }

    /// Records written: key, value (`None`: a tombstone).
    type Records = Vec<(String, Option<Vec<u8>>)>;

    /// A store that keeps every record written.
    struct Recording(Arc<Mutex<Records>>);

    impl CheckpointStore for Recording {
        fn write(&mut self, records: &[(String, Option<Vec<u8>>)]) -> Result<(), String> {
            self.0.lock().unwrap().extend(records.iter().cloned());
            Ok(())
        }
    }

    /// A stop checkpoints the state once; the sinks' acknowledgements of the alerts it handed
    /// them are then recorded by a delivery record of that checkpoint, not by the state written
    /// again, and a restore from what was written counts them delivered.
    #[test]
    fn acknowledgements_after_a_checkpoint_are_a_delivery_record() {
        let settings = Settings::from_toml("").unwrap();
        let (tx, mut rx) = mpsc::channel(4096);
        let (_revokes, controls) = std::sync::mpsc::channel();
        let (acked, acks) = std::sync::mpsc::channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        let mut lp = EngineLoop::new(
            Partitions::none(&settings),
            Arc::new(Mutex::new(Metrics::new(100))),
            Arc::new(Shared::default()),
            tx,
            1,
            None,
        )
        .with_checkpoints(
            Box::new(Recording(Arc::clone(&written))),
            Duration::from_secs(3600),
            Arc::default(),
            controls,
            acks,
        );
        lp.assign(0, Part::fresh("t/0".into(), &settings));
        // the sinks: every alert handed is acknowledged
        std::thread::spawn(move || {
            while let Some(out) = rx.blocking_recv() {
                if let Some(a) = out.ack {
                    let _ = acked.send(a);
                }
            }
        });
        // the fleet's prompt fragment follows the arm: alerts fire within a few hundred events
        let mut sim = crate::sim::Simulator::fleet(3, 2, 100);
        let mut message = Vec::new();
        for offset in 0..3_000 {
            message.clear();
            sim.next_event(&mut message);
            let mut batch = Batch::default();
            batch.push_at(Some(&message), 0, offset);
            batch.decode(&lp.decode_limits());
            batch.apply(&mut lp);
        }
        lp.checkpoint_all();
        let alerts = lp.engine().alerts().len();
        assert!(alerts > 0, "no alert fired");
        let recs = written.lock().unwrap().clone();
        let commits = recs.iter().filter(|(k, _)| k == "t/0").count();
        assert_eq!(commits, 1, "the acknowledgements wrote the state again");
        assert_eq!(recs.last().map(|(k, _)| k.as_str()), Some("t/0!delivered"));
        let mut c = crate::checkpoint::Collector::new(None);
        for (k, v) in &recs {
            c.add(k.as_bytes(), v.as_deref());
        }
        let cp = c.checkpoint("t/0").unwrap().unwrap();
        assert_eq!(cp.delivered, Some(alerts as u64));
        let engine = crate::snapshot::read(&settings, &cp.snapshot).unwrap();
        assert_eq!(
            engine.delivered(),
            0,
            "the snapshot was taken before any acknowledgement"
        );
        let restored = Part::restored("t/0".into(), cp, engine);
        assert_eq!(restored.engine.delivered(), alerts);
        assert_eq!(restored.generation, 1);
    }

    /// An engine loop of one partition checkpointing (interval 0) into a [`Gated`] store: the
    /// loop, the gate's opener, the writes counted and the metrics.
    fn gated_loop() -> (
        EngineLoop,
        std::sync::mpsc::Sender<()>,
        Arc<AtomicUsize>,
        Arc<Mutex<Metrics>>,
    ) {
        let settings = Settings::from_toml("").unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        // the sinks take what they are handed
        std::thread::spawn(move || while rx.blocking_recv().is_some() {});
        let (_revokes, controls) = std::sync::mpsc::channel();
        let (_acked, acks) = std::sync::mpsc::channel();
        let (open, gate) = std::sync::mpsc::channel();
        let writes = Arc::new(AtomicUsize::new(0));
        let metrics = Arc::new(Mutex::new(Metrics::new(100)));
        let store = Gated {
            gate,
            writes: Arc::clone(&writes),
        };
        let mut lp = EngineLoop::new(
            Partitions::none(&settings),
            Arc::clone(&metrics),
            Arc::new(Shared::default()),
            tx,
            1,
            None,
        )
        .with_checkpoints(
            Box::new(store),
            Duration::ZERO,
            Arc::default(),
            controls,
            acks,
        );
        lp.assign(0, Part::fresh("t/0".into(), &settings));
        (lp, open, writes, metrics)
    }

    /// One round of the engine thread: a message (the partition is dirty again), then the
    /// cadence.
    fn rounds() -> impl FnMut(&mut EngineLoop) {
        let mut sim = crate::sim::Simulator::single(1, crate::sim::Faults::default());
        let (mut offset, mut message) = (0, Vec::new());
        move |lp: &mut EngineLoop| {
            message.clear();
            sim.next_event(&mut message);
            let mut batch = Batch::default();
            batch.push_at(Some(&message), 0, offset);
            offset += 1;
            batch.decode(&lp.decode_limits());
            batch.apply(lp);
            // past the cadence's floor (nine times the last serialization, well under 5 ms)
            std::thread::sleep(Duration::from_millis(5));
            lp.between_batches();
        }
    }

    /// Rounds until the store has taken `n` writes (at most 10 s).
    fn rounds_until(
        n: usize,
        writes: &AtomicUsize,
        lp: &mut EngineLoop,
        round: &mut impl FnMut(&mut EngineLoop),
    ) {
        let start = Instant::now();
        while writes.load(Ordering::SeqCst) < n {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "write {n} never came"
            );
            round(lp);
        }
    }

    /// While a periodic checkpoint is being written, the cadence starts no other (none
    /// serialized only to be skipped): one round in flight, then the next once it is durable.
    #[test]
    fn one_periodic_round_in_flight() {
        let (mut lp, open, writes, metrics) = gated_loop();
        let mut round = rounds();
        let in_flight = |lp: &EngineLoop| lp.checkpointing.as_ref().map_or(0, |c| c.in_flight);
        rounds_until(1, &writes, &mut lp, &mut round);
        for _ in 0..20 {
            round(&mut lp);
        }
        let skipped = || {
            metrics
                .lock()
                .unwrap()
                .checkpoints
                .with_label_values(&["skipped"])
                .get()
        };
        assert_eq!(writes.load(Ordering::SeqCst), 1);
        assert_eq!(in_flight(&lp), 1, "no second round while one is written");
        assert_eq!(skipped(), 0);
        open.send(()).unwrap();
        // durable: the next round starts
        rounds_until(2, &writes, &mut lp, &mut round);
        assert_eq!(skipped(), 0);
        open.send(()).unwrap();
        drop(open);
        lp.stop_writer();
    }
}
