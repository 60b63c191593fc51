//! Count-Min sketch with conservative update (Cormode & Muthukrishnan 2005; Estan & Varghese
//! 2002): a fixed-memory frequency estimate for values that are not tracked exactly. It never
//! under-estimates, so it is used to decide when a tail value has become a heavy hitter.

/// A `DEPTH x width` Count-Min sketch over 64-bit value hashes.
#[derive(Clone, Debug)]
pub struct CountMin {
    width_mask: u64,
    rows: Box<[u32]>,
}

const DEPTH: usize = 2;

impl CountMin {
    /// `width` is rounded up to a power of two.
    pub fn new(width: usize) -> CountMin {
        let width = width.max(16).next_power_of_two();
        CountMin {
            width_mask: width as u64 - 1,
            rows: vec![0; DEPTH * width].into(),
        }
    }

    #[inline]
    fn cells(&self, hash: u64) -> [usize; DEPTH] {
        let w = (self.width_mask + 1) as usize;
        // two independent-enough indices from the two halves of a 64-bit hash
        let h2 = hash.rotate_left(32).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        [
            (hash & self.width_mask) as usize,
            w + (h2 >> 32 & self.width_mask) as usize,
        ]
    }

    /// Memory of the counters, in bytes.
    pub fn bytes(&self) -> usize {
        self.rows.len() * 4
    }

    /// Count one occurrence and return the new estimate.
    #[inline]
    pub fn add(&mut self, hash: u64) -> u32 {
        let cells = self.cells(hash);
        let est = cells
            .iter()
            .map(|&c| self.rows[c])
            .min()
            .unwrap_or(0)
            .saturating_add(1);
        for c in cells {
            if self.rows[c] < est {
                self.rows[c] = est;
            }
        }
        est
    }

    /// The current estimate (an upper bound of the true count).
    pub fn estimate(&self, hash: u64) -> u32 {
        self.cells(hash)
            .iter()
            .map(|&c| self.rows[c])
            .min()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_underestimates_and_finds_heavy_hitter() {
        let mut cm = CountMin::new(256);
        let mut truth = std::collections::HashMap::new();
        for i in 0u64..20_000 {
            let v = if i % 4 == 0 { 7 } else { i };
            let h = twox_hash::XxHash3_64::oneshot(&v.to_le_bytes());
            cm.add(h);
            *truth.entry(h).or_insert(0u32) += 1;
        }
        for (h, &t) in &truth {
            assert!(cm.estimate(*h) >= t);
        }
        let heavy = twox_hash::XxHash3_64::oneshot(&7u64.to_le_bytes());
        assert!(cm.estimate(heavy) >= 5000);
    }
}
