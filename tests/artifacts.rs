//! The shipped artifacts stay in step with the code: every metric the Grafana dashboard
//! queries is one armwatch exports, and the configs embedded in the Kubernetes manifests parse.

use armwatch::config::Settings;
use armwatch::engine::Engine;
use armwatch::metrics::Metrics;
use armwatch::sim::{Faults, Simulator};

#[test]
fn dashboard_queries_only_exported_metrics() {
    let settings = Settings::from_toml(include_str!("../config/armwatch.toml")).expect("config");
    let mut engine = Engine::new(&settings);
    let mut sim = Simulator::single(
        3,
        Faults {
            tier_leak: Some(("pro".into(), 0.8)),
            srm: None,
            ..Default::default()
        },
    );
    let mut buf = Vec::new();
    for _ in 0..5000 {
        sim.next_event(&mut buf);
        let _ = engine.process(&buf);
    }
    let _ = engine.process(b"garbage");
    for (i, ev) in [
        r#"{"kind":"judgment","ts":1767225600000,"judge":"quality-judge","judge_version":"v1","score":7,"control":true}"#,
        r#"{"kind":"routing","ts":1767225600000,"router":"confidence-gate","score":0.84,"route":"premium"}"#,
        r#"{"kind":"sample","ts":1767225600000,"eval_set":"nightly","inputs":{"tier":"pro"}}"#,
        r#"{"kind":"prompt","ts":1767225600000,"experiment":"prompt-variant","arm":"control","inputs":{"embedding_model":"e5"}}"#,
        r#"{"kind":"prompt","ts":1767225600000,"experiment":"ranker-v3","arm":"control","unit":"u1","inputs":{"tier":"pro"}}"#,
        r#"{"kind":"prompt","ts":1767225600000,"experiment":"workspace-collab","arm":"control","unit":"u1","cluster":"ws-1"}"#,
    ]
    .iter()
    .enumerate()
    {
        engine.process(ev.as_bytes()).unwrap_or_else(|r| panic!("event {i}: {r}"));
    }
    // enough routing decisions for a density look
    for i in 0..1000 {
        let ev = format!(
            r#"{{"kind":"routing","ts":1767225600000,"router":"confidence-gate","score":{},"route":"premium"}}"#,
            (i as f64 + 0.5) / 1000.0
        );
        engine.process(ev.as_bytes()).expect("routing");
    }
    let mut m = Metrics::new(100);
    m.processing.observe(1e-6);
    m.consumer_lag.with_label_values(&["t", "0"]).set(0);
    m.dead_letter.with_label_values(&["queued"]).inc();
    m.sink_deliveries.with_label_values(&["log", "ok"]).inc();
    m.alerts_dropped
        .with_label_values(&["kafka", "queue_full"])
        .inc();
    m.checkpoints.with_label_values(&["written"]).inc();
    m.repartition_messages.with_label_values(&["routed"]).inc();
    m.publish(&engine, &engine.report());
    let exported = m.encode();
    let dash: serde_json::Value =
        serde_json::from_str(include_str!("../dashboards/armwatch.json")).expect("dashboard JSON");
    let text = dash.to_string();
    let mut names: Vec<&str> = text
        .match_indices("armwatch_")
        .map(|(i, _)| {
            let rest = &text[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|n| n.len() > "armwatch_".len())
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");
    for n in names {
        assert!(
            exported.lines().any(|l| l.starts_with(n)),
            "dashboard queries {n}, which armwatch does not export"
        );
    }
}

#[test]
fn kubernetes_configmap_config_is_valid() {
    let s = Settings::from_toml(include_str!("../deploy/kubernetes/base/armwatch.toml"))
        .expect("the ConfigMap's config parses and validates");
    assert_eq!(s.kafka.topics, vec!["llm.events".to_string()]);
    assert_eq!(s.log.format, armwatch::config::LogFormat::Json);
    assert_eq!(s.http.listen, "0.0.0.0:9898", "Prometheus reaches the pod");
}

/// Where scripts/install-test-deps.sh puts the manifest tools.
fn tools() -> std::path::PathBuf {
    std::env::var_os("ARMWATCH_TOOLS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/armwatch-tools")
        })
}

fn run(cmd: &mut std::process::Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} runs ({e}); run scripts/install-test-deps.sh"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Both overlays render with `kubectl kustomize`, pass `kubernetes-validate --strict`, and
/// pass checkov with no failed check (the skipped ones are justified in the manifests).
#[test]
fn kubernetes_overlays_render_validate_and_pass_checkov() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubectl = if run(std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client"))
    .0
    {
        std::path::PathBuf::from("kubectl")
    } else {
        tools().join("bin/kubectl")
    };
    let py = tools().join("py-checkov-3.3.30-kv-1.37.0");
    let mut rendered = Vec::new();
    for overlay in ["standalone", "sidecar"] {
        let (ok, yaml) = run(std::process::Command::new(&kubectl).args([
            "kustomize",
            &format!("deploy/kubernetes/overlays/{overlay}"),
        ]));
        assert!(ok, "kubectl kustomize {overlay}:\n{yaml}");
        for kind in ["Deployment", "ConfigMap", "PrometheusRule"] {
            assert!(
                yaml.contains(&format!("kind: {kind}")),
                "{overlay} has a {kind}"
            );
        }
        let path = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&path, &yaml).expect("rendered");
        rendered.push(path);
    }
    let (ok, text) = run(std::process::Command::new("python3")
        .env("PYTHONPATH", &py)
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(&rendered));
    assert!(
        ok && !text.contains("ERROR"),
        "kubernetes-validate --strict:\n{text}"
    );
    let (ok, text) = run(std::process::Command::new("python3")
        .env("PYTHONPATH", &py)
        .env("BC_SKIP_MAPPING", "TRUE")
        .args([
            "-m",
            "checkov.main",
            "--framework",
            "kubernetes",
            "--compact",
            "--skip-download",
        ])
        // files, not the directory: checkov skips directories whose name starts with a dot,
        // as temporary directories' do
        .args(
            rendered
                .iter()
                .flat_map(|p| [std::ffi::OsStr::new("-f"), p.as_os_str()]),
        ));
    let summary = text
        .lines()
        .find(|l| l.contains("Passed checks"))
        .unwrap_or("")
        .to_string();
    assert!(
        ok && summary.contains("Failed checks: 0"),
        "checkov:\n{text}"
    );
    println!("checkov over both overlays: {summary}");
}

/// armwatch's own alert rules: valid, and each fires on the series that should fire it
/// (`promtool test rules`, tests/fixtures/promtool/armwatch-rules.test.yaml).
#[test]
fn prometheus_rules_pass_promtool_tests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("armwatch-rules.yaml");
    let (ok, text) = run(std::process::Command::new("python3")
        .env("PYTHONPATH", tools().join("py-checkov-3.3.30-kv-1.37.0"))
        .args([
            "-c",
            "import sys, yaml; r = yaml.safe_load(open(sys.argv[1])); yaml.safe_dump({'groups': r['spec']['groups']}, open(sys.argv[2], 'w'))",
            "deploy/kubernetes/base/prometheusrule.yaml",
        ])
        .arg(&rules));
    assert!(ok, "rules extracted: {text}");
    std::fs::copy(
        "tests/fixtures/promtool/armwatch-rules.test.yaml",
        dir.path().join("armwatch-rules.test.yaml"),
    )
    .expect("test copied");
    let (ok, text) = run(std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules));
    assert!(ok, "promtool check rules:\n{text}");
    let (ok, text) = run(std::process::Command::new("promtool")
        .args(["test", "rules"])
        .arg(dir.path().join("armwatch-rules.test.yaml")));
    assert!(
        ok && text.contains("SUCCESS"),
        "promtool test rules:\n{text}"
    );
}

/// The Alertmanager route example is a valid Alertmanager configuration, and routes an
/// armwatch alert by its labels as documented.
#[test]
fn alertmanager_route_example_is_valid() {
    let cfg = "deploy/alertmanager/alertmanager.yml";
    let (ok, text) = run(std::process::Command::new("amtool").args(["check-config", cfg]));
    assert!(ok, "amtool check-config:\n{text}");
    for (labels, want) in [
        (
            [
                "alertname=armwatch_srm",
                "severity=critical",
                "experiment=e",
            ],
            "experiments-page,experiments",
        ),
        (
            [
                "alertname=armwatch_judge_score_shift",
                "severity=warning",
                "experiment=e",
            ],
            "experiments",
        ),
        (
            [
                "alertname=ArmwatchDown",
                "severity=critical",
                "experiment=e",
            ],
            "platform",
        ),
    ] {
        let (ok, text) = run(std::process::Command::new("amtool")
            .args(["config", "routes", "test", "--config.file", cfg])
            .args(labels));
        // (stdout first: the routes; amtool then warns on stderr about --config.file)
        assert!(
            ok && text.lines().next() == Some(want),
            "{labels:?} -> {text}"
        );
    }
}

/// The dashboard as an SRE reads it: rows, a description on every panel, the alert's evidence
/// threshold drawn on the evidence panels, a second quantity on a right axis of its own (never
/// two units on one axis), "Source ready" green when ready, alert annotations.
#[test]
fn dashboard_is_readable() {
    let d: serde_json::Value =
        serde_json::from_str(include_str!("../dashboards/armwatch.json")).expect("dashboard");
    let panels = d["panels"].as_array().expect("panels");
    let rows = panels.iter().filter(|p| p["type"] == "row").count();
    assert!(rows >= 5, "{rows} rows");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap_or("");
        assert!(
            p["description"].as_str().is_some_and(|s| s.len() > 20),
            "{title}: no description"
        );
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        let overrides = p["fieldConfig"]["overrides"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let right = overrides.iter().any(|o| {
            o["properties"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| x["id"] == "custom.axisPlacement" && x["value"] == "right")
        });
        let exprs: Vec<&str> = targets.iter().filter_map(|t| t["expr"].as_str()).collect();
        // two quantities in one panel (a share and an e-value, a count and bytes): two axes
        let families = |e: &&str| {
            [
                "log_evalue",
                "_ratio",
                "share",
                "_bytes",
                "dead_letter",
                "z\"",
                "mixed_clusters",
                "followed_units",
                "stat=\"js\"",
                "uncovered",
                "_kl",
                "_psi",
            ]
            .iter()
            .position(|f| e.contains(f))
        };
        let kinds: std::collections::BTreeSet<Option<usize>> = exprs.iter().map(families).collect();
        if kinds.len() > 1 && !title.contains("Memory") {
            assert!(right, "{title}: {exprs:?} share one axis");
        }
        if exprs.iter().any(|e| e.contains("log_evalue")) {
            let line = p["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line";
            let said = p["description"].as_str().is_some_and(|s| s.contains("ln("));
            assert!(
                line || said,
                "{title}: the evidence threshold is neither drawn nor given"
            );
        }
    }
    let ready = panels
        .iter()
        .find(|p| p["title"] == "Source ready")
        .expect("Source ready");
    let steps = ready["fieldConfig"]["defaults"]["thresholds"]["steps"]
        .as_array()
        .expect("steps");
    assert_eq!(
        steps.last().map(|s| (&s["color"], &s["value"])),
        Some((&serde_json::json!("green"), &serde_json::json!(1)))
    );
    let annotations = d["annotations"]["list"].as_array().expect("annotations");
    assert!(annotations.iter().any(|a| a["expr"]
        .as_str()
        .is_some_and(|e| e.contains("armwatch_alerts_fired_total"))));
}
