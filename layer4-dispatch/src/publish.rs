//! The publish stage: `layer4_dispatch` rows -> the broker. A row becomes `queued` only after
//! the broker confirmed it. Publishing cannot share a database transaction, so a claim is a
//! lease: the row's `next_attempt_at` moves to the lease's end and its `attempts` counts the
//! publish; a worker that dies mid-publish lets the lease expire and the row is published again
//! (at-least-once; the receiver drops the duplicate by `hub-message-id`).
//!
//! A `queued` row whose ack deadline passes without a receipt is published again, with the
//! deadline doubling each time, but not while its destination queue still holds undelivered
//! messages (where the transport can tell): the receiver is then behind or away, and another
//! copy would only lengthen the queue it is waiting on. Waiting for a receipt never kills a
//! message: past `max_attempts` publishes the row stays `queued`, its `last_error` says how long
//! it has waited, and the condition is logged and counted as an alert. Rows with an ordering
//! key are claimed by the `ordered` module and published in per-key chains.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, TransactionTrait,
};
use tracing::instrument;

use layer1_ingest::table::{claim_due, claim_due_where, transition};
use layer1_ingest::{Direction, Stage, StageSettings, Status, Transition};

use crate::entity::{self, Column, Entity};
use crate::outage::Outage;
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
    /// The queue delivery receipts of downstream messages go to, for targets that name none.
    pub delivery_receipts_queue: String,
}

impl Default for PublishSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(60),
            ack_timeout: Duration::from_secs(300),
            receipts_queue: "hub.receipts".into(),
            inbound_queue: None,
            delivery_receipts_queue: "hub.delivery-receipts".into(),
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
    /// Where the next ordered claim starts looking for keys.
    key_cursor: crate::ordered::KeyCursor,
    /// Lasting conditions, logged by their changes (see [`Outage`]). A hub's copies of the
    /// stage share one instance, so an outage is logged once per hub; another hub in the same
    /// process keeps its own, and its recovery does not end ours in the log.
    conditions: Conditions,
}

/// The conditions a publisher logs by their changes.
struct Conditions {
    /// The broker could not be reached.
    broker_away: Outage,
    /// A destination queue refused messages for being full (nobody, or too slow, consuming it).
    queue_full: Outage,
    /// Messages have waited past `max_attempts` ack timeouts for their receipt.
    receipts_overdue: Outage,
}

impl Default for Conditions {
    fn default() -> Self {
        Self {
            broker_away: Outage::new("broker unreachable"),
            queue_full: Outage::new("destination queue full"),
            receipts_overdue: Outage::new("receipts overdue"),
        }
    }
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

/// How long rows wait after the broker could not be reached before they are tried again.
const RECONNECT_PAUSE: Duration = Duration::from_secs(2);

/// The longest wait for a receipt between two publishes of one message, however many there were
/// (unless the ack timeout itself is longer).
const MAX_ACK_WAIT: Duration = Duration::from_secs(3600);

/// How `last_error` of a row whose receipt is overdue begins: the audit desk counts these rows
/// by it (`hub_worker::audit::stats`), so it is written in one place.
pub const RECEIPT_OVERDUE: &str = "no receipt within";

/// How long a queue-depth read may take before the republish decision goes ahead without it.
const DEPTH_READ_TIMEOUT: Duration = Duration::from_secs(5);

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// What became of one claimed row.
enum Outcome {
    Confirmed,
    /// The broker was away, or the destination queue full: the attempt is given back.
    Unreachable,
    /// Not sent: an earlier row of its key was not confirmed. Its lease is given back.
    NotSent,
    /// The broker refused it: a retry, a rejection or the end.
    Failed(Transition),
}

impl PublishStage {
    /// A publisher over `db` and `transport`.
    pub fn new(
        db: DatabaseConnection,
        transport: Arc<dyn Transport>,
        settings: StageSettings,
        publish: PublishSettings,
    ) -> Self {
        Self {
            db,
            transport,
            settings,
            publish,
            handoff: None,
            handoffs_in_a_row: Default::default(),
            key_cursor: Default::default(),
            conditions: Default::default(),
        }
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
            message_id: row.id.into(),
            origin_id: row.origin_id.into(),
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

    /// How long to wait for the receipt after publish number `attempts`: the ack timeout,
    /// doubled for each publish before it, capped.
    fn ack_wait(&self, attempts: i32) -> chrono::Duration {
        let shift = attempts.clamp(1, 16) - 1;
        let cap = MAX_ACK_WAIT.max(self.publish.ack_timeout);
        chrono(self.publish.ack_timeout.saturating_mul(1u32 << shift).min(cap))
    }

    /// Rows past their ack deadline: which to publish again now. A destination whose queue
    /// still holds undelivered messages gets no new copies; its rows wait one more ack timeout.
    async fn overdue_to_republish(
        &self,
        txn: &DatabaseTransaction,
        now: chrono::DateTime<Utc>,
        overdue: Vec<entity::Model>,
    ) -> layer1_ingest::Result<Vec<entity::Model>> {
        if overdue.is_empty() {
            return Ok(overdue);
        }
        let mut destinations: Vec<&str> = overdue.iter().map(|r| r.destination.as_str()).collect();
        destinations.sort_unstable();
        destinations.dedup();
        let mut backed_up = std::collections::HashMap::new();
        for d in destinations {
            let depth = tokio::time::timeout(DEPTH_READ_TIMEOUT, self.transport.queue_depth(d)).await;
            match depth {
                Ok(Ok(Some(n))) if n > 0 => {
                    backed_up.insert(d.to_owned(), n);
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(queue = d, error = %e, "queue depth unknown; republishing"),
                Err(_) => tracing::debug!(queue = d, "queue depth read timed out; republishing"),
            }
        }
        let max = self.settings.max_attempts;
        let (held, go): (Vec<_>, Vec<_>) =
            overdue.into_iter().partition(|r| backed_up.contains_key(&r.destination));
        // The alert threshold is where the old policy gave messages up: `max_attempts` ack
        // timeouts since the row was written, however many copies went out meanwhile.
        let alert_after =
            chrono(self.publish.ack_timeout.saturating_mul(u32::try_from(Ord::max(max, 1)).unwrap_or(1)));
        let long_waiting: Vec<&entity::Model> =
            held.iter().chain(go.iter()).filter(|r| now - r.created_at >= alert_after).collect();
        if long_waiting.is_empty() {
            self.conditions.receipts_overdue.cleared();
        }
        if let Some(oldest) = long_waiting.iter().filter_map(|r| r.queued_at).min() {
            // The alert: logged as a condition, counted, and written on the rows, where the audit
            // desk shows it. The messages are kept: a receipt is applied whenever it comes.
            layer1_ingest::metrics::count("publish", "receipt_overdue", long_waiting.len() as u64);
            self.conditions.receipts_overdue.occurred(
                long_waiting.len() as u64,
                &format!("no receipt within {max} ack timeouts; oldest last published at {oldest}"),
            );
            let ids: Vec<_> = long_waiting.iter().map(|r| r.id).collect();
            Entity::update_many()
                .col_expr(
                    Column::LastError,
                    Expr::value(format!(
                        "{RECEIPT_OVERDUE} {max} ack timeouts (checked {now}); still waiting: published again \
                         with backoff, and only while the destination queue holds no undelivered messages"
                    )),
                )
                .filter(Column::Id.is_in(ids))
                .exec(txn)
                .await?;
        }
        if !held.is_empty() {
            layer1_ingest::metrics::count("publish", "republish_held", held.len() as u64);
            for (q, n) in &backed_up {
                tracing::debug!(queue = %q, undelivered = n, "receipts overdue but the queue is not drained; not publishing copies");
            }
            Entity::update_many()
                .col_expr(Column::NextAttemptAt, Expr::value(now + chrono(self.publish.ack_timeout)))
                .col_expr(Column::UpdatedAt, Expr::value(now))
                .filter(Column::Id.is_in(held.iter().map(|r| r.id)))
                .filter(Column::Status.eq(Status::Queued))
                .exec(txn)
                .await?;
        }
        Ok(go)
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
            self.publish_chains(rows.into_iter().map(|r| vec![r]).collect()).await?;
            return Ok(n);
        }
        let now = Utc::now();
        let max = self.settings.max_attempts;
        let batch = self.settings.batch_size;
        let txn = self.db.begin().await?;
        let unordered = claim_due_where::<Entity, _>(
            &txn,
            Direction::Upstream,
            &[Status::JustIn, Status::Failed],
            now,
            batch,
            sea_orm::Condition::all().add(Column::OrderingKey.is_null()),
        )
        .await?;
        let overdue =
            claim_due::<Entity, _>(&txn, Direction::Upstream, &[Status::Queued], now, batch).await?;
        // Ordered rows: up to four batches' worth in chains over at most half a batch of keys
        // (a key's rows go out one wave per confirm, so deeper chains cost round trips, not
        // claims; the other half of the keys is left for a publisher beside this one).
        let rows = usize::try_from(batch).unwrap_or(usize::MAX);
        let ordered =
            crate::ordered::claim(&txn, now, rows.saturating_mul(4), (rows / 2).max(1), &self.key_cursor)
                .await?;
        let claimed = unordered.len() + overdue.len() + ordered.iter().map(Vec::len).sum::<usize>();
        if claimed == 0 {
            txn.commit().await?;
            return Ok(0);
        }
        let republish = self.overdue_to_republish(&txn, now, overdue).await?;

        // Rows that failed to publish too often end here. A key's head that ends `dead` stops
        // holding up its key; the rows behind it go in a later claim.
        let mut chains: Vec<Vec<entity::Model>> = Vec::with_capacity(claimed);
        let mut exhausted = Vec::new();
        for r in unordered {
            if r.attempts >= max { exhausted.push(r) } else { chains.push(vec![r]) }
        }
        for c in ordered {
            if c[0].attempts >= max {
                exhausted.push(c.into_iter().next().expect("chains are never empty"));
            } else {
                chains.push(c);
            }
        }
        chains.extend(republish.into_iter().map(|r| vec![r]));
        for r in &exhausted {
            let why = format!(
                "gave up after {} attempts; last error: {}",
                r.attempts,
                r.last_error.as_deref().unwrap_or("-")
            );
            transition::<Entity, _>(&txn, &[r.id], &Transition::to(Status::Dead).because(why), now).await?;
        }
        // A lost lease only means the row is published again under the same id.
        layer1_ingest::table::relax_commit(&txn).await?;
        let live_ids: Vec<_> = chains.iter().flatten().map(|r| r.id).collect();
        if !live_ids.is_empty() {
            // The lease: ours until `now + lease`; the publish counts as an attempt.
            Entity::update_many()
                .col_expr(Column::Attempts, Expr::col(Column::Attempts).add(1i32))
                .col_expr(Column::NextAttemptAt, Expr::value(now + chrono(self.publish.lease)))
                .col_expr(Column::UpdatedAt, Expr::value(now))
                .filter(Column::Id.is_in(live_ids))
                // A receipt may have settled a row since it was read: it stays as it is.
                .filter(Column::Status.is_in([Status::JustIn, Status::Failed, Status::Queued]))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        // In memory now as in the table: this publish is counted.
        for r in chains.iter_mut().flatten() {
            r.attempts += 1;
        }
        self.publish_chains(chains).await?;
        Ok(claimed)
    }
}

impl PublishStage {
    /// Publishes rows this worker holds a lease on (their `attempts` already count this
    /// publish), each chain in order: its first rows together in one wave, then each next row
    /// as soon as the one before it is confirmed; a chain stops at a row that is not. The
    /// outcomes are recorded in one transaction.
    async fn publish_chains(&self, chains: Vec<Vec<entity::Model>>) -> layer1_ingest::Result<()> {
        if chains.is_empty() {
            return Ok(());
        }
        let mut outcomes: Vec<(&entity::Model, Outcome)> = Vec::new();
        let mut live: Vec<&[entity::Model]> =
            chains.iter().map(Vec::as_slice).filter(|c| !c.is_empty()).collect();
        let max = self.settings.max_attempts;
        while !live.is_empty() {
            let wave: Vec<OutgoingMessage> = live.iter().map(|c| self.outgoing(&c[0])).collect();
            let results = self.transport.publish(&wave).await;
            let failed_at = Utc::now();
            let mut next = Vec::with_capacity(live.len());
            for (chain, res) in
                live.into_iter().zip(results.into_iter().chain(std::iter::repeat_with(|| {
                    Err(TransportError::Connection("transport returned fewer results than messages".into()))
                })))
            {
                let row = &chain[0];
                let rest = &chain[1..];
                let outcome = match res {
                    Ok(()) => Outcome::Confirmed,
                    // The broker is away: whether it got the message is unknown. Not the
                    // message's fault, so the attempt is not counted; the row keeps its status
                    // and comes due again after a pause (a duplicate is dropped by the receiver).
                    Err(TransportError::Connection(e)) => {
                        tracing::debug!(message_id = %row.id, error = %e, "broker unreachable; will publish again");
                        self.conditions.broker_away.occurred(1, &e);
                        Outcome::Unreachable
                    }
                    // Back-pressure: the queue holds all it may, and nothing was queued. As
                    // with an outage, the row waits (attempt not counted, status kept) and is
                    // tried again after the pause: a queue nobody drains must not kill messages.
                    Err(e @ TransportError::QueueFull { .. }) => {
                        tracing::debug!(message_id = %row.id, error = %e, "destination queue full; will publish again");
                        self.conditions.queue_full.occurred(1, &e);
                        Outcome::Unreachable
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
                                .due_at(failed_at + self.settings.backoff(attempts))
                        };
                        // A rejection or a death is logged at WARN when it is recorded
                        // (`transition`), with the row's source.
                        if !t.to.is_given_up() {
                            tracing::warn!(message_id = %row.id, error = %e, status = %t.to, "publish failed");
                        }
                        Outcome::Failed(t)
                    }
                };
                if matches!(outcome, Outcome::Confirmed) {
                    if !rest.is_empty() {
                        next.push(rest);
                    }
                } else {
                    outcomes.extend(rest.iter().map(|r| (r, Outcome::NotSent)));
                }
                outcomes.push((row, outcome));
            }
            live = next;
        }
        self.record(&outcomes).await
    }

    /// Records what publishing did, in one transaction.
    async fn record(&self, outcomes: &[(&entity::Model, Outcome)]) -> layer1_ingest::Result<()> {
        let done = Utc::now();
        let txn = self.db.begin().await?;
        let mut confirmed: std::collections::BTreeMap<i32, Vec<uuid::Uuid>> = Default::default();
        let (mut unreachable, mut not_sent, mut n_confirmed, mut n_failed) = (Vec::new(), Vec::new(), 0, 0);
        for (row, outcome) in outcomes {
            match outcome {
                Outcome::Confirmed => {
                    n_confirmed += 1;
                    confirmed.entry(row.attempts).or_default().push(row.id);
                }
                Outcome::Unreachable => unreachable.push(row.id),
                Outcome::NotSent => not_sent.push(row.id),
                Outcome::Failed(t) => {
                    n_failed += 1;
                    transition::<Entity, _>(&txn, &[row.id], t, done).await?;
                }
            }
        }
        let give_back = |ids: Vec<uuid::Uuid>, due: chrono::DateTime<Utc>| {
            Entity::update_many()
                .col_expr(Column::Attempts, Expr::col(Column::Attempts).sub(1i32))
                .col_expr(Column::NextAttemptAt, Expr::value(due))
                .col_expr(Column::UpdatedAt, Expr::value(done))
                .filter(Column::Id.is_in(ids))
                .filter(Column::Status.is_in(Status::sources_of(Status::Queued)))
        };
        let n_unreachable = unreachable.len();
        if !unreachable.is_empty() {
            give_back(unreachable, done + chrono(RECONNECT_PAUSE)).exec(&txn).await?;
        }
        if !not_sent.is_empty() {
            give_back(not_sent, done).exec(&txn).await?;
        }
        for (attempts, ids) in confirmed {
            // Only rows still publishable move: one whose receipt already arrived stays
            // acknowledged.
            Entity::update_many()
                .col_expr(Column::Status, Expr::value(Status::Queued.as_str()))
                .col_expr(Column::QueuedAt, Expr::value(done))
                .col_expr(Column::NextAttemptAt, Expr::value(done + self.ack_wait(attempts)))
                .col_expr(Column::UpdatedAt, Expr::value(done))
                .filter(Column::Id.is_in(ids))
                .filter(Column::Status.is_in(Status::sources_of(Status::Queued)))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        if n_confirmed > 0 {
            self.conditions.broker_away.cleared();
            self.conditions.queue_full.cleared();
        }
        layer1_ingest::metrics::count("publish", "confirmed", n_confirmed as u64);
        layer1_ingest::metrics::count("publish", "unreachable", n_unreachable as u64);
        layer1_ingest::metrics::count("publish", "failed", n_failed as u64);
        tracing::debug!(published = n_confirmed, claimed = outcomes.len(), "published");
        Ok(())
    }
}
