//! Hot-path throughput: decoding prompt events, and decode + per-experiment state update +
//! detectors (`Engine::process`). Criterion reports elements per second; one element is one
//! event, on one core.
//!
//! `cargo bench --bench pipeline`; `-- otlp` for the OpenTelemetry mapping (one element is one
//! span: protobuf or JSON decoding plus the mapping to a contract event).

use armwatch::config::Settings;
use armwatch::engine::Engine;
use armwatch::event::{decode_into, Inputs, Limits};
use armwatch::sim::{Faults, Simulator, Users};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;

const N: usize = 10_000;

fn collect(mut sim: Simulator) -> Vec<Vec<u8>> {
    (0..N)
        .map(|_| {
            let mut b = Vec::new();
            sim.next_event(&mut b);
            b
        })
        .collect()
}

/// Events with `unit`: ids from a pool of 1M, so ~99% are first exposures for the engine.
fn events(seed: u64) -> Vec<Vec<u8>> {
    collect(Simulator::single(seed, Faults::default()))
}

/// Events without `unit`: every event is counted (the most state work per event).
fn events_without_unit(seed: u64) -> Vec<Vec<u8>> {
    collect(Simulator::single_with_users(
        seed,
        Faults::default(),
        Some(Users {
            pool: u32::MAX,
            emit_unit: false,
        }),
    ))
}

const EXPERIMENT: &str = r#"
[[experiment]]
id = "prompt-variant"
arms = { control = 0.5, treatment = 0.5 }
treatment_inputs = ["fragment"]
"#;

fn settings() -> Settings {
    Settings::from_toml(EXPERIMENT).expect("bench config")
}

/// With a declared hash assignment. The simulator draws arms at random, so half of the events
/// mismatch and the candidate keys are scored on every event: the worst case.
fn settings_with_assignment() -> Settings {
    Settings::from_toml(&format!(
        r#"{EXPERIMENT}
[experiment.assignment]
salt = "prompt-variant"
buckets = 10000
ranges = {{ control = [0, 5000], treatment = [5000, 10000] }}
"#
    ))
    .expect("bench config")
}

/// An engine warmed up (inputs and strata exist), as in a long-running daemon, on other
/// traffic so that the measured events are new exposures, not repeats.
fn warmed(settings: &Settings) -> Engine {
    let mut warm = Engine::new(settings);
    for seed in 100..105 {
        for e in events_without_unit(seed) {
            let _ = warm.process(&e);
        }
    }
    warm
}

fn bench(c: &mut Criterion) {
    let evs = events(1);
    let bytes: usize = evs.iter().map(|e| e.len()).sum();
    let mut g = c.benchmark_group("prompt_events");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("decode", |b| {
        let limits = Limits::default();
        b.iter(|| {
            for e in &evs {
                let mut inputs = Inputs::new();
                let _ = black_box(decode_into(black_box(e), &limits, &mut inputs).map(|e| e.ts_ms));
            }
        })
    });
    let (plain, declared) = (warmed(&settings()), warmed(&settings_with_assignment()));
    for (name, warm, evs) in [
        ("decode_update_detect", &plain, &evs),
        (
            "decode_update_detect_no_unit",
            &plain,
            &events_without_unit(2),
        ),
        ("decode_update_detect_assignment", &declared, &evs),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || warm.clone(),
                |engine| {
                    for e in evs.iter() {
                        let _ = black_box(engine.process(black_box(e)));
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
    eprintln!("mean event size: {} bytes", bytes / N);
}

/// An OTLP traces request of `n` GenAI spans, each with a `feature_flag.evaluation` event (as
/// an SDK with an OpenFeature hook sends them), protobuf-encoded.
fn otlp_request(
    n: usize,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::{span::Event, ResourceSpans, ScopeSpans, Span};
    let kv = |k: &str, v: Value| KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    };
    let s = |x: String| Value::StringValue(x);
    let spans = (0..n)
        .map(|i| Span {
            trace_id: vec![7; 16],
            span_id: vec![9; 8],
            name: "chat".into(),
            start_time_unix_nano: 1_767_225_600_000_000_000 + i as u64 * 1_000_000,
            end_time_unix_nano: 1_767_225_600_900_000_000 + i as u64 * 1_000_000,
            attributes: vec![
                kv("gen_ai.operation.name", s("chat".into())),
                kv("gen_ai.request.model", s(format!("model-{}", i % 3))),
                kv("gen_ai.request.temperature", Value::DoubleValue(0.7)),
                kv("gen_ai.request.max_tokens", Value::IntValue(256)),
                kv("armwatch.input.tier", s(["free", "pro"][i % 2].into())),
                kv("http.route", s("/v1/chat".into())),
            ],
            events: vec![Event {
                name: "feature_flag.evaluation".into(),
                time_unix_nano: 1_767_225_600_000_000_000 + i as u64 * 1_000_000,
                attributes: vec![
                    kv("feature_flag.key", s("prompt-variant".into())),
                    kv(
                        "feature_flag.result.variant",
                        s(["control", "treatment"][i % 2].into()),
                    ),
                    kv("feature_flag.context.id", s(format!("user-{i}"))),
                ],
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn bench_otlp(c: &mut Criterion) {
    use armwatch::source::otlp::mapping::Mapper;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    const SPANS: usize = 512;
    let req = otlp_request(SPANS);
    let proto = prost::Message::encode_to_vec(&req);
    let json = serde_json::to_vec(&req).expect("json");
    let mapping = armwatch::config::OtlpMapping::default();
    let mut g = c.benchmark_group("otlp");
    g.throughput(Throughput::Elements(SPANS as u64));
    g.bench_function("protobuf_decode_map", |b| {
        b.iter(|| {
            let q: ExportTraceServiceRequest =
                prost::Message::decode(black_box(&proto[..])).expect("decodes");
            black_box(Mapper::new(&mapping).traces(&q).events.len())
        })
    });
    g.bench_function("json_decode_map", |b| {
        b.iter(|| {
            let q: ExportTraceServiceRequest =
                serde_json::from_slice(black_box(&json)).expect("decodes");
            black_box(Mapper::new(&mapping).traces(&q).events.len())
        })
    });
    g.finish();
    eprintln!(
        "otlp request: {SPANS} spans, {} bytes protobuf, {} bytes JSON",
        proto.len(),
        json.len()
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(8));
    targets = bench, bench_otlp
}
criterion_main!(benches);
