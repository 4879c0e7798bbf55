//! Mapping paths on real-shaped payloads (GitHub's `issues` webhook): projection over `*`,
//! paths through the wrong kind of value, `null` objects on the way, `**` and globs in
//! `ignore`, and where problems are reported.

use super::fidelity::matches_ignore;
use super::*;

const USER: &str = r#"{"login": "octocat", "id": 583231, "node_id": "MDQ6VXNlcjU4MzIzMQ==",
    "avatar_url": "https://avatars.githubusercontent.com/u/583231?v=4", "gravatar_id": "",
    "url": "https://api.github.com/users/octocat", "html_url": "https://github.com/octocat",
    "followers_url": "https://api.github.com/users/octocat/followers",
    "repos_url": "https://api.github.com/users/octocat/repos", "type": "User", "site_admin": false}"#;

const MILESTONE: &str = r#"{"url": "https://api.github.com/repos/octocat/Hello-World/milestones/1",
    "html_url": "https://github.com/octocat/Hello-World/milestones/v1.0",
    "labels_url": "https://api.github.com/repos/octocat/Hello-World/milestones/1/labels",
    "id": 1002604, "node_id": "MDk6TWlsZXN0b25lMTAwMjYwNA==", "number": 1, "state": "open",
    "title": "v1.0", "description": "Tracking milestone for version 1.0", "creator": USER,
    "open_issues": 4, "closed_issues": 8, "created_at": "2011-04-10T20:09:31Z",
    "updated_at": "2014-03-03T18:58:10Z", "closed_at": null, "due_on": "2012-10-09T23:39:01-07:00"}"#;

/// An `issues` webhook as GitHub documents it, with `milestone` given as JSON text (`null`
/// or [`MILESTONE`]) and `labels` as JSON text.
fn issue_with(milestone: &str, labels: &str) -> Value {
    let text = r#"{"action": "opened",
      "issue": {
        "url": "https://api.github.com/repos/octocat/Hello-World/issues/1347",
        "repository_url": "https://api.github.com/repos/octocat/Hello-World",
        "labels_url": "https://api.github.com/repos/octocat/Hello-World/issues/1347/labels{/name}",
        "comments_url": "https://api.github.com/repos/octocat/Hello-World/issues/1347/comments",
        "html_url": "https://github.com/octocat/Hello-World/issues/1347",
        "id": 1296269, "node_id": "MDU6SXNzdWUx", "number": 1347,
        "title": "Crash when a label is named ünïcødé 🐛",
        "user": USER,
        "labels": LABELS,
        "state": "open", "locked": false, "assignee": null, "milestone": MILESTONE,
        "comments": 0, "created_at": "2011-04-22T13:33:48Z", "closed_at": null,
        "author_association": "COLLABORATOR", "body": "I'm having a problem with this."},
      "repository": {"id": 1296269, "full_name": "octocat/Hello-World",
        "html_url": "https://github.com/octocat/Hello-World", "owner": USER},
      "sender": USER}"#;
    let text = text.replace("MILESTONE", &milestone.replace("USER", USER)).replace("LABELS", labels);
    Value::parse(text.replace("USER", USER).as_bytes()).expect("json")
}

const LABELS: &str = r#"[{"id": 208045946, "node_id": "MDU6TGFiZWwyMDgwNDU5NDY=",
      "url": "https://api.github.com/repos/octocat/Hello-World/labels/bug", "name": "bug",
      "description": "Something isn't working", "color": "f29513", "default": true},
    {"id": 208045947, "node_id": "MDU6TGFiZWwyMDgwNDU5NDc=",
      "url": "https://api.github.com/repos/octocat/Hello-World/labels/good%20first%20issue",
      "name": "good first issue", "description": null, "color": "7057ff", "default": false}]"#;

fn issue(milestone: bool) -> Value {
    issue_with(if milestone { MILESTONE } else { "null" }, LABELS)
}

fn mapping(fields: Value) -> Result<Mapping, Vec<MappingIssue>> {
    mapping_with(fields, json!([]), "ignore")
}

fn mapping_with(fields: Value, ignore: Value, on_unmapped: &str) -> Result<Mapping, Vec<MappingIssue>> {
    test_mapping(fields, ignore, on_unmapped)
}

fn text(v: &Value) -> String {
    v.to_json()
}

#[test]
fn projection_takes_every_element_converting_each_leaf() {
    let m = mapping(json!({
        "/label_names": {"from": "/issue/labels/*/name"},
        "/label_ids": {"from": "/issue/labels/*/id", "convert": "string"},
        "/label_kinds": {"from": "/issue/labels/*/default", "enum": {"true": "standard", "false": "custom"}},
        "/short": {"from": "/issue/labels/*/name", "max_length": 4, "lossy": "truncate-text"}
    }))
    .expect("compiles");
    let (body, fid) = m.apply(&issue(false)).expect("maps");
    assert_eq!(text(&body["label_names"]), r#"["bug","good first issue"]"#);
    assert_eq!(text(&body["label_ids"]), r#"["208045946","208045947"]"#);
    assert_eq!(text(&body["label_kinds"]), r#"["standard","custom"]"#);
    assert_eq!(text(&body["short"]), r#"["bug","good"]"#);
    assert_eq!(fid.lossy, ["/short/1: truncate-text"]);
    for read in ["/issue/labels/0/name", "/issue/labels/1/name", "/issue/labels/1/id"] {
        assert!(fid.mapped.contains(&read.to_owned()), "{read} not mapped: {:?}", fid.mapped);
    }
    // Read by no rule: still sorted out by the fidelity walk (here: ignored).
    assert!(fid.ignored.contains(&"/issue/labels/0/color".to_owned()));
    assert!(!fid.mapped.contains(&"/issue/labels/0/color".to_owned()));

    // An empty array gives `[]`, and the array itself is mapped.
    let (body, fid) = m.apply(&issue_with("null", "[]")).expect("maps");
    assert_eq!(text(&body["label_names"]), "[]");
    assert!(fid.mapped.contains(&"/issue/labels".to_owned()));

    // Several `*`: nested arrays, nothing flattened.
    let m = mapping(json!({"/skus": {"from": "/orders/*/lines/*/sku"}})).expect("compiles");
    let rec = json!({"orders": [{"lines": [{"sku": "A-1"}, {"sku": "B-2"}]}, {"lines": []}]});
    let (body, fid) = m.apply(&rec).expect("maps");
    assert_eq!(text(&body["skus"]), r#"[["A-1","B-2"],[]]"#);
    assert_eq!(fid.mapped, ["/orders/0/lines/0/sku", "/orders/0/lines/1/sku", "/orders/1/lines"]);
}

#[test]
fn a_projected_element_without_the_field_rejects_unless_defaulted() {
    let rec = issue_with("null", r#"[{"name": "bug", "color": "f29513"}, {"name": "wontfix"}]"#);
    let m = mapping(json!({"/colors": {"from": "/issue/labels/*/color"}})).expect("compiles");
    let r = m.apply(&rec).expect_err("element 1 has no color");
    assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/issue/labels/1/color"), "projection"));
    assert!(r.message.contains("`/issue/labels/1` has no `color`"), "{}", r.message);

    let m = mapping(json!({"/colors": {"from": "/issue/labels/*/color", "default": "ededed"}}))
        .expect("compiles");
    let (body, fid) = m.apply(&rec).expect("defaulted");
    assert_eq!(text(&body["colors"]), r#"["f29513","ededed"]"#);
    assert_eq!(fid.defaulted, ["/colors/1"]);
}

#[test]
fn projected_nulls_follow_on_null_per_element() {
    let rule = |extra: Value| {
        let mut r = json!({"from": "/issue/labels/*/description"});
        if let (Value::Object(r), Value::Object(e)) = (&mut r, extra) {
            r.extend(e);
        }
        mapping(json!({ "/descriptions": r })).expect("compiles")
    };
    let (body, fid) = rule(json!({})).apply(&issue(false)).expect("keep");
    assert_eq!(text(&body["descriptions"]), r#"["Something isn't working",null]"#);
    assert!(fid.mapped.contains(&"/issue/labels/1/description".to_owned()));
    let (body, _) = rule(json!({"on_null": "omit"})).apply(&issue(false)).expect("omit");
    assert_eq!(text(&body["descriptions"]), r#"["Something isn't working"]"#);
    let (body, fid) = rule(json!({"default": ""})).apply(&issue(false)).expect("default");
    assert_eq!(text(&body["descriptions"]), r#"["Something isn't working",""]"#);
    assert_eq!(fid.defaulted, ["/descriptions/1"]);
}

#[test]
fn projection_over_a_non_array_is_a_type_error() {
    let m = mapping(json!({"/logins": {"from": "/issue/user/*/login"}})).expect("compiles");
    let r = m.apply(&issue(false)).expect_err("user is an object");
    assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/issue/user"), "type"));
    assert!(r.message.contains("is an object where `*` needs an array"), "{}", r.message);
}

#[test]
fn star_works_in_from_inside_each_but_not_in_concat_or_each_pointers() {
    let m = mapping(json!({"/orders": {"each": "/orders", "fields": {
        "/id": {"from": "/id", "convert": "string"},
        "/skus": {"from": "/lines/*/sku"}}}}))
    .expect("compiles");
    let rec = Value::parse(
        br#"{"orders": [{"id": 1296269, "lines": [{"sku": "A"}, {"sku": "B"}]}, {"id": 2, "lines": []}]}"#,
    )
    .expect("json");
    let (body, fid) = m.apply(&rec).expect("maps");
    assert_eq!(text(&body), r#"{"orders":[{"id":"1296269","skus":["A","B"]},{"id":"2","skus":[]}]}"#);
    assert!(fid.mapped.contains(&"/orders/0/lines/1/sku".to_owned()));

    let err =
        mapping(json!({"/t": {"concat": ["/issue/labels/*/name"], "separator": ","}})).expect_err("concat");
    assert_eq!(err[0].at, ["fields", "/t", "concat"]);
    assert!(err[0].message.contains("`from = \"/issue/labels/*/name\"`"), "{err:?}");
    let err = mapping(json!({"/t": {"each": "/orders/*/lines", "fields": {"/s": {"from": "/sku"}}}}))
        .expect_err("each");
    assert_eq!(err[0].at, ["fields", "/t", "each"]);
    assert!(err[0].message.contains("use `*` in the `from` of its fields"), "{err:?}");
}

/// `/issue/labels/name` once gave nothing without a word (labels is an array): now the
/// linter refuses it with the `*` form, and a record that gets through anyway is rejected.
#[test]
fn a_path_into_an_array_by_name_is_refused_at_check_and_at_run() {
    let m = mapping(json!({"/labels": {"from": "/issue/labels/name"}})).expect("compiles");
    let schema = layer2_normalize::JsonSchema::compile(serde_json::json!({"type": "object", "properties": {
        "issue": {"type": "object", "properties": {
            "labels": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "id": {"type": "integer"}}}}}}}}))
    .expect("schema");
    let issues = m.lint(&|p| schema.can_exist(p), None);
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].at, ["fields", "/labels", "from"]);
    assert!(
        issues[0].message.contains(
            "`/issue/labels` is an array: use `/issue/labels/*/name` to take every element's `name`, or an index"
        ),
        "{}",
        issues[0].message
    );
    let r = m.apply(&issue(false)).expect_err("silent no more");
    assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/issue/labels"), "path"));
    assert!(
        r.message.contains(
            "`from` pointer `/issue/labels/name`: `/issue/labels` is an array: use `/issue/labels/*/name`"
        ),
        "{}",
        r.message
    );
    // The projected form passes both.
    let ok = mapping(json!({"/labels": {"from": "/issue/labels/*/name"}})).expect("compiles");
    assert!(ok.lint(&|p| schema.can_exist(p), None).is_empty());

    // Into a string, and through `concat` and `each`: the same, naming the key.
    let m = mapping(json!({"/x": {"from": "/issue/title/text"}})).expect("compiles");
    let r = m.apply(&issue(false)).expect_err("into a string");
    assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/issue/title"), "path"));
    assert!(r.message.contains("`/issue/title` is a string, which has no `text`"), "{}", r.message);
    let m = mapping(json!({"/x": {"concat": ["/issue/number", "/issue/labels/first"]}})).expect("compiles");
    assert_eq!(m.apply(&issue(false)).expect_err("concat").rule, "path");
    let m = mapping(json!({"/x": {"each": "/issue/labels/all", "fields": {"/n": {"from": "/name"}}}}))
        .expect("compiles");
    assert_eq!(m.apply(&issue(false)).expect_err("each").rule, "path");
    // A key simply absent from an object is still just absent.
    let m = mapping(json!({"/x": {"from": "/issue/pull_request/url"}})).expect("compiles");
    assert!(m.apply(&issue(false)).expect("absent").0.get("x").is_none());
}

#[test]
fn a_null_object_on_the_way_is_a_null_source() {
    // Everything under `/issue` that no rule reads is ignored; the rules read the milestone.
    let m = |rule: Value| {
        mapping_with(
            json!({"/milestone": rule, "/due": {"from": "/issue/milestone/due_on", "timestamp": "rfc3339"}}),
            json!(["/action", "/repository", "/sender", "/issue/**"]),
            "reject",
        )
        .expect("compiles")
    };
    let rec = issue(false);
    let (body, fid) = m(json!({"from": "/issue/milestone/title"})).apply(&rec).expect("keep");
    assert_eq!(text(&body), r#"{"due":null,"milestone":null}"#);
    // `/issue/**` would ignore the milestone, but the rules read it: mapped, not ignored.
    assert!(fid.mapped.contains(&"/issue/milestone".to_owned()), "{:?}", fid.mapped);
    assert!(!fid.ignored.contains(&"/issue/milestone".to_owned()));

    let (body, _) =
        m(json!({"from": "/issue/milestone/title", "on_null": "omit"})).apply(&rec).expect("omit");
    assert_eq!(text(&body), r#"{"due":null}"#);
    let (body, fid) =
        m(json!({"from": "/issue/milestone/title", "default": "backlog"})).apply(&rec).expect("default");
    assert_eq!(text(&body), r#"{"due":null,"milestone":"backlog"}"#);
    assert_eq!(fid.defaulted, ["/milestone"]);

    // A milestone that is there maps as usual, its `-07:00` offset kept as written.
    let (body, fid) = m(json!({"from": "/issue/milestone/title"})).apply(&issue(true)).expect("maps");
    assert_eq!(text(&body), r#"{"due":"2012-10-09T23:39:01-07:00","milestone":"v1.0"}"#);
    assert!(fid.mapped.contains(&"/issue/milestone/title".to_owned()));
    assert!(fid.ignored.contains(&"/issue/milestone/creator/login".to_owned()));

    // Absent (not null) keeps the old behaviour: left out.
    let mut absent = issue(false);
    if let Value::Object(i) = &mut absent["issue"] {
        i.remove("milestone");
    }
    let (body, _) = m(json!({"from": "/issue/milestone/title"})).apply(&absent).expect("absent");
    assert_eq!(text(&body), "{}");

    // Under keep-in-extras, the null milestone is mapped, not carried as an extra.
    let keep = mapping_with(json!({"/m": {"from": "/issue/milestone/number"}}), json!([]), "keep-in-extras")
        .expect("compiles");
    let (body, fid) = keep.apply(&rec).expect("maps");
    assert!(body["m"].is_null() && body["extras"].get("/issue/milestone").is_none());
    assert!(!fid.extras.contains(&"/issue/milestone".to_owned()));
}

#[test]
fn direct_nulls_and_each_over_null_follow_on_null() {
    let rec = issue(false);
    let m = |rule: Value| mapping(json!({ "/x": rule })).expect("compiles");
    let got = |rule: Value| text(&m(rule).apply(&rec).expect("maps").0);
    assert_eq!(got(json!({"from": "/issue/assignee"})), r#"{"x":null}"#);
    assert_eq!(got(json!({"from": "/issue/assignee", "on_null": "omit"})), "{}");
    assert_eq!(got(json!({"from": "/issue/assignee", "default": "nobody"})), r#"{"x":"nobody"}"#);
    let each = |extra: Value| {
        let mut r = json!({"each": "/issue/milestone", "fields": {"/t": {"from": "/title"}}});
        if let (Value::Object(r), Value::Object(e)) = (&mut r, extra) {
            r.extend(e);
        }
        got(r)
    };
    assert_eq!(each(json!({})), r#"{"x":null}"#);
    assert_eq!(each(json!({"on_null": "omit"})), "{}");
    assert_eq!(each(json!({"default": []})), r#"{"x":[]}"#);
    // `on_null` where no null can arrive is refused, not ignored.
    let err = mapping(json!({"/x": {"const": 1, "on_null": "omit"}})).expect_err("const");
    assert_eq!(err[0].at, ["fields", "/x", "on_null"]);
}

fn pattern(p: &str) -> Vec<fidelity::IgnoreTok> {
    tokens(p).expect("pointer").iter().map(|t| fidelity::IgnoreTok::compile(t)).collect()
}

#[test]
fn ignore_patterns_match_deep_and_glob_tokens() {
    let hit = |p: &str, leaf: &str| matches_ignore(&tokens(leaf).expect("leaf"), &pattern(p));
    assert!(
        hit("/**/url", "/url") && hit("/**/url", "/issue/user/url") && hit("/**/url", "/issue/labels/0/url")
    );
    assert!(!hit("/**/url", "/issue/user/html_url") && !hit("/**/url", "/issue/urls"));
    assert!(hit("/**/*_url", "/issue/user/avatar_url") && hit("/**/*_url", "/_url"));
    assert!(!hit("/**/*_url", "/issue/user/url") && !hit("/**/*_url", "/issue/user/url_"));
    assert!(hit("/issue/**", "/issue/milestone/creator/id") && hit("/issue/**", "/issue"));
    assert!(!hit("/issue/**", "/repository/id"));
    assert!(hit("/**/avatar_*", "/sender/avatar_url") && !hit("/**/avatar_*", "/sender/gravatar_id"));
    assert!(
        hit("/a*b*c", "/abc") && hit("/a*b*c", "/a-b-b-c") && !hit("/a*b*c", "/acb") && !hit("/a*a", "/a")
    );
    // `*` alone stays one token; a pattern still covers what is below what it names.
    assert!(hit("/issue/labels/*/url", "/issue/labels/1/url") && !hit("/*/url", "/issue/user/url"));
    assert!(hit("/**/labels/*", "/issue/labels/0/id") && hit("/**/user/**/id", "/issue/user/id"));
}

/// GitHub sends ~150 URL leaves: `/**/url` and `/**/*_url` ignore every one of them, and a
/// leaf nobody listed is still caught.
#[test]
fn url_leaves_of_a_github_issue_are_ignored_by_two_patterns() {
    let m = mapping_with(
        json!({"/number": {"from": "/issue/number"}, "/title": {"from": "/issue/title"},
            "/labels": {"from": "/issue/labels/*/name"}, "/milestone": {"from": "/issue/milestone/title"}}),
        json!([
            "/**/url",
            "/**/*_url",
            "/action",
            "/repository/id",
            "/repository/full_name",
            "/**/owner/*",
            "/sender",
            "/issue/user",
            "/issue/labels/*/*",
            "/issue/milestone/*",
            "/issue/id",
            "/issue/node_id",
            "/issue/state",
            "/issue/locked",
            "/issue/assignee",
            "/issue/comments",
            "/issue/created_at",
            "/issue/closed_at",
            "/issue/author_association"
        ]),
        "reject",
    )
    .expect("compiles");
    for milestone in [false, true] {
        let r = m.apply(&issue(milestone)).expect_err("body is not listed");
        assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/issue/body"), "unmapped"), "{}", r.message);
        assert!(r.message.starts_with("1 record field(s)"), "{}", r.message);
    }
    let mut rec = issue(true);
    if let Value::Object(i) = &mut rec["issue"] {
        i.remove("body");
    }
    let (body, fid) = m.apply(&rec).expect("maps");
    assert_eq!(
        text(&body),
        r#"{"labels":["bug","good first issue"],"milestone":"v1.0","number":1347,"title":"Crash when a label is named ünïcødé 🐛"}"#
    );
    assert!(
        !fid.ignored.contains(&"/issue/number".to_owned())
            && fid.mapped.contains(&"/issue/number".to_owned())
    );

    // The two URL patterns alone: every URL leaf is ignored, every other leaf is left over.
    let only_urls = mapping_with(
        json!({"/n": {"from": "/issue/number"}}),
        json!(["/**/url", "/**/*_url"]),
        "keep-in-extras",
    )
    .expect("compiles");
    let rec = issue(true);
    let (_, fid) = only_urls.apply(&rec).expect("maps");
    let mut all = Vec::new();
    layer1_ingest::json::leaves(&rec, "", &mut all);
    let urls: Vec<&String> = all.iter().filter(|l| l.ends_with("/url") || l.ends_with("_url")).collect();
    assert_eq!(urls.len(), 31, "{urls:#?}");
    assert_eq!(fid.ignored.iter().collect::<Vec<_>>(), urls);
    assert_eq!(fid.extras.len() + fid.ignored.len() + 1, all.len());
    for other in
        ["/issue/user/gravatar_id", "/issue/labels/0/color", "/issue/milestone/creator/login", "/action"]
    {
        assert!(fid.extras.contains(&other.to_owned()), "{other} not left over");
    }
}

#[test]
fn ignore_problems_are_reported_at_their_element() {
    let spec = |ignore: Value| -> MappingSpec {
        serde_json::from_str(
            &json!({"name": "gh", "version": "1", "message_type": "t", "type_version": "1",
                "ignore": ignore, "fields": {"/n": {"from": "/issue/number"}}})
            .to_json(),
        )
        .expect("spec")
    };
    let err = Mapping::compile(spec(json!(["/issue/**", "issue/url", "/a/~x"]))).expect_err("bad pointers");
    assert_eq!(err.len(), 2, "{err:?}");
    assert_eq!(
        (&err[0].at, &err[1].at),
        (&vec!["ignore".to_owned(), "1".into()], &vec!["ignore".to_owned(), "2".into()])
    );
    assert!(err[0].message.starts_with("ignore[1] `issue/url` is not a JSON pointer"), "{}", err[0].message);

    let schema = layer2_normalize::JsonSchema::compile(serde_json::json!({"type": "object",
        "additionalProperties": false, "properties": {"action": {}, "issue": {"type": "object",
        "additionalProperties": false, "properties": {"number": {}, "url": {}, "html_url": {},
        "user": {"type": "object"}}}}}))
    .expect("schema");
    let m = Mapping::compile(spec(json!([
        "/**/url",
        "/issue/*_url",
        "/issue/**",
        "/nope/**/url",
        "/nope",
        "/issue/user/*/login",
        "/action/**"
    ])))
    .expect("compiles");
    let issues = m.lint(&|p| schema.can_exist(p), None);
    let at: Vec<String> = issues.iter().map(|i| i.at.join(" ")).collect();
    assert_eq!(at, ["ignore 3", "ignore 4"], "{issues:?}");
    assert!(
        issues[0].message.contains(
            "ignore[3] `/nope/**/url` cannot exist in a record: the record schema does not allow `/nope`"
        ),
        "{}",
        issues[0].message
    );
    assert!(issues[1].message.ends_with("does not allow it"), "{}", issues[1].message);
}

#[test]
fn target_pointers_must_start_with_a_slash() {
    let err = mapping(json!({"x": {"from": "/a"}, "/lines": {"each": "/lines", "fields": {
        "sku": {"from": "/sku"}, "": {"from": "/qty"}, "/ok": {"from": "/ok"}}}}))
    .expect_err("slash-less targets");
    let text: Vec<(String, String)> = err.iter().map(|i| (i.at.join(" "), i.message.clone())).collect();
    assert_eq!(
        text,
        [
            (
                "fields /lines fields ".to_owned(),
                "target pointer `` must start with / (`/sku`, relative to the element)".to_owned()
            ),
            (
                "fields /lines fields sku".to_owned(),
                "target pointer `sku` must start with / (`/sku`, relative to the element)".to_owned()
            ),
            ("fields x".to_owned(), "core field pointer `x` must start with / (`/x`)".to_owned()),
        ]
    );
}

/// The linter reads a projected pointer as reading that leaf of every element: the other
/// declared leaves of the elements are still unread.
#[test]
fn the_linter_counts_projected_reads_per_leaf() {
    let schema = layer2_normalize::JsonSchema::compile(serde_json::json!({"type": "object", "properties": {
        "labels": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "color": {"type": "string"}, "url": {"type": "string"}}}}}}))
    .expect("schema");
    let m = mapping_with(json!({"/names": {"from": "/labels/*/name"}}), json!(["/**/url"]), "reject")
        .expect("compiles");
    let leaves = schema.declared_leaves();
    let sides = LintSides {
        input: &|p| schema.can_exist(p),
        input_leaves: Some(&leaves),
        input_types: None,
        input_is: "core message t v1",
        input_schema_is: "its schema",
        output: None,
        output_at: "",
        output_field_is: "field",
        output_required_by: "t",
        output_is: "t",
    };
    let issues = m.lint_sides(&sides);
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert!(
        issues[0].message.starts_with("`/labels/*/color` of core message t v1 is neither read"),
        "{issues:?}"
    );
}
