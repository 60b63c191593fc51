//! Checkpoint records: how the snapshot of one input partition's state ([`crate::snapshot`])
//! and the next offset it covers are laid out in a compacted Kafka topic, and how they are
//! read back. Sans-IO: the Kafka shell (`source::kafka::state`) moves the records.
//!
//! A snapshot can be far larger than a Kafka message (1 MB by default), so it is cut into
//! chunks, and a commit record, written last under the partition's own key, names the writer,
//! the generation, the chunk count and the next offset. A compacted topic keeps only the
//! latest record per key, so no checkpoint may overwrite another's chunks: each chunk's key
//! names its writer (a random id per process) and its generation, and the chunks of a
//! checkpoint are deleted (tombstones) only once a newer commit is durable. A crash in the
//! middle of a checkpoint leaves the previous commit and its chunks untouched; a writer that
//! died with records still in flight (a zombie whose late records land after its successor
//! restored) can only add chunks under its own keys, and its late commit is a complete,
//! consistent checkpoint too (its state with its offset). The reader keeps the last few commits
//! of each partition and restores the newest whose chunks are all there. All integers little
//! endian:
//!
//! - commit, key `{topic}/{partition}`: `ARMK`, version u32, writer u64, generation u64,
//!   chunks u32, next offset i64, snapshot length u64, then (version 2) the upstream offsets
//!   of a repartitioned partition: count u32, each name length u32, name, next offset i64
//!   (the first input offset of that input partition not yet applied);
//! - chunk, key `{topic}/{partition}#{writer:016x}.{generation}.{index}`: `ARMC`, version u32,
//!   generation u64, index u32, then the bytes;
//! - delivery, key `{topic}/{partition}!delivered`: `ARMD`, version u32, writer u64, generation
//!   u64, delivered u64: the sinks acknowledged the first `delivered` alerts of the checkpoint
//!   that writer and generation name. Acknowledgements that come after a checkpoint (and
//!   nothing else) are recorded by this one small record instead of the whole state written
//!   again; a restore applies it only to the commit it names.
//!
//! The snapshot itself carries its own version and checksum: a torn or altered checkpoint is
//! refused at restore, never half-applied.

use std::collections::HashMap;

const COMMIT: &[u8; 4] = b"ARMK";
const CHUNK: &[u8; 4] = b"ARMC";
const DELIVERY: &[u8; 4] = b"ARMD";
const DELIVERY_LEN: usize = 4 + 4 + 8 + 8 + 8;

/// The record format written by this build (version 1, without upstream offsets, is read too).
pub const VERSION: u32 = 2;
/// The oldest record format this build reads.
const OLDEST: u32 = 1;

/// Snapshot bytes per chunk record (under Kafka's default 1 MB message limit, with room for
/// the headers).
pub const CHUNK_BYTES: usize = 900 * 1024;

const COMMIT_LEN: usize = 4 + 4 + 8 + 8 + 4 + 8 + 8;
/// Commits kept per partition while reading (the newest complete one is restored).
const COMMITS_KEPT: usize = 4;
const CHUNK_HEADER: usize = 4 + 4 + 8 + 4;

/// The key of partition `partition` of `topic` (its commit record's key).
pub fn partition_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// A checkpoint read back: the snapshot and the next offset of the input partition it covers.
#[derive(Debug, PartialEq)]
pub struct Checkpoint {
    /// The process that wrote it.
    pub writer: u64,
    /// Counts the partition's checkpoints (the next one is `generation + 1`).
    pub generation: u64,
    /// Alerts acknowledged after the snapshot was taken: the first this many of its alerts
    /// were delivered (from the partition's delivery record, when it names this checkpoint).
    pub delivered: Option<u64>,
    /// The first offset not in the snapshot: where consumption resumes.
    pub next_offset: i64,
    /// [`crate::snapshot`] bytes.
    pub snapshot: Vec<u8>,
    /// For a partition of the repartition topic: per input partition, the first input offset
    /// not applied (what re-produced records below it are: already counted).
    pub upstream: Vec<(String, i64)>,
    /// Every chunk key of the partition in the topic (this checkpoint's and any left by
    /// crashed writers): the next checkpoint deletes them.
    pub superseded: Vec<String>,
}

/// The chunk key of chunk `index` of `writer`'s checkpoint `generation` of partition `key`.
fn chunk_key(key: &str, writer: u64, generation: u64, index: u32) -> String {
    format!("{key}#{writer:016x}.{generation}.{index}")
}

/// Why a checkpoint was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CheckpointError {
    /// Written by a build with another record format.
    #[error(
        "checkpoint record format version {found}, this build reads versions {OLDEST} to {VERSION}"
    )]
    Version {
        /// The version found.
        found: u32,
    },
    /// A commit record that does not parse.
    #[error("corrupt checkpoint commit record")]
    Commit,
    /// A chunk the commit names is missing or from another generation.
    #[error("checkpoint generation {generation}: chunk {index} of {chunks} is missing or stale")]
    Chunk {
        /// The commit's generation.
        generation: u64,
        /// The first bad chunk.
        index: u32,
        /// Chunks named.
        chunks: u32,
    },
    /// The chunks do not add up to the length the commit names.
    #[error("checkpoint generation {generation}: {found} bytes, the commit names {want}")]
    Length {
        /// The commit's generation.
        generation: u64,
        /// Bytes found.
        found: u64,
        /// Bytes named.
        want: u64,
    },
}

/// The records of one checkpoint by `writer`, in the order to write them: its chunks, its
/// commit, then tombstones (`None`) for the `superseded` chunk keys of older checkpoints.
pub fn records(
    key: &str,
    writer: u64,
    generation: u64,
    next_offset: i64,
    upstream: &[(String, i64)],
    snapshot: &[u8],
    superseded: &[String],
) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out: Vec<(String, Option<Vec<u8>>)> = snapshot
        .chunks(CHUNK_BYTES)
        .enumerate()
        .map(|(i, bytes)| {
            let mut v = Vec::with_capacity(CHUNK_HEADER + bytes.len());
            v.extend_from_slice(CHUNK);
            v.extend_from_slice(&VERSION.to_le_bytes());
            v.extend_from_slice(&generation.to_le_bytes());
            v.extend_from_slice(&(i as u32).to_le_bytes());
            v.extend_from_slice(bytes);
            (chunk_key(key, writer, generation, i as u32), Some(v))
        })
        .collect();
    let mut c = Vec::with_capacity(COMMIT_LEN);
    c.extend_from_slice(COMMIT);
    c.extend_from_slice(&VERSION.to_le_bytes());
    c.extend_from_slice(&writer.to_le_bytes());
    c.extend_from_slice(&generation.to_le_bytes());
    c.extend_from_slice(&(out.len() as u32).to_le_bytes());
    c.extend_from_slice(&next_offset.to_le_bytes());
    c.extend_from_slice(&(snapshot.len() as u64).to_le_bytes());
    c.extend_from_slice(&(upstream.len() as u32).to_le_bytes());
    for (name, next) in upstream {
        c.extend_from_slice(&(name.len() as u32).to_le_bytes());
        c.extend_from_slice(name.as_bytes());
        c.extend_from_slice(&next.to_le_bytes());
    }
    out.push((key.to_string(), Some(c)));
    out.extend(superseded.iter().map(|k| (k.clone(), None)));
    out
}

/// The delivery record of partition `key`: the first `delivered` alerts of the checkpoint
/// `writer` wrote as `generation` were acknowledged by the sinks.
pub fn delivery_record(
    key: &str,
    writer: u64,
    generation: u64,
    delivered: u64,
) -> (String, Option<Vec<u8>>) {
    let mut v = Vec::with_capacity(DELIVERY_LEN);
    v.extend_from_slice(DELIVERY);
    v.extend_from_slice(&VERSION.to_le_bytes());
    v.extend_from_slice(&writer.to_le_bytes());
    v.extend_from_slice(&generation.to_le_bytes());
    v.extend_from_slice(&delivered.to_le_bytes());
    (format!("{key}!delivered"), Some(v))
}

/// `(writer, generation, delivered)` of a delivery record (`None`: not one this build reads).
fn parse_delivery(v: &[u8]) -> Option<(u64, u64, u64)> {
    if v.len() != DELIVERY_LEN || v.get(..4) != Some(DELIVERY) {
        return None;
    }
    if !(OLDEST..=VERSION).contains(&u32::from_le_bytes(le(v, 4)?)) {
        return None;
    }
    let field = |at| le::<8>(v, at).map(u64::from_le_bytes);
    Some((field(8)?, field(16)?, field(24)?))
}

/// The chunk keys [`records`] writes (what the checkpoint after it supersedes).
pub fn chunk_keys(key: &str, writer: u64, generation: u64, snapshot_len: usize) -> Vec<String> {
    (0..snapshot_len.div_ceil(CHUNK_BYTES))
        .map(|i| chunk_key(key, writer, generation, i as u32))
        .collect()
}

/// Reads `N` little-endian bytes at `at`.
fn le<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at + N)?.try_into().ok()
}

/// A commit record's fields.
struct Commit {
    writer: u64,
    generation: u64,
    chunks: u32,
    next_offset: i64,
    len: u64,
    version: u32,
    upstream: Vec<(String, i64)>,
}

fn parse_commit(v: &[u8]) -> Result<Commit, CheckpointError> {
    if v.get(..4) != Some(COMMIT) {
        return Err(CheckpointError::Commit);
    }
    let version = u32::from_le_bytes(le(v, 4).ok_or(CheckpointError::Commit)?);
    if !(OLDEST..=VERSION).contains(&version) {
        return Err(CheckpointError::Version { found: version });
    }
    if v.len() < COMMIT_LEN || (version == 1 && v.len() != COMMIT_LEN) {
        return Err(CheckpointError::Commit);
    }
    let field = |at| le::<8>(v, at).ok_or(CheckpointError::Commit);
    let mut upstream = Vec::new();
    if version >= 2 {
        let u32_at = |at| {
            le::<4>(v, at)
                .map(u32::from_le_bytes)
                .ok_or(CheckpointError::Commit)
        };
        let count = u32_at(COMMIT_LEN)?;
        let mut at = COMMIT_LEN + 4;
        for _ in 0..count {
            let len = u32_at(at)? as usize;
            let name = v
                .get(at + 4..at + 4 + len)
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or(CheckpointError::Commit)?;
            let next = i64::from_le_bytes(field(at + 4 + len)?);
            upstream.push((name.to_string(), next));
            at += 4 + len + 8;
        }
        if at != v.len() {
            return Err(CheckpointError::Commit);
        }
    }
    Ok(Commit {
        writer: u64::from_le_bytes(field(8)?),
        generation: u64::from_le_bytes(field(16)?),
        chunks: u32::from_le_bytes(le(v, 24).ok_or(CheckpointError::Commit)?),
        next_offset: i64::from_le_bytes(field(28)?),
        len: u64::from_le_bytes(field(36)?),
        version,
        upstream,
    })
}

/// The latest record of each key of a state topic read from its start (and the last few
/// commits of each partition), kept only for the partitions asked for (the topic holds every
/// partition's checkpoints).
#[derive(Default)]
pub struct Collector {
    /// Partition keys to keep (`None`: all).
    wanted: Option<Vec<String>>,
    /// Chunks by key.
    chunks: HashMap<String, Vec<u8>>,
    /// The last [`COMMITS_KEPT`] commits of each partition, oldest first.
    commits: HashMap<String, Vec<Vec<u8>>>,
    /// The latest delivery record of each partition.
    deliveries: HashMap<String, Vec<u8>>,
}

impl Collector {
    /// Keep the records of these partition keys (`None`: every partition).
    pub fn new(wanted: Option<Vec<String>>) -> Collector {
        Collector {
            wanted,
            ..Collector::default()
        }
    }

    /// Add a record in log order (`None`: a tombstone, which removes the key).
    pub fn add(&mut self, key: &[u8], value: Option<&[u8]>) {
        let Ok(key) = std::str::from_utf8(key) else {
            return; // not ours
        };
        if let Some(partition) = key.strip_suffix("!delivered") {
            if self.wants(partition) {
                match value {
                    Some(v) => self.deliveries.insert(partition.to_string(), v.to_vec()),
                    None => self.deliveries.remove(partition),
                };
            }
            return;
        }
        let (partition, chunk) = match key.split_once('#') {
            Some((p, _)) => (p, true),
            None => (key, false),
        };
        if !self.wants(partition) {
            return;
        }
        match (chunk, value) {
            (true, Some(v)) => {
                self.chunks.insert(key.to_string(), v.to_vec());
            }
            (true, None) => {
                self.chunks.remove(key);
            }
            (false, Some(v)) => {
                let c = self.commits.entry(key.to_string()).or_default();
                if c.len() == COMMITS_KEPT {
                    c.remove(0);
                }
                c.push(v.to_vec());
            }
            (false, None) => {
                self.commits.remove(key);
            }
        }
    }

    fn wants(&self, partition: &str) -> bool {
        self.wanted
            .as_ref()
            .is_none_or(|w| w.iter().any(|k| k == partition))
    }

    /// Every partition key with a commit record.
    pub fn partitions(&self) -> Vec<String> {
        let mut out: Vec<String> = self.commits.keys().cloned().collect();
        out.sort();
        out
    }

    /// The checkpoint of partition `key`: the newest commit whose chunks are all there
    /// (`Ok(None)` when it has none; the newest commit's error when none is complete).
    pub fn checkpoint(&self, key: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        let Some(commits) = self.commits.get(key) else {
            return Ok(None);
        };
        let mut first_error = None;
        for commit in commits.iter().rev() {
            match self.assemble(key, commit) {
                Ok(cp) => return Ok(Some(cp)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(None), Err)
    }

    fn assemble(&self, key: &str, commit: &[u8]) -> Result<Checkpoint, CheckpointError> {
        let c = parse_commit(commit)?;
        let mut snapshot = Vec::with_capacity(usize::try_from(c.len).unwrap_or(0).min(1 << 30));
        for i in 0..c.chunks {
            let bad = || CheckpointError::Chunk {
                generation: c.generation,
                index: i,
                chunks: c.chunks,
            };
            let v = self
                .chunks
                .get(&chunk_key(key, c.writer, c.generation, i))
                .ok_or_else(bad)?;
            let ok = v.get(..4) == Some(CHUNK)
                && le::<4>(v, 4).map(u32::from_le_bytes) == Some(c.version)
                && le::<8>(v, 8).map(u64::from_le_bytes) == Some(c.generation)
                && le::<4>(v, 16).map(u32::from_le_bytes) == Some(i);
            if !ok {
                return Err(bad());
            }
            snapshot.extend_from_slice(&v[CHUNK_HEADER..]);
        }
        if snapshot.len() as u64 != c.len {
            return Err(CheckpointError::Length {
                generation: c.generation,
                found: snapshot.len() as u64,
                want: c.len,
            });
        }
        let prefix = format!("{key}#");
        let mut superseded: Vec<String> = self
            .chunks
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        superseded.sort();
        let delivered = self
            .deliveries
            .get(key)
            .and_then(|v| parse_delivery(v))
            .filter(|&(writer, generation, _)| (writer, generation) == (c.writer, c.generation))
            .map(|(_, _, delivered)| delivered);
        Ok(Checkpoint {
            writer: c.writer,
            generation: c.generation,
            delivered,
            next_offset: c.next_offset,
            snapshot,
            superseded,
            upstream: c.upstream,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    fn collect(c: &mut Collector, recs: &[(String, Option<Vec<u8>>)]) {
        for (k, v) in recs {
            c.add(k.as_bytes(), v.as_deref());
        }
    }

    /// A snapshot of several chunks comes back byte for byte with its offset; the latest
    /// complete checkpoint wins and deletes the chunks it supersedes; other partitions' records
    /// are not kept.
    #[test]
    fn round_trip_latest_wins() {
        let key = partition_key("llm.events", 3);
        let mut c = Collector::new(Some(vec![key.clone()]));
        let a = bytes(2 * CHUNK_BYTES + 17, 1);
        let b = bytes(CHUNK_BYTES / 2, 2);
        collect(&mut c, &records(&key, 1, 7, 1_000, &[], &a, &[]));
        collect(&mut c, &records("llm.events/4", 1, 1, 5, &[], &a, &[]));
        assert_eq!(c.partitions(), vec![key.clone()]);
        let got = c.checkpoint(&key).unwrap().unwrap();
        assert_eq!((got.generation, got.next_offset), (7, 1_000));
        assert_eq!(got.snapshot, a);
        assert_eq!(got.superseded, chunk_keys(&key, 1, 7, a.len()));
        collect(
            &mut c,
            &records(&key, 2, 8, 2_000, &[], &b, &got.superseded),
        );
        let got = c.checkpoint(&key).unwrap().unwrap();
        assert_eq!(
            (got.generation, got.next_offset, &got.snapshot),
            (8, 2_000, &b)
        );
        assert_eq!(got.superseded, chunk_keys(&key, 2, 8, b.len()));
        assert_eq!(c.checkpoint("llm.events/9"), Ok(None));
    }

    /// A checkpoint cut off before its commit leaves the previous one readable; a writer's late
    /// records (a zombie's, of the same generation as its successor's) never corrupt another
    /// checkpoint; a commit whose chunks are gone falls back to an older complete one.
    #[test]
    fn torn_and_late_checkpoints() {
        let key = partition_key("t", 0);
        let mut c = Collector::new(None);
        let a = bytes(3 * CHUNK_BYTES, 3);
        collect(&mut c, &records(&key, 1, 4, 40, &[], &a, &[]));
        // writer 1 dies while writing generation 5: its chunks land, its commit does not
        let late = records(&key, 1, 5, 50, &[], &bytes(3 * CHUNK_BYTES, 4), &[]);
        collect(&mut c, &late[..2]);
        let restored = c.checkpoint(&key).unwrap().unwrap();
        assert_eq!((restored.generation, &restored.snapshot), (4, &a));
        // writer 2 restores generation 4 and writes its generation 5
        let b = bytes(CHUNK_BYTES + 5, 5);
        collect(
            &mut c,
            &records(&key, 2, 5, 60, &[], &b, &restored.superseded),
        );
        // writer 1's last chunk and its commit land late
        collect(&mut c, &late[2..]);
        // writer 1's commit is the newest but lost its first chunks to writer 2's tombstones:
        // writer 2's complete checkpoint is restored
        let got = c.checkpoint(&key).unwrap().unwrap();
        assert_eq!((got.next_offset, &got.snapshot), (60, &b));
        // a commit whose chunk is missing and nothing older: refused, not read short
        let mut d = Collector::new(None);
        let recs = records(&key, 3, 1, 10, &[], &a, &[]);
        collect(&mut d, &recs[1..]);
        assert_eq!(
            d.checkpoint(&key),
            Err(CheckpointError::Chunk {
                generation: 1,
                index: 0,
                chunks: 3
            })
        );
    }

    /// A delivery record counts for the checkpoint it names and for no other: not an older
    /// one restored instead, not a newer one, not another writer's of the same generation.
    #[test]
    fn delivery_records_name_their_checkpoint() {
        let key = partition_key("t", 2);
        let mut c = Collector::new(Some(vec![key.clone()]));
        collect(&mut c, &records(&key, 7, 3, 30, &[], b"three", &[]));
        assert_eq!(c.checkpoint(&key).unwrap().unwrap().delivered, None);
        collect(&mut c, &[delivery_record(&key, 7, 3, 5)]);
        let got = c.checkpoint(&key).unwrap().unwrap();
        assert_eq!((got.writer, got.generation, got.delivered), (7, 3, Some(5)));
        // a later record replaces it; other partitions' are not kept
        collect(&mut c, &[delivery_record(&key, 7, 3, 6)]);
        collect(&mut c, &[delivery_record("t/9", 7, 3, 1)]);
        assert_eq!(c.checkpoint(&key).unwrap().unwrap().delivered, Some(6));
        assert_eq!(c.partitions(), vec![key.clone()]);
        // another writer's generation 3, or a newer checkpoint: not this record's
        let mut other = Collector::new(None);
        collect(&mut other, &records(&key, 8, 3, 30, &[], b"three", &[]));
        collect(&mut other, &[delivery_record(&key, 7, 3, 5)]);
        assert_eq!(other.checkpoint(&key).unwrap().unwrap().delivered, None);
        collect(&mut c, &records(&key, 7, 4, 40, &[], b"four", &[]));
        assert_eq!(c.checkpoint(&key).unwrap().unwrap().delivered, None);
        // generation 4 torn (its chunk deleted): generation 3 is restored with its record
        c.add(chunk_keys(&key, 7, 4, 4)[0].as_bytes(), None);
        let got = c.checkpoint(&key).unwrap().unwrap();
        assert_eq!((got.generation, got.delivered), (3, Some(6)));
        // a record that does not parse is ignored, never an error
        c.add(format!("{key}!delivered").as_bytes(), Some(b"ARMDjunk"));
        assert_eq!(c.checkpoint(&key).unwrap().unwrap().delivered, None);
    }

    /// Other versions and garbage are refused with their reason.
    #[test]
    fn refused_records() {
        let key = partition_key("t", 1);
        let mut recs = records(&key, 1, 1, 9, &[], b"abc", &[]);
        let mut c = Collector::new(None);
        if let Some(v) = recs[1].1.as_mut() {
            v[4] = 9; // the commit's version
        }
        collect(&mut c, &recs);
        assert_eq!(
            c.checkpoint(&key),
            Err(CheckpointError::Version { found: 9 })
        );
        c.add(key.as_bytes(), None);
        c.add(key.as_bytes(), Some(b"ARMK"));
        assert!(c.checkpoint(&key).is_err());
        c.add(key.as_bytes(), None);
        c.add(key.as_bytes(), Some(b"junk"));
        assert_eq!(c.checkpoint(&key), Err(CheckpointError::Commit));
        c.add(key.as_bytes(), None);
        assert_eq!(c.checkpoint(&key), Ok(None));
        // an empty snapshot is one commit and no chunk
        let e = records(&key, 1, 2, 0, &[], b"", &[]);
        assert_eq!(e.len(), 1);
        collect(&mut c, &e);
        assert_eq!(c.checkpoint(&key).unwrap().unwrap().snapshot, b"");
    }

    /// A repartitioned partition's upstream offsets come back with its checkpoint; a version-1
    /// commit (written before upstream offsets existed) is still read, with none.
    #[test]
    fn upstream_offsets_and_version_1() {
        let key = partition_key("g.armwatch-by-unit", 2);
        let up = vec![
            ("llm.events/0".to_string(), 41),
            ("llm.events/3".to_string(), 7),
        ];
        let mut c = Collector::new(None);
        collect(&mut c, &records(&key, 1, 3, 99, &up, b"state", &[]));
        let got = c.checkpoint(&key).unwrap().unwrap();
        assert_eq!((got.next_offset, &got.upstream), (99, &up));
        // the same commit as version 1 wrote it: fixed length, version 1 in commit and chunk
        let mut recs = records(&key, 1, 4, 120, &[], b"older", &[]);
        for (_, v) in recs.iter_mut() {
            if let Some(v) = v.as_mut() {
                v[4..8].copy_from_slice(&1u32.to_le_bytes());
            }
        }
        if let Some(commit) = recs[1].1.as_mut() {
            commit.truncate(COMMIT_LEN);
        }
        collect(&mut c, &recs);
        let got = c.checkpoint(&key).unwrap().unwrap();
        assert_eq!(
            (got.next_offset, got.snapshot.as_slice()),
            (120, &b"older"[..])
        );
        assert!(got.upstream.is_empty());
        // a version-2 commit cut inside its upstream list is refused
        let mut recs = records(&key, 1, 5, 130, &up, b"x", &[]);
        if let Some(commit) = recs[1].1.as_mut() {
            commit.truncate(commit.len() - 3);
        }
        let mut d = Collector::new(None);
        collect(&mut d, &recs);
        assert_eq!(d.checkpoint(&key), Err(CheckpointError::Commit));
    }
}
