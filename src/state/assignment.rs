//! Re-deriving the declared hash assignment of each event (`assignment_mismatch`).
//!
//! The exact rule, so an assignment service can reproduce it:
//! 1. render the key template to UTF-8 bytes: `{salt}` is the configured salt, `{unit}` and
//!    `{cluster}` the event's fields, `{input.NAME}` the event's input `NAME` as text
//!    ([`crate::event::InputValue::write_text`]: strings as they are, `true`/`false`, numbers in shortest
//!    round-trip form without an exponent, `3`, `0.25`); `{{` and `}}` are literal braces;
//! 2. `h = xxh3_64(bytes, seed)` or `xxh64(bytes, seed)` (the reference xxHash algorithms, as
//!    in Python's `xxhash.xxh3_64_intdigest(key, seed)` / `xxhash.xxh64_intdigest`);
//! 3. `bucket = h % buckets`; the expected arm is the one whose `[start, end)` holds it.
//!
//! When the logged arms disagree, the state also scores candidate keys that append one input
//! (`<declared key>:{input.NAME}`): the input whose candidate reproduces the logged arms is the
//! one the assignment service hashed in.

use super::display_label;
use crate::config::AssignmentSettings;
use crate::event::Event;
use crate::stats::proportion::{share, RateEProcess};

/// A supported hash function (parsed from its config name once, at load).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String")]
pub enum HashFn {
    /// XXH3, 64-bit.
    Xxh3_64,
    /// XXH64.
    Xxh64,
}

impl HashFn {
    /// From its config name.
    pub fn parse(s: &str) -> Option<HashFn> {
        match s {
            "xxh3_64" => Some(HashFn::Xxh3_64),
            "xxh64" => Some(HashFn::Xxh64),
            _ => None,
        }
    }

    /// Its config name.
    pub fn as_str(self) -> &'static str {
        match self {
            HashFn::Xxh3_64 => "xxh3_64",
            HashFn::Xxh64 => "xxh64",
        }
    }

    /// Hash `bytes` with `seed`.
    #[inline]
    pub fn hash(self, seed: u64, bytes: &[u8]) -> u64 {
        match self {
            HashFn::Xxh3_64 => twox_hash::XxHash3_64::oneshot_with_seed(seed, bytes),
            HashFn::Xxh64 => twox_hash::XxHash64::oneshot(seed, bytes),
        }
    }
}

/// One piece of a key template.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Part {
    /// Literal bytes.
    Lit(Box<str>),
    /// `{salt}`
    Salt,
    /// `{unit}`
    Unit,
    /// `{cluster}`
    Cluster,
    /// `{input.NAME}`
    Input(Box<str>),
}

impl TryFrom<String> for HashFn {
    type Error = String;
    fn try_from(s: String) -> Result<HashFn, String> {
        HashFn::parse(&s)
            .ok_or_else(|| format!("`{s}` is not a supported hash (use \"xxh3_64\" or \"xxh64\")"))
    }
}

/// A parsed key template (parsed from its config text once, at load).
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String")]
pub struct Template {
    parts: Vec<Part>,
    /// The text it was parsed from.
    text: Box<str>,
}

impl TryFrom<String> for Template {
    type Error = String;
    fn try_from(s: String) -> Result<Template, String> {
        Template::parse(&s).map_err(|why| {
            format!(
                "{why} (use placeholders {{salt}}, {{unit}}, {{cluster}} and {{input.NAME}}; write {{{{ and }}}} for braces)"
            )
        })
    }
}

impl Template {
    /// Parse `"{salt}:{unit}"`-style text; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if rest.starts_with("{{") || rest.starts_with("}}") {
                lit.push(c);
                rest = &rest[2..];
            } else if c == '{' {
                let end = rest
                    .find('}')
                    .ok_or_else(|| format!("`{text}` has an unclosed `{{`"))?;
                let name = &rest[1..end];
                let part = match name {
                    "salt" => Part::Salt,
                    "unit" => Part::Unit,
                    "cluster" => Part::Cluster,
                    _ => match name.strip_prefix("input.") {
                        Some(n) if !n.is_empty() => Part::Input(n.into()),
                        _ => return Err(format!("`{{{name}}}` is not a known placeholder")),
                    },
                };
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit).into()));
                }
                parts.push(part);
                rest = &rest[end + 1..];
            } else if c == '}' {
                return Err(format!("`{text}` has an unmatched `}}`"));
            } else {
                lit.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit.into()));
        }
        if !parts
            .iter()
            .any(|p| matches!(p, Part::Unit | Part::Cluster))
        {
            return Err(format!("`{text}` uses neither {{unit}} nor {{cluster}}"));
        }
        Ok(Template {
            parts,
            text: text.into(),
        })
    }

    /// The text it was parsed from.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// `{salt}:{unit}`, the default key.
    pub fn default_key() -> Template {
        Template {
            parts: vec![Part::Salt, Part::Lit(":".into()), Part::Unit],
            text: "{salt}:{unit}".into(),
        }
    }

    /// Whether the key names the cluster but not the unit (a cluster-randomized assignment).
    pub fn keyed_by_cluster(&self) -> bool {
        self.parts.contains(&Part::Cluster) && !self.parts.contains(&Part::Unit)
    }

    /// Whether the template reads input `name`.
    pub fn reads_input(&self, name: &str) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Input(n) if **n == *name))
    }

    /// Render into `buf`; false when a field the template needs is missing from the event.
    pub fn render(&self, salt: &str, ev: &Event<'_>, buf: &mut String) -> bool {
        for p in &self.parts {
            match p {
                Part::Lit(s) => buf.push_str(s),
                Part::Salt => buf.push_str(salt),
                Part::Unit => match ev.unit.as_deref() {
                    Some(u) => buf.push_str(u),
                    None => return false,
                },
                Part::Cluster => match ev.cluster.as_deref() {
                    Some(c) => buf.push_str(c),
                    None => return false,
                },
                Part::Input(name) => match ev.inputs.iter().find(|(n, _)| **n == **name) {
                    Some((_, v)) => v.write_text(buf),
                    None => return false,
                },
            }
        }
        true
    }
}

/// A logged arm that the declared hash does not give.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Example {
    /// The id the key hashes: the unit, or the cluster when the key names only the cluster.
    pub unit: Box<str>,
    /// Arm in the event.
    pub logged: usize,
    /// Arm the hash gives (`None`: the bucket is in no arm's range).
    pub expected: Option<usize>,
    /// The bucket.
    pub bucket: u64,
}

/// A candidate key: the declared key plus `:{input.NAME}`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Candidate {
    /// The input appended.
    pub input: Box<str>,
    /// Events scored.
    pub scored: u64,
    /// Events whose logged arm the candidate reproduces.
    pub agree: u64,
}

impl Candidate {
    /// Share of scored events reproduced.
    pub fn agreement(&self) -> f64 {
        share(self.agree, self.scored)
    }
}

/// Examples kept per experiment.
pub const MAX_EXAMPLES: usize = 8;
/// Candidate inputs scored per experiment.
pub const MAX_CANDIDATES: usize = 16;
/// Events scored by candidates before a mismatch has been seen (then candidates sleep until one
/// is).
const CANDIDATE_WARMUP: u64 = 1000;
/// Scored events a candidate needs before it can explain the mismatches.
pub const MIN_EXPLAIN: u64 = 20;
/// Agreement a candidate needs to explain them (below 1 so that a second fault, such as
/// crossover units, does not hide the key's input).
pub const EXPLAIN_AGREEMENT: f64 = 0.9;

/// Mismatch counts and evidence of one experiment with a declared assignment.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AssignmentState {
    /// The hash function.
    pub hash: HashFn,
    /// The key template as configured.
    pub key: Box<str>,
    seed: u64,
    salt: Box<str>,
    template: Template,
    buckets: u64,
    /// `[start, end)` per arm index.
    ranges: Vec<(u64, u64)>,
    /// Mismatch rate of first exposures against the tolerance.
    pub test: RateEProcess,
    /// Events with the template's fields checked (repeats included).
    pub events_checked: u64,
    /// Of those, mismatched.
    pub events_mismatched: u64,
    /// Events lacking a field the key needs.
    pub unresolved: u64,
    /// First mismatches seen.
    pub examples: Vec<Example>,
    /// Candidate keys.
    pub candidates: Vec<Candidate>,
    /// The declared hash's arm of each unit's first exposure, per arm (the assigned stage:
    /// what the hash gives the exposed units, beside what was logged). Counts.
    #[serde(default)]
    pub hashed: Vec<u64>,
    buf: String,
}

impl AssignmentState {
    /// From validated settings; `arms` in the experiment's order.
    pub fn new(cfg: &AssignmentSettings, arms: &[super::name::Name]) -> AssignmentState {
        AssignmentState {
            hash: cfg.hash,
            key: cfg.key.text().into(),
            seed: cfg.seed,
            salt: cfg.salt.as_str().into(),
            template: cfg.key.clone(),
            buckets: cfg.buckets.max(1),
            ranges: arms
                .iter()
                .map(|a| cfg.ranges.get(&**a).map_or((0, 0), |r| (r[0], r[1])))
                .collect(),
            test: RateEProcess::new(cfg.tolerance),
            events_checked: 0,
            events_mismatched: 0,
            unresolved: 0,
            examples: Vec::new(),
            candidates: Vec::new(),
            hashed: vec![0; arms.len()],
            buf: String::with_capacity(128),
        }
    }

    /// The bucket and expected arm of the key rendered in `buf`.
    #[inline]
    fn expected(&self) -> (u64, Option<usize>) {
        let bucket = self.hash.hash(self.seed, self.buf.as_bytes()) % self.buckets;
        let arm = self
            .ranges
            .iter()
            .position(|&(s, e)| s <= bucket && bucket < e);
        (bucket, arm)
    }

    /// Check one event logged in `arm`; `first` when it is the unit's first exposure (only those
    /// feed the evidence: a unit's events are not independent draws).
    pub fn observe(&mut self, ev: &Event<'_>, arm: usize, first: bool) {
        self.buf.clear();
        if !self.template.render(&self.salt, ev, &mut self.buf) {
            self.unresolved += 1;
            return;
        }
        let len = self.buf.len();
        let (bucket, expected) = self.expected();
        let mismatch = expected != Some(arm);
        self.events_checked += 1;
        if mismatch {
            self.events_mismatched += 1;
            // one example per unit: its first exposure
            if first && self.examples.len() < MAX_EXAMPLES {
                let id = if self.template.keyed_by_cluster() {
                    ev.cluster.as_deref()
                } else {
                    ev.unit.as_deref()
                };
                self.examples.push(Example {
                    unit: display_label(id.unwrap_or("")),
                    logged: arm,
                    expected,
                    bucket,
                });
            }
        }
        if first {
            self.test.observe(mismatch);
            if let Some(c) = expected.and_then(|a| self.hashed.get_mut(a)) {
                *c += 1;
            }
        }
        if self.events_mismatched > 0 || self.events_checked <= CANDIDATE_WARMUP {
            self.score_candidates(ev, arm, len);
        }
    }

    fn score_candidates(&mut self, ev: &Event<'_>, arm: usize, len: usize) {
        for (name, value) in ev.inputs {
            if self.template.reads_input(name) {
                continue;
            }
            let c = match self.candidates.iter().position(|c| *c.input == **name) {
                Some(c) => c,
                None if self.candidates.len() < MAX_CANDIDATES => {
                    self.candidates.push(Candidate {
                        input: display_label(name),
                        scored: 0,
                        agree: 0,
                    });
                    self.candidates.len() - 1
                }
                None => continue,
            };
            self.buf.truncate(len);
            self.buf.push(':');
            value.write_text(&mut self.buf);
            let (_, expected) = self.expected();
            let cand = &mut self.candidates[c];
            cand.scored += 1;
            cand.agree += u64::from(expected == Some(arm));
        }
    }

    /// The candidate input that reproduces the logged arms, if one does: at least
    /// [`EXPLAIN_AGREEMENT`] of its scored events agree, and it removes at least half of the
    /// declared key's disagreement.
    pub fn explanation(&self) -> Option<&Candidate> {
        let declared = 1.0 - self.event_mismatch_rate();
        let need = EXPLAIN_AGREEMENT.max(declared + 0.5 * (1.0 - declared));
        self.candidates
            .iter()
            .filter(|c| c.scored >= MIN_EXPLAIN && c.agreement() >= need)
            .max_by(|a, b| a.agreement().total_cmp(&b.agreement()))
    }

    /// Events' mismatch share (repeats included).
    pub fn event_mismatch_rate(&self) -> f64 {
        share(self.events_mismatched, self.events_checked)
    }

    /// Merge another partition's counts.
    pub fn merge(&mut self, o: &AssignmentState) {
        self.test.merge(&o.test);
        self.events_checked += o.events_checked;
        self.events_mismatched += o.events_mismatched;
        self.unresolved += o.unresolved;
        if self.hashed.len() == o.hashed.len() {
            for (a, b) in self.hashed.iter_mut().zip(&o.hashed) {
                *a += b;
            }
        }
        for e in &o.examples {
            if self.examples.len() < MAX_EXAMPLES {
                self.examples.push(e.clone());
            }
        }
        for c in &o.candidates {
            match self.candidates.iter().position(|x| x.input == c.input) {
                Some(x) => {
                    let x = &mut self.candidates[x];
                    x.scored += c.scored;
                    x.agree += c.agree;
                }
                None if self.candidates.len() < MAX_CANDIDATES => self.candidates.push(c.clone()),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any text either parses or is refused with a reason; never a panic. A template that
        /// parses renders literal text and the unit verbatim.
        #[test]
        fn parse_never_panics(text in "\\PC{0,40}", unit in "[a-z0-9-]{1,12}") {
            if let Ok(t) = Template::parse(&text) {
                let ev_text = format!(r#"{{"kind":"prompt","ts":0,"experiment":"e","arm":"a","unit":"{unit}"}}"#);
                let mut inputs = crate::event::Inputs::new();
                let ev = crate::event::decode_into(ev_text.as_bytes(), &crate::event::Limits::default(), &mut inputs);
                if let Ok(ev) = ev {
                    let mut s = String::new();
                    if t.render("salt", &ev, &mut s) {
                        let has_unit = text.contains("{unit}");
                        prop_assert!(!has_unit || s.contains(&unit), "{} from {}", s, text);
                    }
                }
            }
        }
    }

    #[test]
    fn templates_parse_and_refuse() {
        assert_eq!(
            Template::parse("{salt}:{unit}"),
            Ok(Template::default_key())
        );
        let t = Template::parse("{salt}:{unit}:{input.tier}").unwrap();
        assert!(t.reads_input("tier"));
        assert_eq!(
            Template::parse("a{{b}}{unit}").unwrap().parts[0],
            Part::Lit("a{b}".into())
        );
        assert!(Template::parse("{salt}:{user}")
            .unwrap_err()
            .contains("{user}"));
        assert!(Template::parse("{salt}:{unit")
            .unwrap_err()
            .contains("unclosed"));
        assert!(Template::parse("{salt}").unwrap_err().contains("neither"));
        assert!(Template::parse("{input.}:{unit}").is_err());
    }

    #[test]
    fn numbers_render_like_json_integers_when_integral() {
        use crate::event::InputValue;
        let mut b = String::new();
        InputValue::Num(3.0).write_text(&mut b);
        b.push('|');
        InputValue::Num(0.25).write_text(&mut b);
        b.push('|');
        InputValue::Bool(true).write_text(&mut b);
        assert_eq!(b, "3|0.25|true");
    }
}
