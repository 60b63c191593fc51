//! The command line as a user meets it: configuration errors name the key and the fix
//! (including environment overrides), and `armwatch demo` runs with no setup.

use std::process::Command;

fn armwatch(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_armwatch"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("armwatch runs")
}

#[test]
fn check_config_accepts_the_example_and_applies_env_overrides() {
    let ok = armwatch(
        &["check-config", "config/armwatch.toml"],
        &[("ARMWATCH__KAFKA__TOPICS", "a,b,c")],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("3 topic(s)"));

    let bad = armwatch(
        &["check-config", "config/armwatch.toml"],
        &[("ARMWATCH__ALERTS__ALPHA", "2")],
    );
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("`alerts.alpha`") && err.contains("fix:"),
        "{err}"
    );
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[[experiment]]\nid = \"x\"\narms = { control = 0.5, treatment = 0.6 }\n",
    )
    .expect("write");
    let out = armwatch(&["check-config", p.to_str().expect("path")], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`experiment[0].arms`") && err.contains("sum to"),
        "{err}"
    );
    let missing = armwatch(&["run", "--config", "/nonexistent.toml"], &[]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
}

#[test]
fn demo_runs_without_setup_and_reports() {
    let out = armwatch(
        &[
            "demo",
            "--events",
            "30000",
            "--rate",
            "1000000",
            "--listen",
            "127.0.0.1:0",
            "--fault",
            "tier-leak",
            "--fault",
            "srm",
            "--fault",
            "judge-upgrade",
            "--fault",
            "substrate-rotation",
            "--fault",
            "router-overrides",
            "--fault",
            "score-nudging",
            "--fault",
            "night-sampler",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // stdout: one JSON line per alert, then the pretty-printed report
    let values: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("JSON values on stdout");
    let report = values.last().expect("a report");
    let accepted = report["events"]["accepted"].as_u64().expect("accepted");
    assert_eq!(accepted, 30_000);
    let alerts = report["alerts"].as_array().expect("alerts");
    let has = |check: &str, field: &str, v: &str| {
        alerts.iter().any(|a| a["check"] == check && a[field] == v)
    };
    assert!(has("input_divergence", "value", "pro"), "{alerts:?}");
    assert!(has("srm", "experiment", "router-v2"), "{alerts:?}");
    assert!(
        has("judge_version_change", "subject", "quality-judge"),
        "{alerts:?}"
    );
    assert!(
        has("judge_score_shift", "subject", "quality-judge"),
        "{alerts:?}"
    );
    assert!(
        has("substrate_change", "subject", "embedding_model"),
        "{alerts:?}"
    );
    assert!(
        has("threshold_compliance", "subject", "confidence-gate"),
        "{alerts:?}"
    );
    assert!(
        has("threshold_density", "subject", "confidence-gate"),
        "{alerts:?}"
    );
    assert!(has("sampling_skew", "subject", "nightly"), "{alerts:?}");
    assert_eq!(
        values.len() - 1,
        alerts.len(),
        "every alert was also printed as a line"
    );
}

#[test]
fn clean_demo_stays_quiet() {
    let out = armwatch(
        &[
            "demo",
            "--events",
            "30000",
            "--rate",
            "1000000",
            "--listen",
            "127.0.0.1:0",
            "--fault",
            "none",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let values: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("JSON values on stdout");
    let report = values.last().expect("a report");
    assert_eq!(
        report["alerts"],
        serde_json::json!([]),
        "healthy simulated traffic raised alerts"
    );
    assert_eq!(values.len(), 1);
}
