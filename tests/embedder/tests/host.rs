//! The core app's side of embedding: its own serde types still read numbers with the hub in
//! the build, and a hub running inside it carries numbers exactly and hands them over in a form
//! the app's types read.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use embedder::{Amount, Loose, Money, Order};
use hub_worker::prelude::*;

const ORDER: &str =
    r#"{"id":"o-1","amount":1.5,"total":12.5,"currency":"EUR","big":12345678901234567890.10}"#;

#[test]
fn the_apps_untagged_enums_and_flattened_structs_still_read_numbers() {
    // With serde_json's `arbitrary_precision` in the build, this fails with "data did not match
    // any variant of untagged enum Amount".
    let amount: Amount = serde_json::from_str("1.5").expect("an untagged enum reads a number");
    assert_eq!(amount, Amount::Number(1.5));
    // ... and this with "invalid type: map, expected f64" (the flattened `total`).
    let order: Order = serde_json::from_str(ORDER).expect("a flattened struct reads a number");
    assert_eq!(order.amount, Amount::Number(1.5));
    assert_eq!(order.money, Money { total: 12.5, currency: "EUR".into() });
    let loose: Loose = serde_json::from_str(ORDER).expect("a flattened map reads numbers");
    assert!(loose.rest["total"].is_f64(), "{:?}", loose.rest["total"]);
    assert_eq!(loose.rest["total"].as_f64(), Some(12.5));
}

/// Validates with the app's own types, carries the document as written.
struct Orders;
#[async_trait]
impl Normalizer for Orders {
    fn source(&self) -> &str {
        "shop"
    }
    async fn normalize(&self, raw: &RawInput<'_>) -> Result<Vec<Record>, Failure> {
        let order: Order = parse_json(raw.body)?;
        let data = Value::parse(raw.body).map_err(|e| Rejection::whole("json", e))?;
        Ok(vec![Record { kind: "order".into(), source_ref: Some(order.id), schema_version: None, data }])
    }
}

struct Placed;
#[async_trait]
impl Translator for Placed {
    fn source(&self) -> &str {
        "shop"
    }
    fn record_kind(&self) -> &str {
        "order"
    }
    async fn translate(&self, r: &RecordInput<'_>) -> Result<Translation, Failure> {
        let mut mapped = Vec::new();
        hub_worker::integrations::leaf_pointers(r.data).into_iter().for_each(|p| mapped.push(p));
        Ok(Translation {
            message: CoreMessage {
                message_type: "order.placed".into(),
                type_version: "1".into(),
                body: r.data.clone(),
            },
            mapping_name: "identity".into(),
            mapping_version: "1".into(),
            fidelity: Fidelity { mapped, ..Default::default() },
        })
    }
}

/// The core app: reads each message into its own `Order`, notes the big number's text.
#[derive(Default)]
struct App(Mutex<Vec<(Order, String)>>);
#[async_trait]
impl Handler for App {
    async fn handle(&self, msg: &InboundMessage) -> Handled {
        let order = match msg.body.to_typed::<Order>() {
            Ok(o) => o,
            Err(e) => return Handled::Rejected(format!("not an order: {e}")),
        };
        let big = msg.body["big"].as_number().map(|n| n.to_string()).unwrap_or_default();
        match self.0.lock() {
            Ok(mut got) => got.push((order, big)),
            Err(_) => return Handled::Retry("lock poisoned".into()),
        }
        Handled::Accepted
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_inside_the_app_carries_numbers_exactly_to_the_apps_types() {
    let transport = Arc::new(InProcessTransport::default());
    let route =
        Route { message_type: "order.*".into(), destination: "core.orders".into(), ..Route::default() };
    let hub = Hub::builder("sqlite::memory:")
        .transport(transport.clone())
        .normalizer(Arc::new(Orders))
        .translator(Arc::new(Placed))
        .router(Arc::new(RouteTable::new(vec![route])))
        .build()
        .await
        .expect("hub builds");
    hub.start();
    let app = Arc::new(App::default());
    let cancel = CancellationToken::new();
    let receiver = tokio::spawn(Receiver::new(transport, "core.orders", app.clone()).run(cancel.clone()));
    hub.ingest("shop", ORDER.as_bytes(), IngestMeta::default()).await.expect("ingest");
    let settled = hub.wait_settled(Duration::from_secs(30)).await.expect("settles");
    cancel.cancel();
    let _ = receiver.await;
    hub.shutdown().await;
    assert!(settled, "the message did not settle");
    let got = app.0.lock().expect("lock").clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let (order, big) = &got[0];
    assert_eq!(order.amount, Amount::Number(1.5));
    assert_eq!(order.money.total, 12.5);
    // Every digit, including the trailing zero an f64 would drop.
    assert_eq!(big, "12345678901234567890.10");
}
