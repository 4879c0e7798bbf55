//! A core app embedding the post office: SQLite, the in-process transport, an integration of
//! its own (source `orders`), a receiver, two payloads in, one lineage out. Exits non-zero
//! unless every message ended acknowledged. `cargo run -p hub-worker --example embed`
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hub_worker::{Hub, IngestMeta, report};
use layer1_ingest::{Failure, Layer, Rejection, Status};
use layer2_normalize::{Normalizer, RawInput, Record, parse_json};
use layer3_translate::{CoreMessage, Fidelity, RecordInput, Translation, Translator};
use layer4_dispatch::{Handled, Handler, InProcessTransport, InboundMessage, Receiver, Route, RouteTable};
use serde_json::{Value, json};

/// Layer 2: the third party's bytes to one validated `order` record.
struct Orders;
#[async_trait]
impl Normalizer for Orders {
    fn source(&self) -> &str {
        "orders"
    }
    async fn normalize(&self, raw: &RawInput<'_>) -> Result<Vec<Record>, Failure> {
        let data: Value = parse_json(raw.body)?;
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
        let body = json!({ "order_id": r.data["id"], "total": r.data["total"] });
        Ok(Translation {
            message: CoreMessage { message_type: "order.placed".into(), type_version: "1".into(), body },
            mapping_name: "order-to-order-placed".into(),
            mapping_version: "1".into(),
            fidelity: Fidelity { mapped: vec!["/id".into(), "/total".into()], ..Default::default() },
        })
    }
}

/// The core app's side: takes every order.
struct CoreApp;
#[async_trait]
impl Handler for CoreApp {
    async fn handle(&self, msg: &InboundMessage) -> Handled {
        println!("core app got {} {}", msg.headers.message_type, msg.body);
        Handled::Accepted
    }
}

/// The example; `pub` so that `tests/embed.rs` runs this very code in the test suite.
#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("post-office-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let transport = Arc::new(InProcessTransport::default());
    let route =
        Route { message_type: "order.*".into(), destination: "core.orders".into(), ..Route::default() };
    let hub = Hub::builder(format!("sqlite://{}/hub.sqlite?mode=rwc", dir.display()))
        .transport(transport.clone())
        .normalizer(Arc::new(Orders))
        .translator(Arc::new(OrderPlaced))
        .router(Arc::new(RouteTable::new(vec![route])))
        .build()
        .await?;
    hub.start();
    let cancel = tokio_util::sync::CancellationToken::new();
    let receiver =
        tokio::spawn(Receiver::new(transport, "core.orders", Arc::new(CoreApp)).run(cancel.clone()));
    let first = hub.ingest("orders", br#"{"id":"o-1","total":"12.50"}"#, IngestMeta::default()).await?;
    hub.ingest("orders", br#"{"id":"o-2","total":"0.10"}"#, IngestMeta::default()).await?;
    let settled = hub.wait_settled(Duration::from_secs(30)).await?;
    print!("{}", report::lineage_text(&hub.lineage(first.id).await?));
    let counts = hub.counts().await?;
    let dispatched = counts.iter().filter(|c| c.layer == Layer::Dispatch);
    let acked: i64 = dispatched.clone().filter(|c| c.status == Status::Acknowledged).map(|c| c.count).sum();
    let total: i64 = dispatched.map(|c| c.count).sum();
    cancel.cancel();
    let _ = receiver.await;
    hub.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir); // best effort: a leftover temp dir is harmless
    if !(settled && total == 2 && acked == total) {
        return Err(format!("{acked} of {total} acknowledged (settled: {settled}), expected 2 of 2").into());
    }
    println!("OK: {acked} of {total} acknowledged");
    Ok(())
}
