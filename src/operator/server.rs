//! `/healthz`, `/readyz` and `/metrics` of the operator.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::error;

use super::Metrics;
use crate::health::{self, RenderMetrics};

impl RenderMetrics for Metrics {
    fn render(&self) -> String {
        Metrics::render(self)
    }
}

/// Serves until `shutdown`. Ready once reconciling or standing by for leadership; not while
/// waiting for the CRD.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let app: axum::Router = health::routes(metrics, ready);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(error) = result {
        error!(%error, "health and metrics server failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    async fn get_text(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(AtomicBool::new(false));
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Metrics::default()),
            ready.clone(),
            shutdown.clone(),
        ));
        assert_eq!(get_text(addr, "/healthz").await.0, 200);
        assert_eq!(get_text(addr, "/readyz").await.0, 503);
        ready.store(true, Ordering::Relaxed);
        assert_eq!(get_text(addr, "/readyz").await.0, 200);
        let (code, text) = get_text(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            text.contains("webrtc_egress_operator_reconciles_total 0"),
            "{text}"
        );
        shutdown.cancel();
        server.await.unwrap();
    }
}
