//! Why an event was refused. Every refusal is counted under one of these reasons, so bad input
//! never vanishes: the names are stable metric label values (a closed, small set).

use std::fmt;

/// The reason an incoming message was rejected. `as_str` is the metric label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The payload is larger than `limits.max_message_bytes`.
    Oversized,
    /// The payload is not valid UTF-8.
    NotUtf8,
    /// The payload is not JSON (syntax error).
    NotJson,
    /// The payload is JSON cut off before its end.
    Truncated,
    /// A field has the wrong JSON type (or the top level is not an object).
    WrongType,
    /// The same field appears twice.
    DuplicateField,
    /// A required field is missing or empty.
    MissingField,
    /// `kind` is not one of the four contract kinds.
    UnknownKind,
    /// A number is out of the finite `f64` range (JSON cannot say NaN; 1e999 is how inf arrives).
    NonFinite,
    /// `ts` is neither RFC 3339 nor integer epoch milliseconds.
    InvalidTs,
    /// More `inputs` than `limits.max_inputs_per_event`.
    TooManyInputs,
    /// The arm is not in the configured design of its experiment.
    UnknownArm,
    /// A new experiment beyond `limits.max_experiments`.
    ExperimentLimit,
    /// An empty Kafka message (tombstone or null payload).
    Empty,
    /// A new judge or router beyond the instrument limit.
    InstrumentLimit,
    /// A new experiment while the state is over `limits.max_memory_bytes`.
    MemoryLimit,
    /// Event time more than `limits.max_event_lateness_ms` behind the partition's stream time.
    Late,
}

impl RejectReason {
    /// All reasons, for pre-registering metric series at zero.
    pub const ALL: [RejectReason; 17] = [
        Self::Oversized,
        Self::NotUtf8,
        Self::NotJson,
        Self::Truncated,
        Self::WrongType,
        Self::DuplicateField,
        Self::MissingField,
        Self::UnknownKind,
        Self::NonFinite,
        Self::InvalidTs,
        Self::TooManyInputs,
        Self::UnknownArm,
        Self::ExperimentLimit,
        Self::Empty,
        Self::InstrumentLimit,
        Self::MemoryLimit,
        Self::Late,
    ];

    /// The stable label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oversized => "oversized",
            Self::NotUtf8 => "not_utf8",
            Self::NotJson => "not_json",
            Self::Truncated => "truncated",
            Self::WrongType => "wrong_type",
            Self::DuplicateField => "duplicate_field",
            Self::MissingField => "missing_field",
            Self::UnknownKind => "unknown_kind",
            Self::NonFinite => "non_finite",
            Self::InvalidTs => "invalid_ts",
            Self::TooManyInputs => "too_many_inputs",
            Self::UnknownArm => "unknown_arm",
            Self::ExperimentLimit => "experiment_limit",
            Self::Empty => "empty",
            Self::InstrumentLimit => "instrument_limit",
            Self::MemoryLimit => "memory_limit",
            Self::Late => "late",
        }
    }

    /// Index into `ALL` (dense counters instead of a map on the hot path).
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// The tag a custom serde error carries so that `classify` can recover the reason.
    pub(crate) fn tag(self) -> &'static str {
        match self {
            Self::InvalidTs => "armwatch:invalid_ts",
            Self::TooManyInputs => "armwatch:too_many_inputs",
            Self::NonFinite => "armwatch:non_finite",
            Self::DuplicateField => "armwatch:duplicate_field",
            _ => "armwatch:wrong_type",
        }
    }

    /// Map a serde_json error to a reason. Only runs on the (cold) rejection path.
    pub(crate) fn classify(err: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        match err.classify() {
            Category::Eof => Self::Truncated,
            Category::Io => Self::NotJson,
            Category::Syntax => {
                if err.to_string().starts_with("number out of range") {
                    Self::NonFinite
                } else {
                    Self::NotJson
                }
            }
            Category::Data => {
                let msg = err.to_string();
                if let Some(tag) = msg.strip_prefix("armwatch:") {
                    match tag.split_whitespace().next().unwrap_or("") {
                        "invalid_ts" => Self::InvalidTs,
                        "too_many_inputs" => Self::TooManyInputs,
                        "non_finite" => Self::NonFinite,
                        "duplicate_field" => Self::DuplicateField,
                        _ => Self::WrongType,
                    }
                } else {
                    Self::WrongType
                }
            }
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
