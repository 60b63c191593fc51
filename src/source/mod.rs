//! Where messages come from: Kafka (the daemon), the simulator (the demo) and files (replay).
//!
//! Each source is a [`Source`]: it fills batches of messages on its own thread; [`drive`] runs
//! any of them as the same two-stage pipeline (the source's thread reads and decodes, the
//! engine thread applies and publishes) and hands every applied batch back for the source to
//! acknowledge (Kafka stores its offsets then). `replay` also reads files through
//! [`file::for_each_message`] on one thread: the one-core reference path of the benchmarks.

pub mod batch;
pub mod client_log;
mod fetch_queue;
pub mod file;
pub mod kafka;
pub mod otlp;
mod pipeline;
pub mod repartition;
pub mod simulated;
pub mod state_topic;

pub use batch::Batch;
pub use pipeline::drive;

/// A source of messages.
pub trait Source {
    /// Add the next messages to `batch` (empty on entry), waiting a little (at most ~100 ms)
    /// when none is ready; a batch may come back empty, so that the loop looks at its stop
    /// flag. `Ok(false)` when the source has ended (the batch still holds its last messages).
    fn fill(&mut self, batch: &mut Batch) -> std::io::Result<bool>;

    /// A batch has been applied: acknowledge its positions.
    fn done(&mut self, _batch: &Batch) {}

    /// Every batch has been applied and acknowledged.
    fn finish(&mut self) {}
}
