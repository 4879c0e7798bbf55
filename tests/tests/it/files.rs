//! Integrations from files alone: the three examples end to end, the fidelity promise (unknown
//! fields, exact numbers), schema violations, and replay after a mapping change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use tokio_util::sync::CancellationToken;

use hub_worker::files::{Loaded, load_dir};
use hub_worker::{Hub, IngestMeta};
use layer1_ingest::Status;
use layer2_normalize::entity as l2;
use layer3_translate::entity as l3;

use crate::on_both;
use crate::util::{Backend, Collect, TestDb, hub_on_files};

const DESTINATIONS: &[&str] = &["core.members", "core.payments", "core.ledger", "core.telemetry"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A copy of the examples a hub builds from (the pulled source's token in a file of its own).
fn examples() -> crate::util::Examples {
    crate::util::Examples::new()
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(repo().join(rel)).expect("sample payload")
}

fn load(dir: &Path) -> Loaded {
    let loaded = load_dir(dir, false);
    assert!(loaded.diagnostics.is_empty(), "{:#?}", loaded.diagnostics);
    loaded
}

/// A hub running the integrations in `dir` (with their own routes and nothing else, as
/// `HubBuilder::integrations_dir` wires them) and a core app collecting every destination.
async fn start(url: &str, dir: &Path) -> (Hub, Arc<Collect>, CancellationToken) {
    load(dir); // the directory is clean: a failing build below is the builder's doing
    hub_on_files(url, dir, DESTINATIONS).await
}

async fn settle(hub: &Hub) {
    assert!(hub.wait_settled(Duration::from_secs(30)).await.expect("settle"), "did not settle");
}

async fn examples_run_end_to_end_from_files(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let (hub, core, cancel) = start(&tdb.url, &examples()).await;
    let meta = IngestMeta::default;
    hub.ingest("crm-contacts", &read("hub-worker/samples/crm-contacts.json"), meta()).await.expect("crm");
    hub.ingest("payments", &read("hub-worker/samples/payment-succeeded.json"), meta()).await.expect("pay");
    hub.ingest("payments", &read("hub-worker/samples/payment-refunded.json"), meta()).await.expect("refund");
    let iot =
        hub.ingest("iot-sensors", &read("examples/payloads/iot-readings.json"), meta()).await.expect("iot");
    settle(&hub).await;

    let counts = hub.counts().await.expect("counts");
    let l4: Vec<_> = counts.iter().filter(|c| c.layer == layer1_ingest::Layer::Dispatch).collect();
    assert_eq!(
        l4.iter().map(|c| c.count).sum::<i64>(),
        8,
        "3 contacts + 2 payments + 3 readings: {counts:?}"
    );
    assert!(l4.iter().all(|c| c.status == Status::Acknowledged), "{counts:?}");

    let got = core.got.lock().expect("lock").clone();
    assert_eq!(got.len(), 8);
    let pay = got.iter().find(|m| m.body["kind"] == "charge").expect("charge");
    assert_eq!(pay.body["amount"]["value"].as_str(), Some("12345678901234567.89"));
    assert_eq!(pay.body["amount"]["currency"].as_str(), Some("EUR"));
    // Timestamps keep the offset the provider wrote.
    assert_eq!(pay.body["captured_at"].as_str(), Some("2026-11-20T14:05:41.873+01:00"));
    let ada = got.iter().find(|m| m.body["member_id"] == "c-1001").expect("member");
    assert_eq!(ada.body["display_name"].as_str(), Some("Ada Lovelace"));
    assert_eq!(ada.body["lifecycle"].as_str(), Some("active"));
    assert_eq!(ada.headers.message_type, "member.upsert");
    // The batch's own fields travel with each contact.
    assert_eq!(serde_json::to_string(&ada.body["crm_portal_id"]).expect("t"), "48213");
    assert_eq!(ada.body["changed_at"].as_str(), Some("2026-11-20T14:03:11.512+01:00"));
    assert_eq!(ada.body["crm_event_id"].as_str(), Some("evt_crm_20261120_000417"));

    // Numbers as the device wrote them: beyond u64, 22 decimals, exponent forms (both cases).
    let readings: Vec<_> = got.iter().filter(|m| m.headers.message_type == "sensor.reading").collect();
    let text =
        |m: &layer4_dispatch::InboundMessage, k: &str| serde_json::to_string(&m.body[k]).expect("text");
    let by_seq = |seq: &str| *readings.iter().find(|m| text(m, "sequence") == seq).expect("reading");
    assert_eq!(text(by_seq("18446744073709551617"), "value"), "21.500000000000000000001");
    assert_eq!(text(by_seq("18446744073709551618"), "value"), "6.02214076E23");
    assert_eq!(text(by_seq("7"), "value"), "1e400");
    assert_eq!(by_seq("18446744073709551617").body["gateway_seq"].as_str(), Some("18446744073709551617"));
    assert_eq!(by_seq("18446744073709551617").body["measured_at"].as_str(), Some("2026-11-20T13:05:41.873Z"));
    assert_eq!(by_seq("18446744073709551618").body["quality"].as_str(), Some("unknown"), "defaulted");
    assert_eq!(
        by_seq("18446744073709551617").body["labels"],
        serde_json::json!([{"key": "room", "value": "B2"}])
    );

    // Layer 2 keeps the schema version, layer 3 the mapping and its fidelity report.
    let rows2 = l2::Entity::find().filter(l2::Column::OriginId.eq(iot.id)).all(hub.db()).await.expect("l2");
    assert_eq!(rows2.len(), 3);
    assert!(rows2.iter().all(|r| r.schema_version.as_deref() == Some("1") && r.record_kind == "reading"));
    let rows3 = l3::Entity::find().filter(l3::Column::OriginId.eq(iot.id)).all(hub.db()).await.expect("l3");
    assert!(
        rows3.iter().all(|r| r.mapping_name == "iot-reading-to-sensor-reading" && r.mapping_version == "1")
    );
    let quiet = rows3.iter().find(|r| r.body.contains("\"unknown\"")).expect("defaulted row");
    let fid: serde_json::Value = serde_json::from_str(&quiet.fidelity).expect("fidelity");
    assert_eq!(fid["defaulted"], serde_json::json!(["/quality"]));
    assert!(fid["mapped"].as_array().expect("mapped").iter().any(|p| p == "/value"));

    cancel.cancel();
    hub.shutdown().await;
    tdb.cleanup().await;
}

async fn fidelity_and_schema_violations(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let (hub, core, cancel) = start(&tdb.url, &examples()).await;
    // The CRM adds a field overnight: strict mapping, so the record stops at layer 3 by name.
    let crm = String::from_utf8(read("hub-worker/samples/crm-contacts.json")).expect("utf8");
    let crm = crm.replacen("\"id\": \"c-1001\",", "\"id\": \"c-1001\", \"nickname\": \"Countess\",", 1);
    let added = hub.ingest("crm-contacts", crm.as_bytes(), IngestMeta::default()).await.expect("crm");
    // A firmware adds a field: keep-in-extras, so it travels visibly.
    let iot = br#"{"gateway":"gw-1","batch_seq":1,"readings":[
        {"device":"d-9","seq":1,"metric":"t","value":0.1,"at":"2026-11-20 10:00:00","firmware":{"v":"2.1","build":12345678901234567890}}]}"#;
    hub.ingest("iot-sensors", iot, IngestMeta::default()).await.expect("iot");
    // A payment whose amount breaks the schema: rejected at layer 2 with pointer and rule.
    let bad = String::from_utf8(read("hub-worker/samples/payment-succeeded.json")).expect("utf8");
    let bad = bad.replace("\"12345678901234567.89\"", "\"12,50\"");
    let bad = hub.ingest("payments", bad.as_bytes(), IngestMeta::default()).await.expect("bad");
    settle(&hub).await;

    let rows2 = l2::Entity::find()
        .filter(l2::Column::OriginId.eq(added.id))
        .order_by_asc(l2::Column::RecordIndex)
        .all(hub.db())
        .await
        .expect("l2");
    assert_eq!(rows2.len(), 3);
    assert_eq!(rows2[0].status, Status::Rejected);
    let why = rows2[0].last_error.as_deref().unwrap_or_default();
    assert!(why.contains("`/nickname`") && why.contains("`unmapped`"), "{why}");
    assert!(rows2[1..].iter().all(|r| r.status == Status::Forwarded), "the other contacts go on");

    let got = core.got.lock().expect("lock").clone();
    let r = got.iter().find(|m| m.body["device_id"] == "d-9").expect("reading delivered");
    assert_eq!(r.body["extras"]["/firmware/v"].as_str(), Some("2.1"));
    assert_eq!(
        serde_json::to_string(&r.body["extras"]["/firmware/build"]).expect("t"),
        "12345678901234567890"
    );
    assert_eq!(serde_json::to_string(&r.body["value"]).expect("t"), "0.1");
    let row3 =
        l3::Entity::find().filter(l3::Column::Source.eq("iot-sensors")).one(hub.db()).await.expect("q");
    let fid: serde_json::Value = serde_json::from_str(&row3.expect("l3 row").fidelity).expect("fidelity");
    assert_eq!(fid["extras"], serde_json::json!(["/firmware/build", "/firmware/v"]));

    let raw = hub.lineage(bad.id).await.expect("lineage");
    let first = &raw.entries[0];
    assert_eq!(first.status, Status::Rejected);
    let why = first.last_error.as_deref().unwrap_or_default();
    assert!(why.contains("`/data/payment/amount`") && why.contains("`pattern`"), "{why}");
    cancel.cancel();
    hub.shutdown().await;
    tdb.cleanup().await;
}

/// A copy of the examples with the payments mapping at version 2 (the description now carries
/// the payment id as well).
fn examples_with_payments_v2() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("po-ints-{}", uuid::Uuid::now_v7().simple()));
    crate::util::copy_tree(&repo().join("examples/integrations"), &dir);
    crate::util::shop_token_as_file(&dir);
    let p = dir.join("payments.toml");
    let text = std::fs::read_to_string(&p).expect("payments.toml");
    let changed = text.replacen("version = \"1\"", "version = \"2\"", 1).replace(
        "\"/description\" = { from = \"/data/payment/description\" }",
        "\"/description\" = { concat = [\"/data/payment/description\", \"/data/payment/id\"], separator = \" / \" }",
    );
    assert_ne!(changed, text);
    std::fs::write(&p, changed).expect("write");
    dir
}

async fn replay_after_a_mapping_change_keeps_both_versions(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    let (hub, core, cancel) = start(&tdb.url, &examples()).await;
    let pay = hub
        .ingest("payments", &read("hub-worker/samples/payment-succeeded.json"), IngestMeta::default())
        .await
        .expect("pay");
    settle(&hub).await;
    cancel.cancel();
    hub.shutdown().await;

    // The mapping changes; the worker restarts with version 2 and replays from layer 3.
    let v2 = examples_with_payments_v2();
    let (hub, core2, cancel) = start(&tdb.url, &v2).await;
    let r = hub_worker::audit::replay_source(hub.db(), "payments", since, 3, "cli").await.expect("replay");
    assert_eq!((r.replayed.len(), r.skipped_moving), (1, 0));
    settle(&hub).await;

    let l = hub.lineage(pay.id).await.expect("lineage");
    let l2s: Vec<_> = l.entries.iter().filter(|e| e.layer == layer1_ingest::Layer::Normalized).collect();
    assert_eq!(l2s.len(), 2, "the record and its replayed copy");
    assert_eq!(l2s[1].parent_id, Some(l2s[0].id), "the copy links to the old record");
    let rows3 = l3::Entity::find()
        .filter(l3::Column::OriginId.eq(pay.id))
        .order_by_asc(l3::Column::Id)
        .all(hub.db())
        .await
        .expect("l3");
    assert_eq!(rows3.iter().map(|r| r.mapping_version.as_str()).collect::<Vec<_>>(), ["1", "2"]);
    assert_eq!(rows3[0].parent_id, Some(l2s[0].id));
    assert_eq!(rows3[1].parent_id, Some(l2s[1].id));
    assert!(rows3[0].body.contains("\"Invoice INV-2026-11-0042\""), "the old translation stays as it was");
    assert!(rows3[1].body.contains("Invoice INV-2026-11-0042 / pay_3QxR7sLkdIwHu7ix1XyZ"));
    assert_eq!(core.got.lock().expect("lock").len(), 1);
    let again = core2.got.lock().expect("lock").clone();
    assert_eq!(again.len(), 1, "the core app gets the new version");
    assert_eq!(again[0].headers.origin_id, pay.id);
    // A second replay of the same window copies only the newest record, once.
    let r = hub_worker::audit::replay_source(hub.db(), "payments", since, 3, "cli").await.expect("replay");
    assert_eq!(r.replayed.len(), 1);
    settle(&hub).await;
    // Through layer 4 now: only the newest translation is routed again, not the stale ones.
    let r = hub_worker::audit::replay_source(hub.db(), "payments", since, 4, "cli").await.expect("replay");
    assert_eq!(r.replayed.len(), 1, "only the current translation");
    settle(&hub).await;
    assert_eq!(core2.got.lock().expect("lock").len(), 3);
    cancel.cancel();
    hub.shutdown().await;
    let _ = std::fs::remove_dir_all(v2);
    tdb.cleanup().await;
}

on_both!(
    examples_run_end_to_end_from_files,
    fidelity_and_schema_violations,
    replay_after_a_mapping_change_keeps_both_versions
);
