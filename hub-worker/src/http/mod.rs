//! The HTTP front door (signed webhook intake) and the audit desk.

pub mod audit;
pub mod ingest;
pub mod problem;
pub mod verify;

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

/// The routes: intake over `ingest`, the audit desk over `audit`.
pub fn router(ingest: ingest::IngestState, audit: audit::AuditState) -> Router {
    let intake = Router::new().route("/v1/ingest/{source}", post(ingest::ingest)).with_state(ingest);
    // One guard for every admin route, so a route added later cannot forget it.
    let desk = Router::new()
        .route("/v1/messages", get(audit::list))
        .route("/v1/messages/{id}", get(audit::message))
        .route("/v1/messages/{id}/replay", post(audit::replay))
        .route("/v1/stats", get(audit::stats))
        .route("/metrics", get(audit::metrics))
        .route_layer(axum::middleware::from_fn_with_state(audit.clone(), audit::require_admin))
        .route("/readyz", get(audit::ready))
        .with_state(audit);
    Router::new()
        .route("/healthz", get(audit::health))
        .route("/v1/openapi.json", get(|| async { axum::Json(ApiDoc::openapi()) }))
        .merge(intake)
        .merge(desk)
}

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "post office", description = "Webhook intake and the audit desk of the post office."),
    paths(ingest::ingest, audit::message, audit::list, audit::stats, audit::replay, audit::ready, audit::metrics, audit::health),
    modifiers(&AdminToken)
)]
pub struct ApiDoc;

struct AdminToken;

impl utoipa::Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Serves `router` on `listener` until `cancel` fires; requests in flight are finished.
pub async fn serve(listener: TcpListener, router: Router, cancel: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(async move { cancel.cancelled().await }).await
}
