//! Layer 1: idempotent ingest, and bad input kept with its reason.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::EntityTrait;

use hub_worker::{Error, Hub, IngestMeta, IngestOutcome};
use layer1_ingest::ingest::sha256_hex;
use layer1_ingest::{Status, entity as l1};
use layer2_normalize::{DeclaredKind, DeclaredNormalizer, JsonSchema};
use layer4_dispatch::{InProcessTransport, Receiver};
use tokio_util::sync::CancellationToken;

use crate::on_both;
use crate::util::{Backend, Collect, TestDb, builder, payment, rows};

async fn ingest_is_idempotent(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let hub = builder(&tdb.url, Arc::new(InProcessTransport::default())).build().await.expect("hub");
    let body = payment("evt_idem_1", "10.00", "cus_1");

    let first = hub.ingest("payments", &body, IngestMeta::default()).await.expect("first");
    let again = hub.ingest("payments", &body, IngestMeta::default()).await.expect("again");
    assert!(!first.is_duplicate());
    assert!(again.is_duplicate());
    assert_eq!(first.id, again.id);

    // Same event id, different bytes while the first copy stands: never dropped silently, and
    // never carried on as a second version of the event: stored rejected, as a conflict.
    let resent = hub
        .ingest("payments", &payment("evt_idem_1", "10.01", "cus_1"), IngestMeta::default())
        .await
        .expect("resent");
    assert_eq!(resent.outcome, IngestOutcome::Conflict { with: first.id });
    assert!(!resent.is_duplicate() && resent.id != first.id);

    // A caller-given ref wins over the body's; without any ref, the body hash is the key.
    let explicit = IngestMeta { source_ref: Some("hdr-ref-1".into()), ..Default::default() };
    let a = hub.ingest("payments", &body, explicit.clone()).await.expect("explicit ref");
    assert!(!a.is_duplicate() && a.id != first.id);
    assert!(hub.ingest("payments", &body, explicit).await.expect("explicit again").is_duplicate());

    let no_ref = br#"{"contacts": "not an object with event_id"}"#;
    let x = hub.ingest("crm-contacts", no_ref, IngestMeta::default()).await.expect("no ref");
    let y = hub.ingest("crm-contacts", no_ref, IngestMeta::default()).await.expect("no ref again");
    assert_eq!((x.id, y.is_duplicate()), (y.id, true));

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
    assert_eq!(ids.iter().filter(|i| !i.is_duplicate()).count(), 1, "{ids:?}");
    assert!(ids.iter().all(|i| i.id == ids[0].id));

    assert_eq!(rows::<l1::Entity>(hub.db()).await, 5, "4 messages and the conflict");
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

async fn row(hub: &Hub, id: impl Into<uuid::Uuid>) -> l1::Model {
    l1::Entity::find_by_id(id.into()).one(hub.db()).await.expect("query").expect("row")
}

/// Every layer 1 row to `rejected`, as layer 2 would leave refused payloads.
async fn reject_all(hub: &Hub) {
    use sea_orm::sea_query::Expr;
    l1::Entity::update_many()
        .col_expr(l1::Column::Status, Expr::value(Status::Rejected.as_str()))
        .col_expr(l1::Column::NextAttemptAt, Expr::value(Option::<chrono::DateTime<chrono::Utc>>::None))
        .exec(hub.db())
        .await
        .expect("reject");
}

/// Issue 9 item 7: a corrected resend of a refused event is stored and processed (linked to the
/// refused copy), an identical resend of what stands is a duplicate, and other bytes under the
/// id of a copy that stands are kept as a conflict, not dropped.
async fn resends_of_refused_events_are_processed(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let transport = Arc::new(InProcessTransport::default());
    let hub = builder(&tdb.url, transport.clone()).build().await.expect("hub");
    hub.start();
    let cancel = CancellationToken::new();
    let core = Arc::new(Collect::default());
    for q in ["core.members", "core.payments"] {
        tokio::spawn(Receiver::new(transport.clone(), q, core.clone()).run(cancel.clone()));
    }
    let settle = || async { assert!(hub.wait_settled(Duration::from_secs(30)).await.expect("settle")) };
    let meta = IngestMeta::default;

    let bad = payment("evt_fix", "12,50", "cus_1");
    let first = hub.ingest("payments", &bad, meta()).await.expect("bad");
    assert_eq!(first.outcome, IngestOutcome::New);
    settle().await;
    assert_eq!(row(&hub, first.id).await.status, Status::Rejected);

    // The corrected event under the same id: a new message superseding the refused copy.
    let good = payment("evt_fix", "12.50", "cus_1");
    let fixed = hub.ingest("payments", &good, meta()).await.expect("good");
    assert_eq!(fixed.outcome, IngestOutcome::Resend { of: first.id });
    assert!(!fixed.is_duplicate() && fixed.id != first.id);
    settle().await;
    let r = row(&hub, fixed.id).await;
    assert_eq!(r.status, Status::Forwarded, "processed: {:?}", r.last_error);
    assert_eq!((r.parent_id, r.origin_id), (Some(first.id.uuid()), first.id.uuid()), "linked like a replay");
    assert_eq!(r.source_ref.as_deref(), Some("evt_fix"));
    assert_eq!(r.body_sha256, sha256_hex(&good));
    assert_ne!(r.body_sha256, row(&hub, first.id).await.body_sha256);
    assert_eq!(core.got.lock().expect("lock").len(), 1, "the corrected payment was delivered");
    // The lineage of the refused copy leads to the delivered one.
    let lin = hub.lineage(first.id).await.expect("lineage");
    assert!(lin.entries.iter().any(|e| e.id == fixed.id), "{lin:?}");

    // The same bytes again: the copy that stands answers.
    let again = hub.ingest("payments", &good, meta()).await.expect("again");
    assert_eq!((again.id, again.outcome), (fixed.id, IngestOutcome::Duplicate));

    // The refused bytes again, while the corrected copy stands: kept, rejected, not delivered.
    let old = hub.ingest("payments", &bad, meta()).await.expect("old bytes");
    assert_eq!(old.outcome, IngestOutcome::Conflict { with: fixed.id });
    let c = row(&hub, old.id).await;
    assert_eq!((c.status, c.parent_id, c.next_attempt_at), (Status::Rejected, None, None));
    let reason = c.last_error.expect("reason");
    for needle in [fixed.id.to_string(), sha256_hex(&good), sha256_hex(&bad)] {
        assert!(reason.contains(&needle), "{reason} names {needle}");
    }
    // Sent once more: the same conflict row answers, nothing more is stored.
    let old_again = hub.ingest("payments", &bad, meta()).await.expect("old bytes again");
    assert_eq!((old_again.id, old_again.outcome), (old.id, IngestOutcome::Conflict { with: fixed.id }));

    // An identical resend of a refused event is stored too (the first copy did not go through;
    // the integration may have been fixed since), as a resend of the newest copy.
    let twice = payment("evt_twice", "1,00", "cus_1");
    let a = hub.ingest("payments", &twice, meta()).await.expect("twice 1");
    settle().await;
    let b = hub.ingest("payments", &twice, meta()).await.expect("twice 2");
    assert_eq!(b.outcome, IngestOutcome::Resend { of: a.id });
    settle().await;
    let c = hub.ingest("payments", &twice, meta()).await.expect("twice 3");
    assert_eq!(c.outcome, IngestOutcome::Resend { of: b.id }, "the newest copy is the one superseded");
    settle().await;
    assert_eq!(row(&hub, c.id).await.status, Status::Rejected);

    assert_eq!(core.got.lock().expect("lock").len(), 1);
    assert_eq!(rows::<l1::Entity>(hub.db()).await, 6);
    cancel.cancel();
    hub.shutdown().await;
    tdb.cleanup().await;
}

/// Concurrent resends race in the unique index, not in a read-then-write: one copy per
/// superseded row, the others are answered from it.
async fn concurrent_resends_store_one_row(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let hub = builder(&tdb.url, Arc::new(InProcessTransport::default())).build().await.expect("hub");
    let first =
        hub.ingest("payments", &payment("evt_cc", "1.00", "c"), IngestMeta::default()).await.expect("first");
    reject_all(&hub).await;
    let race = |bodies: Vec<Vec<u8>>| {
        let tasks: Vec<_> = bodies
            .into_iter()
            .map(|body| {
                let hub = hub.clone();
                tokio::spawn(async move { hub.ingest("payments", &body, IngestMeta::default()).await })
            })
            .collect();
        async move {
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("task").expect("ingest"));
            }
            out
        }
    };
    // The same resend eight times at once: one new row, seven duplicates of it.
    let same = race(vec![payment("evt_cc", "1.00", "c"); 8]).await;
    let new: Vec<_> = same.iter().filter(|i| i.outcome == IngestOutcome::Resend { of: first.id }).collect();
    assert_eq!(new.len(), 1, "{same:?}");
    assert!(same.iter().all(|i| i.id == new[0].id), "{same:?}");
    let resend = new[0].id;

    // Eight different corrections at once: one supersedes the refused copy, the others are
    // conflicts with it (each kept, rejected).
    reject_all(&hub).await;
    let bodies: Vec<Vec<u8>> = (0..8).map(|i| payment("evt_cc", &format!("2.0{i}"), "c")).collect();
    let differ = race(bodies).await;
    let won: Vec<_> = differ.iter().filter(|i| i.outcome == IngestOutcome::Resend { of: resend }).collect();
    assert_eq!(won.len(), 1, "{differ:?}");
    let conflicts =
        differ.iter().filter(|i| i.outcome == IngestOutcome::Conflict { with: won[0].id }).count();
    assert_eq!(conflicts, 7, "{differ:?}");
    assert_eq!(rows::<l1::Entity>(hub.db()).await, 1 + 1 + 8);
    tdb.cleanup().await;
}

/// Issue 9 item 7: the event id is read with layer 2's exact parse. A body with a repeated key
/// claims no id (its key is its hash) and is refused at layer 2; the real event with that id is
/// then stored and processed, not answered "duplicate".
async fn a_body_with_a_repeated_key_claims_no_event_id(backend: Backend) {
    // A declared integration (integration files): `event_ref = "/id"`.
    let tdb = TestDb::new(backend).await;
    let kind = DeclaredKind {
        name: "event".into(),
        schema_version: "1".into(),
        schema: JsonSchema::compile(serde_json::json!({"type": "object", "required": ["id"]}))
            .expect("schema"),
        source_ref: Some("/id".into()),
        when: None,
    };
    let declared = DeclaredNormalizer::new("declared", None, Some("/id".into()), 10, vec![kind]);
    let hub = builder(&tdb.url, Arc::new(InProcessTransport::default()))
        .normalizer(Arc::new(declared))
        .build()
        .await
        .expect("hub");
    let two = hub
        .ingest("declared", br#"{"id":"evt_x","id":"evt_other"}"#, IngestMeta::default())
        .await
        .expect("two ids");
    let r = row(&hub, two.id).await;
    assert_eq!(r.source_ref, None);
    assert!(r.dedup_key.starts_with("sha256:"), "{}", r.dedup_key);
    let other = hub.ingest("declared", br#"{"id":"evt_other"}"#, IngestMeta::default()).await.expect("other");
    assert_eq!(other.outcome, IngestOutcome::New);
    assert_eq!(row(&hub, other.id).await.source_ref.as_deref(), Some("evt_other"));
    tdb.cleanup().await;

    // A built-in integration, all the way: the repeated key sits deep in the body.
    let tdb = TestDb::new(backend).await;
    let transport = Arc::new(InProcessTransport::default());
    let hub = builder(&tdb.url, transport.clone()).build().await.expect("hub");
    hub.start();
    let cancel = CancellationToken::new();
    let core = Arc::new(Collect::default());
    tokio::spawn(Receiver::new(transport.clone(), "core.payments", core.clone()).run(cancel.clone()));
    let body = String::from_utf8(payment("evt_meta", "1.00", "c"))
        .expect("utf8")
        .replace(r#""metadata":{"n":"evt_meta"}"#, r#""metadata":{"n":"a","n":"b"}"#);
    assert!(body.contains(r#""n":"a","n":"b""#));
    let dup = hub.ingest("payments", body.as_bytes(), IngestMeta::default()).await.expect("dup");
    assert!(hub.wait_settled(Duration::from_secs(30)).await.expect("settle"));
    let r = row(&hub, dup.id).await;
    assert_eq!(r.source_ref, None);
    assert_eq!(r.status, Status::Rejected);
    let reason = r.last_error.unwrap_or_default();
    assert!(reason.contains("/data/payment/metadata/n") && reason.contains("duplicate_key"), "{reason}");
    let real =
        hub.ingest("payments", &payment("evt_meta", "1.00", "c"), IngestMeta::default()).await.expect("real");
    assert_eq!(real.outcome, IngestOutcome::New);
    assert!(hub.wait_settled(Duration::from_secs(30)).await.expect("settle"));
    assert_eq!(core.got.lock().expect("lock").len(), 1, "the real event was delivered");
    cancel.cancel();
    hub.shutdown().await;
    tdb.cleanup().await;
}

on_both!(
    ingest_is_idempotent,
    refused_input_stores_nothing,
    rejected_input_keeps_raw_bytes_and_reason,
    resends_of_refused_events_are_processed,
    concurrent_resends_store_one_row,
    a_body_with_a_repeated_key_claims_no_event_id
);
