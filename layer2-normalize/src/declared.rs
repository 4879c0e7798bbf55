//! A [`Normalizer`] described by data instead of code: where the records sit in a payload,
//! which record kind each one is, the JSON Schema (and its version) each kind is checked
//! against, and which field is the record's own id. Integration files compile to this.

use async_trait::async_trait;

use layer1_ingest::json::{Condition, Headers, Map, Value, scalar_text};
use layer1_ingest::pull::run::SKIP_HEADER;
use layer1_ingest::{Failure, Rejection};

use crate::normalizer::{Normalizer, RawInput, Record};
use crate::schema::JsonSchema;

/// The key under which a record carries the envelope fields its integration names.
pub const ENVELOPE_KEY: &str = "_envelope";

/// Most records one payload may carry unless the integration says otherwise.
pub const DEFAULT_MAX_RECORDS: usize = 10_000;

/// One record kind: its schema, version and how to recognise it.
#[derive(Debug)]
pub struct DeclaredKind {
    /// The kind's name (`contact`): picks the translator.
    pub name: String,
    /// The schema version stored with every layer 2 row of this kind.
    pub schema_version: String,
    /// The schema records of this kind must satisfy.
    pub schema: JsonSchema,
    /// Pointer (inside the record) to the record's id at the third party.
    pub source_ref: Option<String>,
    /// Which records are of this kind; none: every record (for the only, or last, kind).
    pub when: Option<Condition>,
}

/// An event the integration does not want (`[[drop]]` in its file): a payload its `when`
/// holds for is accepted and dropped (the layer 1 row ends `dropped`, naming the rule), not
/// rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct DropRule {
    /// The rule's name, recorded on every row it drops.
    pub name: String,
    /// Which payloads it drops: tested on the whole payload and its request headers.
    pub when: Condition,
}

/// Longest reading of one kind's `when` in a "matches none of the record kinds" rejection.
const WHEN_SHOWN: usize = 120;

/// Splits and checks one source's payloads as its integration file declares.
#[derive(Debug)]
pub struct DeclaredNormalizer {
    source: String,
    drops: Vec<DropRule>,
    envelope: Option<JsonSchema>,
    carry: Vec<(String, Vec<String>)>,
    records: Option<String>,
    event_ref: Option<String>,
    max_records: usize,
    kinds: Vec<DeclaredKind>,
}

impl DeclaredNormalizer {
    /// A normalizer for `source`. `records` points at the array of records in a payload (none:
    /// the payload is one record); `event_ref` points at the payload's event id (the
    /// idempotency key). Kinds are tried in order; the first whose `when` holds is the kind.
    pub fn new(
        source: impl Into<String>,
        records: Option<String>,
        event_ref: Option<String>,
        max_records: usize,
        kinds: Vec<DeclaredKind>,
    ) -> Self {
        Self {
            source: source.into(),
            drops: Vec::new(),
            envelope: None,
            carry: Vec::new(),
            records,
            event_ref,
            max_records,
            kinds,
        }
    }

    /// Copies these payload fields (pointers outside the records) into every record under
    /// `_envelope`, so that what a batch says about all its records (which account, when) is
    /// carried, mapped and accounted for like the rest. Pointers that are not JSON pointers are
    /// skipped (the loader refuses them first).
    pub fn carrying(mut self, pointers: &[String]) -> Self {
        self.carry = pointers
            .iter()
            .filter_map(|p| layer1_ingest::json::tokens(p).filter(|t| !t.is_empty()).map(|t| (p.clone(), t)))
            .collect();
        self
    }

    /// Also checks every whole payload against `schema` (the batch's envelope) first.
    pub fn with_envelope(mut self, schema: JsonSchema) -> Self {
        self.envelope = Some(schema);
        self
    }

    /// Drops the payloads these rules match, tried in order before any record kind is picked
    /// (see [`DropRule`]).
    pub fn dropping(mut self, rules: Vec<DropRule>) -> Self {
        self.drops = rules;
        self
    }

    fn kind_of(&self, record: &Value, headers: &Headers) -> Option<&DeclaredKind> {
        self.kinds.iter().find(|k| k.when.as_ref().is_none_or(|c| c.holds_with(record, headers)))
    }

    /// Whether any rule or kind tests a request header (only then are they read).
    fn uses_headers(&self) -> bool {
        self.drops.iter().any(|d| d.when.uses_headers())
            || self.kinds.iter().filter_map(|k| k.when.as_ref()).any(Condition::uses_headers)
    }

    /// Why a record is of no kind: the kinds tried, each with its test (shortened).
    fn no_kind(&self) -> String {
        let tried: Vec<String> = self
            .kinds
            .iter()
            .map(|k| {
                let when = k.when.as_ref().map(ToString::to_string).unwrap_or_default();
                let when = match when.char_indices().nth(WHEN_SHOWN) {
                    Some((cut, _)) => format!("{}...", &when[..cut]),
                    None => when,
                };
                format!("{} (when: {when})", k.name)
            })
            .collect();
        if tried.is_empty() {
            "the integration declares no record kinds".into()
        } else {
            format!("matches none of the record kinds: {}", tried.join(", "))
        }
    }
}

#[async_trait]
impl Normalizer for DeclaredNormalizer {
    fn source(&self) -> &str {
        &self.source
    }

    fn event_ref(&self, body: &[u8]) -> Option<String> {
        crate::normalizer::event_ref_at(body, self.event_ref.as_deref()?)
    }

    async fn normalize(&self, raw: &RawInput<'_>) -> Result<Vec<Record>, Failure> {
        // Exact parsing: numbers keep their text and a repeated key is an error, not a loss.
        let payload = Value::parse(raw.body)
            .map_err(|e| Rejection::whole("json", format!("payload is not JSON: {e}")))?;
        let pulled_page = raw.headers.contains(SKIP_HEADER);
        let headers = if self.uses_headers() || pulled_page {
            raw.parsed_headers().map_err(|e| Rejection::whole("headers", e))?
        } else {
            Headers::default()
        };
        // A pulled page lists the records its run did not take (already taken, or not past the
        // saved cursor): they get no record here. Only the hub's puller writes this header
        // (the front door drops incoming `hub-pull-*` headers).
        let skip: std::collections::HashSet<usize> = match headers.get(SKIP_HEADER) {
            None => Default::default(),
            Some(list) => list
                .split(',')
                .map(|i| {
                    i.trim().parse::<usize>().map_err(|_| {
                        Rejection::whole(
                            "headers",
                            format!("`{SKIP_HEADER}` holds `{i}`, not a record index"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        // Before the envelope and the kinds: a dropped event need not fit what the integration
        // reads (GitHub sends every event type to one URL).
        if let Some(rule) = self.drops.iter().find(|d| d.when.holds_with(&payload, &headers)) {
            return Err(Failure::Dropped { rule: rule.name.clone() });
        }
        if let Some(s) = &self.envelope {
            s.check(&payload, "")?;
        }
        let (prefix, records): (&str, Vec<&Value>) = match &self.records {
            None => ("", vec![&payload]),
            Some(p) => match payload.pointer(p) {
                Some(Value::Array(items)) => (p.as_str(), items.iter().collect()),
                Some(_) => {
                    return Err(Rejection::field(p.clone(), "type", "records must be an array").into());
                }
                None => {
                    return Err(
                        Rejection::field(p.clone(), "required", "the payload has no records array").into()
                    );
                }
            },
        };
        if records.len() > self.max_records {
            return Err(Rejection::field(
                prefix,
                "max_records",
                format!(
                    "{} records in one payload; at most {} are accepted",
                    records.len(),
                    self.max_records
                ),
            )
            .into());
        }
        let mut out = Vec::with_capacity(records.len());
        for (i, record) in records.into_iter().enumerate() {
            if skip.contains(&i) {
                continue;
            }
            let at = if self.records.is_some() { format!("{prefix}/{i}") } else { String::new() };
            let Some(kind) = self.kind_of(record, &headers) else {
                let why = self.no_kind();
                return Err(if at.is_empty() {
                    Rejection::whole("record_kind", why)
                } else {
                    Rejection::field(at, "record_kind", why)
                }
                .into());
            };
            // Which kind was tried: with several, the schema a record failed says little alone.
            let of_kind = |mut r: Rejection| {
                r.message =
                    format!("record kind `{}` (schema v{}): {}", kind.name, kind.schema_version, r.message);
                r
            };
            kind.schema.check(record, &at).map_err(of_kind)?;
            let source_ref = match &kind.source_ref {
                None => None,
                Some(p) => Some(record.pointer(p).and_then(scalar_text).ok_or_else(|| {
                    of_kind(Rejection::field(
                        format!("{at}{p}"),
                        "source_ref",
                        "the record's id is missing or is not a string or number",
                    ))
                })?),
            };
            let mut data = record.clone();
            if !self.carry.is_empty() {
                let Value::Object(fields) = &mut data else {
                    return Err(Rejection::field(
                        at,
                        "type",
                        "only object records can carry envelope fields",
                    )
                    .into());
                };
                if fields.contains_key(ENVELOPE_KEY) {
                    return Err(Rejection::field(
                        format!("{at}/{ENVELOPE_KEY}"),
                        "envelope",
                        "the record has its own `_envelope`: the payload's cannot be carried beside it",
                    )
                    .into());
                }
                let mut env = Map::new();
                for (p, toks) in &self.carry {
                    if let Some(v) = payload.pointer(p) {
                        layer1_ingest::json::insert_at(&mut env, toks, v.clone());
                    }
                }
                fields.insert(ENVELOPE_KEY.to_owned(), Value::Object(env));
            }
            out.push(Record {
                kind: kind.name.clone(),
                source_ref,
                schema_version: Some(kind.schema_version.clone()),
                data,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use uuid::Uuid;

    fn normalizer() -> DeclaredNormalizer {
        let schema = |v| JsonSchema::compile(v).expect("schema");
        DeclaredNormalizer::new(
            "iot",
            Some("/readings".into()),
            Some("/batch".into()),
            3,
            vec![
                DeclaredKind {
                    name: "alarm".into(),
                    schema_version: "1".into(),
                    schema: schema(json!({"type": "object", "required": ["device"]})),
                    source_ref: None,
                    when: Some(Condition::at("/alarm").equals(true)),
                },
                DeclaredKind {
                    name: "reading".into(),
                    schema_version: "2".into(),
                    schema: schema(json!({"type": "object", "required": ["id", "value"],
                        "properties": {"value": {"type": "number"}}})),
                    source_ref: Some("/id".into()),
                    when: None,
                },
            ],
        )
    }

    async fn run(n: &DeclaredNormalizer, body: &str) -> Result<Vec<Record>, Failure> {
        run_with(n, body, "").await
    }

    async fn run_with(n: &DeclaredNormalizer, body: &str, headers: &str) -> Result<Vec<Record>, Failure> {
        let raw = RawInput {
            id: Uuid::now_v7().into(),
            source: "iot",
            source_ref: None,
            content_type: "application/json",
            body: body.as_bytes(),
            headers,
        };
        n.normalize(&raw).await
    }

    fn condition(v: serde_json::Value) -> Condition {
        serde_json::from_value(v).expect("condition")
    }

    /// GitHub: one URL for every event, the type only in `X-GitHub-Event`.
    fn github() -> DeclaredNormalizer {
        let schema = |v| JsonSchema::compile(v).expect("schema");
        DeclaredNormalizer::new(
            "github",
            None,
            None,
            1,
            vec![
                DeclaredKind {
                    name: "issue_opened".into(),
                    schema_version: "1".into(),
                    schema: schema(json!({"type": "object", "required": ["issue"],
                        "properties": {"issue": {"type": "object", "required": ["number"]}}})),
                    source_ref: Some("/issue/id".into()),
                    when: Some(condition(json!({"all": [
                        {"header": "X-GitHub-Event", "equals": "issues"},
                        {"pointer": "/action", "equals": "opened"}]}))),
                },
                DeclaredKind {
                    name: "push".into(),
                    schema_version: "1".into(),
                    schema: schema(json!({"type": "object", "required": ["ref"]})),
                    source_ref: None,
                    when: Some(condition(json!({"header": "X-GitHub-Event", "equals": "push"}))),
                },
            ],
        )
        .dropping(vec![DropRule {
            name: "issues-not-opened".into(),
            when: condition(json!({"all": [{"header": "X-GitHub-Event", "equals": "issues"},
                {"not": {"pointer": "/action", "equals": "opened"}}]})),
        }])
    }

    const ISSUES: &str =
        r#"{"x-github-event":"issues","x-github-delivery":"72d3162e-cc78-11e3-81ab-4c9367dc0958"}"#;
    const PUSH: &str = r#"{"x-github-event":"push"}"#;

    #[tokio::test]
    async fn the_kind_is_picked_by_header() {
        let n = github();
        let opened = r#"{"action":"opened","issue":{"id":1296269,"number":1347,"title":"Ünïcode 🐛"}}"#;
        let out = run_with(&n, opened, ISSUES).await.expect("an opened issue");
        assert_eq!((out[0].kind.as_str(), out[0].source_ref.as_deref()), ("issue_opened", Some("1296269")));
        // The same body under another event header is not an issue event.
        let r = rejection(run_with(&n, opened, PUSH).await);
        assert!(r.message.contains("record kind `push` (schema v1)"), "{r}");
        let out = run_with(&n, r#"{"ref":"refs/heads/main","commits":[]}"#, PUSH).await.expect("a push");
        assert_eq!(out[0].kind, "push");
    }

    #[tokio::test]
    async fn a_pulled_page_yields_only_the_records_its_run_took() {
        let n = normalizer();
        let page = r#"{"batch":"b1","readings":[{"id":"r1","value":1},{"id":"r2","value":2},{"id":"r3","value":3}]}"#;
        let out = run_with(&n, page, r#"{"hub-pull-run":"x","hub-pull-skip":"0,2"}"#).await.expect("page");
        let ids: Vec<_> = out.iter().map(|r| r.source_ref.as_deref()).collect();
        assert_eq!(ids, [Some("r2")]);
        // A skipped record is not checked either (it was taken, and checked, before).
        let page = r#"{"batch":"b1","readings":[{"id":"r1"},{"id":"r2","value":2}]}"#;
        assert_eq!(run_with(&n, page, r#"{"hub-pull-skip":"0"}"#).await.expect("page").len(), 1);
        assert_eq!(rejection(run_with(&n, page, "{}").await).rule, "required");
        // A damaged list is refused, never read as "skip nothing".
        let r = rejection(run_with(&n, page, r#"{"hub-pull-skip":"0,x"}"#).await);
        assert!(r.message.contains("`x`, not a record index"), "{r}");
    }

    #[tokio::test]
    async fn a_drop_rule_drops_before_kinds_are_tried() {
        let n = github();
        // Not even shaped like an issue: the drop comes first.
        match run_with(&n, r#"{"action":"closed"}"#, ISSUES).await {
            Err(Failure::Dropped { rule }) => assert_eq!(rule, "issues-not-opened"),
            other => panic!("expected a drop, got {other:?}"),
        }
        // Headers are needed and damaged: refused, never a panic or a silent drop.
        let r = rejection(run_with(&n, r#"{"action":"closed"}"#, "{not json").await);
        assert_eq!(r.rule, "headers");
        // Not JSON is still a rejection, not a drop.
        assert_eq!(rejection(run_with(&n, "{", ISSUES).await).rule, "json");
    }

    #[tokio::test]
    async fn a_rejection_names_the_kind_tried_or_every_kind() {
        let n = github();
        let r = rejection(run_with(&n, r#"{"action":"opened","issue":{"id":1}}"#, ISSUES).await);
        assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/issue/number"), "required"));
        assert!(r.message.starts_with("record kind `issue_opened` (schema v1): "), "{r}");
        let r = rejection(
            run_with(&n, r#"{"zen":"Keep it logically awesome."}"#, r#"{"x-github-event":"ping"}"#).await,
        );
        assert_eq!(r.rule, "record_kind");
        assert_eq!(
            r.message,
            "matches none of the record kinds: issue_opened (when: (header x-github-event = \"issues\" and \
             /action = \"opened\")), push (when: header x-github-event = \"push\")"
        );
    }

    fn rejection(r: Result<Vec<Record>, Failure>) -> Rejection {
        match r {
            Err(Failure::Rejected(r)) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn splits_picks_kinds_and_keeps_numbers() {
        let n = normalizer();
        let out =
            run(&n, r#"{"batch":"b1","readings":[{"id":7,"value":1E400},{"alarm":true,"device":"d"}]}"#)
                .await
                .expect("valid");
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].kind.as_str(), out[0].source_ref.as_deref()), ("reading", Some("7")));
        assert_eq!(out[0].schema_version.as_deref(), Some("2"));
        assert_eq!(serde_json::to_string(&out[0].data).expect("text"), r#"{"id":7,"value":1E400}"#);
        assert_eq!(out[1].kind, "alarm");
        assert_eq!(n.event_ref(br#"{"batch":"b1"}"#).as_deref(), Some("b1"));
    }

    #[tokio::test]
    async fn envelope_fields_are_carried_into_each_record() {
        let n = normalizer().carrying(&["/batch".into(), "/site/name".into(), "/absent".into()]);
        let out = run(&n, r#"{"batch":"b7","site":{"name":"Oslo","id":1},"readings":[{"id":1,"value":2}]}"#)
            .await
            .expect("valid");
        assert_eq!(out[0].data["_envelope"], json!({"batch": "b7", "site": {"name": "Oslo"}}));
        let r = rejection(run(&n, r#"{"readings":[{"id":1,"value":2,"_envelope":{}}]}"#).await);
        assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/readings/0/_envelope"), "envelope"));
    }

    #[tokio::test]
    async fn rejections_name_where_and_why() {
        let n = normalizer();
        let r = rejection(run(&n, r#"{"readings":[{"id":"a","value":1},{"id":"b","value":"x"}]}"#).await);
        assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/readings/1/value"), "type"));
        let r = rejection(run(&n, r#"{"readings":[{"value":1}]}"#).await);
        assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/readings/0/id"), "required"));
        let r = rejection(run(&n, r#"{"readings":{}}"#).await);
        assert_eq!(r.rule, "type");
        let r = rejection(run(&n, r#"{"readings":[{"id":1,"value":1},{"id":2,"value":1},{"id":3,"value":1},{"id":4,"value":1}]}"#).await);
        assert_eq!(r.rule, "max_records");
        assert_eq!(rejection(run(&n, "{").await).rule, "json");
    }
}
