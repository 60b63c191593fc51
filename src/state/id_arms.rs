//! Ids (64-bit hashes) with the set of arms each was seen in: an open-addressing table
//! (linear probing) of the keys beside a parallel array of arm masks, one byte per id while the
//! experiment has at most eight arms and eight bytes past that. The table grows by half (not
//! double) when 3/4 full, any size, a key's home slot being its hash scaled to the size
//! (Lemire's multiply-shift range reduction), so it is 1/2 to 3/4 full and an id takes 12 to 18
//! bytes (doubling: 12 to 24) where a `HashMap<u64, u64>` takes 24 to 48.

/// Arm masks, narrow while every arm fits in a byte.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
enum Masks {
    Narrow(#[serde(with = "crate::skip_zeros")] Box<[u8]>),
    Wide(#[serde(with = "crate::skip_zeros")] Box<[u64]>),
}

impl Masks {
    fn zeroed(n: usize, wide: bool) -> Masks {
        if wide {
            Masks::Wide(vec![0; n].into())
        } else {
            Masks::Narrow(vec![0; n].into())
        }
    }

    #[inline]
    fn get(&self, i: usize) -> u64 {
        match self {
            Masks::Narrow(m) => u64::from(m[i]),
            Masks::Wide(m) => m[i],
        }
    }

    #[inline]
    fn set(&mut self, i: usize, v: u64) {
        match self {
            // callers widen before a bit past 7 is set
            Masks::Narrow(m) => m[i] = v as u8,
            Masks::Wide(m) => m[i] = v,
        }
    }

    fn is_wide(&self) -> bool {
        matches!(self, Masks::Wide(_))
    }
}

/// Id hash -> arm mask.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct IdArms {
    /// 0: empty (the id hash 0 lives in `zero`).
    #[serde(with = "crate::skip_zeros")]
    keys: Box<[u64]>,
    masks: Masks,
    len: usize,
    zero: u64,
}

impl Default for IdArms {
    fn default() -> Self {
        IdArms {
            keys: Box::new([]),
            masks: Masks::Narrow(Box::new([])),
            len: 0,
            zero: 0,
        }
    }
}

/// The home slot of `h` in a table of `n` slots: the high half of a multiplicative hash,
/// scaled to `0..n` (Lemire 2019, "Fast random integer generation in an interval").
#[inline]
fn home(h: u64, n: usize) -> usize {
    (((h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) * n as u64) >> 32) as usize
}

/// Slots of the smallest table in the growth sequence (16, 24, 36, ...: by half) that holds
/// `ids` at most 3/4 full.
fn slots_for(ids: usize) -> usize {
    let mut slots = 16;
    while ids * 4 > slots * 3 {
        slots = grown(slots);
    }
    slots
}

/// The next size of a table of `slots`.
fn grown(slots: usize) -> usize {
    (slots + slots / 2).max(16)
}

impl IdArms {
    /// Ids held.
    pub fn len(&self) -> usize {
        self.len + usize::from(self.zero != 0)
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Set bit `arm` (< 64) of id `h`; returns the mask before.
    #[inline]
    pub fn insert(&mut self, h: u64, arm: usize) -> u64 {
        let bit = 1u64 << (arm & 63);
        if h == 0 {
            let before = self.zero;
            self.zero |= bit;
            return before;
        }
        if bit > 0x80 && !self.masks.is_wide() {
            self.rebuild(self.keys.len(), true);
        }
        let mut i = if self.keys.is_empty() {
            0
        } else {
            self.slot(h)
        };
        if self.keys.is_empty() || (self.keys[i] == 0 && (self.len + 1) * 4 > self.keys.len() * 3) {
            // a new id past 3/4 full: grow first (an id already held never grows the table)
            self.rebuild(grown(self.keys.len()), self.masks.is_wide());
            i = self.slot(h);
        }
        let before = self.masks.get(i);
        if self.keys[i] == 0 {
            self.keys[i] = h;
            self.len += 1;
        }
        self.masks.set(i, before | bit);
        before
    }

    /// The arm mask of `h` (0 when absent).
    #[inline]
    pub fn get(&self, h: u64) -> u64 {
        if h == 0 {
            return self.zero;
        }
        if self.keys.is_empty() {
            return 0;
        }
        let i = self.slot(h);
        if self.keys[i] == h {
            self.masks.get(i)
        } else {
            0
        }
    }

    /// Hint the home slot of `h` (its key and its mask) into the cache.
    #[inline]
    pub fn prefetch(&self, h: u64) {
        if !self.keys.is_empty() {
            let i = home(h, self.keys.len());
            crate::hint::prefetch(self.keys.get(i));
            match &self.masks {
                Masks::Narrow(m) => crate::hint::prefetch(m.get(i)),
                Masks::Wide(m) => crate::hint::prefetch(m.get(i)),
            }
        }
    }

    /// The slot of `h` (!= 0): where it is, or the empty slot where it goes.
    #[inline]
    fn slot(&self, h: u64) -> usize {
        let n = self.keys.len();
        let mut i = home(h, n);
        while self.keys[i] != 0 && self.keys[i] != h {
            i += 1;
            if i == n {
                i = 0;
            }
        }
        i
    }

    fn rebuild(&mut self, slots: usize, wide: bool) {
        let old = std::mem::replace(
            self,
            IdArms {
                keys: vec![0; slots].into(),
                masks: Masks::zeroed(slots, wide),
                len: 0,
                zero: self.zero,
            },
        );
        for (i, &k) in old.keys.iter().enumerate() {
            if k != 0 {
                let j = self.slot(k);
                self.keys[j] = k;
                self.masks.set(j, old.masks.get(i));
                self.len += 1;
            }
        }
    }

    /// Every `(id, mask)`.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let zero = (self.zero != 0).then_some((0, self.zero));
        self.keys
            .iter()
            .enumerate()
            .filter(|(_, &k)| k != 0)
            .map(|(i, &k)| (k, self.masks.get(i)))
            .chain(zero)
    }

    /// Keep only the ids `keep` accepts (the table shrinks to fit them).
    pub fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        let kept: Vec<(u64, u64)> = self.iter().filter(|&(k, _)| keep(k)).collect();
        let slots = slots_for(kept.len());
        *self = IdArms {
            keys: vec![0; slots].into(),
            masks: Masks::zeroed(slots, self.masks.is_wide()),
            len: 0,
            zero: 0,
        };
        for (k, m) in kept {
            let _ = self.or_mask(k, m);
        }
    }

    /// OR a whole mask into id `h`; its mask before. One lookup: the highest arm is inserted
    /// (growing or widening the table as needed), the others ORed into the same slot.
    pub fn or_mask(&mut self, h: u64, m: u64) -> u64 {
        if m == 0 {
            return self.get(h);
        }
        let top = 63 - m.leading_zeros() as usize;
        let before = self.insert(h, top);
        let rest = m & !(1u64 << top);
        if rest != 0 {
            if h == 0 {
                self.zero |= rest;
            } else {
                let i = self.slot(h);
                self.masks.set(i, self.masks.get(i) | rest);
            }
        }
        before
    }

    /// Memory held, in bytes.
    pub fn bytes(&self) -> usize {
        self.keys.len()
            * (8 + match self.masks {
                Masks::Narrow(_) => 1,
                Masks::Wide(_) => 8,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// The same masks as a `HashMap`, through growth, widening and retain.
        #[test]
        fn same_as_a_hash_map(ops in proptest::collection::vec((0u64..400, 0usize..12), 0..2000)) {
            let (mut t, mut m) = (IdArms::default(), HashMap::<u64, u64>::new());
            for &(id, arm) in &ops {
                // spread ids over the hash space, keep 0 reachable
                let h = id.wrapping_mul(0x2545_F491_4F6C_DD1D);
                let before = t.insert(h, arm);
                let e = m.entry(h).or_insert(0);
                prop_assert_eq!(before, *e);
                *e |= 1 << arm;
            }
            prop_assert_eq!(t.len(), m.len());
            let mut got: Vec<_> = t.iter().collect();
            got.sort_unstable();
            let mut want: Vec<_> = m.iter().map(|(&k, &v)| (k, v)).collect();
            want.sort_unstable();
            prop_assert_eq!(&got, &want);
            t.retain(|k| k % 3 == 0);
            let n = want.iter().filter(|(k, _)| k % 3 == 0).count();
            prop_assert_eq!(t.len(), n);
        }

        /// Whole masks ORed in (the merge's path, one lookup each) give the same masks and
        /// the same previous masks as a `HashMap`, wide arms and id 0 included.
        #[test]
        fn or_mask_same_as_a_hash_map(ops in proptest::collection::vec((0u64..300, any::<u64>()), 0..1500)) {
            let (mut t, mut m) = (IdArms::default(), HashMap::<u64, u64>::new());
            for &(id, mask) in &ops {
                let h = id.wrapping_mul(0x2545_F491_4F6C_DD1D);
                // mostly narrow masks (1-2 arms), sometimes any
                let mask = if id % 7 == 0 { mask } else { mask & 0x41 };
                let before = t.or_mask(h, mask);
                let e = m.entry(h).or_insert(0);
                prop_assert_eq!(before, *e);
                *e |= mask;
            }
            let mut got: Vec<_> = t.iter().filter(|&(_, v)| v != 0).collect();
            got.sort_unstable();
            let mut want: Vec<_> = m.iter().filter(|&(_, &v)| v != 0).map(|(&k, &v)| (k, v)).collect();
            want.sort_unstable();
            prop_assert_eq!(&got, &want);
        }
    }

    /// Between 12 and 18 bytes per id at every size (doubling gave up to 24), the table
    /// never more than 3/4 full.
    #[test]
    fn twelve_to_eighteen_bytes_per_id() {
        let mut t = IdArms::default();
        for i in 1..=10_000u64 {
            t.insert(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), (i % 2) as usize);
            assert!(t.len() * 4 <= t.keys.len() * 3);
            if i >= 16 {
                assert!(
                    t.bytes() <= i as usize * 18 + 18,
                    "{i} ids: {} bytes",
                    t.bytes()
                );
            }
        }
        assert_eq!(t.len(), 10_000);
        assert!(t.bytes() >= 10_000 * 12);
    }
}
