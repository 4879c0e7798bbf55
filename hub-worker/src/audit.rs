//! What auditors and operators ask of the post office: one message's whole story, listings,
//! per-destination health, and replay. Shared by the HTTP audit desk and the CLI.

use base64::Engine;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Func};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use layer1_ingest::entity as l1;
use layer1_ingest::table::insert_rows;
use layer1_ingest::{Direction, Layer, LayerTable, LineageEntry, LineageTable, Status};
use layer2_normalize::entity as l2;
use layer3_translate::entity as l3;
use layer4_dispatch::entity as l4;

use crate::error::{Error, Result};
use crate::hub::StatusCount;
use crate::lineage::{Lineage, lineage};

mod content;
mod downstream;
mod pulls;

pub use content::{AuditConfig, DispatchView, RecordView, TranslationView};
pub use downstream::{
    DeliveryAttemptView, DeliveryStats, ReceiptView, by_core_message_id, core_message, core_message_with,
    trace, trace_with,
};
pub use pulls::{
    DEFAULT_RUNS_PAGE, MAX_RUNS_PAGE, PullStats, SourceState, SyncRunView, SyncRuns, pull_stats,
    source_state, sync_run, sync_runs,
};

/// The raw bytes of a message, re-checked against their stored hash: a third party's payload
/// (layer 1), or a core app's downstream message whose body was kept as bytes because it was
/// not UTF-8 text without NUL (layer 4, `raw_body`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RawBody {
    /// The row's id: the layer 1 row, or the downstream layer 4 row.
    pub id: Uuid,
    /// Which layer's row holds the bytes.
    pub layer: Layer,
    /// The sender's content type; empty for a layer 4 row (the core app's messages carry none
    /// the hub keeps).
    pub content_type: String,
    /// The bytes, base64; `null` when withheld (see `body_withheld`).
    pub body_base64: Option<String>,
    /// The request headers kept at ingest (secrets were redacted then and are not on record);
    /// `null` when withheld, and always for a layer 4 row (its headers are the row's columns,
    /// shown in the lineage).
    pub headers: Option<serde_json::Value>,
    /// Why the bytes and headers are not shown (the caller's token lacks scope `raw`); absent
    /// when they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_withheld: Option<String>,
    /// The SHA-256 stored at ingest, hex.
    pub sha256: String,
    /// Whether the stored bytes still hash to it (checked now, whether or not they are shown).
    pub sha256_verified: bool,
}

/// Whether a view of a message shows what the third party sent (bytes, headers) or only its
/// shape and hash: third-party payloads hold personal data an auditor of the flow need not see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawAccess {
    /// Bytes and headers shown.
    Shown,
    /// Left out, saying which scope would show them.
    Withheld,
}

/// What `body_withheld` says when the raw bytes are left out.
pub const WITHHELD: &str = "needs scope raw";

/// A message's whole story.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    /// Every row of the flow, in layer order.
    #[serde(flatten)]
    pub lineage: Lineage,
    /// The raw bytes of every layer 1 row of the flow (one, or more after replays), and of a
    /// downstream layer 4 row whose body is kept as bytes. Downstream, a layer 1 row is the
    /// request as delivered: its body, and its headers with the pseudo-headers `:method` and
    /// `:path`.
    pub raw: Vec<RawBody>,
    /// Downstream: every HTTP attempt of the flow's deliveries (its layer 1 rows), by delivery
    /// then attempt, with the third party's answers. Always present: empty for an upstream flow
    /// and for a message not delivered yet.
    pub deliveries: Vec<DeliveryAttemptView>,
    /// Downstream: the delivery receipts written for the core app about this message (one
    /// once it is final). Always present: empty upstream and while the message is moving.
    pub receipts: Vec<ReceiptView>,
    /// The layer 2 records of the rows on the path through `focus` (asked by a layer 4 id,
    /// that message's; by a layer 1 id, every record of the payload), the source's redacted
    /// fields masked without scope `raw`.
    pub records: Vec<RecordView>,
    /// The layer 3 translations on that path, with their fidelity reports, masked likewise.
    pub translations: Vec<TranslationView>,
    /// The layer 4 messages on that path, with the headers they are published with, masked
    /// likewise.
    pub dispatches: Vec<DispatchView>,
}

/// Every flow a core app's `core-message-id` names: one per target it was sent to.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CoreMessageViews {
    /// Each flow's story, as `GET /v1/messages/{id}` tells it from its layer 4 row.
    pub items: Vec<MessageView>,
}

/// One message from any layer's id, with or without what the third party (or, downstream, the
/// core app) sent, knowing nothing of the setup: every layer's content is shown as stored
/// (no source's redaction rules are known) and `hub-receipt-to` is left out of the published
/// headers. The audit desk and `hub-worker trace` use [`message_with`].
pub async fn message(db: &DatabaseConnection, id: Uuid, access: RawAccess) -> Result<MessageView> {
    message_with(db, id, access, &AuditConfig::default()).await
}

/// [`message`] with the setup's redaction rules and receipts queue: without scope `raw`
/// (`access` withheld), each source's redacted fields are masked in every layer's content.
pub async fn message_with(
    db: &DatabaseConnection,
    id: Uuid,
    access: RawAccess,
    cfg: &AuditConfig,
) -> Result<MessageView> {
    let mut lineage = lineage(db, id).await?;
    withhold_reasons(&mut lineage.entries, access, cfg);
    let shown = access == RawAccess::Shown;
    let raw_ids: Vec<Uuid> = lineage.entries.iter().filter(|e| e.layer == Layer::Raw).map(|e| e.id).collect();
    let rows = l1::Entity::find().filter(l1::Column::Id.is_in(raw_ids)).all(db).await?;
    let mut raw: Vec<RawBody> = rows
        .into_iter()
        .map(|r| RawBody {
            id: r.id,
            layer: Layer::Raw,
            content_type: r.content_type.clone(),
            // The hash is re-checked either way: integrity is the reader's business too.
            sha256_verified: layer1_ingest::ingest::sha256_hex(&r.body) == r.body_sha256,
            body_base64: shown.then(|| base64::engine::general_purpose::STANDARD.encode(&r.body)),
            // Stored as JSON text by ingest; text that does not parse is shown as text.
            headers: shown.then(|| {
                serde_json::from_str(&r.headers).unwrap_or(serde_json::Value::String(r.headers.clone()))
            }),
            body_withheld: (!shown).then(|| WITHHELD.to_owned()),
            sha256: r.body_sha256,
        })
        .collect();
    // Downstream, the core app's bytes are on the layer 4 row when `body` could not hold them.
    let downstream: Vec<Uuid> = lineage
        .entries
        .iter()
        .filter(|e| e.layer == Layer::Dispatch && e.direction == Direction::Downstream)
        .map(|e| e.id)
        .collect();
    if !downstream.is_empty() {
        let kept = l4::raw_body::Entity::find()
            .filter(l4::raw_body::Column::Id.is_in(downstream))
            .filter(l4::raw_body::Column::RawBody.is_not_null())
            .all(db)
            .await?;
        raw.extend(kept.into_iter().filter_map(|r| {
            let bytes = r.raw_body?;
            // Such a row is a contract breach keyed `sha256:<hex of its bytes>`: that is the
            // stored hash. A key of another form is shown empty and unverified, not guessed.
            let sha256 = r
                .intake_key
                .as_deref()
                .and_then(|k| k.strip_prefix("sha256:"))
                .unwrap_or_default()
                .to_owned();
            Some(RawBody {
                id: r.id,
                layer: Layer::Dispatch,
                content_type: String::new(),
                sha256_verified: !sha256.is_empty() && layer1_ingest::ingest::sha256_hex(&bytes) == sha256,
                body_base64: shown.then(|| base64::engine::general_purpose::STANDARD.encode(&bytes)),
                headers: None,
                body_withheld: (!shown).then(|| WITHHELD.to_owned()),
                sha256,
            })
        }));
    }
    // Downstream only: an upstream flow has neither attempts nor receipts, and is asked for
    // nothing more. The attempts are read by `(raw_id, attempt)`, the receipts by
    // `dispatch_id`, the flow's origin (the core message's layer 4 row).
    let delivered: Vec<Uuid> = lineage
        .entries
        .iter()
        .filter(|e| e.layer == Layer::Raw && e.direction == Direction::Downstream)
        .map(|e| e.id)
        .collect();
    let (deliveries, receipts) = if lineage.entries.iter().any(|e| e.direction == Direction::Downstream) {
        tokio::try_join!(
            downstream::attempts_of(db, delivered, access),
            downstream::receipts_of(db, lineage.origin_id),
        )?
    } else {
        (Vec::new(), Vec::new())
    };
    let content::Content { records, translations, dispatches } =
        content::content_of(db, &lineage, access, cfg).await?;
    Ok(MessageView { lineage, raw, deliveries, receipts, records, translations, dispatches })
}

/// What a rejection says after its field and rule may quote the offending value (a schema
/// error does): for a source that redacts fields, a reader without scope `raw` sees only where
/// and which rule ([`layer1_ingest::reason_summary`]), as the WARN log does.
pub fn withhold_reasons(entries: &mut [LineageEntry], access: RawAccess, cfg: &AuditConfig) {
    if access == RawAccess::Shown {
        return;
    }
    for e in entries.iter_mut().filter(|e| cfg.redactions.get(&e.source).is_some()) {
        if let Some(reason) = &e.last_error {
            let short = layer1_ingest::reason_summary(reason);
            if short.len() < reason.len() {
                e.last_error = Some(format!("{short} (the rest {WITHHELD}: this source redacts fields)"));
            }
        }
    }
}

/// A listing's filters. Ordered by id (UUIDv7: creation order); `cursor` is the last id of the
/// previous page.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Layer 1 to 4 (default 1).
    pub layer: Option<u8>,
    /// Status name.
    pub status: Option<String>,
    /// Source name.
    pub source: Option<String>,
    /// `upstream` or `downstream`.
    pub direction: Option<String>,
    /// Created at or after (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<u64>,
    /// The last id of the previous page.
    pub cursor: Option<Uuid>,
}

/// One page.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page {
    /// The rows.
    pub items: Vec<LineageEntry>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<Uuid>,
}

/// One page of `E`'s entries: the entries' columns only, not the bodies
/// ([`layer1_ingest::LineageTable`]).
async fn list_in<E>(db: &DatabaseConnection, q: &ListQuery, limit: u64) -> Result<Vec<LineageEntry>>
where
    E: LineageTable,
{
    let mut f = E::select_entries();
    if let Some(s) = &q.status {
        let s: Status = s.parse().map_err(|_| Error::BadRequest(format!("status `{s}` is not a status")))?;
        f = f.filter(E::STATUS.eq(s));
    }
    if let Some(s) = &q.source {
        f = f.filter(E::SOURCE.eq(s.clone()));
    }
    if let Some(d) = &q.direction {
        let d = match d.as_str() {
            "upstream" => Direction::Upstream,
            "downstream" => Direction::Downstream,
            other => return Err(Error::BadRequest(format!("direction `{other}`: upstream or downstream"))),
        };
        f = f.filter(E::DIRECTION.eq(d));
    }
    if let Some(t) = q.since {
        f = f.filter(E::CREATED_AT.gte(t));
    }
    if let Some(t) = q.until {
        f = f.filter(E::CREATED_AT.lt(t));
    }
    if let Some(c) = q.cursor {
        f = f.filter(E::ID.gt(c));
    }
    let rows = f.order_by_asc(E::ID).limit(limit).into_model::<E::EntryRow>().all(db).await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// One page of one layer's rows.
pub async fn list(db: &DatabaseConnection, q: &ListQuery) -> Result<Page> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let mut items = match q.layer.unwrap_or(1) {
        1 => list_in::<l1::Entity>(db, q, limit + 1).await?,
        2 => list_in::<l2::Entity>(db, q, limit + 1).await?,
        3 => list_in::<l3::Entity>(db, q, limit + 1).await?,
        4 => list_in::<l4::Entity>(db, q, limit + 1).await?,
        n => return Err(Error::BadRequest(format!("layer {n}: 1 to 4"))),
    };
    let more = items.len() as u64 > limit;
    items.truncate(limit as usize);
    let next_cursor = if more { items.last().map(|e| e.id) } else { None };
    Ok(Page { items, next_cursor })
}

/// Per destination: what an operator watches.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DestinationStats {
    /// The queue.
    pub destination: String,
    /// Published, no receipt yet.
    pub queued: i64,
    /// Receipts recorded.
    pub acknowledged: i64,
    /// Not yet acknowledged at all (waiting, queued, failed).
    pub unacknowledged: i64,
    /// Age in seconds of the oldest row not acknowledged and not final.
    pub oldest_unacknowledged_secs: Option<i64>,
    /// Published messages whose receipt is overdue (no receipt within `max_attempts` ack
    /// timeouts): the alert. They keep waiting; a receipt is applied whenever it comes.
    pub receipts_overdue: i64,
}

/// Counts and per-destination health.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Stats {
    /// Rows per layer, source, direction and status.
    pub counts: Vec<StatusCount>,
    /// Upstream destinations.
    pub destinations: Vec<DestinationStats>,
    /// Downstream: deliveries (layer 1 rows) per target and status. A core message refused
    /// before a delivery was made (no route, translation, request building) is counted in
    /// `counts` at the layer that refused it, not here.
    pub deliveries: Vec<DeliveryStats>,
    /// Delivery receipts written and not yet confirmed by the broker (to alert on when it
    /// keeps growing: the core app is not hearing what became of its messages).
    pub receipts_unsent: i64,
    /// Pulled sources (those with a saved state: run or scheduled at least once), by name: the
    /// last run, the next, the saved cursor and the totals, from one `pull_state` row each.
    pub pulls: Vec<PullStats>,
}

/// The stats, for the audit desk's `/v1/stats` and `/metrics`. Nothing here grows with the
/// tables: the counts come from the `status_counts` summary ([`crate::summary`]); the oldest
/// and overdue rows are looked for among the open rows only, through the partial claim
/// indexes, which hold the backlog and nothing else.
pub async fn stats(db: &DatabaseConnection) -> Result<Stats> {
    crate::summary::fold(db).await?;
    let summary = crate::summary::read(db).await?;
    let counts = crate::hub::counts_from(&summary);
    let per: Vec<(&str, Status, i64)> = summary
        .iter()
        .filter(|r| r.layer == Layer::Dispatch && r.direction == Direction::Upstream)
        .map(|r| (r.destination.as_str(), r.status, r.count))
        .collect();
    let oldest = oldest_open(db).await?;
    // The publisher marks overdue rows' `last_error` (layer4_dispatch::publish). `queued` is
    // written into the SQL, as the receipt index's predicate is, so that index serves it.
    let overdue: Vec<(String, i64)> = l4::Entity::find()
        .select_only()
        .column(l4::Column::Destination)
        .column_as(Expr::col(l4::Column::Id).count(), "n")
        .filter(Expr::cust("status = 'queued'"))
        .filter(l4::Column::Direction.eq(Direction::Upstream))
        .filter(l4::Column::LastError.starts_with(layer4_dispatch::publish::RECEIPT_OVERDUE))
        .group_by(l4::Column::Destination)
        .into_tuple()
        .all(db)
        .await?;
    let oldest = |d: &str| oldest.get(d).copied();
    let overdue = |d: &str| overdue.iter().find(|(x, _)| x == d).map_or(0, |(_, n)| *n);
    let destinations = destination_stats(&per, oldest, overdue);
    // Downstream: a delivery's layer 1 row has `source` = its target, so the summary's layer 1
    // downstream counts are the deliveries per target and status.
    let per_target: Vec<(&str, Status, i64)> = summary
        .iter()
        .filter(|r| r.layer == Layer::Raw && r.direction == Direction::Downstream)
        .map(|r| (r.source.as_str(), r.status, r.count))
        .collect();
    let open = downstream::oldest_open_deliveries(db).await?;
    let deliveries = downstream::delivery_stats(&per_target, |t| open.get(t).copied());
    let receipts_unsent = downstream::receipts_unsent(db).await?;
    // One `pull_state` row per pulled source: bounded too.
    let pulls = pulls::pull_stats(db).await?;
    Ok(Stats { counts, destinations, deliveries, receipts_unsent, pulls })
}

/// Each destination's health from its counts per status (`per`), its oldest open row and its
/// overdue receipts.
fn destination_stats(
    per: &[(&str, Status, i64)],
    oldest: impl Fn(&str) -> Option<DateTime<Utc>>,
    overdue: impl Fn(&str) -> i64,
) -> Vec<DestinationStats> {
    let now = Utc::now();
    let mut names: Vec<&str> = per.iter().map(|(d, _, _)| *d).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|d| {
            let n = |s: Status| {
                per.iter().filter(|(x, st, _)| *x == d && *st == s).map(|(_, _, n)| n).sum::<i64>()
            };
            DestinationStats {
                queued: n(Status::Queued),
                acknowledged: n(Status::Acknowledged),
                unacknowledged: n(Status::JustIn) + n(Status::Failed) + n(Status::Queued),
                oldest_unacknowledged_secs: oldest(d).map(|t| (now - t).num_seconds()),
                receipts_overdue: overdue(d),
                destination: d.to_owned(),
            }
        })
        .collect()
}

/// Per destination, when its oldest open upstream row (`just_in`, `failed`, `queued`) was
/// made. Asked once per partial index of layer 4 (unordered, ordered, awaiting a receipt),
/// with the statuses written as each index's predicate is: a single `status IN (three)` matches
/// none of them and would scan the table.
async fn oldest_open(db: &DatabaseConnection) -> Result<std::collections::HashMap<String, DateTime<Utc>>> {
    let mut oldest: std::collections::HashMap<String, DateTime<Utc>> = std::collections::HashMap::new();
    for part in [
        "status IN ('just_in', 'failed') AND ordering_key IS NULL",
        "status IN ('just_in', 'failed') AND ordering_key IS NOT NULL",
        "status = 'queued'",
    ] {
        let rows: Vec<(String, Option<DateTime<Utc>>)> = l4::Entity::find()
            .select_only()
            .column(l4::Column::Destination)
            .column_as(Expr::from(Func::min(Expr::col(l4::Column::CreatedAt))), "oldest")
            .filter(Expr::cust(part))
            .filter(l4::Column::Direction.eq(Direction::Upstream))
            .group_by(l4::Column::Destination)
            .into_tuple()
            .all(db)
            .await?;
        for (d, t) in rows {
            if let Some(t) = t {
                let e = oldest.entry(d).or_insert(t);
                *e = Ord::min(*e, t);
            }
        }
    }
    Ok(oldest)
}

/// [`stats`] the old way: a `GROUP BY` over each whole table for the counts and another over
/// layer 4 per destination. Kept to measure the difference (`hub-worker bench-queries`).
pub async fn stats_by_scan(db: &DatabaseConnection) -> Result<Stats> {
    let counts = crate::hub::counts_by_scan(db).await?;
    let per: Vec<(String, Status, i64)> = l4::Entity::find()
        .select_only()
        .column(l4::Column::Destination)
        .column(l4::Column::Status)
        .column_as(Expr::col(l4::Column::Id).count(), "n")
        .filter(l4::Column::Direction.eq(Direction::Upstream))
        .group_by(l4::Column::Destination)
        .group_by(l4::Column::Status)
        .into_tuple()
        .all(db)
        .await?;
    let oldest: Vec<(String, Option<DateTime<Utc>>)> = l4::Entity::find()
        .select_only()
        .column(l4::Column::Destination)
        .column_as(Expr::from(Func::min(Expr::col(l4::Column::CreatedAt))), "oldest")
        .filter(l4::Column::Direction.eq(Direction::Upstream))
        .filter(l4::Column::Status.is_in([Status::JustIn, Status::Failed, Status::Queued]))
        .group_by(l4::Column::Destination)
        .into_tuple()
        .all(db)
        .await?;
    let overdue: Vec<(String, i64)> = l4::Entity::find()
        .select_only()
        .column(l4::Column::Destination)
        .column_as(Expr::col(l4::Column::Id).count(), "n")
        .filter(l4::Column::Direction.eq(Direction::Upstream))
        .filter(l4::Column::Status.eq(Status::Queued))
        .filter(l4::Column::LastError.starts_with(layer4_dispatch::publish::RECEIPT_OVERDUE))
        .group_by(l4::Column::Destination)
        .into_tuple()
        .all(db)
        .await?;
    let per: Vec<(&str, Status, i64)> = per.iter().map(|(d, s, n)| (d.as_str(), *s, *n)).collect();
    let oldest = |d: &str| oldest.iter().find(|(x, _)| x == d).and_then(|(_, t)| *t);
    let overdue = |d: &str| overdue.iter().find(|(x, _)| x == d).map_or(0, |(_, n)| *n);
    let destinations = destination_stats(&per, oldest, overdue);
    let deliveries = downstream::deliveries_by_scan(db).await?;
    // Already bounded by its partial index: there is no slower way worth keeping.
    let receipts_unsent = downstream::receipts_unsent(db).await?;
    // One `pull_state` row per pulled source: bounded too.
    let pulls = pulls::pull_stats(db).await?;
    Ok(Stats { counts, destinations, deliveries, receipts_unsent, pulls })
}

/// Why a replay was refused.
fn not_replayable(id: Uuid, why: impl Into<String>) -> Error {
    Error::Conflict(format!("message {id} cannot be replayed: {}", why.into()))
}

/// The layer whose rows a replay from layer `from_layer` copies: the one below, so that layer
/// `from_layer`'s stage does its work again (with the integration as it is now: a changed
/// mapping translates again). Layers 1 and 2 both start over from the raw bytes.
pub fn copied_layer(from_layer: u8) -> Result<u8> {
    if !(1..=4).contains(&from_layer) {
        return Err(Error::BadRequest(format!("from_layer {from_layer}: 1 to 4")));
    }
    Ok(Ord::max(from_layer.saturating_sub(1), 1))
}

/// Sends the message `id` names through layer `from_layer` and on again: every row of the
/// layer below on the message's path is copied as a new `just_in` row whose `parent_id` is the
/// old row (same origin), and the stages carry the copies on. Old rows stay as they are. Only
/// final rows (forwarded, acknowledged, rejected, dead, dropped) are replayed: a row still moving would
/// be delivered twice. `by` (the admin token's name, `cli`) is recorded on every new row as
/// `replayed_by`. Returns the new rows' ids.
pub async fn replay(db: &DatabaseConnection, id: Uuid, from_layer: u8, by: &str) -> Result<Vec<Uuid>> {
    let layer = copied_layer(from_layer)?;
    let lin = lineage(db, id).await?;
    // Downstream, only the delivery is done again (a new layer 1 row: a new delivery with its
    // own idempotency key, and a new receipt when it ends); the translation and the request are
    // made by one stage from the core message, which has no stage to take a copied layer 2 or
    // 3 row. A core app that wants a new translation sends the message again.
    if from_layer > 2 && lin.entries.iter().any(|e| e.direction == Direction::Downstream) {
        return Err(not_replayable(
            id,
            "a downstream message is replayed from layer 1 (delivered again); to translate it again, \
             the core app sends it again under a new core-message-id",
        ));
    }
    // The newest copy of each row only: a row replayed before has a same-layer child (its
    // copy), and replaying both would send the message twice more.
    fn newest<'a>(entries: &'a [LineageEntry], mut e: &'a LineageEntry) -> &'a LineageEntry {
        while let Some(copy) =
            entries.iter().filter(|x| x.layer == e.layer && x.parent_id == Some(e.id)).max_by_key(|x| x.id)
        {
            e = copy;
        }
        e
    }
    let mut targets: Vec<&LineageEntry> = lin
        .chain(id)
        .into_iter()
        .filter(|e| e.layer.number() == layer)
        .map(|e| newest(&lin.entries, e))
        .collect();
    targets.sort_by_key(|e| e.id);
    targets.dedup_by_key(|e| e.id);
    if targets.is_empty() {
        return Err(not_replayable(id, format!("it has no layer {layer} row on its path to replay from")));
    }
    let ids: Vec<Uuid> = targets.iter().map(|e| e.id).collect();
    let txn = db.begin().await?;
    let new_ids = match layer {
        1 => copy_rows::<l1::Entity>(&txn, locked_final::<l1::Entity>(&txn, id, &ids).await?, by).await?,
        2 => copy_rows::<l2::Entity>(&txn, locked_final::<l2::Entity>(&txn, id, &ids).await?, by).await?,
        _ => copy_rows::<l3::Entity>(&txn, locked_final::<l3::Entity>(&txn, id, &ids).await?, by).await?,
    };
    txn.commit().await?;
    tracing::info!(%id, from_layer, replayed = new_ids.len(), by, "replayed");
    Ok(new_ids)
}

/// What a replay by source did.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReplay {
    /// The new rows.
    pub replayed: Vec<Uuid>,
    /// Rows left alone because they are still moving (replay them once they settle).
    pub skipped_moving: usize,
}

/// Replays every message `source` received since `since` through layer `from_layer` again
/// (`from_layer = 3` translates the stored records again with the mapping as it is now). Only
/// the newest copy of each row is replayed; rows still moving are skipped and counted. `by` is
/// recorded on every new row as `replayed_by`.
pub async fn replay_source(
    db: &DatabaseConnection,
    source: &str,
    since: DateTime<Utc>,
    from_layer: u8,
    by: &str,
) -> Result<SourceReplay> {
    let layer = copied_layer(from_layer)?;
    let txn = db.begin().await?;
    let (replayed, skipped_moving) = match layer {
        1 => replay_rows::<l1::Entity, l1::Entity>(&txn, source, since, false, by).await?,
        2 => replay_rows::<l2::Entity, l1::Entity>(&txn, source, since, true, by).await?,
        _ => replay_rows::<l3::Entity, l2::Entity>(&txn, source, since, true, by).await?,
    };
    txn.commit().await?;
    tracing::info!(source, %since, from_layer, replayed = replayed.len(), skipped_moving, by, "replayed by source");
    Ok(SourceReplay { replayed, skipped_moving })
}

/// The rows of `E` to replay: from `source`'s messages since `since`, not replayed before (no
/// same-layer copy), and, with `check_parent`, made from a parent (in `P`, the layer below)
/// that was not replayed itself: after a replay through layer 3, the old translation is
/// stale and a replay through layer 4 takes only the new one. One level is checked.
async fn replay_rows<E, P>(
    txn: &sea_orm::DatabaseTransaction,
    source: &str,
    since: DateTime<Utc>,
    check_parent: bool,
    by: &str,
) -> Result<(Vec<Uuid>, usize)>
where
    P: ReplayCopy,
    E: ReplayCopy,
    E::Model: Sync + Serialize + sea_orm::IntoActiveModel<E::ActiveModel>,
    for<'a> LineageEntry: From<&'a E::Model>,
{
    let origins = l1::Entity::find()
        .select_only()
        .column(l1::Column::Id)
        .filter(l1::Column::Source.eq(source))
        .filter(l1::Column::CreatedAt.gte(since))
        // What a source sent: a downstream target's deliveries are replayed one by one.
        .filter(l1::Column::Direction.eq(Direction::Upstream))
        .into_query();
    // A row with a same-layer child has been replayed: its newest copy stands for it. The
    // children are read from the partial index that holds only them (`E::successors`).
    let superseded = E::find().select_only().column(E::PARENT_ID).filter(E::successors()).into_query();
    let mut q = E::find()
        .filter(E::SOURCE.eq(source))
        .filter(E::ORIGIN_ID.in_subquery(origins))
        .filter(E::ID.not_in_subquery(superseded));
    if check_parent {
        let replayed_parents =
            P::find().select_only().column(P::PARENT_ID).filter(P::successors()).into_query();
        q = q.filter(E::PARENT_ID.not_in_subquery(replayed_parents));
    }
    let rows = q.order_by_asc(E::ID).lock_exclusive().all(txn).await?;
    // Checked again under the locks: a replay that committed while this one waited made copies
    // the subquery above (an older snapshot) could not see.
    let ids: Vec<Uuid> = rows.iter().map(|r| LineageEntry::from(r).id).collect();
    let mut copied = 0;
    for chunk in ids.chunks(10_000) {
        use sea_orm::PaginatorTrait;
        copied += E::find()
            .filter(E::PARENT_ID.is_in(chunk.iter().copied()))
            .filter(E::successors())
            .count(txn)
            .await?;
    }
    {
        if copied > 0 {
            return Err(Error::Conflict(format!(
                "{copied} of the rows were replayed meanwhile by someone else: run the replay again"
            )));
        }
    }
    let (done, moving): (Vec<_>, Vec<_>) =
        rows.into_iter().partition(|r| LineageEntry::from(r).status.is_final());
    Ok((copy_rows::<E>(txn, done, by).await?, moving.len()))
}

/// Layer rows a replay can copy.
trait ReplayCopy: LayerTable {
    /// The rows of this table that have a parent in this table (replay copies; in layer 1,
    /// resends too), as the predicate of their partial index `ix_<table>_successors`
    /// (migration 000010). Every query for a row's same-layer children adds it, so the index
    /// serves the query instead of a scan of the whole table: in layers 2 and 3 every row has
    /// a `parent_id` (the row of the layer below), so `parent_id IS NOT NULL` says nothing.
    fn successors() -> sea_orm::Condition;

    /// `row` as a fresh `just_in` copy with id `id` whose parent is the old row, made at the
    /// request of `by`.
    fn fresh(row: Self::Model, id: Uuid, now: DateTime<Utc>, by: &str) -> Self::Model;
}

macro_rules! replay_copy {
    ($entity:ty, $successors:expr, |$m:ident| $extra:block) => {
        impl ReplayCopy for $entity {
            fn successors() -> sea_orm::Condition {
                sea_orm::Condition::all().add($successors)
            }

            fn fresh(row: Self::Model, id: Uuid, now: DateTime<Utc>, by: &str) -> Self::Model {
                let mut $m = row;
                $m.parent_id = Some($m.id);
                $m.id = id;
                $m.status = Status::JustIn;
                $m.attempts = 0;
                $m.last_error = None;
                $m.next_attempt_at = Some(now);
                $m.created_at = now;
                $m.updated_at = now;
                $m.replayed_by = Some(by.to_owned());
                $extra
                $m
            }
        }
    };
}

// A replayed raw row is a new arrival of the same bytes, not a duplicate of the old one. Its key
// is the one a sender's resend of the old row takes (`layer1_ingest::ingest`): one successor per
// copy, so a replay and a resend racing for the same row cannot both be stored; the unique
// index lets one in, and the other is settled against it (or refused, for the replay).
// Stage-made layer 1 rows have no parent: a row with one is a replay copy or a resend.
replay_copy!(l1::Entity, l1::Column::ParentId.is_not_null(), |m| {
    if let Some(parent) = m.parent_id {
        m.dedup_key = layer1_ingest::ingest::successor_key(parent);
    }
});
// Every layer 2 and 3 row has a parent; only replay copies say who asked for them.
replay_copy!(l2::Entity, l2::Column::ReplayedBy.is_not_null(), |m| {});
replay_copy!(l3::Entity, l3::Column::ReplayedBy.is_not_null(), |m| {});

async fn copy_rows<E>(txn: &sea_orm::DatabaseTransaction, rows: Vec<E::Model>, by: &str) -> Result<Vec<Uuid>>
where
    E: ReplayCopy,
    E::Model: Sync + Serialize + sea_orm::IntoActiveModel<E::ActiveModel>,
{
    let now = Utc::now();
    let mut ids = Vec::with_capacity(rows.len());
    let copies: Vec<E::Model> = rows
        .into_iter()
        .map(|r| {
            let id = Uuid::now_v7();
            ids.push(id);
            E::fresh(r, id, now, by)
        })
        .collect();
    insert_rows::<E, _>(txn, copies).await?;
    Ok(ids)
}

/// Locks the rows to replay, and checks under the lock that they are final and not replayed
/// by someone else meanwhile (a concurrent or retried replay gets 409, not a second copy).
async fn locked_final<E>(txn: &sea_orm::DatabaseTransaction, id: Uuid, ids: &[Uuid]) -> Result<Vec<E::Model>>
where
    E: ReplayCopy,
    E::Model: Sync,
    for<'a> LineageEntry: From<&'a E::Model>,
{
    use sea_orm::PaginatorTrait;
    let rows = E::find().filter(E::ID.is_in(ids.iter().copied())).lock_exclusive().all(txn).await?;
    for r in &rows {
        let e = LineageEntry::from(r);
        if !e.status.is_final() {
            return Err(not_replayable(id, format!("row {} is still {}", e.id, e.status)));
        }
    }
    if E::find().filter(E::PARENT_ID.is_in(ids.iter().copied())).filter(E::successors()).count(txn).await? > 0
    {
        return Err(not_replayable(id, "it was replayed meanwhile"));
    }
    Ok(rows)
}

/// Whether the database answers.
pub async fn ping(db: &DatabaseConnection) -> Result<()> {
    db.execute_unprepared("SELECT 1").await?;
    Ok(())
}
