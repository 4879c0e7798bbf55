//! The normalize stage: `layer1_raw` (just_in) -> `layer2_normalized`. A batch is claimed under a
//! lease, normalized with no transaction open, and written in one short transaction.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use layer1_ingest::entity as raw;
use layer1_ingest::{Advance, AdvanceStage, Direction, Failure, Rejection, Status, guarded};

use crate::entity;
use crate::normalizer::{Normalizer, RawInput, Record};

/// The normalizers by source name.
pub type Normalizers = HashMap<String, Arc<dyn Normalizer>>;

/// Claims `just_in` (and due `failed`) layer 1 rows, runs their source's normalizer, and writes
/// the records to layer 2 while marking the raw row `forwarded`, `rejected` or `failed`:
/// `NormalizeStage::new(db, normalizers, settings)`.
pub type NormalizeStage = AdvanceStage<Normalizing>;

/// Layer 2's step: a raw row to its records.
pub struct Normalizing(Arc<Normalizers>);

impl From<Arc<Normalizers>> for Normalizing {
    fn from(normalizers: Arc<Normalizers>) -> Self {
        Self(normalizers)
    }
}

/// Runs `row`'s source normalizer (a panic inside it is a transient failure) and checks what it
/// returned. Shared by the normalize stage and the hub's fused fast path.
pub async fn normalize(normalizers: &Normalizers, row: &raw::Model) -> Result<Vec<Record>, Failure> {
    let Some(n) = normalizers.get(&row.source) else {
        return Err(Rejection::field(
            "/source",
            "known_source",
            format!("no normalizer for source `{}`", row.source),
        )
        .into());
    };
    let input = RawInput {
        id: row.id.into(),
        source: &row.source,
        source_ref: row.source_ref.as_deref(),
        content_type: &row.content_type,
        body: &row.body,
        headers: &row.headers,
    };
    let records = guarded(n.normalize(&input)).await?;
    for (i, r) in records.iter().enumerate() {
        if r.source_ref
            .as_ref()
            .is_some_and(|s| s.is_empty() || s.len() > layer1_ingest::ingest::MAX_SOURCE_REF_LEN)
        {
            return Err(Rejection::field(
                format!("/records/{i}/source_ref"),
                "length",
                "record id must be 1 to 512 bytes",
            )
            .into());
        }
        if r.kind.is_empty() || r.kind.len() > 128 {
            return Err(Rejection::field(
                format!("/records/{i}/kind"),
                "length",
                "record kind must be 1 to 128 bytes",
            )
            .into());
        }
    }
    Ok(records)
}

/// The `just_in` layer 2 row for record `index` of `parent`.
pub fn record_row(
    parent: &raw::Model,
    index: usize,
    rec: &Record,
    now: chrono::DateTime<Utc>,
) -> Result<entity::Model, Failure> {
    let text = serde_json::to_string(&rec.data)
        .map_err(|e| Failure::Rejected(Rejection::whole("serialize", e.to_string())))?;
    Ok(entity::Model {
        id: Uuid::now_v7(),
        direction: Direction::Upstream,
        status: Status::JustIn,
        attempts: 0,
        last_error: None,
        next_attempt_at: Some(now),
        parent_id: Some(parent.id),
        origin_id: parent.origin_id,
        source: parent.source.clone(),
        source_ref: rec.source_ref.clone(),
        record_kind: rec.kind.clone(),
        record_index: i32::try_from(index).unwrap_or(i32::MAX),
        record: text,
        schema_version: rec.schema_version.clone(),
        replayed_by: None,
        created_at: now,
        updated_at: now,
    })
}

#[async_trait]
impl Advance for Normalizing {
    type From = raw::Entity;
    type To = entity::Entity;

    fn name(&self) -> &'static str {
        "normalize"
    }

    /// Layer 2 and 3 rows are acted on only by later stages, whose own commits are durable.
    fn relaxed_commit(&self) -> bool {
        true
    }

    async fn children(&self, row: &raw::Model, now: DateTime<Utc>) -> Result<Vec<entity::Model>, Failure> {
        let records = normalize(&self.0, row).await?;
        records.iter().enumerate().map(|(i, rec)| record_row(row, i, rec, now)).collect()
    }
}
