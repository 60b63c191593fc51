//! OpenTelemetry input: an OTLP/HTTP receiver (`POST /v1/traces`, `POST /v1/logs`; protobuf
//! or JSON bodies, optionally gzip) that maps records to events of the contract
//! ([`mapping`]) and produces them to the input topic, keyed by unit. The events then go the
//! way every event goes (consumed, checkpointed, merged across replicas): the receiver holds
//! no state of its own, and answers 200 only once Kafka has acknowledged every event of the
//! request (at least once; 503 otherwise, which OTLP exporters retry).

pub mod mapping;

use crate::config::{KafkaSettings, OtlpSettings};
use crate::source::client_log::Quiet;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use mapping::{Mapper, Outcome, Skip};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prometheus::{IntCounterVec, Opts, Registry};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

/// Why the receiver could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The producer could not be created.
    #[error("otlp: cannot create the Kafka producer: {0}")]
    Producer(#[from] rdkafka::error::KafkaError),
    /// The address could not be bound.
    #[error("otlp.listen: cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The two signals received.
#[derive(Clone, Copy, Debug)]
enum Signal {
    Traces,
    Logs,
}

impl Signal {
    fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
        }
    }
}

/// The receiver's metrics.
#[derive(Clone)]
struct Counters {
    /// `armwatch_otlp_records_total{signal, result}`: `produced`, or the reason skipped.
    records: IntCounterVec,
    /// `armwatch_otlp_requests_total{signal, code}`.
    requests: IntCounterVec,
}

impl Counters {
    fn new(r: &Registry) -> Counters {
        let records = IntCounterVec::new(
            Opts::new(
                "armwatch_otlp_records_total",
                "OTLP records received: `produced` (mapped to an event and produced to the input topic) or the reason skipped.",
            ),
            &["signal", "result"],
        )
        .expect("valid metric");
        let requests = IntCounterVec::new(
            Opts::new(
                "armwatch_otlp_requests_total",
                "OTLP/HTTP requests by HTTP status.",
            ),
            &["signal", "code"],
        )
        .expect("valid metric");
        // registered once per process: a second registration (tests) keeps the first
        let _ = r.register(Box::new(records.clone()));
        let _ = r.register(Box::new(requests.clone()));
        Counters { records, requests }
    }
}

struct Receiver {
    producer: FutureProducer<Quiet>,
    topic: String,
    settings: OtlpSettings,
    counters: Counters,
}

/// Serve OTLP/HTTP on `settings.otlp.listen` until `shutdown`, producing to `topic`.
pub async fn serve(
    otlp: &OtlpSettings,
    kafka: &KafkaSettings,
    limits: crate::http::Limits,
    registry: &Registry,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, OtlpError> {
    let addr = otlp.listen.clone().unwrap_or_default();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| OtlpError::Listen {
            addr: addr.clone(),
            source,
        })?;
    let producer: FutureProducer<Quiet> = crate::source::kafka::client_config(
        kafka,
        &[("linger.ms", "5"), ("enable.idempotence", "true")],
    )
    .create_with_context(Quiet)?;
    let topic = otlp
        .topic
        .clone()
        .or_else(|| kafka.topics.first().cloned())
        .unwrap_or_default();
    tracing::info!(addr = %addr, topic = %topic, "receiving OTLP/HTTP on /v1/traces and /v1/logs");
    let app = router(Arc::new(Receiver {
        producer,
        topic,
        settings: otlp.clone(),
        counters: Counters::new(registry),
    }));
    Ok(tokio::spawn(async move {
        if let Err(e) = crate::http::serve_router(listener, app, limits, shutdown).await {
            tracing::error!(error = %e, "otlp receiver failed");
        }
    }))
}

fn router(r: Arc<Receiver>) -> Router {
    // a body over the limit is refused (413) while it is read, never held whole
    let limit = r.settings.max_body_bytes;
    Router::new()
        .route(
            "/v1/traces",
            post(
                |State(r): State<Arc<Receiver>>, h: HeaderMap, b: Bytes| async move {
                    receive(&r, Signal::Traces, &h, b).await
                },
            ),
        )
        .route(
            "/v1/logs",
            post(
                |State(r): State<Arc<Receiver>>, h: HeaderMap, b: Bytes| async move {
                    receive(&r, Signal::Logs, &h, b).await
                },
            ),
        )
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(r)
}

/// The body's encoding.
#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

async fn receive(r: &Receiver, signal: Signal, headers: &HeaderMap, body: Bytes) -> Response {
    let resp = handle(r, signal, headers, body).await;
    r.counters
        .requests
        .with_label_values(&[signal.as_str(), resp.status().as_str()])
        .inc();
    resp
}

async fn handle(r: &Receiver, signal: Signal, headers: &HeaderMap, body: Bytes) -> Response {
    let max = r.settings.max_body_bytes;
    if body.len() > max {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            "body over otlp.max_body_bytes",
        )
            .into_response();
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let encoding = if content_type.starts_with("application/x-protobuf") {
        Encoding::Protobuf
    } else if content_type.starts_with("application/json") {
        Encoding::Json
    } else {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "use application/x-protobuf or application/json",
        )
            .into_response();
    };
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let body = if gzip {
        // bounded: a small bomb must not expand past the limit
        let mut out = Vec::new();
        let mut reader = flate2::read::GzDecoder::new(&body[..]).take(max as u64 + 1);
        if reader.read_to_end(&mut out).is_err() {
            return (StatusCode::BAD_REQUEST, "gzip body does not decompress").into_response();
        }
        if out.len() > max {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                "decompressed body over otlp.max_body_bytes",
            )
                .into_response();
        }
        Bytes::from(out)
    } else {
        body
    };
    let mapper = Mapper::new(&r.settings.mapping);
    let outcome = match (signal, encoding) {
        (Signal::Traces, Encoding::Protobuf) => prost::Message::decode(&body[..])
            .map(|q: ExportTraceServiceRequest| mapper.traces(&q))
            .map_err(|e| e.to_string()),
        (Signal::Traces, Encoding::Json) => serde_json::from_slice(&body)
            .map(|q: ExportTraceServiceRequest| mapper.traces(&q))
            .map_err(|e| e.to_string()),
        (Signal::Logs, Encoding::Protobuf) => prost::Message::decode(&body[..])
            .map(|q: ExportLogsServiceRequest| mapper.logs(&q))
            .map_err(|e| e.to_string()),
        (Signal::Logs, Encoding::Json) => serde_json::from_slice(&body)
            .map(|q: ExportLogsServiceRequest| mapper.logs(&q))
            .map_err(|e| e.to_string()),
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            r.counters
                .records
                .with_label_values(&[signal.as_str(), "undecodable"])
                .inc();
            return (
                StatusCode::BAD_REQUEST,
                format!("not an OTLP {} request: {e}", signal.as_str()),
            )
                .into_response();
        }
    };
    if let Err(e) = produce(r, &outcome).await {
        tracing::warn!(error = %e, "otlp: events not acknowledged by Kafka; the exporter will retry");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "Kafka did not take the events; retry",
        )
            .into_response();
    }
    for (why, n) in Skip::ALL.iter().zip(outcome.skipped) {
        if n > 0 {
            r.counters
                .records
                .with_label_values(&[signal.as_str(), why.as_str()])
                .inc_by(n);
        }
    }
    r.counters
        .records
        .with_label_values(&[signal.as_str(), "produced"])
        .inc_by(outcome.events.len() as u64);
    response(signal, encoding, &outcome)
}

/// Produce every event of the request and wait for Kafka's acknowledgements.
async fn produce(r: &Receiver, outcome: &Outcome) -> Result<(), rdkafka::error::KafkaError> {
    let mut pending = Vec::with_capacity(outcome.events.len());
    for ev in &outcome.events {
        let mut rec = FutureRecord::<str, [u8]>::to(&r.topic).payload(&ev.payload);
        if let Some(k) = &ev.key {
            rec = rec.key(k.as_str());
        }
        // enqueued now, in order; a full queue waits a little, then fails the request
        let mut tries = 0;
        let delivery = loop {
            match r.producer.send_result(rec) {
                Ok(f) => break f,
                Err((e, _)) if tries >= 100 => return Err(e),
                Err((_, back)) => {
                    tries += 1;
                    rec = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        pending.push(delivery);
    }
    for f in pending {
        match tokio::time::timeout(Duration::from_secs(30), f).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err((e, _)))) => return Err(e),
            Ok(Err(_)) | Err(_) => {
                return Err(rdkafka::error::KafkaError::Canceled);
            }
        }
    }
    Ok(())
}

/// The export response: records the mapping could not use (an exposure without arm, an
/// evaluation without score) are reported as rejected; records that are not experiment events
/// at all are not errors.
fn response(signal: Signal, encoding: Encoding, o: &Outcome) -> Response {
    let rejected = o.skipped[Skip::NoExperiment as usize]
        + o.skipped[Skip::NoScore as usize]
        + o.skipped[Skip::Incomplete as usize];
    let message = if rejected > 0 {
        format!(
            "{} exposures without experiment or arm, {} evaluations without judge or score, {} routing decisions or samples without their fields (see [otlp.mapping])",
            o.skipped[Skip::NoExperiment as usize],
            o.skipped[Skip::NoScore as usize],
            o.skipped[Skip::Incomplete as usize]
        )
    } else {
        String::new()
    };
    let rejected = i64::try_from(rejected).unwrap_or(i64::MAX);
    let (bytes, json) = match signal {
        Signal::Traces => {
            let resp = ExportTraceServiceResponse {
                partial_success: (rejected > 0).then_some(ExportTracePartialSuccess {
                    rejected_spans: rejected,
                    error_message: message,
                }),
            };
            (
                prost::Message::encode_to_vec(&resp),
                serde_json::to_vec(&resp),
            )
        }
        Signal::Logs => {
            let resp = ExportLogsServiceResponse {
                partial_success: (rejected > 0).then_some(ExportLogsPartialSuccess {
                    rejected_log_records: rejected,
                    error_message: message,
                }),
            };
            (
                prost::Message::encode_to_vec(&resp),
                serde_json::to_vec(&resp),
            )
        }
    };
    match encoding {
        Encoding::Protobuf => {
            ([(header::CONTENT_TYPE, "application/x-protobuf")], bytes).into_response()
        }
        Encoding::Json => (
            [(header::CONTENT_TYPE, "application/json")],
            json.unwrap_or_else(|_| b"{}".to_vec()),
        )
            .into_response(),
    }
}
