//! The publish stage: `layer4_dispatch` rows -> the broker. A row becomes `queued` only after
//! the broker confirmed it. Publishing cannot share a database transaction, so a claim is a
//! lease: the row's `next_attempt_at` moves to the lease's end and its `attempts` counts the
//! publish; a worker that dies mid-publish lets the lease expire and the row is published again
//! (at-least-once; the receiver drops the duplicate by `hub-message-id`). A `queued` row whose
//! ack deadline passes without a receipt is published again the same way, until
//! `max_attempts`, then `dead`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, TransactionTrait};
use tracing::instrument;

use layer1_ingest::table::{claim_due_where, transition};
use layer1_ingest::{Direction, Stage, StageSettings, Status, Transition};

use crate::entity::{self, Column, Entity};
use crate::transport::{OutgoingMessage, Transport, TransportError};
use crate::wire::{self, HubHeaders};

/// Publisher settings.
#[derive(Debug, Clone)]
pub struct PublishSettings {
    /// How long a claimed row is ours before another worker may publish it again.
    pub lease: Duration,
    /// How long a `queued` row waits for its receipt before it is published again.
    pub ack_timeout: Duration,
    /// The queue receipts go to (`hub-receipt-to`).
    pub receipts_queue: String,
    /// The queue the core app sends downstream messages to (none: no intake).
    pub inbound_queue: Option<String>,
}

impl Default for PublishSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(60),
            ack_timeout: Duration::from_secs(300),
            receipts_queue: "hub.receipts".into(),
            inbound_queue: None,
        }
    }
}

/// Publishes due layer 4 rows (new, failed and due for retry, or queued past their ack
/// deadline), and rows handed over directly by the stage that wrote them.
pub struct PublishStage {
    db: DatabaseConnection,
    transport: Arc<dyn Transport>,
    settings: StageSettings,
    publish: PublishSettings,
    handoff: Option<Arc<std::sync::Mutex<Handoff>>>,
    /// Handoff batches since the last claim: the claim path (ordered rows, retries, republishes
    /// after the ack timeout) gets its turn at least every few batches.
    handoffs_in_a_row: std::sync::atomic::AtomicU32,
}

/// The receiving end of a direct handoff (see [`handoff`]).
pub type Handoff = tokio::sync::mpsc::Receiver<Vec<entity::Model>>;

/// A channel for rows written already leased (`attempts` 1, `next_attempt_at` = the lease's
/// end) by a stage in the same process: the publisher takes them without a claim query and a
/// lease update. If they are never taken (the process dies), the lease ends and the ordinary
/// claim publishes them. `capacity` is in batches.
pub fn handoff(capacity: usize) -> (tokio::sync::mpsc::Sender<Vec<entity::Model>>, Handoff) {
    tokio::sync::mpsc::channel(capacity.max(1))
}

/// Per-key ordering: a row with an ordering key waits while an earlier row (by layer 1 arrival,
/// then id) of the same destination and key is not yet confirmed (`just_in` or `failed`). So at
/// most one message per key is in flight, and a retry cannot be overtaken by its successor.
const EARLIER_OF_KEY_UNCONFIRMED: &str = "EXISTS (SELECT 1 FROM layer4_dispatch prior \
     WHERE prior.destination = layer4_dispatch.destination \
     AND prior.ordering_key = layer4_dispatch.ordering_key \
     AND prior.direction = 'upstream' \
     AND prior.status IN ('just_in', 'failed') \
     AND (prior.origin_id < layer4_dispatch.origin_id \
          OR (prior.origin_id = layer4_dispatch.origin_id AND prior.id < layer4_dispatch.id)))";

/// Per source, the oldest origin (layer 1 id) of a message still open below layer 4: not yet
/// rejected, dead or forwarded in layers 1 to 3. Messages are in exactly one layer at a time
/// and each move is one transaction, so one statement sees every open message once.
///
/// Per-key ordering needs it because layer 4 rows are not created in layer 1 order: batches of
/// the ingest-side stage run side by side, and a record that failed transiently is retried
/// later. A message cannot be overtaken by one it has not met yet.
async fn open_fronts(txn: &sea_orm::DatabaseTransaction) -> layer1_ingest::Result<Vec<(String, uuid::Uuid)>> {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    let backend = txn.get_database_backend();
    // PostgreSQL before 16 has no min(uuid); the text form sorts like the bytes.
    let first = if backend == DbBackend::Postgres { "min(origin::text)" } else { "min(origin)" };
    let sql = format!(
        "SELECT source, {first} AS first_open FROM ( \
         SELECT source, id AS origin FROM layer1_raw WHERE status IN ('just_in', 'failed') AND direction = 'upstream' \
         UNION ALL SELECT source, origin_id FROM layer2_normalized WHERE status IN ('just_in', 'failed') AND direction = 'upstream' \
         UNION ALL SELECT source, origin_id FROM layer3_translated WHERE status IN ('just_in', 'failed') AND direction = 'upstream' \
         ) open_messages GROUP BY source"
    );
    let rows = txn.query_all_raw(Statement::from_string(backend, sql)).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let source: String = r.try_get("", "source")?;
        let first_open = if backend == DbBackend::Postgres {
            let text: String = r.try_get("", "first_open")?;
            text.parse()
                .map_err(|e| layer1_ingest::Error::InvalidInput(format!("origin id `{text}`: {e}")))?
        } else {
            r.try_get::<uuid::Uuid>("", "first_open")?
        };
        out.push((source, first_open));
    }
    Ok(out)
}

/// Whether any row with an ordering key is waiting to be published (the partial ordering
/// index answers it); only then is [`open_fronts`] worth its query.
async fn ordered_rows_due(
    txn: &sea_orm::DatabaseTransaction,
    now: chrono::DateTime<Utc>,
) -> layer1_ingest::Result<bool> {
    use sea_orm::{PaginatorTrait, QuerySelect};
    let n = Entity::find()
        .select_only()
        .column(Column::Id)
        .filter(Column::OrderingKey.is_not_null())
        .filter(Column::Direction.eq(Direction::Upstream))
        .filter(Column::Status.is_in([Status::JustIn, Status::Failed, Status::Queued]))
        .filter(Column::NextAttemptAt.lte(now))
        .limit(1)
        .count(txn)
        .await?;
    Ok(n > 0)
}

/// How long rows wait after the broker could not be reached before they are tried again.
const RECONNECT_PAUSE: Duration = Duration::from_secs(2);

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl PublishStage {
    /// A publisher over `db` and `transport`.
    pub fn new(
        db: DatabaseConnection,
        transport: Arc<dyn Transport>,
        settings: StageSettings,
        publish: PublishSettings,
    ) -> Self {
        Self { db, transport, settings, publish, handoff: None, handoffs_in_a_row: Default::default() }
    }

    /// Also takes rows handed over directly (shared by every copy of the stage).
    pub fn with_handoff(mut self, rx: Arc<std::sync::Mutex<Handoff>>) -> Self {
        self.handoff = Some(rx);
        self
    }

    fn handed_off(&self) -> Option<Vec<entity::Model>> {
        use std::sync::atomic::Ordering;
        let rx = self.handoff.as_ref()?;
        if self.handoffs_in_a_row.fetch_add(1, Ordering::Relaxed) >= 4 {
            self.handoffs_in_a_row.store(0, Ordering::Relaxed);
            return None;
        }
        let mut rx = rx.lock().unwrap_or_else(|p| p.into_inner());
        rx.try_recv().ok()
    }

    fn outgoing(&self, row: &entity::Model) -> OutgoingMessage {
        let headers = HubHeaders {
            message_id: row.id,
            origin_id: row.origin_id,
            source: row.source.clone(),
            source_ref: row.source_ref.clone(),
            message_type: row.message_type.clone(),
            type_version: row.type_version.clone(),
            receipt_to: self.publish.receipts_queue.clone(),
            traceparent: Some(wire::traceparent(row.origin_id, row.id)),
        }
        .to_headers();
        OutgoingMessage {
            queue: row.destination.clone(),
            dedup_id: row.id.to_string(),
            ordering_key: row.ordering_key.clone(),
            headers,
            body: row.body.clone().into_bytes(),
        }
    }
}

#[async_trait]
impl Stage for PublishStage {
    fn name(&self) -> &'static str {
        "publish"
    }

    #[instrument(skip_all, name = "publish_batch")]
    async fn run_batch(&self) -> layer1_ingest::Result<usize> {
        if let Some(rows) = self.handed_off() {
            let n = rows.len();
            self.publish_leased(&rows).await?;
            return Ok(n);
        }
        let now = Utc::now();
        let max = self.settings.max_attempts;
        let txn = self.db.begin().await?;
        let mut settled_before = Condition::all();
        let fronts = if ordered_rows_due(&txn, now).await? { open_fronts(&txn).await? } else { Vec::new() };
        for (source, first_open) in fronts {
            // Ordered rows of `source` that entered layer 1 after its oldest still-open message
            // wait: that message may yet become an earlier one of their key.
            settled_before = settled_before
                .add(Condition::any().add(Column::Source.ne(source)).add(Column::OriginId.lt(first_open)));
        }
        let in_order = Condition::any().add(Column::OrderingKey.is_null()).add(
            Condition::all()
                .add(Condition::all().not().add(Expr::cust(EARLIER_OF_KEY_UNCONFIRMED)))
                .add(settled_before),
        );
        let rows = claim_due_where::<Entity, _>(
            &txn,
            Direction::Upstream,
            &[Status::JustIn, Status::Failed, Status::Queued],
            now,
            self.settings.batch_size,
            in_order,
        )
        .await?;
        if rows.is_empty() {
            txn.commit().await?;
            return Ok(0);
        }
        let (exhausted, live): (Vec<_>, Vec<_>) = rows.iter().partition(|r| r.attempts >= max);
        for r in &exhausted {
            let why = match r.status {
                Status::Queued => format!("no receipt after {} publishes", r.attempts),
                _ => format!(
                    "gave up after {} attempts; last error: {}",
                    r.attempts,
                    r.last_error.as_deref().unwrap_or("-")
                ),
            };
            transition::<Entity, _>(&txn, &[r.id], &Transition::to(Status::Dead).because(why), now).await?;
        }
        // A lost lease only means the row is published again under the same id.
        layer1_ingest::table::relax_commit(&txn).await?;
        let live_ids: Vec<_> = live.iter().map(|r| r.id).collect();
        if !live_ids.is_empty() {
            // The lease: ours until `now + lease`; the publish counts as an attempt.
            Entity::update_many()
                .col_expr(Column::Attempts, Expr::col(Column::Attempts).add(1i32))
                .col_expr(Column::NextAttemptAt, Expr::value(now + chrono(self.publish.lease)))
                .col_expr(Column::UpdatedAt, Expr::value(now))
                .filter(Column::Id.is_in(live_ids.iter().copied()))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        // In memory now as in the table: this publish is counted.
        let live: Vec<entity::Model> =
            live.into_iter().map(|r| entity::Model { attempts: r.attempts + 1, ..r.clone() }).collect();
        self.publish_leased(&live).await?;
        Ok(rows.len())
    }
}

impl PublishStage {
    /// Publishes rows this worker holds a lease on (their `attempts` already count this
    /// publish) and records the outcomes in one transaction.
    async fn publish_leased(&self, live: &[entity::Model]) -> layer1_ingest::Result<()> {
        if live.is_empty() {
            return Ok(());
        }
        let max = self.settings.max_attempts;
        let msgs: Vec<OutgoingMessage> = live.iter().map(|r| self.outgoing(r)).collect();
        let results = self.transport.publish(&msgs).await;

        let done = Utc::now();
        let txn = self.db.begin().await?;
        let mut confirmed = Vec::with_capacity(live.len());
        let mut unreachable = Vec::new();
        for (row, res) in live.iter().zip(results.into_iter().chain(std::iter::repeat_with(|| {
            Err(TransportError::Connection("transport returned fewer results than messages".into()))
        }))) {
            match res {
                Ok(()) => confirmed.push(row.id),
                // The broker is away: whether it got the message is unknown. Not the message's
                // fault, so the attempt is not counted; the row keeps its status and comes due
                // again after a pause (a duplicate is dropped by the receiver).
                Err(TransportError::Connection(e)) => {
                    tracing::warn!(message_id = %row.id, error = %e, "broker unreachable; will publish again");
                    unreachable.push(row.id);
                }
                Err(e) => {
                    let attempts = row.attempts;
                    let t = if !e.is_transient() {
                        Transition::to(Status::Rejected).because(e.to_string())
                    } else if attempts >= max {
                        Transition::to(Status::Dead)
                            .because(format!("{e} (gave up after {attempts} attempts)"))
                    } else {
                        Transition::to(Status::Failed)
                            .because(e.to_string())
                            .due_at(done + self.settings.backoff(attempts))
                    };
                    tracing::warn!(message_id = %row.id, error = %e, status = %t.to, "publish failed");
                    transition::<Entity, _>(&txn, &[row.id], &t, done).await?;
                }
            }
        }
        if !unreachable.is_empty() {
            Entity::update_many()
                .col_expr(Column::Attempts, Expr::col(Column::Attempts).sub(1i32))
                .col_expr(Column::NextAttemptAt, Expr::value(done + chrono(RECONNECT_PAUSE)))
                .col_expr(Column::UpdatedAt, Expr::value(done))
                .filter(Column::Id.is_in(unreachable.iter().copied()))
                .filter(Column::Status.is_in(Status::sources_of(Status::Queued)))
                .exec(&txn)
                .await?;
        }
        if !confirmed.is_empty() {
            // Only rows still publishable move: one whose receipt already arrived stays
            // acknowledged.
            Entity::update_many()
                .col_expr(Column::Status, Expr::value(Status::Queued.as_str()))
                .col_expr(Column::QueuedAt, Expr::value(done))
                .col_expr(Column::NextAttemptAt, Expr::value(done + chrono(self.publish.ack_timeout)))
                .col_expr(Column::UpdatedAt, Expr::value(done))
                .filter(Column::Id.is_in(confirmed.iter().copied()))
                .filter(Column::Status.is_in(Status::sources_of(Status::Queued)))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        layer1_ingest::metrics::count("publish", "confirmed", confirmed.len() as u64);
        layer1_ingest::metrics::count("publish", "unreachable", unreachable.len() as u64);
        layer1_ingest::metrics::count(
            "publish",
            "failed",
            (live.len() - confirmed.len() - unreachable.len()) as u64,
        );
        tracing::debug!(published = confirmed.len(), leased = live.len(), "published");
        Ok(())
    }
}
