//! Downstream intake: the core app publishes to the hub's inbound queue; each message is stored
//! in `layer4_dispatch` (direction downstream, status Just In) with the core app's message id as
//! `source_ref`, once. A message that breaks the contract is stored too, as `rejected` with the
//! reason: nothing the core app sent is lost. Its body is kept exactly: as text in `body` when
//! it is UTF-8 without NUL, otherwise byte for byte in `raw_body` (and `body` empty).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect,
    TransactionTrait,
};
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

/// The body as text a column holds exactly, or why it is not: the reason names the first byte
/// at fault, so the core app's developers can find it in what they sent.
fn body_text(body: &[u8]) -> Result<&str, String> {
    match std::str::from_utf8(body) {
        Err(e) => Err(format!("body is not UTF-8 JSON: invalid byte at offset {}", e.valid_up_to())),
        // JSON has no raw NUL anywhere (in a string it is written `\u0000`), and PostgreSQL
        // text cannot hold one: such a body is refused, and kept as bytes.
        Ok(text) => match body.iter().position(|b| *b == 0) {
            Some(at) => Err(format!("body is not JSON: NUL byte at offset {at}")),
            None => Ok(text),
        },
    }
}

/// One inbound message as a row, plus its bytes when `body` cannot hold them (see
/// [`entity::raw_body`]): the caller writes those in the row's transaction.
fn row<'a>(
    headers: &Headers,
    body: &'a [u8],
    now: chrono::DateTime<Utc>,
) -> (entity::ActiveModel, Option<(Uuid, &'a [u8])>) {
    let id = Uuid::now_v7();
    let get = |k: &str| headers.get(k).filter(|v| !v.is_empty()).cloned();
    let target = get(TARGET);
    let core_id = get(CORE_MESSAGE_ID);
    let message_type = get(wire::TYPE);
    let text = body_text(body);
    let header_problem = if target.is_none() {
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
    } else {
        None
    };
    let problem = match (header_problem, &text) {
        // Both named: an empty `body` must never read as "the core app sent nothing".
        (Some(h), Err(b)) => Some(format!("{h}; {b}")),
        (Some(h), Ok(_)) => Some(h),
        (None, Err(b)) => Some(b.clone()),
        (None, Ok(t)) => serde_json::from_str::<&serde_json::value::RawValue>(t)
            .err()
            .map(|e| format!("body is not JSON: {e}")),
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
    // Never altered: text as sent, or nothing here and the bytes beside it.
    let (stored_text, raw) = match text {
        Ok(t) => (t.to_owned(), None),
        Err(_) => (String::new(), Some((id, body))),
    };
    let model = entity::ActiveModel {
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
        body: Set(stored_text),
        ordering_key: Set(None),
        queued_at: Set(None),
        acknowledged_at: Set(None),
        intake_key: Set(Some(intake_key)),
        created_at: Set(now),
        updated_at: Set(now),
    };
    (model, raw)
}

/// Stores inbound messages idempotently: one statement, or, when some bodies must be kept as
/// bytes, one transaction that also writes those.
pub async fn store_inbound(
    db: &DatabaseConnection,
    msgs: &[(&Headers, &[u8])],
) -> layer1_ingest::Result<IntakeOutcome> {
    if msgs.is_empty() {
        return Ok(IntakeOutcome::default());
    }
    let now = Utc::now();
    let mut rows = Vec::with_capacity(msgs.len());
    let mut raw = Vec::new();
    // Contract breaches (stored `rejected`): logged once stored, not when a copy was on record.
    let mut breaches: Vec<(Uuid, String, Option<String>)> = Vec::new();
    for (h, b) in msgs {
        let (r, bytes) = row(h, b, now);
        if let (Set(id), Set(Status::Rejected), Set(source), Set(why)) =
            (&r.id, &r.status, &r.source, &r.last_error)
        {
            breaches.push((*id, source.clone(), why.clone()));
        }
        rows.push(r);
        raw.extend(bytes);
    }
    // The unique index on intake_key is partial (downstream rows only): the conflict target
    // names its predicate so that both engines match it.
    let mut on_conflict = OnConflict::column(Column::IntakeKey);
    on_conflict.target_and_where(Expr::col(Column::IntakeKey).is_not_null()).do_nothing();
    let insert = Entity::insert_many(rows).on_conflict(on_conflict).try_insert();
    let res = if raw.is_empty() {
        insert.exec_without_returning(db).await?
    } else {
        // The bytes commit with their row: a row committed without them would show an empty
        // body for a message the core app did send. A row that was a duplicate was not
        // inserted, and its update touches nothing (the copy on record has the same bytes,
        // being keyed by their hash).
        let txn = db.begin().await?;
        let res = insert.exec_without_returning(&txn).await?;
        for (id, bytes) in raw {
            entity::raw_body::Entity::update_many()
                .col_expr(entity::raw_body::Column::RawBody, Expr::value(bytes.to_vec()))
                .filter(entity::raw_body::Column::Id.eq(id))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        res
    };
    let stored = match res {
        sea_orm::TryInsertResult::Inserted(n) => usize::try_from(n).unwrap_or(0),
        _ => 0,
    };
    if !breaches.is_empty() && stored > 0 {
        // Only to log which breaches were stored (not already on record): the messages are
        // committed, so a failing lookup must not fail the intake.
        let new: Vec<Uuid> = match Entity::find()
            .select_only()
            .column(Column::Id)
            .filter(Column::Id.is_in(breaches.iter().map(|b| b.0)))
            .into_tuple()
            .all(db)
            .await
        {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "could not read back the stored contract breaches to log them");
                Vec::new()
            }
        };
        for (id, source, why) in breaches.iter().filter(|b| new.contains(&b.0)) {
            layer1_ingest::table::log_given_up(
                layer1_ingest::Layer::Dispatch,
                *id,
                source,
                Status::Rejected,
                why.as_deref(),
            );
        }
    }
    Ok(IntakeOutcome { stored, duplicates: msgs.len() - stored })
}

/// Consumes the inbound queue until cancelled; acks each delivery only after its row is stored.
pub struct IntakeConsumer {
    db: DatabaseConnection,
    transport: Arc<dyn Transport>,
    queue: String,
    batch: usize,
    wake: Option<layer1_ingest::Wakeup>,
}

impl IntakeConsumer {
    /// A consumer of `queue`.
    pub fn new(db: DatabaseConnection, transport: Arc<dyn Transport>, queue: String, batch: usize) -> Self {
        Self { db, transport, queue, batch: batch.max(1), wake: None }
    }

    /// Wakes `w` (the stage that carries core messages on) after each batch that stored some.
    pub fn waking(mut self, w: layer1_ingest::Wakeup) -> Self {
        self.wake = Some(w);
        self
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
                if out.stored > 0 {
                    self.wake.iter().for_each(layer1_ingest::Wakeup::wake);
                }
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
