//! Managed Kafka: the daemon reaches the broker over TLS (a certificate generated here, its CA
//! handed over the way a Kubernetes Secret would: a file named in an
//! `ARMWATCH_KAFKA_OPTION_*_FILE` variable), consumes everything exactly, and its state topic
//! and checkpoints go over the same TLS connection. A client without the CA is refused, and
//! `check-config` refuses what librdkafka would refuse at `run`.

mod support;

use armwatch::config::Settings;
use armwatch::engine::Engine;
use armwatch::sim::{Faults, Simulator};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::time::Duration;
use support::tls::{Cert, Front};
use support::*;

const N: usize = 20_000;

/// A client configuration for the TLS front, trusting `ca`.
fn tls_client(front: &str, ca: &std::path::Path) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", front)
        .set("security.protocol", "ssl")
        .set("ssl.ca.location", ca.to_str().expect("utf-8 path"));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_consumes_over_tls_with_the_ca_from_a_secret_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = Cert::generate(dir.path());
    let front_port = free_port();
    let broker = Broker::start_advertising(Some(front_port));
    let front = Front::start(front_port, &cert, broker.addr.clone());

    // topics and events, all over TLS (the broker advertises the TLS front)
    {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            tls_client(&front.addr, &cert.cert_pem)
                .create()
                .expect("admin client");
        let res = admin
            .create_topics(
                &[NewTopic::new(
                    "secure.events",
                    1,
                    TopicReplication::Fixed(1),
                )],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("create topics");
        for r in res {
            r.expect("topic created");
        }
    }
    let mut sim = Simulator::single(
        77,
        Faults {
            tier_leak: Some(("pro".into(), 0.7)),
            srm: None,
            ..Default::default()
        },
    );
    let events: Vec<Vec<u8>> = (0..N)
        .map(|_| {
            let mut b = Vec::new();
            sim.next_event(&mut b);
            b
        })
        .collect();
    let producer: BaseProducer = tls_client(&front.addr, &cert.cert_pem)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for (i, e) in events.iter().enumerate() {
        let key = format!("k{}", i % 7);
        send(
            &producer,
            BaseRecord::to("secure.events")
                .key(key.as_bytes())
                .payload(&e[..]),
        );
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("produced over TLS");

    // a client that does not trust the certificate gets nothing
    let untrusting: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &front.addr)
        .set("security.protocol", "ssl")
        .create()
        .expect("consumer");
    assert!(
        untrusting
            .fetch_metadata(Some("secure.events"), Duration::from_secs(3))
            .is_err(),
        "a client without the CA must not get through"
    );

    let http = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("armwatch.toml");
    let text = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "armwatch-tls"
topics = ["secure.events"]
options = {{ "security.protocol" = "SSL", "session.timeout.ms" = "6000", "max.poll.interval.ms" = "10000" }}

[kafka.checkpoint]
interval_ms = 500

[[experiment]]
id = "prompt-variant"
arms = {{ control = 0.5, treatment = 0.5 }}
treatment_inputs = ["fragment"]

[http]
listen = "{http}"
"#,
        brokers = front.addr
    );
    std::fs::write(&config, &text).expect("config written");
    let cfg = config.to_str().expect("utf-8 path");
    let ca = cert.cert_pem.to_str().expect("utf-8 path");

    // check-config builds the clients: the CA from the file variable is accepted...
    let check = |env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_armwatch"));
        c.args(["check-config", cfg]);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("check-config runs")
    };
    let ok = check(&[("ARMWATCH_KAFKA_OPTION_SSL_CA_PEM_FILE", ca)]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // ...and what librdkafka refuses is refused before `run`, naming the key and the fix
    let bad = check(&[(
        "ARMWATCH_KAFKA_OPTION_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
        "bogus",
    )]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("kafka.options")
            && err.contains("fix:")
            && err.contains("ssl.endpoint.identification.algorithm"),
        "{err}"
    );
    let missing = check(&[(
        "ARMWATCH_KAFKA_OPTION_SSL_CA_PEM_FILE",
        "/nonexistent/ca.pem",
    )]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("ARMWATCH_KAFKA_OPTION_SSL_CA_PEM_FILE")
    );

    let log = dir.path().join("armwatch.log");
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_armwatch"));
    c.args(["run", "--config", cfg])
        .env("ARMWATCH_KAFKA_OPTION_SSL_CA_PEM_FILE", ca)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let _daemon = Proc(c.spawn().expect("armwatch runs"));
    let report = || {
        http_get(&http, "/api/v1/report")
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
    };
    wait_for(
        Duration::from_secs(90),
        || report().is_some_and(|r| r["events"]["accepted"] == N as u64),
        &format!(
            "armwatch to consume {N} events over TLS\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ),
    );
    // the same counts as a replay of the events
    let settings = Settings::from_toml(&text).expect("settings");
    let mut engine = Engine::new(&settings);
    for e in &events {
        engine.process(e).expect("valid event");
    }
    let want = serde_json::to_value(engine.report()).expect("report");
    let got = report().expect("report");
    let exp = |r: &serde_json::Value| r["experiments"]["prompt-variant"]["counts"].clone();
    assert_eq!(exp(&got), exp(&want));
    assert!(
        got["alerts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["check"] == "input_divergence")),
        "the tier leak is found over TLS too"
    );
    // checkpoints went over TLS too
    let (_, metrics) = http_get(&http, "/metrics").expect("metrics");
    wait_for(
        Duration::from_secs(30),
        || {
            http_get(&http, "/metrics")
                .and_then(|(_, t)| metric(&t, r#"armwatch_checkpoints_total{result="written"}"#))
                .is_some_and(|n| n >= 1.0)
        },
        &format!("a checkpoint written over TLS\n{metrics}"),
    );
}
