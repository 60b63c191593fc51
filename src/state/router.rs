//! One router: a score-threshold rule and the decisions made near the threshold.

use crate::config::RouterSettings;

/// State of one router.
#[derive(Clone, Debug)]
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
    /// Detector state.
    pub compliance: crate::detect::threshold::ComplianceState,
}

/// What a routing decision says about the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
            compliance: Default::default(),
        }
    }

    /// Count one decision: `score` against the threshold (config first, else the event's),
    /// `route` against the rule's `below` route.
    pub fn observe(&mut self, score: f64, event_threshold: Option<f64>, route: &str) -> Decision {
        self.decisions += 1;
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
