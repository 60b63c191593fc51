//! A Bernoulli rate: a one-sided anytime-valid test of `p <= p0` and a Wilson interval.
//!
//! The test is a plug-in e-process (Robbins & Siegmund 1974; Ramdas et al., "Game-theoretic
//! statistics and safe anytime-valid inference", 2023, section 4): before each draw the rate is
//! estimated from the past, `q = (s + p0) / (n + 1)` (one pseudo-draw at the null rate) clipped to `[p0, 1 - 1e-9]`, and the
//! e-value is multiplied by `q^x (1-q)^(1-x) / (p0^x (1-p0)^(1-x))`. For any true rate
//! `p <= p0` and any `q >= p0` the factor has expectation `p q/p0 + (1-p)(1-q)/(1-p0) <= 1`
//! (it equals 1 at `p = p0` and grows with `p`), so the product is a nonnegative
//! supermartingale under the whole composite null and Ville's inequality bounds the chance it
//! ever reaches `1/alpha` by `alpha`.

/// `n / total`, or 0 when `total` is 0: the share every report and detector prints.
#[inline]
pub fn share(n: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        n as f64 / total as f64
    }
}

/// One-sided plug-in e-process for "the rate is at most `p0`".
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RateEProcess {
    p0: f64,
    ln_p0: f64,
    ln_1m_p0: f64,
    n: u64,
    s: u64,
    log_e: f64,
}

impl RateEProcess {
    /// A test of `p <= p0`, `p0` in (0, 1).
    pub fn new(p0: f64) -> RateEProcess {
        RateEProcess {
            p0,
            ln_p0: p0.ln(),
            ln_1m_p0: (-p0).ln_1p(),
            n: 0,
            s: 0,
            log_e: 0.0,
        }
    }

    /// Record one draw.
    #[inline]
    pub fn observe(&mut self, x: bool) {
        let q = ((self.s as f64 + self.p0) / (self.n as f64 + 1.0)).clamp(self.p0, 1.0 - 1e-9);
        if x {
            self.log_e += q.ln() - self.ln_p0;
            self.s += 1;
        } else if q > self.p0 {
            self.log_e += (-q).ln_1p() - self.ln_1m_p0;
        }
        self.n += 1;
    }

    /// `ln E_n`.
    pub fn log_e(&self) -> f64 {
        self.log_e
    }

    /// Draws so far.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// Successes so far.
    pub fn successes(&self) -> u64 {
        self.s
    }

    /// The null rate.
    pub fn p0(&self) -> f64 {
        self.p0
    }

    /// The observed rate (0 before any draw).
    pub fn rate(&self) -> f64 {
        share(self.s, self.n)
    }

    /// Add another partition's draws. The evidence depends on the order of the draws, so the
    /// other partition's e-value is multiplied in (log-added), frozen at the merge: a product
    /// of e-processes over disjoint, under the null independent, draws is one. (The larger
    /// of the two is not: its expectation can reach 2.)
    pub fn merge(&mut self, o: &RateEProcess) {
        self.n += o.n;
        self.s += o.s;
        self.log_e += o.log_e;
    }
}

/// Wilson score interval for `s` successes in `n` draws at normal quantile `z`
/// (Wilson 1927; statsmodels `proportion_confint(method="wilson")`). `(0, 1)` when `n = 0`.
pub fn wilson(s: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (n, p) = (n as f64, s as f64 / n as f64);
    let z2 = z * z;
    let center = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// The standard normal quantile of a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Two-sided standard normal quantile `z` with `P(|Z| > z) = alpha`.
pub fn z_two_sided(alpha: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    Normal::standard().inverse_cdf(1.0 - alpha / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The merged e-value is an e-value: over 20,000 null pairs (rate exactly p0, 100 draws
    /// each) the mean of the product of the two is at most 1 (measured 0.58: the clamp makes
    /// it a supermartingale), while the mean of the larger of the two, what the merge once
    /// took, is above 1 (measured 1.16): not an e-value.
    #[test]
    fn merged_by_product_is_an_e_value() {
        let p0 = 0.2f64;
        let mut state = 11u64;
        let mut draw = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) < p0
        };
        let trials = 20_000;
        let (mut product, mut larger) = (0.0, 0.0);
        for _ in 0..trials {
            let (mut a, mut b) = (RateEProcess::new(p0), RateEProcess::new(p0));
            for _ in 0..100 {
                a.observe(draw());
                b.observe(draw());
            }
            larger += a.log_e().max(b.log_e()).exp();
            a.merge(&b);
            product += a.log_e().exp();
        }
        let (product, larger) = (product / trials as f64, larger / trials as f64);
        eprintln!("mean merged e-value {product:.3}, mean of the larger {larger:.3}");
        assert!(product <= 1.1, "mean of the product {product}");
        assert!(larger > 1.05, "mean of the larger {larger}");
    }

    #[test]
    fn rate_at_or_below_p0_never_gains_on_zero() {
        let mut e = RateEProcess::new(0.01);
        for _ in 0..10_000 {
            e.observe(false);
        }
        assert_eq!(e.log_e(), 0.0);
        assert_eq!(e.rate(), 0.0);
    }

    #[test]
    fn rate_far_above_p0_gains_fast() {
        let mut e = RateEProcess::new(0.001);
        for i in 0..40 {
            e.observe(i % 2 == 0);
        }
        assert!(e.log_e() > (1000f64).ln(), "{}", e.log_e());
    }

    /// The factor's expectation at the null boundary is exactly one for any `q >= p0`.
    #[test]
    fn factor_is_fair_at_the_boundary() {
        let p0: f64 = 0.02;
        for q in [0.02, 0.05, 0.3, 0.9] {
            let mean = p0 * (q / p0) + (1.0 - p0) * ((1.0 - q) / (1.0 - p0));
            assert!((mean - 1.0).abs() < 1e-12);
        }
    }
}
