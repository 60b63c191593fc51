//! Rows of counters keyed by a small integer (`0..keys`), in memory that follows the keys
//! used: an open-addressing hash table (linear probing, Knuth's multiplicative hash) while few
//! keys are used, a dense array once the table would be larger than the array. An arm-model
//! expert with 1,024 possible cells that sees a few dozen events holds a few dozen rows, and a
//! busy one never holds more than the dense array.

use crate::hint::prefetch;

/// A counter: `u8` or `u16` for tables that widen themselves before a count can overflow,
/// `u32` where a cell is unlikely to pass four billion, `u64` where exactness matters at any
/// volume. Adds saturate.
pub trait Counter:
    Copy
    + Default
    + PartialEq
    + std::fmt::Debug
    + Into<u64>
    + serde::Serialize
    + serde::de::DeserializeOwned
{
    /// The largest count.
    const MAX: u64;
    /// One.
    const ONE: Self;
    /// `self + other`, saturating.
    fn plus(self, other: Self) -> Self;
    /// `v`, saturating at [`Counter::MAX`].
    fn saturating_from(v: u64) -> Self;
    /// The count as `u64` (one call whatever the counter, also inside `each_table!`).
    #[inline]
    fn get(self) -> u64 {
        self.into()
    }
}

macro_rules! counter {
    ($t:ty) => {
        impl Counter for $t {
            const MAX: u64 = <$t>::MAX as u64;
            const ONE: $t = 1;
            #[inline]
            fn plus(self, other: $t) -> $t {
                self.saturating_add(other)
            }
            #[inline]
            fn saturating_from(v: u64) -> $t {
                <$t>::try_from(v).unwrap_or(<$t>::MAX)
            }
        }
    };
}
counter!(u8);
counter!(u16);
counter!(u32);
counter!(u64);

/// `keys x width` counters, sparse or dense.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound = "C: Counter")]
pub struct CountTable<C: Counter = u32> {
    width: usize,
    keys: usize,
    repr: Repr<C>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound = "C: Counter")]
enum Repr<C> {
    /// `slots[i]` is `key + 1` (0: empty); its row is `rows[i * width..][..width]`.
    Sparse {
        #[serde(with = "crate::skip_zeros")]
        slots: Box<[u16]>,
        #[serde(with = "crate::skip_zeros")]
        rows: Box<[C]>,
        len: usize,
    },
    /// Row `k` is `rows[k * width..][..width]`.
    Dense(#[serde(with = "crate::skip_zeros")] Box<[C]>),
}

/// Slots of a sparse table's first allocation (a table over a three-valued input never needs
/// more).
const FIRST_SLOTS: usize = 8;

#[inline]
fn home(key: u16, mask: usize) -> usize {
    // Fibonacci hashing: high bits of key * 2^64/phi (tables stay below 2^24 slots)
    (u64::from(key).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize & mask
}

impl<C: Counter> CountTable<C> {
    /// An empty table of rows of `width` counters for keys `0..keys` (at most 65,535).
    pub fn new(keys: usize, width: usize) -> CountTable<C> {
        CountTable {
            width: width.max(1),
            keys: keys.min(u16::MAX as usize),
            repr: Repr::Sparse {
                slots: Box::new([]),
                rows: Box::new([]),
                len: 0,
            },
        }
    }

    /// Hint the cache lines of `key`'s row (its home slot when sparse) into the cache: a
    /// caller about to touch many rows at random issues all the hints first, so that the
    /// misses overlap instead of queueing one behind the other.
    #[inline(always)]
    pub fn prefetch(&self, key: usize) {
        match &self.repr {
            Repr::Dense(rows) => prefetch(rows.get(key * self.width)),
            Repr::Sparse { slots, rows, .. } if !slots.is_empty() => {
                let i = home(key as u16 + 1, slots.len() - 1);
                prefetch(slots.get(i));
                prefetch(rows.get(i * self.width));
            }
            Repr::Sparse { .. } => {}
        }
    }

    /// The counters of `key` (< `keys`), created zero when absent.
    #[inline(always)]
    pub fn row_mut(&mut self, key: usize) -> &mut [C] {
        let w = self.width;
        if let Repr::Sparse { slots, len, .. } = &self.repr {
            if (*len + 1) * 4 > slots.len() * 3 {
                self.grow();
            }
        }
        match &mut self.repr {
            Repr::Dense(rows) => &mut rows[key * w..(key + 1) * w],
            Repr::Sparse { slots, rows, len } => {
                let tag = key as u16 + 1;
                let mask = slots.len() - 1;
                let mut i = home(tag, mask);
                loop {
                    if slots[i] == tag {
                        break;
                    }
                    if slots[i] == 0 {
                        slots[i] = tag;
                        *len += 1;
                        break;
                    }
                    i = (i + 1) & mask;
                }
                &mut rows[i * w..(i + 1) * w]
            }
        }
    }

    /// Double the sparse table, or go dense when the doubled table would hold more bytes than
    /// the dense array.
    #[cold]
    fn grow(&mut self) {
        let w = self.width;
        let slots_now = match &self.repr {
            Repr::Sparse { slots, .. } => slots.len(),
            Repr::Dense(_) => return,
        };
        let next = (slots_now * 2).max(FIRST_SLOTS);
        let slot = std::mem::size_of::<u16>() + w * std::mem::size_of::<C>();
        let dense = next * slot >= self.keys * w * std::mem::size_of::<C>();
        let old = std::mem::replace(
            &mut self.repr,
            if dense {
                Repr::Dense(vec![C::default(); self.keys * w].into())
            } else {
                Repr::Sparse {
                    slots: vec![0; next].into(),
                    rows: vec![C::default(); next * w].into(),
                    len: 0,
                }
            },
        );
        self.merge(&CountTable {
            width: w,
            keys: self.keys,
            repr: old,
        });
    }

    /// Every row with a key, in no particular order (dense: the rows with a non-zero count).
    pub fn for_each<'a>(&'a self, mut f: impl FnMut(usize, &'a [C])) {
        let w = self.width;
        match &self.repr {
            Repr::Sparse { slots, rows, .. } => {
                for (i, &tag) in slots.iter().enumerate() {
                    if tag != 0 {
                        f(tag as usize - 1, &rows[i * w..(i + 1) * w]);
                    }
                }
            }
            Repr::Dense(rows) => {
                for (k, row) in rows.chunks_exact(w).enumerate() {
                    if row.iter().any(|&c| c != C::default()) {
                        f(k, row);
                    }
                }
            }
        }
    }

    /// The largest count in the table.
    pub fn max_count(&self) -> u64 {
        let mut m = 0u64;
        self.for_each(|_, row| {
            for &c in row {
                m = m.max(c.into());
            }
        });
        m
    }

    /// The same counts in other counters: exact when widening; narrowing saturates, so the
    /// caller checks [`CountTable::max_count`] first.
    pub fn convert<D: Counter>(&self) -> CountTable<D> {
        let mut out = CountTable::new(self.keys, self.width);
        self.for_each(|k, row| {
            for (a, b) in out.row_mut(k).iter_mut().zip(row) {
                *a = D::saturating_from((*b).into());
            }
        });
        out
    }

    /// Add another table's counts (saturating).
    pub fn merge(&mut self, other: &CountTable<C>) {
        other.for_each(|k, row| {
            for (a, b) in self.row_mut(k).iter_mut().zip(row) {
                *a = a.plus(*b);
            }
        });
    }

    /// The rows in key order (for reads that sum in order: quantiles, AUC).
    pub fn sorted(&self) -> Vec<(usize, &[C])> {
        let mut out = Vec::new();
        self.for_each(|k, row| out.push((k, row)));
        // dense rows come in order already; sparse ones in slot order
        out.sort_unstable_by_key(|&(k, _)| k);
        out
    }

    /// Memory held, in bytes.
    pub fn bytes(&self) -> usize {
        let c = std::mem::size_of::<C>();
        match &self.repr {
            Repr::Sparse { slots, rows, .. } => slots.len() * 2 + rows.len() * c,
            Repr::Dense(rows) => rows.len() * c,
        }
    }
}

/// A [`CountTable`] of two columns in 4-bit counters (two per byte) until a count reaches 14,
/// any table in `u8` counters until a count reaches 254, then `u16` until one reaches 65,534,
/// then `u32`, then `u64`: most cells of a table keyed by hashed values (an arm-model expert, a
/// score histogram) hold a few counts, so a sparse slot of a two-column table is 4 bytes in
/// `u8`, not 6 or 10. Each table widens on its own; every widening keeps every count exact.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Widening {
    /// A two-column table in 4-bit counters: one byte per row, column 0 in the low nibble.
    Nibble(CountTable<u8>),
    /// `u8` counters.
    Byte(CountTable<u8>),
    /// `u16` counters.
    Narrow(CountTable<u16>),
    /// `u32` counters.
    Wide(CountTable<u32>),
    /// `u64` counters.
    Widest(CountTable<u64>),
}

/// `$body` with `$t` bound to the [`Widening`] table's [`CountTable`], whatever its counter;
/// `$nibble` with `$n` bound to the packed table of [`Widening::Nibble`].
#[macro_export]
macro_rules! each_table {
    ($cells:expr, $t:ident => $body:expr, $n:ident => $nibble:expr) => {
        match $cells {
            $crate::stats::count_table::Widening::Nibble($n) => $nibble,
            $crate::stats::count_table::Widening::Byte($t) => $body,
            $crate::stats::count_table::Widening::Narrow($t) => $body,
            $crate::stats::count_table::Widening::Wide($t) => $body,
            $crate::stats::count_table::Widening::Widest($t) => $body,
        }
    };
}

impl Widening {
    /// An empty table for keys `0..keys`, rows of `width`: in nibbles when `width` is 2,
    /// else in bytes.
    pub fn new(keys: usize, width: usize) -> Widening {
        if width == 2 {
            Widening::Nibble(CountTable::new(keys, 1))
        } else {
            Widening::Byte(CountTable::new(keys, width))
        }
    }

    /// The same counts in `u64` counters.
    pub fn wide(&self) -> CountTable<u64> {
        each_table!(self, t => t.convert(), n => unpack(n))
    }

    /// The same counts in the narrowest counters that hold them with room for one more.
    pub fn narrowest(t: CountTable<u64>) -> Widening {
        let max = t.max_count();
        if t.width == 2 && max < NIBBLE_ROOM {
            Widening::Nibble(pack(&t))
        } else if has_room::<u8>(max) {
            Widening::Byte(t.convert())
        } else if has_room::<u16>(max) {
            Widening::Narrow(t.convert())
        } else if has_room::<u32>(max) {
            Widening::Wide(t.convert())
        } else {
            Widening::Widest(t)
        }
    }

    /// Move the counts to the next wider counters (`u64` stays).
    pub fn widen(&mut self) {
        *self = match self {
            Widening::Nibble(n) => Widening::Byte(unpack(n).convert()),
            Widening::Byte(t) => Widening::Narrow(t.convert()),
            Widening::Narrow(t) => Widening::Wide(t.convert()),
            Widening::Wide(t) => Widening::Widest(t.convert()),
            Widening::Widest(_) => return,
        };
    }

    /// Count one in column `col` of row `key`, widening first when that count would be the
    /// last the counters hold.
    #[inline]
    pub fn add_one(&mut self, key: usize, col: usize) {
        let full = each_table!(self, t => {
            let c = &mut t.row_mut(key)[col];
            *c = c.plus(Counter::ONE);
            !has_room_for(*c)
        }, n => nibble_add(n, key, col) >= NIBBLE_ROOM);
        if full {
            self.widen();
        }
    }

    /// Add another table's counts (in `u64`, then back in the narrowest counters that hold
    /// the sums).
    pub fn merge(&mut self, other: &Widening) {
        let mut merged = self.wide();
        merged.merge(&other.wide());
        *self = Widening::narrowest(merged);
    }

    /// Memory held, in bytes (the enum included).
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Widening>() + each_table!(self, t => t.bytes(), n => n.bytes())
    }

    /// See [`CountTable::prefetch`].
    #[inline(always)]
    pub fn prefetch(&self, key: usize) {
        each_table!(self, t => t.prefetch(key), n => n.prefetch(key))
    }
}

/// A nibble table widens when a count reaches this (room for one more below 15).
pub const NIBBLE_ROOM: u64 = 14;

/// The two counts of a packed row.
#[inline]
pub fn nibbles(b: u8) -> [u64; 2] {
    [u64::from(b & 15), u64::from(b >> 4)]
}

/// Count one in column `col` (0 or 1) of packed row `key`; returns the new count.
#[inline]
pub fn nibble_add(n: &mut CountTable<u8>, key: usize, col: usize) -> u64 {
    nibble_add_at(&mut n.row_mut(key)[0], col)
}

/// Count one in column `col` (0 or 1) of the packed row `b`; returns the new count.
#[inline]
pub fn nibble_add_at(b: &mut u8, col: usize) -> u64 {
    let shift = 4 * (col & 1);
    *b += 1 << shift;
    u64::from((*b >> shift) & 15)
}

fn unpack(n: &CountTable<u8>) -> CountTable<u64> {
    let mut out = CountTable::new(n.keys, 2);
    n.for_each(|k, row| out.row_mut(k).copy_from_slice(&nibbles(row[0])));
    out
}

fn pack(t: &CountTable<u64>) -> CountTable<u8> {
    let mut out = CountTable::new(t.keys, 1);
    t.for_each(|k, row| {
        // callers check that every count is below 15
        out.row_mut(k)[0] = (row[0] as u8 & 15) | ((row[1] as u8 & 15) << 4);
    });
    out
}

#[inline]
fn has_room_for<C: Counter>(c: C) -> bool {
    has_room::<C>(c.into())
}

/// Whether a count leaves room in counters `C` for one more event before the next check (the
/// one rule for widening as counts grow and for narrowing after a merge).
#[inline]
pub fn has_room<C: Counter>(count: u64) -> bool {
    count < C::MAX - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The table counts what a plain dense array counts, through growth and densifying.
        #[test]
        fn same_counts_as_a_dense_array(ops in proptest::collection::vec((0usize..3000, 0usize..3), 0..5000)) {
            let (keys, width) = (3000, 3);
            let mut t = CountTable::<u32>::new(keys, width);
            let mut dense = vec![0u32; keys * width];
            for &(k, c) in &ops {
                t.row_mut(k)[c] += 1;
                dense[k * width + c] += 1;
            }
            let mut seen = vec![0u32; keys * width];
            t.for_each(|k, row| seen[k * width..(k + 1) * width].copy_from_slice(row));
            prop_assert_eq!(seen, dense);
            prop_assert!(t.bytes() <= keys * width * 4);
        }
    }

    proptest! {
        /// A widening table counts what a dense `u64` array counts, through every widening
        /// (nibbles, bytes, ...) and merges, for two columns and for three.
        #[test]
        fn widening_counts_exactly(
            ops in proptest::collection::vec((0usize..40, 0usize..3), 0..3000),
            width in 2usize..4,
        ) {
            let keys = 40;
            let mut t = Widening::new(keys, width);
            let mut dense = vec![0u64; keys * width];
            for &(k, c) in &ops {
                let c = c % width;
                t.add_one(k, c);
                dense[k * width + c] += 1;
            }
            let check = |t: &Widening| {
                let mut seen = vec![0u64; keys * width];
                t.wide().for_each(|k, row| seen[k * width..(k + 1) * width].copy_from_slice(row));
                seen
            };
            prop_assert_eq!(check(&t), dense.clone());
            let mut m = t.clone();
            m.merge(&t);
            prop_assert_eq!(check(&m), dense.iter().map(|x| 2 * x).collect::<Vec<_>>());
        }
    }

    #[test]
    fn memory_follows_keys_used() {
        let mut t = CountTable::<u32>::new(37 * 1024, 2);
        assert_eq!(t.bytes(), 0);
        for k in 0..100 {
            t.row_mut(k * 300)[0] += 1;
        }
        assert!(t.bytes() <= 256 * 12, "{} bytes", t.bytes());
        for k in 0..37 * 1024 {
            t.row_mut(k)[1] += 1;
        }
        assert_eq!(t.bytes(), 37 * 1024 * 2 * 4);
    }

    #[test]
    fn convert_and_merge() {
        let mut a = CountTable::<u64>::new(100, 2);
        a.row_mut(3)[0] = 5;
        a.row_mut(7)[1] = 300;
        // narrowing is exact while the counts fit and saturates past them; widening is exact
        let b: CountTable<u16> = a.convert();
        let mut rows = Vec::new();
        b.for_each(|k, r| rows.push((k, r.to_vec())));
        rows.sort();
        assert_eq!(rows, vec![(3, vec![5, 0]), (7, vec![0, 300])]);
        let bytes: CountTable<u8> = a.convert();
        assert_eq!(
            bytes.sorted(),
            vec![(3, &[5u8, 0][..]), (7, &[0u8, 255][..])]
        );
        assert_eq!(a.sorted().len(), 2);
        a.merge(&b.convert());
        assert_eq!(a.row_mut(3), &[10, 0]);
        assert_eq!(a.row_mut(7), &[0, 600]);
        assert_eq!(a.sorted().len(), 2);
    }
}
