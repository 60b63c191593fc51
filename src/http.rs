//! The HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `/api/v1/report`.

use axum::body::Bytes;
use axum::extract::State;
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
    /// Report JSON of the last publish.
    pub report_json: Mutex<Bytes>,
    /// The source is connected and consuming.
    pub ready: AtomicBool,
}

impl Shared {
    /// Replace the published texts (a request holds a reference-counted view of the bytes,
    /// never a copy).
    pub fn set(&self, metrics: impl Into<Bytes>, report: impl Into<Bytes>) {
        if let Ok(mut m) = self.metrics_text.lock() {
            *m = metrics.into();
        }
        if let Ok(mut r) = self.report_json.lock() {
            *r = report.into();
        }
    }

    /// The last published Prometheus text.
    fn metrics(&self) -> Bytes {
        self.metrics_text
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// The last published report JSON.
    fn report(&self) -> Bytes {
        self.report_json
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }
}

/// The router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/report", get(report))
        .with_state(shared)
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics(),
    )
}

async fn report(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], s.report())
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
