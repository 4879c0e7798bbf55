//! The translate stage: `layer2_normalized` (just_in) -> `layer3_translated`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use sea_orm::{DatabaseConnection, TransactionTrait};
use tracing::instrument;
use uuid::Uuid;

use layer1_ingest::table::{claim_leased, insert_rows, settle_leased};
use layer1_ingest::{Direction, Failure, Rejection, Stage, StageSettings, Status, guarded};
use layer2_normalize::entity as normalized;

use crate::entity;
use crate::translator::{RecordInput, Translation, Translator};

/// Translators by `(source, record kind)`.
pub type Translators = HashMap<(String, String), Arc<dyn Translator>>;

/// Claims due layer 2 rows under a lease, translates each with its translator outside any
/// transaction, and writes layer 3 rows in the transaction that marks the record `forwarded`.
pub struct TranslateStage {
    db: DatabaseConnection,
    translators: Arc<Translators>,
    settings: StageSettings,
}

impl TranslateStage {
    /// A stage over `db` with these translators.
    pub fn new(db: DatabaseConnection, translators: Arc<Translators>, settings: StageSettings) -> Self {
        Self { db, translators, settings }
    }
}

/// Translates the layer 2 `row` whose record is `data` (its parsed `record`) and builds the
/// `just_in` layer 3 row, with the core message's parsed body. Shared by the translate stage
/// and the hub's fused fast path.
pub async fn translate(
    translators: &Translators,
    row: &normalized::Model,
    data: &layer1_ingest::json::Value,
    now: chrono::DateTime<Utc>,
) -> Result<(entity::Model, layer1_ingest::json::Value), Failure> {
    let key = (row.source.clone(), row.record_kind.clone());
    let Some(t) = translators.get(&key) else {
        return Err(Rejection::field(
            "/record_kind",
            "known_kind",
            format!("no translator for source `{}` record kind `{}`", row.source, row.record_kind),
        )
        .into());
    };
    let input = RecordInput {
        id: row.id.into(),
        origin_id: row.origin_id.into(),
        source: &row.source,
        source_ref: row.source_ref.as_deref(),
        kind: &row.record_kind,
        schema_version: row.schema_version.as_deref(),
        data,
    };
    let tr: Translation = guarded(t.translate(&input)).await?;
    // Checked here, not by the database: an oversized value would fail the whole batch's insert.
    for (what, v, max) in [
        ("message_type", &tr.message.message_type, 128),
        ("type_version", &tr.message.type_version, 32),
        ("mapping_name", &tr.mapping_name, 128),
        ("mapping_version", &tr.mapping_version, 64),
    ] {
        if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
            return Err(Rejection::whole(
                "translation",
                format!("translator gave a {what} that is not 1 to {max} bytes of text"),
            )
            .into());
        }
    }
    let body = serde_json::to_string(&tr.message.body)
        .map_err(|e| Failure::Rejected(Rejection::whole("serialize", e.to_string())))?;
    let fidelity = serde_json::to_string(&tr.fidelity)
        .map_err(|e| Failure::Rejected(Rejection::whole("serialize", e.to_string())))?;
    let model = entity::Model {
        id: Uuid::now_v7(),
        direction: Direction::Upstream,
        status: Status::JustIn,
        attempts: 0,
        last_error: None,
        next_attempt_at: Some(now),
        parent_id: Some(row.id),
        origin_id: row.origin_id,
        source: row.source.clone(),
        source_ref: row.source_ref.clone(),
        message_type: tr.message.message_type,
        type_version: tr.message.type_version,
        body,
        mapping_name: tr.mapping_name,
        mapping_version: tr.mapping_version,
        fidelity,
        replayed_by: None,
        created_at: now,
        updated_at: now,
    };
    Ok((model, tr.message.body))
}

async fn translate_stored(
    translators: &Translators,
    row: &normalized::Model,
    now: chrono::DateTime<Utc>,
) -> Result<entity::Model, Failure> {
    let data = layer1_ingest::json::parse_exact(row.record.as_bytes()).map_err(|e| {
        Failure::Rejected(Rejection::whole("json", format!("stored record is not JSON: {e}")))
    })?;
    Ok(translate(translators, row, &data, now).await?.0)
}

#[async_trait]
impl Stage for TranslateStage {
    fn name(&self) -> &'static str {
        "translate"
    }

    #[instrument(skip_all, name = "translate_batch")]
    async fn run_batch(&self) -> layer1_ingest::Result<usize> {
        let Some(lease) =
            claim_leased::<normalized::Entity>(&self.db, self.settings.batch_size, self.settings.lease)
                .await?
        else {
            return Ok(0);
        };
        // Translators are integration code: no transaction open, no connection held.
        let mut new_rows = Vec::with_capacity(lease.rows.len());
        let mut forwarded = Vec::with_capacity(lease.rows.len());
        let mut failed = Vec::new();
        for row in &lease.rows {
            match translate_stored(&self.translators, row, lease.now).await {
                Ok(r) => {
                    new_rows.push(r);
                    forwarded.push(row.id);
                }
                Err(f) => failed.push((row.id, row.attempts, f)),
            }
        }
        let txn = self.db.begin().await?;
        // Layer 2 and 3 rows are acted on only by later stages, whose own commits are durable.
        layer1_ingest::table::relax_commit(&txn).await?;
        let ours =
            settle_leased::<normalized::Entity, _, _>(&txn, &lease, &forwarded, &failed, &self.settings)
                .await?;
        new_rows.retain(|r| r.parent_id.is_some_and(|p| ours.contains(&p)));
        insert_rows::<entity::Entity, _>(&txn, new_rows).await?;
        txn.commit().await?;
        Ok(lease.rows.len())
    }
}
