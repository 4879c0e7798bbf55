use super::*;

fn msg(text: &str) -> Value {
    Value::parse(text.as_bytes()).expect("test JSON")
}

fn ptr(p: &str) -> Part {
    Part::Pointer(p.to_owned())
}

fn cons(v: &str) -> Part {
    Part::Const(v.to_owned())
}

/// A template with only a method and a path (no body).
fn path_only(path: &str) -> RequestSpec {
    RequestSpec::compile("get", path, vec![], vec![], None, BodyEncoding::None, None).expect("compiles")
}

fn schema(doc: serde_json::Value) -> Option<Arc<JsonSchema>> {
    Some(Arc::new(JsonSchema::compile(doc).expect("schema")))
}

#[test]
fn compile_upper_cases_the_method_and_refuses_bad_templates() {
    let spec = path_only("/contacts/{/id}/notes");
    assert_eq!((spec.method.as_str(), spec.placeholders().collect::<Vec<_>>()), ("GET", vec!["/id"]));
    let bad = |method: &str, path: &str| {
        RequestSpec::compile(method, path, vec![], vec![], None, BodyEncoding::Json, None)
            .expect_err("refused")
    };
    assert!(bad("FETCH", "/x").contains("method `FETCH` is not one of GET, POST, PUT, PATCH, DELETE"));
    assert!(bad("GET", "contacts").contains("must start with /"));
    assert!(bad("GET", "/contacts/{id}").contains("not a JSON pointer"));
    assert!(bad("GET", "/contacts/{}").contains("not a JSON pointer"));
    assert!(bad("GET", "/contacts/{/id").contains("not closed"));
    assert!(bad("GET", "/contacts/}").contains("without a placeholder"));
    assert!(bad("GET", "/contacts/{/a{/b}}").contains("do not nest"));
    assert!(bad("GET", "/contacts?x=1").contains("`?` is not a URL path character"));
    assert!(bad("GET", "/a b").contains("` ` is not a URL path character"));
    assert!(bad("GET", "/a/%zz").contains("`%` must start an escape"));
    assert!(bad("GET", "/a/../b").contains("climb out"));
    assert!(bad("GET", "/a/%2E%2e/b").contains("climb out"));
    // A pointer's own `/` does not split the segment.
    let spec = path_only("/v1/{/customer/id}/refunds");
    assert_eq!(spec.placeholders().collect::<Vec<_>>(), ["/customer/id"]);
}

#[test]
fn compile_reports_every_problem_at_its_key() {
    let issues = RequestSpec::compile_all(
        "POST",
        "/x",
        vec![("q".into(), ptr("q")), ("".into(), cons("1"))],
        vec![
            ("Authorization".into(), cons("Bearer x")),
            ("X Bad".into(), cons("1")),
            ("X-Ok".into(), cons("a\r\nX-Evil: 1")),
            ("Idempotency-Key".into(), ptr("/id")),
            ("x-dup".into(), cons("1")),
            ("X-Dup".into(), cons("2")),
        ],
        Some("properties".into()),
        BodyEncoding::None,
        schema(serde_json::json!({})),
    )
    .expect_err("refused");
    let text: Vec<String> = issues.iter().map(|i| format!("{:?}: {}", i.at, i.message)).collect();
    let has = |at: &[&str], needle: &str| {
        assert!(
            issues.iter().any(|i| i.at == at && i.message.contains(needle)),
            "{at:?} {needle}\n{text:#?}"
        );
    };
    has(&["query", "q"], "`q` is not a JSON pointer");
    has(&["query", ""], "needs a name");
    has(&["headers", "Authorization"], "[target.auth]");
    has(&["headers", "X Bad"], "not an HTTP header name");
    has(&["headers", "X-Ok"], "control character U+000D");
    has(&["headers", "Idempotency-Key"], "idempotency key itself");
    has(&["headers", "X-Dup"], "set twice");
    has(&["body"], "not a JSON pointer");
    has(&["body"], "encoding = \"none\" sends none");
    has(&["schema"], "encoding = \"none\" sends none");
    assert_eq!(issues.len(), 10, "{text:#?}");
}

#[test]
fn placeholders_are_one_encoded_segment() {
    let spec = path_only("/contacts/{/id}/notes");
    let path = |v: &str| spec.build(&msg(&format!(r#"{{"id": {v}}}"#))).map(|r| r.path_and_query);
    assert_eq!(path(r#""c-1001""#).as_deref(), Ok("/contacts/c-1001/notes"));
    assert_eq!(path(r#""a/b""#).as_deref(), Ok("/contacts/a%2Fb/notes"));
    assert_eq!(path(r#""?x""#).as_deref(), Ok("/contacts/%3Fx/notes"));
    assert_eq!(path(r##""#frag""##).as_deref(), Ok("/contacts/%23frag/notes"));
    assert_eq!(path(r#""%2e%2e""#).as_deref(), Ok("/contacts/%252e%252e/notes"));
    assert_eq!(path(r#""Zoë Ünal~.-_""#).as_deref(), Ok("/contacts/Zo%C3%AB%20%C3%9Cnal~.-_/notes"));
    assert_eq!(path("12345678901234567890.10").as_deref(), Ok("/contacts/12345678901234567890.10/notes"));
    assert_eq!(path("true").as_deref(), Ok("/contacts/true/notes"));
    assert_eq!(path(r#""...""#).as_deref(), Ok("/contacts/.../notes"), "three dots are a name");
    let refused = |v: &str| path(v).expect_err("refused");
    for dots in [r#"".""#, r#""..""#] {
        let r = refused(dots);
        assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/id"), "path_escape"), "{dots}");
        assert!(r.message.contains("climbs out of the path `/contacts/{/id}/notes`"), "{r}");
    }
    let r = refused("null");
    assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/id"), "required"));
    assert!(r.message.contains("placeholder `{/id}`"), "{r}");
    let r = spec.build(&msg("{}")).expect_err("missing");
    assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/id"), "required"));
    for v in [r#"{"a": 1}"#, "[1]"] {
        let r = refused(v);
        assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/id"), "type"), "{v}");
    }
    assert_eq!(refused(r#""""#).rule, "empty");
    // Two placeholders in one segment can make a dot segment together.
    let pair = path_only("/x/{/a}{/b}");
    let r = pair.build(&msg(r#"{"a": ".", "b": "."}"#)).expect_err("..");
    assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/a"), "path_escape"));
    let ok = pair.build(&msg(r#"{"a": ".", "b": "json"}"#)).expect("a name");
    assert_eq!(ok.path_and_query, "/x/.json");
}

#[test]
fn query_parameters_are_encoded_repeated_or_left_out() {
    let spec = RequestSpec::compile(
        "GET",
        "/search",
        vec![
            ("notify".into(), cons("false")),
            ("q".into(), ptr("/q")),
            ("tag".into(), ptr("/tags")),
            ("page size".into(), ptr("/size")),
            ("missing".into(), ptr("/nope")),
            ("nothing".into(), ptr("/null")),
        ],
        vec![],
        None,
        BodyEncoding::None,
        None,
    )
    .expect("compiles");
    let built = spec
        .build(&msg(r#"{"q": "a b&c=d", "tags": ["x", 2, true], "size": 1E400, "null": null}"#))
        .expect("builds");
    assert_eq!(
        built.path_and_query,
        "/search?notify=false&q=a%20b%26c%3Dd&tag=x&tag=2&tag=true&page%20size=1E400"
    );
    assert_eq!((built.content_type, built.body.as_str()), (None, ""));
    let r = spec.build(&msg(r#"{"q": {"x": 1}}"#)).expect_err("object");
    assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/q"), "type"));
    let r = spec.build(&msg(r#"{"tags": ["x", ["y"]]}"#)).expect_err("nested array");
    assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/tags/1"), "type"));
    // No parameter at all: no `?`.
    assert_eq!(spec.build(&msg("{}")).expect("builds").path_and_query, "/search?notify=false");
}

#[test]
fn headers_refuse_control_characters() {
    let spec = RequestSpec::compile(
        "POST",
        "/x",
        vec![],
        vec![
            ("X-Source".into(), cons("post-office")),
            ("X-Correlation".into(), ptr("/corr")),
            ("X-Amount".into(), ptr("/amount")),
        ],
        None,
        BodyEncoding::Json,
        None,
    )
    .expect("compiles");
    let built = spec.build(&msg(r#"{"corr": "abc\tdef", "amount": 0.10}"#)).expect("builds");
    assert_eq!(
        built.headers,
        [
            ("X-Source".to_owned(), "post-office".to_owned()),
            ("X-Correlation".to_owned(), "abc\tdef".to_owned()),
            ("X-Amount".to_owned(), "0.10".to_owned()),
        ]
    );
    for evil in [r#""a\r\nX-Admin: yes""#, r#""a\nb""#, r#""a\u0000""#] {
        let r = spec.build(&msg(&format!(r#"{{"corr": {evil}}}"#))).expect_err("injection");
        assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/corr"), "header_value"), "{evil}");
        assert!(r.message.contains("header `X-Correlation`") && r.message.contains("control character"));
    }
    let r = spec.build(&msg(r#"{"corr": [1]}"#)).expect_err("array");
    assert_eq!(r.rule, "type");
    // Absent: the header is left out.
    assert_eq!(spec.build(&msg("{}")).expect("builds").headers.len(), 1);
}

#[test]
fn json_bodies_keep_numbers_exactly() {
    let whole = RequestSpec::compile("PATCH", "/c/{/id}", vec![], vec![], None, BodyEncoding::Json, None)
        .expect("compiles");
    let m =
        msg(r#"{"id": "c-1", "ltv": 12345678901234567890.10, "big": 1E400, "n": -0.000000000000000000001}"#);
    let built = whole.build(&m).expect("builds");
    assert_eq!(built.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        built.body,
        r#"{"big":1E400,"id":"c-1","ltv":12345678901234567890.10,"n":-0.000000000000000000001}"#
    );
    assert_eq!(built.method, "PATCH");
    let part = RequestSpec::compile(
        "PATCH",
        "/c/{/id}",
        vec![],
        vec![],
        Some("/properties".into()),
        BodyEncoding::Json,
        None,
    )
    .expect("compiles");
    let built =
        part.build(&msg(r#"{"id": "c-1", "properties": {"ltv": 12345678901234567890.10}}"#)).expect("builds");
    assert_eq!(built.body, r#"{"ltv":12345678901234567890.10}"#);
    let r = part.build(&msg(r#"{"id": "c-1"}"#)).expect_err("no body");
    assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/properties"), "required"));
}

#[test]
fn form_bodies_in_bracket_notation_keep_numbers_exactly() {
    let spec = RequestSpec::compile("POST", "/v1/refunds", vec![], vec![], None, BodyEncoding::Form, None)
        .expect("compiles");
    let m = msg(
        r#"{"payment_intent": "pi_3Qx", "amount": 123456789012345678901234, "reason": "requested_by_customer",
            "metadata": {"order_id": "ord 7&8", "note": null, "a[b]": "x"}, "expand": ["charge", "payment_intent"],
            "items": [{"sku": "A", "qty": 2}], "live": false, "ratio": 0.10, "empty": {}}"#,
    );
    let built = spec.build(&m).expect("builds");
    assert_eq!(built.content_type.as_deref(), Some("application/x-www-form-urlencoded"));
    assert_eq!(
        built.body,
        "amount=123456789012345678901234&empty=&expand[0]=charge&expand[1]=payment_intent\
         &items[0][qty]=2&items[0][sku]=A&live=false\
         &metadata[a%5Bb%5D]=x&metadata[note]=&metadata[order_id]=ord%207%268\
         &payment_intent=pi_3Qx&ratio=0.10&reason=requested_by_customer"
    );
    let r = spec.build(&msg("[1, 2]")).expect_err("not an object");
    assert_eq!((r.field, r.rule.as_str()), (None, "type"));
    let at = RequestSpec::compile("POST", "/x", vec![], vec![], Some("/b".into()), BodyEncoding::Form, None)
        .expect("compiles");
    let r = at.build(&msg(r#"{"b": "text"}"#)).expect_err("not an object");
    assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/b"), "type"));
}

#[test]
fn the_body_is_checked_against_the_request_schema_before_encoding() {
    let s = schema(serde_json::json!({
        "type": "object", "required": ["amount"], "additionalProperties": false,
        "properties": {"amount": {"type": "integer", "minimum": 1}, "reason": {"enum": ["duplicate", "fraudulent"]}}
    }));
    let spec = RequestSpec::compile("POST", "/r", vec![], vec![], Some("/req".into()), BodyEncoding::Form, s)
        .expect("compiles");
    let ok = spec.build(&msg(r#"{"req": {"amount": 1234, "reason": "duplicate"}}"#)).expect("valid");
    assert_eq!(ok.body, "amount=1234&reason=duplicate");
    let r = spec.build(&msg(r#"{"req": {"amount": 12.5}}"#)).expect_err("not an integer");
    assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/req/amount"), "type"));
    assert!(r.message.contains("request schema"), "{r}");
    let r = spec.build(&msg(r#"{"req": {"reason": "duplicate"}}"#)).expect_err("required");
    assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/req/amount"), "required"));
    let r = spec.build(&msg(r#"{"req": {"amount": 1, "reason": "bored"}}"#)).expect_err("enum");
    assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/req/reason"), "enum"));
    let r = spec.build(&msg(r#"{"req": {"amount": 1, "extra": true}}"#)).expect_err("additional");
    assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/req/extra"), "additionalProperties"));
}
