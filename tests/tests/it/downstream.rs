//! Downstream, end to end: core messages published to the inbound queue, translated, built,
//! delivered over HTTP to a scripted server the test starts (not the hub's code), with every
//! attempt on record and one delivery receipt per message on the queue the core app names.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use uuid::Uuid;

use hub_worker::outbound::{Outbound, OutboundRoute, Target, TargetSpec};
use hub_worker::{Hub, HubSettings};
use layer1_ingest::{Failure, Layer, Status};
use layer2_normalize::JsonSchema;
use layer2_normalize::request::{BodyEncoding, RequestSpec};
use layer3_translate::{CoreMessage, Fidelity, RecordInput, Translation, Translator};
use layer4_dispatch::{Headers, InProcessTransport, OutgoingMessage, Transport, intake, wire};

use crate::scripted_http::{Reply, ScriptedServer};
use crate::util::{Backend, TestDb};

/// The core's `member.updated` in the CRM's terms: the same fields under the CRM's names.
struct CrmContact;

#[async_trait]
impl Translator for CrmContact {
    fn source(&self) -> &str {
        "crm"
    }
    fn record_kind(&self) -> &str {
        "member.updated"
    }
    async fn translate(&self, r: &RecordInput<'_>) -> Result<Translation, Failure> {
        let mut body = layer1_ingest::json::Value::parse(br#"{}"#).map_err(Failure::Transient)?;
        let obj = body.as_object_mut().ok_or_else(|| Failure::Transient("object".into()))?;
        for (from, to) in [("/member_id", "id"), ("/email", "email"), ("/name", "name"), ("/vip", "vip")] {
            if let Some(v) = r.data.pointer(from) {
                obj.insert(to.to_owned(), v.clone());
            }
        }
        Ok(Translation {
            message: CoreMessage { message_type: "crm.contact.patch".into(), type_version: "1".into(), body },
            mapping_name: "test-crm".into(),
            mapping_version: "1".into(),
            fidelity: Fidelity::default(),
        })
    }
}

/// The CRM's request schema: an email is required.
fn crm_schema() -> Arc<JsonSchema> {
    let doc = serde_json::json!({
        "type": "object",
        "required": ["email"],
        "properties": {"id": {}, "email": {"type": "string", "minLength": 3}, "name": {}, "vip": {}}
    });
    Arc::new(JsonSchema::compile(doc).expect("schema"))
}

fn target(name: &str, base_url: String) -> TargetSpec {
    TargetSpec {
        connect_timeout_ms: Some(1000),
        timeout_ms: Some(1500),
        max_response_bytes: Some(4096),
        concurrency: Some(4),
        circuit_failures: Some(50),
        circuit_open_secs: Some(60),
        max_attempts: Some(5),
        retry_base_ms: Some(100),
        retry_max_ms: Some(400),
        receipts_to: Some(format!("receipts-{name}")),
        ..TargetSpec::new(base_url)
    }
}

fn crm_outbound(name: &str, spec: TargetSpec, ordering_key: Option<&str>) -> Outbound {
    let request = RequestSpec::compile(
        "PATCH",
        "/contacts/{/id}",
        Vec::new(),
        Vec::new(),
        None,
        BodyEncoding::Json,
        Some(crm_schema()),
    )
    .expect("request template");
    Outbound {
        targets: vec![Target { name: name.into(), spec }],
        routes: vec![OutboundRoute {
            target: name.into(),
            message_type: "member.updated".into(),
            translator: Arc::new(CrmContact),
            request: Arc::new(request),
            ordering_key: ordering_key.map(str::to_owned),
            response_fields: vec![("crm_id".into(), "/id".into())],
        }],
    }
}

fn settings(inbound: &str) -> HubSettings {
    let mut s = crate::util::test_settings();
    s.publish.inbound_queue = Some(inbound.to_owned());
    s.stage.poll_interval = Duration::from_millis(100);
    s
}

async fn hub(
    db: &TestDb,
    transport: Arc<dyn Transport>,
    inbound: &str,
    outbound: Outbound,
    s: Option<HubSettings>,
) -> Hub {
    Hub::builder(db.url.clone())
        .settings(s.unwrap_or_else(|| settings(inbound)))
        .transport(transport)
        .outbound(outbound)
        .build()
        .await
        .expect("hub builds")
}

/// A started hub delivering `member.updated` to the target `crm` (`spec`), on a fresh
/// database and an in-process transport.
struct Crm {
    db: TestDb,
    t: Arc<InProcessTransport>,
    inbound: String,
    hub: Hub,
}

async fn crm(backend: Backend, spec: TargetSpec) -> Crm {
    let db = TestDb::new(backend).await;
    let t = Arc::new(InProcessTransport::default());
    let inbound = format!("inbound-{}", Uuid::now_v7().simple());
    let hub = hub(&db, t.clone(), &inbound, crm_outbound("crm", spec, None), None).await;
    hub.start();
    Crm { db, t, inbound, hub }
}

/// Publishes one `member.updated` as the core app does.
async fn send(t: &dyn Transport, inbound: &str, target: &str, id: &str, body: &str) {
    send_typed(t, inbound, target, "member.updated", id, body).await;
}

/// Publishes one core message of type `ty` as the core app does.
pub(crate) async fn send_typed(
    t: &dyn Transport,
    inbound: &str,
    target: &str,
    ty: &str,
    id: &str,
    body: &str,
) {
    let mut h = Headers::new();
    h.insert(intake::CORE_MESSAGE_ID.into(), id.into());
    h.insert(intake::TARGET.into(), target.into());
    h.insert(wire::TYPE.into(), ty.into());
    let m = OutgoingMessage {
        queue: inbound.into(),
        dedup_id: id.into(),
        ordering_key: None,
        headers: h,
        body: body.as_bytes().to_vec(),
    };
    for r in t.publish(&[m]).await {
        r.expect("published");
    }
}

/// Receipts on `queue` until `n` arrived (or the time is up), as JSON, by core message id.
async fn receipts(t: &dyn Transport, queue: &str, n: usize, secs: u64) -> HashMap<String, serde_json::Value> {
    let mut sub = t.subscribe(queue, 100).await.expect("subscribe");
    let mut out = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while out.len() < n {
        let d = match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Ok(d)) => d,
            _ => break,
        };
        let v: serde_json::Value = serde_json::from_slice(&d.body).expect("receipt is JSON");
        let id = v["core_message_id"].as_str().expect("core_message_id").to_owned();
        assert!(out.insert(id.clone(), v).is_none(), "a second receipt for {id}");
        d.ack().await.expect("ack");
    }
    out
}

async fn settle(hub: &Hub, secs: u64) {
    let ok = hub.wait_settled(Duration::from_secs(secs)).await.expect("wait");
    assert!(ok, "not settled: {:?}", hub.counts().await);
}

async fn deliveries(db: &sea_orm::DatabaseConnection) -> Vec<layer1_ingest::entity::Model> {
    use layer1_ingest::entity as l1;
    l1::Entity::find()
        .filter(l1::Column::Direction.eq(layer1_ingest::Direction::Downstream))
        .order_by_asc(l1::Column::Id)
        .all(db)
        .await
        .expect("layer 1")
}

async fn attempts_of(db: &sea_orm::DatabaseConnection, raw: Uuid) -> Vec<layer1_ingest::attempt::Model> {
    use layer1_ingest::attempt as a;
    a::Entity::find()
        .filter(a::Column::RawId.eq(raw))
        .order_by_asc(a::Column::Attempt)
        .all(db)
        .await
        .expect("attempts")
}

async fn delivered_once_with_receipt_and_lineage(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = ScriptedServer::start().await;
    server.script("/contacts/m-42", vec![Reply::json(200, r#"{"id":8812,"email":"ada@example.com"}"#)]);
    let t = Arc::new(InProcessTransport::default());
    let inbound = format!("inbound-{}", Uuid::now_v7().simple());
    let hub =
        hub(&db, t.clone(), &inbound, crm_outbound("crm", target("crm", server.url()), None), None).await;
    hub.start();
    send(
        t.as_ref(),
        &inbound,
        "crm",
        "core-1",
        r#"{"member_id":"m-42","email":"ada@example.com","name":"Ada","vip":12345678901234567890.10}"#,
    )
    .await;
    // The same message again (the core app retried its publish): stored once, delivered once.
    send(
        t.as_ref(),
        &inbound,
        "crm",
        "core-1",
        r#"{"member_id":"m-42","email":"ada@example.com","name":"Ada","vip":12345678901234567890.10}"#,
    )
    .await;
    let got = receipts(t.as_ref(), "receipts-crm", 1, 20).await;
    settle(&hub, 20).await;
    let r = &got["core-1"];
    assert_eq!(r["status"], "acknowledged", "{r}");
    assert_eq!(r["http_status"], 200);
    assert_eq!(r["response"]["crm_id"], 8812);
    let reqs = server.requests("/contacts/m-42");
    assert_eq!(reqs.len(), 1, "delivered once");
    let req = &reqs[0];
    assert_eq!(req.method, "PATCH");
    // Exact number, every digit.
    assert!(req.body_text().contains("12345678901234567890.10"), "{}", req.body_text());
    let rows = deliveries(hub.db()).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, Status::Acknowledged);
    assert_eq!(req.header("idempotency-key"), Some(rows[0].id.to_string().as_str()));
    let att = attempts_of(hub.db(), rows[0].id).await;
    assert_eq!(att.len(), 1);
    assert_eq!(att[0].http_status, Some(200));
    assert_eq!(att[0].response_body.as_deref(), Some(br#"{"id":8812,"email":"ada@example.com"}"#.as_slice()));
    // Lineage from the delivery reaches back to the core message: 4 -> 3 -> 2 -> 1.
    let lineage = hub.lineage(rows[0].id).await.expect("lineage");
    let chain = lineage.chain(rows[0].id);
    let layers: Vec<Layer> = chain.iter().map(|e| e.layer).collect();
    assert_eq!(
        layers,
        vec![Layer::Dispatch, Layer::Translated, Layer::Normalized, Layer::Raw],
        "{lineage:?}"
    );
    hub.shutdown().await;
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_delivered_once_with_receipt_and_lineage() {
    delivered_once_with_receipt_and_lineage(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_delivered_once_with_receipt_and_lineage() {
    delivered_once_with_receipt_and_lineage(Backend::Postgres).await;
}

/// 500, then 429 with `Retry-After: 2`, then 201: three requests with one idempotency key, the
/// second after the backoff, the third no sooner than the `Retry-After` said.
#[tokio::test]
async fn retries_follow_backoff_and_retry_after_with_one_idempotency_key() {
    let server = ScriptedServer::start().await;
    server.script(
        "/contacts/m-1",
        vec![
            Reply::json(500, r#"{"error":"boom"}"#),
            Reply::json(429, r#"{"error":"slow down"}"#).header("Retry-After", "2"),
            Reply::json(201, r#"{"id":1}"#),
        ],
    );
    let Crm { db, t, inbound, hub } = crm(Backend::Postgres, target("crm", server.url())).await;
    send(t.as_ref(), &inbound, "crm", "c-1", r#"{"member_id":"m-1","email":"a@b.example"}"#).await;
    let got = receipts(t.as_ref(), "receipts-crm", 1, 30).await;
    settle(&hub, 30).await;
    let reqs = server.requests("/contacts/m-1");
    assert_eq!(reqs.len(), 3, "500, 429, 201");
    let keys: Vec<_> = reqs.iter().map(|r| r.header("idempotency-key").map(str::to_owned)).collect();
    assert!(keys[0].is_some() && keys.iter().all(|k| *k == keys[0]), "one key across retries: {keys:?}");
    let gap1 = reqs[1].at - reqs[0].at;
    let gap2 = reqs[2].at - reqs[1].at;
    // Backoff base 100 ms with jitter in [d/2, d].
    assert!(gap1 >= Duration::from_millis(50), "first retry after the backoff, was {gap1:?}");
    assert!(gap2 >= Duration::from_millis(1900), "Retry-After: 2 honoured, was {gap2:?}");
    let rows = deliveries(hub.db()).await;
    assert_eq!(rows[0].status, Status::Acknowledged);
    assert_eq!(rows[0].attempts, 3);
    let att = attempts_of(hub.db(), rows[0].id).await;
    let statuses: Vec<_> = att.iter().map(|a| a.http_status).collect();
    assert_eq!(statuses, vec![Some(500), Some(429), Some(201)]);
    assert_eq!(got["c-1"]["status"], "acknowledged");
    hub.shutdown().await;
    db.cleanup().await;
}

/// A 400 is final: `rejected`, the third party's body on record and in the reason.
#[tokio::test]
async fn bad_request_is_rejected_with_the_answer_on_record() {
    let server = ScriptedServer::start().await;
    server.script("/contacts/m-2", vec![Reply::json(400, r#"{"error":"email invalid"}"#)]);
    let Crm { db, t, inbound, hub } = crm(Backend::Sqlite, target("crm", server.url())).await;
    send(t.as_ref(), &inbound, "crm", "c-2", r#"{"member_id":"m-2","email":"not-an-email"}"#).await;
    let got = receipts(t.as_ref(), "receipts-crm", 1, 20).await;
    settle(&hub, 20).await;
    assert_eq!(server.requests("/contacts/m-2").len(), 1, "never retried");
    let rows = deliveries(hub.db()).await;
    assert_eq!(rows[0].status, Status::Rejected);
    let att = attempts_of(hub.db(), rows[0].id).await;
    assert_eq!(att[0].http_status, Some(400));
    assert_eq!(att[0].response_body.as_deref(), Some(br#"{"error":"email invalid"}"#.as_slice()));
    let r = &got["c-2"];
    assert_eq!(r["status"], "rejected");
    assert_eq!(r["http_status"], 400);
    assert!(r["reason"].as_str().unwrap_or("").contains("400"), "{r}");
    hub.shutdown().await;
    db.cleanup().await;
}

/// Retries run out: `dead`, one receipt saying so.
#[tokio::test]
async fn retries_run_out_dead_with_receipt() {
    let server = ScriptedServer::start().await;
    server.script("/contacts/m-3", vec![Reply::status(503)]);
    let mut spec = target("crm", server.url());
    spec.max_attempts = Some(3);
    let Crm { db, t, inbound, hub } = crm(Backend::Sqlite, spec).await;
    send(t.as_ref(), &inbound, "crm", "c-3", r#"{"member_id":"m-3","email":"a@b.example"}"#).await;
    let got = receipts(t.as_ref(), "receipts-crm", 1, 20).await;
    settle(&hub, 20).await;
    assert_eq!(server.requests("/contacts/m-3").len(), 3);
    assert_eq!(deliveries(hub.db()).await[0].status, Status::Dead);
    assert_eq!(got["c-3"]["status"], "dead");
    assert_eq!(got["c-3"]["http_status"], 503);
    hub.shutdown().await;
    db.cleanup().await;
}

/// Bad input, each with a clear reason on record, nothing lost, the worker still delivering:
/// a field the third party requires missing, a path value that would escape the template, an
/// answer over the bound, an answer that is not JSON.
#[tokio::test]
async fn bad_input_each_has_its_reason_and_the_worker_keeps_going() {
    let server = ScriptedServer::start().await;
    server.script("/contacts/big", vec![Reply::bytes(200, vec![b'x'; 10_000])]);
    server.script("/contacts/text", vec![Reply::bytes(200, b"OK thanks".to_vec())]);
    server.script("/contacts/fine", vec![Reply::json(200, r#"{"id":5}"#)]);
    let Crm { db, t, inbound, hub } = crm(Backend::Postgres, target("crm", server.url())).await;
    send(t.as_ref(), &inbound, "crm", "no-email", r#"{"member_id":"x1","name":"No Email"}"#).await;
    send(t.as_ref(), &inbound, "crm", "escape", r#"{"member_id":"..","email":"a@b.example"}"#).await;
    send(t.as_ref(), &inbound, "crm", "big", r#"{"member_id":"big","email":"a@b.example"}"#).await;
    send(t.as_ref(), &inbound, "crm", "text", r#"{"member_id":"text","email":"a@b.example"}"#).await;
    send(t.as_ref(), &inbound, "crm", "fine", r#"{"member_id":"fine","email":"a@b.example"}"#).await;
    let got = receipts(t.as_ref(), "receipts-crm", 5, 20).await;
    settle(&hub, 20).await;
    assert_eq!(got.len(), 5, "{got:?}");
    let reason = |id: &str| got[id]["reason"].as_str().unwrap_or("").to_owned();
    assert_eq!(got["no-email"]["status"], "rejected");
    assert!(reason("no-email").contains("email"), "{}", reason("no-email"));
    assert_eq!(got["escape"]["status"], "rejected");
    assert!(
        reason("escape").contains("path_escape") || reason("escape").contains("escape"),
        "{}",
        reason("escape")
    );
    assert_eq!(got["big"]["status"], "acknowledged");
    assert!(reason("big").contains("max_response_bytes"), "{}", reason("big"));
    assert_eq!(got["text"]["status"], "acknowledged");
    assert!(reason("text").contains("not JSON"), "{}", reason("text"));
    assert_eq!(got["fine"]["response"]["crm_id"], 5);
    // Nothing sent for the two refused before sending.
    assert!(server.requests("/contacts/..").is_empty() && server.requests("/contacts/x1").is_empty());
    // The oversized answer is kept up to the bound, marked truncated.
    let rows = deliveries(hub.db()).await;
    let big = rows.iter().find(|r| r.source_ref.as_deref() == Some("big")).expect("big delivered");
    let att = attempts_of(hub.db(), big.id).await;
    assert!(att[0].response_truncated);
    assert_eq!(att[0].response_body.as_ref().map(Vec::len), Some(4096));
    // The refused ones stay on record with the reason at the layer that refused them.
    use layer3_translate::entity as l3;
    let refused = l3::Entity::find()
        .filter(l3::Column::Status.eq(Status::Rejected))
        .all(hub.db())
        .await
        .expect("layer 3");
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused.iter().all(|r| r.last_error.is_some()));
    hub.shutdown().await;
    db.cleanup().await;
}

/// A target whose circuit opens gets no more calls; another target keeps delivering.
#[tokio::test]
async fn open_circuit_stops_calls_while_another_target_delivers() {
    let db = TestDb::new(Backend::Postgres).await;
    let down = ScriptedServer::start().await;
    let up = ScriptedServer::start().await;
    for i in 0..6 {
        down.script(&format!("/contacts/d{i}"), vec![Reply::status(500)]);
        up.script(&format!("/contacts/u{i}"), vec![Reply::json(201, r#"{"id":1}"#)]);
    }
    let t = Arc::new(InProcessTransport::default());
    let inbound = format!("inbound-{}", Uuid::now_v7().simple());
    let mut a = target("down", down.url());
    a.circuit_failures = Some(3);
    a.circuit_open_secs = Some(600);
    a.max_attempts = Some(100);
    a.concurrency = Some(1);
    let mut outbound = crm_outbound("down", a, None);
    outbound.extend(crm_outbound("up", target("up", up.url()), None));
    let hub = hub(&db, t.clone(), &inbound, outbound, None).await;
    hub.start();
    for i in 0..6 {
        send(
            t.as_ref(),
            &inbound,
            "down",
            &format!("d{i}"),
            &format!(r#"{{"member_id":"d{i}","email":"a@b.example"}}"#),
        )
        .await;
    }
    for i in 0..6 {
        send(
            t.as_ref(),
            &inbound,
            "up",
            &format!("u{i}"),
            &format!(r#"{{"member_id":"u{i}","email":"a@b.example"}}"#),
        )
        .await;
    }
    let got = receipts(t.as_ref(), "receipts-up", 6, 20).await;
    assert_eq!(got.len(), 6, "the other target delivered everything");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(down.all_requests().len(), 3, "the circuit opened after 3 failures and stayed open");
    hub.shutdown().await;
    db.cleanup().await;
}

/// One key's deliveries reach the target in the core app's order, with two workers on one
/// database, though the first of them fails once.
#[tokio::test]
async fn per_key_order_holds_with_two_workers_and_a_retry() {
    let db = TestDb::new(Backend::Postgres).await;
    let server = ScriptedServer::start().await;
    let keys = 4;
    let per_key = 6;
    for k in 0..keys {
        // The first message of each key fails once.
        server.script(&format!("/contacts/k{k}"), vec![Reply::status(503), Reply::json(200, r#"{"id":1}"#)]);
    }
    let t = Arc::new(InProcessTransport::default());
    let inbound = format!("inbound-{}", Uuid::now_v7().simple());
    let spec = target("crm", server.url());
    let a = hub(&db, t.clone(), &inbound, crm_outbound("crm", spec.clone(), Some("/member_id")), None).await;
    let b = hub(&db, t.clone(), &inbound, crm_outbound("crm", spec, Some("/member_id")), None).await;
    a.start();
    b.start();
    for i in 0..per_key {
        for k in 0..keys {
            let body = format!(r#"{{"member_id":"k{k}","email":"a@b.example","name":"n{i}"}}"#);
            send(t.as_ref(), &inbound, "crm", &format!("k{k}-{i}"), &body).await;
        }
    }
    let got = receipts(t.as_ref(), "receipts-crm", keys * per_key, 60).await;
    assert_eq!(got.len(), keys * per_key);
    settle(&a, 60).await;
    for k in 0..keys {
        let names: Vec<String> = server
            .requests(&format!("/contacts/k{k}"))
            .iter()
            .map(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json body");
                v["name"].as_str().unwrap_or("").to_owned()
            })
            .collect();
        let mut want = vec!["n0".to_owned()];
        want.extend((0..per_key).map(|i| format!("n{i}")));
        assert_eq!(names, want, "key k{k} in order, the first twice (503 then 200)");
    }
    a.shutdown().await;
    b.shutdown().await;
    db.cleanup().await;
}

/// A worker killed while its request is in flight: the next worker sends the same
/// idempotency key, and the core app gets one receipt.
#[tokio::test]
async fn idempotency_key_survives_a_worker_abort_mid_delivery() {
    let db = TestDb::new(Backend::Postgres).await;
    let server = ScriptedServer::start().await;
    server.script(
        "/contacts/m-9",
        vec![
            Reply::slow(Duration::from_secs(5), Reply::json(200, r#"{"id":9}"#)),
            Reply::json(200, r#"{"id":9}"#),
        ],
    );
    let t = Arc::new(InProcessTransport::default());
    let inbound = format!("inbound-{}", Uuid::now_v7().simple());
    let mut s = settings(&inbound);
    s.stage.lease = Duration::from_secs(2);
    // The first attempt would time out at 3 s; the lease is then 4.6 s (timeout x 1.2 + 1 s).
    let mut spec = target("crm", server.url());
    spec.timeout_ms = Some(3_000);
    let first = hub(&db, t.clone(), &inbound, crm_outbound("crm", spec.clone(), None), Some(s.clone())).await;
    first.start();
    send(t.as_ref(), &inbound, "crm", "c-9", r#"{"member_id":"m-9","email":"a@b.example"}"#).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.requests("/contacts/m-9").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "first attempt never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.abort();
    let second = hub(&db, t.clone(), &inbound, crm_outbound("crm", spec, None), Some(s)).await;
    second.start();
    settle(&second, 30).await;
    let reqs = server.requests("/contacts/m-9");
    assert_eq!(reqs.len(), 2, "sent again after the lease ended");
    assert_eq!(reqs[0].header("idempotency-key"), reqs[1].header("idempotency-key"));
    assert!(reqs[0].header("idempotency-key").is_some());
    let got = receipts(t.as_ref(), "receipts-crm", 2, 3).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got["c-9"]["status"], "acknowledged");
    second.shutdown().await;
    db.cleanup().await;
}

async fn receipts_over_broker(transport: Arc<dyn Transport>) {
    let db = TestDb::new(Backend::Postgres).await;
    let server = ScriptedServer::start().await;
    for i in 0..3 {
        server.script(&format!("/contacts/b{i}"), vec![Reply::json(201, &format!(r#"{{"id":{i}}}"#))]);
    }
    let tag = Uuid::now_v7().simple().to_string();
    let inbound = format!("t-{tag}-inbound");
    let mut spec = target("crm", server.url());
    spec.receipts_to = Some(format!("t-{tag}-delivery-receipts"));
    let mut s = settings(&inbound);
    s.publish.receipts_queue = format!("t-{tag}-receipts");
    let hub = hub(&db, transport.clone(), &inbound, crm_outbound("crm", spec, None), Some(s)).await;
    hub.start();
    for i in 0..3 {
        send(
            transport.as_ref(),
            &inbound,
            "crm",
            &format!("b{i}"),
            &format!(r#"{{"member_id":"b{i}","email":"a@b.example"}}"#),
        )
        .await;
    }
    let got = receipts(transport.as_ref(), &format!("t-{tag}-delivery-receipts"), 3, 30).await;
    assert_eq!(got.len(), 3);
    for i in 0..3 {
        let r = &got[&format!("b{i}")];
        assert_eq!(r["status"], "acknowledged");
        assert_eq!(r["response"]["crm_id"], i);
    }
    // No fourth receipt: one per final message.
    let more = receipts(transport.as_ref(), &format!("t-{tag}-delivery-receipts"), 1, 2).await;
    assert!(more.is_empty(), "{more:?}");
    hub.shutdown().await;
    db.cleanup().await;
}

#[tokio::test]
async fn delivery_receipts_over_rabbitmq() {
    receipts_over_broker(crate::util::rabbit()).await;
}

#[tokio::test]
async fn delivery_receipts_over_sqs() {
    let t =
        layer4_dispatch::SqsTransport::new(layer4_dispatch::SqsConfig::local(crate::util::sqs_url())).await;
    receipts_over_broker(Arc::new(t)).await;
}

/// A rejected delivery replayed from layer 1 is delivered again as a new delivery (its own
/// idempotency key) with a second receipt; a replay from layer 3 is refused downstream.
#[tokio::test]
async fn rejected_delivery_replayed_from_layer_1() {
    let server = ScriptedServer::start().await;
    server.script(
        "/contacts/m-5",
        vec![Reply::json(400, r#"{"error":"try later"}"#), Reply::json(201, r#"{"id":55}"#)],
    );
    let Crm { db, t, inbound, hub } = crm(Backend::Sqlite, target("crm", server.url())).await;
    send(t.as_ref(), &inbound, "crm", "c-5", r#"{"member_id":"m-5","email":"a@b.example"}"#).await;
    let first = receipts(t.as_ref(), "receipts-crm", 1, 20).await;
    assert_eq!(first["c-5"]["status"], "rejected");
    let rejected = deliveries(hub.db()).await.remove(0);
    let refused = hub_worker::audit::replay(hub.db(), rejected.id, 3, "test").await;
    assert!(matches!(refused, Err(hub_worker::Error::Conflict(_))), "{refused:?}");
    let copies = hub_worker::audit::replay(hub.db(), rejected.id, 1, "test").await.expect("replay");
    assert_eq!(copies.len(), 1);
    hub.wake();
    let second = receipts(t.as_ref(), "receipts-crm", 1, 20).await;
    assert_eq!(second["c-5"]["status"], "acknowledged", "{second:?}");
    assert_eq!(second["c-5"]["delivery_id"], copies[0].to_string());
    let reqs = server.requests("/contacts/m-5");
    assert_eq!(reqs.len(), 2);
    assert_ne!(
        reqs[0].header("idempotency-key"),
        reqs[1].header("idempotency-key"),
        "a replay is a new delivery"
    );
    hub.shutdown().await;
    db.cleanup().await;
}

/// A reset connection and an answer slower than the target's timeout are retried, each attempt
/// on record with its error; a 422 then ends the delivery `rejected`.
#[tokio::test]
async fn reset_and_timeout_retried_then_422_rejected() {
    let server = ScriptedServer::start().await;
    server.script(
        "/contacts/m-7",
        vec![
            Reply::Reset,
            Reply::slow(Duration::from_secs(3), Reply::json(200, r#"{"id":7}"#)),
            Reply::json(422, r#"{"errors":[{"field":"email","code":"invalid"}]}"#),
        ],
    );
    let Crm { db, t, inbound, hub } = crm(Backend::Postgres, target("crm", server.url())).await;
    send(t.as_ref(), &inbound, "crm", "c-7", r#"{"member_id":"m-7","email":"a@b.example"}"#).await;
    let got = receipts(t.as_ref(), "receipts-crm", 1, 30).await;
    settle(&hub, 20).await;
    assert_eq!(got["c-7"]["status"], "rejected", "{got:?}");
    assert_eq!(got["c-7"]["http_status"], 422);
    let rows = deliveries(hub.db()).await;
    let att = attempts_of(hub.db(), rows[0].id).await;
    let seen: Vec<_> = att.iter().map(|a| (a.http_status, a.verdict.as_str(), a.error.is_some())).collect();
    assert_eq!(
        seen,
        vec![(None, "retry", true), (None, "retry", true), (Some(422), "rejected", false)],
        "{att:?}"
    );
    assert!(
        att[1].duration_ms >= 1400,
        "the slow answer was cut at the 1.5 s timeout: {} ms",
        att[1].duration_ms
    );
    hub.shutdown().await;
    db.cleanup().await;
}

/// Two workers on one database: every message reaches the third party exactly once.
#[tokio::test]
async fn two_workers_deliver_each_message_once() {
    let db = TestDb::new(Backend::Postgres).await;
    let server = ScriptedServer::start().await;
    let n = 60;
    for i in 0..n {
        server.script(&format!("/contacts/w{i}"), vec![Reply::json(201, r#"{"id":1}"#)]);
    }
    let t = Arc::new(InProcessTransport::default());
    let inbound = format!("inbound-{}", Uuid::now_v7().simple());
    let spec = target("crm", server.url());
    let mut s = settings(&inbound);
    s.stage.batch_size = 7; // many small claims, so the workers interleave
    let a = hub(&db, t.clone(), &inbound, crm_outbound("crm", spec.clone(), None), Some(s.clone())).await;
    let b = hub(&db, t.clone(), &inbound, crm_outbound("crm", spec, None), Some(s)).await;
    a.start();
    b.start();
    for i in 0..n {
        send(
            t.as_ref(),
            &inbound,
            "crm",
            &format!("w{i}"),
            &format!(r#"{{"member_id":"w{i}","email":"a@b.example"}}"#),
        )
        .await;
    }
    let got = receipts(t.as_ref(), "receipts-crm", n, 30).await;
    assert_eq!(got.len(), n);
    settle(&a, 20).await;
    for i in 0..n {
        assert_eq!(server.requests(&format!("/contacts/w{i}")).len(), 1, "w{i} delivered once");
    }
    a.shutdown().await;
    b.shutdown().await;
    db.cleanup().await;
}
