//! A batch of messages on its way from a source to the engine thread: the payloads copied
//! into one recycled buffer, decoded by the source's thread, and the positions (Kafka offsets)
//! to acknowledge once the batch has been applied.

use crate::daemon::EngineLoop;
use crate::event::{Decoded, Event, Inputs, Limits, RejectReason};
use crate::partitions::Part;

/// Payloads copied out of the source's buffers and decoded on the source's thread, so that the
/// state updates and detectors run on a thread of their own while the source keeps reading and
/// decoding the next batch (a two-stage pipeline). Batches are recycled (no allocation per
/// message once warm) and come back to the source's thread after processing, which then
/// acknowledges the positions they carry: a message is acknowledged only after it has been
/// processed.
#[derive(Default)]
pub struct Batch {
    /// The messages and, once decoded, their events.
    decoded: Decoded,
    /// Scratch for messages written in place ([`Batch::push_with`]).
    scratch: Vec<u8>,
    /// The last position of each (stream, partition) in the batch: a Kafka offset per topic
    /// index and partition.
    marks: Vec<(usize, i32, i64)>,
    /// Each message's partition (a source's index) and offset, for sources with partitions
    /// (empty otherwise: every message goes to partition 0).
    positions: Vec<(u32, i64)>,
    /// Partitions taken on, each before the message at its position: `(message index,
    /// partition index, state)`.
    assigned: Vec<(usize, usize, Part)>,
    /// Re-keyed messages only: each one's input partition (an index into `upstream_names`)
    /// and input offset.
    upstream: Vec<(u32, i64)>,
    /// The input partitions' names (the source's table, shared: replaced when it grows).
    upstream_names: std::sync::Arc<Vec<String>>,
}

/// A batch is full at this many messages or at this many bytes.
pub const BATCH_MESSAGES: usize = 512;
const BATCH_BYTES: usize = 1 << 20;

impl Batch {
    /// Add a message (`None`: one without payload).
    #[inline]
    pub fn push(&mut self, payload: Option<&[u8]>) {
        self.decoded.push(payload);
    }

    /// Add a message of partition `part` at `offset`.
    #[inline]
    pub fn push_at(&mut self, payload: Option<&[u8]>, part: u32, offset: i64) {
        self.decoded.push(payload);
        self.positions.push((part, offset));
    }

    /// Add a re-keyed message of partition `part` at `offset`, re-produced from input
    /// partition `names[from]` at `from_offset`.
    #[inline]
    pub fn push_rekeyed(
        &mut self,
        payload: Option<&[u8]>,
        (part, offset): (u32, i64),
        (from, from_offset): (u32, i64),
        names: &std::sync::Arc<Vec<String>>,
    ) {
        self.push_at(payload, part, offset);
        self.upstream
            .resize(self.positions.len() - 1, (u32::MAX, -1));
        self.upstream.push((from, from_offset));
        if !std::sync::Arc::ptr_eq(&self.upstream_names, names) {
            self.upstream_names = std::sync::Arc::clone(names);
        }
    }

    /// Own partition `index` from the next message on, continuing from `part`.
    pub fn assign(&mut self, index: usize, part: Part) {
        self.assigned.push((self.decoded.len(), index, part));
    }

    /// Add a message written by `write` (into a reused scratch buffer).
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        write(&mut scratch);
        self.push(Some(&scratch));
        self.scratch = scratch;
    }

    /// Record position `offset` of `(stream, partition)` (the batch keeps the largest).
    #[inline]
    pub fn mark(&mut self, stream: usize, partition: i32, offset: i64) {
        match self
            .marks
            .iter_mut()
            .find(|(s, p, _)| *p == partition && *s == stream)
        {
            Some(m) => m.2 = m.2.max(offset),
            None => self.marks.push((stream, partition, offset)),
        }
    }

    /// The last position of each `(stream, partition)`.
    pub fn marks(&self) -> &[(usize, i32, i64)] {
        &self.marks
    }

    /// Message `i`'s payload (`None`: none, or no such message).
    pub fn payload(&self, i: usize) -> Option<&[u8]> {
        self.decoded.payload(i)
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.decoded.len()
    }

    /// Whether no message (and no assignment) is held.
    pub fn is_empty(&self) -> bool {
        self.decoded.is_empty() && self.assigned.is_empty()
    }

    /// Whether the batch should be sent now.
    pub fn full(&self) -> bool {
        self.decoded.len() >= BATCH_MESSAGES || self.decoded.bytes_len() >= BATCH_BYTES
    }

    /// Decode the messages (once: on whichever thread gets there first).
    pub fn decode(&mut self, limits: &Limits) {
        self.decoded.decode(limits);
    }

    /// Message `i`'s partition index and offset (`(0, -1)`: a source without partitions),
    /// and for a re-keyed message the input partition and offset it was re-produced from.
    #[inline]
    fn position(&self, i: usize) -> (usize, i64, Option<(&str, i64)>) {
        let (part, offset) = self
            .positions
            .get(i)
            .map_or((0, -1), |&(p, o)| (p as usize, o));
        let upstream = self
            .upstream
            .get(i)
            .and_then(|&(from, at)| Some((self.upstream_names.get(from as usize)?.as_str(), at)));
        (part, offset, upstream)
    }

    /// Message `i`'s payload (`None`: one without) and its event, inputs in `inputs`.
    #[inline]
    fn message<'s, 'a: 's>(
        &'a self,
        i: usize,
        inputs: &'s mut Inputs<'a>,
    ) -> (Option<&'a [u8]>, Result<Event<'s>, RejectReason>) {
        let payload = self.decoded.payload(i);
        let decoded = match payload {
            Some(_) => self.decoded.event(i, inputs),
            None => Err(RejectReason::Empty),
        };
        (payload, decoded)
    }

    /// Apply the batch's assignments and messages in order.
    pub fn apply(&mut self, lp: &mut EngineLoop) {
        let mut assigned = std::mem::take(&mut self.assigned).into_iter().peekable();
        for i in 0..self.decoded.len() {
            // peeked by reference: `next_if` would move the (large) partition state out and
            // back for every message while an assignment waits further on
            while assigned.peek().is_some_and(|a| a.0 <= i) {
                if let Some((_, index, part)) = assigned.next() {
                    lp.assign(index, part);
                }
            }
            let (part, offset, upstream) = self.position(i);
            let mut inputs = Inputs::new();
            let (payload, decoded) = self.message(i, &mut inputs);
            let _ = lp.on_message_at(part, offset, upstream, payload, &decoded);
        }
        for (_, index, part) in assigned {
            lp.assign(index, part);
        }
    }

    /// Empty the batch (keeps the capacity).
    pub fn clear(&mut self) {
        self.decoded.clear();
        self.marks.clear();
        self.positions.clear();
        self.assigned.clear();
        self.upstream.clear();
    }
}
