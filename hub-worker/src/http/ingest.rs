//! `POST /v1/ingest/{source}`: authenticate, bound, store byte for byte, answer with the
//! layer 1 id. Concurrent requests are grouped into one multi-row insert; each request is
//! answered only after its row is committed, and a failure is answered with what is known:
//! nothing stored (the database failed before the commit) or outcome unknown (at the commit).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::problem::Problem;
use super::verify::Verifier;
use crate::error::Error;
use crate::hub::{Hub, IngestMeta};
use layer1_ingest::{IngestOutcome, Ingested};

/// How one source's requests are received.
#[derive(Debug, Clone)]
pub struct Door {
    /// Authentication.
    pub verifier: Verifier,
    /// Largest body, bytes.
    pub max_body_bytes: usize,
    /// Accepted content types (media type only, lower case); empty accepts any.
    pub content_types: Vec<String>,
    /// Longest time to receive the body: a sender trickling bytes (or gone) holds no buffer
    /// for longer.
    pub read_timeout: Duration,
}

/// One request waiting for its row.
struct Job {
    source: String,
    body: Vec<u8>,
    meta: IngestMeta,
    reply: oneshot::Sender<Result<Ingested, Arc<Error>>>,
}

/// What the handlers share.
#[derive(Clone)]
pub struct IngestState {
    doors: Arc<HashMap<String, Door>>,
    jobs: mpsc::Sender<Job>,
    /// Requests being read, verified or stored at once: each may buffer a body, before anyone
    /// knows who sent it, so their number is bounded.
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// Requests handled at once by default.
pub const DEFAULT_IN_FLIGHT: usize = 512;

/// Longest wait for a request's row to be committed before answering 503.
const STORE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most requests grouped into one insert.
const GROUP: usize = 256;
/// Most header lines kept per request, and their longest value.
const KEEP_HEADERS: usize = 48;
const KEEP_HEADER_BYTES: usize = 1024;

impl IngestState {
    /// The doors, and the task that groups concurrent requests into batch inserts.
    pub fn new(hub: Hub, doors: HashMap<String, Door>) -> Self {
        let (tx, rx) = mpsc::channel(GROUP * 4);
        tokio::spawn(group_inserts(hub, rx));
        Self {
            doors: Arc::new(doors),
            jobs: tx,
            in_flight: Arc::new(tokio::sync::Semaphore::new(DEFAULT_IN_FLIGHT)),
        }
    }

    /// At most `n` requests handled at once; more are answered 503 at once.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.in_flight = Arc::new(tokio::sync::Semaphore::new(n.max(1)));
        self
    }
}

async fn group_inserts(hub: Hub, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut by_source: HashMap<String, Vec<Job>> = HashMap::new();
        for j in jobs {
            by_source.entry(j.source.clone()).or_default().push(j);
        }
        for (source, jobs) in by_source {
            let items: Vec<(&[u8], IngestMeta)> =
                jobs.iter().map(|j| (j.body.as_slice(), j.meta.clone())).collect();
            match hub.ingest_batch(&source, &items).await {
                Ok(answers) => {
                    for (j, a) in jobs.into_iter().zip(answers) {
                        let _ = j.reply.send(a.map_err(Arc::new));
                    }
                }
                Err(e) => {
                    // The batch's error, shared as it is: its kind (nothing stored, or outcome
                    // unknown) decides each request's answer.
                    let e = Arc::new(e);
                    for j in jobs {
                        let _ = j.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// The answer to an accepted webhook.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Accepted {
    /// The layer 1 id (the existing one for a duplicate).
    pub id: uuid::Uuid,
    /// Whether the same bytes were already on record under the same event id.
    pub duplicate: bool,
    /// A resend of an event whose copy on record was rejected (or dead): this is the newest
    /// earlier copy, which the new message (`id`) supersedes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resend_of: Option<uuid::Uuid>,
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

/// The request headers stored with a webhook, except the hub's own `hub-pull-*` metadata,
/// which only the puller writes (a sender setting `hub-pull-skip` would hide records).
fn kept_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(k, _)| !k.as_str().starts_with(layer1_ingest::pull::run::PULL_HEADER_PREFIX))
        .filter_map(|(k, v)| {
            v.to_str().ok().map(|v| (k.as_str().to_owned(), v.chars().take(KEEP_HEADER_BYTES).collect()))
        })
        .take(KEEP_HEADERS)
        .collect()
}

/// The handler.
#[utoipa::path(
    post,
    path = "/v1/ingest/{source}",
    tag = "intake",
    params(("source" = String, Path, description = "The integration's name")),
    request_body(content = String, description = "The third party's payload, stored byte for byte", content_type = "application/json"),
    responses(
        (status = 202, description = "Stored (durable) as a new message; `resend_of` when it resends an event whose copy on record was rejected", body = Accepted),
        (status = 200, description = "Already on record (same event id, same bytes)", body = Accepted),
        (status = 400, description = "Unusable request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or bad signature, key or token; timestamp outside tolerance", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown source", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within the source's read timeout", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the source's limit", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The event id is on record with other bytes: these are stored as `id` (rejected, not processed); `existing_id` stands", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Content type the source does not accept", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable, or too many requests in flight: the detail says whether nothing was stored or the outcome is unknown; retrying is safe either way", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn ingest(
    State(state): State<IngestState>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(door) = state.doors.get(&source) else {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-source",
            "Unknown source",
            format!("no source `{source}` is configured"),
        )
        .into_response();
    };
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        return Problem::unavailable(
            "busy",
            "Too many requests in flight",
            "the intake is at its limit of concurrent requests; nothing was stored, retry later",
            Some(1),
        )
        .into_response();
    };
    let media = media_type(&headers);
    if !door.content_types.is_empty() && !media.as_ref().is_some_and(|m| door.content_types.contains(m)) {
        return Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported content type",
            format!(
                "source `{source}` accepts {}; got {}",
                door.content_types.join(", "),
                media.as_deref().unwrap_or("no content type")
            ),
        )
        .into_response();
    }
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Body too large",
            format!("source `{source}` accepts bodies up to {} bytes", door.max_body_bytes),
        )
        .into_response()
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > door.max_body_bytes) {
        return too_large();
    }
    let bytes = match tokio::time::timeout(door.read_timeout, to_bytes(body, door.max_body_bytes)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return too_large(),
        Err(_) => {
            return Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "Body too slow",
                format!(
                    "the body did not arrive within {} s; nothing was stored",
                    door.read_timeout.as_secs()
                ),
            )
            .into_response();
        }
    };
    let now = chrono::Utc::now().timestamp();
    let verified = match door.verifier.verify(&headers, &bytes, now) {
        Ok(v) => v,
        Err(why) => {
            // The reason, never the credential.
            tracing::warn!(source = %source, scheme = door.verifier.scheme(), reason = %why, "request not authenticated");
            layer1_ingest::metrics::count("http_ingest", "unauthenticated", 1);
            return Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Not authenticated",
                why.to_string(),
            )
            .into_response();
        }
    };
    let meta =
        IngestMeta { source_ref: verified.event_id, content_type: media, headers: kept_headers(&headers) };
    let (tx, rx) = oneshot::channel();
    let job = Job { source: source.clone(), body: bytes.to_vec(), meta, reply: tx };
    let unavailable = |detail: String| {
        Problem::unavailable("unavailable", "Storage unavailable", detail, Some(5)).into_response()
    };
    if state.jobs.send(job).await.is_err() {
        return unavailable("intake is shutting down; nothing was stored".into());
    }
    // Whatever went wrong after the job was handed over, a retry is safe: the same bytes are
    // answered as a duplicate of whatever was stored.
    let unknown = |detail: &str| {
        unavailable(format!("{detail}; the outcome is unknown; retrying is safe: a retry is deduplicated"))
    };
    match tokio::time::timeout(STORE_TIMEOUT, rx).await {
        Ok(Ok(Ok(i))) => {
            let (status, label) = match i.outcome {
                IngestOutcome::New => (StatusCode::ACCEPTED, "accepted"),
                IngestOutcome::Resend { .. } => (StatusCode::ACCEPTED, "resend"),
                IngestOutcome::Duplicate => (StatusCode::OK, "duplicate"),
                IngestOutcome::Conflict { with } => {
                    layer1_ingest::metrics::count("http_ingest", "conflict", 1);
                    let mut p = Problem::new(
                        StatusCode::CONFLICT,
                        "event-conflict",
                        "Event id on record with other bytes",
                        format!(
                            "this event id is on record as message {with} with a different body; this body \
                             is stored as message {} (rejected, not processed) and {with} stands. Send a \
                             changed event under a new id",
                            i.id
                        ),
                    );
                    p.id = Some(i.id.uuid());
                    p.existing_id = Some(with.uuid());
                    return p.into_response();
                }
            };
            layer1_ingest::metrics::count("http_ingest", label, 1);
            let resend_of = match i.outcome {
                IngestOutcome::Resend { of } => Some(of.uuid()),
                _ => None,
            };
            (status, Json(Accepted { id: i.id.uuid(), duplicate: i.is_duplicate(), resend_of }))
                .into_response()
        }
        Ok(Ok(Err(e))) => match &*e {
            Error::Base(layer1_ingest::Error::BodyTooLarge { .. }) => too_large(),
            Error::Base(layer1_ingest::Error::InvalidInput(why)) => {
                Problem::new(StatusCode::BAD_REQUEST, "invalid-request", "Invalid request", why.clone())
                    .into_response()
            }
            Error::Base(layer1_ingest::Error::OutcomeUnknown(_)) => {
                tracing::error!(source = %source, kind = e.kind(), error = %e, "could not confirm a request was stored");
                unknown("the database did not confirm the commit")
            }
            _ => {
                // Every other error comes before the transaction's commit (or before it began):
                // the database rolled back whatever it had.
                tracing::error!(source = %source, kind = e.kind(), error = %e, "could not store a request");
                unavailable("the database is unavailable; nothing was stored, retry later".into())
            }
        },
        // The grouping task dropped the request (it stopped) or storage is slow: the job may
        // still commit.
        Ok(Err(_)) => unknown("storage stopped before answering"),
        Err(_) => unknown(&format!("no answer from storage within {} s", STORE_TIMEOUT.as_secs())),
    }
}
