//! Per-experiment state, updated once per event. Everything here is plain data with bounded
//! size, mergeable across partitions, and free of IO.

pub mod assignment;
pub mod experiment;
pub mod exposure;
pub mod id_arms;
pub mod input;
pub mod judge;
pub mod name;
pub mod numeric;
pub mod overlap;
pub mod predict;
pub mod router;
pub mod sampling;
pub mod strata;
pub mod substrate;
pub mod units;

use std::hash::{BuildHasherDefault, Hasher};

/// A hasher for keys that already are 64-bit xxHash values.
#[derive(Default)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // only used with u64 keys; fold anything else defensively
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// `HashMap<u64, V, Identity>`: lookups by pre-hashed key, no re-hashing.
pub type Identity = BuildHasherDefault<IdentityHasher>;

/// The 64-bit identity of a string value (xxh3, seed 0).
#[inline]
pub fn key_of(s: &str) -> u64 {
    twox_hash::XxHash3_64::oneshot(s.as_bytes())
}

/// Cap the length of a value kept for display (labels, reports).
pub fn display_label(s: &str) -> Box<str> {
    const MAX: usize = 128;
    if s.len() <= MAX {
        return s.into();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end]).into()
}
