//! Layer 1: idempotent ingest, and bad input kept with its reason.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::EntityTrait;

use hub_worker::{Error, IngestMeta};
use layer1_ingest::{Status, entity as l1};
use layer4_dispatch::InProcessTransport;

use crate::on_both;
use crate::util::{Backend, TestDb, builder, payment, rows};

async fn ingest_is_idempotent(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let hub = builder(&tdb.url, Arc::new(InProcessTransport::default())).build().await.expect("hub");
    let body = payment("evt_idem_1", "10.00", "cus_1");

    let first = hub.ingest("payments", &body, IngestMeta::default()).await.expect("first");
    let again = hub.ingest("payments", &body, IngestMeta::default()).await.expect("again");
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(first.id, again.id);

    // Same event id, different bytes (a re-sent event with a changed field): still the event
    // already on record.
    let resent = hub
        .ingest("payments", &payment("evt_idem_1", "10.01", "cus_1"), IngestMeta::default())
        .await
        .expect("resent");
    assert_eq!((resent.id, resent.duplicate), (first.id, true));

    // A caller-given ref wins over the body's; without any ref, the body hash is the key.
    let explicit = IngestMeta { source_ref: Some("hdr-ref-1".into()), ..Default::default() };
    let a = hub.ingest("payments", &body, explicit.clone()).await.expect("explicit ref");
    assert!(!a.duplicate && a.id != first.id);
    assert!(hub.ingest("payments", &body, explicit).await.expect("explicit again").duplicate);

    let no_ref = br#"{"contacts": "not an object with event_id"}"#;
    let x = hub.ingest("crm-contacts", no_ref, IngestMeta::default()).await.expect("no ref");
    let y = hub.ingest("crm-contacts", no_ref, IngestMeta::default()).await.expect("no ref again");
    assert_eq!((x.id, y.duplicate), (y.id, true));

    // Concurrent ingests of one event race in the database: exactly one row wins.
    let body = payment("evt_race", "1.00", "cus_1");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let hub = hub.clone();
            let body = body.clone();
            tokio::spawn(async move { hub.ingest("payments", &body, IngestMeta::default()).await })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("task").expect("ingest"));
    }
    assert_eq!(ids.iter().filter(|i| !i.duplicate).count(), 1, "{ids:?}");
    assert!(ids.iter().all(|i| i.id == ids[0].id));

    assert_eq!(rows::<l1::Entity>(hub.db()).await, 4);
    tdb.cleanup().await;
}

async fn refused_input_stores_nothing(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let hub = builder(&tdb.url, Arc::new(InProcessTransport::default())).build().await.expect("hub");
    let err = hub.ingest("no-such-source", b"{}", IngestMeta::default()).await.expect_err("unknown source");
    assert!(matches!(err, Error::UnknownSource(ref s) if s == "no-such-source"), "{err}");
    let huge = vec![b' '; 1024 * 1024 + 1];
    let err = hub.ingest("payments", &huge, IngestMeta::default()).await.expect_err("too large");
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    assert_eq!(rows::<l1::Entity>(hub.db()).await, 0);
    tdb.cleanup().await;
}

async fn rejected_input_keeps_raw_bytes_and_reason(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let hub = builder(&tdb.url, Arc::new(InProcessTransport::default())).build().await.expect("hub");
    hub.start();
    let bad_amount = payment("evt_bad_amount", "12,50", "cus_1");
    let bad_email = br#"{"event_id":"evt_crm_bad","event_type":"contacts.batch_updated","occurred_at":"2026-11-20T14:03:11Z","portal_id":1,
"contacts":[{"id":"c-1","email":"ok@example.org","status":"lead","created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z",
"properties":{"first_name":"A","last_name":"B","phone":null,"company":null,"address":null,"tags":[],"lifetime_value":"1"}},
{"id":"c-2","email":"not-an-email","status":"lead","created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z",
"properties":{"first_name":"C","last_name":"D","phone":null,"company":null,"address":null,"tags":[],"lifetime_value":"1"}}]}"#;
    let not_json = b"{\"id\": \"evt_trunc\", \"object\": \"ev";
    let unknown_field = String::from_utf8(payment("evt_new_field", "1.00", "cus_1"))
        .expect("utf8")
        .replace("\"livemode\":false", "\"livemode\":false,\"risk_score\":12");

    let cases: Vec<(&str, &[u8], &str, &str)> = vec![
        ("payments", &bad_amount, "/data/payment/amount", "decimal"),
        ("crm-contacts", bad_email, "/contacts/1/email", "email"),
        ("payments", not_json, "", "json"),
        ("payments", unknown_field.as_bytes(), "/risk_score", "unknown_field"),
    ];
    let mut ids = Vec::new();
    for (source, body, _, _) in &cases {
        ids.push(hub.ingest(source, body, IngestMeta::default()).await.expect("ingest"));
    }
    assert!(hub.wait_settled(Duration::from_secs(20)).await.expect("settle"));
    for ((_, body, field, rule), got) in cases.iter().zip(&ids) {
        let row = l1::Entity::find_by_id(got.id).one(hub.db()).await.expect("query").expect("row kept");
        assert_eq!(row.status, Status::Rejected);
        assert_eq!(&row.body[..], *body, "raw bytes kept exactly");
        assert_eq!(row.body_sha256, layer1_ingest::ingest::sha256_hex(body));
        let reason = row.last_error.expect("reason stored");
        let names_field = field.is_empty() || reason.contains(&format!("`{field}`"));
        assert!(names_field && reason.contains(&format!("rule `{rule}`")), "{reason}");
    }
    // Nothing of a rejected payload went further, not even the good contact of the batch.
    assert_eq!(rows::<layer2_normalize::entity::Entity>(hub.db()).await, 0);
    hub.shutdown().await;
    tdb.cleanup().await;
}

on_both!(ingest_is_idempotent, refused_input_stores_nothing, rejected_input_keeps_raw_bytes_and_reason);
