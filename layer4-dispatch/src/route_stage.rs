//! The route stage: `layer3_translated` (just_in) -> `layer4_dispatch` rows, one per
//! destination (the outbox). A batch is claimed under a lease, routed with no transaction open
//! (a [`Router`] is user code), and written in one short transaction.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use sea_orm::{DatabaseConnection, TransactionTrait};
use tracing::instrument;
use uuid::Uuid;

use layer1_ingest::table::{claim_leased, insert_rows, settle_leased};
use layer1_ingest::{Direction, Failure, Rejection, Stage, StageSettings, Status};
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
}

/// The `just_in` layer 4 rows (one per destination) of the layer 3 `row` whose core message is
/// `body` (its parsed `body`). Shared by the route stage and the hub's fused fast path.
pub fn dispatch_rows(
    router: &dyn Router,
    row: &translated::Model,
    body: &layer1_ingest::json::Value,
    now: chrono::DateTime<Utc>,
) -> Result<Vec<entity::Model>, Failure> {
    let targets = router.route(&row.source, &row.message_type, body)?;
    Ok(targets
        .into_iter()
        .map(|t| entity::Model {
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
            destination: t.destination,
            message_type: row.message_type.clone(),
            type_version: row.type_version.clone(),
            body: row.body.clone(),
            ordering_key: t.ordering_key,
            queued_at: None,
            acknowledged_at: None,
            intake_key: None,
            created_at: now,
            updated_at: now,
        })
        .collect())
}

fn route_stored(
    router: &dyn Router,
    row: &translated::Model,
    now: chrono::DateTime<Utc>,
) -> Result<Vec<entity::Model>, Failure> {
    let body = layer1_ingest::json::parse_exact(row.body.as_bytes()).map_err(|e| {
        Failure::Rejected(Rejection::whole("json", format!("stored core message is not JSON: {e}")))
    })?;
    dispatch_rows(router, row, &body, now)
}

#[async_trait]
impl Stage for RouteStage {
    fn name(&self) -> &'static str {
        "route"
    }

    #[instrument(skip_all, name = "route_batch")]
    async fn run_batch(&self) -> layer1_ingest::Result<usize> {
        let Some(lease) =
            claim_leased::<translated::Entity>(&self.db, self.settings.batch_size, self.settings.lease)
                .await?
        else {
            return Ok(0);
        };
        // The router is user code: no transaction open, no connection held.
        let mut new_rows = Vec::with_capacity(lease.rows.len());
        let mut forwarded = Vec::with_capacity(lease.rows.len());
        let mut failed = Vec::new();
        for row in &lease.rows {
            match route_stored(self.router.as_ref(), row, lease.now) {
                Ok(mut r) => {
                    new_rows.append(&mut r);
                    forwarded.push(row.id);
                }
                Err(f) => failed.push((row.id, row.attempts, f)),
            }
        }
        // Not relaxed: these layer 4 rows are what the publisher sends (see `relax_commit`).
        let txn = self.db.begin().await?;
        let ours =
            settle_leased::<translated::Entity, _, _>(&txn, &lease, &forwarded, &failed, &self.settings)
                .await?;
        new_rows.retain(|r| r.parent_id.is_some_and(|p| ours.contains(&p)));
        insert_rows::<entity::Entity, _>(&txn, new_rows).await?;
        txn.commit().await?;
        Ok(lease.rows.len())
    }
}
