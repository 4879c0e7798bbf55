//! `layer2_normalized`: one validated record per row (a batch webhook becomes many rows).

use sea_orm::entity::prelude::*;

use layer1_ingest::{Direction, Layer, LayerTable, Status};

/// A record parsed and validated against the third party's API signature.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "layer2_normalized")]
pub struct Model {
    /// UUIDv7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Which way the message flows.
    pub direction: Direction,
    /// Where the record is in its life.
    pub status: Status,
    /// Transient failures so far.
    pub attempts: i32,
    /// Reason of the last rejection or failure.
    pub last_error: Option<String>,
    /// When the row is next due for work; `NULL` once final.
    pub next_attempt_at: Option<DateTimeUtc>,
    /// The `layer1_raw` row it came from.
    pub parent_id: Option<Uuid>,
    /// The first row of the flow (the `layer1_raw` id upstream).
    pub origin_id: Uuid,
    /// The integration's name.
    pub source: String,
    /// The record's own id at the third party, when it has one.
    pub source_ref: Option<String>,
    /// Which kind of record (`contact`, `payment_event`...): picks the translator.
    pub record_kind: String,
    /// Position of the record in its payload (0 for a single-record payload).
    pub record_index: i32,
    /// The record as JSON text, exactly as the normalizer produced it.
    pub record: String,
    /// The schema version it was checked against.
    pub schema_version: Option<String>,
    /// Who asked for the replay that made this row (the admin token's name, `cli`); `NULL`
    /// when the stages made it in the ordinary course.
    pub replayed_by: Option<String>,
    /// Created.
    pub created_at: DateTimeUtc,
    /// Last status change.
    pub updated_at: DateTimeUtc,
}

/// Lineage is by id columns, not sea-orm relations (layers do not see each other's entities).
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl LayerTable for Entity {
    const LAYER: Layer = Layer::Normalized;
    const ID: Column = Column::Id;
    const DIRECTION: Column = Column::Direction;
    const STATUS: Column = Column::Status;
    const ATTEMPTS: Column = Column::Attempts;
    const LAST_ERROR: Column = Column::LastError;
    const NEXT_ATTEMPT_AT: Column = Column::NextAttemptAt;
    const SOURCE: Column = Column::Source;
    const PARENT_ID: Column = Column::ParentId;
    const ORIGIN_ID: Column = Column::OriginId;
    const UPDATED_AT: Column = Column::UpdatedAt;
    const CREATED_AT: Column = Column::CreatedAt;
}

impl From<&Model> for layer1_ingest::LineageEntry {
    fn from(m: &Model) -> Self {
        layer1_ingest::LineageEntry {
            layer: Layer::Normalized,
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
            summary: format!(
                "record #{} kind `{}` schema {}",
                m.record_index,
                m.record_kind,
                m.schema_version.as_deref().unwrap_or("-")
            ),
            replayed_by: m.replayed_by.clone(),
        }
    }
}

/// A `layer2_normalized` row as its lineage entry reads it: no record.
#[derive(Debug, Clone, sea_orm::FromQueryResult)]
pub struct EntryRow {
    #[sea_orm(nested)]
    common: layer1_ingest::lineage::EntryCommon,
    replayed_by: Option<String>,
    record_kind: String,
    record_index: i32,
    schema_version: Option<String>,
}

impl From<EntryRow> for layer1_ingest::LineageEntry {
    fn from(m: EntryRow) -> Self {
        m.common.entry(
            Layer::Normalized,
            format!(
                "record #{} kind `{}` schema {}",
                m.record_index,
                m.record_kind,
                m.schema_version.as_deref().unwrap_or("-")
            ),
            m.replayed_by,
        )
    }
}

impl layer1_ingest::LineageTable for Entity {
    type EntryRow = EntryRow;

    fn entry_columns(select: Select<Self>) -> Select<Self> {
        use sea_orm::QuerySelect;
        select.columns([
            Column::SourceRef,
            Column::ReplayedBy,
            Column::RecordKind,
            Column::RecordIndex,
            Column::SchemaVersion,
        ])
    }
}
