//! The audit desk: lineage, listings, stats, replay, readiness and metrics. Who may call which
//! is declared in [`super::endpoints`] and checked by [`super::auth::guard`]; handlers get the
//! identified [`Caller`].

use std::fmt::Write;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use uuid::Uuid;

use super::auth::{Caller, Scope, Tokens};
use super::problem::Problem;
use crate::audit::{self, ListQuery, RawAccess};
use crate::error::Error;
use crate::hub::Hub;
use layer1_ingest::Status;

/// What the audit handlers share.
#[derive(Clone)]
pub struct AuditState {
    hub: Hub,
    tokens: Tokens,
    /// The hub's redaction rules and receipts queue, read once.
    config: std::sync::Arc<audit::AuditConfig>,
}

impl AuditState {
    /// The desk over `hub` with a single admin token holding every scope (named `admin`): the
    /// deprecated `admin_token_env` setup.
    pub fn new(hub: Hub, token: String) -> Self {
        Self::with_tokens(hub, Tokens::admin(&token))
    }

    /// The desk over `hub`, opened by `tokens`.
    pub fn with_tokens(hub: Hub, tokens: Tokens) -> Self {
        let config = std::sync::Arc::new(hub.audit_config());
        Self { hub, tokens, config }
    }

    /// The tokens the desk accepts.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// The hub the desk serves.
    pub(crate) fn hub(&self) -> &Hub {
        &self.hub
    }
}

pub(super) fn problem(e: Error) -> Response {
    match e {
        Error::NotPulled(source) => Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not a pulled source",
            format!("source `{source}` is not a pulled source: no integration declares [pull] for it"),
        ),
        Error::NotFound(id) => Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such message",
            format!("no message with id {id}"),
        ),
        Error::UnknownCoreMessage(core_id) => Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such message",
            format!("no downstream message with core-message-id `{core_id}`"),
        ),
        Error::BadRequest(d) => Problem::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request", d),
        Error::Conflict(d) => Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", d),
        other => {
            tracing::error!(error = %other, "audit query failed");
            Problem::unavailable(
                "unavailable",
                "Storage unavailable",
                "the database did not answer; retry later",
                Some(5),
            )
        }
    }
    .into_response()
}

pub(super) fn answer<T: serde::Serialize>(r: crate::Result<T>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => problem(e),
    }
}

/// What of a message's bytes `caller` may see.
fn raw_access(caller: &Caller) -> RawAccess {
    if caller.has(Scope::Raw) { RawAccess::Shown } else { RawAccess::Withheld }
}

/// `GET /v1/messages/{id}`
#[utoipa::path(
    get,
    path = "/v1/messages/{id}",
    tag = "audit",
    security(("token" = ["read"])),
    params(("id" = Uuid, Path, description = "Any layer's id of the message")),
    responses(
        (status = 200, description = "Every row of the message, and its raw bytes' SHA-256 re-checked; the bytes and headers themselves only for a token with scope `raw`. Each layer's content on the path through the id asked for: the layer 2 records, the layer 3 translations with their fidelity reports, the layer 4 bodies with the headers they are published with; the source's `redact` fields shown as \"[redacted]\" (and listed in each `redacted`) to a token without scope `raw`", body = crate::audit::MessageView),
        (status = 404, description = "No such message", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No token, or an unknown one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn message(
    State(s): State<AuditState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
) -> Response {
    let access = raw_access(&caller);
    answer(audit::message_with(s.hub.db(), id, access, &s.config).await)
}

/// `GET /v1/core-messages/{core_message_id}`
#[utoipa::path(
    get,
    path = "/v1/core-messages/{core_message_id}",
    tag = "audit",
    security(("token" = ["read"])),
    params(("core_message_id" = String, Path, description = "The core app's own id of a message it sent downstream (its `core-message-id` header)")),
    responses(
        (status = 200, description = "One story per target the core app sent the message to, each as `GET /v1/messages/{id}` tells it from its layer 4 row: the rows, the request delivered, every attempt with the answer, the receipts; the bytes (request, answers) only for a token with scope `raw`", body = crate::audit::CoreMessageViews),
        (status = 404, description = "No downstream message with that id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No token, or an unknown one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn core_message(
    State(s): State<AuditState>,
    Extension(caller): Extension<Caller>,
    Path(core_id): Path<String>,
) -> Response {
    let access = raw_access(&caller);
    answer(
        audit::core_message_with(s.hub.db(), &core_id, access, &s.config)
            .await
            .map(|items| audit::CoreMessageViews { items }),
    )
}

/// `GET /v1/messages`
#[utoipa::path(
    get,
    path = "/v1/messages",
    tag = "audit",
    security(("token" = ["read"])),
    params(ListQuery),
    responses(
        (status = 200, description = "One page, in id (creation) order", body = crate::audit::Page),
        (status = 400, description = "Unusable filter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No token, or an unknown one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(s): State<AuditState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> Response {
    let access = raw_access(&caller);
    answer(audit::list(s.hub.db(), &q).await.map(|mut page| {
        audit::withhold_reasons(&mut page.items, access, &s.config);
        page
    }))
}

/// `GET /v1/stats`
#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "audit",
    security(("token" = ["read"])),
    responses(
        (status = 200, description = "Counts per source, layer and status; per destination health; per target deliveries; per pulled source the last run, the next, the saved cursor and the totals", body = crate::audit::Stats),
        (status = 401, description = "No token, or an unknown one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn stats(State(s): State<AuditState>) -> Response {
    answer(audit::stats(s.hub.db()).await)
}

/// Replay parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReplayQuery {
    /// The layer whose work is done again, 1 to 4: its input rows (the layer below; the raw
    /// bytes for 1 and 2) are copied and carried on by the stages (3: translated again with
    /// the current mapping).
    pub from_layer: u8,
}

/// The answer to a replay.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// The new rows' ids.
    pub replayed: Vec<Uuid>,
}

/// `POST /v1/messages/{id}/replay?from_layer=N`
#[utoipa::path(
    post,
    path = "/v1/messages/{id}/replay",
    tag = "audit",
    security(("token" = ["operate"])),
    params(("id" = Uuid, Path, description = "Any layer's id of the message"), ReplayQuery),
    responses(
        (status = 202, description = "New rows written; the stages carry them on", body = Replayed),
        (status = 400, description = "No such layer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such message", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Still moving, or no row in that layer", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No token, or an unknown one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn replay(
    State(s): State<AuditState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    Path(id): Path<Uuid>,
    Query(q): Query<ReplayQuery>,
) -> Response {
    let result = audit::replay(s.hub.db(), id, q.from_layer, &caller.name).await;
    // Every replay is an audit event, done or refused: who, what, from where, what came of it.
    let what = format!("message {id}");
    let audit_event = crate::http::auth::ReplayEvent {
        who: &caller.name,
        method: "POST",
        path: uri.path(),
        peer: &caller.peer,
        what: &what,
        from_layer: q.from_layer,
    };
    let event = |outcome: &str, rows: usize| audit_event.log(outcome, rows);
    match result {
        Ok(ids) => {
            event("replayed", ids.len());
            s.hub.wake();
            (StatusCode::ACCEPTED, Json(Replayed { replayed: ids })).into_response()
        }
        Err(e) => {
            let outcome = match &e {
                Error::NotFound(_) => "not replayed: not found",
                Error::BadRequest(_) => "not replayed: bad request",
                Error::Conflict(_) => "not replayed: conflict",
                _ => "not replayed: storage unavailable",
            };
            event(outcome, 0);
            problem(e)
        }
    }
}

/// `GET /readyz`: the database answers and the transport can declare the receipts queue.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Database and transport reachable", body = String, content_type = "text/plain"),
        (status = 503, description = "Not ready (the detail says which)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn ready(State(s): State<AuditState>) -> Response {
    // The detail goes to the log only: this endpoint is open, and errors name hosts and users.
    if let Err(e) = audit::ping(s.hub.db()).await {
        tracing::warn!(error = %e, "not ready: database");
        return Problem::unavailable("not-ready", "Not ready", "the database does not answer", None)
            .into_response();
    }
    if let Err(e) = s.hub.transport_ready().await {
        tracing::warn!(error = %e, "not ready: transport");
        return Problem::unavailable("not-ready", "Not ready", "the transport does not answer", None)
            .into_response();
    }
    (StatusCode::OK, "ready").into_response()
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    security(("token" = ["metrics"])),
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 401, description = "No token, or an unknown one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn metrics(State(s): State<AuditState>) -> Response {
    match metrics_text(s.hub.db()).await {
        Ok(out) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response(),
        Err(e) => problem(e),
    }
}

/// What `GET /metrics` answers: the stats ([`audit::stats`]) and the process counters, in the
/// Prometheus text format. Public so that `hub-worker bench-queries` times exactly a scrape.
pub async fn metrics_text(db: &sea_orm::DatabaseConnection) -> crate::Result<String> {
    Ok(render_metrics(&audit::stats(db).await?))
}

/// The Prometheus text of `stats` and the process counters.
pub fn render_metrics(stats: &audit::Stats) -> String {
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
    destination_gauge(
        &mut out,
        "post_office_destination_unacknowledged",
        "Messages not yet acknowledged, per destination.",
        stats.destinations.iter().map(|d| (d.destination.as_str(), Some(d.unacknowledged))),
    );
    destination_gauge(
        &mut out,
        "post_office_destination_oldest_unacknowledged_seconds",
        "Age of the oldest unacknowledged message.",
        stats.destinations.iter().map(|d| (d.destination.as_str(), d.oldest_unacknowledged_secs)),
    );
    destination_gauge(
        &mut out,
        "post_office_destination_receipts_overdue",
        "Published messages with no receipt within max_attempts ack timeouts (alert on > 0).",
        stats.destinations.iter().map(|d| (d.destination.as_str(), Some(d.receipts_overdue))),
    );
    let _ = writeln!(
        out,
        "# HELP post_office_deliveries Downstream deliveries (layer 1 rows) per target and status: \
         just_in waiting, failed retrying, acknowledged, rejected, dead."
    );
    let _ = writeln!(out, "# TYPE post_office_deliveries gauge");
    for d in &stats.deliveries {
        // Every status of every target, zeros included: a series that appears only once it is
        // non-zero cannot be alerted on by its increase.
        for (status, n) in [
            (Status::JustIn, d.waiting),
            (Status::Failed, d.retrying),
            (Status::Acknowledged, d.acknowledged),
            (Status::Rejected, d.rejected),
            (Status::Dead, d.dead),
        ] {
            let _ = writeln!(
                out,
                "post_office_deliveries{{target=\"{}\",status=\"{status}\"}} {n}",
                escape(&d.target)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP post_office_delivery_receipts_unsent Delivery receipts to the core app not yet confirmed by the broker."
    );
    let _ = writeln!(out, "# TYPE post_office_delivery_receipts_unsent gauge");
    let _ = writeln!(out, "post_office_delivery_receipts_unsent {}", stats.receipts_unsent);
    pull_metrics(&mut out, &stats.pulls);
    out.push_str(&layer1_ingest::metrics::render());
    out
}

/// The pulled sources' series, one per source (`source` label), from their `pull_state` rows:
/// the running totals as counters, the last success and whether a run holds the source as
/// gauges. Nothing is written for a hub without pulled sources.
fn pull_metrics(out: &mut String, pulls: &[audit::PullStats]) {
    if pulls.is_empty() {
        return;
    }
    type Figure = fn(&audit::PullStats) -> i64;
    let counters: [(&str, &str, Figure); 6] = [
        ("hub_sync_runs_total", "Sync runs started, per pulled source.", |p| p.runs),
        ("hub_sync_runs_failed_total", "Sync runs that failed or were aborted.", |p| p.runs_failed),
        ("hub_sync_pages_total", "Pages fetched and committed by sync runs.", |p| p.pages),
        ("hub_sync_records_total", "Records taken by sync runs.", |p| p.records),
        (
            "hub_sync_skipped_total",
            "Records skipped by sync runs (already taken, or not past the saved cursor).",
            |p| p.skipped,
        ),
        ("hub_sync_bytes_total", "Bytes of the pages committed by sync runs.", |p| p.bytes),
    ];
    for (name, help, figure) in counters {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for p in pulls {
            let _ = writeln!(out, "{name}{{source=\"{}\"}} {}", escape(&p.source), figure(p));
        }
    }
    let name = "hub_sync_last_success_timestamp_seconds";
    let _ =
        writeln!(out, "# HELP {name} When a sync run of the source last succeeded (Unix time; 0: never).");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for p in pulls {
        let t = p.last_success_at.map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
        let _ = writeln!(out, "{name}{{source=\"{}\"}} {t}", escape(&p.source));
    }
    let name = "hub_sync_running";
    let _ = writeln!(out, "# HELP {name} 1 while a sync run holds the source (its lease held, not expired).");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for p in pulls {
        let _ = writeln!(out, "{name}{{source=\"{}\"}} {}", escape(&p.source), u8::from(p.running));
    }
}

/// One gauge per destination, in the Prometheus text format; a destination without a value
/// (no unacknowledged message, so no age) is left out.
fn destination_gauge<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    values: impl Iterator<Item = (&'a str, Option<i64>)>,
) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (destination, value) in values {
        if let Some(v) = value {
            let _ = writeln!(out, "{name}{{destination=\"{}\"}} {v}", escape(destination));
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "Up", body = String, content_type = "text/plain")))]
pub async fn health() -> &'static str {
    "ok"
}
