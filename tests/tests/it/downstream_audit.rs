//! The audit desk downstream (issue 11): a core message's story from the core app's id or any
//! row's id, layer 4 -> 3 -> 2 -> 1 with each HTTP attempt and the receipt; deliveries per
//! target and status in `/v1/stats` and `/metrics`. The rows are written here directly, as the
//! downstream stages write them, so every value checked is known exactly.

use base64::Engine;
use chrono::{Duration, Utc};
use uuid::Uuid;

use hub_worker::audit::{self, RawAccess};
use hub_worker::http::auth::{Scope, Token, Tokens};
use layer1_ingest::table::insert_rows;
use layer1_ingest::{Direction, Layer, Status};

use crate::on_both;
use crate::util::{Backend, TestDb};

/// The core app's id of the message the tests follow.
pub const CORE_ID: &str = "m-42";
/// The third party's answer to the second attempt.
const ANSWER: &str = r#"{"id":"c-9","ok":true}"#;
/// The receipt's fields, with a number no `f64` holds: shown digit for digit.
const FIELDS: &str = r#"{"crm_id":"c-9","score":12345678901234567890.10}"#;

/// The ids of what [`seed`] wrote.
pub struct Seeded {
    /// The core message to `crm` (layer 4), the flow's origin.
    pub l4: Uuid,
    pub l3: Uuid,
    pub l2: Uuid,
    /// Its delivery.
    pub l1: Uuid,
    /// Its receipt (not sent yet).
    pub receipt: Uuid,
    /// The same core message to `billing`, refused at translation (layer 4 only).
    pub billing: Uuid,
    /// A core message whose core id is a UUID (to `crm`, just in).
    pub uuid_core: Uuid,
    /// ... and that core id.
    pub uuid_core_id: String,
    /// An upstream layer 4 row whose `source_ref` is the text [`CORE_ID`].
    pub upstream: Uuid,
}

fn l4(target: &str, core_id: &str, direction: Direction, status: Status) -> layer4_dispatch::entity::Model {
    let id = Uuid::now_v7();
    let now = Utc::now();
    layer4_dispatch::entity::Model {
        id,
        direction,
        status,
        attempts: 0,
        last_error: (status == Status::Rejected).then(|| "no outbound route".to_owned()),
        next_attempt_at: (!status.is_final()).then_some(now),
        parent_id: None,
        origin_id: id,
        source: target.into(),
        source_ref: Some(core_id.into()),
        destination: target.into(),
        message_type: "member.updated".into(),
        type_version: "1".into(),
        body: r#"{"member_id":"m-42","email":"a@example.com"}"#.into(),
        ordering_key: None,
        queued_at: None,
        acknowledged_at: None,
        intake_key: (direction == Direction::Downstream).then(|| format!("{target}:{core_id}")),
        created_at: now,
        updated_at: now,
    }
}

/// A delivery (layer 1 downstream row) to `crm`.
fn delivery(
    parent: Option<Uuid>,
    origin: Uuid,
    core_id: &str,
    status: Status,
    attempts: i32,
) -> layer1_ingest::entity::Model {
    let body = br#"{"email":"a@example.com"}"#.to_vec();
    let made = Utc::now() - Duration::seconds(90);
    layer1_ingest::entity::Model {
        id: Uuid::now_v7(),
        direction: Direction::Downstream,
        status,
        attempts,
        last_error: (status == Status::Failed).then(|| "HTTP 503".to_owned()),
        next_attempt_at: (!status.is_final()).then_some(made),
        parent_id: parent,
        origin_id: origin,
        source: "crm".into(),
        source_ref: Some(core_id.into()),
        dedup_key: format!("deliver:{}", Uuid::now_v7()),
        body_sha256: layer1_ingest::ingest::sha256_hex(&body),
        body,
        content_type: "application/json".into(),
        headers: r#"{":method":"PATCH",":path":"/contacts/m-42","x-trace":"t-1"}"#.into(),
        replayed_by: None,
        ordering_key: None,
        message_type: Some("member.updated".into()),
        created_at: made,
        updated_at: made,
    }
}

fn attempt(
    raw_id: Uuid,
    n: i32,
    status: i32,
    body: &str,
    ms: i32,
    verdict: &str,
) -> layer1_ingest::attempt::Model {
    layer1_ingest::attempt::Model {
        id: Uuid::now_v7(),
        raw_id,
        attempt: n,
        target: "crm".into(),
        method: "PATCH".into(),
        url: "https://crm.example/contacts/m-42".into(),
        request_headers: r#"[["content-type","application/json"],["authorization","[redacted]"]]"#.into(),
        started_at: Utc::now(),
        duration_ms: ms,
        http_status: Some(status),
        response_headers: Some(r#"[["content-type","application/json"]]"#.into()),
        response_body: Some(body.as_bytes().to_vec()),
        response_truncated: false,
        verdict: verdict.into(),
        error: None,
    }
}

#[allow(clippy::too_many_arguments)]
fn receipt(
    dispatch_id: Uuid,
    raw_id: Option<Uuid>,
    target: &str,
    status: &str,
    http_status: Option<i32>,
    fields: &str,
    reason: Option<&str>,
    sent: bool,
) -> layer4_dispatch::delivery_receipts::Model {
    let now = Utc::now();
    layer4_dispatch::delivery_receipts::Model {
        id: Uuid::now_v7(),
        dispatch_id,
        raw_id,
        core_message_id: CORE_ID.into(),
        target: target.into(),
        message_type: "member.updated".into(),
        receipt_to: format!("receipts-{target}"),
        status: status.into(),
        http_status,
        fields: fields.into(),
        reason: reason.map(Into::into),
        created_at: now,
        sent_at: sent.then_some(now),
        attempts: i32::from(sent),
        next_attempt_at: (!sent).then_some(now),
        last_error: None,
    }
}

/// Writes a delivered core message to `crm` (four layers, a 500 then a 201, an unsent receipt),
/// the same core id refused for `billing` (receipt unsent), an upstream layer 4 row whose
/// `source_ref` happens to be the same text (not a core id), a `crm` delivery still retrying
/// (90 s old), a core message whose core id is a UUID, an earlier message's receipt (sent), and
/// an upstream payload (layer 1, rejected) from a source named `crm`.
pub async fn seed(db: &sea_orm::DatabaseConnection) -> Seeded {
    use layer2_normalize::entity as l2;
    use layer3_translate::entity as l3;

    let core = l4("crm", CORE_ID, Direction::Downstream, Status::Forwarded);
    let now = Utc::now();
    let tr = l3::Model {
        id: Uuid::now_v7(),
        direction: Direction::Downstream,
        status: Status::Forwarded,
        attempts: 0,
        last_error: None,
        next_attempt_at: None,
        parent_id: Some(core.id),
        origin_id: core.id,
        source: "crm".into(),
        source_ref: Some(CORE_ID.into()),
        message_type: "crm.contact.patch".into(),
        type_version: "1".into(),
        body: r#"{"id":"m-42","email":"a@example.com"}"#.into(),
        mapping_name: "test-crm".into(),
        mapping_version: "1".into(),
        fidelity: "{}".into(),
        replayed_by: None,
        created_at: now,
        updated_at: now,
    };
    let req = l2::Model {
        id: Uuid::now_v7(),
        direction: Direction::Downstream,
        status: Status::Forwarded,
        attempts: 0,
        last_error: None,
        next_attempt_at: None,
        parent_id: Some(tr.id),
        origin_id: core.id,
        source: "crm".into(),
        source_ref: Some(CORE_ID.into()),
        record_kind: "request".into(),
        record_index: 0,
        record: r#"{"method":"PATCH","path_and_query":"/contacts/m-42"}"#.into(),
        schema_version: None,
        replayed_by: None,
        created_at: now,
        updated_at: now,
    };
    let sent = delivery(Some(req.id), core.id, CORE_ID, Status::Acknowledged, 2);
    let open = delivery(None, Uuid::now_v7(), "m-43", Status::Failed, 1);
    let billing = l4("billing", CORE_ID, Direction::Downstream, Status::Rejected);
    let upstream = l4("core.members", CORE_ID, Direction::Upstream, Status::Acknowledged);
    let uuid_core_id = Uuid::now_v7().to_string();
    let uuid_core = l4("crm", &uuid_core_id, Direction::Downstream, Status::JustIn);
    let r = receipt(core.id, Some(sent.id), "crm", "acknowledged", Some(201), FIELDS, None, false);
    let refused =
        receipt(billing.id, None, "billing", "rejected", None, "{}", Some("no outbound route"), false);
    // An earlier message's receipt, sent: not counted as unsent.
    let earlier = receipt(Uuid::now_v7(), None, "crm", "rejected", None, "{}", Some("bad request"), true);
    // An upstream payload from a source that happens to share the target's name: not a delivery.
    let mut payload = delivery(None, Uuid::now_v7(), "evt_1", Status::Rejected, 0);
    payload.direction = Direction::Upstream;
    payload.message_type = None;
    let ids = Seeded {
        l4: core.id,
        l3: tr.id,
        l2: req.id,
        l1: sent.id,
        receipt: r.id,
        billing: billing.id,
        uuid_core: uuid_core.id,
        uuid_core_id,
        upstream: upstream.id,
    };
    let tries =
        vec![attempt(sent.id, 2, 201, ANSWER, 8, "delivered"), attempt(sent.id, 1, 500, "oops", 12, "retry")];
    insert_rows::<layer4_dispatch::entity::Entity, _>(db, vec![core, billing, upstream, uuid_core])
        .await
        .expect("layer 4");
    insert_rows::<l3::Entity, _>(db, vec![tr]).await.expect("layer 3");
    insert_rows::<l2::Entity, _>(db, vec![req]).await.expect("layer 2");
    insert_rows::<layer1_ingest::entity::Entity, _>(db, vec![sent, open, payload]).await.expect("layer 1");
    // Written out of order: the story orders them.
    insert_rows::<layer1_ingest::attempt::Entity, _>(db, tries).await.expect("attempts");
    insert_rows::<layer4_dispatch::delivery_receipts::Entity, _>(db, vec![r, refused, earlier])
        .await
        .expect("receipts");
    ids
}

/// The message's story from its delivery's id and from its core message's id; the answers'
/// bodies only with raw access; found by the core app's id; the text `trace` prints.
async fn story_from_any_id(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let db = tdb.connect().await;
    let s = seed(&db).await;

    for (from, access) in [(s.l1, RawAccess::Withheld), (s.l4, RawAccess::Shown), (s.l2, RawAccess::Withheld)]
    {
        let view = audit::message(&db, from, access).await.expect("message");
        let layers: Vec<(Layer, Uuid)> = view.lineage.entries.iter().map(|e| (e.layer, e.id)).collect();
        assert_eq!(
            layers,
            vec![
                (Layer::Raw, s.l1),
                (Layer::Normalized, s.l2),
                (Layer::Translated, s.l3),
                (Layer::Dispatch, s.l4)
            ],
            "from {from}"
        );
        // Both attempts, in order, whatever order they were written in.
        let tries: Vec<(Uuid, i32, Option<i32>, &str)> = view
            .deliveries
            .iter()
            .map(|a| (a.raw_id, a.attempt, a.http_status, a.verdict.as_str()))
            .collect();
        assert_eq!(tries, vec![(s.l1, 1, Some(500), "retry"), (s.l1, 2, Some(201), "delivered")]);
        assert_eq!(view.deliveries[0].request_headers[1], serde_json::json!(["authorization", "[redacted]"]));
        assert_eq!(view.receipts.len(), 1, "from {from}");
        let r = &view.receipts[0];
        assert_eq!(
            (r.id, r.raw_id, r.status.as_str(), r.http_status),
            (s.receipt, Some(s.l1), "acknowledged", Some(201))
        );
        assert_eq!(r.sent_at, None);
        // The request delivered: layer 1's body and headers, hash re-checked.
        assert_eq!(view.raw.len(), 1);
        assert!(view.raw[0].sha256_verified);

        let json = serde_json::to_value(&view).expect("json");
        assert_eq!(json["receipts"][0]["fields"]["crm_id"], "c-9");
        // Digit for digit: the stored text, not a float's.
        assert!(serde_json::to_string(&view).expect("json").contains("12345678901234567890.10"));
        let answers: Vec<&serde_json::Value> = json["deliveries"]
            .as_array()
            .expect("deliveries")
            .iter()
            .map(|a| &a["response_body_base64"])
            .collect();
        match access {
            RawAccess::Withheld => {
                assert!(answers.iter().all(|a| a.is_null()), "{json}");
                assert!(
                    json["deliveries"]
                        .as_array()
                        .expect("d")
                        .iter()
                        .all(|a| a["body_withheld"] == "needs scope raw")
                );
                assert!(!json.to_string().contains("oops"), "nothing of the answers leaks: {json}");
                assert!(json["raw"][0]["body_base64"].is_null());
            }
            RawAccess::Shown => {
                let b64 = base64::engine::general_purpose::STANDARD;
                let bodies: Vec<Vec<u8>> = answers
                    .iter()
                    .map(|a| b64.decode(a.as_str().expect("shown with raw")).expect("base64"))
                    .collect();
                assert_eq!(bodies, vec![b"oops".to_vec(), ANSWER.as_bytes().to_vec()]);
                assert!(json["deliveries"][1].get("body_withheld").is_none(), "{json}");
                assert_eq!(json["raw"][0]["headers"][":method"], "PATCH");
            }
        }
    }

    // Refused before a delivery was made: no attempt, the receipt says why.
    let refused = audit::message(&db, s.billing, RawAccess::Shown).await.expect("billing");
    assert_eq!((refused.lineage.entries.len(), refused.deliveries.len(), refused.receipts.len()), (1, 0, 1));
    assert_eq!(refused.receipts[0].reason.as_deref(), Some("no outbound route"));
    // An upstream flow has neither, and says so with empty lists rather than leaving them out.
    let up = audit::message(&db, s.upstream, RawAccess::Shown).await.expect("upstream");
    let json = serde_json::to_value(&up).expect("json");
    assert_eq!((&json["deliveries"], &json["receipts"]), (&serde_json::json!([]), &serde_json::json!([])));

    // By the core app's id: one flow per target, never the upstream row with the same text.
    assert_eq!(audit::by_core_message_id(&db, CORE_ID).await.expect("by id"), vec![s.l4, s.billing]);
    assert!(audit::by_core_message_id(&db, "m-unknown").await.expect("by id").is_empty());
    let flows = audit::trace(&db, CORE_ID, RawAccess::Withheld).await.expect("trace");
    assert_eq!(flows.iter().map(|v| v.lineage.focus).collect::<Vec<_>>(), vec![s.l4, s.billing]);
    let one = audit::trace(&db, &s.l1.to_string(), RawAccess::Withheld).await.expect("trace");
    assert_eq!(one.iter().map(|v| v.lineage.focus).collect::<Vec<_>>(), vec![s.l1]);
    // A core id that is a UUID is no row's id: found as a core id.
    let by_uuid = audit::trace(&db, &s.uuid_core_id, RawAccess::Withheld).await.expect("trace");
    assert_eq!(by_uuid.iter().map(|v| v.lineage.focus).collect::<Vec<_>>(), vec![s.uuid_core]);
    let none = audit::trace(&db, "m-unknown", RawAccess::Withheld).await;
    assert!(matches!(&none, Err(hub_worker::Error::UnknownCoreMessage(c)) if c == "m-unknown"), "{none:?}");
    let none = audit::trace(&db, &Uuid::now_v7().to_string(), RawAccess::Withheld).await;
    assert!(matches!(none, Err(hub_worker::Error::NotFound(_))), "{none:?}");

    // The text: layer 4 first, each attempt under the delivery, the final status beside the
    // attempt that settled it, then the receipt.
    let text = hub_worker::report::message_text(&flows[0]);
    let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("`{needle}` missing in\n{text}"));
    let order = [
        at(&format!("L4 {}", s.l4)),
        at(&format!("L3 {}", s.l3)),
        at(&format!("L2 {}", s.l2)),
        at(&format!("L1 {}", s.l1)),
        at("attempt 1  PATCH https://crm.example/contacts/m-42  -> 500 in 12 ms (retry)\n"),
        at(
            "attempt 2  PATCH https://crm.example/contacts/m-42  -> 201 in 8 ms (delivered) => acknowledged\n",
        ),
        at(&format!(
            "receipt {} acknowledged (HTTP 201) to receipts-crm, not sent yet (0 attempts)\n",
            s.receipt
        )),
        at("   fields: {\"crm_id\":\"c-9\",\"score\":12345678901234567890.10}\n"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "out of order:\n{text}");
    assert!(text.starts_with(&format!("lineage of {} (origin {})\nL4 ", s.l4, s.l4)), "{text}");
    assert!(text.contains(&format!("\n      L1 {}", s.l1)), "downstream ends in layer 1, deepest: {text}");
    // The lineage alone shows the rows, not the attempts.
    let rows_only = hub_worker::report::lineage_text(&flows[0].lineage);
    assert!(rows_only.contains(&format!("L1 {}", s.l1)) && !rows_only.contains("attempt 1"), "{rows_only}");
    drop(db);
    tdb.cleanup().await;
}

on_both!(story_from_any_id);

/// Deliveries per target and status, from the summary, agree with a scan; unsent receipts
/// counted.
async fn deliveries_in_stats(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let db = tdb.connect().await;
    seed(&db).await;
    hub_worker::summary::fold(&db).await.expect("fold");
    let stats = audit::stats(&db).await.expect("stats");
    assert_eq!(stats.deliveries.len(), 1, "only crm has deliveries: {:?}", stats.deliveries);
    let crm = &stats.deliveries[0];
    assert_eq!(
        (crm.target.as_str(), crm.waiting, crm.retrying, crm.acknowledged, crm.rejected, crm.dead),
        ("crm", 0, 1, 1, 0, 0)
    );
    // The retrying delivery was made 90 s ago.
    assert!(crm.oldest_open_secs.is_some_and(|s| (90..120).contains(&s)), "{crm:?}");
    assert_eq!(stats.receipts_unsent, 2, "crm's and billing's; the earlier one was sent");
    let scanned = audit::stats_by_scan(&db).await.expect("scan");
    let ages = |d: &[audit::DeliveryStats]| {
        d.iter().map(|x| audit::DeliveryStats { oldest_open_secs: None, ..x.clone() }).collect::<Vec<_>>()
    };
    assert_eq!(ages(&scanned.deliveries), ages(&stats.deliveries));
    assert_eq!(scanned.receipts_unsent, stats.receipts_unsent);
    drop(db);
    tdb.cleanup().await;
}

on_both!(deliveries_in_stats);

const AUDITOR: &str = "auditor-token-0123456789";
const READER: &str = "reader-token-0123456789";
const SCRAPER: &str = "scraper-token-0123456789";

async fn get(s: &crate::front_door::Server, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut req = s.client.get(format!("{}{path}", s.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let kind =
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    (status, kind, resp.text().await.unwrap_or_default())
}

/// Over HTTP: `GET /v1/core-messages/{id}` by scope, `/v1/stats` and `/metrics` per target.
async fn core_messages_over_http(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let tokens = Tokens::new(vec![
        Token::new("auditor", AUDITOR, &[Scope::Read, Scope::Raw]),
        Token::new("reader", READER, &[Scope::Read]),
        Token::new("prometheus", SCRAPER, &[Scope::Metrics]),
    ]);
    let srv = crate::front_door::server_with_tokens(&tdb, tokens).await;
    let s = seed(srv.hub.db()).await;
    let path = format!("/v1/core-messages/{CORE_ID}");

    let (status, _, body) = get(&srv, &path, Some(AUDITOR)).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let items = v["items"].as_array().expect("items");
    let focus: Vec<&str> = items.iter().filter_map(|m| m["focus"].as_str()).collect();
    assert_eq!(focus, vec![s.l4.to_string(), s.billing.to_string()]);
    let layers: Vec<&str> =
        items[0]["entries"].as_array().expect("e").iter().filter_map(|e| e["layer"].as_str()).collect();
    assert_eq!(layers, vec!["Raw", "Normalized", "Translated", "Dispatch"]);
    let answer = base64::engine::general_purpose::STANDARD
        .decode(items[0]["deliveries"][1]["response_body_base64"].as_str().expect("shown with raw"))
        .expect("base64");
    assert_eq!(answer, ANSWER.as_bytes());
    assert_eq!(items[0]["receipts"][0]["status"], "acknowledged");
    assert_eq!(items[1]["receipts"][0]["reason"], "no outbound route");

    // Without `raw`: the story, not the answers.
    let (status, _, body) = get(&srv, &path, Some(READER)).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(v["items"][0]["deliveries"][1]["response_body_base64"].is_null(), "{v}");
    assert_eq!(v["items"][0]["deliveries"][1]["body_withheld"], "needs scope raw");
    assert_eq!(v["items"][0]["deliveries"].as_array().map(Vec::len), Some(2));

    // An id with characters that need escaping in a path is the same lookup.
    let (status, kind, body) = get(&srv, "/v1/core-messages/m%2F42%20x", Some(READER)).await;
    assert_eq!((status, kind.as_str()), (404, "application/problem+json"), "{body}");
    assert!(body.contains("core-message-id `m/42 x`"), "{body}");
    assert_eq!(get(&srv, "/v1/core-messages/m-unknown", Some(READER)).await.0, 404);
    assert_eq!(get(&srv, &path, None).await.0, 401);
    assert_eq!(get(&srv, &path, Some(SCRAPER)).await.0, 403);

    let (status, _, body) = get(&srv, "/v1/stats", Some(READER)).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["deliveries"][0]["target"], "crm", "{v}");
    assert_eq!(
        (v["deliveries"][0]["acknowledged"].as_i64(), v["deliveries"][0]["retrying"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(v["receipts_unsent"], 2);

    let (status, _, text) = get(&srv, "/metrics", Some(SCRAPER)).await;
    assert_eq!(status, 200, "{text}");
    for line in [
        "# TYPE post_office_deliveries gauge\n",
        "\npost_office_deliveries{target=\"crm\",status=\"acknowledged\"} 1\n",
        "\npost_office_deliveries{target=\"crm\",status=\"failed\"} 1\n",
        "\npost_office_deliveries{target=\"crm\",status=\"dead\"} 0\n",
        // The upstream payload from `crm` is not a delivery.
        "\npost_office_deliveries{target=\"crm\",status=\"rejected\"} 0\n",
        "\n# TYPE post_office_delivery_receipts_unsent gauge\npost_office_delivery_receipts_unsent 2\n",
    ] {
        assert!(text.contains(line), "`{line}` missing in\n{text}");
    }
    assert!(
        !text.contains("post_office_deliveries{target=\"billing\""),
        "billing never got a delivery: {text}"
    );
    srv.stop().await;
    tdb.cleanup().await;
}

on_both!(core_messages_over_http);
