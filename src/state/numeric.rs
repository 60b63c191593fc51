//! Numeric inputs: per-arm quantiles (HdrHistogram buckets, sparse) and moments, and the bins
//! that turn values into strata for the stratified e-process.

use crate::stats::hdr::{SparseHdr, MAX as HIST_MAX};
use crate::stats::moments::Moments;

/// Values are recorded in the histogram as `round(x * SCALE)`: three decimals of resolution.
pub const SCALE: f64 = 1000.0;

/// How a numeric value maps to a bin.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Bins {
    /// Configured edges: bin i is `[edges[i-1], edges[i])`, with open bins at both ends.
    Edges(Box<[f64]>),
    /// Half-octave bins `[2^(j/2), 2^((j+1)/2))` by magnitude, signed; zero has its own bin.
    HalfOctave,
}

impl Bins {
    /// Heap bytes of the edges.
    pub fn bytes(&self) -> usize {
        match self {
            Bins::Edges(e) => e.len() * 8,
            Bins::HalfOctave => 0,
        }
    }

    /// The bin index of `x`.
    #[inline]
    pub fn index(&self, x: f64) -> i32 {
        match self {
            Bins::Edges(e) => e.partition_point(|&edge| edge <= x) as i32,
            Bins::HalfOctave => {
                if x == 0.0 {
                    return 0;
                }
                let j = half_octave(x).clamp(-2000, 2000) as i32;
                let mag = j + 2001; // >= 1
                if x > 0.0 {
                    mag
                } else {
                    -mag
                }
            }
        }
    }

    /// A readable label of bin `i`.
    pub fn label(&self, i: i32) -> String {
        match self {
            Bins::Edges(e) => {
                let i = i as usize;
                match (i.checked_sub(1).and_then(|j| e.get(j)), e.get(i)) {
                    (None, Some(hi)) => format!("(-inf, {hi})"),
                    (Some(lo), Some(hi)) => format!("[{lo}, {hi})"),
                    (Some(lo), None) => format!("[{lo}, +inf)"),
                    (None, None) => "(-inf, +inf)".into(),
                }
            }
            Bins::HalfOctave => {
                if i == 0 {
                    return "0".into();
                }
                let j = i.abs() - 2001;
                let lo = 2f64.powf(j as f64 / 2.0);
                let hi = 2f64.powf((j + 1) as f64 / 2.0);
                if i > 0 {
                    format!("[{}, {})", fmt_g(lo), fmt_g(hi))
                } else {
                    format!("(-{}, -{}]", fmt_g(hi), fmt_g(lo))
                }
            }
        }
    }

    /// The stratum identity of bin `i` (disjoint from string hashes by construction of a
    /// tagged mix).
    #[inline]
    pub fn key(i: i32) -> u64 {
        // splitmix64 of a tagged value
        let mut z = (i as i64 as u64) ^ 0xA5A5_0000_0000_0000u64;
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The mantissa bits of the double nearest `sqrt 2`, which is the smallest double above it.
const SQRT2_MANTISSA: u64 = std::f64::consts::SQRT_2.to_bits() & MANTISSA;
const MANTISSA: u64 = (1 << 52) - 1;

/// `floor(2 log2 |x|)` for `x != 0`, from the bits: `2e + [m >= sqrt 2]` for `|x| = m 2^e`,
/// `1 <= m < 2`. A libm `log2` per numeric input was ~2% of the engine thread's time, and
/// `(2.0 * x.log2()).floor()` is one off for the double just below `sqrt(2) 2^e` wherever
/// `e + log2 m` rounds up to `e + 0.5`; this is exact. Subnormals (whose exponent field is
/// zero) come out below -2044, in the bin the caller's clamp gives every tiny value.
#[inline]
fn half_octave(x: f64) -> i64 {
    let bits = x.abs().to_bits();
    let e = (bits >> 52) as i64 - 1023;
    2 * e + i64::from(bits & MANTISSA >= SQRT2_MANTISSA)
}

/// `v.round()` for `0 <= v < 2^63`, without libm's `round` call: truncate, then add one when
/// the dropped fraction (exact: `v - trunc(v)` needs no rounding) is at least one half, which
/// is rounding half away from zero, as `f64::round` does.
#[inline]
fn round_non_negative(v: f64) -> u64 {
    let t = v as u64;
    t + u64::from(v - t as f64 >= 0.5)
}

fn fmt_g(x: f64) -> String {
    let s = format!("{x:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Per-arm distribution summary of a numeric input.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NumericSummary {
    /// Moments per arm.
    pub moments: Vec<Moments>,
    /// Histogram per arm of `max(x, 0) * SCALE` (quantiles of non-negative inputs).
    pub hist: Vec<SparseHdr>,
}

impl NumericSummary {
    /// Empty summaries for `arms` arms.
    pub fn new(arms: usize) -> NumericSummary {
        NumericSummary {
            moments: vec![Moments::default(); arms],
            hist: vec![SparseHdr::default(); arms],
        }
    }

    /// Record `x` for `arm`.
    #[inline]
    pub fn record(&mut self, arm: usize, x: f64) {
        self.moments[arm].push(x);
        self.hist[arm].record(Self::value(x));
    }

    /// Hint the histogram row that [`Self::record`] of `x` for `arm` touches.
    #[inline]
    pub fn prefetch(&self, arm: usize, x: f64) {
        if let Some(h) = self.hist.get(arm) {
            h.prefetch(Self::value(x));
        }
    }

    /// `x` in histogram units.
    #[inline]
    fn value(x: f64) -> u64 {
        // clamped first (an integer, which rounds to itself): the same as rounding first
        round_non_negative((x.max(0.0) * SCALE).min(HIST_MAX as f64))
    }

    /// Quantiles `qs` (ascending) of `arm` in input units, in one pass.
    pub fn quantiles<const N: usize>(&self, arm: usize, qs: [f64; N]) -> [f64; N] {
        self.hist[arm].quantiles(qs).map(|v| v as f64 / SCALE)
    }

    /// Memory of the histograms, in bytes.
    pub fn bytes(&self) -> usize {
        self.hist.iter().map(SparseHdr::bytes).sum::<usize>()
            + self.moments.len() * std::mem::size_of::<Moments>()
    }

    /// Merge another partition's summary.
    pub fn merge(&mut self, other: &NumericSummary) {
        for (a, b) in self.moments.iter_mut().zip(&other.moments) {
            a.merge(b);
        }
        for (a, b) in self.hist.iter_mut().zip(&other.hist) {
            a.merge(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins() {
        let b = Bins::HalfOctave;
        assert_eq!(b.index(0.0), 0);
        assert_eq!(b.index(1.0), b.index(1.4));
        assert_ne!(b.index(1.0), b.index(1.5));
        assert_eq!(b.label(b.index(1.2)), "[1, 1.4142)");
        assert!(b.index(-3.0) < 0);
        let e = Bins::Edges(vec![0.0, 0.5, 1.0].into());
        assert_eq!(e.index(-1.0), 0);
        assert_eq!(e.index(0.0), 1);
        assert_eq!(e.index(0.7), 2);
        assert_eq!(e.index(1.0), 3);
        assert_eq!(e.label(2), "[0.5, 1)");
        assert_eq!(e.label(3), "[1, +inf)");
    }

    /// The next of Marsaglia's xorshift64 numbers (test values, reproducible).
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// Whether `a >= sqrt 2` for `1 <= a < 2`, exactly: `a * a - 2` rounded once keeps the
    /// sign of the exact value.
    fn at_least_sqrt2(a: f64) -> bool {
        a.mul_add(a, -2.0) >= 0.0
    }

    /// Half-octave bins from the bits agree with `2 log2 |x|` away from the bin edges, and at
    /// the edges (the doubles around `sqrt(2) 2^e`, and powers of two) with exact arithmetic.
    #[test]
    fn half_octave_is_exact() {
        let truth = |x: f64| {
            let a = x.abs();
            let e = a.log2().floor() as i64;
            let m = a / 2f64.powi(e as i32);
            // log2's floor can itself be one off just below a power of two
            let (e, m) = if m >= 2.0 {
                (e + 1, m / 2.0)
            } else if m < 1.0 {
                (e - 1, m * 2.0)
            } else {
                (e, m)
            };
            2 * e + i64::from(at_least_sqrt2(m))
        };
        for e in -1000..1000 {
            let edge = std::f64::consts::SQRT_2 * 2f64.powi(e);
            for x in [
                edge,
                f64::from_bits(edge.to_bits() - 1),
                f64::from_bits(edge.to_bits() + 1),
                2f64.powi(e),
                f64::from_bits(2f64.powi(e).to_bits() - 1),
            ] {
                assert_eq!(half_octave(x), truth(x), "{x:e}");
                assert_eq!(half_octave(-x), truth(x), "{x:e}");
            }
        }
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..200_000 {
            let state = xorshift(&mut state);
            // finite doubles of every magnitude, subnormals included
            let x = f64::from_bits(state & !(0x7FF << 52) | ((state >> 12) % 2047) << 52);
            if x == 0.0 || !x.is_finite() {
                continue;
            }
            let clamp = |j: i64| j.clamp(-2000, 2000);
            assert_eq!(clamp(half_octave(x)), clamp(truth(x)), "{x:e}");
            let libm = (2.0 * x.abs().log2()).floor() as i64;
            if x.abs() >= f64::MIN_POSITIVE {
                assert!((half_octave(x) - libm).abs() <= 1, "{x:e}");
            }
        }
    }

    /// The histogram's rounding is `f64::round` (ties away from zero) at every value,
    /// halves included.
    #[test]
    fn histogram_rounding_is_f64_round() {
        let old = |x: f64| (x.max(0.0) * SCALE).round().min(HIST_MAX as f64) as u64;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut xs = vec![
            0.0,
            -1.0,
            0.0005,
            0.0015,
            2.5e-3,
            1e300,
            HIST_MAX as f64,
            0.4999,
        ];
        for k in 0..10_000 {
            xs.push((k as f64 + 0.5) / SCALE);
            xs.push(k as f64 + 0.5);
        }
        for _ in 0..200_000 {
            let state = xorshift(&mut state);
            xs.push((state >> 11) as f64 / (1u64 << 53) as f64 * 10f64.powi((state % 16) as i32));
        }
        for x in xs {
            assert_eq!(NumericSummary::value(x), old(x), "{x:e}");
        }
    }

    #[test]
    fn quantiles() {
        let mut s = NumericSummary::new(2);
        for i in 0..1000 {
            s.record(0, i as f64 / 1000.0);
        }
        assert!((s.quantiles(0, [0.5])[0] - 0.5).abs() < 0.01);
    }
}
