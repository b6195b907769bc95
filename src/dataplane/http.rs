//! The HTTP server loop, with the limits a public endpoint needs: a deadline for a request's
//! headers (which hyper also applies to an idle keep-alive connection waiting for its next
//! request), one for reading and answering a whole request, and a cap on connections held.
//! axum's own `serve` arms no timer, so a client that sends half a request would be kept
//! forever.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tracing::{debug, info};

use super::listener::{ConnInfo, SplitListener};

/// Limits of the HTTP port; each is a flag of `serve` and `agent`.
#[derive(clap::Args, Clone, Debug)]
pub struct HttpLimits {
    /// Seconds a client has to send a request's headers; also how long an idle keep-alive
    /// connection is kept.
    #[arg(long = "http-header-timeout", default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Seconds a request may take from its headers to our answer, body included.
    #[arg(long = "http-request-timeout", default_value_t = 10)]
    pub request_timeout_secs: u64,
    /// HTTP connections held at once; more are closed on accept.
    #[arg(long = "max-connections", default_value_t = 4096)]
    pub max_connections: usize,
}

/// Serves `app` on the HTTP half of `listener` until `shutdown`, then lets the requests in
/// progress finish (bounded by the header and request deadlines) and returns.
pub async fn serve(
    mut listener: SplitListener,
    app: Router,
    limits: &HttpLimits,
    refused: Counter,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_timeout_secs));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            conn = listener.accept() => conn,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.inc();
            debug!(%peer, "HTTP connection limit reached; closing");
            continue;
        };
        let info = ConnInfo {
            peer,
            local: stream.local_addr().unwrap_or(peer),
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(ConnectInfo(info));
            app.clone().oneshot(request)
        });
        let conn = graceful.watch(http1.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "HTTP connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    let held = graceful.count();
    info!(held, "HTTP: finishing requests in progress");
    graceful.shutdown().await;
}

/// Answers 408 when a request (body included) is not read and answered in time.
pub async fn request_deadline(
    axum::extract::State(deadline): axum::extract::State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!("request not completed within {deadline:?}\n"),
        )
            .into_response(),
    }
}
