//! Hot-path throughput: decoding prompt events, and decode + per-experiment state update +
//! detectors (`Engine::process`). Criterion reports elements per second; one element is one
//! event, on one core.
//!
//! `cargo bench --bench pipeline`

use armwatch::config::Settings;
use armwatch::engine::Engine;
use armwatch::event::{decode_into, Inputs, Limits};
use armwatch::sim::{Faults, Simulator};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;

const N: usize = 10_000;

fn events() -> Vec<Vec<u8>> {
    let mut sim = Simulator::single(1, Faults::default());
    (0..N)
        .map(|_| {
            let mut b = Vec::new();
            sim.next_event(&mut b);
            b
        })
        .collect()
}

fn settings() -> Settings {
    Settings::from_toml(
        r#"
[[experiment]]
id = "prompt-variant"
arms = { control = 0.5, treatment = 0.5 }
treatment_inputs = ["fragment"]
"#,
    )
    .expect("bench config")
}

fn bench(c: &mut Criterion) {
    let evs = events();
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
    // a warmed-up engine (strata and inputs exist), as in a long-running daemon
    let mut warm = Engine::new(&settings());
    for e in events().iter().cycle().take(5 * N) {
        let _ = warm.process(e);
    }
    g.bench_function("decode_update_detect", |b| {
        b.iter_batched_ref(
            || warm.clone(),
            |engine| {
                for e in &evs {
                    let _ = black_box(engine.process(black_box(e)));
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
    eprintln!("mean event size: {} bytes", bytes / N);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(8));
    targets = bench
}
criterion_main!(benches);
