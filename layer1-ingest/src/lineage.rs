//! One row of a message's chain, whatever its layer: what `trace` and the audit desk show.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::status::{Direction, Layer, Status};

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
