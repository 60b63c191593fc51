//! What the bench binaries read from their command line and environment.

// each bench binary compiles this module and uses a part of it
#![allow(dead_code)]

/// The workloads named on the command line (`cargo bench --bench X -- fleet`): the
/// arguments that are not flags (none: every workload).
pub fn workload_filter() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect()
}

/// Whether `name` is selected by `filter` (see [`workload_filter`]).
pub fn selected(filter: &[String], name: &str) -> bool {
    filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()))
}

/// The number in environment variable `var`, or `default`.
pub fn env_number(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The unit id of a simulated event (its bytes; empty if it has none): the key of an input
/// keyed by unit.
pub fn unit_of(event: &[u8]) -> &[u8] {
    const FIELD: &[u8] = b"\"unit\":\"";
    let Some(at) = event.windows(FIELD.len()).position(|w| w == FIELD) else {
        return &[];
    };
    let rest = &event[at + FIELD.len()..];
    &rest[..rest.iter().position(|&b| b == b'"').unwrap_or(rest.len())]
}
