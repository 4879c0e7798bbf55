//! Pulled sources (issue 13), against a real HTTP server started here: a shop's orders API
//! whose data set changes between runs, in every pagination style, with faults injected (500s,
//! 429 with `Retry-After`, slow pages, a worker aborted mid-run, bodies that are not JSON or too
//! large, cursors going backwards, pagination loops), on SQLite and PostgreSQL.
//!
//! "Taken exactly once" is checked where it matters: the layer 2 records of the source, one per
//! (order id, `updated_at`), and the core messages the core app received.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use tokio_util::sync::CancellationToken;

use hub_worker::pull::{PullSettings, RunOutcome, Schedule, SyncMode, Trigger};
use hub_worker::{Error, Hub};
use layer1_ingest::Failure;
use layer1_ingest::deliver::{Auth, Secret};
use layer1_ingest::json::Value;
use layer1_ingest::pull::{Pagination, PullSpec, QueryValue};
use layer2_normalize::{DeclaredKind, DeclaredNormalizer, JsonSchema};
use layer3_translate::{CoreMessage, Fidelity, RecordInput, Translation, Translator};
use layer4_dispatch::{InProcessTransport, Receiver, Route};

use crate::util::{Backend, Collect, TestDb, test_settings};

const SOURCE: &str = "shop";
const QUEUE: &str = "core.orders";
const TOKEN: &str = "shop-token-s3cret";

/// One order as the shop serves it: its JSON is written here, numbers as text.
#[derive(Clone)]
struct Order {
    id: String,
    updated_at: String,
    total: String,
}

impl Order {
    fn json(&self) -> String {
        format!(
            r#"{{"id":{},"number":"SO-{}","updated_at":"{}","total":{},"currency":"EUR"}}"#,
            self.id, self.id, self.updated_at, self.total
        )
    }
}

/// What the server does with one request (by its number, 1 for the first).
#[derive(Clone)]
enum Fault {
    Status(u16, Option<&'static str>),
    Body(Vec<u8>),
    Slow(Duration),
}

#[derive(Default)]
struct Shop {
    orders: Vec<Order>,
    faults: HashMap<usize, Fault>,
    /// Every request: its path and query.
    log: Vec<String>,
    in_flight: usize,
    most_in_flight: usize,
    /// The listing answers records older than `updated_since` (a broken API).
    ignore_since: bool,
    /// The cursor style answers this cursor forever (a pagination loop).
    loop_cursor: bool,
    /// The bearer token the listing wants, when not [`TOKEN`] (an OAuth2 one).
    token: Option<String>,
    /// Token requests to `/oauth/token`.
    token_requests: usize,
}

type Shared = Arc<Mutex<Shop>>;

fn ts(minute: u32) -> String {
    format!("2026-11-22T10:{minute:02}:00Z")
}

/// `n` orders, ids 1..=n, updated one minute apart.
fn orders(n: u32) -> Vec<Order> {
    (1..=n).map(|i| Order { id: i.to_string(), updated_at: ts(i % 60), total: format!("{i}.50") }).collect()
}

async fn listing(
    State(shop): State<Shared>,
    Path(style): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let want = shop.lock().expect("lock").token.clone().unwrap_or_else(|| TOKEN.to_owned());
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {want}")) {
        return (StatusCode::UNAUTHORIZED, "no token").into_response();
    }
    let fault = {
        let mut s = shop.lock().expect("lock");
        s.log.push(uri.to_string());
        s.in_flight += 1;
        s.most_in_flight = s.most_in_flight.max(s.in_flight);
        let n = s.log.len();
        s.faults.get(&n).cloned()
    };
    if let Some(Fault::Slow(d)) = &fault {
        tokio::time::sleep(*d).await;
    }
    let out = answer(&shop, &style, &q, fault);
    shop.lock().expect("lock").in_flight -= 1;
    out
}

fn answer(shop: &Shared, style: &str, q: &BTreeMap<String, String>, fault: Option<Fault>) -> Response {
    match fault {
        Some(Fault::Status(code, retry_after)) => {
            let mut r =
                (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), "try later")
                    .into_response();
            if let Some(after) = retry_after {
                r.headers_mut().insert("retry-after", HeaderValue::from_static(after));
            }
            return r;
        }
        Some(Fault::Body(b)) => return ([("content-type", "application/json")], b).into_response(),
        _ => {}
    }
    let s = shop.lock().expect("lock");
    let since = q.get("updated_since");
    let mut list: Vec<&Order> =
        s.orders.iter().filter(|o| s.ignore_since || since.is_none_or(|t| &o.updated_at >= t)).collect();
    list.sort_by(|a, b| (&a.updated_at, a.id.len(), &a.id).cmp(&(&b.updated_at, b.id.len(), &b.id)));
    let num = |k: &str, d: usize| q.get(k).and_then(|v| v.parse::<usize>().ok()).unwrap_or(d);
    let (offset, size) = match style {
        "cursor" => (
            q.get("cursor").and_then(|c| c.strip_prefix('o')).and_then(|c| c.parse().ok()).unwrap_or(0),
            num("limit", 10),
        ),
        "next" | "link" | "gh" => (num("offset", 0), 10),
        "pages" => ((num("page", 1).saturating_sub(1)) * num("per_page", 10), num("per_page", 10)),
        "offset" => (num("offset", 0), num("limit", 10)),
        _ => (0, usize::MAX),
    };
    let page: Vec<String> = list.iter().skip(offset).take(size).map(|o| o.json()).collect();
    let more = offset.saturating_add(size) < list.len();
    let records = format!("[{}]", page.join(","));
    let since_q = since.map(|t| format!("&updated_since={t}")).unwrap_or_default();
    let body = match style {
        "cursor" => {
            let next = if s.loop_cursor {
                "\"o0\"".to_owned()
            } else if more {
                format!("\"o{}\"", offset + size)
            } else {
                "null".into()
            };
            format!(r#"{{"orders":{records},"meta":{{"next_cursor":{next}}}}}"#)
        }
        // GitHub's style: the page is the array, the next page is in the Link header.
        "gh" => records,
        "next" => {
            let next =
                if more { format!("\"/api/next?offset={}{since_q}\"", offset + size) } else { "null".into() };
            format!(r#"{{"orders":{records},"next":{next}}}"#)
        }
        _ => format!(r#"{{"orders":{records}}}"#),
    };
    let mut r = ([("content-type", "application/json")], body).into_response();
    if style == "link" && more {
        let link = format!(
            "</api/link?offset={}{since_q}>; rel=\"next\", </api/link?offset=0>; rel=\"first\"",
            offset + size
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            r.headers_mut().insert("link", v);
        }
    }
    r
}

/// The shop's OAuth2 token endpoint (client credentials, client authenticated with HTTP Basic).
async fn token(State(shop): State<Shared>, headers: HeaderMap, body: String) -> Response {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("hub-client:client-s3cret");
    let authorized =
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Basic {basic}"));
    if !authorized || !body.contains("grant_type=client_credentials") {
        return (StatusCode::UNAUTHORIZED, "bad client").into_response();
    }
    let mut s = shop.lock().expect("lock");
    s.token_requests += 1;
    let body = r#"{"access_token":"oauth-tok-1","token_type":"Bearer","expires_in":3600}"#;
    ([("content-type", "application/json")], body).into_response()
}

/// Starts the shop on a free port; returns its base URL.
async fn serve(shop: Shared) -> String {
    let app = axum::Router::new()
        .route("/api/{style}", axum::routing::get(listing))
        .route("/oauth/token", axum::routing::post(token))
        .with_state(shop);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// The spec of one pagination style against the shop at `base`.
fn spec(base: &str, style: &str) -> PullSpec {
    let mut s = PullSpec::new(format!("{base}/api/{style}"));
    s.records = Some("/orders".into());
    s.pagination = match style {
        "cursor" => {
            s.query.push(("limit".into(), QueryValue::Text("10".into())));
            Pagination::CursorInBody { next: "/meta/next_cursor".into(), param: "cursor".into() }
        }
        "next" => Pagination::NextLinkInBody { next: "/next".into() },
        "link" => Pagination::LinkHeader,
        "gh" => {
            s.records = None;
            Pagination::LinkHeader
        }
        "pages" => {
            s.page_size = Some(10);
            Pagination::PageNumber { param: "page".into(), start: 1, size_param: Some("per_page".into()) }
        }
        "offset" => {
            s.page_size = Some(10);
            Pagination::OffsetLimit { offset_param: "offset".into(), limit_param: "limit".into() }
        }
        _ => Pagination::None,
    };
    s
}

fn settings(spec: PullSpec, mode: SyncMode) -> PullSettings {
    let mut spec = spec;
    if mode.is_incremental() {
        spec.cursor_field = Some("/updated_at".into());
        spec.cursor_param = Some("updated_since".into());
    }
    let mut s = PullSettings::new(SOURCE, spec, Auth::Bearer { token: Secret::from(TOKEN) });
    s.mode = mode;
    s.primary_key = Some("/id".into());
    s.retry_base = Duration::from_millis(20);
    s.retry_max = Duration::from_secs(5);
    s.lease = Duration::from_secs(2);
    s
}

/// The core message of an order: the record as it is, keyed by id.
struct OrderChanged;

#[async_trait]
impl Translator for OrderChanged {
    fn source(&self) -> &str {
        SOURCE
    }
    fn record_kind(&self) -> &str {
        "order"
    }
    fn message_type(&self) -> Option<&str> {
        Some("order.changed")
    }
    async fn translate(&self, record: &RecordInput<'_>) -> Result<Translation, Failure> {
        Ok(Translation {
            message: CoreMessage::new("order.changed", "1", record.data.clone()),
            mapping_name: "orders".into(),
            mapping_version: "1".into(),
            fidelity: Fidelity::default(),
        })
    }
}

fn normalizer(records: &str) -> DeclaredNormalizer {
    let schema = JsonSchema::compile(serde_json::json!({
        "type": "object", "required": ["id", "updated_at", "total"]
    }))
    .expect("schema");
    let kind = DeclaredKind {
        name: "order".into(),
        schema_version: "1".into(),
        schema,
        source_ref: Some("/id".into()),
        when: None,
    };
    DeclaredNormalizer::new(SOURCE, Some(records.into()), None, 1000, vec![kind])
}

struct Setup {
    hub: Hub,
    core: Arc<Collect>,
    cancel: CancellationToken,
}

async fn hub(url: &str, pull: PullSettings, schedule: Option<Schedule>) -> Setup {
    let s = unstarted(url, pull, schedule).await;
    s.hub.start();
    s
}

/// [`hub`] without its stages started.
async fn unstarted(url: &str, pull: PullSettings, schedule: Option<Schedule>) -> Setup {
    // Where layer 2 finds the records: where the puller does (`""`: the page is the array).
    let records = pull.spec.records.clone().unwrap_or_default();
    let transport = Arc::new(InProcessTransport::default());
    let route = Route {
        message_type: "order.changed".into(),
        destination: QUEUE.into(),
        ordering_key: Some("/id".into()),
        ..Route::default()
    };
    // Short leases: a test aborts a worker, whose claimed rows come back soon after.
    let mut hs = test_settings();
    hs.stage.lease = Duration::from_secs(2);
    hs.publish.lease = Duration::from_secs(2);
    let hub = Hub::builder(url)
        .settings(hs)
        .transport(transport.clone())
        .normalizer(Arc::new(normalizer(&records)))
        .translator(Arc::new(OrderChanged))
        .routes([route])
        .pull(pull, schedule)
        .build()
        .await
        .expect("hub");
    let core = Arc::new(Collect::default());
    let cancel = CancellationToken::new();
    tokio::spawn(Receiver::new(transport, QUEUE, core.clone()).run(cancel.clone()));
    Setup { hub, core, cancel }
}

/// The (id, updated_at) of every layer 2 record of the source, in the order stored.
async fn records(hub: &Hub) -> Vec<(String, String)> {
    use layer2_normalize::entity::{Column, Entity};
    let rows = Entity::find()
        .filter(Column::Source.eq(SOURCE))
        .order_by_asc(Column::Id)
        .all(hub.db())
        .await
        .expect("layer 2");
    rows.iter()
        .map(|r| {
            let v = Value::parse(r.record.as_bytes()).expect("record");
            let at = v.pointer("/updated_at").and_then(Value::as_str).unwrap_or_default().to_owned();
            (r.source_ref.clone().unwrap_or_default(), at)
        })
        .collect()
}

/// Every (id, updated_at) exactly once, and nothing else.
fn exactly_once(got: &[(String, String)], want: &[Order]) {
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for g in got {
        *counts.entry(g.clone()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "taken more than once: {twice:?}");
    let want: BTreeMap<(String, String), usize> =
        want.iter().map(|o| ((o.id.clone(), o.updated_at.clone()), 1)).collect();
    let missing: Vec<_> = want.keys().filter(|k| !counts.contains_key(*k)).collect();
    let extra: Vec<_> = counts.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, extra {extra:?}");
}

async fn settle(hub: &Hub) {
    assert!(hub.wait_settled(Duration::from_secs(30)).await.expect("settle"), "the pipeline settled");
}

async fn sync(hub: &Hub) -> hub_worker::pull::RunReport {
    hub.sync_now(SOURCE, Trigger::Cli).await.expect("run")
}

#[tokio::test]
async fn incremental_runs_take_every_record_once_then_only_what_changed() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let tdb = TestDb::new(backend).await;
        let shop: Shared = Arc::new(Mutex::new(Shop { orders: orders(25), ..Shop::default() }));
        let base = serve(shop.clone()).await;
        let s = hub(&tdb.url, settings(spec(&base, "cursor"), SyncMode::IncrementalDedup), None).await;

        let first = sync(&s.hub).await;
        assert_eq!(
            (first.outcome, first.pages, first.records, first.skipped),
            (RunOutcome::Succeeded, 3, 25, 0)
        );
        assert_eq!(first.cursor_after.as_deref(), Some(ts(25).as_str()), "{first:?}");
        settle(&s.hub).await;
        let mut expected = orders(25);
        exactly_once(&records(&s.hub).await, &expected);
        assert_eq!(s.core.got.lock().expect("lock").len(), 25);

        // Two orders change, one is new; the API's `updated_since` is inclusive, so the order
        // at the saved cursor comes again and is not taken again.
        {
            let mut shop = shop.lock().expect("lock");
            for o in shop.orders.iter_mut().filter(|o| o.id == "3" || o.id == "17") {
                o.updated_at = ts(40);
                o.total = "99.99".into();
            }
            shop.orders.push(Order { id: "26".into(), updated_at: ts(41), total: "1.00".into() });
        }
        let before = shop.lock().expect("lock").log.len();
        let second = sync(&s.hub).await;
        assert_eq!(
            (second.outcome, second.records, second.skipped),
            (RunOutcome::Succeeded, 3, 1),
            "{second:?}"
        );
        assert_eq!(second.cursor_after.as_deref(), Some(ts(41).as_str()));
        let asked = shop.lock().expect("lock").log[before].clone();
        assert!(asked.contains(&format!("updated_since={}", ts(25).replace(':', "%3A"))), "{asked}");
        for o in expected.iter_mut().filter(|o| o.id == "3" || o.id == "17") {
            o.updated_at = ts(40);
        }
        let mut all = orders(25);
        all.extend(expected.iter().filter(|o| o.id == "3" || o.id == "17").cloned());
        all.push(Order { id: "26".into(), updated_at: ts(41), total: "1.00".into() });
        settle(&s.hub).await;
        exactly_once(&records(&s.hub).await, &all);

        // Nothing changed: the record at the cursor is served again and skipped, no page stored.
        let third = sync(&s.hub).await;
        assert_eq!((third.records, third.skipped, third.pages_stored), (0, 1, 0), "{third:?}");
        settle(&s.hub).await;
        exactly_once(&records(&s.hub).await, &all);
        assert_eq!(s.core.got.lock().expect("lock").len(), 28);

        // A reset reads everything again (the updated versions of 3 and 17 once more).
        s.hub.reset_pull_state(SOURCE).await.expect("reset");
        let again = sync(&s.hub).await;
        assert_eq!(again.records, 26, "{again:?}");
        s.cancel.cancel();
        s.hub.shutdown().await;
        tdb.cleanup().await;
    }
}

#[tokio::test]
async fn plain_incremental_takes_only_records_past_the_cursor() {
    let tdb = TestDb::new(Backend::Sqlite).await;
    let shop: Shared = Arc::new(Mutex::new(Shop { orders: orders(12), ..Shop::default() }));
    let base = serve(shop.clone()).await;
    let s = hub(&tdb.url, settings(spec(&base, "pages"), SyncMode::Incremental), None).await;
    assert_eq!(sync(&s.hub).await.records, 12);
    shop.lock().expect("lock").orders.push(Order { id: "13".into(), updated_at: ts(30), total: "5".into() });
    let second = sync(&s.hub).await;
    // Order 12 comes again (the API is inclusive) and is not past the cursor.
    assert_eq!((second.records, second.skipped), (1, 1), "{second:?}");
    settle(&s.hub).await;
    exactly_once(
        &records(&s.hub).await,
        &orders(13)
            .into_iter()
            .map(|mut o| {
                if o.id == "13" {
                    o.updated_at = ts(30);
                }
                o
            })
            .collect::<Vec<_>>(),
    );
    s.cancel.cancel();
    s.hub.shutdown().await;
    tdb.cleanup().await;
}

#[tokio::test]
async fn every_pagination_style_reads_the_listing_once() {
    let tdb = TestDb::new(Backend::Sqlite).await;
    for (style, requests) in
        [("cursor", 3), ("next", 3), ("link", 3), ("pages", 3), ("offset", 3), ("all", 1)]
    {
        let shop: Shared = Arc::new(Mutex::new(Shop { orders: orders(25), ..Shop::default() }));
        let base = serve(shop.clone()).await;
        let url = tdb.url.replace(".sqlite", &format!("-{style}.sqlite"));
        let s = hub(&url, settings(spec(&base, style), SyncMode::FullRefresh), None).await;
        let report = sync(&s.hub).await;
        assert_eq!(
            (report.outcome, report.records, report.requests),
            (RunOutcome::Succeeded, 25, requests),
            "{style}: {report:?}"
        );
        settle(&s.hub).await;
        exactly_once(&records(&s.hub).await, &orders(25));
        // A full refresh takes everything again, once more.
        let again = sync(&s.hub).await;
        assert_eq!(again.records, 25, "{style}");
        s.cancel.cancel();
        s.hub.shutdown().await;
        let _ = std::fs::remove_file(url.trim_start_matches("sqlite://").trim_end_matches("?mode=rwc"));
    }
    tdb.cleanup().await;
}

#[tokio::test]
async fn a_500_mid_run_fails_the_run_and_the_next_run_resumes() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let tdb = TestDb::new(backend).await;
        let mut faults = HashMap::new();
        faults.insert(2, Fault::Status(500, None));
        let shop: Shared = Arc::new(Mutex::new(Shop { orders: orders(25), faults, ..Shop::default() }));
        let base = serve(shop.clone()).await;
        let mut set = settings(spec(&base, "cursor"), SyncMode::IncrementalDedup);
        set.max_retries = 0;
        let s = hub(&tdb.url, set, None).await;
        let failed = sync(&s.hub).await;
        assert_eq!((failed.outcome, failed.pages, failed.records), (RunOutcome::Failed, 1, 10), "{failed:?}");
        let why = failed.error.clone().unwrap_or_default();
        assert!(why.contains("500") && why.contains("cursor=o10"), "{why}");
        let state = s.hub.pull_state(SOURCE).await.expect("state").expect("row");
        assert!(state.position.as_deref().is_some_and(|p| p.contains("o10")), "{state:?}");
        assert_eq!(state.cursor, None, "the cursor moves only when a listing ends");
        assert_eq!((state.runs, state.runs_failed, state.last_outcome.as_deref()), (1, 1, Some("failed")));

        let resumed = sync(&s.hub).await;
        assert!(resumed.resumed, "{resumed:?}");
        assert_eq!(
            (resumed.outcome, resumed.pages, resumed.records),
            (RunOutcome::Succeeded, 2, 15),
            "{resumed:?}"
        );
        assert_eq!(shop.lock().expect("lock").log[2], "/api/cursor?limit=10&cursor=o10");
        settle(&s.hub).await;
        exactly_once(&records(&s.hub).await, &orders(25));
        s.cancel.cancel();
        s.hub.shutdown().await;
        tdb.cleanup().await;
    }
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_for() {
    let tdb = TestDb::new(Backend::Postgres).await;
    let mut faults = HashMap::new();
    faults.insert(2, Fault::Status(429, Some("1")));
    faults.insert(4, Fault::Status(503, None));
    let shop: Shared = Arc::new(Mutex::new(Shop { orders: orders(25), faults, ..Shop::default() }));
    let base = serve(shop.clone()).await;
    let s = hub(&tdb.url, settings(spec(&base, "offset"), SyncMode::FullRefresh), None).await;
    let started = std::time::Instant::now();
    let report = sync(&s.hub).await;
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After: 1 was honoured");
    assert_eq!(
        (report.outcome, report.records, report.requests, report.retries),
        (RunOutcome::Succeeded, 25, 5, 2),
        "{report:?}"
    );
    let log = shop.lock().expect("lock").log.clone();
    assert_eq!(log[1], log[2], "the throttled page was asked again");
    settle(&s.hub).await;
    exactly_once(&records(&s.hub).await, &orders(25));

    // A Retry-After longer than the run waits fails the run, which the next run resumes.
    shop.lock().expect("lock").faults = HashMap::from([(7, Fault::Status(429, Some("3600")))]);
    let report = sync(&s.hub).await;
    assert_eq!((report.outcome, report.pages), (RunOutcome::Failed, 1), "{report:?}");
    assert!(report.error.as_deref().is_some_and(|e| e.contains("3600 s")), "{report:?}");
    let next = sync(&s.hub).await;
    assert!(next.resumed && next.outcome == RunOutcome::Succeeded, "{next:?}");
    s.cancel.cancel();
    s.hub.shutdown().await;
    tdb.cleanup().await;
}

#[tokio::test]
async fn oauth2_tokens_are_fetched_once_and_the_page_bound_pauses_a_run() {
    let tdb = TestDb::new(Backend::Sqlite).await;
    let shop: Shared = Arc::new(Mutex::new(Shop {
        orders: orders(25),
        token: Some("oauth-tok-1".into()),
        ..Shop::default()
    }));
    let base = serve(shop.clone()).await;
    let mut set = settings(spec(&base, "next"), SyncMode::IncrementalDedup);
    set.auth = Auth::OAuth2 {
        token_url: format!("{base}/oauth/token"),
        client_id: "hub-client".into(),
        client_secret: Secret::from("client-s3cret"),
        scope: Some("orders:read".into()),
        audience: None,
    };
    set.spec.max_pages = 2;
    let s = hub(&tdb.url, set, None).await;
    // Two pages, then the bound: the run stops with the listing unfinished...
    let first = sync(&s.hub).await;
    assert_eq!((first.outcome, first.pages, first.records), (RunOutcome::PageLimit, 2, 20), "{first:?}");
    assert_eq!(first.cursor_after, None, "the cursor moves when the listing ends");
    // ...and the next run continues it.
    let second = sync(&s.hub).await;
    assert!(second.resumed, "{second:?}");
    assert_eq!((second.outcome, second.pages, second.records), (RunOutcome::Succeeded, 1, 5), "{second:?}");
    assert_eq!(second.cursor_after.as_deref(), Some(ts(25).as_str()));
    assert_eq!(shop.lock().expect("lock").token_requests, 1, "the token is cached across pages and runs");
    settle(&s.hub).await;
    exactly_once(&records(&s.hub).await, &orders(25));
    s.cancel.cancel();
    s.hub.shutdown().await;
    tdb.cleanup().await;
}

#[tokio::test]
async fn the_rate_limit_spaces_the_requests() {
    let tdb = TestDb::new(Backend::Sqlite).await;
    let shop: Shared = Arc::new(Mutex::new(Shop { orders: orders(45), ..Shop::default() }));
    let base = serve(shop.clone()).await;
    let mut set = settings(spec(&base, "offset"), SyncMode::FullRefresh);
    set.rate_per_sec = Some(2.0);
    let s = hub(&tdb.url, set, None).await;
    let started = std::time::Instant::now();
    let report = sync(&s.hub).await;
    // Five requests at 2 per second, a burst of 2: the last three wait half a second each.
    assert_eq!((report.requests, report.records), (5, 45), "{report:?}");
    assert!(started.elapsed() >= Duration::from_millis(1400), "took {:?}", started.elapsed());
    s.cancel.cancel();
    s.hub.shutdown().await;
    tdb.cleanup().await;
}

#[tokio::test]
async fn an_aborted_worker_loses_and_repeats_nothing() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let tdb = TestDb::new(backend).await;
        let mut faults = HashMap::new();
        faults.insert(3, Fault::Slow(Duration::from_secs(30)));
        let shop: Shared = Arc::new(Mutex::new(Shop { orders: orders(45), faults, ..Shop::default() }));
        let base = serve(shop.clone()).await;
        let s = hub(&tdb.url, settings(spec(&base, "cursor"), SyncMode::IncrementalDedup), None).await;
        let run = s.hub.start_sync(SOURCE, Trigger::Manual).await.expect("started");
        // Two pages committed, the third hangs: the worker dies.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let st = s.hub.pull_state(SOURCE).await.expect("state").expect("row");
            if st.pages >= 2 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "two pages committed in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        s.hub.abort();
        s.cancel.cancel();

        // Another worker: the source is held until the dead run's lease (2 s) expires.
        let other = hub(&tdb.url, settings(spec(&base, "cursor"), SyncMode::IncrementalDedup), None).await;
        match other.hub.sync_now(SOURCE, Trigger::Cli).await {
            Err(Error::Conflict(m)) => assert!(m.contains(&run.to_string()), "{m}"),
            other => panic!("expected the source to be held, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let report = sync(&other.hub).await;
        assert!(report.resumed, "{report:?}");
        assert_eq!((report.outcome, report.records), (RunOutcome::Succeeded, 25), "{report:?}");
        let dead = other.hub.sync_run(run).await.expect("the aborted run");
        assert_eq!((dead.outcome.as_str(), dead.pages, dead.records), ("aborted", 2, 20));
        settle(&other.hub).await;
        exactly_once(&records(&other.hub).await, &orders(45));
        other.cancel.cancel();
        other.hub.shutdown().await;
        tdb.cleanup().await;
    }
}

#[tokio::test]
async fn two_workers_never_run_one_source_at_once() {
    let tdb = TestDb::new(Backend::Postgres).await;
    let faults = (1..=200).map(|n| (n, Fault::Slow(Duration::from_millis(30)))).collect();
    let shop: Shared = Arc::new(Mutex::new(Shop { orders: orders(30), faults, ..Shop::default() }));
    let base = serve(shop.clone()).await;
    let a = hub(&tdb.url, settings(spec(&base, "cursor"), SyncMode::IncrementalDedup), None).await;
    let b = hub(&tdb.url, settings(spec(&base, "cursor"), SyncMode::IncrementalDedup), None).await;
    let (mut ran, mut refused) = (0, 0);
    for round in 0..6 {
        if round == 3 {
            // New data half-way: some runs have something to take.
            shop.lock().expect("lock").orders.push(Order {
                id: "31".into(),
                updated_at: ts(50),
                total: "3".into(),
            });
        }
        let (x, y) = tokio::join!(a.hub.sync_now(SOURCE, Trigger::Cli), b.hub.sync_now(SOURCE, Trigger::Cli));
        for r in [x, y] {
            match r {
                Ok(report) => {
                    assert_eq!(report.outcome, RunOutcome::Succeeded, "{report:?}");
                    ran += 1;
                }
                Err(Error::Conflict(_)) => refused += 1,
                Err(e) => panic!("unexpected: {e}"),
            }
        }
    }
    assert!(ran >= 6, "at least one run per round ({ran} ran, {refused} refused)");
    assert_eq!(shop.lock().expect("lock").most_in_flight, 1, "never two requests at once");
    settle(&a.hub).await;
    let mut want = orders(30);
    want.push(Order { id: "31".into(), updated_at: ts(50), total: "3".into() });
    exactly_once(&records(&a.hub).await, &want);
    for s in [a, b] {
        s.cancel.cancel();
        s.hub.shutdown().await;
    }
    tdb.cleanup().await;
}

#[tokio::test]
async fn a_cron_schedule_fires_on_time_and_a_manual_sync_reports_its_id() {
    let tdb = TestDb::new(Backend::Sqlite).await;
    let shop: Shared = Arc::new(Mutex::new(Shop { orders: orders(5), ..Shop::default() }));
    let base = serve(shop.clone()).await;
    let schedule = Schedule::parse("*/2 * * * * *", None).expect("every 2 s");
    let s = hub(&tdb.url, settings(spec(&base, "all"), SyncMode::IncrementalDedup), Some(schedule)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let runs = loop {
        let runs = s.hub.sync_runs(SOURCE, None, 10).await.expect("runs");
        if runs.iter().filter(|r| r.finished_at.is_some()).count() >= 2 {
            break runs;
        }
        assert!(std::time::Instant::now() < deadline, "two scheduled runs in 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for r in runs.iter().filter(|r| r.finished_at.is_some()) {
        assert_eq!(r.trigger, "schedule");
        // Fired on an even second, and promptly.
        let fire = r.started_at.timestamp() - r.started_at.timestamp() % 2;
        let late = r.started_at.timestamp_millis() - fire * 1000;
        assert!((0..1500).contains(&late), "started {late} ms after its fire time: {r:?}");
    }
    let state = s.hub.pull_state(SOURCE).await.expect("state").expect("row");
    assert!(state.next_run_at.is_some_and(|t| t > chrono::Utc::now() - chrono::Duration::seconds(3)));

    // By hand: the id comes back at once and names a run that ends.
    let id = loop {
        match s.hub.start_sync(SOURCE, Trigger::Manual).await {
            Ok(id) => break id,
            Err(Error::Conflict(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("{e}"),
        }
    };
    let run = loop {
        let run = s.hub.sync_run(id).await.expect("run");
        if run.finished_at.is_some() {
            break run;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((run.trigger.as_str(), run.outcome.as_str()), ("manual", "succeeded"));
    settle(&s.hub).await;
    exactly_once(&records(&s.hub).await, &orders(5));
    s.cancel.cancel();
    s.hub.shutdown().await;
    tdb.cleanup().await;

    // A run started before the stages does not keep them from starting.
    let tdb = TestDb::new(Backend::Sqlite).await;
    let s = unstarted(&tdb.url, settings(spec(&base, "all"), SyncMode::FullRefresh), None).await;
    let id = s.hub.start_sync(SOURCE, Trigger::Manual).await.expect("started");
    s.hub.start();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.hub.sync_run(id).await.expect("run").finished_at.is_none() {
        assert!(std::time::Instant::now() < deadline, "the run ends");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    settle(&s.hub).await;
    assert_eq!(s.hub.sync_run(id).await.expect("run").outcome, "succeeded");
    exactly_once(&records(&s.hub).await, &orders(5));
    assert_eq!(s.core.got.lock().expect("lock").len(), 5, "the stages ran");
    s.cancel.cancel();
    s.hub.shutdown().await;
    tdb.cleanup().await;
}

#[tokio::test]
async fn big_integers_and_long_decimals_in_a_page_stay_exact() {
    let tdb = TestDb::new(Backend::Postgres).await;
    let big = Order {
        id: "12345678901234567890123".into(),
        updated_at: ts(1),
        total: "1234567.890123456789012345678901".into(),
    };
    let shop: Shared = Arc::new(Mutex::new(Shop { orders: vec![big.clone()], ..Shop::default() }));
    let base = serve(shop.clone()).await;
    let s = hub(&tdb.url, settings(spec(&base, "all"), SyncMode::IncrementalDedup), None).await;
    assert_eq!(sync(&s.hub).await.records, 1);
    settle(&s.hub).await;
    let got = s.core.got.lock().expect("lock").clone();
    assert_eq!(got.len(), 1);
    let body = got[0].body.to_json();
    assert!(body.contains(r#""id":12345678901234567890123"#), "{body}");
    assert!(body.contains(r#""total":1234567.890123456789012345678901"#), "{body}");
    // The page itself is on record byte for byte, with the request that fetched it.
    use layer1_ingest::entity::{Column, Entity};
    let page =
        Entity::find().filter(Column::Source.eq(SOURCE)).one(s.hub.db()).await.expect("db").expect("page");
    assert_eq!(page.body, format!(r#"{{"orders":[{}]}}"#, big.json()).into_bytes());
    assert!(
        page.headers.contains("hub-pull-request") && page.headers.contains("/api/all"),
        "{}",
        page.headers
    );
    assert!(!page.headers.contains(TOKEN), "no secret on record");
    s.cancel.cancel();
    s.hub.shutdown().await;
    tdb.cleanup().await;
}

#[tokio::test]
async fn bad_pages_stop_the_run_with_a_reason_and_lose_nothing_taken() {
    let tdb = TestDb::new(Backend::Sqlite).await;
    type Breakage = Box<dyn Fn(&mut Shop)>;
    let cases: Vec<(&str, Breakage, &str)> = vec![
        (
            "not json",
            Box::new(|s: &mut Shop| {
                s.faults.insert(2, Fault::Body(b"<html>502</html>".to_vec()));
            }),
            "page is not JSON",
        ),
        (
            "too large",
            Box::new(|s: &mut Shop| {
                s.faults.insert(2, Fault::Body(vec![b' '; 70_000]));
            }),
            "exceeds the limit of 65536 bytes",
        ),
        ("loop", Box::new(|s: &mut Shop| s.loop_cursor = true), "pagination loop"),
    ];
    for (name, setup, reason) in cases {
        let shop: Shared = Arc::new(Mutex::new(Shop { orders: orders(25), ..Shop::default() }));
        setup(&mut shop.lock().expect("lock"));
        let base = serve(shop.clone()).await;
        let url = tdb.url.replace(".sqlite", &format!("-{}.sqlite", name.replace(' ', "-")));
        let mut set = settings(spec(&base, "cursor"), SyncMode::IncrementalDedup);
        set.spec.max_page_bytes = 65_536;
        let s = hub(&url, set, None).await;
        let report = sync(&s.hub).await;
        assert_eq!(report.outcome, RunOutcome::Failed, "{name}: {report:?}");
        assert!(report.error.as_deref().is_some_and(|e| e.contains(reason)), "{name}: {report:?}");
        let run = s.hub.sync_run(report.run_id).await.expect("run");
        assert!(run.error.as_deref().is_some_and(|e| e.contains(reason)), "{name}: on record");
        settle(&s.hub).await;
        // The first page's records are kept, once.
        exactly_once(&records(&s.hub).await, &orders(10));
        // The next run starts where the failure left it and takes nothing twice.
        let again = sync(&s.hub).await;
        settle(&s.hub).await;
        if name == "loop" {
            assert_eq!((again.outcome, again.records), (RunOutcome::Failed, 0), "{again:?}");
            exactly_once(&records(&s.hub).await, &orders(10));
        } else {
            assert_eq!((again.outcome, again.records), (RunOutcome::Succeeded, 15), "{name}: {again:?}");
            exactly_once(&records(&s.hub).await, &orders(25));
        }
        s.cancel.cancel();
        s.hub.shutdown().await;
        let _ = std::fs::remove_file(url.trim_start_matches("sqlite://").trim_end_matches("?mode=rwc"));
    }

    // A cursor that goes backwards: the API was asked for records after the saved cursor and
    // sent older ones.
    let shop: Shared = Arc::new(Mutex::new(Shop { orders: orders(12), ..Shop::default() }));
    let base = serve(shop.clone()).await;
    let s = hub(&tdb.url, settings(spec(&base, "pages"), SyncMode::IncrementalDedup), None).await;
    assert_eq!(sync(&s.hub).await.records, 12);
    shop.lock().expect("lock").ignore_since = true;
    let report = sync(&s.hub).await;
    assert_eq!(report.outcome, RunOutcome::Failed, "{report:?}");
    let why = report.error.unwrap_or_default();
    assert!(why.contains("the cursor went backwards") && why.contains(&ts(1)), "{why}");
    settle(&s.hub).await;
    exactly_once(&records(&s.hub).await, &orders(12));
    s.cancel.cancel();
    s.hub.shutdown().await;
    tdb.cleanup().await;
}
