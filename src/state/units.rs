//! First exposure per unit. A unit (user) with many prompts sits in one arm for all of them,
//! so counting events would over-disperse the arm counts and make any multinomial test
//! anti-conservative; counting each unit once restores independent draws.
//!
//! A Bloom filter (Bloom 1970; Kirsch & Mitzenmacher 2006 double hashing) keeps this in fixed
//! memory. Its false positives drop a new unit as "seen", and whether that happens depends only
//! on unit ids, never on arms, so the e-processes stay valid. Past its capacity the
//! false-positive rate would climb, so new units stop being counted (a stopped martingale is
//! still a martingale) and the report says the filter is full.

/// Bloom filter over unit ids with a fixed capacity at about 1% false positives.
#[derive(Clone, Debug)]
pub struct UnitFilter {
    bits: Box<[u64]>,
    mask: u64,
    inserted: u64,
    capacity: u64,
}

const HASHES: u64 = 7;

/// What the filter says of a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposure {
    /// Not seen before: count this event.
    First,
    /// Seen before (or a false positive): do not count.
    Repeat,
    /// The filter is at capacity: new units are no longer counted.
    Full,
}

impl UnitFilter {
    /// A filter for `capacity` units (about 9.6 bits per unit, rounded up to a power of two).
    pub fn new(capacity: u64) -> UnitFilter {
        let bits = (capacity.max(64) as f64 * 9.6).ceil() as u64;
        let bits = bits.next_power_of_two();
        UnitFilter {
            bits: vec![0; (bits / 64) as usize].into(),
            mask: bits - 1,
            inserted: 0,
            capacity,
        }
    }

    /// Test and insert `unit`.
    #[inline]
    pub fn observe(&mut self, unit: &str) -> Exposure {
        let h = twox_hash::XxHash3_64::oneshot(unit.as_bytes());
        let (h1, h2) = (h, h.rotate_left(32) | 1);
        let mut present = true;
        for i in 0..HASHES {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) & self.mask;
            present &= self.bits[(bit >> 6) as usize] & (1 << (bit & 63)) != 0;
        }
        if present {
            return Exposure::Repeat;
        }
        if self.inserted >= self.capacity {
            return Exposure::Full;
        }
        for i in 0..HASHES {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) & self.mask;
            self.bits[(bit >> 6) as usize] |= 1 << (bit & 63);
        }
        self.inserted += 1;
        Exposure::First
    }

    /// Units counted.
    pub fn inserted(&self) -> u64 {
        self.inserted
    }

    /// Whether new units are no longer counted.
    pub fn is_full(&self) -> bool {
        self.inserted >= self.capacity
    }

    /// Union with another partition's filter of the same capacity (units are counted where
    /// they were first seen; a unit seen in both partitions is counted in each).
    pub fn merge(&mut self, other: &UnitFilter) {
        if self.bits.len() == other.bits.len() {
            for (a, b) in self.bits.iter_mut().zip(other.bits.iter()) {
                *a |= b;
            }
            self.inserted += other.inserted;
        }
    }

    /// Memory held, in bytes.
    pub fn bytes(&self) -> usize {
        self.bits.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn false_positive_rate_near_one_percent_at_capacity() {
        let mut f = UnitFilter::new(100_000);
        for i in 0..100_000 {
            f.observe(&format!("user-{i}"));
        }
        assert_eq!(f.observe("user-5"), Exposure::Repeat);
        let fp = (0..100_000)
            .filter(|i| f.observe(&format!("other-{i}")) != Exposure::Full)
            .count();
        assert!(fp < 1_500, "false positives {fp} of 100000");
        assert!(f.is_full());
        assert!(f.bytes() <= 256 * 1024);
    }
}
