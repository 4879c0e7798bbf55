//! `hub-worker bench --direction downstream`: N core messages published to the hub's inbound
//! queue, translated, built into HTTP requests, delivered to a local HTTP sink this process
//! starts, and answered with delivery receipts; prints deliveries per second (first publish to
//! last receipt) and p50/p99 from publish to receipt.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sea_orm::{ConnectionTrait, Statement};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use layer1_ingest::Failure;
use layer2_normalize::request::{BodyEncoding, RequestSpec};
use layer3_translate::{CoreMessage, Fidelity, RecordInput, Translation, Translator};
use layer4_dispatch::{Headers, OutgoingMessage, Transport, intake, wire};

use crate::bench::percentile;
use crate::error::{Error, Result};
use crate::hub::{Hub, HubSettings};
use crate::outbound::{Outbound, OutboundRoute, Target, TargetSpec};

/// The figures.
#[derive(Debug, Clone)]
pub struct DownstreamReport {
    /// Receipts received (one per message).
    pub messages: usize,
    /// Of which `acknowledged`.
    pub acknowledged: usize,
    /// Requests the sink answered.
    pub requests: u64,
    /// Seconds from the first publish to the last receipt.
    pub seconds: f64,
    /// Deliveries per second over that span.
    pub rate: f64,
    /// Publish -> receipt, p50 and p99, milliseconds.
    pub receipt_ms: (f64, f64),
}

/// The core message as the third party takes it: the same fields (what a mapping with every
/// field `from` itself would give, without the mapping's cost, as the upstream bench's built-in
/// integration).
struct Same;

#[async_trait]
impl Translator for Same {
    fn source(&self) -> &str {
        "bench-sink"
    }
    fn record_kind(&self) -> &str {
        "bench.order"
    }
    async fn translate(&self, record: &RecordInput<'_>) -> std::result::Result<Translation, Failure> {
        Ok(Translation {
            message: CoreMessage {
                message_type: "sink.order".into(),
                type_version: "1".into(),
                body: record.data.clone(),
            },
            mapping_name: "bench-same".into(),
            mapping_version: "1".into(),
            fidelity: Fidelity::default(),
        })
    }
}

/// A local HTTP sink: answers every request 201 with a JSON id, counting them.
async fn sink(cancel: CancellationToken) -> Result<(std::net::SocketAddr, Arc<AtomicU64>)> {
    let count = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Benchmark(format!("sink: {e}")))?;
    let addr = listener.local_addr().map_err(|e| Error::Benchmark(format!("sink: {e}")))?;
    let c = count.clone();
    let app = axum::Router::new().fallback(move || {
        let n = c.fetch_add(1, Ordering::Relaxed) + 1;
        async move {
            (
                axum::http::StatusCode::CREATED,
                [("content-type", "application/json")],
                format!(r#"{{"id":{n}}}"#),
            )
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await;
    });
    Ok((addr, count))
}

/// Runs the downstream benchmark on `transport`.
pub async fn run(
    database_url: &str,
    messages: usize,
    batch_size: u64,
    fresh: bool,
    transport: Arc<dyn Transport>,
) -> Result<DownstreamReport> {
    let cancel = CancellationToken::new();
    let (addr, requests) = sink(cancel.clone()).await?;
    let tag = Uuid::now_v7().simple().to_string()[20..].to_owned();
    let inbound = format!("bench.{tag}.inbound");
    let receipts = format!("bench.{tag}.delivery-receipts");
    let mut settings = HubSettings::default();
    settings.stage.batch_size = batch_size;
    settings.stage.poll_interval = Duration::from_millis(200);
    settings.publish.receipts_queue = format!("bench.{tag}.receipts");
    settings.publish.inbound_queue = Some(inbound.clone());
    settings.publish.delivery_receipts_queue = receipts.clone();
    let spec = TargetSpec {
        timeout_ms: Some(10_000),
        concurrency: Some(64),
        ..TargetSpec::new(format!("http://{addr}"))
    };
    let request = RequestSpec::compile(
        "POST",
        "/orders/{/order_id}",
        Vec::new(),
        Vec::new(),
        None,
        BodyEncoding::Json,
        None,
    )
    .map_err(Error::Benchmark)?;
    let outbound = Outbound {
        targets: vec![Target { name: "bench-sink".into(), spec }],
        routes: vec![OutboundRoute {
            target: "bench-sink".into(),
            message_type: "bench.order".into(),
            translator: Arc::new(Same),
            request: Arc::new(request),
            ordering_key: None,
            response_fields: vec![("sink_id".into(), "/id".into())],
        }],
    };
    let hub = Hub::builder(database_url.to_owned())
        .settings(settings)
        .transport(transport.clone())
        .outbound(outbound)
        .build()
        .await?;
    if fresh {
        let db = hub.db();
        for t in [
            "delivery_receipts",
            "delivery_attempts",
            "layer4_dispatch",
            "layer3_translated",
            "layer2_normalized",
            "layer1_raw",
        ] {
            db.execute_raw(Statement::from_string(db.get_database_backend(), format!("DELETE FROM {t}")))
                .await?;
        }
    }
    hub.start();

    // Receipts: when each arrived, by core message id.
    let got: Arc<std::sync::Mutex<HashMap<String, (Instant, bool)>>> = Arc::default();
    let mut sub = transport.subscribe(&receipts, 1000).await?;
    let consumer = {
        let got = got.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            loop {
                let d = tokio::select! {
                    _ = cancel.cancelled() => return,
                    d = sub.next() => d,
                };
                let Ok(d) = d else { return };
                let now = Instant::now();
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&d.body) {
                    let id = v.get("core_message_id").and_then(|x| x.as_str()).unwrap_or("").to_owned();
                    let ok = v.get("status").and_then(|x| x.as_str()) == Some("acknowledged");
                    got.lock().unwrap_or_else(|p| p.into_inner()).entry(id).or_insert((now, ok));
                }
                let _ = d.ack().await;
            }
        })
    };

    let mut sent_at: HashMap<String, Instant> = HashMap::with_capacity(messages);
    let started = Instant::now();
    let chunk = usize::try_from(batch_size).unwrap_or(500).clamp(1, 1000);
    let ids: Vec<String> = (0..messages).map(|i| format!("bench-{tag}-{i}")).collect();
    for part in ids.chunks(chunk) {
        let batch: Vec<OutgoingMessage> = part
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut h = Headers::new();
                h.insert(intake::CORE_MESSAGE_ID.into(), id.clone());
                h.insert(intake::TARGET.into(), "bench-sink".into());
                h.insert(wire::TYPE.into(), "bench.order".into());
                let body = format!(
                    r#"{{"order_id":"{id}","amount":"{}.{:02}","currency":"EUR","lines":[{{"sku":"A-{i}","qty":2}}]}}"#,
                    100 + i,
                    i % 100
                );
                OutgoingMessage { queue: inbound.clone(), dedup_id: id.clone(), ordering_key: None, headers: h, body: body.into_bytes() }
            })
            .collect();
        let now = Instant::now();
        for (r, id) in transport.publish(&batch).await.into_iter().zip(part) {
            r?;
            sent_at.insert(id.clone(), now);
        }
    }
    let deadline = started + Duration::from_secs(600);
    loop {
        let n = got.lock().unwrap_or_else(|p| p.into_inner()).len();
        if n >= messages {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::Benchmark(format!("benchmark timed out with {n} of {messages} receipts")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancel.cancel();
    let _ = consumer.await;
    hub.shutdown().await;
    let got = std::mem::take(&mut *got.lock().unwrap_or_else(|p| p.into_inner()));
    let mut lat: Vec<f64> = Vec::with_capacity(got.len());
    let mut last = started;
    let mut acknowledged = 0;
    for (id, (at, ok)) in &got {
        if let Some(t0) = sent_at.get(id) {
            lat.push(at.duration_since(*t0).as_secs_f64() * 1000.0);
        }
        last = last.max(*at);
        acknowledged += usize::from(*ok);
    }
    lat.sort_by(f64::total_cmp);
    let seconds = last.duration_since(started).as_secs_f64().max(1e-3);
    Ok(DownstreamReport {
        messages: got.len(),
        acknowledged,
        requests: requests.load(Ordering::Relaxed),
        seconds,
        rate: got.len() as f64 / seconds,
        receipt_ms: (percentile(&lat, 50.0), percentile(&lat, 99.0)),
    })
}
