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

use super::count_table::Counter;

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
        self.table.bytes()
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
    rows: Rows,
}

/// The counters, as narrow as the largest count allows: a tail value is promoted long before
/// its count leaves a byte in most inputs, so most sketches stay in `u8` (a 1,024-wide sketch:
/// 2 KB, not 8). A table widens before a count would saturate, so every estimate is the one
/// `u32` counters give.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
enum Rows {
    U8(#[serde(with = "crate::skip_zeros")] Box<[u8]>),
    U16(#[serde(with = "crate::skip_zeros")] Box<[u16]>),
    U32(#[serde(with = "crate::skip_zeros")] Box<[u32]>),
}

/// Runs `$body` with `$r` bound to the counters, whatever their width.
macro_rules! each_width {
    ($rows:expr, $r:ident => $body:expr) => {
        match $rows {
            Rows::U8($r) => $body,
            Rows::U16($r) => $body,
            Rows::U32($r) => $body,
        }
    };
}

const DEPTH: usize = 2;

impl Table {
    /// `width` is a power of two.
    fn new(width: usize) -> Table {
        Table {
            width_mask: width as u64 - 1,
            rows: Rows::U8(vec![0; DEPTH * width].into()),
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

    fn bytes(&self) -> usize {
        each_width!(&self.rows, r => std::mem::size_of_val(&**r))
    }

    /// Counter `i`.
    #[inline]
    fn get(&self, i: usize) -> u32 {
        each_width!(&self.rows, r => at(r, i))
    }

    /// The counters one width up (`u8` to `u16`, `u16` to `u32`), values unchanged.
    fn widen(&mut self) {
        self.rows = match &self.rows {
            Rows::U8(r) => Rows::U16(r.iter().map(|&x| u16::from(x)).collect()),
            Rows::U16(r) => Rows::U32(r.iter().map(|&x| u32::from(x)).collect()),
            Rows::U32(_) => return,
        };
    }

    /// The same counts `width` columns wide (a multiple of this width): each row repeated.
    fn widened(&self, width: usize) -> Table {
        let w = self.width();
        let rows = each_width!(&self.rows, old => {
            let mut new = vec![Default::default(); DEPTH * width];
            for r in 0..DEPTH {
                let old = &old[r * w..(r + 1) * w];
                for (c, x) in new[r * width..(r + 1) * width].iter_mut().enumerate() {
                    *x = old[c & (w - 1)];
                }
            }
            new.into_boxed_slice().into()
        });
        Table {
            width_mask: width as u64 - 1,
            rows,
        }
    }

    /// Count one occurrence and return the new estimate.
    #[inline]
    fn add(&mut self, hash: u64) -> u32 {
        let cells = self.cells(hash);
        // one dispatch on the counters' width in the common case; a count that would not fit
        // widens the table and is counted again there
        match each_width!(&mut self.rows, r => raise(r, cells)) {
            Ok(est) => est,
            Err(()) => {
                self.widen();
                each_width!(&mut self.rows, r => raise(r, cells)).unwrap_or(u32::MAX)
            }
        }
    }

    fn estimate(&self, hash: u64) -> u32 {
        let [a, b] = self.cells(hash);
        self.get(a).min(self.get(b))
    }
}

/// Counter `i` of `r` (counts stay within `u32`: a table widens before one would not).
#[inline]
fn at<C: Counter>(r: &[C], i: usize) -> u32 {
    u32::try_from(r[i].get()).unwrap_or(u32::MAX)
}

/// Conservative update: the estimate after one more occurrence (the smaller of the two
/// counters, plus one), every counter of `cells` below it raised to it; `Err` (nothing
/// changed) when the estimate does not fit the counters. `u32` counters saturate.
#[inline]
fn raise<C: Counter>(r: &mut [C], cells: [usize; DEPTH]) -> Result<u32, ()> {
    let est = at(r, cells[0]).min(at(r, cells[1])).saturating_add(1);
    if u64::from(est) > C::MAX {
        return Err(());
    }
    let e = C::saturating_from(u64::from(est));
    for c in cells {
        if at(r, c) < est {
            r[c] = e;
        }
    }
    Ok(est)
}

impl From<Box<[u8]>> for Rows {
    fn from(r: Box<[u8]>) -> Rows {
        Rows::U8(r)
    }
}
impl From<Box<[u16]>> for Rows {
    fn from(r: Box<[u16]>) -> Rows {
        Rows::U16(r)
    }
}
impl From<Box<[u32]>> for Rows {
    fn from(r: Box<[u32]>) -> Rows {
        Rows::U32(r)
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
        // it grew to the width asked for, in `u16` (the heavy hitter passed 255)
        assert_eq!(cm.bytes(), 256 * DEPTH * 2);
    }

    /// Memory follows the events counted; estimates stay upper bounds across the growth.
    #[test]
    fn grows_with_traffic() {
        let mut cm = CountMin::new(1024);
        assert_eq!(cm.bytes(), FIRST_WIDTH * DEPTH);
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
            FIRST_WIDTH * DEPTH,
            "no growth under 128 events"
        );
        for i in 0u64..40_000 {
            let h = twox_hash::XxHash3_64::oneshot(&(i % 3000).to_le_bytes());
            let est = cm.add(h);
            let t = truth.entry(h).or_insert(0u32);
            *t += 1;
            assert!(est >= *t);
        }
        // counts of ~14 per value: still one byte each
        assert_eq!(cm.bytes(), 1024 * DEPTH);
        for (h, &t) in &truth {
            assert!(cm.estimate(*h) >= t);
        }
    }

    /// The counters widen (`u8`, `u16`, `u32`) before a count saturates: every estimate is
    /// the one of the same sketch in `u32` counters throughout (written out here on its own).
    #[test]
    fn narrow_counters_give_the_u32_estimates() {
        struct Wide {
            cm: CountMin,
            rows: Vec<u32>,
        }
        impl Wide {
            fn add(&mut self, h: u64) -> u32 {
                let w = self.cm.table.width();
                if self.rows.len() != DEPTH * w {
                    // the narrow sketch widened: repeat each row as it did
                    let old = std::mem::take(&mut self.rows);
                    let ow = old.len() / DEPTH;
                    self.rows = (0..DEPTH * w)
                        .map(|i| old[(i / w) * ow + (i % w) % ow])
                        .collect();
                }
                let cells = self.cm.table.cells(h);
                let est = cells.iter().map(|&c| self.rows[c]).min().unwrap_or(0) + 1;
                for c in cells {
                    self.rows[c] = self.rows[c].max(est);
                }
                est
            }
        }
        let mut cm = CountMin::new(64);
        let mut wide = Wide {
            cm: CountMin::new(64),
            rows: vec![0; DEPTH * FIRST_WIDTH],
        };
        let mut kinds = Vec::new();
        for i in 0u64..200_000 {
            // one value with 100,000 counts (past u16), others light
            let v = if i % 2 == 0 { 1 } else { i % 5_000 };
            let h = twox_hash::XxHash3_64::oneshot(&v.to_le_bytes());
            let est = cm.add(h);
            wide.cm = cm.clone();
            assert_eq!(est, wide.add(h), "event {i}");
            let kind = std::mem::discriminant(&cm.table.rows);
            if kinds.last() != Some(&kind) {
                kinds.push(kind);
            }
        }
        assert_eq!(kinds.len(), 3, "u8, then u16, then u32");
        assert_eq!(cm.bytes(), 64 * DEPTH * 4);
        for v in 0u64..5_000 {
            let h = twox_hash::XxHash3_64::oneshot(&v.to_le_bytes());
            let cells = cm.table.cells(h);
            let want = cells.iter().map(|&c| wide.rows[c]).min().unwrap_or(0);
            assert_eq!(cm.estimate(h), want);
        }
    }
}
