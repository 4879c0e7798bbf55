//! Storing what a third party (or the core app, downstream) sent: byte for byte, once.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, TransactionSession,
    TransactionTrait, TryInsertResult,
};
use sha2::{Digest, Sha256};
use tracing::instrument;
use uuid::Uuid;

use crate::entity::{self, Column, Entity};
use crate::error::{Error, Result};
use crate::status::{Direction, Status};

/// Longest accepted source name.
pub const MAX_SOURCE_LEN: usize = 128;
/// Longest accepted third-party reference.
pub const MAX_SOURCE_REF_LEN: usize = 512;
/// Longest accepted content type.
pub const MAX_CONTENT_TYPE_LEN: usize = 255;
/// At most this many headers are kept per message.
pub const MAX_HEADERS: usize = 64;

/// Header names whose values are never stored: a credential in the database is a leak waiting
/// for a backup to be copied.
const SECRET_HEADER_PARTS: &[&str] =
    &["authorization", "signature", "cookie", "token", "secret", "key", "password", "auth"];

/// Whether ingest stores this header's value as `[redacted]` (its name, in any case, holds a
/// part of the names ingest treats as secret): nothing can test such a value later.
pub fn is_redacted_header(name: &str) -> bool {
    is_secret_name(&name.to_ascii_lowercase())
}

/// The one test of a lowercased header name against [`SECRET_HEADER_PARTS`].
fn is_secret_name(lowercased: &str) -> bool {
    SECRET_HEADER_PARTS.iter().any(|p| lowercased.contains(p))
}

/// What a caller hands to layer 1.
#[derive(Debug, Clone)]
pub struct NewRaw<'a> {
    /// The integration's name.
    pub source: &'a str,
    /// The third party's own event id, if it sent one. Idempotency key when present.
    pub source_ref: Option<&'a str>,
    /// The bytes exactly as received.
    pub body: &'a [u8],
    /// The sender's content type.
    pub content_type: &'a str,
    /// Request headers worth keeping (secrets are redacted here, whatever the caller passes).
    pub headers: &'a [(String, String)],
    /// Upstream for third-party input, downstream for the core app's outbound messages.
    pub direction: Direction,
}

/// What became of one payload.
///
/// Not `#[non_exhaustive]`, unlike the error types: the HTTP front door answers each outcome
/// differently, and a new outcome must fail to compile there until it has its own answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Stored as a new message.
    New,
    /// The same bytes are on record under the same key, in a copy that is not rejected or
    /// dead: nothing new was stored; the answer's id is that copy.
    Duplicate,
    /// The key is on record, but every copy on record ended `rejected` or `dead`: the payload
    /// is stored as a new message (its own row, `parent_id` = `of`, same origin), so that a
    /// corrected (or identical) resend of a refused event is processed, not dropped.
    Resend {
        /// The newest earlier copy, which the new row supersedes.
        of: crate::RawId,
    },
    /// The key is on record in a copy that is not rejected or dead, with different bytes: the
    /// payload is stored as a row of its own, `rejected` at once (the reason names both rows
    /// and both hashes), and is not processed. Two versions of one event are never both
    /// carried on silently; an operator who decides the new bytes are right replays the row.
    Conflict {
        /// The copy on record, which stands.
        with: crate::RawId,
    },
}

/// The answer to an ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    /// The layer 1 row holding these bytes: the new row (new, resend, conflict) or the copy
    /// already on record (duplicate).
    pub id: crate::RawId,
    /// What became of it.
    pub outcome: IngestOutcome,
}

impl Ingested {
    fn new(id: Uuid, outcome: IngestOutcome) -> Self {
        Self { id: id.into(), outcome }
    }

    /// Whether the payload was a duplicate of a copy on record (`outcome` is `Duplicate`).
    pub fn is_duplicate(&self) -> bool {
        self.outcome == IngestOutcome::Duplicate
    }
}

/// The idempotency key: the third party's id, or the body's hash when it sent none.
pub fn dedup_key(source_ref: Option<&str>, body_sha256: &str) -> String {
    match source_ref {
        Some(r) => format!("ref:{r}"),
        None => format!("sha256:{body_sha256}"),
    }
}

/// Hex SHA-256 of `body`.
pub fn sha256_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

fn redacted_headers(headers: &[(String, String)]) -> Result<String> {
    if headers.len() > MAX_HEADERS {
        return Err(Error::InvalidInput(format!(
            "{} headers given, at most {MAX_HEADERS} are kept",
            headers.len()
        )));
    }
    let map: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| {
            let name = k.to_ascii_lowercase();
            let value = if is_secret_name(&name) { "[redacted]" } else { v.as_str() };
            (name, serde_json::Value::String(value.to_owned()))
        })
        .collect();
    serde_json::to_string(&map).map_err(|e| Error::Internal(format!("headers to JSON: {e}")))
}

fn check_len(what: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() || value.len() > max {
        return Err(Error::InvalidInput(format!("{what} must be 1 to {max} bytes, got {}", value.len())));
    }
    // PostgreSQL text cannot hold NUL, and control characters in an id are a mistake or an
    // attack: refuse this item alone rather than fail the batch it would be inserted with.
    if value.chars().any(char::is_control) {
        return Err(Error::InvalidInput(format!("{what} contains control characters")));
    }
    Ok(())
}

fn prepare(raw: &NewRaw<'_>, max_body: usize, now: chrono::DateTime<Utc>) -> Result<entity::Model> {
    check_len("source", raw.source, MAX_SOURCE_LEN)?;
    if let Some(r) = raw.source_ref {
        check_len("source_ref", r, MAX_SOURCE_REF_LEN)?;
    }
    check_len("content type", raw.content_type, MAX_CONTENT_TYPE_LEN)?;
    if raw.body.len() > max_body {
        return Err(Error::BodyTooLarge {
            source_name: raw.source.to_owned(),
            size: raw.body.len(),
            limit: max_body,
        });
    }
    let sha = sha256_hex(raw.body);
    let id = Uuid::now_v7();
    let model = entity::Model {
        id,
        direction: raw.direction,
        status: Status::JustIn,
        attempts: 0,
        last_error: None,
        next_attempt_at: Some(now),
        parent_id: None,
        origin_id: id,
        source: raw.source.to_owned(),
        source_ref: raw.source_ref.map(str::to_owned),
        dedup_key: dedup_key(raw.source_ref, &sha),
        body: raw.body.to_vec(),
        content_type: raw.content_type.to_owned(),
        headers: redacted_headers(raw.headers)?,
        body_sha256: sha,
        replayed_by: None,
        ordering_key: None,
        message_type: None,
        created_at: now,
        updated_at: now,
    };
    Ok(model)
}

/// Stores `raw` as a `just_in` row, or answers with the copy already on record under the same
/// `(source, dedup key)`; see [`IngestOutcome`] for resends and conflicts. Bodies over `max_body`
/// bytes are refused before anything is written.
#[instrument(skip_all, fields(source = raw.source))]
pub async fn ingest<C>(conn: &C, raw: &NewRaw<'_>, max_body: usize) -> Result<Ingested>
where
    C: ConnectionTrait + TransactionTrait,
{
    ingest_many(conn, std::slice::from_ref(raw), max_body)
        .await?
        .pop()
        .unwrap_or_else(|| Err(Error::Db(sea_orm::DbErr::Custom("ingest gave no answer".into()))))
}

/// Inserts the rows whose `(source, dedup_key)` is not taken and returns the ids of those
/// inserted. PostgreSQL gets the rows as one JSON parameter (see `table::pg_json_insert`).
async fn insert_new<'a, C: ConnectionTrait>(
    conn: &C,
    rows: impl Iterator<Item = &'a entity::Model>,
) -> Result<HashSet<Uuid>> {
    const ON_CONFLICT: &str = "ON CONFLICT (source, dedup_key) DO NOTHING RETURNING id";
    if conn.get_database_backend() == sea_orm::DbBackend::Postgres {
        let rows: Vec<&entity::Model> = rows.collect();
        let json = serde_json::to_string(&rows).map_err(|e| Error::Internal(format!("row to JSON: {e}")))?;
        let out = conn.query_all_raw(crate::table::pg_json_insert("layer1_raw", json, ON_CONFLICT)).await?;
        return out.iter().map(|r| r.try_get::<Uuid>("", "id").map_err(Error::from)).collect();
    }
    Ok(
        match Entity::insert_many(rows.cloned().map(entity::ActiveModel::from))
            .on_conflict_do_nothing_on([Column::Source, Column::DedupKey])
            .exec_with_returning_keys(conn)
            .await?
        {
            TryInsertResult::Inserted(ids) => ids.into_iter().collect(),
            TryInsertResult::Empty | TryInsertResult::Conflicted => HashSet::new(),
        },
    )
}

/// Rows per multi-row INSERT (17 columns: well under both engines' bind-parameter limits).
const INGEST_CHUNK: usize = 500;

/// A copy on record that still stands for its event: one that did not end `rejected` or
/// `dead`. A copy that did no longer absorbs a resend of the event. A `dropped` copy stands:
/// it was accepted, and a redelivery of it would only be dropped again.
fn stands(status: Status) -> bool {
    !matches!(status, Status::Rejected | Status::Dead)
}

/// The row on record under a payload's key, as far as settling the payload needs it.
#[derive(Debug, Clone)]
struct OnRecord {
    id: Uuid,
    status: Status,
    body_sha256: String,
    origin_id: Uuid,
}

/// [`ingest`] for many payloads in one transaction: one multi-row INSERT per 500 (plus one
/// lookup for the keys already taken), which is what makes intake under load cheap. Each
/// payload gets its own answer: an invalid one does not fail the others.
///
/// The outer error is the database's, and says what a sender must be told: [`Error::Db`] when
/// it failed before the commit (the transaction is rolled back: nothing of the batch was
/// stored), [`Error::OutcomeUnknown`] when the commit itself got no answer (the rows may or may
/// not be stored; a retry is deduplicated either way).
pub async fn ingest_many<C>(conn: &C, raws: &[NewRaw<'_>], max_body: usize) -> Result<Vec<Result<Ingested>>>
where
    C: ConnectionTrait + TransactionTrait,
{
    let now = Utc::now();
    let mut answers: Vec<Option<Result<Ingested>>> = Vec::with_capacity(raws.len());
    let mut rows: Vec<(usize, entity::Model)> = Vec::new();
    for (i, raw) in raws.iter().enumerate() {
        match prepare(raw, max_body, now) {
            Ok(m) => {
                rows.push((i, m));
                answers.push(None);
            }
            Err(e) => answers.push(Some(Err(e))),
        }
    }
    // Keys in one order in every batch: two workers' transactions inserting overlapping keys
    // then wait on each other's rows in the same order instead of deadlocking.
    rows.sort_by(|a, b| (&a.1.source, &a.1.dedup_key).cmp(&(&b.1.source, &b.1.dedup_key)));
    if !rows.is_empty() {
        // One transaction for the batch, so that an error has one of two meanings a sender can
        // be told truthfully: before COMMIT nothing was stored; at COMMIT nobody knows.
        let txn = conn.begin().await?;
        for chunk in rows.chunks(INGEST_CHUNK) {
            for (i, answer) in settle_chunk(&txn, chunk).await? {
                answers[i] = Some(answer);
            }
        }
        txn.commit().await.map_err(Error::OutcomeUnknown)?;
    }
    Ok(answers
        .into_iter()
        .map(|a| {
            a.unwrap_or_else(|| Err(Error::Db(sea_orm::DbErr::Custom("payload was not ingested".into()))))
        })
        .collect())
}

/// Inserts one chunk and answers each of its payloads (by its index in the batch). The outer
/// error is a failed statement, which ends the batch's transaction; a payload that could not be
/// settled (see [`settle_against`]) gets an error of its own, and the others are unaffected.
async fn settle_chunk<C: ConnectionTrait>(
    conn: &C,
    chunk: &[(usize, entity::Model)],
) -> Result<Vec<(usize, Result<Ingested>)>> {
    // ON CONFLICT DO NOTHING on the unique (source, dedup_key) index: concurrent duplicates
    // race in the database, not in our code, and exactly one row wins. RETURNING says which
    // of our rows went in; only the others need a lookup.
    let inserted = insert_new(conn, chunk.iter().map(|r| &r.1)).await?;
    let missing: Vec<&entity::Model> =
        chunk.iter().map(|r| &r.1).filter(|m| !inserted.contains(&m.id)).collect();
    let mut existing: HashMap<(String, String), OnRecord> = HashMap::new();
    if !missing.is_empty() {
        let mut sources: Vec<&str> = missing.iter().map(|m| m.source.as_str()).collect();
        sources.sort_unstable();
        sources.dedup();
        existing = Entity::find()
            .select_only()
            .column(Column::Source)
            .column(Column::DedupKey)
            .column(Column::Id)
            .column(Column::Status)
            .column(Column::BodySha256)
            .column(Column::OriginId)
            .filter(Column::Source.is_in(sources))
            .filter(Column::DedupKey.is_in(missing.iter().map(|m| m.dedup_key.clone())))
            .into_tuple::<(String, String, Uuid, Status, String, Uuid)>()
            .all(conn)
            .await?
            .into_iter()
            .map(|(s, k, id, status, body_sha256, origin_id)| {
                ((s, k), OnRecord { id, status, body_sha256, origin_id })
            })
            .collect();
    }
    let mut out = Vec::with_capacity(chunk.len());
    for (i, m) in chunk {
        let answer = if inserted.contains(&m.id) {
            Ok(Ingested::new(m.id, IngestOutcome::New))
        } else {
            match existing.get(&(m.source.clone(), m.dedup_key.clone())) {
                // The common duplicate (a sender's retry): same bytes, copy standing.
                Some(e) if e.body_sha256 == m.body_sha256 && stands(e.status) => {
                    Ok(Ingested::new(e.id, IngestOutcome::Duplicate))
                }
                Some(e) => settle_against(conn, m, e).await?,
                None => Err(vanished(&m.dedup_key)),
            }
        };
        out.push((*i, answer));
    }
    Ok(out)
}

/// How many times a payload is settled again after losing an insert race to a concurrent
/// writer. Each loss means the other writer's row is now on record and decides the next round
/// (a duplicate or a conflict, both final), so two rounds suffice; the rest is margin.
const SETTLE_ROUNDS: usize = 4;

/// Settles a payload whose key is taken by `first` but which is not a plain duplicate of it:
/// a resend of an event whose copies all ended rejected or dead, different bytes under the key
/// of a copy that stands, or the same bytes as a later copy of the event.
///
/// Every copy of an event shares `first`'s origin (resends and replays keep it), so the copies
/// are one indexed lookup on `origin_id`. The new rows' keys are what keeps concurrent writers
/// honest: a resend takes the key `resend:<id of the copy it supersedes>` (one successor per
/// copy: of two concurrent resends one wins and the other is settled again against it), a
/// conflict `conflict:<id of the copy that stands>:<sha256>` (the same conflicting bytes sent
/// again are answered with the same row).
///
/// The outer error is a failed statement (the batch's transaction is over); the inner one says
/// this payload could not be settled, which is its own answer only.
async fn settle_against<C: ConnectionTrait>(
    conn: &C,
    m: &entity::Model,
    first: &OnRecord,
) -> Result<Result<Ingested>> {
    for _ in 0..SETTLE_ROUNDS {
        let copies: Vec<(Uuid, Status, String)> = Entity::find()
            .select_only()
            .column(Column::Id)
            .column(Column::Status)
            .column(Column::BodySha256)
            .filter(Column::OriginId.eq(first.origin_id))
            .filter(Column::Source.eq(m.source.as_str()))
            .into_tuple()
            .all(conn)
            .await?;
        let mut standing: Vec<&(Uuid, Status, String)> = copies.iter().filter(|c| stands(c.1)).collect();
        // UUIDv7: by id is by arrival.
        standing.sort_by_key(|c| c.0);
        if let Some(same) = standing.iter().find(|c| c.2 == m.body_sha256) {
            return Ok(Ok(Ingested::new(same.0, IngestOutcome::Duplicate)));
        }
        if let Some(stand) = standing.last() {
            let mut row = m.clone();
            row.dedup_key = format!("conflict:{}:{}", stand.0, m.body_sha256);
            row.status = Status::Rejected;
            row.next_attempt_at = None;
            row.last_error = Some(format!(
                "conflict: `{}` is on record as message {} with other bytes (sha256 {} there, {} here); \
                 stored, not processed: replay this message if these bytes are the right ones",
                m.source_ref.as_deref().unwrap_or(&m.dedup_key),
                stand.0,
                stand.2,
                m.body_sha256
            ));
            let id = if insert_new(conn, std::iter::once(&row)).await?.contains(&row.id) {
                crate::table::log_given_up(
                    crate::Layer::Raw,
                    row.id,
                    &m.source,
                    row.status,
                    row.last_error.as_deref(),
                );
                row.id
            } else {
                let on_record = Entity::find()
                    .select_only()
                    .column(Column::Id)
                    .filter(Column::Source.eq(m.source.as_str()))
                    .filter(Column::DedupKey.eq(row.dedup_key.as_str()))
                    .into_tuple::<Uuid>()
                    .one(conn)
                    .await?;
                match on_record {
                    Some(id) => id,
                    None => return Ok(Err(vanished(&row.dedup_key))),
                }
            };
            return Ok(Ok(Ingested::new(id, IngestOutcome::Conflict { with: stand.0.into() })));
        }
        // Nothing stands: the newest copy (the key's own row at least) is superseded by these
        // bytes, as a replay would supersede it.
        let newest = copies.iter().map(|c| c.0).max().unwrap_or(first.id);
        let mut row = m.clone();
        row.dedup_key = successor_key(newest);
        row.parent_id = Some(newest);
        row.origin_id = first.origin_id;
        if insert_new(conn, std::iter::once(&row)).await?.contains(&row.id) {
            tracing::info!(source = %m.source, id = %row.id, of = %newest, "resend of a refused event: stored as a new message");
            return Ok(Ok(Ingested::new(row.id, IngestOutcome::Resend { of: newest.into() })));
        }
        // A concurrent writer stored a resend of the same copy first: settle against it.
    }
    Ok(Err(Error::Db(sea_orm::DbErr::Custom(format!(
        "key `{}` of source `{}` kept changing under concurrent writers; nothing was stored, retry",
        m.dedup_key, m.source
    )))))
}

/// The key of the one row that supersedes layer 1 row `of`: a sender's resend of a refused event
/// and an operator's replay take the same key, so the unique index admits one successor.
pub fn successor_key(of: Uuid) -> String {
    format!("resend:{of}")
}

/// A row whose insert lost to a key that then could not be found: no answer can be given.
fn vanished(dedup_key: &str) -> Error {
    Error::Db(sea_orm::DbErr::Custom(format!("row for key `{dedup_key}` vanished after insert")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_names_lowercased() {
        let h = vec![
            ("Authorization".to_owned(), "Bearer abc".to_owned()),
            ("Stripe-Signature".to_owned(), "t=1,v1=ff".to_owned()),
            ("X-Request-Id".to_owned(), "r-1".to_owned()),
        ];
        let json = redacted_headers(&h).expect("headers");
        assert!(!json.contains("abc") && !json.contains("v1=ff"), "{json}");
        assert!(json.contains("\"x-request-id\":\"r-1\""), "{json}");
    }

    #[test]
    fn dedup_key_prefers_the_reference() {
        assert_eq!(dedup_key(Some("evt_1"), "ab"), "ref:evt_1");
        assert_eq!(dedup_key(None, "ab"), "sha256:ab");
    }
}
