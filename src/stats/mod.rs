//! Pure statistics: online estimators and anytime-valid evidence. No IO, no clocks.

pub mod divergence;
pub mod moments;
pub mod sequential;
pub mod sketch;

/// `ln(mean(exp(xs)))`, computed stably. The log of an equal-weight mixture of e-values.
pub fn log_mean_exp(xs: &[f64]) -> f64 {
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = xs.iter().map(|x| (x - max).exp()).sum();
    max + (sum / xs.len() as f64).ln()
}
