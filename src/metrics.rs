//! Prometheus metrics. They are published from the engine's [`Report`] and counters at a fixed
//! cadence (not per event), so the hot path touches no shared state. Label values that come
//! from events (experiment, input, arm; judge, router, eval set as `instrument`) are capped per label: past `max_label_values` distinct
//! values, counters aggregate into `__other__` and gauges are not exported for the overflow
//! (`armwatch_label_values_overflowed` says how many were refused).

use crate::detect::Check;
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
    srm_log_e: GaugeVec,
    srm_p: GaugeVec,
    srm_chi2_p: GaugeVec,
    div_log_e: GaugeVec,
    div_kl: GaugeVec,
    div_js: GaugeVec,
    div_psi: GaugeVec,
    input_smd: GaugeVec,
    alerts_active: IntGaugeVec,
    judge_log_e: GaugeVec,
    router_log_e: GaugeVec,
    router_share: GaugeVec,
    router_in_band: IntGaugeVec,
    router_density: GaugeVec,
    sampling: GaugeVec,
    substrate: IntGaugeVec,
    judge_shift: GaugeVec,
    judge_cusum: GaugeVec,
    judge_version_judgments: IntGaugeVec,
    alerts_fired: IntCounterVec,
    mismatch_log_e: GaugeVec,
    mismatch_ratio: GaugeVec,
    candidate_agreement: GaugeVec,
    exposure_ratio: GaugeVec,
    exposure_followed: IntGaugeVec,
    exposure_memory: IntGaugeVec,
    mixed_clusters: IntGaugeVec,
    clusters: IntGaugeVec,
    predictable_log_e: GaugeVec,
    predictable_auc: GaugeVec,
    overflowed: IntGaugeVec,
    /// Sampled per-event processing time.
    pub processing: Histogram,
    /// Consumer lag per partition (from librdkafka statistics).
    pub consumer_lag: IntGaugeVec,
    /// Dead-letter forwarding results.
    pub dead_letter: IntCounterVec,
    /// Alert sink deliveries by sink and result.
    pub sink_deliveries: IntCounterVec,
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
    /// Other replicas' partitions merged into this replica's view from their checkpoints.
    pub partitions_viewed: IntGauge,
    /// Wall time of the last publish.
    pub last_publish: Gauge,
    /// Time to build the report and copy it into the metrics, per publish.
    pub publish_seconds: Histogram,
    state_memory: IntGauge,
    memory_budget: IntGauge,
    resident_memory: IntGauge,
    caps: [LabelCap; 4],
    last_accepted: [u64; Kind::ALL.len()],
    last_rejected: [u64; RejectReason::ALL.len()],
    last_arm: HashMap<(String, String), u64>,
    last_repeat: HashMap<String, u64>,
    last_fired: BTreeMap<Check, u64>,
}

/// An estimate with its interval as `bound = estimate | lower | upper`.
fn set_interval(g: &GaugeVec, exp: &str, estimate: f64, [lower, upper]: [f64; 2]) {
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
        let g =
            |name: &str, help: &str, labels: &[&str]| GaugeVec::new(Opts::new(name, help), labels);
        let m = Metrics {
            accepted: reg!(r, IntCounterVec::new(Opts::new("armwatch_events_accepted_total", "Events accepted, by kind."), &["kind"])),
            rejected: reg!(r, IntCounterVec::new(Opts::new("armwatch_events_rejected_total", "Messages rejected, by reason."), &["reason"])),
            arm_events: reg!(r, IntCounterVec::new(Opts::new("armwatch_experiment_arm_exposures_total", "Counted exposures per experiment and arm: first exposure per unit (events without unit count each)."), &["experiment", "arm"])),
            repeat_events: reg!(r, IntCounterVec::new(Opts::new("armwatch_experiment_repeat_events_total", "Prompt events of units already counted (not counted again)."), &["experiment"])),
            srm_log_e: reg!(r, g("armwatch_srm_log_evalue", "SRM: log e-value of the Dirichlet-multinomial e-process (alert at ln(1/alpha)).", &["experiment"])),
            srm_p: reg!(r, g("armwatch_srm_sequential_pvalue", "SRM: anytime-valid sequential p-value.", &["experiment"])),
            srm_chi2_p: reg!(r, g("armwatch_srm_chisquare_pvalue", "SRM: fixed-sample chi-square p-value (descriptive; not valid under continuous monitoring).", &["experiment"])),
            div_log_e: reg!(r, g("armwatch_input_divergence_log_evalue", "Arm-conditional input divergence: log e-value per watched input.", &["experiment", "input"])),
            div_kl: reg!(r, g("armwatch_input_divergence_kl", "KL(reference arm || arm) of an input's value distribution (nats, descriptive).", &["experiment", "input", "arm"])),
            div_js: reg!(r, g("armwatch_input_divergence_js", "Jensen-Shannon distance between the reference arm's and an arm's value distribution.", &["experiment", "input", "arm"])),
            div_psi: reg!(r, g("armwatch_input_divergence_psi", "Population stability index of an arm's value distribution against the reference arm.", &["experiment", "input", "arm"])),
            input_smd: reg!(r, g("armwatch_input_smd", "Standardized mean difference of a numeric input against the reference arm.", &["experiment", "input", "arm"])),
            router_density: reg!(r, g("armwatch_router_density", "McCrary density test at the routing threshold, last look: stat = theta | se | z | p.", &["router", "stat"])),
            sampling: reg!(r, g("armwatch_sampling_skew", "Eval set against production per dimension: stat = log_evalue | js | kl | uncovered_share.", &["eval_set", "dimension", "stat"])),
            substrate: reg!(r, IntGaugeVec::new(Opts::new("armwatch_substrate_value_events", "Events per substrate input value and arm (at most 16 values per input)."), &["experiment", "input", "value", "arm"])),
            router_log_e: reg!(r, g("armwatch_router_compliance_log_evalue", "Routing-rule compliance: log e-value for a disagreement share above tolerance.", &["router"])),
            router_share: reg!(r, g("armwatch_router_disagreement_share", "Share of in-band routing decisions that disagree with the rule.", &["router"])),
            router_in_band: reg!(r, IntGaugeVec::new(Opts::new("armwatch_router_in_band_decisions", "Routing decisions within the band around the threshold."), &["router"])),
            judge_log_e: reg!(r, g("armwatch_judge_score_shift_log_evalue", "Judge control-set score shift: log e-value of the two-sample mSPRT.", &["judge"])),
            judge_shift: reg!(r, g("armwatch_judge_control_shift_sd", "Judge control-set mean after the baseline minus baseline mean, in baseline sd.", &["judge"])),
            judge_cusum: reg!(r, g("armwatch_judge_control_cusum", "Two-sided CUSUM of standardized control-set scores (k = 0.5).", &["judge"])),
            judge_version_judgments: reg!(r, IntGaugeVec::new(Opts::new("armwatch_judge_version_judgments", "Judgments per judge and model version."), &["judge", "version"])),
            alerts_active: reg!(r, IntGaugeVec::new(Opts::new("armwatch_alerts_active", "Active alerts by check and experiment."), &["check", "experiment"])),
            alerts_fired: reg!(r, IntCounterVec::new(Opts::new("armwatch_alerts_fired_total", "Alerts fired, by check."), &["check"])),
            mismatch_log_e: reg!(r, g("armwatch_assignment_mismatch_log_evalue", "Assignment re-derivation: log e-value that the mismatch share of units exceeds the tolerance.", &["experiment"])),
            mismatch_ratio: reg!(r, g("armwatch_assignment_mismatch_ratio", "Share of checked units whose logged arm differs from the declared hash's.", &["experiment"])),
            candidate_agreement: reg!(r, g("armwatch_assignment_candidate_agreement_ratio", "Share of events whose logged arm the candidate key <declared key>:{input} reproduces.", &["experiment", "input"])),
            exposure_ratio: reg!(r, g("armwatch_multiple_exposure_ratio", "Estimated share of units seen in more than one arm, with its 95% interval: bound = estimate | lower | upper.", &["experiment", "bound"])),
            exposure_followed: reg!(r, IntGaugeVec::new(Opts::new("armwatch_multiple_exposure_followed_units", "Units followed by the consistent hash sample."), &["experiment"])),
            exposure_memory: reg!(r, IntGaugeVec::new(Opts::new("armwatch_multiple_exposure_sample_bytes", "Memory of the multiple-exposure sample."), &["experiment"])),
            mixed_clusters: reg!(r, IntGaugeVec::new(Opts::new("armwatch_cluster_mixed_clusters", "Clusters of a cluster-randomized experiment seen in more than one arm."), &["experiment"])),
            clusters: reg!(r, IntGaugeVec::new(Opts::new("armwatch_cluster_clusters", "Clusters seen per arm of a cluster-randomized experiment."), &["experiment", "arm"])),
            predictable_log_e: reg!(r, g("armwatch_arm_predictable_log_evalue", "Joint arm model: log e-value that the arm depends on the watched inputs (arm shares left free).", &["experiment"])),
            predictable_auc: reg!(r, g("armwatch_arm_predictable_auc", "Joint arm model: prequential AUC with its 95% interval: bound = estimate | lower | upper.", &["experiment", "bound"])),
            overflowed: reg!(r, IntGaugeVec::new(Opts::new("armwatch_label_values_overflowed", "Distinct label values refused by the label cap (aggregated as __other__ or not exported)."), &["label"])),
            processing: reg!(r, Histogram::with_opts(HistogramOpts::new("armwatch_processing_seconds", "Per-message decode and state update time (1 in 64 messages sampled).").buckets(vec![1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 5e-5, 1e-4, 1e-3]))),
            consumer_lag: reg!(r, IntGaugeVec::new(Opts::new("armwatch_consumer_lag_messages", "Consumer lag per partition (librdkafka statistics)."), &["topic", "partition"])),
            dead_letter: reg!(r, IntCounterVec::new(Opts::new("armwatch_dead_letter_total", "Rejected messages forwarded to the dead-letter topic, by result."), &["result"])),
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
            partitions_viewed: reg!(r, IntGauge::new("armwatch_partitions_viewed", "Other replicas' input partitions merged into this replica's report and metrics from their last checkpoints.")),
            last_publish: reg!(r, Gauge::new("armwatch_last_publish_timestamp_seconds", "When metrics were last published from the engine.")),
            publish_seconds: reg!(r, Histogram::with_opts(HistogramOpts::new("armwatch_publish_seconds", "Time to build the report, the metrics and their texts, per publish (every 500 ms, on the engine thread).").buckets(vec![1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]))),
            state_memory: reg!(r, IntGauge::new("armwatch_state_memory_bytes", "Estimated memory of the statistics (compared with limits.max_memory_bytes).")),
            memory_budget: reg!(r, IntGauge::new("armwatch_memory_budget_bytes", "limits.max_memory_bytes: past it, new experiments are refused (reason memory_limit).")),
            resident_memory: reg!(r, IntGauge::new("armwatch_process_resident_memory_bytes", "Resident set size of the process (/proc/self/status VmRSS).")),
            registry: r,
            caps: std::array::from_fn(|_| LabelCap::new(max_label_values)),
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
        m
    }

    /// The assignment-integrity figures of one experiment (label already admitted).
    fn publish_integrity(&mut self, exp: &str, e: &crate::report::ExperimentReport) {
        if let Some(a) = &e.assignment {
            self.mismatch_log_e
                .with_label_values(&[exp])
                .set(a.log_evalue);
            self.mismatch_ratio
                .with_label_values(&[exp])
                .set(a.mismatch_rate);
            for c in &a.candidates {
                if let Some(input) = self.caps[INPUT].admit(&c.input) {
                    let input = &*input;
                    self.candidate_agreement
                        .with_label_values(&[exp, input])
                        .set(c.agreement);
                }
            }
        }
        if let Some(x) = &e.multiple_exposure {
            set_interval(&self.exposure_ratio, exp, x.estimated_rate, x.interval_95);
            self.exposure_followed
                .with_label_values(&[exp])
                .set(x.followed_units as i64);
            self.exposure_memory
                .with_label_values(&[exp])
                .set(x.memory_bytes as i64);
        }
        if let Some(c) = &e.clusters {
            self.mixed_clusters
                .with_label_values(&[exp])
                .set(c.mixed as i64);
            for (arm, n) in e.arms.iter().zip(&c.clusters_per_arm) {
                if let Some(arm) = self.caps[ARM].admit(arm) {
                    let arm = &*arm;
                    self.clusters.with_label_values(&[exp, arm]).set(*n as i64);
                }
            }
        }
        if let Some(p) = &e.predictability {
            self.predictable_log_e
                .with_label_values(&[exp])
                .set(p.log_evalue);
            set_interval(&self.predictable_auc, exp, p.auc, p.auc_interval_95);
        }
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
            let exp = self.caps[EXP].admit(id);
            for (arm, &n) in e.arms.iter().zip(&e.counts) {
                let last = self.last_arm.entry((id.clone(), arm.clone())).or_insert(0);
                let d = n.saturating_sub(*last);
                *last = n;
                let arm_l = self.caps[ARM].admit(arm);
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
            let exp = &*exp;
            self.srm_log_e
                .with_label_values(&[exp])
                .set(e.srm.log_evalue);
            self.srm_p.with_label_values(&[exp]).set(e.srm.sequential_p);
            self.srm_chi2_p
                .with_label_values(&[exp])
                .set(e.srm.chi_square_p);
            self.publish_integrity(exp, e);
            for (input, values) in &e.substrates {
                for v in values {
                    for (arm, n) in e.arms.iter().zip(&v.events_per_arm) {
                        self.substrate
                            .with_label_values(&[exp, input, &v.value, arm])
                            .set(*n as i64);
                    }
                }
            }
            for (name, inp) in &e.inputs {
                let Some(input) = self.caps[INPUT].admit(name) else {
                    continue;
                };
                let input = &*input;
                self.div_log_e
                    .with_label_values(&[exp, input])
                    .set(inp.log_evalue);
                for (arm, d) in &inp.divergence {
                    let Some(arm) = self.caps[ARM].admit(arm) else {
                        continue;
                    };
                    let arm = &*arm;
                    self.div_kl.with_label_values(&[exp, input, arm]).set(d.kl);
                    self.div_js.with_label_values(&[exp, input, arm]).set(d.js);
                    self.div_psi
                        .with_label_values(&[exp, input, arm])
                        .set(d.psi);
                }
                for (arm, n) in inp.numeric.iter().flatten() {
                    if let (Some(smd), Some(arm)) = (n.smd, self.caps[ARM].admit(arm)) {
                        let arm = &*arm;
                        self.input_smd
                            .with_label_values(&[exp, input, arm])
                            .set(smd);
                    }
                }
            }
        }
        for (name, r) in &report.routers {
            let Some(router) = self.caps[INSTRUMENT].admit(name) else {
                continue;
            };
            let router = &*router;
            self.router_log_e
                .with_label_values(&[router])
                .set(r.compliance_log_evalue);
            self.router_share
                .with_label_values(&[router])
                .set(r.disagreement_share);
            self.router_in_band
                .with_label_values(&[router])
                .set(r.in_band as i64);
            if let Some(d) = &r.density {
                for (stat, v) in [("theta", d.theta), ("se", d.se), ("z", d.z), ("p", d.p)] {
                    self.router_density
                        .with_label_values(&[router, stat])
                        .set(v);
                }
            }
        }
        for (name, set) in report.sampling.iter().flat_map(|s| s.eval_sets.iter()) {
            let Some(set_l) = self.caps[INSTRUMENT].admit(name) else {
                continue;
            };
            let set_l = &*set_l;
            for (dim, f) in &set.dimensions {
                let Some(dim_l) = self.caps[INSTRUMENT].admit(dim) else {
                    continue;
                };
                let dim_l = &*dim_l;
                for (stat, v) in [
                    ("log_evalue", f.log_evalue),
                    ("js", f.js),
                    ("kl", f.kl),
                    ("uncovered_share", f.uncovered_share),
                ] {
                    self.sampling
                        .with_label_values(&[set_l, dim_l, stat])
                        .set(v);
                }
            }
        }
        for (name, j) in &report.judges {
            let Some(judge) = self.caps[INSTRUMENT].admit(name) else {
                continue;
            };
            let judge = &*judge;
            self.judge_log_e
                .with_label_values(&[judge])
                .set(j.log_evalue);
            self.judge_shift.with_label_values(&[judge]).set(j.shift_sd);
            self.judge_cusum.with_label_values(&[judge]).set(j.cusum);
            for v in &j.versions {
                self.judge_version_judgments
                    .with_label_values(&[judge, &v.version])
                    .set(v.judgments as i64);
            }
        }
        let mut active: BTreeMap<(Check, String), i64> = BTreeMap::new();
        let mut fired: BTreeMap<Check, u64> = BTreeMap::new();
        for a in &report.alerts {
            let exp = a.experiment.as_deref().map_or(String::new(), |e| {
                self.caps[EXP]
                    .admit(e)
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
                .set(self.caps[i].refused.len() as i64);
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
