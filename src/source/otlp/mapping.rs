//! OpenTelemetry records -> events of the contract (pure: no IO).
//!
//! What LLM gateways already emit carries most of the contract (OpenTelemetry semantic
//! conventions, development status):
//! - a `feature_flag.evaluation` event (a log record whose event name is that, or a span event
//!   of that name) is an exposure: `feature_flag.key` the experiment,
//!   `feature_flag.result.variant` the arm, `feature_flag.context.id` the unit; it becomes a
//!   `prompt` event whose inputs are read from its own, its span's and its resource's
//!   attributes (a span's `gen_ai.request.model`, `gen_ai.request.temperature`, ...);
//! - a span that carries `feature_flag.key` itself (a GenAI span annotated with the experiment)
//!   is an exposure the same way, once per span;
//! - a `gen_ai.evaluation.result` event (log record or span event) is a `judgment`:
//!   `gen_ai.evaluation.name` the judge, `gen_ai.evaluation.score.value` the score; as a span
//!   event it takes the experiment and arm of its span's exposure.
//!
//! - no convention names routing decisions or eval-set samples yet: an `armwatch.routing`
//!   event (log record or span event) is a `routing` event (`armwatch.router`,
//!   `armwatch.routing.score`, `.threshold`, `.route`), an `armwatch.sample` event a `sample`
//!   (`armwatch.eval_set`, `armwatch.sample.weight`, its inputs as a prompt's).
//!
//! Which attribute carries which field is [`OtlpMapping`] (first present wins, the innermost
//! scope first). Anything else is skipped and counted by reason, never an error: an OTLP
//! stream carries much more than experiments.

use crate::config::OtlpMapping;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use serde_json::{Map, Value as Json};

/// The event name of a feature-flag evaluation.
pub const FLAG_EVALUATION: &str = "feature_flag.evaluation";
/// The event name of an evaluation result.
pub const EVALUATION_RESULT: &str = "gen_ai.evaluation.result";
/// The event name of a routing decision.
pub const ROUTING: &str = "armwatch.routing";
/// The event name of an eval-set sample.
pub const SAMPLE: &str = "armwatch.sample";

/// Why a record gave no event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    /// Neither an exposure nor an evaluation (most of any OTLP stream).
    NotAnEvent,
    /// An exposure without experiment or arm.
    NoExperiment,
    /// An evaluation without judge or numeric score.
    NoScore,
    /// A routing decision without router, numeric score or route, or a sample without eval
    /// set.
    Incomplete,
}

impl Skip {
    /// Every reason.
    pub const ALL: [Skip; 4] = [
        Skip::NotAnEvent,
        Skip::NoExperiment,
        Skip::NoScore,
        Skip::Incomplete,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NotAnEvent => "not_an_event",
            Skip::NoExperiment => "no_experiment",
            Skip::NoScore => "no_score",
            Skip::Incomplete => "incomplete",
        }
    }
}

/// One mapped event: its JSON (the contract) and its Kafka key (the unit, else the experiment,
/// else the judge).
#[derive(Clone, Debug, PartialEq)]
pub struct Mapped {
    /// Message key.
    pub key: Option<String>,
    /// Message payload.
    pub payload: Vec<u8>,
}

/// What one request gave.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Events, in the order of the request's records.
    pub events: Vec<Mapped>,
    /// Records skipped, by reason (counts in [`Skip::ALL`] order).
    pub skipped: [u64; 4],
}

impl Outcome {
    fn skip(&mut self, why: Skip) {
        self.skipped[why as usize] += 1;
    }

    /// Records skipped in all.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.iter().sum()
    }
}

/// Attribute scopes, innermost first.
struct Scopes<'a>(&'a [&'a [KeyValue]]);

impl Scopes<'_> {
    fn get(&self, key: &str) -> Option<&AnyValue> {
        self.0
            .iter()
            .flat_map(|kvs| kvs.iter())
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .filter(|v| v.value.is_some())
    }

    fn first(&self, keys: &[String]) -> Option<&AnyValue> {
        keys.iter().find_map(|k| self.get(k))
    }

    fn text(&self, keys: &[String]) -> Option<String> {
        self.first(keys).and_then(text).filter(|s| !s.is_empty())
    }

    fn number(&self, keys: &[String]) -> Option<f64> {
        match self.first(keys)?.value.as_ref()? {
            Value::DoubleValue(x) => Some(*x),
            Value::IntValue(i) => Some(*i as f64),
            Value::StringValue(s) => s.trim().parse().ok(),
            _ => None,
        }
        .filter(|x: &f64| x.is_finite())
    }

    fn flag(&self, keys: &[String]) -> Option<bool> {
        match self.first(keys)?.value.as_ref()? {
            Value::BoolValue(b) => Some(*b),
            Value::StringValue(s) => Some(s == "true"),
            Value::IntValue(i) => Some(*i != 0),
            _ => None,
        }
    }
}

/// A scalar attribute as text (strings as they are, numbers and booleans printed).
fn text(v: &AnyValue) -> Option<String> {
    match v.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::DoubleValue(x) => Some(x.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A scalar attribute as an input value of the contract.
fn input_value(v: &AnyValue) -> Option<Json> {
    match v.value.as_ref()? {
        Value::StringValue(s) if !s.is_empty() => Some(Json::from(s.as_str())),
        Value::IntValue(i) => Some(Json::from(*i)),
        Value::DoubleValue(x) if x.is_finite() => Some(Json::from(*x)),
        Value::BoolValue(b) => Some(Json::from(*b)),
        _ => None,
    }
}

/// Milliseconds of a nanosecond time (0: unset).
fn ms(ns: u64) -> Option<i64> {
    (ns > 0).then_some((ns / 1_000_000) as i64)
}

/// Maps records with one mapping.
pub struct Mapper<'a> {
    m: &'a OtlpMapping,
}

/// The experiment side of an exposure.
struct Exposure {
    experiment: String,
    arm: String,
    unit: Option<String>,
    cluster: Option<String>,
}

impl<'a> Mapper<'a> {
    /// A mapper for `m`.
    pub fn new(m: &'a OtlpMapping) -> Mapper<'a> {
        Mapper { m }
    }

    fn exposure(&self, s: &Scopes<'_>) -> Option<Exposure> {
        Some(Exposure {
            experiment: s.text(&self.m.experiment)?,
            arm: s.text(&self.m.arm)?,
            unit: s.text(&self.m.unit),
            cluster: s.text(&self.m.cluster),
        })
    }

    /// `ev`'s `inputs`, when it has any.
    fn add_inputs(&self, ev: &mut Map<String, Json>, s: &Scopes<'_>) {
        let inputs = self.inputs(s);
        if !inputs.is_empty() {
            ev.insert("inputs".into(), Json::Object(inputs));
        }
    }

    /// The inputs of an exposure: the mapped attributes, then the prefixed ones.
    fn inputs(&self, s: &Scopes<'_>) -> Map<String, Json> {
        let mut out = Map::new();
        for (name, keys) in &self.m.inputs {
            if let Some(v) = s.first(keys).and_then(input_value) {
                out.insert(name.clone(), v);
            }
        }
        if !self.m.input_prefix.is_empty() {
            // innermost scope last, so that it wins
            for kvs in s.0.iter().rev() {
                for kv in kvs.iter() {
                    if let (Some(name), Some(v)) = (
                        kv.key.strip_prefix(&self.m.input_prefix),
                        kv.value.as_ref().and_then(input_value),
                    ) {
                        if !name.is_empty() {
                            out.insert(name.to_string(), v);
                        }
                    }
                }
            }
        }
        out
    }

    fn prompt(&self, x: &Exposure, ts: i64, s: &Scopes<'_>, out: &mut Outcome) {
        let mut ev = event("prompt", ts);
        ev.insert("experiment".into(), x.experiment.as_str().into());
        ev.insert("arm".into(), x.arm.as_str().into());
        if let Some(u) = &x.unit {
            ev.insert("unit".into(), u.as_str().into());
        }
        if let Some(c) = &x.cluster {
            ev.insert("cluster".into(), c.as_str().into());
        }
        self.add_inputs(&mut ev, s);
        let key = x.unit.clone().or_else(|| Some(x.experiment.clone()));
        push(out, key, ev);
    }

    fn judgment(&self, x: Option<&Exposure>, ts: i64, s: &Scopes<'_>, out: &mut Outcome) {
        let (Some(judge), Some(score)) = (s.text(&self.m.judge), s.number(&self.m.score)) else {
            out.skip(Skip::NoScore);
            return;
        };
        let mut ev = event("judgment", ts);
        if let Some(x) = x {
            ev.insert("experiment".into(), x.experiment.as_str().into());
            ev.insert("arm".into(), x.arm.as_str().into());
            if let Some(u) = &x.unit {
                ev.insert("unit".into(), u.as_str().into());
            }
        }
        let version = s
            .text(&self.m.judge_version)
            .unwrap_or_else(|| "unversioned".into());
        ev.insert("judge".into(), judge.as_str().into());
        ev.insert("judge_version".into(), version.into());
        ev.insert("score".into(), score.into());
        if let Some(c) = s.flag(&self.m.control) {
            ev.insert("control".into(), c.into());
        }
        let key = x
            .and_then(|x| x.unit.clone().or_else(|| Some(x.experiment.clone())))
            .or(Some(judge));
        push(out, key, ev);
    }

    fn routing(&self, ts: i64, s: &Scopes<'_>, out: &mut Outcome) {
        let (Some(router), Some(score), Some(route)) = (
            s.text(&self.m.router),
            s.number(&self.m.routing_score),
            s.text(&self.m.route),
        ) else {
            out.skip(Skip::Incomplete);
            return;
        };
        let mut ev = event("routing", ts);
        ev.insert("router".into(), router.as_str().into());
        ev.insert("score".into(), score.into());
        if let Some(t) = s.number(&self.m.threshold) {
            ev.insert("threshold".into(), t.into());
        }
        ev.insert("route".into(), route.into());
        push(out, Some(router), ev);
    }

    fn sample(&self, ts: i64, s: &Scopes<'_>, out: &mut Outcome) {
        let Some(eval_set) = s.text(&self.m.eval_set) else {
            out.skip(Skip::Incomplete);
            return;
        };
        let mut ev = event("sample", ts);
        ev.insert("eval_set".into(), eval_set.as_str().into());
        if let Some(w) = s.number(&self.m.weight).filter(|w| *w >= 0.0) {
            ev.insert("weight".into(), w.into());
        }
        self.add_inputs(&mut ev, s);
        push(out, Some(eval_set), ev);
    }

    /// The events of a traces request, in span order (a span's exposure before its events'
    /// judgments).
    pub fn traces(&self, req: &ExportTraceServiceRequest) -> Outcome {
        let mut out = Outcome::default();
        for rs in &req.resource_spans {
            let resource: &[KeyValue] = rs.resource.as_ref().map_or(&[], |r| &r.attributes);
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    let ts = ms(span.start_time_unix_nano).unwrap_or(0);
                    let span_scopes = [&span.attributes[..], resource];
                    let scopes = Scopes(&span_scopes);
                    // the span's own exposure (a GenAI span annotated with the experiment)
                    let mut exposure = self.exposure(&scopes);
                    let mut produced = false;
                    if let Some(x) = &exposure {
                        self.prompt(x, ts, &scopes, &mut out);
                        produced = true;
                    }
                    for ev in &span.events {
                        let ev_scopes = [&ev.attributes[..], &span.attributes[..], resource];
                        let scopes = Scopes(&ev_scopes);
                        let ts = ms(ev.time_unix_nano).unwrap_or(ts);
                        match ev.name.as_str() {
                            FLAG_EVALUATION => match self.exposure(&scopes) {
                                // the span already counted this experiment's exposure
                                Some(x)
                                    if exposure
                                        .as_ref()
                                        .is_some_and(|e| e.experiment == x.experiment) => {}
                                Some(x) => {
                                    self.prompt(&x, ts, &scopes, &mut out);
                                    produced = true;
                                    exposure.get_or_insert(x);
                                }
                                None => out.skip(Skip::NoExperiment),
                            },
                            EVALUATION_RESULT => {
                                self.judgment(exposure.as_ref(), ts, &scopes, &mut out);
                                produced = true;
                            }
                            ROUTING => {
                                self.routing(ts, &scopes, &mut out);
                                produced = true;
                            }
                            SAMPLE => {
                                self.sample(ts, &scopes, &mut out);
                                produced = true;
                            }
                            _ => {}
                        }
                    }
                    if !produced {
                        out.skip(Skip::NotAnEvent);
                    }
                }
            }
        }
        out
    }

    /// The events of a logs request, in record order.
    pub fn logs(&self, req: &ExportLogsServiceRequest) -> Outcome {
        let mut out = Outcome::default();
        for rl in &req.resource_logs {
            let resource: &[KeyValue] = rl.resource.as_ref().map_or(&[], |r| &r.attributes);
            for sl in &rl.scope_logs {
                for rec in &sl.log_records {
                    let scopes_list = [&rec.attributes[..], resource];
                    let scopes = Scopes(&scopes_list);
                    let ts = ms(rec.time_unix_nano)
                        .or(ms(rec.observed_time_unix_nano))
                        .unwrap_or(0);
                    // the event name: the record's field (OTLP 1.5+), else `event.name`
                    let name = if rec.event_name.is_empty() {
                        scopes.get("event.name").and_then(text).unwrap_or_default()
                    } else {
                        rec.event_name.clone()
                    };
                    match name.as_str() {
                        FLAG_EVALUATION => match self.exposure(&scopes) {
                            Some(x) => self.prompt(&x, ts, &scopes, &mut out),
                            None => out.skip(Skip::NoExperiment),
                        },
                        EVALUATION_RESULT => {
                            let x = self.exposure(&scopes);
                            self.judgment(x.as_ref(), ts, &scopes, &mut out);
                        }
                        ROUTING => self.routing(ts, &scopes, &mut out),
                        SAMPLE => self.sample(ts, &scopes, &mut out),
                        _ => out.skip(Skip::NotAnEvent),
                    }
                }
            }
        }
        out
    }
}

/// An event of the contract of `kind` at `ts` (its other fields to be added).
fn event(kind: &str, ts: i64) -> Map<String, Json> {
    let mut ev = Map::new();
    ev.insert("kind".into(), kind.into());
    ev.insert("ts".into(), ts.into());
    ev
}

fn push(out: &mut Outcome, key: Option<String>, ev: Map<String, Json>) {
    // a map of strings, numbers and booleans always serializes
    if let Ok(payload) = serde_json::to_vec(&Json::Object(ev)) {
        out.events.push(Mapped { key, payload });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{span::Event, ResourceSpans, ScopeSpans, Span};

    fn kv(k: &str, v: Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn s(x: &str) -> Value {
        Value::StringValue(x.into())
    }

    /// A log record named `name` at 2026-01-01T00:00:00Z.
    fn rec(name: &str, attrs: Vec<KeyValue>) -> LogRecord {
        LogRecord {
            time_unix_nano: 1_767_225_600_000_000_000,
            event_name: name.into(),
            attributes: attrs,
            ..Default::default()
        }
    }

    fn json(m: &Mapped) -> Json {
        serde_json::from_slice(&m.payload).expect("json")
    }

    #[test]
    fn a_genai_span_with_a_flag_event_and_an_evaluation() {
        let span = Span {
            start_time_unix_nano: 1_767_225_600_123_000_000,
            attributes: vec![
                kv("gen_ai.request.model", s("gpt-x")),
                kv("gen_ai.request.temperature", Value::DoubleValue(0.7)),
                kv("gen_ai.request.max_tokens", Value::IntValue(256)),
                kv("armwatch.input.tier", s("pro")),
                kv("http.route", s("/chat")),
            ],
            events: vec![
                Event {
                    name: FLAG_EVALUATION.into(),
                    time_unix_nano: 1_767_225_600_100_000_000,
                    attributes: vec![
                        kv("feature_flag.key", s("prompt-v")),
                        kv("feature_flag.result.variant", s("treatment")),
                        kv("feature_flag.context.id", s("u1")),
                    ],
                    ..Default::default()
                },
                Event {
                    name: EVALUATION_RESULT.into(),
                    time_unix_nano: 1_767_225_601_000_000_000,
                    attributes: vec![
                        kv("gen_ai.evaluation.name", s("quality")),
                        kv("gen_ai.evaluation.score.value", Value::DoubleValue(4.0)),
                        kv("armwatch.judge_version", s("judge-2")),
                    ],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let other = Span::default();
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("armwatch.input.locale", s("en-US"))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![span, other],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let m = OtlpMapping::default();
        let out = Mapper::new(&m).traces(&req);
        assert_eq!(out.events.len(), 2);
        assert_eq!(out.skipped, [1, 0, 0, 0]);
        assert_eq!(
            json(&out.events[0]),
            serde_json::json!({"kind":"prompt","ts":1_767_225_600_100i64,"experiment":"prompt-v","arm":"treatment","unit":"u1",
                "inputs":{"model":"gpt-x","temperature":0.7,"max_tokens":256,"tier":"pro","locale":"en-US"}})
        );
        assert_eq!(out.events[0].key.as_deref(), Some("u1"));
        assert_eq!(
            json(&out.events[1]),
            serde_json::json!({"kind":"judgment","ts":1_767_225_601_000i64,"experiment":"prompt-v","arm":"treatment","unit":"u1",
                "judge":"quality","judge_version":"judge-2","score":4.0})
        );
    }

    #[test]
    fn log_records_by_event_name() {
        let req = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![
                        rec(
                            FLAG_EVALUATION,
                            vec![
                                kv("feature_flag.key", s("e")),
                                kv("feature_flag.variant", s("control")),
                            ],
                        ),
                        rec(FLAG_EVALUATION, vec![kv("feature_flag.key", s("e"))]),
                        rec(
                            "",
                            vec![
                                kv("event.name", s(EVALUATION_RESULT)),
                                kv("gen_ai.evaluation.name", s("q")),
                                kv("gen_ai.evaluation.score.value", s("3.5")),
                            ],
                        ),
                        rec(
                            EVALUATION_RESULT,
                            vec![kv("gen_ai.evaluation.name", s("q"))],
                        ),
                        rec("", vec![]),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let m = OtlpMapping::default();
        let out = Mapper::new(&m).logs(&req);
        assert_eq!(out.skipped, [1, 1, 1, 0]);
        assert_eq!(out.events.len(), 2);
        assert_eq!(json(&out.events[0])["arm"], "control");
        assert_eq!(json(&out.events[1])["judge_version"], "unversioned");
        assert_eq!(json(&out.events[1])["score"], 3.5);
        assert_eq!(out.events[1].key.as_deref(), Some("q"));
    }

    /// Routing decisions and eval-set samples, as log records and as span events, become
    /// `routing` and `sample` events the decoder accepts; one without its fields is skipped
    /// as incomplete.
    #[test]
    fn routing_decisions_and_samples() {
        let routing = vec![
            kv("armwatch.router", s("confidence-gate")),
            kv("armwatch.routing.score", Value::DoubleValue(0.84)),
            kv("armwatch.routing.threshold", Value::DoubleValue(0.85)),
            kv("armwatch.routing.route", s("cheap")),
        ];
        let sample = vec![
            kv("armwatch.eval_set", s("nightly")),
            kv("armwatch.sample.weight", Value::IntValue(2)),
            kv("armwatch.input.tier", s("pro")),
        ];
        let logs = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![
                        rec(ROUTING, routing.clone()),
                        rec(SAMPLE, sample.clone()),
                        rec(ROUTING, vec![kv("armwatch.router", s("g"))]),
                        rec(SAMPLE, vec![]),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let m = OtlpMapping::default();
        let from_logs = Mapper::new(&m).logs(&logs);
        assert_eq!(from_logs.skipped, [0, 0, 0, 2]);
        assert_eq!(
            json(&from_logs.events[0]),
            serde_json::json!({"kind":"routing","ts":1_767_225_600_000i64,"router":"confidence-gate",
                "score":0.84,"threshold":0.85,"route":"cheap"})
        );
        assert_eq!(from_logs.events[0].key.as_deref(), Some("confidence-gate"));
        assert_eq!(
            json(&from_logs.events[1]),
            serde_json::json!({"kind":"sample","ts":1_767_225_600_000i64,"eval_set":"nightly",
                "weight":2.0,"inputs":{"tier":"pro"}})
        );
        let event = |name: &str, attributes: Vec<KeyValue>| Event {
            name: name.into(),
            time_unix_nano: 1_767_225_600_000_000_000,
            attributes,
            ..Default::default()
        };
        let traces = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        events: vec![event(ROUTING, routing), event(SAMPLE, sample)],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let from_spans = Mapper::new(&m).traces(&traces);
        assert_eq!(from_spans.events, from_logs.events);
        // what the mapping makes is what the decoder takes
        let limits = crate::event::Limits::default();
        for (e, kind) in from_logs.events.iter().zip(["routing", "sample"]) {
            let mut inputs = crate::event::Inputs::new();
            let ev = crate::event::decode_into(&e.payload, &limits, &mut inputs).expect("valid");
            assert_eq!(ev.kind().as_str(), kind);
        }
    }
}
