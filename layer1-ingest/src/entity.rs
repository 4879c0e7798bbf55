//! `layer1_raw`: the third party's bytes exactly as they arrived.

use sea_orm::entity::prelude::*;

use crate::status::{Direction, Layer, Status};
use crate::table::LayerTable;

/// One received payload (webhook body, polled page, CDC event...).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "layer1_raw")]
pub struct Model {
    /// UUIDv7: time-ordered, so ordering by id is ordering by arrival.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Which way the message flows.
    pub direction: Direction,
    /// Where the message is in its life.
    pub status: Status,
    /// How many times a stage tried this row and failed transiently.
    pub attempts: i32,
    /// The reason of the last rejection or failure (which field, which rule).
    pub last_error: Option<String>,
    /// When the row is next due for work; `NULL` once it is final.
    pub next_attempt_at: Option<DateTimeUtc>,
    /// Always `NULL` in layer 1 upstream: nothing comes before the raw bytes.
    pub parent_id: Option<Uuid>,
    /// The first row of the flow: its own id in layer 1.
    pub origin_id: Uuid,
    /// The integration's name.
    pub source: String,
    /// The third party's own event id, when it has one.
    pub source_ref: Option<String>,
    /// What makes ingest idempotent: `source_ref`, or `sha256:<hex>` of the body without one.
    /// Unique per source.
    pub dedup_key: String,
    /// The bytes exactly as sent.
    #[serde(serialize_with = "crate::table::bytea_text")]
    pub body: Vec<u8>,
    /// The sender's content type.
    pub content_type: String,
    /// Selected request headers as a JSON object, secrets redacted.
    pub headers: String,
    /// Hex SHA-256 of `body`, so an auditor can check the bytes were not altered.
    pub body_sha256: String,
    /// Who asked for the replay that made this row (the admin token's name, `cli`); `NULL`
    /// when the stages made it in the ordinary course.
    pub replayed_by: Option<String>,
    /// Downstream: deliveries with the same key reach the target in the order the core app
    /// sent them (`NULL` upstream).
    pub ordering_key: Option<String>,
    /// Downstream: the core message type the delivery carries (`NULL` upstream).
    pub message_type: Option<String>,
    /// When it was received.
    pub created_at: DateTimeUtc,
    /// When its status last changed.
    pub updated_at: DateTimeUtc,
}

/// No sea-orm relations: lineage is by `parent_id` / `origin_id` across layer crates, which
/// must not know about each other's entities.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl LayerTable for Entity {
    const LAYER: Layer = Layer::Raw;
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
