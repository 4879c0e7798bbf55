//! The whole way: ingest -> four layers -> receiver -> receipt -> Acknowledged, with lineage,
//! the wire contract's headers, and exact decimals.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use hub_worker::IngestMeta;
use hub_worker::demo::SAMPLES;
use layer1_ingest::{Layer, Status};
use layer4_dispatch::transport::{OutgoingMessage, Transport};
use layer4_dispatch::wire::{self, HubHeaders, Receipt, ReceiptStatus};
use layer4_dispatch::{InProcessTransport, Receiver};

use crate::on_both;
use crate::util::{Backend, Collect, TestDb, builder};

fn sample(name: &str) -> &'static [u8] {
    SAMPLES.iter().find(|(_, n, _)| *n == name).map(|(_, _, b)| *b).expect("sample")
}

async fn end_to_end_with_lineage_headers_and_digits(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let transport = Arc::new(InProcessTransport::default());
    let mut b = builder(&tdb.url, transport.clone());
    // An hour between polls: only the in-process wake-ups can carry the messages through in
    // time, so this also checks that a stage wakes when work arrives.
    let mut settings = crate::util::test_settings();
    settings.stage.poll_interval = Duration::from_secs(3600);
    b = b.settings(settings);
    let hub = b.build().await.expect("hub");
    hub.start();
    let core = Arc::new(Collect::default());
    let cancel = CancellationToken::new();
    for q in ["core.members", "core.payments"] {
        tokio::spawn(Receiver::new(transport.clone(), q, core.clone()).run(cancel.clone()));
    }

    let crm =
        hub.ingest("crm-contacts", sample("crm-contacts.json"), IngestMeta::default()).await.expect("crm");
    let pay =
        hub.ingest("payments", sample("payment-succeeded.json"), IngestMeta::default()).await.expect("pay");
    assert!(hub.wait_settled(Duration::from_secs(30)).await.expect("settle"), "settled without polling");

    let counts = hub.counts().await.expect("counts");
    let l4: Vec<_> = counts.iter().filter(|c| c.layer == Layer::Dispatch).collect();
    assert_eq!(l4.iter().map(|c| c.count).sum::<i64>(), 4, "3 contacts + 1 payment: {counts:?}");
    assert!(l4.iter().all(|c| c.status == Status::Acknowledged), "{counts:?}");

    let got = core.got.lock().expect("lock").clone();
    assert_eq!(got.len(), 4);
    let p = got.iter().find(|m| m.headers.message_type == "payment.recorded").expect("payment delivered");
    // Every digit of the decimal, as the provider wrote it.
    assert_eq!(p.body["amount"]["value"].as_str(), Some("12345678901234567.89"));
    assert_eq!(p.body["amount"]["currency"].as_str(), Some("EUR"));
    assert_eq!(p.body["captured_at"].as_str(), Some("2026-11-20T13:05:41.873Z"));
    let ada = got.iter().find(|m| m.body["crm_id"] == "c-1003").expect("contact delivered");
    assert_eq!(ada.body["lifetime_value"].as_str(), Some("12345678901234567.89"));

    // The contract's headers point back at the rows.
    let lin = hub.lineage(pay.id).await.expect("lineage");
    let row4 = lin.entries.iter().find(|e| e.layer == Layer::Dispatch).expect("l4");
    assert_eq!(p.headers.message_id, row4.id);
    assert_eq!(p.headers.origin_id, pay.id);
    assert_eq!(p.headers.source, "payments");
    assert_eq!(p.headers.source_ref.as_deref(), Some("evt_1QxR7sLkdIwHu7ix0a1b2c3d"));
    assert_eq!((p.headers.type_version.as_str(), p.headers.receipt_to.as_str()), ("1", "hub.receipts"));
    assert_eq!(p.headers.traceparent.as_deref(), Some(wire::traceparent(pay.id.uuid(), row4.id).as_str()));

    // Lineage from any layer's id: all four rows of the message.
    for e in lin.entries.clone() {
        let from_here = hub.lineage(e.id).await.expect("lineage");
        let chain = from_here.chain(row4.id);
        let layers: Vec<u8> = chain.iter().map(|e| e.layer.number()).collect();
        assert_eq!(layers, vec![1, 2, 3, 4], "from {:?} {}", e.layer, e.id);
        assert_eq!(from_here.entries.len(), 4);
    }
    // A batch: one raw row, three records, three core messages, three dispatches.
    let lin = hub.lineage(crm.id).await.expect("lineage");
    let per_layer: Vec<usize> =
        Layer::ALL.iter().map(|l| lin.entries.iter().filter(|e| e.layer == *l).count()).collect();
    assert_eq!(per_layer, vec![1, 3, 3, 3]);

    cancel.cancel();
    hub.shutdown().await;
    tdb.cleanup().await;
}

async fn shutdown_keeps_work_for_the_next_start(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let transport = Arc::new(InProcessTransport::default());
    let hub = builder(&tdb.url, transport.clone()).build().await.expect("hub");
    hub.start();
    let mut ids = Vec::new();
    for i in 0..60 {
        let body = crate::util::payment(&format!("evt_sd_{i}"), "5.00", &format!("cus_{}", i % 7));
        ids.push(hub.ingest("payments", &body, IngestMeta::default()).await.expect("ingest").id);
    }
    hub.shutdown().await;
    drop(hub);

    let hub = builder(&tdb.url, transport.clone()).build().await.expect("hub again");
    hub.start();
    let core = Arc::new(Collect::default());
    let cancel = CancellationToken::new();
    tokio::spawn(Receiver::new(transport.clone(), "core.payments", core.clone()).run(cancel.clone()));
    assert!(hub.wait_settled(Duration::from_secs(60)).await.expect("settle"));
    let counts = hub.counts().await.expect("counts");
    let acked: i64 = counts
        .iter()
        .filter(|c| c.layer == Layer::Dispatch && c.status == Status::Acknowledged)
        .map(|c| c.count)
        .sum();
    assert_eq!(acked, 60, "{counts:?}");
    cancel.cancel();
    hub.shutdown().await;
    tdb.cleanup().await;
}

on_both!(end_to_end_with_lineage_headers_and_digits, shutdown_keeps_work_for_the_next_start);

/// The receiver's side of the contract, without a database: a duplicate is not handed to the
/// app again, but its receipt is sent again (the first one may have been lost).
#[tokio::test]
async fn receiver_drops_duplicates_and_repeats_the_receipt() {
    let t = Arc::new(InProcessTransport::default());
    for q in ["core.x", "hub.receipts"] {
        t.ensure_queue(q).await.expect("queue");
    }
    let h = HubHeaders {
        message_id: uuid::Uuid::now_v7().into(),
        origin_id: uuid::Uuid::now_v7().into(),
        source: "payments".into(),
        source_ref: None,
        message_type: "payment.recorded".into(),
        type_version: "1".into(),
        receipt_to: "hub.receipts".into(),
        traceparent: None,
    };
    let msg = OutgoingMessage {
        queue: "core.x".into(),
        dedup_id: h.message_id.to_string(),
        ordering_key: None,
        headers: h.to_headers(),
        body: br#"{"n": 1}"#.to_vec(),
    };
    let garbage = OutgoingMessage { headers: Default::default(), ..msg.clone() };
    for r in t.publish(&[msg.clone(), msg.clone(), garbage]).await {
        r.expect("published");
    }
    let core = Arc::new(Collect::default());
    let receiver = Receiver::new(t.clone(), "core.x", core.clone());
    let stats = receiver.stats();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(receiver.run(cancel.clone()));
    let mut sub = t.subscribe("hub.receipts", 10).await.expect("sub");
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("receipt in time")
            .expect("d");
        let r: Receipt = serde_json::from_slice(&d.body).expect("receipt json");
        assert_eq!((r.message_id, r.status), (h.message_id.uuid(), ReceiptStatus::Acknowledged));
        d.ack().await.expect("ack");
    }
    tokio::time::timeout(Duration::from_secs(5), async {
        while stats.malformed.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("malformed one seen");
    assert_eq!(core.got.lock().expect("lock").len(), 1, "handler called once");
    assert_eq!(stats.duplicates.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(t.depth("core.x"), 0, "all settled");
    cancel.cancel();
    task.await.expect("receiver ends");
}
