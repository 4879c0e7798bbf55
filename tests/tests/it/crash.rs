//! Crashes: a stage task dropped mid-batch, and whole hubs aborted again and again, lose
//! nothing and duplicate nothing in the layer tables.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sea_orm::{DatabaseConnection, EntityTrait};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use hub_worker::IngestMeta;
use hub_worker::integrations::payments::PaymentNormalizer;
use layer1_ingest::{Failure, Stage, Status};
use layer2_normalize::{NormalizeStage, Normalizer, RawInput, Record};
use layer4_dispatch::{InProcessTransport, Receiver};

use crate::on_both;
use crate::util::{Backend, Collect, TestDb, builder, payment, test_settings};

/// Normalizes like the real one, but hangs forever on call number `hang_at`.
struct HangsMidBatch {
    calls: AtomicUsize,
    hang_at: usize,
    reached: Arc<Notify>,
}

#[async_trait]
impl Normalizer for HangsMidBatch {
    fn source(&self) -> &str {
        "payments"
    }
    async fn normalize(&self, raw: &RawInput<'_>) -> Result<Vec<Record>, Failure> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.hang_at {
            self.reached.notify_one();
            std::future::pending::<()>().await;
        }
        PaymentNormalizer.normalize(raw).await
    }
}

/// Per layer: how many children each parent has. Every value must be exactly 1 here (one
/// record per payment, one core message per record, one destination per payment).
async fn children_per_parent(db: &DatabaseConnection) -> Vec<HashMap<Option<Uuid>, usize>> {
    fn tally(parents: impl Iterator<Item = Option<Uuid>>) -> HashMap<Option<Uuid>, usize> {
        let mut m = HashMap::new();
        for p in parents {
            *m.entry(p).or_default() += 1;
        }
        m
    }
    vec![
        tally(
            layer2_normalize::entity::Entity::find()
                .all(db)
                .await
                .expect("l2")
                .into_iter()
                .map(|r| r.parent_id),
        ),
        tally(
            layer3_translate::entity::Entity::find()
                .all(db)
                .await
                .expect("l3")
                .into_iter()
                .map(|r| r.parent_id),
        ),
        tally(
            layer4_dispatch::entity::Entity::find()
                .all(db)
                .await
                .expect("l4")
                .into_iter()
                .map(|r| r.parent_id),
        ),
    ]
}

fn assert_one_child_each(per_layer: &[HashMap<Option<Uuid>, usize>], expected: usize) {
    for (i, m) in per_layer.iter().enumerate() {
        assert_eq!(
            m.len(),
            expected,
            "layer {} has children for {} parents, expected {expected}",
            i + 2,
            m.len()
        );
        assert!(m.values().all(|n| *n == 1), "layer {} has duplicates: {m:?}", i + 2);
    }
}

async fn stage_dropped_mid_batch_loses_and_duplicates_nothing(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let transport = Arc::new(InProcessTransport::default());
    let hub = builder(&tdb.url, transport.clone()).build().await.expect("hub");
    for i in 0..20 {
        hub.ingest("payments", &payment(&format!("evt_crash_{i}"), "1.10", "cus_1"), IngestMeta::default())
            .await
            .expect("ingest");
    }
    let reached = Arc::new(Notify::new());
    let hanging: Arc<dyn Normalizer> =
        Arc::new(HangsMidBatch { calls: AtomicUsize::new(0), hang_at: 11, reached: reached.clone() });
    let normalizers = Arc::new(HashMap::from([("payments".to_owned(), hanging)]));
    // A short lease: the rows the dropped stage claimed come back soon after it.
    let mut settings = test_settings().stage;
    settings.lease = Duration::from_secs(2);
    let stage = NormalizeStage::new(hub.db().clone(), normalizers, settings);
    let task = tokio::spawn(async move { stage.run_batch().await });
    tokio::time::timeout(Duration::from_secs(20), reached.notified())
        .await
        .expect("stage reached the 11th row");
    // Ten records are built in memory, outside any transaction; the crash loses them all and
    // nothing was written. The rows are leased: nobody takes them before the lease ends.
    task.abort();
    assert!(task.await.expect_err("aborted").is_cancelled());

    assert_eq!(crate::util::rows::<layer2_normalize::entity::Entity>(hub.db()).await, 0);
    let raw = layer1_ingest::entity::Entity::find().all(hub.db()).await.expect("l1");
    assert!(raw.iter().all(|r| r.status == Status::JustIn && r.attempts == 0), "{raw:?}");
    let now = chrono::Utc::now();
    assert!(raw.iter().all(|r| r.next_attempt_at.is_some_and(|t| t > now)), "leased: {raw:?}");

    hub.start();
    let cancel = CancellationToken::new();
    tokio::spawn(
        Receiver::new(transport.clone(), "core.payments", Arc::new(Collect::default())).run(cancel.clone()),
    );
    assert!(hub.wait_settled(Duration::from_secs(60)).await.expect("settle"));
    assert_one_child_each(&children_per_parent(hub.db()).await, 20);
    let acked = layer4_dispatch::entity::Entity::find().all(hub.db()).await.expect("l4");
    assert!(acked.iter().all(|r| r.status == Status::Acknowledged));
    cancel.cancel();
    hub.shutdown().await;
    tdb.cleanup().await;
}

async fn hubs_aborted_again_and_again_lose_and_duplicate_nothing(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let transport = Arc::new(InProcessTransport::default());
    let mut settings = test_settings();
    settings.stage.batch_size = 7;
    // A crash after publishing but before marking `queued` is retried once the lease ends.
    settings.publish.lease = Duration::from_millis(300);
    settings.publish.ack_timeout = Duration::from_secs(5);
    // A hub aborted mid-batch leaves its claimed rows leased: taken again once this ends.
    settings.stage.lease = Duration::from_secs(1);
    let core = Arc::new(Collect::default());
    let cancel = CancellationToken::new();
    let mut n = 0;
    for round in 0..6u64 {
        let hub = builder(&tdb.url, transport.clone()).settings(settings.clone()).build().await.expect("hub");
        if round == 0 {
            tokio::spawn(Receiver::new(transport.clone(), "core.payments", core.clone()).run(cancel.clone()));
        }
        hub.start();
        for _ in 0..25 {
            hub.ingest(
                "payments",
                &payment(&format!("evt_kill_{n}"), "2.20", &format!("cus_{}", n % 5)),
                IngestMeta::default(),
            )
            .await
            .expect("ingest");
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(3 + round * 9)).await;
        hub.abort();
    }
    let hub = builder(&tdb.url, transport.clone()).settings(settings).build().await.expect("last hub");
    hub.start();
    assert!(hub.wait_settled(Duration::from_secs(90)).await.expect("settle"), "{:?}", hub.counts().await);
    assert_one_child_each(&children_per_parent(hub.db()).await, n);
    let l4 = layer4_dispatch::entity::Entity::find().all(hub.db()).await.expect("l4");
    assert!(l4.iter().all(|r| r.status == Status::Acknowledged), "{:?}", hub.counts().await);
    let distinct: std::collections::HashSet<_> =
        core.got.lock().expect("lock").iter().map(|m| m.headers.message_id).collect();
    assert_eq!(distinct.len(), n, "every message reached the app, duplicates dropped by the receiver");
    cancel.cancel();
    hub.shutdown().await;
    tdb.cleanup().await;
}

on_both!(
    stage_dropped_mid_batch_loses_and_duplicates_nothing,
    hubs_aborted_again_and_again_lose_and_duplicate_nothing
);
