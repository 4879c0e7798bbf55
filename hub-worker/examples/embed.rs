//! A core app embedding the post office (SQLite, in-process transport, its own integration, a
//! receiver): two payloads in, one lineage out; fails unless both are acknowledged, numbers exact.
use std::sync::Arc;
use std::time::Duration;

use hub_worker::prelude::*;
use hub_worker::report;

/// Layer 2: the third party's bytes to one validated `order` record.
struct Orders;
#[async_trait]
impl Normalizer for Orders {
    fn source(&self) -> &str {
        "orders"
    }
    async fn normalize(&self, raw: &RawInput<'_>) -> Result<Vec<Record>, Failure> {
        // `Value::parse` keeps every number as written (`12.50` stays `12.50`).
        let data = Value::parse(raw.body).map_err(|e| Rejection::whole("json", e))?;
        let Some(id) = data["id"].as_str() else {
            return Err(Failure::Rejected(Rejection::field("/id", "required", "a string")));
        };
        Ok(vec![Record { kind: "order".into(), source_ref: Some(id.into()), schema_version: None, data }])
    }
}

/// Layer 3: the record in the core app's terms, every field accounted for.
struct OrderPlaced;
#[async_trait]
impl Translator for OrderPlaced {
    fn source(&self) -> &str {
        "orders"
    }
    fn record_kind(&self) -> &str {
        "order"
    }
    /// Declared, so that `build` refuses routes that carry no `order.placed`.
    fn message_type(&self) -> Option<&str> {
        Some("order.placed")
    }
    async fn translate(&self, r: &RecordInput<'_>) -> Result<Translation, Failure> {
        let body =
            Map::from([("order_id".into(), r.data["id"].clone()), ("total".into(), r.data["total"].clone())]);
        Ok(Translation {
            message: CoreMessage::new("order.placed", "1", body),
            mapping_name: "order-to-order-placed".into(),
            mapping_version: "1".into(),
            fidelity: Fidelity { mapped: vec!["/id".into(), "/total".into()], ..Default::default() },
        })
    }
}

/// The core app's side: takes every order, noting each total as it arrived.
struct CoreApp(std::sync::Mutex<Vec<String>>);
#[async_trait]
impl Handler for CoreApp {
    async fn handle(&self, msg: &InboundMessage) -> Handled {
        println!("core app got {} {}", msg.headers.message_type, msg.body);
        let noted = self.0.lock().map(|mut seen| seen.push(msg.body["total"].to_string()));
        noted.map_or_else(|_| Handled::Retry("lock poisoned".into()), |()| Handled::Accepted)
    }
}

/// The example; `pub` so that `tests/embed.rs` runs this very code in the test suite.
#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let transport = Arc::new(InProcessTransport::default());
    let route =
        Route { message_type: "order.*".into(), destination: "core.orders".into(), ..Route::default() };
    // `sqlite://hub.sqlite?mode=rwc` keeps it in a file; `postgres://...` for several workers.
    let hub = Hub::builder("sqlite::memory:")
        .transport(transport.clone())
        .normalizer(Arc::new(Orders))
        .translator(Arc::new(OrderPlaced))
        .router(Arc::new(RouteTable::new(vec![route])))
        .build()
        .await?;
    hub.start();
    let cancel = CancellationToken::new();
    let app = Arc::new(CoreApp(Default::default()));
    let receiver = tokio::spawn(Receiver::new(transport, "core.orders", app.clone()).run(cancel.clone()));
    let first = hub.ingest("orders", br#"{"id":"o-1","total":12.50}"#, IngestMeta::default()).await?;
    hub.ingest("orders", br#"{"id":"o-2","total":12345678901234567890.10}"#, IngestMeta::default()).await?;
    let settled = hub.wait_settled(Duration::from_secs(30)).await?;
    print!("{}", report::lineage_text(&hub.lineage(first.id).await?));
    let counts = hub.counts().await?;
    let acked = counts.iter().filter(|c| c.layer == Layer::Dispatch && c.status == Status::Acknowledged);
    let acked: i64 = acked.map(|c| c.count).sum();
    cancel.cancel();
    let _ = receiver.await;
    hub.shutdown().await;
    // Both acknowledged, every digit as the third party wrote it.
    let mut totals = app.0.lock().map_err(|_| "handler panicked")?.clone();
    totals.sort();
    if !settled || acked != 2 || totals != ["12.50", "12345678901234567890.10"] {
        return Err(format!("{acked} of 2 acknowledged (settled: {settled}), totals {totals:?}").into());
    }
    println!("OK: {acked} of 2 acknowledged, totals {totals:?}");
    Ok(())
}
