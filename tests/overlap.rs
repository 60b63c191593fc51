//! Overlapping experiments (issue 11, item 3): two experiments on the same units must be
//! assigned independently. `overlap_dependence` keeps its false-alarm share at most alpha on
//! null streams checked after every event (an SRM in one of the two included: an imbalance is
//! not a dependence), finds experiments that hash with the same salt or partly follow each
//! other (power and units to detection printed), leaves the phases of one experiment alone,
//! and merges exactly across partitions.
//!
//! Run with `--nocapture` to see the measured figures.

mod support;

use armwatch::check::Check;
use armwatch::config::Settings;
use armwatch::engine::Engine;
use armwatch::state::key_of;
use support::per_stream;

const ALPHA: f64 = 0.05;
const UNITS: usize = 4_000;

/// `pairs`: `limits.max_overlap_pairs`, the Bonferroni divisor (1: the pair at alpha itself).
fn settings(pairs: usize) -> Settings {
    Settings::from_toml(&format!(
        r#"
[[experiment]]
id = "layer-a"
arms = {{ control = 0.5, treatment = 0.5 }}
[[experiment]]
id = "layer-b"
arms = {{ control = 0.5, treatment = 0.5 }}
[alerts]
alpha = {ALPHA}
[limits]
max_overlap_pairs = {pairs}
"#
    ))
    .expect("valid test config")
}

/// How `layer-b` assigns a unit, given `layer-a`'s arm.
#[derive(Clone, Copy)]
enum Layering {
    /// Its own salt: independent.
    Orthogonal,
    /// `layer-a`'s arm for a share of the units (the rest independent).
    Follows(f64),
}

/// The units of one stream, each exposed in `layer-a` then `layer-b` (a repeat visit every
/// 5th unit); `a_share`: `layer-a`'s treatment share (0.5 is its design).
fn stream(seed: u64, layering: Layering, a_share: f64) -> Vec<String> {
    let uniform = |salt: &str, u: usize| {
        (key_of(&format!("{seed}:{salt}:{u}")) >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut out = Vec::with_capacity(UNITS * 3);
    for u in 0..UNITS {
        let a = uniform("a", u) < a_share;
        let b = match layering {
            Layering::Orthogonal => uniform("b", u) < 0.5,
            Layering::Follows(share) if uniform("follow", u) < share => a,
            Layering::Follows(_) => uniform("b", u) < 0.5,
        };
        let ts = 1_767_225_600_000i64 + u as i64 * 1_000;
        let arm = |t: bool| if t { "treatment" } else { "control" };
        out.push(format!(
            r#"{{"kind":"prompt","ts":{ts},"experiment":"layer-a","arm":"{}","unit":"u{u}"}}"#,
            arm(a)
        ));
        out.push(format!(
            r#"{{"kind":"prompt","ts":{},"experiment":"layer-b","arm":"{}","unit":"u{u}"}}"#,
            ts + 1,
            arm(b)
        ));
        if u % 5 == 0 {
            out.push(format!(
                r#"{{"kind":"prompt","ts":{},"experiment":"layer-a","arm":"{}","unit":"u{u}"}}"#,
                ts + 2,
                arm(a)
            ));
        }
    }
    out
}

#[derive(Default)]
struct Outcome {
    /// Shared units counted when the dependence alert fired.
    dependence_at: Option<u64>,
    srm: bool,
    message: String,
}

fn run(settings: &Settings, events: &[String]) -> Outcome {
    let mut engine = Engine::new(settings);
    let mut out = Outcome::default();
    for ev in events {
        engine.process(ev.as_bytes()).expect("valid event");
        for a in engine.take_new_alerts() {
            match a.check {
                Check::OverlapDependence => {
                    out.dependence_at = a.details["units"].as_u64();
                    out.message = a.message.clone();
                }
                Check::Srm => out.srm = true,
                _ => {}
            }
        }
    }
    out
}

fn many(
    streams: u64,
    seed0: u64,
    settings: &Settings,
    layering: Layering,
    a_share: f64,
) -> Vec<Outcome> {
    per_stream(streams, &|i| {
        run(settings, &stream(seed0 + i, layering, a_share))
    })
}

/// Orthogonal layers alarm on at most alpha of the streams, with the pair at alpha itself
/// (`max_overlap_pairs = 1`), checked after every event; also when `layer-a` has an SRM.
#[test]
fn orthogonal_layers_keep_false_alarms_at_alpha() {
    let n = 300;
    let settings = settings(1);
    let balanced = many(n, 1_000, &settings, Layering::Orthogonal, 0.5);
    let skewed = many(n, 2_000, &settings, Layering::Orthogonal, 0.6);
    let share =
        |r: &[Outcome]| r.iter().filter(|o| o.dependence_at.is_some()).count() as f64 / n as f64;
    let (fa, fa_skewed) = (share(&balanced), share(&skewed));
    let srm = skewed.iter().filter(|o| o.srm).count() as f64 / n as f64;
    let mc = 2.326 * (ALPHA * (1.0 - ALPHA) / n as f64).sqrt();
    println!(
        "overlap_dependence null: {n} streams x {UNITS} shared units, alpha {ALPHA} (one pair): false alarms {fa:.3}; \
         with layer-a at 60/40 (srm fired on {srm:.2} of them): {fa_skewed:.3}; bound {:.3}",
        ALPHA + mc
    );
    assert!(fa <= ALPHA + mc, "{fa}");
    assert!(fa_skewed <= ALPHA + mc, "{fa_skewed}");
    assert!(srm > 0.9, "the skewed layer should be an SRM ({srm})");
}

/// Layers that hash with the same salt are found within a few dozen shared units; a layer
/// that follows the other for 20% of the units is found too. Default divisor (256 pairs).
#[test]
fn dependent_layers_are_found_and_named() {
    let n = 40;
    let settings = settings(256);
    for (layering, what, min_power) in [
        (Layering::Follows(1.0), "same salt", 1.0),
        (Layering::Follows(0.2), "follows for 20% of units", 0.8),
    ] {
        let results = many(n, 5_000, &settings, layering, 0.5);
        let mut at: Vec<u64> = results.iter().filter_map(|o| o.dependence_at).collect();
        at.sort_unstable();
        let power = at.len() as f64 / n as f64;
        println!(
            "overlap_dependence power, {what}: found in {power:.2} of {n} streams; shared units to detection median {}, \
             min {}, max {} (alpha {ALPHA}/256)",
            at.get(at.len() / 2).unwrap_or(&0),
            at.first().unwrap_or(&0),
            at.last().unwrap_or(&0)
        );
        assert!(power >= min_power, "{what}: power {power}");
        let msg = &results
            .iter()
            .find(|o| o.dependence_at.is_some())
            .expect("one found")
            .message;
        assert!(
            msg.contains("layer-a and layer-b") && msg.contains("salt"),
            "{msg}"
        );
    }
}

/// Phases of one experiment share units by design: no pair among them; the report lists the
/// tested pairs with their tables.
#[test]
fn phases_of_one_experiment_are_not_a_pair() {
    let settings = Settings::from_toml(
        r#"
[[experiment]]
id = "ramp"
arms = { control = 0.9, treatment = 0.1 }
[[experiment.phases]]
name = "full"
from = "2026-01-01T00:30:00Z"
arms = { control = 0.5, treatment = 0.5 }
[[experiment]]
id = "other"
arms = { control = 0.5, treatment = 0.5 }
"#,
    )
    .expect("valid");
    let mut engine = Engine::new(&settings);
    for u in 0..3_600 {
        let ts = 1_767_225_600_000i64 + u * 1_000;
        for exp in ["ramp", "other"] {
            let t = key_of(&format!("{exp}:{}", u % 1_800)).is_multiple_of(2);
            let ev = format!(
                r#"{{"kind":"prompt","ts":{ts},"experiment":"{exp}","arm":"{}","unit":"u{}"}}"#,
                if t { "treatment" } else { "control" },
                u % 1_800
            );
            let _ = engine.process(ev.as_bytes());
        }
    }
    let report = serde_json::to_value(engine.report()).expect("json");
    let pairs = report["overlaps"]["pairs"].as_array().expect("pairs");
    let names: Vec<(String, String)> = pairs
        .iter()
        .map(|p| {
            (
                p["first"].as_str().unwrap_or("").into(),
                p["second"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert!(
        names
            .iter()
            .all(|(a, b)| a == "other" && b.starts_with("ramp/")),
        "{names:?}"
    );
    assert!(!names.is_empty());
    let table = &pairs[0]["counts"];
    let total: u64 = table
        .as_array()
        .expect("rows")
        .iter()
        .flat_map(|r| r.as_array().expect("row"))
        .filter_map(|c| c.as_u64())
        .sum();
    assert_eq!(total, pairs[0]["units"].as_u64().expect("units"));
    assert!(
        pairs[0]["dependence"]["log_evalue"].is_f64(),
        "{}",
        pairs[0]
    );
}

/// Two partitions' engines (units keyed by unit) merged give one engine's tables and evidence.
#[test]
fn pairs_merge_across_partitions_exactly() {
    let settings = settings(256);
    let events = stream(77, Layering::Follows(0.1), 0.5);
    let mut whole = Engine::new(&settings);
    let mut parts = [Engine::new(&settings), Engine::new(&settings)];
    for ev in &events {
        whole.process(ev.as_bytes()).expect("valid");
        let v: serde_json::Value = serde_json::from_str(ev).expect("json");
        let unit = v["unit"].as_str().expect("unit");
        parts[(key_of(unit) % 2) as usize]
            .process(ev.as_bytes())
            .expect("valid");
    }
    let [mut a, b] = parts;
    a.merge(&b);
    let x = serde_json::to_value(a.report()).expect("json");
    let y = serde_json::to_value(whole.report()).expect("json");
    let (px, py) = (&x["overlaps"]["pairs"][0], &y["overlaps"]["pairs"][0]);
    assert_eq!(px["counts"], py["counts"]);
    assert_eq!(px["units"].as_u64(), Some(UNITS as u64));
    let (ex, ey) = (
        px["dependence"]["log_evalue"].as_f64().expect("e"),
        py["dependence"]["log_evalue"].as_f64().expect("e"),
    );
    assert!((ex - ey).abs() < 1e-9, "{ex} vs {ey}");
}
