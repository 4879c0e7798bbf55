//! The route stage: `layer3_translated` (just_in) -> `layer4_dispatch` rows, one per
//! destination (the outbox), in one transaction per batch.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait, TransactionTrait};
use tracing::instrument;
use uuid::Uuid;

use layer1_ingest::table::{claim_due, record_failure, transition_claimed};
use layer1_ingest::{Direction, Failure, Rejection, Stage, StageSettings, Status, Transition};
use layer3_translate::entity as translated;

use crate::entity;
use crate::route::Router;

/// Claims due layer 3 rows and writes their layer 4 rows.
pub struct RouteStage {
    db: DatabaseConnection,
    router: Arc<dyn Router>,
    settings: StageSettings,
}

impl RouteStage {
    /// A stage over `db` with this router.
    pub fn new(db: DatabaseConnection, router: Arc<dyn Router>, settings: StageSettings) -> Self {
        Self { db, router, settings }
    }

    fn route(
        &self,
        row: &translated::Model,
        now: chrono::DateTime<Utc>,
    ) -> Result<Vec<entity::ActiveModel>, Failure> {
        let body: serde_json::Value = serde_json::from_str(&row.body).map_err(|e| {
            Failure::Rejected(Rejection::whole("json", format!("stored core message is not JSON: {e}")))
        })?;
        let targets = self.router.route(&row.message_type, &body)?;
        Ok(targets
            .into_iter()
            .map(|t| entity::ActiveModel {
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
                destination: Set(t.destination),
                message_type: Set(row.message_type.clone()),
                type_version: Set(row.type_version.clone()),
                body: Set(row.body.clone()),
                ordering_key: Set(t.ordering_key),
                queued_at: Set(None),
                acknowledged_at: Set(None),
                intake_key: Set(None),
                created_at: Set(now),
                updated_at: Set(now),
            })
            .collect())
    }
}

#[async_trait]
impl Stage for RouteStage {
    fn name(&self) -> &'static str {
        "route"
    }

    #[instrument(skip_all, name = "route_batch")]
    async fn run_batch(&self) -> layer1_ingest::Result<usize> {
        let now = Utc::now();
        let txn = self.db.begin().await?;
        let rows = claim_due::<translated::Entity, _>(
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
            match self.route(row, now) {
                Ok(mut r) => {
                    new_rows.append(&mut r);
                    forwarded.push(row.id);
                }
                Err(f) => {
                    record_failure::<translated::Entity, _>(
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
        transition_claimed::<translated::Entity, _>(
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
