//! The engine threads: partition-owned state (one engine per input partition, see
//! [`crate::partitions`]) shares nothing between partitions, so the checkpoints of the
//! partitions a replica owns are serialized on several threads at once. The engine thread is
//! one of them: it takes the first share and the pool's threads the others, so one extra
//! thread doubles the threads at work.
//!
//! Not used (measured) for applying events: a fetch brings each partition's messages as one
//! long run, so the batches of a drain hold one partition each and a split by partition leaves
//! all but one thread waiting. Not used for the view either: a capped table's merge depends on
//! the order, so runs merged apart and then together would not give the one-pass result.

/// The engine thread and `threads - 1` more.
pub struct EngineThreads {
    pool: Option<rayon::ThreadPool>,
}

impl EngineThreads {
    /// The engine thread alone.
    pub fn one() -> EngineThreads {
        EngineThreads { pool: None }
    }

    /// `threads` threads (the engine thread counts as one); fewer when the system refuses
    /// threads (logged).
    pub fn new(threads: usize) -> EngineThreads {
        if threads < 2 {
            return EngineThreads::one();
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads - 1)
            .thread_name(|i| format!("armwatch-eng-{}", i + 1))
            .build()
            .map_err(|e| tracing::warn!(error = %e, "cannot start engine threads: one thread applies every partition"))
            .ok();
        EngineThreads { pool }
    }

    /// Threads at work, the engine thread included.
    pub fn len(&self) -> usize {
        self.pool
            .as_ref()
            .map_or(1, |p| p.current_num_threads() + 1)
    }

    /// Whether the engine thread works alone.
    pub fn is_empty(&self) -> bool {
        self.pool.is_none()
    }

    /// Run `work` on each of `groups` (at most [`Self::len`]), the first on this thread and
    /// each other on a thread of its own, and return when every one has.
    pub fn fork<G: Send>(&self, groups: Vec<G>, work: impl Fn(G) + Sync) {
        let Some(pool) = &self.pool else {
            groups.into_iter().for_each(work);
            return;
        };
        let work = &work;
        pool.in_place_scope(|s| {
            let mut groups = groups.into_iter();
            let mine = groups.next();
            for g in groups {
                s.spawn(move |_| work(g));
            }
            if let Some(g) = mine {
                work(g);
            }
        });
    }

    /// `items` dealt round robin into at most [`Self::len`] groups (one per thread).
    pub fn deal<T>(&self, items: impl IntoIterator<Item = T>) -> Vec<Vec<T>> {
        let mut groups: Vec<Vec<T>> = (0..self.len()).map(|_| Vec::new()).collect();
        for (k, item) in items.into_iter().enumerate() {
            groups[k % self.len()].push(item);
        }
        groups.retain(|g| !g.is_empty());
        groups
    }

    /// `f` applied to each of `items` on the threads, the results in `items`' order.
    pub fn map<T: Send, R: Send>(&self, items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
        let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
        let groups = self.deal(items.into_iter().zip(out.iter_mut()));
        self.fork(groups, |g| {
            for (item, slot) in g {
                *slot = Some(f(item));
            }
        });
        out.into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Every group runs once, on as many threads as there are, and `map` keeps the order.
    #[test]
    fn fork_runs_every_group_and_map_keeps_order() {
        for threads in [1, 2, 3] {
            let t = EngineThreads::new(threads);
            assert_eq!(t.len(), threads);
            let groups = t.deal(0..10usize);
            assert_eq!(groups.len(), threads);
            let sum = AtomicUsize::new(0);
            let names = std::sync::Mutex::new(std::collections::HashSet::new());
            t.fork(groups, |g| {
                sum.fetch_add(g.iter().sum::<usize>(), Ordering::Relaxed);
                // the group spreads over the threads while the others wait for it
                std::thread::sleep(std::time::Duration::from_millis(20));
                names.lock().unwrap().insert(std::thread::current().id());
            });
            assert_eq!(sum.into_inner(), 45);
            assert_eq!(names.into_inner().unwrap().len(), threads);
            let squares = t.map((0..7u64).collect(), |x| x * x);
            assert_eq!(squares, vec![0, 1, 4, 9, 16, 25, 36]);
        }
    }
}
