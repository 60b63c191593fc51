//! The HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `/api/v1/report`,
//! `/api/v1/experiments/{id}`. Secure by default: loopback unless configured, the report's
//! unit ids, cluster names and input values pseudonymized unless `http.report_values`, an
//! optional bearer token on `/api/v1/*`, a connection cap and a header timeout (a flood of idle
//! connections cannot starve the probes).

use crate::report::Report;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// One publish: the Prometheus text and the report, and their encodings, each made once by the
/// first request that needs it and shared until the next publish.
#[derive(Default)]
struct Published {
    /// Prometheus text.
    metrics: Bytes,
    report: Option<Arc<Report>>,
    /// The served report's JSON, made by the first request (not by the engine thread: with a
    /// thousand experiments it is ~10 MB).
    encoded: OnceLock<Arc<Encoded>>,
    /// The last publish's, while it is younger than [`Encoded::FRESH`] times what it cost.
    carried: Option<Arc<Encoded>>,
    /// Gzip of the Prometheus text, made by the first request that accepts gzip.
    metrics_gz: OnceLock<Bytes>,
}

/// A report's JSON and its gzip (a dashboard polling a thousand experiments' report moves a
/// tenth of the bytes), and when and at what cost the JSON was made. A publish's first request
/// serves the last publish's instead of making its own while that is younger than ten times
/// its cost: serving a large report then takes at most about a tenth of a core however often
/// the engine thread publishes (at 1,000 experiments the report can be ~1 s old; a small one
/// is made again at every publish).
struct Encoded {
    json: Bytes,
    gz: OnceLock<Bytes>,
    made: std::time::Instant,
    cost: std::time::Duration,
}

impl Encoded {
    const FRESH: u32 = 10;

    /// `json`, whose making began at `made` and ends now.
    fn new(json: Bytes, made: std::time::Instant) -> Arc<Encoded> {
        Arc::new(Encoded {
            json,
            gz: OnceLock::new(),
            made,
            cost: made.elapsed(),
        })
    }

    fn fresh(&self) -> bool {
        self.made.elapsed() < self.cost * Self::FRESH
    }
}

/// What the engine thread publishes and the HTTP handlers read (swapped at publish cadence,
/// never touched per event).
#[derive(Default)]
pub struct Shared {
    /// The last publish. The engine thread only swaps the pointer, and a request only clones
    /// it, under this lock: the encodings are made outside it, in the publish they belong to,
    /// so a request serializing a large report never holds up the engine thread's next publish
    /// (nor can the two wait on each other's locks).
    published: Mutex<Arc<Published>>,
    /// The source is connected and consuming.
    pub ready: AtomicBool,
    /// Serve values as they are (`http.report_values`).
    report_values: bool,
    /// The bearer token `/api/v1/*` requires.
    token: Option<String>,
    /// Wall time (epoch ms) of the engine thread's last publish (0: none yet).
    last_publish_ms: std::sync::atomic::AtomicI64,
    /// The status page's evidence history, sampled at publish.
    history: Mutex<crate::status::History>,
}

/// `/healthz` fails once the engine thread has not published for this long (it publishes every
/// 0.5 s, at most ten times its publish cost apart, even without traffic): a stopped or stuck
/// engine thread is a dead daemon, whatever its HTTP side says.
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

impl Shared {
    /// Serving values as they are (`report_values`) or pseudonymized, `/api/v1/*` behind
    /// `token` when given.
    pub fn new(report_values: bool, token: Option<String>) -> Shared {
        Shared {
            report_values,
            token,
            ..Shared::default()
        }
    }

    /// `report` as JSON, as served: values pseudonymized unless `report_values`.
    fn served(&self, report: &Report) -> Vec<u8> {
        if self.report_values {
            json(report)
        } else {
            json(&report.redacted())
        }
    }

    /// Replace the published texts (a request holds a reference-counted view of the bytes,
    /// never a copy).
    pub fn set(&self, metrics: impl Into<Bytes>, report: Report) {
        let now = chrono::Utc::now().timestamp_millis();
        self.last_publish_ms.store(now, Ordering::Relaxed);
        // a status request building its JSON holds the history: this sample is skipped then
        // (the next publish records), never waited for
        if let Ok(mut h) = self.history.try_lock() {
            h.record(&report, now);
        }
        let carried = self
            .published()
            .encoded
            .get()
            .filter(|e| e.fresh())
            .map(Arc::clone);
        let next = Arc::new(Published {
            metrics: metrics.into(),
            report: Some(Arc::new(report)),
            carried,
            ..Published::default()
        });
        // the old publish is dropped outside the lock (its last reader may be a request)
        let _old = self
            .published
            .lock()
            .map(|mut p| std::mem::replace(&mut *p, next));
    }

    /// The last publish (a pointer copy under the lock).
    fn published(&self) -> Arc<Published> {
        self.published
            .lock()
            .map(|p| Arc::clone(&p))
            .unwrap_or_default()
    }

    /// The report's JSON gzip-compressed (once per publish, by the first caller).
    fn report_gz(&self) -> Bytes {
        let e = self.encoded(&self.published());
        e.gz.get_or_init(|| gzip(&e.json)).clone()
    }

    /// The Prometheus text gzip-compressed (once per publish, by the first caller).
    fn metrics_gz(&self) -> Bytes {
        let p = self.published();
        p.metrics_gz.get_or_init(|| gzip(&p.metrics)).clone()
    }

    fn last_report(&self) -> Option<Arc<Report>> {
        self.published().report.clone()
    }

    /// The last published Prometheus text.
    fn metrics(&self) -> Bytes {
        self.published().metrics.clone()
    }

    /// The last published report as JSON (serialized once per publish, by the first caller;
    /// concurrent callers wait for it rather than serialize it again).
    fn report_json(&self) -> Bytes {
        self.encoded(&self.published()).json.clone()
    }

    /// The publish's report as served: the last publish's while fresh, else made now.
    fn encoded(&self, p: &Published) -> Arc<Encoded> {
        let e = p.encoded.get_or_init(|| {
            if let Some(c) = p.carried.as_ref().filter(|c| c.fresh()) {
                return Arc::clone(c);
            }
            let made = std::time::Instant::now();
            let json = match &p.report {
                Some(r) => Bytes::from(self.served(r)),
                None => Bytes::from_static(b"{}"),
            };
            Encoded::new(json, made)
        });
        Arc::clone(e)
    }
}

/// `v` as JSON (plain data: it cannot fail).
fn json<T: serde::Serialize + ?Sized>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// The router.
pub fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/api/v1/report", get(report))
        .route("/api/v1/status", get(status))
        .route("/api/v1/experiments/{id}", get(experiment))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            authorized,
        ));
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api)
        .with_state(shared)
}

/// `/api/v1/*` with a token configured: `Authorization: Bearer <token>` or 401.
async fn authorized(
    State(s): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Some(token) = &s.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required (http.report_token_file)\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// Equal without an early exit on the first differing byte (the time does not tell how much
/// of a guessed token was right).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Fast gzip (level 1): made once per publish, served to every client that accepts it.
fn gzip(b: &[u8]) -> Bytes {
    use std::io::Write as _;
    let mut e =
        flate2::write::GzEncoder::new(Vec::with_capacity(b.len() / 8), flate2::Compression::fast());
    match e.write_all(b).and_then(|_| e.finish()) {
        Ok(v) => Bytes::from(v),
        Err(_) => Bytes::new(),
    }
}

/// Whether the request accepts a gzip body.
fn accepts_gzip(h: &HeaderMap) -> bool {
    h.get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            let mut parts = v.trim().split(';');
            parts
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("gzip"))
                && !parts.any(|q| q.trim().replace(' ', "") == "q=0")
        })
}

/// A shared body, gzip-compressed when the client accepts it.
fn body(content_type: &'static str, plain: Bytes, gz: Option<Bytes>) -> axum::response::Response {
    match gz {
        Some(gz) if !gz.is_empty() => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CONTENT_ENCODING, "gzip"),
                (header::VARY, "Accept-Encoding"),
            ],
            gz,
        )
            .into_response(),
        _ => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::VARY, "Accept-Encoding"),
            ],
            plain,
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<Arc<Shared>>, h: HeaderMap) -> impl IntoResponse {
    const TYPE: &str = "text/plain; version=0.0.4";
    if accepts_gzip(&h) {
        let gz = tokio::task::spawn_blocking({
            let s = s.clone();
            move || s.metrics_gz()
        })
        .await
        .unwrap_or_default();
        if !gz.is_empty() {
            return body(TYPE, Bytes::new(), Some(gz));
        }
    }
    body(TYPE, s.metrics(), None)
}

async fn report(State(s): State<Arc<Shared>>, h: HeaderMap) -> impl IntoResponse {
    // serializing (and compressing) a large report blocks: off the async workers
    let gzip = accepts_gzip(&h);
    let (plain, gz) = tokio::task::spawn_blocking(move || {
        match gzip.then(|| s.report_gz()).filter(|g| !g.is_empty()) {
            Some(gz) => (Bytes::new(), Some(gz)),
            None => (s.report_json(), None),
        }
    })
    .await
    .unwrap_or_default();
    body("application/json", plain, gz)
}

/// The status page: experiments, their checks' evidence over time as charts, the active
/// alerts. Built into the binary, no external script or style (it works air-gapped).
async fn page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("status.html"),
    )
}

/// The status page's data ([`crate::status::History::status`]), values pseudonymized as in the
/// report.
async fn status(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let body = s.last_report().map(|r| {
        let at = s.last_publish_ms.load(Ordering::Relaxed);
        let v = match s.history.lock() {
            Ok(h) if s.report_values => h.status(&r, at),
            Ok(h) => h.status(&r.redacted(), at),
            Err(_) => serde_json::Value::Null,
        };
        json(&v)
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.unwrap_or_else(|| {
            b"{\"alerts\":[],\"series\":[],\"events_accepted\":0,\"events_rejected\":0}".to_vec()
        }),
    )
}

/// One experiment of the last report, with its alerts: what a dashboard or a client watching
/// one experiment needs, at a cost that does not grow with the fleet.
async fn experiment(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> axum::response::Response {
    let json = s.last_report().and_then(|r| {
        let e = r.experiments.get(&id)?;
        let alerts = r
            .alerts
            .iter()
            .filter(|a| a.experiment.as_deref() == Some(id.as_str()));
        // as the whole report serves them ([`Report::redacted`])
        let (e, alerts): (_, Vec<_>) = if s.report_values {
            (e.clone(), alerts.cloned().collect())
        } else {
            (
                crate::report::redacted_experiment(e),
                alerts.map(crate::report::redacted_alert).collect(),
            )
        };
        Some(json(
            &serde_json::json!({"experiment": id, "report": e, "alerts": alerts}),
        ))
    });
    match json {
        Some(j) => ([(header::CONTENT_TYPE, "application/json")], j).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "no such experiment in the last report\n",
        )
            .into_response(),
    }
}

/// Alive while the engine thread publishes (see [`STALE_AFTER`]); before its first publish
/// (startup), alive.
async fn healthz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let last = s.last_publish_ms.load(Ordering::Relaxed);
    let age = chrono::Utc::now().timestamp_millis() - last;
    if last > 0 && age > STALE_AFTER.as_millis() as i64 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the engine thread has not published for {} s\n", age / 1000),
        )
    } else {
        (StatusCode::OK, "ok\n".to_string())
    }
}

async fn readyz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "source not connected\n")
    }
}

/// How connections are accepted.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
    /// Time a connection has to send a request's headers (and may stay idle between requests).
    pub header_timeout: std::time::Duration,
}

/// Serve until `shutdown` resolves: at most `limits.max_connections` connections at once (one
/// more is accepted and closed at once, so the backlog never holds probes behind a flood), each
/// closed when it does not send its request headers within `limits.header_timeout`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(shared), limits, shutdown).await
}

/// Serve `app` with the connection cap and header timeout of [`serve`] (also the OTLP
/// receiver's loop).
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut refused_log = crate::daemon::RateLimiter::new(1);
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // out of file descriptors or the like: wait, never spin
                    if let Some(suppressed) = refused_log.allow() {
                        tracing::warn!(error = %e, suppressed, "http: accept failed");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(suppressed) = refused_log.allow() {
                tracing::warn!(
                    max = limits.max_connections,
                    suppressed,
                    "http: connection limit reached, closing new connections (http.max_connections)"
                );
            }
            drop(tcp);
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(tcp), svc);
            let _ = conn.await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    /// A large report's JSON is served from the last publish while younger than ten times its
    /// cost, then made anew.
    #[test]
    fn a_large_report_is_made_at_most_every_ten_times_its_cost() {
        let settings = crate::config::Settings::from_toml("").unwrap();
        let mut engine = crate::engine::Engine::new(&settings);
        let mut sim = crate::sim::Simulator::fleet(3, 400, 100);
        let mut buf = Vec::new();
        let mut feed = |engine: &mut crate::engine::Engine, n: usize| {
            for _ in 0..n {
                sim.next_event(&mut buf);
                let _ = engine.process(&buf);
            }
        };
        feed(&mut engine, 40_000);
        let shared = Shared::new(false, None);
        shared.set("a 1\n", engine.report());
        let first = shared.report_json();
        let gz = shared.report_gz();
        let cost = shared.published().encoded.get().map(|e| e.cost).unwrap();
        // the next publish at once: its requests are served the same bytes
        feed(&mut engine, 1_000);
        shared.set("a 2\n", engine.report());
        assert_eq!(
            shared.report_json().as_ptr(),
            first.as_ptr(),
            "made again within {cost:?}"
        );
        assert_eq!(shared.report_gz().as_ptr(), gz.as_ptr());
        assert_eq!(
            &shared.metrics()[..],
            b"a 2\n",
            "the metrics are always the last"
        );
        // ten times its cost later: the next publish's report is made anew
        std::thread::sleep(cost * 10);
        shared.set("a 3\n", engine.report());
        let third = shared.report_json();
        assert_ne!(third, first);
        assert_eq!(third, Bytes::from(shared.served(&engine.report())));
    }

    /// A publish does not wait for a request that is serializing the last report (at a
    /// thousand experiments that took tens of milliseconds of the engine thread, and the two
    /// paths took two locks in opposite orders): a request held inside the making of the JSON,
    /// the next publish still goes through; and while the status page's request holds the
    /// evidence history, too.
    #[test]
    fn a_publish_does_not_wait_for_a_serializing_request() {
        let settings = crate::config::Settings::from_toml("").unwrap();
        let engine = crate::engine::Engine::new(&settings);
        let report = engine.report();
        let shared = Arc::new(Shared::new(false, None));
        shared.set("a 1\n", engine.report());
        let (started, making) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let request = std::thread::spawn({
            let p = shared.published();
            move || {
                p.encoded
                    .get_or_init(|| {
                        let _ = started.send(());
                        let _ = released.recv();
                        Encoded::new(Bytes::from_static(b"{}"), std::time::Instant::now())
                    })
                    .json
                    .clone()
            }
        });
        making.recv().unwrap();
        let (done, published) = std::sync::mpsc::channel();
        std::thread::spawn({
            let shared = Arc::clone(&shared);
            move || {
                shared.set("a 2\n", engine.report());
                let _ = done.send(());
            }
        });
        let went_through = published.recv_timeout(std::time::Duration::from_secs(20));
        release.send(()).unwrap();
        assert!(went_through.is_ok(), "the publish waited for the request");
        // nor for the status page's request holding the history
        let history = shared.history.lock().unwrap();
        let (done, published) = std::sync::mpsc::channel();
        std::thread::spawn({
            let shared = Arc::clone(&shared);
            move || {
                shared.set("a 2\n", report);
                let _ = done.send(());
            }
        });
        let went_through = published.recv_timeout(std::time::Duration::from_secs(20));
        drop(history);
        assert!(
            went_through.is_ok(),
            "the publish waited for the status page"
        );
        assert_eq!(&shared.metrics()[..], b"a 2\n");
        assert_eq!(&request.join().unwrap()[..], b"{}");
        // the new publish's JSON is its own
        assert_ne!(&shared.report_json()[..], b"{}");
    }

    async fn status(app: Router, path: &str) -> StatusCode {
        app.oneshot(
            axum::http::Request::builder()
                .uri(path)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap()
        .status()
    }

    /// `/healthz` says whether the engine thread is alive: ok before the first publish and
    /// while it publishes, 503 once its last publish is older than `STALE_AFTER`.
    #[tokio::test]
    async fn healthz_follows_the_engine_thread() {
        let shared = Arc::new(Shared::new(false, None));
        assert_eq!(
            status(router(shared.clone()), "/healthz").await,
            StatusCode::OK
        );
        shared
            .last_publish_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
        assert_eq!(
            status(router(shared.clone()), "/healthz").await,
            StatusCode::OK
        );
        let stale = chrono::Utc::now().timestamp_millis() - STALE_AFTER.as_millis() as i64 - 1000;
        shared.last_publish_ms.store(stale, Ordering::Relaxed);
        assert_eq!(
            status(router(shared.clone()), "/healthz").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    /// Every endpoint that shows the report shows it pseudonymized by default: the whole
    /// report, one experiment's (which once served its input values as they are), and the
    /// status page's alerts; with `report_values`, the values as they are.
    #[tokio::test]
    async fn every_endpoint_pseudonymizes_the_values() {
        let settings = crate::config::Settings::from_toml("").unwrap();
        let mut engine = crate::engine::Engine::new(&settings);
        let mut sim = crate::sim::Simulator::single(
            3,
            crate::sim::Faults {
                tier_leak: Some(("pro".into(), 0.8)),
                ..Default::default()
            },
        );
        let mut buf = Vec::new();
        for _ in 0..20_000 {
            sim.next_event(&mut buf);
            let _ = engine.process(&buf);
        }
        let report = engine.report();
        assert!(
            report
                .alerts
                .iter()
                .any(|a| a.value.as_deref() == Some("pro")),
            "the leak fired on its value"
        );
        let pro = crate::report::pseudonym("pro");
        for values in [false, true] {
            let shared = Arc::new(Shared::new(values, None));
            shared.set("", report.clone());
            for path in [
                "/api/v1/report",
                "/api/v1/experiments/prompt-variant",
                "/api/v1/status",
            ] {
                let (_, body) = fetch(router(shared.clone()), path, false).await;
                let body = String::from_utf8(body).unwrap();
                assert_eq!(body.contains("\"pro\""), values, "{path}: {body}");
                assert_eq!(body.contains(&pro), !values, "{path}");
            }
        }
    }

    async fn fetch(app: Router, path: &str, gzip: bool) -> (Option<String>, Vec<u8>) {
        let mut req = axum::http::Request::builder().uri(path);
        if gzip {
            req = req.header(header::ACCEPT_ENCODING, "br;q=1.0, gzip;q=0.8, *;q=0.1");
        }
        let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let enc = resp
            .headers()
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("").to_string());
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (enc, bytes.to_vec())
    }

    /// A client that accepts gzip gets the same bytes compressed (made once per publish);
    /// one that does not, or refuses it with `q=0`, gets them plain.
    #[tokio::test]
    async fn report_and_metrics_gzip_when_accepted() {
        use std::io::Read as _;
        let shared = Arc::new(Shared::new(true, None));
        let settings = crate::config::Settings::from_toml("").unwrap();
        let mut engine = crate::engine::Engine::new(&settings);
        let mut sim = crate::sim::Simulator::fleet(3, 50, 100);
        let mut buf = Vec::new();
        for _ in 0..20_000 {
            sim.next_event(&mut buf);
            let _ = engine.process(&buf);
        }
        shared.set("armwatch_x 1\n".repeat(1000), engine.report());
        for path in ["/api/v1/report", "/metrics"] {
            let (enc, plain) = fetch(router(shared.clone()), path, false).await;
            assert_eq!(enc, None);
            let (enc, gz) = fetch(router(shared.clone()), path, true).await;
            assert_eq!(enc.as_deref(), Some("gzip"), "{path}");
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, plain, "{path}");
            assert!(
                gz.len() * 4 < plain.len(),
                "{path}: {} of {}",
                gz.len(),
                plain.len()
            );
        }
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, v.parse().unwrap());
            accepts_gzip(&m)
        };
        assert!(h("gzip") && h("deflate, gzip") && h("GZIP;q=0.5"));
        assert!(!h("gzip;q=0") && !h("br") && !h("identity"));
    }
}
