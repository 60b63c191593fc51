//! Checkpoint records: how the snapshot of one input partition's state ([`crate::snapshot`])
//! and the next offset it covers are laid out in a compacted Kafka topic, and how they are
//! read back. Sans-IO: the Kafka shell (`source::kafka::state`) moves the records.
//!
//! A snapshot can be far larger than a Kafka message (1 MB by default), so it is cut into
//! chunks. A compacted topic keeps only the latest record per key, so a checkpoint must never
//! overwrite the chunks of the checkpoint it replaces before it is complete: chunks go to one
//! of two slots (the generation's parity, double buffering), and a commit record, written last
//! under the partition's own key, names the generation, the slot, the chunk count and the next
//! offset. A crash in the middle of a checkpoint leaves the previous commit pointing at a slot
//! that nothing touched. The layout, all integers little endian:
//!
//! - commit, key `{topic}/{partition}`: `ARMK`, version u32, generation u64, chunks u32,
//!   next offset i64, snapshot length u64;
//! - chunk, key `{topic}/{partition}#{slot}.{index}`: `ARMC`, version u32, generation u64,
//!   index u32, then the bytes.
//!
//! The snapshot itself carries its own version and checksum: a torn or altered checkpoint is
//! refused at restore, never half-applied.

use std::collections::HashMap;

const COMMIT: &[u8; 4] = b"ARMK";
const CHUNK: &[u8; 4] = b"ARMC";

/// The record format written by this build.
pub const VERSION: u32 = 1;

/// Snapshot bytes per chunk record (under Kafka's default 1 MB message limit, with room for
/// the headers).
pub const CHUNK_BYTES: usize = 900 * 1024;

const COMMIT_LEN: usize = 4 + 4 + 8 + 4 + 8 + 8;
const CHUNK_HEADER: usize = 4 + 4 + 8 + 4;

/// The key of partition `partition` of `topic` (its commit record's key).
pub fn partition_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// A checkpoint read back: the snapshot and the next offset of the input partition it covers.
#[derive(Debug, PartialEq)]
pub struct Checkpoint {
    /// Counts the partition's checkpoints (the next one is `generation + 1`).
    pub generation: u64,
    /// The first offset not in the snapshot: where consumption resumes.
    pub next_offset: i64,
    /// [`crate::snapshot`] bytes.
    pub snapshot: Vec<u8>,
}

/// Why a checkpoint was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CheckpointError {
    /// Written by a build with another record format.
    #[error("checkpoint record format version {found}, this build reads version {VERSION}")]
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

/// The records of one checkpoint, in the order to write them (the chunks, then the commit):
/// `(key, value)`.
pub fn records(
    key: &str,
    generation: u64,
    next_offset: i64,
    snapshot: &[u8],
) -> Vec<(String, Vec<u8>)> {
    let slot = generation % 2;
    let mut out: Vec<(String, Vec<u8>)> = snapshot
        .chunks(CHUNK_BYTES)
        .enumerate()
        .map(|(i, bytes)| {
            let mut v = Vec::with_capacity(CHUNK_HEADER + bytes.len());
            v.extend_from_slice(CHUNK);
            v.extend_from_slice(&VERSION.to_le_bytes());
            v.extend_from_slice(&generation.to_le_bytes());
            v.extend_from_slice(&(i as u32).to_le_bytes());
            v.extend_from_slice(bytes);
            (format!("{key}#{slot}.{i}"), v)
        })
        .collect();
    let mut c = Vec::with_capacity(COMMIT_LEN);
    c.extend_from_slice(COMMIT);
    c.extend_from_slice(&VERSION.to_le_bytes());
    c.extend_from_slice(&generation.to_le_bytes());
    c.extend_from_slice(&(out.len() as u32).to_le_bytes());
    c.extend_from_slice(&next_offset.to_le_bytes());
    c.extend_from_slice(&(snapshot.len() as u64).to_le_bytes());
    out.push((key.to_string(), c));
    out
}

/// Reads `N` little-endian bytes at `at`.
fn le<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at + N)?.try_into().ok()
}

/// A commit record's fields.
struct Commit {
    generation: u64,
    chunks: u32,
    next_offset: i64,
    len: u64,
}

fn parse_commit(v: &[u8]) -> Result<Commit, CheckpointError> {
    if v.get(..4) != Some(COMMIT) {
        return Err(CheckpointError::Commit);
    }
    let version = u32::from_le_bytes(le(v, 4).ok_or(CheckpointError::Commit)?);
    if version != VERSION {
        return Err(CheckpointError::Version { found: version });
    }
    if v.len() != COMMIT_LEN {
        return Err(CheckpointError::Commit);
    }
    let field = |at| le::<8>(v, at).ok_or(CheckpointError::Commit);
    Ok(Commit {
        generation: u64::from_le_bytes(field(8)?),
        chunks: u32::from_le_bytes(le(v, 16).ok_or(CheckpointError::Commit)?),
        next_offset: i64::from_le_bytes(field(20)?),
        len: u64::from_le_bytes(field(28)?),
    })
}

/// The latest record of each key of a state topic read from its start, kept only for the
/// partitions asked for (the topic holds every partition's checkpoints).
#[derive(Default)]
pub struct Collector {
    /// Partition keys to keep (`None`: all).
    wanted: Option<Vec<String>>,
    latest: HashMap<String, Vec<u8>>,
}

impl Collector {
    /// Keep the records of these partition keys (`None`: every partition).
    pub fn new(wanted: Option<Vec<String>>) -> Collector {
        Collector {
            wanted,
            latest: HashMap::new(),
        }
    }

    /// The partition key of a record key (a chunk's key less its `#slot.index`).
    fn partition_of(key: &str) -> &str {
        key.split_once('#').map_or(key, |(p, _)| p)
    }

    /// Add a record in log order (`None`: a tombstone, which removes the key).
    pub fn add(&mut self, key: &[u8], value: Option<&[u8]>) {
        let Ok(key) = std::str::from_utf8(key) else {
            return; // not ours
        };
        if let Some(w) = &self.wanted {
            let p = Self::partition_of(key);
            if !w.iter().any(|k| k == p) {
                return;
            }
        }
        match value {
            Some(v) => {
                self.latest.insert(key.to_string(), v.to_vec());
            }
            None => {
                self.latest.remove(key);
            }
        }
    }

    /// Every partition key with a commit record.
    pub fn partitions(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .latest
            .keys()
            .filter(|k| !k.contains('#'))
            .cloned()
            .collect();
        out.sort();
        out
    }

    /// The checkpoint of partition `key`: `Ok(None)` when it has none.
    pub fn checkpoint(&self, key: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        let Some(commit) = self.latest.get(key) else {
            return Ok(None);
        };
        let c = parse_commit(commit)?;
        let slot = c.generation % 2;
        let mut snapshot = Vec::with_capacity(usize::try_from(c.len).unwrap_or(0).min(1 << 30));
        for i in 0..c.chunks {
            let bad = CheckpointError::Chunk {
                generation: c.generation,
                index: i,
                chunks: c.chunks,
            };
            let v = self.latest.get(&format!("{key}#{slot}.{i}")).ok_or(bad)?;
            let ok = v.get(..4) == Some(CHUNK)
                && le::<4>(v, 4).map(u32::from_le_bytes) == Some(VERSION)
                && le::<8>(v, 8).map(u64::from_le_bytes) == Some(c.generation)
                && le::<4>(v, 16).map(u32::from_le_bytes) == Some(i);
            if !ok {
                return Err(CheckpointError::Chunk {
                    generation: c.generation,
                    index: i,
                    chunks: c.chunks,
                });
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
        Ok(Some(Checkpoint {
            generation: c.generation,
            next_offset: c.next_offset,
            snapshot,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    fn collect(c: &mut Collector, recs: &[(String, Vec<u8>)]) {
        for (k, v) in recs {
            c.add(k.as_bytes(), Some(v));
        }
    }

    /// A snapshot of several chunks comes back byte for byte with its offset; the latest
    /// complete checkpoint wins; other partitions' records are not kept.
    #[test]
    fn round_trip_latest_wins() {
        let key = partition_key("llm.events", 3);
        let mut c = Collector::new(Some(vec![key.clone()]));
        let a = bytes(2 * CHUNK_BYTES + 17, 1);
        let b = bytes(CHUNK_BYTES / 2, 2);
        collect(&mut c, &records(&key, 7, 1_000, &a));
        collect(&mut c, &records("llm.events/4", 1, 5, &a));
        assert_eq!(c.partitions(), vec![key.clone()]);
        let got = c.checkpoint(&key).unwrap().unwrap();
        assert_eq!((got.generation, got.next_offset), (7, 1_000));
        assert_eq!(got.snapshot, a);
        collect(&mut c, &records(&key, 8, 2_000, &b));
        let got = c.checkpoint(&key).unwrap().unwrap();
        assert_eq!((got.generation, got.next_offset, got.snapshot), (8, 2_000, b));
        assert_eq!(c.checkpoint("llm.events/9"), Ok(None));
    }

    /// A checkpoint cut off before its commit leaves the previous one readable (the chunks went
    /// to the other slot); one whose commit landed without a chunk is refused, not read short.
    #[test]
    fn torn_checkpoints() {
        let key = partition_key("t", 0);
        let mut c = Collector::new(None);
        let a = bytes(3 * CHUNK_BYTES, 3);
        collect(&mut c, &records(&key, 4, 40, &a));
        let next = records(&key, 5, 50, &bytes(3 * CHUNK_BYTES, 4));
        collect(&mut c, &next[..2]); // killed before the commit
        assert_eq!(c.checkpoint(&key).unwrap().unwrap().snapshot, a);
        // the commit of generation 5 without its last chunk
        c.add(next[3].0.as_bytes(), Some(&next[3].1));
        assert_eq!(
            c.checkpoint(&key),
            Err(CheckpointError::Chunk {
                generation: 5,
                index: 2,
                chunks: 3
            })
        );
    }

    /// Other versions and garbage are refused with their reason.
    #[test]
    fn refused_records() {
        let key = partition_key("t", 1);
        let mut recs = records(&key, 1, 9, b"abc");
        let mut c = Collector::new(None);
        recs[1].1[4] = 9; // the commit's version
        collect(&mut c, &recs);
        assert_eq!(
            c.checkpoint(&key),
            Err(CheckpointError::Version { found: 9 })
        );
        c.add(key.as_bytes(), Some(b"ARMK"));
        assert!(c.checkpoint(&key).is_err());
        c.add(key.as_bytes(), Some(b"junk"));
        assert_eq!(c.checkpoint(&key), Err(CheckpointError::Commit));
        c.add(key.as_bytes(), None);
        assert_eq!(c.checkpoint(&key), Ok(None));
        // an empty snapshot is one commit and no chunk
        let e = records(&key, 2, 0, b"");
        assert_eq!(e.len(), 1);
        collect(&mut c, &e);
        assert_eq!(c.checkpoint(&key).unwrap().unwrap().snapshot, b"");
    }
}
