//! Eval-set sampling against production: the distribution of production traffic (`prompt`
//! events) and of each eval set's sampled traces (`sample` events) over hour-of-week in a
//! configured time zone and over configured segment inputs.

use crate::config::SamplingSettings;
use crate::event::InputValue;
use chrono::{Datelike, TimeZone, Timelike};
use chrono_tz::Tz;
use std::borrow::Cow;

/// Distinct values per segment dimension; later values share one cell.
pub const MAX_SEGMENT_VALUES: usize = 64;
/// Eval sets tracked at most.
pub const MAX_EVAL_SETS: usize = 256;

/// Hour of week (0 = Monday 00:00-01:00) of epoch milliseconds in `tz`, cached per local hour.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct HourOfWeek {
    tz: Tz,
    start: i64,
    end: i64,
    how: usize,
}

impl HourOfWeek {
    /// For a time zone.
    pub fn new(tz: Tz) -> HourOfWeek {
        HourOfWeek {
            tz,
            start: 0,
            end: 0,
            how: 0,
        }
    }

    /// The hour of week of `ts_ms`.
    #[inline]
    pub fn of(&mut self, ts_ms: i64) -> usize {
        if ts_ms >= self.start && ts_ms < self.end {
            return self.how;
        }
        let Some(t) = self.tz.timestamp_millis_opt(ts_ms).single() else {
            return 0;
        };
        self.how = t.weekday().num_days_from_monday() as usize * 24 + t.hour() as usize;
        let into_hour = i64::from(t.minute()) * 60_000
            + i64::from(t.second()) * 1000
            + i64::from(t.timestamp_subsec_millis());
        self.start = ts_ms - into_hour;
        self.end = self.start + 3_600_000;
        self.how
    }
}

/// Counts over the cells of one dimension (hour-of-week, or one segment input's values).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Dimension {
    /// Dimension name: `hour_of_week` or the segment input.
    pub name: Box<str>,
    /// Cell labels (segment values; hours are their index).
    pub labels: Vec<Box<str>>,
    /// Counts per cell.
    pub counts: Vec<f64>,
    /// Weighted counts per cell (production coverage).
    pub weights: Vec<f64>,
    total: f64,
}

impl Dimension {
    /// Hour-of-week: 168 cells.
    pub fn hours() -> Dimension {
        Dimension {
            name: "hour_of_week".into(),
            labels: Vec::new(),
            counts: vec![0.0; 168],
            weights: vec![0.0; 168],
            total: 0.0,
        }
    }

    /// A segment input, cells added as values appear.
    pub fn segment(name: &str) -> Dimension {
        Dimension {
            name: name.into(),
            labels: Vec::new(),
            counts: Vec::new(),
            weights: Vec::new(),
            total: 0.0,
        }
    }

    /// The cell of a segment value (the last cell pools values past the cap).
    pub fn cell_of(&mut self, value: &str) -> usize {
        if let Some(i) = self.labels.iter().position(|l| &**l == value) {
            return i;
        }
        if self.labels.len() < MAX_SEGMENT_VALUES {
            self.labels.push(crate::state::display_label(value));
        } else if self.labels.len() == MAX_SEGMENT_VALUES {
            self.labels.push(crate::state::strata::TAIL_LABEL.into());
        }
        self.counts.resize(self.labels.len(), 0.0);
        self.weights.resize(self.labels.len(), 0.0);
        self.labels.len() - 1
    }

    /// Count one event in `cell`.
    #[inline]
    pub fn add(&mut self, cell: usize, weight: f64) {
        if cell >= self.counts.len() {
            self.counts.resize(cell + 1, 0.0);
            self.weights.resize(cell + 1, 0.0);
        }
        self.counts[cell] += 1.0;
        self.weights[cell] += weight;
        self.total += 1.0;
    }

    /// Total count.
    pub fn total(&self) -> f64 {
        self.total
    }
}

/// Production traffic: the reference distributions.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Production {
    /// Settings.
    pub cfg: SamplingSettings,
    /// Hour-of-week of event times.
    pub clock: HourOfWeek,
    /// `hour_of_week`, then one per segment input.
    pub dims: Vec<Dimension>,
    /// Production events counted.
    pub n: u64,
}

impl Production {
    /// From settings (the time zone was validated with them).
    pub fn new(cfg: SamplingSettings) -> Production {
        let tz = cfg.timezone.0;
        let mut dims = vec![Dimension::hours()];
        dims.extend(cfg.segments.iter().map(|s| Dimension::segment(s)));
        Production {
            clock: HourOfWeek::new(tz),
            dims,
            n: 0,
            cfg,
        }
    }

    /// Count one production event.
    #[inline]
    pub fn observe(&mut self, ts_ms: i64, inputs: &[(Cow<'_, str>, InputValue<'_>)]) {
        self.n += 1;
        let w = self
            .cfg
            .weight_input
            .as_deref()
            .and_then(|wi| inputs.iter().find(|(n, _)| n == wi))
            .and_then(|(_, v)| {
                if let InputValue::Num(x) = v {
                    Some(x.max(0.0))
                } else {
                    None
                }
            })
            .unwrap_or(1.0);
        let how = self.clock.of(ts_ms);
        self.dims[0].add(how, w);
        for d in self.dims.iter_mut().skip(1) {
            if let Some((_, v)) = inputs.iter().find(|(n, _)| **n == *d.name) {
                let cell = match v {
                    InputValue::Str(s) => d.cell_of(s),
                    InputValue::Bool(b) => d.cell_of(if *b { "true" } else { "false" }),
                    InputValue::Num(x) => d.cell_of(&x.to_string()),
                };
                d.add(cell, w);
            }
        }
    }
}

/// One eval set's samples and their evidence per dimension.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EvalSet {
    /// Eval set name.
    pub name: Box<str>,
    /// Same dimensions as production, with sample counts.
    pub dims: Vec<Dimension>,
    /// Per dimension, per grid point: linear-scale mixture factors and their log base.
    pub factors: Vec<(f64, Vec<f64>)>,
    /// Samples counted in the evidence (after the production warm-up).
    pub n_evidence: u64,
    /// Samples seen.
    pub n: u64,
}

impl EvalSet {
    /// A new eval set mirroring production's dimensions.
    pub fn new(name: &str, production: &Production, ks: usize) -> EvalSet {
        let dims: Vec<Dimension> = production
            .dims
            .iter()
            .map(|d| {
                if &*d.name == "hour_of_week" {
                    Dimension::hours()
                } else {
                    Dimension::segment(&d.name)
                }
            })
            .collect();
        EvalSet {
            name: name.into(),
            factors: vec![(0.0, vec![1.0; ks]); dims.len()],
            dims,
            n_evidence: 0,
            n: 0,
        }
    }

    /// Count one sampled trace (`ts_ms`: its production time). The evidence of each dimension
    /// is the plug-in e-process `prod_t q_t(b_t) / p_t(b_t)`: `p_t` the production shares so far
    /// (Jeffreys-smoothed, never zero), `q_t` the Dirichlet(k p_t) predictive of the samples
    /// before, averaged over the `k` grid. It is a martingale when the samples are drawn from
    /// production and `p_t` is production's distribution: valid in the limit of a production
    /// stream much larger than the eval set (design notes section 5); it starts once
    /// production has `min_reference` events, a rule that does not look at the samples.
    pub fn observe(
        &mut self,
        production: &mut Production,
        ts_ms: i64,
        inputs: &[(Cow<'_, str>, InputValue<'_>)],
        ks: &[f64],
    ) {
        self.n += 1;
        let counting = production.n >= production.cfg.min_reference;
        if counting {
            self.n_evidence += 1;
        }
        let how = production.clock.of(ts_ms);
        for (d, pd) in production.dims.iter_mut().enumerate() {
            let cell = if d == 0 {
                Some(how)
            } else {
                inputs
                    .iter()
                    .find(|(n, _)| **n == *pd.name)
                    .map(|(_, v)| match v {
                        InputValue::Str(s) => pd.cell_of(s),
                        InputValue::Bool(b) => pd.cell_of(if *b { "true" } else { "false" }),
                        InputValue::Num(x) => pd.cell_of(&x.to_string()),
                    })
            };
            let Some(b) = cell else { continue };
            let sd = &mut self.dims[d];
            if sd.counts.len() < pd.counts.len() {
                sd.counts.resize(pd.counts.len(), 0.0);
                sd.weights.resize(pd.counts.len(), 0.0);
                sd.labels.clone_from(&pd.labels);
            }
            if counting {
                let cells = pd.counts.len().max(1) as f64;
                let p =
                    (pd.counts.get(b).copied().unwrap_or(0.0) + 0.5) / (pd.total() + 0.5 * cells);
                let (x, n) = (sd.counts.get(b).copied().unwrap_or(0.0), sd.total());
                let (base, m) = &mut self.factors[d];
                let mut hi = 0.0f64;
                for (f, k) in m.iter_mut().zip(ks) {
                    *f *= (k * p + x) / ((k + n) * p);
                    hi = hi.max(*f);
                }
                if !(1e-150..=1e150).contains(&hi) && hi > 0.0 && hi.is_finite() {
                    *base += hi.ln();
                    m.iter_mut().for_each(|f| *f /= hi);
                }
            }
            sd.add(b, 1.0);
        }
    }

    /// Log e-value of dimension `d`.
    pub fn log_e(&self, d: usize) -> f64 {
        let (base, m) = &self.factors[d];
        base + (m.iter().sum::<f64>() / m.len() as f64).ln()
    }
}
