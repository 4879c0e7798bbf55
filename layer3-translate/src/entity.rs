//! `layer3_translated`: a record faithfully translated into a core-app message.

use sea_orm::entity::prelude::*;

use layer1_ingest::{Direction, Layer, LayerTable, Status};

/// A core message with the mapping that produced it and its fidelity report.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "layer3_translated")]
pub struct Model {
    /// UUIDv7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Which way the message flows.
    pub direction: Direction,
    /// Where the message is in its life.
    pub status: Status,
    /// Transient failures so far.
    pub attempts: i32,
    /// Reason of the last rejection or failure.
    pub last_error: Option<String>,
    /// When the row is next due for work; `NULL` once final.
    pub next_attempt_at: Option<DateTimeUtc>,
    /// The `layer2_normalized` row it came from.
    pub parent_id: Option<Uuid>,
    /// The first row of the flow.
    pub origin_id: Uuid,
    /// The integration's name.
    pub source: String,
    /// The record's id at the third party.
    pub source_ref: Option<String>,
    /// Core message type (`member.upsert`).
    pub message_type: String,
    /// Core message type version.
    pub type_version: String,
    /// The core message as JSON text.
    pub body: String,
    /// The mapping (translator) that produced it.
    pub mapping_name: String,
    /// Its version.
    pub mapping_version: String,
    /// Fidelity report as JSON text: mapped, ignored and defaulted fields.
    pub fidelity: String,
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
    const LAYER: Layer = Layer::Translated;
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
            layer: Layer::Translated,
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
                "{} v{} by mapping {}@{}",
                m.message_type, m.type_version, m.mapping_name, m.mapping_version
            ),
            replayed_by: m.replayed_by.clone(),
        }
    }
}

/// A `layer3_translated` row as its lineage entry reads it: no core message.
#[derive(Debug, Clone, sea_orm::FromQueryResult)]
pub struct EntryRow {
    #[sea_orm(nested)]
    common: layer1_ingest::lineage::EntryCommon,
    replayed_by: Option<String>,
    message_type: String,
    type_version: String,
    mapping_name: String,
    mapping_version: String,
}

impl From<EntryRow> for layer1_ingest::LineageEntry {
    fn from(m: EntryRow) -> Self {
        m.common.entry(
            Layer::Translated,
            format!(
                "{} v{} by mapping {}@{}",
                m.message_type, m.type_version, m.mapping_name, m.mapping_version
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
            Column::MessageType,
            Column::TypeVersion,
            Column::MappingName,
            Column::MappingVersion,
        ])
    }
}
