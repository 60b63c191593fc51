//! One loop for every source: the source's thread fills and decodes batches, the engine
//! thread applies them, publishes on the cadence (also while no message arrives) and hands
//! each batch back, and the source acknowledges it then.

use super::batch::Batch;
use super::Source;
use crate::daemon::EngineLoop;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Batches in flight between the two threads. With 4 the engine thread waited ~20% of a
/// drain whenever the consumer thread lost its core to the broker for a moment; with 16 it
/// waits ~8% (`cargo bench --bench kafka -- single-by-unit`). Bounds the copy buffers to
/// ~2 MB of 512 prompt events each, 16 MB at most (a batch is full at 1 MB).
const BATCHES_IN_FLIGHT: usize = 16;

/// Run `source` into `lp` until the source ends or `stop` is set; `on_publish` runs on the
/// engine thread before each publish, between batches (the Kafka lag gauges, a reloaded
/// configuration). Returns the engine loop once
/// every batch has been applied and acknowledged and the source has finished.
pub fn drive<S: Source>(
    mut source: S,
    lp: EngineLoop,
    stop: &AtomicBool,
    on_publish: impl FnMut(&mut EngineLoop) + Send + 'static,
) -> std::io::Result<EngineLoop> {
    let limits = lp.decode_limits();
    let (to_engine, batches) = mpsc::sync_channel::<Batch>(BATCHES_IN_FLIGHT);
    let (to_source, returned) = mpsc::channel::<Batch>();
    // batches sent and not yet taken by the engine thread
    let queued = Arc::new(AtomicUsize::new(0));
    let taken = Arc::clone(&queued);
    let engine = std::thread::Builder::new()
        .name("armwatch-engine".into())
        .spawn(move || apply(lp, &batches, &to_source, &taken, limits, on_publish))?;
    let mut spare: Vec<Batch> = Vec::new();
    let mut cur = Batch::default();
    let mut failed = None;
    while !stop.load(Ordering::Relaxed) {
        while let Ok(mut b) = returned.try_recv() {
            source.done(&b);
            b.clear();
            spare.push(b);
        }
        let more = match source.fill(&mut cur) {
            Ok(more) => more,
            Err(e) => {
                failed = Some(e);
                false
            }
        };
        if !cur.is_empty() {
            // decoding goes to whichever side has room: here while the engine thread has
            // batches waiting (it is the slower stage), there while it waits for this one
            if queued.load(Ordering::Relaxed) > 0 {
                cur.decode(&limits);
            }
            queued.fetch_add(1, Ordering::Relaxed);
            let next = spare.pop().unwrap_or_default();
            if to_engine.send(std::mem::replace(&mut cur, next)).is_err() {
                break; // the engine thread is gone; its join below says why
            }
        }
        if !more {
            break;
        }
    }
    drop(to_engine);
    // the engine returns every batch before it ends; each is acknowledged, then the source
    // finishes (Kafka: the final commit)
    for b in returned.iter() {
        source.done(&b);
    }
    let lp = engine
        .join()
        .map_err(|_| std::io::Error::other("the engine thread panicked"))?;
    source.finish();
    match failed {
        Some(e) => Err(e),
        None => Ok(lp),
    }
}

/// The engine thread: apply batches in order, hand each back, publish on the cadence.
fn apply(
    mut lp: EngineLoop,
    batches: &mpsc::Receiver<Batch>,
    done: &mpsc::Sender<Batch>,
    queued: &AtomicUsize,
    limits: crate::event::Limits,
    mut on_publish: impl FnMut(&mut EngineLoop),
) -> EngineLoop {
    let mut drain = Drain::default();
    loop {
        let waiting = Instant::now();
        let next = batches.recv_timeout(Duration::from_millis(100));
        drain.spent(Stage::Waiting, waiting);
        match next {
            Ok(mut b) => {
                let applying = Instant::now();
                queued.fetch_sub(1, Ordering::Relaxed);
                drain.messages(b.len());
                b.decode(&limits);
                b.apply(&mut lp);
                // the source's thread may already be gone at shutdown: nothing to do then
                let _ = done.send(b);
                drain.spent(Stage::Applying, applying);
                drain.last = Some(Instant::now());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let checkpointing = Instant::now();
        lp.between_batches();
        drain.spent(Stage::Checkpointing, checkpointing);
        if lp.publish_due() {
            let publishing = Instant::now();
            on_publish(&mut lp);
            lp.publish();
            drain.spent(Stage::Publishing, publishing);
        }
    }
    // the final checkpoints count in the drain (their time, their number); the rate up to the
    // last message applied is logged beside it
    let finishing = Instant::now();
    lp.checkpoint_all();
    drain.final_checkpoint = finishing.elapsed().as_secs_f64();
    drain.log(&lp);
    on_publish(&mut lp);
    lp.publish();
    lp.flush_dead_letter();
    lp
}

/// What the engine thread's wall time goes to (since the first message).
#[derive(Clone, Copy)]
enum Stage {
    /// Waiting for the source's next batch.
    Waiting,
    /// Decoding what the source did not, applying, handing the batch back.
    Applying,
    /// Between batches: revokes, acknowledgements, checkpoints' serialization.
    Checkpointing,
    /// Merging the view, building the report and the metrics.
    Publishing,
}

/// Messages consumed and the time since the first: the drain rate, logged at the end.
#[derive(Default)]
struct Drain {
    /// Seconds spent per [`Stage`] since the first message.
    stages: [f64; 4],
    messages: u64,
    first: Option<Instant>,
    /// When the last batch was applied.
    last: Option<Instant>,
    /// The final checkpoints' wall time (at the end of a bounded drain).
    final_checkpoint: f64,
    /// The process's CPU seconds at the first message.
    first_cpu: Option<f64>,
    /// The engine thread's CPU seconds at the first message.
    first_engine_cpu: Option<f64>,
}

impl Drain {
    /// Count `n` messages about to be processed.
    fn messages(&mut self, n: usize) {
        if self.first.is_none() {
            self.first = Some(Instant::now());
            self.first_cpu = crate::process::cpu_seconds("self");
            self.first_engine_cpu = crate::process::cpu_seconds("thread-self");
        }
        self.messages += n as u64;
    }

    /// Count the time since `since` as spent in `stage` (once the drain has begun).
    #[inline]
    fn spent(&mut self, stage: Stage, since: Instant) {
        if self.first.is_some() {
            self.stages[stage as usize] += since.elapsed().as_secs_f64();
        }
    }

    /// Called on the engine thread (its CPU time is read from `/proc/thread-self`).
    fn log(&self, lp: &EngineLoop) {
        let secs = self.first.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let applied = self
            .first
            .zip(self.last)
            .map_or(0.0, |(first, last)| (last - first).as_secs_f64());
        // the engine thread's share of the wall time: its CPU time (applying, detecting and
        // publishing), measured, not extrapolated from the sampled processing times
        let busy = crate::process::cpu_seconds("thread-self")
            .zip(self.first_engine_cpu)
            .map_or(f64::NAN, |(now, first)| (now - first) / secs.max(1e-9));
        let (publishes, publish_mean, checkpoints, checkpoint_bytes, checkpoint_seconds) = lp
            .metrics()
            .lock()
            .map(|m| {
                let p = m.publish_seconds.get_sample_count();
                let mean = m.publish_seconds.get_sample_sum() / p.max(1) as f64;
                (
                    p,
                    mean,
                    m.checkpoint_seconds.get_sample_count(),
                    m.checkpoint_written_bytes.get(),
                    m.checkpoint_seconds.get_sample_sum(),
                )
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
            // from the first message to the last applied (no final checkpoint): the rate a
            // long-running consumer keeps
            applying_messages_per_second = self.messages as f64 / applied.max(1e-9),
            final_checkpoint_seconds = self.final_checkpoint,
            engine_busy_share = busy,
            publishes,
            publish_mean_seconds = publish_mean,
            checkpoints,
            checkpoint_bytes,
            checkpoint_seconds,
            waiting_seconds = self.stages[Stage::Waiting as usize],
            applying_seconds = self.stages[Stage::Applying as usize],
            checkpointing_seconds = self.stages[Stage::Checkpointing as usize],
            publishing_seconds = self.stages[Stage::Publishing as usize],
            "drained"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::engine::Engine;
    use crate::metrics::Metrics;
    use std::sync::{Arc, Mutex};

    /// Messages from a list, one partition, offsets 0.. (some without payload, some malformed),
    /// recording what the loop acknowledged.
    struct ListSource {
        messages: Vec<Option<Vec<u8>>>,
        next: usize,
        acked: Arc<Mutex<Vec<i64>>>,
        finished: Arc<Mutex<u32>>,
    }

    impl Source for ListSource {
        fn fill(&mut self, batch: &mut Batch) -> std::io::Result<bool> {
            // uneven batches: 1, 2, 3, ... messages
            let take = (self.next % 7) + 1;
            for _ in 0..take {
                let Some(m) = self.messages.get(self.next) else {
                    return Ok(false);
                };
                batch.push(m.as_deref());
                batch.mark(0, 0, self.next as i64);
                self.next += 1;
            }
            Ok(self.next < self.messages.len())
        }

        fn done(&mut self, batch: &Batch) {
            // only after the engine applied it: the acknowledged offsets only ever grow
            let mut acked = self.acked.lock().unwrap();
            for &(_, _, o) in batch.marks() {
                acked.push(o);
            }
        }

        fn finish(&mut self) {
            *self.finished.lock().unwrap() += 1;
        }
    }

    /// Every message is applied once, in order, whatever the batch sizes; each batch is
    /// acknowledged after it was applied, and the source finishes once, after the last.
    #[test]
    fn every_message_applied_once_then_acknowledged() {
        let settings = Settings::from_toml("").unwrap();
        let mut sim = crate::sim::Simulator::single(3, crate::sim::Faults::default());
        let mut messages = Vec::new();
        let mut direct = Engine::new(&settings);
        for i in 0..2_000 {
            let m = match i % 97 {
                0 => None,
                1 => Some(b"{\"kind\":".to_vec()),
                _ => {
                    let mut b = Vec::new();
                    sim.next_event(&mut b);
                    Some(b)
                }
            };
            match &m {
                Some(p) => {
                    let _ = direct.process(p);
                }
                None => direct.count_rejected(crate::event::RejectReason::Empty),
            }
            messages.push(m);
        }
        let (tx, _rx) = tokio::sync::mpsc::channel(64);
        let lp = EngineLoop::new(
            crate::partitions::Partitions::single(Engine::new(&settings), &settings),
            Arc::new(Mutex::new(Metrics::new(100))),
            Arc::new(crate::http::Shared::default()),
            tx,
            1,
            None,
        );
        let (acked, finished) = (Arc::default(), Arc::default());
        let source = ListSource {
            messages,
            next: 0,
            acked: Arc::clone(&acked),
            finished: Arc::clone(&finished),
        };
        let stop = AtomicBool::new(false);
        let lp = drive(source, lp, &stop, |_| {}).unwrap();
        let strip = |e: &Engine| {
            let mut r = serde_json::to_value(e.report()).unwrap();
            r["memory"] = serde_json::Value::Null;
            r
        };
        assert_eq!(strip(&lp.engine()), strip(&direct));
        assert_eq!(lp.engine().seen(), 2_000);
        // a batch acknowledges the last offset of its partition: increasing, up to the last
        let acked = acked.lock().unwrap();
        assert!(acked.len() > 400 && acked.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(acked.last(), Some(&1_999));
        assert_eq!(*finished.lock().unwrap(), 1);
    }
}
