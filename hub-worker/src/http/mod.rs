//! The HTTP front door (signed webhook intake) and the audit desk.

pub mod audit;
pub mod auth;
pub mod gate;
pub mod ingest;
pub mod problem;
pub mod sources;
#[cfg(feature = "tls")]
pub mod tls;
pub mod verify;

use std::net::SocketAddr;

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use auth::{Access, Scope};

/// One route of the server: method, path, who may call it, and the handler.
pub struct Endpoint {
    /// The HTTP method.
    pub method: Method,
    /// The path as axum matches it (`/v1/messages/{id}`).
    pub path: &'static str,
    /// Public, or the scope a token needs.
    pub access: Access,
    handler: MethodRouter,
}

impl Endpoint {
    fn new<H, T, S>(method: Method, path: &'static str, access: Access, handler: H, state: S) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
        S: Clone + Send + Sync + 'static,
    {
        // The method is declared once: the route answers exactly the method the table says.
        // `endpoints` names only standard methods: a failure here is a programming error the
        // first test of the router meets.
        let filter = MethodFilter::try_from(method.clone()).expect("the routes use standard methods");
        Self { method, path, access, handler: axum::routing::on(filter, handler).with_state(state) }
    }
}

/// Every route the server has, each with its access: the one place where a route is declared
/// public or given the scope it needs. [`router`] is built from this list alone, and a route
/// cannot be added without an [`Access`]; a test checks that the public ones are exactly
/// health, readiness, the API document and intake.
pub fn endpoints(ingest: ingest::IngestState, audit: audit::AuditState) -> Vec<Endpoint> {
    use Access::Public;
    let scope = Access::Scope;
    vec![
        Endpoint::new(Method::GET, "/healthz", Public, audit::health, ()),
        Endpoint::new(Method::GET, "/readyz", Public, audit::ready, audit.clone()),
        Endpoint::new(Method::GET, "/v1/openapi.json", Public, openapi, ()),
        // Intake authenticates each source its own way (`verify`), not with admin tokens.
        Endpoint::new(Method::POST, "/v1/ingest/{source}", Public, ingest::ingest, ingest),
        Endpoint::new(Method::GET, "/v1/messages", scope(Scope::Read), audit::list, audit.clone()),
        Endpoint::new(Method::GET, "/v1/messages/{id}", scope(Scope::Read), audit::message, audit.clone()),
        Endpoint::new(
            Method::GET,
            "/v1/core-messages/{core_message_id}",
            scope(Scope::Read),
            audit::core_message,
            audit.clone(),
        ),
        Endpoint::new(
            Method::POST,
            "/v1/messages/{id}/replay",
            scope(Scope::Operate),
            audit::replay,
            audit.clone(),
        ),
        Endpoint::new(
            Method::POST,
            "/v1/sources/{source}/sync",
            scope(Scope::Operate),
            sources::sync,
            audit.clone(),
        ),
        Endpoint::new(
            Method::GET,
            "/v1/sources/{source}/state",
            scope(Scope::Read),
            sources::state,
            audit.clone(),
        ),
        Endpoint::new(
            Method::DELETE,
            "/v1/sources/{source}/state",
            scope(Scope::Operate),
            sources::reset_state,
            audit.clone(),
        ),
        Endpoint::new(
            Method::GET,
            "/v1/sources/{source}/runs",
            scope(Scope::Read),
            sources::runs,
            audit.clone(),
        ),
        Endpoint::new(
            Method::GET,
            "/v1/sources/{source}/runs/{run_id}",
            scope(Scope::Read),
            sources::run,
            audit.clone(),
        ),
        Endpoint::new(Method::GET, "/v1/stats", scope(Scope::Read), audit::stats, audit.clone()),
        Endpoint::new(Method::GET, "/metrics", scope(Scope::Metrics), audit::metrics, audit),
    ]
}

/// The routes: intake over `ingest`, the audit desk over `audit`, each admin route behind the
/// guard with its scope.
pub fn router(ingest: ingest::IngestState, audit: audit::AuditState) -> Router {
    let tokens = audit.tokens().clone();
    endpoints(ingest, audit).into_iter().fold(Router::new(), |r, e| {
        let handler = match e.access {
            Access::Public => e.handler,
            Access::Scope(s) => {
                e.handler.route_layer(axum::middleware::from_fn_with_state((tokens.clone(), s), auth::guard))
            }
        };
        r.route(e.path, handler)
    })
}

async fn openapi() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "post office", description = "Webhook intake and the audit desk of the post office."),
    paths(ingest::ingest, audit::message, audit::core_message, audit::list, audit::stats, audit::replay, audit::ready, audit::metrics, audit::health,
        sources::sync, sources::state, sources::reset_state, sources::runs, sources::run),
    modifiers(&AdminToken)
)]
pub struct ApiDoc;

struct AdminToken;

impl utoipa::Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        // One bearer scheme; each operation lists the scope it needs as the requirement's
        // role (OpenAPI 3.1 allows roles on non-OAuth schemes).
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A named admin token from `[http.tokens.<name>]`; the operation's requirement names \
                         the scope it needs (read, raw, operate, metrics).",
                    ))
                    .build(),
            ),
        );
    }
}

/// Serves `router` on `listener` until `cancel` fires; requests in flight are finished.
pub async fn serve(listener: TcpListener, router: Router, cancel: CancellationToken) -> std::io::Result<()> {
    // With the peer's address on every request: audit events say where a request came from.
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

#[cfg(feature = "tls")]
/// [`serve`] over HTTPS: TLS handshakes with `tls` on `listener` (see [`tls`]), the same
/// routes, connection info and graceful shutdown.
pub async fn serve_tls(
    listener: TcpListener,
    tls: std::sync::Arc<rustls::ServerConfig>,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // `tap_io` only so that axum gives the peer's address as connection info, as it does for
    // a plain TcpListener.
    let listener = tls::TlsListener::new(listener, tls)?.tap_io(|_| {});
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}
