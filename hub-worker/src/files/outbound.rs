//! An integration file's downstream side: `[outbound."<core type>"]`, how one core message type
//! becomes the file's target's request (a mapping into the third party's terms, a request
//! template, the answer's fields for the receipt), checked against the core type's schema and
//! the target's request schema, and compiled into [`OutboundRoute`]s.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};

use layer1_ingest::json::tokens;
use layer2_normalize::JsonSchema;
use layer2_normalize::request::{BodyEncoding, Part, RequestSpec};
use layer3_translate::{LintSides, MappingSpec, MappingTranslator};

use super::integration::check_mapping;
use super::target::{check_target, own_headers};
use super::{CORE_FILE, Catalogue, FileDiags, is_pointer, load_schema};
use crate::outbound::{Outbound, OutboundRoute, Target, TargetSpec};

/// `[outbound."<core type>"]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OutboundSpec {
    /// The core type's version whose schema the route reads; needed only when `core.toml`
    /// declares the type in several versions.
    #[serde(default)]
    type_version: Option<String>,
    /// Deliveries with the same value here (a pointer into the core message) reach the target
    /// in the order the core app sent them.
    #[serde(default)]
    ordering_key: Option<String>,
    /// The core message in the third party's terms (`message_type` names the third party's
    /// request, e.g. `crm.contact.patch`).
    mapping: MappingSpec,
    /// The request made of the translated message.
    request: RequestFile,
    /// What of the third party's answer goes back to the core app in the delivery receipt.
    #[serde(default)]
    response: ResponseFile,
}

/// `[outbound."<core type>".request]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestFile {
    /// GET, POST, PUT, PATCH or DELETE.
    method: String,
    /// Path below the target's base URL, with `{<pointer>}` placeholders.
    path: String,
    /// Query parameters, in the order written.
    #[serde(default)]
    query: Ordered<PartFile>,
    /// Headers, in the order written (never secrets: see `[target.auth]`).
    #[serde(default)]
    headers: Ordered<PartFile>,
    /// The pointer of the body in the translated message (default: the whole message).
    #[serde(default)]
    body: Option<String>,
    /// `json`, `form` or `none` (default: `none` for GET and DELETE, `json` otherwise).
    #[serde(default)]
    encoding: Option<BodyEncoding>,
    /// The third party's request JSON Schema, checked against the body.
    #[serde(default)]
    schema: Option<PathBuf>,
}

/// A query parameter's or header's value: `{ from = "/pointer" }` or `{ const = "text" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartFile {
    #[serde(default)]
    from: Option<String>,
    #[serde(default, rename = "const")]
    constant: Option<String>,
}

/// `[outbound."<core type>".response]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseFile {
    /// Receipt field -> pointer into the third party's JSON answer, in the order written.
    #[serde(default)]
    fields: Ordered<String>,
}

/// A TOML table as its entries in the order written (a map type would sort them, and query
/// parameters and headers go out in the order the file gives).
#[derive(Debug)]
struct Ordered<T>(Vec<(String, T)>);

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered<T>, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, T>()? {
                    out.push(entry);
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// The file's downstream side: its `[target]` (named after the file's source) and its
/// `[outbound."<core type>"]` routes, or `None` when it has neither. Problems go to `d`; the
/// caller keeps the result only when none was reported.
pub(super) fn load_downstream(
    d: &mut FileDiags<'_>,
    source: &str,
    target: Option<&TargetSpec>,
    outbound: &BTreeMap<String, OutboundSpec>,
    base: &Path,
    catalogue: &Catalogue,
    check_secrets: bool,
) -> Option<Outbound> {
    if target.is_none() && outbound.is_empty() {
        return None;
    }
    if outbound.is_empty() {
        d.at(
            &["target"],
            "a [target] needs at least one [outbound.\"<core type>\"]: which core messages go to it",
        );
    }
    let Some(target) = target else {
        for t in outbound.keys() {
            d.at(&["outbound", t], format!("[outbound.\"{t}\"] needs the file's [target]: where to deliver"));
        }
        return None;
    };
    check_target(d, target, check_secrets);
    let mut routes = Vec::with_capacity(outbound.len());
    for (core_type, spec) in outbound {
        if let Some(r) = load_route(d, source, target, core_type, spec, base, catalogue) {
            routes.push(r);
        }
    }
    Some(Outbound { targets: vec![Target { name: source.to_owned(), spec: target.clone() }], routes })
}

/// One `[outbound."<core type>"]`.
fn load_route(
    d: &mut FileDiags<'_>,
    source: &str,
    target: &TargetSpec,
    core_type: &str,
    spec: &OutboundSpec,
    base: &Path,
    catalogue: &Catalogue,
) -> Option<OutboundRoute> {
    let at = |rest: &[&str]| -> Vec<String> {
        ["outbound", core_type].iter().chain(rest).map(|s| (*s).to_owned()).collect()
    };
    let core = core_schema(d, core_type, spec.type_version.as_deref(), catalogue, &at(&[]));
    if let Some(k) = &spec.ordering_key {
        if !is_pointer(k) {
            d.at_path(&at(&["ordering_key"]), format!("`{k}` is not a JSON pointer like /member_id"));
        } else if let Some((v, s)) = &core
            && !s.can_exist(k)
        {
            d.at_path(&at(&["ordering_key"]), format!("`{k}` cannot exist in core message {core_type} v{v}"));
        }
    }
    let request_schema = spec.request.schema.as_ref().and_then(|p| match load_schema(base, p) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            d.at_path(&at(&["request", "schema"]), e);
            None
        }
    });
    let request = compile_request(d, &spec.request, request_schema.clone(), target, &at(&["request"]));

    // The mapping reads the core message (every field its schema declares must be read or
    // ignored: the core app's schema is known in full, unlike a third party's payload) and
    // writes the translated message, whose body part the request schema describes.
    let (mapping, compiled) = match &core {
        Some((v, s)) => {
            let leaves = s.declared_leaves();
            let input_is = format!("core message {core_type} v{v}");
            let schema_name = spec
                .request
                .schema
                .as_ref()
                .map_or_else(String::new, |p| format!("the request schema {}", p.display()));
            let body_at = spec.request.body.as_deref().unwrap_or("");
            let sides = LintSides {
                input: &|p| s.can_exist(p),
                input_types: Some(&|p| s.types_can_be(p)),
                input_leaves: Some(&leaves),
                input_is: &input_is,
                input_schema_is: "its schema",
                output: request_schema.as_deref(),
                output_at: if is_pointer(body_at) { body_at } else { "" },
                output_field_is: "request field",
                output_required_by: &schema_name,
                output_is: &schema_name,
            };
            check_mapping(d, &at(&["mapping"]), &spec.mapping, |m| m.lint_sides(&sides))
        }
        // Reported above; the mapping is still compiled, for its own problems.
        None => check_mapping(d, &at(&["mapping"]), &spec.mapping, |_| Vec::new()),
    };
    if let Some(r) = &request {
        check_template_reads(d, spec, r, &mapping.outputs(), &at);
    }
    let response_fields = check_response(d, &spec.response, &at(&["response", "fields"]));
    let (request, true, true) = (request?, compiled, core.is_some()) else { return None };
    // The translator checks its output against the request schema only when the body is the
    // whole translated message: then the schema describes all of it, and a mapping that makes
    // a bad request stops at layer 3, where the mapping is. With `body` set, the message also
    // holds what the path, query and headers take, which the schema does not describe; layer 2
    // checks the body part before encoding it (it does in both cases).
    let translator_schema = if spec.request.body.is_none() { request_schema } else { None };
    Some(OutboundRoute {
        target: source.to_owned(),
        message_type: core_type.to_owned(),
        translator: Arc::new(MappingTranslator::new(source, core_type, mapping, translator_schema)),
        request: Arc::new(request),
        ordering_key: spec.ordering_key.clone(),
        response_fields,
    })
}

/// The core type's schema (and its version) from the catalogue.
fn core_schema(
    d: &mut FileDiags<'_>,
    core_type: &str,
    version: Option<&str>,
    catalogue: &Catalogue,
    at: &[String],
) -> Option<(String, Arc<JsonSchema>)> {
    let mut declared: Vec<(&String, &Arc<JsonSchema>)> =
        catalogue.types.iter().filter(|((t, _), _)| t == core_type).map(|((_, v), s)| (v, s)).collect();
    declared.sort_by(|a, b| a.0.cmp(b.0));
    let list = || declared.iter().map(|(v, _)| format!("v{v}")).collect::<Vec<_>>().join(", ");
    let found = match (version, declared.as_slice()) {
        (_, []) => {
            d.at_path(
                at,
                format!(
                    "core message type `{core_type}` is not declared in {CORE_FILE} ([[message_types]]): \
                     an outbound route takes a core type"
                ),
            );
            return None;
        }
        (Some(v), _) => declared.iter().find(|(dv, _)| dv.as_str() == v),
        (None, [one]) => Some(one),
        (None, _) => None,
    };
    match found {
        Some((v, s)) => Some(((*v).clone(), Arc::clone(s))),
        None => {
            let mut p = at.to_vec();
            p.push("type_version".into());
            let why = match version {
                Some(v) => format!("{CORE_FILE} declares {core_type} as {}, not v{v}", list()),
                None => {
                    format!("{CORE_FILE} declares {core_type} as {}: say which with type_version", list())
                }
            };
            d.at_path(&p, why);
            None
        }
    }
}

/// The request template: parts read, defaults applied, compiled; headers the target sends
/// itself refused.
fn compile_request(
    d: &mut FileDiags<'_>,
    r: &RequestFile,
    schema: Option<Arc<JsonSchema>>,
    target: &TargetSpec,
    at: &[String],
) -> Option<RequestSpec> {
    let here = |rest: &[&str]| -> Vec<String> {
        at.iter().cloned().chain(rest.iter().map(|s| (*s).to_owned())).collect()
    };
    let mut ok = true;
    let mut parts = |d: &mut FileDiags<'_>, key: &str, list: &Ordered<PartFile>| -> Vec<(String, Part)> {
        let mut out = Vec::with_capacity(list.0.len());
        for (name, p) in &list.0 {
            match (&p.from, &p.constant) {
                (Some(f), None) => out.push((name.clone(), Part::Pointer(f.clone()))),
                (None, Some(c)) => out.push((name.clone(), Part::Const(c.clone()))),
                _ => {
                    ok = false;
                    d.at_path(
                        &here(&[key, name]),
                        format!("`{name}`: give exactly one of `from` and `const`"),
                    );
                }
            }
        }
        out
    };
    let query = parts(d, "query", &r.query);
    let headers = parts(d, "headers", &r.headers);
    let own = own_headers(target);
    for (name, _) in &headers {
        if let Some((_, why)) = own.iter().find(|(h, _)| h.eq_ignore_ascii_case(name)) {
            ok = false;
            d.at_path(
                &here(&["headers", name]),
                format!("header `{name}` cannot be set by a template: it is {why}"),
            );
        }
    }
    let encoding = r.encoding.unwrap_or_else(|| {
        // A GET or DELETE carries no body by default; everything else a JSON one.
        if ["GET", "DELETE"].iter().any(|m| m.eq_ignore_ascii_case(&r.method)) {
            BodyEncoding::None
        } else {
            BodyEncoding::Json
        }
    });
    match RequestSpec::compile_all(&r.method, &r.path, query, headers, r.body.clone(), encoding, schema) {
        Ok(spec) if ok => Some(spec),
        Ok(_) => None,
        Err(issues) => {
            for i in issues {
                let mut p = at.to_vec();
                p.extend(i.at);
                d.at_path(&p, i.message);
            }
            None
        }
    }
}

/// Whether `outer` is `inner` or above it, `*` (an `each` element) matching any one token.
fn covers(outer: &[String], inner: &[String]) -> bool {
    outer.len() <= inner.len() && outer.iter().zip(inner).all(|(a, b)| a == b || a == "*" || b == "*")
}

/// The template's pointers against what the mapping writes: a path placeholder, query or
/// header value is a field the mapping writes (or inside one it writes whole); the body is one,
/// or holds some. And the other way: a field the mapping writes outside the body that nothing
/// in the template reads would never reach the target.
fn check_template_reads(
    d: &mut FileDiags<'_>,
    spec: &OutboundSpec,
    request: &RequestSpec,
    outputs: &[String],
    at: &dyn Fn(&[&str]) -> Vec<String>,
) {
    let outs: Vec<Vec<String>> = outputs.iter().filter_map(|p| tokens(p)).collect();
    let mut reads: Vec<(Vec<String>, String)> = Vec::new();
    for p in request.placeholders() {
        reads.push((at(&["request", "path"]), p.to_owned()));
    }
    for (key, list) in [("query", &spec.request.query), ("headers", &spec.request.headers)] {
        for (name, part) in &list.0 {
            if let Some(p) = &part.from {
                reads.push((at(&["request", key, name]), p.clone()));
            }
        }
    }
    let written = |p: &str| tokens(p).is_some_and(|t| outs.iter().any(|o| covers(o, &t)));
    for (key, p) in &reads {
        if !written(p) {
            d.at_path(
                key,
                format!("`{p}` is not a field the mapping writes, so the translated message never has it"),
            );
        }
    }
    let body = spec.request.body.as_deref().and_then(tokens);
    if let (Some(b), Some(text)) = (&body, &spec.request.body)
        && !outs.iter().any(|o| covers(o, b) || covers(b, o))
    {
        d.at_path(
            &at(&["request", "body"]),
            format!("`{text}` is not a field the mapping writes, so the translated message never has it"),
        );
    }
    let Some(b) = body else { return };
    let read_tokens: Vec<Vec<String>> = reads.iter().filter_map(|(_, p)| tokens(p)).collect();
    let mut top: Vec<(Vec<String>, String)> =
        spec.mapping.fields.keys().map(|k| (at(&["mapping", "fields", k]), k.clone())).collect();
    if spec.mapping.on_unmapped == layer3_translate::OnUnmapped::KeepInExtras {
        top.push((at(&["mapping", "extras_at"]), spec.mapping.extras_at.clone()));
    }
    for (key, p) in top {
        let Some(t) = tokens(&p) else { continue };
        let used =
            covers(&b, &t) || covers(&t, &b) || read_tokens.iter().any(|r| covers(&t, r) || covers(r, &t));
        if !used {
            let body = spec.request.body.as_deref().unwrap_or_default();
            d.at_path(
                &key,
                format!(
                    "`{p}` is written but neither in the body (`{body}`) nor read by the path, query or \
                     headers: it would never reach the target"
                ),
            );
        }
    }
}

/// `[response] fields`: receipt names and the pointers they read in the answer.
fn check_response(d: &mut FileDiags<'_>, r: &ResponseFile, at: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(r.fields.0.len());
    for (name, p) in &r.fields.0 {
        let mut here = at.to_vec();
        here.push(name.clone());
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            d.at_path(&here, format!("receipt field `{name}` must be 1 to 64 of a-z, 0-9, `_`"));
        }
        if !is_pointer(p) {
            d.at_path(&here, format!("`{p}` is not a JSON pointer into the answer like /id"));
        }
        out.push((name.clone(), p.clone()));
    }
    out
}
