//! Core message (layer 4) -> translation (layer 3) -> request (layer 2) -> delivery (layer 1).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::Condition;
use sea_orm::{DatabaseConnection, TransactionTrait};
use uuid::Uuid;

use layer1_ingest::json::Value;
use layer1_ingest::table::{
    Leased, claim_leased_where, failure_transition, insert_rows, settle_leased, transition_leased,
};
use layer1_ingest::{Direction, Failure, Rejection, Stage, StageSettings, Status, guarded};
use layer2_normalize::request::BuiltRequest;
use layer3_translate::{Parent, RecordInput, translation_row};
use layer4_dispatch::delivery_receipts::{self, Final};

use super::Downstream;
use crate::outbound::OutboundRoute;

type CoreRow = layer4_dispatch::entity::Model;
type CoreTable = layer4_dispatch::entity::Entity;

/// Claims core messages due downstream and turns each into a delivery (see the module docs).
pub struct OutboundStage {
    db: DatabaseConnection,
    down: Downstream,
    settings: StageSettings,
}

impl OutboundStage {
    /// A stage over `db`.
    pub fn new(db: DatabaseConnection, down: Downstream, settings: StageSettings) -> Self {
        Self { db, down, settings }
    }
}

/// What became of one core message.
enum Made {
    /// Translated and built: the layer 3, 2 and 1 rows.
    Delivery(
        Box<(layer3_translate::entity::Model, layer2_normalize::entity::Model, layer1_ingest::entity::Model)>,
    ),
    /// Translated, but the request could not be built: the layer 3 row, `rejected`.
    Refused(Box<layer3_translate::entity::Model>, Rejection),
}

/// The ordering key's value at `pointer` of the core message: a scalar, as text.
fn ordering_key(data: &Value, pointer: &str) -> Result<String, Failure> {
    let key = match data.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.as_str().to_owned(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => {
            return Err(Rejection::field(
                pointer,
                "ordering_key",
                "the route orders deliveries by this field, and the core message has no text or number here",
            )
            .into());
        }
    };
    if key.is_empty() || key.len() > 512 {
        return Err(
            Rejection::field(pointer, "ordering_key", "the ordering key must be 1 to 512 bytes").into()
        );
    }
    Ok(key)
}

/// Translates and builds one core message.
async fn make(route: &OutboundRoute, row: &CoreRow, now: DateTime<Utc>) -> Result<Made, Failure> {
    let data = Value::parse(row.body.as_bytes())
        .map_err(|e| Rejection::whole("json", format!("the core message is not JSON: {e}")))?;
    let key = route.ordering_key.as_deref().map(|p| ordering_key(&data, p)).transpose()?;
    let input = RecordInput {
        // Downstream, the "record" layer 3 translates is the core message itself.
        id: row.id.into(),
        origin_id: row.origin_id.into(),
        source: &row.destination,
        source_ref: row.source_ref.as_deref(),
        kind: &row.message_type,
        schema_version: Some(&row.type_version),
        data: &data,
    };
    let tr = guarded(route.translator.translate(&input)).await?;
    let from = Parent {
        id: row.id,
        origin_id: row.origin_id,
        source: &row.destination,
        source_ref: row.source_ref.as_deref(),
    };
    // Written `forwarded` at once: this stage also makes its layer 2 row.
    let mut l3 = translation_row(&tr, &from, Direction::Downstream, now)?;
    l3.status = Status::Forwarded;
    l3.next_attempt_at = None;
    let req = match route.request.build(&tr.message.body) {
        Ok(r) => r,
        Err(rejection) => {
            l3.status = Status::Rejected;
            l3.last_error = Some(rejection.to_string());
            return Ok(Made::Refused(Box::new(l3), rejection));
        }
    };
    let record = serde_json::to_string(&req)
        .map_err(|e| Failure::Rejected(Rejection::whole("serialize", e.to_string())))?;
    let l2 = layer2_normalize::entity::Model {
        id: Uuid::now_v7(),
        direction: Direction::Downstream,
        status: Status::Forwarded,
        attempts: 0,
        last_error: None,
        next_attempt_at: None,
        parent_id: Some(l3.id),
        origin_id: row.origin_id,
        source: row.destination.clone(),
        source_ref: row.source_ref.clone(),
        record_kind: "request".to_owned(),
        record_index: 0,
        record,
        schema_version: None,
        replayed_by: None,
        created_at: now,
        updated_at: now,
    };
    let l1 = delivery_row(&l2, &req, row, key, now)?;
    Ok(Made::Delivery(Box::new((l3, l2, l1))))
}

/// The layer 1 row of a delivery: the body as it will be sent, the template's headers with
/// the method and path as the pseudo-headers `:method` and `:path` (HTTP/2's names), `just_in`.
fn delivery_row(
    l2: &layer2_normalize::entity::Model,
    req: &BuiltRequest,
    core: &CoreRow,
    ordering_key: Option<String>,
    now: DateTime<Utc>,
) -> Result<layer1_ingest::entity::Model, Failure> {
    let mut headers = serde_json::Map::new();
    headers.insert(":method".into(), req.method.clone().into());
    headers.insert(":path".into(), req.path_and_query.clone().into());
    for (k, v) in &req.headers {
        headers.insert(k.to_ascii_lowercase(), v.clone().into());
    }
    let id = Uuid::now_v7();
    Ok(layer1_ingest::entity::Model {
        id,
        direction: Direction::Downstream,
        status: Status::JustIn,
        attempts: 0,
        last_error: None,
        next_attempt_at: Some(now),
        parent_id: Some(l2.id),
        origin_id: core.origin_id,
        source: core.destination.clone(),
        source_ref: core.source_ref.clone(),
        // One delivery per built request: unique with the source, like an upstream event key.
        dedup_key: format!("deliver:{}", l2.id),
        body: req.body.as_bytes().to_vec(),
        content_type: req.content_type.clone().unwrap_or_default(),
        headers: serde_json::Value::Object(headers).to_string(),
        body_sha256: layer1_ingest::ingest::sha256_hex(req.body.as_bytes()),
        replayed_by: None,
        ordering_key,
        message_type: Some(core.message_type.clone()),
        created_at: now,
        updated_at: now,
    })
}

impl OutboundStage {
    fn receipt(&self, row: &CoreRow, status: Status, reason: String) -> Final {
        Final {
            dispatch_id: row.origin_id,
            raw_id: None,
            core_message_id: row.source_ref.clone().unwrap_or_default(),
            target: row.destination.clone(),
            message_type: row.message_type.clone(),
            receipt_to: self.down.receipt_to(&row.destination),
            status,
            http_status: None,
            fields: Vec::new(),
            reason: Some(reason),
        }
    }

    /// Records the rows that could not go on, still under our lease; returns the receipts of
    /// those that became final.
    async fn settle_failures<C: sea_orm::ConnectionTrait>(
        &self,
        txn: &C,
        lease: &Leased<CoreRow>,
        failed: Vec<(&CoreRow, Failure)>,
        now: DateTime<Utc>,
    ) -> layer1_ingest::Result<Vec<Final>> {
        let mut finals = Vec::new();
        for (row, failure) in failed {
            // Downstream has no drop rules: a translator that says "dropped" refuses the core
            // message, which then gets its receipt like any refusal.
            let failure = match failure {
                Failure::Dropped { rule } => Failure::Rejected(Rejection::whole(
                    "dropped",
                    format!("the outbound translator dropped it (rule `{rule}`)"),
                )),
                other => other,
            };
            let t = failure_transition(row.attempts, &failure, &self.settings, now);
            if transition_leased::<CoreTable, C>(txn, lease.until, &[row.id], &t, now).await?.is_empty() {
                continue; // our lease ended and another worker has the row
            }
            let reason = t.reason.clone().unwrap_or_default();
            // Rejected and dead rows were logged at WARN by `transition_leased`.
            if !t.to.is_given_up() {
                tracing::info!(id = %row.id, target = %row.destination, status = %t.to, %reason, "core message not delivered");
            }
            match t.to {
                Status::Rejected | Status::Dead => finals.push(self.receipt(row, t.to, reason)),
                _ => {}
            }
        }
        Ok(finals)
    }
}

#[async_trait]
impl Stage for OutboundStage {
    fn name(&self) -> &'static str {
        "outbound"
    }

    #[tracing::instrument(skip_all, name = "batch", fields(stage = "outbound"))]
    async fn run_batch(&self) -> layer1_ingest::Result<usize> {
        let Some(lease) = claim_leased_where::<CoreTable>(
            &self.db,
            Direction::Downstream,
            self.settings.batch_size,
            self.settings.lease,
            Condition::all(),
        )
        .await?
        else {
            return Ok(0);
        };
        let deadline = layer1_ingest::advance::compute_deadline(&lease);
        let mut made: Vec<(&CoreRow, Made)> = Vec::with_capacity(lease.rows.len());
        let mut failed: Vec<(&CoreRow, Failure)> = Vec::new();
        for row in &lease.rows {
            let Some(route) = self.down.outbound.route(&row.destination, &row.message_type) else {
                let why = Rejection::field(
                    "/hub-type",
                    "outbound_route",
                    format!(
                        "no outbound route for core message type `{}` to target `{}`",
                        row.message_type, row.destination
                    ),
                );
                failed.push((row, why.into()));
                continue;
            };
            match layer1_ingest::advance::within_lease(
                deadline,
                self.settings.lease,
                make(route, row, lease.now),
            )
            .await
            {
                None => break,
                Some(Ok(m)) => made.push((row, m)),
                Some(Err(f)) => failed.push((row, f)),
            }
        }
        let now = Utc::now();
        let forwarded: Vec<Uuid> = made.iter().map(|(r, _)| r.id).collect();
        // Durable: the layer 1 rows written here are sent to third parties.
        let txn = self.db.begin().await?;
        let ours = settle_leased::<CoreTable, _, _>(&txn, &lease, &forwarded, &[], &self.settings).await?;
        let mut finals = self.settle_failures(&txn, &lease, failed, now).await?;
        let (mut l3s, mut l2s, mut l1s) = (Vec::new(), Vec::new(), Vec::new());
        for (row, m) in made {
            if !ours.contains(&row.id) {
                continue;
            }
            match m {
                Made::Delivery(rows) => {
                    let (l3, l2, l1) = *rows;
                    l3s.push(l3);
                    l2s.push(l2);
                    l1s.push(l1);
                }
                Made::Refused(l3, why) => {
                    layer1_ingest::table::log_given_up(
                        layer1_ingest::Layer::Translated,
                        l3.id,
                        &l3.source,
                        l3.status,
                        l3.last_error.as_deref(),
                    );
                    finals.push(self.receipt(row, Status::Rejected, why.to_string()));
                    l3s.push(*l3);
                }
            }
        }
        let delivered = l1s.len();
        insert_rows::<layer3_translate::entity::Entity, _>(&txn, l3s).await?;
        insert_rows::<layer2_normalize::entity::Entity, _>(&txn, l2s).await?;
        insert_rows::<layer1_ingest::entity::Entity, _>(&txn, l1s).await?;
        let receipts = finals.into_iter().map(|f| delivery_receipts::new_receipt(f, now)).collect();
        delivery_receipts::insert(&txn, receipts).await?;
        txn.commit().await?;
        tracing::debug!(claimed = lease.rows.len(), delivered, "outbound batch");
        Ok(lease.rows.len())
    }
}
