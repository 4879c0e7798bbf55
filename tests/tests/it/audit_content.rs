//! The audit desk shows every layer's content (record, translation with its fidelity report,
//! published body and headers), with a source's `[payload] redact` fields masked for a token
//! without scope `raw`; `hub-worker trace` tells the same; every rejection is logged at WARN
//! with its id, source and reason.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use hub_worker::audit::RawAccess;
use hub_worker::http::auth::{Scope, Token, Tokens};
use hub_worker::{Hub, IngestMeta};
use layer1_ingest::Layer;
use layer4_dispatch::{InProcessTransport, Receiver};

use crate::util::{Backend, Collect, TestDb, test_settings};

const READER: &str = "reader-token-without-raw";
const AUDITOR: &str = "auditor-token-with-raw";
const SECRET: &str = "pi_3MtwBwLkdIwHu7ix28a3tqPa_secret_YrKJUKribcBjcG8HVhfZluoGH";

/// Stripe's published `payment_intent.succeeded` example (trimmed), with a unicode
/// description and a null customer.
fn intent_succeeded(event: &str) -> Vec<u8> {
    format!(
        r#"{{"id":"{event}","object":"event","api_version":"2022-11-15","created":1680064028,
"data":{{"object":{{"id":"pi_3MtwBwLkdIwHu7ix28a3tqPa","object":"payment_intent","amount":2000,
"amount_received":2000,"client_secret":"{SECRET}","currency":"usd","customer":null,
"description":"Zahlung für Bestellung № 1296269","livemode":false,"metadata":{{}},"status":"succeeded"}}}},
"livemode":false,"pending_webhooks":1,"request":{{"id":"req_4DaSG2Tw2Uf0LK","idempotency_key":null}},
"type":"payment_intent.succeeded"}}"#
    )
    .into_bytes()
}

fn write_integrations(dir: &Path) {
    let w = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
        std::fs::write(p, text).expect("write");
    };
    w(
        "core.toml",
        "destinations = [\"core.payments\"]\n[[message_types]]\ntype = \"payment.intent\"\nversion = \"1\"\n\
         schema = \"core/payment.intent.v1.json\"\n",
    );
    w(
        "core/payment.intent.v1.json",
        r#"{"type":"object","required":["intent_id","amount_minor","currency"],
"properties":{"intent_id":{"type":"string"},"amount_minor":{"type":"integer","minimum":1},"currency":{"type":"string"},
"customer_ref":{"type":["string","null"]},"client_secret":{"type":"string"},"description":{"type":["string","null"]},
"created":{"type":"integer"}}}"#,
    );
    w(
        "schemas/stripe-event.json",
        r#"{"type":"object","required":["id","type","created","data"],
"properties":{"id":{"type":"string"},"type":{"type":"string"},"created":{"type":"integer"},
"data":{"type":"object","required":["object"],"properties":{"object":{"type":"object",
"required":["id","amount","currency","client_secret"],
"properties":{"id":{"type":"string"},"amount":{"type":"integer"},"currency":{"type":"string"},
"client_secret":{"type":"string"},"customer":{"type":["string","null"]},"description":{"type":["string","null"]}}}}}}}"#,
    );
    w(
        "stripe.toml",
        r#"source = "stripe"

[payload]
event_ref = "/id"
redact = ["/data/object/client_secret"]

[kinds.payment_intent]
schema = "schemas/stripe-event.json"
schema_version = "2022-11-15"
source_ref = "/id"

[kinds.payment_intent.mapping]
name = "stripe-intent-to-payment-intent"
version = "1"
message_type = "payment.intent"
type_version = "1"
on_unmapped = "ignore"

[kinds.payment_intent.mapping.fields]
"/intent_id" = { from = "/data/object/id" }
"/amount_minor" = { from = "/data/object/amount" }
"/currency" = { from = "/data/object/currency" }
"/customer_ref" = { from = "/data/object/customer" }
"/description" = { from = "/data/object/description" }
"/client_secret" = { from = "/data/object/client_secret" }
"/created" = { from = "/created" }

[[routes]]
type = "payment.intent"
destination = "core.payments"
"#,
    );
}

/// Every WARN event, as `message field=value ...`.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

struct Line(String);

impl tracing::field::Visit for Line {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut line = Line(String::new());
            event.record(&mut line);
            self.0.lock().expect("lock").push(line.0);
        }
    }
}

async fn get(client: &reqwest::Client, url: &str, token: &str) -> serde_json::Value {
    let resp = client.get(url).bearer_auth(token).send().await.expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.expect("json")
}

async fn every_layer_shown_and_redacted(backend: Backend) {
    use tracing_subscriber::layer::SubscriberExt;
    let warnings = Warnings::default();
    // current_thread: every task of the hub runs on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(warnings.clone()));
    let tdb = TestDb::new(backend).await;
    let dir = std::env::temp_dir().join(format!("po-audit-content-{}", uuid::Uuid::now_v7().simple()));
    write_integrations(&dir.join("integrations"));
    let transport = Arc::new(InProcessTransport::default());
    let hub = Hub::builder(&tdb.url)
        .settings(test_settings())
        .transport(transport.clone())
        .integrations_dir(dir.join("integrations"))
        .build()
        .await
        .expect("hub");
    hub.start();
    let cancel = CancellationToken::new();
    tokio::spawn(
        Receiver::new(transport.clone(), "core.payments", Arc::new(Collect::default())).run(cancel.clone()),
    );
    let good_body = intent_succeeded("evt_3MtwBwLkdIwHu7ix28a3tqPa");
    let good = hub.ingest("stripe", &good_body, IngestMeta::default()).await.expect("ingest").id;
    // `amount` as a decimal string: the event schema wants minor units, an integer.
    let bad_body = String::from_utf8(intent_succeeded("evt_1NG8Du2eZvKYlo2CUI79vXWy"))
        .expect("utf-8")
        .replace("\"amount\":2000,", "\"amount\":\"20.00\",");
    let bad = hub.ingest("stripe", bad_body.as_bytes(), IngestMeta::default()).await.expect("ingest").id;
    // A zero amount passes the event schema and breaks the core type's: refused at layer 3.
    let zero_body = String::from_utf8(intent_succeeded("evt_1NG8Du2eZvKYlo2CzeroAmnt"))
        .expect("utf-8")
        .replace("\"amount\":2000,", "\"amount\":0,");
    let zero = hub.ingest("stripe", zero_body.as_bytes(), IngestMeta::default()).await.expect("ingest").id;
    assert!(hub.wait_settled(Duration::from_secs(30)).await.expect("settle"), "did not settle");

    let tokens = Tokens::new(vec![
        Token::new("reader", READER, &[Scope::Read]),
        Token::new("auditor", AUDITOR, &[Scope::Read, Scope::Raw]),
    ]);
    let audit = hub_worker::http::audit::AuditState::with_tokens(hub.clone(), tokens);
    let ingest = hub_worker::http::ingest::IngestState::new(hub.clone(), HashMap::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(hub_worker::http::serve(listener, hub_worker::http::router(ingest, audit), cancel.clone()));
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/messages/{good}");

    // A reader: every layer's content, the client secret masked wherever it went.
    let m = get(&client, &url, READER).await;
    assert_eq!(m["raw"][0]["body_withheld"], "needs scope raw");
    let record = &m["records"][0];
    assert_eq!(record["record"]["data"]["object"]["client_secret"], "[redacted]", "{m}");
    assert_eq!(record["record"]["data"]["object"]["amount"], 2000);
    assert_eq!(record["record"]["data"]["object"]["description"], "Zahlung für Bestellung № 1296269");
    assert_eq!(record["redacted"], serde_json::json!(["/data/object/client_secret"]));
    let tr = &m["translations"][0];
    assert_eq!(tr["mapping_name"], "stripe-intent-to-payment-intent");
    assert_eq!(tr["body"]["client_secret"], "[redacted]");
    assert_eq!(tr["body"]["intent_id"], "pi_3MtwBwLkdIwHu7ix28a3tqPa");
    assert_eq!(tr["body"]["customer_ref"], serde_json::Value::Null);
    assert_eq!(tr["redacted"], serde_json::json!(["/client_secret"]));
    // The fidelity report names fields, it holds no values: shown as is.
    let mapped: Vec<&str> =
        tr["fidelity"]["mapped"].as_array().expect("mapped").iter().filter_map(|v| v.as_str()).collect();
    assert!(mapped.contains(&"/data/object/client_secret"), "{tr}");
    assert!(tr["fidelity"]["ignored"].as_array().expect("ignored").iter().any(|v| v == "/pending_webhooks"));
    let d = &m["dispatches"][0];
    assert_eq!(d["body"]["client_secret"], "[redacted]");
    assert_eq!(d["body"]["amount_minor"], 2000);
    assert_eq!(d["destination"], "core.payments");
    assert_eq!(d["headers"]["hub-message-id"], d["id"]);
    assert_eq!(d["headers"]["hub-origin-id"], good.to_string());
    assert_eq!(
        (d["headers"]["hub-source"].as_str(), d["headers"]["hub-type"].as_str()),
        (Some("stripe"), Some("payment.intent"))
    );
    assert_eq!(d["headers"]["hub-source-ref"], "evt_3MtwBwLkdIwHu7ix28a3tqPa");
    assert!(d["headers"]["hub-receipt-to"].as_str().is_some_and(|q| !q.is_empty()), "{d}");
    assert!(!m.to_string().contains(SECRET), "the secret shows nowhere to a reader");

    // Scope raw: everything as stored.
    let m = get(&client, &url, AUDITOR).await;
    assert_eq!(m["records"][0]["record"]["data"]["object"]["client_secret"], SECRET);
    assert_eq!(m["records"][0]["redacted"], serde_json::json!([]));
    assert_eq!(m["translations"][0]["body"]["client_secret"], SECRET);
    assert_eq!(m["dispatches"][0]["body"]["client_secret"], SECRET);
    assert!(m["raw"][0]["body_base64"].is_string());

    // `hub-worker trace --json`: the config the CLI reads, the same story.
    let cfg_path = dir.join("hub.toml");
    std::fs::write(
        &cfg_path,
        format!("integrations_dir = \"integrations\"\n[database]\nurl = \"{}\"\n", tdb.url),
    )
    .expect("config");
    let cfg =
        hub_worker::config::Config::load(Some(&cfg_path)).expect("config").audit_config().expect("rules");
    let views = hub_worker::audit::trace_with(hub.db(), &good.to_string(), RawAccess::Withheld, &cfg)
        .await
        .expect("trace");
    let traced = serde_json::to_value(&views[0]).expect("json");
    let desk = get(&client, &url, READER).await;
    for key in ["records", "translations"] {
        assert_eq!(traced[key], desk[key], "{key}");
    }
    assert_eq!(traced["dispatches"][0]["body"], desk["dispatches"][0]["body"]);
    let text = hub_worker::report::message_text(&views[0]);
    assert!(text.contains("\"client_secret\":\"[redacted]\"") && !text.contains(SECRET), "{text}");

    // The rejection: at WARN, with its id, source and reason (the field and the rule), and
    // no payload content.
    let logged = warnings.0.lock().expect("lock").clone();
    let line = logged
        .iter()
        .find(|l| l.contains(&bad.to_string()))
        .unwrap_or_else(|| panic!("no WARN names {bad}: {logged:#?}"));
    assert!(
        line.contains("source=\"stripe\"")
            && line.contains("status=rejected")
            && line.contains("/data/object/amount"),
        "{line}"
    );
    let record =
        hub.lineage(zero).await.expect("lineage").entries.into_iter().find(|e| e.layer == Layer::Normalized);
    let record = record.expect("a layer 2 row").id.to_string();
    let line = logged
        .iter()
        .find(|l| l.contains(&record))
        .unwrap_or_else(|| panic!("no WARN names the record {record}: {logged:#?}"));
    assert!(
        line.contains("layer=2") && line.contains("source=\"stripe\"") && line.contains("core_contract"),
        "{line}"
    );
    assert!(logged.iter().all(|l| !l.contains(SECRET)), "{logged:#?}");

    cancel.cancel();
    hub.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    tdb.cleanup().await;
}

mod every_layer_shown_and_redacted {
    #[tokio::test(flavor = "current_thread")]
    async fn sqlite() {
        super::every_layer_shown_and_redacted(crate::util::Backend::Sqlite).await
    }
    #[tokio::test(flavor = "current_thread")]
    async fn postgres() {
        super::every_layer_shown_and_redacted(crate::util::Backend::Postgres).await
    }
}
