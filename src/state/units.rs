//! First exposure per unit. A unit (user) with many prompts sits in one arm for all of them,
//! so counting events would over-disperse the arm counts and make any multinomial test
//! anti-conservative; counting each unit once restores independent draws.
//!
//! While the experiment's exposure sample still follows every unit (its first
//! `limits.exposure_sample_units`, [`super::exposure`]), that sample answers "seen before?"
//! exactly and this filter only counts: no false positives and no memory of its own. When the
//! sample starts to sample, it hands every unit it holds to the filter ([`UnitFilter::absorb`])
//! and the filter answers from then on.
//!
//! A scalable Bloom filter (Almeida, Baquero, Preguiça & Hutchison, "Scalable Bloom Filters",
//! IPL 2007) of blocked stages (Putze, Sanders & Singler 2007: all of a key's bits in one
//! 512-bit block, so a stage lookup touches one cache line) keeps this in memory proportional
//! to the units seen: the first stage holds 1,024 units, each next one twice as many, with a
//! few more bits per unit so that the false-positive rates of the stages add up to at most
//! about 1% however many there are. Its false positives drop a new unit as "seen", and whether that
//! happens depends only on unit ids, never on arms, so the e-processes stay valid. Past the
//! configured capacity new units stop being counted (a stopped martingale is still a
//! martingale) and the report says the filter is full.

/// Units of the first stage.
const FIRST_STAGE: u64 = 1024;
/// Bits per unit of the first stage; each later stage adds [`BITS_STEP`], so its false
/// positives fall geometrically (measured: ~0.97% for a new unit against 7 full stages,
/// ~0.6% against 10; 2.4 bytes per unit at a million units).
const FIRST_BITS: f64 = 15.0;
const BITS_STEP: f64 = 0.5;
const K_PER_BIT: f64 = 0.6;
/// Bit positions computed per unit; a stage uses the first `k` of them.
const HASHES: usize = 12;

/// One blocked Bloom filter of a fixed capacity.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Stage {
    bits: Box<[u64]>,
    inserted: u64,
    capacity: u64,
    /// Bits set per unit (about 0.6 x bits per unit: near the optimum of a blocked filter).
    k: usize,
}

impl Stage {
    fn new(capacity: u64, bits_per_unit: f64) -> Stage {
        let blocks = ((capacity as f64 * bits_per_unit / 512.0).ceil() as usize).max(1);
        Stage {
            bits: vec![0; blocks * 8].into(),
            inserted: 0,
            capacity,
            k: ((bits_per_unit * K_PER_BIT).round() as usize).clamp(1, HASHES),
        }
    }

    /// The block (8 words = one cache line) of hash `h`.
    #[inline]
    fn block(&self, h: u64) -> usize {
        let blocks = (self.bits.len() / 8) as u64;
        (((h >> 32) * blocks) >> 32) as usize * 8
    }

    #[inline]
    fn contains(&self, h: u64, bits: &[u32; HASHES]) -> bool {
        let at = self.block(h);
        let line = &self.bits[at..at + 8];
        bits[..self.k]
            .iter()
            .all(|&b| line[(b >> 6) as usize] & (1 << (b & 63)) != 0)
    }

    #[inline]
    fn insert(&mut self, h: u64, bits: &[u32; HASHES]) {
        let at = self.block(h);
        let line = &mut self.bits[at..at + 8];
        for b in &bits[..self.k] {
            line[(b >> 6) as usize] |= 1 << (b & 63);
        }
        self.inserted += 1;
    }
}

/// The bit positions within a block of hash `h` (shared by every stage).
#[inline]
fn positions(h: u64) -> [u32; HASHES] {
    let mut g = h as u32 | 1;
    let mut bits = [0u32; HASHES];
    for b in &mut bits {
        // 9 bits select one of 512; an odd multiplier walks the 32-bit state
        g = g.wrapping_mul(0x9E37_79B1);
        *b = g >> 23;
    }
    bits
}

/// Scalable Bloom filter over unit ids, up to a capacity, at about 1% false positives.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct UnitFilter {
    /// Oldest first; only the last takes new units.
    stages: Vec<Stage>,
    capacity: u64,
    /// Units counted.
    counted: u64,
    /// Whether an exact set (the exposure sample) still decides what is new.
    exact: bool,
}

/// What the filter says of a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Exposure {
    /// Not seen before: count this event.
    First,
    /// Seen before (or a false positive): do not count.
    Repeat,
    /// The filter is at capacity: new units are no longer counted.
    Full,
}

impl UnitFilter {
    /// A filter for up to `capacity` units, answering by Bloom filter from the start (no
    /// exact phase).
    pub fn new(capacity: u64) -> UnitFilter {
        UnitFilter {
            stages: Vec::new(),
            capacity,
            counted: 0,
            exact: false,
        }
    }

    /// A filter for up to `capacity` units that only counts while an exact set decides what
    /// is new ([`Self::count_new`]), until [`Self::absorb`] and [`Self::end_exact`].
    pub fn exact(capacity: u64) -> UnitFilter {
        UnitFilter {
            exact: true,
            ..UnitFilter::new(capacity)
        }
    }

    /// Whether an exact set still decides what is new.
    pub fn is_exact(&self) -> bool {
        self.exact
    }

    /// Count a unit the exact set found new.
    #[inline]
    pub fn count_new(&mut self) -> Exposure {
        if self.counted >= self.capacity {
            return Exposure::Full;
        }
        self.counted += 1;
        Exposure::First
    }

    /// Remember a unit already counted (handed over by the exact set).
    pub fn absorb(&mut self, h: u64) {
        let bits = positions(h);
        if !self.holds(h, &bits) {
            self.insert(h, &bits);
        }
    }

    /// Whether a stage holds `h` (newest first: the largest, where returning units most often
    /// are). A new unit is looked up in every stage, one cache line each: the lines are
    /// hinted first, so that the misses overlap.
    #[inline]
    fn holds(&self, h: u64, bits: &[u32; HASHES]) -> bool {
        if self.stages.len() > 1 {
            for s in &self.stages {
                crate::hint::prefetch(s.bits.get(s.block(h)));
            }
        }
        self.stages.iter().rev().any(|s| s.contains(h, bits))
    }

    /// Insert `h` into the newest stage, adding one when it is full. False when the filter has
    /// no room left.
    #[inline]
    fn insert(&mut self, h: u64, bits: &[u32; HASHES]) -> bool {
        let room = self.stages.last().is_some_and(|s| s.inserted < s.capacity) || self.grow();
        match self.stages.last_mut() {
            Some(s) if room => {
                s.insert(h, bits);
                true
            }
            _ => false,
        }
    }

    /// From now on the filter decides what is new.
    pub fn end_exact(&mut self) {
        self.exact = false;
    }

    /// Add the next stage (twice the last, within the capacity left). False when full.
    fn grow(&mut self) -> bool {
        let held: u64 = self.stages.iter().map(|s| s.capacity).sum();
        let next = self
            .stages
            .last()
            .map_or(FIRST_STAGE, |s| s.capacity * 2)
            .min(self.capacity.saturating_sub(held));
        if next == 0 {
            return false;
        }
        let bits = FIRST_BITS + BITS_STEP * self.stages.len() as f64;
        self.stages.push(Stage::new(next, bits));
        true
    }

    /// Test and insert `unit`.
    #[inline]
    pub fn observe(&mut self, unit: &str) -> Exposure {
        self.observe_hash(super::key_of(unit))
    }

    /// Test and insert a unit by its [`super::key_of`] hash.
    #[inline]
    pub fn observe_hash(&mut self, h: u64) -> Exposure {
        let bits = positions(h);
        if self.holds(h, &bits) {
            return Exposure::Repeat;
        }
        if self.counted >= self.capacity || !self.insert(h, &bits) {
            return Exposure::Full;
        }
        self.counted += 1;
        Exposure::First
    }

    /// Whether unit hash `h` was seen (or is a false positive); never inserts.
    #[inline]
    pub fn contains(&self, h: u64) -> bool {
        self.holds(h, &positions(h))
    }

    /// Units counted.
    pub fn inserted(&self) -> u64 {
        self.counted
    }

    /// Whether new units are no longer counted.
    pub fn is_full(&self) -> bool {
        self.counted >= self.capacity
    }

    /// Union with another partition's filter of the same capacity (units are counted where
    /// they were first seen; a unit seen in both partitions is counted in each). Stages are
    /// sized by the same rule on both sides, so stage `i` of one ORs into stage `i` of the
    /// other; stages only the other has are taken as they are.
    pub fn merge(&mut self, other: &UnitFilter) {
        if self.capacity != other.capacity {
            return;
        }
        self.counted += other.counted;
        self.exact &= other.exact;
        for (i, o) in other.stages.iter().enumerate() {
            match self.stages.get_mut(i) {
                Some(s) if s.bits.len() == o.bits.len() => {
                    for (a, b) in s.bits.iter_mut().zip(o.bits.iter()) {
                        *a |= b;
                    }
                    s.inserted += o.inserted;
                }
                Some(_) => return,
                None => self.stages.push(o.clone()),
            }
        }
    }

    /// Memory held, in bytes.
    pub fn bytes(&self) -> usize {
        self.stages.iter().map(|s| s.bits.len() * 8).sum::<usize>()
            + self.stages.capacity() * std::mem::size_of::<Stage>()
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
        println!(
            "scalable blocked Bloom filter: {fp} false positives of 100000 at capacity, {} stages, {} bytes",
            f.stages.len(),
            f.bytes()
        );
        assert!(fp < 1_500, "false positives {fp} of 100000");
        assert!(f.is_full());
        assert!(f.bytes() <= 256 * 1024);
    }

    /// The false positives of a filter filled to a million units (ten stages) stay near 1%.
    #[test]
    fn false_positives_stay_bounded_over_many_stages() {
        let mut f = UnitFilter::new(1_000_000);
        for i in 0..1_000_000u64 {
            f.observe_hash(super::super::key_of(&format!("user-{i}")));
        }
        let counted = f.inserted();
        assert!(f.stages.len() >= 10, "stages {}", f.stages.len());
        // units lost to false positives while filling
        assert!(counted > 990_000, "counted {counted}");
        let mut g = f.clone();
        g.capacity = u64::MAX; // room to insert: measure the test of new ids alone
        let fp = (0..100_000)
            .filter(|i| g.observe(&format!("other-{i}")) == Exposure::Repeat)
            .count();
        println!(
            "1M units: {fp} false positives of 100000, {} bytes",
            f.bytes()
        );
        assert!(fp < 1_500, "false positives {fp} of 100000");
        assert!(f.bytes() < 3 * 1024 * 1024, "{} bytes", f.bytes());
    }

    /// Memory follows the units seen, not the capacity.
    #[test]
    fn memory_grows_with_units() {
        let mut f = UnitFilter::new(1_000_000);
        assert!(f.bytes() < 4 * 1024, "empty: {} bytes", f.bytes());
        for i in 0..2_000u64 {
            f.observe_hash(super::super::key_of(&format!("u{i}")));
        }
        assert!(f.bytes() < 8 * 1024, "2000 units: {} bytes", f.bytes());
        assert!(f.inserted() >= 1_990);
    }

    /// While the exposure sample follows every unit it decides exactly and the filter holds no
    /// memory; past the sample's capacity the filter takes over with every unit seen so far.
    #[test]
    fn exact_until_the_sample_samples() {
        use crate::state::exposure::ExposureSample;
        let key = |i: u64| crate::state::key_of(&format!("u{i}"));
        let run = |units: u64| {
            let (mut sample, mut f) = (ExposureSample::new(1_000), UnitFilter::exact(1_000_000));
            let mut first = 0;
            for round in 0..3 {
                for i in 0..units {
                    let (_, e) = sample.observe_first(key(i), (i % 2) as usize, &mut f, false);
                    if e == Exposure::First {
                        first += 1;
                        assert_eq!(round, 0, "unit {i} counted again in round {round}");
                    }
                }
            }
            (first, f)
        };
        let (n, f) = run(900);
        assert_eq!(n, 900);
        assert!(f.is_exact());
        assert_eq!(f.bytes(), 0);
        let (n, f) = run(5_000);
        assert!(!f.is_exact());
        assert!((4_950..=5_000).contains(&n), "counted {n}");
        assert_eq!(f.inserted(), n);
    }

    #[test]
    fn merge_is_a_union() {
        let (mut a, mut b) = (UnitFilter::new(100_000), UnitFilter::new(100_000));
        for i in 0..5_000u64 {
            a.observe(&format!("a{i}"));
        }
        for i in 0..20_000u64 {
            b.observe(&format!("b{i}"));
        }
        a.merge(&b);
        assert_eq!(a.observe("a17"), Exposure::Repeat);
        assert_eq!(a.observe("b19999"), Exposure::Repeat);
        assert!(a.inserted() >= 24_800);
    }
}
