//! What every long-running role serves and obeys alike: `/healthz`, `/readyz`, `/metrics`, and
//! SIGTERM / ctrl-c as the signal to stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tracing::error;

/// Prometheus text of a role's registry, built once by its owner.
pub trait RenderMetrics: Send + Sync + 'static {
    fn render(&self) -> String;
}

/// Whether a role takes work now; `Err` carries the reason `/readyz` gives.
pub trait Readiness: Send + Sync + 'static {
    fn readiness(&self) -> Result<(), String>;
}

/// A plain flag, set once the role is up (the operator).
impl Readiness for AtomicBool {
    fn readiness(&self) -> Result<(), String> {
        if self.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err("not ready".into())
        }
    }
}

#[derive(Clone)]
struct Health {
    metrics: Arc<dyn RenderMetrics>,
    ready: Arc<dyn Readiness>,
}

/// `/healthz` (alive), `/readyz` (200 while `ready` says so, else 503 with its reason) and
/// `/metrics`.
pub fn routes<S: Clone + Send + Sync + 'static>(
    metrics: Arc<dyn RenderMetrics>,
    ready: Arc<dyn Readiness>,
) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Health { metrics, ready })
}

async fn readyz(State(health): State<Health>) -> Response {
    match health.ready.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

async fn metrics_text(State(health): State<Health>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.metrics.render(),
    )
        .into_response()
}

/// Resolves on SIGTERM (how Kubernetes stops a pod) or ctrl-c.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            error!(error = %e, "cannot watch SIGTERM; only ctrl-c stops this process");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
