//! The engines of the input partitions a daemon owns: one [`Engine`] per Kafka partition (the
//! way Kafka Streams keeps state), so that a partition's state can be checkpointed, handed to
//! another replica on a rebalance and restored there without touching the others'. Sans-IO:
//! the consumer says which partitions it owns and from which checkpoint; this dispatches each
//! message to its partition's engine and serves the merged view.
//!
//! Each engine knows the next offset it has not applied: a message below it is already in the
//! state (a checkpoint covered it, or it was fetched twice around a rebalance) and is skipped,
//! so a partition's events are applied exactly once however often it moves.
//! Sources without partitions (files, the simulator) use one engine at index 0.

use crate::config::Settings;
use crate::engine::Engine;
use std::borrow::Cow;

/// One owned input partition.
pub struct Part {
    /// Its checkpoint key ([`crate::checkpoint::partition_key`]).
    pub key: String,
    /// Its state.
    pub engine: Engine,
    /// The first offset not applied (`-1`: none seen, take any).
    pub next_offset: i64,
    /// The generation of its last checkpoint (0: none written).
    pub generation: u64,
    /// The writer of its last checkpoint (this process's, or the one it was restored from).
    pub writer: u64,
    /// Messages applied since its last checkpoint.
    pub dirty: bool,
    /// Alerts acknowledged by the sinks since its last checkpoint or delivery record.
    pub acked: bool,
    /// Chunk keys in the state topic that the next checkpoint deletes.
    pub superseded: Vec<String>,
    /// Alerts handed to the sinks (not kept: after a restore, those not acknowledged are
    /// handed again).
    pub handed: usize,
    /// For a partition of the repartition topic: per input partition, the first input offset
    /// not applied. A router re-produces from its last committed input offset after a crash or
    /// a rebalance; what it re-produces is below this and is dropped (each router writes an
    /// input partition's events to this partition in input order, so this is exact).
    pub upstream: Vec<(String, i64)>,
}

impl Part {
    /// Partition `key` holding `engine`, nothing applied or checkpointed yet.
    pub fn new(key: String, engine: Engine) -> Part {
        Part {
            key,
            engine,
            next_offset: -1,
            generation: 0,
            writer: 0,
            dirty: false,
            acked: false,
            superseded: Vec::new(),
            handed: 0,
            upstream: Vec::new(),
        }
    }

    /// Partition `key` restored from its checkpoint `cp`, whose snapshot read back as
    /// `engine`: it resumes at the checkpoint's next offset, its next checkpoint deletes the
    /// chunks found, and the alerts its delivery record names count as delivered.
    pub fn restored(key: String, cp: crate::checkpoint::Checkpoint, mut engine: Engine) -> Part {
        if let Some(d) = cp.delivered {
            engine.restore_delivered(d);
        }
        Part {
            next_offset: cp.next_offset,
            generation: cp.generation,
            writer: cp.writer,
            superseded: cp.superseded,
            upstream: cp.upstream,
            ..Part::new(key, engine)
        }
    }

    /// A partition starting from fresh state (no checkpoint).
    pub fn fresh(key: String, settings: &Settings) -> Part {
        Part::new(key, Engine::new(settings))
    }

    /// Whether the event at `offset` of input partition `from` is new to this partition's
    /// state (and if so, it counts as applied from now on).
    #[inline]
    fn admit_upstream(&mut self, from: &str, offset: i64) -> bool {
        match self.upstream.iter_mut().find(|(n, _)| n == from) {
            Some((_, next)) if offset < *next => false,
            Some((_, next)) => {
                *next = offset + 1;
                true
            }
            None => {
                self.upstream.push((from.to_string(), offset + 1));
                true
            }
        }
    }
}

/// What became of a message handed to [`Partitions::engine_for`].
pub enum Route<'a> {
    /// Apply it to this partition's engine.
    Apply(&'a mut Part),
    /// Its partition is not owned (revoked while it was on its way): dropped, its next owner
    /// reads it.
    Unowned,
    /// Below the partition's next offset: already in the state.
    Duplicate,
    /// A re-produced copy of an input event already in the state (repartitioning).
    Repeated,
}

/// Another replica's partition, as of its last checkpoint (for the merged view).
#[derive(Clone)]
pub struct Viewed {
    /// Its checkpoint key.
    pub key: String,
    /// The first offset not in it.
    pub next_offset: i64,
    /// Its state.
    pub engine: std::sync::Arc<Engine>,
}

/// What the state topic's follower and the engine thread share: the other replicas'
/// partitions (written by the follower) and the partitions this replica owns (written by the
/// engine thread: the follower does not decode their checkpoints).
#[derive(Default)]
pub struct MergedView {
    /// Other replicas' partitions, as of their last checkpoints.
    pub others: std::sync::Mutex<std::sync::Arc<Vec<Viewed>>>,
    /// Keys of the partitions this replica owns.
    pub owned: std::sync::Mutex<Vec<String>>,
}

/// The owned partitions, by the source's partition index.
pub struct Partitions {
    parts: Vec<Option<Part>>,
    settings: Settings,
}

impl Partitions {
    /// One engine for a source without partitions.
    pub fn single(engine: Engine, settings: &Settings) -> Partitions {
        Partitions {
            parts: vec![Some(Part::new(String::new(), engine))],
            settings: settings.clone(),
        }
    }

    /// None yet: the consumer assigns them.
    pub fn none(settings: &Settings) -> Partitions {
        Partitions {
            parts: Vec::new(),
            settings: settings.clone(),
        }
    }

    /// The settings new engines get.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The decoder's limits (every engine's).
    pub fn decode_limits(&self) -> crate::event::Limits {
        self.settings.limits.decode()
    }

    /// Own partition `index` from now on (replacing whatever was there).
    pub fn assign(&mut self, index: usize, part: Part) {
        if self.parts.len() <= index {
            self.parts.resize_with(index + 1, || None);
        }
        self.parts[index] = Some(part);
        self.share_budget();
    }

    /// The whole `limits.max_memory_bytes`.
    fn budget(&self) -> usize {
        usize::try_from(self.settings.limits.max_memory_bytes).unwrap_or(usize::MAX)
    }

    /// Split the memory budget evenly over the owned partitions' engines: a replica owning N
    /// partitions holds at most the configured budget, not N times it.
    fn share_budget(&mut self) {
        let share = self.budget() / self.len().max(1);
        for (_, p) in self.iter_mut() {
            p.engine.set_memory_budget(share);
        }
    }

    /// Partition `index`, when owned.
    pub fn get_mut(&mut self, index: usize) -> Option<&mut Part> {
        self.parts.get_mut(index).and_then(Option::as_mut)
    }

    /// Stop owning partition `index`; its state is returned (for a final checkpoint).
    pub fn revoke(&mut self, index: usize) -> Option<Part> {
        let part = self.parts.get_mut(index).and_then(Option::take);
        self.share_budget();
        part
    }

    /// Where the message at `offset` of partition `index` goes (its offset then counts as
    /// applied); `offset < 0` for a source without offsets. `upstream`: the input partition
    /// and offset a re-keyed message was re-produced from (see [`Part::upstream`]).
    #[inline]
    pub fn engine_for(
        &mut self,
        index: usize,
        offset: i64,
        upstream: Option<(&str, i64)>,
    ) -> Route<'_> {
        match self.parts.get_mut(index) {
            Some(Some(p)) => {
                if offset >= 0 {
                    if offset < p.next_offset {
                        return Route::Duplicate;
                    }
                    p.next_offset = offset + 1;
                }
                p.dirty = true;
                if let Some((from, at)) = upstream {
                    if !p.admit_upstream(from, at) {
                        return Route::Repeated;
                    }
                }
                Route::Apply(p)
            }
            _ => Route::Unowned,
        }
    }

    /// The owned partitions (with their index).
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Part)> {
        self.parts
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
    }

    /// The owned partitions, mutably (with their index).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut Part)> {
        self.parts
            .iter_mut()
            .enumerate()
            .filter_map(|(i, p)| p.as_mut().map(|p| (i, p)))
    }

    /// What [`Self::view_with`] merges: each partition, whether owned, and its next offset.
    pub fn provenance(&self, others: &[Viewed]) -> Vec<crate::report::PartitionView> {
        let mut out: Vec<crate::report::PartitionView> = self
            .iter()
            .filter(|(_, p)| !p.key.is_empty())
            .map(|(_, p)| crate::report::PartitionView {
                partition: p.key.clone(),
                source: "owned",
                next_offset: p.next_offset,
                messages: p.engine.seen(),
            })
            .collect();
        for o in others {
            if !out.iter().any(|v| v.partition == o.key) {
                out.push(crate::report::PartitionView {
                    partition: o.key.clone(),
                    source: "checkpoint",
                    next_offset: o.next_offset,
                    messages: o.engine.seen(),
                });
            }
        }
        out.sort_by(|a, b| a.partition.cmp(&b.partition));
        out
    }

    /// Partitions owned.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether none is owned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every engine continues under `settings` (a reload).
    pub fn reconfigure(&mut self, settings: &Settings) {
        for (_, p) in self.iter_mut() {
            let old = std::mem::replace(&mut p.engine, Engine::new(settings));
            p.engine = old.reconfigured(settings);
        }
        self.settings = settings.clone();
        self.share_budget();
    }

    /// The merged view of every owned partition ([`Engine::merge`]): borrowed when there is
    /// one, an empty engine when there is none.
    pub fn view(&self) -> Cow<'_, Engine> {
        self.view_with(&[])
    }

    /// The merged view of every owned partition and of `others` (other replicas' partitions,
    /// from their checkpoints; those this replica owns are left out), in partition-key order.
    /// Merged one after the other on one thread: a capped table's merge (the strata a value
    /// takes when an input has more values than its cap) depends on the order, so runs merged
    /// apart and then together would not give the one-pass result.
    pub fn view_with<'a>(&'a self, others: &'a [Viewed]) -> Cow<'a, Engine> {
        let mut all: Vec<(&str, &Engine)> = self
            .iter()
            .map(|(_, p)| (p.key.as_str(), &p.engine))
            .chain(
                others
                    .iter()
                    .filter(|o| !self.iter().any(|(_, p)| p.key == o.key))
                    .map(|o| (o.key.as_str(), &*o.engine)),
            )
            .collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        let mut parts = all.into_iter().map(|(_, e)| e);
        match (parts.next(), parts.next()) {
            (None, _) => Cow::Owned(Engine::new(&self.settings)),
            (Some(only), None) => Cow::Borrowed(only),
            (Some(a), Some(b)) => {
                let mut merged = a.clone();
                merged.merge(b);
                for e in parts {
                    merged.merge(e);
                }
                // the view reports against the whole budget
                let budget = self.budget();
                merged.set_memory_budget(budget);
                Cow::Owned(merged)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets below a partition's next offset are skipped, unowned partitions dropped, and the
    /// view merges what the partitions applied.
    #[test]
    fn dispatch_by_partition_and_offset() {
        let settings = Settings::from_toml("").unwrap();
        let mut parts = Partitions::none(&settings);
        assert_eq!(parts.view().seen(), 0);
        parts.assign(2, Part::fresh("t/2".into(), &settings));
        let mut restored = Part::fresh("t/0".into(), &settings);
        restored.next_offset = 10;
        parts.assign(0, restored);
        let mut sim = crate::sim::Simulator::single(1, crate::sim::Faults::default());
        let mut applied = 0;
        for (index, offset) in [(0, 3), (0, 10), (0, 10), (0, 11), (2, 0), (1, 0), (2, 1)] {
            let mut b = Vec::new();
            sim.next_event(&mut b);
            if let Route::Apply(p) = parts.engine_for(index, offset, None) {
                p.engine.process(&b).unwrap();
                applied += 1;
            }
        }
        assert_eq!(applied, 4);
        assert_eq!(parts.view().seen(), 4);
        // two partitions share the budget; the view reports against all of it
        let budget = settings.limits.max_memory_bytes as usize;
        assert!(parts.iter().all(|(_, p)| p.engine.memory().1 == budget / 2));
        assert_eq!(parts.view().memory().1, budget);
        let p0 = parts.revoke(0).unwrap();
        assert_eq!((p0.next_offset, p0.dirty), (12, true));
        assert!(matches!(parts.engine_for(0, 12, None), Route::Unowned));
        assert_eq!(parts.len(), 1);
        assert_eq!(parts.view().seen(), 2);
        assert!(parts.iter().all(|(_, p)| p.engine.memory().1 == budget));
    }

    /// A re-keyed partition drops what a router re-produced (input offsets below those it
    /// applied), per input partition, and still moves its own offset past the copies.
    #[test]
    fn repeated_upstream_offsets_dropped() {
        let settings = Settings::from_toml("").unwrap();
        let mut parts = Partitions::none(&settings);
        parts.assign(0, Part::fresh("g.armwatch-by-unit/0".into(), &settings));
        let routed = [
            (0, ("in/0", 5)),
            (1, ("in/1", 2)),
            (2, ("in/0", 9)),
            // the router of in/0 restarted from its committed offset 5: copies, then new
            (3, ("in/0", 5)),
            (4, ("in/0", 9)),
            (5, ("in/0", 10)),
            (6, ("in/1", 2)),
            (7, ("in/1", 3)),
        ];
        let admitted: Vec<i64> = routed
            .iter()
            .filter(|(o, up)| matches!(parts.engine_for(0, *o, Some(*up)), Route::Apply(_)))
            .map(|(o, _)| *o)
            .collect();
        assert_eq!(admitted, vec![0, 1, 2, 5, 7]);
        let p = parts.get_mut(0).unwrap();
        assert_eq!(p.next_offset, 8);
        assert_eq!(
            p.upstream,
            vec![("in/0".to_string(), 11), ("in/1".to_string(), 4)]
        );
    }
}
