//! Configuration: a TOML file overridable by `ARMWATCH__SECTION__KEY` environment variables
//! (the `config` crate), then validated so that a mistake stops startup with the key and the fix.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// A configuration problem, naming the key and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed, or a key has the wrong type or is unknown.
    #[error("config: {0}\n  fix: check the key's spelling and type against config/armwatch.toml")]
    Load(String),
    /// A key has a value that parses but is not allowed.
    #[error("config key `{key}`: {problem}\n  fix: {fix}")]
    Invalid {
        /// The dotted key path.
        key: String,
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
}

fn invalid(
    key: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Kafka source and dead-letter topic.
    #[serde(default)]
    pub kafka: KafkaSettings,
    /// Declared experiments (`[[experiment]]`).
    #[serde(default, rename = "experiment")]
    pub experiments: Vec<ExperimentSettings>,
    /// Alerting levels and sinks.
    #[serde(default)]
    pub alerts: AlertSettings,
    /// The HTTP endpoint.
    #[serde(default)]
    pub http: HttpSettings,
    /// Input and memory bounds.
    #[serde(default)]
    pub limits: LimitSettings,
    /// Logging.
    #[serde(default)]
    pub log: LogSettings,
    /// Metric export.
    #[serde(default)]
    pub metrics: MetricsSettings,
    /// Declared routers (`[[router]]`).
    #[serde(default, rename = "router")]
    pub routers: Vec<RouterSettings>,
    /// Declared judges (`[[judge]]`); judges are also discovered from events.
    #[serde(default, rename = "judge")]
    pub judges: Vec<JudgeSettings>,
    /// Eval-set sampling skew (`[sampling]`); without it, production is tracked from the
    /// first `sample` event on, in UTC, over hour-of-week only.
    #[serde(default)]
    pub sampling: Option<SamplingSettings>,
    /// OpenTelemetry input (`[otlp]`): OTLP/HTTP logs and traces mapped to the event contract
    /// and produced to the input topic.
    #[serde(default)]
    pub otlp: OtlpSettings,
}

/// `[otlp]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSettings {
    /// Where `armwatch run` receives OTLP/HTTP (`POST /v1/traces`, `/v1/logs`, protobuf or
    /// JSON, optionally gzip); off unless set (4318 is OTLP/HTTP's port).
    #[serde(default)]
    pub listen: Option<String>,
    /// The topic the mapped events are produced to (default: the first of `kafka.topics`).
    #[serde(default)]
    pub topic: Option<String>,
    /// Largest request body, compressed or not.
    #[serde(default = "default_otlp_body")]
    pub max_body_bytes: usize,
    /// Which attributes carry which field of the event contract.
    #[serde(default)]
    pub mapping: OtlpMapping,
}

impl Default for OtlpSettings {
    fn default() -> Self {
        OtlpSettings {
            listen: None,
            topic: None,
            max_body_bytes: default_otlp_body(),
            mapping: OtlpMapping::default(),
        }
    }
}

fn default_otlp_body() -> usize {
    4 << 20
}

/// `[otlp.mapping]`: per contract field, the attribute names that carry it, first present
/// wins (the record's or span event's own attributes, then its span's, then its resource's).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpMapping {
    /// The experiment (a feature flag's key).
    pub experiment: Vec<String>,
    /// The arm (the flag's variant).
    pub arm: Vec<String>,
    /// The randomization unit (the flag's evaluation context, the end user).
    pub unit: Vec<String>,
    /// The cluster.
    pub cluster: Vec<String>,
    /// A judgment's judge (the evaluation's name).
    pub judge: Vec<String>,
    /// A judgment's judge version (the model behind the evaluator); `unversioned` if absent.
    pub judge_version: Vec<String>,
    /// A judgment's score.
    pub score: Vec<String>,
    /// Whether a judgment is of a control-set item.
    pub control: Vec<String>,
    /// A routing decision's router (an `armwatch.routing` event: no semantic convention
    /// names routing decisions yet).
    pub router: Vec<String>,
    /// A routing decision's score.
    pub routing_score: Vec<String>,
    /// A routing decision's threshold (optional).
    pub threshold: Vec<String>,
    /// The route a decision took.
    pub route: Vec<String>,
    /// A sample's eval set (an `armwatch.sample` event).
    pub eval_set: Vec<String>,
    /// A sample's weight (optional).
    pub weight: Vec<String>,
    /// Input name -> attributes (e.g. `model = ["gen_ai.request.model"]`).
    pub inputs: BTreeMap<String, Vec<String>>,
    /// Every attribute under this prefix is also an input, named by the rest of its key
    /// (`armwatch.input.tier` -> `tier`); empty: none.
    pub input_prefix: String,
}

impl Default for OtlpMapping {
    fn default() -> Self {
        let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        OtlpMapping {
            experiment: v(&["feature_flag.key"]),
            arm: v(&["feature_flag.result.variant", "feature_flag.variant"]),
            unit: v(&["feature_flag.context.id", "enduser.id", "user.id"]),
            cluster: v(&["armwatch.cluster"]),
            judge: v(&["gen_ai.evaluation.name"]),
            judge_version: v(&["armwatch.judge_version", "gen_ai.evaluation.judge.version"]),
            score: v(&["gen_ai.evaluation.score.value"]),
            control: v(&["armwatch.control"]),
            router: v(&["armwatch.router"]),
            routing_score: v(&["armwatch.routing.score"]),
            threshold: v(&["armwatch.routing.threshold"]),
            route: v(&["armwatch.routing.route"]),
            eval_set: v(&["armwatch.eval_set"]),
            weight: v(&["armwatch.sample.weight"]),
            inputs: [
                ("model", "gen_ai.request.model"),
                ("temperature", "gen_ai.request.temperature"),
                ("max_tokens", "gen_ai.request.max_tokens"),
                ("top_p", "gen_ai.request.top_p"),
                // the service that logged it: SRM localization names a service where one arm
                // loses its exposures
                ("service", "service.name"),
            ]
            .into_iter()
            .map(|(k, a)| (k.to_string(), vec![a.to_string()]))
            .collect(),
            input_prefix: "armwatch.input.".into(),
        }
    }
}

/// `[sampling]`
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingSettings {
    /// IANA time zone for hour-of-week, e.g. `America/New_York`.
    #[serde(default)]
    pub timezone: TimeZone,
    /// Inputs whose values are compared between samples and production (e.g. `tier`).
    #[serde(default)]
    pub segments: Vec<String>,
    /// Numeric production input weighting the coverage figure (e.g. revenue).
    #[serde(default)]
    pub weight_input: Option<String>,
    /// Production events before the evidence starts (the reference must be estimated first).
    #[serde(default = "default_min_reference")]
    pub min_reference: u64,
    /// Minimum Jensen-Shannon distance for an alert.
    #[serde(default = "default_min_js")]
    pub min_js_distance: f64,
}

/// A secret read from a file: never printed (`Debug` shows `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A point in time given as RFC 3339 (`experiment.ends_at`), parsed once at load: epoch ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Instant(pub i64);

impl TryFrom<String> for Instant {
    type Error = String;
    fn try_from(s: String) -> Result<Instant, String> {
        chrono::DateTime::parse_from_rfc3339(&s)
            .map(|t| Instant(t.timestamp_millis()))
            .map_err(|_| format!("`{s}` is not an RFC 3339 time (e.g. \"2026-12-31T00:00:00Z\")"))
    }
}

/// An IANA time zone (`sampling.timezone`), parsed once at load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeZone(pub chrono_tz::Tz);

impl From<TimeZone> for String {
    fn from(t: TimeZone) -> String {
        t.0.name().to_string()
    }
}

impl Default for TimeZone {
    fn default() -> Self {
        TimeZone(chrono_tz::Tz::UTC)
    }
}

impl TryFrom<String> for TimeZone {
    type Error = String;
    fn try_from(s: String) -> Result<TimeZone, String> {
        s.parse::<chrono_tz::Tz>().map(TimeZone).map_err(|_| {
            format!("`{s}` is not an IANA time zone (e.g. \"America/New_York\" or \"UTC\")")
        })
    }
}

impl std::fmt::Display for TimeZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name())
    }
}
fn default_min_reference() -> u64 {
    1000
}
fn default_min_js() -> f64 {
    0.1
}

impl Default for SamplingSettings {
    fn default() -> Self {
        SamplingSettings {
            timezone: TimeZone::default(),
            segments: Vec::new(),
            weight_input: None,
            min_reference: default_min_reference(),
            min_js_distance: default_min_js(),
        }
    }
}

/// `[[router]]`: a score-threshold routing rule.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSettings {
    /// Router name as in events.
    pub name: String,
    /// The threshold (otherwise taken from the events' `threshold`).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// The route expected for `score < threshold`; any other route is expected above.
    #[serde(default)]
    pub below: Option<String>,
    /// Half-width of the band around the threshold where compliance is checked.
    #[serde(default = "default_band")]
    pub band: f64,
    /// Share of in-band decisions allowed to disagree with the rule.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// The range of scores, for the density test's fixed fine histogram (4096 bins).
    #[serde(default = "default_score_range")]
    pub score_range: [f64; 2],
    /// Minimum |ln f+ - ln f-| at the threshold for a `threshold_density` alert.
    #[serde(default = "default_min_log_ratio")]
    pub min_log_density_ratio: f64,
}

fn default_score_range() -> [f64; 2] {
    [0.0, 1.0]
}
fn default_min_log_ratio() -> f64 {
    0.1
}

fn default_band() -> f64 {
    0.05
}
fn default_tolerance() -> f64 {
    0.01
}

/// `[[judge]]`: a judge endpoint.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeSettings {
    /// Endpoint name as in events.
    pub name: String,
    /// Control-set judgments that form the baseline of the score-shift test.
    #[serde(default = "default_judge_baseline")]
    pub baseline: u64,
    /// Mixing standard deviation of the mSPRT, in baseline standard deviations.
    #[serde(default = "default_judge_tau")]
    pub tau_sd: f64,
    /// Minimum standardized shift (in baseline standard deviations) for an alert.
    #[serde(default = "default_judge_min_shift")]
    pub min_shift_sd: f64,
}

fn default_judge_baseline() -> u64 {
    200
}
fn default_judge_tau() -> f64 {
    0.5
}
fn default_judge_min_shift() -> f64 {
    0.1
}

impl JudgeSettings {
    /// Settings for a judge discovered from events.
    pub fn discovered(name: &str) -> JudgeSettings {
        JudgeSettings {
            name: name.to_string(),
            baseline: default_judge_baseline(),
            tau_sd: default_judge_tau(),
            min_shift_sd: default_judge_min_shift(),
        }
    }
}

/// `[kafka]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Consumer group.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Topics to consume.
    #[serde(default = "default_topics")]
    pub topics: Vec<String>,
    /// Passed through to librdkafka (consumer and producers). Also settable from the
    /// environment (`ARMWATCH_KAFKA_OPTION_SASL_PASSWORD=...` is `sasl.password`) and from
    /// files (`ARMWATCH_KAFKA_OPTION_SASL_PASSWORD_FILE=/path`, or `option_files` below), so
    /// that Kubernetes Secrets can carry credentials.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// librdkafka options read from files at startup: `{ "sasl.password" =
    /// "/var/run/secrets/kafka/password" }` (the file's content, trailing newline removed).
    #[serde(default)]
    pub option_files: BTreeMap<String, String>,
    /// Rejected messages are forwarded here when set.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Checkpoints of each input partition's state (`[kafka.checkpoint]`).
    #[serde(default)]
    pub checkpoint: CheckpointSettings,
    /// Events re-keyed by unit through an internal topic (`[kafka.repartition]`).
    #[serde(default)]
    pub repartition: RepartitionSettings,
}

/// `[kafka.repartition]`: when the input topics are not keyed by unit, each replica's router
/// re-produces every event to an internal topic partitioned by its unit (Kafka Streams'
/// repartition topic), and the engines consume that topic instead, so that a unit's events
/// meet in one partition's state. Each re-produced record names the input partition and
/// offset it came from; a partition's state keeps the highest input offset applied per input
/// partition and drops what it has already seen, so a router that re-produces after a crash
/// or a rebalance counts nothing twice.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepartitionSettings {
    /// Off: the engines consume the input topics directly.
    #[serde(default)]
    pub enabled: bool,
    /// The internal topic (created if missing). Default `<group_id>.armwatch-by-unit`.
    #[serde(default)]
    pub topic: Option<String>,
    /// Its partition count when it is created (the most engine replicas that share the work).
    #[serde(default = "default_repartition_partitions")]
    pub partitions: i32,
}

fn default_repartition_partitions() -> i32 {
    8
}

impl Default for RepartitionSettings {
    fn default() -> Self {
        RepartitionSettings {
            enabled: false,
            topic: None,
            partitions: default_repartition_partitions(),
        }
    }
}

/// `[kafka.checkpoint]`: the state of each assigned input partition, snapshotted to a
/// compacted topic with the next offset it covers, restored on assignment.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSettings {
    /// Off: the state lives only in memory (a restart starts from the committed offsets with
    /// empty statistics).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The state topic (compacted; created if missing). Default `<group_id>.armwatch-state`.
    #[serde(default)]
    pub topic: Option<String>,
    /// Milliseconds between periodic checkpoints (also taken on revoke, at shutdown and
    /// before an alert is delivered); longer when serializing the state takes more than a
    /// ninth of this (the interval is then nine times the serialization time), and a periodic
    /// checkpoint waits until the last one is durable (one round in flight).
    #[serde(default = "default_checkpoint_interval")]
    pub interval_ms: u64,
    /// Milliseconds between refreshes of the merged view: other replicas' partitions read
    /// from their checkpoints in the state topic and merged into this replica's report and
    /// metrics (0: this replica reports only the partitions it owns).
    #[serde(default = "default_view_interval")]
    pub view_interval_ms: u64,
    /// Threads that serialize the owned partitions' checkpoints (each partition's snapshot
    /// is its own; the engine thread waits for them; 1: the engine thread serializes); 0: as
    /// many as the CPUs this process may use (its cgroup's quota in a container), at most 16.
    #[serde(default)]
    pub engine_threads: usize,
}

impl CheckpointSettings {
    /// [`CheckpointSettings::engine_threads`], 0 resolved.
    pub fn threads(&self) -> usize {
        match self.engine_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(16)),
            n => n,
        }
    }
}

fn default_view_interval() -> u64 {
    10_000
}

fn yes() -> bool {
    true
}
fn default_checkpoint_interval() -> u64 {
    5_000
}

impl Default for CheckpointSettings {
    fn default() -> Self {
        CheckpointSettings {
            enabled: true,
            topic: None,
            interval_ms: default_checkpoint_interval(),
            view_interval_ms: default_view_interval(),
            engine_threads: 0,
        }
    }
}

/// Environment variables that set one librdkafka option each.
pub const OPTION_ENV_PREFIX: &str = "ARMWATCH_KAFKA_OPTION_";

impl KafkaSettings {
    /// Fold the options from files (`option_files`) and from the environment (`vars`:
    /// `ARMWATCH_KAFKA_OPTION_<NAME>` sets option `<name>` with `_` read as `.`, and
    /// `..._FILE` sets it from a file) into `options`; the environment wins over the file,
    /// which wins over `options`. `read` reads a file.
    pub fn resolve_options(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
        read: impl Fn(&str) -> std::io::Result<String>,
    ) -> Result<(), ConfigError> {
        let read_file = |key: &str, path: &str| {
            read(path)
                .map(|v| v.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| {
                    invalid(
                        key,
                        format!("cannot read `{path}`: {e}"),
                        "mount the secret at that path, or fix the path",
                    )
                })
        };
        for (name, path) in std::mem::take(&mut self.option_files) {
            let v = read_file(&format!("kafka.option_files.{name}"), &path)?;
            self.options.insert(name, v);
        }
        let mut from_env: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with(OPTION_ENV_PREFIX) && k.len() > OPTION_ENV_PREFIX.len())
            .collect();
        // plain values after files, so that an explicit value wins
        from_env.sort_by_key(|(k, _)| !k.ends_with("_FILE"));
        for (var, v) in from_env {
            let rest = &var[OPTION_ENV_PREFIX.len()..];
            let (name, v) = match rest.strip_suffix("_FILE") {
                Some(n) if !n.is_empty() => (n, read_file(&var, &v)?),
                _ => (rest, v),
            };
            self.options
                .insert(name.to_ascii_lowercase().replace('_', "."), v);
        }
        Ok(())
    }

    /// The state topic: `checkpoint.topic`, else `<group_id>.armwatch-state`.
    pub fn state_topic(&self) -> String {
        self.checkpoint
            .topic
            .clone()
            .unwrap_or_else(|| format!("{}.armwatch-state", self.group_id))
    }

    /// The repartition topic: `repartition.topic`, else `<group_id>.armwatch-by-unit`.
    pub fn repartition_topic(&self) -> String {
        self.repartition
            .topic
            .clone()
            .unwrap_or_else(|| format!("{}.armwatch-by-unit", self.group_id))
    }

    /// The topics the engines consume: the repartition topic when re-keying, else the inputs.
    pub fn engine_topics(&self) -> Vec<String> {
        if self.repartition.enabled {
            vec![self.repartition_topic()]
        } else {
            self.topics.clone()
        }
    }

    /// The consumer group of the routers (`<group_id>.router`): they share the input
    /// partitions among themselves, as the engines share the repartition topic's.
    pub fn router_group(&self) -> String {
        format!("{}.router", self.group_id)
    }
}

fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_group() -> String {
    "armwatch".into()
}
fn default_topics() -> Vec<String> {
    vec!["llm.events".into()]
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: default_brokers(),
            group_id: default_group(),
            topics: default_topics(),
            options: BTreeMap::new(),
            option_files: BTreeMap::new(),
            dead_letter_topic: None,
            checkpoint: CheckpointSettings::default(),
            repartition: RepartitionSettings::default(),
        }
    }
}

/// `[[experiment]]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSettings {
    /// Experiment id as it appears in events.
    pub id: String,
    /// Design weights per arm (must sum to 1).
    pub arms: BTreeMap<String, f64>,
    /// Inputs the treatment is meant to change: not watched for divergence.
    #[serde(default)]
    pub treatment_inputs: Vec<String>,
    /// When set, only these inputs are watched (otherwise every other input is).
    #[serde(default)]
    pub watch_inputs: Option<Vec<String>>,
    /// Bin edges for numeric inputs (otherwise half-octave bins).
    #[serde(default)]
    pub numeric_bins: BTreeMap<String, Vec<f64>>,
    /// Inputs that name the substrate (e.g. `embedding_model`, `model`, `retriever_index`): a
    /// new value while the experiment runs is a `substrate_change`.
    #[serde(default)]
    pub substrate_inputs: Vec<String>,
    /// What was randomized: each `unit`, or each `cluster` (e.g. a workspace) as a whole. In a
    /// cluster experiment the cluster is the unit of the SRM and divergence tests.
    #[serde(default)]
    pub unit_of_assignment: UnitOfAssignment,
    /// How the assignment service hashes units into arms, re-derived per event
    /// (`assignment_mismatch`).
    #[serde(default)]
    pub assignment: Option<AssignmentSettings>,
    /// When the experiment ends (RFC 3339): from then on its alerts are resolved (Alertmanager
    /// gets their `endsAt`); its statistics go on being reported. Not part of the design: moving
    /// it keeps the statistics.
    #[serde(default)]
    pub ends_at: Option<Instant>,
    /// Later designs (`[[experiment.phases]]`): a ramp (10/90 -> 50/50), a paused arm. Each
    /// phase is monitored as an experiment of its own, `<id>/<phase>`, against its own design.
    #[serde(default)]
    pub phases: Vec<PhaseSettings>,
    /// The name of the phase before the first of `phases` (design: `arms`).
    #[serde(default = "default_initial_phase")]
    pub initial_phase: String,
    /// Set when the declaration is one phase of a phased experiment (by [`Settings`]' load,
    /// which expands each phased experiment into one declaration per phase).
    #[serde(skip)]
    pub phase: Option<PhaseOf>,
}

impl ExperimentSettings {
    /// The declaration in force during phase `p`: its arms and, with an assignment, its ranges.
    fn phase_settings(&self, p: &PhaseSettings) -> ExperimentSettings {
        ExperimentSettings {
            arms: p.arms.clone(),
            assignment: self
                .assignment
                .as_ref()
                .map(|a| self.phase_assignment(a, p)),
            ..self.clone()
        }
    }

    /// The assignment in force during phase `p`.
    fn phase_assignment(&self, a: &AssignmentSettings, p: &PhaseSettings) -> AssignmentSettings {
        let mut a = a.clone();
        if !p.ranges.is_empty() {
            a.ranges = p.ranges.clone();
        } else {
            a.ranges.retain(|arm, _| p.arms.contains_key(arm));
        }
        a
    }
}

fn default_initial_phase() -> String {
    "start".into()
}

/// `[[experiment.phases]]`: from `from` on, the experiment's design is `arms`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSettings {
    /// Its name (`[A-Za-z0-9_.-]`): the phase is reported as experiment `<id>/<name>`.
    pub name: String,
    /// When it starts (RFC 3339, event time).
    pub from: Instant,
    /// Its design weights: a subset of the experiment's arms (an arm left out is paused),
    /// summing to 1.
    pub arms: BTreeMap<String, f64>,
    /// With a declared `assignment`: the phase's bucket ranges per arm (a ramp moves them);
    /// otherwise the experiment's.
    #[serde(default)]
    pub ranges: BTreeMap<String, [u64; 2]>,
}

/// Which phase of which experiment a declaration is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseOf {
    /// The experiment's id (as events name it).
    pub experiment: String,
    /// The phase's name.
    pub name: String,
    /// Its first event time (epoch ms; `i64::MIN` for the initial phase).
    pub from_ms: i64,
    /// How many phases the experiment has: each is tested at `alpha / phases`, so the
    /// experiment as a whole keeps `alpha`.
    pub phases: u32,
}

/// `unit_of_assignment`
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnitOfAssignment {
    /// Each unit (user) is randomized on its own.
    #[default]
    Unit,
    /// Each cluster is randomized as a whole.
    Cluster,
}

/// `[experiment.assignment]`: the declared hash assignment.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentSettings {
    /// `xxh3_64` or `xxh64`.
    #[serde(default = "default_hash")]
    pub hash: crate::state::assignment::HashFn,
    /// Hash seed.
    #[serde(default)]
    pub seed: u64,
    /// Substituted for `{salt}` in the key.
    pub salt: String,
    /// The bytes hashed (UTF-8), with `{salt}`, `{unit}`, `{cluster}`, `{input.NAME}`.
    #[serde(default = "default_key")]
    pub key: crate::state::assignment::Template,
    /// `bucket = hash % buckets`.
    pub buckets: u64,
    /// `[start, end)` buckets per arm.
    pub ranges: BTreeMap<String, [u64; 2]>,
    /// Mismatch rate tolerated (e.g. manual overrides) before alerting.
    #[serde(default = "default_mismatch_tolerance")]
    pub tolerance: f64,
}

fn default_hash() -> crate::state::assignment::HashFn {
    crate::state::assignment::HashFn::Xxh3_64
}
fn default_key() -> crate::state::assignment::Template {
    crate::state::assignment::Template::default_key()
}
fn default_mismatch_tolerance() -> f64 {
    0.001
}

/// `[alerts]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// Anytime-valid level per check (split over the watched inputs of an experiment).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dirichlet concentration grid of the e-processes (an equal-weight mixture).
    #[serde(default = "default_k_grid")]
    pub k_grid: Vec<f64>,
    /// Minimum arm-share deviation (absolute) for an SRM or divergence alert.
    #[serde(default = "default_min_dev")]
    pub min_share_deviation: f64,
    /// Alertmanager v2 endpoint, e.g. `http://127.0.0.1:9093/api/v2/alerts` or `https://...`.
    #[serde(default)]
    pub webhook: Option<String>,
    /// More Alertmanager endpoints, each a sink of its own (its own queue and retries).
    #[serde(default)]
    pub webhooks: Vec<String>,
    /// PEM file of the CA that signed the webhook's certificate, when it is not a public one
    /// (added to the system's roots).
    #[serde(default)]
    pub webhook_ca_file: Option<String>,
    /// The PEM of `webhook_ca_file`, read and checked once at load.
    #[serde(skip)]
    pub webhook_ca: Option<Vec<u8>>,
    /// Alerts each delivering sink (Kafka, each webhook) may hold, queued or being retried;
    /// past it an alert is dropped for that sink, counted and logged (and, not acknowledged,
    /// delivered again after a restart with checkpoints).
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// `severity` label per check name (the rest: `critical` for the checks whose alert means
    /// the result is wrong, `warning` for instruments and deterministic changes).
    #[serde(default)]
    pub severity: BTreeMap<String, String>,
    /// `runbook_url` annotation of Alertmanager alerts; `{check}`, `{experiment}` and
    /// `{subject}` are filled in.
    #[serde(default)]
    pub runbook_url: Option<String>,
    /// `dashboard_url` annotation (same placeholders).
    #[serde(default)]
    pub dashboard_url: Option<String>,
    /// The URL armwatch is reached at, for `generatorURL` (default `http://<http.listen>`).
    #[serde(default)]
    pub external_url: Option<String>,
    /// Kafka topic for alerts.
    #[serde(default)]
    pub kafka_topic: Option<String>,
    /// How often active alerts are re-sent to Alertmanager (it expires silent ones).
    #[serde(default = "default_resend")]
    pub resend_interval_secs: u64,
    /// Share of units seen in more than one arm that makes `multiple_exposure` alert.
    #[serde(default = "default_exposure_rate")]
    pub multiple_exposure_rate: f64,
    /// `arm_predictable` needs the prequential AUC to exceed 0.5 by at least this much.
    #[serde(default = "default_auc_margin")]
    pub min_auc_margin: f64,
}

fn default_queue_capacity() -> usize {
    10_000
}
fn default_exposure_rate() -> f64 {
    0.01
}
fn default_auc_margin() -> f64 {
    0.02
}

fn default_alpha() -> f64 {
    0.001
}
fn default_k_grid() -> Vec<f64> {
    vec![10.0, 100.0, 1000.0, 10000.0]
}
fn default_min_dev() -> f64 {
    0.005
}
fn default_resend() -> u64 {
    60
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            alpha: default_alpha(),
            k_grid: default_k_grid(),
            min_share_deviation: default_min_dev(),
            webhook: None,
            webhooks: Vec::new(),
            webhook_ca_file: None,
            webhook_ca: None,
            queue_capacity: default_queue_capacity(),
            severity: BTreeMap::new(),
            runbook_url: None,
            dashboard_url: None,
            external_url: None,
            kafka_topic: None,
            resend_interval_secs: default_resend(),
            multiple_exposure_rate: default_exposure_rate(),
            min_auc_margin: default_auc_margin(),
        }
    }
}

/// `[http]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Listen address for /metrics, /healthz, /readyz, /api/v1/report. Loopback by default:
    /// exposing it (e.g. `0.0.0.0:9898` in a pod) is a choice.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Show unit ids, cluster names and input values in `/api/v1/*` (otherwise each is replaced
    /// by a pseudonym, `~` and 8 hex digits of its hash, the same wherever it appears).
    #[serde(default)]
    pub report_values: bool,
    /// A file holding a bearer token that `/api/v1/*` requires (`Authorization: Bearer ...`);
    /// `/metrics` and the probes stay open.
    #[serde(default)]
    pub report_token_file: Option<String>,
    /// The token of `report_token_file`, read and checked once at load.
    #[serde(skip)]
    pub report_token: Option<Secret>,
    /// Connections served at once; more are closed at once (the probes keep working under a
    /// flood of idle connections, which the header timeout also closes).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Milliseconds a connection may take to send a request's headers (and may stay idle
    /// between requests).
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: u64,
}

fn default_listen() -> String {
    "127.0.0.1:9898".into()
}
fn default_max_connections() -> usize {
    256
}
fn default_header_timeout() -> u64 {
    5_000
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: default_listen(),
            report_values: false,
            report_token_file: None,
            report_token: None,
            max_connections: default_max_connections(),
            header_timeout_ms: default_header_timeout(),
        }
    }
}

/// `[limits]`: every bound that keeps memory flat.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Larger messages are rejected as `oversized`.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// More inputs than this are rejected as `too_many_inputs`.
    #[serde(default = "default_max_inputs_event")]
    pub max_inputs_per_event: usize,
    /// Experiments tracked at most; new ones beyond are rejected as `experiment_limit`.
    #[serde(default = "default_max_experiments")]
    pub max_experiments: usize,
    /// Watched inputs per experiment at most (also the Bonferroni divisor when the
    /// experiment does not list `watch_inputs`).
    #[serde(default = "default_max_inputs_exp")]
    pub max_inputs_per_experiment: usize,
    /// Exactly tracked values per input; the rest share one pooled stratum.
    #[serde(default = "default_max_strata")]
    pub max_strata_per_input: usize,
    /// Arms per undeclared experiment at most.
    #[serde(default = "default_max_arms")]
    pub max_arms: usize,
    /// Units (first exposures) counted per experiment: exact while the exposure sample follows
    /// every unit, then a scalable Bloom filter (~2 bytes per unit, ~1% false positives).
    #[serde(default = "default_units")]
    pub units_per_experiment: u64,
    /// Units followed per experiment for `multiple_exposure` (a consistent hash sample that
    /// halves when full), and clusters followed for `cluster_mixed`.
    #[serde(default = "default_exposure_sample")]
    pub exposure_sample_units: usize,
    /// Units followed across experiments for `overlap_dependence` (a consistent sample: past
    /// it the sample halves).
    #[serde(default = "default_overlap_sample")]
    pub overlap_sample_units: usize,
    /// Pairs of experiments tested for `overlap_dependence` (also its Bonferroni divisor).
    #[serde(default = "default_max_overlap_pairs")]
    pub max_overlap_pairs: usize,
    /// Memory budget of the statistics (estimated from the structures' sizes): past it, new
    /// experiments are refused as `memory_limit`. Set it to about 3/4 of the container's
    /// memory limit.
    #[serde(default = "default_max_memory")]
    pub max_memory_bytes: u64,
    /// The watermark: an event whose time is more than this many milliseconds behind the
    /// latest event time its partition has counted is refused as `late` (counted, never mixed
    /// into the statistics of a time it no longer belongs to); one more than this far ahead of
    /// the wall clock is refused as `invalid_ts` (it would drag the watermark along). 0: off.
    #[serde(default = "default_max_lateness")]
    pub max_event_lateness_ms: u64,
}

fn default_max_lateness() -> u64 {
    86_400_000
}
fn default_max_memory() -> u64 {
    512 * 1024 * 1024
}

fn default_exposure_sample() -> usize {
    65_536
}

fn default_units() -> u64 {
    1_000_000
}

fn default_max_message() -> usize {
    64 * 1024
}
fn default_max_inputs_event() -> usize {
    64
}
fn default_overlap_sample() -> usize {
    65_536
}

fn default_max_overlap_pairs() -> usize {
    256
}

fn default_max_experiments() -> usize {
    1000
}
fn default_max_inputs_exp() -> usize {
    16
}
fn default_max_strata() -> usize {
    64
}
fn default_max_arms() -> usize {
    16
}

impl LimitSettings {
    /// The decoder's limits.
    pub fn decode(&self) -> crate::event::Limits {
        crate::event::Limits {
            max_message_bytes: self.max_message_bytes,
            max_inputs_per_event: self.max_inputs_per_event,
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_message_bytes: default_max_message(),
            max_inputs_per_event: default_max_inputs_event(),
            max_experiments: default_max_experiments(),
            max_inputs_per_experiment: default_max_inputs_exp(),
            max_strata_per_input: default_max_strata(),
            max_arms: default_max_arms(),
            units_per_experiment: default_units(),
            exposure_sample_units: default_exposure_sample(),
            overlap_sample_units: default_overlap_sample(),
            max_overlap_pairs: default_max_overlap_pairs(),
            max_memory_bytes: default_max_memory(),
            max_event_lateness_ms: default_max_lateness(),
        }
    }
}

/// `[log]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `armwatch=debug`.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// Rejected messages logged per second at most (the rest are only counted).
    #[serde(default = "default_reject_log_rate")]
    pub rejected_per_second: u32,
}

/// `log.format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl TryFrom<String> for LogFormat {
    type Error = String;
    fn try_from(s: String) -> Result<LogFormat, String> {
        match s.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "`{s}` is neither text nor json (use \"text\" or \"json\")"
            )),
        }
    }
}
fn default_log_level() -> String {
    "info".into()
}
fn default_reject_log_rate() -> u32 {
    5
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: default_log_level(),
            rejected_per_second: default_reject_log_rate(),
        }
    }
}

/// `[metrics]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Distinct label values per label (experiment, input, value) before `__other__`.
    #[serde(default = "default_max_labels")]
    pub max_label_values: usize,
}

fn default_max_labels() -> usize {
    100
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            max_label_values: default_max_labels(),
        }
    }
}

impl Settings {
    /// The settings of one of `partitions` partition-owned engines: each tests at
    /// `alerts.alpha / partitions` (Bonferroni), so that the stream's checks, raised partition
    /// by partition, still alarm falsely with probability at most `alpha` each (P partitions at
    /// alpha each would be up to P times that under the null). The unit samples' caps
    /// (`limits.exposure_sample_units`, `limits.overlap_sample_units`) are shared the same way,
    /// as the memory budget is: a unit's events meet in one partition, so each partition's
    /// sample fills with its share of the units, the merged view holds as many as one engine
    /// would, and a replica of P partitions does not follow P times the units (measured:
    /// `cargo bench --bench partitions`, the exposure samples of one experiment on four
    /// partitions took 4.7 MB against 0.6 MB on one engine).
    pub fn for_partitions(&self, partitions: usize) -> Settings {
        let p = partitions.max(1);
        let mut s = self.clone();
        s.alerts.alpha /= p as f64;
        s.limits.exposure_sample_units = (s.limits.exposure_sample_units / p).max(1);
        s.limits.overlap_sample_units = (s.limits.overlap_sample_units / p).max(1);
        s
    }

    /// Load `path` (TOML) with `ARMWATCH__...` environment overrides, then validate.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        if !path.exists() {
            return Err(invalid(
                "--config",
                format!("file {} does not exist", path.display()),
                "pass the path of a TOML file, e.g. config/armwatch.toml",
            ));
        }
        let builder = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("ARMWATCH")
                    .prefix_separator("__")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("kafka.topics")
                    .with_list_parse_key("alerts.k_grid")
                    .try_parsing(true),
            );
        let mut s = Self::from_builder(builder)?;
        s.kafka
            .resolve_options(std::env::vars(), |p| std::fs::read_to_string(p))?;
        Ok(s)
    }

    /// Parse a TOML string (no environment overrides), then validate.
    pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        let builder = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml));
        Self::from_builder(builder)
    }

    fn from_builder(
        builder: config::ConfigBuilder<config::builder::DefaultState>,
    ) -> Result<Settings, ConfigError> {
        let cfg = builder
            .build()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        let mut s: Settings = cfg
            .try_deserialize()
            .map_err(|e| ConfigError::Load(dotted_paths(&e.to_string())))?;
        s.read_files()?;
        s.validate()?;
        s.expand_phases()?;
        Ok(s)
    }

    /// Read the files the configuration names (the report's token, the webhook's CA) once,
    /// into their fields, checking what they hold.
    fn read_files(&mut self) -> Result<(), ConfigError> {
        let read = |key: &str, path: &str, fix: &str| {
            std::fs::read(path).map_err(|e| invalid(key, format!("cannot read `{path}`: {e}"), fix))
        };
        if let Some(path) = &self.http.report_token_file {
            let t = read(
                "http.report_token_file",
                path,
                "mount the token's Secret at that path, or remove the key",
            )?;
            let t = String::from_utf8_lossy(&t).trim().to_string();
            if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    "http.report_token_file",
                    format!("`{path}` does not hold a token of at least 16 printable characters"),
                    "e.g. head -c 24 /dev/urandom | base64 > token",
                ));
            }
            self.http.report_token = Some(Secret(t));
        }
        if let Some(path) = &self.alerts.webhook_ca_file {
            let pem = read(
                "alerts.webhook_ca_file",
                path,
                "mount the CA's PEM file at that path, or remove the key to trust the system's CAs",
            )?;
            if reqwest::Certificate::from_pem_bundle(&pem).map_or(true, |c| c.is_empty()) {
                return Err(invalid(
                    "alerts.webhook_ca_file",
                    format!("`{path}` holds no PEM certificate"),
                    "point it at the CA certificate (-----BEGIN CERTIFICATE-----)",
                ));
            }
            self.alerts.webhook_ca = Some(pem);
        }
        Ok(())
    }

    /// Check values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let a = &self.alerts;
        if !(a.alpha > 0.0 && a.alpha < 1.0) {
            return Err(invalid(
                "alerts.alpha",
                format!("{} is not in (0, 1)", a.alpha),
                "use a small level such as 0.001",
            ));
        }
        if a.k_grid.is_empty() || a.k_grid.iter().any(|k| !(k.is_finite() && *k > 0.0)) {
            return Err(invalid(
                "alerts.k_grid",
                "must be a non-empty list of positive numbers",
                "e.g. k_grid = [10, 100, 1000, 10000]",
            ));
        }
        if !(0.0..1.0).contains(&a.min_share_deviation) {
            return Err(invalid(
                "alerts.min_share_deviation",
                "must be in [0, 1)",
                "e.g. 0.005 (half a percentage point)",
            ));
        }
        if !(a.multiple_exposure_rate > 0.0 && a.multiple_exposure_rate < 1.0) {
            return Err(invalid(
                "alerts.multiple_exposure_rate",
                format!("{} is not in (0, 1)", a.multiple_exposure_rate),
                "e.g. 0.01 (1% of units in more than one arm)",
            ));
        }
        if !(0.0..0.5).contains(&a.min_auc_margin) {
            return Err(invalid(
                "alerts.min_auc_margin",
                format!("{} is not in [0, 0.5)", a.min_auc_margin),
                "e.g. 0.02 (alert only when the AUC exceeds 0.52)",
            ));
        }
        let urls = a.webhook.iter().map(|u| ("alerts.webhook", u));
        let more = a.webhooks.iter().map(|u| ("alerts.webhooks", u));
        let external = a.external_url.iter().map(|u| ("alerts.external_url", u));
        for (key, url) in urls.chain(more).chain(external) {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    key,
                    format!("`{url}` is not an http:// or https:// URL"),
                    "e.g. http://alertmanager:9093/api/v2/alerts, or https://... with alerts.webhook_ca_file for a private CA",
                ));
            }
        }
        if a.queue_capacity == 0 {
            return Err(invalid(
                "alerts.queue_capacity",
                "is 0",
                "e.g. queue_capacity = 10000",
            ));
        }
        for (check, sev) in &a.severity {
            if !crate::check::Check::ALL.iter().any(|c| c.as_str() == check) {
                return Err(invalid(
                    format!("alerts.severity.{check}"),
                    format!("`{check}` is not a check"),
                    format!(
                        "use one of: {}",
                        crate::check::Check::ALL
                            .iter()
                            .map(|c| c.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            if sev.is_empty() || !sev.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(invalid(
                    format!("alerts.severity.{check}"),
                    format!("`{sev}` is not a label value"),
                    "e.g. critical, warning or info",
                ));
            }
        }
        if self.kafka.brokers.trim().is_empty() {
            return Err(invalid(
                "kafka.brokers",
                "is empty",
                "e.g. brokers = \"kafka-0:9092,kafka-1:9092\"",
            ));
        }
        if self.kafka.topics.is_empty() || self.kafka.topics.iter().any(|t| t.trim().is_empty()) {
            return Err(invalid(
                "kafka.topics",
                "must list at least one non-empty topic",
                "e.g. topics = [\"llm.events\"]",
            ));
        }
        let c = &self.kafka.checkpoint;
        if c.interval_ms < 100 {
            return Err(invalid(
                "kafka.checkpoint.interval_ms",
                format!(
                    "{} ms is too short (every checkpoint writes the state)",
                    c.interval_ms
                ),
                "use a few seconds, e.g. interval_ms = 5000",
            ));
        }
        if c.engine_threads > 64 {
            return Err(invalid(
                "kafka.checkpoint.engine_threads",
                format!(
                    "{} threads is more than any partition count needs",
                    c.engine_threads
                ),
                "use the CPUs the daemon may use, or 0 to take them from the machine or container",
            ));
        }
        if c.view_interval_ms != 0 && c.view_interval_ms < 100 {
            return Err(invalid(
                "kafka.checkpoint.view_interval_ms",
                format!(
                    "{} ms is too short (each refresh decodes other replicas' changed checkpoints)",
                    c.view_interval_ms
                ),
                "use seconds, e.g. view_interval_ms = 10000, or 0 to report only owned partitions",
            ));
        }
        if let Some(t) = &c.topic {
            if t.is_empty()
                || !t
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'))
                || self.kafka.topics.contains(t)
            {
                return Err(invalid(
                    "kafka.checkpoint.topic",
                    format!("`{t}` is not a usable state topic (Kafka topic characters only, and not an input topic)"),
                    "leave it unset for `<group_id>.armwatch-state`, or name a topic of its own",
                ));
            }
        }
        let r = &self.kafka.repartition;
        if r.enabled {
            if !c.enabled {
                return Err(invalid(
                    "kafka.repartition.enabled",
                    "re-keying needs checkpoints: the state of each repartition partition keeps the input offsets it has applied (its deduplication), and only a checkpoint keeps them across restarts",
                    "set kafka.checkpoint.enabled = true, or key the input topics by unit and leave repartition off",
                ));
            }
            if !(1..=1024).contains(&r.partitions) {
                return Err(invalid(
                    "kafka.repartition.partitions",
                    format!("{} partitions", r.partitions),
                    "use 1 to 1024, e.g. partitions = 8 (at least the number of replicas)",
                ));
            }
            let t = self.kafka.repartition_topic();
            if t.is_empty()
                || !t
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'))
                || self.kafka.topics.contains(&t)
                || t == self.kafka.state_topic()
            {
                return Err(invalid(
                    "kafka.repartition.topic",
                    format!("`{t}` is not a usable repartition topic (Kafka topic characters only, not an input topic, not the state topic)"),
                    "leave it unset for `<group_id>.armwatch-by-unit`, or name a topic of its own",
                ));
            }
        }
        if self.http.max_connections < 4 {
            return Err(invalid(
                "http.max_connections",
                format!(
                    "{} leaves no room for the probes and a scrape",
                    self.http.max_connections
                ),
                "e.g. max_connections = 256",
            ));
        }
        if self.http.header_timeout_ms < 100 {
            return Err(invalid(
                "http.header_timeout_ms",
                format!(
                    "{} ms is too short for a client to send a request",
                    self.http.header_timeout_ms
                ),
                "e.g. header_timeout_ms = 5000",
            ));
        }
        if self.kafka.group_id.trim().is_empty() {
            return Err(invalid(
                "kafka.group_id",
                "is empty",
                "e.g. group_id = \"armwatch\"",
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid(
                "log.level",
                format!("`{}` is not a tracing filter: {e}", self.log.level),
                "e.g. level = \"info\" or \"armwatch=debug,rdkafka=warn\"",
            ));
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_message_bytes", l.max_message_bytes),
            ("limits.max_inputs_per_event", l.max_inputs_per_event),
            ("limits.max_experiments", l.max_experiments),
            (
                "limits.max_inputs_per_experiment",
                l.max_inputs_per_experiment,
            ),
            ("limits.max_strata_per_input", l.max_strata_per_input),
            ("limits.max_arms", l.max_arms),
            (
                "limits.units_per_experiment",
                l.units_per_experiment as usize,
            ),
            ("metrics.max_label_values", self.metrics.max_label_values),
            ("limits.exposure_sample_units", l.exposure_sample_units),
            ("limits.overlap_sample_units", l.overlap_sample_units),
            ("limits.max_overlap_pairs", l.max_overlap_pairs),
            ("limits.max_memory_bytes", l.max_memory_bytes as usize),
        ] {
            if v == 0 {
                return Err(invalid(
                    key,
                    "must be at least 1",
                    "remove the key to use the default",
                ));
            }
        }
        if l.units_per_experiment > 1_000_000_000 {
            return Err(invalid(
                "limits.units_per_experiment",
                "is above 1e9 (about 1.2 GB per experiment)",
                "lower it; the filter is allocated per experiment",
            ));
        }
        if l.max_inputs_per_experiment > 64 {
            return Err(invalid(
                "limits.max_inputs_per_experiment",
                "must be at most 64",
                "watch fewer inputs per experiment",
            ));
        }
        for (i, r) in self.routers.iter().enumerate() {
            let key = format!("router[{i}]");
            if r.name.is_empty() {
                return Err(invalid(
                    format!("{key}.name"),
                    "is empty",
                    "give the router name used in events",
                ));
            }
            if r.threshold.is_some_and(|t| !t.is_finite()) {
                return Err(invalid(
                    format!("{key}.threshold"),
                    "is not finite",
                    "e.g. threshold = 0.85",
                ));
            }
            if !(r.band.is_finite() && r.band > 0.0) {
                return Err(invalid(
                    format!("{key}.band"),
                    "must be positive",
                    "e.g. band = 0.05",
                ));
            }
            if !(r.score_range[0].is_finite()
                && r.score_range[1].is_finite()
                && r.score_range[0] < r.score_range[1])
            {
                return Err(invalid(
                    format!("{key}.score_range"),
                    "must be [low, high] with low < high",
                    "e.g. score_range = [0.0, 1.0]",
                ));
            }
            if !(r.tolerance > 0.0 && r.tolerance < 1.0) {
                return Err(invalid(
                    format!("{key}.tolerance"),
                    "must be in (0, 1)",
                    "e.g. tolerance = 0.01",
                ));
            }
        }
        for (i, j) in self.judges.iter().enumerate() {
            let key = format!("judge[{i}]");
            if j.name.is_empty() {
                return Err(invalid(
                    format!("{key}.name"),
                    "is empty",
                    "give the judge endpoint name used in events",
                ));
            }
            if j.baseline < 10 {
                return Err(invalid(
                    format!("{key}.baseline"),
                    "must be at least 10",
                    "e.g. baseline = 200 control judgments",
                ));
            }
            if !(j.tau_sd > 0.0 && j.tau_sd.is_finite()) {
                return Err(invalid(
                    format!("{key}.tau_sd"),
                    "must be positive",
                    "e.g. tau_sd = 0.5",
                ));
            }
        }
        if let Some(s) = &self.sampling {
            if s.segments.len() > 8 {
                return Err(invalid(
                    "sampling.segments",
                    "lists more than 8 inputs",
                    "compare at most 8 segment inputs",
                ));
            }
        }
        if let Some(l) = &self.otlp.listen {
            if l.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(
                    "otlp.listen",
                    format!("`{l}` is not an address"),
                    "e.g. listen = \"0.0.0.0:4318\" (OTLP/HTTP's port), or remove it",
                ));
            }
        }
        let m = &self.otlp.mapping;
        for (key, list) in [
            ("otlp.mapping.experiment", &m.experiment),
            ("otlp.mapping.arm", &m.arm),
            ("otlp.mapping.judge", &m.judge),
            ("otlp.mapping.score", &m.score),
        ] {
            if list.iter().all(|a| a.is_empty()) {
                return Err(invalid(
                    key,
                    "names no attribute",
                    "list the attribute names that carry it, e.g. [\"feature_flag.key\"], or leave the key out for the default",
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, e) in self.experiments.iter().enumerate() {
            let key = format!("experiment[{i}]");
            if e.id.is_empty() {
                return Err(invalid(
                    format!("{key}.id"),
                    "is empty",
                    "give the experiment id used in events",
                ));
            }
            if !seen.insert(e.id.as_str()) {
                return Err(invalid(
                    format!("{key}.id"),
                    format!("`{}` is declared twice", e.id),
                    "declare each experiment once",
                ));
            }
            if e.arms.len() < 2 {
                return Err(invalid(
                    format!("{key}.arms"),
                    "needs at least two arms",
                    "e.g. arms = { control = 0.5, treatment = 0.5 }",
                ));
            }
            if e.arms.len() > 64 {
                return Err(invalid(
                    format!("{key}.arms"),
                    "has more than 64 arms",
                    "declare at most 64 arms",
                ));
            }
            if let Some((arm, w)) = e.arms.iter().find(|(_, w)| !(w.is_finite() && **w > 0.0)) {
                return Err(invalid(
                    format!("{key}.arms.{arm}"),
                    format!("weight {w} is not positive"),
                    "every arm needs a weight > 0",
                ));
            }
            let total: f64 = e.arms.values().sum();
            if (total - 1.0).abs() > 1e-6 {
                return Err(invalid(
                    format!("{key}.arms"),
                    format!("weights sum to {total}, not 1"),
                    "give the design shares, e.g. { control = 0.5, treatment = 0.5 }",
                ));
            }
            if let Some(w) = &e.watch_inputs {
                if w.len() > l.max_inputs_per_experiment {
                    return Err(invalid(
                        format!("{key}.watch_inputs"),
                        format!(
                            "lists {} inputs, more than limits.max_inputs_per_experiment",
                            w.len()
                        ),
                        "raise the limit or watch fewer inputs",
                    ));
                }
            }
            if let Some(a) = &e.assignment {
                validate_assignment(&key, e, a)?;
            }
            validate_phases(&key, e)?;
            for (name, edges) in &e.numeric_bins {
                if edges.is_empty()
                    || edges.windows(2).any(|p| p[0] >= p[1])
                    || edges.iter().any(|x| !x.is_finite())
                {
                    return Err(invalid(
                        format!("{key}.numeric_bins.{name}"),
                        "edges must be finite and strictly increasing",
                        "e.g. [0.0, 0.5, 1.0]",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The config crate prints nested keys as `experiment[0]unit_of_assignment`; write them as
/// they are written in TOML paths, `experiment[0].unit_of_assignment`.
fn dotted_paths(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 4);
    let mut chars = message.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == ']'
            && chars
                .peek()
                .is_some_and(|n| n.is_ascii_alphabetic() || *n == '_')
        {
            out.push('.');
        }
    }
    out
}

/// A phase's name, its start (after the previous phase's) and its design (a subset of the
/// experiment's arms, positive weights summing to 1).
fn validate_phases(key: &str, e: &ExperimentSettings) -> Result<(), ConfigError> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 64
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    };
    if !e.phases.is_empty() && !name_ok(&e.initial_phase) {
        return Err(invalid(
            format!("{key}.initial_phase"),
            format!("`{}` is not a phase name", e.initial_phase),
            "use 1-64 letters, digits, `_`, `.` or `-`",
        ));
    }
    let mut names = vec![e.initial_phase.as_str()];
    let mut last = i64::MIN;
    for (j, p) in e.phases.iter().enumerate() {
        let key = format!("{key}.phases[{j}]");
        if !name_ok(&p.name) || names.contains(&p.name.as_str()) {
            return Err(invalid(
                format!("{key}.name"),
                format!("`{}` is not a new phase name", p.name),
                "give each phase its own name of 1-64 letters, digits, `_`, `.` or `-` (the first phase is `initial_phase`, default `start`)",
            ));
        }
        names.push(&p.name);
        if p.from.0 <= last {
            return Err(invalid(
                format!("{key}.from"),
                "is not after the previous phase's start",
                "list phases in the order they start",
            ));
        }
        last = p.from.0;
        if p.arms.is_empty() {
            return Err(invalid(
                format!("{key}.arms"),
                "is empty",
                "give the phase's design, e.g. arms = { control = 0.5, treatment = 0.5 }",
            ));
        }
        for (arm, w) in &p.arms {
            if !e.arms.contains_key(arm) {
                return Err(invalid(
                    format!("{key}.arms.{arm}"),
                    "is not an arm of the experiment",
                    "a phase weighs the experiment's arms (leave an arm out to pause it)",
                ));
            }
            if !(w.is_finite() && *w > 0.0) {
                return Err(invalid(
                    format!("{key}.arms.{arm}"),
                    format!("weight {w} is not positive"),
                    "leave a paused arm out of the phase instead of giving it 0",
                ));
            }
        }
        let total: f64 = p.arms.values().sum();
        if (total - 1.0).abs() > 1e-6 {
            return Err(invalid(
                format!("{key}.arms"),
                format!("weights sum to {total}, not 1"),
                "give the phase's design shares, e.g. { control = 0.5, treatment = 0.5 }",
            ));
        }
        match (&e.assignment, p.ranges.is_empty()) {
            (None, false) => {
                return Err(invalid(
                    format!("{key}.ranges"),
                    "is given but the experiment declares no assignment",
                    "declare [experiment.assignment], or remove the phase's ranges",
                ))
            }
            (Some(a), _) => {
                validate_assignment(&key, &e.phase_settings(p), &e.phase_assignment(a, p))?
            }
            (None, true) => {}
        }
    }
    Ok(())
}

impl Settings {
    /// One declaration per phase of each phased experiment (`<id>/<phase>`, each with its
    /// phase's design), so that every check tests each phase against its own design.
    fn expand_phases(&mut self) -> Result<(), ConfigError> {
        if self.experiments.iter().all(|e| e.phases.is_empty()) {
            return Ok(());
        }
        let declared: Vec<String> = self.experiments.iter().map(|e| e.id.clone()).collect();
        let mut out = Vec::with_capacity(self.experiments.len());
        for (i, e) in std::mem::take(&mut self.experiments)
            .into_iter()
            .enumerate()
        {
            if e.phases.is_empty() {
                out.push(e);
                continue;
            }
            let phases = e.phases.len() as u32 + 1;
            let starts = std::iter::once((e.initial_phase.clone(), i64::MIN, e.clone())).chain(
                e.phases
                    .iter()
                    .map(|p| (p.name.clone(), p.from.0, e.phase_settings(p))),
            );
            // a phase ends where the next begins (its alerts are resolved then, as at `ends_at`)
            let ends = e
                .phases
                .iter()
                .map(|p| Some(p.from))
                .chain(std::iter::once(e.ends_at));
            for ((name, from_ms, decl), ends_at) in starts.zip(ends) {
                let id = format!("{}/{name}", e.id);
                if declared.contains(&id) {
                    return Err(invalid(
                        format!("experiment[{i}].phases"),
                        format!("phase experiment `{id}` is also declared as an experiment"),
                        "rename the phase or the other experiment",
                    ));
                }
                out.push(ExperimentSettings {
                    id,
                    ends_at: match (ends_at, e.ends_at) {
                        (Some(a), Some(b)) => Some(Instant(a.0.min(b.0))),
                        (a, b) => a.or(b),
                    },
                    phases: Vec::new(),
                    phase: Some(PhaseOf {
                        experiment: e.id.clone(),
                        name,
                        from_ms,
                        phases,
                    }),
                    ..decl
                });
            }
        }
        self.experiments = out;
        Ok(())
    }
}

fn validate_assignment(
    key: &str,
    e: &ExperimentSettings,
    a: &AssignmentSettings,
) -> Result<(), ConfigError> {
    let key = format!("{key}.assignment");
    if a.buckets == 0 {
        return Err(invalid(
            format!("{key}.buckets"),
            "must be at least 1",
            "e.g. buckets = 10000",
        ));
    }
    if !(a.tolerance > 0.0 && a.tolerance < 1.0) {
        return Err(invalid(
            format!("{key}.tolerance"),
            format!("{} is not in (0, 1)", a.tolerance),
            "e.g. tolerance = 0.001",
        ));
    }
    if let Some(arm) = e.arms.keys().find(|arm| !a.ranges.contains_key(*arm)) {
        return Err(invalid(
            format!("{key}.ranges"),
            format!("has no range for arm `{arm}`"),
            "give every arm its [start, end) buckets, e.g. { control = [0, 5000], treatment = [5000, 10000] }",
        ));
    }
    if let Some(arm) = a.ranges.keys().find(|arm| !e.arms.contains_key(*arm)) {
        return Err(invalid(
            format!("{key}.ranges.{arm}"),
            format!("`{arm}` is not an arm of the experiment"),
            "use the arm names of `arms`",
        ));
    }
    let mut spans: Vec<(&String, [u64; 2])> = a.ranges.iter().map(|(k, v)| (k, *v)).collect();
    spans.sort_by_key(|(_, r)| r[0]);
    for (arm, r) in &spans {
        if r[0] >= r[1] || r[1] > a.buckets {
            return Err(invalid(
                format!("{key}.ranges.{arm}"),
                format!("[{}, {}) is empty or outside 0..{}", r[0], r[1], a.buckets),
                "give [start, end) with start < end <= buckets",
            ));
        }
    }
    for w in spans.windows(2) {
        if w[1].1[0] < w[0].1[1] {
            return Err(invalid(
                format!("{key}.ranges.{}", w[1].0),
                format!("overlaps the range of `{}`", w[0].0),
                "arm ranges must not overlap",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn phases_end_where_the_next_begins() {
        let s = Settings::from_toml(
            "[[experiment]]\nid = \"r\"\narms = { a = 0.9, b = 0.1 }\nends_at = \"2026-03-01T00:00:00Z\"\n\
             [[experiment.phases]]\nname = \"full\"\nfrom = \"2026-02-01T00:00:00Z\"\narms = { a = 0.5, b = 0.5 }",
        )
        .expect("valid");
        let ids: Vec<(&str, Option<i64>)> = s
            .experiments
            .iter()
            .map(|e| (e.id.as_str(), e.ends_at.map(|t| t.0)))
            .collect();
        assert_eq!(
            ids,
            [
                ("r/start", Some(1_769_904_000_000)),
                ("r/full", Some(1_772_323_200_000))
            ]
        );
    }

    #[test]
    fn otlp_settings_name_the_key() {
        let err = Settings::from_toml("[otlp]\nlisten = \"4318\"")
            .expect_err("bad address")
            .to_string();
        assert!(err.contains("otlp.listen"), "{err}");
        let err = Settings::from_toml("[otlp.mapping]\narm = []")
            .expect_err("no attribute")
            .to_string();
        assert!(err.contains("otlp.mapping.arm"), "{err}");
        let ok = Settings::from_toml(
            "[otlp]\nlisten = \"127.0.0.1:4318\"\n[otlp.mapping]\nunit = [\"enduser.id\"]",
        )
        .expect("valid");
        assert_eq!(ok.otlp.mapping.unit, vec!["enduser.id".to_string()]);
        assert_eq!(
            ok.otlp.mapping.experiment,
            vec!["feature_flag.key".to_string()]
        );
    }
    use super::*;

    #[test]
    fn example_config_is_valid() {
        let s = Settings::from_toml(include_str!("../config/armwatch.toml")).unwrap();
        assert_eq!(s.experiments[0].id, "prompt-variant");
        assert_eq!(s.alerts.alpha, 0.001);
        Settings::from_toml(include_str!("../config/demo.toml")).unwrap();
    }

    fn err(text: &str) -> String {
        Settings::from_toml(text).unwrap_err().to_string()
    }

    /// Partition-owned engines share alpha and the unit samples' caps evenly; nothing else
    /// changes.
    #[test]
    fn alpha_split_over_partitions() {
        let s = Settings::from_toml("[alerts]\nalpha = 0.01").unwrap();
        assert_eq!(s.for_partitions(4).alerts.alpha, 0.0025);
        assert_eq!(s.for_partitions(0).alerts.alpha, 0.01);
        assert_eq!(s.for_partitions(4).kafka.topics, s.kafka.topics);
        let l = &s.limits;
        assert_eq!(
            s.for_partitions(4).limits.exposure_sample_units,
            l.exposure_sample_units / 4
        );
        assert_eq!(
            s.for_partitions(4).limits.overlap_sample_units,
            l.overlap_sample_units / 4
        );
        assert_eq!(
            s.for_partitions(4).limits.units_per_experiment,
            l.units_per_experiment
        );
        assert_eq!(
            s.for_partitions(1).limits.exposure_sample_units,
            l.exposure_sample_units
        );
    }

    /// Re-keying: off by default, needs checkpoints, a sane partition count and a topic of
    /// its own; the engines then read the repartition topic, the routers the inputs.
    #[test]
    fn repartition_settings() {
        let s = Settings::from_toml("").unwrap();
        assert!(!s.kafka.repartition.enabled);
        assert_eq!(s.kafka.engine_topics(), s.kafka.topics);
        let s =
            Settings::from_toml("[kafka]\ngroup_id = \"g\"\n[kafka.repartition]\nenabled = true")
                .unwrap();
        assert_eq!(
            s.kafka.engine_topics(),
            vec!["g.armwatch-by-unit".to_string()]
        );
        assert_eq!(s.kafka.router_group(), "g.router");
        let e = err("[kafka.checkpoint]\nenabled = false\n[kafka.repartition]\nenabled = true");
        assert!(
            e.contains("`kafka.repartition.enabled`") && e.contains("checkpoint.enabled = true"),
            "{e}"
        );
        let e = err("[kafka.repartition]\nenabled = true\npartitions = 0");
        assert!(e.contains("`kafka.repartition.partitions`"), "{e}");
        let e =
            err("[kafka]\ntopics = [\"a\"]\n[kafka.repartition]\nenabled = true\ntopic = \"a\"");
        assert!(e.contains("`kafka.repartition.topic`"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("[alerts]\nalpha = 2.0").contains("`alerts.alpha`"));
        assert!(err("[alerts]\nalpah = 0.1").contains("alpah"));
        assert!(err("[alerts]\nalpha = \"high\"").contains("alpha"));
        let e = err("[[experiment]]\nid = \"x\"\narms = { control = 0.5, treatment = 0.6 }");
        assert!(
            e.contains("`experiment[0].arms`") && e.contains("fix:"),
            "{e}"
        );
        let e = err("[[experiment]]\nid = \"x\"\narms = { control = 1.0 }");
        assert!(e.contains("at least two arms"));
        assert!(err("[kafka]\ntopics = []").contains("`kafka.topics`"));
        assert!(err("[log]\nformat = \"xml\"").contains("`log.format`"));
        assert!(err("[log]\nlevel = \"armwatch=loud\"").contains("`log.level`"));
        let e = err("[sampling]\ntimezone = \"Mars/Base\"");
        assert!(
            e.contains("`sampling.timezone`") && e.contains("America/New_York"),
            "{e}"
        );
        assert!(
            err("[alerts]\nwebhook = \"ftp://am:9093/api/v2/alerts\"").contains("`alerts.webhook`")
        );
        Settings::from_toml("[alerts]\nwebhook = \"https://am:9093/api/v2/alerts\"").unwrap();
        assert!(err("[alerts]\nwebhook_ca_file = \"/nonexistent.pem\"")
            .contains("`alerts.webhook_ca_file`"));
        assert!(err("[http]\nreport_token_file = \"/nonexistent\"")
            .contains("`http.report_token_file`"));
        assert!(err("[http]\nmax_connections = 1").contains("`http.max_connections`"));
        assert_eq!(
            HttpSettings::default().listen,
            "127.0.0.1:9898",
            "loopback by default"
        );
        let e =
            err("[[experiment]]\nid = \"x\"\narms = { a = 0.5, b = 0.5 }\nends_at = \"tomorrow\"");
        assert!(e.contains("ends_at") && e.contains("RFC 3339"), "{e}");
        let s = Settings::from_toml(
            "[[experiment]]\nid = \"x\"\narms = { a = 0.5, b = 0.5 }\nends_at = \"2026-12-31T00:00:00Z\"",
        )
        .unwrap();
        assert_eq!(s.experiments[0].ends_at, Some(Instant(1_798_675_200_000)));
    }

    #[test]
    fn assignment_errors_name_the_key() {
        let exp = |assignment: &str| {
            err(&format!(
                "[[experiment]]\nid = \"x\"\narms = {{ control = 0.5, treatment = 0.5 }}\n[experiment.assignment]\nsalt = \"s\"\nbuckets = 100\n{assignment}"
            ))
        };
        let ok_ranges = "ranges = { control = [0, 50], treatment = [50, 100] }";
        let e = exp(&format!("hash = \"md5\"\n{ok_ranges}"));
        assert!(
            e.contains("`experiment[0].assignment.hash`") && e.contains("xxh3_64"),
            "{e}"
        );
        let e = exp(&format!("key = \"{{salt}}:{{user}}\"\n{ok_ranges}"));
        assert!(
            e.contains("`experiment[0].assignment.key`") && e.contains("{user}"),
            "{e}"
        );
        let e = exp("ranges = { control = [0, 60], treatment = [50, 100] }");
        assert!(
            e.contains("`experiment[0].assignment.ranges.treatment`") && e.contains("overlaps"),
            "{e}"
        );
        let e = exp("ranges = { control = [0, 50] }");
        assert!(e.contains("no range for arm `treatment`"), "{e}");
        let e = exp("ranges = { control = [0, 50], treatment = [50, 200] }");
        assert!(e.contains("outside 0..100"), "{e}");
        let e = exp(&format!("tolerance = 0.0\n{ok_ranges}"));
        assert!(e.contains("`experiment[0].assignment.tolerance`"), "{e}");
        assert!(err("[alerts]\nmultiple_exposure_rate = 1.5")
            .contains("`alerts.multiple_exposure_rate`"));
        assert!(err("[alerts]\nmin_auc_margin = 0.7").contains("`alerts.min_auc_margin`"));
        let e = err("[[experiment]]\nid = \"x\"\narms = { a = 0.5, b = 0.5 }\nunit_of_assignment = \"team\"");
        assert!(
            e.contains("`experiment[0].unit_of_assignment`") && e.contains("team"),
            "{e}"
        );
    }

    #[test]
    fn arm_names_keep_their_case() {
        let s = Settings::from_toml(
            "[[experiment]]\nid = \"X\"\narms = { Control = 0.5, TreatmentB = 0.5 }",
        )
        .unwrap();
        assert!(s.experiments[0].arms.contains_key("TreatmentB"));
    }

    /// Kubernetes Secrets reach librdkafka: options from the environment (dotted names
    /// spelled with `_`), from files named in the environment or in `option_files`; a file
    /// that cannot be read stops startup naming the variable.
    #[test]
    fn kafka_options_from_environment_and_files() {
        let mut s = Settings::from_toml(
            "[kafka]\noptions = { \"security.protocol\" = \"PLAINTEXT\", \"sasl.username\" = \"toml\" }\noption_files = { \"ssl.ca.pem\" = \"/secrets/ca\" }",
        )
        .unwrap();
        let files = |p: &str| match p {
            "/secrets/ca" => Ok("-----BEGIN CERTIFICATE-----\n".to_string()),
            "/secrets/pw" => Ok("s3cret\n".to_string()),
            _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        };
        let vars = [
            ("ARMWATCH_KAFKA_OPTION_SECURITY_PROTOCOL", "SASL_SSL"),
            ("ARMWATCH_KAFKA_OPTION_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("ARMWATCH_KAFKA_OPTION_SASL_PASSWORD_FILE", "/secrets/pw"),
            ("ARMWATCH_KAFKA_OPTION_", "ignored"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        s.kafka.resolve_options(vars.clone(), files).unwrap();
        let o = &s.kafka.options;
        assert_eq!(o["security.protocol"], "SASL_SSL");
        assert_eq!(o["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(o["sasl.password"], "s3cret");
        assert_eq!(o["sasl.username"], "toml");
        assert_eq!(o["ssl.ca.pem"], "-----BEGIN CERTIFICATE-----");
        assert_eq!(o.len(), 5, "{o:?}");
        let missing = [("ARMWATCH_KAFKA_OPTION_SASL_PASSWORD_FILE", "/nope")]
            .map(|(k, v)| (k.to_string(), v.to_string()));
        let e = s
            .kafka
            .resolve_options(missing, files)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ARMWATCH_KAFKA_OPTION_SASL_PASSWORD_FILE") && e.contains("/nope"),
            "{e}"
        );
    }
}
