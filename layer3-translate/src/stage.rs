//! The translate stage: `layer2_normalized` (just_in) -> `layer3_translated`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use layer1_ingest::{Advance, AdvanceStage, Direction, Failure, Rejection, Status, guarded};
use layer2_normalize::entity as normalized;

use crate::entity;
use crate::translator::{RecordInput, Translation, Translator};

/// Translators by `(source, record kind)`.
pub type Translators = HashMap<(String, String), Arc<dyn Translator>>;

/// Claims due layer 2 rows under a lease, translates each with its translator outside any
/// transaction, and writes layer 3 rows in the transaction that marks the record `forwarded`.
/// `TranslateStage::new(db, translators, settings)`.
pub type TranslateStage = AdvanceStage<Translating>;

/// Layer 3's step: a record to its core message.
pub struct Translating(Arc<Translators>);

impl From<Arc<Translators>> for Translating {
    fn from(translators: Arc<Translators>) -> Self {
        Self(translators)
    }
}

/// Translates the layer 2 `row` whose record is `data` (its parsed `record`) and builds the
/// `just_in` layer 3 row, with the core message's parsed body. Shared by the translate stage
/// and the hub's fused fast path.
pub async fn translate(
    translators: &Translators,
    row: &normalized::Model,
    data: &layer1_ingest::json::Value,
    now: chrono::DateTime<Utc>,
) -> Result<(entity::Model, layer1_ingest::json::Value), Failure> {
    let key = (row.source.clone(), row.record_kind.clone());
    let Some(t) = translators.get(&key) else {
        return Err(Rejection::field(
            "/record_kind",
            "known_kind",
            format!("no translator for source `{}` record kind `{}`", row.source, row.record_kind),
        )
        .into());
    };
    let input = RecordInput {
        id: row.id.into(),
        origin_id: row.origin_id.into(),
        source: &row.source,
        source_ref: row.source_ref.as_deref(),
        kind: &row.record_kind,
        schema_version: row.schema_version.as_deref(),
        data,
    };
    let tr: Translation = guarded(t.translate(&input)).await?;
    let from = Parent {
        id: row.id,
        origin_id: row.origin_id,
        source: &row.source,
        source_ref: row.source_ref.as_deref(),
    };
    let model = translation_row(&tr, &from, Direction::Upstream, now)?;
    Ok((model, tr.message.body))
}

/// The row a layer 3 row descends from.
#[derive(Debug, Clone, Copy)]
pub struct Parent<'a> {
    /// Its id (`parent_id`).
    pub id: Uuid,
    /// The flow's origin.
    pub origin_id: Uuid,
    /// The integration (upstream: the source; downstream: the target).
    pub source: &'a str,
    /// The third party's (upstream) or the core app's (downstream) id of the message.
    pub source_ref: Option<&'a str>,
}

/// The `just_in` layer 3 row of a translation: its names checked against their columns (here,
/// not by the database: an oversized value would fail the whole batch's insert), its body and
/// fidelity report as JSON text. Shared by both directions.
pub fn translation_row(
    tr: &Translation,
    from: &Parent<'_>,
    direction: Direction,
    now: chrono::DateTime<Utc>,
) -> Result<entity::Model, Failure> {
    for (what, v, max) in [
        ("message_type", &tr.message.message_type, 128),
        ("type_version", &tr.message.type_version, 32),
        ("mapping_name", &tr.mapping_name, 128),
        ("mapping_version", &tr.mapping_version, 64),
    ] {
        if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
            return Err(Rejection::whole(
                "translation",
                format!("translator gave a {what} that is not 1 to {max} bytes of text"),
            )
            .into());
        }
    }
    let body = serde_json::to_string(&tr.message.body)
        .map_err(|e| Failure::Rejected(Rejection::whole("serialize", e.to_string())))?;
    let fidelity = serde_json::to_string(&tr.fidelity)
        .map_err(|e| Failure::Rejected(Rejection::whole("serialize", e.to_string())))?;
    Ok(entity::Model {
        id: Uuid::now_v7(),
        direction,
        status: Status::JustIn,
        attempts: 0,
        last_error: None,
        next_attempt_at: Some(now),
        parent_id: Some(from.id),
        origin_id: from.origin_id,
        source: from.source.to_owned(),
        source_ref: from.source_ref.map(str::to_owned),
        message_type: tr.message.message_type.clone(),
        type_version: tr.message.type_version.clone(),
        body,
        mapping_name: tr.mapping_name.clone(),
        mapping_version: tr.mapping_version.clone(),
        fidelity,
        replayed_by: None,
        created_at: now,
        updated_at: now,
    })
}

async fn translate_stored(
    translators: &Translators,
    row: &normalized::Model,
    now: chrono::DateTime<Utc>,
) -> Result<entity::Model, Failure> {
    let data = layer1_ingest::json::Value::parse(row.record.as_bytes()).map_err(|e| {
        Failure::Rejected(Rejection::whole("json", format!("stored record is not JSON: {e}")))
    })?;
    Ok(translate(translators, row, &data, now).await?.0)
}

#[async_trait]
impl Advance for Translating {
    type From = normalized::Entity;
    type To = entity::Entity;

    fn name(&self) -> &'static str {
        "translate"
    }

    /// Layer 2 and 3 rows are acted on only by later stages, whose own commits are durable.
    fn relaxed_commit(&self) -> bool {
        true
    }

    async fn children(
        &self,
        row: &normalized::Model,
        now: DateTime<Utc>,
    ) -> Result<Vec<entity::Model>, Failure> {
        Ok(vec![translate_stored(&self.0, row, now).await?])
    }
}
