//! The audit desk: lineage, listings, stats, replay, readiness and metrics. Every endpoint but
//! `/healthz` and `/readyz` requires the admin bearer token.

use std::fmt::Write;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use uuid::Uuid;

use super::problem::Problem;
use crate::audit::{self, ListQuery};
use crate::error::Error;
use crate::hub::Hub;

/// What the audit handlers share.
#[derive(Clone)]
pub struct AuditState {
    hub: Hub,
    token: Arc<Vec<u8>>,
}

impl AuditState {
    /// The desk over `hub`, opened by `token`.
    pub fn new(hub: Hub, token: String) -> Self {
        Self { hub, token: Arc::new(token.into_bytes()) }
    }

    fn check(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        use subtle::ConstantTimeEq;
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::as_bytes);
        match given {
            Some(t) if bool::from(t.ct_eq(self.token.as_slice())) => Ok(()),
            Some(_) => {
                tracing::warn!("audit request with a wrong token refused");
                Err(Box::new(unauthorized("the bearer token is not accepted")))
            }
            None => {
                tracing::warn!("audit request without a token refused");
                Err(Box::new(unauthorized("missing `Authorization: Bearer <admin token>`")))
            }
        }
    }
}

fn unauthorized(detail: &str) -> Response {
    let mut r = Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", "Not authenticated", detail)
        .into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    r
}

fn problem(e: Error) -> Response {
    match e {
        Error::NotFound(id) => Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such message",
            format!("no message with id {id}"),
        ),
        Error::BadRequest(d) => Problem::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request", d),
        Error::Conflict(d) => Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", d),
        other => {
            tracing::error!(error = %other, "audit query failed");
            let mut p = Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Storage unavailable",
                "the database did not answer; retry later",
            );
            p.retry_after = Some(5);
            p
        }
    }
    .into_response()
}

fn answer<T: serde::Serialize>(r: crate::Result<T>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => problem(e),
    }
}

/// `GET /v1/messages/{id}`
pub async fn message(State(s): State<AuditState>, headers: HeaderMap, Path(id): Path<Uuid>) -> Response {
    if let Err(r) = s.check(&headers) {
        return *r;
    }
    answer(audit::message(s.hub.db(), id).await)
}

/// `GET /v1/messages`
pub async fn list(State(s): State<AuditState>, headers: HeaderMap, Query(q): Query<ListQuery>) -> Response {
    if let Err(r) = s.check(&headers) {
        return *r;
    }
    answer(audit::list(s.hub.db(), &q).await)
}

/// `GET /v1/stats`
pub async fn stats(State(s): State<AuditState>, headers: HeaderMap) -> Response {
    if let Err(r) = s.check(&headers) {
        return *r;
    }
    answer(audit::stats(s.hub.db()).await)
}

/// Replay parameters.
#[derive(Debug, Deserialize)]
pub struct ReplayQuery {
    /// The layer to go through again from, 1 to 4.
    pub from_layer: u8,
}

/// `POST /v1/messages/{id}/replay?from_layer=N`
pub async fn replay(
    State(s): State<AuditState>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Query(q): Query<ReplayQuery>,
) -> Response {
    if let Err(r) = s.check(&headers) {
        return *r;
    }
    match audit::replay(s.hub.db(), id, q.from_layer).await {
        Ok(ids) => {
            s.hub.wake();
            (StatusCode::ACCEPTED, Json(serde_json::json!({ "replayed": ids }))).into_response()
        }
        Err(e) => problem(e),
    }
}

/// `GET /readyz`: the database answers and the transport can declare the receipts queue.
pub async fn ready(State(s): State<AuditState>) -> Response {
    if let Err(e) = audit::ping(s.hub.db()).await {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not ready",
            format!("database: {e}"),
        )
        .into_response();
    }
    if let Err(e) = s.hub.transport_ready().await {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not ready",
            format!("transport: {e}"),
        )
        .into_response();
    }
    (StatusCode::OK, "ready").into_response()
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(s): State<AuditState>, headers: HeaderMap) -> Response {
    if let Err(r) = s.check(&headers) {
        return *r;
    }
    let stats = match audit::stats(s.hub.db()).await {
        Ok(v) => v,
        Err(e) => return problem(e),
    };
    let mut out = String::new();
    let _ = writeln!(out, "# HELP post_office_messages Rows per layer, source, direction and status.");
    let _ = writeln!(out, "# TYPE post_office_messages gauge");
    for c in &stats.counts {
        let _ = writeln!(
            out,
            "post_office_messages{{layer=\"{}\",source=\"{}\",direction=\"{}\",status=\"{}\"}} {}",
            c.layer.number(),
            escape(&c.source),
            c.direction,
            c.status,
            c.count
        );
    }
    let _ = writeln!(
        out,
        "# HELP post_office_destination_unacknowledged Messages not yet acknowledged, per destination."
    );
    let _ = writeln!(out, "# TYPE post_office_destination_unacknowledged gauge");
    for d in &stats.destinations {
        let _ = writeln!(
            out,
            "post_office_destination_unacknowledged{{destination=\"{}\"}} {}",
            escape(&d.destination),
            d.unacknowledged
        );
    }
    let _ = writeln!(
        out,
        "# HELP post_office_destination_oldest_unacknowledged_seconds Age of the oldest unacknowledged message."
    );
    let _ = writeln!(out, "# TYPE post_office_destination_oldest_unacknowledged_seconds gauge");
    for d in &stats.destinations {
        if let Some(age) = d.oldest_unacknowledged_secs {
            let _ = writeln!(
                out,
                "post_office_destination_oldest_unacknowledged_seconds{{destination=\"{}\"}} {age}",
                escape(&d.destination)
            );
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
