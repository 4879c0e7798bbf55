//! `[pull]` in integration files: a good pulled source loads and registers; each mistake is
//! reported at the line of the key it is about; the shop example reads its fixture page.

use std::path::Path;

use layer1_ingest::json::Value;
use layer2_normalize::{Normalizer, RawInput};
use layer3_translate::{RecordInput, Translator};

use super::scratch::ScratchDir;
use super::*;
use crate::pull::PaginationConfig;

const CORE: &str = r#"destinations = ["core.orders"]
[[message_types]]
type = "order.changed"
version = "1"
schema = "any.json"
"#;

/// One order: `additionalProperties: false`, so a pointer it does not declare cannot exist.
const ORDER: &str = r#"{"type": "object", "additionalProperties": false, "required": ["id", "updated_at"],
  "properties": {"id": {"type": "integer"}, "updated_at": {"type": "string"},
    "customer": {"type": "object"}, "total": {"type": "string"}}}"#;

/// A page: the orders and what the API says about the listing.
const PAGE: &str = r#"{"type": "object", "additionalProperties": false, "required": ["orders"],
  "properties": {"orders": {"type": "array"},
    "meta": {"type": "object", "additionalProperties": false, "properties": {
      "next_cursor": {"type": ["string", "null"]}, "next_url": {"type": ["string", "null"]},
      "count": {"type": "integer"}, "links": {"type": "object"}}}}}"#;

const GOOD: &str = r#"source = "shop"

[pull]
url = "https://shop.example/api/orders"
schedule = "0 */5 * * * *"
timezone = "Europe/Paris"
mode = "incremental_dedup"
cursor_field = "/updated_at"
cursor_param = "updated_since"
primary_key = "/id"
rate_per_sec = 4.0

[pull.query]
limit = 100

[pull.pagination]
style = "cursor"
next = "/meta/next_cursor"
param = "page_info"

[pull.auth]
kind = "bearer"
token = { file = "TOKEN_FILE" }

[payload]
schema = "page.json"
records = "/orders"

[kinds.order]
schema = "order.json"
schema_version = "1"
source_ref = "/id"
[kinds.order.mapping]
name = "order"
version = "1"
message_type = "order.changed"
type_version = "1"
on_unmapped = "ignore"
fields = { "/order_id" = { from = "/id", convert = "string" } }

[[routes]]
type = "order.changed"
destination = "core.orders"
ordering_key = "/order_id"
"#;

/// A scratch integrations directory with the catalogue, the schemas and a token file.
struct Dir(ScratchDir);

impl Dir {
    fn new() -> Self {
        let d = Self(ScratchDir::new("po-pull"));
        d.0.write("core.toml", CORE);
        d.0.write("any.json", "{}");
        d.0.write("order.json", ORDER);
        d.0.write("page.json", PAGE);
        d.0.write("shop.token", "shop-api-token-0123456789\n");
        d
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// `text` (its `TOKEN_FILE` the scratch token file) as `shop.toml`; the text written.
    fn write_shop(&self, text: &str) -> String {
        let token = self.path().join("shop.token").display().to_string();
        let text = text.replace("TOKEN_FILE", &token);
        self.0.write("shop.toml", &text);
        text
    }

    /// Loads the directory with `shop.toml` as given (secrets checked or not); its problems as
    /// `check` prints them, and the text written.
    fn problems(&self, text: &str, secrets: bool) -> (Vec<String>, String) {
        let text = self.write_shop(text);
        let loaded = load_dir(self.path(), secrets);
        (loaded.diagnostics.iter().map(ToString::to_string).collect(), text)
    }
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1).unwrap_or_else(|| panic!("`{needle}`"))
}

/// Exactly one problem, `shop.toml:<line of marker>: error: ...` containing every `says`.
fn assert_one(dir: &Dir, text: &str, problems: &[String], marker: &str, says: &[&str]) {
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let want = format!("{}:{}: error: ", dir.path().join("shop.toml").display(), line(text, marker));
    let p = &problems[0];
    assert!(p.starts_with(&want), "expected `{want}...`, got: {p}");
    for s in says {
        assert!(p.contains(s), "`{s}` missing in: {p}");
    }
}

/// A good `[pull]` loads into the integration with `[payload] records` as its records, builds its
/// settings and schedule, and registers: the hub builds.
#[tokio::test]
async fn a_good_pulled_source_loads_and_registers() {
    let dir = Dir::new();
    let (problems, _) = dir.problems(GOOD, true);
    assert!(problems.is_empty(), "{problems:#?}");
    let loaded = load_dir(dir.path(), true);
    let shop = &loaded.integrations[0];
    let pull = shop.pull.as_ref().expect("the [pull] is kept");
    assert_eq!(pull.records.as_deref(), Some("/orders"), "records from [payload]");
    assert!(matches!(&pull.pagination, PaginationConfig::Cursor { next, .. } if next == "/meta/next_cursor"));
    let settings = pull.settings("shop").expect("settings");
    assert_eq!(settings.spec.records.as_deref(), Some("/orders"));
    assert_eq!(settings.primary_key.as_deref(), Some("/id"));
    let schedule = pull.schedule().expect("schedule").expect("a schedule");
    assert_eq!((schedule.as_str(), schedule.zone()), ("0 */5 * * * *", "Europe/Paris"));

    let hub = crate::Hub::builder("sqlite::memory:").integrations_dir(dir.path()).build().await;
    let hub = hub.unwrap_or_else(|e| panic!("the pulled source registers: {e}"));
    hub.shutdown().await;

    // Besides a front door: a source may take webhooks and be polled.
    let with_ingress = GOOD.replacen(
        "\n[pull]\n",
        "\n[ingress]\nverify = \"bearer\"\nsecret_env = \"PO_TEST_SHOP_HOOK\"\n\n[pull]\n",
        1,
    );
    let (problems, _) = dir.problems(&with_ingress, false);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// What `PullConfig::spec` and `::schedule` refuse is reported at the key it names.
#[test]
fn spec_and_schedule_errors_are_reported_at_their_keys() {
    let dir = Dir::new();
    let cases: [(&str, &str, &str, &[&str]); 6] = [
        (
            "next = \"/meta/next_cursor\"",
            "next = \"meta/next_cursor\"",
            "next = ",
            &["pull.pagination.next: `meta/next_cursor` is not a JSON pointer"],
        ),
        ("limit = 100", "limit = 1.5", "limit = ", &["pull.query.limit:", "float"]),
        (
            "schedule = \"0 */5 * * * *\"",
            "schedule = \"*/5 * * *\"",
            "schedule = ",
            &["pull.schedule: `*/5 * * *` is not a cron expression"],
        ),
        (
            "timezone = \"Europe/Paris\"",
            "timezone = \"Europe/Atlantis\"",
            "timezone = ",
            &["pull.timezone: `Europe/Atlantis` is not an IANA time zone"],
        ),
        (
            "url = \"https://shop.example/api/orders\"",
            "url = \"ftp://shop.example/api/orders\"",
            "url = ",
            &["pull.url: `ftp://shop.example/api/orders` must be http or https"],
        ),
        (
            "param = \"page_info\"",
            "param = \"updated_since\"",
            "cursor_param = ",
            &["pull.cursor_param: `updated_since` is used twice"],
        ),
    ];
    for (from, to, marker, says) in cases {
        let bad = GOOD.replacen(from, to, 1);
        assert_ne!(bad, GOOD, "{from}");
        let (problems, text) = dir.problems(&bad, false);
        assert_one(&dir, &text, &problems, marker, says);
    }
}

/// The mode's needs: an incremental mode without a cursor field is reported at `[pull]` (the
/// key is missing), `incremental_dedup` without a primary key likewise; a cursor parameter in
/// full refresh at its own line.
#[test]
fn the_modes_needs_are_reported() {
    let dir = Dir::new();
    let no_cursor = GOOD.replacen("cursor_field = \"/updated_at\"\n", "", 1).replacen(
        "cursor_param = \"updated_since\"\n",
        "",
        1,
    );
    let (problems, text) = dir.problems(&no_cursor, false);
    assert_one(&dir, &text, &problems, "[pull]", &["pull.cursor_field: mode `incremental_dedup` needs one"]);

    let no_key = GOOD.replacen("primary_key = \"/id\"\n", "", 1);
    let (problems, text) = dir.problems(&no_key, false);
    assert_one(&dir, &text, &problems, "[pull]", &["pull.primary_key: mode `incremental_dedup` needs one"]);

    let full = GOOD.replacen("mode = \"incremental_dedup\"", "mode = \"full_refresh\"", 1);
    let (problems, text) = dir.problems(&full, false);
    assert_one(&dir, &text, &problems, "cursor_param = ", &["pull.cursor_param: a full_refresh run"]);
}

/// `[pull] records` may only repeat `[payload] records`, which a pulled source needs.
#[test]
fn records_must_agree_with_the_payload() {
    let dir = Dir::new();
    let same = GOOD.replacen("rate_per_sec = 4.0\n", "rate_per_sec = 4.0\nrecords = \"/orders\"\n", 1);
    let (problems, _) = dir.problems(&same, false);
    assert!(problems.is_empty(), "the same pointer twice is fine: {problems:#?}");

    let other = GOOD.replacen("rate_per_sec = 4.0\n", "rate_per_sec = 4.0\nrecords = \"/data\"\n", 1);
    let (problems, text) = dir.problems(&other, false);
    assert_one(
        &dir,
        &text,
        &problems,
        "records = \"/data\"",
        &["pull.records: `/data` differs from [payload] records `/orders`"],
    );

    let none = GOOD.replacen("records = \"/orders\"\n", "", 1);
    let (problems, text) = dir.problems(&none, false);
    assert_one(&dir, &text, &problems, "[pull]", &["pull.records: a pulled source needs [payload] records"]);
}

/// A page that is itself the array of records (GitHub's API, with the `Link` header):
/// `[payload] records = ""`; layer 2 splits the stored page as the puller reads it.
#[tokio::test]
async fn a_page_that_is_the_array_is_read_with_empty_records() {
    let dir = Dir::new();
    let gh =
        GOOD.replacen("schema = \"page.json\"\nrecords = \"/orders\"\n", "records = \"\"\n", 1).replacen(
            "style = \"cursor\"\nnext = \"/meta/next_cursor\"\nparam = \"page_info\"\n",
            "style = \"link_header\"\n",
            1,
        );
    assert!(gh.contains("records = \"\"") && gh.contains("link_header"), "{gh}");
    let (problems, _) = dir.problems(&gh, true);
    assert!(problems.is_empty(), "{problems:#?}");
    let loaded = load_dir(dir.path(), true);
    let shop = &loaded.integrations[0];
    let settings = shop.pull.as_ref().expect("pull").settings("shop").expect("settings");
    assert_eq!(settings.spec.records.as_deref().unwrap_or_default(), "", "the page is the array");
    let page =
        br#"[{"id":1,"updated_at":"2026-11-22T10:00:00Z"},{"id":2,"updated_at":"2026-11-22T10:01:00Z"}]"#;
    let raw = RawInput {
        id: uuid::Uuid::now_v7().into(),
        source: "shop",
        source_ref: None,
        content_type: "application/json",
        body: page,
        headers: r#"{"hub-pull-skip":"0"}"#,
    };
    let records = shop.normalizer.normalize(&raw).await.expect("the page splits");
    let ids: Vec<_> = records.iter().map(|r| r.source_ref.as_deref()).collect();
    assert_eq!(ids, [Some("2")], "record 0 was taken before");
}

/// The next cursor or link must be able to be in a page, as a usable type, by the page schema.
#[test]
fn a_next_pointer_the_page_schema_rules_out_is_reported() {
    let dir = Dir::new();
    let cases: [(&str, &[&str]); 4] = [
        (
            "style = \"cursor\"\nnext = \"/meta/cursor\"\nparam = \"page_info\"",
            &["pull.pagination.next: `/meta/cursor` cannot exist in a page: the [payload] schema"],
        ),
        (
            "style = \"cursor\"\nnext = \"/meta/links\"\nparam = \"page_info\"",
            &["pull.pagination.next: `/meta/links` is only ever an object", "a next cursor"],
        ),
        (
            "style = \"next_link\"\nnext = \"/meta/count\"",
            &[
                "pull.pagination.next: `/meta/count` is only ever an integer",
                "a next link is read as a string",
            ],
        ),
        ("style = \"next_link\"\nnext = \"/meta/next_url\"", &[]),
    ];
    let good = "style = \"cursor\"\nnext = \"/meta/next_cursor\"\nparam = \"page_info\"";
    for (pagination, says) in cases {
        let bad = GOOD.replacen(good, pagination, 1);
        let (problems, text) = dir.problems(&bad, false);
        if says.is_empty() {
            assert!(problems.is_empty(), "{problems:#?}");
        } else {
            assert_one(&dir, &text, &problems, "next = ", says);
        }
    }
    // A cursor that is a number is one too.
    let numeric = GOOD.replacen("next = \"/meta/next_cursor\"", "next = \"/meta/count\"", 1);
    let (problems, _) = dir.problems(&numeric, false);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The cursor field and the primary key must be able to be in every kind's records, as a string
/// or a number: the problem names the kind and its schema file.
#[test]
fn a_cursor_or_key_a_record_schema_rules_out_is_reported() {
    let dir = Dir::new();
    let bad = GOOD.replacen("cursor_field = \"/updated_at\"", "cursor_field = \"/modified_at\"", 1);
    let (problems, text) = dir.problems(&bad, false);
    assert_one(
        &dir,
        &text,
        &problems,
        "cursor_field = ",
        &["pull.cursor_field: `/modified_at` cannot exist in a record of kind `order`", "order.json"],
    );
    let bad = GOOD.replacen("primary_key = \"/id\"", "primary_key = \"/customer\"", 1);
    let (problems, text) = dir.problems(&bad, false);
    assert_one(
        &dir,
        &text,
        &problems,
        "primary_key = ",
        &["pull.primary_key: `/customer` is only ever an object in a record of kind `order`", "order.json"],
    );
}

/// With secrets checked, the pulled source's must be there (reported at its key); unchecked,
/// the file loads, and registering it is a problem that stops the build, never a panic.
#[tokio::test]
async fn a_missing_secret_is_an_error_at_pull_auth() {
    let dir = Dir::new();
    let unset = GOOD.replacen("{ file = \"TOKEN_FILE\" }", "{ env = \"PO_TEST_UNSET_SHOP_TOKEN_H1\" }", 1);
    let (problems, text) = dir.problems(&unset, true);
    assert_one(
        &dir,
        &text,
        &problems,
        "token = ",
        &["pull.auth: environment variable PO_TEST_UNSET_SHOP_TOKEN_H1 (the bearer token) is not set"],
    );
    let (problems, _) = dir.problems(&unset, false);
    assert!(problems.is_empty(), "{problems:#?}");
    let Err(e) = crate::Hub::builder("sqlite::memory:").integrations_dir(dir.path()).build().await else {
        panic!("a pulled source without its secret must not build");
    };
    let e = e.to_string();
    let want = format!(
        "{}:{}: error: pull.auth.token: ",
        dir.path().join("shop.toml").display(),
        line(&text, "token = ")
    );
    assert!(e.contains(&want) && e.contains("PO_TEST_UNSET_SHOP_TOKEN_H1") && e.contains("`shop`"), "{e}");

    // An authentication a pull cannot use.
    let signed = GOOD.replacen("kind = \"bearer\"\ntoken =", "kind = \"standard-webhooks\"\nsecret =", 1);
    let (problems, text) = dir.problems(&signed, false);
    assert_one(&dir, &text, &problems, "kind = \"standard-webhooks\"", &["pull.auth: `standard-webhooks`"]);
}

/// Limits that would make every run fail, and credentials outside `[pull.auth]`.
#[test]
fn limits_and_credentials_are_checked() {
    let dir = Dir::new();
    let cases: [(&str, &str, &str, &str); 6] = [
        (
            "url = \"https://shop.example",
            "url = \"https://user:pw@shop.example",
            "url = ",
            "pull.url: holds credentials",
        ),
        (
            "rate_per_sec = 4.0",
            "rate_per_sec = 4.0\nlease_ms = 500",
            "lease_ms",
            "pull.lease_ms: 500 ms is too short",
        ),
        (
            "rate_per_sec = 4.0",
            "rate_per_sec = 0.0",
            "rate_per_sec",
            "pull.rate_per_sec: must be a number above 0",
        ),
        (
            "rate_per_sec = 4.0",
            "rate_per_sec = 4.0\ntimeout_ms = 0",
            "timeout_ms",
            "pull.timeout_ms: must be at least 1",
        ),
        (
            "rate_per_sec = 4.0",
            "rate_per_sec = 4.0\npage_size = 20000",
            "page_size",
            "pull.page_size: 20000 records per page is above [payload] max_records (10000)",
        ),
        (
            "limit = 100",
            "limit = 100\n[pull.headers]\nAuthorization = \"Bearer x\"",
            "Authorization",
            "pull.headers.Authorization:",
        ),
    ];
    for (from, to, marker, says) in cases {
        let (problems, text) = dir.problems(&GOOD.replacen(from, to, 1), false);
        assert_one(&dir, &text, &problems, marker, &[says]);
    }
}

/// A `[pull]` with no record kind to read its pages is an error at `[pull]`.
#[test]
fn a_pull_without_record_kinds_is_an_error() {
    let dir = Dir::new();
    let text = "source = \"shop\"\n\n[pull]\nurl = \"https://shop.example/api/orders\"\n";
    let (problems, text) = dir.problems(text, false);
    let at_pull = format!("{}:{}: error: ", dir.path().join("shop.toml").display(), line(&text, "[pull]"));
    assert!(
        problems.iter().any(|p| p.starts_with(&at_pull) && p.contains("nothing could read its pages")),
        "{problems:#?}"
    );
}

/// The shop example loads cleanly, and its fixture page (as the runner stores it) is split into
/// its three orders by `[payload] records` and translated with every digit kept.
#[tokio::test]
async fn the_shop_example_reads_its_fixture_page() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let loaded = load_dir(&repo.join("examples/integrations"), false);
    assert!(loaded.diagnostics.is_empty(), "{:#?}", loaded.diagnostics);
    let shop = loaded.integrations.iter().find(|i| i.source == "shop").expect("shop.toml");
    let pull = shop.pull.as_ref().expect("shop is pulled");
    assert_eq!(pull.records.as_deref(), Some("/orders"));
    assert_eq!(pull.schedule.as_deref(), Some("0 */5 * * * *"));
    assert!(shop.ingress.is_none(), "no webhooks: polled only");

    let page = std::fs::read(repo.join("tests/fixtures/shop/orders.page1.json")).expect("fixture");
    let raw = RawInput {
        id: uuid::Uuid::now_v7().into(),
        source: "shop",
        source_ref: Some("sync:run:1"),
        content_type: "application/json",
        body: &page,
        headers: "",
    };
    let records = shop.normalizer.normalize(&raw).await.expect("the page normalizes");
    assert_eq!(records.len(), 3, "one record per order");
    assert_eq!(records[0].source_ref.as_deref(), Some("12345678901234567890"));
    let translator = shop.translators.iter().find(|t| t.record_kind() == "order").expect("order");
    let mut bodies = Vec::new();
    for r in &records {
        let input = RecordInput {
            id: uuid::Uuid::now_v7().into(),
            origin_id: raw.id,
            source: "shop",
            source_ref: r.source_ref.as_deref(),
            kind: &r.kind,
            schema_version: r.schema_version.as_deref(),
            data: &r.data,
        };
        let t = translator.translate(&input).await.expect("translates");
        assert_eq!(t.message.message_type, "order.changed");
        bodies.push(t.message.body);
    }
    let text = |v: &Value| v.to_json();
    let big = &bodies[0];
    assert_eq!(text(&big["order_id"]), r#""12345678901234567890""#);
    assert_eq!(text(&big["total"]), r#"{"currency":"EUR","value":"1234567.890123456789"}"#);
    assert_eq!(text(&big["tax"]), r#""197110.416827208617""#);
    assert_eq!(text(&big["lines"][0]["unit_price"]), r#""1037457.473296248172""#);
    assert_eq!(big["fulfillment"].as_str(), Some("unfulfilled"), "null: the default");
    assert_eq!(big["updated_at"].as_str(), Some("2026-11-20T14:05:41.873+01:00"), "offset kept");
    assert_eq!(text(&bodies[1]["customer_email"]), "null");
    assert_eq!(text(&bodies[2]["total"]), r#"{"currency":"JPY","value":"4800"}"#);
    assert_eq!(text(&bodies[2]["lines"][0]["quantity"]), "3");
}
