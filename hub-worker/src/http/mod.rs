//! The HTTP front door: signed webhook intake (`POST /v1/ingest/{source}`) and health.

pub mod ingest;
pub mod problem;
pub mod verify;

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The routes, over `state`.
pub fn router(state: ingest::IngestState) -> Router {
    Router::new()
        .route("/v1/ingest/{source}", post(ingest::ingest))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

/// Serves `router` on `listener` until `cancel` fires; requests in flight are finished.
pub async fn serve(listener: TcpListener, router: Router, cancel: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(async move { cancel.cancelled().await }).await
}
