//! A slow integration does not take ingest down: integration code runs outside any database
//! transaction (the stages claim under a lease, compute, then write), so while a normalizer or
//! translator waits on, say, a lookup service, the front door and the audit desk still answer.
//! On SQLite, where the hub has one connection, a normalizer awaited inside the claim
//! transaction used to make a concurrent `ingest` fail with a pool timeout after 5 s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sea_orm::EntityTrait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use hub_worker::integrations::payments::{PaymentNormalizer, PaymentTranslator};
use hub_worker::{Hub, IngestMeta};
use layer1_ingest::{Failure, Layer, Stage, Status};
use layer2_normalize::{NormalizeStage, Normalizer, RawInput, Record};
use layer3_translate::{RecordInput, Translation, Translator};
use layer4_dispatch::{InProcessTransport, Receiver};

use crate::on_both;
use crate::util::{Backend, Collect, TestDb, builder, payment};

/// The event the slow integration stalls on.
const SLOW: &str = "evt_slow";

/// Where the integration stalls: it says when it got there, and waits to be let go (or 60 s,
/// so that a failing test does not hang).
#[derive(Default)]
struct Gate {
    reached: Notify,
    release: Notify,
}

impl Gate {
    async fn stall(&self, source_ref: Option<&str>) {
        if source_ref == Some(SLOW) {
            self.reached.notify_one();
            let _ = tokio::time::timeout(Duration::from_secs(60), self.release.notified()).await;
        }
    }
}

/// The payments normalizer, stalled on [`SLOW`].
struct SlowNormalizer(Arc<Gate>);

#[async_trait]
impl Normalizer for SlowNormalizer {
    fn source(&self) -> &str {
        "payments"
    }
    fn event_ref(&self, body: &[u8]) -> Option<String> {
        PaymentNormalizer.event_ref(body)
    }
    async fn normalize(&self, raw: &RawInput<'_>) -> Result<Vec<Record>, Failure> {
        self.0.stall(raw.source_ref).await;
        PaymentNormalizer.normalize(raw).await
    }
}

/// The payments translator, stalled on [`SLOW`].
struct SlowTranslator(Arc<Gate>);

#[async_trait]
impl Translator for SlowTranslator {
    fn source(&self) -> &str {
        PaymentTranslator.source()
    }
    fn record_kind(&self) -> &str {
        PaymentTranslator.record_kind()
    }
    async fn translate(&self, record: &RecordInput<'_>) -> Result<Translation, Failure> {
        self.0.stall(record.source_ref).await;
        PaymentTranslator.translate(record).await
    }
}

#[derive(Clone, Copy)]
enum Slow {
    Normalizer,
    Translator,
}

/// Ingest and the audit desk answer within a second each while the integration is stalled.
async fn answers_while_stalled(hub: &Hub, ids: std::ops::Range<usize>) {
    for i in ids {
        let began = Instant::now();
        let body = payment(&format!("evt_fast_{i}"), "4.40", "cus_4");
        let stored = tokio::time::timeout(
            Duration::from_secs(1),
            hub.ingest("payments", &body, IngestMeta::default()),
        )
        .await
        .unwrap_or_else(|_| panic!("ingest {i} did not answer within 1 s while an integration was slow"));
        let stored =
            stored.unwrap_or_else(|e| panic!("ingest {i} failed while an integration was slow: {e}"));
        assert!(!stored.is_duplicate());
        tracing::info!(i, micros = began.elapsed().as_micros() as u64, "ingested while stalled");
        let counts = tokio::time::timeout(Duration::from_secs(1), hub.counts())
            .await
            .expect("counts answered within 1 s while an integration was slow")
            .expect("counts while an integration was slow");
        assert!(counts.iter().any(|c| c.layer == Layer::Raw), "{counts:?}");
        let lineage = tokio::time::timeout(Duration::from_secs(1), hub.lineage(stored.id))
            .await
            .expect("lineage answered within 1 s while an integration was slow")
            .expect("lineage while an integration was slow");
        drop(lineage);
    }
}

async fn slow_integration_does_not_block(backend: Backend, slow: Slow) {
    let tdb = TestDb::new(backend).await;
    let transport = Arc::new(InProcessTransport::default());
    let gate = Arc::new(Gate::default());
    let b = builder(&tdb.url, transport.clone());
    // Replaces the built-in one of the same source (or kind).
    let b = match slow {
        Slow::Normalizer => b.normalizer(Arc::new(SlowNormalizer(gate.clone()))),
        Slow::Translator => b.translator(Arc::new(SlowTranslator(gate.clone()))),
    };
    let hub = b.build().await.expect("hub");
    let core = Arc::new(Collect::default());
    let cancel = CancellationToken::new();
    tokio::spawn(Receiver::new(transport.clone(), "core.payments", core.clone()).run(cancel.clone()));
    hub.start();

    hub.ingest("payments", &payment(SLOW, "9.90", "cus_9"), IngestMeta::default())
        .await
        .expect("ingest slow");
    tokio::time::timeout(Duration::from_secs(20), gate.reached.notified())
        .await
        .expect("the slow integration was reached");
    // Longer than the pool's 5 s acquire timeout, as a slow lookup service would be.
    let n = 8;
    let began = Instant::now();
    answers_while_stalled(&hub, 0..n).await;
    if began.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_secs(6) - began.elapsed()).await;
    }
    answers_while_stalled(&hub, n..n + 1).await;
    gate.release.notify_one();

    assert!(hub.wait_settled(Duration::from_secs(60)).await.expect("settle"), "{:?}", hub.counts().await);
    let counts = hub.counts().await.expect("counts");
    for layer in [Layer::Raw, Layer::Normalized, Layer::Translated] {
        let forwarded: i64 = counts
            .iter()
            .filter(|c| c.layer == layer && c.status == Status::Forwarded)
            .map(|c| c.count)
            .sum();
        let all: i64 = counts.iter().filter(|c| c.layer == layer).map(|c| c.count).sum();
        assert_eq!((forwarded, all), (n as i64 + 2, n as i64 + 2), "{layer:?}: {counts:?}");
    }
    let acked: i64 = counts
        .iter()
        .filter(|c| c.layer == Layer::Dispatch && c.status == Status::Acknowledged)
        .map(|c| c.count)
        .sum();
    assert_eq!(acked, n as i64 + 2, "{counts:?}");
    let distinct: std::collections::HashSet<_> =
        core.got.lock().expect("lock").iter().map(|m| m.headers.message_id).collect();
    assert_eq!(distinct.len(), n + 2, "every payment reached the core app once");
    cancel.cancel();
    hub.shutdown().await;
    tdb.cleanup().await;
}

async fn slow_normalizer_does_not_block_ingest_or_audit(backend: Backend) {
    slow_integration_does_not_block(backend, Slow::Normalizer).await;
}

async fn slow_translator_does_not_block_ingest_or_audit(backend: Backend) {
    slow_integration_does_not_block(backend, Slow::Translator).await;
}

/// A worker whose lease ended before it wrote (paused, or its database slow) writes nothing
/// when it finally does: another worker took the row meanwhile, and the row has one set of
/// children, the other worker's.
async fn a_lost_lease_writes_nothing(backend: Backend) {
    use layer1_ingest::table::{claim_leased, settle_leased};
    use sea_orm::TransactionTrait;
    let tdb = TestDb::new(backend).await;
    let hub = builder(&tdb.url, Arc::new(InProcessTransport::default())).build().await.expect("hub");
    let id = hub
        .ingest("payments", &payment(SLOW, "5.50", "cus_5"), IngestMeta::default())
        .await
        .expect("ingest")
        .id;
    let settings = crate::util::test_settings().stage;
    let late = claim_leased::<layer1_ingest::entity::Entity>(hub.db(), 10, Duration::from_millis(300))
        .await
        .expect("claim")
        .expect("the row");
    let quick: Arc<dyn Normalizer> = Arc::new(PaymentNormalizer);
    let other = NormalizeStage::new(
        hub.db().clone(),
        Arc::new(HashMap::from([("payments".to_owned(), quick)])),
        settings.clone(),
    );
    assert_eq!(other.run_batch().await.expect("batch"), 0, "leased: not due for another worker");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(other.run_batch().await.expect("batch"), 1, "due again once the lease ended");
    // The first worker's write, late: its guard matches nothing.
    let txn = hub.db().begin().await.expect("txn");
    let ours =
        settle_leased::<layer1_ingest::entity::Entity, _, _>(&txn, &late, &[id.uuid()], &[], &settings)
            .await
            .expect("settle");
    txn.commit().await.expect("commit");
    assert!(ours.is_empty(), "the late worker still thought the row its own");

    let children = layer2_normalize::entity::Entity::find().all(hub.db()).await.expect("l2");
    assert_eq!(children.len(), 1, "one record, not one per worker: {children:?}");
    assert_eq!(children[0].parent_id, Some(id.uuid()));
    let raw = layer1_ingest::entity::Entity::find_by_id(id).one(hub.db()).await.expect("l1").expect("row");
    assert_eq!((raw.status, raw.attempts), (Status::Forwarded, 0));
    hub.shutdown().await;
    tdb.cleanup().await;
}

/// An integration that hangs on a row is cut where the lease would end: the row is `failed`
/// with the reason (retried with backoff, then `dead`), the stage goes on, and the rows of the
/// batch it had no time for are left untried, for the next claim. Before, the stage waited on
/// the hung call for good, and every worker that took the row after the lease hung with it.
async fn a_hung_integration_is_cut_at_the_lease(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let hub = builder(&tdb.url, Arc::new(InProcessTransport::default())).build().await.expect("hub");
    let hung =
        hub.ingest("payments", &payment(SLOW, "5.50", "cus_5"), IngestMeta::default()).await.expect("in").id;
    let fine = hub
        .ingest("payments", &payment("evt_fine", "6.50", "cus_6"), IngestMeta::default())
        .await
        .expect("in")
        .id;
    let mut settings = crate::util::test_settings().stage;
    settings.lease = Duration::from_secs(1);
    let gate = Arc::new(Gate::default()); // never released: the call hangs (60 s)
    let stalled: Arc<dyn Normalizer> = Arc::new(SlowNormalizer(gate));
    let stage = NormalizeStage::new(
        hub.db().clone(),
        Arc::new(HashMap::from([("payments".to_owned(), stalled)])),
        settings,
    );
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), stage.run_batch())
        .await
        .expect("the batch ends near the lease, not when the integration does")
        .expect("batch");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    let db = hub.db().clone();
    let row = |id: layer1_ingest::RawId| {
        let db = db.clone();
        async move { layer1_ingest::entity::Entity::find_by_id(id).one(&db).await.expect("l1").expect("row") }
    };
    let h = row(hung).await;
    assert_eq!((h.status, h.attempts), (Status::Failed, 1), "{h:?}");
    assert!(h.last_error.as_deref().is_some_and(|e| e.contains("within the stage lease")), "{h:?}");
    let f = row(fine).await;
    assert_eq!((f.status, f.attempts), (Status::JustIn, 0), "not tried: no time left in the lease");
    hub.shutdown().await;
    tdb.cleanup().await;
}

on_both!(
    slow_normalizer_does_not_block_ingest_or_audit,
    slow_translator_does_not_block_ingest_or_audit,
    a_lost_lease_writes_nothing,
    a_hung_integration_is_cut_at_the_lease
);
