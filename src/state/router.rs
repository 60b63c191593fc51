//! One router: a score-threshold rule and the decisions made near the threshold.

use crate::config::RouterSettings;
use crate::stats::moments::Moments;

/// Fine bins of the density histogram over the score range.
pub const DENSITY_BINS: usize = 4096;

/// A fixed fine histogram of scores, aligned so that the threshold is a bin edge (McCrary bins
/// are re-built from it, so none straddles the threshold), with exact moments and range.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Density {
    /// The threshold the bins are aligned on.
    pub threshold: f64,
    width: f64,
    offset: i64,
    counts: Vec<u64>,
    /// Exact moments of the scores.
    pub moments: Moments,
    /// Smallest score.
    pub min: f64,
    /// Largest score.
    pub max: f64,
}

impl Density {
    /// Bins over `range`, aligned on `threshold`.
    pub fn new(threshold: f64, range: [f64; 2]) -> Density {
        let width = (range[1] - range[0]) / DENSITY_BINS as f64;
        let offset = ((threshold - range[0]) / width).ceil() as i64;
        Density {
            threshold,
            width,
            offset,
            counts: vec![0; DENSITY_BINS + 2],
            moments: Moments::default(),
            min: f64::MAX,
            max: f64::MIN,
        }
    }

    /// Count one score (scores outside the range go to the end bins).
    #[inline]
    pub fn push(&mut self, x: f64) {
        let i = ((x - self.threshold) / self.width).floor() as i64 + self.offset;
        let i = i.clamp(0, self.counts.len() as i64 - 1) as usize;
        self.counts[i] += 1;
        self.moments.push(x);
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }

    /// Counts just below and at-or-above the threshold within `half_width`.
    pub fn window(&self, half_width: f64) -> (u64, u64) {
        let k = (half_width / self.width).round().max(1.0) as i64;
        let at = self.offset.clamp(0, self.counts.len() as i64);
        let lo = (at - k).max(0) as usize;
        let hi = (at + k).min(self.counts.len() as i64) as usize;
        let at = at as usize;
        (
            self.counts[lo..at].iter().sum(),
            self.counts[at..hi].iter().sum(),
        )
    }

    /// Non-empty fine bins as (centre, count).
    pub fn points(&self) -> Vec<(f64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &k)| k > 0)
            .map(|(i, &k)| {
                (
                    self.threshold + ((i as i64 - self.offset) as f64 + 0.5) * self.width,
                    k,
                )
            })
            .collect()
    }
}

/// State of one router.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RouterState {
    /// Router name.
    pub name: Box<str>,
    /// Declared rule, if any.
    pub cfg: Option<RouterSettings>,
    /// Decisions seen.
    pub decisions: u64,
    /// Decisions within the band around the threshold.
    pub in_band: u64,
    /// In-band decisions that disagree with the rule.
    pub disagree: u64,
    /// The threshold last used (config or events).
    pub threshold: Option<f64>,
    /// Scores around the threshold (once a threshold is known).
    pub density: Option<Density>,
}

/// What a routing decision says about the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Decision {
    /// Outside the band, or no rule to check against.
    Unchecked,
    /// In the band and following the rule.
    Agrees,
    /// In the band and against the rule.
    Disagrees,
}

impl RouterState {
    /// A router first seen now.
    pub fn new(name: &str, cfg: Option<RouterSettings>) -> RouterState {
        RouterState {
            name: name.into(),
            threshold: cfg.as_ref().and_then(|c| c.threshold),
            cfg,
            decisions: 0,
            in_band: 0,
            disagree: 0,
            density: None,
        }
    }

    /// Count one decision: `score` against the threshold (config first, else the event's),
    /// `route` against the rule's `below` route.
    pub fn observe(&mut self, score: f64, event_threshold: Option<f64>, route: &str) -> Decision {
        self.decisions += 1;
        let threshold = self
            .cfg
            .as_ref()
            .and_then(|c| c.threshold)
            .or(event_threshold);
        if let Some(t) = threshold {
            let range = self.cfg.as_ref().map_or([0.0, 1.0], |c| c.score_range);
            self.density
                .get_or_insert_with(|| Density::new(t, range))
                .push(score);
        }
        let Some(cfg) = &self.cfg else {
            return Decision::Unchecked;
        };
        let Some(threshold) = cfg.threshold.or(event_threshold) else {
            return Decision::Unchecked;
        };
        self.threshold = Some(threshold);
        let Some(below) = cfg.below.as_deref() else {
            return Decision::Unchecked;
        };
        if (score - threshold).abs() > cfg.band {
            return Decision::Unchecked;
        }
        self.in_band += 1;
        if (score < threshold) == (route == below) {
            Decision::Agrees
        } else {
            self.disagree += 1;
            Decision::Disagrees
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::mccrary::dc_density;
    use rand::{Rng, SeedableRng};

    /// The fine histogram (4096 bins over [0, 1]) gives the raw-data McCrary figures closely.
    #[test]
    fn histogram_density_matches_raw_data() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(4);
        let mut d = Density::new(0.85, [0.0, 1.0]);
        let mut raw = Vec::new();
        for _ in 0..20_000 {
            let mut u: [f64; 6] = std::array::from_fn(|_| rng.random());
            u.sort_by(f64::total_cmp);
            let x = if u[4] > 0.85 && u[4] < 0.9 && rng.random::<f64>() < 0.2 {
                u[4] - 0.05
            } else {
                u[4]
            };
            d.push(x);
            raw.push((x, 1));
        }
        let sd = d.moments.variance().sqrt();
        let exact = dc_density(&raw, 0.85, 20_000, sd, d.min, d.max).expect("raw");
        let binned = dc_density(&d.points(), 0.85, 20_000, sd, d.min, d.max).expect("binned");
        assert!(
            (exact.theta - binned.theta).abs() < 0.02,
            "{exact:?} vs {binned:?}"
        );
        assert!(
            (exact.z / binned.z - 1.0).abs() < 0.05,
            "{exact:?} vs {binned:?}"
        );
    }
}
