//! Hot-path throughput: decoding prompt events, and decode + per-experiment state update +
//! detectors (`Engine::process`). Criterion reports elements per second; one element is one
//! event, on one core.
//!
//! `cargo bench --bench pipeline`

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

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(8));
    targets = bench
}
criterion_main!(benches);
