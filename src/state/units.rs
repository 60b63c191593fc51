//! First exposure per unit. A unit (user) with many prompts sits in one arm for all of them,
//! so counting events would over-disperse the arm counts and make any multinomial test
//! anti-conservative; counting each unit once restores independent draws.
//!
//! A blocked Bloom filter (Bloom 1970; Putze, Sanders & Singler 2007: all of a key's bits in
//! one 512-bit block, so a lookup touches one cache line) keeps this in fixed memory. Its false positives drop a new unit as "seen", and whether that happens depends only
//! on unit ids, never on arms, so the e-processes stay valid. Past its capacity the
//! false-positive rate would climb, so new units stop being counted (a stopped martingale is
//! still a martingale) and the report says the filter is full.

/// Bloom filter over unit ids with a fixed capacity at about 1% false positives.
#[derive(Clone, Debug)]
pub struct UnitFilter {
    bits: Box<[u64]>,
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
    /// A filter for `capacity` units (10.5 bits per unit, whole 512-bit blocks).
    pub fn new(capacity: u64) -> UnitFilter {
        // ~10.5 bits per unit: a blocked filter needs a little more than 9.6 for 1%
        let bits = ((capacity.max(64) as f64 * 10.5 / 512.0).ceil() as u64).max(1) * 512;
        UnitFilter {
            bits: vec![0; (bits / 64) as usize].into(),
            inserted: 0,
            capacity,
        }
    }

    /// The block (8 words = one cache line) and the bit positions of `unit` within it.
    #[inline]
    fn probes(&self, h: u64) -> (usize, [u32; HASHES as usize]) {
        let blocks = (self.bits.len() / 8) as u64;
        let block = (((h >> 32) * blocks) >> 32) as usize * 8;
        let mut g = h as u32 | 1;
        let mut bits = [0u32; HASHES as usize];
        for b in &mut bits {
            // 9 bits select one of 512; an odd multiplier walks the 32-bit state
            g = g.wrapping_mul(0x9E37_79B1);
            *b = g >> 23;
        }
        (block, bits)
    }

    /// Test and insert `unit`.
    #[inline]
    pub fn observe(&mut self, unit: &str) -> Exposure {
        self.observe_hash(super::key_of(unit))
    }

    /// Test and insert a unit by its [`super::key_of`] hash.
    #[inline]
    pub fn observe_hash(&mut self, h: u64) -> Exposure {
        let (block, bits) = self.probes(h);
        let line = &mut self.bits[block..block + 8];
        if bits
            .iter()
            .all(|&b| line[(b >> 6) as usize] & (1 << (b & 63)) != 0)
        {
            return Exposure::Repeat;
        }
        if self.inserted >= self.capacity {
            return Exposure::Full;
        }
        for b in bits {
            line[(b >> 6) as usize] |= 1 << (b & 63);
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
        println!("blocked Bloom filter: {fp} false positives of 100000 at capacity");
        assert!(fp < 1_500, "false positives {fp} of 100000");
        assert!(f.is_full());
        assert!(f.bytes() <= 256 * 1024);
    }
}
