//! Storing what a third party (or the core app, downstream) sent: byte for byte, once.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, TryInsertResult};
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

/// The answer to an ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    /// The layer 1 id (the existing one for a duplicate).
    pub id: Uuid,
    /// Whether the message was already on record.
    pub duplicate: bool,
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
            let value =
                if SECRET_HEADER_PARTS.iter().any(|p| name.contains(p)) { "[redacted]" } else { v.as_str() };
            (name, serde_json::Value::String(value.to_owned()))
        })
        .collect();
    serde_json::to_string(&map).map_err(|e| Error::InvalidInput(format!("headers: {e}")))
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

fn prepare(
    raw: &NewRaw<'_>,
    max_body: usize,
    now: chrono::DateTime<Utc>,
) -> Result<(Uuid, String, entity::Model)> {
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
    let key = dedup_key(raw.source_ref, &sha);
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
        dedup_key: key.clone(),
        body: raw.body.to_vec(),
        content_type: raw.content_type.to_owned(),
        headers: redacted_headers(raw.headers)?,
        body_sha256: sha,
        replayed_by: None,
        created_at: now,
        updated_at: now,
    };
    Ok((id, key, model))
}

/// Stores `raw` as a `just_in` row, or returns the row already stored under the same
/// `(source, dedup key)`. Bodies over `max_body` bytes are refused before anything is written.
#[instrument(skip_all, fields(source = raw.source))]
pub async fn ingest<C: ConnectionTrait>(conn: &C, raw: &NewRaw<'_>, max_body: usize) -> Result<Ingested> {
    ingest_many(conn, std::slice::from_ref(raw), max_body)
        .await?
        .pop()
        .unwrap_or_else(|| Err(Error::InvalidInput("nothing ingested".into())))
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
        let json =
            serde_json::to_string(&rows).map_err(|e| Error::InvalidInput(format!("row to JSON: {e}")))?;
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

/// [`ingest`] for many payloads in one multi-row INSERT per 500 (plus one lookup), which is
/// what makes intake under load cheap. Each payload gets its own answer: an invalid one does
/// not fail the others. The outer error is the database's.
pub async fn ingest_many<C: ConnectionTrait>(
    conn: &C,
    raws: &[NewRaw<'_>],
    max_body: usize,
) -> Result<Vec<Result<Ingested>>> {
    let now = Utc::now();
    let mut answers: Vec<Option<Result<Ingested>>> = Vec::with_capacity(raws.len());
    let mut rows: Vec<(usize, Uuid, String, String, entity::Model)> = Vec::new();
    for (i, raw) in raws.iter().enumerate() {
        match prepare(raw, max_body, now) {
            Ok((id, key, m)) => {
                rows.push((i, id, raw.source.to_owned(), key, m));
                answers.push(None);
            }
            Err(e) => answers.push(Some(Err(e))),
        }
    }
    for chunk in rows.chunks(INGEST_CHUNK) {
        // ON CONFLICT DO NOTHING on the unique (source, dedup_key) index: concurrent duplicates
        // race in the database, not in our code, and exactly one row wins. RETURNING says which
        // of our rows went in; only the others (duplicates) need a lookup.
        let inserted = insert_new(conn, chunk.iter().map(|r| &r.4)).await?;
        let missing: Vec<&(usize, Uuid, String, String, entity::Model)> =
            chunk.iter().filter(|r| !inserted.contains(&r.1)).collect();
        let mut existing: HashMap<(String, String), Uuid> = HashMap::new();
        if !missing.is_empty() {
            let mut sources: Vec<&str> = missing.iter().map(|r| r.2.as_str()).collect();
            sources.sort_unstable();
            sources.dedup();
            existing = Entity::find()
                .select_only()
                .column(Column::Source)
                .column(Column::DedupKey)
                .column(Column::Id)
                .filter(Column::Source.is_in(sources))
                .filter(Column::DedupKey.is_in(missing.iter().map(|r| r.3.clone())))
                .into_tuple::<(String, String, Uuid)>()
                .all(conn)
                .await?
                .into_iter()
                .map(|(s, k, id)| ((s, k), id))
                .collect();
        }
        for (i, id, source, key, _) in chunk {
            answers[*i] = Some(if inserted.contains(id) {
                Ok(Ingested { id: *id, duplicate: false })
            } else {
                match existing.get(&(source.clone(), key.clone())) {
                    Some(earlier) => Ok(Ingested { id: *earlier, duplicate: true }),
                    None => Err(Error::Db(sea_orm::DbErr::Custom(format!(
                        "row for key `{key}` vanished after insert"
                    )))),
                }
            });
        }
    }
    Ok(answers
        .into_iter()
        .map(|a| {
            a.unwrap_or_else(|| Err(Error::Db(sea_orm::DbErr::Custom("payload was not ingested".into()))))
        })
        .collect())
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
