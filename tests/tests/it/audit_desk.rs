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
            "/v1/ingest/{source}",
            "/v1/messages",
            "/v1/messages/{id}",
            "/v1/messages/{id}/replay",
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
        ("/v1/messages/{id}/replay", "post", format!("/v1/messages/{id}/replay?from_layer=1")),
        ("/v1/ingest/{source}", "post", "/v1/ingest/key".into()),
    ];
    for (path, method, url) in calls {
        let documented: Vec<String> =
            doc["paths"][path][method]["responses"].as_object().expect("responses").keys().cloned().collect();
        let req = match method {
            "get" => s.client.get(format!("{}{url}", s.base)),
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
                _ => s.client.post(format!("{}{url}", s.base)),
            };
            let status = req.send().await.expect("request").status().as_u16();
            assert_eq!(status, 401, "{method} {path} without a token");
        }
    }
    s.stop().await;
    tdb.cleanup().await;
}
