//! What each layer made of a message, in a message's story: the layer 2 records, the layer 3
//! translations with their fidelity reports, the layer 4 bodies with the headers they are
//! published with. A reader without scope `raw` sees the source's redacted fields
//! ([`crate::redact`]) masked in all of them.

use std::collections::BTreeMap;

use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use serde::Serialize;
use uuid::Uuid;

use layer1_ingest::json::Value;
use layer1_ingest::{Direction, Layer};
use layer2_normalize::entity as l2;
use layer3_translate::entity as l3;
use layer4_dispatch::entity as l4;

use super::RawAccess;
use crate::error::Result;
use crate::lineage::Lineage;
use crate::redact::{Redactions, SourceRedaction};

/// What the audit desk needs of the setup to show a message's content. Without it
/// ([`AuditConfig::default`]) nothing is masked and the published `hub-receipt-to` is left out.
#[derive(Debug, Clone, Default)]
pub struct AuditConfig {
    /// Each source's `[payload] redact` rules.
    pub redactions: Redactions,
    /// The receipts queue the publisher names in `hub-receipt-to` (its physical address).
    pub receipts_to: Option<String>,
}

/// A layer 2 row's record.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecordView {
    /// The layer 2 row.
    pub id: Uuid,
    /// The record kind (downstream: `request`).
    pub record_kind: String,
    /// Its position in the payload.
    pub record_index: i32,
    /// The schema version it was checked against.
    pub schema_version: Option<String>,
    /// The record as stored (numbers as written), with the redacted fields masked for a reader
    /// without scope `raw`; stored text that is not JSON is shown as a string.
    #[schema(value_type = Value)]
    pub record: Value,
    /// The pointers in `record` shown as `"[redacted]"`; empty when nothing was masked.
    pub redacted: Vec<String>,
}

/// A layer 3 row's translation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TranslationView {
    /// The layer 3 row.
    pub id: Uuid,
    /// The core message type.
    pub message_type: String,
    /// Its version.
    pub type_version: String,
    /// The mapping that made it.
    pub mapping_name: String,
    /// Its version.
    pub mapping_version: String,
    /// The translated message (downstream: in the third party's terms), with the fields made
    /// from redacted record fields masked for a reader without scope `raw`.
    #[schema(value_type = Value)]
    pub body: Value,
    /// The fidelity report: `mapped`, `ignored`, `defaulted`, `extras` and `lossy` pointers
    /// (names, not values: never masked).
    #[schema(value_type = Object)]
    pub fidelity: serde_json::Value,
    /// The pointers in `body` shown as `"[redacted]"`.
    pub redacted: Vec<String>,
}

/// A layer 4 row's message: what was (or will be) published upstream, or what the core app
/// sent downstream.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DispatchView {
    /// The layer 4 row.
    pub id: Uuid,
    /// Which way it flows.
    pub direction: Direction,
    /// The destination queue (downstream: the target).
    pub destination: String,
    /// The core message type.
    pub message_type: String,
    /// Its version.
    pub type_version: String,
    /// The ordering key, when the route asks for order.
    pub ordering_key: Option<String>,
    /// The body, with the fields made from redacted record fields masked for a reader without
    /// scope `raw`. Downstream, a body kept as bytes (see `raw`) is an empty string here.
    #[schema(value_type = Value)]
    pub body: Value,
    /// Upstream: the headers it is published with (`hub-message-id`, `hub-origin-id`,
    /// `hub-source`, `hub-source-ref`, `hub-type`, `hub-type-version`, `hub-receipt-to`,
    /// `traceparent`). `null` downstream (the core app's headers are not kept; the row's
    /// columns hold what they said).
    pub headers: Option<BTreeMap<String, String>>,
    /// The pointers in `body` shown as `"[redacted]"`.
    pub redacted: Vec<String>,
}

/// Every layer's content.
pub(super) struct Content {
    pub(super) records: Vec<RecordView>,
    pub(super) translations: Vec<TranslationView>,
    pub(super) dispatches: Vec<DispatchView>,
}

/// Stored JSON text as an exact document; text that is not JSON as a string (a damaged row is
/// shown, not hidden).
fn document(text: &str) -> Value {
    Value::parse(text.as_bytes()).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// Ids are read in chunks: a payload of thousands of records has as many rows per layer, and
/// a statement has a bounded number of parameters.
const CHUNK: usize = 5_000;

/// The content of the rows of `lineage` on the path through its focus: asked by a layer 4 id,
/// that one message's rows; by a layer 1 id, every record of the payload.
pub(super) async fn content_of(
    db: &DatabaseConnection,
    lineage: &Lineage,
    access: RawAccess,
    cfg: &AuditConfig,
) -> Result<Content> {
    let chain = lineage.chain(lineage.focus);
    let ids =
        |layer: Layer| -> Vec<Uuid> { chain.iter().filter(|e| e.layer == layer).map(|e| e.id).collect() };
    let (mut r2, mut r3, mut r4) = (Vec::new(), Vec::new(), Vec::new());
    for c in ids(Layer::Normalized).chunks(CHUNK) {
        r2.extend(
            l2::Entity::find()
                .filter(l2::Column::Id.is_in(c.iter().copied()))
                .order_by_asc(l2::Column::Id)
                .all(db)
                .await?,
        );
    }
    for c in ids(Layer::Translated).chunks(CHUNK) {
        r3.extend(
            l3::Entity::find()
                .filter(l3::Column::Id.is_in(c.iter().copied()))
                .order_by_asc(l3::Column::Id)
                .all(db)
                .await?,
        );
    }
    for c in ids(Layer::Dispatch).chunks(CHUNK) {
        r4.extend(
            l4::Entity::find()
                .filter(l4::Column::Id.is_in(c.iter().copied()))
                .order_by_asc(l4::Column::Id)
                .all(db)
                .await?,
        );
    }
    // Upstream rows only: the rules name a third party's payload fields, and a file's
    // downstream side (the same source name) carries the core app's messages.
    let rules = |source: &str, direction: Direction| -> Option<&SourceRedaction> {
        (access == RawAccess::Withheld && direction == Direction::Upstream)
            .then(|| cfg.redactions.get(source))
            .flatten()
    };
    let records = r2
        .into_iter()
        .map(|r| {
            let mut record = document(&r.record);
            let redacted = rules(&r.source, r.direction)
                .map(|x| x.mask_record(r.record_index, &mut record))
                .unwrap_or_default();
            RecordView {
                id: r.id,
                record_kind: r.record_kind,
                record_index: r.record_index,
                schema_version: r.schema_version,
                record,
                redacted,
            }
        })
        .collect();
    let mapping_of: BTreeMap<Uuid, (String, String)> =
        r3.iter().map(|r| (r.id, (r.mapping_name.clone(), r.mapping_version.clone()))).collect();
    let translations = r3
        .into_iter()
        .map(|r| {
            let mut body = document(&r.body);
            let redacted = rules(&r.source, r.direction)
                .map(|x| x.mask_core(Some((&r.mapping_name, &r.mapping_version)), &r.message_type, &mut body))
                .unwrap_or_default();
            TranslationView {
                id: r.id,
                fidelity: serde_json::from_str(&r.fidelity)
                    .unwrap_or_else(|_| serde_json::Value::String(r.fidelity.clone())),
                message_type: r.message_type,
                type_version: r.type_version,
                mapping_name: r.mapping_name,
                mapping_version: r.mapping_version,
                body,
                redacted,
            }
        })
        .collect();
    let dispatches = r4
        .into_iter()
        .map(|r| {
            let mut body = document(&r.body);
            // A layer 4 body is its layer 3 parent's: masked by the same mapping.
            let mapping = r.parent_id.and_then(|p| mapping_of.get(&p)).map(|(n, v)| (n.as_str(), v.as_str()));
            let redacted = rules(&r.source, r.direction)
                .map(|x| x.mask_core(mapping, &r.message_type, &mut body))
                .unwrap_or_default();
            let headers = (r.direction == Direction::Upstream).then(|| published_headers(&r, cfg));
            DispatchView {
                id: r.id,
                direction: r.direction,
                destination: r.destination,
                message_type: r.message_type,
                type_version: r.type_version,
                ordering_key: r.ordering_key,
                body,
                headers,
                redacted,
            }
        })
        .collect();
    Ok(Content { records, translations, dispatches })
}

/// The headers the publisher sends an upstream row with (`layer4_dispatch::publish`).
fn published_headers(r: &l4::Model, cfg: &AuditConfig) -> BTreeMap<String, String> {
    let mut h = layer4_dispatch::wire::HubHeaders {
        message_id: r.id.into(),
        origin_id: r.origin_id.into(),
        source: r.source.clone(),
        source_ref: r.source_ref.clone(),
        message_type: r.message_type.clone(),
        type_version: r.type_version.clone(),
        receipt_to: cfg.receipts_to.clone().unwrap_or_default(),
        traceparent: Some(layer4_dispatch::wire::traceparent(r.origin_id, r.id)),
    }
    .to_headers();
    if cfg.receipts_to.is_none() {
        h.remove(layer4_dispatch::wire::RECEIPT_TO);
    }
    h
}
