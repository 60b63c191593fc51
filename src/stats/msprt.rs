//! Mixture sequential probability ratio test for a normal mean, and Page's CUSUM.
//!
//! mSPRT: Johari, Pekelis & Walsh, "Always Valid Inference", Operations Research 2022. With
//! known variance and a `N(0, tau2)` mixture over the shift, the Bayes factor of an estimated
//! shift `d` whose sampling variance is `v` is
//!
//! ```text
//! Lambda = sqrt(v / (v + tau2)) * exp( d^2 tau2 / (2 v (v + tau2)) )
//! ```
//!
//! One sample against a known mean `theta0`: `d = xbar_n - theta0`, `v = s2 / n` (the paper's
//! formula). Two samples, a frozen baseline of `n0` against `n` later values: `d = xbar_n -
//! xbar_0`, `v = s2 (1/n + 1/n0)`. The unknown common mean drops out (a location-invariant
//! Bayes factor, flat right-Haar prior on the location: Pérez-Ortiz, Lardy, de Heide &
//! Grünwald 2022), so it is an e-process under "no shift" without knowing the baseline mean.

/// `ln Lambda` for an estimated shift `d` with sampling variance `v` and mixing variance `tau2`.
pub fn log_mixture_bf(d: f64, v: f64, tau2: f64) -> f64 {
    if !(v > 0.0 && tau2 > 0.0) {
        return 0.0;
    }
    0.5 * (v / (v + tau2)).ln() + d * d * tau2 / (2.0 * v * (v + tau2))
}

/// One-sample mSPRT `ln Lambda_n` of `n` values with mean `xbar` against `theta0`.
pub fn log_msprt(n: u64, xbar: f64, theta0: f64, s2: f64, tau2: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    log_mixture_bf(xbar - theta0, s2 / n as f64, tau2)
}

/// Two-sided Page CUSUM on standardized values, with the time each side last left zero (the
/// onset estimate when it alarms).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Cusum {
    /// Upper statistic `S+ = max(0, S+ + z - k)`.
    pub up: f64,
    /// Lower statistic `S- = max(0, S- - z - k)`.
    pub down: f64,
    up_start: u64,
    down_start: u64,
    up_tag: i64,
    down_tag: i64,
    n: u64,
}

impl Cusum {
    /// Add one standardized value `z` with reference value `k`; `tag` (e.g. a timestamp) is
    /// remembered for the value at which a side starts to rise.
    pub fn push(&mut self, z: f64, k: f64, tag: i64) {
        if self.up == 0.0 {
            self.up_start = self.n;
            self.up_tag = tag;
        }
        if self.down == 0.0 {
            self.down_start = self.n;
            self.down_tag = tag;
        }
        self.up = (self.up + z - k).max(0.0);
        self.down = (self.down - z - k).max(0.0);
        self.n += 1;
    }

    /// The larger side, the index (0-based, among pushed values) where it began to rise, and
    /// that value's tag: the change-point estimate.
    pub fn peak(&self) -> (f64, u64, i64) {
        if self.up >= self.down {
            (self.up, self.up_start, self.up_tag)
        } else {
            (self.down, self.down_start, self.down_tag)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `../shared/design/statistics.md` section 3 (s2 = 1, tau2 = 0.01).
    #[test]
    fn shared_vectors() {
        for (n, xbar, want) in [
            (100, 0.10, 0.90794),
            (1000, 0.10, 28.4033),
            (1000, 0.05, 0.93933),
            (5000, 0.05, 64.1702),
        ] {
            let got = log_msprt(n, xbar, 0.0, 1.0, 0.01).exp();
            assert!(
                (got / want - 1.0).abs() < 1e-4,
                "n={n} xbar={xbar}: {got} vs {want}"
            );
        }
    }

    /// Two-sample form with a very large baseline tends to the one-sample form.
    #[test]
    fn two_sample_limit() {
        let one = log_msprt(1000, 0.1, 0.0, 1.0, 0.01);
        let two = log_mixture_bf(0.1, 1.0 * (1.0 / 1000.0 + 1.0 / 1e12), 0.01);
        assert!((one - two).abs() < 1e-6);
    }

    fn run_length(rng: &mut rand::rngs::SmallRng, shift: f64, h: f64, two_sided: bool) -> u64 {
        let mut c = Cusum::default();
        for t in 1.. {
            // Box-Muller standard normal
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() + shift;
            c.push(z, 0.5, 0);
            if c.up > h || (two_sided && c.down > h) {
                return t;
            }
        }
        unreachable!()
    }

    /// k = 0.5, h = 4. Siegmund's approximation `(exp(2 k b) - 2 k b - 1) / (2 k^2)`, b = h +
    /// 1.166, gives an in-control ARL of 338 for one side; the design notes' 169 is the
    /// two-sided figure (1/169 = 2/338). After a 1-sigma shift: about 8.3. Monte Carlo within 10%.
    #[test]
    fn cusum_average_run_lengths() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        let mut arl = |shift, two_sided| {
            (0..4000)
                .map(|_| run_length(&mut rng, shift, 4.0, two_sided))
                .sum::<u64>() as f64
                / 4000.0
        };
        let (one, two, shifted) = (arl(0.0, false), arl(0.0, true), arl(1.0, false));
        assert!((one / 338.0 - 1.0).abs() < 0.1, "one-sided ARL0 {one}");
        assert!((two / 169.0 - 1.0).abs() < 0.1, "two-sided ARL0 {two}");
        assert!((shifted / 8.3 - 1.0).abs() < 0.1, "ARL1 {shifted}");
    }
}
