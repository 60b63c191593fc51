//! Events decoded on one thread and applied on another.
//!
//! The Kafka source decodes on its consumer thread while the engine thread updates the state
//! (a two-stage pipeline: decoding is about a quarter of the per-event work, and the stages
//! then run on two cores). A decoded [`Event`] borrows from its message, so it cannot cross
//! threads on its own; here each event is kept as offsets into the buffer that holds the
//! messages (strings the decoder had to unescape go to a side buffer), plain data that moves
//! with the buffer, and is borrowed back as an [`Event`] on the other side without copying.

use super::{
    decode_into, Body, Event, InputValue, Inputs, Judgment, Limits, RejectReason, Routing, Sample,
};
use std::borrow::Cow;
use std::ops::Range;

/// A string: bytes `start..start + len` of the message buffer, or of the side buffer when
/// the top bit of `start` is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

const SIDE: u32 = 1 << 31;

#[derive(Clone, Copy, Debug)]
enum Value {
    Str(Span),
    Num(f64),
    Bool(bool),
}

#[derive(Clone, Copy, Debug)]
enum BodySpans {
    Prompt,
    Routing {
        router: Span,
        score: f64,
        threshold: Option<f64>,
        route: Span,
    },
    Judgment {
        judge: Span,
        judge_version: Span,
        score: f64,
        category: Option<Span>,
        control: bool,
    },
    Sample {
        eval_set: Span,
        weight: Option<f64>,
    },
}

#[derive(Clone, Copy, Debug)]
struct EventSpans {
    ts_ms: i64,
    experiment: Option<Span>,
    arm: Option<Span>,
    unit: Option<Span>,
    cluster: Option<Span>,
    /// Range in [`Decoded::inputs`].
    inputs: (u32, u32),
    body: BodySpans,
}

/// Messages and their decoded events, in message order (rejections included). The messages'
/// bytes live here and can only be appended to, so every span taken from them stays valid
/// UTF-8 at its offset until [`Decoded::clear`]: that is what makes reading them back without
/// a second UTF-8 check sound.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The messages, one after the other.
    bytes: Vec<u8>,
    /// Each message's `(start, end)` in `bytes`; `None` for a message without payload.
    messages: Vec<Option<(u32, u32)>>,
    events: Vec<Result<EventSpans, RejectReason>>,
    inputs: Vec<(Span, Value)>,
    /// Unescaped strings.
    side: String,
}

/// Records the strings of one event as spans of `buf` (the message is `buf[at]`).
struct Spanner<'d> {
    base: usize,
    msg: Range<usize>,
    side: &'d mut String,
}

impl Spanner<'_> {
    fn span(&mut self, s: &str) -> Option<Span> {
        let p = s.as_ptr() as usize;
        let (start, side) = if p >= self.msg.start && p + s.len() <= self.msg.end {
            (self.base + (p - self.msg.start), 0)
        } else {
            // unescaped (owned) or not from the message: kept in the side buffer
            let at = self.side.len();
            self.side.push_str(s);
            (at, SIDE)
        };
        let start = u32::try_from(start).ok().filter(|s| s & SIDE == 0)?;
        Some(Span {
            start: start | side,
            len: u32::try_from(s.len()).ok()?,
        })
    }

    fn opt(&mut self, s: &Option<Cow<'_, str>>) -> Option<Option<Span>> {
        match s {
            Some(s) => self.span(s).map(Some),
            None => Some(None),
        }
    }
}

impl Decoded {
    /// Forget every message and event (keeps the capacity).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.messages.clear();
        self.events.clear();
        self.inputs.clear();
        self.side.clear();
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether no message is held.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Bytes of the messages held.
    pub fn bytes_len(&self) -> usize {
        self.bytes.len()
    }

    /// Append a message (`None`: one without payload; a payload that would take the buffer
    /// past 4 GB is kept as one without), not decoded yet.
    pub fn push(&mut self, payload: Option<&[u8]>) {
        let span = payload.and_then(|p| {
            let start = u32::try_from(self.bytes.len()).ok()?;
            let end = u32::try_from(self.bytes.len() + p.len()).ok()?;
            self.bytes.extend_from_slice(p);
            Some((start, end))
        });
        self.messages.push(span);
    }

    /// The payload of message `i`.
    pub fn payload(&self, i: usize) -> Option<&[u8]> {
        let (a, b) = (*self.messages.get(i)?)?;
        self.bytes.get(a as usize..b as usize)
    }

    /// Decode every message not decoded yet (a message without payload is `empty`). A
    /// buffer past 2 GB (never, with the source's batch bounds) is rejected as `oversized`.
    pub fn decode(&mut self, limits: &Limits) {
        for i in self.events.len()..self.messages.len() {
            let Some((a, b)) = self.messages[i] else {
                self.events.push(Err(RejectReason::Empty));
                continue;
            };
            let (base, payload) = (a as usize, &self.bytes[a as usize..b as usize]);
            let mut inputs = Inputs::new();
            let res = decode_into(payload, limits, &mut inputs).and_then(|ev| {
                let msg = payload.as_ptr() as usize..payload.as_ptr() as usize + payload.len();
                let mut sp = Spanner {
                    base,
                    msg,
                    side: &mut self.side,
                };
                spans(&mut self.inputs, &ev, &mut sp).ok_or(RejectReason::Oversized)
            });
            self.events.push(res);
        }
    }
}

/// `ev` as spans (its inputs appended to `inputs`); `None` past 2 GB of buffer.
fn spans(
    inputs: &mut Vec<(Span, Value)>,
    ev: &Event<'_>,
    sp: &mut Spanner<'_>,
) -> Option<EventSpans> {
    let first = u32::try_from(inputs.len()).ok()?;
    for (name, v) in ev.inputs {
        let v = match v {
            InputValue::Str(s) => Value::Str(sp.span(s)?),
            InputValue::Num(x) => Value::Num(*x),
            InputValue::Bool(b) => Value::Bool(*b),
        };
        let name = sp.span(name)?;
        inputs.push((name, v));
    }
    let body = match &ev.body {
        Body::Prompt => BodySpans::Prompt,
        Body::Routing(r) => BodySpans::Routing {
            router: sp.span(&r.router)?,
            score: r.score,
            threshold: r.threshold,
            route: sp.span(&r.route)?,
        },
        Body::Judgment(j) => BodySpans::Judgment {
            judge: sp.span(&j.judge)?,
            judge_version: sp.span(&j.judge_version)?,
            score: j.score,
            category: sp.opt(&j.category)?,
            control: j.control,
        },
        Body::Sample(s) => BodySpans::Sample {
            eval_set: sp.span(&s.eval_set)?,
            weight: s.weight,
        },
    };
    Some(EventSpans {
        ts_ms: ev.ts_ms,
        experiment: sp.opt(&ev.experiment)?,
        arm: sp.opt(&ev.arm)?,
        unit: sp.opt(&ev.unit)?,
        cluster: sp.opt(&ev.cluster)?,
        inputs: (first, u32::try_from(inputs.len()).ok()?),
        body,
    })
}

impl Decoded {
    /// Event `i` (its rejection when it did not decode), borrowed from the messages, with its
    /// inputs in `inputs`.
    pub fn event<'s, 'a: 's>(
        &'a self,
        i: usize,
        inputs: &'s mut Inputs<'a>,
    ) -> Result<Event<'s>, RejectReason> {
        let buf = &self.bytes[..];
        let ev = *self
            .events
            .get(i)
            .ok_or(RejectReason::Truncated)?
            .as_ref()
            .map_err(|r| *r)?;
        let text = |s: Span| -> Cow<'a, str> {
            let (src, start) = if s.start & SIDE != 0 {
                (self.side.as_bytes(), (s.start & !SIDE) as usize)
            } else {
                (buf, s.start as usize)
            };
            let bytes = src.get(start..start + s.len as usize).unwrap_or_default();
            // the spans were taken from `&str`s of this buffer: valid UTF-8, checked again
            // only in debug builds
            debug_assert!(std::str::from_utf8(bytes).is_ok());
            // SAFETY: every span was recorded from a `&str` (the decoder validated the whole
            // message as UTF-8, and the side buffer is a `String`) at this exact offset of
            // `self.bytes` or `self.side`, which are only appended to until `clear` (which
            // also forgets the spans)
            Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(bytes) })
        };
        let opt = |s: Option<Span>| s.map(text);
        inputs.clear();
        let (a, b) = ev.inputs;
        for (name, v) in self.inputs.get(a as usize..b as usize).unwrap_or_default() {
            let v = match *v {
                Value::Str(s) => InputValue::Str(text(s)),
                Value::Num(x) => InputValue::Num(x),
                Value::Bool(b) => InputValue::Bool(b),
            };
            inputs.push((text(*name), v));
        }
        let body = match ev.body {
            BodySpans::Prompt => Body::Prompt,
            BodySpans::Routing {
                router,
                score,
                threshold,
                route,
            } => Body::Routing(Routing {
                router: text(router),
                score,
                threshold,
                route: text(route),
            }),
            BodySpans::Judgment {
                judge,
                judge_version,
                score,
                category,
                control,
            } => Body::Judgment(Judgment {
                judge: text(judge),
                judge_version: text(judge_version),
                score,
                category: opt(category),
                control,
            }),
            BodySpans::Sample { eval_set, weight } => Body::Sample(Sample {
                eval_set: text(eval_set),
                weight,
            }),
        };
        Ok(Event {
            ts_ms: ev.ts_ms,
            experiment: opt(ev.experiment),
            arm: opt(ev.arm),
            unit: opt(ev.unit),
            cluster: opt(ev.cluster),
            inputs: &inputs[..],
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Faults, Simulator};

    /// Every event of a mixed stream (escapes, all kinds, rejections) comes back equal to a
    /// direct decode of its message.
    #[test]
    fn events_come_back_as_decoded() {
        let mut msgs: Vec<Vec<u8>> = Vec::new();
        let mut sim = Simulator::single(5, Faults::default());
        let mut b = Vec::new();
        for _ in 0..300 {
            sim.next_event(&mut b);
            msgs.push(b.clone());
        }
        for m in [
            r#"{"kind":"prompt","ts":1,"experiment":"e\u00e9","arm":"c\"x","unit":"u\\1","inputs":{"t\nier":"p\tro","n":1.5,"b":true}}"#,
            r#"{"kind":"routing","ts":"2026-01-01T00:00:00Z","router":"r","score":0.4,"threshold":0.5,"route":"big"}"#,
            r#"{"kind":"judgment","ts":2,"experiment":"e","arm":"a","judge":"j","judge_version":"v\/2","score":0.9,"category":"c","control":true}"#,
            r#"{"kind":"sample","ts":3,"eval_set":"nightly","weight":2,"inputs":{"x":"y"}}"#,
            r#"{"kind":"prompt","ts":1"#,
            "",
            r#"{"kind":"nope"}"#,
        ] {
            msgs.push(m.as_bytes().to_vec());
        }
        let limits = Limits::default();
        let mut d = Decoded::default();
        for m in &msgs {
            d.push(Some(m));
        }
        d.decode(&limits);
        d.decode(&limits); // once only
        assert_eq!(d.len(), msgs.len());
        for (i, m) in msgs.iter().enumerate() {
            let mut direct_inputs = Inputs::new();
            let direct = decode_into(m, &limits, &mut direct_inputs);
            let mut inputs = Inputs::new();
            let back = d.event(i, &mut inputs);
            assert_eq!(back, direct, "message {i}");
        }
        d.clear();
        assert!(d.is_empty());
    }
}
