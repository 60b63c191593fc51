//! librdkafka's own log lines. A broker that is down makes every client (the consumer, the
//! producers, the watchdog) log the same connection error several times a second; here each
//! facility logs at most one line per [`EVERY`], with the count of the lines it held back, and
//! the text is escaped (it can carry strings from the broker). [`Quiet`] is the client context
//! of the clients that need nothing else from theirs.

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// At most one line per facility in this time.
pub const EVERY: Duration = Duration::from_secs(10);
/// Facilities remembered at most (librdkafka has a few dozen).
const MAX_FACILITIES: usize = 128;

/// Per facility: when it last logged, and the lines held back since.
fn limiter() -> &'static Mutex<HashMap<String, (Instant, u64)>> {
    static L: OnceLock<Mutex<HashMap<String, (Instant, u64)>>> = OnceLock::new();
    L.get_or_init(|| Mutex::new(HashMap::new()))
}

/// `Some(lines held back before this one)` when a line of `fac` may be logged now.
fn allow(fac: &str, now: Instant) -> Option<u64> {
    let mut map = limiter().lock().ok()?;
    let full = map.len() >= MAX_FACILITIES;
    match map.get_mut(fac) {
        Some((last, held)) if now.duration_since(*last) < EVERY => {
            *held += 1;
            None
        }
        Some((last, held)) => {
            *last = now;
            Some(std::mem::take(held))
        }
        None if full => None,
        None => {
            map.insert(fac.to_string(), (now, 0));
            Some(0)
        }
    }
}

/// Log one librdkafka line (rate-limited per facility, escaped).
pub fn log(level: RDKafkaLogLevel, fac: &str, msg: &str) {
    use RDKafkaLogLevel::*;
    if matches!(level, Debug) {
        tracing::debug!(target: "armwatch::kafka", facility = %fac.escape_debug(), "{}", msg.escape_debug());
        return;
    }
    let Some(suppressed) = allow(fac, Instant::now()) else {
        return;
    };
    let (fac, msg) = (fac.escape_debug(), msg.escape_debug());
    match level {
        Emerg | Alert | Critical | Error => {
            tracing::error!(target: "armwatch::kafka", facility = %fac, suppressed, "{msg}")
        }
        Warning => tracing::warn!(target: "armwatch::kafka", facility = %fac, suppressed, "{msg}"),
        _ => tracing::info!(target: "armwatch::kafka", facility = %fac, suppressed, "{msg}"),
    }
}

/// A client error (librdkafka's error callback: a broker down, all brokers down, an
/// authentication failure), rate-limited per error code like the log lines.
pub fn error(error: &rdkafka::error::KafkaError, reason: &str) {
    let code = error
        .rdkafka_error_code()
        .map_or_else(|| "error".to_string(), |c| format!("{c:?}"));
    if let Some(suppressed) = allow(&code, Instant::now()) {
        tracing::warn!(target: "armwatch::kafka", facility = %code, suppressed, "{}", reason.escape_debug());
    }
}

/// The `log` and `error` methods of a `ClientContext` impl that route the client's lines
/// through [`log`] and [`error`] (every client context of the daemon has them).
macro_rules! route_client_log {
    () => {
        /// Rate-limited and escaped (see [`crate::source::client_log`]).
        fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
            $crate::source::client_log::log(level, fac, log_message);
        }

        /// Rate-limited per error code (see [`crate::source::client_log`]).
        fn error(&self, e: rdkafka::error::KafkaError, reason: &str) {
            $crate::source::client_log::error(&e, reason);
        }
    };
}
pub(crate) use route_client_log;

/// A client context that only routes the client's log lines and errors through [`log`] and
/// [`error`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Quiet;

impl ClientContext for Quiet {
    route_client_log!();
}

impl ConsumerContext for Quiet {}

impl ProducerContext for Quiet {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_facility_per_interval_with_the_count_held_back() {
        let t0 = Instant::now();
        assert_eq!(allow("TEST-A", t0), Some(0));
        for _ in 0..5 {
            assert_eq!(allow("TEST-A", t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(allow("TEST-B", t0), Some(0), "facilities are limited apart");
        assert_eq!(
            allow("TEST-A", t0 + EVERY + Duration::from_secs(1)),
            Some(5)
        );
        assert_eq!(allow("TEST-A", t0 + EVERY + Duration::from_secs(2)), None);
    }
}
