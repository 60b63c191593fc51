//! The consumer's messages read in batches: every assigned partition forwards its fetch queue
//! to one application queue, read with `rd_kafka_consume_batch_queue`.
//!
//! Why: `BaseConsumer::poll` serves one message per call, and each call reads the clock three
//! times (librdkafka's `max.poll.interval.ms` bookkeeping), takes the queue lock, and wraps the
//! fetch event in an `Arc`; in the Kafka drain that was ~0.15-0.2 us of every message's ~0.5 us
//! on the consumer thread, which shares two cores with the broker and the engine thread. A
//! batch call pays the bookkeeping once per call. Rebalances, commits, statistics and errors
//! stay on the consumer queue, which the source still polls between batches, so the
//! assignment callbacks (checkpoint restore and hand-over) run as before.
//!
//! Ordering: a partition is forwarded inside the assignment callback, before `assign` starts
//! its fetcher, so none of its messages reach the consumer queue first; a revoked partition's
//! messages still queued here are dropped by librdkafka itself (its version barrier), as on
//! the consumer queue.

use rdkafka::bindings as rd;
use std::ffi::{c_void, CStr, CString};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, Ordering};

/// Messages asked for per batch call: a batch's worth (the rest wait here for the next one).
const PER_CALL: usize = super::batch::BATCH_MESSAGES;

/// The application queue and the messages of its last batch call not yet handed out.
pub struct FetchQueue {
    queue: NonNull<rd::rd_kafka_queue_t>,
    /// Where the assignment callback finds the queue (cleared before the queue goes).
    slot: std::sync::Arc<QueueSlot>,
    messages: Vec<*mut rd::rd_kafka_message_t>,
    next: usize,
}

// SAFETY: librdkafka queues and messages may be used from any thread; the raw pointers are
// owned by this value alone and used by one thread at a time (`&mut self`).
unsafe impl Send for FetchQueue {}

/// The queue as the assignment callback sees it: null when batches are not read.
#[derive(Default)]
pub struct QueueSlot(AtomicPtr<rd::rd_kafka_queue_t>);

impl QueueSlot {
    /// Forward the fetch queues of `partitions` to the batch queue, if there is one (to be
    /// called before they are assigned; without one their messages stay on the consumer
    /// queue).
    ///
    /// `rk` must be the live client handle the queue was created on.
    pub fn forward<'a>(
        &self,
        rk: *mut rd::rd_kafka_t,
        partitions: impl Iterator<Item = (&'a str, i32)>,
    ) {
        let q = self.0.load(Ordering::Acquire);
        if q.is_null() {
            return;
        }
        for (topic, partition) in partitions {
            let Ok(topic) = CString::new(topic) else {
                continue;
            };
            // SAFETY: `rk` is live (the caller's consumer), `q` is live while the slot holds
            // it; the partition handle is released here (the forwarding keeps its own
            // reference to the destination queue).
            unsafe {
                let pq = rd::rd_kafka_queue_get_partition(rk, topic.as_ptr(), partition);
                if !pq.is_null() {
                    rd::rd_kafka_queue_forward(pq, q);
                    rd::rd_kafka_queue_destroy(pq);
                }
            }
        }
    }
}

/// One message of a batch, borrowed from the queue until the next call.
pub struct Fetched<'a> {
    m: &'a rd::rd_kafka_message_t,
}

impl<'a> Fetched<'a> {
    /// The error librdkafka put in place of a message, if any.
    pub fn error(&self) -> Option<rdkafka::error::RDKafkaErrorCode> {
        (self.m.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .then(|| self.m.err.into())
    }

    /// The topic's name (empty when it is not valid UTF-8).
    pub fn topic(&self) -> &'a str {
        // SAFETY: a consumed message holds a reference to its topic handle, whose name is a
        // NUL-terminated string that lives as long as the handle.
        unsafe {
            if self.m.rkt.is_null() {
                return "";
            }
            CStr::from_ptr(rd::rd_kafka_topic_name(self.m.rkt))
                .to_str()
                .unwrap_or("")
        }
    }

    /// The partition.
    pub fn partition(&self) -> i32 {
        self.m.partition
    }

    /// The message's offset in its partition.
    pub fn offset(&self) -> i64 {
        self.m.offset
    }

    /// The value (`None`: a message without one).
    pub fn payload(&self) -> Option<&'a [u8]> {
        bytes(self.m.payload, self.m.len)
    }

    /// The key (`None`: none).
    pub fn key(&self) -> Option<&'a [u8]> {
        bytes(self.m.key, self.m.key_len)
    }
}

/// `len` bytes at `p` (`None` for a null pointer).
fn bytes<'a>(p: *mut c_void, len: usize) -> Option<&'a [u8]> {
    if p.is_null() {
        return None;
    }
    // SAFETY: librdkafka's message buffers are `len` bytes and live as long as the message.
    Some(unsafe { std::slice::from_raw_parts(p as *const u8, len) })
}

impl FetchQueue {
    /// A new queue on the client `rk`, published in `slot` for the assignment callback.
    /// `None` when librdkafka cannot make one (the caller then polls the consumer queue).
    ///
    /// `rk` must outlive the queue.
    pub fn new(rk: *mut rd::rd_kafka_t, slot: std::sync::Arc<QueueSlot>) -> Option<FetchQueue> {
        // SAFETY: `rk` is a live client handle.
        let queue = NonNull::new(unsafe { rd::rd_kafka_queue_new(rk) })?;
        slot.0.store(queue.as_ptr(), Ordering::Release);
        Some(FetchQueue {
            queue,
            slot,
            messages: Vec::with_capacity(PER_CALL),
            next: 0,
        })
    }

    /// The next message, reading a new batch (at most `limit` messages, waiting up to
    /// `wait_ms` for the first) when the last one is used up. The previous message is
    /// released on this call.
    pub fn next(&mut self, limit: usize, wait_ms: i32) -> Option<Fetched<'_>> {
        self.release_handed();
        if self.next == self.messages.len() {
            self.messages.clear();
            self.next = 0;
            self.read(limit.min(PER_CALL), wait_ms);
        }
        let m = *self.messages.get(self.next)?;
        self.next += 1;
        // SAFETY: a message returned by librdkafka, not yet destroyed (it is destroyed by the
        // next call or on drop).
        Some(Fetched { m: unsafe { &*m } })
    }

    /// Read up to `n` messages: without waiting first (a full array returns at once); when
    /// none is there, wait up to `wait_ms` for one (`consume_batch_queue` waits for the
    /// whole array, so a longer wait would hold back the messages already there).
    fn read(&mut self, n: usize, wait_ms: i32) {
        if n == 0 {
            return;
        }
        let got = self.call(n, 0);
        if got == 0 && wait_ms > 0 {
            self.call(1, wait_ms);
        }
    }

    fn call(&mut self, n: usize, wait_ms: i32) -> usize {
        // SAFETY: the array has room for `n` <= PER_CALL pointers; librdkafka writes the count
        // it returns.
        let got = unsafe {
            rd::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                wait_ms,
                self.messages.as_mut_ptr(),
                n,
            )
        };
        let got = usize::try_from(got).unwrap_or(0).min(n);
        // SAFETY: librdkafka initialised the first `got` entries.
        unsafe { self.messages.set_len(got) };
        got
    }

    /// Destroy the message handed out by the last call.
    fn release_handed(&mut self) {
        if self.next > 0 {
            if let Some(m) = self.messages.get_mut(self.next - 1) {
                if !m.is_null() {
                    // SAFETY: handed out once, destroyed once (nulled here).
                    unsafe { rd::rd_kafka_message_destroy(*m) };
                    *m = std::ptr::null_mut();
                }
            }
        }
    }
}

impl Drop for FetchQueue {
    fn drop(&mut self) {
        self.slot.0.store(std::ptr::null_mut(), Ordering::Release);
        self.release_handed();
        for m in self.messages.drain(self.next..) {
            // SAFETY: returned by librdkafka and never handed out.
            unsafe { rd::rd_kafka_message_destroy(m) };
        }
        // SAFETY: the queue was created by `rd_kafka_queue_new` and is released once; the
        // partitions still forwarding to it keep their own references.
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) };
    }
}
