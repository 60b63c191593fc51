//! The status page's data: each check's evidence over time, sampled from the published reports
//! (at most every [`SAMPLE_EVERY`], the last [`MAX_POINTS`] samples of at most [`MAX_SERIES`]
//! series: bounded memory, about 6 KB per series), with the alert threshold and whether it
//! fired, and the active alerts. Sans-IO: the HTTP side serves [`History::status`].

use crate::report::Report;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// Minimum time between two samples.
pub const SAMPLE_EVERY_MS: i64 = 10_000;
/// Samples kept per series (an hour at one per 10 s).
pub const MAX_POINTS: usize = 360;
/// Series kept at most (the first seen; the rest are counted, not kept).
pub const MAX_SERIES: usize = 500;

/// One check's evidence over time.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Series {
    /// The experiment, judge or router it belongs to.
    pub owner: String,
    /// The check.
    pub check: &'static str,
    /// The input (divergence) or the owner itself.
    pub subject: String,
    /// The log e-value the alert needs.
    pub threshold: f64,
    /// Whether the alert fired.
    pub fired: bool,
    /// `(epoch ms, log e-value)`, oldest first.
    pub points: VecDeque<(i64, f64)>,
}

/// The evidence history of every check.
#[derive(Debug, Default)]
pub struct History {
    series: BTreeMap<(String, &'static str, String), Series>,
    last_ms: i64,
    /// Series not kept because [`MAX_SERIES`] was reached.
    pub dropped_series: u64,
}

/// `(owner, check, subject, log e-value, threshold, fired)` of every evidence in a report.
fn evidence(r: &Report) -> Vec<(String, &'static str, String, f64, f64, bool)> {
    let mut out = Vec::new();
    for (id, e) in &r.experiments {
        let s = &e.checks.srm;
        out.push((
            id.clone(),
            "srm",
            id.clone(),
            s.log_evalue,
            s.evidence_threshold,
            s.alert,
        ));
        for (name, i) in &e.checks.inputs {
            out.push((
                id.clone(),
                "input_divergence",
                name.clone(),
                i.log_evalue,
                i.evidence_threshold,
                i.alert,
            ));
        }
        if let Some(a) = &e.checks.assignment {
            out.push((
                id.clone(),
                "assignment_mismatch",
                id.clone(),
                a.log_evalue,
                a.evidence_threshold,
                a.alert,
            ));
        }
        if let Some(p) = &e.checks.predictability {
            out.push((
                id.clone(),
                "arm_predictable",
                id.clone(),
                p.log_evalue,
                p.evidence_threshold,
                p.alert,
            ));
        }
    }
    for (name, j) in &r.judges {
        let s = &j.checks.score_shift;
        out.push((
            name.clone(),
            "judge_score_shift",
            name.clone(),
            s.log_evalue,
            s.evidence_threshold,
            s.alert,
        ));
    }
    for (name, x) in &r.routers {
        let c = &x.checks.compliance;
        out.push((
            name.clone(),
            "threshold_compliance",
            name.clone(),
            c.log_evalue,
            c.evidence_threshold,
            c.alert,
        ));
    }
    out
}

impl History {
    /// Sample `report` at `now_ms` (skipped when the last sample is more recent than
    /// [`SAMPLE_EVERY_MS`]).
    pub fn record(&mut self, report: &Report, now_ms: i64) {
        if self.last_ms != 0 && now_ms - self.last_ms < SAMPLE_EVERY_MS {
            return;
        }
        self.last_ms = now_ms;
        for (owner, check, subject, log_e, threshold, fired) in evidence(report) {
            let key = (owner, check, subject);
            if !self.series.contains_key(&key) && self.series.len() >= MAX_SERIES {
                self.dropped_series += 1;
                continue;
            }
            let s = self.series.entry(key.clone()).or_insert_with(|| Series {
                owner: key.0.clone(),
                check,
                subject: key.2.clone(),
                ..Series::default()
            });
            s.threshold = threshold;
            s.fired = fired;
            if s.points.len() == MAX_POINTS {
                s.points.pop_front();
            }
            s.points
                .push_back((now_ms, if log_e.is_finite() { log_e } else { 0.0 }));
        }
    }

    /// The status page's data: counts, the active alerts (as in the report), every series.
    pub fn status<E>(&self, report: &Report<E>, updated_ms: i64) -> serde_json::Value {
        serde_json::json!({
            "updated_ms": updated_ms,
            "events_accepted": report.events.accepted,
            "events_rejected": report.events.rejected.values().sum::<u64>(),
            "alerts": report.alerts,
            "series": self.series.values().collect::<Vec<_>>(),
            "series_not_kept": self.dropped_series,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::engine::Engine;
    use crate::sim::{Faults, Simulator};

    #[test]
    fn history_samples_every_check_and_stays_bounded() {
        let settings = Settings::from_toml(
            "[[experiment]]\nid = \"prompt-variant\"\narms = { control = 0.5, treatment = 0.5 }\ntreatment_inputs = [\"fragment\"]",
        )
        .unwrap();
        let mut engine = Engine::new(&settings);
        let mut sim = Simulator::single(
            3,
            Faults {
                tier_leak: Some(("pro".into(), 0.7)),
                ..Default::default()
            },
        );
        let mut h = History::default();
        let mut buf = Vec::new();
        for step in 0..(MAX_POINTS + 20) {
            for _ in 0..20 {
                sim.next_event(&mut buf);
                let _ = engine.process(&buf);
            }
            let t = step as i64 * SAMPLE_EVERY_MS;
            h.record(&engine.report(), t);
            h.record(&engine.report(), t + 1); // too soon: not sampled
        }
        let v = h.status(&engine.report(), 0);
        let series = v["series"].as_array().unwrap();
        let tier = series
            .iter()
            .find(|s| s["check"] == "input_divergence" && s["subject"] == "tier")
            .expect("the tier input's evidence");
        assert_eq!(tier["points"].as_array().unwrap().len(), MAX_POINTS);
        assert_eq!(tier["fired"], true);
        assert!(series.iter().any(|s| s["check"] == "srm"));
        assert!(!v["alerts"].as_array().unwrap().is_empty());
    }
}
