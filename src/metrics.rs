//! Prometheus metrics. They are published from the engine's [`Report`] and counters at a fixed
//! cadence (not per event), so the hot path touches no shared state. Label values that come
//! from events (experiment, input, arm; judge, router, eval set as `instrument`) are capped per label: past `max_label_values` distinct
//! values, counters aggregate into `__other__` and gauges are not exported for the overflow
//! (`armwatch_label_values_overflowed` says how many were refused).

use crate::check::{
    Check, EvalSetMetrics, ExperimentMetrics, JudgeMetrics, PairMetrics, RouterMetrics,
};
use crate::engine::Engine;
use crate::event::{Kind, RejectReason};
use crate::report::Report;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The label value used for capped overflow.
pub const OVERFLOW: &str = "__other__";

/// Admits at most `max` distinct values for one label.
#[derive(Debug)]
struct LabelCap {
    max: usize,
    admitted: HashSet<String>,
    refused: HashSet<String>,
}

impl LabelCap {
    fn new(max: usize) -> LabelCap {
        LabelCap {
            max,
            admitted: HashSet::new(),
            refused: HashSet::new(),
        }
    }

    /// The value as a label when admitted (cut to [`MAX_LABEL_BYTES`]), `None` when over the
    /// cap.
    fn admit<'a>(&mut self, v: &'a str) -> Option<Cow<'a, str>> {
        let v = label_value(v);
        if self.admitted.contains(&*v) {
            return Some(v);
        }
        if self.admitted.len() < self.max {
            self.admitted.insert(v.to_string());
            return Some(v);
        }
        if self.refused.len() < 10 * self.max {
            self.refused.insert(v.to_string());
        }
        None
    }
}

/// Longest label value exported: a 5 KB experiment id would otherwise repeat in every series
/// of the experiment (a 100 MB scrape).
pub const MAX_LABEL_BYTES: usize = 128;

/// `v`, or when longer than [`MAX_LABEL_BYTES`] its first ~100 bytes, `…` and 16 hex digits of
/// its hash (long values that share a prefix stay distinct).
pub fn label_value(v: &str) -> Cow<'_, str> {
    if v.len() <= MAX_LABEL_BYTES {
        return Cow::Borrowed(v);
    }
    let mut end = 100;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…{:016x}", &v[..end], crate::state::key_of(v)))
}

macro_rules! reg {
    ($r:expr, $m:expr) => {{
        let m = $m.expect("metric definition is valid");
        $r.register(Box::new(m.clone()))
            .expect("metric names are unique");
        m
    }};
}

/// Every metric armwatch exports.
pub struct Metrics {
    registry: Registry,
    accepted: IntCounterVec,
    rejected: IntCounterVec,
    arm_events: IntCounterVec,
    repeat_events: IntCounterVec,
    split_units: GaugeVec,
    alerts_active: IntGaugeVec,
    router_in_band: IntGaugeVec,
    alerts_fired: IntCounterVec,
    overflowed: IntGaugeVec,
    /// Sampled per-event processing time.
    pub processing: Histogram,
    /// Consumer lag per partition (from librdkafka statistics).
    pub consumer_lag: IntGaugeVec,
    /// Dead-letter forwarding results.
    pub dead_letter: IntCounterVec,
    /// Alert sink deliveries by sink and result.
    pub sink_deliveries: IntCounterVec,
    /// Alerts a sink did not deliver, by sink and reason (`queue_full`, `shutdown`).
    pub alerts_dropped: IntCounterVec,
    /// Configuration reloads by result (`applied`, `refused`).
    pub config_reloads: IntCounterVec,
    /// Rejected messages whose log line was suppressed by the rate limit.
    pub rejected_log_suppressed: IntCounter,
    /// 1 while the source is connected and consuming.
    pub source_ready: IntGauge,
    /// Checkpoints of partition state written, by result (`written`, `failed`).
    pub checkpoints: IntCounterVec,
    /// Time to snapshot a partition's state and have it durable in the state topic.
    pub checkpoint_seconds: Histogram,
    /// Size of the last checkpoint written (bytes).
    pub checkpoint_bytes: IntGauge,
    /// Bytes of checkpoints written.
    pub checkpoint_written_bytes: IntCounter,
    /// Partition states taken on at assignment, by result (`restored`, `none`, `refused`).
    pub checkpoint_restores: IntCounterVec,
    /// Input partitions whose state this replica owns.
    pub partitions_owned: IntGauge,
    /// Re-keyed messages: routed by this replica's router, and copies dropped by its engines.
    pub repartition_messages: IntCounterVec,
    /// Other replicas' partitions merged into this replica's view from their checkpoints.
    pub partitions_viewed: IntGauge,
    /// Wall time of the last publish.
    pub last_publish: Gauge,
    /// Time to build the report and copy it into the metrics, per publish.
    pub publish_seconds: Histogram,
    state_memory: IntGauge,
    memory_budget: IntGauge,
    resident_memory: IntGauge,
    labels: Labels,
    experiment_checks: ExperimentMetrics,
    router_checks: RouterMetrics,
    pair_checks: PairMetrics,
    judge_checks: JudgeMetrics,
    eval_set_checks: EvalSetMetrics,
    last_accepted: [u64; Kind::ALL.len()],
    last_rejected: [u64; RejectReason::ALL.len()],
    last_arm: HashMap<(String, String), u64>,
    last_repeat: HashMap<String, u64>,
    last_fired: BTreeMap<Check, u64>,
}

/// Register a gauge vector (a check's metric).
pub fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    reg!(r, GaugeVec::new(Opts::new(name, help), labels))
}

/// Register an integer gauge vector (a check's metric).
pub fn int_gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    reg!(r, IntGaugeVec::new(Opts::new(name, help), labels))
}

/// The label caps: label values from events pass through them.
#[derive(Debug)]
pub struct Labels {
    caps: [LabelCap; 4],
}

impl Labels {
    /// An experiment id as a label value (`None`: over the cap).
    pub fn experiment<'a>(&mut self, v: &'a str) -> Option<Cow<'a, str>> {
        self.caps[EXP].admit(v)
    }

    /// An input name.
    pub fn input<'a>(&mut self, v: &'a str) -> Option<Cow<'a, str>> {
        self.caps[INPUT].admit(v)
    }

    /// An arm name.
    pub fn arm<'a>(&mut self, v: &'a str) -> Option<Cow<'a, str>> {
        self.caps[ARM].admit(v)
    }

    /// A judge, router, eval set or sampling dimension.
    pub fn instrument<'a>(&mut self, v: &'a str) -> Option<Cow<'a, str>> {
        self.caps[INSTRUMENT].admit(v)
    }
}

/// An estimate with its interval as `bound = estimate | lower | upper`.
pub fn set_interval(g: &GaugeVec, exp: &str, estimate: f64, [lower, upper]: [f64; 2]) {
    for (bound, v) in [("estimate", estimate), ("lower", lower), ("upper", upper)] {
        g.with_label_values(&[exp, bound]).set(v);
    }
}

const EXP: usize = 0;
const INPUT: usize = 1;
const ARM: usize = 2;
/// Judges, routers, eval sets and their dimensions.
const INSTRUMENT: usize = 3;

impl Metrics {
    /// Register everything in a fresh registry.
    pub fn new(max_label_values: usize) -> Metrics {
        let r = Registry::new();
        let m = Metrics {
            accepted: reg!(r, IntCounterVec::new(Opts::new("armwatch_events_accepted_total", "Events accepted, by kind."), &["kind"])),
            rejected: reg!(r, IntCounterVec::new(Opts::new("armwatch_events_rejected_total", "Messages rejected, by reason."), &["reason"])),
            arm_events: reg!(r, IntCounterVec::new(Opts::new("armwatch_experiment_arm_exposures_total", "Counted exposures per experiment and arm: first exposure per unit (events without unit count each)."), &["experiment", "arm"])),
            repeat_events: reg!(r, IntCounterVec::new(Opts::new("armwatch_experiment_repeat_events_total", "Prompt events of units already counted (not counted again)."), &["experiment"])),
            split_units: reg!(r, GaugeVec::new(Opts::new("armwatch_experiment_units_in_several_partitions", "Units counted in more than one input partition (estimated; each counted once per partition): not 0 when the input topic is not keyed by unit."), &["experiment"])),
            router_in_band: reg!(r, IntGaugeVec::new(Opts::new("armwatch_router_in_band_decisions", "Routing decisions within the band around the threshold."), &["router"])),
            alerts_active: reg!(r, IntGaugeVec::new(Opts::new("armwatch_alerts_active", "Active alerts by check and experiment."), &["check", "experiment"])),
            alerts_fired: reg!(r, IntCounterVec::new(Opts::new("armwatch_alerts_fired_total", "Alerts fired, by check."), &["check"])),
            overflowed: reg!(r, IntGaugeVec::new(Opts::new("armwatch_label_values_overflowed", "Distinct label values refused by the label cap (aggregated as __other__ or not exported)."), &["label"])),
            processing: reg!(r, Histogram::with_opts(HistogramOpts::new("armwatch_processing_seconds", "Per-message decode and state update time (1 in 64 messages sampled).").buckets(vec![1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 5e-5, 1e-4, 1e-3]))),
            consumer_lag: reg!(r, IntGaugeVec::new(Opts::new("armwatch_consumer_lag_messages", "Consumer lag per partition (librdkafka statistics)."), &["topic", "partition"])),
            dead_letter: reg!(r, IntCounterVec::new(Opts::new("armwatch_dead_letter_total", "Rejected messages forwarded to the dead-letter topic, by result."), &["result"])),
            alerts_dropped: reg!(r, IntCounterVec::new(Opts::new("armwatch_alerts_dropped_total", "Alerts a sink did not deliver, by sink and reason: queue_full (alerts.queue_capacity), shutdown (still failing after the grace). Not acknowledged: with checkpoints they are delivered again after a restart."), &["sink", "reason"])),
            sink_deliveries: reg!(r, IntCounterVec::new(Opts::new("armwatch_alert_deliveries_total", "Alert deliveries by sink and result."), &["sink", "result"])),
            config_reloads: reg!(r, IntCounterVec::new(Opts::new("armwatch_config_reloads_total", "Changed configuration files seen, by result: applied, or refused (invalid: the running configuration is kept)."), &["result"])),
            rejected_log_suppressed: reg!(r, IntCounter::new("armwatch_rejected_log_suppressed_total", "Rejected messages not logged because of the log rate limit (still counted).")),
            source_ready: reg!(r, IntGauge::new("armwatch_source_ready", "1 while the source is connected and consuming.")),
            checkpoints: reg!(r, IntCounterVec::new(Opts::new("armwatch_checkpoints_total", "Checkpoints of an input partition's state written to the state topic, by result: written (durable), failed (kept dirty, retried), skipped (the writer queue was full: kept dirty for the next)."), &["result"])),
            checkpoint_seconds: reg!(r, Histogram::with_opts(HistogramOpts::new("armwatch_checkpoint_seconds", "Time to snapshot one partition's state and have it durable in the state topic (on the engine thread).").buckets(vec![1e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]))),
            checkpoint_bytes: reg!(r, IntGauge::new("armwatch_checkpoint_bytes", "Size of the last checkpoint written (bytes).")),
            checkpoint_written_bytes: reg!(r, IntCounter::new("armwatch_checkpoint_written_bytes_total", "Bytes of checkpoints written to the state topic.")),
            checkpoint_restores: reg!(r, IntCounterVec::new(Opts::new("armwatch_checkpoint_restores_total", "Input partitions taken on at assignment, by result: restored (from a checkpoint), none (no checkpoint: built from the earliest offset), refused (old-format or corrupt checkpoint: rebuilt from the earliest offset)."), &["result"])),
            partitions_owned: reg!(r, IntGauge::new("armwatch_partitions_owned", "Input partitions whose state this replica owns.")),
            repartition_messages: reg!(r, IntCounterVec::new(Opts::new("armwatch_repartition_messages_total", "Messages through the repartition topic ([kafka.repartition]), by result: routed (re-produced by this replica's router, acknowledged), repeated (a copy of an input event already in a partition's state, dropped by this replica's engines: a router re-produced after a restart or a rebalance)."), &["result"])),
            partitions_viewed: reg!(r, IntGauge::new("armwatch_partitions_viewed", "Other replicas' input partitions merged into this replica's report and metrics from their last checkpoints.")),
            last_publish: reg!(r, Gauge::new("armwatch_last_publish_timestamp_seconds", "When metrics were last published from the engine.")),
            publish_seconds: reg!(r, Histogram::with_opts(HistogramOpts::new("armwatch_publish_seconds", "Time to build the report, the metrics and their texts, per publish (every 500 ms, on the engine thread).").buckets(vec![1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]))),
            state_memory: reg!(r, IntGauge::new("armwatch_state_memory_bytes", "Estimated memory of the statistics (compared with limits.max_memory_bytes).")),
            memory_budget: reg!(r, IntGauge::new("armwatch_memory_budget_bytes", "limits.max_memory_bytes: past it, new experiments are refused (reason memory_limit).")),
            resident_memory: reg!(r, IntGauge::new("armwatch_process_resident_memory_bytes", "Resident set size of the process (/proc/self/status VmRSS).")),
            labels: Labels {
                caps: std::array::from_fn(|_| LabelCap::new(max_label_values)),
            },
            experiment_checks: ExperimentMetrics::new(&r),
            router_checks: RouterMetrics::new(&r),
            pair_checks: PairMetrics::new(&r),
            judge_checks: JudgeMetrics::new(&r),
            eval_set_checks: EvalSetMetrics::new(&r),
            registry: r,
            last_accepted: [0; Kind::ALL.len()],
            last_rejected: [0; RejectReason::ALL.len()],
            last_arm: HashMap::new(),
            last_repeat: HashMap::new(),
            last_fired: BTreeMap::new(),
        };
        for k in Kind::ALL {
            m.accepted.with_label_values(&[k.as_str()]);
        }
        for r in RejectReason::ALL {
            m.rejected.with_label_values(&[r.as_str()]);
        }
        // every check's counter exists from the start at 0, so that the first alert is an
        // increase (Prometheus sees no increase into a series that did not exist)
        for c in Check::ALL {
            m.alerts_fired.with_label_values(&[c.as_str()]);
        }
        m
    }

    /// The registry to expose.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Copy the engine's counters and the report's figures into the metrics.
    pub fn publish(&mut self, engine: &Engine, report: &Report) {
        self.state_memory.set(report.memory.state_bytes as i64);
        self.memory_budget.set(report.memory.budget_bytes as i64);
        if let Some(rss) = crate::process::rss_bytes() {
            self.resident_memory.set(rss as i64);
        }
        for k in Kind::ALL {
            let now = engine.accepted()[k.index()];
            let d = now.saturating_sub(self.last_accepted[k.index()]);
            self.accepted.with_label_values(&[k.as_str()]).inc_by(d);
            self.last_accepted[k.index()] = now;
        }
        for r in RejectReason::ALL {
            let now = engine.rejected()[r.index()];
            let d = now.saturating_sub(self.last_rejected[r.index()]);
            self.rejected.with_label_values(&[r.as_str()]).inc_by(d);
            self.last_rejected[r.index()] = now;
        }
        for (id, e) in &report.experiments {
            let exp = self.labels.experiment(id);
            for (arm, &n) in e.arms.iter().zip(&e.counts) {
                let last = self.last_arm.entry((id.clone(), arm.clone())).or_insert(0);
                let d = n.saturating_sub(*last);
                *last = n;
                let arm_l = self.labels.arm(arm);
                self.arm_events
                    .with_label_values(&[
                        exp.as_deref().unwrap_or(OVERFLOW),
                        arm_l.as_deref().unwrap_or(OVERFLOW),
                    ])
                    .inc_by(d);
            }
            let last = self.last_repeat.entry(id.clone()).or_insert(0);
            let d = e.units.repeat_events.saturating_sub(*last);
            *last = e.units.repeat_events;
            self.repeat_events
                .with_label_values(&[exp.as_deref().unwrap_or(OVERFLOW)])
                .inc_by(d);
            let Some(exp) = exp else { continue };
            self.split_units
                .with_label_values(&[&exp])
                .set(e.units.counted_in_several_partitions.unwrap_or(0.0));
            self.experiment_checks
                .publish(&mut self.labels, &exp, &e.arms, &e.checks);
        }
        for (name, r) in &report.routers {
            let Some(router) = self.labels.instrument(name) else {
                continue;
            };
            self.router_in_band
                .with_label_values(&[&router])
                .set(r.in_band as i64);
            self.router_checks
                .publish(&mut self.labels, &router, &[], &r.checks);
        }
        for (name, set) in report.sampling.iter().flat_map(|s| s.eval_sets.iter()) {
            if let Some(set_l) = self.labels.instrument(name) {
                self.eval_set_checks
                    .publish(&mut self.labels, &set_l, &[], &set.checks);
            }
        }
        for p in report.overlaps.iter().flat_map(|o| o.pairs.iter()) {
            if let Some(first) = self.labels.experiment(&p.first) {
                self.pair_checks.publish(
                    &mut self.labels,
                    &first,
                    std::slice::from_ref(&p.second),
                    &p.checks,
                );
            }
        }
        for (name, j) in &report.judges {
            if let Some(judge) = self.labels.instrument(name) {
                self.judge_checks
                    .publish(&mut self.labels, &judge, &[], &j.checks);
            }
        }
        let mut active: BTreeMap<(Check, String), i64> = BTreeMap::new();
        let mut fired: BTreeMap<Check, u64> = BTreeMap::new();
        for a in &report.alerts {
            let exp = a.experiment.as_deref().map_or(String::new(), |e| {
                self.labels
                    .experiment(e)
                    .map_or(OVERFLOW.to_string(), |l| l.into_owned())
            });
            *active.entry((a.check, exp)).or_insert(0) += 1;
            *fired.entry(a.check).or_insert(0) += 1;
        }
        for ((check, exp), n) in active {
            self.alerts_active
                .with_label_values(&[check.as_str(), &exp])
                .set(n);
        }
        for (check, n) in fired {
            let last = self.last_fired.entry(check).or_insert(0);
            self.alerts_fired
                .with_label_values(&[check.as_str()])
                .inc_by(n.saturating_sub(*last));
            *last = n;
        }
        for (i, label) in ["experiment", "input", "arm", "instrument"]
            .iter()
            .enumerate()
        {
            self.overflowed
                .with_label_values(&[label])
                .set(self.labels.caps[i].refused.len() as i64);
        }
        self.last_publish
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let enc = prometheus::TextEncoder::new();
        if enc.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn long_label_values_are_cut() {
        let mut engine = Engine::new(&Settings::from_toml("").unwrap());
        let long = "x".repeat(5_000);
        for (i, arm) in ["control", "treatment"].iter().enumerate() {
            for id in [format!("{long}a"), format!("{long}b")] {
                let ev = format!(
                    r#"{{"kind":"prompt","ts":{i},"experiment":"{id}","arm":"{arm}","inputs":{{"{long}":"{long}"}}}}"#
                );
                engine.process(ev.as_bytes()).unwrap();
            }
        }
        let mut m = Metrics::new(100);
        m.publish(&engine, &engine.report());
        let text = m.encode();
        let longest = text.lines().map(str::len).max().unwrap_or(0);
        assert!(longest < 600, "a line of {longest} bytes");
        assert!(text.len() < 60_000, "scrape of {} bytes", text.len());
        // two ids with a common 5 KB prefix stay two label values
        let exposures: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("armwatch_experiment_arm_exposures_total{"))
            .collect();
        assert_eq!(exposures.len(), 4, "{exposures:?}");
        assert_eq!(label_value(&long).chars().count(), 100 + 1 + 16);
        assert_eq!(label_value("short"), "short");
    }

    #[test]
    fn label_values_are_capped() {
        let settings = Settings::from_toml("[metrics]\nmax_label_values = 3").unwrap();
        let mut engine = Engine::new(&settings);
        for i in 0..10 {
            let ev = format!(
                r#"{{"kind":"prompt","ts":1,"experiment":"exp{i}","arm":"a","inputs":{{"x":"v"}}}}"#
            );
            engine.process(ev.as_bytes()).unwrap();
        }
        for i in 0..5 {
            let ev = format!(
                r#"{{"kind":"judgment","ts":1,"judge":"judge{i}","judge_version":"v1","score":1}}"#
            );
            engine.process(ev.as_bytes()).unwrap();
        }
        let mut m = Metrics::new(settings.metrics.max_label_values);
        m.publish(&engine, &engine.report());
        let text = m.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("armwatch_experiment_arm_exposures_total{"))
            .count();
        assert_eq!(series, 4, "3 admitted + __other__:\n{text}");
        assert!(text.contains(
            r#"armwatch_experiment_arm_exposures_total{arm="a",experiment="__other__"} 7"#
        ));
        assert!(text.contains(r#"armwatch_label_values_overflowed{label="experiment"} 7"#));
        assert!(
            text.contains(r#"armwatch_label_values_overflowed{label="instrument"} 2"#),
            "judges use their own cap"
        );
        assert!(text.contains(r#"armwatch_label_values_overflowed{label="input"} 0"#));
        assert!(text.contains(r#"armwatch_events_accepted_total{kind="prompt"} 10"#));
    }
}
