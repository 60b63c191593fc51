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

    /// Counters a slot's `u16` tag takes at the start of its entry: two `u8`s, else one
    /// counter (its low 16 bits).
    const TAG_SPAN: usize = if std::mem::size_of::<Self>() == 1 {
        2
    } else {
        1
    };

    /// The tag of the entry that starts `d`.
    #[inline(always)]
    fn tag(d: &[Self]) -> u16 {
        if Self::TAG_SPAN == 2 {
            (d[0].get() | d[1].get() << 8) as u16
        } else {
            d[0].get() as u16
        }
    }

    /// Set the tag of the entry that starts `d` (see [`Counter::tag`]).
    #[inline(always)]
    fn set_tag(d: &mut [Self], tag: u16) {
        let tag = u64::from(tag);
        if Self::TAG_SPAN == 2 {
            d[0] = Self::saturating_from(tag & 0xFF);
            d[1] = Self::saturating_from(tag >> 8);
        } else {
            d[0] = Self::saturating_from(tag);
        }
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

/// `keys x width` counters, sparse or dense, in one allocation behind a 24-byte header.
///
/// Sparse: `cap` (a power of two) slots, each an entry of its tag (`key + 1`, 0: empty; a
/// `u16` in [`Counter::TAG_SPAN`] counters) followed by its row, so a lookup reads one cache
/// line where separate tag and row arrays took two. Dense: row `k` is
/// `data[k * width..][..width]`. One allocation and a small header matter at a thousand
/// experiments: an arm model reads 37 tables' headers per event, two to a cache line instead
/// of one, and holds 37 allocations fewer.
#[derive(Clone, Debug)]
pub struct CountTable<C: Counter = u32> {
    data: Box<[C]>,
    keys: u16,
    width: u16,
    /// Sparse: slots in use.
    len: u16,
    /// Sparse: `log2(cap)`; [`DENSE`]: dense.
    shift: u8,
}

/// [`CountTable::shift`] of a dense table.
const DENSE: u8 = u8::MAX;

/// Slots of a sparse table's first allocation (a table over a three-valued input never needs
/// more).
const FIRST_SLOTS: usize = 8;

#[inline]
fn home(key: u16, mask: usize) -> usize {
    // Fibonacci hashing: high bits of key * 2^64/phi (tables stay below 2^24 slots)
    (u64::from(key).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize & mask
}

impl<C: Counter> CountTable<C> {
    /// An empty table of rows of `width` counters for keys `0..keys` (at most 65,535; rows of
    /// at most 65,535).
    pub fn new(keys: usize, width: usize) -> CountTable<C> {
        CountTable {
            data: Box::new([]),
            keys: u16::try_from(keys).unwrap_or(u16::MAX),
            width: u16::try_from(width.max(1)).unwrap_or(u16::MAX),
            len: 0,
            shift: 0,
        }
    }

    /// Keys `0..keys`.
    #[inline]
    fn keys(&self) -> usize {
        usize::from(self.keys)
    }

    /// Counters per row.
    #[inline]
    pub fn width(&self) -> usize {
        usize::from(self.width)
    }

    /// Counters per sparse entry: the tag, then the row.
    #[inline(always)]
    fn entry(&self) -> usize {
        C::TAG_SPAN + self.width()
    }

    #[inline]
    fn is_dense(&self) -> bool {
        self.shift == DENSE
    }

    /// Slots of a sparse table (0 before the first row).
    #[inline]
    fn cap(&self) -> usize {
        if self.data.is_empty() {
            0
        } else {
            1 << self.shift
        }
    }

    /// Hint the cache lines of `key`'s row (its home slot when sparse) into the cache: a
    /// caller about to touch many rows at random issues all the hints first, so that the
    /// misses overlap instead of queueing one behind the other.
    #[inline(always)]
    pub fn prefetch(&self, key: usize) {
        let w = self.width();
        if self.is_dense() {
            prefetch(self.data.get(key * w));
        } else if !self.data.is_empty() {
            let cap = 1usize << self.shift;
            let i = home(key as u16 + 1, cap - 1);
            prefetch(self.data.get(i * self.entry()));
        }
    }

    /// The counters of `key` (< `keys`), created zero when absent.
    #[inline(always)]
    pub fn row_mut(&mut self, key: usize) -> &mut [C] {
        let w = self.width();
        if self.is_dense() {
            return &mut self.data[key * w..(key + 1) * w];
        }
        if (usize::from(self.len) + 1) * 4 > self.cap() * 3 {
            self.grow();
            if self.is_dense() {
                return &mut self.data[key * w..(key + 1) * w];
            }
        }
        let (cap, e) = (1usize << self.shift, self.entry());
        let tag = key as u16 + 1;
        let mask = cap - 1;
        let mut i = home(tag, mask);
        loop {
            let t = C::tag(&self.data[i * e..]);
            if t == tag {
                break;
            }
            if t == 0 {
                C::set_tag(&mut self.data[i * e..], tag);
                self.len += 1;
                break;
            }
            i = (i + 1) & mask;
        }
        let at = i * e + C::TAG_SPAN;
        &mut self.data[at..at + w]
    }

    /// Double the sparse table, or go dense when the doubled table would hold more bytes than
    /// the dense array.
    #[cold]
    fn grow(&mut self) {
        if self.is_dense() {
            return;
        }
        let w = self.width();
        let next = (self.cap() * 2).max(FIRST_SLOTS);
        // an entry's real size: a `u32` or `u64` tag takes a whole counter
        let slot = self.entry() * std::mem::size_of::<C>();
        let dense = next * slot >= self.keys() * w * std::mem::size_of::<C>();
        let old = std::mem::replace(
            self,
            CountTable {
                data: if dense {
                    vec![C::default(); self.keys() * w].into()
                } else {
                    vec![C::default(); next * self.entry()].into()
                },
                keys: self.keys,
                width: self.width,
                len: 0,
                shift: if dense {
                    DENSE
                } else {
                    next.trailing_zeros() as u8
                },
            },
        );
        self.merge(&old);
    }

    /// Every row with a key, in no particular order (dense: the rows with a non-zero count).
    pub fn for_each<'a>(&'a self, mut f: impl FnMut(usize, &'a [C])) {
        let w = self.width();
        if self.is_dense() {
            for (k, row) in self.data.chunks_exact(w).enumerate() {
                if row.iter().any(|&c| c != C::default()) {
                    f(k, row);
                }
            }
            return;
        }
        for entry in self.data.chunks_exact(self.entry()) {
            let tag = C::tag(entry);
            if tag != 0 {
                f(usize::from(tag) - 1, &entry[C::TAG_SPAN..]);
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
        let mut out = CountTable::new(self.keys(), self.width());
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

    /// Memory held, in bytes (the header not included).
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<C>()
    }
}

/// The serialized form: the fields and variants of the table's earlier layout (separate tag
/// and row arrays), so snapshots written before the packed layout read back, and the packed
/// layout is a matter of memory only.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename = "CountTable")]
struct Wire<R> {
    width: usize,
    keys: usize,
    repr: WireRepr<R>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename = "Repr")]
enum WireRepr<R> {
    Sparse {
        #[serde(with = "crate::skip_zeros")]
        slots: Box<[u16]>,
        rows: R,
        len: usize,
    },
    Dense(R),
}

/// Rows written through [`crate::skip_zeros`] (a dense table's borrowed, a sparse one's
/// gathered from its entries).
struct RowsOut<'a, C: Clone>(std::borrow::Cow<'a, [C]>);
/// Rows read through [`crate::skip_zeros`].
struct RowsIn<C>(Box<[C]>);

impl<C: Counter> serde::Serialize for RowsOut<'_, C> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::skip_zeros::serialize(&*self.0, s)
    }
}

impl<'de, C: Counter> serde::Deserialize<'de> for RowsIn<C> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::skip_zeros::deserialize(d).map(RowsIn)
    }
}

impl<C: Counter> serde::Serialize for CountTable<C> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (width, keys) = (self.width(), self.keys());
        let repr = if self.is_dense() {
            WireRepr::Dense(RowsOut(std::borrow::Cow::Borrowed(&self.data[..])))
        } else {
            let entries = self.data.chunks_exact(self.entry());
            let rows: Vec<C> = entries
                .clone()
                .flat_map(|e| &e[C::TAG_SPAN..])
                .copied()
                .collect();
            WireRepr::Sparse {
                slots: entries.map(C::tag).collect(),
                rows: RowsOut(std::borrow::Cow::Owned(rows)),
                len: usize::from(self.len),
            }
        };
        Wire { width, keys, repr }.serialize(s)
    }
}

impl<'de, C: Counter> serde::Deserialize<'de> for CountTable<C> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let w: Wire<RowsIn<C>> = Wire::deserialize(d)?;
        let bad = |what: String| D::Error::custom(format!("count table: {what}"));
        let (Ok(keys), Ok(width)) = (u16::try_from(w.keys), u16::try_from(w.width)) else {
            return Err(bad(format!("{} keys of {} counters", w.keys, w.width)));
        };
        if width == 0 {
            return Err(bad("rows of no counters".into()));
        }
        let mut t = CountTable::<C>::new(w.keys, w.width);
        let (kw, wu) = (usize::from(keys) * usize::from(width), usize::from(width));
        match w.repr {
            WireRepr::Dense(RowsIn(rows)) => {
                if rows.len() != kw {
                    return Err(bad(format!("{} dense counters for {kw}", rows.len())));
                }
                t.data = rows;
                t.shift = DENSE;
            }
            WireRepr::Sparse {
                slots,
                rows: RowsIn(rows),
                len,
                ..
            } => {
                let cap = slots.len();
                let used = slots.iter().filter(|&&s| s != 0).count();
                // a sparse table is never larger than its keys (it goes dense first)
                let shape_ok =
                    cap == 0 || (cap.is_power_of_two() && (FIRST_SLOTS..=1 << 16).contains(&cap));
                // a table fuller than 3/4 never exists, and a full one would probe forever
                if !shape_ok
                    || rows.len() != cap * wu
                    || used != len
                    || used * 4 > cap * 3
                    || slots.iter().any(|&s| usize::from(s) > usize::from(keys))
                {
                    return Err(bad(format!(
                        "{cap} slots ({used} used, {len} said) with {} counters",
                        rows.len()
                    )));
                }
                if cap > 0 {
                    let e = t.entry();
                    let mut data = vec![C::default(); cap * e];
                    for ((entry, &s), row) in data
                        .chunks_exact_mut(e)
                        .zip(slots.iter())
                        .zip(rows.chunks_exact(wu))
                    {
                        C::set_tag(entry, s);
                        entry[C::TAG_SPAN..].copy_from_slice(row);
                    }
                    t.data = data.into();
                    t.shift = cap.trailing_zeros() as u8;
                    t.len = u16::try_from(used).unwrap_or(u16::MAX);
                }
            }
        }
        Ok(t)
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
        if t.width() == 2 && max < NIBBLE_ROOM {
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
    let mut out = CountTable::new(n.keys(), 2);
    n.for_each(|k, row| out.row_mut(k).copy_from_slice(&nibbles(row[0])));
    out
}

fn pack(t: &CountTable<u64>) -> CountTable<u8> {
    let mut out = CountTable::new(t.keys(), 1);
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

    /// The table as it was laid out before the packed form (separate tag and row arrays):
    /// its serialized form is the one snapshots hold.
    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(rename = "CountTable", bound = "C: Counter")]
    struct Earlier<C: Counter> {
        width: usize,
        keys: usize,
        repr: EarlierRepr<C>,
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(rename = "Repr", bound = "C: Counter")]
    enum EarlierRepr<C> {
        Sparse {
            #[serde(with = "crate::skip_zeros")]
            slots: Box<[u16]>,
            #[serde(with = "crate::skip_zeros")]
            rows: Box<[C]>,
            len: usize,
        },
        Dense(#[serde(with = "crate::skip_zeros")] Box<[C]>),
    }

    fn round_trip<C: Counter>(keys: usize, width: usize, ops: &[(usize, usize)]) {
        let mut t = CountTable::<C>::new(keys, width);
        for &(k, c) in ops {
            let cell = &mut t.row_mut(k % keys)[c % width];
            *cell = cell.plus(C::ONE);
        }
        let bytes = postcard::to_allocvec(&t).unwrap();
        // the earlier layout reads it, and writes the same bytes back
        let earlier: Earlier<C> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(postcard::to_allocvec(&earlier).unwrap(), bytes);
        let back: CountTable<C> = postcard::from_bytes(&bytes).unwrap();
        let rows = |t: &CountTable<C>| {
            let mut v = Vec::new();
            t.for_each(|k, r| v.push((k, r.to_vec())));
            v
        };
        // same rows in the same (slot) order, and the same bytes again
        assert_eq!(rows(&back), rows(&t));
        assert_eq!(postcard::to_allocvec(&back).unwrap(), bytes);
        assert_eq!(back.bytes(), t.bytes());
    }

    proptest! {
        /// The packed layout writes what the earlier layout wrote, for every counter width,
        /// sparse and dense, and reads back the same table.
        #[test]
        fn serialized_form_is_the_earlier_layouts(
            ops in proptest::collection::vec((0usize..300, 0usize..3), 0..400),
            width in 1usize..4,
        ) {
            round_trip::<u8>(300, width, &ops);
            round_trip::<u16>(300, width, &ops);
            round_trip::<u32>(300, width, &ops);
            round_trip::<u64>(300, width, &ops);
        }
    }

    /// Shapes no table has are refused, never read into a table that would index out of its
    /// data or probe forever.
    #[test]
    fn impossible_shapes_are_refused() {
        let write = |e: &Earlier<u8>| postcard::to_allocvec(e).unwrap();
        let read = |b: &[u8]| postcard::from_bytes::<CountTable<u8>>(b).is_err();
        let sparse = |slots: Vec<u16>, rows: usize, len: usize| Earlier::<u8> {
            width: 2,
            keys: 100,
            repr: EarlierRepr::Sparse {
                slots: slots.into(),
                rows: vec![1; rows].into(),
                len,
            },
        };
        assert!(!read(&write(&sparse(vec![1, 0, 0, 0, 0, 0, 0, 0], 16, 1))));
        let one = || vec![1, 0, 0, 0, 0, 0, 0, 0];
        for (slots, rows, len, why) in [
            (vec![1, 0, 0, 0, 0, 0, 0], 14, 1, "not a power of two"),
            (one(), 15, 1, "short rows"),
            (one(), 16, 2, "wrong len"),
            (vec![1, 2, 3, 4, 5, 6, 7, 0], 16, 7, "too full"),
            (vec![101, 0, 0, 0, 0, 0, 0, 0], 16, 1, "key past keys"),
        ] {
            assert!(read(&write(&sparse(slots, rows, len))), "{why}");
        }
        let mut huge = vec![0u16; 1 << 17];
        huge[0] = 1;
        assert!(
            read(&write(&sparse(huge, 2 << 17, 1))),
            "more slots than any table"
        );
        let dense = |n: usize| Earlier::<u8> {
            width: 2,
            keys: 100,
            repr: EarlierRepr::Dense(vec![1; n].into()),
        };
        assert!(!read(&write(&dense(200))));
        assert!(read(&write(&dense(199))), "short dense");
        let mut zero_width = dense(0);
        zero_width.width = 0;
        assert!(read(&write(&zero_width)), "no counters per row");
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
