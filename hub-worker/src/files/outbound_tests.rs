//! The downstream side of integration files: a good file loads into the routes it declares and
//! they build the third party's request; each mistake is reported at its line.

use std::path::Path;

use layer1_ingest::json::Value;
use layer2_normalize::request::BuiltRequest;
use layer3_translate::RecordInput;

use super::*;
use crate::outbound::{AuthSpec, OutboundRoute};

use super::scratch::ScratchDir as Dir;

const CORE: &str = r#"destinations = ["core.members"]
[[message_types]]
type = "member.updated"
version = "1"
schema = "member.updated.json"
[[message_types]]
type = "member.deleted"
version = "1"
schema = "member.deleted.json"
"#;

const MEMBER_UPDATED: &str = r#"{"type": "object", "additionalProperties": false,
  "required": ["member_id", "email"],
  "properties": {"member_id": {"type": "string"}, "email": {"type": "string"},
    "ltv": {"type": "number"}, "tags": {"type": "array", "items": {"type": "string"}}}}"#;

const CRM_PATCH: &str = r#"{"type": "object", "additionalProperties": false, "required": ["email"],
  "properties": {"email": {"type": "string"}, "ltv": {"type": "number"}, "tags": {"type": "array"}}}"#;

const GOOD: &str = r#"source = "crm"
[target]
base_url = "https://api.crm.example/v3"
timeout_ms = 10000
[target.auth]
kind = "bearer"
token = { env = "PO_TEST_CRM_TOKEN" }

[outbound."member.updated"]
ordering_key = "/member_id"
[outbound."member.updated".mapping]
name = "member-to-contact"
version = "1"
message_type = "crm.contact.patch"
type_version = "v3"
[outbound."member.updated".mapping.fields]
"/id" = { from = "/member_id" }
"/properties/email" = { from = "/email" }
"/properties/ltv" = { from = "/ltv" }
"/properties/tags" = { from = "/tags", default = [] }
[outbound."member.updated".request]
method = "patch"
path = "/contacts/{/id}"
query = { notify = { const = "false" }, source = { const = "hub" } }
headers = { "X-Crm-Source" = { const = "post-office" } }
body = "/properties"
schema = "crm-contact-patch.json"
[outbound."member.updated".response]
fields = { crm_id = "/id", updated_at = "/updatedAt" }
"#;

fn setup() -> Dir {
    let dir = Dir::new("po-outbound");
    dir.write("core.toml", CORE);
    dir.write("member.updated.json", MEMBER_UPDATED);
    dir.write(
        "member.deleted.json",
        r#"{"type": "object", "additionalProperties": false, "properties": {"member_id": {"type": "string"}}}"#,
    );
    dir.write("crm-contact-patch.json", CRM_PATCH);
    dir
}

/// Translates `core` with the route's mapping and builds its request, as layers 3 and 2 will.
async fn deliver(route: &OutboundRoute, core: &str) -> BuiltRequest {
    let data = Value::parse(core.as_bytes()).expect("core message");
    let input = RecordInput {
        id: uuid::Uuid::now_v7().into(),
        origin_id: uuid::Uuid::now_v7().into(),
        source: &route.target,
        source_ref: None,
        kind: &route.message_type,
        schema_version: None,
        data: &data,
    };
    let t = route.translator.translate(&input).await.expect("translates");
    route.request.build(&t.message.body).expect("builds")
}

#[tokio::test]
async fn a_good_outbound_file_loads_into_its_route_and_builds_the_request() {
    let dir = setup();
    dir.write("crm.toml", GOOD);
    let loaded = load_dir(&dir.0, false);
    assert!(loaded.diagnostics.is_empty(), "{:#?}", loaded.diagnostics);
    let i = &loaded.integrations[0];
    assert!(i.translators.is_empty() && i.routes.is_empty(), "no upstream side");
    let out = i.outbound.as_ref().expect("a downstream side");
    let target = out.target("crm").expect("the target is the file's source");
    assert_eq!(target.spec.base_url, "https://api.crm.example/v3");
    assert_eq!(target.spec.timeout_ms, Some(10000));
    assert!(
        matches!(&target.spec.auth, AuthSpec::Bearer { token } if token.env.as_deref() == Some("PO_TEST_CRM_TOKEN"))
    );
    let route = out.route("crm", "member.updated").expect("route");
    assert_eq!(route.ordering_key.as_deref(), Some("/member_id"));
    assert_eq!(
        route.response_fields,
        [("crm_id".into(), "/id".into()), ("updated_at".into(), "/updatedAt".into())]
    );
    assert_eq!((route.request.method.as_str(), route.translator.source()), ("PATCH", "crm"));
    assert_eq!(route.translator.message_type(), Some("crm.contact.patch"));

    let built = deliver(
        route,
        r#"{"member_id": "c/1001", "email": "ada@example.com", "ltv": 12345678901234567890.10}"#,
    )
    .await;
    assert_eq!(built.path_and_query, "/contacts/c%2F1001?notify=false&source=hub", "query in file order");
    assert_eq!(built.headers, [("X-Crm-Source".to_owned(), "post-office".to_owned())]);
    assert_eq!(built.body, r#"{"email":"ada@example.com","ltv":12345678901234567890.10,"tags":[]}"#);
    assert_eq!(built.content_type.as_deref(), Some("application/json"));
}

/// The examples' three downstream files load and build what their third parties take.
#[tokio::test]
async fn the_example_targets_build_their_requests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/integrations");
    let loaded = load_dir(&dir, false);
    assert!(loaded.diagnostics.is_empty(), "{:#?}", loaded.diagnostics);
    let mut all = crate::outbound::Outbound::default();
    for i in &loaded.integrations {
        if let Some(o) = &i.outbound {
            all.extend(o.clone());
        }
    }
    assert_eq!(all.targets.len(), 3);

    let crm = all.route("crm", "member.updated").expect("crm");
    let built = deliver(
        crm,
        r#"{"member_id": "c-1001", "email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace",
            "phone": null, "address": {"line1": "12 St James's Square", "line2": null, "city": "London",
            "postal_code": "SW1Y 4JH", "region": null, "country": "GB"}, "lifecycle": "active",
            "marketing_opt_in": false, "lifetime_value": {"amount": "12345678901234567.89", "currency": "GBP"},
            "tags": ["vip"], "changed_fields": ["email"], "updated_at": "2026-11-20T14:05:41.873+01:00"}"#,
    )
    .await;
    assert_eq!(
        (built.method.as_str(), built.path_and_query.as_str()),
        ("PATCH", "/contacts/c-1001?notify=false")
    );
    assert!(built.body.contains(r#""lifetime_value":"12345678901234567.89""#), "{}", built.body);
    assert!(built.body.contains(r#""address":"12 St James's Square","#), "{}", built.body);
    assert!(
        built.body.contains(r#""lifecyclestage":"customer""#)
            && built.body.contains(r#""marketing_opt_in":"false""#)
    );
    assert!(built.body.contains(r#""core_updated_at":"2026-11-20T14:05:41.873+01:00""#), "{}", built.body);

    let pay = all.route("payments-refunds", "refund.requested").expect("refunds");
    let built = deliver(
        pay,
        r#"{"refund_request_id": "rr_77", "order_id": "ord 2026/11-0042", "payment_ref": "pi_3QxR7sLkdIwHu7ix1XyZ",
            "amount": {"minor_units": "1234", "currency": "EUR"}, "reason": "customer_request",
            "requested_by": "agent@example.com", "requested_at": "2026-11-20T14:05:41Z", "note": null}"#,
    )
    .await;
    assert_eq!((built.method.as_str(), built.path_and_query.as_str()), ("POST", "/v1/refunds"));
    assert_eq!(built.content_type.as_deref(), Some("application/x-www-form-urlencoded"));
    assert_eq!(
        built.body,
        "amount=1234&metadata[currency]=EUR&metadata[note]=&metadata[order_id]=ord%202026%2F11-0042\
         &metadata[refund_request_id]=rr_77&metadata[requested_at]=2026-11-20T14%3A05%3A41Z\
         &metadata[requested_by]=agent%40example.com&payment_intent=pi_3QxR7sLkdIwHu7ix1XyZ\
         &reason=requested_by_customer"
    );
    assert_eq!(
        pay.response_fields,
        [("refund_id".into(), "/id".into()), ("refund_status".into(), "/status".into())]
    );

    let partner = all.route("partner-shipments", "shipment.dispatched").expect("partner");
    let built = deliver(
        partner,
        r#"{"shipment_id": "shp_1", "order_id": "ord-42", "partner_order_ref": "PO-9", "carrier": "dhl",
            "service_level": "express", "tracking_number": "JD0146", "dispatched_at": "2026-11-20T14:05:41Z",
            "recipient": {"name": "Ada Lovelace", "email": "ada@example.com"},
            "address": {"line1": "12 St James's Square", "city": "London", "postal_code": "SW1Y 4JH", "country": "GB"},
            "parcels": [{"parcel_id": "p1", "weight_grams": 1200, "dimensions_mm": {"length": 300, "width": 200, "height": 100}}],
            "shipping_cost": {"amount": "4.90", "currency": "GBP"}}"#,
    )
    .await;
    assert_eq!(built.path_and_query, "/webhooks/shipments");
    assert!(built.body.starts_with(r#"{"data":{"address":{"city":"London""#), "{}", built.body);
    assert!(built.body.contains(r#""parcels":[{"dimensions_mm":{"height":100,"length":300,"width":200},"id":"p1","weight_grams":1200}]"#));
    assert!(built.body.contains(r#""shipping_cost":{"amount":"4.90","currency":"GBP"}"#));
    assert!(built.body.ends_with(r#""timestamp":"2026-11-20T14:05:41Z","type":"shipment.dispatched"}"#));
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1).unwrap_or_else(|| panic!("no `{needle}`"))
}

fn expect_at(diags: &[Diagnostic], file: &Path, line: usize, needle: &str) {
    let found = diags.iter().any(|d| d.file == file && d.line == Some(line) && d.message.contains(needle));
    let all: Vec<String> = diags.iter().map(ToString::to_string).collect();
    assert!(found, "no `{needle}` at line {line}:\n{}", all.join("\n"));
}

#[test]
fn each_outbound_mistake_is_reported_at_its_line() {
    let dir = setup();
    dir.write("broken.json", r#"{"type": "nonsense"}"#);
    dir.write(
        "member.updated.json",
        r#"{"type": "object", "properties": {"member_id": {"type": "string"}, "email": {"type": "string"},
            "nickname": {"type": "string"}}}"#,
    );
    let text = r#"source = "crm"
[target]
base_url = "https://api.crm.example/v3"
[target.auth]
kind = "bearer"
token = { env = "PO_TEST_UNSET_CRM_TOKEN_7F3A" }

[outbound."member.updated".mapping]
name = "m"
version = "1"
message_type = "crm.contact.patch"
type_version = "1"
[outbound."member.updated".mapping.fields]
"/id" = { from = "/member_id" }
"/properties/email" = { from = "/email" }
[outbound."member.updated".request]
method = "PATCH"
path = "/contacts/{/contact_id}"
body = "/properties"
schema = "broken.json"

[outbound."member.deleted".mapping]
name = "m"
version = "1"
message_type = "crm.contact.delete"
type_version = "1"
fields = { "/id" = { from = "/member_id" } }
[outbound."member.deleted".request]
method = "FETCH"
path = "/contacts/{/id}"

[outbound."member.gone".mapping]
name = "m"
version = "1"
message_type = "crm.contact.gone"
type_version = "1"
fields = { "/id" = { from = "/member_id" } }
[outbound."member.gone".request]
method = "DELETE"
path = "/contacts/{/id}"
"#;
    let file = dir.write("crm.toml", text);
    let loaded = load_dir(&dir.0, true);
    let d = &loaded.diagnostics;
    assert!(loaded.integrations.is_empty(), "a file with errors yields nothing");
    expect_at(
        d,
        &file,
        line(text, "PO_TEST_UNSET"),
        "environment variable PO_TEST_UNSET_CRM_TOKEN_7F3A (the bearer token) is not set",
    );
    expect_at(
        d,
        &file,
        line(text, "/contacts/{/contact_id}"),
        "`/contact_id` is not a field the mapping writes",
    );
    expect_at(d, &file, line(text, "broken.json"), "schema does not compile");
    expect_at(
        d,
        &file,
        line(text, "[outbound.\"member.updated\".mapping]"),
        "`/nickname` of core message member.updated v1 is neither read by a rule nor listed in `ignore`",
    );
    // Written outside the body and read by nothing: it would be lost.
    expect_at(d, &file, line(text, "\"/id\" = { from"), "`/id` is written but neither in the body");
    expect_at(d, &file, line(text, "FETCH"), "method `FETCH` is not one of GET, POST, PUT, PATCH, DELETE");
    expect_at(
        d,
        &file,
        line(text, "[outbound.\"member.gone\".mapping]"),
        "core message type `member.gone` is not declared",
    );
    assert_eq!(d.len(), 7, "{d:#?}");
}

#[test]
fn target_and_request_mistakes_are_reported_at_their_lines() {
    let dir = setup();
    let text = r#"source = "crm"
[ingress]
verify = "bearer"
secret_env = "PO_INGRESS"
[target]
base_url = "https://user:secret@api.crm.example/v3/"
concurrency = 0
idempotency_header = "X-Request-Id"
[target.auth]
kind = "api-key"
header = "X-Api-Key"
key = { env = "PO_KEY", file = "/run/secrets/key" }

[outbound."member.deleted"]
ordering_key = "/memberid"
[outbound."member.deleted".mapping]
name = "m"
version = "1"
message_type = "crm.contact.delete"
type_version = "1"
fields = { "/id" = { from = "/member_id" } }
[outbound."member.deleted".request]
method = "DELETE"
path = "/contacts/{/id}"
headers = { "X-Request-Id" = { const = "1" }, "x-api-key" = { from = "/id" }, "X-Both" = { from = "/id", const = "1" }, "Content-Type" = { const = "text/plain" } }
[outbound."member.deleted".response]
fields = { "CrmId" = "id" }
"#;
    let file = dir.write("crm.toml", text);
    let d = &load_dir(&dir.0, false).diagnostics;
    expect_at(d, &file, line(text, "[ingress]"), "[ingress] is for webhooks in");
    expect_at(d, &file, line(text, "base_url"), "holds credentials");
    expect_at(d, &file, line(text, "concurrency"), "concurrency must be at least 1");
    expect_at(d, &file, line(text, "key = {"), "give exactly one of `env` and `file`");
    expect_at(
        d,
        &file,
        line(text, "ordering_key"),
        "`/memberid` cannot exist in core message member.deleted v1",
    );
    let headers = line(text, "headers = {");
    expect_at(
        d,
        &file,
        headers,
        "`X-Request-Id` cannot be set by a template: it is the target's idempotency_header",
    );
    expect_at(
        d,
        &file,
        headers,
        "`x-api-key` cannot be set by a template: it is the target's API key header",
    );
    expect_at(d, &file, headers, "`X-Both`: give exactly one of `from` and `const`");
    expect_at(d, &file, line(text, "fields = { \"CrmId\""), "receipt field `CrmId` must be");
    expect_at(d, &file, line(text, "fields = { \"CrmId\""), "`id` is not a JSON pointer into the answer");
    // Content-Type: the request template itself refuses it, with the reason.
    expect_at(
        d,
        &file,
        headers,
        "header `Content-Type` cannot be set by a template: the hub sets it from the body's `encoding`",
    );

    // A target without outbound routes, and routes without a target.
    let text = "source = \"crm\"\n[target]\nbase_url = \"ftp://api.crm.example\"\n";
    let file = dir.write("crm.toml", text);
    let d = &load_dir(&dir.0, false).diagnostics;
    expect_at(d, &file, 2, "a [target] needs at least one [outbound.\"<core type>\"]");
    expect_at(d, &file, 3, "must start with https://");
    let text = "source = \"crm\"\n[outbound.\"member.deleted\".mapping]\nname = \"m\"\nversion = \"1\"\n\
                message_type = \"x\"\ntype_version = \"1\"\nfields = { \"/id\" = { from = \"/member_id\" } }\n\
                [outbound.\"member.deleted\".request]\nmethod = \"DELETE\"\npath = \"/c/{/id}\"\n";
    let file = dir.write("crm.toml", text);
    let d = &load_dir(&dir.0, false).diagnostics;
    expect_at(d, &file, 2, "[outbound.\"member.deleted\"] needs the file's [target]");
    // Neither side at all.
    let file = dir.write("crm.toml", "source = \"crm\"\n");
    let d = &load_dir(&dir.0, false).diagnostics;
    assert!(d.iter().any(|x| x.file == file && x.message.contains("or a [target] with [outbound")), "{d:#?}");
}
