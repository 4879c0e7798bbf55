//! Declarative mappings: a record to a core message, field by field, with the fidelity promise
//! checked on every record. Integration files compile to this; it runs through the same
//! [`Translator`] trait as a mapping written in Rust.
//!
//! A mapping names each core field by its JSON pointer and says where its value comes from
//! (`from`, `const`, `concat`, or `each` over an array with its own fields), what to do when it
//! is absent (`default`), and how to convert it (`enum`, `timestamp`, `convert`, `money`,
//! `case`). Every leaf of the record must be mapped or listed in `ignore`; what is left is
//! handled by `on_unmapped`. Conversions that lose information (`precision`, `max_length`, an
//! `enum` table folding two values into one, `case`, `offset = "utc"`) are refused unless the
//! rule names the loss in `lossy` (one name, or a list when a rule does two lossy things).
//!
//! Timestamps keep the offset the source wrote unless `offset` says otherwise. `money` moves
//! the decimal point by the currency's ISO 4217 exponent, digit by digit; the currency code it
//! reads beside the amount is not thereby mapped, so that no amount leaves without its code.
//!
//! Paths. A `from` pointer may project over arrays: a token that is exactly `*` takes every
//! element (`/issue/labels/*/name` gives `["bug", "good first issue"]`; several `*` give nested
//! arrays, never flattened). The rule's conversions run on each projected value, and each
//! value read counts as mapped (an empty array gives `[]` and counts itself). An element
//! without the projected field is rejected (rule `projection`) unless the rule has a
//! `default`, which then fills that position (`<field>/<i>` is listed as defaulted); a value
//! that is not an array where `*` stands is rejected (rule `type`). `*` works in `from`
//! inside `each` too (relative to the element), not in `concat` or in `each`'s own pointer.
//! A pointer that meets a value of the wrong kind (a key into an array, any token into a
//! string, number or boolean) rejects the record (rule `path`) rather than giving nothing; a
//! key an object simply lacks (or an index past an array's end) is absent: the `default`
//! applies, or the field is left out.
//!
//! Nulls (`on_null`). A `null` source, or a `null` met on the way to it (`/milestone/title`
//! when `milestone` is `null`), gives the rule's `default` when it has one (listed as
//! defaulted), otherwise `null` (`on_null = "keep"`, the default) or nothing (`"omit"`: the
//! core field is left out; inside a projection, that element is left out). The `null` itself
//! counts as mapped. `each` over a `null` array does the same. `concat` skips `null` parts.
//!
//! `ignore` patterns: a token `*` is any one token, `**` any number of tokens, zero included
//! (`/**/url`, `/issue/**`), and a token with `*` among other characters is a glob within the
//! token (`*_url`, `avatar_*`). A pattern naming an object or array covers everything in it.
//!
//! `expr` is the escape hatch: a jq-style expression computing one field
//! (`{ expr = "[.lines[] | .price * .qty] | add" }`), for what the rules cannot say: a sum, text
//! built under conditions, an element picked by a predicate. Its input is the record (the
//! element, inside `each`); its first output is the value (none, or `null`: `default`
//! applies); an error rejects the record under rule `expr`. Arithmetic is exact decimal and an
//! untouched number keeps its text; the record leaves it reads count as mapped. It runs
//! sandboxed: no `def`, no I/O or clock, at most 2 KiB of text and 100 000 steps (see
//! `expr.rs`). Several fields from one computation, lookups, I/O, state, or more than a few
//! lines of logic belong in a Rust [`Translator`] instead.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, FixedOffset, NaiveDateTime, SecondsFormat, TimeZone, Timelike, Utc};
use layer1_ingest::json::{Map, Number, Value};
use serde::Deserialize;

use layer1_ingest::json::{escape_token, insert_at, scalar_text, tokens};
use layer1_ingest::{Failure, Rejection};
use layer2_normalize::JsonSchema;

use crate::translator::{CoreMessage, Fidelity, RecordInput, Translation, Translator};

/// serde_json's `json!`, as the hub's document: for the tests of this module and its files.
#[cfg(test)]
macro_rules! json {
    ($($t:tt)+) => { Value::from(serde_json::json!($($t)+)) };
}

/// A mapping named `m` producing `t` v1 with these `fields`, `ignore` list and `on_unmapped`.
#[cfg(test)]
fn test_mapping(fields: Value, ignore: Value, on_unmapped: &str) -> Result<Mapping, Vec<MappingIssue>> {
    let spec = json!({"name": "m", "version": "1", "message_type": "t", "type_version": "1",
        "on_unmapped": on_unmapped, "ignore": ignore, "fields": fields});
    Mapping::compile(serde_json::from_str(&spec.to_json()).expect("spec"))
}

mod compile;
mod eval;
mod expr;
mod fidelity;
mod money;
mod paths;
mod reads;
mod spec;
#[cfg(test)]
mod tests_adversarial;
#[cfg(test)]
mod tests_paths;
#[cfg(test)]
mod tests_values;

pub use compile::{LintSides, TypesOf};
use eval::*;
use fidelity::IgnoreTok;
use paths::*;
pub use spec::{
    Case, Convert, FieldRule, Loss, MappingIssue, MappingSpec, MoneyConvert, OffsetOut, OnNull, OnUnmapped,
    Precision,
};

#[derive(Debug, Clone)]
enum TimeFormat {
    Rfc3339,
    Unix,
    UnixMillis,
    Pattern { pattern: String, offset: Option<FixedOffset> },
}

#[derive(Debug, Clone, Default)]
struct Transforms {
    table: Option<BTreeMap<String, Value>>,
    convert: Option<Convert>,
    timestamp: Option<(TimeFormat, Option<Precision>)>,
    max_length: Option<usize>,
    /// What a timestamp keeps of the source's offset.
    offset: OffsetOut,
    money: Option<money::Money>,
    case: Option<Case>,
}

/// A rule's record pointer, split into tokens once when the mapping compiles (not on every
/// record): its tokens between `*`s (`/a/*/b` is `[[a], [b]]`; one segment without `*`).
#[derive(Debug, Clone)]
struct Pointer {
    text: String,
    segs: Vec<Vec<String>>,
}

impl Pointer {
    fn new(p: &str) -> Self {
        Self { text: p.to_owned(), segs: segments(p).unwrap_or_default() }
    }

    /// The tokens of a pointer without `*` (`concat` and `each` refuse one at compile).
    fn tokens(&self) -> &[String] {
        self.segs.first().map_or(&[], Vec::as_slice)
    }
}

impl std::ops::Deref for Pointer {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for Pointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[derive(Debug, Clone)]
enum Source {
    From(Pointer),
    Const(Value),
    Concat(Vec<Pointer>, String),
    Each(Pointer, Vec<Field>),
    Expr(expr::Expr),
}

#[derive(Debug, Clone)]
struct Field {
    out: String,
    out_tokens: Vec<String>,
    source: Source,
    default: Option<Value>,
    on_null: OnNull,
    transforms: Transforms,
}

/// A compiled mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    spec: MappingSpec,
    fields: Vec<Field>,
    ignore: Vec<Vec<IgnoreTok>>,
}

/// A [`Translator`] running a declarative [`Mapping`], checking its output against the core
/// message type's schema when one is declared.
pub struct MappingTranslator {
    source: String,
    kind: String,
    mapping: Mapping,
    core: Option<Arc<JsonSchema>>,
}

impl MappingTranslator {
    /// Translates `source`'s `kind` records with `mapping`; `core` is the schema of the core
    /// message type the mapping produces.
    pub fn new(
        source: impl Into<String>,
        kind: impl Into<String>,
        mapping: Mapping,
        core: Option<Arc<JsonSchema>>,
    ) -> Self {
        Self { source: source.into(), kind: kind.into(), mapping, core }
    }
}

#[async_trait]
impl Translator for MappingTranslator {
    fn source(&self) -> &str {
        &self.source
    }

    fn record_kind(&self) -> &str {
        &self.kind
    }

    fn message_type(&self) -> Option<&str> {
        Some(&self.mapping.spec.message_type)
    }

    async fn translate(&self, record: &RecordInput<'_>) -> Result<Translation, Failure> {
        let (body, fidelity) = self.mapping.apply(record.data)?;
        let spec = &self.mapping.spec;
        if let Some(core) = &self.core {
            core.check(&body, "").map_err(|r| {
                Rejection::whole(
                    "core_contract",
                    format!(
                        "the core message breaks {} v{}: {}",
                        spec.message_type, spec.type_version, r.message
                    ),
                )
            })?;
        }
        Ok(Translation {
            message: CoreMessage {
                message_type: spec.message_type.clone(),
                type_version: spec.type_version.clone(),
                body,
            },
            mapping_name: spec.name.clone(),
            mapping_version: spec.version.clone(),
            fidelity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::compile::parse_offset;
    use super::*;

    fn spec(v: Value) -> MappingSpec {
        serde_json::from_str(&v.to_json()).expect("spec")
    }

    fn order_mapping(on_unmapped: &str) -> Mapping {
        Mapping::compile(spec(json!({
            "name": "order", "version": "1", "message_type": "order.placed", "type_version": "1",
            "on_unmapped": on_unmapped,
            "ignore": ["/internal", "/lines/*/note"],
            "fields": {
                "/order_id": {"from": "/id", "convert": "string"},
                "/customer/name": {"concat": ["/first", "/last"], "separator": " "},
                "/customer/tier": {"from": "/tier", "enum": {"g": "gold", "s": "silver"}},
                "/channel": {"const": "web"},
                "/currency": {"from": "/currency", "default": "EUR"},
                "/placed_at": {"from": "/placed", "timestamp": "rfc3339"},
                "/total": {"from": "/total"},
                "/lines": {"each": "/lines", "fields": {
                    "/sku": {"from": "/sku"},
                    "/qty": {"from": "/qty", "convert": "integer"}
                }}
            }
        })))
        .expect("compiles")
    }

    fn order() -> Value {
        Value::parse(
            br#"{"id": 12345678901234567890, "first": "Ada", "last": "Lovelace", "tier": "g",
                "placed": "2026-11-20T14:05:41.873+01:00", "total": 1E400, "internal": {"x": 1},
                "lines": [{"sku": "A", "qty": "2", "note": "gift"}, {"sku": "B", "qty": 3}]}"#,
        )
        .expect("json")
    }

    #[test]
    fn maps_every_construct_exactly() {
        let (body, fid) = order_mapping("reject").apply(&order()).expect("maps");
        assert_eq!(
            serde_json::to_string(&body).expect("text"),
            r#"{"channel":"web","currency":"EUR","customer":{"name":"Ada Lovelace","tier":"gold"},"lines":[{"qty":2,"sku":"A"},{"qty":3,"sku":"B"}],"order_id":"12345678901234567890","placed_at":"2026-11-20T14:05:41.873+01:00","total":1E400}"#
        );
        assert_eq!(fid.defaulted, ["/currency"]);
        assert_eq!(fid.ignored, ["/internal/x", "/lines/0/note"]);
        assert!(fid.mapped.contains(&"/lines/1/qty".to_owned()) && fid.mapped.contains(&"/total".to_owned()));
        assert!(fid.extras.is_empty() && fid.lossy.is_empty());
    }

    #[test]
    fn an_unknown_field_rejects_or_lands_in_extras() {
        let mut rec = order();
        rec["coupon"] = json!({"code": "X", "value": 0.1});
        let r = order_mapping("reject").apply(&rec).expect_err("strict");
        assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/coupon/code"), "unmapped"));
        let (body, fid) = order_mapping("keep-in-extras").apply(&rec).expect("extras");
        assert_eq!(body["extras"], json!({"/coupon/code": "X", "/coupon/value": 0.1}));
        assert_eq!(serde_json::to_string(&body["extras"]["/coupon/value"]).expect("t"), "0.1");
        assert_eq!(fid.extras, ["/coupon/code", "/coupon/value"]);
        let (body, fid) = order_mapping("ignore").apply(&rec).expect("ignored");
        assert!(body.get("extras").is_none() && fid.ignored.contains(&"/coupon/value".to_owned()));
    }

    #[test]
    fn conversions_keep_digits_or_refuse() {
        let m = order_mapping("reject");
        let mut rec = order();
        rec["lines"][0]["qty"] = json!("2.5");
        assert_eq!(m.apply(&rec).expect_err("fraction").field.as_deref(), Some("/lines/0/qty"));
        rec = order();
        rec["tier"] = json!("platinum");
        assert_eq!(m.apply(&rec).expect_err("enum").rule, "enum_table");
        rec = order();
        rec["placed"] = json!("2026-11-20T14:05:41.1234567891Z");
        assert_eq!(m.apply(&rec).expect_err("too precise").rule, "timestamp");
        let n = |s: &str| convert_exact(&json!(s), Convert::Number, "/x").map(|v| v.to_string());
        assert_eq!(n("1E400").as_deref(), Ok("1E400"));
        assert_eq!(n("-0.000000000000000000001").as_deref(), Ok("-0.000000000000000000001"));
        assert!(n("12,5").is_err() && n(" 1").is_err() && n("NaN").is_err());
    }

    #[test]
    fn timestamps() {
        // The offset is kept (the default): epoch numbers have none and come out in UTC.
        let t = |v: Value, f: TimeFormat, p| {
            timestamp(&v, &f, p, OffsetOut::Keep, "/t")
                .map(|(v, _)| v.as_str().unwrap_or_default().to_owned())
        };
        assert_eq!(
            t(json!("1700000000.123456789"), TimeFormat::Unix, None).as_deref(),
            Ok("2023-11-14T22:13:20.123456789Z")
        );
        assert_eq!(
            t(json!(1700000000123i64), TimeFormat::UnixMillis, None).as_deref(),
            Ok("2023-11-14T22:13:20.123Z")
        );
        let dotted =
            TimeFormat::Pattern { pattern: "%d.%m.%Y %H:%M:%S%.f".into(), offset: parse_offset("UTC") };
        assert_eq!(
            t(json!("20.11.2026 10:00:00.1234567891"), dotted, None).expect_err("10 digits").rule,
            "timestamp"
        );
        assert!(t(json!("-0.5"), TimeFormat::Unix, None).is_err());
        assert!(t(json!("1.+5"), TimeFormat::Unix, None).is_err());
        let local =
            TimeFormat::Pattern { pattern: "%d/%m/%Y %H:%M:%S".into(), offset: parse_offset("+02:00") };
        assert_eq!(t(json!("20/11/2026 10:00:00"), local, None).as_deref(), Ok("2026-11-20T10:00:00+02:00"));
        assert_eq!(
            t(json!("2026-11-20T14:05:41.873+01:00"), TimeFormat::Rfc3339, Some(Precision::Seconds))
                .as_deref(),
            Ok("2026-11-20T14:05:41+01:00")
        );
    }

    #[test]
    fn misspelt_options_are_parse_errors_listing_the_choices() {
        let rule = |text: &str| serde_json::from_str::<FieldRule>(text).expect_err("misspelt").to_string();
        assert!(rule(r#"{"from": "/a", "convert": "numbr"}"#).contains("`string`, `number`, `integer`"));
        assert!(rule(r#"{"from": "/a", "precision": "ms"}"#).contains("`seconds`, `millis`, `micros`"));
        let loss = rule(r#"{"from": "/a", "lossy": "truncate"}"#);
        assert!(loss.contains("`truncate-timestamp`, `truncate-text`, `merge-enum`, `case-fold`"), "{loss}");
    }

    #[test]
    fn losses_must_be_named() {
        let base = |rule: Value| {
            spec(json!({"name": "m", "version": "1", "message_type": "t", "type_version": "1",
                "fields": {"/a": rule}}))
        };
        let err =
            Mapping::compile(base(json!({"from": "/t", "timestamp": "rfc3339", "precision": "seconds"})))
                .expect_err("unnamed truncation");
        assert!(err[0].message.contains("truncate-timestamp"), "{err:?}");
        assert_eq!(err[0].at, ["fields", "/a"]);
        assert!(Mapping::compile(base(json!({"from": "/s", "enum": {"a": "x", "b": "x"}}))).is_err());
        assert!(Mapping::compile(base(json!({"from": "/s", "max_length": 3}))).is_err());
        let m = Mapping::compile(base(json!({"from": "/s", "max_length": 3, "lossy": "truncate-text"})))
            .expect("named");
        let (body, fid) = m.apply(&json!({"s": "abcdef"})).expect("maps");
        assert_eq!(
            (body["a"].as_str(), fid.lossy.as_slice()),
            (Some("abc"), &["/a: truncate-text".to_owned()][..])
        );
        assert!(Mapping::compile(base(json!({"from": "/s", "lossy": "truncate-text"}))).is_err());
        assert!(Mapping::compile(base(json!({"from": "s"}))).is_err());
        // A zoned format with a `timezone` would silently ignore it: refused.
        assert!(
            Mapping::compile(base(json!({"from": "/t", "timestamp": "rfc3339", "timezone": "UTC"}))).is_err()
        );
        assert!(
            Mapping::compile(base(json!({"from": "/t", "timestamp": "%Y %H", "timezone": "+01:00"}))).is_ok()
        );
        assert!(Mapping::compile(base(json!({"from": "/s", "const": 1}))).is_err());
    }

    #[test]
    fn lint_against_schemas() {
        let record = JsonSchema::compile(serde_json::json!({"type": "object", "additionalProperties": false,
            "properties": {"id": {"type": "string"}, "lines": {"type": "array", "items": {
                "type": "object", "additionalProperties": false, "properties": {"sku": {"type": "string"}}}}}}))
        .expect("record schema");
        let core =
            JsonSchema::compile(serde_json::json!({"type": "object", "required": ["order_id", "total"],
            "properties": {"order_id": {}, "total": {}, "lines": {}}, "additionalProperties": false}))
            .expect("core schema");
        let m = Mapping::compile(spec(json!({"name": "m", "version": "1", "message_type": "order.placed",
            "type_version": "1", "fields": {
                "/order_id": {"from": "/idd"},
                "/lines": {"each": "/lines", "fields": {"/sku": {"from": "/skuu"}}},
                "/color": {"const": "red"}}})))
        .expect("compiles");
        let issues = m.lint(&|p| record.can_exist(p), Some(&core));
        let text: Vec<String> = issues.iter().map(|i| format!("{:?}: {}", i.at, i.message)).collect();
        assert_eq!(issues.len(), 4, "{text:#?}");
        assert!(text.iter().any(|t| t.contains("`/idd` cannot exist") && t.contains("\"from\"")));
        assert!(text.iter().any(|t| t.contains("`/lines/*/skuu` cannot exist")));
        assert!(text.iter().any(|t| t.contains("`/total` is required")));
        assert!(text.iter().any(|t| t.contains("no field `/color`")));
    }

    /// Downstream: the input is a core message whose schema is fully declared (every leaf must
    /// be read or ignored under `reject`), and the request schema covers only the body.
    #[test]
    fn lint_sides_downstream_checks_unread_leaves_and_only_the_body() {
        let core = JsonSchema::compile(serde_json::json!({"type": "object", "properties": {
            "id": {"type": "string"}, "email": {}, "note": {},
            "lines": {"type": "array", "items": {"properties": {"sku": {}, "qty": {}}}}}}))
        .expect("core schema");
        let body = JsonSchema::compile(serde_json::json!({"type": "object", "required": ["email"],
            "additionalProperties": false, "properties": {"email": {}, "items": {}}}))
        .expect("request schema");
        let m = Mapping::compile(spec(json!({"name": "m", "version": "1", "message_type": "crm.patch",
            "type_version": "1", "ignore": ["/note"], "fields": {
                "/id": {"from": "/id"},
                "/body/mail": {"from": "/email"},
                "/body/items": {"each": "/lines", "fields": {"/sku": {"from": "/sku"}}}}})))
        .expect("compiles");
        assert_eq!(m.outputs(), ["/body/items/*/sku", "/body/items", "/body/mail", "/id"]);
        let leaves = core.declared_leaves();
        let sides = LintSides {
            input: &|p| core.can_exist(p),
            input_types: None,
            input_leaves: Some(&leaves),
            input_is: "core message t v1",
            input_schema_is: "its schema",
            output: Some(&body),
            output_at: "/body",
            output_field_is: "request field",
            output_required_by: "the request schema",
            output_is: "the request schema",
        };
        let text: Vec<String> =
            m.lint_sides(&sides).iter().map(|i| format!("{:?}: {}", i.at, i.message)).collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        assert!(
            text[0].starts_with("[\"on_unmapped\"]: `/lines/*/qty` of core message t v1 is neither read")
        );
        assert!(
            text.iter().any(|t| t.contains("request field `/body/email` is required by the request schema"))
        );
        assert!(text.iter().any(|t| t.contains("the request schema has no field `/mail`")));
        // Under `ignore`, unread leaves are the fidelity report's, not the linter's.
        let mut lenient = m.spec().clone();
        lenient.on_unmapped = OnUnmapped::Ignore;
        let lenient = Mapping::compile(lenient).expect("compiles");
        assert_eq!(lenient.lint_sides(&sides).len(), 2);
    }
}
