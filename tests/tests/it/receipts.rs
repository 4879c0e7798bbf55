//! Receipts: they move rows to Acknowledged (or Rejected); unknown, repeated and malformed
//! ones change nothing.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sea_orm::{EntityTrait, QueryOrder};
use uuid::Uuid;

use hub_worker::IngestMeta;
use layer1_ingest::Status;
use layer4_dispatch::entity as l4;
use layer4_dispatch::transport::{OutgoingMessage, Transport};
use layer4_dispatch::wire::{Receipt, ReceiptStatus};
use layer4_dispatch::{InProcessTransport, ReceiptOutcome, apply_receipts};

use crate::on_both;
use crate::util::{Backend, TestDb, builder};

fn receipt(id: Uuid, status: ReceiptStatus, reason: Option<&str>) -> Receipt {
    Receipt { message_id: id, status, reason: reason.map(str::to_owned), at: Utc::now() }
}

async fn l4_rows(db: &sea_orm::DatabaseConnection) -> Vec<l4::Model> {
    l4::Entity::find().order_by_asc(l4::Column::Id).all(db).await.expect("rows")
}

async fn receipts_settle_rows_and_repeats_change_nothing(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let transport = Arc::new(InProcessTransport::default());
    let hub = builder(&tdb.url, transport.clone()).build().await.expect("hub");
    hub.start();
    let crm = hub_worker::demo::SAMPLES[0].2;
    hub.ingest("crm-contacts", crm, IngestMeta::default()).await.expect("ingest");
    // No receiver: the rows stop at Queued.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows = l4_rows(hub.db()).await;
        if rows.len() == 3 && rows.iter().all(|r| r.status == Status::Queued) {
            break rows;
        }
        assert!(tokio::time::Instant::now() < deadline, "rows never queued: {rows:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let db = hub.db();

    let out = apply_receipts(
        db,
        &[
            receipt(ids[0], ReceiptStatus::Acknowledged, None),
            receipt(ids[0], ReceiptStatus::Acknowledged, None),
        ],
    )
    .await
    .expect("apply");
    assert_eq!(out, ReceiptOutcome { applied: 1, unknown: 0, repeated: 1 });
    let first = l4::Entity::find_by_id(ids[0]).one(db).await.expect("q").expect("row");
    assert_eq!(first.status, Status::Acknowledged);
    assert!(first.acknowledged_at.is_some() && first.next_attempt_at.is_none());

    let out = apply_receipts(db, &[receipt(ids[0], ReceiptStatus::Acknowledged, None)]).await.expect("apply");
    assert_eq!(out, ReceiptOutcome { applied: 0, unknown: 0, repeated: 1 });
    let again = l4::Entity::find_by_id(ids[0]).one(db).await.expect("q").expect("row");
    assert_eq!(again, first, "a repeated receipt changes nothing");

    let out = apply_receipts(db, &[receipt(Uuid::now_v7(), ReceiptStatus::Acknowledged, None)])
        .await
        .expect("apply");
    assert_eq!(out, ReceiptOutcome { applied: 0, unknown: 1, repeated: 0 });

    let out =
        apply_receipts(db, &[receipt(ids[1], ReceiptStatus::Rejected, Some("member is archived\u{0}"))])
            .await
            .expect("apply");
    assert_eq!(out.applied, 1);
    let out = apply_receipts(db, &[receipt(ids[1], ReceiptStatus::Acknowledged, None)]).await.expect("apply");
    assert_eq!(out.repeated, 1, "rejected is final");
    let rejected = l4::Entity::find_by_id(ids[1]).one(db).await.expect("q").expect("row");
    assert_eq!(rejected.status, Status::Rejected);
    assert!(rejected.last_error.as_deref().is_some_and(|e| e.contains("member is archived")));

    // Through the receipts queue: a malformed receipt is dropped, the consumer keeps going.
    let send = |body: Vec<u8>| OutgoingMessage {
        queue: "hub.receipts".into(),
        dedup_id: Uuid::now_v7().to_string(),
        ordering_key: None,
        headers: Default::default(),
        body,
    };
    let valid = serde_json::to_vec(&receipt(ids[2], ReceiptStatus::Acknowledged, None)).expect("json");
    for r in transport
        .publish(&[
            send(b"not a receipt".to_vec()),
            send(br#"{"message_id":"nope","status":"acknowledged"}"#.to_vec()),
            send(valid),
        ])
        .await
    {
        r.expect("published");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let row = l4::Entity::find_by_id(ids[2]).one(db).await.expect("q").expect("row");
        if row.status == Status::Acknowledged {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "receipt via queue never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let statuses: Vec<Status> = l4_rows(db).await.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![Status::Acknowledged, Status::Rejected, Status::Acknowledged]);
    assert_eq!(transport.depth("hub.receipts"), 0, "every receipt settled, malformed ones included");
    hub.shutdown().await;
    tdb.cleanup().await;
}

on_both!(receipts_settle_rows_and_repeats_change_nothing);
