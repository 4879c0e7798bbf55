//! The route stage: `layer3_translated` (just_in) -> `layer4_dispatch` rows, one per
//! destination (the outbox). A batch is claimed under a lease, routed with no transaction open
//! (a [`Router`] is user code), and written in one short transaction.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use layer1_ingest::{Advance, AdvanceStage, Direction, Failure, Rejection, Status};
use layer3_translate::entity as translated;

use crate::entity;
use crate::route::Router;

/// Claims due layer 3 rows and writes their layer 4 rows: `RouteStage::new(db, router, settings)`.
pub type RouteStage = AdvanceStage<Routing>;

/// Layer 4's step: a core message to one outbox row per destination.
pub struct Routing(Arc<dyn Router>);

impl From<Arc<dyn Router>> for Routing {
    fn from(router: Arc<dyn Router>) -> Self {
        Self(router)
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
    let body = layer1_ingest::json::Value::parse(row.body.as_bytes()).map_err(|e| {
        Failure::Rejected(Rejection::whole("json", format!("stored core message is not JSON: {e}")))
    })?;
    dispatch_rows(router, row, &body, now)
}

#[async_trait]
impl Advance for Routing {
    type From = translated::Entity;
    type To = entity::Entity;

    fn name(&self) -> &'static str {
        "route"
    }

    /// Never: these layer 4 rows are what the publisher sends (see `relax_commit`).
    fn relaxed_commit(&self) -> bool {
        false
    }

    async fn children(
        &self,
        row: &translated::Model,
        now: DateTime<Utc>,
    ) -> Result<Vec<entity::Model>, Failure> {
        route_stored(self.0.as_ref(), row, now)
    }
}
