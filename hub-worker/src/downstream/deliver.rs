//! Deliveries (layer 1, downstream) sent over HTTP, each attempt and the answer on record.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Condition, Expr};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, TransactionTrait};
use uuid::Uuid;

use layer1_ingest::deliver::{Attempt, Deliverer, OutgoingRequest, Verdict};
use layer1_ingest::entity::{Column, Entity, Model};
use layer1_ingest::json::Value;
use layer1_ingest::table::{
    Transition, claim_leased_where, failure_transition, insert_rows, still_leased, transition_leased,
};
use layer1_ingest::{Direction, Failure, Stage, StageSettings, Status};
use layer4_dispatch::delivery_receipts::{self, Final};

use super::Downstream;

/// A delivery with an ordering key is due only when no earlier delivery of its key is still
/// open, and no earlier core message for its target is still waiting for translation (it could
/// be of the same key: the key is known only once translated). One statement, so one snapshot:
/// a message moving from layer 4 to layer 1 meanwhile is seen in exactly one of the two places.
/// "Earlier" is the core app's order: the layer 4 id (UUIDv7, taken at intake in the order the
/// broker delivered).
const ORDER_GUARD: &str = "(layer1_raw.ordering_key IS NULL OR (\
    NOT EXISTS (SELECT 1 FROM layer1_raw e WHERE e.direction = 'downstream' \
      AND e.ordering_key IS NOT NULL AND e.status IN ('just_in', 'failed') \
      AND e.source = layer1_raw.source AND e.ordering_key = layer1_raw.ordering_key \
      AND (e.origin_id < layer1_raw.origin_id OR (e.origin_id = layer1_raw.origin_id AND e.id < layer1_raw.id))) \
    AND NOT EXISTS (SELECT 1 FROM layer4_dispatch f WHERE f.direction = 'downstream' \
      AND f.status IN ('just_in', 'failed') AND f.destination = layer1_raw.source \
      AND f.id < layer1_raw.origin_id)))";

/// Sends due deliveries.
pub struct DeliverStage {
    db: DatabaseConnection,
    down: Downstream,
    deliverer: Arc<Deliverer>,
    settings: StageSettings,
}

impl DeliverStage {
    /// A stage over `db`, sending with `deliverer`.
    /// The claim's lease is at least the slowest target's timeout plus a margin: a request
    /// still in flight must not be claimed and sent again by another worker meanwhile (the
    /// third party would see the same idempotency key twice at once).
    pub fn new(
        db: DatabaseConnection,
        down: Downstream,
        deliverer: Arc<Deliverer>,
        settings: StageSettings,
    ) -> Self {
        let mut settings = settings;
        settings.lease =
            settings.lease.max(deliverer.longest_timeout().mul_f64(1.2) + std::time::Duration::from_secs(1));
        Self { db, down, deliverer, settings }
    }
}

/// The request a delivery row holds: its body, and its headers with the pseudo-headers
/// `:method` and `:path` the outbound stage wrote.
fn request_of(row: &Model) -> Result<OutgoingRequest, String> {
    let headers: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&row.headers)
        .map_err(|e| format!("the stored request's headers are unreadable: {e}"))?;
    let text = |k: &str| headers.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let method = text(":method").ok_or("the stored request has no method")?;
    let path = text(":path").ok_or("the stored request has no path")?;
    let rest = headers
        .iter()
        .filter(|(k, _)| !k.starts_with(':'))
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
        .collect();
    Ok(OutgoingRequest {
        delivery_id: row.id,
        method,
        path_and_query: path,
        headers: rest,
        content_type: (!row.content_type.is_empty()).then(|| row.content_type.clone()),
        body: row.body.clone(),
    })
}

/// How a delivery is left after its attempt.
enum Next {
    /// A final status (the receipt is made of it).
    Final(Transition),
    /// Retried later.
    Retry(Transition),
    /// Not sent (circuit open, no permit in time): due again at this time, attempt not counted.
    Later(DateTime<Utc>),
}

/// Reads the route's response fields from a JSON answer; notes what could not be read.
fn response_fields(
    fields: &[(String, String)],
    body: &[u8],
    truncated: bool,
) -> (Vec<(String, Value)>, Option<String>) {
    if fields.is_empty() {
        return (Vec::new(), None);
    }
    if truncated {
        return (
            Vec::new(),
            Some("the answer was longer than the target's max_response_bytes: fields not read".into()),
        );
    }
    let doc = match Value::parse(body) {
        Ok(d) => d,
        Err(e) => return (Vec::new(), Some(format!("the answer is not JSON ({e}): fields not read"))),
    };
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for (name, pointer) in fields {
        match doc.pointer(pointer) {
            Some(v) => out.push((name.clone(), v.clone())),
            None => missing.push(format!("`{name}` ({pointer})")),
        }
    }
    let note = (!missing.is_empty()).then(|| format!("not in the answer: {}", missing.join(", ")));
    (out, note)
}

impl DeliverStage {
    /// The receipt of `row` ending `status`, with what `attempt` (if any) got back.
    fn final_of(&self, row: &Model, end: &Transition, attempt: Option<&Attempt>) -> Final {
        let answer = attempt.and_then(|a| a.answer.as_ref());
        let (fields, note) = match (end.to, answer) {
            (Status::Acknowledged, Some(a)) => {
                let route =
                    row.message_type.as_deref().and_then(|t| self.down.outbound.route(&row.source, t));
                let wanted = route.map(|r| r.response_fields.as_slice()).unwrap_or(&[]);
                response_fields(wanted, &a.body, a.truncated)
            }
            _ => (Vec::new(), None),
        };
        Final {
            dispatch_id: row.origin_id,
            raw_id: Some(row.id),
            core_message_id: row.source_ref.clone().unwrap_or_default(),
            target: row.source.clone(),
            message_type: row.message_type.clone().unwrap_or_default(),
            receipt_to: self.down.receipt_to(&row.source),
            status: end.to,
            http_status: answer.map(|a| a.status),
            fields,
            reason: end.reason.clone().or(note),
        }
    }

    /// What `attempt` makes of `row`.
    fn next(&self, row: &Model, attempt: &Attempt, now: DateTime<Utc>) -> Next {
        let (max_attempts, (base, max)) = match self.down.outbound.target(&row.source) {
            Some(t) => (t.spec.attempts_allowed(), t.spec.retry_delays()),
            None => {
                let d = crate::outbound::TargetSpec::new(String::new());
                (d.attempts_allowed(), d.retry_delays())
            }
        };
        let tries = row.attempts + 1;
        match &attempt.verdict {
            Verdict::Delivered => Next::Final(Transition::to(Status::Acknowledged).counted()),
            Verdict::Rejected { reason } => {
                Next::Final(Transition::to(Status::Rejected).counted().because(reason.clone()))
            }
            Verdict::Retry { reason, .. } if tries >= max_attempts => Next::Final(
                Transition::to(Status::Dead)
                    .counted()
                    .because(format!("{reason} (gave up after {tries} attempts)")),
            ),
            Verdict::Retry { reason, after } => {
                let wait =
                    layer1_ingest::deliver::backoff(tries as u32, base, max).max(after.unwrap_or_default());
                let at = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::minutes(5));
                Next::Retry(Transition::to(Status::Failed).counted().because(reason.clone()).due_at(at))
            }
            Verdict::NotSent { until, .. } => {
                // No time given: a half-open probe is in flight. A second is about what the
                // probe takes to settle the circuit; sooner would only claim the rows again.
                let wait = until.unwrap_or(std::time::Duration::from_secs(1));
                Next::Later(now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(30)))
            }
            #[allow(unreachable_patterns)]
            _ => Next::Later(now + chrono::Duration::seconds(1)),
        }
    }

    /// The attempt's audit row, if anything went on the wire.
    fn attempt_row(
        &self,
        row: &Model,
        req: &OutgoingRequest,
        attempt: &Attempt,
    ) -> Option<layer1_ingest::attempt::Model> {
        let verdict = match &attempt.verdict {
            Verdict::Delivered => "delivered",
            Verdict::Rejected { .. } => "rejected",
            Verdict::Retry { .. } => "retry",
            _ => return None,
        };
        let base =
            self.down.outbound.target(&row.source).map(|t| t.spec.base_url.trim_end_matches('/').to_owned());
        let answer = attempt.answer.as_ref();
        Some(layer1_ingest::attempt::Model {
            id: Uuid::now_v7(),
            raw_id: row.id,
            attempt: row.attempts + 1,
            target: row.source.clone(),
            method: req.method.clone(),
            url: format!("{}{}", base.unwrap_or_default(), req.path_and_query),
            request_headers: serde_json::to_string(&attempt.request_headers).unwrap_or_else(|_| "[]".into()),
            started_at: attempt.started_at,
            duration_ms: i32::try_from(attempt.elapsed.as_millis()).unwrap_or(i32::MAX),
            http_status: answer.map(|a| i32::from(a.status)),
            response_headers: answer
                .map(|a| serde_json::to_string(&a.headers).unwrap_or_else(|_| "[]".into())),
            response_body: answer.map(|a| a.body.clone()),
            response_truncated: answer.is_some_and(|a| a.truncated),
            verdict: verdict.to_owned(),
            error: attempt.error.clone(),
        })
    }
}

#[async_trait]
impl Stage for DeliverStage {
    fn name(&self) -> &'static str {
        "deliver"
    }

    #[tracing::instrument(skip_all, name = "batch", fields(stage = "deliver"))]
    async fn run_batch(&self) -> layer1_ingest::Result<usize> {
        let mut extra = Condition::all().add(Expr::cust(ORDER_GUARD));
        let open = self.deliverer.open_circuits();
        if !open.is_empty() {
            extra = extra.add(Column::Source.is_not_in(open));
        }
        let Some(lease) = claim_leased_where::<Entity>(
            &self.db,
            Direction::Downstream,
            self.settings.batch_size,
            self.settings.lease,
            extra,
        )
        .await?
        else {
            return Ok(0);
        };
        let deadline = layer1_ingest::advance::compute_deadline(&lease);
        let sends = lease.rows.iter().map(|row| async move {
            let req = match request_of(row) {
                Ok(r) => r,
                Err(why) => return (row, None, Err(why)),
            };
            if !self.deliverer.has_target(&row.source) {
                let why = format!("target `{}` is not configured in this worker", row.source);
                return (row, Some(req), Err(why));
            }
            let attempt = self.deliverer.deliver(&row.source, &req, deadline).await;
            (row, Some(req), Ok(attempt))
        });
        let results = futures::future::join_all(sends).await;

        let now = Utc::now();
        let mut acked: Vec<(Uuid, Final)> = Vec::new();
        let mut singles: Vec<(Uuid, Transition, Option<Final>)> = Vec::new();
        let mut later: Vec<(Uuid, DateTime<Utc>)> = Vec::new();
        let mut attempts = Vec::new();
        for (row, req, res) in &results {
            match res {
                Err(why) => {
                    // Not the third party's answer: our own record or config. Retried as any
                    // stage's transient failure, then dead, with its receipt.
                    let t = failure_transition(
                        row.attempts,
                        &Failure::Transient(why.clone()),
                        &self.settings,
                        now,
                    );
                    let receipt = (t.to == Status::Dead).then(|| self.final_of(row, &t, None));
                    singles.push((row.id, t, receipt));
                }
                Ok(attempt) => {
                    if let Some(req) = req {
                        attempts.extend(self.attempt_row(row, req, attempt));
                    }
                    match self.next(row, attempt, now) {
                        Next::Final(t) => {
                            let f = self.final_of(row, &t, Some(attempt));
                            if t.to == Status::Acknowledged {
                                acked.push((row.id, f));
                            } else {
                                singles.push((row.id, t, Some(f)));
                            }
                        }
                        Next::Retry(t) => singles.push((row.id, t, None)),
                        Next::Later(at) => later.push((row.id, at)),
                    }
                }
            }
        }

        let txn = self.db.begin().await?;
        let mut finals = Vec::new();
        let ack_ids: Vec<Uuid> = acked.iter().map(|(id, _)| *id).collect();
        let kept = transition_leased::<Entity, _>(
            &txn,
            lease.until,
            &ack_ids,
            &Transition::to(Status::Acknowledged).counted(),
            now,
        )
        .await?;
        finals.extend(acked.into_iter().filter(|(id, _)| kept.contains(id)).map(|(_, f)| f));
        let mut lost = ack_ids.len() - kept.len();
        for (id, t, f) in singles {
            if transition_leased::<Entity, _>(&txn, lease.until, &[id], &t, now).await?.is_empty() {
                lost += 1;
                continue;
            }
            // Rejected and dead deliveries were logged at WARN by `transition_leased`.
            if !t.to.is_given_up() {
                tracing::info!(%id, status = %t.to, reason = t.reason.as_deref().unwrap_or(""), "delivery not acknowledged");
            }
            finals.extend(f);
        }
        for (id, at) in later {
            Entity::update_many()
                .col_expr(Column::NextAttemptAt, Expr::value(at))
                .filter(Column::Id.eq(id))
                .filter(still_leased::<Entity>(lease.until))
                .exec(&txn)
                .await?;
        }
        if lost > 0 {
            tracing::warn!(
                rows = lost,
                "delivery lease lost before the outcome was written; the attempts stay on record"
            );
        }
        // Every attempt that went on the wire is on record, ours or not: it happened.
        insert_rows::<layer1_ingest::attempt::Entity, _>(&txn, attempts).await?;
        let receipts = finals.into_iter().map(|f| delivery_receipts::new_receipt(f, now)).collect();
        delivery_receipts::insert(&txn, receipts).await?;
        txn.commit().await?;
        Ok(lease.rows.len())
    }
}
