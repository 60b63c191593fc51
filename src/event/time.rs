//! Timestamps: RFC 3339 strings or integer epoch milliseconds.

use chrono::DateTime;

/// Parse an RFC 3339 timestamp to epoch milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}
