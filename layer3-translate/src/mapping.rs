//! Declarative mappings: a record to a core message, field by field, with the fidelity promise
//! checked on every record. Integration files compile to this; it runs through the same
//! [`Translator`] trait as a mapping written in Rust.
//!
//! A mapping names each core field by its JSON pointer and says where its value comes from
//! (`from`, `const`, `concat`, or `each` over an array with its own fields), what to do when it
//! is absent (`default`), and how to convert it (`enum`, `timestamp`, `convert`). Every leaf of
//! the record must be mapped or listed in `ignore`; what is left is handled by `on_unmapped`.
//! Conversions that lose information (`precision`, `max_length`, an `enum` table folding two
//! values into one) are refused unless the rule names the loss in `lossy`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, FixedOffset, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use layer1_ingest::json::{Map, Number, Value};
use serde::Deserialize;

use layer1_ingest::json::{escape_token, insert_at, scalar_text, tokens};
use layer1_ingest::{Failure, Rejection};
use layer2_normalize::JsonSchema;

use crate::translator::{CoreMessage, Fidelity, RecordInput, Translation, Translator};

/// What to do with a record leaf that is neither mapped nor ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum OnUnmapped {
    /// Reject the record at layer 3, naming the field (the default: nothing is lost silently).
    #[default]
    Reject,
    /// Carry it in the core message under `extras_at`, keyed by its pointer.
    KeepInExtras,
    /// Drop it, listing it as ignored in the fidelity report.
    Ignore,
}

/// A mapping as written in an integration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingSpec {
    /// The mapping's name, stored with every layer 3 row it produces.
    pub name: String,
    /// Its version: change it whenever the mapping changes.
    pub version: String,
    /// The core message type it produces (`member.upsert`).
    pub message_type: String,
    /// The core message type's version.
    pub type_version: String,
    /// What to do with unmapped record leaves.
    #[serde(default)]
    pub on_unmapped: OnUnmapped,
    /// Where `keep-in-extras` puts unmapped leaves in the core message.
    #[serde(default = "default_extras_at")]
    pub extras_at: String,
    /// Record pointers deliberately not carried; `*` stands for any one token (an array index).
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Core field pointer -> rule.
    pub fields: BTreeMap<String, FieldRule>,
}

fn default_extras_at() -> String {
    "/extras".into()
}

/// Where one core field's value comes from and how it is converted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRule {
    /// A pointer into the record (into the array element, inside `each`).
    #[serde(default)]
    pub from: Option<String>,
    /// A constant value.
    #[serde(default, rename = "const")]
    pub constant: Option<Value>,
    /// Pointers whose text values are joined with `separator`; absent ones are skipped.
    #[serde(default)]
    pub concat: Option<Vec<String>>,
    /// What `concat` puts between values.
    #[serde(default)]
    pub separator: Option<String>,
    /// A pointer to an array of the record: one output element per element, built by `fields`.
    #[serde(default)]
    pub each: Option<String>,
    /// The element's fields, for `each`.
    #[serde(default)]
    pub fields: Option<BTreeMap<String, FieldRule>>,
    /// The value when the source is absent or null (listed as defaulted).
    #[serde(default)]
    pub default: Option<Value>,
    /// Value table: the source's text -> the core value.
    #[serde(default, rename = "enum")]
    pub table: Option<BTreeMap<String, Value>>,
    /// Source timestamp format: `rfc3339`, `unix`, `unix-millis`, or a chrono format string.
    /// The result is RFC 3339 in UTC with every fractional digit kept.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// Offset of timestamps written without one (`+01:00`, `UTC`).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Truncates timestamps to `seconds`, `millis` or `micros` (lossy: `truncate-timestamp`).
    #[serde(default)]
    pub precision: Option<Precision>,
    /// Exact conversion: `string` (a number's text as written), `number` (text that is a JSON
    /// number, every digit kept), `integer` (text or number with no fraction).
    #[serde(default)]
    pub convert: Option<Convert>,
    /// Truncates text to this many characters (lossy: `truncate-text`).
    #[serde(default)]
    pub max_length: Option<usize>,
    /// The loss this rule accepts, by name: `truncate-timestamp`, `truncate-text`, `merge-enum`.
    #[serde(default)]
    pub lossy: Option<Loss>,
}

/// A problem with a mapping, at a key path inside the mapping's table (`["fields", "/email",
/// "from"]`), so a loader can point at the file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingIssue {
    /// Key path inside the mapping table.
    pub at: Vec<String>,
    /// What is wrong.
    pub message: String,
}

/// The precision a timestamp rule keeps (`precision = "millis"`): a loss, named
/// `truncate-timestamp`. A typo is a parse error listing these values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Whole seconds.
    Seconds,
    /// Milliseconds.
    Millis,
    /// Microseconds.
    Micros,
}

/// A loss a rule accepts by name (`lossy = "truncate-text"`): the fidelity promise allows a
/// loss only where the mapping says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loss {
    /// `precision` drops fractional digits of a timestamp.
    TruncateTimestamp,
    /// `max_length` cuts text.
    TruncateText,
    /// An `enum` table maps two source values to one core value.
    MergeEnum,
}

impl Loss {
    /// The name written in mappings and in fidelity reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Loss::TruncateTimestamp => "truncate-timestamp",
            Loss::TruncateText => "truncate-text",
            Loss::MergeEnum => "merge-enum",
        }
    }
}

#[derive(Debug, Clone)]
enum TimeFormat {
    Rfc3339,
    Unix,
    UnixMillis,
    Pattern { pattern: String, offset: Option<FixedOffset> },
}

/// An exact conversion (`convert = "number"`); a typo is a parse error listing these values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Convert {
    /// A number's text as written, a string as it is, `true`/`false` as text.
    String,
    /// Text that is a JSON number, every digit kept.
    Number,
    /// Text or a number with no fraction.
    Integer,
}

#[derive(Debug, Clone, Default)]
struct Transforms {
    table: Option<BTreeMap<String, Value>>,
    convert: Option<Convert>,
    timestamp: Option<(TimeFormat, Option<Precision>)>,
    max_length: Option<usize>,
}

#[derive(Debug, Clone)]
enum Source {
    From(String),
    Const(Value),
    Concat(Vec<String>, String),
    Each(String, Vec<Field>),
}

#[derive(Debug, Clone)]
struct Field {
    out: String,
    out_tokens: Vec<String>,
    source: Source,
    default: Option<Value>,
    transforms: Transforms,
}

/// A compiled mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    spec: MappingSpec,
    fields: Vec<Field>,
    ignore: Vec<Vec<String>>,
}

fn issue(at: &[String], key: &str, message: impl Into<String>) -> MappingIssue {
    let mut p = at.to_vec();
    if !key.is_empty() {
        p.push(key.to_owned());
    }
    MappingIssue { at: p, message: message.into() }
}

fn parse_offset(s: &str) -> Option<FixedOffset> {
    if s.eq_ignore_ascii_case("utc") || s == "Z" {
        return FixedOffset::east_opt(0);
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if h > 23 || m > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

fn compile_fields(
    rules: &BTreeMap<String, FieldRule>,
    at: &[String],
    issues: &mut Vec<MappingIssue>,
) -> Vec<Field> {
    let mut out: Vec<Field> = Vec::new();
    for (target, rule) in rules {
        let here: Vec<String> = at.iter().cloned().chain([target.clone()]).collect();
        let Some(out_tokens) = tokens(target).filter(|t| !t.is_empty()) else {
            issues.push(issue(&here, "", format!("core field `{target}` is not a JSON pointer like /email")));
            continue;
        };
        if let Some(f) = compile_rule(target, out_tokens, rule, &here, issues) {
            out.push(f);
        }
    }
    // One core field cannot be both a value and an object holding another mapped field.
    for a in &out {
        for b in &out {
            if b.out.starts_with(&format!("{}/", a.out)) {
                issues.push(issue(
                    at,
                    &b.out,
                    format!("`{}` is inside `{}`, which another rule already sets whole", b.out, a.out),
                ));
            }
        }
    }
    out
}

fn check_pointer(p: &str, at: &[String], key: &str, issues: &mut Vec<MappingIssue>) {
    if tokens(p).is_none() {
        issues.push(issue(at, key, format!("`{p}` is not a JSON pointer (it starts with /)")));
    }
}

fn compile_rule(
    target: &str,
    out_tokens: Vec<String>,
    rule: &FieldRule,
    at: &[String],
    issues: &mut Vec<MappingIssue>,
) -> Option<Field> {
    let sources = [rule.from.is_some(), rule.constant.is_some(), rule.concat.is_some(), rule.each.is_some()];
    if sources.iter().filter(|s| **s).count() != 1 {
        issues.push(issue(at, "", "give exactly one of `from`, `const`, `concat`, `each`"));
        return None;
    }
    let source = if let Some(p) = &rule.from {
        check_pointer(p, at, "from", issues);
        Source::From(p.clone())
    } else if let Some(v) = &rule.constant {
        Source::Const(v.clone())
    } else if let Some(parts) = &rule.concat {
        if parts.is_empty() {
            issues.push(issue(at, "concat", "concat needs at least one pointer"));
        }
        for p in parts {
            check_pointer(p, at, "concat", issues);
        }
        Source::Concat(parts.clone(), rule.separator.clone().unwrap_or_default())
    } else if let Some(p) = &rule.each {
        check_pointer(p, at, "each", issues);
        let Some(inner) = &rule.fields else {
            issues.push(issue(at, "each", "`each` needs `fields` describing one element"));
            return None;
        };
        let mut inner_at = at.to_vec();
        inner_at.push("fields".into());
        Source::Each(p.clone(), compile_fields(inner, &inner_at, issues))
    } else {
        return None;
    };
    let values =
        rule.constant.iter().chain(rule.default.iter()).chain(rule.table.iter().flat_map(|t| t.values()));
    for v in values {
        if toml_artifact(v) {
            issues.push(issue(
                at,
                "",
                "write dates and times as strings (\"2026-11-21T00:00:00Z\"), not TOML datetimes",
            ));
        }
    }
    if rule.default.is_some() && rule.constant.is_some() {
        issues.push(issue(at, "default", "a `const` rule has no use for a `default`"));
    }
    if rule.fields.is_some() && rule.each.is_none() {
        issues.push(issue(at, "fields", "`fields` belongs to an `each` rule"));
    }
    if rule.separator.is_some() && rule.concat.is_none() {
        issues.push(issue(at, "separator", "`separator` belongs to a `concat` rule"));
    }
    let converts = rule.table.is_some()
        || rule.timestamp.is_some()
        || rule.convert.is_some()
        || rule.max_length.is_some();
    if converts && rule.from.is_none() {
        issues.push(issue(at, "", "`enum`, `timestamp`, `convert` and `max_length` apply to a `from` value"));
    }
    let mut t = Transforms::default();
    let mut losses: Vec<Loss> = Vec::new();
    if let Some(table) = &rule.table {
        let mut seen: Vec<&Value> = Vec::new();
        for v in table.values() {
            if seen.contains(&v) {
                losses.push(Loss::MergeEnum);
                break;
            }
            seen.push(v);
        }
        t.table = Some(table.clone());
    }
    t.convert = rule.convert;
    if let Some(f) = &rule.timestamp {
        let offset = match rule.timezone.as_deref().map(|z| (z, parse_offset(z))) {
            Some((z, None)) => {
                issues.push(issue(at, "timezone", format!("`{z}` is not an offset like +01:00 or UTC")));
                None
            }
            Some((_, o)) => o,
            None => None,
        };
        let zoned = matches!(f.as_str(), "rfc3339" | "unix" | "unix-millis")
            || f.contains("%z")
            || f.contains("%:z")
            || f.contains("%#z");
        if zoned && rule.timezone.is_some() {
            issues.push(issue(
                at,
                "timezone",
                format!("`{f}` timestamps carry their own offset: drop `timezone`"),
            ));
        }
        let format = match f.as_str() {
            "rfc3339" => TimeFormat::Rfc3339,
            "unix" => TimeFormat::Unix,
            "unix-millis" => TimeFormat::UnixMillis,
            p if p.contains('%') => {
                let has_offset = p.contains("%z") || p.contains("%:z") || p.contains("%#z");
                if !has_offset && rule.timezone.is_none() {
                    issues.push(issue(
                        at,
                        "timestamp",
                        format!("`{p}` has no offset (%z): say which with `timezone`"),
                    ));
                }
                TimeFormat::Pattern { pattern: p.to_owned(), offset: if has_offset { None } else { offset } }
            }
            other => {
                issues.push(issue(
                    at,
                    "timestamp",
                    format!(
                        "unknown timestamp format `{other}` (rfc3339, unix, unix-millis, or a %-pattern)"
                    ),
                ));
                TimeFormat::Rfc3339
            }
        };
        if rule.precision.is_some() {
            losses.push(Loss::TruncateTimestamp);
        }
        t.timestamp = Some((format, rule.precision));
    } else if rule.precision.is_some() || rule.timezone.is_some() {
        issues.push(issue(at, "", "`precision` and `timezone` belong to a `timestamp` rule"));
    }
    if let Some(n) = rule.max_length {
        losses.push(Loss::TruncateText);
        t.max_length = Some(n);
    }
    // The fidelity promise: a loss happens only where the rule names it.
    for loss in losses.iter().map(|l| l.as_str()) {
        if rule.lossy.map(Loss::as_str) != Some(loss) {
            issues.push(issue(
                at,
                "",
                format!(
                    "this rule loses information ({loss}); say so with `lossy = \"{loss}\"` or change it"
                ),
            ));
        }
    }
    if let Some(l) = rule.lossy
        && !losses.contains(&l)
    {
        let l = l.as_str();
        issues.push(issue(at, "lossy", format!("`lossy = \"{l}\"` but the rule does not do that")));
    }
    // Built even with problems reported, so that the schema checks can still run on it; a
    // mapping with any problem is never run.
    Some(Field { out: target.to_owned(), out_tokens, source, default: rule.default.clone(), transforms: t })
}

impl Mapping {
    /// Compiles `spec`, or lists everything wrong with it.
    pub fn compile(spec: MappingSpec) -> Result<Self, Vec<MappingIssue>> {
        let (m, issues) = Self::compile_all(spec);
        if issues.is_empty() { Ok(m) } else { Err(issues) }
    }

    /// Compiles as much of `spec` as can be, with everything wrong with it: for a linter, which
    /// wants the schema checks too. Run the mapping only if the list is empty.
    pub fn compile_all(spec: MappingSpec) -> (Self, Vec<MappingIssue>) {
        let mut issues = Vec::new();
        for (key, v, max) in [
            ("name", &spec.name, 128),
            ("version", &spec.version, 64),
            ("message_type", &spec.message_type, 128),
            ("type_version", &spec.type_version, 32),
        ] {
            if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
                issues.push(issue(&[], key, format!("`{key}` must be 1 to {max} characters of text")));
            }
        }
        let fields = compile_fields(&spec.fields, &["fields".to_owned()], &mut issues);
        let mut ignore = Vec::new();
        for p in &spec.ignore {
            match tokens(p).filter(|t| !t.is_empty()) {
                Some(t) => ignore.push(t),
                None => issues.push(issue(&[], "ignore", format!("`{p}` is not a JSON pointer"))),
            }
        }
        if spec.on_unmapped == OnUnmapped::KeepInExtras {
            match tokens(&spec.extras_at).filter(|t| !t.is_empty()) {
                None => {
                    issues.push(issue(&[], "extras_at", "`extras_at` must be a JSON pointer like /extras"))
                }
                Some(_) => {
                    let e = &spec.extras_at;
                    if fields.iter().any(|f| {
                        f.out == *e
                            || f.out.starts_with(&format!("{e}/"))
                            || e.starts_with(&format!("{}/", f.out))
                    }) {
                        issues.push(issue(&[], "extras_at", format!("a field rule already writes `{e}`")));
                    }
                }
            }
        }
        (Self { spec, fields, ignore }, issues)
    }

    /// The mapping as written.
    pub fn spec(&self) -> &MappingSpec {
        &self.spec
    }

    /// Checks the mapping against the record's schema and the core type's schema: pointers the
    /// record can never have, required core fields nothing produces, core fields the core type
    /// does not allow.
    /// `record` answers whether a pointer can exist in a record (its schema's
    /// [`JsonSchema::can_exist`], plus whatever the normalizer adds, such as a carried envelope).
    pub fn lint(&self, record: &dyn Fn(&str) -> bool, core: Option<&JsonSchema>) -> Vec<MappingIssue> {
        let mut issues = Vec::new();
        let mut produced = Vec::new();
        lint_fields(&self.fields, record, "", &["fields".to_owned()], "", &mut produced, &mut issues);
        for (i, p) in self.spec.ignore.iter().enumerate() {
            if !record(p) {
                issues.push(issue(
                    &["ignore".into()],
                    "",
                    format!(
                        "ignore[{i}] `{p}` cannot exist in a record: the record schema does not allow it"
                    ),
                ));
            }
        }
        if self.spec.on_unmapped == OnUnmapped::KeepInExtras {
            produced.push(self.spec.extras_at.clone());
        }
        let Some(core) = core else { return issues };
        for req in core.required_pointers() {
            let covered = produced.iter().any(|p| {
                let p = p.as_str();
                p == req || req.starts_with(&format!("{p}/")) || p.starts_with(&format!("{req}/"))
            });
            if !covered {
                issues.push(issue(
                    &["fields".into()],
                    "",
                    format!(
                        "core field `{req}` is required by {} v{} but no rule produces it",
                        self.spec.message_type, self.spec.type_version
                    ),
                ));
            }
        }
        for p in &produced {
            if !core.can_exist(p) {
                issues.push(issue(
                    &["fields".into()],
                    p,
                    format!(
                        "core type {} v{} has no field `{p}`",
                        self.spec.message_type, self.spec.type_version
                    ),
                ));
            }
        }
        issues
    }
}

fn lint_fields(
    fields: &[Field],
    record: &dyn Fn(&str) -> bool,
    rec_at: &str,
    at: &[String],
    out_at: &str,
    produced: &mut Vec<String>,
    issues: &mut Vec<MappingIssue>,
) {
    for f in fields {
        let here: Vec<String> = at.iter().cloned().chain([f.out.clone()]).collect();
        produced.push(format!("{out_at}{}", f.out));
        let mut check = |p: &str, key: &str| {
            let full = format!("{rec_at}{p}");
            if !record(&full) {
                issues.push(issue(
                    &here,
                    key,
                    format!("`{full}` cannot exist in a record: the record schema does not allow it"),
                ));
            }
        };
        match &f.source {
            Source::From(p) => check(p, "from"),
            Source::Concat(parts, _) => parts.iter().for_each(|p| check(p, "concat")),
            Source::Const(_) => {}
            Source::Each(p, inner) => {
                check(p, "each");
                let mut inner_at = here.clone();
                inner_at.push("fields".into());
                lint_fields(
                    inner,
                    record,
                    &format!("{rec_at}{p}/*"),
                    &inner_at,
                    &format!("{out_at}{}/*", f.out),
                    produced,
                    issues,
                );
            }
        }
    }
}

/// What a running translation collects for the fidelity report.
#[derive(Default)]
struct Trail {
    consumed: HashSet<String>,
    defaulted: Vec<String>,
    lossy: Vec<String>,
}

fn reject(pointer: &str, rule: &str, message: impl Into<String>) -> Rejection {
    if pointer.is_empty() {
        Rejection::whole(rule, message)
    } else {
        Rejection::field(pointer, rule, message)
    }
}

/// TOML values that have no faithful JSON form: datetimes (serde turns them into a private
/// object) and non-finite floats (null).
fn toml_artifact(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.contains_key("$__toml_private_datetime") || m.values().any(toml_artifact),
        Value::Array(a) => a.iter().any(toml_artifact),
        _ => false,
    }
}

/// Scalar text, booleans included (`true`), for joining, tables and conversions.
fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Bool(b) => Some(b.to_string()),
        other => scalar_text(other),
    }
}

fn eval_fields(
    fields: &[Field],
    record: &Value,
    rec_at: &str,
    out_at: &str,
    trail: &mut Trail,
) -> Result<Map, Rejection> {
    let mut obj = Map::new();
    for f in fields {
        let out_ptr = format!("{out_at}{}", f.out);
        if let Some(v) = eval_field(f, record, rec_at, &out_ptr, trail)? {
            insert_at(&mut obj, &f.out_tokens, v);
        }
    }
    Ok(obj)
}

fn eval_field(
    f: &Field,
    record: &Value,
    rec_at: &str,
    out_ptr: &str,
    trail: &mut Trail,
) -> Result<Option<Value>, Rejection> {
    let found: Option<Value> = match &f.source {
        Source::Const(v) => return Ok(Some(v.clone())),
        Source::From(p) => match record.pointer(p) {
            None => None,
            Some(v) => {
                trail.consumed.insert(format!("{rec_at}{p}"));
                if v.is_null() {
                    None
                } else {
                    Some(convert(v, &f.transforms, &format!("{rec_at}{p}"), out_ptr, trail)?)
                }
            }
        },
        Source::Concat(parts, sep) => {
            let mut texts = Vec::new();
            for p in parts {
                let at = format!("{rec_at}{p}");
                match record.pointer(p) {
                    None => {}
                    Some(Value::Null) => {
                        trail.consumed.insert(at.clone());
                    }
                    Some(v) => {
                        trail.consumed.insert(at.clone());
                        texts.push(text_of(v).ok_or_else(|| {
                            reject(&at, "type", "concat joins strings, numbers and booleans only")
                        })?);
                    }
                }
            }
            if texts.is_empty() { None } else { Some(Value::String(texts.join(sep))) }
        }
        Source::Each(p, inner) => {
            let at = format!("{rec_at}{p}");
            match record.pointer(p) {
                None => None,
                Some(Value::Null) => {
                    trail.consumed.insert(at);
                    None
                }
                Some(Value::Array(items)) => {
                    if items.is_empty() {
                        trail.consumed.insert(at.clone());
                    }
                    let mut out = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        let el =
                            eval_fields(inner, item, &format!("{at}/{i}"), &format!("{out_ptr}/{i}"), trail)?;
                        out.push(Value::Object(el));
                    }
                    Some(Value::Array(out))
                }
                Some(_) => return Err(reject(&at, "type", "`each` needs an array")),
            }
        }
    };
    match (found, &f.default) {
        (Some(v), _) => Ok(Some(v)),
        (None, Some(d)) => {
            trail.defaulted.push(out_ptr.to_owned());
            Ok(Some(d.clone()))
        }
        // An explicit null is carried as null; an absent value stays absent.
        (None, None) => Ok(match &f.source {
            Source::From(p) if record.pointer(p).is_some_and(Value::is_null) => Some(Value::Null),
            _ => None,
        }),
    }
}

fn convert(
    v: &Value,
    t: &Transforms,
    at: &str,
    out_ptr: &str,
    trail: &mut Trail,
) -> Result<Value, Rejection> {
    let mut v = v.clone();
    if let Some(table) = &t.table {
        let key = text_of(&v)
            .ok_or_else(|| reject(at, "enum_table", "only text, numbers and booleans can be looked up"))?;
        v = table.get(&key).cloned().ok_or_else(|| {
            let known: Vec<&str> = table.keys().map(String::as_str).take(12).collect();
            reject(at, "enum_table", format!("`{key}` is not in the mapping's table ({})", known.join(", ")))
        })?;
    }
    if let Some(c) = t.convert {
        v = convert_exact(&v, c, at)?;
    }
    if let Some((format, precision)) = &t.timestamp {
        let s = timestamp(&v, format, *precision, at)?;
        if precision.is_some() {
            trail.lossy.push(format!("{out_ptr}: truncate-timestamp"));
        }
        v = Value::String(s);
    }
    if let Some(n) = t.max_length
        && let Value::String(s) = &v
        && s.chars().count() > n
    {
        trail.lossy.push(format!("{out_ptr}: truncate-text"));
        v = Value::String(s.chars().take(n).collect());
    }
    Ok(v)
}

fn exact_number(text: &str) -> Option<Number> {
    if text.len() > 1024 {
        return None;
    }
    Number::parse(text)
}

fn convert_exact(v: &Value, c: Convert, at: &str) -> Result<Value, Rejection> {
    match (c, v) {
        (Convert::String, Value::String(_)) => Ok(v.clone()),
        (Convert::String, Value::Number(n)) => Ok(Value::String(n.to_string())),
        (Convert::String, Value::Bool(b)) => Ok(Value::String(b.to_string())),
        (Convert::Number, Value::Number(_)) => Ok(v.clone()),
        (Convert::Number, Value::String(s)) => exact_number(s).map(Value::Number).ok_or_else(|| {
            reject(at, "number", format!("`{s}` is not a number written like 12.50 or 1e400"))
        }),
        (Convert::Integer, Value::String(_) | Value::Number(_)) => {
            let text = text_of(v).unwrap_or_default();
            let digits = text.strip_prefix('-').unwrap_or(&text);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                exact_number(&text).map(Value::Number).ok_or_else(|| reject(at, "integer", "not an integer"))
            } else {
                Err(reject(
                    at,
                    "integer",
                    format!("`{text}` is not an integer; converting it would lose its fraction"),
                ))
            }
        }
        _ => Err(reject(at, "type", format!("cannot convert this value to a {c:?}").to_lowercase())),
    }
}

/// The longest run of digits after a `.` in `s` (a fraction of a second, wherever it is).
fn fraction_digits(s: &str) -> usize {
    s.split('.').skip(1).map(|f| f.bytes().take_while(u8::is_ascii_digit).count()).max().unwrap_or(0)
}

fn timestamp(
    v: &Value,
    format: &TimeFormat,
    precision: Option<Precision>,
    at: &str,
) -> Result<String, Rejection> {
    let bad = |why: String| reject(at, "timestamp", why);
    let text = text_of(v).ok_or_else(|| bad("a timestamp must be text or a number".into()))?;
    // chrono keeps nanoseconds; more digits than that would be dropped without a word.
    if fraction_digits(&text) > 9 {
        return Err(bad(format!("`{text}` is more precise than nanoseconds")));
    }
    let t: DateTime<Utc> = match format {
        TimeFormat::Rfc3339 => DateTime::parse_from_rfc3339(&text)
            .map_err(|e| bad(format!("`{text}` is not RFC 3339: {e}")))?
            .with_timezone(&Utc),
        TimeFormat::Unix => {
            let (secs, frac) = text.split_once('.').unwrap_or((&text, ""));
            let s: i64 = secs.parse().map_err(|_| bad(format!("`{text}` is not seconds since 1970")))?;
            if !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(format!("`{text}` is not seconds since 1970")));
            }
            let nanos: u32 = if frac.is_empty() {
                0
            } else {
                format!("{frac:0<9}")
                    .parse()
                    .map_err(|_| bad(format!("`{text}` is not seconds since 1970")))?
            };
            // `-0.5` parses its seconds as 0: the sign is read from the text.
            if secs.starts_with('-') && nanos > 0 {
                return Err(bad("negative fractional epoch timestamps are not supported".into()));
            }
            DateTime::from_timestamp(s, nanos).ok_or_else(|| bad(format!("`{text}` is out of range")))?
        }
        TimeFormat::UnixMillis => {
            let ms: i64 =
                text.parse().map_err(|_| bad(format!("`{text}` is not whole milliseconds since 1970")))?;
            DateTime::from_timestamp_millis(ms).ok_or_else(|| bad(format!("`{text}` is out of range")))?
        }
        TimeFormat::Pattern { pattern, offset } => match offset {
            None => DateTime::parse_from_str(&text, pattern)
                .map_err(|e| bad(format!("`{text}` does not match `{pattern}`: {e}")))?
                .with_timezone(&Utc),
            Some(o) => {
                let naive = NaiveDateTime::parse_from_str(&text, pattern)
                    .map_err(|e| bad(format!("`{text}` does not match `{pattern}`: {e}")))?;
                o.from_local_datetime(&naive)
                    .single()
                    .ok_or_else(|| bad(format!("`{text}` is not a single instant")))?
                    .with_timezone(&Utc)
            }
        },
    };
    Ok(match precision {
        None => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        Some(Precision::Seconds) => t.to_rfc3339_opts(SecondsFormat::Secs, true),
        Some(Precision::Millis) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        Some(Precision::Micros) => t.to_rfc3339_opts(SecondsFormat::Micros, true),
    })
}

fn matches_ignore(leaf: &[String], pattern: &[String]) -> bool {
    leaf.len() >= pattern.len() && pattern.iter().zip(leaf).all(|(p, l)| p == "*" || p == l)
}

/// Sorts every leaf of a record into mapped (a rule read it, or an object or array above it),
/// ignored (by the mapping's `ignore` list) or unmapped, in one pass over the record.
struct Walk<'a> {
    consumed: &'a HashSet<String>,
    ignore: &'a [Vec<String>],
    fidelity: &'a mut Fidelity,
    unmapped: &'a mut Vec<String>,
}

impl Walk<'_> {
    fn visit(&mut self, v: &Value, at: &mut String, toks: &mut Vec<String>, taken: bool) {
        let taken = taken || self.consumed.contains(at.as_str());
        let mut child = |this: &mut Self, key: String, x: &Value| {
            let len = at.len();
            at.push('/');
            at.push_str(&escape_token(&key));
            toks.push(key);
            this.visit(x, at, toks, taken);
            toks.pop();
            at.truncate(len);
        };
        match v {
            Value::Object(m) if !m.is_empty() => m.iter().for_each(|(k, x)| child(self, k.clone(), x)),
            Value::Array(a) if !a.is_empty() => {
                a.iter().enumerate().for_each(|(i, x)| child(self, i.to_string(), x))
            }
            _ if taken => self.fidelity.mapped.push(at.clone()),
            _ if self.ignore.iter().any(|p| matches_ignore(toks, p)) => {
                self.fidelity.ignored.push(at.clone())
            }
            _ => self.unmapped.push(at.clone()),
        }
    }
}

impl Mapping {
    /// Translates `record` (the record as layer 2 stored it) faithfully, or says why not.
    pub fn apply(&self, record: &Value) -> Result<(Value, Fidelity), Rejection> {
        let mut trail = Trail::default();
        let mut body = eval_fields(&self.fields, record, "", "", &mut trail)?;
        let mut fidelity = Fidelity { defaulted: trail.defaulted, lossy: trail.lossy, ..Default::default() };
        let mut unmapped = Vec::new();
        let mut walk = Walk {
            consumed: &trail.consumed,
            ignore: &self.ignore,
            fidelity: &mut fidelity,
            unmapped: &mut unmapped,
        };
        walk.visit(record, &mut String::new(), &mut Vec::new(), false);
        if !unmapped.is_empty() {
            match self.spec.on_unmapped {
                OnUnmapped::Reject => {
                    let shown: Vec<&str> = unmapped.iter().take(5).map(String::as_str).collect();
                    return Err(reject(
                        &unmapped[0],
                        "unmapped",
                        format!(
                            "{} record field(s) neither mapped nor ignored by mapping {}@{} ({}): map them, \
                             list them in `ignore`, or choose `on_unmapped`",
                            unmapped.len(),
                            self.spec.name,
                            self.spec.version,
                            shown.join(", ")
                        ),
                    ));
                }
                OnUnmapped::KeepInExtras => {
                    let mut extras = Map::new();
                    for p in &unmapped {
                        if let Some(v) = record.pointer(p) {
                            extras.insert(p.clone(), v.clone());
                        }
                    }
                    let at = tokens(&self.spec.extras_at).unwrap_or_default();
                    insert_at(&mut body, &at, Value::Object(extras));
                    fidelity.extras = unmapped;
                }
                OnUnmapped::Ignore => fidelity.ignored.extend(unmapped),
            }
        }
        Ok((Value::Object(body), fidelity))
    }
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
    use super::*;

    /// serde_json's `json!`, as the hub's document.
    macro_rules! json {
        ($($t:tt)+) => { Value::from(serde_json::json!($($t)+)) };
    }

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
            r#"{"channel":"web","currency":"EUR","customer":{"name":"Ada Lovelace","tier":"gold"},"lines":[{"qty":2,"sku":"A"},{"qty":3,"sku":"B"}],"order_id":"12345678901234567890","placed_at":"2026-11-20T13:05:41.873Z","total":1E400}"#
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
        let t = |v: Value, f: TimeFormat, p| timestamp(&v, &f, p, "/t");
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
        assert_eq!(t(json!("20/11/2026 10:00:00"), local, None).as_deref(), Ok("2026-11-20T08:00:00Z"));
        assert_eq!(
            t(json!("2026-11-20T14:05:41.873+01:00"), TimeFormat::Rfc3339, Some(Precision::Seconds))
                .as_deref(),
            Ok("2026-11-20T13:05:41Z")
        );
    }

    #[test]
    fn misspelt_options_are_parse_errors_listing_the_choices() {
        let rule = |text: &str| serde_json::from_str::<FieldRule>(text).expect_err("misspelt").to_string();
        assert!(rule(r#"{"from": "/a", "convert": "numbr"}"#).contains("`string`, `number`, `integer`"));
        assert!(rule(r#"{"from": "/a", "precision": "ms"}"#).contains("`seconds`, `millis`, `micros`"));
        let loss = rule(r#"{"from": "/a", "lossy": "truncate"}"#);
        assert!(loss.contains("`truncate-timestamp`, `truncate-text`, `merge-enum`"), "{loss}");
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
}
