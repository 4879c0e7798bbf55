//! The example integrations `github.toml`, `stripe.toml` and `shop.toml` on providers'
//! real-shaped payloads (tests/fixtures, hand-picked from GitHub's and Stripe's published
//! examples): GitHub events selected by their `X-GitHub-Event` header, other issue actions
//! dropped by rule, label names projected to strings, URL leaves ignored by `**` patterns;
//! Stripe minor units to exact decimal text by the currency's ISO 4217 exponent; a pulled page
//! of shop orders split into its orders, ids and totals exact.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tokio_util::sync::CancellationToken;

use hub_worker::{Hub, IngestMeta};
use layer1_ingest::Status;
use layer1_ingest::entity as l1;
use layer2_normalize::entity as l2;
use layer3_translate::entity as l3;
use layer4_dispatch::InboundMessage;

use crate::on_both;
use crate::util::{Backend, Collect, TestDb, hub_on_files};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/fixtures").join(rel)).expect("fixture")
}

/// What GitHub sends beside the body: the event type and the delivery id (the event's id).
fn github(event: &str, delivery: &str) -> IngestMeta {
    IngestMeta {
        source_ref: Some(delivery.to_owned()),
        content_type: None,
        headers: vec![
            ("X-GitHub-Event".into(), event.into()),
            ("X-GitHub-Delivery".into(), delivery.into()),
            ("User-Agent".into(), "GitHub-Hookshot/044aadd".into()),
        ],
    }
}

async fn start(url: &str) -> (Hub, Arc<Collect>, CancellationToken) {
    let examples = crate::util::Examples::new();
    hub_on_files(url, &examples, &["core.engineering", "core.payments", "core.orders"]).await
}

fn by_type<'a>(got: &'a [InboundMessage], t: &str) -> Vec<&'a InboundMessage> {
    got.iter().filter(|m| m.headers.message_type == t).collect()
}

fn text(v: &layer1_ingest::json::Value) -> String {
    serde_json::to_string(v).expect("text")
}

async fn github_issues_and_pushes_on_one_source(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let (hub, core, cancel) = start(&tdb.url).await;
    let opened = fixture("github/issues.opened.json");
    let closed = fixture("github/issues.closed.json");
    let push = fixture("github/push.json");
    hub.ingest("github", &opened, github("issues", "72d3162e-cc78-11e3-81ab-4c9367dc0958"))
        .await
        .expect("opened");
    let dropped = hub
        .ingest("github", &closed, github("issues", "72d3162e-cc78-11e3-81ab-4c9367dc0959"))
        .await
        .expect("closed");
    hub.ingest(
        "github",
        b"{\"zen\":\"Design for failure.\",\"hook_id\":12345678901}",
        github("ping", "ping-1"),
    )
    .await
    .expect("ping");
    hub.ingest("github", &push, github("push", "72d3162e-cc78-11e3-81ab-4c9367dc0960")).await.expect("push");
    assert!(hub.wait_settled(Duration::from_secs(30)).await.expect("settle"), "did not settle");

    let got = core.got.lock().expect("lock").clone();
    assert_eq!(got.len(), 2, "the opened issue and the push; the closed issue and the ping are dropped");

    let issue = by_type(&got, "issue.opened")[0];
    let b = &issue.body;
    assert_eq!(b["issue_id"].as_str(), Some("444500041"));
    assert_eq!(text(&b["number"]), "1347");
    assert_eq!(b["title"].as_str(), Some("Umlaut im Straßennamen wird falsch gespeichert — «Zürich» 🐛"));
    // Label names projected out of the label objects; an empty assignee list stays empty.
    assert_eq!(text(&b["labels"]), r#"["bug","i18n"]"#);
    assert_eq!(text(&b["assignees"]), "[]");
    assert_eq!(b["milestone"].as_str(), Some("v1.0"));
    assert_eq!(b["milestone_due_on"].as_str(), Some("2019-05-23T07:00:00Z"));
    assert_eq!(b["opened_at"].as_str(), Some("2019-05-15T15:20:18Z"));
    assert_eq!(b["repository"].as_str(), Some("Codertocat/Hello-World"));
    // What no rule names lands in the extras, never a URL leaf (ignored by `**` patterns).
    let extras = match &b["extras"] {
        layer1_ingest::json::Value::Object(m) => m.clone(),
        other => panic!("extras: {}", text(other)),
    };
    assert!(extras.contains_key("/issue/draft") && extras.contains_key("/issue/locked"), "{extras:?}");
    assert!(extras.keys().all(|k| !k.ends_with("url") && !k.contains("node_id")), "{extras:?}");
    assert!(!extras.keys().any(|k| k.starts_with("/issue/labels")), "labels are mapped or ignored");

    let push = by_type(&got, "code.pushed")[0];
    let p = &push.body;
    assert_eq!(
        text(&p["commit_ids"]),
        r#"["0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c","a10867b14bb761a232cd80139fbd4c0d33264240"]"#
    );
    // The committer's offset stays as written; the repository's unix seconds become UTC.
    assert_eq!(p["commits"][0]["at"].as_str(), Some("2019-05-15T08:37:11-07:00"));
    assert_eq!(text(&p["commits"][0]["modified"]), r#"["src/address.rs","README.md"]"#);
    assert_eq!(p["pushed_at"].as_str(), Some("2019-05-15T15:20:57Z"));
    assert_eq!(p["ref"].as_str(), Some("refs/heads/main"));

    // Layer 3 counts each projected leaf as mapped.
    let rows3 = l3::Entity::find()
        .filter(l3::Column::MessageType.eq("issue.opened"))
        .all(hub.db())
        .await
        .expect("l3");
    let fid: serde_json::Value = serde_json::from_str(&rows3[0].fidelity).expect("fidelity");
    let mapped: Vec<&str> =
        fid["mapped"].as_array().expect("mapped").iter().filter_map(|v| v.as_str()).collect();
    assert!(
        mapped.contains(&"/issue/labels/0/name") && mapped.contains(&"/issue/labels/1/name"),
        "{mapped:?}"
    );
    let ignored = fid["ignored"].as_array().expect("ignored");
    assert!(ignored.iter().any(|p| p == "/issue/user/avatar_url"), "{ignored:?}");

    // The closed issue: accepted, then dropped by the rule that names it, and nothing below.
    let row = l1::Entity::find_by_id(dropped.id).one(hub.db()).await.expect("l1").expect("row");
    assert_eq!(row.status, Status::Dropped);
    assert!(row.last_error.as_deref().is_some_and(|e| e.contains("issue-actions-not-tracked")), "{row:?}");
    let below =
        l2::Entity::find().filter(l2::Column::OriginId.eq(dropped.id)).all(hub.db()).await.expect("l2");
    assert!(below.is_empty());
    let dropped_rows =
        l1::Entity::find().filter(l1::Column::Status.eq(Status::Dropped)).all(hub.db()).await.expect("l1");
    assert_eq!(dropped_rows.len(), 2, "the closed issue and the ping");

    cancel.cancel();
    hub.shutdown().await;
    tdb.cleanup().await;
}

async fn stripe_minor_units_become_exact_decimals_by_currency(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let (hub, core, cancel) = start(&tdb.url).await;
    let usd = String::from_utf8(fixture("stripe/payment_intent.succeeded.json")).expect("utf-8");
    // The same event in two other currencies: JPY has no minor unit, KWD three digits of one.
    let other = |id: &str, currency: &str, amount: &str| {
        usd.replace("evt_3QxR7sLkdIwHu7ix0s5Jq2Vb", id)
            .replace("pi_3QxR7sLkdIwHu7ix0yGqZ8Tc", &format!("pi_{id}"))
            .replace("\"usd\"", &format!("\"{currency}\""))
            .replace("2000", amount)
    };
    let jpy = other("evt_jpy", "jpy", "500");
    let kwd = other("evt_kwd", "kwd", "1234");
    assert!(jpy.contains("\"jpy\"") && kwd.contains("1234"), "the fixture changed shape");
    for body in [&usd, &jpy, &kwd] {
        hub.ingest("stripe", body.as_bytes(), IngestMeta::default()).await.expect("ingest");
    }
    assert!(hub.wait_settled(Duration::from_secs(30)).await.expect("settle"), "did not settle");

    let got = core.got.lock().expect("lock").clone();
    let payments = by_type(&got, "payment.received");
    assert_eq!(payments.len(), 3);
    let of = |currency: &str| {
        payments.iter().find(|m| m.body["currency"].as_str() == Some(currency)).expect("payment").body.clone()
    };
    let b = of("USD");
    assert_eq!((b["amount"].as_str(), b["amount_received"].as_str()), (Some("20.00"), Some("20.00")));
    assert_eq!(b["received_at"].as_str(), Some("2024-11-21T12:05:31Z"));
    assert_eq!(b["customer_ref"].as_str(), Some("cus_R7sLkdIwHu7ixQ"));
    assert_eq!(text(&b["description"]), "null");
    assert_eq!(of("JPY")["amount"].as_str(), Some("500"));
    assert_eq!(of("KWD")["amount"].as_str(), Some("1.234"));
    // The client secret is never forwarded, not even in the extras.
    assert!(!text(&b).contains("_secret_"), "{}", text(&b));

    // Upper-casing the currency is a named loss, listed in the fidelity report.
    let rows3 = l3::Entity::find()
        .filter(l3::Column::MessageType.eq("payment.received"))
        .all(hub.db())
        .await
        .expect("l3");
    assert_eq!(rows3.len(), 3);
    for r in &rows3 {
        let fid: serde_json::Value = serde_json::from_str(&r.fidelity).expect("fidelity");
        assert_eq!(fid["lossy"], serde_json::json!(["/currency: case-fold"]), "{}", r.fidelity);
    }

    cancel.cancel();
    hub.shutdown().await;
    tdb.cleanup().await;
}

/// A page of the shop's orders API (`shop.toml`, a pulled source), stored in layer 1 as the
/// runner stores it: one row, byte for byte, split at layer 2 by `[payload] records` into its
/// three orders, each an `order.changed` ordered by its order id; the id beyond 2^63 and the
/// long decimal total arrive exactly as the shop wrote them.
async fn a_pulled_shop_page_becomes_one_message_per_order(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let (hub, core, cancel) = start(&tdb.url).await;
    let page = fixture("shop/orders.page1.json");
    let meta = IngestMeta {
        source_ref: Some("sync:0193a0c4-run:1".into()),
        content_type: Some("application/json".into()),
        headers: vec![
            ("hub-pull-page".into(), "1".into()),
            (
                "hub-pull-request".into(),
                "GET https://shop.example/api/2026-10/orders?limit=100&status=any".into(),
            ),
            ("hub-pull-mode".into(), "incremental_dedup".into()),
        ],
    };
    let stored = hub.ingest("shop", &page, meta).await.expect("the page is stored");
    assert!(hub.wait_settled(Duration::from_secs(30)).await.expect("settle"), "did not settle");

    let raw = l1::Entity::find_by_id(stored.id).one(hub.db()).await.expect("l1").expect("row");
    assert_eq!(raw.body, page, "the page byte for byte");
    let rows2 =
        l2::Entity::find().filter(l2::Column::OriginId.eq(stored.id)).all(hub.db()).await.expect("l2");
    assert_eq!(rows2.len(), 3, "one record per order");
    assert!(rows2.iter().all(|r| r.record_kind == "order" && r.schema_version.as_deref() == Some("2026-10")));

    let got = core.got.lock().expect("lock").clone();
    let orders = by_type(&got, "order.changed");
    assert_eq!(orders.len(), 3);
    let of = |id: &str| {
        orders.iter().find(|m| m.body["order_id"].as_str() == Some(id)).expect("order").body.clone()
    };
    let big = of("12345678901234567890");
    assert_eq!(big["total"]["value"].as_str(), Some("1234567.890123456789"));
    assert_eq!(big["total"]["currency"].as_str(), Some("EUR"));
    assert_eq!(big["tax"].as_str(), Some("197110.416827208617"));
    assert_eq!(big["lines"][0]["unit_price"].as_str(), Some("1037457.473296248172"));
    assert_eq!(big["customer_id"].as_str(), Some("7301884512"));
    assert_eq!(big["updated_at"].as_str(), Some("2026-11-20T14:05:41.873+01:00"));
    assert_eq!(big["fulfillment"].as_str(), Some("unfulfilled"));
    assert_eq!(of("5987360022")["total"]["value"].as_str(), Some("4800"));

    let rows4 = layer4_dispatch::entity::Entity::find()
        .filter(layer4_dispatch::entity::Column::OriginId.eq(stored.id))
        .all(hub.db())
        .await
        .expect("l4");
    let mut keys: Vec<_> =
        rows4.iter().map(|r| (r.destination.as_str(), r.ordering_key.as_deref())).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            ("core.orders", Some("12345678901234567890")),
            ("core.orders", Some("5987360021")),
            ("core.orders", Some("5987360022")),
        ],
        "ordered per order"
    );

    cancel.cancel();
    hub.shutdown().await;
    tdb.cleanup().await;
}

on_both!(
    github_issues_and_pushes_on_one_source,
    stripe_minor_units_become_exact_decimals_by_currency,
    a_pulled_shop_page_becomes_one_message_per_order
);
