//! Downstream intake: the core app publishes to the hub's inbound queue; each message is stored
//! in `layer4_dispatch` (direction downstream, status Just In) with the core app's message id as
//! `source_ref`, once. A message that breaks the contract is stored too, as `rejected` with the
//! reason: nothing the core app sent is lost.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use layer1_ingest::{Direction, Status};

use crate::entity::{self, Column, Entity};
use crate::transport::{Delivery, Headers, Transport};
use crate::wire;

/// `core-message-id`: the core app's own id of the message; the idempotency key.
pub const CORE_MESSAGE_ID: &str = "core-message-id";
/// `hub-target`: the integration (third party) the message is for.
pub const TARGET: &str = "hub-target";

/// What a batch of inbound messages did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntakeOutcome {
    /// New rows (Just In, or Rejected for a contract breach).
    pub stored: usize,
    /// Already on record (same target and core message id, or same bytes for a breach).
    pub duplicates: usize,
}

/// Text as a column can hold it: no NUL (PostgreSQL text cannot), at most `max` characters.
fn fit(v: &str, max: usize) -> String {
    v.chars().filter(|c| *c != '\0').take(max).collect()
}

fn row(headers: &Headers, body: &[u8], now: chrono::DateTime<Utc>) -> entity::ActiveModel {
    let id = Uuid::now_v7();
    let get = |k: &str| headers.get(k).filter(|v| !v.is_empty()).cloned();
    let target = get(TARGET);
    let core_id = get(CORE_MESSAGE_ID);
    let message_type = get(wire::TYPE);
    let text = std::str::from_utf8(body).ok();
    let problem = if target.is_none() {
        Some(format!("header `{TARGET}` missing"))
    } else if core_id.is_none() {
        Some(format!("header `{CORE_MESSAGE_ID}` missing"))
    } else if message_type.is_none() {
        Some(format!("header `{}` missing", wire::TYPE))
    } else if target.as_ref().is_some_and(|t| t.len() > 128)
        || core_id.as_ref().is_some_and(|c| c.len() > 400)
    {
        Some("target or core message id too long".to_owned())
    } else if [&target, &core_id, &message_type]
        .iter()
        .any(|v| v.as_ref().is_some_and(|v| v.chars().any(char::is_control)))
    {
        Some("a header holds control characters".to_owned())
    } else if body.contains(&0) {
        Some("body holds a NUL byte".to_owned())
    } else {
        match text.map(serde_json::from_str::<serde_json::Value>) {
            None => Some("body is not UTF-8".to_owned()),
            Some(Err(e)) => Some(format!("body is not JSON: {e}")),
            Some(Ok(_)) => None,
        }
    };
    let (status, intake_key, next) = match &problem {
        None => (
            Status::JustIn,
            format!("{}:{}", target.as_deref().unwrap_or(""), core_id.as_deref().unwrap_or("")),
            Some(now),
        ),
        // A breach is keyed by its bytes, so a redelivered bad message is stored once.
        Some(_) => (Status::Rejected, format!("sha256:{}", layer1_ingest::ingest::sha256_hex(body)), None),
    };
    entity::ActiveModel {
        id: Set(id),
        direction: Set(Direction::Downstream),
        status: Set(status),
        attempts: Set(0),
        last_error: Set(problem),
        next_attempt_at: Set(next),
        parent_id: Set(None),
        origin_id: Set(id),
        // A breach is stored with whatever fits: the reason says what was wrong.
        source: Set(fit(target.as_deref().unwrap_or("unknown"), 128)),
        source_ref: Set(core_id.map(|c| fit(&c, 512))),
        destination: Set(fit(target.as_deref().unwrap_or("unknown"), 255)),
        message_type: Set(fit(message_type.as_deref().unwrap_or("unknown"), 128)),
        type_version: Set(fit(get(wire::TYPE_VERSION).as_deref().unwrap_or("1"), 32)),
        body: Set(fit(&String::from_utf8_lossy(body), usize::MAX)),
        ordering_key: Set(None),
        queued_at: Set(None),
        acknowledged_at: Set(None),
        intake_key: Set(Some(intake_key)),
        created_at: Set(now),
        updated_at: Set(now),
    }
}

/// Stores inbound messages idempotently, in one statement.
pub async fn store_inbound(
    db: &DatabaseConnection,
    msgs: &[(&Headers, &[u8])],
) -> layer1_ingest::Result<IntakeOutcome> {
    if msgs.is_empty() {
        return Ok(IntakeOutcome::default());
    }
    let now = Utc::now();
    let rows: Vec<_> = msgs.iter().map(|(h, b)| row(h, b, now)).collect();
    // The unique index on intake_key is partial (downstream rows only): the conflict target
    // names its predicate so that both engines match it.
    let mut on_conflict = OnConflict::column(Column::IntakeKey);
    on_conflict.target_and_where(Expr::col(Column::IntakeKey).is_not_null()).do_nothing();
    let res =
        Entity::insert_many(rows).on_conflict(on_conflict).try_insert().exec_without_returning(db).await?;
    let stored = match res {
        sea_orm::TryInsertResult::Inserted(n) => usize::try_from(n).unwrap_or(0),
        _ => 0,
    };
    Ok(IntakeOutcome { stored, duplicates: msgs.len() - stored })
}

/// Consumes the inbound queue until cancelled; acks each delivery only after its row is stored.
pub struct IntakeConsumer {
    db: DatabaseConnection,
    transport: Arc<dyn Transport>,
    queue: String,
    batch: usize,
}

impl IntakeConsumer {
    /// A consumer of `queue`.
    pub fn new(db: DatabaseConnection, transport: Arc<dyn Transport>, queue: String, batch: usize) -> Self {
        Self { db, transport, queue, batch: batch.max(1) }
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
impl crate::transport::BatchHandler for IntakeConsumer {
    async fn handle(&mut self, batch: Vec<Delivery>) {
        let msgs: Vec<(&Headers, &[u8])> = batch.iter().map(|d| (&d.headers, d.body.as_slice())).collect();
        match store_inbound(&self.db, &msgs).await {
            Ok(out) => {
                tracing::debug!(?out, "inbound stored");
                if let Err(e) = crate::transport::ack_all(batch).await {
                    tracing::warn!(error = %e, "could not ack inbound messages; they will come again and be dropped as duplicates");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not store inbound messages; handing them back");
                for d in batch {
                    let _ = d.nack(true).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
