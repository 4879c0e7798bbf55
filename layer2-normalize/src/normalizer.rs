//! The integration point of layer 2: one [`Normalizer`] per source.

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use validator::{Validate, ValidationErrors, ValidationErrorsKind};

use layer1_ingest::json::{Headers, Value, escape_token, first_duplicate_key, scalar_text, value_at};
use layer1_ingest::{Failure, Rejection};

/// A layer 1 row as a normalizer sees it.
#[derive(Debug, Clone, Copy)]
pub struct RawInput<'a> {
    /// The layer 1 id.
    pub id: layer1_ingest::RawId,
    /// The integration's name.
    pub source: &'a str,
    /// The third party's event id, if any.
    pub source_ref: Option<&'a str>,
    /// The sender's content type.
    pub content_type: &'a str,
    /// The bytes exactly as received.
    pub body: &'a [u8],
    /// The request headers kept with the message, as layer 1 stores them: a JSON object of
    /// strings, names lowercased, secrets redacted (read it with [`RawInput::parsed_headers`]).
    /// Empty when there are none (a message not received over HTTP, a hand-made input).
    pub headers: &'a str,
}

impl RawInput<'_> {
    /// The request headers, parsed. An error (a damaged stored text, never a sender's input)
    /// says what is wrong; it is the caller's to decide whether it needs them.
    pub fn parsed_headers(&self) -> Result<Headers, String> {
        Headers::from_json(self.headers)
    }
}

/// One validated record, ready for layer 3.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Which kind of record: picks the translator.
    pub kind: String,
    /// The record's own id at the third party.
    pub source_ref: Option<String>,
    /// The schema version it was checked against.
    pub schema_version: Option<String>,
    /// The record.
    pub data: Value,
}

impl Record {
    /// A record from a typed, already validated value.
    pub fn from_typed<T: Serialize>(
        kind: &str,
        source_ref: Option<String>,
        schema_version: &str,
        value: &T,
    ) -> Result<Self, Failure> {
        let data = Value::from_typed(value)
            .map_err(|e| Failure::Rejected(Rejection::whole("serialize", e.to_string())))?;
        Ok(Record {
            kind: kind.to_owned(),
            source_ref,
            schema_version: Some(schema_version.to_owned()),
            data,
        })
    }
}

/// Turns one source's raw bytes into zero or more validated records.
///
/// Return [`Failure::Rejected`] for bad input, naming the field (a JSON pointer) and the rule;
/// [`Failure::Transient`] for a passing problem. A payload is all or nothing: one bad record
/// rejects the payload, so a batch is never half-forwarded.
#[async_trait]
pub trait Normalizer: Send + Sync + 'static {
    /// The source (integration name) this normalizer serves.
    fn source(&self) -> &str;

    /// The third party's event id, read from the body, for sources that put it there (when the
    /// caller did not pass one). Used as the idempotency key at ingest; `None` falls back to
    /// the body's hash. Read it with [`event_ref_at`], so that a body layer 2 will refuse for a
    /// repeated key cannot claim an event id.
    fn event_ref(&self, _body: &[u8]) -> Option<String> {
        None
    }

    /// Parses and validates.
    async fn normalize(&self, raw: &RawInput<'_>) -> Result<Vec<Record>, Failure>;
}

/// The event id at `pointer` in `body` (a string, or a number as written, as
/// [`Value::parse`] reads it at layer 2). A body that parse refuses (not
/// JSON, or a key repeated anywhere) has no event id and is keyed by its hash: otherwise
/// `{"id":"evt_x","id":"evt_other"}`, rejected at layer 2, would take `evt_other`'s key and the
/// real `evt_other` would later be answered "duplicate".
pub fn event_ref_at(body: &[u8], pointer: &str) -> Option<String> {
    // On every ingest, so two linear passes, no document built: the repeated-key check, then
    // the one value, read exactly (a numeric id as written).
    if first_duplicate_key(body).ok()?.is_some() {
        return None;
    }
    value_at(body, pointer).as_ref().and_then(scalar_text)
}

/// Parses JSON into `T`, naming the offending field on failure: its JSON pointer, and the rule
/// (`json` for syntax, `required` for a missing field, `unknown_field` for a field the type does
/// not declare, `enum` for a value outside a closed set, `duplicate_key` for a key repeated
/// anywhere, `type` for the rest).
///
/// A repeated key is refused even where serde would keep the last value (maps, ignored
/// fields): the payload is ambiguous, and ingest ([`event_ref_at`]) gives such a body no event
/// id, so layer 2 must not carry it on as if it had one.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Rejection> {
    let value = parse_typed(body)?;
    // The typed parse has checked the syntax; one more linear pass finds a repeated key.
    match first_duplicate_key(body) {
        Ok(None) => Ok(value),
        Ok(Some(pointer)) => {
            let why = format!("duplicate key at `{pointer}`");
            Err(Rejection::field(pointer, "duplicate_key", why))
        }
        Err(e) => Err(Rejection::whole("json", e)),
    }
}

fn parse_typed<T: DeserializeOwned>(body: &[u8]) -> Result<T, Rejection> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let mut pointer = path_to_pointer(e.path());
        let inner = e.into_inner();
        let text = inner.to_string();
        let named = |prefix: &str| {
            text.strip_prefix(prefix).and_then(|rest| rest.split('`').next()).map(str::to_owned)
        };
        let rule = if inner.is_syntax() || inner.is_eof() {
            "json"
        } else if let Some(f) = named("missing field `") {
            pointer = format!("{pointer}/{}", escape_token(&f));
            "required"
        } else if let Some(f) = named("unknown field `") {
            // The path already ends at the unknown key.
            let leaf = format!("/{}", escape_token(&f));
            if !pointer.ends_with(&leaf) {
                pointer.push_str(&leaf);
            }
            "unknown_field"
        } else if text.starts_with("unknown variant") {
            "enum"
        } else {
            "type"
        };
        if pointer.is_empty() { Rejection::whole(rule, text) } else { Rejection::field(pointer, rule, text) }
    })
}

fn path_to_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("/{index}")),
            Segment::Map { key } => out.push_str(&format!("/{}", escape_token(key))),
            Segment::Enum { variant } => out.push_str(&format!("/{}", escape_token(variant))),
            Segment::Unknown => out.push_str("/?"),
        }
    }
    out
}

/// Runs `validator` on `value`, turning the first failure (in a stable order) into a
/// [`Rejection`] with the field's JSON pointer and the rule's code.
pub fn validate<T: Validate>(value: &T) -> Result<(), Rejection> {
    match value.validate() {
        Ok(()) => Ok(()),
        Err(errors) => Err(first_rejection(&errors, String::new())
            .unwrap_or_else(|| Rejection::whole("validate", errors.to_string()))),
    }
}

fn first_rejection(errors: &ValidationErrors, prefix: String) -> Option<Rejection> {
    let mut fields: Vec<_> = errors.errors().iter().collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    for (field, kind) in fields {
        let pointer = format!("{prefix}/{}", escape_token(field));
        match kind {
            ValidationErrorsKind::Field(errs) => {
                if let Some(e) = errs.first() {
                    let message = e.message.as_ref().map(|m| m.to_string()).unwrap_or_else(|| describe(e));
                    return Some(Rejection::field(pointer, e.code.to_string(), message));
                }
            }
            ValidationErrorsKind::Struct(inner) => {
                if let Some(r) = first_rejection(inner, pointer) {
                    return Some(r);
                }
            }
            ValidationErrorsKind::List(items) => {
                for (i, inner) in items {
                    if let Some(r) = first_rejection(inner, format!("{pointer}/{i}")) {
                        return Some(r);
                    }
                }
            }
        }
    }
    None
}

fn describe(e: &validator::ValidationError) -> String {
    let value = e.params.get("value").map(|v| format!(" (got {v})")).unwrap_or_default();
    let mut bounds: Vec<String> =
        e.params.iter().filter(|(k, _)| *k != "value").map(|(k, v)| format!("{k} {v}")).collect();
    bounds.sort();
    if bounds.is_empty() {
        format!("value does not satisfy `{}`{value}", e.code)
    } else {
        format!("value does not satisfy `{}` ({}){value}", e.code, bounds.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Validate)]
    struct Batch {
        #[validate(nested)]
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Strict {
        a: u32,
    }

    #[derive(Debug, Deserialize, Validate)]
    struct Item {
        #[validate(email)]
        email: String,
        #[validate(range(min = 1, max = 10))]
        qty: u32,
    }

    /// The event id is read with the exact parse: a repeated key (anywhere) leaves a body with
    /// no id, and layer 2 refuses it naming the key, so the two never disagree.
    #[test]
    fn a_repeated_key_gives_no_event_id_and_is_refused() {
        assert_eq!(event_ref_at(br#"{"id":"evt_x","n":1}"#, "/id").as_deref(), Some("evt_x"));
        assert_eq!(
            event_ref_at(br#"{"id":12345678901234567890}"#, "/id").as_deref(),
            Some("12345678901234567890")
        );
        assert_eq!(event_ref_at(br#"{"id":"evt_x","id":"evt_other"}"#, "/id"), None);
        assert_eq!(event_ref_at(br#"{"id":"evt_x","m":{"k":1,"k":2}}"#, "/id"), None);
        assert_eq!(event_ref_at(b"{\"id\":\"evt_trunc", "/id"), None);
        assert_eq!(event_ref_at(br#"{"id":{"nested":1}}"#, "/id"), None);

        let r = parse_json::<std::collections::BTreeMap<String, u32>>(br#"{"k":1,"k":2}"#)
            .expect_err("serde alone would keep the last `k`");
        assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/k"), "duplicate_key"));
    }

    #[test]
    fn validation_names_the_pointer_and_the_rule() {
        let b: Batch = parse_json(br#"{"items":[{"email":"a@b.co","qty":1},{"email":"nope","qty":3}]}"#)
            .expect("parses");
        let r = validate(&b).expect_err("second email is invalid");
        assert_eq!(r.field.as_deref(), Some("/items/1/email"));
        assert_eq!(r.rule, "email");
    }

    #[test]
    fn parse_errors_name_the_field() {
        let r = parse_json::<Batch>(br#"{"items":[{"email":"a@b.co","qty":"x"}]}"#).expect_err("bad type");
        assert_eq!(r.field.as_deref(), Some("/items/0/qty"));
        assert_eq!(r.rule, "type");
        let r = parse_json::<Batch>(b"{not json").expect_err("bad json");
        assert_eq!(r.rule, "json");
        let r = parse_json::<Batch>(br#"{"items":[{"email":"a@b.co"}]}"#).expect_err("missing");
        assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/items/0/qty"), "required"));
        let r = parse_json::<Strict>(br#"{"a":1,"extra":2}"#).expect_err("unknown");
        assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/extra"), "unknown_field"));
    }
}
