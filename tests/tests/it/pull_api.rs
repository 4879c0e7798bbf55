//! Pulled sources on the audit desk, against real components: a small shop API (axum) serving
//! a paged listing of orders, a hub pulling it (`HubBuilder::pull`) on SQLite and PostgreSQL,
//! its pages processed by an integration file's normalizer, mapping and route to a core app,
//! and the hub's HTTP server: `POST /v1/sources/{source}/sync`, the source's state and runs,
//! `/v1/stats` and `/metrics`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use hub_worker::Hub;
use hub_worker::http::auth::{Scope, Token, Tokens};
use hub_worker::pull::{PullSettings, SyncMode};
use layer1_ingest::pull::{Pagination, PullSpec};
use layer4_dispatch::InProcessTransport;

use crate::on_both;
use crate::util::{Backend, Collect, TestDb, builder};

/// Read, operate and metrics.
const OPS: &str = "ops-token-0123456789abcdef";
/// Read and metrics, no operate.
const READER: &str = "reader-token-0123456789abcdef";

/// The shop's orders: five, two per page.
const ORDERS: usize = 5;

/// The third party: `GET /orders?page=N&per_page=M`, `{"data": [...], "page": N}`. It can be
/// made slow (each request waits) or failing (each request answers that status).
#[derive(Clone, Default)]
struct Shop {
    delay_ms: Arc<AtomicU64>,
    fail_with: Arc<AtomicU16>,
    requests: Arc<AtomicUsize>,
}

fn order(i: usize) -> Value {
    json!({"id": i, "updated_at": format!("2026-11-0{i}T10:00:00Z"), "total": format!("{i}2.50")})
}

async fn orders(
    State(shop): State<Shop>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::response::Response {
    shop.requests.fetch_add(1, Ordering::SeqCst);
    let delay = shop.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let fail = shop.fail_with.load(Ordering::SeqCst);
    if fail != 0 {
        let status = axum::http::StatusCode::from_u16(fail).expect("status");
        return (status, "refused on purpose").into_response();
    }
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let per: usize = q.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(ORDERS);
    let items: Vec<Value> = (1..=ORDERS).map(order).skip((page - 1) * per).take(per).collect();
    axum::Json(json!({"data": items, "page": page})).into_response()
}

async fn shop_api(cancel: CancellationToken) -> (String, Shop) {
    let shop = Shop::default();
    let app = axum::Router::new().route("/orders", axum::routing::get(orders)).with_state(shop.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { cancel.cancelled().await }).await
    });
    (base, shop)
}

/// The shop's integration file: each page's `/data` records, mapped to `order.seen`, routed to
/// `core.orders`.
fn integration_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("po-pull-api-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let w = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("write");
    w("any.json", "{}");
    w(
        "core.toml",
        "destinations = [\"core.orders\"]\n[[message_types]]\ntype = \"order.seen\"\nversion = \"1\"\nschema = \"any.json\"\n",
    );
    w(
        "shop.toml",
        "source = \"shop\"\n[payload]\nrecords = \"/data\"\n\
         [kinds.order]\nschema = \"any.json\"\nschema_version = \"1\"\n\
         [kinds.order.mapping]\nname = \"order\"\nversion = \"1\"\nmessage_type = \"order.seen\"\n\
         type_version = \"1\"\non_unmapped = \"ignore\"\n\
         fields = { \"/order_id\" = { from = \"/id\" }, \"/total\" = { from = \"/total\" } }\n\
         [[routes]]\ntype = \"order.seen\"\ndestination = \"core.orders\"\n",
    );
    dir
}

/// The shop as a pulled source: numbered pages of two, incremental on `/updated_at` (no
/// cursor parameter: the hub filters what it reads), no schedule.
fn pull_settings(base: &str) -> PullSettings {
    let mut spec = PullSpec::new(format!("{base}/orders"));
    spec.records = Some("/data".into());
    spec.pagination =
        Pagination::PageNumber { param: "page".into(), start: 1, size_param: Some("per_page".into()) };
    spec.page_size = Some(2);
    spec.cursor_field = Some("/updated_at".into());
    let mut s = PullSettings::new("shop", spec, Default::default());
    s.mode = SyncMode::Incremental;
    s.max_retries = 0;
    s.timeout = Duration::from_secs(10);
    s
}

struct Desk {
    base: String,
    http: reqwest::Client,
}

impl Desk {
    /// Status, headers and body (JSON, or the text as a JSON string) of a call with `token`.
    async fn call(&self, method: &str, path: &str, token: &str) -> (u16, reqwest::header::HeaderMap, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("call");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        if status >= 400 {
            assert_eq!(
                headers.get("content-type").and_then(|c| c.to_str().ok()),
                Some("application/problem+json"),
                "{path}: {status} {text}"
            );
        }
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, body)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, _, body) = self.call("GET", path, OPS).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Starts a run by the API; its id.
    async fn sync(&self) -> String {
        let (status, headers, body) = self.call("POST", "/v1/sources/shop/sync", OPS).await;
        assert_eq!(status, 202, "{body}");
        let id = body["run_id"].as_str().expect("run id").to_owned();
        let url = format!("/v1/sources/shop/runs/{id}");
        assert_eq!(body["source"], "shop");
        assert_eq!(body["status_url"], url.as_str());
        assert_eq!(headers.get("location").and_then(|l| l.to_str().ok()), Some(url.as_str()));
        id
    }

    /// The run once it has ended.
    async fn ended(&self, id: &str) -> Value {
        for _ in 0..300 {
            let run = self.get(&format!("/v1/sources/shop/runs/{id}")).await;
            if run["outcome"] != "running" {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("run {id} did not end");
    }

    async fn metrics(&self) -> String {
        let (status, _, body) = self.call("GET", "/metrics", READER).await;
        assert_eq!(status, 200);
        body.as_str().expect("text").to_owned()
    }
}

/// The value of the series `name{source="shop"}` in a Prometheus text.
fn series(text: &str, name: &str) -> f64 {
    let prefix = format!("{name}{{source=\"shop\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} for shop in\n{text}"))
        .parse()
        .expect("a number")
}

async fn pulled_sources_over_http(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let cancel = CancellationToken::new();
    let (shop_base, shop) = shop_api(cancel.clone()).await;
    let dir = integration_dir();
    let transport = Arc::new(InProcessTransport::default());
    // The built-in integrations too: `payments` is a source, but not a pulled one.
    let hub: Hub = builder(&tdb.url, transport.clone())
        .integrations_dir(&dir)
        .pull(pull_settings(&shop_base), None)
        .build()
        .await
        .expect("hub");
    hub.start();
    let core = Arc::new(Collect::default());
    tokio::spawn(
        layer4_dispatch::Receiver::new(transport.clone(), "core.orders", core.clone()).run(cancel.clone()),
    );
    let tokens = Tokens::new(vec![
        Token::new("ops", OPS, &[Scope::Read, Scope::Operate, Scope::Metrics]),
        Token::new("reader", READER, &[Scope::Read, Scope::Metrics]),
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let desk = Desk {
        base: format!("http://{}", listener.local_addr().expect("addr")),
        http: reqwest::Client::new(),
    };
    let app = hub_worker::http::router(
        hub_worker::http::ingest::IngestState::new(hub.clone(), Default::default()),
        hub_worker::http::audit::AuditState::with_tokens(hub.clone(), tokens),
    );
    tokio::spawn(hub_worker::http::serve(listener, app, cancel.clone()));

    // Never run: the declaration, empty state.
    let state = desk.get("/v1/sources/shop/state").await;
    assert_eq!(state["source"], "shop");
    assert_eq!(state["url"], format!("{shop_base}/orders"));
    assert_eq!(state["mode"], "incremental");
    assert_eq!((&state["schedule"], &state["timezone"]), (&Value::Null, &Value::Null));
    assert_eq!((&state["runs"], &state["records"], &state["running"]), (&json!(0), &json!(0), &json!(false)));
    assert_eq!(
        (&state["cursor"], &state["last_run_id"], &state["position"]),
        (&Value::Null, &Value::Null, &Value::Null)
    );
    assert_eq!(desk.get("/v1/sources/shop/runs").await, json!({"items": [], "next_before": null}));
    let stats = desk.get("/v1/stats").await;
    assert_eq!(stats["pulls"], json!([]), "no state row before the first run");

    // Operating needs scope `operate`.
    for (method, path) in [("POST", "/v1/sources/shop/sync"), ("DELETE", "/v1/sources/shop/state")] {
        let (status, _, problem) = desk.call(method, path, READER).await;
        assert_eq!(status, 403, "{method} {path}: {problem}");
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains("operate")), "{problem}");
    }
    assert_eq!(shop.requests.load(Ordering::SeqCst), 0, "a refused request started no run");

    // The first run: three pages (2 + 2 + 1), every order taken, the cursor saved.
    let first = desk.sync().await;
    let run = desk.ended(&first).await;
    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert_eq!(run["trigger"], "manual");
    assert_eq!(
        (&run["pages"], &run["records"], &run["skipped"], &run["requests"], &run["retries"]),
        (&json!(3), &json!(5), &json!(0), &json!(3), &json!(0)),
        "{run}"
    );
    assert_eq!((&run["cursor_before"], &run["cursor_after"]), (&Value::Null, &json!("2026-11-05T10:00:00Z")));
    assert!(run["bytes"].as_i64().is_some_and(|b| b > 100), "{run}");
    assert!(run["finished_at"].is_string() && run["error"].is_null(), "{run}");
    let runs = desk.get("/v1/sources/shop/runs").await;
    assert_eq!(runs["items"].as_array().map(Vec::len), Some(1), "{runs}");
    assert_eq!(runs["items"][0], run, "the listing shows the run as it is");
    let state = desk.get("/v1/sources/shop/state").await;
    assert_eq!(state["cursor"], "2026-11-05T10:00:00Z", "{state}");
    assert_eq!((&state["runs"], &state["pages"], &state["records"]), (&json!(1), &json!(3), &json!(5)));
    assert_eq!((&state["last_run_id"], &state["last_outcome"]), (&json!(first), &json!("succeeded")));
    assert!(state["last_success_at"].is_string() && state["position"].is_null(), "{state}");
    assert!(hub.wait_settled(Duration::from_secs(30)).await.expect("settle"));
    let mut got: Vec<Value> = core.got.lock().expect("lock").iter().map(|m| m.body.to_serde_json()).collect();
    got.sort_by_key(|m| m["order_id"].as_u64());
    let want: Vec<Value> =
        (1..=ORDERS).map(|i| json!({"order_id": i, "total": format!("{i}2.50")})).collect();
    assert_eq!(got, want, "every order reached the core app once, as the shop wrote it");

    // Again: nothing past the cursor, every order skipped.
    let second = desk.ended(&desk.sync().await).await;
    assert_eq!((&second["records"], &second["skipped"], &second["pages"]), (&json!(0), &json!(5), &json!(3)));
    assert_eq!(second["cursor_before"], "2026-11-05T10:00:00Z");

    // A slow API: while the run holds the source, another run and a reset are refused (409),
    // and the state and metrics say it is running.
    shop.delay_ms.store(700, Ordering::SeqCst);
    let slow = desk.sync().await;
    let (status, _, problem) = desk.call("POST", "/v1/sources/shop/sync", OPS).await;
    assert_eq!(status, 409, "{problem}");
    let detail = problem["detail"].as_str().expect("detail");
    assert!(
        detail.contains("is being synced by") && detail.contains(&slow) && detail.contains("lease until"),
        "{detail}"
    );
    let (status, _, problem) = desk.call("DELETE", "/v1/sources/shop/state", OPS).await;
    assert_eq!(status, 409, "{problem}");
    let state = desk.get("/v1/sources/shop/state").await;
    assert_eq!(state["running"], true, "{state}");
    assert!(state["lease_owner"].as_str().is_some_and(|o| o.ends_with(&slow)), "{state}");
    assert!(state["lease_until"].is_string(), "{state}");
    assert_eq!(series(&desk.metrics().await, "hub_sync_running"), 1.0);
    let slow_run = desk.ended(&slow).await;
    assert_eq!(slow_run["outcome"], "succeeded", "{slow_run}");
    shop.delay_ms.store(0, Ordering::SeqCst);
    assert_eq!(desk.get("/v1/sources/shop/state").await["running"], false);

    // Reset: the cursor is forgotten, the totals stay; the next run takes every order again.
    let (status, _, body) = desk.call("DELETE", "/v1/sources/shop/state", OPS).await;
    assert_eq!(status, 204, "{body}");
    let state = desk.get("/v1/sources/shop/state").await;
    assert_eq!(
        (&state["cursor"], &state["runs"], &state["records"]),
        (&Value::Null, &json!(3), &json!(5)),
        "{state}"
    );
    let again = desk.ended(&desk.sync().await).await;
    assert_eq!(
        (&again["records"], &again["skipped"], &again["cursor_before"]),
        (&json!(5), &json!(0), &Value::Null)
    );

    // A refusing API: the run fails, on record with its error; nothing else moves.
    shop.fail_with.store(403, Ordering::SeqCst);
    let failed = desk.ended(&desk.sync().await).await;
    assert_eq!(
        (&failed["outcome"], &failed["pages"], &failed["requests"]),
        (&json!("failed"), &json!(0), &json!(1))
    );
    assert!(failed["error"].as_str().is_some_and(|e| e.contains("refused")), "{failed}");

    // The history, newest first, in pages.
    let all = desk.get("/v1/sources/shop/runs").await;
    let ids: Vec<&str> =
        all["items"].as_array().expect("items").iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids.len(), 5, "{all}");
    assert_eq!((ids[4], ids[2]), (first.as_str(), slow.as_str()));
    let page = desk.get("/v1/sources/shop/runs?limit=2").await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["next_before"], ids[1]);
    let page = desk.get(&format!("/v1/sources/shop/runs?limit=3&before={}", ids[1])).await;
    let rest: Vec<&str> =
        page["items"].as_array().expect("items").iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(rest, ids[2..].to_vec());
    assert_eq!(page["next_before"], Value::Null, "the last page");
    let bytes: i64 = all["items"].as_array().expect("items").iter().filter_map(|r| r["bytes"].as_i64()).sum();

    // Stats and metrics: one entry per pulled source, from its state row.
    let stats = desk.get("/v1/stats").await;
    let pulls = stats["pulls"].as_array().expect("pulls");
    assert_eq!(pulls.len(), 1, "{stats}");
    let p = &pulls[0];
    assert_eq!(p["source"], "shop");
    assert_eq!(
        (&p["runs"], &p["runs_failed"], &p["pages"], &p["records"], &p["skipped"], &p["bytes"]),
        (&json!(5), &json!(1), &json!(12), &json!(10), &json!(10), &json!(bytes)),
        "{p}"
    );
    assert_eq!((&p["last_run_id"], &p["last_outcome"]), (&json!(ids[0]), &json!("failed")));
    assert!(p["last_error"].as_str().is_some_and(|e| e.contains("refused")), "{p}");
    assert_eq!(p["cursor"], "2026-11-05T10:00:00Z");
    assert_eq!(p["running"], false);
    let last_success = chrono::DateTime::parse_from_rfc3339(p["last_success_at"].as_str().expect("success"))
        .expect("time")
        .timestamp_millis() as f64
        / 1000.0;
    let text = desk.metrics().await;
    for (name, want) in [
        ("hub_sync_runs_total", 5.0),
        ("hub_sync_runs_failed_total", 1.0),
        ("hub_sync_pages_total", 12.0),
        ("hub_sync_records_total", 10.0),
        ("hub_sync_skipped_total", 10.0),
        ("hub_sync_bytes_total", bytes as f64),
        ("hub_sync_last_success_timestamp_seconds", last_success),
        ("hub_sync_running", 0.0),
    ] {
        assert_eq!(series(&text, name), want, "{name}");
        let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
        assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name} has no TYPE line");
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP line");
    }

    // Not pulled, or not there at all: 404, whoever asks.
    for (method, path) in [
        ("POST", "/v1/sources/payments/sync"),
        ("GET", "/v1/sources/payments/state"),
        ("DELETE", "/v1/sources/payments/state"),
        ("GET", "/v1/sources/payments/runs"),
        ("POST", "/v1/sources/nowhere/sync"),
        ("GET", "/v1/sources/nowhere/state"),
        ("GET", &format!("/v1/sources/nowhere/runs/{first}")),
    ] {
        let (status, _, problem) = desk.call(method, path, OPS).await;
        assert_eq!(status, 404, "{method} {path}: {problem}");
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains("not a pulled source")), "{problem}");
    }
    let unknown = uuid::Uuid::now_v7();
    let (status, _, problem) = desk.call("GET", &format!("/v1/sources/shop/runs/{unknown}"), OPS).await;
    assert_eq!((status, &problem["title"]), (404, &json!("No such run")), "{problem}");

    assert!(hub.wait_settled(Duration::from_secs(30)).await.expect("settle"));
    assert_eq!(
        core.got.lock().expect("lock").len(),
        2 * ORDERS,
        "the run after the reset took every order again"
    );
    cancel.cancel();
    hub.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    tdb.cleanup().await;
}

on_both!(pulled_sources_over_http);
