//! The webhook front door over real HTTP: each provider's scheme, signatures computed here with
//! the providers' published algorithms (not the server's code), and the problem answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use hmac::{Hmac, Mac};
use sea_orm::EntityTrait;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use hub_worker::Hub;
use hub_worker::config::SourceConfig;
use hub_worker::http::auth::Tokens;
use hub_worker::http::ingest::IngestState;
use hub_worker::integrations::payments::PaymentNormalizer;
use layer1_ingest::{Failure, Status, entity as l1};
use layer2_normalize::{Normalizer, RawInput, Record};

use crate::on_both;
use crate::util::{Backend, TestDb, payment};

/// The payment normalizer under another source name, one per scheme.
struct As(&'static str);

#[async_trait]
impl Normalizer for As {
    fn source(&self) -> &str {
        self.0
    }
    fn event_ref(&self, body: &[u8]) -> Option<String> {
        PaymentNormalizer.event_ref(body)
    }
    async fn normalize(&self, raw: &RawInput<'_>) -> Result<Vec<Record>, Failure> {
        PaymentNormalizer.normalize(raw).await
    }
}

const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const GH_SECRET: &str = "gh-secret-for-tests";
const STRIPE_SECRET: &str = "whsec_stripe_test_secret";
const API_KEY: &str = "key-0123456789abcdef";
const TOKEN: &str = "token-abcdef-0123456";
/// The audit desk's bearer token.
pub const ADMIN: &str = "admin-token-for-the-audit-desk";

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

pub struct Server {
    pub base: String,
    pub hub: Hub,
    pub transport: Arc<layer4_dispatch::InProcessTransport>,
    cancel: CancellationToken,
    pub client: reqwest::Client,
    dir: std::path::PathBuf,
}

pub async fn server(tdb: &TestDb) -> Server {
    server_with(tdb, hub_worker::http::ingest::DEFAULT_IN_FLIGHT).await
}

async fn server_with(tdb: &TestDb, in_flight: usize) -> Server {
    server_full(tdb, in_flight, Tokens::admin(ADMIN)).await
}

/// A server whose admin API accepts exactly `tokens`.
pub async fn server_with_tokens(tdb: &TestDb, tokens: Tokens) -> Server {
    server_full(tdb, hub_worker::http::ingest::DEFAULT_IN_FLIGHT, tokens).await
}

async fn server_full(tdb: &TestDb, in_flight: usize, tokens: Tokens) -> Server {
    server_at(&tdb.url, in_flight, tokens).await
}

/// The front door on the database at `url`.
async fn server_at(url: &str, in_flight: usize, tokens: Tokens) -> Server {
    let dir = std::env::temp_dir().join(format!("po-door-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let transport = Arc::new(layer4_dispatch::InProcessTransport::default());
    let mut b = crate::util::builder(url, transport.clone());
    for name in ["sw", "gh", "stripe", "key", "bearer"] {
        b = b.normalizer(Arc::new(As(name)));
    }
    let hub = b.build().await.expect("hub");
    let mut doors = HashMap::new();
    for (name, scheme, secret) in [
        ("sw", "standard-webhooks", SW_SECRET),
        ("gh", "github", GH_SECRET),
        ("stripe", "stripe", STRIPE_SECRET),
        ("key", "api-key", API_KEY),
        ("bearer", "bearer", TOKEN),
    ] {
        let file = dir.join(name);
        // Two secrets: a rotation in progress; the second is the live one.
        std::fs::write(&file, format!("old-{secret}-retired\n{secret}\n")).expect("secret file");
        let cfg: SourceConfig = serde_json::from_value(serde_json::json!({
            "verify": scheme,
            "secrets_file": file,
            "max_body_bytes": 4096,
            "read_timeout_secs": 1,
        }))
        .expect("source config");
        let cfg = if name == "sw" {
            // Standard Webhooks secrets are base64: the retired one must be too.
            std::fs::write(&file, format!("whsec_cmV0aXJlZC1rZXktcmV0aXJlZC1rZXktMTIzNDU=\n{secret}\n"))
                .expect("secret file");
            cfg
        } else {
            cfg
        };
        doors.insert(name.to_owned(), cfg.door(name).expect("door"));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let cancel = CancellationToken::new();
    let audit = hub_worker::http::audit::AuditState::with_tokens(hub.clone(), tokens);
    let app = hub_worker::http::router(IngestState::new(hub.clone(), doors).max_in_flight(in_flight), audit);
    tokio::spawn(hub_worker::http::serve(listener, app, cancel.clone()));
    Server { base, hub, transport, cancel, client: reqwest::Client::new(), dir }
}

impl Server {
    pub async fn post(
        &self,
        source: &str,
        body: &[u8],
        headers: &[(&str, String)],
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .client
            .post(format!("{}/v1/ingest/{source}", self.base))
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let problem = resp.headers().get("content-type").is_some_and(|c| c == "application/problem+json");
        let json: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
        if status >= 400 {
            assert!(problem, "errors are problem+json: {status} {json}");
        }
        (status, json)
    }

    async fn stored(&self) -> usize {
        l1::Entity::find().all(self.hub.db()).await.expect("rows").len()
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        self.hub.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Request headers to add.
type Headers = Vec<(&'static str, String)>;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn sw_headers(id: &str, ts: i64, body: &[u8], secret: &str) -> Vec<(&'static str, String)> {
    let key =
        base64::engine::general_purpose::STANDARD.decode(secret.trim_start_matches("whsec_")).expect("b64");
    let signed = [id.as_bytes(), b".", ts.to_string().as_bytes(), b".", body].concat();
    let sig = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, &signed));
    vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", format!("v1,{sig}")),
    ]
}

fn gh_headers(body: &[u8], secret: &str, delivery: &str) -> Vec<(&'static str, String)> {
    vec![
        ("x-hub-signature-256", format!("sha256={}", hex::encode(hmac_sha256(secret.as_bytes(), body)))),
        ("x-github-delivery", delivery.to_owned()),
        ("x-github-event", "push".to_owned()),
    ]
}

fn stripe_headers(ts: i64, body: &[u8], secret: &str) -> Vec<(&'static str, String)> {
    let signed = [ts.to_string().as_bytes(), b".", body].concat();
    vec![("stripe-signature", format!("t={ts},v1={}", hex::encode(hmac_sha256(secret.as_bytes(), &signed))))]
}

async fn each_scheme_accepts_good_and_refuses_bad_requests(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let s = server(&tdb).await;
    let body = payment("evt_door_1", "10.00", "cus_1");
    let tampered = payment("evt_door_1", "99.00", "cus_1");
    let t = now();

    // Each refused request: right status, nothing stored.
    let refused: Vec<(&str, &[u8], Headers, &str)> = vec![
        (
            "sw",
            &body,
            sw_headers("msg_1", t, &body, "whsec_YS13cm9uZy1rZXktb2YtZW5vdWdoLWxlbmd0aA=="),
            "signature",
        ),
        ("sw", &tampered, sw_headers("msg_1", t, &body, SW_SECRET), "signature"),
        ("sw", &body, sw_headers("msg_1", t - 3600, &body, SW_SECRET), "tolerance"),
        ("sw", &body, vec![], "missing header"),
        ("gh", &body, gh_headers(&body, "wrong", "d-1"), "signature"),
        ("gh", &tampered, gh_headers(&body, GH_SECRET, "d-1"), "signature"),
        ("gh", &body, vec![], "missing header"),
        ("stripe", &body, stripe_headers(t, &body, "whsec_wrong"), "signature"),
        ("stripe", &tampered, stripe_headers(t, &body, STRIPE_SECRET), "signature"),
        ("stripe", &body, stripe_headers(t - 3600, &body, STRIPE_SECRET), "tolerance"),
        ("stripe", &body, vec![], "missing header"),
        ("key", &body, vec![("x-api-key", "nope".into())], "not accepted"),
        ("key", &body, vec![], "missing header"),
        ("bearer", &body, vec![("authorization", "Bearer nope".into())], "not accepted"),
        ("bearer", &body, vec![], "missing header"),
    ];
    for (source, b, h, why) in &refused {
        let (status, problem) = s.post(source, b, h).await;
        assert_eq!(status, 401, "{source}: {problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(why), "{source}: `{detail}` should say {why}");
        assert!(!detail.contains("secret") && !detail.contains(STRIPE_SECRET), "{detail}");
    }
    assert_eq!(s.stored().await, 0, "nothing stored for refused requests");

    // Each accepted: 202 with the layer 1 id, the bytes stored as sent; again: 200, same id.
    let accepted: Vec<(&str, Vec<u8>, Headers)> = vec![
        ("sw", payment("evt_sw", "1.00", "c"), vec![]),
        ("gh", payment("evt_gh", "1.00", "c"), vec![]),
        ("stripe", payment("evt_st", "1.00", "c"), vec![]),
        ("key", payment("evt_key", "1.00", "c"), vec![("x-api-key", API_KEY.into())]),
        ("bearer", payment("evt_bearer", "1.00", "c"), vec![("authorization", format!("Bearer {TOKEN}"))]),
    ];
    for (source, b, extra) in &accepted {
        let h = match *source {
            "sw" => sw_headers("msg_ok", now(), b, SW_SECRET),
            "gh" => gh_headers(b, GH_SECRET, "delivery-ok"),
            "stripe" => stripe_headers(now(), b, STRIPE_SECRET),
            _ => extra.clone(),
        };
        let (status, answer) = s.post(source, b, &h).await;
        assert_eq!(status, 202, "{source}: {answer}");
        let id: uuid::Uuid = answer["id"].as_str().and_then(|i| i.parse().ok()).expect("id");
        let row = l1::Entity::find_by_id(id).one(s.hub.db()).await.expect("q").expect("stored");
        assert_eq!(&row.body, b, "byte for byte");
        let (again, second) = s.post(source, b, &h).await;
        assert_eq!((again, second["id"].as_str()), (200, answer["id"].as_str()), "{source}: duplicate");
        if *source == "key" || *source == "bearer" {
            assert!(!row.headers.contains(API_KEY) && !row.headers.contains(TOKEN), "credentials not stored");
        }
    }
    // The event id: from the scheme's header where it has one, else the body's `id`.
    let rows = l1::Entity::find().all(s.hub.db()).await.expect("rows");
    let refs: Vec<Option<&str>> = ["sw", "gh", "stripe"]
        .iter()
        .map(|src| rows.iter().find(|r| r.source == *src).and_then(|r| r.source_ref.as_deref()))
        .collect();
    assert_eq!(refs, vec![Some("msg_ok"), Some("delivery-ok"), Some("evt_st")]);
    assert_eq!(s.stored().await, 5);
    s.stop().await;
    tdb.cleanup().await;
}

async fn bad_requests_get_the_right_problem(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let s = server(&tdb).await;
    let key = vec![("x-api-key", API_KEY.to_owned())];

    let (status, p) = s.post("nowhere", b"{}", &key).await;
    assert_eq!(status, 404, "{p}");
    assert!(p["detail"].as_str().unwrap_or_default().contains("nowhere"));

    let big = vec![b' '; 5000];
    let (status, p) = s.post("key", &big, &key).await;
    assert_eq!(status, 413, "{p}");
    assert!(p["detail"].as_str().unwrap_or_default().contains("4096"));

    let resp = s
        .client
        .post(format!("{}/v1/ingest/key", s.base))
        .header("content-type", "text/plain")
        .header("x-api-key", API_KEY)
        .body("hello")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 415);
    assert_eq!(s.stored().await, 0);

    // Malformed JSON from an authenticated sender: stored, then rejected at layer 2 with the
    // reason. Nothing lost.
    s.hub.start();
    let (status, answer) = s.post("key", b"{\"id\": \"evt_broken\", \"object\": ", &key).await;
    assert_eq!(status, 202, "{answer}");
    let id: uuid::Uuid = answer["id"].as_str().and_then(|i| i.parse().ok()).expect("id");
    assert!(s.hub.wait_settled(Duration::from_secs(20)).await.expect("settle"));
    let row = l1::Entity::find_by_id(id).one(s.hub.db()).await.expect("q").expect("row");
    assert_eq!(row.status, Status::Rejected);
    assert!(row.last_error.as_deref().is_some_and(|e| e.contains("rule `json`")), "{:?}", row.last_error);
    s.stop().await;
    tdb.cleanup().await;
}

on_both!(each_scheme_accepts_good_and_refuses_bad_requests, bad_requests_get_the_right_problem);

/// The database goes away: the third party gets 503 with Retry-After and nothing half-stored;
/// when it is back, intake works again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_unavailable_is_503_and_recovers() {
    use sea_orm::{ConnectionTrait, Database, Statement};
    let tdb = TestDb::new(Backend::Postgres).await;
    let s = server(&tdb).await;
    let key = vec![("x-api-key", API_KEY.to_owned())];
    assert_eq!(s.post("key", &payment("evt_up_1", "1.00", "c"), &key).await.0, 202);

    let admin = Database::connect(crate::util::pg_admin_url()).await.expect("admin");
    let run = |sql: String| {
        let admin = &admin;
        async move {
            admin
                .execute_raw(Statement::from_string(admin.get_database_backend(), sql))
                .await
                .expect("admin sql")
        }
    };
    let name = tdb.name().to_owned();
    run(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
    run(format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")).await;

    let resp = s
        .client
        .post(format!("{}/v1/ingest/key", s.base))
        .header("content-type", "application/json")
        .header("x-api-key", API_KEY)
        .body(payment("evt_down", "1.00", "c"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let p: serde_json::Value = resp.json().await.expect("problem");
    assert!(p["detail"].as_str().unwrap_or_default().contains("nothing was stored"), "{p}");

    run(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
    assert_eq!(s.post("key", &payment("evt_down", "1.00", "c"), &key).await.0, 202, "the retry is stored");
    assert_eq!(s.stored().await, 2);
    s.stop().await;
    tdb.cleanup().await;
}

/// A sender that trickles its body gets 408 once the read timeout passes, and nothing is
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tdb = TestDb::new(Backend::Sqlite).await;
    let s = server(&tdb).await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "POST /v1/ingest/key HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-Api-Key: {API_KEY}\r\nContent-Length: 100\r\n\r\n{{"
    );
    conn.write_all(head.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(s.stored().await, 0);
    s.stop().await;
    tdb.cleanup().await;
}

/// Concurrent requests are bounded before anyone is authenticated: over the limit, 503 with
/// Retry-After at once; when a slot frees, intake goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tdb = TestDb::new(Backend::Sqlite).await;
    let s = server_with(&tdb, 1).await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    // One request holds the only slot: its body never completes (until the 1 s read timeout).
    let mut slow = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "POST /v1/ingest/key HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    slow.write_all(head.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let key = vec![("x-api-key", API_KEY.to_owned())];
    let (status, p) = s.post("key", &payment("evt_busy", "1.00", "c"), &key).await;
    assert_eq!(status, 503, "{p}");
    assert!(p["detail"].as_str().unwrap_or_default().contains("limit"), "{p}");
    let mut answer = vec![0u8; 512];
    let _ = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut answer)).await;
    let (status, _) = s.post("key", &payment("evt_busy", "1.00", "c"), &key).await;
    assert_eq!(status, 202, "the slot is free again");
    s.stop().await;
    tdb.cleanup().await;
}

/// Where [`CutProxy`] breaks the next transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Cut {
    Nowhere = 0,
    /// Right after `BEGIN`: the transaction's first statement never reaches the server.
    AfterBegin = 1,
    /// Right after `COMMIT` is done: the server committed, the answer never reaches the hub.
    AfterCommit = 2,
}

/// A TCP proxy in front of PostgreSQL that breaks one connection at a chosen point of a
/// transaction, as a database stop or a network cut does; everything else passes through.
/// The hub talks to it without TLS, so the simple-protocol `BEGIN` and `COMMIT` messages
/// (`Q`, length, text, NUL) can be seen.
struct CutProxy {
    addr: std::net::SocketAddr,
    armed: Arc<std::sync::atomic::AtomicU8>,
}

impl CutProxy {
    async fn start(upstream: String) -> CutProxy {
        use std::sync::atomic::AtomicU8;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let armed = Arc::new(AtomicU8::new(Cut::Nowhere as u8));
        let shared = armed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(&upstream).await.expect("upstream");
                tokio::spawn(CutProxy::pipe(client, server, shared.clone()));
            }
        });
        CutProxy { addr, armed }
    }

    fn arm(&self, cut: Cut) {
        self.armed.store(cut as u8, std::sync::atomic::Ordering::SeqCst);
    }

    /// A simple-protocol query message.
    fn query(sql: &str) -> Vec<u8> {
        let len = u32::try_from(4 + sql.len() + 1).expect("short");
        [&[b'Q'][..], &len.to_be_bytes(), sql.as_bytes(), &[0]].concat()
    }

    async fn pipe(
        client: tokio::net::TcpStream,
        server: tokio::net::TcpStream,
        armed: Arc<std::sync::atomic::AtomicU8>,
    ) {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let begin = CutProxy::query("BEGIN");
        let commit = CutProxy::query("COMMIT");
        let contains = |buf: &[u8], msg: &[u8]| buf.windows(msg.len()).any(|w| w == msg);
        let claim = |cut: Cut| {
            armed.compare_exchange(cut as u8, Cut::Nowhere as u8, Ordering::SeqCst, Ordering::SeqCst).is_ok()
        };
        // Set once this connection's COMMIT went to the server with the cut armed.
        let committed = AtomicBool::new(false);
        let upward = async {
            let mut cut_next = false;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if cut_next {
                    break;
                }
                let chunk = &buf[..n];
                cut_next = contains(chunk, &begin) && claim(Cut::AfterBegin);
                if contains(chunk, &commit) && claim(Cut::AfterCommit) {
                    committed.store(true, Ordering::SeqCst);
                }
                if sw.write_all(chunk).await.is_err() {
                    break;
                }
            }
        };
        let downward = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match sr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                // The answer to COMMIT: the server has committed; the hub never hears it.
                if committed.load(Ordering::SeqCst) {
                    break;
                }
                if cw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        };
        // Either way ending (or a cut) closes both connections: the halves drop here.
        tokio::select! {
            _ = upward => {}
            _ = downward => {}
        }
    }
}

/// Issue 9 item 5: a database error before the commit is "nothing was stored" (and nothing
/// is), one at the commit is "the outcome is unknown" (the row may well be stored), both 503
/// with Retry-After; the retry of the second is deduplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_is_answered_with_what_is_known() {
    use sea_orm::{ColumnTrait, QueryFilter};
    let tdb = TestDb::new(Backend::Postgres).await;
    let (head, tail) = tdb.url.split_once('@').expect("user@host in the URL");
    let (upstream, db) = tail.split_once('/').expect("host/db in the URL");
    let proxy = CutProxy::start(upstream.to_owned()).await;
    let url = format!("{head}@{}/{db}?sslmode=disable", proxy.addr);
    let s = server_at(&url, hub_worker::http::ingest::DEFAULT_IN_FLIGHT, Tokens::admin(ADMIN)).await;
    let post = |id: &'static str| {
        s.client
            .post(format!("{}/v1/ingest/key", s.base))
            .header("content-type", "application/json")
            .header("x-api-key", API_KEY)
            .body(payment(id, "1.00", "c"))
            .send()
    };
    let stored = |id: &'static str| {
        let hub = s.hub.clone();
        async move { l1::Entity::find().filter(l1::Column::SourceRef.eq(id)).all(hub.db()).await.expect("rows") }
    };

    proxy.arm(Cut::AfterBegin);
    let resp = post("evt_cut_before").await.expect("request");
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let p: serde_json::Value = resp.json().await.expect("problem");
    assert!(p["detail"].as_str().unwrap_or_default().contains("nothing was stored"), "{p}");
    assert!(stored("evt_cut_before").await.is_empty(), "nothing was stored, as the answer said");

    proxy.arm(Cut::AfterCommit);
    let resp = post("evt_cut_after").await.expect("request");
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let p: serde_json::Value = resp.json().await.expect("problem");
    let detail = p["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("the outcome is unknown")
            && detail.contains("retrying is safe")
            && !detail.contains("nothing was stored"),
        "{p}"
    );
    let rows = stored("evt_cut_after").await;
    assert_eq!(rows.len(), 1, "the commit went through although the answer was lost");

    // The retries: the lost one is a duplicate of the stored row, the refused one is new.
    let resp = post("evt_cut_after").await.expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let a: serde_json::Value = resp.json().await.expect("answer");
    assert_eq!(a["id"].as_str(), Some(rows[0].id.to_string().as_str()), "{a}");
    assert_eq!(post("evt_cut_before").await.expect("request").status().as_u16(), 202);
    assert_eq!(s.stored().await, 2);
    s.stop().await;
    tdb.cleanup().await;
}

/// Issue 9 item 7 at the front door: a corrected resend of a refused event is 202 with
/// `resend_of`; other bytes under the id of an event that stands are 409 naming both rows.
async fn resends_and_conflicts_are_answered(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let s = server(&tdb).await;
    let key = vec![("x-api-key", API_KEY.to_owned())];
    let (status, first) = s.post("key", &payment("evt_door", "1,00", "c"), &key).await;
    assert_eq!(status, 202, "{first}");
    let first_id = first["id"].as_str().expect("id").to_owned();
    // The hub's stages are not running here: refuse the row as layer 2 would.
    {
        use sea_orm::sea_query::Expr;
        l1::Entity::update_many()
            .col_expr(l1::Column::Status, Expr::value(Status::Rejected.as_str()))
            .exec(s.hub.db())
            .await
            .expect("reject");
    }
    let (status, fixed) = s.post("key", &payment("evt_door", "1.00", "c"), &key).await;
    assert_eq!(status, 202, "{fixed}");
    assert_eq!(fixed["resend_of"].as_str(), Some(first_id.as_str()), "{fixed}");
    assert_eq!(fixed["duplicate"], false);
    let fixed_id = fixed["id"].as_str().expect("id").to_owned();
    assert_ne!(fixed_id, first_id);

    let (status, again) = s.post("key", &payment("evt_door", "1.00", "c"), &key).await;
    assert_eq!((status, again["id"].as_str()), (200, Some(fixed_id.as_str())), "{again}");
    assert!(again.get("resend_of").is_none(), "{again}");

    let (status, p) = s.post("key", &payment("evt_door", "2.00", "c"), &key).await;
    assert_eq!(status, 409, "{p}");
    assert_eq!(p["existing_id"].as_str(), Some(fixed_id.as_str()), "{p}");
    let conflict: uuid::Uuid = p["id"].as_str().and_then(|i| i.parse().ok()).expect("conflict id");
    let row = l1::Entity::find_by_id(conflict).one(s.hub.db()).await.expect("query").expect("kept");
    assert_eq!(row.status, Status::Rejected);
    assert_eq!(s.stored().await, 3);
    s.stop().await;
    tdb.cleanup().await;
}

on_both!(resends_and_conflicts_are_answered);
