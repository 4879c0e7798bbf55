//! Event selection over real HTTP (issue 12): a GitHub-style source, every event type on one URL
//! with the type only in `X-GitHub-Event`. An opened issue and a push take their record kinds by
//! that header and reach the core app; an issue closed is accepted and dropped by a declared
//! rule (layer 1 `dropped`, the rule named, counted in `/v1/stats`), not rejected.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use hub_worker::Hub;
use hub_worker::http::auth::Tokens;
use hub_worker::http::ingest::IngestState;
use layer1_ingest::{Status, entity as l1};
use layer2_normalize::entity as l2;

use crate::on_both;
use crate::util::{Backend, Collect, TestDb, hub_on_files};

const SECRET: &str = "It's a Secret to Everybody";
const ADMIN: &str = "admin-token-for-event-selection";

const CORE: &str = r#"destinations = ["core.dev"]
[[message_types]]
type = "issue.opened"
version = "1"
schema = "issue.opened.v1.json"
[[message_types]]
type = "code.pushed"
version = "1"
schema = "code.pushed.v1.json"
"#;

const ISSUE_OPENED_V1: &str = r#"{"type": "object", "additionalProperties": false,
  "required": ["issue_id", "number", "title", "labels"],
  "properties": {"issue_id": {"type": "integer"}, "number": {"type": "integer"},
    "title": {"type": "string"}, "milestone": {"type": ["string", "null"]},
    "labels": {"type": "array", "items": {"type": "object", "required": ["name"]}}}}"#;

const CODE_PUSHED_V1: &str = r#"{"type": "object", "additionalProperties": false,
  "required": ["ref", "head", "pushed_at"],
  "properties": {"ref": {"type": "string"}, "head": {"type": "string"},
    "pushed_at": {"type": "string"}, "repository_id": {"type": "integer"}}}"#;

/// GitHub's issue as this integration reads it (the rest of the payload is ignored).
const GH_ISSUE: &str = r#"{"type": "object", "required": ["action", "issue"],
  "properties": {"action": {"type": "string"},
    "issue": {"type": "object", "required": ["id", "number", "title", "labels"],
      "properties": {"id": {"type": "integer"}, "number": {"type": "integer"},
        "title": {"type": "string"}, "labels": {"type": "array"}}}}}"#;

const GH_PUSH: &str = r#"{"type": "object", "required": ["ref", "after", "head_commit"],
  "properties": {"ref": {"type": "string"}, "after": {"type": "string"},
    "head_commit": {"type": "object", "required": ["timestamp"]}}}"#;

fn github_toml(secret_file: &Path) -> String {
    format!(
        r#"source = "github"
description = "GitHub repository webhooks: one URL, the event type in X-GitHub-Event"

[ingress]
verify = "github"
secrets_file = {secret_file:?}

[[drop]]
name = "issues-not-opened"
when = {{ all = [ {{ header = "X-GitHub-Event", equals = "issues" }},
                 {{ not = {{ pointer = "/action", equals = "opened" }} }} ] }}

[kinds.issue_opened]
schema = "gh-issue.json"
schema_version = "1"
source_ref = "/issue/id"
when = {{ all = [ {{ header = "X-GitHub-Event", equals = "issues" }}, {{ pointer = "/action", equals = "opened" }} ] }}

[kinds.issue_opened.mapping]
name = "github-issue-opened"
version = "1"
message_type = "issue.opened"
type_version = "1"
on_unmapped = "ignore"
fields = {{ "/issue_id" = {{ from = "/issue/id" }}, "/number" = {{ from = "/issue/number" }}, "/title" = {{ from = "/issue/title" }}, "/milestone" = {{ from = "/issue/milestone/title" }}, "/labels" = {{ each = "/issue/labels", fields = {{ "/name" = {{ from = "/name" }} }} }} }}

[kinds.push]
schema = "gh-push.json"
schema_version = "1"
source_ref = "/after"
when = {{ header = "X-GitHub-Event", equals = "push" }}

[kinds.push.mapping]
name = "github-push"
version = "1"
message_type = "code.pushed"
type_version = "1"
on_unmapped = "ignore"
fields = {{ "/ref" = {{ from = "/ref" }}, "/head" = {{ from = "/after" }}, "/pushed_at" = {{ from = "/head_commit/timestamp" }}, "/repository_id" = {{ from = "/repository/id" }} }}

[[routes]]
type = "*"
destination = "core.dev"
"#
    )
}

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/github").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// GitHub's request headers for `body`: the signature as GitHub computes it (HMAC-SHA256 of the
/// body with the webhook secret, hex), the delivery id and the event type.
fn github_headers(body: &[u8], event: &str, delivery: &str) -> Vec<(&'static str, String)> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(body);
    vec![
        ("x-hub-signature-256", format!("sha256={}", hex::encode(mac.finalize().into_bytes()))),
        ("x-github-event", event.to_owned()),
        ("x-github-delivery", delivery.to_owned()),
        ("user-agent", "GitHub-Hookshot/044aadd".to_owned()),
    ]
}

struct Github {
    base: String,
    hub: Hub,
    core: Arc<Collect>,
    client: reqwest::Client,
    cancel: CancellationToken,
    dir: PathBuf,
}

impl Github {
    /// A hub running the GitHub integration from its file, its front door and audit desk on
    /// HTTP, and a core app taking `core.dev`.
    async fn start(url: &str) -> Github {
        let dir = std::env::temp_dir().join(format!("po-github-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let secret = dir.join("github.secret");
        std::fs::write(&secret, format!("{SECRET}\n")).expect("secret");
        for (name, text) in [
            ("core.toml", CORE.to_owned()),
            ("issue.opened.v1.json", ISSUE_OPENED_V1.to_owned()),
            ("code.pushed.v1.json", CODE_PUSHED_V1.to_owned()),
            ("gh-issue.json", GH_ISSUE.to_owned()),
            ("gh-push.json", GH_PUSH.to_owned()),
            ("github.toml", github_toml(&secret)),
        ] {
            std::fs::write(dir.join(name), text).expect("write");
        }
        let loaded = hub_worker::files::load_dir(&dir, true);
        assert!(loaded.diagnostics.is_empty(), "{:#?}", loaded.diagnostics);
        let ingress = loaded.integrations[0].ingress.as_ref().expect("[ingress]");
        let doors = HashMap::from([("github".to_owned(), ingress.door("github").expect("door"))]);

        let (hub, core, cancel) = hub_on_files(url, &dir, &["core.dev"]).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let audit = hub_worker::http::audit::AuditState::with_tokens(hub.clone(), Tokens::admin(ADMIN));
        let app = hub_worker::http::router(IngestState::new(hub.clone(), doors), audit);
        tokio::spawn(hub_worker::http::serve(listener, app, cancel.clone()));
        Github { base, hub, core, client: reqwest::Client::new(), cancel, dir }
    }

    /// Posts `body` as GitHub would; the answer's status and the stored message id.
    async fn deliver(&self, body: &[u8], event: &str, delivery: &str) -> (u16, uuid::Uuid) {
        let mut req = self
            .client
            .post(format!("{}/v1/ingest/github", self.base))
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (k, v) in github_headers(body, event, delivery) {
            req = req.header(k, v);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let json: serde_json::Value = resp.json().await.expect("json answer");
        let id =
            json["id"].as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{status} {json}"));
        (status, id)
    }

    async fn get(&self, path: &str) -> serde_json::Value {
        let resp =
            self.client.get(format!("{}{path}", self.base)).bearer_auth(ADMIN).send().await.expect("request");
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        resp.json().await.expect("json")
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.hub.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn github_events_are_selected_by_header_and_dropped_by_rule(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let gh = Github::start(&tdb.url).await;
    let opened = fixture("issues.opened.json");
    let closed = fixture("issues.closed.json");
    let push = fixture("push.json");
    let (s1, opened_id) = gh.deliver(&opened, "issues", "72d3162e-cc78-11e3-81ab-4c9367dc0958").await;
    let (s2, closed_id) = gh.deliver(&closed, "issues", "9a1c5e30-cc79-11e3-8a4f-9d3c1f2b7e10").await;
    let (s3, push_id) = gh.deliver(&push, "push", "c4f0a2d8-cc79-11e3-9b6e-2a7d5e8f1c34").await;
    assert_eq!((s1, s2, s3), (202, 202, 202), "all three accepted");
    assert!(gh.hub.wait_settled(Duration::from_secs(30)).await.expect("settle"), "did not settle");

    let db = gh.hub.db().clone();
    let raw = |id: uuid::Uuid| {
        let db = db.clone();
        async move { l1::Entity::find_by_id(id).one(&db).await.expect("db").expect("layer 1 row") }
    };
    // The issue closed: accepted, then dropped by the rule, with no layer 2 rows.
    let dropped = raw(closed_id).await;
    assert_eq!(dropped.status, Status::Dropped);
    assert_eq!(dropped.last_error.as_deref(), Some("dropped by rule `issues-not-opened`"));
    let children = l2::Entity::find().filter(l2::Column::OriginId.eq(closed_id)).all(gh.hub.db()).await;
    assert_eq!(children.expect("l2").len(), 0);
    // The header the selection read is the stored one.
    assert!(dropped.headers.contains(r#""x-github-event":"issues""#), "{}", dropped.headers);

    // The opened issue and the push took their kinds by the header, and reached the core app.
    for (id, kind) in [(opened_id, "issue_opened"), (push_id, "push")] {
        assert_eq!(raw(id).await.status, Status::Forwarded);
        let rows = l2::Entity::find().filter(l2::Column::OriginId.eq(id)).all(gh.hub.db()).await.expect("l2");
        assert_eq!(rows.iter().map(|r| r.record_kind.as_str()).collect::<Vec<_>>(), [kind]);
    }
    let got = gh.core.got.lock().expect("lock").clone();
    assert_eq!(got.len(), 2, "the dropped event sends nothing");
    let issue = got.iter().find(|m| m.headers.message_type == "issue.opened").expect("issue.opened");
    assert_eq!(issue.body["issue_id"], serde_json::json!(444500041));
    assert_eq!(issue.body["title"], "Umlaut im Straßennamen wird falsch gespeichert — «Zürich» 🐛");
    assert_eq!(issue.body["milestone"], "v1.0");
    assert_eq!(issue.body["labels"], serde_json::json!([{"name": "bug"}, {"name": "i18n"}]));
    let pushed = got.iter().find(|m| m.headers.message_type == "code.pushed").expect("code.pushed");
    assert_eq!(pushed.body["pushed_at"], "2019-05-15T08:40:55-07:00", "the offset as GitHub wrote it");
    assert_eq!(pushed.body["head"], "a10867b14bb761a232cd80139fbd4c0d33264240");

    // The audit desk: the dropped row says which rule; the stats count it per source.
    let m = gh.get(&format!("/v1/messages/{closed_id}")).await;
    let entries = m["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{m}");
    assert_eq!(
        (entries[0]["status"].as_str(), entries[0]["last_error"].as_str()),
        (Some("dropped"), Some("dropped by rule `issues-not-opened`"))
    );
    let listed = gh.get("/v1/messages?layer=1&status=dropped").await;
    let items = listed["items"].as_array().expect("items");
    assert_eq!(
        items.iter().map(|i| i["id"].as_str()).collect::<Vec<_>>(),
        [Some(closed_id.to_string().as_str())]
    );
    let stats = gh.get("/v1/stats").await;
    let count = |status: &str| {
        stats["counts"]
            .as_array()
            .expect("counts")
            .iter()
            .filter(|c| c["layer"] == "Raw" && c["source"] == "github" && c["status"] == status)
            .filter_map(|c| c["count"].as_i64())
            .sum::<i64>()
    };
    assert_eq!((count("dropped"), count("forwarded"), count("rejected")), (1, 2, 0), "{stats}");

    // A dropped event is final, and replayable like a rejected one: the copy, read by the same
    // rule, is dropped again.
    let resp = gh
        .client
        .post(format!("{}/v1/messages/{closed_id}/replay?from_layer=1", gh.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("replay");
    assert_eq!(resp.status().as_u16(), 202);
    assert!(gh.hub.wait_settled(Duration::from_secs(30)).await.expect("settle"), "did not settle");
    let copies = l1::Entity::find().filter(l1::Column::ParentId.eq(closed_id)).all(gh.hub.db()).await;
    let copies = copies.expect("copies");
    assert_eq!(copies.len(), 1);
    assert_eq!(
        (copies[0].status, copies[0].last_error.as_deref()),
        (Status::Dropped, Some("dropped by rule `issues-not-opened`"))
    );
    gh.stop().await;
    tdb.cleanup().await;
}

on_both!(github_events_are_selected_by_header_and_dropped_by_rule);
