//! Assignment integrity (issue 4): hash re-derivation against reference xxHash values,
//! multiple exposures on a consistent sample, cluster consistency, arm predictability from
//! the inputs jointly, and the false-alarm share of every new check on null streams monitored
//! after every event.
//!
//! Run with `--nocapture` to see the measured figures.

use armwatch::check::Check;
use armwatch::config::Settings;
use armwatch::engine::Engine;
use armwatch::sim::{Faults, SimExperiment, Simulator, Users};
use armwatch::state::assignment::HashFn;
use armwatch::state::experiment::Experiment;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

const ALPHA: f64 = 0.05;

const RANKER: &str = r#"
[[experiment]]
id = "ranker-v3"
arms = { control = 0.5, treatment = 0.5 }
treatment_inputs = ["fragment"]
[experiment.assignment]
hash = "xxh3_64"
salt = "ranker-v3"
key = "{salt}:{unit}"
buckets = 10000
ranges = { control = [0, 5000], treatment = [5000, 10000] }
"#;

const WORKSPACE: &str = r#"
[[experiment]]
id = "workspace-collab"
arms = { control = 0.5, treatment = 0.5 }
treatment_inputs = ["fragment"]
unit_of_assignment = "cluster"
[experiment.assignment]
salt = "workspace-collab"
key = "{salt}:{cluster}"
buckets = 10000
ranges = { control = [0, 5000], treatment = [5000, 10000] }
"#;

const PROMPT: &str = r#"
[[experiment]]
id = "prompt-variant"
arms = { control = 0.5, treatment = 0.5 }
treatment_inputs = ["fragment"]
watch_inputs = ["tier", "locale", "temperature", "max_tokens", "retrieved_docs", "tool_hash"]
"#;

fn settings(parts: &[&str], extra: &str) -> Settings {
    let mut text = parts.concat();
    text.push_str(&format!("[alerts]\nalpha = {ALPHA}\n{extra}\n"));
    Settings::from_toml(&text).expect("valid test config")
}

fn ranker(faults: Faults, pool: u32) -> SimExperiment {
    SimExperiment::hash_assigned("ranker-v3", faults, pool)
}

fn workspace(mixed: u32, clusters: u32) -> SimExperiment {
    let faults = Faults {
        mixed_clusters: mixed,
        ..Default::default()
    };
    SimExperiment::clustered("workspace-collab", faults, 50_000, clusters)
}

fn prompt(faults: Faults, users: Option<Users>) -> SimExperiment {
    SimExperiment::random("prompt-variant", faults, users)
}

/// Run `events` events; returns the engine and every alert with its event index.
fn run(
    sim: &mut Simulator,
    settings: &Settings,
    events: usize,
) -> (Engine, Vec<(Check, String, Option<String>)>) {
    let mut engine = Engine::new(settings);
    let mut buf = Vec::new();
    let mut alerts = Vec::new();
    for _ in 0..events {
        sim.next_event(&mut buf);
        engine.process(&buf).expect("simulated events are valid");
        for a in engine.take_new_alerts() {
            alerts.push((a.check, a.subject.clone(), a.value.clone()));
        }
    }
    (engine, alerts)
}

fn experiment<'a>(engine: &'a Engine, id: &str) -> &'a Experiment {
    engine
        .experiments()
        .iter()
        .find(|e| &*e.id == id)
        .expect("experiment tracked")
}

fn fixture(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture json")
}

/// Must-show 1: the hash agrees with the Python `xxhash` package (xxHash's C reference) on
/// fixed vectors, and the declared rule gives the reference's buckets and arms.
#[test]
fn hashes_match_reference_xxhash() {
    let v = fixture("xxhash_vectors.json");
    let mut n = 0;
    for h in v["hashes"].as_array().expect("hashes") {
        let key = h["key"].as_str().expect("key").as_bytes();
        let seed = h["seed"].as_u64().expect("seed");
        assert_eq!(
            HashFn::Xxh3_64.hash(seed, key),
            h["xxh3_64"].as_u64().expect("u64"),
            "xxh3_64 {h}"
        );
        assert_eq!(
            HashFn::Xxh64.hash(seed, key),
            h["xxh64"].as_u64().expect("u64"),
            "xxh64 {h}"
        );
        n += 1;
    }
    assert!(n >= 64);
    // events logged with the reference's arms re-derive with zero mismatches; flipped, all
    let s = settings(&[RANKER], "");
    let (mut right, mut wrong) = (Engine::new(&s), Engine::new(&s));
    for a in v["assignments"].as_array().expect("assignments") {
        let (unit, arm) = (
            a["unit"].as_str().expect("unit"),
            a["arm"].as_str().expect("arm"),
        );
        let other = if arm == "control" {
            "treatment"
        } else {
            "control"
        };
        assert_eq!(
            armwatch::sim::hash_arm(&format!("ranker-v3:{unit}")),
            arm == "treatment"
        );
        for (e, logged) in [(&mut right, arm), (&mut wrong, other)] {
            let ev = format!(
                r#"{{"kind":"prompt","ts":0,"experiment":"ranker-v3","arm":"{logged}","unit":"{unit}"}}"#
            );
            e.process(ev.as_bytes()).expect("valid");
        }
    }
    let (r, w) = (
        experiment(&right, "ranker-v3")
            .assignment
            .as_ref()
            .expect("declared"),
        experiment(&wrong, "ranker-v3")
            .assignment
            .as_ref()
            .expect("declared"),
    );
    assert_eq!((r.events_checked, r.events_mismatched), (40, 0));
    assert_eq!((w.events_checked, w.events_mismatched), (40, 40));
}

/// The pinned vectors are what Python's xxhash computes now (installed by
/// scripts/install-test-deps.sh).
#[test]
fn python_xxhash_recomputes_the_pinned_vectors() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("python3")
        .arg(format!("{root}/scripts/reference/xxhash_vectors.py"))
        .arg("--check")
        .arg(format!("{root}/tests/fixtures/xxhash_vectors.json"))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python xxhash check failed (run scripts/install-test-deps.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Must-show 1: a stream assigned with the declared hash has zero mismatches; one whose
/// assignment hashed `{salt}:{unit}:{input.tier}` alerts and names `tier`.
#[test]
fn declared_hash_is_quiet_and_tier_in_key_is_named() {
    let s = settings(&[RANKER], "");
    let mut quiet = Simulator::new(1, vec![ranker(Faults::default(), 20_000)]);
    let (engine, alerts) = run(&mut quiet, &s, 50_000);
    let a = experiment(&engine, "ranker-v3")
        .assignment
        .as_ref()
        .expect("declared");
    println!(
        "declared hash: {} events checked, {} mismatched, alerts {alerts:?}",
        a.events_checked, a.events_mismatched
    );
    assert_eq!(a.events_checked, 50_000);
    assert_eq!(a.events_mismatched, 0);
    assert!(alerts.is_empty(), "{alerts:?}");

    let mut named = 0;
    let mut at = Vec::new();
    for seed in 0..20 {
        let faults = Faults {
            key_includes_tier: true,
            ..Default::default()
        };
        let mut sim = Simulator::new(100 + seed, vec![ranker(faults, 20_000)]);
        let mut engine = Engine::new(&s);
        let mut buf = Vec::new();
        for i in 0..20_000u64 {
            sim.next_event(&mut buf);
            engine.process(&buf).expect("valid");
            if let Some(a) = engine
                .take_new_alerts()
                .iter()
                .find(|a| a.check == Check::AssignmentMismatch)
            {
                at.push(i);
                assert!(
                    a.message.contains("the assignment key includes tier"),
                    "{}",
                    a.message
                );
                named += usize::from(a.value.as_deref() == Some("tier"));
            }
        }
    }
    at.sort_unstable();
    println!(
        "tier in the key: {named}/20 alerts name tier; events to alert: median {}",
        at.get(at.len() / 2).copied().unwrap_or(0)
    );
    assert_eq!(named, 20);
}

/// Null at the tolerance's boundary: 1% of units logged in the wrong arm with tolerance 1%.
/// The mismatch evidence, checked after every event, alarms on at most alpha of the streams
/// (plus Monte Carlo error); at 3% it alarms on all.
#[test]
fn mismatch_false_alarms_at_the_tolerance() {
    let s = settings(
        &[&RANKER.replace("buckets = 10000", "buckets = 10000\ntolerance = 0.01")],
        "",
    );
    let run_rate = |rate: f64, streams: u64| -> u64 {
        (0..streams)
            .filter(|&seed| {
                let mut rng = SmallRng::seed_from_u64(seed);
                let mut engine = Engine::new(&s);
                let mut fired = false;
                for i in 0..20_000u32 {
                    let unit = format!("s{seed}-u{i}");
                    let mut treat = armwatch::sim::hash_arm(&format!("ranker-v3:{unit}"));
                    if rng.random::<f64>() < rate {
                        treat = !treat;
                    }
                    let arm = if treat { "treatment" } else { "control" };
                    let ev = format!(r#"{{"kind":"prompt","ts":{i},"experiment":"ranker-v3","arm":"{arm}","unit":"{unit}"}}"#);
                    engine.process(ev.as_bytes()).expect("valid");
                    fired |= engine.take_new_alerts().iter().any(|a| a.check == Check::AssignmentMismatch);
                }
                fired
            })
            .count() as u64
    };
    let null = run_rate(0.01, 200);
    let power = run_rate(0.03, 20);
    let bound = ALPHA + 3.0 * (ALPHA * (1.0 - ALPHA) / 200.0).sqrt();
    println!("assignment_mismatch at the tolerance (1% of 1%): {null}/200 streams alarmed (bound {:.1}%); at 3%: {power}/20", 100.0 * bound);
    assert!((null as f64 / 200.0) <= bound);
    assert_eq!(power, 20);
}

/// Must-show 2: 2% crossover units alert, and the estimate's interval holds the truth, on a
/// consistent sample; without crossovers nothing alerts.
#[test]
fn crossover_units_alert_with_an_interval_that_holds_the_truth() {
    let s = settings(&[PROMPT], "[limits]\nexposure_sample_units = 2048");
    let mut detected = 0;
    let mut covered = 0;
    let streams = 20;
    for seed in 0..streams {
        let faults = Faults {
            crossover: 0.02,
            ..Default::default()
        };
        let users = Some(Users {
            pool: 10_000,
            emit_unit: true,
        });
        let mut sim = Simulator::new(seed, vec![prompt(faults, users)]);
        let mut engine = Engine::new(&s);
        let mut buf = Vec::new();
        let mut arms: HashMap<String, u8> = HashMap::new();
        let mut fired = false;
        for _ in 0..200_000 {
            sim.next_event(&mut buf);
            engine.process(&buf).expect("valid");
            fired |= engine
                .take_new_alerts()
                .iter()
                .any(|a| a.check == Check::MultipleExposure);
            let v: serde_json::Value = serde_json::from_slice(&buf).expect("json");
            let bit = if v["arm"] == "treatment" { 2 } else { 1 };
            *arms
                .entry(v["unit"].as_str().expect("unit").to_string())
                .or_default() |= bit;
        }
        let truth = arms.values().filter(|m| **m == 3).count() as f64 / arms.len() as f64;
        let x = experiment(&engine, "prompt-variant")
            .exposures
            .as_ref()
            .expect("units");
        let (lo, hi) = x.interval(armwatch::stats::proportion::Z95);
        if seed == 0 {
            println!(
                "crossover 2%: truth {:.3}% of {} units; estimate {:.3}% (95% {:.3}-{:.3}%) from {} followed units at sample rate {}",
                100.0 * truth, arms.len(), 100.0 * x.rate(), 100.0 * lo, 100.0 * hi, x.followed(), x.sample_rate()
            );
        }
        assert!(x.sample_rate() < 1.0 && x.followed() <= 2048);
        detected += u32::from(fired);
        covered += u32::from(lo <= truth && truth <= hi);
    }
    println!("crossover 2%: detected {detected}/{streams}, 95% interval held the truth {covered}/{streams}");
    assert_eq!(detected, streams as u32);
    assert!(covered >= 17, "coverage {covered}/{streams}");
}

/// Must-show 2: memory stays flat as units grow (the consistent sample halves when full).
#[test]
fn multiple_exposure_memory_is_flat() {
    let s = settings(&[PROMPT], "[limits]\nexposure_sample_units = 4096");
    let users = Some(Users {
        pool: 50_000_000,
        emit_unit: true,
    });
    let mut sim = Simulator::new(3, vec![prompt(Faults::default(), users)]);
    let mut engine = Engine::new(&s);
    let mut buf = Vec::new();
    let mut figures = Vec::new();
    for checkpoint in [250_000, 500_000, 1_000_000] {
        while sim.produced() < checkpoint {
            sim.next_event(&mut buf);
            engine.process(&buf).expect("valid");
        }
        let x = experiment(&engine, "prompt-variant")
            .exposures
            .as_ref()
            .expect("units");
        figures.push((
            checkpoint,
            x.estimated_ids(),
            x.followed(),
            x.memory_bytes(),
        ));
    }
    for (events, ids, followed, bytes) in &figures {
        println!("multiple_exposure sample after {events} events: ~{ids:.0} units, {followed} followed, {bytes} bytes");
    }
    assert!(figures[2].1 > 3.0 * figures[0].1, "units grow: {figures:?}");
    assert!(figures.iter().all(|f| f.2 <= 4096));
    let (lo, hi) = (
        figures.iter().map(|f| f.3).min().unwrap_or(0),
        figures.iter().map(|f| f.3).max().unwrap_or(0),
    );
    assert!(hi as f64 <= 1.05 * lo as f64, "memory flat: {figures:?}");
    assert!(hi <= 2 * 4096 * 24, "bounded by the cap: {figures:?}");
    assert!(engine.alerts().is_empty());
}

/// Must-show 3: mixed clusters are named; a clean cluster-randomized stream stays quiet and
/// is counted by cluster; few clusters per arm give a report warning.
#[test]
fn mixed_clusters_are_named_and_clean_clusters_are_quiet() {
    let s = settings(&[WORKSPACE], "");
    let mut sim = Simulator::new(5, vec![workspace(3, 400)]);
    let (engine, alerts) = run(&mut sim, &s, 60_000);
    let c = experiment(&engine, "workspace-collab")
        .clusters
        .as_ref()
        .expect("cluster experiment");
    let mut names: Vec<&str> = c.mixed_names.iter().map(|n| &**n).collect();
    names.sort_unstable();
    println!("mixed clusters named: {names:?}; alerts {alerts:?}");
    assert_eq!(names, ["ws-0", "ws-1", "ws-2"]);
    assert!(alerts
        .iter()
        .any(|(c, _, v)| *c == Check::ClusterMixed
            && v.as_deref().is_some_and(|v| v.starts_with("ws-"))));

    let mut clean = Simulator::new(6, vec![workspace(0, 400)]);
    let (engine, alerts) = run(&mut clean, &s, 60_000);
    assert!(alerts.is_empty(), "{alerts:?}");
    let e = experiment(&engine, "workspace-collab");
    assert_eq!(
        e.srm.n(),
        e.clusters.as_ref().expect("clusters").sample.followed(),
        "SRM counts clusters"
    );
    assert!(e.srm.n() <= 400);
    let report = serde_json::to_value(engine.report()).expect("report");
    assert!(report["experiments"]["workspace-collab"]["clusters"]["warning"].is_null());

    let mut few = Simulator::new(7, vec![workspace(0, 20)]);
    let (engine, _) = run(&mut few, &s, 5_000);
    let report = serde_json::to_value(engine.report()).expect("report");
    let warning = &report["experiments"]["workspace-collab"]["clusters"]["warning"];
    println!("20 clusters: {warning}");
    assert!(
        warning.as_str().is_some_and(|w| w.contains("30")),
        "{warning}"
    );
}

/// Must-show 4: a leak in the combination of tier and locale (each balanced on its own) is
/// caught by the joint model while the per-input tests stay quiet; clean streams keep the
/// AUC interval around 0.5.
#[test]
fn interaction_leak_is_caught_by_the_joint_model_only() {
    let s = settings(&[PROMPT], "");
    let streams = 30;
    let (mut caught, mut marginal) = (0, 0);
    let mut at = Vec::new();
    let mut top = HashMap::new();
    for seed in 0..streams {
        let faults = Faults {
            interaction_leak: Some(0.05),
            ..Default::default()
        };
        let mut sim = Simulator::new(1000 + seed, vec![prompt(faults, None)]);
        let mut engine = Engine::new(&s);
        let mut buf = Vec::new();
        for i in 0..20_000u64 {
            sim.next_event(&mut buf);
            engine.process(&buf).expect("valid");
            for a in engine.take_new_alerts() {
                match a.check {
                    Check::ArmPredictable => {
                        caught += 1;
                        at.push(i);
                        *top.entry(a.value.clone().unwrap_or_default()).or_insert(0) += 1;
                    }
                    Check::InputDivergence if a.subject == "tier" || a.subject == "locale" => {
                        marginal += 1
                    }
                    _ => {}
                }
            }
        }
    }
    at.sort_unstable();
    println!(
        "interaction leak (tier x locale, +/-5 points): arm_predictable {caught}/{streams}, median {} events; per-input alerts on tier/locale {marginal}; top predictors {top:?}",
        at.get(at.len() / 2).copied().unwrap_or(0)
    );
    assert!(caught >= streams - 1, "{caught}/{streams}");
    assert!(marginal <= 2, "per-input tests alarmed {marginal} times");

    let clean = 100;
    let (mut holds, mut sum) = (0, 0.0);
    for seed in 0..clean {
        let mut sim = Simulator::new(2000 + seed, vec![prompt(Faults::default(), None)]);
        let (engine, _) = run(&mut sim, &s, 20_000);
        let (auc, lo, hi) = experiment(&engine, "prompt-variant")
            .model
            .as_ref()
            .expect("model")
            .auc(armwatch::stats::proportion::Z95);
        sum += auc;
        holds += u32::from(lo <= 0.5 && 0.5 <= hi);
    }
    println!(
        "clean streams: mean prequential AUC {:.4}; 95% interval holds 0.5 in {holds}/{clean}",
        sum / clean as f64
    );
    assert!((sum / clean as f64 - 0.5).abs() < 0.01);
    assert!(holds >= 85, "{holds}/{clean}");
}

/// Must-show 5: null streams (20,000 events per experiment, alpha = 0.05, alert state read
/// after every event) keep each new check's false-alarm share at most alpha plus Monte Carlo
/// error.
#[test]
fn new_checks_null_false_alarms() {
    let s = settings(&[PROMPT, RANKER, WORKSPACE], "");
    let streams = 200u64;
    let mut fired: HashMap<Check, u64> = HashMap::new();
    for seed in 0..streams {
        let users = Some(Users {
            pool: 20_000,
            emit_unit: true,
        });
        let mut sim = Simulator::new(
            50_000 + seed,
            vec![
                prompt(Faults::default(), users),
                ranker(Faults::default(), 20_000),
                workspace(0, 400),
            ],
        );
        let (_, alerts) = run(&mut sim, &s, 60_000);
        let mut checks: Vec<Check> = alerts.iter().map(|a| a.0).collect();
        checks.sort_unstable();
        checks.dedup();
        for c in checks {
            *fired.entry(c).or_default() += 1;
        }
    }
    let bound = ALPHA + 3.0 * (ALPHA * (1.0 - ALPHA) / streams as f64).sqrt();
    for c in [
        Check::AssignmentMismatch,
        Check::MultipleExposure,
        Check::ClusterMixed,
        Check::ArmPredictable,
    ] {
        let n = fired.get(&c).copied().unwrap_or(0);
        println!(
            "null streams: {} alarmed on {n}/{streams} (bound {:.1}%)",
            c.as_str(),
            100.0 * bound
        );
        assert!(n as f64 / streams as f64 <= bound, "{}: {n}", c.as_str());
    }
}

/// The Wilson interval against statsmodels and the binned AUC against scikit-learn, with the
/// Hanley-McNeil standard error (tests/fixtures/integrity_stats.json, from
/// scripts/reference/integrity_stats.py).
#[test]
fn wilson_and_auc_match_statsmodels_and_sklearn() {
    use armwatch::stats::auc::{hanley_mcneil_se, Roc};
    use armwatch::stats::proportion::{wilson, z_two_sided};
    let v = fixture("integrity_stats.json");
    for w in v["wilson"].as_array().expect("wilson") {
        let (s, n, alpha) = (
            w["successes"].as_u64().expect("s"),
            w["n"].as_u64().expect("n"),
            w["alpha"].as_f64().expect("alpha"),
        );
        let (lo, hi) = wilson(s, n, z_two_sided(alpha));
        let (rlo, rhi) = (
            w["low"].as_f64().expect("low"),
            w["high"].as_f64().expect("high"),
        );
        assert!(
            (lo - rlo).abs() < 1e-9 && (hi - rhi).abs() < 1e-9,
            "{w}: {lo} {hi}"
        );
    }
    for a in v["auc"].as_array().expect("auc") {
        let mut roc = Roc::default();
        let scores = a["scores"].as_array().expect("scores");
        let labels = a["labels"].as_array().expect("labels");
        for (s, y) in scores.iter().zip(labels) {
            roc.record(s.as_f64().expect("score"), y.as_u64() == Some(1));
        }
        let want = a["auc"].as_f64().expect("auc");
        assert!(
            (roc.auc() - want).abs() < 1e-12,
            "auc {} vs {want}",
            roc.auc()
        );
        let (n1, n2) = roc.counts();
        let se = hanley_mcneil_se(want, n1, n2);
        assert!((se - a["hanley_mcneil_se"].as_f64().expect("se")).abs() < 1e-12);
    }
}
