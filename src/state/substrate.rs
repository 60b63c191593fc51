//! Substrate inputs of an experiment (embedding model, serving model, retriever index): the
//! values seen, when each appeared, and each arm's exposure to it.

/// Values remembered per substrate input.
pub const MAX_VALUES: usize = 16;

/// One value of a substrate input.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SubstrateValue {
    /// The value.
    pub value: Box<str>,
    /// Time of its first event.
    pub first_ts_ms: i64,
    /// Stream position of its first event.
    pub first_event: u64,
    /// Events per arm with this value.
    pub per_arm: Vec<u64>,
}

/// One substrate input of one experiment.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SubstrateState {
    /// Input name.
    pub name: Box<str>,
    /// Values in order of appearance.
    pub values: Vec<SubstrateValue>,
    /// Events whose value was not remembered (beyond [`MAX_VALUES`]).
    pub over_limit: u64,
}

impl SubstrateState {
    /// A substrate input not seen yet.
    pub fn new(name: &str) -> SubstrateState {
        SubstrateState {
            name: name.into(),
            values: Vec::new(),
            over_limit: 0,
        }
    }

    /// Count an event in `arm` (of `arms`); returns the value's index when it is new and not
    /// the first value (a change).
    pub fn observe(
        &mut self,
        value: &str,
        arm: usize,
        arms: usize,
        ts_ms: i64,
        seq: u64,
    ) -> Option<usize> {
        let (i, new) = match self.values.iter().position(|v| &*v.value == value) {
            Some(i) => (i, false),
            None if self.values.len() < MAX_VALUES => {
                self.values.push(SubstrateValue {
                    value: crate::state::display_label(value),
                    first_ts_ms: ts_ms,
                    first_event: seq,
                    per_arm: vec![0; arms],
                });
                (self.values.len() - 1, true)
            }
            None => {
                self.over_limit += 1;
                return None;
            }
        };
        let v = &mut self.values[i];
        if v.per_arm.len() < arms {
            v.per_arm.resize(arms, 0);
        }
        v.per_arm[arm] += 1;
        (new && i > 0).then_some(i)
    }
}
