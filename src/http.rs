//! The HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `/api/v1/report`,
//! `/api/v1/experiments/{id}`.

use crate::report::Report;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What the engine thread publishes and the HTTP handlers read (swapped at publish cadence,
/// never touched per event).
#[derive(Default)]
pub struct Shared {
    /// Prometheus text of the last publish.
    pub metrics_text: Mutex<Bytes>,
    /// The report of the last publish.
    report: Mutex<Option<Arc<Report>>>,
    /// Its JSON, made by the first request after a publish (not by the engine thread: with a
    /// thousand experiments it is ~10 MB), then served as shared bytes until the next one.
    report_json: Mutex<Option<Bytes>>,
    /// The source is connected and consuming.
    pub ready: AtomicBool,
}

impl Shared {
    /// Replace the published texts (a request holds a reference-counted view of the bytes,
    /// never a copy).
    pub fn set(&self, metrics: impl Into<Bytes>, report: Report) {
        if let Ok(mut m) = self.metrics_text.lock() {
            *m = metrics.into();
        }
        // the cache lock first, so that no request pairs the old JSON with the new report
        if let Ok(mut j) = self.report_json.lock() {
            if let Ok(mut r) = self.report.lock() {
                *r = Some(Arc::new(report));
            }
            *j = None;
        }
    }

    fn last_report(&self) -> Option<Arc<Report>> {
        self.report.lock().ok().and_then(|r| r.clone())
    }

    /// The last published Prometheus text.
    fn metrics(&self) -> Bytes {
        self.metrics_text
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// The last published report as JSON (serialized once per publish, by the first caller;
    /// concurrent callers wait for it rather than serialize it again).
    fn report_json(&self) -> Bytes {
        let Ok(mut cache) = self.report_json.lock() else {
            return Bytes::new();
        };
        if let Some(b) = &*cache {
            return b.clone();
        }
        let Some(report) = self.last_report() else {
            return Bytes::from_static(b"{}");
        };
        let b = Bytes::from(serde_json::to_vec(&*report).unwrap_or_default());
        *cache = Some(b.clone());
        b
    }
}

/// The router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/report", get(report))
        .route("/api/v1/experiments/{id}", get(experiment))
        .with_state(shared)
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics(),
    )
}

async fn report(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    // serializing a large report blocks: off the async workers
    let json = tokio::task::spawn_blocking(move || s.report_json())
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], json)
}

/// One experiment of the last report, with its alerts: what a dashboard or a client watching
/// one experiment needs, at a cost that does not grow with the fleet.
async fn experiment(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> axum::response::Response {
    let json = s.last_report().and_then(|r| {
        let e = r.experiments.get(&id)?;
        let alerts: Vec<_> = r
            .alerts
            .iter()
            .filter(|a| a.experiment.as_deref() == Some(id.as_str()))
            .collect();
        serde_json::to_vec(&serde_json::json!({"experiment": id, "report": e, "alerts": alerts}))
            .ok()
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

async fn readyz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "source not connected\n")
    }
}

/// Serve until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(shutdown)
        .await
}
