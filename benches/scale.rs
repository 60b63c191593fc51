//! Scale: throughput and peak memory of `armwatch replay` (the release binary, one core) on
//! fleet workloads, each in a fresh process so that its peak RSS is its own. Prints one row
//! per workload with the targets beside it.
//!
//! `cargo bench --bench scale` (files go to a temporary directory; ~2 GB of disk at most)
//! `cargo bench --bench scale -- fleet-1000` runs only workloads whose name contains the word;
//! `ARMWATCH_BENCH_KEEP=DIR` writes the workloads there and keeps them (for profiling).

mod common;

use armwatch::sim::{Faults, Simulator};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;

struct Workload {
    name: &'static str,
    what: &'static str,
    events: usize,
    target: &'static str,
    make: fn(&Path, usize) -> std::io::Result<()>,
}

fn write_sim(path: &Path, mut sim: Simulator, n: usize) -> std::io::Result<()> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    let mut buf = Vec::new();
    for _ in 0..n {
        sim.next_event(&mut buf);
        out.write_all(&buf)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// [`armwatch::sim::adversarial_event`]: undeclared experiments with 16 arms and 16 inputs
/// each, every value new.
fn write_adversarial(path: &Path, n: usize) -> std::io::Result<()> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    let mut buf = Vec::new();
    for i in 0..n {
        armwatch::sim::adversarial_event(i, &mut buf);
        out.write_all(&buf)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

const WORKLOADS: [Workload; 5] = [
    Workload {
        name: "single",
        what: "1 experiment, units mostly new",
        events: 2_000_000,
        target: "",
        make: |p, n| {
            write_sim(
                p,
                Simulator::single(1, Faults::default()).with_prompt_tokens(),
                n,
            )
        },
    },
    Workload {
        name: "fleet-100",
        what: "100 experiments x 2,000 returning units",
        events: 400_000,
        target: "",
        make: |p, n| write_sim(p, Simulator::fleet(2, 100, 2_000), n),
    },
    Workload {
        name: "fleet-1000",
        what: "1,000 experiments x 2,000 returning units",
        events: 2_000_000,
        target: "<= 64 MB, >= 1M events/s",
        make: |p, n| write_sim(p, Simulator::fleet(3, 1_000, 2_000), n),
    },
    Workload {
        name: "fleet-1000-small",
        what: "1,000 experiments x 50 units",
        events: 200_000,
        target: "",
        make: |p, n| write_sim(p, Simulator::fleet(4, 1_000, 50), n),
    },
    Workload {
        name: "adversarial",
        what: "1,000 undeclared x 16 arms x 16 inputs",
        events: 64_000,
        target: "bounded by limits.max_memory_bytes",
        make: write_adversarial,
    },
];

/// `(messages/s, peak RSS bytes)` from replay's summary line on stderr.
fn parse_summary(stderr: &str) -> Option<(f64, u64)> {
    let line = stderr.lines().rev().find(|l| l.starts_with("replay: "))?;
    let rate = line.split('(').nth(1)?.split(' ').next()?.parse().ok()?;
    let rss = line
        .split("peak RSS ")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    Some((rate, rss))
}

fn main() -> std::io::Result<()> {
    let filter = common::workload_filter();
    let tmp = tempfile::tempdir()?;
    let keep = std::env::var_os("ARMWATCH_BENCH_KEEP").map(std::path::PathBuf::from);
    let dir = keep.as_deref().unwrap_or(tmp.path());
    let bin = env!("CARGO_BIN_EXE_armwatch");
    println!(
        "{:<18} {:<42} {:>9} {:>14} {:>12}  target",
        "workload", "", "events", "events/s", "peak RSS"
    );
    for w in WORKLOADS
        .iter()
        .filter(|w| common::selected(&filter, w.name))
    {
        let path = dir.join(format!("{}.ndjson", w.name));
        (w.make)(&path, w.events)?;
        let out = Command::new(bin)
            .arg("replay")
            .arg(&path)
            .env("RUST_LOG", "error")
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        match parse_summary(&stderr) {
            Some((rate, rss)) if out.status.success() => println!(
                "{:<18} {:<42} {:>9} {:>14.0} {:>9.1} MB  {}",
                w.name,
                w.what,
                w.events,
                rate,
                rss as f64 / 1e6,
                w.target
            ),
            _ => println!("{:<18} failed: {}", w.name, stderr.trim()),
        }
        if keep.is_none() {
            std::fs::remove_file(&path)?;
        }
    }
    // the memory of an idle process, for reading the rows above
    let idle = Command::new(bin)
        .arg("replay")
        .arg("/dev/null")
        .env("RUST_LOG", "error")
        .output()?;
    if let Some((_, rss)) = parse_summary(&String::from_utf8_lossy(&idle.stderr)) {
        println!("(an empty replay peaks at {:.1} MB)", rss as f64 / 1e6);
    }
    Ok(())
}
