//! One row of a message's chain, whatever its layer: what `trace` and the audit desk show.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect, Select};
use serde::Serialize;
use uuid::Uuid;

use crate::error::Result;
use crate::status::{Direction, Layer, Status};
use crate::table::LayerTable;

/// A layer row seen from the lineage: the columns every layer has, plus a one-line summary of
/// the layer's own payload (record kind, core type, destination...).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LineageEntry {
    /// Which layer.
    pub layer: Layer,
    /// The row's id.
    pub id: Uuid,
    /// The row before it in this flow.
    pub parent_id: Option<Uuid>,
    /// The first row of the flow.
    pub origin_id: Uuid,
    /// Which way it flows.
    pub direction: Direction,
    /// Its status.
    pub status: Status,
    /// The integration.
    pub source: String,
    /// The third party's id (layer 1) or the record's id (layer 2+).
    pub source_ref: Option<String>,
    /// Failed attempts so far.
    pub attempts: i32,
    /// Reason of the last rejection or failure.
    pub last_error: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last status change.
    pub updated_at: DateTime<Utc>,
    /// The layer's own payload in one line.
    pub summary: String,
    /// Who asked for the replay that made this row (admin token name, `cli`); absent for rows
    /// the stages made in the ordinary course.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed_by: Option<String>,
}

impl From<&crate::entity::Model> for LineageEntry {
    fn from(m: &crate::entity::Model) -> Self {
        LineageEntry {
            layer: Layer::Raw,
            id: m.id,
            parent_id: m.parent_id,
            origin_id: m.origin_id,
            direction: m.direction,
            status: m.status,
            source: m.source.clone(),
            source_ref: m.source_ref.clone(),
            attempts: m.attempts,
            last_error: m.last_error.clone(),
            created_at: m.created_at,
            updated_at: m.updated_at,
            summary: format!("{} bytes of {}, sha256 {}", m.body.len(), m.content_type, m.body_sha256),
            replayed_by: m.replayed_by.clone(),
        }
    }
}

/// A layer table read for its lineage entries: every column an entry shows, and of the
/// payload (a body, a record, a core message) only what its summary line says, never the
/// payload itself. Lineage lookups and listings read many rows; a body can be a megabyte.
pub trait LineageTable: LayerTable {
    /// The columns [`LineageTable::select_entries`] reads.
    type EntryRow: FromQueryResult + Into<LineageEntry> + Send + Sync;

    /// The columns of an entry besides `select_entries`' common ones: `source_ref`,
    /// `replayed_by` where the layer has it, and the summary's.
    fn entry_columns(select: Select<Self>) -> Select<Self>;

    /// `SELECT` of an entry's columns, to be filtered and ordered by the caller.
    fn select_entries() -> Select<Self> {
        Self::entry_columns(Self::find().select_only().columns([
            Self::ID,
            Self::PARENT_ID,
            Self::ORIGIN_ID,
            Self::DIRECTION,
            Self::STATUS,
            Self::SOURCE,
            Self::ATTEMPTS,
            Self::LAST_ERROR,
            Self::CREATED_AT,
            Self::UPDATED_AT,
        ]))
    }
}

/// Every row of this table in the flow that started at `origin`, oldest first, as lineage
/// entries (the `(origin_id, parent_id)` index finds them).
pub async fn entries_by_origin<E: LineageTable, C: ConnectionTrait>(
    conn: &C,
    origin: Uuid,
) -> Result<Vec<LineageEntry>> {
    Ok(E::select_entries()
        .filter(E::ORIGIN_ID.eq(origin))
        .order_by_asc(E::ID)
        .into_model::<E::EntryRow>()
        .all(conn)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// The columns of a lineage entry every layer has. A layer's entry row nests it
/// (`#[sea_orm(nested)]`) beside the columns of its own summary.
#[derive(Debug, Clone, FromQueryResult)]
pub struct EntryCommon {
    id: Uuid,
    parent_id: Option<Uuid>,
    origin_id: Uuid,
    direction: Direction,
    status: Status,
    source: String,
    source_ref: Option<String>,
    attempts: i32,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl EntryCommon {
    /// The entry of this `layer`'s row, with the layer's one-line `summary`.
    pub fn entry(self, layer: Layer, summary: String, replayed_by: Option<String>) -> LineageEntry {
        LineageEntry {
            layer,
            id: self.id,
            parent_id: self.parent_id,
            origin_id: self.origin_id,
            direction: self.direction,
            status: self.status,
            source: self.source,
            source_ref: self.source_ref,
            attempts: self.attempts,
            last_error: self.last_error,
            created_at: self.created_at,
            updated_at: self.updated_at,
            summary,
            replayed_by,
        }
    }
}

/// A `layer1_raw` row as its lineage entry reads it: the body's length, not the body.
#[derive(Debug, Clone, FromQueryResult)]
pub struct RawEntryRow {
    #[sea_orm(nested)]
    common: EntryCommon,
    replayed_by: Option<String>,
    content_type: String,
    body_sha256: String,
    body_len: i64,
}

impl From<RawEntryRow> for LineageEntry {
    fn from(m: RawEntryRow) -> Self {
        let summary = format!("{} bytes of {}, sha256 {}", m.body_len, m.content_type, m.body_sha256);
        m.common.entry(Layer::Raw, summary, m.replayed_by)
    }
}

impl LineageTable for crate::entity::Entity {
    type EntryRow = RawEntryRow;

    fn entry_columns(select: Select<Self>) -> Select<Self> {
        use crate::entity::Column;
        use sea_orm::sea_query::Expr;
        // `body` is `bytea`/`blob`: `length` counts its bytes on both engines (the cast makes
        // PostgreSQL's `integer` the `bigint` SQLite gives).
        select
            .columns([Column::SourceRef, Column::ReplayedBy, Column::ContentType, Column::BodySha256])
            .column_as(Expr::cust("CAST(length(body) AS BIGINT)"), "body_len")
    }
}
