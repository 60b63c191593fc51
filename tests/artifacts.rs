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
        r#"{"kind":"judgment","ts":1,"judge":"quality-judge","judge_version":"v1","score":7,"control":true}"#,
        r#"{"kind":"routing","ts":1,"router":"confidence-gate","score":0.84,"route":"premium"}"#,
        r#"{"kind":"sample","ts":1,"eval_set":"nightly","inputs":{"tier":"pro"}}"#,
        r#"{"kind":"prompt","ts":1,"experiment":"prompt-variant","arm":"control","inputs":{"embedding_model":"e5"}}"#,
        r#"{"kind":"prompt","ts":1,"experiment":"ranker-v3","arm":"control","unit":"u1","inputs":{"tier":"pro"}}"#,
        r#"{"kind":"prompt","ts":1,"experiment":"workspace-collab","arm":"control","unit":"u1","cluster":"ws-1"}"#,
    ]
    .iter()
    .enumerate()
    {
        engine.process(ev.as_bytes()).unwrap_or_else(|r| panic!("event {i}: {r}"));
    }
    // enough routing decisions for a density look
    for i in 0..1000 {
        let ev = format!(
            r#"{{"kind":"routing","ts":1,"router":"confidence-gate","score":{},"route":"premium"}}"#,
            (i as f64 + 0.5) / 1000.0
        );
        engine.process(ev.as_bytes()).expect("routing");
    }
    let mut m = Metrics::new(100);
    m.processing.observe(1e-6);
    m.consumer_lag.with_label_values(&["t", "0"]).set(0);
    m.dead_letter.with_label_values(&["queued"]).inc();
    m.sink_deliveries.with_label_values(&["log", "ok"]).inc();
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
    let yaml = include_str!("../deploy/kubernetes/armwatch.yaml");
    let start = yaml.find("armwatch.toml: |").expect("config block") + "armwatch.toml: |".len();
    let block: Vec<&str> = yaml[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect();
    let s = Settings::from_toml(&block.join("\n"))
        .expect("the ConfigMap's config parses and validates");
    assert_eq!(s.kafka.topics, vec!["llm.events".to_string()]);
    assert_eq!(s.log.format, armwatch::config::LogFormat::Json);
}
