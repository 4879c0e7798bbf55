//! The normalize stage: `layer1_raw` (just_in) -> `layer2_normalized`. A batch is claimed under a
//! lease, normalized with no transaction open, and written in one short transaction.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use sea_orm::{DatabaseConnection, TransactionTrait};
use tracing::instrument;
use uuid::Uuid;

use layer1_ingest::entity as raw;
use layer1_ingest::table::{claim_leased, insert_rows, settle_leased};
use layer1_ingest::{Direction, Failure, Rejection, Stage, StageSettings, Status, guarded};

use crate::entity;
use crate::normalizer::{Normalizer, RawInput, Record};

/// The normalizers by source name.
pub type Normalizers = HashMap<String, Arc<dyn Normalizer>>;

/// Claims `just_in` (and due `failed`) layer 1 rows, runs their source's normalizer, and writes
/// the records to layer 2 while marking the raw row `forwarded`, `rejected` or `failed`.
pub struct NormalizeStage {
    db: DatabaseConnection,
    normalizers: Arc<Normalizers>,
    settings: StageSettings,
}

impl NormalizeStage {
    /// A stage over `db` with these normalizers.
    pub fn new(db: DatabaseConnection, normalizers: Arc<Normalizers>, settings: StageSettings) -> Self {
        Self { db, normalizers, settings }
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
impl Stage for NormalizeStage {
    fn name(&self) -> &'static str {
        "normalize"
    }

    #[instrument(skip_all, name = "normalize_batch")]
    async fn run_batch(&self) -> layer1_ingest::Result<usize> {
        let Some(lease) =
            claim_leased::<raw::Entity>(&self.db, self.settings.batch_size, self.settings.lease).await?
        else {
            return Ok(0);
        };
        let now = lease.now;
        // Normalizers are integration code (they may call a lookup service): they run with no
        // transaction open and no connection held, so however long they take, ingest and the
        // audit desk do not wait for them.
        let mut new_rows = Vec::new();
        let mut forwarded = Vec::with_capacity(lease.rows.len());
        let mut failed = Vec::new();
        for row in &lease.rows {
            let built = match normalize(&self.normalizers, row).await {
                Ok(records) => records
                    .iter()
                    .enumerate()
                    .map(|(i, rec)| record_row(row, i, rec, now))
                    .collect::<Result<Vec<_>, _>>(),
                Err(f) => Err(f),
            };
            match built {
                Ok(mut children) => {
                    new_rows.append(&mut children);
                    forwarded.push(row.id);
                }
                Err(f) => failed.push((row.id, row.attempts, f)),
            }
        }
        let txn = self.db.begin().await?;
        // Layer 2 and 3 rows are acted on only by later stages, whose own commits are durable.
        layer1_ingest::table::relax_commit(&txn).await?;
        let ours =
            settle_leased::<raw::Entity, _, _>(&txn, &lease, &forwarded, &failed, &self.settings).await?;
        // Only the records of rows still ours: a row another worker took after our lease
        // ended gets its records from that worker.
        new_rows.retain(|r| r.parent_id.is_some_and(|p| ours.contains(&p)));
        let written = new_rows.len();
        insert_rows::<entity::Entity, _>(&txn, new_rows).await?;
        txn.commit().await?;
        tracing::debug!(claimed = lease.rows.len(), records = written, "normalized");
        Ok(lease.rows.len())
    }
}
