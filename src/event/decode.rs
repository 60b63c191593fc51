//! Decoding and validating one message against the contract.
//!
//! serde's derive does the structural work on borrowed data; custom visitors for `ts` and
//! `inputs` keep it allocation-free; the semantic checks (required fields per kind) follow.

use super::{Body, Event, InputValue, Inputs, Judgment, Kind, RejectReason, Routing, Sample};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// Size limits applied while decoding.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Messages larger than this are rejected as `oversized` before parsing.
    pub max_message_bytes: usize,
    /// Events with more inputs than this are rejected as `too_many_inputs`.
    pub max_inputs_per_event: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            max_inputs_per_event: 64,
        }
    }
}

/// Decode one message into an [`Event`] whose inputs live in the caller's `inputs` buffer (on
/// the caller's stack: no heap allocation, and the inputs are never moved). Never panics.
pub fn decode_into<'s, 'a: 's>(
    payload: &'a [u8],
    limits: &Limits,
    inputs: &'s mut Inputs<'a>,
) -> Result<Event<'s>, RejectReason> {
    if payload.is_empty() {
        return Err(RejectReason::Empty);
    }
    if payload.len() > limits.max_message_bytes {
        return Err(RejectReason::Oversized);
    }
    let Ok(text) = simdutf8::basic::from_utf8(payload) else {
        return Err(RejectReason::NotUtf8);
    };
    inputs.clear();
    // filled in place: returning the ~400-byte struct by value cost a memcpy per event
    let mut raw = RawEvent::default();
    if super::fast::decode(text, &mut raw, inputs, limits.max_inputs_per_event).is_ok() {
        return raw.validate(&inputs[..]);
    }
    raw = RawEvent::default();
    inputs.clear();
    serde_path(text, limits, &mut raw, inputs)?;
    raw.validate(&inputs[..])
}

/// The general path: serde_json over the whole message, naming the reason of a rejection.
fn serde_path<'a>(
    text: &'a str,
    limits: &Limits,
    raw: &mut RawEvent<'a>,
    inputs: &mut Inputs<'a>,
) -> Result<(), RejectReason> {
    // from_str: UTF-8 was validated once, above, and the parser does not validate it again
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(EventVisitor { raw, inputs })
        .map_err(|e| RejectReason::classify(&e))?;
    de.end().map_err(|e| RejectReason::classify(&e))?;
    if inputs.len() > limits.max_inputs_per_event {
        return Err(RejectReason::TooManyInputs);
    }
    Ok(())
}

/// The top-level fields, before the semantic checks.
#[derive(Default)]
pub(super) struct RawEvent<'a> {
    /// Fields seen so far, one bit each (a second occurrence is a `duplicate_field`).
    seen: u32,
    kind: Option<BStr<'a>>,
    ts: Option<Ts>,
    experiment: Option<BStr<'a>>,
    arm: Option<BStr<'a>>,
    unit: Option<BStr<'a>>,
    cluster: Option<BStr<'a>>,
    router: Option<BStr<'a>>,
    score: Option<f64>,
    threshold: Option<f64>,
    route: Option<BStr<'a>>,
    judge: Option<BStr<'a>>,
    judge_version: Option<BStr<'a>>,
    category: Option<BStr<'a>>,
    control: Option<bool>,
    eval_set: Option<BStr<'a>>,
    weight: Option<f64>,
}

/// Where the value of a known top-level field goes.
pub(super) enum Slot<'r, 'a> {
    Str(&'r mut Option<BStr<'a>>),
    Num(&'r mut Option<f64>),
    Ts(&'r mut Option<Ts>),
    Flag(&'r mut Option<bool>),
    /// Parsed into the caller's inputs buffer.
    Inputs,
}

/// A field that appeared twice in one event.
pub(super) struct Duplicate;

impl<'a> RawEvent<'a> {
    /// The one table of the contract's top-level fields, for both decoders: the slot of field
    /// `key` (`None`: unknown, to be skipped), or `Duplicate` when it was seen already.
    #[inline]
    pub(super) fn field(&mut self, key: &str) -> Result<Option<Slot<'_, 'a>>, Duplicate> {
        let (bit, slot) = match key {
            "kind" => (0, Slot::Str(&mut self.kind)),
            "ts" => (1, Slot::Ts(&mut self.ts)),
            "experiment" => (2, Slot::Str(&mut self.experiment)),
            "arm" => (3, Slot::Str(&mut self.arm)),
            "unit" => (4, Slot::Str(&mut self.unit)),
            "cluster" => (5, Slot::Str(&mut self.cluster)),
            "inputs" => (6, Slot::Inputs),
            "router" => (7, Slot::Str(&mut self.router)),
            "score" => (8, Slot::Num(&mut self.score)),
            "threshold" => (9, Slot::Num(&mut self.threshold)),
            "route" => (10, Slot::Str(&mut self.route)),
            "judge" => (11, Slot::Str(&mut self.judge)),
            "judge_version" => (12, Slot::Str(&mut self.judge_version)),
            "category" => (13, Slot::Str(&mut self.category)),
            "control" => (14, Slot::Flag(&mut self.control)),
            "eval_set" => (15, Slot::Str(&mut self.eval_set)),
            "weight" => (16, Slot::Num(&mut self.weight)),
            _ => return Ok(None),
        };
        if self.seen & (1 << bit) != 0 {
            return Err(Duplicate);
        }
        self.seen |= 1 << bit;
        Ok(Some(slot))
    }
}

/// Visits the top-level object; `inputs` is parsed straight into the caller's buffer.
struct EventVisitor<'b, 'a> {
    raw: &'b mut RawEvent<'a>,
    inputs: &'b mut Inputs<'a>,
}

impl<'de: 'a, 'a> Visitor<'de> for EventVisitor<'_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<(), M::Error> {
        while let Some(BStr(key)) = m.next_key::<BStr<'de>>()? {
            let slot = self
                .raw
                .field(&key)
                .map_err(|Duplicate| de::Error::custom(RejectReason::DuplicateField.tag()))?;
            match slot {
                None => {
                    m.next_value::<de::IgnoredAny>()?;
                }
                Some(Slot::Str(v)) => *v = m.next_value()?,
                Some(Slot::Num(v)) => *v = m.next_value()?,
                Some(Slot::Ts(v)) => *v = m.next_value()?,
                Some(Slot::Flag(v)) => *v = m.next_value()?,
                Some(Slot::Inputs) => m.next_value_seed(InputsSeed {
                    out: &mut *self.inputs,
                })?,
            }
        }
        Ok(())
    }
}

/// A required string: present and not empty.
fn required(v: Option<BStr<'_>>) -> Result<Cow<'_, str>, RejectReason> {
    optional(v).ok_or(RejectReason::MissingField)
}

/// An optional string: an empty string counts as absent.
fn optional(v: Option<BStr<'_>>) -> Option<Cow<'_, str>> {
    v.map(|s| s.0).filter(|s| !s.is_empty())
}

/// A string that borrows from the message unless it has escapes. (serde's own `Cow<str>`
/// impl always copies.)
pub(super) struct BStr<'a>(pub(super) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for BStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = BStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<BStr<'a>, E> {
                Ok(BStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BStr<'a>, E> {
                Ok(BStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<BStr<'a>, E> {
                Ok(BStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

impl<'a> RawEvent<'a> {
    fn validate<'s>(
        self,
        inputs: &'s [(Cow<'s, str>, InputValue<'s>)],
    ) -> Result<Event<'s>, RejectReason>
    where
        'a: 's,
    {
        let kind_name = self.kind.ok_or(RejectReason::MissingField)?.0;
        let kind = Kind::parse(&kind_name).ok_or(RejectReason::UnknownKind)?;
        let ts_ms = self.ts.ok_or(RejectReason::MissingField)?.0;
        let experiment = optional(self.experiment);
        let arm = optional(self.arm);
        if (kind == Kind::Prompt || experiment.is_some()) && (experiment.is_none() || arm.is_none())
        {
            return Err(RejectReason::MissingField);
        }
        let body = match kind {
            Kind::Prompt => Body::Prompt,
            Kind::Routing => Body::Routing(Routing {
                router: required(self.router)?,
                score: self.score.ok_or(RejectReason::MissingField)?,
                threshold: self.threshold,
                route: required(self.route)?,
            }),
            Kind::Judgment => Body::Judgment(Judgment {
                judge: required(self.judge)?,
                judge_version: required(self.judge_version)?,
                score: self.score.ok_or(RejectReason::MissingField)?,
                category: optional(self.category),
                control: self.control.unwrap_or(false),
            }),
            Kind::Sample => {
                if self.weight.is_some_and(|w| w < 0.0) {
                    return Err(RejectReason::WrongType);
                }
                Body::Sample(Sample {
                    eval_set: required(self.eval_set)?,
                    weight: self.weight,
                })
            }
        };
        Ok(Event {
            ts_ms,
            experiment,
            arm,
            unit: optional(self.unit),
            cluster: optional(self.cluster),
            inputs,
            body,
        })
    }
}

/// `ts`: integer epoch milliseconds or an RFC 3339 string.
pub(super) struct Ts(pub(super) i64);

impl<'de> Deserialize<'de> for Ts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Ts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("RFC 3339 string or integer epoch milliseconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ts, E> {
                Ok(Ts(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ts, E> {
                i64::try_from(v)
                    .map(Ts)
                    .map_err(|_| E::custom(RejectReason::InvalidTs.tag()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Ts, E> {
                Err(E::custom(RejectReason::InvalidTs.tag()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ts, E> {
                super::parse_rfc3339_ms(v)
                    .map(Ts)
                    .ok_or_else(|| E::custom(RejectReason::InvalidTs.tag()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `inputs`: an object of name -> string | number | bool (or null: none), pushed into `out`.
struct InputsSeed<'b, 'a> {
    out: &'b mut Inputs<'a>,
}

/// Hard cap while parsing, so a hostile object cannot grow the buffer without bound; the
/// configurable (lower) limit is applied after.
const PARSE_INPUT_CAP: usize = 1024;

impl<'de: 'a, 'a> DeserializeSeed<'de> for InputsSeed<'_, 'a> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for InputsSeed<'_, 'a> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of name -> string | number | bool")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<(), M::Error> {
        while let Some(BStr(name)) = m.next_key::<BStr<'a>>()? {
            let value = m.next_value::<RawValue<'a>>()?;
            if self.out.len() == PARSE_INPUT_CAP {
                return Err(de::Error::custom(RejectReason::TooManyInputs.tag()));
            }
            self.out.push((name, value.0));
        }
        Ok(())
    }
}

struct RawValue<'a>(InputValue<'a>);

impl<'de: 'a, 'a> Deserialize<'de> for RawValue<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawValue<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("string, number or bool")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawValue<'a>, E> {
                Ok(RawValue(InputValue::Bool(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawValue<'a>, E> {
                Ok(RawValue(InputValue::Num(v as f64)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawValue<'a>, E> {
                Ok(RawValue(InputValue::Num(v as f64)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawValue<'a>, E> {
                if v.is_finite() {
                    Ok(RawValue(InputValue::Num(v)))
                } else {
                    Err(E::custom(RejectReason::NonFinite.tag()))
                }
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<RawValue<'a>, E> {
                Ok(RawValue(InputValue::Str(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawValue<'a>, E> {
                Ok(RawValue(InputValue::Str(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RawValue<'a>, E> {
                Ok(RawValue(InputValue::Str(Cow::Owned(v))))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &'static str) -> Result<Event<'static>, RejectReason> {
        decode_into(s.as_bytes(), &Limits::default(), Box::leak(Box::default()))
    }

    fn dec_bytes(b: &[u8], limits: &Limits) -> Option<RejectReason> {
        let mut inputs = Inputs::new();
        decode_into(b, limits, &mut inputs).err()
    }

    #[test]
    fn prompt_decodes_borrowed() {
        let e = dec(r#"{"kind":"prompt","ts":"2026-01-02T03:04:05Z","experiment":"x","arm":"control","unit":"u1","inputs":{"tier":"pro","temperature":0.7,"cached":true},"extra":[1,2]}"#).unwrap();
        assert_eq!(e.kind(), Kind::Prompt);
        assert_eq!(e.ts_ms, 1_767_323_045_000);
        assert!(matches!(e.experiment, Some(Cow::Borrowed("x"))));
        assert_eq!(e.inputs.len(), 3);
        assert!(matches!(e.inputs[0].0, Cow::Borrowed("tier")));
        assert!(matches!(
            e.inputs[0].1,
            InputValue::Str(Cow::Borrowed("pro"))
        ));
        assert_eq!(e.inputs[1].1, InputValue::Num(0.7));
        assert_eq!(e.inputs[2].1, InputValue::Bool(true));
    }

    #[test]
    fn escaped_strings_are_owned_and_correct() {
        let e = dec(
            r#"{"kind":"prompt","ts":1,"experiment":"a\"b","arm":"c","inputs":{"t\u00e9":"x\ny"}}"#,
        )
        .unwrap();
        assert_eq!(e.experiment.as_deref(), Some("a\"b"));
        assert_eq!(e.inputs[0].0, "té");
        assert_eq!(e.inputs[0].1, InputValue::Str(Cow::Borrowed("x\ny")));
        assert!(matches!(e.arm, Some(Cow::Borrowed("c"))));
    }

    #[test]
    fn null_inputs_mean_none() {
        let e =
            dec(r#"{"kind":"prompt","ts":1,"experiment":"x","arm":"a","inputs":null}"#).unwrap();
        assert!(e.inputs.is_empty());
    }

    #[test]
    fn other_kinds_decode() {
        let r = dec(r#"{"kind":"routing","ts":5,"router":"gate","score":0.8,"threshold":0.85,"route":"premium"}"#).unwrap();
        assert!(matches!(r.body, Body::Routing(Routing { score, .. }) if score == 0.8));
        let j = dec(r#"{"kind":"judgment","ts":5,"judge":"q","judge_version":"v2","score":7,"control":true,"experiment":"x","arm":"a"}"#).unwrap();
        assert!(matches!(
            j.body,
            Body::Judgment(Judgment { control: true, .. })
        ));
        let s = dec(r#"{"kind":"sample","ts":5,"eval_set":"nightly","weight":2.0,"inputs":{"tier":"free"}}"#).unwrap();
        assert_eq!(s.kind(), Kind::Sample);
    }

    #[test]
    fn rejections_have_reasons() {
        use RejectReason::*;
        let cases: &[(&[u8], RejectReason)] = &[
            (b"", Empty),
            (b"\xff\xfe{}", NotUtf8),
            (b"hello", NotJson),
            (br#"{"kind":"prompt","ts":1,"experiment":"x","arm"#, Truncated),
            (br#"{"kind":"prompt","ts":1,"experiment":"x"}"#, MissingField),
            (br#"{"kind":"routing","ts":1,"score":1,"route":"a"}"#, MissingField),
            (br#"{"kind":"judgment","ts":1,"experiment":"x","judge":"j","judge_version":"1","score":1}"#, MissingField),
            (br#"{"kind":"prompt","experiment":"x","arm":"a"}"#, MissingField),
            (br#"{"kind":"click","ts":1}"#, UnknownKind),
            (br#"{"ts":1}"#, MissingField),
            (br#"{"kind":"prompt","ts":"yesterday","experiment":"x","arm":"a"}"#, InvalidTs),
            (br#"{"kind":"prompt","ts":1.5,"experiment":"x","arm":"a"}"#, InvalidTs),
            (br#"{"kind":"prompt","ts":1,"experiment":7,"arm":"a"}"#, WrongType),
            (br#"{"kind":"prompt","ts":1,"experiment":"x","arm":"a","inputs":{"t":[1]}}"#, WrongType),
            (br#"{"kind":"prompt","ts":1,"experiment":"x","arm":"a","inputs":{"t":null}}"#, WrongType),
            (br#"{"kind":"prompt","ts":1,"experiment":"x","arm":"a","inputs":{"t":1e999}}"#, NonFinite),
            (br#"{"kind":"routing","ts":1,"router":"r","score":1e400,"route":"a"}"#, NonFinite),
            (br#"{"kind":"prompt","kind":"prompt","ts":1,"experiment":"x","arm":"a"}"#, DuplicateField),
            (br#"[1,2]"#, WrongType),
            (br#"{"kind":"prompt","ts":1,"experiment":"x","arm":"a"} trailing"#, NotJson),
            (br#"{"kind":"sample","ts":1,"eval_set":"e","weight":-1}"#, WrongType),
        ];
        for (input, want) in cases {
            let got = dec_bytes(input, &Limits::default());
            assert_eq!(
                got,
                Some(*want),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn limits_apply() {
        let limits = Limits {
            max_message_bytes: 40,
            max_inputs_per_event: 2,
        };
        let big = br#"{"kind":"prompt","ts":1,"experiment":"x","arm":"a","inputs":{}}"#;
        assert_eq!(dec_bytes(big, &limits), Some(RejectReason::Oversized));
        let limits = Limits {
            max_message_bytes: 1000,
            max_inputs_per_event: 2,
        };
        let many =
            br#"{"kind":"prompt","ts":1,"experiment":"x","arm":"a","inputs":{"a":1,"b":2,"c":3}}"#;
        assert_eq!(dec_bytes(many, &limits), Some(RejectReason::TooManyInputs));
    }

    /// The same text through the fast path (when it does not give up) and the serde path.
    type Both<'a> = (
        Result<Event<'a>, RejectReason>,
        Result<Event<'a>, RejectReason>,
    );

    fn both<'a>(text: &'a str) -> Option<Both<'a>> {
        let limits = Limits::default();
        let (mut r1, mut i1) = (RawEvent::default(), Inputs::new());
        super::super::fast::decode(text, &mut r1, &mut i1, limits.max_inputs_per_event).ok()?;
        let (mut r2, mut i2) = (RawEvent::default(), Inputs::new());
        let slow = serde_path(text, &limits, &mut r2, &mut i2);
        let i1: &'a Inputs<'a> = Box::leak(Box::new(i1));
        let i2: &'a Inputs<'a> = Box::leak(Box::new(i2));
        Some((r1.validate(i1), slow.and_then(|()| r2.validate(i2))))
    }

    fn json_piece() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just("\"prompt\"".to_string()),
            Just("\"routing\"".to_string()),
            Just("\"a\\\"b\"".to_string()),
            Just("\"x\\u00e9\"".to_string()),
            Just("\"2026-01-02T03:04:05Z\"".to_string()),
            Just("\"é ü\"".to_string()),
            Just("\"\"".to_string()),
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            Just("-0".to_string()),
            Just("-0.0".to_string()),
            Just("1e999".to_string()),
            Just("01".to_string()),
            Just("1.".to_string()),
            Just("18446744073709551616".to_string()),
            Just("9223372036854775808".to_string()),
            Just("-9223372036854775808".to_string()),
            Just("[1,2]".to_string()),
            Just("{\"a\":1}".to_string()),
            any::<i64>().prop_map(|v| v.to_string()),
            any::<u64>().prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| format!("{v:e}")),
            (0.0f64..1e6).prop_map(|v| v.to_string()),
            "[a-z]{0,12}".prop_map(|v| format!("\"{v}\"")),
        ]
    }

    fn json_event() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let key = prop_oneof![
            Just("kind"),
            Just("ts"),
            Just("experiment"),
            Just("arm"),
            Just("unit"),
            Just("cluster"),
            Just("router"),
            Just("score"),
            Just("threshold"),
            Just("route"),
            Just("judge"),
            Just("judge_version"),
            Just("category"),
            Just("control"),
            Just("eval_set"),
            Just("weight"),
            Just("inputs"),
            Just("other"),
        ];
        let ws = prop_oneof![Just(""), Just(""), Just(" "), Just("\n\t ")];
        let inputs = proptest::collection::vec(("[a-c]{1,2}", json_piece()), 0..5).prop_map(|v| {
            let body: Vec<String> = v.iter().map(|(k, x)| format!("\"{k}\":{x}")).collect();
            format!("{{{}}}", body.join(","))
        });
        let field = (key, json_piece(), inputs, ws.clone()).prop_map(|(k, v, inp, w)| {
            let v = if k == "inputs" { inp } else { v };
            format!("{w}\"{k}\"{w}:{w}{v}{w}")
        });
        let fixed =
            Just(r#""kind":"prompt","ts":1767225600000,"experiment":"e","arm":"a""#.to_string());
        (
            proptest::option::of(fixed),
            proptest::collection::vec(field, 0..8),
            ws,
            any::<bool>(),
        )
            .prop_map(|(f, fields, w, trailing)| {
                let mut all: Vec<String> = f.into_iter().collect();
                all.extend(fields);
                format!(
                    "{w}{{{}}}{w}{}",
                    all.join(","),
                    if trailing { "x" } else { "" }
                )
            })
    }

    #[test]
    fn simulated_events_take_the_fast_path() {
        let mut sim = crate::sim::Simulator::single(1, Default::default()).with_prompt_tokens();
        let mut buf = Vec::new();
        for _ in 0..2_000 {
            sim.next_event(&mut buf);
            let text = std::str::from_utf8(&buf).unwrap();
            let (fast, slow) = both(text).expect("the fast path gave up on a simulated event");
            assert_eq!(fast, slow);
            assert!(fast.is_ok(), "{text}");
        }
    }

    #[test]
    fn fast_path_takes_plain_events_and_leaves_the_rest() {
        let taken = [
            r#" { "kind" : "routing" , "ts":1,"router":"r","score":-2.5e-3,"route":"b","x":true } "#,
            r#"{"kind":"prompt","ts":"2026-01-02T03:04:05Z","experiment":"é","arm":"a","inputs":{"n":-7,"m":18446744073709551615,"b":false}}"#,
            r#"{"kind":"judgment","ts":0,"judge":"j","judge_version":"v","score":1,"control":true}"#,
        ];
        for t in taken {
            let (fast, slow) = both(t).expect(t);
            assert_eq!(fast, slow, "{t}");
            assert!(fast.is_ok(), "{t}");
        }
        let left = [
            r#"{"kind":"prompt","ts":1,"experiment":"a\"b","arm":"a"}"#,
            r#"{"kind":"prompt","ts":1,"experiment":"e","arm":"a","inputs":null}"#,
            r#"{"kind":"prompt","ts":1,"experiment":"e","arm":"a","x":[1]}"#,
            r#"{"kind":"prompt","ts":1,"kind":"prompt"}"#,
            r#"{"kind":"prompt","ts":-0}"#,
            r#"{"kind":"prompt","ts":1,"score":1e999}"#,
            r#"{"kind":"prompt","ts":1,}"#,
            r#"{"kind":"prompt","ts":1} x"#,
        ];
        for t in left {
            assert!(both(t).is_none(), "{t}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        #[test]
        fn fast_path_agrees_with_serde(text in json_event()) {
            if let Some((fast, slow)) = both(&text) {
                proptest::prop_assert_eq!(fast, slow, "{}", text);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = dec_bytes(&bytes, &Limits::default());
        }

        #[test]
        fn never_panics_on_mutated_events(cut in 0usize..120, flip in 0usize..120, byte in proptest::num::u8::ANY) {
            let mut v = br#"{"kind":"prompt","ts":"2026-01-02T03:04:05Z","experiment":"x","arm":"a","inputs":{"tier":"pro","t":0.5}}"#.to_vec();
            let f = flip % v.len();
            v[f] = byte;
            v.truncate(cut.min(v.len()));
            let _ = dec_bytes(&v, &Limits::default());
        }
    }
}
