//! `layer4_dispatch`: the outbox. One row per (core message, destination) upstream; one row
//! per message received from the core app downstream.

use sea_orm::entity::prelude::*;

use layer1_ingest::{Direction, Layer, LayerTable, Status};

/// A core message addressed to one destination queue.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "layer4_dispatch")]
pub struct Model {
    /// UUIDv7; sent as `hub-message-id`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Which way the message flows.
    pub direction: Direction,
    /// Where the message is in its life.
    pub status: Status,
    /// Publishes so far (upstream): each claim by the publisher counts one.
    pub attempts: i32,
    /// Reason of the last failure or the receiver's rejection.
    pub last_error: Option<String>,
    /// When the publisher next looks at the row: the lease's end while publishing, the ack
    /// deadline once queued, the retry time once failed; `NULL` once final.
    pub next_attempt_at: Option<DateTimeUtc>,
    /// The `layer3_translated` row it came from.
    pub parent_id: Option<Uuid>,
    /// The first row of the flow.
    pub origin_id: Uuid,
    /// The integration's name.
    pub source: String,
    /// The record's id at the third party.
    pub source_ref: Option<String>,
    /// The destination queue.
    pub destination: String,
    /// Core message type.
    pub message_type: String,
    /// Core message type version.
    pub type_version: String,
    /// The core message as JSON text: the published body. Downstream, the body exactly as the
    /// core app sent it when that is text a column can hold (UTF-8 without NUL); otherwise
    /// empty, and the bytes are in `raw_body` (see [`raw_body`]).
    pub body: String,
    /// Messages with the same key reach the receiver in order (when the route asks for it).
    pub ordering_key: Option<String>,
    /// When the broker last confirmed it.
    pub queued_at: Option<DateTimeUtc>,
    /// When the receipt was recorded.
    pub acknowledged_at: Option<DateTimeUtc>,
    /// Downstream: `<target>:<core message id>`, unique, so intake is idempotent. `NULL` upstream.
    pub intake_key: Option<String>,
    /// Created.
    pub created_at: DateTimeUtc,
    /// Last status change.
    pub updated_at: DateTimeUtc,
}

/// Lineage is by id columns, not sea-orm relations (layers do not see each other's entities).
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// `layer4_dispatch.raw_body` on its own: the bytes of a downstream message that `body` (text)
/// cannot hold exactly, because they are not UTF-8 or hold a NUL. Intake writes them and the
/// audit desk reads them; nothing else does.
///
/// A narrow view of the same table rather than a field of [`Model`]: the outbox's hot paths
/// (route, publish, receipts) load and write layer 4 rows several times per message and never
/// need these bytes, so they neither select nor carry them.
pub mod raw_body {
    use sea_orm::entity::prelude::*;

    /// A layer 4 row's id, intake key and kept bytes.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "layer4_dispatch")]
    pub struct Model {
        /// The layer 4 row's id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// For a row with `raw_body`: `sha256:<hex of the bytes>` (such a row is always a
        /// contract breach, keyed by its bytes), so the bytes can be re-checked.
        pub intake_key: Option<String>,
        /// The body byte for byte; `NULL` when `body` holds it (every upstream row).
        pub raw_body: Option<Vec<u8>>,
    }

    /// No relations, as for the full row.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

impl LayerTable for Entity {
    const LAYER: Layer = Layer::Dispatch;
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
        let ack = m.acknowledged_at.map(|t| format!(", acknowledged {}", t.to_rfc3339())).unwrap_or_default();
        layer1_ingest::LineageEntry {
            layer: Layer::Dispatch,
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
            summary: format!("{} v{} -> {}{ack}", m.message_type, m.type_version, m.destination),
            // A replay never copies into layer 4 (it re-routes from layer 3): no column here.
            replayed_by: None,
        }
    }
}

/// A `layer4_dispatch` row as its lineage entry reads it: no body.
#[derive(Debug, Clone, sea_orm::FromQueryResult)]
pub struct EntryRow {
    #[sea_orm(nested)]
    common: layer1_ingest::lineage::EntryCommon,
    message_type: String,
    type_version: String,
    destination: String,
    acknowledged_at: Option<DateTimeUtc>,
}

impl From<EntryRow> for layer1_ingest::LineageEntry {
    fn from(m: EntryRow) -> Self {
        let ack = m.acknowledged_at.map(|t| format!(", acknowledged {}", t.to_rfc3339())).unwrap_or_default();
        m.common.entry(
            Layer::Dispatch,
            format!("{} v{} -> {}{ack}", m.message_type, m.type_version, m.destination),
            None,
        )
    }
}

impl layer1_ingest::LineageTable for Entity {
    type EntryRow = EntryRow;

    fn entry_columns(select: Select<Self>) -> Select<Self> {
        use sea_orm::QuerySelect;
        select.columns([
            Column::SourceRef,
            Column::MessageType,
            Column::TypeVersion,
            Column::Destination,
            Column::AcknowledgedAt,
        ])
    }
}
