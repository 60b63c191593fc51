//! Running mean and variance (Welford 1962), mergeable (Chan, Golub, LeVeque 1979), and the
//! standardized mean difference `SMD = (mean_t - mean_c) / sqrt((var_t + var_c) / 2)`
//! (Austin 2009; |SMD| > 0.1 is the usual imbalance convention).

/// Online mean and variance.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Moments {
    n: u64,
    mean: f64,
    m2: f64,
}

impl Moments {
    /// Add one value.
    #[inline]
    pub fn push(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }

    /// Count.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// Mean (0 when empty).
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Sample variance (n - 1 denominator; 0 below two values).
    pub fn variance(&self) -> f64 {
        if self.n < 2 {
            0.0
        } else {
            self.m2 / (self.n - 1) as f64
        }
    }

    /// Combine two summaries (parallel algorithm of Chan et al.).
    pub fn merge(&mut self, o: &Moments) {
        if o.n == 0 {
            return;
        }
        let n = self.n + o.n;
        let d = o.mean - self.mean;
        self.mean += d * o.n as f64 / n as f64;
        self.m2 += o.m2 + d * d * self.n as f64 * o.n as f64 / n as f64;
        self.n = n;
    }
}

/// Standardized mean difference of `treatment` against `control`; `None` when either side has
/// fewer than two values or both variances are zero.
pub fn smd(treatment: &Moments, control: &Moments) -> Option<f64> {
    if treatment.n < 2 || control.n < 2 {
        return None;
    }
    let pooled = ((treatment.variance() + control.variance()) / 2.0).sqrt();
    (pooled > 0.0).then(|| (treatment.mean - control.mean) / pooled)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: numpy.mean / numpy.var(ddof=1) of [1, 2, 4, 7] and [2, 3, 3, 5, 9].
    #[test]
    fn matches_numpy() {
        let mut a = Moments::default();
        [1.0, 2.0, 4.0, 7.0].iter().for_each(|&x| a.push(x));
        assert!((a.mean() - 3.5).abs() < 1e-12);
        assert!((a.variance() - 7.0).abs() < 1e-12);
        let mut b = Moments::default();
        [2.0, 3.0, 3.0, 5.0, 9.0].iter().for_each(|&x| b.push(x));
        // (3.5 - 4.4) / sqrt((7 + 7.8) / 2)
        assert!((smd(&a, &b).unwrap() - (-0.330_846_579_942_213_6)).abs() < 1e-9);
        let mut m = a;
        m.merge(&b);
        let mut all = Moments::default();
        [1.0, 2.0, 4.0, 7.0, 2.0, 3.0, 3.0, 5.0, 9.0]
            .iter()
            .for_each(|&x| all.push(x));
        assert!(
            (m.mean() - all.mean()).abs() < 1e-12 && (m.variance() - all.variance()).abs() < 1e-12
        );
    }
}
