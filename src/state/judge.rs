//! One judge endpoint: the model versions seen behind its stable name, and its scores on the
//! fixed control set (a frozen baseline, then everything after it).

use crate::config::JudgeSettings;
use crate::stats::moments::Moments;
use crate::stats::msprt::Cusum;

/// Versions remembered per judge.
pub const MAX_VERSIONS: usize = 32;

/// One model version seen behind the endpoint.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct JudgeVersion {
    /// Version string.
    pub version: Box<str>,
    /// Time of its first judgment.
    pub first_ts_ms: i64,
    /// Stream position of its first judgment.
    pub first_event: u64,
    /// Judgments made with it.
    pub judgments: u64,
    /// Its control-set scores.
    pub control: Moments,
    /// Index (among post-baseline control judgments) of its first one.
    pub first_post_index: Option<u64>,
}

/// Control scores since a version switch, against those before it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Switch {
    /// Index of the version switched to.
    pub version: usize,
    /// Control scores before the switch (frozen).
    pub before: Moments,
    /// Control scores since.
    pub since: Moments,
    /// Time of the switch.
    pub ts_ms: i64,
}

/// State of one judge.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct JudgeState {
    /// Endpoint name.
    pub name: Box<str>,
    /// Its settings (declared or defaults).
    pub cfg: JudgeSettings,
    /// Versions in order of appearance.
    pub versions: Vec<JudgeVersion>,
    /// Judgments whose version was not remembered (beyond [`MAX_VERSIONS`]).
    pub versions_over_limit: u64,
    /// Control-set scores of the baseline (the first `cfg.baseline` control judgments).
    pub baseline: Moments,
    /// Control-set scores after the baseline.
    pub post: Moments,
    /// CUSUM of standardized post-baseline control scores (onset estimate).
    pub cusum: Cusum,
    /// All control-set scores so far.
    pub control: Moments,
    /// One comparison per version switch: control scores since the switch against all
    /// control scores before it.
    pub switches: Vec<Switch>,
}

impl JudgeState {
    /// A judge first seen now.
    pub fn new(cfg: JudgeSettings) -> JudgeState {
        JudgeState {
            name: cfg.name.as_str().into(),
            cfg,
            versions: Vec::new(),
            versions_over_limit: 0,
            baseline: Moments::default(),
            post: Moments::default(),
            cusum: Cusum::default(),
            control: Moments::default(),
            switches: Vec::new(),
        }
    }

    /// Count a judgment; returns the version's index and whether it is new.
    pub fn observe(
        &mut self,
        version: &str,
        score: f64,
        control: bool,
        ts_ms: i64,
        seq: u64,
    ) -> Option<(usize, bool)> {
        let (v, new) = match self.versions.iter().position(|x| &*x.version == version) {
            Some(v) => (v, false),
            None if self.versions.len() < MAX_VERSIONS => {
                self.versions.push(JudgeVersion {
                    version: version.into(),
                    first_ts_ms: ts_ms,
                    first_event: seq,
                    judgments: 0,
                    control: Moments::default(),
                    first_post_index: None,
                });
                if self.versions.len() > 1 {
                    self.switches.push(Switch {
                        version: self.versions.len() - 1,
                        before: self.control,
                        since: Moments::default(),
                        ts_ms,
                    });
                }
                (self.versions.len() - 1, true)
            }
            None => {
                self.versions_over_limit += 1;
                return None;
            }
        };
        let ver = &mut self.versions[v];
        ver.judgments += 1;
        if control {
            ver.control.push(score);
            self.control.push(score);
            if let Some(s) = self.switches.last_mut() {
                s.since.push(score);
            }
            if self.baseline.n() < self.cfg.baseline {
                self.baseline.push(score);
            } else {
                if ver.first_post_index.is_none() {
                    ver.first_post_index = Some(self.post.n());
                }
                let sd = self.baseline.variance().sqrt();
                let z = if sd > 0.0 {
                    (score - self.baseline.mean()) / sd
                } else {
                    0.0
                };
                self.cusum.push(z, 0.5, ts_ms);
                self.post.push(score);
            }
        }
        Some((v, new))
    }
}
