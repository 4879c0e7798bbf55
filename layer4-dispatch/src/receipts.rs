//! Receipts from the core app: `acknowledged` (or `rejected`) on the layer 4 rows they name.
//! An unknown, repeated or malformed receipt is logged and dropped; it changes nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sea_orm::sea_query::{BinOper, Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect, TransactionTrait, Value,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use layer1_ingest::table::transition;
use layer1_ingest::{Direction, Status, Transition, Wakeup};

use crate::entity::{Column, Entity};
use crate::transport::{Delivery, Transport};
use crate::wire::{Receipt, ReceiptStatus};

/// What a batch of receipts did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiptOutcome {
    /// Rows moved to `acknowledged` or `rejected`.
    pub applied: usize,
    /// Receipts naming no upstream layer 4 row.
    pub unknown: usize,
    /// Receipts for rows already final (a repeat, or too late).
    pub repeated: usize,
}

/// Applies receipts in one transaction. Rows not in a status that may become the receipt's
/// verdict are left alone and counted as repeated.
pub async fn apply_receipts(
    db: &DatabaseConnection,
    receipts: &[Receipt],
) -> layer1_ingest::Result<ReceiptOutcome> {
    let mut out = ReceiptOutcome::default();
    if receipts.is_empty() {
        return Ok(out);
    }
    let now = Utc::now();
    let txn = db.begin().await?;
    let ids: Vec<Uuid> = receipts.iter().map(|r| r.message_id).collect();
    let current: HashMap<Uuid, Status> = Entity::find()
        .select_only()
        .column(Column::Id)
        .column(Column::Status)
        .filter(Column::Id.is_in(ids))
        .filter(Column::Direction.eq(Direction::Upstream))
        .into_tuple::<(Uuid, Status)>()
        .all(&txn)
        .await?
        .into_iter()
        .collect();
    let mut acked = Vec::new();
    for r in receipts {
        let to = match r.status {
            ReceiptStatus::Acknowledged => Status::Acknowledged,
            ReceiptStatus::Rejected => Status::Rejected,
        };
        match current.get(&r.message_id) {
            None => {
                out.unknown += 1;
                tracing::warn!(message_id = %r.message_id, "receipt for an unknown message dropped");
            }
            Some(from) if !from.can_become(to) || acked.contains(&r.message_id) => {
                out.repeated += 1;
                tracing::info!(message_id = %r.message_id, status = %from, "repeated receipt dropped");
            }
            Some(_) if to == Status::Acknowledged => acked.push(r.message_id),
            Some(from) => {
                // The core app's text, bounded and without control characters (PostgreSQL text
                // cannot hold NUL, and one bad receipt must not block the batch).
                let given: String = r
                    .reason
                    .as_deref()
                    .unwrap_or("no reason given")
                    .chars()
                    .filter(|c| !c.is_control() || *c == '\n')
                    .take(1000)
                    .collect();
                let reason = if *from == Status::Dead {
                    format!("receiver rejected (late receipt, after the row was dead): {given}")
                } else {
                    format!("receiver rejected: {given}")
                };
                out.applied +=
                    transition::<Entity, _>(&txn, &[r.message_id], &Transition::to(to).because(reason), now)
                        .await? as usize;
            }
        }
    }
    let late: Vec<Uuid> = acked.iter().copied().filter(|id| current.get(id) == Some(&Status::Dead)).collect();
    if !late.is_empty() {
        // A late receipt on a row that was given up: applied, and the row keeps why it had been
        // given up, with when the receipt came.
        let note = format!("acknowledged by a late receipt at {}; before that: ", now.to_rfc3339());
        let res = Entity::update_many()
            .col_expr(Column::Status, Expr::value(Status::Acknowledged.as_str()))
            .col_expr(Column::AcknowledgedAt, Expr::value(now))
            .col_expr(Column::NextAttemptAt, Expr::value(Value::ChronoDateTimeUtc(None)))
            .col_expr(Column::UpdatedAt, Expr::value(now))
            .col_expr(
                Column::LastError,
                Expr::val(note).binary(BinOper::Custom("||"), Expr::cust("COALESCE(last_error, '-')")),
            )
            .filter(Column::Id.is_in(late.iter().copied()))
            .filter(Column::Status.eq(Status::Dead))
            .exec(&txn)
            .await?;
        out.applied += res.rows_affected as usize;
        out.repeated += late.len() - res.rows_affected as usize;
        acked.retain(|id| !late.contains(id));
        tracing::info!(count = late.len(), "late receipts applied to rows that were dead");
    }
    if !acked.is_empty() {
        let res = Entity::update_many()
            .col_expr(Column::Status, Expr::value(Status::Acknowledged.as_str()))
            .col_expr(Column::AcknowledgedAt, Expr::value(now))
            .col_expr(Column::NextAttemptAt, Expr::value(Value::ChronoDateTimeUtc(None)))
            .col_expr(Column::UpdatedAt, Expr::value(now))
            .filter(Column::Id.is_in(acked.iter().copied()))
            .filter(Column::Status.is_in(Status::sources_of(Status::Acknowledged)))
            .exec(&txn)
            .await?;
        out.applied += res.rows_affected as usize;
        out.repeated += acked.len() - res.rows_affected as usize;
    }
    txn.commit().await?;
    layer1_ingest::metrics::count("receipts", "applied", out.applied as u64);
    layer1_ingest::metrics::count("receipts", "unknown", out.unknown as u64);
    layer1_ingest::metrics::count("receipts", "repeated", out.repeated as u64);
    Ok(out)
}

/// Consumes the receipts queue until cancelled, applying receipts in batches and acking each
/// delivery only after its batch is committed (a crash before that redelivers them; applying
/// twice changes nothing).
pub struct ReceiptConsumer {
    db: DatabaseConnection,
    transport: Arc<dyn Transport>,
    queue: String,
    batch: usize,
    settled: Wakeup,
}

impl ReceiptConsumer {
    /// A consumer of `queue`; `settled` is woken after every applied batch.
    pub fn new(
        db: DatabaseConnection,
        transport: Arc<dyn Transport>,
        queue: String,
        batch: usize,
        settled: Wakeup,
    ) -> Self {
        Self { db, transport, queue, batch: batch.max(1), settled }
    }

    /// Runs until `cancel` fires; resubscribes with a pause when the subscription breaks.
    pub async fn run(mut self, cancel: CancellationToken) {
        let prefetch = u16::try_from(self.batch * 2).unwrap_or(u16::MAX);
        let (transport, queue, batch) = (self.transport.clone(), self.queue.clone(), self.batch);
        crate::transport::consume_batches(transport.as_ref(), &queue, batch, prefetch, &cancel, &mut self)
            .await;
    }
}

#[async_trait::async_trait]
impl crate::transport::BatchHandler for ReceiptConsumer {
    async fn handle(&mut self, batch: Vec<Delivery>) {
        let mut receipts = Vec::with_capacity(batch.len());
        for d in &batch {
            match serde_json::from_slice::<Receipt>(&d.body) {
                Ok(r) => receipts.push(r),
                Err(e) => {
                    layer1_ingest::metrics::count("receipts", "malformed", 1);
                    tracing::warn!(error = %e, bytes = d.body.len(), "malformed receipt dropped");
                }
            }
        }
        match apply_receipts(&self.db, &receipts).await {
            Ok(out) => {
                tracing::debug!(?out, "receipts applied");
                if let Err(e) = crate::transport::ack_all(batch).await {
                    tracing::warn!(error = %e, "could not ack receipts; they will be redelivered and dropped as repeats");
                }
                self.settled.wake();
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not record receipts; handing them back");
                for d in batch {
                    let _ = d.nack(true).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
