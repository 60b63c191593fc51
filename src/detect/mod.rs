//! Detectors: read per-experiment state after each update and decide whether to alert.
//! An alert needs both evidence (log e-value >= ln(1/alpha')) and magnitude (>= a configured
//! minimum), fires once per (check, experiment, subject) and stays active.

pub mod alert;
pub mod assignment;
pub mod exposure;
pub mod input_divergence;
pub mod judge;
pub mod predictable;
pub mod sampling;
pub mod srm;
pub mod substrate;
pub mod threshold;

pub use alert::{Alert, Check};

/// What a detector needs to know about the moment it runs.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct EvalContext {
    /// 0-based position of the current message in the stream.
    pub seq: u64,
    /// Event time of the current message (epoch ms).
    pub ts_ms: i64,
    /// The anytime-valid level of one check.
    pub alpha: f64,
    /// `ln(1 / alpha)`.
    pub log_threshold: f64,
    /// The minimum arm-share deviation for an alert.
    pub min_share_deviation: f64,
    /// Share of units in more than one arm that alerts.
    pub exposure_rate: f64,
    /// Minimum AUC above 0.5 for `arm_predictable`.
    pub min_auc_margin: f64,
    /// One-sided standard normal quantile at `alpha` (for fixed-sample bounds).
    pub z_alpha: f64,
}

impl EvalContext {
    /// The levels of `settings`, at stream position 0.
    pub fn levels(settings: &crate::config::AlertSettings) -> EvalContext {
        EvalContext {
            seq: 0,
            ts_ms: 0,
            alpha: settings.alpha,
            log_threshold: (1.0 / settings.alpha).ln(),
            min_share_deviation: settings.min_share_deviation,
            exposure_rate: settings.multiple_exposure_rate,
            min_auc_margin: settings.min_auc_margin,
            z_alpha: crate::stats::proportion::z_two_sided(2.0 * settings.alpha),
        }
    }
}

/// Arm shares of a count vector.
pub fn shares(counts: &[u64]) -> Vec<f64> {
    let n: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|&c| crate::stats::proportion::share(c, n))
        .collect()
}

/// `"control 40.3% (design 50.0%), treatment 59.7% (design 50.0%)"`: observed arm shares with the
/// shares they are compared against, for alert messages.
pub fn describe_shares(
    arms: &[&str],
    observed: &[f64],
    against: &[f64],
    against_name: &str,
) -> String {
    arms.iter()
        .zip(observed.iter().zip(against))
        .map(|(a, (o, w))| format!("{a} {:.1}% ({against_name} {:.1}%)", 100.0 * o, 100.0 * w))
        .collect::<Vec<_>>()
        .join(", ")
}
