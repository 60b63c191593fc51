//! What partition-owned state costs, without Kafka: the same events applied to one engine
//! (checkpoints off) and to one engine per partition (checkpoints on: Kafka Streams' layout),
//! each partition's events in runs of 65,536 as a consumer's fetches deliver them, spread over
//! the partitions by unit (the input keyed as the README asks) and at random (a returning unit
//! is then counted in each partition it appears in: more work, and the counts the daemon warns
//! about). Prints the rate, the state's memory by part and the snapshots' size per partition
//! count: the gap between `cargo bench --bench kafka`'s checkpoints on and off, in one thread.
//!
//! `cargo bench --bench partitions` (1M events per workload); `ARMWATCH_BENCH_EVENTS=N`
//! changes the size, `ARMWATCH_BENCH_PARTITIONS=1,4` the partition counts;
//! `cargo bench --bench partitions -- fleet` runs one workload.

mod common;

use armwatch::config::Settings;
use armwatch::engine::Engine;
use armwatch::partitions::{Part, Partitions};
use armwatch::sim::{Faults, Simulator};
use std::time::Instant;

/// A workload: its name and the simulator that produces it.
type Workload = (&'static str, fn() -> Simulator);

/// Events a fetch brings from one partition before the next partition's.
const RUN: usize = 65_536;

/// One partition's messages, one after the other in one buffer (as a fetch brings them).
#[derive(Default)]
struct Fetched {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

/// How the producer keys the input.
#[derive(Clone, Copy)]
enum Keys {
    /// By unit (as the README asks): a unit's events meet in one partition.
    Unit,
    /// At random: a returning unit's events spread over the partitions, and each partition
    /// counts its first exposure again.
    Random,
}

/// `n` events of `sim` spread over `parts` partitions as `keys` spread them.
fn spread(mut sim: Simulator, n: usize, parts: usize, keys: Keys) -> Vec<Fetched> {
    let mut out: Vec<Fetched> = (0..parts).map(|_| Fetched::default()).collect();
    let mut buf = Vec::new();
    for i in 0..n {
        sim.next_event(&mut buf);
        let key = match keys {
            Keys::Unit => twox_hash::XxHash3_64::oneshot(common::unit_of(&buf)),
            Keys::Random => twox_hash::XxHash3_64::oneshot(&i.to_le_bytes()),
        };
        let p = (key % parts as u64) as usize;
        let f = &mut out[p];
        f.bytes.extend_from_slice(&buf);
        f.ends.push(f.bytes.len());
    }
    out
}

/// Apply the partitions' events, each to its own engine, in runs of [`RUN`]; returns
/// (seconds, engines).
fn apply(fetched: &[Fetched]) -> (f64, Vec<Engine>) {
    let parts = fetched.len();
    let settings = Settings::from_toml("")
        .expect("default settings")
        .for_partitions(parts);
    let mut engines: Vec<Engine> = (0..parts).map(|_| Engine::new(&settings)).collect();
    let mut at = vec![0usize; parts];
    let t = Instant::now();
    loop {
        let mut applied = false;
        for ((f, engine), at) in fetched.iter().zip(&mut engines).zip(&mut at) {
            let end = (*at + RUN).min(f.ends.len());
            for i in *at..end {
                let start = if i == 0 { 0 } else { f.ends[i - 1] };
                let _ = engine.process(&f.bytes[start..f.ends[i]]);
            }
            applied |= end > *at;
            *at = end;
        }
        if !applied {
            break;
        }
    }
    (t.elapsed().as_secs_f64(), engines)
}

/// What a publish costs the engine thread (fastest of three): the merged view of the
/// partitions' engines, made by [`Partitions::view`] as the daemon makes it (nothing to merge
/// with one partition), then its report.
fn publish_cost(engines: Vec<Engine>) -> (f64, f64) {
    let settings = Settings::from_toml("")
        .expect("default settings")
        .for_partitions(engines.len());
    let mut parts = Partitions::none(&settings);
    for (i, e) in engines.into_iter().enumerate() {
        parts.assign(i, Part::new(format!("bench/{i}"), e));
    }
    let (mut view, mut report) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..3 {
        let t = Instant::now();
        let merged = parts.view();
        view = view.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        std::hint::black_box(merged.report());
        report = report.min(t.elapsed().as_secs_f64());
    }
    (view, report)
}

fn main() {
    let filter = common::workload_filter();
    let n: usize = common::env_number("ARMWATCH_BENCH_EVENTS", 1_000_000);
    // `ARMWATCH_BENCH_PARTITIONS=1,4`: the partition counts (1, 2 and 4)
    let counts: Vec<usize> = std::env::var("ARMWATCH_BENCH_PARTITIONS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 4]);
    let workloads: [Workload; 2] = [
        ("single", || {
            Simulator::single(1, Faults::default()).with_prompt_tokens()
        }),
        ("fleet-1000", || Simulator::fleet(3, 1_000, 2_000)),
    ];
    println!(
        "{:<11} {:>10} {:>7} {:>11} {:>7} {:>9} {:>12} {:>8} {:>10}  state by part, MB",
        "workload",
        "partitions",
        "keys",
        "events/s",
        "ratio",
        "state MB",
        "snapshot MB",
        "view ms",
        "report ms"
    );
    for (name, make) in workloads
        .iter()
        .filter(|(name, _)| common::selected(&filter, name))
    {
        let mut one = f64::NAN;
        let runs = counts.iter().flat_map(|&p| {
            let keyed: &[Keys] = if p == 1 {
                &[Keys::Unit]
            } else {
                &[Keys::Unit, Keys::Random]
            };
            keyed.iter().map(move |&k| (p, k))
        });
        for (parts, keys) in runs {
            let (secs, mut engines) = apply(&spread(make(), n, parts, keys));
            let rate = n as f64 / secs;
            if parts == 1 {
                one = rate;
            }
            let mut by_part = [0usize; 6];
            let mut state = 0;
            let mut snapshots = 0;
            for e in &mut engines {
                e.count_memory();
                state += e.memory().0;
                snapshots += armwatch::snapshot::write(e).len();
                for x in e.experiments() {
                    let m = x.stats.memory_parts();
                    let each = [m.strata, m.numeric, m.units, m.exposures, m.model, m.other];
                    for (sum, b) in by_part.iter_mut().zip(each) {
                        *sum += b;
                    }
                }
            }
            let (view, report) = publish_cost(engines);
            let mb = |b: usize| b as f64 / 1e6;
            println!(
                "{:<11} {:>10} {:>7} {:>11.0} {:>6.2}x {:>9.1} {:>12.1} {:>8.1} {:>10.1}  strata {:.1}, numeric {:.1}, units {:.1}, exposures {:.1}, model {:.1}, other {:.1}",
                name,
                parts,
                match keys {
                    Keys::Unit => "unit",
                    Keys::Random => "random",
                },
                rate,
                rate / one,
                mb(state),
                mb(snapshots),
                view * 1e3,
                report * 1e3,
                mb(by_part[0]),
                mb(by_part[1]),
                mb(by_part[2]),
                mb(by_part[3]),
                mb(by_part[4]),
                mb(by_part[5]),
            );
        }
    }
}
