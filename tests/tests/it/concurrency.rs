//! Several workers on one PostgreSQL database: `FOR UPDATE SKIP LOCKED` gives each a disjoint
//! batch, so no row is processed twice.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use hub_worker::IngestMeta;
use hub_worker::integrations::payments::PaymentNormalizer;
use layer1_ingest::{Failure, Stage};
use layer2_normalize::{NormalizeStage, Normalizer, RawInput, Record};
use layer3_translate::TranslateStage;
use layer4_dispatch::wire::MESSAGE_ID;
use layer4_dispatch::{InProcessTransport, PublishStage, RouteStage, Transport};

use crate::util::{Backend, TestDb, builder, payment, test_settings};

/// Counts which raw rows it saw, per runner, slowly enough for the runners to overlap.
struct Counting {
    runner: usize,
    seen: Arc<Mutex<HashMap<Uuid, Vec<usize>>>>,
}

#[async_trait]
impl Normalizer for Counting {
    fn source(&self) -> &str {
        "payments"
    }
    async fn normalize(&self, raw: &RawInput<'_>) -> Result<Vec<Record>, Failure> {
        self.seen.lock().expect("lock").entry(raw.id.uuid()).or_default().push(self.runner);
        tokio::time::sleep(Duration::from_millis(2)).await;
        PaymentNormalizer.normalize(raw).await
    }
}

async fn drain(stage: Arc<dyn Stage>) -> usize {
    let mut total = 0;
    loop {
        match stage.run_batch().await.expect("batch") {
            0 => return total,
            n => total += n,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_on_postgres_never_process_the_same_row() {
    let tdb = TestDb::new(Backend::Postgres).await;
    let transport = Arc::new(InProcessTransport::default());
    let hub = builder(&tdb.url, transport.clone()).build().await.expect("hub");
    let total = 300;
    for i in 0..total {
        hub.ingest("payments", &payment(&format!("evt_two_{i}"), "3.30", "cus_2"), IngestMeta::default())
            .await
            .expect("ingest");
    }
    let mut settings = test_settings().stage;
    settings.batch_size = 20;
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let mut runners = Vec::new();
    for runner in 0..2 {
        // Each runner has its own pool, as two worker processes would.
        let db = tdb.connect().await;
        let n: Arc<dyn Normalizer> = Arc::new(Counting { runner, seen: seen.clone() });
        let stage =
            NormalizeStage::new(db, Arc::new(HashMap::from([("payments".to_owned(), n)])), settings.clone());
        runners.push(tokio::spawn(drain(Arc::new(stage))));
    }
    let mut per_runner = Vec::new();
    for r in runners {
        per_runner.push(r.await.expect("runner"));
    }
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), total, "every row processed");
    let twice: Vec<_> = seen.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(twice.is_empty(), "rows processed more than once: {twice:?}");
    assert_eq!(per_runner.iter().sum::<usize>(), total);
    assert!(per_runner.iter().all(|n| *n > 0), "both runners worked side by side: {per_runner:?}");

    // The rest of the way, then two publishers side by side: each message published once.
    let db = hub.db().clone();
    drain(Arc::new(TranslateStage::new(
        db.clone(),
        Arc::new(HashMap::from([(
            ("payments".to_owned(), "payment_event".to_owned()),
            Arc::new(hub_worker::integrations::payments::PaymentTranslator)
                as Arc<dyn layer3_translate::Translator>,
        )])),
        settings.clone(),
    )))
    .await;
    drain(Arc::new(RouteStage::new(
        db.clone(),
        Arc::new(hub_worker::integrations::demo_routes()) as Arc<dyn layer4_dispatch::Router>,
        settings.clone(),
    )))
    .await;
    let mut publishers = Vec::new();
    for _ in 0..2 {
        let db = tdb.connect().await;
        let stage = PublishStage::new(db, transport.clone(), settings.clone(), Default::default());
        publishers.push(tokio::spawn(drain(Arc::new(stage))));
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    let mut sub = transport.subscribe("core.payments", 500).await.expect("sub");
    let mut ids = HashSet::new();
    for _ in 0..total {
        let d = tokio::time::timeout(Duration::from_secs(5), sub.next()).await.expect("message").expect("d");
        assert!(ids.insert(d.headers[MESSAGE_ID].clone()), "published twice: {}", d.headers[MESSAGE_ID]);
        d.ack().await.expect("ack");
    }
    assert_eq!(transport.depth("core.payments"), 0, "nothing published twice");
    tdb.cleanup().await;
}
