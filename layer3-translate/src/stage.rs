//! The translate stage: `layer2_normalized` (just_in) -> `layer3_translated`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait, TransactionTrait};
use tracing::instrument;
use uuid::Uuid;

use layer1_ingest::table::{claim_due, record_failure, transition_claimed};
use layer1_ingest::{Direction, Failure, Rejection, Stage, StageSettings, Status, Transition, guarded};
use layer2_normalize::entity as normalized;

use crate::entity;
use crate::translator::{RecordInput, Translation, Translator};

/// Translators by `(source, record kind)`.
pub type Translators = HashMap<(String, String), Arc<dyn Translator>>;

/// Claims due layer 2 rows, translates each with its translator, and writes layer 3 rows in
/// the same transaction that marks the record `forwarded`.
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

    async fn translate(&self, row: &normalized::Model) -> Result<entity::ActiveModel, Failure> {
        let key = (row.source.clone(), row.record_kind.clone());
        let Some(t) = self.translators.get(&key) else {
            return Err(Rejection::field(
                "/record_kind",
                "known_kind",
                format!("no translator for source `{}` record kind `{}`", row.source, row.record_kind),
            )
            .into());
        };
        let data: serde_json::Value = serde_json::from_str(&row.record).map_err(|e| {
            Failure::Rejected(Rejection::whole("json", format!("stored record is not JSON: {e}")))
        })?;
        let input = RecordInput {
            id: row.id,
            origin_id: row.origin_id,
            source: &row.source,
            source_ref: row.source_ref.as_deref(),
            kind: &row.record_kind,
            schema_version: row.schema_version.as_deref(),
            data: &data,
        };
        let tr: Translation = guarded(t.translate(&input)).await?;
        let body = serde_json::to_string(&tr.message.body)
            .map_err(|e| Failure::Rejected(Rejection::whole("serialize", e.to_string())))?;
        let fidelity = serde_json::to_string(&tr.fidelity)
            .map_err(|e| Failure::Rejected(Rejection::whole("serialize", e.to_string())))?;
        let now = Utc::now();
        Ok(entity::ActiveModel {
            id: Set(Uuid::now_v7()),
            direction: Set(Direction::Upstream),
            status: Set(Status::JustIn),
            attempts: Set(0),
            last_error: Set(None),
            next_attempt_at: Set(Some(now)),
            parent_id: Set(Some(row.id)),
            origin_id: Set(row.origin_id),
            source: Set(row.source.clone()),
            source_ref: Set(row.source_ref.clone()),
            message_type: Set(tr.message.message_type),
            type_version: Set(tr.message.type_version),
            body: Set(body),
            mapping_name: Set(tr.mapping_name),
            mapping_version: Set(tr.mapping_version),
            fidelity: Set(fidelity),
            created_at: Set(now),
            updated_at: Set(now),
        })
    }
}

#[async_trait]
impl Stage for TranslateStage {
    fn name(&self) -> &'static str {
        "translate"
    }

    #[instrument(skip_all, name = "translate_batch")]
    async fn run_batch(&self) -> layer1_ingest::Result<usize> {
        let now = Utc::now();
        let txn = self.db.begin().await?;
        let rows = claim_due::<normalized::Entity, _>(
            &txn,
            Direction::Upstream,
            &[Status::JustIn, Status::Failed],
            now,
            self.settings.batch_size,
        )
        .await?;
        if rows.is_empty() {
            txn.commit().await?;
            return Ok(0);
        }
        let mut new_rows = Vec::with_capacity(rows.len());
        let mut forwarded = Vec::with_capacity(rows.len());
        for row in &rows {
            match self.translate(row).await {
                Ok(r) => {
                    new_rows.push(r);
                    forwarded.push(row.id);
                }
                Err(f) => {
                    record_failure::<normalized::Entity, _>(
                        &txn,
                        row.id,
                        row.attempts,
                        &f,
                        &self.settings,
                        now,
                    )
                    .await?;
                }
            }
        }
        for chunk in new_rows.chunks(500) {
            entity::Entity::insert_many(chunk.to_vec()).exec_without_returning(&txn).await?;
        }
        transition_claimed::<normalized::Entity, _>(
            &txn,
            &forwarded,
            &Transition::to(Status::Forwarded),
            now,
        )
        .await?;
        txn.commit().await?;
        Ok(rows.len())
    }
}
