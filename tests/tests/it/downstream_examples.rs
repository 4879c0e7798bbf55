//! The three downstream examples in `examples/integrations`, run as a user runs them: the files
//! loaded by the hub (their base URLs pointed at a scripted server the test starts, their secrets
//! in files), a core message of each type published on the inbound queue, and what reaches the
//! "third party" checked byte for byte: the CRM's bearer-authenticated PATCH, the payment
//! provider's form-encoded refund with its `Idempotency-Key` and exact amount, the partner's
//! webhook signed with Standard Webhooks (verified here from the published algorithm).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use hub_worker::Hub;
use layer4_dispatch::{InProcessTransport, Transport};

use crate::downstream::send_typed;

use crate::scripted_http::{Reply, ScriptedServer};
use crate::util::{Backend, TestDb};

const CRM_TOKEN: &str = "crm-private-app-token-0001";
const PAYMENTS_KEY: &str = "sk_test_51QxR7sLkdIwHu7ix";
// A signing secret in the Standard Webhooks form: "whsec_" + base64 of the key bytes.
const PARTNER_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A copy of the examples with the targets' base URLs pointed at `base` and the secrets read
/// from files in the copy.
fn examples_for(base: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/integrations");
    let dst = std::env::temp_dir().join(format!("po-examples-{}", Uuid::now_v7().simple()));
    copy_dir(&src, &dst);
    let secrets = [
        ("CRM_API_TOKEN", CRM_TOKEN),
        ("PAYMENTS_API_KEY", PAYMENTS_KEY),
        ("PARTNER_WEBHOOK_SECRET", PARTNER_SECRET),
    ];
    for (var, value) in secrets {
        std::fs::write(dst.join(format!("{var}.secret")), value).expect("secret file");
    }
    for (file, url) in [
        ("crm.toml", "https://api.crm.example/v3"),
        ("payments-refunds.toml", "https://api.payments.example"),
        ("partner-shipments.toml", "https://hooks.partner.example"),
    ] {
        let path = dst.join(file);
        let mut text = std::fs::read_to_string(&path).expect("example");
        assert!(text.contains(url), "{file} names {url}");
        let path_part = url.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap_or_default();
        text = text.replace(url, &format!("{base}{path_part}"));
        for (var, _) in secrets {
            let file_ref =
                format!("{{ file = {:?} }}", dst.join(format!("{var}.secret")).display().to_string());
            text = text.replace(&format!("{{ env = \"{var}\" }}"), &file_ref);
        }
        std::fs::write(&path, text).expect("write example");
    }
    crate::util::shop_token_as_file(&dst);
    dst
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read examples") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// The Standard Webhooks signature as the specification defines it, written here without the
/// hub's code: HMAC-SHA256 over `{id}.{timestamp}.{body}` with the base64-decoded secret.
fn expected_signature(id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(PARTNER_SECRET.trim_start_matches("whsec_"))
        .expect("secret is base64");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("hmac key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn the_three_examples_deliver_as_their_third_parties_expect() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = ScriptedServer::start().await;
    server.script(
        "/v3/contacts/c-1001",
        vec![Reply::json(200, r#"{"id":"8812","properties":{"email":"ada@example.com"}}"#)],
    );
    server.script(
        "/v1/refunds",
        vec![Reply::json(200, r#"{"id":"re_3QxR7s","object":"refund","amount":1234,"status":"succeeded"}"#)],
    );
    server.script("/webhooks/shipments", vec![Reply::status(204)]);
    let dir = examples_for(&server.url());
    let t = Arc::new(InProcessTransport::default());
    let inbound = format!("inbound-{}", Uuid::now_v7().simple());
    let receipts_q = format!("delivery-receipts-{}", Uuid::now_v7().simple());
    let mut s = crate::util::test_settings();
    s.publish.inbound_queue = Some(inbound.clone());
    s.publish.delivery_receipts_queue = receipts_q.clone();
    let hub = Hub::builder(db.url.clone())
        .settings(s)
        .transport(t.clone())
        .integrations_dir(&dir)
        .build()
        .await
        .expect("the examples build a hub");
    hub.start();
    let mut sub = t.subscribe(&receipts_q, 10).await.expect("subscribe");

    send_typed(t.as_ref(), &inbound, "crm", "member.updated", "core-m-1",
        r#"{"member_id": "c-1001", "email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace",
            "phone": null, "address": {"line1": "12 St James's Square", "line2": null, "city": "London",
            "postal_code": "SW1Y 4JH", "region": null, "country": "GB"}, "lifecycle": "active",
            "marketing_opt_in": false, "lifetime_value": {"amount": "12345678901234567.89", "currency": "GBP"},
            "tags": ["vip"], "changed_fields": ["email"], "updated_at": "2026-11-20T14:05:41.873+01:00"}"#).await;
    send_typed(t.as_ref(), &inbound, "payments-refunds", "refund.requested", "core-r-1",
        r#"{"refund_request_id": "rr_77", "order_id": "ord 2026/11-0042", "payment_ref": "pi_3QxR7sLkdIwHu7ix1XyZ",
            "amount": {"minor_units": "1234", "currency": "EUR"}, "reason": "customer_request",
            "requested_by": "agent@example.com", "requested_at": "2026-11-20T14:05:41Z", "note": null}"#).await;
    send_typed(t.as_ref(), &inbound, "partner-shipments", "shipment.dispatched", "core-s-1",
        r#"{"shipment_id": "shp_1", "order_id": "ord-42", "partner_order_ref": "PO-9", "carrier": "dhl",
            "service_level": "express", "tracking_number": "JD0146", "dispatched_at": "2026-11-20T14:05:41Z",
            "recipient": {"name": "Ada Lovelace", "email": "ada@example.com"},
            "address": {"line1": "12 St James's Square", "city": "London", "postal_code": "SW1Y 4JH", "country": "GB"},
            "parcels": [{"parcel_id": "p1", "weight_grams": 1200, "dimensions_mm": {"length": 300, "width": 200, "height": 100}}],
            "shipping_cost": {"amount": "4.90", "currency": "GBP"}}"#).await;

    let mut got: HashMap<String, serde_json::Value> = HashMap::new();
    while got.len() < 3 {
        let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .unwrap_or_else(|_| panic!("only these receipts came: {got:?}"))
            .expect("receipt");
        let v: serde_json::Value = serde_json::from_slice(&d.body).expect("receipt JSON");
        got.insert(v["core_message_id"].as_str().expect("id").to_owned(), v);
        d.ack().await.expect("ack");
    }

    // 1. The CRM: PATCH with the bearer token, the lifetime value digit for digit.
    let crm = &server.requests("/v3/contacts/c-1001")[0];
    assert_eq!(crm.method, "PATCH");
    assert_eq!(crm.header("authorization"), Some(format!("Bearer {CRM_TOKEN}").as_str()));
    assert!(crm.body_text().contains("12345678901234567.89"), "{}", crm.body_text());
    assert_eq!(got["core-m-1"]["status"], "acknowledged", "{}", got["core-m-1"]);
    assert_eq!(got["core-m-1"]["response"]["crm_id"], "8812");

    // 2. The payment provider: form-encoded, the amount exact, one Idempotency-Key = the delivery.
    let refund = &server.requests("/v1/refunds")[0];
    assert_eq!(refund.method, "POST");
    assert_eq!(refund.header("content-type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(refund.header("authorization"), Some(format!("Bearer {PAYMENTS_KEY}").as_str()));
    let form = refund.body_text();
    assert!(form.starts_with("amount=1234&"), "{form}");
    assert!(form.contains("payment_intent=pi_3QxR7sLkdIwHu7ix1XyZ"), "{form}");
    let receipt = &got["core-r-1"];
    assert_eq!(refund.header("idempotency-key"), receipt["delivery_id"].as_str(), "{receipt}");
    assert_eq!(receipt["response"]["refund_id"], "re_3QxR7s");
    assert_eq!(receipt["response"]["refund_status"], "succeeded");

    // 3. The partner's webhook, signed as the Standard Webhooks specification says.
    let hook = &server.requests("/webhooks/shipments")[0];
    let id = hook.header("webhook-id").expect("webhook-id");
    let ts = hook.header("webhook-timestamp").expect("webhook-timestamp");
    let sig = hook.header("webhook-signature").expect("webhook-signature");
    assert_eq!(sig, expected_signature(id, ts, &hook.body), "signature verifies");
    let age = chrono::Utc::now().timestamp() - ts.parse::<i64>().expect("unix seconds");
    assert!((0..60).contains(&age), "fresh timestamp, {age} s old");
    assert_eq!(got["core-s-1"]["status"], "acknowledged");
    assert_eq!(got["core-s-1"]["http_status"], 204);
    assert_eq!(id, got["core-s-1"]["delivery_id"].as_str().expect("delivery id"));

    hub.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    db.cleanup().await;
}
