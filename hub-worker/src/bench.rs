//! `hub-worker bench`: N payment events through all four layers on a real database and a
//! chosen transport, with receivers acknowledging; prints throughput (first ingest to last
//! Acknowledged) and latency percentiles (ingest -> queued, ingest -> acknowledged).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect, Statement,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use layer1_ingest::Status;
use layer4_dispatch::{Handled, Handler, InboundMessage, Receiver, Route, RouteTable, Transport};

use crate::error::{Error, Result};
use crate::hub::{Hub, HubSettings, IngestMeta};
use crate::integrations;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Database URL (PostgreSQL for figures that mean something).
    pub database_url: String,
    /// Messages to push through.
    pub messages: usize,
    /// Rows per stage batch (and payloads per ingest insert).
    pub batch_size: u64,
    /// Receivers acknowledging in parallel.
    pub receivers: usize,
    /// Empty the four layer tables first (a scratch database only!).
    pub fresh: bool,
    /// Run the `payments` integration from this integrations directory (its schema and
    /// declarative mapping) instead of the built-in Rust one.
    pub integrations_dir: Option<std::path::PathBuf>,
}

/// The figures.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Messages acknowledged.
    pub messages: usize,
    /// Seconds from the first ingest to the last acknowledgement.
    pub seconds: f64,
    /// Messages per second over that span.
    pub rate: f64,
    /// Ingest -> queued, p50 and p99, milliseconds.
    pub queued_ms: (f64, f64),
    /// Ingest -> acknowledged, p50 and p99, milliseconds.
    pub acked_ms: (f64, f64),
}

struct Ack;

#[async_trait]
impl Handler for Ack {
    async fn handle(&self, _msg: &InboundMessage) -> Handled {
        Handled::Accepted
    }
}

/// The `p`th percentile of `sorted` (nearest rank); NaN when empty.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn event(tag: &str, i: usize) -> Vec<u8> {
    format!(
        r#"{{"id":"evt_bench_{tag}_{i}","object":"event","type":"payment.succeeded","created":"2026-11-20T13:05:42Z","livemode":false,"data":{{"payment":{{"id":"pay_{tag}_{i}","amount":"{}.{:02}","currency":"eur","customer":"cus_{}","description":"bench","captured_at":"2026-11-20T14:05:41.873+01:00","metadata":{{"run":"{tag}"}}}}}}}}"#,
        1000 + i,
        i % 100,
        i % 997
    )
    .into_bytes()
}

/// A run's tag, its destination (`bench.<tag>.<what>`) and a hub builder with the bench's
/// settings publishing payments there over `transport`.
fn set_up(
    cfg: &BenchConfig,
    what: &str,
    ordering_key: Option<String>,
    transport: Arc<dyn Transport>,
) -> (String, String, crate::hub::HubBuilder) {
    let tag = Uuid::now_v7().simple().to_string()[20..].to_owned();
    let destination = format!("bench.{tag}.{what}");
    let mut settings = HubSettings::default();
    settings.stage.batch_size = cfg.batch_size;
    settings.stage.poll_interval = Duration::from_millis(200);
    settings.publish.receipts_queue = format!("bench.{tag}.receipts");
    let routes = RouteTable::new(vec![Route {
        message_type: "payment.*".into(),
        destination: destination.clone(),
        ordering_key,
        ..Default::default()
    }]);
    let builder = Hub::builder(cfg.database_url.clone())
        .settings(settings)
        .transport(transport)
        .router(Arc::new(routes));
    (tag, destination, builder)
}

/// Runs the benchmark on `transport`.
pub async fn run(cfg: &BenchConfig, transport: Arc<dyn Transport>) -> Result<BenchReport> {
    let (tag, destination, builder) = set_up(cfg, "payments", None, transport.clone());
    let builder = match &cfg.integrations_dir {
        None => integrations::register(builder, integrations::payments::SOURCE)
            .ok_or_else(|| Error::Benchmark("payments integration missing".into()))?,
        Some(dir) => {
            let loaded = crate::files::load_dir(dir, false);
            if let Some(d) = loaded.diagnostics.first() {
                return Err(Error::Benchmark(d.to_string()));
            }
            let payments = loaded
                .integrations
                .into_iter()
                .find(|i| i.source == integrations::payments::SOURCE)
                .ok_or_else(|| Error::Benchmark(format!("no payments integration in {}", dir.display())))?;
            // The benchmark routes to its own queue only, not to the file's destinations.
            let payments = crate::files::Integration { routes: Vec::new(), ..payments };
            payments.register(builder)
        }
    };
    let hub = builder.build().await?;
    if cfg.fresh {
        let db = hub.db();
        for t in ["layer4_dispatch", "layer3_translated", "layer2_normalized", "layer1_raw"] {
            db.execute_raw(Statement::from_string(db.get_database_backend(), format!("DELETE FROM {t}")))
                .await?;
        }
    }
    let cancel = CancellationToken::new();
    for _ in 0..cfg.receivers.max(1) {
        let r = Receiver::new(transport.clone(), destination.clone(), Arc::new(Ack)).prefetch(500);
        tokio::spawn(r.run(cancel.clone()));
    }
    hub.start();
    let bodies: Vec<Vec<u8>> = (0..cfg.messages).map(|i| event(&tag, i)).collect();

    let started_at = Utc::now();
    let started = Instant::now();
    let ingest = {
        let hub = hub.clone();
        let chunk = usize::try_from(cfg.batch_size).unwrap_or(500).max(1);
        tokio::spawn(async move {
            for part in bodies.chunks(chunk) {
                let items: Vec<(&[u8], IngestMeta)> =
                    part.iter().map(|b| (b.as_slice(), IngestMeta::default())).collect();
                for a in hub.ingest_batch(integrations::payments::SOURCE, &items).await? {
                    a?;
                }
            }
            Ok::<(), Error>(())
        })
    };
    use layer4_dispatch::entity as l4;
    let want = u64::try_from(cfg.messages).unwrap_or(u64::MAX);
    let deadline = started + Duration::from_secs(600);
    loop {
        let acked = l4::Entity::find()
            .filter(l4::Column::Destination.eq(destination.clone()))
            .filter(l4::Column::Status.eq(Status::Acknowledged))
            .count(hub.db())
            .await?;
        if acked >= want {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::Benchmark(format!("benchmark timed out with {acked} of {want} acknowledged")));
        }
        // Coarse on purpose: the count costs the database work; the end time comes from the rows.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let wall = started.elapsed();
    ingest.await.map_err(|e| Error::Benchmark(format!("ingest task: {e}")))??;
    cancel.cancel();
    hub.shutdown().await;

    type Times = (Uuid, Option<chrono::DateTime<Utc>>, Option<chrono::DateTime<Utc>>);
    let rows: Vec<Times> = l4::Entity::find()
        .select_only()
        .column(l4::Column::OriginId)
        .column(l4::Column::QueuedAt)
        .column(l4::Column::AcknowledgedAt)
        .filter(l4::Column::Destination.eq(destination.clone()))
        .into_tuple()
        .all(hub.db())
        .await?;
    use layer1_ingest::entity as l1;
    let received: HashMap<Uuid, chrono::DateTime<Utc>> = l1::Entity::find()
        .select_only()
        .column(l1::Column::Id)
        .column(l1::Column::CreatedAt)
        .filter(l1::Column::CreatedAt.gte(started_at))
        .into_tuple::<(Uuid, chrono::DateTime<Utc>)>()
        .all(hub.db())
        .await?
        .into_iter()
        .collect();
    let ms = |a: chrono::DateTime<Utc>, b: chrono::DateTime<Utc>| {
        (b - a).num_microseconds().unwrap_or(0) as f64 / 1000.0
    };
    let mut queued = Vec::with_capacity(rows.len());
    let mut acked = Vec::with_capacity(rows.len());
    let mut last_ack = started_at;
    for (origin, q, a) in &rows {
        if let Some(t0) = received.get(origin) {
            if let Some(q) = q {
                queued.push(ms(*t0, *q));
            }
            if let Some(a) = a {
                acked.push(ms(*t0, *a));
                last_ack = last_ack.max(*a);
            }
        }
    }
    queued.sort_by(f64::total_cmp);
    acked.sort_by(f64::total_cmp);
    let seconds = ((last_ack - started_at).num_microseconds().unwrap_or(0) as f64 / 1e6)
        .max(wall.as_secs_f64().min(1e-3));
    Ok(BenchReport {
        messages: acked.len(),
        seconds,
        rate: acked.len() as f64 / seconds,
        queued_ms: (percentile(&queued, 50.0), percentile(&queued, 99.0)),
        acked_ms: (percentile(&acked, 50.0), percentile(&acked, 99.0)),
    })
}

/// Refuses every publish as a broker outage would, until opened.
struct Gate {
    inner: Arc<dyn Transport>,
    open: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Transport for Gate {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn max_message_bytes(&self) -> usize {
        self.inner.max_message_bytes()
    }
    fn address(&self, queue: &str) -> std::result::Result<String, layer4_dispatch::TransportError> {
        self.inner.address(queue)
    }
    async fn ensure_queue(&self, queue: &str) -> std::result::Result<(), layer4_dispatch::TransportError> {
        self.inner.ensure_queue(queue).await
    }
    async fn publish(
        &self,
        batch: &[layer4_dispatch::OutgoingMessage],
    ) -> Vec<std::result::Result<(), layer4_dispatch::TransportError>> {
        if self.open.load(std::sync::atomic::Ordering::SeqCst) {
            return self.inner.publish(batch).await;
        }
        let down = layer4_dispatch::TransportError::Connection("bench: broker held down".into());
        batch.iter().map(|_| Err(down.clone())).collect()
    }
    async fn subscribe(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> std::result::Result<Box<dyn layer4_dispatch::Subscription>, layer4_dispatch::TransportError> {
        self.inner.subscribe(queue, prefetch).await
    }
    async fn queue_depth(
        &self,
        queue: &str,
    ) -> std::result::Result<Option<u64>, layer4_dispatch::TransportError> {
        self.inner.queue_depth(queue).await
    }
}

/// What a backlog drain measured.
#[derive(Debug, Clone)]
pub struct DrainReport {
    /// Rows in the backlog.
    pub messages: usize,
    /// Ordering keys (0: unordered).
    pub keys: usize,
    /// Seconds from the first broker confirm after the outage to the last.
    pub seconds: f64,
    /// Rows confirmed per second over that span.
    pub rate: f64,
}

/// A backlog drain: with the broker held down, `cfg.messages` payments (spread over `keys`
/// customers, ordered per customer when `keys > 0`) pile up in layer 4; then the broker comes
/// back and the publisher drains them, receivers acknowledging.
pub async fn drain(cfg: &BenchConfig, transport: Arc<dyn Transport>, keys: usize) -> Result<DrainReport> {
    use layer4_dispatch::entity as l4;
    let gate = Arc::new(Gate { inner: transport.clone(), open: false.into() });
    let ordering = (keys > 0).then(|| "/customer_ref".to_owned());
    let (tag, destination, builder) = set_up(cfg, "backlog", ordering, gate.clone());
    let builder = integrations::register(builder, integrations::payments::SOURCE)
        .ok_or_else(|| Error::Benchmark("payments integration missing".into()))?;
    let hub = builder.build().await?;
    let cancel = CancellationToken::new();
    for _ in 0..cfg.receivers.max(1) {
        let r = Receiver::new(transport.clone(), destination.clone(), Arc::new(Ack)).prefetch(500);
        tokio::spawn(r.run(cancel.clone()));
    }
    hub.start();
    let spread = keys.max(1);
    let bodies: Vec<Vec<u8>> = (0..cfg.messages)
        .map(|i| {
            let body = String::from_utf8_lossy(&event(&tag, i))
                .replace(&format!("\"cus_{}\"", i % 997), &format!("\"cus_{}\"", i % spread));
            body.into_bytes()
        })
        .collect();
    let chunk = usize::try_from(cfg.batch_size).unwrap_or(500).max(1);
    for part in bodies.chunks(chunk) {
        let items: Vec<(&[u8], IngestMeta)> =
            part.iter().map(|b| (b.as_slice(), IngestMeta::default())).collect();
        for a in hub.ingest_batch(integrations::payments::SOURCE, &items).await? {
            a?;
        }
    }
    let want = u64::try_from(cfg.messages).unwrap_or(u64::MAX);
    let count = |status: Status| {
        l4::Entity::find()
            .filter(l4::Column::Destination.eq(destination.clone()))
            .filter(l4::Column::Status.eq(status))
            .count(hub.db())
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while count(Status::JustIn).await? < want {
        if Instant::now() > deadline {
            return Err(Error::Benchmark("backlog never formed".into()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Every row has met the outage once (as after a real one), then the broker comes back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reopened = Utc::now();
    gate.open.store(true, std::sync::atomic::Ordering::SeqCst);
    loop {
        let settled = count(Status::Queued).await? + count(Status::Acknowledged).await?;
        if settled >= want {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::Benchmark(format!("drain timed out with {settled} of {want} confirmed")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    hub.shutdown().await;
    type Confirm = (Option<chrono::DateTime<Utc>>, Option<chrono::DateTime<Utc>>);
    let times: Vec<Confirm> = l4::Entity::find()
        .select_only()
        .column(l4::Column::QueuedAt)
        .column(l4::Column::AcknowledgedAt)
        .filter(l4::Column::Destination.eq(destination.clone()))
        .into_tuple()
        .all(hub.db())
        .await?;
    // A receipt can land before the publisher records the confirm; then the row has no
    // `queued_at` and the receipt's time stands for it (a little later than the confirm).
    let confirmed: Vec<chrono::DateTime<Utc>> =
        times.into_iter().filter_map(|(q, a)| q.or(a)).filter(|t| *t >= reopened).collect();
    let (first, last) = match (confirmed.iter().min(), confirmed.iter().max()) {
        (Some(a), Some(b)) => (*a, *b),
        _ => return Err(Error::Benchmark("no confirm recorded after the outage".into())),
    };
    let seconds = ((last - first).num_microseconds().unwrap_or(0) as f64 / 1e6).max(1e-3);
    Ok(DrainReport { messages: confirmed.len(), keys, seconds, rate: confirmed.len() as f64 / seconds })
}
