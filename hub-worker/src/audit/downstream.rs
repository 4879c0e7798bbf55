//! The audit desk's downstream side (core app -> hub -> third party): each delivery's HTTP
//! attempts and the receipts sent back to the core app, in a message's story; a core message
//! found by the core app's own id; deliveries per target and status in the stats.
//!
//! Every query here reads an index that holds only what it asks for: attempts by
//! `ix_delivery_attempts_raw (raw_id, attempt)`, receipts by `ix_delivery_receipts_dispatch`,
//! core ids by the partial `ix_layer4_dispatch_core_id`, unsent receipts and open deliveries by
//! their partial indexes (migration 000011), with those indexes' predicates written literally
//! so that PostgreSQL can match them under a generic plan.

use std::collections::HashMap;

use base64::Engine;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Func};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement,
};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use layer1_ingest::attempt as attempts;
use layer1_ingest::entity as l1;
use layer1_ingest::{Direction, Status};
use layer4_dispatch::delivery_receipts as receipts;
use layer4_dispatch::entity as l4;

use super::{AuditConfig, MessageView, RawAccess, WITHHELD};
use crate::error::{Error, Result};

/// One HTTP attempt of a delivery (a `delivery_attempts` row): the request as it went on the
/// wire and the third party's answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryAttemptView {
    /// The attempt's row id.
    pub id: Uuid,
    /// The delivery it belongs to (the layer 1 downstream row).
    pub raw_id: Uuid,
    /// 1 for the first attempt.
    pub attempt: i32,
    /// The target's name.
    pub target: String,
    /// HTTP method.
    pub method: String,
    /// The URL requested.
    pub url: String,
    /// The headers sent, as `[name, value]` pairs; authentication values were redacted before
    /// they were stored, so they are shown to every reader.
    pub request_headers: serde_json::Value,
    /// When the attempt started.
    pub started_at: DateTime<Utc>,
    /// How long it took, milliseconds.
    pub duration_ms: i32,
    /// The answer's status; `null` when there was no answer (timeout, refused connection).
    pub http_status: Option<i32>,
    /// The answer's kept headers (the target's `keep_response_headers`), as `[name, value]`
    /// pairs; `null` without an answer.
    pub response_headers: Option<serde_json::Value>,
    /// The answer's body as kept (up to the target's `max_response_bytes`), base64; `null`
    /// without an answer, or when withheld (see `body_withheld`).
    pub response_body_base64: Option<String>,
    /// Why the answer's body is not shown (the caller's token lacks scope `raw`); absent when it
    /// is shown or there is none. The third party's answer can hold personal data, as a
    /// payload can.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_withheld: Option<String>,
    /// Whether the answer was longer than what was kept.
    pub response_truncated: bool,
    /// What the attempt made of the delivery: `delivered`, `rejected` or `retry`.
    pub verdict: String,
    /// The transport error (timeout, reset), if any.
    pub error: Option<String>,
}

/// A delivery receipt (a `delivery_receipts` row): what the hub tells, or told, the core app
/// became of its message.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReceiptView {
    /// The receipt's id (its `hub-message-id` on the wire).
    pub id: Uuid,
    /// The delivery (layer 1 row) it reports on; `null` when the message was refused before a
    /// delivery was made (translation or request building).
    pub raw_id: Option<Uuid>,
    /// `acknowledged`, `rejected` or `dead`.
    pub status: String,
    /// The third party's last HTTP status, if it answered.
    pub http_status: Option<i32>,
    /// The fields the route reads from the third party's answer, exactly as stored (numbers
    /// digit for digit).
    #[schema(value_type = Object)]
    pub fields: Box<RawValue>,
    /// Why, for `rejected` and `dead` (and notes on a delivered message's answer).
    pub reason: Option<String>,
    /// The queue the receipt goes to.
    pub receipt_to: String,
    /// When the message became final (and the receipt was written).
    pub created_at: DateTime<Utc>,
    /// When the broker confirmed the receipt; `null` while it is still to be sent.
    pub sent_at: Option<DateTime<Utc>>,
    /// Publish attempts so far.
    pub attempts: i32,
    /// The last publish failure.
    pub last_error: Option<String>,
}

/// Stored JSON text as JSON: the text itself when it parses, else as a JSON string (a damaged
/// row is shown, not hidden).
fn json_text(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

/// Every attempt of the deliveries `raw_ids`, by delivery then attempt (`id` last: a delivery
/// whose lease ran out can have two attempts of one number).
pub(super) async fn attempts_of(
    db: &DatabaseConnection,
    raw_ids: Vec<Uuid>,
    access: RawAccess,
) -> Result<Vec<DeliveryAttemptView>> {
    if raw_ids.is_empty() {
        return Ok(Vec::new());
    }
    let shown = access == RawAccess::Shown;
    let rows = attempts::Entity::find()
        .filter(attempts::Column::RawId.is_in(raw_ids))
        .order_by_asc(attempts::Column::RawId)
        .order_by_asc(attempts::Column::Attempt)
        .order_by_asc(attempts::Column::Id)
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|a| DeliveryAttemptView {
            id: a.id,
            raw_id: a.raw_id,
            attempt: a.attempt,
            target: a.target,
            method: a.method,
            url: a.url,
            request_headers: json_text(&a.request_headers),
            started_at: a.started_at,
            duration_ms: a.duration_ms,
            http_status: a.http_status,
            response_headers: a.response_headers.as_deref().map(json_text),
            body_withheld: (!shown && a.response_body.is_some()).then(|| WITHHELD.to_owned()),
            response_body_base64: a
                .response_body
                .filter(|_| shown)
                .map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
            response_truncated: a.response_truncated,
            verdict: a.verdict,
            error: a.error,
        })
        .collect())
}

/// The receipts written for the core message whose layer 4 row is `dispatch_id` (the flow's
/// origin), oldest first.
pub(super) async fn receipts_of(db: &DatabaseConnection, dispatch_id: Uuid) -> Result<Vec<ReceiptView>> {
    let rows = receipts::Entity::find()
        .filter(receipts::Column::DispatchId.eq(dispatch_id))
        .order_by_asc(receipts::Column::Id)
        .all(db)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        // `fields` is written as a JSON object by `new_receipt`; text that is not JSON is shown
        // as a JSON string rather than failing the whole story.
        let fields = match RawValue::from_string(r.fields.clone()) {
            Ok(v) => v,
            Err(_) => RawValue::from_string(serde_json::Value::String(r.fields).to_string())
                .map_err(|e| Error::Base(layer1_ingest::Error::Internal(format!("receipt {}: {e}", r.id))))?,
        };
        out.push(ReceiptView {
            id: r.id,
            raw_id: r.raw_id,
            status: r.status,
            http_status: r.http_status,
            fields,
            reason: r.reason,
            receipt_to: r.receipt_to,
            created_at: r.created_at,
            sent_at: r.sent_at,
            attempts: r.attempts,
            last_error: r.last_error,
        });
    }
    Ok(out)
}

/// The layer 4 rows of the core message the core app sent as `core_id` (its `core-message-id`):
/// one per target it was sent to, oldest first; empty when there is none.
///
/// Read through the partial index `ix_layer4_dispatch_core_id (source_ref) WHERE direction =
/// 'downstream'`: the predicate is written literally, not bound, so PostgreSQL can match the
/// index under a generic plan. Upstream rows' `source_ref` is the record's id, not a core id:
/// they are never returned.
pub async fn by_core_message_id(db: &DatabaseConnection, core_id: &str) -> Result<Vec<Uuid>> {
    let ids: Vec<Uuid> = l4::Entity::find()
        .select_only()
        .column(l4::Column::Id)
        .filter(Expr::cust("direction = 'downstream'"))
        .filter(l4::Column::SourceRef.eq(core_id))
        .order_by_asc(l4::Column::Id)
        .into_tuple()
        .all(db)
        .await?;
    Ok(ids)
}

/// Every flow of the core message `core_id` (one per target), each as [`super::message`] tells
/// it from its layer 4 row; [`Error::UnknownCoreMessage`] when the hub has none.
pub async fn core_message(
    db: &DatabaseConnection,
    core_id: &str,
    access: RawAccess,
) -> Result<Vec<MessageView>> {
    core_message_with(db, core_id, access, &AuditConfig::default()).await
}

/// [`core_message`] as [`super::message_with`] tells each flow.
pub async fn core_message_with(
    db: &DatabaseConnection,
    core_id: &str,
    access: RawAccess,
    cfg: &AuditConfig,
) -> Result<Vec<MessageView>> {
    let ids = by_core_message_id(db, core_id).await?;
    if ids.is_empty() {
        return Err(Error::UnknownCoreMessage(core_id.to_owned()));
    }
    let mut views = Vec::with_capacity(ids.len());
    for id in ids {
        views.push(super::message_with(db, id, access, cfg).await?);
    }
    Ok(views)
}

/// What `hub-worker trace` is given: any layer's row id, or a core app's `core-message-id`.
/// A UUID is looked up as a row id first and, when no row has it, as a core message id (a
/// core app may well use UUIDs for its own ids); anything else is a core message id. One view
/// per flow found.
pub async fn trace(db: &DatabaseConnection, key: &str, access: RawAccess) -> Result<Vec<MessageView>> {
    trace_with(db, key, access, &AuditConfig::default()).await
}

/// [`trace`] as [`super::message_with`] tells each flow: what `hub-worker trace` prints.
pub async fn trace_with(
    db: &DatabaseConnection,
    key: &str,
    access: RawAccess,
    cfg: &AuditConfig,
) -> Result<Vec<MessageView>> {
    if let Ok(id) = key.trim().parse::<Uuid>() {
        match super::message_with(db, id, access, cfg).await {
            Ok(view) => return Ok(vec![view]),
            Err(Error::NotFound(_)) => {
                return match core_message_with(db, key, access, cfg).await {
                    // Neither: say so as a row id, the likelier meaning of a UUID.
                    Err(Error::UnknownCoreMessage(_)) => Err(Error::NotFound(id)),
                    other => other,
                };
            }
            Err(e) => return Err(e),
        }
    }
    core_message_with(db, key, access, cfg).await
}

/// Per target: the deliveries (layer 1 downstream rows) by status, and how long the oldest
/// open one has waited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DeliveryStats {
    /// The target's name.
    pub target: String,
    /// Not sent yet (`just_in`).
    pub waiting: i64,
    /// Sent, not accepted, to be sent again (`failed`).
    pub retrying: i64,
    /// Accepted by the third party (`acknowledged`).
    pub acknowledged: i64,
    /// Refused by the third party, not retried (`rejected`).
    pub rejected: i64,
    /// Retries exhausted (`dead`).
    pub dead: i64,
    /// Age in seconds of the oldest delivery still waiting or retrying (since its layer 1 row
    /// was made); `null` when none is.
    pub oldest_open_secs: Option<i64>,
}

/// Each target's delivery stats from its counts per status (`per`: target, status, rows) and
/// its oldest open delivery.
pub(super) fn delivery_stats(
    per: &[(&str, Status, i64)],
    oldest: impl Fn(&str) -> Option<DateTime<Utc>>,
) -> Vec<DeliveryStats> {
    let now = Utc::now();
    let mut names: Vec<&str> = per.iter().map(|(t, _, _)| *t).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|t| {
            let n = |s: Status| {
                per.iter().filter(|(x, st, _)| *x == t && *st == s).map(|(_, _, n)| n).sum::<i64>()
            };
            DeliveryStats {
                target: t.to_owned(),
                waiting: n(Status::JustIn),
                retrying: n(Status::Failed),
                acknowledged: n(Status::Acknowledged),
                rejected: n(Status::Rejected),
                dead: n(Status::Dead),
                oldest_open_secs: oldest(t).map(|at| (now - at).num_seconds()),
            }
        })
        .collect()
}

/// The open deliveries' predicate, as `ix_layer1_raw_deliver`'s is written (migration 000011).
const OPEN_DELIVERIES: &str = "direction = 'downstream' AND status IN ('just_in', 'failed')";

/// Per target, when its oldest open delivery was made: a `GROUP BY` over the open deliveries
/// only, which the partial index `ix_layer1_raw_deliver` holds (the backlog, not the history).
pub(super) async fn oldest_open_deliveries(
    db: &DatabaseConnection,
) -> Result<HashMap<String, DateTime<Utc>>> {
    let rows: Vec<(String, Option<DateTime<Utc>>)> = l1::Entity::find()
        .select_only()
        .column(l1::Column::Source)
        .column_as(Expr::from(Func::min(Expr::col(l1::Column::CreatedAt))), "oldest")
        .filter(Expr::cust(OPEN_DELIVERIES))
        .group_by(l1::Column::Source)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows.into_iter().filter_map(|(t, at)| at.map(|at| (t, at))).collect())
}

/// Delivery receipts written and not yet confirmed by the broker. `sent_at IS NULL` is the
/// partial index `ix_delivery_receipts_unsent`'s predicate: the count reads that index, whose
/// size is the receipts still to send, not all receipts ever written.
pub(super) async fn receipts_unsent(db: &DatabaseConnection) -> Result<i64> {
    let backend = db.get_database_backend();
    let sql = "SELECT CAST(count(*) AS BIGINT) AS n FROM delivery_receipts WHERE sent_at IS NULL";
    let row = db.query_one_raw(Statement::from_string(backend, sql)).await?;
    Ok(match row {
        Some(r) => r.try_get("", "n")?,
        None => 0,
    })
}

/// The deliveries per target and status the old way, a `GROUP BY` over every downstream layer 1
/// row (for [`super::stats_by_scan`]).
pub(super) async fn deliveries_by_scan(db: &DatabaseConnection) -> Result<Vec<DeliveryStats>> {
    let per: Vec<(String, Status, i64)> = l1::Entity::find()
        .select_only()
        .column(l1::Column::Source)
        .column(l1::Column::Status)
        .column_as(Expr::col(l1::Column::Id).count(), "n")
        .filter(l1::Column::Direction.eq(Direction::Downstream))
        .group_by(l1::Column::Source)
        .group_by(l1::Column::Status)
        .into_tuple()
        .all(db)
        .await?;
    let oldest: Vec<(String, Option<DateTime<Utc>>)> = l1::Entity::find()
        .select_only()
        .column(l1::Column::Source)
        .column_as(Expr::from(Func::min(Expr::col(l1::Column::CreatedAt))), "oldest")
        .filter(l1::Column::Direction.eq(Direction::Downstream))
        .filter(l1::Column::Status.is_in([Status::JustIn, Status::Failed]))
        .group_by(l1::Column::Source)
        .into_tuple()
        .all(db)
        .await?;
    let per: Vec<(&str, Status, i64)> = per.iter().map(|(t, s, n)| (t.as_str(), *s, *n)).collect();
    Ok(delivery_stats(&per, |t| oldest.iter().find(|(x, _)| x == t).and_then(|(_, at)| *at)))
}
