//! Durable state (issue 9) against a real broker (tansu): the daemon checkpoints each input
//! partition's state to the compacted state topic and restores it on assignment, so that a
//! stream consumed across kills and restarts reports exactly what one uninterrupted pass over
//! the same events reports, and each alert is delivered once.

mod support;

use armwatch::config::Settings;
use armwatch::engine::Engine;
use armwatch::sim::{Faults, Instruments, Simulator};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;

/// The events: prompt-variant with a tier leak (`input_divergence`), judgments whose judge is
/// upgraded part-way (`judge_version_change`), routing decisions, an embedding model rotating
/// under the treatment arm (`substrate_change`). Keys are random (one partition here).
fn events(n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut sim = Simulator::single(
        99,
        Faults {
            tier_leak: Some(("pro".into(), 0.56)),
            ..Default::default()
        },
    )
    .with_instruments(Instruments {
        enabled: true,
        judge_upgrade: Some((n as u64 / 3, 0.5)),
        substrate_rotation: Some(n as u64 / 2),
        ..Default::default()
    });
    let mut key = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            let mut b = Vec::new();
            sim.next_event(&mut b);
            key = key.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (key.to_le_bytes().to_vec(), b)
        })
        .collect()
}

fn config(brokers: &str, group: &str, topic: &str, http: &str) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
topics = ["{topic}"]
options = {{ "session.timeout.ms" = "6000", "max.poll.interval.ms" = "10000" }}

[kafka.checkpoint]
interval_ms = 300

[[experiment]]
id = "prompt-variant"
arms = {{ control = 0.5, treatment = 0.5 }}
treatment_inputs = ["fragment"]
substrate_inputs = ["embedding_model"]

[alerts]
alpha = 0.001
kafka_topic = "{topic}.alerts"

[http]
listen = "{http}"
"#
    )
}

/// The report of one uninterrupted pass over `events` (the reference), `memory` left out.
fn reference(config: &str, events: &[(Vec<u8>, Vec<u8>)]) -> serde_json::Value {
    let settings = Settings::from_toml(config).expect("config");
    let mut e = Engine::new(&settings);
    for (_, v) in events {
        let _ = e.process(v);
    }
    strip(serde_json::to_value(e.report()).expect("report"))
}

fn strip(mut report: serde_json::Value) -> serde_json::Value {
    report["memory"] = serde_json::Value::Null;
    report
}

/// Messages the daemon's state has counted (accepted and rejected), from its metrics.
fn counted(http: &str) -> Option<u64> {
    let (_, text) = http_get(http, "/metrics")?;
    let sum = text
        .lines()
        .filter(|l| {
            l.starts_with("armwatch_events_accepted_total{")
                || l.starts_with("armwatch_events_rejected_total{")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    Some(sum as u64)
}

fn report(http: &str) -> serde_json::Value {
    let (status, body) = http_get(http, "/api/v1/report").expect("report");
    assert_eq!(status, 200);
    strip(serde_json::from_str(&body).expect("report is JSON"))
}

/// Every alert on the alert topic, counted by what identifies it.
fn delivered_alerts(brokers: &str, topic: &str) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for (_, v) in read_all(brokers, topic, Duration::from_secs(3)) {
        let a: serde_json::Value = serde_json::from_slice(&v).expect("alert JSON");
        let id = format!(
            "{} {} {} {}",
            a["check"], a["experiment"], a["subject"], a["value"]
        );
        *out.entry(id).or_insert(0) += 1;
    }
    out
}

/// The identities of a report's alerts, counted.
fn report_alerts(report: &serde_json::Value) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for a in report["alerts"].as_array().expect("alerts") {
        let id = format!(
            "{} {} {} {}",
            a["check"], a["experiment"], a["subject"], a["value"]
        );
        *out.entry(id).or_insert(0) += 1;
    }
    out
}

fn start(dir: &Path, config: &Path, n: u32) -> Proc {
    armwatch(
        &["run", "--config", config.to_str().expect("utf-8 path")],
        &dir.join(format!("armwatch-{n}.log")),
    )
}

fn logs(dir: &Path) -> String {
    let mut out = String::new();
    for n in 0..10 {
        if let Ok(t) = std::fs::read_to_string(dir.join(format!("armwatch-{n}.log"))) {
            out.push_str(&format!("--- run {n}\n{t}"));
        }
    }
    out
}

/// kill -9 at five points of a live 1M-event stream, restarting each time: the final report
/// equals one uninterrupted pass over the same events (every count and e-value: one partition,
/// so even the order-dependent e-processes see the same order), and every alert reached the
/// alert topic exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_restarts_equal_one_pass() {
    const N: usize = 1_000_000;
    let broker = Broker::start();
    let topic = "durable.events";
    create_topics(
        &broker.addr,
        &[(topic, 1), ("durable.events.alerts", 1)],
    )
    .await;
    let all = events(N);
    let dir = tempfile::tempdir().expect("tempdir");
    let http = format!("127.0.0.1:{}", free_port());
    let text = config(&broker.addr, "durable", topic, &http);
    let cfg = dir.path().join("armwatch.toml");
    std::fs::write(&cfg, &text).expect("config written");
    let want = reference(&text, &all);

    // a live stream: produced over ~20 s while the daemon is killed and restarted
    let brokers = broker.addr.clone();
    let producing = std::thread::spawn(move || produce(&brokers, topic, &all, 50_000));
    // kill points (messages counted by the state when the kill lands), spread over the stream
    let points = [110_000u64, 290_000, 420_000, 640_000, 830_000];
    let mut killed_at = Vec::new();
    for (n, &point) in points.iter().enumerate() {
        let mut daemon = start(dir.path(), &cfg, n as u32);
        wait_for(
            Duration::from_secs(90),
            || counted(&http).is_some_and(|c| c >= point),
            &format!("the state to pass {point} messages (run {n})\n{}", logs(dir.path())),
        );
        signal(daemon.0.id(), "-KILL");
        let _ = daemon.0.wait();
        killed_at.push(point);
    }
    producing.join().expect("producer");
    let _daemon = start(dir.path(), &cfg, points.len() as u32);
    wait_for(
        Duration::from_secs(120),
        || counted(&http) == Some(N as u64),
        &format!("all {N} messages counted once\n{}", logs(dir.path())),
    );
    let got = report(&http);
    let log = logs(dir.path());
    assert!(
        log.matches("partition state taken on").count() > points.len(),
        "every restart restores: {log}"
    );
    assert!(log.contains("checkpoint") && !log.contains("checkpoint refused"));
    assert_eq!(got["events"], want["events"], "counts");
    assert_eq!(got, want, "the report after 5 kills equals one uninterrupted pass");
    let alerts = delivered_alerts(&broker.addr, "durable.events.alerts");
    assert!(alerts.len() >= 3, "{alerts:?}");
    // the sink logs each alert it delivers: which runs delivered what, when this fails
    let fired: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("--- run") || l.contains("armwatch::alert"))
        .collect();
    assert_eq!(
        alerts,
        report_alerts(&want),
        "each alert delivered once; delivered by run:\n{}",
        fired.join("\n")
    );
    println!("killed at {killed_at:?}; {} alerts each delivered once", alerts.len());
}
