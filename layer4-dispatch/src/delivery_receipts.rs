//! Delivery receipts: how the core app learns what became of a message it sent downstream.
//!
//! The transaction that makes a downstream message final (delivered: the third party answered
//! 2xx; rejected, at any layer, with the reason; dead, retries exhausted) also writes a row of
//! `delivery_receipts` (the outbox). [`ReceiptSender`] publishes due rows to the queue each names
//! and sets `sent_at` once the broker confirmed. A worker that dies between the publish and the
//! update lets the row's lease end and the receipt is published again with the same
//! `hub-message-id` (the receipt's id): at least once, duplicates dropped by that id. A receipt
//! is never dropped: failures are retried with backoff for as long as it takes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType};
use sea_orm::{DatabaseConnection, QueryOrder, QuerySelect, TransactionTrait};
use serde::Serialize;

use layer1_ingest::json::Value as Json;
use layer1_ingest::{Error, Stage, StageSettings};

use crate::transport::{Headers, OutgoingMessage, Transport};
use crate::wire;

/// `hub-type` of a delivery receipt.
pub const RECEIPT_TYPE: &str = "hub.delivery-receipt";

/// One receipt on record.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "delivery_receipts")]
pub struct Model {
    /// The receipt's id (UUIDv7): its `hub-message-id` on the wire.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The layer 4 row of the core message it answers (the flow's origin).
    pub dispatch_id: Uuid,
    /// The delivery (layer 1 row), when the message got that far.
    pub raw_id: Option<Uuid>,
    /// The core app's id of the message (`core-message-id`).
    pub core_message_id: String,
    /// The target.
    pub target: String,
    /// The core message type.
    pub message_type: String,
    /// The queue the receipt goes to (logical name).
    pub receipt_to: String,
    /// `acknowledged`, `rejected` or `dead`.
    pub status: String,
    /// The third party's last HTTP status, if it answered.
    pub http_status: Option<i32>,
    /// The fields read from the third party's answer, a JSON object as text.
    pub fields: String,
    /// Why, for `rejected` and `dead` (and notes on a delivered message's answer).
    pub reason: Option<String>,
    /// When the message became final.
    pub created_at: DateTimeUtc,
    /// When the broker confirmed the receipt; `NULL` until then.
    pub sent_at: Option<DateTimeUtc>,
    /// Publish attempts.
    pub attempts: i32,
    /// When the receipt is next due (`NULL` once sent).
    pub next_attempt_at: Option<DateTimeUtc>,
    /// The last publish failure.
    pub last_error: Option<String>,
}

/// No relations: the message is found by `dispatch_id`.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// A final outcome to tell the core app about: what a stage hands [`new_receipt`].
#[derive(Debug, Clone)]
pub struct Final {
    /// The layer 4 row (origin of the flow).
    pub dispatch_id: Uuid,
    /// The layer 1 row, if the message got that far.
    pub raw_id: Option<Uuid>,
    /// `core-message-id`.
    pub core_message_id: String,
    /// The target.
    pub target: String,
    /// The core message type.
    pub message_type: String,
    /// The receipt's queue.
    pub receipt_to: String,
    /// `Acknowledged`, `Rejected` or `Dead`: the final status that made the receipt.
    pub status: layer1_ingest::Status,
    /// The third party's HTTP status, if any.
    pub http_status: Option<u16>,
    /// Fields mapped from the answer.
    pub fields: Vec<(String, Json)>,
    /// The reason.
    pub reason: Option<String>,
}

/// The outbox row for `f`, due at once.
pub fn new_receipt(f: Final, now: DateTime<Utc>) -> Model {
    let mut fields = String::from("{");
    for (i, (k, v)) in f.fields.iter().enumerate() {
        if i > 0 {
            fields.push(',');
        }
        fields.push_str(&serde_json::to_string(k).unwrap_or_else(|_| "\"\"".to_owned()));
        fields.push(':');
        fields.push_str(&v.to_json());
    }
    fields.push('}');
    Model {
        id: Uuid::now_v7(),
        dispatch_id: f.dispatch_id,
        raw_id: f.raw_id,
        core_message_id: f.core_message_id,
        target: f.target,
        message_type: f.message_type,
        receipt_to: f.receipt_to,
        status: f.status.as_str().to_owned(),
        http_status: f.http_status.map(i32::from),
        fields,
        reason: f.reason,
        created_at: now,
        sent_at: None,
        attempts: 0,
        next_attempt_at: Some(now),
        last_error: None,
    }
}

/// Writes receipts in the caller's transaction (the one that makes their messages final).
pub async fn insert<C: sea_orm::ConnectionTrait>(conn: &C, rows: Vec<Model>) -> layer1_ingest::Result<()> {
    layer1_ingest::table::insert_rows::<Entity, C>(conn, rows).await
}

/// The receipt's JSON body, as documented in `docs/WIRE.md`.
#[derive(Serialize)]
struct Body<'a> {
    core_message_id: &'a str,
    hub_message_id: Uuid,
    delivery_id: Option<Uuid>,
    target: &'a str,
    message_type: &'a str,
    status: &'a str,
    http_status: Option<i32>,
    response: &'a serde_json::value::RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    at: DateTime<Utc>,
}

/// The message a receipt row is published as.
pub fn message(row: &Model) -> OutgoingMessage {
    let empty = serde_json::value::RawValue::from_string("{}".to_owned()).ok();
    let parsed = serde_json::value::RawValue::from_string(row.fields.clone()).ok();
    let body = match parsed.as_deref().or(empty.as_deref()) {
        Some(response) => serde_json::to_vec(&Body {
            core_message_id: &row.core_message_id,
            hub_message_id: row.dispatch_id,
            delivery_id: row.raw_id,
            target: &row.target,
            message_type: &row.message_type,
            status: &row.status,
            http_status: row.http_status,
            response,
            reason: row.reason.as_deref(),
            at: row.created_at,
        })
        .unwrap_or_default(),
        None => Vec::new(),
    };
    let mut headers = Headers::new();
    headers.insert(wire::MESSAGE_ID.to_owned(), row.id.to_string());
    headers.insert(wire::ORIGIN_ID.to_owned(), row.dispatch_id.to_string());
    headers.insert(wire::TYPE.to_owned(), RECEIPT_TYPE.to_owned());
    headers.insert(wire::TYPE_VERSION.to_owned(), "1".to_owned());
    headers.insert(crate::intake::CORE_MESSAGE_ID.to_owned(), row.core_message_id.clone());
    headers.insert(crate::intake::TARGET.to_owned(), row.target.clone());
    headers.insert(wire::TRACEPARENT.to_owned(), wire::traceparent(row.dispatch_id, row.id));
    OutgoingMessage {
        queue: row.receipt_to.clone(),
        dedup_id: row.id.to_string(),
        ordering_key: None,
        headers,
        body,
    }
}

/// Publishes due delivery receipts.
pub struct ReceiptSender {
    db: DatabaseConnection,
    transport: Arc<dyn Transport>,
    settings: StageSettings,
    lease: Duration,
}

impl ReceiptSender {
    /// A sender of up to `settings.batch_size` receipts per claim, retrying a failed publish
    /// with `settings`' backoff (never giving up); a claimed receipt is this worker's for `lease`.
    pub fn new(
        db: DatabaseConnection,
        transport: Arc<dyn Transport>,
        settings: StageSettings,
        lease: Duration,
    ) -> Self {
        Self { db, transport, settings, lease }
    }
}

#[async_trait]
impl Stage for ReceiptSender {
    fn name(&self) -> &'static str {
        "delivery_receipts"
    }

    async fn run_batch(&self) -> Result<usize, Error> {
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::seconds(60));
        let txn = self.db.begin().await?;
        let rows = Entity::find()
            .filter(Column::SentAt.is_null())
            .filter(Column::NextAttemptAt.lte(now))
            .order_by_asc(Column::NextAttemptAt)
            .order_by_asc(Column::Id)
            .limit(Ord::max(self.settings.batch_size, 1))
            .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
            .all(&txn)
            .await?;
        if rows.is_empty() {
            txn.commit().await?;
            return Ok(0);
        }
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        layer1_ingest::table::relax_commit(&txn).await?;
        Entity::update_many()
            .col_expr(Column::NextAttemptAt, Expr::value(until))
            .col_expr(Column::Attempts, Expr::col(Column::Attempts).add(1))
            .filter(Column::Id.is_in(ids.iter().copied()))
            .exec(&txn)
            .await?;
        txn.commit().await?;

        let batch: Vec<OutgoingMessage> = rows.iter().map(message).collect();
        let results = self.transport.publish(&batch).await;
        let mut sent = Vec::new();
        let txn = self.db.begin().await?;
        for (row, res) in rows.iter().zip(results) {
            match res {
                Ok(()) => sent.push(row.id),
                Err(e) => {
                    // Not the receipt's fault when the broker is away: its attempt is given back.
                    let outage = matches!(
                        e,
                        crate::TransportError::Connection(_) | crate::TransportError::QueueFull { .. }
                    );
                    let (attempts, pause) = if outage {
                        (row.attempts, chrono::Duration::seconds(2))
                    } else {
                        (row.attempts + 1, self.settings.backoff(row.attempts + 1))
                    };
                    tracing::warn!(receipt = %row.id, queue = %row.receipt_to, error = %e, "delivery receipt not published; will retry");
                    Entity::update_many()
                        .col_expr(Column::Attempts, Expr::value(attempts))
                        .col_expr(Column::NextAttemptAt, Expr::value(Utc::now() + pause))
                        .col_expr(Column::LastError, Expr::value(e.to_string()))
                        .filter(Column::Id.eq(row.id))
                        .filter(Column::SentAt.is_null())
                        .exec(&txn)
                        .await?;
                }
            }
        }
        if !sent.is_empty() {
            Entity::update_many()
                .col_expr(Column::SentAt, Expr::value(Utc::now()))
                .col_expr(Column::NextAttemptAt, Expr::value(Option::<DateTime<Utc>>::None))
                .filter(Column::Id.is_in(sent.iter().copied()))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(rows.len())
    }
}
