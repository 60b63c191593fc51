//! Alerts and metrics against the real servers (Debian's `prometheus-alertmanager` and
//! `prometheus`, installed by scripts/install-test-deps.sh): `armwatch demo` with a tier leak
//! posts its alert to Alertmanager's v2 API, and Prometheus scrapes `/metrics` and answers
//! queries over them.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

fn server(bin: &str, args: &[String]) -> Proc {
    Proc(
        Command::new(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin} starts ({e}); run scripts/install-test-deps.sh")),
    )
}

/// A real Alertmanager in `dir` (its web config `web`, for TLS, when given) routing to a
/// receiver that drops everything: (process, address). Waits for plain-http readiness unless
/// TLS is on.
fn alertmanager(dir: &std::path::Path, web: Option<&std::path::Path>) -> (Proc, String) {
    std::fs::write(
        dir.join("am.yml"),
        "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n",
    )
    .expect("am config");
    let am = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        format!("--config.file={}", dir.join("am.yml").display()),
        format!("--storage.path={}", dir.join("am-data").display()),
        format!("--web.listen-address={am}"),
        "--cluster.listen-address=".into(),
    ];
    if let Some(w) = web {
        args.push(format!("--web.config.file={}", w.display()));
    }
    let p = server("prometheus-alertmanager", &args);
    if web.is_none() {
        wait_for(
            Duration::from_secs(30),
            || http_get(&am, "/-/ready").is_some_and(|r| r.0 == 200),
            "alertmanager ready",
        );
    }
    (p, am)
}

/// `armwatch demo --config config` with `faults` at `rate` events/s, logging to `log`.
fn demo(config: &str, faults: &[&str], rate: &str, log: &std::path::Path) -> Proc {
    let mut args = vec!["demo", "--config", config, "--rate", rate];
    for f in faults {
        args.extend(["--fault", f]);
    }
    armwatch(&args, log)
}

#[test]
fn demo_alert_reaches_alertmanager_and_prometheus_scrapes_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = |p: &str| dir.path().join(p).to_string_lossy().to_string();

    let (_am, am) = alertmanager(dir.path(), None);

    let aw = format!("127.0.0.1:{}", free_port());
    // the demo's own configuration (every experiment, router, judge and eval set declared),
    // posting to this Alertmanager and listening here
    let demo_config = std::fs::read_to_string("config/demo.toml").expect("demo config");
    let config = demo_config
        .replace(
            "[alerts]\nalpha = 0.001\n",
            &format!("[alerts]\nalpha = 0.001\nwebhook = \"http://{am}/api/v2/alerts\"\n"),
        )
        .replace("listen = \"127.0.0.1:9898\"", &format!("listen = \"{aw}\""));
    assert!(config.contains(&am) && config.contains(&aw));
    std::fs::write(d("armwatch.toml"), config).expect("armwatch config");

    let prom = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        d("prom.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: armwatch\n    static_configs:\n      - targets: ['{aw}']\n"),
    )
    .expect("prometheus config");
    let _prom = server(
        "prometheus",
        &[
            format!("--config.file={}", d("prom.yml")),
            format!("--storage.tsdb.path={}", d("prom-data")),
            format!("--web.listen-address={prom}"),
        ],
    );

    let log = dir.path().join("demo.log");
    let _demo = demo(&d("armwatch.toml"), &["tier-leak"], "5000", &log);

    // Alertmanager holds the alert, labelled with the input and the leaking value
    let mut last = String::new();
    let start = std::time::Instant::now();
    loop {
        if let Some((200, body)) = http_get(&am, "/api/v2/alerts") {
            let alerts: serde_json::Value =
                serde_json::from_str(&body).expect("alertmanager answers JSON");
            let found = alerts.as_array().into_iter().flatten().any(|a| {
                a["labels"]["alertname"] == "armwatch_input_divergence"
                    && a["labels"]["experiment"] == "prompt-variant"
                    && a["labels"]["subject"] == "tier"
                    && a["labels"]["value"] == "pro"
                    && a["status"]["state"] == "active"
            });
            if found {
                break;
            }
            last = body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "alert not in Alertmanager: {last}\ndemo log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // Prometheus scrapes armwatch and sees the active alert and the event counter
    let query = |q: &str| -> Vec<serde_json::Value> {
        let path = format!(
            "/api/v1/query?query={}",
            q.replace('{', "%7B")
                .replace('}', "%7D")
                .replace('"', "%22")
                .replace('=', "%3D")
                .replace(',', "%2C")
        );
        http_get(&prom, &path)
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    };
    let start = std::time::Instant::now();
    loop {
        let up = query(r#"up{job="armwatch"}"#);
        let active = query(
            r#"armwatch_alerts_active{check="input_divergence",experiment="prompt-variant"}"#,
        );
        let accepted = query(r#"armwatch_events_accepted_total{kind="prompt"}"#);
        let ok = up.first().is_some_and(|r| r["value"][1] == "1")
            && active.first().is_some_and(|r| r["value"][1] == "1")
            && accepted
                .first()
                .and_then(|r| r["value"][1].as_str()?.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0);
        if ok {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "prometheus did not scrape armwatch: up={up:?} active={active:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // every query of the Grafana dashboard (panels and annotations) returns data from the
    // real Prometheus scraping the demo, except the few that need the Kafka daemon
    let dash: serde_json::Value =
        serde_json::from_str(include_str!("../dashboards/armwatch.json")).expect("dashboard");
    let mut exprs: Vec<String> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    exprs.extend(
        dash["annotations"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["expr"].as_str().map(str::to_string)),
    );
    // the demo has no consumer, rejects nothing, writes no checkpoint, re-keys nothing
    let kafka_only = [
        "armwatch_consumer_lag_messages",
        "armwatch_events_rejected_total[5m])) > 0",
        "armwatch_checkpoints_total",
        "armwatch_repartition_messages_total",
    ];
    let encode = |q: &str| -> String {
        q.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let run = |q: &str| -> Vec<serde_json::Value> {
        http_get(&prom, &format!("/api/v1/query?query={}", encode(q)))
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    };
    let start = std::time::Instant::now();
    loop {
        let empty: Vec<String> = exprs
            .iter()
            .map(|e| e.replace("$experiment", ".*"))
            .filter(|e| !kafka_only.iter().any(|k| e.contains(k)))
            .filter(|e| run(e).is_empty())
            .collect();
        if empty.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "dashboard queries without data: {empty:#?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    println!("{} dashboard queries return data", exprs.len());
}

/// An Alertmanager behind TLS (a certificate generated here, its CA given to armwatch as
/// `alerts.webhook_ca_file`): the alert goes over https and Alertmanager holds it.
#[test]
fn alert_reaches_alertmanager_over_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = |p: &str| dir.path().join(p).to_string_lossy().to_string();
    let cert = support::tls::Cert::generate(dir.path());
    std::fs::write(
        d("web.yml"),
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            cert.cert_pem.display(),
            cert.key_pem.display()
        ),
    )
    .expect("web config");
    let (_am, am) = alertmanager(dir.path(), Some(&dir.path().join("web.yml")));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ca = std::fs::read(&cert.cert_pem).expect("ca");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("pem"))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let get = |path: &str| {
        rt.block_on(async {
            let r = client
                .get(format!("https://{am}{path}"))
                .send()
                .await
                .ok()?;
            (r.status().is_success()).then_some(())?;
            r.text().await.ok()
        })
    };
    wait_for(
        Duration::from_secs(30),
        || get("/-/ready").is_some(),
        "alertmanager ready over https",
    );
    // plain http is refused by the TLS listener
    assert!(http_get(&am, "/-/ready").is_none_or(|(status, _)| status != 200));

    let aw = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        d("armwatch.toml"),
        format!(
            "[[experiment]]\nid = \"prompt-variant\"\narms = {{ control = 0.5, treatment = 0.5 }}\ntreatment_inputs = [\"fragment\"]\n\n\
             [alerts]\nalpha = 0.001\nwebhook = \"https://{am}/api/v2/alerts\"\nwebhook_ca_file = \"{}\"\n\n[http]\nlisten = \"{aw}\"\n",
            cert.cert_pem.display()
        ),
    )
    .expect("armwatch config");
    let log = dir.path().join("demo.log");
    let _demo = demo(&d("armwatch.toml"), &["tier-leak"], "5000", &log);
    let mut last = String::new();
    wait_for(
        Duration::from_secs(60),
        || {
            let Some(body) = get("/api/v2/alerts") else {
                return false;
            };
            let alerts: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let found = alerts.as_array().into_iter().flatten().any(|a| {
                a["labels"]["alertname"] == "armwatch_input_divergence"
                    && a["labels"]["value"] == "pro"
            });
            last = body;
            found
        },
        "the alert in Alertmanager over https",
    );
    let (_, metrics) = http_get(&aw, "/metrics").expect("metrics");
    assert!(
        metric(
            &metrics,
            r#"armwatch_alert_deliveries_total{result="ok",sink="alertmanager"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{last}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// A webhook that accepts connections and never answers, and one that answers 500: the real
/// Alertmanager beside them still gets every alert at once (sinks are independent), with the
/// configured severity, runbook and dashboard annotations and a generatorURL; the failing
/// sinks retry with backoff (counted), and what their queues cannot hold is counted as
/// dropped, never silently lost.
#[test]
fn hanging_and_failing_webhooks_do_not_hold_back_alertmanager() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = |p: &str| dir.path().join(p).to_string_lossy().to_string();
    let (_am, am) = alertmanager(dir.path(), None);
    // a receiver that hangs: accepts, reads, never answers
    let hang = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hang_addr = hang.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in hang.incoming().flatten() {
            held.push(c);
        }
    });
    // a receiver that fails: 500 to everything, counting the attempts
    let fail = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let fail_addr = fail.local_addr().expect("addr").to_string();
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = attempts.clone();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut c in fail.incoming().flatten() {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut buf = [0u8; 65536];
            let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    let aw = format!("127.0.0.1:{}", free_port());
    let demo_config = std::fs::read_to_string("config/demo.toml").expect("demo config");
    let config = demo_config.replace(
        "[alerts]\nalpha = 0.001\n",
        &format!(
            "[alerts]\nalpha = 0.001\nwebhook = \"http://{am}/api/v2/alerts\"\n\
             webhooks = [\"http://{hang_addr}/api/v2/alerts\", \"http://{fail_addr}/api/v2/alerts\"]\n\
             queue_capacity = 1\n\
             severity = {{ input_divergence = \"warning\" }}\n\
             runbook_url = \"https://runbooks.example/armwatch#{{check}}\"\n\
             dashboard_url = \"https://grafana.example/d/armwatch?var-experiment={{experiment}}\"\n\
             external_url = \"http://armwatch.example:9898\"\n"
        ),
    );
    assert_ne!(
        config, demo_config,
        "the demo config has its [alerts] section"
    );
    let config = config.replace("listen = \"127.0.0.1:9898\"", &format!("listen = \"{aw}\""));
    std::fs::write(d("armwatch.toml"), config).expect("armwatch config");
    let log = dir.path().join("demo.log");
    let start = std::time::Instant::now();
    let _demo = demo(
        &d("armwatch.toml"),
        &["tier-leak", "srm", "judge-upgrade"],
        "20000",
        &log,
    );
    let mut last = String::new();
    wait_for(
        Duration::from_secs(60),
        || {
            let Some((200, body)) = http_get(&am, "/api/v2/alerts") else {
                return false;
            };
            let alerts: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let leak = alerts.as_array().into_iter().flatten().find(|a| {
                a["labels"]["alertname"] == "armwatch_input_divergence"
                    && a["labels"]["experiment"] == "prompt-variant"
            });
            last = body.clone();
            leak.is_some_and(|a| {
                a["labels"]["severity"] == "warning"
                    && a["annotations"]["runbook_url"]
                        == "https://runbooks.example/armwatch#input_divergence"
                    && a["annotations"]["dashboard_url"]
                        == "https://grafana.example/d/armwatch?var-experiment=prompt-variant"
                    && a["generatorURL"]
                        == "http://armwatch.example:9898/api/v1/experiments/prompt-variant"
            })
        },
        "the leak in Alertmanager with its severity and annotations",
    );
    let took = start.elapsed();
    println!("alert in Alertmanager {took:?} after the demo started, next to a hanging and a failing webhook");
    // the hanging sink's 10 s timeout did not hold it back
    assert!(took < Duration::from_secs(9), "{took:?}");
    // the failing sink retries with backoff; the full queues count their drops
    let series = |t: &str, s: &str| metric(t, s).unwrap_or(0.0);
    wait_for(
        Duration::from_secs(30),
        || {
            let Some((_, t)) = http_get(&aw, "/metrics") else {
                return false;
            };
            last = t.clone();
            series(
                &t,
                r#"armwatch_alert_deliveries_total{result="error",sink="alertmanager-2"}"#,
            ) >= 2.0
                && series(
                    &t,
                    r#"armwatch_alerts_dropped_total{reason="queue_full",sink="alertmanager-1"}"#,
                ) >= 1.0
                && series(
                    &t,
                    r#"armwatch_alert_deliveries_total{result="ok",sink="alertmanager"}"#,
                ) >= 1.0
        },
        "retries and drops counted",
    );
    assert!(
        attempts.load(std::sync::atomic::Ordering::Relaxed) >= 2,
        "the failing receiver was retried"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("alert queue full"), "{text}");
    println!(
        "{}",
        last.lines()
            .filter(|l| l.starts_with("armwatch_alert"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A webhook receiver that records every posted body (Alertmanager's API shape) and answers
/// 200.
fn capture() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    use std::io::{BufRead, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let posts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = posts.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut r = std::io::BufReader::new(c);
            let mut len = 0usize;
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0u8; len];
            if r.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice(&body) {
                    seen.lock().expect("posts").push(v);
                }
            }
            let _ = r
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (addr, posts)
}

/// An experiment that ends (`ends_at`): its alerts, fired while it ran, are resolved once the
/// end passes (posted again with `endsAt`), and the other experiments' alerts stay active.
#[test]
fn alerts_of_an_ended_experiment_are_resolved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hook, posts) = capture();
    // whole seconds, as written in the configuration
    let ends_text = (chrono::Utc::now() + chrono::Duration::seconds(8))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let ends = chrono::DateTime::parse_from_rfc3339(&ends_text).expect("rfc3339");
    let demo_config = std::fs::read_to_string("config/demo.toml").expect("demo config");
    let config = demo_config
        .replacen(
            "[[experiment]]\nid = \"prompt-variant\"\n",
            &format!("[[experiment]]\nid = \"prompt-variant\"\nends_at = \"{ends_text}\"\n"),
            1,
        )
        .replace(
            "[alerts]\nalpha = 0.001\n",
            &format!("[alerts]\nalpha = 0.001\nwebhook = \"http://{hook}/api/v2/alerts\"\n"),
        )
        .replace(
            "listen = \"127.0.0.1:9898\"",
            &format!("listen = \"127.0.0.1:{}\"", free_port()),
        );
    assert!(config.contains("ends_at") && config.contains(&hook));
    let path = dir.path().join("armwatch.toml");
    std::fs::write(&path, config).expect("config");
    let log = dir.path().join("demo.log");
    let _demo = demo(
        path.to_str().expect("utf-8 path"),
        &["tier-leak", "srm"],
        "20000",
        &log,
    );
    let posted = |name: &str, exp: &str, resolved: bool| {
        posts.lock().expect("posts").iter().any(|body| {
            body.as_array().into_iter().flatten().any(|a| {
                a["labels"]["alertname"] == name
                    && a["labels"]["experiment"] == exp
                    && a.get("endsAt").is_some() == resolved
            })
        })
    };
    wait_for(
        Duration::from_secs(30),
        || posted("armwatch_input_divergence", "prompt-variant", false),
        "the leak alert while the experiment runs",
    );
    assert!(chrono::Utc::now() < ends, "the alert fired before the end");
    wait_for(
        Duration::from_secs(30),
        || posted("armwatch_input_divergence", "prompt-variant", true),
        &format!(
            "the leak alert resolved after the end\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ),
    );
    assert!(chrono::Utc::now() >= ends);
    // router-v2 has no end: its SRM alert is never resolved
    assert!(posted("armwatch_srm", "router-v2", false));
    assert!(!posted("armwatch_srm", "router-v2", true));
}
