//! Value rules on real-shaped payloads: Stripe amounts by ISO 4217 exponent, case folding,
//! GitHub timestamps keeping their offset, `lossy` lists, and the type-aware lint.

use super::*;

fn mapping(fields: Value) -> Result<Mapping, Vec<MappingIssue>> {
    test_mapping(fields, json!([]), "ignore")
}

fn compiled(fields: Value) -> Mapping {
    mapping(fields).expect("compiles")
}

/// The messages of a mapping that must not compile.
fn refused(fields: Value) -> String {
    let issues = mapping(fields).expect_err("refused");
    issues.iter().map(|i| format!("{:?}: {}", i.at, i.message)).collect::<Vec<_>>().join("\n")
}

/// A Stripe payment_intent as its API writes it.
fn payment_intent(amount: Value, currency: &str) -> Value {
    let mut v = Value::parse(
        br#"{"id": "pi_3MtwBwLkdIwHu7ix28a3tqPa", "object": "payment_intent", "amount": 0,
            "amount_received": 0, "currency": "", "status": "succeeded", "description": null,
            "created": 1680800504, "livemode": false}"#,
    )
    .expect("json");
    v["amount"] = amount;
    v["currency"] = json!(currency);
    v
}

fn amount_rule() -> Value {
    json!({"/amount": {"from": "/amount", "money": "to-decimal", "currency": "/currency"}})
}

#[test]
fn money_to_decimal_moves_the_point_by_the_iso_4217_exponent() {
    let m = compiled(amount_rule());
    let amount = |v: Value, cur: &str| {
        m.apply(&payment_intent(v, cur)).map(|(b, _)| b["amount"].as_str().unwrap_or("not text").to_owned())
    };
    assert_eq!(amount(json!(2000), "usd").as_deref(), Ok("20.00"));
    assert_eq!(amount(json!(2000), "EUR").as_deref(), Ok("20.00"));
    assert_eq!(amount(json!(-5), "usd").as_deref(), Ok("-0.05"));
    assert_eq!(amount(json!(500), "jpy").as_deref(), Ok("500"));
    assert_eq!(amount(json!(1234), "kwd").as_deref(), Ok("1.234"));
    assert_eq!(amount(json!(5), "bhd").as_deref(), Ok("0.005"));
    assert_eq!(amount(json!("2000"), "usd").as_deref(), Ok("20.00"));
    assert_eq!(amount(json!(0), "usd").as_deref(), Ok("0.00"));
    // Every digit of an amount no integer type holds.
    let big = Value::parse(b"123456789012345678901234567890").expect("json");
    assert_eq!(amount(big, "usd").as_deref(), Ok("1234567890123456789012345678.90"));
    for bad in [json!(20.5), json!("20.00"), json!("2e3"), json!(true), json!("")] {
        let r = amount(bad.clone(), "usd").expect_err("not minor units");
        assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/amount"), "money"), "{bad:?}");
    }
}

#[test]
fn the_currency_read_by_money_is_not_mapped_by_it() {
    let strict = |fields: Value| {
        let spec: MappingSpec = serde_json::from_str(
            &json!({"name": "m", "version": "1", "message_type": "t", "type_version": "1",
                "fields": fields})
            .to_json(),
        )
        .expect("spec");
        Mapping::compile(spec).expect("compiles")
    };
    let rec = json!({"amount": 2000, "currency": "usd"});
    // The amount alone would arrive without its currency: the currency leaf is unmapped.
    let r = strict(amount_rule()).apply(&rec).expect_err("currency not carried");
    assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/currency"), "unmapped"));
    let mut both = amount_rule();
    both["/currency"] = json!({"from": "/currency"});
    let (body, fid) = strict(both).apply(&rec).expect("carried");
    assert_eq!(body, json!({"amount": "20.00", "currency": "usd"}));
    assert_eq!(fid.mapped, ["/amount", "/currency"]);
}

#[test]
fn money_rejects_a_currency_it_cannot_read() {
    let m = compiled(amount_rule());
    for (cur, said) in
        [("usx", "`usx` is not an ISO 4217"), ("XAU", "no minor unit"), ("XXX", "no minor unit")]
    {
        let r = m.apply(&payment_intent(json!(2000), cur)).expect_err(cur);
        assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/currency"), "currency"), "{cur}");
        assert!(r.message.contains("/currency") && r.message.contains(said), "{}", r.message);
    }
    let mut rec = payment_intent(json!(2000), "usd");
    rec["currency"] = Value::Null;
    assert_eq!(m.apply(&rec).expect_err("null currency").rule, "currency");
    rec["currency"] = json!(840);
    assert_eq!(m.apply(&rec).expect_err("numeric code").rule, "currency");
}

#[test]
fn money_inside_each_reads_the_currency_beside_the_amount() {
    let m = compiled(json!({"/lines": {"each": "/lines", "fields": {
        "/amount": {"from": "/amount", "money": "to-decimal", "currency": "/currency"}}}}));
    let rec = json!({"lines": [{"amount": 1234, "currency": "kwd"}, {"amount": 500, "currency": "jpy"}]});
    let (body, _) = m.apply(&rec).expect("maps");
    assert_eq!(body["lines"], json!([{"amount": "1.234"}, {"amount": "500"}]));
    let r = m.apply(&json!({"lines": [{"amount": 1, "currency": "eur"}, {"amount": 1, "currency": "zzz"}]}));
    assert_eq!(r.expect_err("unknown").field.as_deref(), Some("/lines/1/currency"));
}

#[test]
fn money_to_minor_units_is_exact_or_refused() {
    let m = |code: &str| {
        compiled(json!({"/amount": {"from": "/amount", "money": "to-minor-units", "currency": code}}))
    };
    let minor =
        |code: &str, v: Value| m(code).apply(&json!({"amount": v})).map(|(b, _)| b["amount"].to_json());
    assert_eq!(minor("EUR", json!("20.5")).as_deref(), Ok("2050"));
    assert_eq!(minor("EUR", Value::parse(b"20.50").expect("json")).as_deref(), Ok("2050"));
    assert_eq!(minor("eur", json!("-0.05")).as_deref(), Ok("-5"));
    assert_eq!(minor("EUR", json!("20")).as_deref(), Ok("2000"));
    assert_eq!(minor("EUR", json!("2.05e1")).as_deref(), Ok("2050"));
    // Zeros below the minor unit are the same amount.
    assert_eq!(minor("EUR", json!("20.550")).as_deref(), Ok("2055"));
    assert_eq!(minor("JPY", json!(500)).as_deref(), Ok("500"));
    assert_eq!(minor("KWD", json!("1.234")).as_deref(), Ok("1234"));
    assert_eq!(minor("USD", json!("12345678901234567890.99")).as_deref(), Ok("1234567890123456789099"));
    for (code, bad) in [
        ("EUR", json!("20.555")),
        ("JPY", json!("500.5")),
        ("EUR", json!("1e5000")),
        ("EUR", json!("1e-400")),
        ("EUR", json!("20,50")),
        ("EUR", json!(" 20")),
        ("EUR", json!("+20")),
        ("EUR", json!(null)),
        ("EUR", json!({"value": 20})),
    ] {
        if bad.is_null() {
            // A null amount is carried as null, like any null source.
            assert_eq!(minor(code, bad).as_deref(), Ok("null"));
            continue;
        }
        let r = m(code).apply(&json!({"amount": bad.clone()})).expect_err("refused");
        assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/amount"), "money"), "{bad:?}");
    }
    let why = m("EUR").apply(&json!({"amount": "20.555"})).expect_err("too precise").message;
    assert!(why.contains("more fraction digits than EUR"), "{why}");
}

#[test]
fn money_rules_are_checked_at_compile() {
    let rule = |r: Value| json!({"/amount": r});
    let text = refused(rule(json!({"from": "/amount", "money": "to-decimal"})));
    assert!(text.contains("\"money\"]: `money` needs `currency`"), "{text}");
    let text = refused(rule(json!({"from": "/amount", "currency": "/currency"})));
    assert!(text.contains("\"currency\"]: `currency` belongs to a `money` rule"), "{text}");
    let text = refused(rule(json!({"from": "/amount", "money": "to-decimal", "currency": "ABC"})));
    assert!(text.contains("`ABC` is not an ISO 4217 currency code"), "{text}");
    let text = refused(rule(json!({"from": "/amount", "money": "to-decimal", "currency": "XAU"})));
    assert!(text.contains("no minor unit"), "{text}");
    let text = refused(rule(json!({"from": "/amount", "money": "to-decimal", "currency": "currency"})));
    assert!(text.contains("neither a JSON pointer (/currency) nor an ISO 4217 code"), "{text}");
    for extra in [json!({"convert": "string"}), json!({"timestamp": "unix"}), json!({"enum": {"1": 1}})] {
        let mut r = json!({"from": "/amount", "money": "to-decimal", "currency": "usd"});
        for (k, v) in extra.as_object().expect("object") {
            r[k.as_str()] = v.clone();
        }
        assert!(refused(rule(r)).contains("`money` converts the amount itself"), "{extra:?}");
    }
    assert!(mapping(rule(json!({"const": 1, "money": "to-decimal", "currency": "usd"}))).is_err());
    let spelt =
        serde_json::from_str::<FieldRule>(r#"{"from": "/a", "money": "to-cents"}"#).expect_err("typo");
    assert!(spelt.to_string().contains("`to-decimal` or `to-minor-units`"), "{spelt}");
}

#[test]
fn case_folding_is_a_named_loss() {
    let text = refused(json!({"/currency": {"from": "/currency", "case": "upper"}}));
    assert!(text.contains("(case-fold); say so with `lossy = \"case-fold\"`"), "{text}");
    let m = compiled(json!({"/currency": {"from": "/currency", "case": "upper", "lossy": "case-fold"}}));
    let (body, fid) = m.apply(&payment_intent(json!(2000), "usd")).expect("maps");
    assert_eq!(
        (body["currency"].as_str(), fid.lossy.as_slice()),
        (Some("USD"), &["/currency: case-fold".to_owned()][..])
    );
    // Nothing changed, nothing lost.
    let (body, fid) = m.apply(&payment_intent(json!(2000), "USD")).expect("maps");
    assert_eq!((body["currency"].as_str(), fid.lossy.len()), (Some("USD"), 0));
    let lower = compiled(json!({"/login": {"from": "/login", "case": "lower", "lossy": "case-fold"}}));
    assert_eq!(
        lower.apply(&json!({"login": "ÉLodie-Octocat"})).expect("maps").0["login"],
        json!("élodie-octocat")
    );
    let r = lower.apply(&json!({"login": 1296269})).expect_err("not text");
    assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/login"), "type"));
    assert!(
        refused(json!({"/t": {"from": "/t", "timestamp": "unix", "case": "lower", "lossy": "case-fold"}}))
            .contains("`case` folds text")
    );
}

#[test]
fn lossy_takes_one_name_or_a_list() {
    let rule = json!({"from": "/login", "case": "upper", "max_length": 4});
    let text = refused(json!({"/login": rule.clone()}));
    assert!(text.contains("(case-fold)") && text.contains("(truncate-text)"), "{text}");
    assert!(text.contains("`lossy = [\"case-fold\", \"truncate-text\"]`"), "{text}");
    let mut one = rule.clone();
    one["lossy"] = json!("case-fold");
    assert!(refused(json!({"/login": one})).contains("(truncate-text)"));
    let mut both = rule.clone();
    both["lossy"] = json!(["case-fold", "truncate-text"]);
    let (body, fid) = compiled(json!({"/login": both})).apply(&json!({"login": "octocat"})).expect("maps");
    assert_eq!(body["login"], json!("OCTO"));
    assert_eq!(fid.lossy, ["/login: case-fold", "/login: truncate-text"]);
    let mut extra = rule;
    extra["lossy"] = json!(["case-fold", "truncate-text", "merge-enum"]);
    assert!(
        refused(json!({"/login": extra})).contains("`lossy = \"merge-enum\"` but the rule does not do that")
    );
    let spelt = serde_json::from_str::<FieldRule>(r#"{"from": "/a", "lossy": ["case-fold", "fold"]}"#)
        .expect_err("typo")
        .to_string();
    assert!(spelt.contains("`case-fold`, `drop-offset`"), "{spelt}");
    let toml_list: FieldRule = toml::from_str(
        r#"from = "/a"
lossy = ["case-fold", "truncate-text"]"#,
    )
    .expect("toml list");
    assert_eq!(toml_list.lossy, [Loss::CaseFold, Loss::TruncateText]);
    let toml_one: FieldRule = toml::from_str("from = \"/a\"\nlossy = \"drop-offset\"").expect("toml name");
    assert_eq!(toml_one.lossy, [Loss::DropOffset]);
    let spelt = toml::from_str::<FieldRule>("from = \"/a\"\nlossy = \"case\"").expect_err("typo").to_string();
    assert!(spelt.contains("`case-fold`"), "{spelt}");
}

fn stamp(rule: Value, v: Value) -> Result<(Value, Fidelity), Rejection> {
    let mut r = rule;
    r["from"] = json!("/created_at");
    compiled(json!({"/at": r})).apply(&json!({"created_at": v})).map(|(b, f)| (b["at"].clone(), f))
}

#[test]
fn timestamps_keep_the_offset_as_written() {
    let rfc = json!({"timestamp": "rfc3339"});
    for written in [
        "2019-05-15T15:20:30-07:00",
        "2011-04-14T16:00:49Z",
        "2019-05-15T15:20:30.5-07:00",
        "2019-05-15T15:20:30.123456789+05:45",
        "2019-05-15T15:20:30-00:00",
    ] {
        let (at, fid) = stamp(rfc.clone(), json!(written)).expect(written);
        assert_eq!((at, fid.lossy.len()), (json!(written), 0));
    }
    assert_eq!(stamp(rfc.clone(), json!("2019-05-15 15:20")).expect_err("not rfc 3339").rule, "timestamp");
    // RFC 3339 reads `t`, `z` and a space separator too; they are written the standard way.
    assert_eq!(
        stamp(rfc.clone(), json!("2011-04-14 16:00:49.50z")).expect("maps").0,
        json!("2011-04-14T16:00:49.50Z")
    );
    // Truncated, in its own offset.
    let secs = json!({"timestamp": "rfc3339", "precision": "seconds", "lossy": "truncate-timestamp"});
    assert_eq!(
        stamp(secs.clone(), json!("2019-05-15T15:20:30.873-07:00")).expect("maps").0,
        json!("2019-05-15T15:20:30-07:00")
    );
    assert_eq!(
        stamp(secs.clone(), json!("2011-04-14T16:00:49.5Z")).expect("maps").0,
        json!("2011-04-14T16:00:49Z")
    );
    assert_eq!(
        stamp(secs, json!("2011-04-14T16:00:49.5+00:00")).expect("maps").0,
        json!("2011-04-14T16:00:49+00:00")
    );
    // A `%z` pattern: RFC 3339 in the parsed offset; a `timezone`: in the declared one.
    let zoned = json!({"timestamp": "%d/%m/%Y %H:%M:%S %z"});
    assert_eq!(
        stamp(zoned, json!("15/05/2019 15:20:30 -0700")).expect("maps").0,
        json!("2019-05-15T15:20:30-07:00")
    );
    let local = json!({"timestamp": "%d.%m.%Y %H:%M", "timezone": "+02:00"});
    assert_eq!(stamp(local, json!("15.05.2019 15:20")).expect("maps").0, json!("2019-05-15T15:20:00+02:00"));
    // Epoch numbers (a GitHub push's `created_at`) have no offset: UTC.
    let unix = json!({"timestamp": "unix"});
    assert_eq!(stamp(unix, json!(1557959430)).expect("maps").0, json!("2019-05-15T22:30:30Z"));
}

#[test]
fn split_and_utc_offsets() {
    let split = json!({"timestamp": "rfc3339", "offset": "split"});
    assert_eq!(
        stamp(split.clone(), json!("2019-05-15T15:20:30-07:00")).expect("maps").0,
        json!({"instant": "2019-05-15T22:20:30Z", "offset": "-07:00"})
    );
    assert_eq!(
        stamp(split, json!("2011-04-14T16:00:49Z")).expect("maps").0,
        json!({"instant": "2011-04-14T16:00:49Z", "offset": "+00:00"})
    );
    let unix_split = json!({"timestamp": "unix", "offset": "split"});
    assert_eq!(
        stamp(unix_split, json!(1557959430)).expect("maps").0,
        json!({"instant": "2019-05-15T22:30:30Z", "offset": "+00:00"})
    );
    let utc = json!({"timestamp": "rfc3339", "offset": "utc", "lossy": "drop-offset"});
    let (at, fid) = stamp(utc.clone(), json!("2019-05-15T15:20:30.5-07:00")).expect("maps");
    assert_eq!(
        (at, fid.lossy.as_slice()),
        (json!("2019-05-15T22:20:30.500Z"), &["/at: drop-offset".to_owned()][..])
    );
    // A zero offset drops nothing.
    let (at, fid) = stamp(utc, json!("2011-04-14T16:00:49Z")).expect("maps");
    assert_eq!((at, fid.lossy.len()), (json!("2011-04-14T16:00:49Z"), 0));
    // Compile: `utc` names its loss, except for epoch numbers, which have no offset to drop.
    let text = refused(json!({"/at": {"from": "/t", "timestamp": "rfc3339", "offset": "utc"}}));
    assert!(text.contains("(drop-offset)"), "{text}");
    assert!(
        refused(json!({"/at": {"from": "/t", "timestamp": "%d %H %z", "offset": "utc"}}))
            .contains("(drop-offset)")
    );
    compiled(json!({"/at": {"from": "/t", "timestamp": "unix-millis", "offset": "utc"}}));
    let text =
        refused(json!({"/at": {"from": "/t", "timestamp": "unix", "offset": "utc", "lossy": "drop-offset"}}));
    assert!(text.contains("does not do that"), "{text}");
    assert!(
        refused(json!({"/at": {"from": "/t", "offset": "split"}})).contains("belong to a `timestamp` rule")
    );
    let spelt = serde_json::from_str::<FieldRule>(r#"{"from": "/a", "offset": "local"}"#).expect_err("typo");
    assert!(spelt.to_string().contains("`keep`, `split`, `utc`"), "{spelt}");
}

#[test]
fn lint_checks_each_conversion_against_the_record_types() {
    // A GitHub push event's repository, as its schema types it.
    let record = JsonSchema::compile(serde_json::json!({"type": "object", "additionalProperties": false,
        "properties": {"repository": {"type": "object", "properties": {
            "id": {"type": "integer"},
            "created_at": {"type": "integer"},
            "pushed_at": {"type": ["integer", "null"]},
            "updated_at": {"type": "string", "format": "date-time"},
            "private": {"type": "boolean"},
            "owner": {"type": "object"},
            "topics": {"type": "array", "items": {"type": "string"}},
            "size": {"type": "number"},
            "anything": {}}},
        "amount": {"type": "integer"}, "currency": {"type": "string"}}}))
    .expect("schema");
    let m = compiled(json!({
        "/created": {"from": "/repository/created_at", "timestamp": "rfc3339"},
        "/created_local": {"from": "/repository/created_at", "timestamp": "%Y-%m-%d %z"},
        "/pushed": {"from": "/repository/pushed_at", "timestamp": "rfc3339"},
        "/pushed_unix": {"from": "/repository/pushed_at", "timestamp": "unix"},
        "/updated": {"from": "/repository/updated_at", "timestamp": "rfc3339"},
        "/private_at": {"from": "/repository/private", "timestamp": "unix"},
        "/owner_n": {"from": "/repository/owner", "convert": "number"},
        "/topics_s": {"from": "/repository/topics", "convert": "string"},
        "/private_s": {"from": "/repository/private", "convert": "string"},
        "/id_s": {"from": "/repository/id", "convert": "string"},
        "/id_case": {"from": "/repository/id", "case": "upper", "lossy": "case-fold"},
        "/id_text_case": {"from": "/repository/id", "convert": "string", "case": "upper", "lossy": "case-fold"},
        "/size_money": {"from": "/repository/size", "money": "to-minor-units", "currency": "EUR"},
        "/private_money": {"from": "/repository/private", "money": "to-decimal", "currency": "/currency"},
        "/amount": {"from": "/amount", "money": "to-decimal", "currency": "/curency"},
        "/amount_by_id": {"from": "/amount", "money": "to-decimal", "currency": "/repository/id"},
        "/amount_ok": {"from": "/amount", "money": "to-decimal", "currency": "/currency"},
        "/flag_at": {"from": "/repository/private", "enum": {"true": "2019-05-15T15:20:30-07:00"},
            "timestamp": "rfc3339"},
        "/open_at": {"from": "/repository/anything", "timestamp": "rfc3339"}
    }));
    let types = |p: &str| record.types_can_be(p);
    let issues = m.lint_typed(&|p| record.can_exist(p), Some(&types), None);
    let found: Vec<String> = issues.iter().map(|i| format!("{}: {}", i.at.join(" "), i.message)).collect();
    let expect = [
        "fields /created timestamp: `/repository/created_at` is an integer in the record schema; `rfc3339` \
         reads text: use `unix` or `unix-millis`",
        "fields /created_local timestamp: `/repository/created_at` is an integer in the record schema; \
         `%Y-%m-%d %z` reads text",
        "fields /pushed timestamp: `/repository/pushed_at` is an integer in the record schema",
        "fields /private_at timestamp: `/repository/private` is a boolean in the record schema; epoch",
        "fields /owner_n convert: `/repository/owner` is an object in the record schema: it cannot convert \
         to a number",
        "fields /topics_s convert: `/repository/topics` is an array",
        "fields /id_case case: `/repository/id` is an integer in the record schema; `case` folds text",
        "fields /private_money money: `/repository/private` is a boolean",
        "fields /amount currency: `/curency` cannot exist in a record",
        "fields /amount_by_id currency: `/repository/id` is an integer in the record schema; a currency is \
         a code",
    ];
    for e in expect {
        assert!(found.iter().any(|f| f.starts_with(e)), "no `{e}` in {found:#?}");
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");
    // Without the types, only the pointer check.
    assert_eq!(m.lint(&|p| record.can_exist(p), None).len(), 1);
}

/// The Stripe fixture the end-to-end tests use, through a strict mapping: the amount by its
/// currency's exponent, the code carried by its own rule, the unix `created` in UTC.
#[test]
fn a_stripe_payment_intent_event_maps_exactly() {
    let event = Value::parse(include_bytes!("../../../tests/fixtures/stripe/payment_intent.succeeded.json"))
        .expect("fixture");
    let spec: MappingSpec = serde_json::from_str(
        &json!({"name": "stripe-pi", "version": "1", "message_type": "payment.recorded", "type_version": "1",
        "ignore": ["/object", "/api_version", "/livemode", "/pending_webhooks", "/request", "/type",
            "/data/object/object", "/data/object/amount_capturable", "/data/object/amount_details",
            "/data/object/application", "/data/object/application_fee_amount",
            "/data/object/automatic_payment_methods", "/data/object/canceled_at",
            "/data/object/cancellation_reason", "/data/object/capture_method",
            "/data/object/client_secret", "/data/object/confirmation_method",
            "/data/object/customer", "/data/object/description", "/data/object/invoice",
            "/data/object/last_payment_error", "/data/object/livemode", "/data/object/metadata",
            "/data/object/next_action", "/data/object/on_behalf_of", "/data/object/payment_method",
            "/data/object/payment_method_configuration_details", "/data/object/payment_method_options",
            "/data/object/payment_method_types", "/data/object/processing", "/data/object/receipt_email",
            "/data/object/review", "/data/object/setup_future_usage", "/data/object/shipping",
            "/data/object/source", "/data/object/statement_descriptor",
            "/data/object/statement_descriptor_suffix", "/data/object/status",
            "/data/object/transfer_data", "/data/object/transfer_group"],
        "fields": {
            "/event_id": {"from": "/id"},
            "/recorded_at": {"from": "/created", "timestamp": "unix"},
            "/payment_id": {"from": "/data/object/id"},
            "/amount/value": {"from": "/data/object/amount", "money": "to-decimal",
                "currency": "/data/object/currency"},
            "/amount/received": {"from": "/data/object/amount_received", "money": "to-decimal",
                "currency": "/data/object/currency"},
            "/amount/currency": {"from": "/data/object/currency", "case": "upper", "lossy": "case-fold"},
            "/created_at": {"from": "/data/object/created", "timestamp": "unix", "offset": "split"},
            "/charge": {"from": "/data/object/latest_charge"}
        }})
        .to_json(),
    )
    .expect("spec");
    let (body, fid) = Mapping::compile(spec).expect("compiles").apply(&event).expect("maps");
    assert_eq!(body["amount"], json!({"value": "20.00", "received": "20.00", "currency": "USD"}));
    assert_eq!(body["recorded_at"], json!("2024-11-21T12:05:31Z"));
    assert_eq!(body["created_at"], json!({"instant": "2024-11-21T12:05:28Z", "offset": "+00:00"}));
    assert_eq!(body["charge"], json!("ch_3QxR7sLkdIwHu7ix0Wm1pKfL"));
    assert_eq!(fid.lossy, ["/amount/currency: case-fold"]);
    assert!(fid.extras.is_empty() && fid.ignored.contains(&"/data/object/description".to_owned()));
}
