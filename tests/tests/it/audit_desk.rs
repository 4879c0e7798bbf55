//! The audit desk over real HTTP: lineage with the raw bytes re-checked, keyset listings,
//! stats, replay, readiness and metrics, behind the admin token.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use sea_orm::{ConnectionTrait, Statement};
use tokio_util::sync::CancellationToken;

use hub_worker::IngestMeta;
use layer4_dispatch::Receiver;

use crate::front_door::{ADMIN, Server, server};
use crate::on_both;
use crate::util::{Backend, Collect, TestDb, payment};

impl Server {
    async fn get(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    async fn text(&self, path: &str) -> (u16, String) {
        let resp =
            self.client.get(format!("{}{path}", self.base)).bearer_auth(ADMIN).send().await.expect("request");
        (resp.status().as_u16(), resp.text().await.unwrap_or_default())
    }

    async fn replay(&self, id: &str, layer: u8) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .post(format!("{}/v1/messages/{id}/replay?from_layer={layer}", self.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("request");
        (resp.status().as_u16(), resp.json().await.unwrap_or(serde_json::Value::Null))
    }
}

async fn audit_desk_answers(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let s = server(&tdb).await;
    s.hub.start();
    let core = Arc::new(Collect::default());
    let cancel = CancellationToken::new();
    tokio::spawn(Receiver::new(s.transport.clone(), "core.payments", core.clone()).run(cancel.clone()));
    let mut ids = Vec::new();
    for i in 0..7 {
        let body = payment(&format!("evt_audit_{i}"), "7.00", &format!("cus_{i}"));
        ids.push(s.hub.ingest("payments", &body, IngestMeta::default()).await.expect("ingest").id);
    }
    let bad = s
        .hub
        .ingest("payments", &payment("evt_audit_bad", "7,00", "cus_x"), IngestMeta::default())
        .await
        .expect("bad");
    assert!(s.hub.wait_settled(Duration::from_secs(30)).await.expect("settle"));

    // The token.
    assert_eq!(s.get("/v1/stats", None).await.0, 401);
    assert_eq!(s.get("/v1/stats", Some("not-the-token")).await.0, 401);
    assert_eq!(s.get(&format!("/v1/messages/{}", ids[0]), None).await.0, 401);

    // One message from its layer 4 id: four rows, the raw bytes, their hash re-checked.
    let (status, m) = s.get(&format!("/v1/messages/{}", ids[0]), Some(ADMIN)).await;
    assert_eq!(status, 200, "{m}");
    let entries = m["entries"].as_array().expect("entries");
    let l4 =
        entries.iter().find(|e| e["layer"] == "Dispatch").expect("l4")["id"].as_str().expect("id").to_owned();
    let (_, m) = s.get(&format!("/v1/messages/{l4}"), Some(ADMIN)).await;
    let layers: Vec<&str> =
        m["entries"].as_array().expect("entries").iter().filter_map(|e| e["layer"].as_str()).collect();
    assert_eq!(layers, vec!["Raw", "Normalized", "Translated", "Dispatch"]);
    assert_eq!(m["raw"][0]["sha256_verified"], true);
    let raw = base64::engine::general_purpose::STANDARD
        .decode(m["raw"][0]["body_base64"].as_str().expect("b64"))
        .expect("b64");
    assert_eq!(raw, payment("evt_audit_0", "7.00", "cus_0"));
    assert_eq!(s.get(&format!("/v1/messages/{}", uuid::Uuid::now_v7()), Some(ADMIN)).await.0, 404);

    // Tampered bytes are caught.
    let db = s.hub.db();
    let sql = format!(
        "UPDATE layer1_raw SET body = body || {} WHERE source_ref = 'evt_audit_1'",
        if backend == Backend::Sqlite { "X'20'" } else { "'\\x20'::bytea" }
    );
    db.execute_raw(Statement::from_string(db.get_database_backend(), sql)).await.expect("tamper");
    let (_, m) = s.get(&format!("/v1/messages/{}", ids[1]), Some(ADMIN)).await;
    assert_eq!(m["raw"][0]["sha256_verified"], false);

    // Keyset pages: every row once, in a stable order.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) =
            s.get(&format!("/v1/messages?layer=1&source=payments&limit=3{cursor}"), Some(ADMIN)).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter_map(|e| e["id"].as_str().map(str::to_owned)),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    let mut want: Vec<String> = ids.iter().chain([&bad.id]).map(|i| i.to_string()).collect();
    want.sort();
    assert_eq!(seen, want);
    let (_, rejected) = s.get("/v1/messages?layer=1&status=rejected", Some(ADMIN)).await;
    let items = rejected["items"].as_array().expect("items");
    assert_eq!((items.len(), items[0]["id"].as_str()), (1, Some(bad.id.to_string().as_str())));
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339().replace('+', "%2B");
    let (_, none) = s.get(&format!("/v1/messages?layer=4&since={future}"), Some(ADMIN)).await;
    assert_eq!(none["items"].as_array().map(Vec::len), Some(0));
    assert_eq!(s.get("/v1/messages?layer=9", Some(ADMIN)).await.0, 400);

    // Stats.
    let (_, stats) = s.get("/v1/stats", Some(ADMIN)).await;
    let dest = stats["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .find(|d| d["destination"] == "core.payments")
        .cloned()
        .expect("dest");
    assert_eq!((dest["acknowledged"].as_i64(), dest["unacknowledged"].as_i64()), (Some(7), Some(0)));

    // Replay a delivered message through layer 3 (translated again from its stored record):
    // new rows linked to the old, the old untouched, the core app gets it again under a new
    // hub-message-id.
    let (status, r) = s.replay(&l4, 3).await;
    assert_eq!(status, 202, "{r}");
    assert!(s.hub.wait_settled(Duration::from_secs(30)).await.expect("settle"));
    let (_, m) = s.get(&format!("/v1/messages/{}", ids[0]), Some(ADMIN)).await;
    let entries = m["entries"].as_array().expect("entries");
    let l2: Vec<&serde_json::Value> = entries.iter().filter(|e| e["layer"] == "Normalized").collect();
    assert_eq!(l2.len(), 2);
    assert_eq!(l2[1]["parent_id"], l2[0]["id"], "the replay links to the row it replays");
    let l3: Vec<&serde_json::Value> = entries.iter().filter(|e| e["layer"] == "Translated").collect();
    assert_eq!(l3.len(), 2, "translated again");
    assert_eq!(l3[1]["parent_id"], l2[1]["id"]);
    assert_eq!(l3[0]["status"], "forwarded");
    let l4s: Vec<&serde_json::Value> = entries.iter().filter(|e| e["layer"] == "Dispatch").collect();
    assert_eq!(l4s.len(), 2);
    assert!(l4s.iter().all(|e| e["status"] == "acknowledged"));
    assert_eq!(core.got.lock().expect("lock").iter().filter(|m| m.headers.origin_id == ids[0]).count(), 2);
    // Again from the same (old) id: one more copy, of the newest row, not one per earlier copy.
    let (status, r) = s.replay(&l4, 3).await;
    assert_eq!(status, 202, "{r}");
    assert_eq!(r["replayed"].as_array().map(Vec::len), Some(1), "{r}");
    assert!(s.hub.wait_settled(Duration::from_secs(30)).await.expect("settle"));
    assert_eq!(core.got.lock().expect("lock").iter().filter(|m| m.headers.origin_id == ids[0]).count(), 3);

    // Replay the rejected payload from layer 1: a new arrival of the same bytes, rejected again
    // (the integration has not changed), the first rejection kept.
    let (status, _) = s.replay(&bad.id.to_string(), 1).await;
    assert_eq!(status, 202);
    assert!(s.hub.wait_settled(Duration::from_secs(30)).await.expect("settle"));
    let (_, m) = s.get(&format!("/v1/messages/{}", bad.id), Some(ADMIN)).await;
    let raws: Vec<&serde_json::Value> =
        m["entries"].as_array().expect("e").iter().filter(|e| e["layer"] == "Raw").collect();
    assert_eq!(raws.len(), 2);
    assert!(raws.iter().all(|e| e["status"] == "rejected"));
    assert_eq!(m["raw"].as_array().map(Vec::len), Some(2));
    assert_eq!(s.replay(&bad.id.to_string(), 7).await.0, 400);

    // Health, readiness, metrics.
    assert_eq!(s.text("/healthz").await.0, 200);
    assert_eq!(s.text("/readyz").await.0, 200);
    let (status, text) = s.text("/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("post_office_messages{layer=\"4\",source=\"payments\",direction=\"upstream\",status=\"acknowledged\"} 9"), "{text}");
    assert!(text.contains("post_office_stage_batch_seconds_count{stage=\"publish\"}"), "{text}");
    assert!(text.contains("post_office_receipts_total{kind=\"applied\"}"), "{text}");
    cancel.cancel();
    s.stop().await;
    tdb.cleanup().await;
}

on_both!(audit_desk_answers);

/// The OpenAPI document: valid (checked by openapi-spec-validator), naming exactly the routes
/// the server has, and every operation answers with a status the document lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_validates_and_matches_the_server() {
    let tdb = TestDb::new(Backend::Sqlite).await;
    let s = server(&tdb).await;
    let id = s
        .hub
        .ingest("payments", &payment("evt_doc", "1.00", "c"), IngestMeta::default())
        .await
        .expect("ingest")
        .id;
    let (status, doc) = s.get("/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc}");

    let validator = std::env::var("HUB_TEST_OPENAPI_VALIDATOR").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/moto/bin/openapi-spec-validator").to_owned()
    });
    assert!(
        std::path::Path::new(&validator).exists(),
        "{validator} missing: run scripts/test.sh, which installs it"
    );
    let file = std::env::temp_dir().join(format!("po-openapi-{}.json", uuid::Uuid::now_v7().simple()));
    std::fs::write(&file, serde_json::to_vec(&doc).expect("json")).expect("write");
    let out = std::process::Command::new(&validator).arg(&file).output().expect("validator runs");
    assert!(
        out.status.success(),
        "invalid OpenAPI: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&file);

    let mut paths: Vec<String> = doc["paths"].as_object().expect("paths").keys().cloned().collect();
    paths.sort();
    assert_eq!(
        paths,
        vec![
            "/healthz",
            "/metrics",
            "/readyz",
            "/v1/core-messages/{core_message_id}",
            "/v1/ingest/{source}",
            "/v1/messages",
            "/v1/messages/{id}",
            "/v1/messages/{id}/replay",
            "/v1/sources/{source}/runs",
            "/v1/sources/{source}/runs/{run_id}",
            "/v1/sources/{source}/state",
            "/v1/sources/{source}/sync",
            "/v1/stats"
        ]
    );
    // Each documented operation, called for real: the status is one the document lists.
    let calls: Vec<(&str, &str, String)> = vec![
        ("/healthz", "get", "/healthz".into()),
        ("/readyz", "get", "/readyz".into()),
        ("/metrics", "get", "/metrics".into()),
        ("/v1/stats", "get", "/v1/stats".into()),
        ("/v1/messages", "get", "/v1/messages?layer=1".into()),
        ("/v1/messages/{id}", "get", format!("/v1/messages/{id}")),
        ("/v1/core-messages/{core_message_id}", "get", "/v1/core-messages/m-none".into()),
        ("/v1/messages/{id}/replay", "post", format!("/v1/messages/{id}/replay?from_layer=1")),
        ("/v1/ingest/{source}", "post", "/v1/ingest/key".into()),
        // `payments` is not a pulled source: 404, documented (`pull_api` calls them on one).
        ("/v1/sources/{source}/sync", "post", "/v1/sources/payments/sync".into()),
        ("/v1/sources/{source}/state", "get", "/v1/sources/payments/state".into()),
        ("/v1/sources/{source}/state", "delete", "/v1/sources/payments/state".into()),
        ("/v1/sources/{source}/runs", "get", "/v1/sources/payments/runs".into()),
        ("/v1/sources/{source}/runs/{run_id}", "get", format!("/v1/sources/payments/runs/{id}")),
    ];
    for (path, method, url) in calls {
        let documented: Vec<String> =
            doc["paths"][path][method]["responses"].as_object().expect("responses").keys().cloned().collect();
        let req = match method {
            "get" => s.client.get(format!("{}{url}", s.base)),
            "delete" => s.client.delete(format!("{}{url}", s.base)),
            _ => s
                .client
                .post(format!("{}{url}", s.base))
                .header("content-type", "application/json")
                .body("{}"),
        };
        let status = req.bearer_auth(ADMIN).send().await.expect("request").status().as_u16().to_string();
        assert!(documented.contains(&status), "{method} {path} answered {status}, documented {documented:?}");
        // And without credentials, where the operation is secured.
        if doc["paths"][path][method].get("security").is_some() {
            let req = match method {
                "get" => s.client.get(format!("{}{url}", s.base)),
                "delete" => s.client.delete(format!("{}{url}", s.base)),
                _ => s.client.post(format!("{}{url}", s.base)),
            };
            let status = req.send().await.expect("request").status().as_u16();
            assert_eq!(status, 401, "{method} {path} without a token");
        }
    }
    s.stop().await;
    tdb.cleanup().await;
}

/// One admin request with `token`: status, the `WWW-Authenticate` header, the JSON body.
async fn call(s: &Server, method: &str, path: &str, token: Option<&str>) -> (u16, String, serde_json::Value) {
    let url = format!("{}{path}", s.base);
    let mut req = s.client.request(reqwest::Method::from_bytes(method.as_bytes()).expect("method"), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let challenge =
        resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let text = resp.text().await.unwrap_or_default();
    (status, challenge, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// `[http.tokens]` as a production config gives them: secrets in files of their own.
fn tokens_config(dir: &std::path::Path, tokens: &[(&str, &[&str], &str)]) -> serde_json::Value {
    let mut table = serde_json::Map::new();
    for (name, scopes, secret) in tokens {
        let file = dir.join(format!("{name}.token"));
        // A trailing newline, as `echo` writes it: not part of the token.
        std::fs::write(&file, format!("{secret}\n")).expect("token file");
        table.insert((*name).to_owned(), serde_json::json!({ "scopes": scopes, "file": file }));
    }
    serde_json::json!({ "listen": "127.0.0.1:0", "tokens": table })
}

const READER: &str = "reader-token-0123456789";
const AUDITOR: &str = "auditor-token-0123456789";
const OPS_OLD: &str = "ops-old-token-0123456789";
const OPS_NEW: &str = "ops-new-token-0123456789";
const SCRAPER: &str = "scraper-token-0123456789";

/// Each scope opens what it names and nothing else; two operate tokens work side by side (a
/// rotation); the rows a replay makes carry the token's name.
async fn scopes_decide_who_may_do_what(backend: Backend) {
    use layer2_normalize::entity as l2;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

    let tdb = TestDb::new(backend).await;
    let dir = std::env::temp_dir().join(format!("po-tokens-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg: hub_worker::config::HttpConfig = serde_json::from_value(tokens_config(
        &dir,
        &[
            ("reader", &["read"], READER),
            ("auditor", &["read", "raw"], AUDITOR),
            ("ops-old", &["operate"], OPS_OLD),
            ("ops-new", &["operate"], OPS_NEW),
            ("prometheus", &["metrics"], SCRAPER),
        ],
    ))
    .expect("http config");
    let s = crate::front_door::server_with_tokens(&tdb, cfg.tokens().expect("tokens from files")).await;
    s.hub.start();
    let core = Arc::new(Collect::default());
    let cancel = CancellationToken::new();
    tokio::spawn(Receiver::new(s.transport.clone(), "core.payments", core.clone()).run(cancel.clone()));
    let body = payment("evt_scope_1", "3.00", "cus_s");
    let id = s.hub.ingest("payments", &body, IngestMeta::default()).await.expect("ingest").id;
    assert!(s.hub.wait_settled(Duration::from_secs(30)).await.expect("settle"));
    let msg = format!("/v1/messages/{id}");
    let replay = format!("/v1/messages/{id}/replay?from_layer=3");

    // No token, an unknown one, and the retired shorthand's token (not configured here): 401.
    for token in [None, Some("not-a-configured-token-at-all"), Some(ADMIN)] {
        for (m, p) in
            [("GET", "/v1/stats"), ("GET", msg.as_str()), ("POST", replay.as_str()), ("GET", "/metrics")]
        {
            let (status, challenge, _) = call(&s, m, p, token).await;
            assert_eq!((status, challenge.as_str()), (401, "Bearer"), "{m} {p} with {token:?}");
        }
    }

    // read: listings, stats and lineage with the hash re-checked, but not the bytes.
    assert_eq!(call(&s, "GET", "/v1/messages?layer=4", Some(READER)).await.0, 200);
    assert_eq!(call(&s, "GET", "/v1/stats", Some(READER)).await.0, 200);
    let (status, _, m) = call(&s, "GET", &msg, Some(READER)).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["raw"][0]["sha256_verified"], true, "{m}");
    assert_eq!(m["raw"][0]["body_base64"], serde_json::Value::Null, "{m}");
    assert_eq!(m["raw"][0]["headers"], serde_json::Value::Null, "{m}");
    assert_eq!(m["raw"][0]["body_withheld"], "needs scope raw", "{m}");
    // The bytes and headers do not leak; what the layers made of them is shown (masked where
    // the source says `redact`, which payments does not: see audit_content.rs).
    let mut outside_content = m.clone();
    for key in ["records", "translations", "dispatches"] {
        outside_content[key] = serde_json::Value::Null;
    }
    assert!(!outside_content.to_string().contains("cus_s"), "nothing of the payload leaks: {m}");
    assert_eq!(m["translations"][0]["body"]["customer_ref"], "cus_s", "{m}");
    // ... and 403 naming the scope on replay and metrics.
    for (m, p, scope) in [("POST", replay.as_str(), "operate"), ("GET", "/metrics", "metrics")] {
        let (status, challenge, problem) = call(&s, m, p, Some(READER)).await;
        assert_eq!(status, 403, "{m} {p}: {problem}");
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains(&format!("`{scope}`"))), "{problem}");
        assert_eq!(problem["type"], "https://post-office.dev/problems/forbidden");
        assert!(challenge.contains(&format!("scope=\"{scope}\"")), "{challenge}");
    }

    // raw (with read): the bytes exactly as received.
    let (status, _, m) = call(&s, "GET", &msg, Some(AUDITOR)).await;
    assert_eq!(status, 200);
    assert!(m["raw"][0].get("body_withheld").is_none(), "{m}");
    assert!(m["raw"][0]["headers"].is_object(), "{m}");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(m["raw"][0]["body_base64"].as_str().expect("shown with raw"))
        .expect("b64");
    assert_eq!(raw, body);
    assert_eq!(call(&s, "POST", &replay, Some(AUDITOR)).await.0, 403);

    // operate: replay, with either token of the rotation; the new rows say who asked.
    assert_eq!(call(&s, "GET", "/v1/stats", Some(OPS_OLD)).await.0, 403, "operate does not read");
    assert_eq!(call(&s, "GET", "/metrics", Some(OPS_OLD)).await.0, 403);
    let (status, _, r) = call(&s, "POST", &replay, Some(OPS_OLD)).await;
    assert_eq!(status, 202, "{r}");
    assert!(s.hub.wait_settled(Duration::from_secs(30)).await.expect("settle"));
    let (status, _, r) = call(&s, "POST", &replay, Some(OPS_NEW)).await;
    assert_eq!(status, 202, "{r}");
    assert!(s.hub.wait_settled(Duration::from_secs(30)).await.expect("settle"));
    let rows = l2::Entity::find()
        .filter(l2::Column::OriginId.eq(id))
        .order_by_asc(l2::Column::Id)
        .all(s.hub.db())
        .await
        .expect("l2 rows");
    let by: Vec<Option<&str>> = rows.iter().map(|r| r.replayed_by.as_deref()).collect();
    assert_eq!(by, vec![None, Some("ops-old"), Some("ops-new")]);
    // A replay from layer 1 copies the raw row: recorded there too.
    let (status, _, r) =
        call(&s, "POST", &format!("/v1/messages/{id}/replay?from_layer=1"), Some(OPS_NEW)).await;
    assert_eq!(status, 202, "{r}");
    let copy = r["replayed"][0].as_str().expect("new id").to_owned();
    let raw_copy = layer1_ingest::entity::Entity::find_by_id(copy.parse::<uuid::Uuid>().expect("uuid"))
        .one(s.hub.db())
        .await
        .expect("l1")
        .expect("the copy");
    assert_eq!(raw_copy.replayed_by.as_deref(), Some("ops-new"));
    assert!(s.hub.wait_settled(Duration::from_secs(30)).await.expect("settle"));
    // The lineage shows it; rows the stages made have no `replayed_by` at all.
    let (_, _, m) = call(&s, "GET", &msg, Some(READER)).await;
    let entries = m["entries"].as_array().expect("entries");
    let shown: Vec<&str> = entries.iter().filter_map(|e| e["replayed_by"].as_str()).collect();
    assert_eq!(shown, vec!["ops-new", "ops-old", "ops-new"], "{m}");
    assert!(entries.iter().filter(|e| e["layer"] == "Dispatch").all(|e| e.get("replayed_by").is_none()));

    // metrics: /metrics and nothing else.
    let (status, _, text) = call(&s, "GET", "/metrics", Some(SCRAPER)).await;
    assert_eq!(status, 200);
    assert!(text.as_str().is_some_and(|t| t.contains("post_office_messages{")), "{text}");
    for (m, p) in
        [("GET", "/v1/stats"), ("GET", "/v1/messages"), ("GET", msg.as_str()), ("POST", replay.as_str())]
    {
        assert_eq!(call(&s, m, p, Some(SCRAPER)).await.0, 403, "{m} {p}");
    }
    // The open routes stay open.
    assert_eq!(call(&s, "GET", "/healthz", None).await.0, 200);
    assert_eq!(call(&s, "GET", "/readyz", None).await.0, 200);
    cancel.cancel();
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    tdb.cleanup().await;
}

on_both!(scopes_decide_who_may_do_what);

/// The router's routes, as the table it is built from declares them: the public ones are
/// exactly health, readiness, the document and intake; every other one has a scope, the
/// OpenAPI document says the same, and the running server enforces exactly that scope (a
/// token with every other scope is refused, one with it is not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_declares_its_scope() {
    use hub_worker::http::auth::{Access, Scope, Token, Tokens};

    let tdb = TestDb::new(Backend::Sqlite).await;
    // Per scope, a token with every scope but that one, and one with only that one.
    let mut tokens = Vec::new();
    for s in Scope::ALL {
        let others: Vec<Scope> = Scope::ALL.into_iter().filter(|x| *x != s).collect();
        tokens.push(Token::new(format!("all-but-{s}"), &format!("all-but-{s}-0123456789"), &others));
        tokens.push(Token::new(format!("only-{s}"), &format!("only-{s}-0123456789"), &[s]));
    }
    let s = crate::front_door::server_with_tokens(&tdb, Tokens::new(tokens)).await;
    let id = s
        .hub
        .ingest("payments", &payment("evt_routes", "1.00", "c"), IngestMeta::default())
        .await
        .expect("ingest")
        .id;
    // A downstream message, so that the core app's id finds one.
    crate::downstream_audit::seed(s.hub.db()).await;
    let routes: Vec<(String, &'static str, Access)> = hub_worker::http::endpoints(
        hub_worker::http::ingest::IngestState::new(s.hub.clone(), Default::default()),
        hub_worker::http::audit::AuditState::new(s.hub.clone(), ADMIN.to_owned()),
    )
    .into_iter()
    .map(|e| (e.method.to_string(), e.path, e.access))
    .collect();
    assert!(routes.len() >= 9, "{routes:?}");

    let mut public: Vec<String> =
        routes.iter().filter(|r| r.2 == Access::Public).map(|(m, p, _)| format!("{m} {p}")).collect();
    public.sort();
    assert_eq!(
        public,
        vec!["GET /healthz", "GET /readyz", "GET /v1/openapi.json", "POST /v1/ingest/{source}"],
        "a route made public must be added here on purpose"
    );

    let (_, doc) = s.get("/v1/openapi.json", None).await;
    for (method, path, access) in &routes {
        if *path == "/v1/openapi.json" {
            continue;
        }
        let op = &doc["paths"][path][method.to_ascii_lowercase()];
        assert!(op.is_object(), "{method} {path} is not in the OpenAPI document");
        let Access::Scope(scope) = *access else {
            assert!(op.get("security").is_none(), "{method} {path} is public but documented as secured");
            continue;
        };
        assert_eq!(
            op["security"],
            serde_json::json!([{ "token": [scope.as_str()] }]),
            "{method} {path}: the document names another scope"
        );
        // `payments` is a source, not a pulled one: the pulled-source routes answer 404 past
        // the guard (`pull_api` tests them with a pulled source).
        let url = path
            .replace("{id}", &id.to_string())
            .replace("{core_message_id}", crate::downstream_audit::CORE_ID)
            .replace("{source}", "payments")
            .replace("{run_id}", &id.to_string());
        let url = if method == "POST" { format!("{url}?from_layer=9") } else { url };
        let (status, _, problem) = call(&s, method, &url, Some(&format!("all-but-{scope}-0123456789"))).await;
        assert_eq!(status, 403, "{method} {path} without {scope}: {problem}");
        let (status, _, body) = call(&s, method, &url, Some(&format!("only-{scope}-0123456789"))).await;
        // 400 for the replay's layer 9: past the guard, refused by the handler.
        let past_guard = status == 200
            || status == 400
            || (status == 404
                && path.starts_with("/v1/sources/")
                && body.to_string().contains("not a pulled source"));
        assert!(past_guard, "{method} {path} with {scope}: {status} {body}");
        assert_eq!(call(&s, method, &url, None).await.0, 401, "{method} {path} without a token");
    }
    s.stop().await;
    tdb.cleanup().await;
}

/// Token configuration mistakes are refused before anything runs, naming the token.
#[test]
fn token_config_mistakes_are_refused() {
    let dir = std::env::temp_dir().join(format!("po-tokcfg-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let load = |v: serde_json::Value| -> Result<usize, String> {
        let cfg: hub_worker::config::HttpConfig = serde_json::from_value(v).map_err(|e| e.to_string())?;
        cfg.tokens().map(|t| t.iter().count()).map_err(|e| e.to_string())
    };
    let ok = tokens_config(
        &dir,
        &[("a", &["read"], "aaaaaaaaaaaaaaaa-1"), ("b", &["read"], "bbbbbbbbbbbbbbbb-2")],
    );
    assert_eq!(load(ok), Ok(2), "two tokens with the same scopes: a rotation");
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (tokens_config(&dir, &[("short", &["read"], "0123456789")]), "at least 16"),
        (tokens_config(&dir, &[("rawonly", &["raw"], "0123456789abcdef")]), "`raw` needs `read`"),
        (tokens_config(&dir, &[("none", &[], "0123456789abcdef")]), "at least one"),
        (tokens_config(&dir, &[("bad", &["write"], "0123456789abcdef")]), "unknown variant `write`"),
        (tokens_config(&dir, &[("bad name", &["read"], "0123456789abcdef")]), "token name"),
        (
            tokens_config(
                &dir,
                &[("x", &["read"], "same-0123456789abcdef"), ("y", &["operate"], "same-0123456789abcdef")],
            ),
            "the same token",
        ),
        (
            serde_json::json!({"listen": "x", "tokens": {"both": {"scopes": ["read"], "env": "A", "file": "/b"}}}),
            "exactly one of env and file",
        ),
        (
            serde_json::json!({"listen": "x", "tokens": {"neither": {"scopes": ["read"]}}}),
            "exactly one of env and file",
        ),
        (
            serde_json::json!({"listen": "x", "tokens": {"gone": {"scopes": ["read"], "file": dir.join("missing")}}}),
            "http.tokens.gone.file",
        ),
        (
            serde_json::json!({"listen": "x", "tokens": {"unset": {"scopes": ["read"], "env": "PO_TEST_UNSET_TOKEN_VAR"}}}),
            "PO_TEST_UNSET_TOKEN_VAR is not set",
        ),
        (
            serde_json::json!({"listen": "x", "admin_token_env": "PO_TEST_UNSET_TOKEN_VAR"}),
            "PO_TEST_UNSET_TOKEN_VAR is not set",
        ),
    ];
    for (v, says) in cases {
        let r = load(v.clone());
        assert!(r.as_ref().is_err_and(|e| e.contains(says)), "{v} gave {r:?}, expected `{says}`");
    }
    // One token per file: several lines would be several secrets under one name.
    let file = dir.join("two-lines");
    std::fs::write(&file, "first-0123456789abcdef\nsecond-0123456789abcdef\n").expect("write");
    let r = load(serde_json::json!({"listen": "x", "tokens": {"two": {"scopes": ["read"], "file": file}}}));
    assert!(r.as_ref().is_err_and(|e| e.contains("one token per file")), "{r:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
