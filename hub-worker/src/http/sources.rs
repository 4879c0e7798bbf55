//! Pulled sources on the audit desk: start a run, read and reset a source's saved state, list
//! its runs. Who may call which is declared in [`super::endpoints`] (reads `read`, writes
//! `operate`); the handlers share the desk's [`AuditState`], which holds the [`crate::Hub`].

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use uuid::Uuid;

use super::audit::{AuditState, answer, problem};
use super::auth::{Caller, Scope};
use super::problem::Problem;
use crate::audit;
use crate::error::Error;
use crate::pull::Trigger;

/// The answer to `POST /v1/sources/{source}/sync`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SyncStarted {
    /// The run's id.
    pub run_id: Uuid,
    /// The source.
    pub source: String,
    /// Where the run's progress and end are: `GET` it (scope `read`).
    pub status_url: String,
}

/// Logs an audit event for a write on a pulled source (a sync started, a state reset), done or
/// refused, as replays are: who, what, from where, what came of it.
fn operate_event(caller: &Caller, method: &str, uri: &Uri, source: &str, action: &str, outcome: &str) {
    tracing::info!(
        target: "audit",
        token = caller.name.as_str(),
        method,
        path = uri.path(),
        peer = caller.peer.as_str(),
        outcome,
        scope = Scope::Operate.as_str(),
        what = format!("source {source}").as_str(),
        "{action}"
    );
}

/// What became of a refused write, for its audit event.
fn refused(e: &Error) -> &'static str {
    match e {
        Error::NotPulled(_) => "refused: not a pulled source",
        Error::Conflict(_) => "refused: a run holds the source",
        _ => "failed: storage unavailable",
    }
}

/// `POST /v1/sources/{source}/sync`
#[utoipa::path(
    post,
    path = "/v1/sources/{source}/sync",
    tag = "sources",
    security(("token" = ["operate"])),
    params(("source" = String, Path, description = "A pulled source (its integration declares [pull])")),
    responses(
        (status = 202, description = "A run holds the source and goes on in the background; its progress and end are at `status_url` (also the `Location` header)", body = SyncStarted),
        (status = 404, description = "Not a pulled source", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A run holds the source (the detail names it and its lease's end): one run at a time", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No token, or an unknown one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn sync(
    State(s): State<AuditState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    Path(source): Path<String>,
) -> Response {
    match s.hub().start_sync(&source, Trigger::Manual).await {
        Ok(run_id) => {
            operate_event(&caller, "POST", &uri, &source, "sync", &format!("started run {run_id}"));
            let status_url = format!("/v1/sources/{source}/runs/{run_id}");
            let mut resp =
                (StatusCode::ACCEPTED, Json(SyncStarted { run_id, source, status_url: status_url.clone() }))
                    .into_response();
            if let Ok(v) = HeaderValue::from_str(&status_url) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            resp
        }
        Err(e) => {
            operate_event(&caller, "POST", &uri, &source, "sync", refused(&e));
            problem(e)
        }
    }
}

/// `GET /v1/sources/{source}/state`
#[utoipa::path(
    get,
    path = "/v1/sources/{source}/state",
    tag = "sources",
    security(("token" = ["read"])),
    params(("source" = String, Path, description = "A pulled source")),
    responses(
        (status = 200, description = "The source as declared (URL, mode, schedule) and its saved state: cursor, unfinished listing, lease, totals, last run, next run; a source never run has empty state fields", body = crate::audit::SourceState),
        (status = 404, description = "Not a pulled source", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No token, or an unknown one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn state(State(s): State<AuditState>, Path(source): Path<String>) -> Response {
    answer(audit::source_state(s.hub(), &source).await)
}

/// `DELETE /v1/sources/{source}/state`
#[utoipa::path(
    delete,
    path = "/v1/sources/{source}/state",
    tag = "sources",
    security(("token" = ["operate"])),
    params(("source" = String, Path, description = "A pulled source")),
    responses(
        (status = 204, description = "The saved cursor, the unfinished listing and the records taken are forgotten: the next run reads everything again. Totals and run history stay"),
        (status = 404, description = "Not a pulled source", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A run holds the source (the detail names it and its lease's end): reset after it", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No token, or an unknown one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn reset_state(
    State(s): State<AuditState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    Path(source): Path<String>,
) -> Response {
    match s.hub().reset_pull_state(&source).await {
        Ok(()) => {
            operate_event(&caller, "DELETE", &uri, &source, "state reset", "reset");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => {
            operate_event(&caller, "DELETE", &uri, &source, "state reset", refused(&e));
            problem(e)
        }
    }
}

/// Parameters of a listing of runs.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<u64>,
    /// A run id: the runs older than it (`next_before` of the previous page).
    pub before: Option<Uuid>,
}

/// `GET /v1/sources/{source}/runs`
#[utoipa::path(
    get,
    path = "/v1/sources/{source}/runs",
    tag = "sources",
    security(("token" = ["read"])),
    params(("source" = String, Path, description = "A pulled source"), RunsQuery),
    responses(
        (status = 200, description = "One page of the source's runs, newest first", body = crate::audit::SyncRuns),
        (status = 404, description = "Not a pulled source", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No token, or an unknown one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn runs(
    State(s): State<AuditState>,
    Path(source): Path<String>,
    Query(q): Query<RunsQuery>,
) -> Response {
    answer(audit::sync_runs(s.hub(), &source, q.before, q.limit).await)
}

/// `GET /v1/sources/{source}/runs/{run_id}`
#[utoipa::path(
    get,
    path = "/v1/sources/{source}/runs/{run_id}",
    tag = "sources",
    security(("token" = ["read"])),
    params(
        ("source" = String, Path, description = "A pulled source"),
        ("run_id" = Uuid, Path, description = "One of its runs"),
    ),
    responses(
        (status = 200, description = "The run: trigger, outcome (`running` while it goes on), pages, records, skipped, bytes, requests, retries, cursor before and after, error", body = crate::audit::SyncRunView),
        (status = 404, description = "Not a pulled source, or no such run of it", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No token, or an unknown one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn run(State(s): State<AuditState>, Path((source, run_id)): Path<(String, Uuid)>) -> Response {
    match audit::sync_run(s.hub(), &source, run_id).await {
        Ok(run) => Json(run).into_response(),
        Err(Error::NotFound(id)) => Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such run",
            format!("source `{source}` has no run with id {id}"),
        )
        .into_response(),
        Err(e) => problem(e),
    }
}
