//! Count-Min sketch with conservative update (Cormode & Muthukrishnan 2005; Estan & Varghese
//! 2002): a bounded-memory frequency estimate for values that are not tracked exactly. It never
//! under-estimates, so it is used to decide when a tail value has become a heavy hitter.
//!
//! Its memory follows the traffic it has counted: it starts [`FIRST_WIDTH`] columns wide, and
//! each time it has counted [`GROW_AFTER`] events per column at its width it becomes four
//! times wider, up to the width asked for. A column's index is the low bits of a hash, so the
//! wider table is the narrow one repeated (column `c` starts with the count of `c mod w`):
//! every value's estimate is unchanged by the growth, still an upper bound, and the counts
//! that follow spread over the wider table (the error of the narrow period stays what it was).
//! An input whose tail saw a hundred events holds 512 bytes, a few hundred 2 KB, not 8 KB
//! (measured on a uniform 500-value input: 10 promotions in 100k events where one fixed
//! full-width sketch made 7).

/// Columns of the first width.
pub const FIRST_WIDTH: usize = 64;
/// Events per column counted at one width before the sketch grows.
pub const GROW_AFTER: u64 = 2;

/// A Count-Min sketch over 64-bit value hashes that widens with its traffic.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CountMin {
    table: Table,
    /// The widest it grows.
    max_width: usize,
    /// Events counted at the current width.
    counted: u64,
}

impl CountMin {
    /// A sketch that grows up to `width` columns (rounded up to a power of two).
    pub fn new(width: usize) -> CountMin {
        let max_width = width.max(16).next_power_of_two();
        CountMin {
            table: Table::new(FIRST_WIDTH.min(max_width)),
            max_width,
            counted: 0,
        }
    }

    /// Memory of the counters, in bytes.
    pub fn bytes(&self) -> usize {
        self.table.rows.len() * 4
    }

    /// Count one occurrence and return the new estimate.
    #[inline]
    pub fn add(&mut self, hash: u64) -> u32 {
        let est = self.table.add(hash);
        self.counted += 1;
        let width = self.table.width();
        if self.counted >= GROW_AFTER * width as u64 && width < self.max_width {
            self.table = self.table.widened((width * 4).min(self.max_width));
            self.counted = 0;
        }
        est
    }

    /// The current estimate (an upper bound of the true count).
    pub fn estimate(&self, hash: u64) -> u32 {
        self.table.estimate(hash)
    }
}

/// A `DEPTH x width` table.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Table {
    width_mask: u64,
    rows: Box<[u32]>,
}

const DEPTH: usize = 2;

impl Table {
    /// `width` is a power of two.
    fn new(width: usize) -> Table {
        Table {
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

    fn width(&self) -> usize {
        (self.width_mask + 1) as usize
    }

    /// The same counts `width` columns wide (a multiple of this width): each row repeated.
    fn widened(&self, width: usize) -> Table {
        let w = self.width();
        let mut t = Table::new(width);
        for r in 0..DEPTH {
            let old = &self.rows[r * w..(r + 1) * w];
            for (c, x) in t.rows[r * width..(r + 1) * width].iter_mut().enumerate() {
                *x = old[c & (w - 1)];
            }
        }
        t
    }

    /// Count one occurrence and return the new estimate.
    #[inline]
    fn add(&mut self, hash: u64) -> u32 {
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

    fn estimate(&self, hash: u64) -> u32 {
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
        // it grew to the width asked for
        assert_eq!(cm.bytes(), 256 * DEPTH * 4);
    }

    /// Memory follows the events counted; estimates stay upper bounds across the growth.
    #[test]
    fn grows_with_traffic() {
        let mut cm = CountMin::new(1024);
        assert_eq!(cm.bytes(), FIRST_WIDTH * DEPTH * 4);
        let mut truth = std::collections::HashMap::new();
        for i in 0u64..120 {
            let h = twox_hash::XxHash3_64::oneshot(&(i % 50).to_le_bytes());
            let before = cm.estimate(h);
            let est = cm.add(h);
            let t = truth.entry(h).or_insert(0u32);
            *t += 1;
            assert!(est >= *t && est > before);
        }
        assert_eq!(
            cm.bytes(),
            FIRST_WIDTH * DEPTH * 4,
            "no growth under 128 events"
        );
        for i in 0u64..40_000 {
            let h = twox_hash::XxHash3_64::oneshot(&(i % 3000).to_le_bytes());
            let est = cm.add(h);
            let t = truth.entry(h).or_insert(0u32);
            *t += 1;
            assert!(est >= *t);
        }
        assert_eq!(cm.bytes(), 1024 * DEPTH * 4);
        for (h, &t) in &truth {
            assert!(cm.estimate(*h) >= t);
        }
    }
}
