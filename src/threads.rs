//! The engine threads: partition-owned state (one engine per input partition, see
//! [`crate::partitions`]) shares nothing between partitions, so the checkpoints of the
//! partitions a replica owns are serialized on several threads at once (a rayon pool; the
//! engine thread waits for it).
//!
//! Not used (measured) for applying events: a fetch brings each partition's messages as one
//! long run, so the batches of a drain hold one partition each and a split by partition leaves
//! all but one thread waiting. Not used for the view either: a capped table's merge depends on
//! the order, so runs merged apart and then together would not give the one-pass result.

use rayon::prelude::*;

/// The threads that serialize checkpoints (none: the engine thread does).
pub struct EngineThreads {
    pool: Option<rayon::ThreadPool>,
}

impl EngineThreads {
    /// The engine thread alone.
    pub fn one() -> EngineThreads {
        EngineThreads { pool: None }
    }

    /// A pool of `threads` threads (below 2: the engine thread alone; also when the system
    /// refuses threads, logged).
    pub fn new(threads: usize) -> EngineThreads {
        if threads < 2 {
            return EngineThreads::one();
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("armwatch-eng-{}", i + 1))
            .build()
            .map_err(|e| tracing::warn!(error = %e, "cannot start engine threads: the engine thread serializes every checkpoint"))
            .ok();
        EngineThreads { pool }
    }

    /// `f` applied to each of `items`, on the pool's threads, the results in `items`' order.
    pub fn map<T: Send, R: Send>(&self, items: Vec<T>, f: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
        match &self.pool {
            None => items.into_iter().map(f).collect(),
            Some(pool) => pool.install(|| items.into_par_iter().with_min_len(1).map(f).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    /// `map` keeps the order, and with a pool of `threads` it runs `threads` items at once on
    /// as many threads: each item waits (up to 10 s) until all of them have started.
    #[test]
    fn map_keeps_order_and_runs_on_every_thread() {
        for threads in [1, 2, 3] {
            let t = EngineThreads::new(threads);
            let squares = t.map((0..7u64).collect(), |x| x * x);
            assert_eq!(squares, vec![0, 1, 4, 9, 16, 25, 36]);
            let started = (Mutex::new(Vec::new()), Condvar::new());
            let all_met = t.map((0..threads).collect(), |_| {
                let (m, c) = &started;
                let mut ids = m.lock().unwrap();
                ids.push(std::thread::current().id());
                c.notify_all();
                let (ids, timeout) = c
                    .wait_timeout_while(ids, Duration::from_secs(10), |ids| ids.len() < threads)
                    .unwrap();
                !timeout.timed_out() && ids.len() == threads
            });
            assert!(all_met.iter().all(|&met| met), "{threads} threads at once");
            let mut ids = started.0.into_inner().unwrap();
            ids.sort_by_key(|id| format!("{id:?}"));
            ids.dedup();
            assert_eq!(ids.len(), threads);
        }
    }
}
