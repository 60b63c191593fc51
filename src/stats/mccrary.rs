//! McCrary's density discontinuity test (McCrary 2008, J. Econometrics 142(2) 698-714), as the
//! R package `rdd::DCdensity` implements it:
//!
//! 1. bins of width `b = 2 sd n^(-1/2)` aligned on the cutoff `c` (a value at `c` goes right),
//!    heights `count / (n b)`;
//! 2. bandwidth `h = (h- + h+)/2`, `h+- = 3.348 (s2 * range / sum f''^2)^(1/5)` from a 4th-order
//!    polynomial fit of the heights on each side (`s2` its residual variance, `f''` its second
//!    derivative at the bin midpoints, `range` the distance from `c` to the outermost midpoint);
//! 3. a triangular-kernel local-linear fit of the heights on each side, evaluated at `c`;
//! 4. `theta = ln f+ - ln f-`, `SE = sqrt((1/(n h)) (24/5) (1/f+ + 1/f-))`, `z = theta / SE`.
//!
//! It works on a histogram, so [`dc_density`] takes values with counts: the raw data, or the
//! centres of fine bins of a streaming histogram.

/// Result of the test.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct McCrary {
    /// `ln f+ - ln f-`.
    pub theta: f64,
    /// Its standard error.
    pub se: f64,
    /// `theta / se`.
    pub z: f64,
    /// Bin width used.
    pub bin: f64,
    /// Bandwidth used.
    pub bw: f64,
}

/// Weighted least squares of `y` on `1, u, .., u^degree` (`u` pre-scaled by the caller);
/// returns the coefficients and the residual sum of squares. `None` when singular.
fn wls(u: &[f64], y: &[f64], w: &[f64], degree: usize) -> Option<(Vec<f64>, f64)> {
    let p = degree + 1;
    let mut a = vec![0.0; p * p];
    let mut b = vec![0.0; p];
    for ((&x, &yv), &wv) in u.iter().zip(y).zip(w) {
        if wv == 0.0 {
            continue;
        }
        let mut pow = vec![1.0; p];
        for k in 1..p {
            pow[k] = pow[k - 1] * x;
        }
        for i in 0..p {
            b[i] += wv * pow[i] * yv;
            for j in 0..p {
                a[i * p + j] += wv * pow[i] * pow[j];
            }
        }
    }
    // Gaussian elimination with partial pivoting
    for col in 0..p {
        let piv =
            (col..p).max_by(|&r, &s| a[r * p + col].abs().total_cmp(&a[s * p + col].abs()))?;
        if a[piv * p + col].abs() < 1e-300 {
            return None;
        }
        if piv != col {
            for k in 0..p {
                a.swap(piv * p + k, col * p + k);
            }
            b.swap(piv, col);
        }
        for r in col + 1..p {
            let f = a[r * p + col] / a[col * p + col];
            for k in col..p {
                a[r * p + k] -= f * a[col * p + k];
            }
            b[r] -= f * b[col];
        }
    }
    let mut coef = vec![0.0; p];
    for i in (0..p).rev() {
        let s: f64 = (i + 1..p).map(|k| a[i * p + k] * coef[k]).sum();
        coef[i] = (b[i] - s) / a[i * p + i];
    }
    let rss = u
        .iter()
        .zip(y)
        .zip(w)
        .map(|((&x, &yv), &wv)| {
            let fit: f64 = coef.iter().rev().fold(0.0, |acc, c| acc * x + c);
            wv * (yv - fit).powi(2)
        })
        .sum();
    Some((coef, rss))
}

/// The test at cutoff `c` for values `x` with counts (`n` = sum of counts, `sd` the sample
/// standard deviation, `min`/`max` the range of the data). `None` when the cutoff is outside
/// the data or a side has too little data.
pub fn dc_density(
    points: &[(f64, u64)],
    c: f64,
    n: u64,
    sd: f64,
    min: f64,
    max: f64,
) -> Option<McCrary> {
    if !(c > min && c < max) || n < 10 || sd.is_nan() || sd <= 0.0 {
        return None;
    }
    let nf = n as f64;
    let bin = 2.0 * sd / nf.sqrt();
    let l = ((min - c) / bin).floor() * bin + bin / 2.0 + c;
    let r = ((max - c) / bin).floor() * bin + bin / 2.0 + c;
    let j = ((max - min) / bin).floor() as usize + 2;
    let mut counts = vec![0u64; j];
    for &(x, k) in points {
        let mid = ((x - c) / bin).floor() * bin + bin / 2.0 + c;
        let idx = ((mid - l) / bin).round() as i64;
        if idx >= 0 && (idx as usize) < j {
            counts[idx as usize] += k;
        }
    }
    let cellval: Vec<f64> = counts.iter().map(|&k| k as f64 / nf / bin).collect();
    let cellmp: Vec<f64> = (0..j)
        .map(|i| (((l + i as f64 * bin) - c) / bin).floor() * bin + bin / 2.0 + c)
        .collect();

    // bandwidth: 4th-order polynomial per side (centred and scaled for conditioning)
    let side_h = |left: bool| -> Option<f64> {
        let sel: Vec<usize> = (0..j).filter(|&i| (cellmp[i] < c) == left).collect();
        if sel.len() < 6 {
            return None;
        }
        let xs: Vec<f64> = sel.iter().map(|&i| cellmp[i]).collect();
        let ys: Vec<f64> = sel.iter().map(|&i| cellval[i]).collect();
        let m = xs.iter().sum::<f64>() / xs.len() as f64;
        let s = xs
            .iter()
            .map(|x| (x - m).abs())
            .fold(0.0, f64::max)
            .max(1e-12);
        let u: Vec<f64> = xs.iter().map(|x| (x - m) / s).collect();
        let (coef, rss) = wls(&u, &ys, &vec![1.0; u.len()], 4)?;
        let mse = rss / (u.len() - 5) as f64;
        let fpp2: f64 = u
            .iter()
            .map(|&t| (2.0 * coef[2] + 6.0 * coef[3] * t + 12.0 * coef[4] * t * t) / (s * s))
            .map(|f| f * f)
            .sum();
        let range = if left { c - l } else { r - c };
        Some(3.348 * (mse * range / fpp2).powf(0.2))
    };
    // a flat density has f'' ~ 0 and an unbounded rule-of-thumb bandwidth: cap it at the data
    // range (the fit then uses the whole side, and the zero padding stays bounded)
    let bw = (0.5 * (side_h(true)? + side_h(false)?)).min(max - min);
    if bw.is_nan() || bw <= 0.0 {
        return None;
    }

    // local linear fits with a triangular kernel, over the cells padded with empty ones
    let pad = (bw / bin).ceil() as usize;
    let mut cmp = Vec::with_capacity(j + 2 * pad);
    let mut cval = Vec::with_capacity(j + 2 * pad);
    for k in (1..=pad).rev() {
        cmp.push(l - k as f64 * bin);
        cval.push(0.0);
    }
    cmp.extend_from_slice(&cellmp);
    cval.extend_from_slice(&cellval);
    for k in 1..=pad {
        cmp.push(r + k as f64 * bin);
        cval.push(0.0);
    }
    let fit_at_c = |left: bool| -> Option<f64> {
        let dist: Vec<f64> = cmp.iter().map(|x| x - c).collect();
        let w: Vec<f64> = cmp
            .iter()
            .zip(&dist)
            .map(|(&x, &d)| {
                let k = 1.0 - (d / bw).abs();
                if k > 0.0 && ((x < c) == left) {
                    k
                } else {
                    0.0
                }
            })
            .collect();
        let (coef, _) = wls(&dist, &cval, &w, 1)?;
        Some(coef[0])
    };
    let (fl, fr) = (fit_at_c(true)?, fit_at_c(false)?);
    if !(fl > 0.0 && fr > 0.0) {
        return None;
    }
    let theta = fr.ln() - fl.ln();
    let se = ((1.0 / (nf * bw)) * (24.0 / 5.0) * (1.0 / fr + 1.0 / fl)).sqrt();
    Some(McCrary {
        theta,
        se,
        z: theta / se,
        bin,
        bw,
    })
}

/// The complement of Cattaneo, Jansson & Ma (`rddensity`'s binomial test; Cattaneo, Frandsen
/// & Titiunik 2015): in a small symmetric window around the cutoff a smooth density puts each
/// value on either side with probability 1/2, so the count below is Binomial(n, 1/2). Exact
/// two-sided p-value (twice the smaller tail, at most 1).
pub fn binomial_window_p(below: u64, above: u64) -> f64 {
    use statrs::distribution::{Binomial, DiscreteCDF};
    let n = below + above;
    let Ok(b) = Binomial::new(0.5, n) else {
        return 1.0;
    };
    let k = below.min(above);
    (2.0 * b.cdf(k)).min(1.0)
}

/// Two-sided normal p-value of `z`.
pub fn two_sided_p(z: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    2.0 * Normal::standard().sf(z.abs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::moments::Moments;

    /// Exact: 2 * sum_{k <= 15} C(50, k) / 2^50 = 0.006600447966810918 (rational arithmetic,
    /// as scipy.stats.binomtest(15, 50).pvalue); (25, 25) -> 1.0
    #[test]
    fn binomial_window_matches_scipy() {
        assert!((binomial_window_p(15, 35) / 0.006600447966810918 - 1.0).abs() < 1e-9);
        assert!((binomial_window_p(35, 15) / 0.006600447966810918 - 1.0).abs() < 1e-9);
        assert_eq!(binomial_window_p(25, 25), 1.0);
    }

    /// A flat density (f'' = 0) still gives a finite test, near zero.
    #[test]
    fn flat_density_is_finite() {
        let pts: Vec<(f64, u64)> = (0..1000).map(|i| ((i as f64 + 0.5) / 1000.0, 1)).collect();
        let t =
            dc_density(&pts, 0.5, 1000, (1.0f64 / 12.0).sqrt(), 0.0005, 0.9995).expect("finite");
        assert!(t.theta.abs() < 0.05 && t.bw <= 1.0, "{t:?}");
    }

    /// `../shared/design/statistics.md` section 4: `x = linspace(-1.5, 1.5, 200) +
    /// 0.05 sin(0..199)`, c = 0, against R `rdd::DCdensity`.
    #[test]
    fn shared_vector_matches_r() {
        let x: Vec<f64> = (0..200)
            .map(|i| -1.5 + 3.0 * i as f64 / 199.0 + 0.05 * (i as f64).sin())
            .collect();
        let mut m = Moments::default();
        x.iter().for_each(|&v| m.push(v));
        let (min, max) = x
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let pts: Vec<(f64, u64)> = x.iter().map(|&v| (v, 1)).collect();
        let t = dc_density(&pts, 0.0, 200, m.variance().sqrt(), min, max).expect("test runs");
        for (got, want, what) in [
            (t.theta, -0.3925231641, "theta"),
            (t.se, 0.5673404586, "se"),
            (t.z, -0.6918652779, "z"),
            (t.bin, 0.1234417634, "bin"),
            (t.bw, 0.4607164995, "bandwidth"),
        ] {
            println!("{what}: {got:.10} vs R {want:.10}");
            // the issue asks for 2%; the port agrees with R to the printed digits
            assert!((got / want - 1.0).abs() < 1e-8, "{what}: {got} vs R {want}");
        }
    }
}
