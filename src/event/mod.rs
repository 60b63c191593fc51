//! Event contract v1: one JSON object per Kafka message, decoded without copying.
//!
//! Strings borrow from the message buffer (`Cow::Borrowed`) unless they contain JSON escapes,
//! and up to [`INLINE_INPUTS`] prompt inputs live in a buffer on the caller's stack, so decoding
//! a typical event does not allocate and the inputs are never copied.

mod decode;
mod fast;
mod predecoded;
mod reject;
mod time;

pub use decode::{decode_into, Limits};
pub use predecoded::Decoded;
pub use reject::RejectReason;
pub use time::parse_rfc3339_ms;

use smallvec::SmallVec;
use std::borrow::Cow;

/// How many inputs an event keeps inline before spilling to the heap.
pub const INLINE_INPUTS: usize = 8;

/// The four event kinds of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Prompt assembly: the exposure event of an experiment, carrying its inputs.
    Prompt,
    /// A routing decision against a score threshold.
    Routing,
    /// A judge model's score of an output.
    Judgment,
    /// A trace sampled into an eval set.
    Sample,
}

impl Kind {
    /// All kinds, for dense counters.
    pub const ALL: [Kind; 4] = [Kind::Prompt, Kind::Routing, Kind::Judgment, Kind::Sample];

    /// The contract name (also the metric label value).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Prompt => "prompt",
            Kind::Routing => "routing",
            Kind::Judgment => "judgment",
            Kind::Sample => "sample",
        }
    }

    /// Index into `ALL`.
    pub fn index(self) -> usize {
        self as usize
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "prompt" => Some(Kind::Prompt),
            "routing" => Some(Kind::Routing),
            "judgment" => Some(Kind::Judgment),
            "sample" => Some(Kind::Sample),
            _ => None,
        }
    }
}

/// One value of a prompt-side input.
#[derive(Clone, Debug, PartialEq)]
pub enum InputValue<'a> {
    /// A categorical value.
    Str(Cow<'a, str>),
    /// A numeric value (always finite).
    Num(f64),
    /// A flag.
    Bool(bool),
}

impl InputValue<'_> {
    /// Append the value as text: strings as they are, `true`/`false`, numbers in Rust's
    /// shortest round-trip form, never with an exponent (`3`, `0.25`). Assignment keys and
    /// substrate values are compared in this form.
    pub fn write_text(&self, out: &mut String) {
        match self {
            InputValue::Str(s) => out.push_str(s),
            InputValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            InputValue::Num(x) => {
                use std::fmt::Write;
                let _ = write!(out, "{x}"); // writing to a String cannot fail
            }
        }
    }

    /// The value as text ([`Self::write_text`]): strings borrowed, other values written into
    /// `scratch` (cleared first), so no allocation once `scratch` has grown.
    pub fn as_text<'s>(&'s self, scratch: &'s mut String) -> &'s str {
        if let InputValue::Str(s) = self {
            return s;
        }
        scratch.clear();
        self.write_text(scratch);
        scratch
    }
}

/// The inputs of one event, in message order.
pub type Inputs<'a> = SmallVec<[(Cow<'a, str>, InputValue<'a>); INLINE_INPUTS]>;

/// Routing fields (`kind = "routing"`).
#[derive(Clone, Debug, PartialEq)]
pub struct Routing<'a> {
    /// Router name.
    pub router: Cow<'a, str>,
    /// The score compared with the threshold.
    pub score: f64,
    /// The threshold, when the event carries it.
    pub threshold: Option<f64>,
    /// The route taken.
    pub route: Cow<'a, str>,
}

/// Judgment fields (`kind = "judgment"`).
#[derive(Clone, Debug, PartialEq)]
pub struct Judgment<'a> {
    /// The judge's stable endpoint name.
    pub judge: Cow<'a, str>,
    /// The model version behind the endpoint.
    pub judge_version: Cow<'a, str>,
    /// The score given.
    pub score: f64,
    /// Optional category of the judged item.
    pub category: Option<Cow<'a, str>>,
    /// Whether the item belongs to the fixed control set.
    pub control: bool,
}

/// Eval-sampling fields (`kind = "sample"`).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample<'a> {
    /// The eval set the trace was sampled into.
    pub eval_set: Cow<'a, str>,
    /// Optional sampling weight (finite, non-negative).
    pub weight: Option<f64>,
}

/// The kind-specific part of an event.
#[derive(Clone, Debug, PartialEq)]
pub enum Body<'a> {
    /// Prompt events carry only the common fields.
    Prompt,
    /// See [`Routing`].
    Routing(Routing<'a>),
    /// See [`Judgment`].
    Judgment(Judgment<'a>),
    /// See [`Sample`].
    Sample(Sample<'a>),
}

/// A validated event, borrowing from the message it was decoded from.
#[derive(Clone, Debug, PartialEq)]
pub struct Event<'a> {
    /// Event time, epoch milliseconds.
    pub ts_ms: i64,
    /// Experiment id (required for prompts).
    pub experiment: Option<Cow<'a, str>>,
    /// Arm (required whenever `experiment` is present).
    pub arm: Option<Cow<'a, str>>,
    /// Randomization unit (user id).
    pub unit: Option<Cow<'a, str>>,
    /// Cluster (workspace) id.
    pub cluster: Option<Cow<'a, str>>,
    /// Prompt-side inputs (or a sample's segment fields), in the decoder's buffer.
    pub inputs: &'a [(Cow<'a, str>, InputValue<'a>)],
    /// The kind-specific fields.
    pub body: Body<'a>,
}

impl Event<'_> {
    /// The kind of this event.
    pub fn kind(&self) -> Kind {
        match self.body {
            Body::Prompt => Kind::Prompt,
            Body::Routing(_) => Kind::Routing,
            Body::Judgment(_) => Kind::Judgment,
            Body::Sample(_) => Kind::Sample,
        }
    }
}
