//! JSON Schema, compiled once, with what the post office needs around it: a violation as a
//! [`Rejection`] naming the offending value's pointer and the keyword it broke, and a small
//! static reading of the schema (can this pointer exist? which pointers are required?) used by
//! the linter to catch mappings that could never work.

use serde_json::Value;

use jsonschema::error::ValidationErrorKind;
use layer1_ingest::Rejection;
use layer1_ingest::json::{escape_token, tokens};

/// How deep `$ref`s and combinators are followed before the reading gives up (and answers
/// "possible", the conservative answer).
const MAX_DEPTH: usize = 48;
/// Schema nodes one static question may visit.
const MAX_VISITS: usize = 10_000;

/// A compiled JSON Schema and its source document.
#[derive(Debug)]
pub struct JsonSchema {
    validator: jsonschema::Validator,
    document: Value,
}

impl JsonSchema {
    /// Compiles `document`. Formats (`email`, `date-time`, ...) are checked; `$ref`s resolve only
    /// inside the document (no network, no file system), so a schema cannot reach out.
    pub fn compile(document: Value) -> Result<Self, String> {
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&document)
            .map_err(|e| format!("schema does not compile: {e}"))?;
        Ok(Self { validator, document })
    }

    /// The schema as written.
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// Checks `value`; the first violation names the pointer (prefixed with `at`, the value's
    /// place in its payload) and the keyword as the rule.
    ///
    /// The validator reads serde_json's document, so numbers are checked as serde_json reads
    /// them in this build (see [`layer1_ingest::json::Value::to_serde_json`]): a bound or a
    /// `multipleOf` on a number longer than an `f64` holds is checked on its nearest `f64`. The
    /// number carried on is the one written.
    pub fn check(&self, value: &layer1_ingest::json::Value, at: &str) -> Result<(), Rejection> {
        let value = value.to_serde_json();
        let Some(e) = self.validator.iter_errors(&value).next() else {
            return Ok(());
        };
        let mut pointer = format!("{at}{}", e.instance_path().as_str());
        // Point at the missing or unexpected property itself, not at its parent object.
        match e.kind() {
            ValidationErrorKind::Required { property } => {
                if let Some(p) = property.as_str() {
                    pointer = format!("{pointer}/{}", escape_token(p));
                }
            }
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                if let Some(p) = unexpected.first() {
                    pointer = format!("{pointer}/{}", escape_token(p));
                }
            }
            _ => {}
        }
        let rule = e.kind().keyword().to_owned();
        let message = format!("value at `{pointer}` breaks `{rule}`: {e}");
        Err(if pointer.is_empty() {
            Rejection::whole(rule, message)
        } else {
            Rejection::field(pointer, rule, message)
        })
    }

    /// Whether a value can exist at `pointer` in an instance: `false` only when the schema
    /// rules it out (a property not declared where `additionalProperties` is false, a path
    /// below a scalar type, a `false` schema). Array positions may be written `0` or `*`.
    pub fn can_exist(&self, pointer: &str) -> bool {
        let budget = std::cell::Cell::new(MAX_VISITS);
        match tokens(pointer) {
            Some(t) => self.allows(&self.document, &t, 0, &budget),
            None => false,
        }
    }

    /// The schema's JSON `type`s at `pointer`, when it states them (`["integer"]`).
    pub fn types_at(&self, pointer: &str) -> Vec<String> {
        let Some(t) = tokens(pointer) else { return Vec::new() };
        let mut node = self.resolve(&self.document, 0);
        for tok in &t {
            let Some(next) = child(node, tok) else { return Vec::new() };
            node = self.resolve(next, 0);
        }
        types_of(node)
    }

    /// The JSON types a value at `pointer` can have by the schema (`type`, `enum`, `const`,
    /// through local `$ref`s, `allOf`, `anyOf`, `oneOf`; array positions written `0` or `*`):
    /// names among `null`, `boolean`, `object`, `array`, `string`, `integer`, `number`
    /// (`number` includes integers). `None` when the schema leaves it open or the reading gives
    /// up; an empty list when no value can be there. For linters: it may answer more types than
    /// validation would allow, never fewer.
    pub fn types_can_be(&self, pointer: &str) -> Option<Vec<&'static str>> {
        let budget = std::cell::Cell::new(MAX_VISITS);
        let set = self.types_in(&self.document, &tokens(pointer)?, 0, &budget);
        (set != ANY).then(|| {
            let mut names: Vec<&'static str> =
                TYPE_BITS.iter().filter(|(_, bit)| set & bit == *bit).map(|(n, _)| *n).collect();
            // `number` covers `integer`: name it once.
            if names.contains(&"number") {
                names.retain(|n| *n != "integer");
            }
            names
        })
    }

    fn types_in(&self, node: &Value, toks: &[String], depth: usize, budget: &std::cell::Cell<usize>) -> u8 {
        if depth > MAX_DEPTH || budget.get() == 0 {
            return ANY;
        }
        budget.set(budget.get() - 1);
        let node = match node {
            Value::Bool(true) => return ANY,
            Value::Bool(false) => return 0,
            Value::Object(_) => self.resolve(node, depth),
            _ => return ANY,
        };
        match node {
            Value::Bool(true) => return ANY,
            Value::Bool(false) => return 0,
            _ => {}
        }
        let mut set = ANY;
        for sub in node.get("allOf").and_then(Value::as_array).into_iter().flatten() {
            set &= self.types_in(sub, toks, depth + 1, budget);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(subs) = node.get(key).and_then(Value::as_array) {
                set &= subs.iter().fold(0, |acc, s| acc | self.types_in(s, toks, depth + 1, budget));
            }
        }
        let own = own_types(node);
        let Some((tok, rest)) = toks.split_first() else { return set & own };
        // Below this node: through an object's property or an array's item, as `allows` goes.
        let mut below = 0;
        if own & OBJECT != 0 {
            below |= if let Some(p) = node.get("properties").and_then(|p| p.get(tok.as_str())) {
                self.types_in(p, rest, depth + 1, budget)
            } else if node.get("patternProperties").is_some() {
                ANY
            } else {
                match node.get("additionalProperties") {
                    Some(Value::Bool(false)) => 0,
                    Some(s @ Value::Object(_)) => self.types_in(s, rest, depth + 1, budget),
                    _ => ANY,
                }
            };
        }
        if own & ARRAY != 0 && (tok == "*" || tok.parse::<usize>().is_ok()) {
            let prefix = node.get("prefixItems").and_then(Value::as_array);
            below |= match (
                tok.parse::<usize>().ok().and_then(|i| prefix.and_then(|p| p.get(i))),
                node.get("items"),
            ) {
                // `*` is any position: a prefix item's types as well as the rest's.
                (Some(s), _) => self.types_in(s, rest, depth + 1, budget),
                (None, Some(s)) if tok != "*" || prefix.is_none() => {
                    self.types_in(s, rest, depth + 1, budget)
                }
                _ => ANY,
            };
        }
        set & below
    }

    /// Pointers every valid instance has: `required` properties, followed into required objects
    /// and into array items (written `*`).
    pub fn required_pointers(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_required(&self.document, String::new(), &mut out, 0);
        out
    }

    /// The leaves the schema declares, as pointers (array items written `*`): properties
    /// followed into their own `properties` and `items`, through local `$ref`s and `allOf`,
    /// `anyOf`, `oneOf`. A property with nothing declared below it (a scalar, an open object)
    /// is a leaf. A `$ref` met again on its own path (a recursive schema) ends the path there.
    /// What the schema leaves open (`additionalProperties`, `patternProperties`) has no
    /// pointer here: this lists what every linter can know about, not all that may come.
    pub fn declared_leaves(&self) -> Vec<String> {
        let mut out = Vec::new();
        let budget = std::cell::Cell::new(MAX_VISITS);
        self.collect_leaves(&self.document, String::new(), &mut Vec::new(), &mut out, &budget);
        out.sort();
        out.dedup();
        out
    }

    fn collect_leaves<'a>(
        &'a self,
        node: &'a Value,
        at: String,
        refs: &mut Vec<&'a str>,
        out: &mut Vec<String>,
        budget: &std::cell::Cell<usize>,
    ) {
        let mut kids: Vec<(String, &'a Value)> = Vec::new();
        let mut entered = Vec::new();
        let open = !self.children(node, refs, &mut entered, &mut kids, budget);
        if kids.is_empty() || open {
            if !at.is_empty() {
                out.push(at);
            }
        } else {
            for (tok, sub) in kids {
                self.collect_leaves(sub, format!("{at}/{tok}"), refs, out, budget);
            }
        }
        for _ in entered {
            refs.pop();
        }
    }

    /// Pushes the declared children of `node` (its combinators' too) onto `kids`; `false` when
    /// the walk stopped (a recursive `$ref`, the visit budget spent): then the node counts as a
    /// leaf. The `$ref`s followed are pushed on `refs` and listed in `entered` for the caller
    /// to pop once the node's subtree is done.
    fn children<'a>(
        &'a self,
        mut node: &'a Value,
        refs: &mut Vec<&'a str>,
        entered: &mut Vec<&'a str>,
        kids: &mut Vec<(String, &'a Value)>,
        budget: &std::cell::Cell<usize>,
    ) -> bool {
        if budget.get() == 0 || refs.len() > MAX_DEPTH {
            return false;
        }
        budget.set(budget.get() - 1);
        while let Some(r) = node.get("$ref").and_then(Value::as_str) {
            if refs.contains(&r) {
                return false;
            }
            let Some(target) = r.strip_prefix('#').and_then(|p| self.document.pointer(p)) else { break };
            refs.push(r);
            entered.push(r);
            node = target;
        }
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            kids.extend(props.iter().map(|(k, v)| (escape_token(k), v)));
        }
        if let Some(items) = node.get("items").filter(|i| i.is_object()) {
            kids.push(("*".to_owned(), items));
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            for sub in node.get(key).and_then(Value::as_array).into_iter().flatten() {
                if !self.children(sub, refs, entered, kids, budget) {
                    return false;
                }
            }
        }
        true
    }

    fn resolve<'a>(&'a self, mut node: &'a Value, depth: usize) -> &'a Value {
        let mut d = depth;
        while let Some(r) = node.get("$ref").and_then(Value::as_str) {
            match r.strip_prefix('#').and_then(|p| self.document.pointer(p)) {
                Some(target) if d < MAX_DEPTH => {
                    node = target;
                    d += 1;
                }
                _ => break,
            }
        }
        node
    }

    fn allows(&self, node: &Value, toks: &[String], depth: usize, budget: &std::cell::Cell<usize>) -> bool {
        // Combinators over `$ref`s can branch exponentially: past the budget, "possible".
        if depth > MAX_DEPTH || budget.get() == 0 {
            return true;
        }
        budget.set(budget.get() - 1);
        let node = match node {
            Value::Bool(b) => return *b,
            Value::Object(_) => self.resolve(node, depth),
            _ => return true,
        };
        if let Value::Bool(b) = node {
            return *b;
        }
        for sub in node.get("allOf").and_then(Value::as_array).into_iter().flatten() {
            if !self.allows(sub, toks, depth + 1, budget) {
                return false;
            }
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(subs) = node.get(key).and_then(Value::as_array)
                && !subs.iter().any(|s| self.allows(s, toks, depth + 1, budget))
            {
                return false;
            }
        }
        let Some((tok, rest)) = toks.split_first() else { return true };
        let types = types_of(node);
        let may = |t: &str| types.is_empty() || types.iter().any(|x| x == t);
        let as_object = may("object") && {
            if let Some(p) = node.get("properties").and_then(|p| p.get(tok.as_str())) {
                self.allows(p, rest, depth + 1, budget)
            } else if node.get("patternProperties").is_some() {
                true
            } else {
                match node.get("additionalProperties") {
                    Some(Value::Bool(false)) => false,
                    Some(s @ Value::Object(_)) => self.allows(s, rest, depth + 1, budget),
                    _ => true,
                }
            }
        };
        let is_index = tok == "*" || tok.parse::<usize>().is_ok();
        let as_array = is_index && may("array") && {
            let prefix = node.get("prefixItems").and_then(Value::as_array);
            match (tok.parse::<usize>().ok().and_then(|i| prefix.and_then(|p| p.get(i))), node.get("items")) {
                (Some(s), _) => self.allows(s, rest, depth + 1, budget),
                (None, Some(s)) => self.allows(s, rest, depth + 1, budget),
                (None, None) => true,
            }
        };
        as_object || as_array
    }

    fn collect_required(&self, node: &Value, at: String, out: &mut Vec<String>, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        let node = self.resolve(node, depth);
        for sub in node.get("allOf").and_then(Value::as_array).into_iter().flatten() {
            self.collect_required(sub, at.clone(), out, depth + 1);
        }
        if let Some(items) = node.get("items").filter(|i| i.is_object()) {
            self.collect_required(items, format!("{at}/*"), out, depth + 1);
        }
        for name in node.get("required").and_then(Value::as_array).into_iter().flatten() {
            let Some(name) = name.as_str() else { continue };
            let here = format!("{at}/{}", escape_token(name));
            out.push(here.clone());
            if let Some(p) = node.get("properties").and_then(|p| p.get(name)) {
                self.collect_required(p, here, out, depth + 1);
            }
        }
    }
}

fn child<'a>(node: &'a Value, tok: &str) -> Option<&'a Value> {
    if let Some(p) = node.get("properties").and_then(|p| p.get(tok)) {
        return Some(p);
    }
    if tok == "*" || tok.parse::<usize>().is_ok() {
        return node.get("items").filter(|i| i.is_object());
    }
    None
}

const NULL: u8 = 1;
const BOOLEAN: u8 = 2;
const OBJECT: u8 = 4;
const ARRAY: u8 = 8;
const STRING: u8 = 16;
const INTEGER: u8 = 32;
/// A number with a fraction; the `number` type is `INTEGER | FRACTION`.
const FRACTION: u8 = 64;
const ANY: u8 = 127;
const TYPE_BITS: [(&str, u8); 7] = [
    ("null", NULL),
    ("boolean", BOOLEAN),
    ("object", OBJECT),
    ("array", ARRAY),
    ("string", STRING),
    ("integer", INTEGER),
    ("number", INTEGER | FRACTION),
];

/// The types one schema node allows by its own `type`, `enum` and `const`.
fn own_types(node: &Value) -> u8 {
    let named = |n: &str| TYPE_BITS.iter().find(|(t, _)| *t == n).map_or(0, |(_, b)| *b);
    let of_value = |v: &Value| match v {
        Value::Null => NULL,
        Value::Bool(_) => BOOLEAN,
        Value::Object(_) => OBJECT,
        Value::Array(_) => ARRAY,
        Value::String(_) => STRING,
        // JSON Schema counts 1.0 as an integer.
        Value::Number(n) if n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0) => {
            INTEGER
        }
        Value::Number(_) => FRACTION,
    };
    let mut set = match node.get("type") {
        Some(Value::String(t)) => named(t),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).fold(0, |acc, t| acc | named(t)),
        _ => ANY,
    };
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        set &= values.iter().fold(0, |acc, v| acc | of_value(v));
    }
    if let Some(v) = node.get("const") {
        set &= of_value(v);
    }
    set
}

fn types_of(node: &Value) -> Vec<String> {
    match node.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn contact() -> JsonSchema {
        JsonSchema::compile(json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["id", "email", "address"],
            "properties": {
                "id": {"type": "string"},
                "email": {"type": "string", "format": "email"},
                "age": {"type": "integer", "minimum": 0},
                "address": {"$ref": "#/$defs/address"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "meta": {"type": "object"}
            },
            "$defs": {"address": {
                "type": "object", "required": ["city"], "additionalProperties": false,
                "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}
            }}
        }))
        .expect("compiles")
    }

    fn exact(v: Value) -> layer1_ingest::json::Value {
        v.into()
    }

    #[test]
    fn violations_name_pointer_and_keyword() {
        let s = contact();
        let ok = exact(json!({"id": "1", "email": "a@b.co", "address": {"city": "Oslo"}}));
        assert!(s.check(&ok, "").is_ok());
        let r = s
            .check(&exact(json!({"id": "1", "email": "nope", "address": {"city": "Oslo"}})), "/contacts/3")
            .expect_err("bad email");
        assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/contacts/3/email"), "format"));
        let r =
            s.check(&exact(json!({"id": "1", "email": "a@b.co", "address": {}})), "").expect_err("no city");
        assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/address/city"), "required"));
        let r = s
            .check(&exact(json!({"id": "1", "email": "a@b.co", "address": {"city": "x"}, "new": 1})), "")
            .expect_err("extra");
        assert_eq!((r.field.as_deref(), r.rule.as_str()), (Some("/new"), "additionalProperties"));
    }

    #[test]
    fn big_and_exponent_numbers_validate_without_panicking() {
        let s = JsonSchema::compile(json!({"type": "object", "properties": {"n": {"type": "number"}}}))
            .expect("compiles");
        for text in
            [r#"{"n": 1e400}"#, r#"{"n": -1E400}"#, r#"{"n": 12345678901234567890123}"#, r#"{"n": 0.1}"#]
        {
            let v = layer1_ingest::json::Value::parse(text.as_bytes()).expect("json");
            assert!(s.check(&v, "").is_ok(), "{text}");
        }
        // A bound still sees a number beyond `f64` as huge.
        let max = JsonSchema::compile(json!({"properties": {"n": {"maximum": 1000}}})).expect("compiles");
        let huge = layer1_ingest::json::Value::parse(br#"{"n": 1E400}"#).expect("json");
        assert_eq!(max.check(&huge, "").expect_err("too big").rule, "maximum");
    }

    #[test]
    fn static_reading() {
        let s = contact();
        assert!(s.can_exist("/address/zip"));
        assert!(s.can_exist("/tags/0"));
        assert!(s.can_exist("/meta/anything/below"));
        assert!(!s.can_exist("/address/street"));
        assert!(!s.can_exist("/emial"));
        assert!(!s.can_exist("/id/deeper"));
        assert_eq!(s.types_at("/age"), ["integer"]);
        let mut req = s.required_pointers();
        req.sort();
        assert_eq!(req, ["/address", "/address/city", "/email", "/id"]);
        assert!(JsonSchema::compile(json!({"type": "nonsense"})).is_err());
    }

    #[test]
    fn types_can_be_reads_type_enum_const_and_combinators() {
        let s = JsonSchema::compile(json!({
            "type": "object",
            "properties": {
                "created_at": {"type": "integer"},
                "pushed_at": {"type": ["integer", "null"]},
                "updated_at": {"type": "string", "format": "date-time"},
                "score": {"type": "number"},
                "state": {"enum": ["open", "closed", null]},
                "one": {"const": 1.0},
                "any": {},
                "either": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/id"}]},
                "both": {"allOf": [{"type": ["string", "integer"]}, {"type": ["integer", "boolean"]}]},
                "labels": {"type": "array", "items": {"type": "object",
                    "properties": {"id": {"$ref": "#/$defs/id"}}}},
                "closed": {"type": "object", "additionalProperties": false},
                "bag": {"additionalProperties": {"type": "boolean"}}
            },
            "$defs": {"id": {"type": "integer"}}
        }))
        .expect("compiles");
        let t = |p: &str| s.types_can_be(p);
        assert_eq!(t("/created_at"), Some(vec!["integer"]));
        assert_eq!(t("/pushed_at"), Some(vec!["null", "integer"]));
        assert_eq!(t("/updated_at"), Some(vec!["string"]));
        assert_eq!(t("/score"), Some(vec!["number"]));
        assert_eq!(t("/state"), Some(vec!["null", "string"]));
        assert_eq!(t("/one"), Some(vec!["integer"]));
        assert_eq!(t("/any"), None);
        assert_eq!(t("/undeclared"), None);
        assert_eq!(t("/either"), Some(vec!["string", "integer"]));
        assert_eq!(t("/both"), Some(vec!["integer"]));
        assert_eq!(t("/labels/*/id"), Some(vec!["integer"]));
        assert_eq!(t("/labels/0/id"), Some(vec!["integer"]));
        assert_eq!(t("/closed/x"), Some(vec![]));
        assert_eq!(t("/bag/x"), Some(vec!["boolean"]));
        assert_eq!(t("/created_at/below"), Some(vec![]));
        assert_eq!(t("no pointer"), None);
    }

    #[test]
    fn declared_leaves_follow_refs_and_combinators_and_stop_at_recursion() {
        assert_eq!(
            contact().declared_leaves(),
            ["/address/city", "/address/zip", "/age", "/email", "/id", "/meta", "/tags/*"]
        );
        let s = JsonSchema::compile(json!({
            "allOf": [{"properties": {"a": {"type": "string"}}}],
            "oneOf": [{"properties": {"b": {"items": {"properties": {"c": {}}}}}}, {"properties": {"d": {}}}],
            "properties": {"tree": {"$ref": "#/$defs/node"}},
            "$defs": {"node": {"properties": {"name": {}, "kids": {"items": {"$ref": "#/$defs/node"}}}}}
        }))
        .expect("compiles");
        assert_eq!(s.declared_leaves(), ["/a", "/b/*/c", "/d", "/tree/kids/*", "/tree/name"]);
    }
}
