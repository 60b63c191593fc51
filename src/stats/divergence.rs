//! Descriptive divergences between two distributions over the same cells, as Evidently's
//! stattests define them (PSI, KL, Jensen-Shannon distance), plus Pearson's chi-square
//! goodness-of-fit p-value. These are *fixed-sample* statistics: exported as gauges, never
//! used to alert (peeking at them continuously inflates false alarms).
//!
//! Zero cells: a proportion below [`EPS`] is raised to it (Evidently's choice, 1e-4), so a cell
//! seen in only one distribution gives a large but finite contribution.

use statrs::distribution::{ChiSquared, ContinuousCDF};

/// The floor for proportions in the log-ratio divergences.
pub const EPS: f64 = 1e-4;

fn proportions(counts: &[u64]) -> impl Iterator<Item = f64> + '_ {
    let n: u64 = counts.iter().sum();
    let n = n.max(1) as f64;
    counts.iter().map(move |&c| (c as f64 / n).max(EPS))
}

/// Population stability index `sum (c - r) ln(c / r)` of `current` against `reference`.
pub fn psi(reference: &[u64], current: &[u64]) -> f64 {
    proportions(reference)
        .zip(proportions(current))
        .map(|(r, c)| (c - r) * (c / r).ln())
        .sum()
}

/// Kullback-Leibler divergence `KL(reference || current) = sum r ln(r / c)` (nats).
pub fn kl(reference: &[u64], current: &[u64]) -> f64 {
    proportions(reference)
        .zip(proportions(current))
        .map(|(r, c)| r * (r / c).ln())
        .sum()
}

/// Jensen-Shannon distance: the square root of the JS divergence (natural log).
pub fn js_distance(reference: &[u64], current: &[u64]) -> f64 {
    let div: f64 = proportions(reference)
        .zip(proportions(current))
        .map(|(r, c)| {
            let m = 0.5 * (r + c);
            0.5 * r * (r / m).ln() + 0.5 * c * (c / m).ln()
        })
        .sum();
    div.max(0.0).sqrt()
}

/// Pearson's chi-square goodness-of-fit p-value of `counts` against expected proportions.
/// Returns 1 when there is nothing to test.
pub fn chi_square_p(counts: &[u64], expected: &[f64]) -> f64 {
    let n: u64 = counts.iter().sum();
    let total: f64 = expected.iter().sum();
    if n == 0 || counts.len() < 2 || total <= 0.0 {
        return 1.0;
    }
    let n = n as f64;
    let stat: f64 = counts
        .iter()
        .zip(expected)
        .filter(|(_, &e)| e > 0.0)
        .map(|(&x, &e)| {
            let m = n * e / total;
            (x as f64 - m).powi(2) / m
        })
        .sum();
    match ChiSquared::new((counts.len() - 1) as f64) {
        Ok(d) => 1.0 - d.cdf(stat),
        Err(_) => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `../shared/design/statistics.md` section 2: reference {500, 300, 200} vs current
    /// {450, 380, 170}; values recomputed with scipy (`scipy.stats.chisquare`,
    /// `scipy.spatial.distance.jensenshannon`) and Evidently's formulas.
    #[test]
    fn shared_vector() {
        let r = [500, 300, 200];
        let c = [450, 380, 170];
        assert!((psi(&r, &c) - 0.0290547).abs() < 1e-7);
        assert!((kl(&r, &c) - 0.0142674).abs() < 1e-7);
        assert!((js_distance(&r, &c) - 0.0602111).abs() < 1e-7);
        let p = chi_square_p(&c, &[0.5, 0.3, 0.2]);
        assert!((p / 2.02e-7 - 1.0).abs() < 0.01, "{p}");
    }

    #[test]
    fn identical_is_zero_and_zero_cells_are_finite() {
        let r = [10, 20, 30];
        assert!(psi(&r, &r).abs() < 1e-15);
        assert!(kl(&r, &r).abs() < 1e-15);
        assert!(js_distance(&r, &r).abs() < 1e-7);
        let z = [0, 20, 30];
        assert!(
            psi(&r, &z).is_finite() && kl(&r, &z).is_finite() && js_distance(&r, &z).is_finite()
        );
        assert_eq!(chi_square_p(&[0, 0], &[0.5, 0.5]), 1.0);
    }
}
