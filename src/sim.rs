//! A seeded simulator of prompt traffic, with faults that can be switched on. It feeds the
//! demo, the statistical tests (null streams, injected faults) and the benchmarks, so all
//! three exercise the same JSON through the same decoder.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::io::Write;

/// Instrument traffic besides prompts, with its faults (the demo's judge, router and
/// embedding model).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Instruments {
    /// Emit judgments (15% of events) and routing decisions (15%), and an `embedding_model`
    /// input on prompts.
    pub enabled: bool,
    /// From this event on, `quality-judge` runs version v2, scoring the control set this many
    /// sd higher.
    pub judge_upgrade: Option<(u64, f64)>,
    /// Share of decisions within 0.05 of the 0.85 threshold that take the other route.
    pub router_overrides: f64,
    /// From this event on, the first experiment's treatment arm retrieves with `e5-v2` (the
    /// other experiments keep `e5-v1`: their arms stay independent of the input).
    pub substrate_rotation: Option<u64>,
    /// Share of router scores in (0.85, 0.90) nudged just below the threshold.
    pub score_nudging: f64,
    /// Sample 5% of traces into eval set `nightly`: from all past traffic uniformly, or (`true`)
    /// only from 02:00-04:00 UTC. With instruments on, simulated time runs ~30 s per event so
    /// that hours of the week mean something.
    pub sampler_night_only: Option<bool>,
}

/// Faults to inject.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// `P(treatment | tier = .0) = .1` instead of the design weight.
    pub tier_leak: Option<(String, f64)>,
    /// Overall `P(treatment)` instead of the design weight.
    pub srm: Option<f64>,
    /// The arm leaks through the combination of tier and locale only:
    /// `P(treatment) = w + d s(tier) s(locale)` with `s(locale) = +1` for en-US and -1
    /// otherwise, `s(tier) = +1` free, -1 pro, -3 enterprise. Both have mean zero under the
    /// population shares, so each input alone stays balanced.
    pub interaction_leak: Option<f64>,
    /// The assignment service of a hash-assigned experiment hashes `{salt}:{unit}:{tier}`
    /// instead of the declared `{salt}:{unit}`.
    pub key_includes_tier: bool,
    /// Share of units whose events land in the other arm half of the time (a second service
    /// assigns them differently). Needs `users`.
    pub crossover: f64,
    /// Clusters of a cluster-randomized experiment whose users are assigned one by one.
    pub mixed_clusters: u32,
}

/// How a simulated experiment assigns arms.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum SimAssignment {
    /// A random draw per event (or per user, with `users`).
    #[default]
    Random,
    /// `xxh3_64("{salt}:{unit}") % 10000`: control `[0, 5000)`, treatment `[5000, 10000)`.
    Hash {
        /// The salt.
        salt: String,
    },
    /// Users belong to cluster `ws-{user % clusters}`; the cluster is hashed as
    /// `xxh3_64("{salt}:{cluster}") % 10000` with the same ranges. Events carry `cluster`.
    Cluster {
        /// The salt.
        salt: String,
        /// Number of clusters.
        clusters: u32,
    },
}

impl SimExperiment {
    /// A 50/50 experiment drawing arms at random (per event, or per user with `users`).
    pub fn random(id: &str, faults: Faults, users: Option<Users>) -> SimExperiment {
        SimExperiment {
            id: id.into(),
            treatment_weight: 0.5,
            faults,
            users,
            assignment: SimAssignment::Random,
        }
    }

    /// A 50/50 experiment assigned by `xxh3_64("{id}:{unit}") % 10000` (the salt is the id),
    /// with a pool of `pool` returning users carrying `unit`.
    pub fn hash_assigned(id: &str, faults: Faults, pool: u32) -> SimExperiment {
        SimExperiment {
            assignment: SimAssignment::Hash { salt: id.into() },
            ..SimExperiment::random(id, faults, Some(Users::returning(pool)))
        }
    }

    /// A 50/50 experiment randomized by cluster (`clusters` workspaces, salt = id), with a pool
    /// of `pool` returning users carrying `unit` and `cluster`.
    pub fn clustered(id: &str, faults: Faults, pool: u32, clusters: u32) -> SimExperiment {
        SimExperiment {
            assignment: SimAssignment::Cluster {
                salt: id.into(),
                clusters,
            },
            ..SimExperiment::random(id, faults, Some(Users::returning(pool)))
        }
    }
}

/// Message `i` of the adversarial producer (any client can make up experiment ids): 1,000
/// undeclared experiments (`adv-0000`...) in turn, a new arm every 1,000 messages up to 16, and
/// 16 inputs whose values are mostly new (8 strings, 8 numbers), every unit new. What a memory
/// budget must hold against (the scale benchmark's `adversarial` workload, the budget's test).
pub fn adversarial_event(i: usize, out: &mut Vec<u8>) {
    out.clear();
    let _ = write!(
        out,
        r#"{{"kind":"prompt","ts":{},"experiment":"adv-{:04}","arm":"a{}","unit":"u{i}","inputs":{{"#,
        1_767_225_600_000u64 + i as u64,
        i % 1000,
        (i / 1000) % 16
    );
    for k in 0..16 {
        let sep = if k == 0 { "" } else { "," };
        let _ = if k % 2 == 0 {
            write!(out, r#"{sep}"in{k}":"v{}""#, (i * 31 + k * 7) % 997)
        } else {
            write!(out, r#"{sep}"in{k}":{}.{}"#, (i * 13 + k) % 4096, i % 10)
        };
    }
    out.extend_from_slice(b"}}");
}

/// The arm of a declared hash assignment (50/50 over 10,000 buckets).
pub fn hash_arm(key: &str) -> bool {
    twox_hash::XxHash3_64::oneshot(key.as_bytes()) % 10_000 >= 5_000
}

/// Returning users: a pool whose activity is heavy-tailed (user `floor(pool * u^3)`), each
/// with a fixed tier and a fixed arm (a hash of the user), as in production traffic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Users {
    /// Pool size.
    pub pool: u32,
    /// Whether events carry `unit` (without it, armwatch must count events).
    pub emit_unit: bool,
}

impl Users {
    /// A pool of `pool` returning users whose events carry `unit`.
    pub fn returning(pool: u32) -> Users {
        Users {
            pool,
            emit_unit: true,
        }
    }
}

/// One simulated two-arm experiment.
#[derive(Clone, Debug)]
pub struct SimExperiment {
    /// Experiment id.
    pub id: String,
    /// Design `P(treatment)`.
    pub treatment_weight: f64,
    /// Faults.
    pub faults: Faults,
    /// Returning users (`None`: every event is a new user with a fresh draw).
    pub users: Option<Users>,
    /// How arms are assigned.
    pub assignment: SimAssignment,
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit_float(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn pick_at<'a>(mut u: f64, table: &'a [(&'a str, f64)]) -> &'a str {
    for (v, p) in table {
        if u < *p {
            return v;
        }
        u -= p;
    }
    table[table.len() - 1].0
}

/// Tiers with their population shares.
pub const TIERS: [(&str, f64); 3] = [("free", 0.6), ("pro", 0.3), ("enterprise", 0.1)];
const LOCALES: [(&str, f64); 5] = [
    ("en-US", 0.5),
    ("de-DE", 0.15),
    ("fr-FR", 0.15),
    ("ja-JP", 0.1),
    ("pt-BR", 0.1),
];
const TEMPERATURES: [f64; 3] = [0.2, 0.7, 1.0];
const MAX_TOKENS: [u32; 3] = [256, 512, 1024];

fn pick<'a>(rng: &mut SmallRng, table: &'a [(&'a str, f64)]) -> &'a str {
    pick_at(rng.random(), table)
}

/// Simulated time starts at 2026-01-01T00:00:00Z.
const START_MS: i64 = 1_767_225_600_000;

/// The traffic generator.
pub struct Simulator {
    rng: SmallRng,
    seed: u64,
    instruments: Instruments,
    experiments: Vec<SimExperiment>,
    ts_ms: i64,
    produced: u64,
    prompt_tokens: bool,
}

impl Simulator {
    /// A simulator with a fixed seed.
    pub fn new(seed: u64, experiments: Vec<SimExperiment>) -> Simulator {
        Simulator {
            rng: SmallRng::seed_from_u64(seed),
            seed,
            instruments: Instruments::default(),
            experiments,
            ts_ms: START_MS,
            produced: 0,
            prompt_tokens: false,
        }
    }

    /// `experiments` undeclared 50/50 experiments `exp-0000`, `exp-0001`, ... drawing arms per
    /// user from a pool of `pool` returning users each, with a fourth numeric input
    /// (`prompt_tokens`): the fleet workload of the scale benchmark (4 categorical and 4
    /// numeric inputs).
    pub fn fleet(seed: u64, experiments: usize, pool: u32) -> Simulator {
        let exps = (0..experiments)
            .map(|i| {
                SimExperiment::random(
                    &format!("exp-{i:04}"),
                    Faults::default(),
                    Some(Users::returning(pool)),
                )
            })
            .collect();
        Simulator::new(seed, exps).with_prompt_tokens()
    }

    /// Also emit a numeric `prompt_tokens` input (log-uniform in 16..8192), drawn after every
    /// other value so that streams without it are unchanged.
    pub fn with_prompt_tokens(mut self) -> Simulator {
        self.prompt_tokens = true;
        self
    }

    /// A single experiment `prompt-variant`, 50/50, with `faults`; every event a new user.
    pub fn single(seed: u64, faults: Faults) -> Simulator {
        Simulator::single_with_users(seed, faults, None)
    }

    /// A single experiment `prompt-variant`, 50/50, with `faults` and a user model.
    pub fn single_with_users(seed: u64, faults: Faults, users: Option<Users>) -> Simulator {
        Simulator::new(
            seed,
            vec![SimExperiment::random("prompt-variant", faults, users)],
        )
    }

    /// Also produce judge, router and substrate traffic.
    pub fn with_instruments(mut self, instruments: Instruments) -> Simulator {
        self.instruments = instruments;
        self
    }

    fn instrument_event(&mut self, buf: &mut Vec<u8>) -> bool {
        if !self.instruments.enabled {
            return false;
        }
        let u: f64 = self.rng.random();
        let n = self.produced;
        if u < 0.15 {
            let upgraded = self.instruments.judge_upgrade.filter(|(at, _)| n >= *at);
            let control = self.rng.random::<bool>();
            let z = {
                let (u1, u2): (f64, f64) =
                    (self.rng.random::<f64>().max(1e-300), self.rng.random());
                (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
            };
            let shift = upgraded.map_or(0.0, |(_, s)| s);
            let score = 7.0 + 1.5 * (z + if control { shift } else { 0.0 });
            let version = if upgraded.is_some() { "v2" } else { "v1" };
            let _ = write!(
                buf,
                r#"{{"kind":"judgment","ts":{},"judge":"quality-judge","judge_version":"{version}","score":{score:.3},"control":{control}}}"#,
                self.ts_ms
            );
            true
        } else if u < 0.30 {
            // a confidence score: Beta(5, 2), the 5th smallest of 6 uniforms
            let mut u: [f64; 6] = std::array::from_fn(|_| self.rng.random());
            u.sort_by(f64::total_cmp);
            let mut score = u[4];
            if score > 0.85
                && score < 0.90
                && self.rng.random::<f64>() < self.instruments.score_nudging
            {
                score -= 0.05;
            }
            let mut premium = score < 0.85;
            if (score - 0.85).abs() <= 0.05
                && self.rng.random::<f64>() < self.instruments.router_overrides
            {
                premium = !premium;
            }
            let route = if premium { "premium" } else { "standard" };
            let _ = write!(
                buf,
                r#"{{"kind":"routing","ts":{},"router":"confidence-gate","score":{score:.4},"threshold":0.85,"route":"{route}"}}"#,
                self.ts_ms
            );
            true
        } else if u < 0.35 && self.instruments.sampler_night_only.is_some() {
            const HOUR: i64 = 3_600_000;
            let since_start = self.rng.random_range(0..(self.ts_ms - START_MS).max(1));
            let ts = if self.instruments.sampler_night_only == Some(true) {
                // the most recent 02:00-04:00 UTC window
                let into_day = self.ts_ms.rem_euclid(24 * HOUR);
                let back = (into_day - 2 * HOUR).rem_euclid(24 * HOUR);
                self.ts_ms - back + self.rng.random_range(0..2 * HOUR)
                    - if back < 2 * HOUR { 24 * HOUR } else { 0 }
            } else {
                START_MS + since_start
            };
            let tier = pick(&mut self.rng, &TIERS);
            let _ = write!(
                buf,
                r#"{{"kind":"sample","ts":{ts},"eval_set":"nightly","inputs":{{"tier":"{tier}"}}}}"#
            );
            true
        } else {
            false
        }
    }

    /// Events produced so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// Write the next event (one JSON object, no newline) into `buf` (cleared first).
    pub fn next_event(&mut self, buf: &mut Vec<u8>) {
        buf.clear();
        self.append_event(buf);
    }

    /// Write the next event at the end of `buf`.
    pub fn append_event(&mut self, buf: &mut Vec<u8>) {
        self.produced += 1;
        self.ts_ms += if self.instruments.enabled {
            self.rng.random_range(1..60_000)
        } else {
            self.rng.random_range(1..40)
        };
        if self.instrument_event(buf) {
            return;
        }
        let e = self.rng.random_range(0..self.experiments.len());
        let exp = &self.experiments[e];
        let (user, tier_u, arm_u) = match exp.users {
            None => (
                self.rng.random_range(0..1_000_000u32),
                self.rng.random::<f64>(),
                self.rng.random::<f64>(),
            ),
            Some(u) => {
                let r: f64 = self.rng.random();
                let user = (u.pool as f64 * r * r * r) as u32;
                let h = mix(u64::from(user) ^ mix(self.seed ^ mix(e as u64)));
                (user, unit_float(h), unit_float(mix(h)))
            }
        };
        let tier = pick_at(tier_u, &TIERS);
        let mut p_treat = exp.faults.srm.unwrap_or(exp.treatment_weight);
        if let Some((leak_tier, p)) = &exp.faults.tier_leak {
            if leak_tier == tier {
                p_treat = *p;
            }
        }
        // drawn before the arm only when the arm depends on it (keeps other streams unchanged)
        let early_locale = exp
            .faults
            .interaction_leak
            .map(|d| (d, pick(&mut self.rng, &LOCALES)));
        if let Some((d, locale)) = early_locale {
            let s_tier = match tier {
                "free" => 1.0,
                "pro" => -1.0,
                _ => -3.0,
            };
            let s_locale = if locale == "en-US" { 1.0 } else { -1.0 };
            p_treat += d * s_tier * s_locale;
        }
        let mut cluster = None;
        let mut treatment = match &exp.assignment {
            SimAssignment::Random => arm_u < p_treat,
            SimAssignment::Hash { salt } => {
                if exp.faults.key_includes_tier {
                    hash_arm(&format!("{salt}:u{user}:{tier}"))
                } else {
                    hash_arm(&format!("{salt}:u{user}"))
                }
            }
            SimAssignment::Cluster { salt, clusters } => {
                let k = user % (*clusters).max(1);
                cluster = Some(k);
                if k < exp.faults.mixed_clusters {
                    arm_u < p_treat
                } else {
                    hash_arm(&format!("{salt}:ws-{k}"))
                }
            }
        };
        if exp.faults.crossover > 0.0
            && unit_float(mix(u64::from(user) ^ 0xC0FF_EE00)) < exp.faults.crossover
            && self.rng.random::<bool>()
        {
            treatment = !treatment;
        }
        let arm = if treatment { "treatment" } else { "control" };
        let locale = match early_locale {
            Some((_, l)) => l,
            None => pick(&mut self.rng, &LOCALES),
        };
        let temperature = TEMPERATURES[self.rng.random_range(0..TEMPERATURES.len())];
        let max_tokens = MAX_TOKENS[self.rng.random_range(0..MAX_TOKENS.len())];
        let docs = self.rng.random_range(0..9u32);
        let tool = self.rng.random_range(0..500u32);
        let fragment = if treatment { "sys-v2" } else { "sys-v1" };
        let emit_unit = exp.users.is_none_or(|u| u.emit_unit);
        let embedding = if !self.instruments.enabled {
            None
        } else if treatment
            && e == 0
            && self
                .instruments
                .substrate_rotation
                .is_some_and(|at| self.produced > at)
        {
            Some("e5-v2")
        } else {
            Some("e5-v1")
        };
        // writing into a Vec cannot fail
        let _ = write!(
            buf,
            r#"{{"kind":"prompt","ts":{},"experiment":"{}","arm":"{}","#,
            self.ts_ms, exp.id, arm
        );
        if emit_unit {
            let _ = write!(buf, r#""unit":"u{user}","#);
        }
        if let Some(k) = cluster {
            let _ = write!(buf, r#""cluster":"ws-{k}","#);
        }
        let _ = write!(
            buf,
            r#""inputs":{{"tier":"{}","locale":"{}","temperature":{},"max_tokens":{},"retrieved_docs":{},"tool_hash":"t{:04x}","fragment":"{}""#,
            tier, locale, temperature, max_tokens, docs, tool, fragment
        );
        if let Some(m) = embedding {
            let _ = write!(buf, r#","embedding_model":"{m}""#);
        }
        if self.prompt_tokens {
            let t = (16.0 * 512f64.powf(self.rng.random::<f64>())) as u32;
            let _ = write!(buf, r#","prompt_tokens":{t}"#);
        }
        buf.extend_from_slice(b"}}");
    }

    /// Produce `n` events as NDJSON.
    pub fn ndjson(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for _ in 0..n {
            self.next_event(&mut buf);
            out.extend_from_slice(&buf);
            out.push(b'\n');
        }
        out
    }
}
