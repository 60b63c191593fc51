//! The HTTP side as an SRE meets it (`armwatch demo`, no broker): `/api/v1/*` behind a bearer
//! token when one is configured, values pseudonymized by default, `/metrics` and the probes
//! open, and a flood of idle connections cannot keep the probes out for longer than the header
//! timeout.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::*;

/// `GET path` with extra header lines: (status, body).
fn get(addr: &str, path: &str, headers: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

#[test]
fn token_pseudonyms_and_connection_flood() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "t0ken-for-the-report-api-1234";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token written");
    let http = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("armwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[[experiment]]\nid = \"prompt-variant\"\narms = {{ control = 0.5, treatment = 0.5 }}\ntreatment_inputs = [\"fragment\"]\n\n\
             [http]\nlisten = \"{http}\"\nreport_token_file = \"{}\"\nmax_connections = 8\nheader_timeout_ms = 1000\n",
            token_file.display()
        ),
    )
    .expect("config written");
    let log = dir.path().join("demo.log");
    let _demo = armwatch(
        &[
            "demo",
            "--config",
            config.to_str().expect("utf-8 path"),
            "--fault",
            "tier-leak",
            "--rate",
            "20000",
        ],
        &log,
    );
    let bearer = format!("Authorization: Bearer {token}\r\n");
    wait_for(
        Duration::from_secs(60),
        || {
            get(&http, "/api/v1/report", &bearer)
                .is_some_and(|(s, b)| s == 200 && b.contains("\"subject\":\"tier\""))
        },
        &format!(
            "the tier leak in the report\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ),
    );
    // the token is required on /api/v1/*, not on /metrics and the probes
    for (path, headers) in [
        ("/api/v1/report", ""),
        (
            "/api/v1/report",
            "Authorization: Bearer wrong-token-of-some-length\r\n",
        ),
        ("/api/v1/experiments/prompt-variant", ""),
    ] {
        assert_eq!(
            get(&http, path, headers).map(|r| r.0),
            Some(401),
            "{path} {headers}"
        );
    }
    assert_eq!(get(&http, "/metrics", "").map(|r| r.0), Some(200));
    assert_eq!(get(&http, "/healthz", "").map(|r| r.0), Some(200));
    // values are pseudonyms, the same in the alert and in the strata
    let (_, body) = get(&http, "/api/v1/report", &bearer).expect("report");
    let report: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let tiers = ["free", "pro", "enterprise"];
    let leak = report["alerts"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|x| x["check"] == "input_divergence" && x["subject"] == "tier")
        })
        .expect("leak alert")
        .clone();
    let value = leak["value"].as_str().expect("value");
    assert!(
        tiers
            .iter()
            .any(|t| armwatch::report::pseudonym(t) == value),
        "{leak}"
    );
    assert!(leak["message"].as_str().is_some_and(|m| m.contains(value)));
    for t in tiers {
        assert!(!body.contains(&format!("\"{t}\"")), "raw value {t} served");
    }

    // a flood of idle connections: past the cap new ones are closed at once, the idle ones
    // are closed by the header timeout, and the probe gets through within about that timeout
    let idle: Vec<TcpStream> = (0..64)
        .filter_map(|_| TcpStream::connect(&http).ok())
        .collect();
    assert!(idle.len() >= 8, "connections accepted");
    let start = Instant::now();
    wait_for(
        Duration::from_secs(4),
        || get(&http, "/healthz", "").is_some_and(|r| r.0 == 200),
        "/healthz through the flood",
    );
    println!(
        "/healthz answered {:?} into a flood of 64 idle connections (cap 8, header timeout 1 s)",
        start.elapsed()
    );
    // every idle connection has been closed by the server by now (read returns 0)
    std::thread::sleep(Duration::from_millis(1500));
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut b = [0u8; 1];
        assert!(
            matches!(c.read(&mut b), Ok(0) | Err(_)),
            "an idle connection was left open"
        );
    }
}

/// The status page at `/`, opened in headless Chromium against the demo: the charts of the
/// checks' evidence are drawn (SVG, no external script) and the tier-leak alert is shown with
/// its message.
#[test]
fn status_page_renders_charts_and_the_alert_in_a_browser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let http = format!("127.0.0.1:{}", free_port());
    let log = dir.path().join("demo.log");
    let _demo = armwatch(
        &[
            "demo",
            "--fault",
            "tier-leak",
            "--rate",
            "20000",
            "--listen",
            &http,
        ],
        &log,
    );
    wait_for(
        Duration::from_secs(60),
        || {
            get(&http, "/api/v1/status", "")
                .is_some_and(|(s, b)| s == 200 && b.contains("depends on input `tier`"))
        },
        &format!(
            "the tier leak in the status data\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ),
    );
    let (status, page) = get(&http, "/", "").expect("the page");
    assert_eq!(status, 200);
    // built in: no external script, style or font
    for external in ["<script src", "<link", "@import", "url("] {
        assert!(!page.contains(external), "{external} in the page");
    }
    let profile = dir.path().join("chromium");
    let out = std::process::Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            &format!("--user-data-dir={}", profile.display()),
            "--dump-dom",
            &format!("http://{http}/"),
        ])
        .output()
        .expect("chromium runs (scripts/install-test-deps.sh installs it)");
    let dom = String::from_utf8_lossy(&out.stdout);
    let charts = dom.matches("<polyline").count();
    assert!(charts >= 5, "{charts} charts drawn:\n{dom}");
    assert!(dom.contains("threshold"), "threshold lines drawn");
    assert!(
        dom.contains("class=\"alert")
            && dom.contains("arm assignment depends on input `tier` in prompt-variant"),
        "the tier-leak alert shown:\n{dom}"
    );
    assert!(
        dom.contains("<div id=\"error\"></div>"),
        "the page could not read the status: {dom}"
    );
    println!("status page: {charts} evidence charts and the tier-leak alert rendered by Chromium");
}
