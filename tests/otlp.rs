//! OpenTelemetry input (issue 11, item 4): `armwatch run` receives OTLP/HTTP from the real
//! OpenTelemetry Python SDK (protobuf: GenAI spans with `feature_flag.evaluation` and
//! `gen_ai.evaluation.result` events, `feature_flag.evaluation` log records) and hand-written
//! OTLP/JSON requests (one gzip-compressed), produces the mapped events to the input topic on
//! a real broker (tansu), consumes them, and reports exactly what `armwatch replay` reports for
//! the equivalent contract events, which the sender writes beside what it sends. Records that
//! are not experiment events are counted as skipped, and bad requests are refused with the
//! status an OTLP exporter understands.

mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;
use support::*;

const SPANS: usize = 1_200;

/// POST `body` to `addr` `path` with `content_type`: the status.
fn post(addr: &str, path: &str, content_type: &str, body: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .ok()?;
    // a server that refuses the body may answer and close before it is all written
    let _ = s.write_all(body);
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

fn otel_python_path() -> String {
    let tools = std::env::var("ARMWATCH_TOOLS").unwrap_or_else(|_| {
        format!(
            "{}/.cache/armwatch-tools",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let dir = format!("{tools}/py-otel-1.45.2");
    assert!(
        std::path::Path::new(&format!("{dir}/.complete")).exists(),
        "the OpenTelemetry SDK is not installed in {dir}: run scripts/install-test-deps.sh"
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_from_the_sdk_gives_the_report_of_the_equivalent_events() {
    let broker = Broker::start();
    create_topics(&broker.addr, &[("otel.events", 1)]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, otlp_port) = (free_port(), free_port());
    let config = dir.path().join("armwatch.toml");
    std::fs::write(
        &config,
        format!(
            r#"
{}
[kafka.checkpoint]
enabled = false
[http]
listen = "127.0.0.1:{http_port}"
report_values = true
[otlp]
listen = "127.0.0.1:{otlp_port}"
max_body_bytes = 1000000

[[experiment]]
id = "prompt-v"
arms = {{ control = 0.5, treatment = 0.5 }}
[[experiment]]
id = "flag-exp"
arms = {{ a = 0.3333333333, b = 0.3333333333, c = 0.3333333334 }}
"#,
            kafka_table(&broker.addr, "otlp-test", "otel.events")
        ),
    )
    .expect("config");
    let config_s = config.to_str().expect("utf-8 path");
    let log = dir.path().join("run.log");
    let _run = armwatch(&["run", "--config", config_s], &log);
    let otlp = format!("127.0.0.1:{otlp_port}");
    let http = format!("127.0.0.1:{http_port}");
    wait_for(
        Duration::from_secs(30),
        || TcpStream::connect(&otlp).is_ok(),
        "the OTLP receiver to listen",
    );

    // refused requests: a content type OTLP does not use, a body that is not OTLP
    assert_eq!(post(&otlp, "/v1/traces", "text/plain", b"hi"), Some(415));
    assert_eq!(
        post(&otlp, "/v1/logs", "application/x-protobuf", b"\xff\xff\xff"),
        Some(400)
    );
    assert_eq!(
        post(
            &otlp,
            "/v1/logs",
            "application/json",
            b"{\"resourceLogs\": 3}"
        ),
        Some(400)
    );
    assert_eq!(
        post(&otlp, "/v1/metrics", "application/json", b"{}"),
        Some(404)
    );

    // the real SDK (protobuf) and hand-written OTLP/JSON; the equivalent contract events beside
    let events = dir.path().join("equivalent.ndjson");
    let status = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/otlp_emit.py"
        ))
        .arg(format!("http://{otlp}"))
        .arg(&events)
        .arg(SPANS.to_string())
        .env("PYTHONPATH", otel_python_path())
        .status()
        .expect("python3 runs");
    assert!(status.success(), "otlp_emit.py failed");
    let expected = std::fs::read_to_string(&events)
        .expect("events")
        .lines()
        .count() as u64;
    assert!(expected > SPANS as u64, "{expected}");

    let mut report = serde_json::Value::Null;
    wait_for(
        Duration::from_secs(60),
        || {
            report = http_get(&http, "/api/v1/report")
                .and_then(|(_, b)| serde_json::from_str(&b).ok())
                .unwrap_or_default();
            report["events"]["accepted"].as_u64() == Some(expected)
        },
        "armwatch to consume every mapped event",
    );
    let replayed = Command::new(env!("CARGO_BIN_EXE_armwatch"))
        .args(["replay", "--config", config_s])
        .arg(&events)
        .output()
        .expect("replay runs");
    assert!(replayed.status.success());
    let replayed: serde_json::Value = serde_json::from_slice(&replayed.stdout).expect("report");
    for section in ["experiments", "judges", "alerts"] {
        assert_eq!(
            report[section], replayed[section],
            "{section} differs between OTLP and the equivalent events"
        );
    }
    assert_eq!(
        report["events"]["accepted_by_kind"],
        replayed["events"]["accepted_by_kind"]
    );
    assert!(report["experiments"]["prompt-v"]["counts"]
        .as_array()
        .is_some_and(|c| c.len() == 2));
    assert_eq!(
        report["judges"]["quality"]["versions"]
            .as_array()
            .map(|v| v.len()),
        Some(2),
        "{}",
        report["judges"]["quality"]
    );

    // the receiver's counts: everything produced, what is not an experiment event skipped
    let (_, metrics) = http_get(&http, "/metrics").expect("metrics");
    let produced = metric(
        &metrics,
        r#"armwatch_otlp_records_total{result="produced",signal="traces"}"#,
    )
    .unwrap_or(0.0)
        + metric(
            &metrics,
            r#"armwatch_otlp_records_total{result="produced",signal="logs"}"#,
        )
        .unwrap_or(0.0);
    assert_eq!(produced as u64, expected, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            r#"armwatch_otlp_records_total{result="not_an_event",signal="traces"}"#
        ),
        Some((SPANS / 10) as f64)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"armwatch_otlp_records_total{result="not_an_event",signal="logs"}"#
        ),
        Some((SPANS / 2 / 25) as f64)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"armwatch_otlp_requests_total{code="400",signal="logs"}"#
        ),
        Some(2.0)
    );
}
