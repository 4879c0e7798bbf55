//! One source's integration file: parsed, checked against its schemas and the core catalogue,
//! and built into a normalizer, translators and routes. Each concern is one function (the
//! payload, one record kind, the routes, the front door); each reports into the file's
//! diagnostics and the file yields an integration only when none was reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use layer1_ingest::json::Condition;
use layer2_normalize::declared::{DEFAULT_MAX_RECORDS, ENVELOPE_KEY};
use layer2_normalize::{DeclaredKind, DeclaredNormalizer, DropRule, JsonSchema};
use layer3_translate::{Mapping, MappingIssue, MappingSpec, MappingTranslator};
use layer4_dispatch::Route;

use super::outbound::{OutboundSpec, load_downstream};
use super::{
    CORE_FILE, Catalogue, Diagnostic, FileDiags, Integration, Locator, is_pointer, load_schema, parse_toml,
    read_text, valid_name,
};
use crate::config::SourceConfig;
use crate::outbound::TargetSpec;
use crate::pull::PullConfig;

/// An integration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntegrationFile {
    source: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    ingress: Option<SourceConfig>,
    /// A source the hub polls itself (instead of, or besides, `[ingress]`): its pages are read
    /// like batch payloads, by `[payload]` and the record kinds.
    #[serde(default)]
    pull: Option<PullConfig>,
    #[serde(default)]
    payload: PayloadSpec,
    /// The upstream side: record kinds (none for a file with only a downstream side).
    #[serde(default)]
    kinds: BTreeMap<String, KindSpec>,
    /// Events accepted and dropped (`[[drop]]`), tried in file order before the kinds.
    #[serde(default)]
    drop: Vec<DropSpec>,
    #[serde(default)]
    routes: Vec<Route>,
    /// The downstream side: the third party the source's name stands for...
    #[serde(default)]
    target: Option<TargetSpec>,
    /// ...and, per core message type, how it is delivered there.
    #[serde(default)]
    outbound: BTreeMap<String, OutboundSpec>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct PayloadSpec {
    #[serde(default)]
    schema: Option<PathBuf>,
    #[serde(default)]
    records: Option<String>,
    #[serde(default)]
    event_ref: Option<String>,
    #[serde(default)]
    max_records: Option<usize>,
    #[serde(default)]
    carry: Vec<String>,
    /// Payload fields shown masked to readers without scope `raw` ([`crate::redact`]).
    #[serde(default)]
    redact: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KindSpec {
    schema: PathBuf,
    schema_version: String,
    #[serde(default)]
    source_ref: Option<String>,
    #[serde(default, deserialize_with = "some_condition")]
    when: Option<Condition>,
    mapping: MappingSpec,
}

/// `[[drop]]`: an event type the integration does not want, accepted and dropped.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DropSpec {
    name: String,
    #[serde(deserialize_with = "one_condition")]
    when: Condition,
}

/// What a `when` given as an array (a common mistake: several tests meant together) is told.
const WHEN_TAKES_ONE: &str = "`when` takes one condition: { pointer = \"/action\", equals = \"opened\" } or \
     { header = ... }; combine several with all = [...], any = [...], not = {...}";

/// `when`: one condition (a table). serde alone would answer an array with "invalid type:
/// sequence, expected struct Condition".
fn one_condition<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Condition, D::Error> {
    struct One;
    impl<'de> serde::de::Visitor<'de> for One {
        type Value = Condition;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(WHEN_TAKES_ONE)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Condition, A::Error> {
            Condition::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Condition, A::Error> {
            Err(serde::de::Error::custom(WHEN_TAKES_ONE))
        }
    }
    d.deserialize_any(One)
}

fn some_condition<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Condition>, D::Error> {
    one_condition(d).map(Some)
}

/// What the record kinds of a file built.
#[derive(Default)]
struct Kinds {
    /// Layer 2's kinds, the catch-all last.
    declared: Vec<DeclaredKind>,
    /// Layer 3, one per kind.
    translators: Vec<MappingTranslator>,
    /// Every (type, version) a mapping produces, for the route check.
    produced: Vec<(String, String)>,
    /// The compiled mappings, for the redaction rules of their core fields.
    mappings: Vec<Mapping>,
}

pub(super) fn load_integration(
    file: &Path,
    dir: &Path,
    catalogue: &Catalogue,
    secrets: super::Secrets,
    out: &mut Vec<Diagnostic>,
) -> Option<Integration> {
    let text = match read_text(file) {
        Ok(t) => t,
        Err(e) => {
            out.push(Diagnostic { file: file.to_owned(), line: None, message: e });
            return None;
        }
    };
    let before = out.len();
    let mut d = FileDiags { file: file.to_owned(), loc: Locator::new(&text), out };
    let f: IntegrationFile = parse_toml(&mut d, &text)?;
    if !valid_name(&f.source) {
        d.at(&["source"], format!("source `{}` must be 1 to 64 of a-z, 0-9, `-`, `_`, `.`", f.source));
    }
    let base = file.parent().unwrap_or(dir);
    let envelope = check_payload(&mut d, &f.payload, base);
    check_sides(&mut d, &f);
    check_drops(&mut d, &f.drop, envelope.as_ref());
    let kinds = load_kinds(&mut d, &f, base, catalogue, envelope.as_ref());
    let outbound =
        load_downstream(&mut d, &f.source, f.target.as_ref(), &f.outbound, base, catalogue, secrets.targets);
    let routes = check_routes(&mut d, &f.source, f.routes, catalogue, &kinds.produced);
    let redaction = redaction(&mut d, &f.payload, envelope.as_ref(), &kinds, &routes);
    if secrets.ingress
        && let Some(ing) = &f.ingress
    {
        check_ingress(&mut d, &f.source, ing);
    }
    if let Some(p) = &f.pull {
        let page = super::pull::PagePayload {
            records: f.payload.records.as_deref(),
            max_records: f.payload.max_records.unwrap_or(DEFAULT_MAX_RECORDS),
            schema: envelope.as_ref(),
        };
        let kinds: Vec<super::pull::KindSchema<'_>> = kinds
            .declared
            .iter()
            .filter_map(|k| {
                let file = &f.kinds.get(&k.name)?.schema;
                Some(super::pull::KindSchema { name: &k.name, file, schema: &k.schema })
            })
            .collect();
        super::pull::check_pull(&mut d, &f.source, p, &page, &kinds, secrets.pulls);
    }
    if d.out.len() > before {
        return None;
    }
    // The pages are split at `[payload] records` (the check made sure `[pull] records`, if
    // given, is the same): the runner reads them there too.
    let pull = f.pull.map(|mut p| {
        p.records.clone_from(&f.payload.records);
        p
    });
    let mut normalizer = DeclaredNormalizer::new(
        f.source.clone(),
        f.payload.records,
        f.payload.event_ref,
        f.payload.max_records.unwrap_or(DEFAULT_MAX_RECORDS),
        kinds.declared,
    );
    if let Some(s) = envelope {
        normalizer = normalizer.with_envelope(s);
    }
    let drops = f.drop.into_iter().map(|d| DropRule { name: d.name, when: d.when }).collect();
    normalizer = normalizer.dropping(drops);
    normalizer = normalizer.carrying(&f.payload.carry);
    Some(Integration {
        description: f.description,
        normalizer,
        source: f.source,
        file: file.to_owned(),
        translators: kinds.translators,
        routes,
        ingress: f.ingress,
        pull,
        outbound,
        redaction,
    })
}

/// `[payload] redact`: each a JSON pointer (`*` for any array index) that can exist in a
/// payload (its schema's, when there is one; a record's, when it points into the records or
/// the payload is the record); the rules they make for the audit desk, none without pointers.
/// The event id, record ids and ordering keys, shown unmasked, must not read redacted fields.
fn redaction(
    d: &mut FileDiags<'_>,
    p: &PayloadSpec,
    envelope: Option<&JsonSchema>,
    kinds: &Kinds,
    routes: &[Route],
) -> Option<crate::redact::SourceRedaction> {
    if p.redact.is_empty() {
        return None;
    }
    let records = p.records.as_deref().and_then(layer1_ingest::json::tokens);
    for (i, ptr) in p.redact.iter().enumerate() {
        let idx = i.to_string();
        let Some(toks) = layer1_ingest::json::tokens(ptr).filter(|t| !t.is_empty()) else {
            d.at(
                &["payload", "redact", &idx],
                format!("`{ptr}` is not a JSON pointer like /data/object/client_secret"),
            );
            continue;
        };
        // Inside a record: the pointer below the record (after the array index).
        let in_record = match &records {
            None => Some(ptr.clone()),
            Some(r) if toks.len() > r.len() && toks[..r.len()] == r[..] => Some(
                toks[r.len() + 1..]
                    .iter()
                    .map(|t| format!("/{}", layer1_ingest::json::escape_token(t)))
                    .collect(),
            ),
            Some(_) => None,
        };
        let in_payload = envelope.is_none_or(|s| s.can_exist(ptr));
        let in_a_record = match &in_record {
            Some(rp) if !kinds.declared.is_empty() => kinds.declared.iter().any(|k| k.schema.can_exist(rp)),
            _ => true,
        };
        if !in_payload {
            d.at(
                &["payload", "redact", &idx],
                format!("`{ptr}` cannot exist in a payload: its schema does not allow it"),
            );
        } else if !in_a_record {
            d.at(
                &["payload", "redact", &idx],
                format!("`{ptr}` cannot exist in a payload: no record kind's schema allows it"),
            );
        }
    }
    let mut rules = crate::redact::SourceRedaction::new(&p.redact, p.records.as_deref(), &p.carry);
    for m in &kinds.mappings {
        rules.add_mapping(m);
    }
    // Ids and ordering keys are shown on every row, unmasked: they must not be read from a
    // redacted field.
    let payload_pointers: Vec<Vec<String>> =
        p.redact.iter().filter_map(|r| layer1_ingest::json::tokens(r)).collect();
    if let Some(e) = &p.event_ref
        && let Some(t) = layer1_ingest::json::tokens(e)
        && payload_pointers.iter().any(|r| crate::redact::overlaps(r, &t))
    {
        d.at(
            &["payload", "event_ref"],
            format!("`{e}` is redacted: an event id is shown on every row, unmasked"),
        );
    }
    for k in &kinds.declared {
        if let Some(sref) = &k.source_ref
            && rules.reads_redacted(sref)
        {
            d.at(
                &["kinds", &k.name, "source_ref"],
                format!("`{sref}` is redacted: a record id is shown on every row, unmasked"),
            );
        }
    }
    for (i, r) in routes.iter().enumerate() {
        if let Some(key) = &r.ordering_key
            && kinds.produced.iter().any(|(t, _)| r.matches_type(t) && rules.masks_core_field(t, key))
        {
            d.at(
                &["routes", &i.to_string(), "ordering_key"],
                format!(
                    "`{key}` is filled from a redacted field: an ordering key is shown on every row, unmasked"
                ),
            );
        }
    }
    Some(rules)
}

/// `[payload]`: its pointers, its schema (returned, for the envelope check at layer 2), and the
/// envelope fields it carries to each record.
fn check_payload(d: &mut FileDiags<'_>, p: &PayloadSpec, base: &Path) -> Option<JsonSchema> {
    for (key, ptr) in [("records", &p.records), ("event_ref", &p.event_ref)] {
        // `records = ""`: the payload itself is the array of records (a page of GitHub's API).
        if let Some(ptr) = ptr
            && !is_pointer(ptr)
            && !(key == "records" && ptr.is_empty())
        {
            d.at(&["payload", key], format!("`{ptr}` is not a JSON pointer like /{key}"));
        }
    }
    let envelope = match &p.schema {
        None => None,
        Some(path) => match load_schema(base, path) {
            Ok(s) => {
                for (key, ptr) in [("records", &p.records), ("event_ref", &p.event_ref)] {
                    if let Some(ptr) = ptr
                        && !s.can_exist(ptr)
                    {
                        d.at(
                            &["payload", key],
                            format!("`{ptr}` cannot exist in a payload: its schema does not allow it"),
                        );
                    }
                }
                Some(s)
            }
            Err(e) => {
                d.at(&["payload", "schema"], e);
                None
            }
        },
    };
    for (i, c) in p.carry.iter().enumerate() {
        let idx = i.to_string();
        let inside_records = p.records.as_ref().is_some_and(|r| {
            c == r || c.starts_with(&format!("{r}/")) || r.starts_with(&format!("{c}/")) || c.is_empty()
        });
        if !is_pointer(c) {
            d.at(&["payload", "carry", &idx], format!("`{c}` is not a JSON pointer like /event_id"));
        } else if inside_records {
            d.at(
                &["payload", "carry", &idx],
                format!("`{c}` overlaps the records: carry fields beside them"),
            );
        } else if envelope.as_ref().is_some_and(|s| !s.can_exist(c)) {
            d.at(
                &["payload", "carry", &idx],
                format!("`{c}` cannot exist in a payload: its schema does not allow it"),
            );
        }
    }
    envelope
}

/// A file has an upstream side (record kinds), a downstream side (`[outbound]`), or both; what
/// only the upstream side uses (`[ingress]`, `[payload]`, `[[routes]]`) needs kinds. At most
/// one kind lacks `when` (the catch-all).
fn check_sides(d: &mut FileDiags<'_>, f: &IntegrationFile) {
    let kinds = &f.kinds;
    if kinds.is_empty() {
        if f.outbound.is_empty() && f.target.is_none() {
            d.at(
                &["kinds"],
                "declare at least one record kind under [kinds.<name>] (webhooks in) or a [target] with \
                 [outbound.\"<core type>\"] (deliveries out)",
            );
        }
        if f.pull.is_some() {
            d.at(
                &["pull"],
                "[pull] fetches pages that record kinds read, and this file declares no [kinds.<name>]: \
                 nothing could read its pages",
            );
        }
        let upstream_only = [
            ("ingress", f.ingress.is_some()),
            ("payload", f.payload != PayloadSpec::default()),
            ("routes", !f.routes.is_empty()),
            ("drop", !f.drop.is_empty()),
        ];
        for (key, given) in upstream_only {
            if given {
                d.at(
                    &[key],
                    format!("[{key}] is for webhooks in, and this file declares no [kinds] to read them"),
                );
            }
        }
    }
    let catch_all: Vec<&String> = kinds.iter().filter(|(_, k)| k.when.is_none()).map(|(n, _)| n).collect();
    if kinds.len() > 1 && catch_all.len() > 1 {
        d.at(
            &["kinds"],
            format!(
                "record kinds {} all lack `when`: only one kind may take every record not matched by the others",
                catch_all.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
            ),
        );
    }
}

/// Compiles a mapping and checks it with `lint` (against its input and output schemas),
/// reporting every issue at its key below `at` (the mapping's table). Returns the mapping and
/// whether it compiled: a mapping with compile problems is never run, but the schema checks
/// still run on what could be built, so one pass reports everything.
pub(super) fn check_mapping(
    d: &mut FileDiags<'_>,
    at: &[String],
    spec: &MappingSpec,
    lint: impl FnOnce(&Mapping) -> Vec<MappingIssue>,
) -> (Mapping, bool) {
    let (mapping, issues) = Mapping::compile_all(spec.clone());
    let compiled = issues.is_empty();
    let lint_issues = lint(&mapping);
    for i in issues.into_iter().chain(lint_issues) {
        let mut p = at.to_vec();
        p.extend(i.at);
        d.at_path(&p, i.message);
    }
    (mapping, compiled)
}

/// Every `[kinds.<name>]`, in the order the file lists them (a TOML table has no order of its
/// own, and kinds are tried in order).
fn load_kinds(
    d: &mut FileDiags<'_>,
    f: &IntegrationFile,
    base: &Path,
    catalogue: &Catalogue,
    envelope: Option<&JsonSchema>,
) -> Kinds {
    let mut listed: Vec<(&String, &KindSpec)> = f.kinds.iter().collect();
    listed.sort_by_key(|(name, _)| d.loc.line_of(&["kinds".to_owned(), (*name).clone()]));
    let mut kinds = Kinds::default();
    for (name, k) in listed {
        load_kind(d, f, name, k, base, catalogue, envelope, &mut kinds);
    }
    // Kinds with a test first, the catch-all last.
    kinds.declared.sort_by_key(|k| k.when.is_none());
    kinds
}

/// One record kind: its name, schema, id pointer, `when`, and its mapping, compiled and linted
/// against the kind's schema (plus the carried envelope) and the core type's schema.
#[allow(clippy::too_many_arguments)] // one call site; a struct of borrowed context would only rename them
fn load_kind(
    d: &mut FileDiags<'_>,
    f: &IntegrationFile,
    name: &str,
    k: &KindSpec,
    base: &Path,
    catalogue: &Catalogue,
    envelope: Option<&JsonSchema>,
    kinds: &mut Kinds,
) {
    let at = |rest: &[&str]| -> Vec<String> {
        ["kinds", name].iter().chain(rest).map(|s| (*s).to_owned()).collect()
    };
    if !valid_name(name) {
        d.at_path(&at(&[]), format!("record kind `{name}` must be 1 to 64 of a-z, 0-9, `-`, `_`, `.`"));
    }
    if k.schema_version.is_empty() || k.schema_version.len() > 64 {
        d.at_path(&at(&["schema_version"]), "schema_version must be 1 to 64 characters");
    }
    let schema = match load_schema(base, &k.schema) {
        Ok(s) => Some(s),
        Err(e) => {
            d.at_path(&at(&["schema"]), e);
            None
        }
    };
    if let Some(p) = &k.source_ref {
        if !is_pointer(p) {
            d.at_path(&at(&["source_ref"]), format!("`{p}` is not a JSON pointer like /id"));
        } else if schema.as_ref().is_some_and(|s| !s.can_exist(p)) {
            d.at_path(
                &at(&["source_ref"]),
                format!("`{p}` cannot exist in a record: the schema does not allow it"),
            );
        }
    }
    if let Some(c) = &k.when {
        if let Some(why) = c.problem() {
            d.at_path(&at(&["when"]), why);
        } else if let Some(p) =
            c.pointers().into_iter().find(|p| schema.as_ref().is_some_and(|s| !s.can_exist(p)))
        {
            d.at_path(
                &at(&["when"]),
                format!("`{p}` cannot exist in a record: the schema does not allow it"),
            );
        }
    }
    let type_key = (k.mapping.message_type.clone(), k.mapping.type_version.clone());
    let core = catalogue.types.get(&type_key).cloned();
    if core.is_none() {
        d.at_path(
            &at(&["mapping", "message_type"]),
            format!("core message type {} v{} is not declared in {CORE_FILE}", type_key.0, type_key.1),
        );
    }
    kinds.produced.push(type_key);
    let (mapping, compiled) = match &schema {
        None => check_mapping(d, &at(&["mapping"]), &k.mapping, |_| Vec::new()),
        Some(s) => {
            // A record as layer 3 sees it: the kind's schema, plus the carried envelope.
            let carry = &f.payload.carry;
            let env_key = format!("/{ENVELOPE_KEY}");
            let can_exist = |p: &str| match p.strip_prefix(env_key.as_str()) {
                None => s.can_exist(p),
                Some("") => !carry.is_empty(),
                Some(rest) if rest.starts_with('/') => {
                    carry.iter().any(|c| {
                        rest == c || rest.starts_with(&format!("{c}/")) || c.starts_with(&format!("{rest}/"))
                    }) && envelope.is_none_or(|e| e.can_exist(rest))
                }
                Some(_) => s.can_exist(p),
            };
            let types = |p: &str| match p.strip_prefix(env_key.as_str()) {
                None => s.types_can_be(p),
                Some(rest) if rest.starts_with('/') => envelope.and_then(|e| e.types_can_be(rest)),
                Some(_) => s.types_can_be(p),
            };
            check_mapping(d, &at(&["mapping"]), &k.mapping, |m| {
                m.lint_typed(&can_exist, Some(&types), core.as_deref())
            })
        }
    };
    if let (true, Some(s)) = (compiled, schema) {
        kinds.mappings.push(mapping.clone());
        kinds.translators.push(MappingTranslator::new(f.source.clone(), name.to_owned(), mapping, core));
        kinds.declared.push(DeclaredKind {
            name: name.to_owned(),
            schema_version: k.schema_version.clone(),
            schema: s,
            source_ref: k.source_ref.clone(),
            when: k.when.clone(),
        });
    }
}

/// `[[drop]]`: each rule has a valid name no other rule has, and a valid `when` whose pointers
/// can exist in a payload (when `[payload]` declares its schema). The rules test whole
/// payloads, before any record is picked out of them.
fn check_drops(d: &mut FileDiags<'_>, drops: &[DropSpec], envelope: Option<&JsonSchema>) {
    let mut seen = std::collections::HashSet::new();
    for (i, rule) in drops.iter().enumerate() {
        let idx = i.to_string();
        if !valid_name(&rule.name) {
            d.at(
                &["drop", &idx, "name"],
                format!("drop rule `{}` must be 1 to 64 of a-z, 0-9, `-`, `_`, `.`", rule.name),
            );
        } else if !seen.insert(rule.name.as_str()) {
            d.at(&["drop", &idx, "name"], format!("drop rule `{}` is declared twice", rule.name));
        }
        if let Some(why) = rule.when.problem() {
            d.at(&["drop", &idx, "when"], why);
        } else if let Some(p) =
            rule.when.pointers().into_iter().find(|p| envelope.is_some_and(|s| !s.can_exist(p)))
        {
            d.at(
                &["drop", &idx, "when"],
                format!("`{p}` cannot exist in a payload: the [payload] schema does not allow it"),
            );
        }
    }
}

/// `[[routes]]`: each needs a type and declared destinations, a valid ordering key and filter,
/// and applies to the file's own source; every type a mapping produces needs a route.
fn check_routes(
    d: &mut FileDiags<'_>,
    source: &str,
    routes: Vec<Route>,
    catalogue: &Catalogue,
    produced: &[(String, String)],
) -> Vec<Route> {
    let mut out = Vec::with_capacity(routes.len());
    for (i, mut r) in routes.into_iter().enumerate() {
        let idx = i.to_string();
        if r.message_type.is_empty() {
            d.at(&["routes", &idx, "type"], "a route needs a core message `type`");
        }
        if r.targets().next().is_none() {
            d.at(&["routes", &idx], "a route needs `destination` or `destinations`");
        }
        for dest in r.targets() {
            if !catalogue.destinations.contains(dest) {
                let key = if *dest == r.destination { "destination" } else { "destinations" };
                d.at(
                    &["routes", &idx, key],
                    format!("destination `{dest}` is not declared in {CORE_FILE} (destinations = [...])"),
                );
            }
        }
        if let Some(k) = &r.ordering_key {
            if !is_pointer(k) {
                d.at(&["routes", &idx, "ordering_key"], format!("`{k}` is not a JSON pointer"));
            } else {
                // Checked against every declared type the route can carry.
                for ((t, v), s) in &catalogue.types {
                    if r.matches_type(t) && !s.can_exist(k) {
                        d.at(
                            &["routes", &idx, "ordering_key"],
                            format!("`{k}` cannot exist in core message {t} v{v}"),
                        );
                    }
                }
            }
        }
        if let Some(c) = &r.filter
            && let Some(why) = c.problem_without_headers()
        {
            d.at(&["routes", &idx, "filter"], why);
        }
        if r.source.as_ref().is_some_and(|s| *s != source) {
            d.at(&["routes", &idx, "source"], "routes in an integration file apply to its own source");
        }
        r.source = Some(source.to_owned());
        out.push(r);
    }
    // A type no route carries would have every message rejected at layer 4.
    for (t, v) in produced {
        if !out.iter().any(|r| r.matches_type(t)) {
            d.at(
                &["routes"],
                format!("no route carries core message type {t} v{v}: add a [[routes]] entry for it"),
            );
        }
    }
    out
}

/// `[ingress]`, when secrets are checked (`run`, not `check`): its secret is set and its door
/// builds.
fn check_ingress(d: &mut FileDiags<'_>, source: &str, ing: &SourceConfig) {
    if let Some(var) = &ing.secret_env
        && std::env::var_os(var).is_none()
    {
        d.at(
            &["ingress", "secret_env"],
            format!("environment variable {var} (the webhook secret) is not set"),
        );
    } else if let Err(e) = ing.door(source) {
        d.at(&["ingress"], e.to_string());
    }
}
