//! Per-source redaction for the audit desk and `hub-worker trace`: an integration file's
//! `[payload] redact = ["/data/object/client_secret"]` names payload fields whose values a
//! reader without scope `raw` sees as `"[redacted]"` in every layer's content. The bytes stay
//! stored as they came (and hash-verifiable); only what is shown is masked.
//!
//! The pointers name the payload. What they become in each layer is worked out once, when the
//! integration is loaded: in a layer 2 record, the pointer made relative to the record (under
//! `records`, for each record, or for the one its index names; as is when the payload is the
//! record), and under `/_envelope` for a carried field; in a core message (layers 3 and 4),
//! every field whose mapping rule reads a redacted record field, and the redacted fields kept
//! in the extras (`keep-in-extras`).

use std::collections::HashMap;
use std::sync::Arc;

use layer1_ingest::json::{Value, escape_token, tokens};
use layer2_normalize::declared::ENVELOPE_KEY;
use layer3_translate::{Mapping, OnUnmapped};

/// What a masked value is shown as.
pub const MASK: &str = "[redacted]";

/// Every source's redaction rules, by source name. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Redactions {
    by_source: HashMap<String, Arc<SourceRedaction>>,
}

impl Redactions {
    /// Adds (or replaces) `source`'s rules.
    pub fn insert(&mut self, source: impl Into<String>, rules: SourceRedaction) {
        self.by_source.insert(source.into(), Arc::new(rules));
    }

    /// Adds every source of `other`.
    pub fn extend(&mut self, other: Redactions) {
        self.by_source.extend(other.by_source);
    }

    /// `source`'s rules, if it has any.
    pub fn get(&self, source: &str) -> Option<&SourceRedaction> {
        self.by_source.get(source).map(Arc::as_ref)
    }

    /// Whether no source has rules.
    pub fn is_empty(&self) -> bool {
        self.by_source.is_empty()
    }
}

/// Where a redacted payload field sits in a layer 2 record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InRecord {
    /// The record it applies to by its index in the payload; `None`: every record.
    index: Option<usize>,
    /// The pointer's tokens inside the record (`*`: any one token).
    tokens: Vec<String>,
}

/// The core fields one mapping fills from redacted record fields.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InCore {
    message_type: String,
    /// Output pointers' tokens (`*`: each element of an `each`).
    fields: Vec<Vec<String>>,
    /// `extras_at`'s tokens under `keep-in-extras`: the extras are keyed by record pointer.
    extras: Option<Vec<String>>,
}

/// One source's rules: its `redact` pointers as they apply to its records and core messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceRedaction {
    pointers: Vec<String>,
    record: Vec<InRecord>,
    /// By mapping name and version.
    core: Vec<(String, String, InCore)>,
}

impl SourceRedaction {
    /// The rules for the payload pointers `pointers` (`*` for any array index) of a source
    /// whose records sit at `records` (none: the payload is the record) and which carries the
    /// payload fields `carry` into each record's `_envelope`. Pointers that are not JSON
    /// pointers are skipped (the loader refuses them first).
    pub fn new(pointers: &[String], records: Option<&str>, carry: &[String]) -> Self {
        let records = records.and_then(tokens);
        let carried: Vec<Vec<String>> = carry.iter().filter_map(|c| tokens(c)).collect();
        let mut record = Vec::new();
        for p in pointers {
            let Some(toks) = tokens(p) else { continue };
            match &records {
                None => record.push(InRecord { index: None, tokens: toks.clone() }),
                Some(r) if toks.len() > r.len() && starts_with(&toks, r) => {
                    let at = &toks[r.len()];
                    let index = if at == "*" {
                        None
                    } else {
                        match at.parse::<usize>() {
                            Ok(i) => Some(i),
                            // Not an index: no record is there.
                            Err(_) => continue,
                        }
                    };
                    record.push(InRecord { index, tokens: toks[r.len() + 1..].to_vec() });
                }
                // The records array itself, or something above it: every record whole.
                Some(r) if starts_with(r, &toks) => record.push(InRecord { index: None, tokens: Vec::new() }),
                Some(_) => {}
            }
            // A carried field is in each record too, under `_envelope` at its payload pointer.
            if carried.iter().any(|c| starts_with(c, &toks) || starts_with(&toks, c)) {
                let mut t = vec![ENVELOPE_KEY.to_owned()];
                t.extend(toks);
                record.push(InRecord { index: None, tokens: t });
            }
        }
        Self { pointers: pointers.to_vec(), record, core: Vec::new() }
    }

    /// The payload pointers as the integration file lists them.
    pub fn pointers(&self) -> &[String] {
        &self.pointers
    }

    /// Whether a record field read at `pointer` (`*` for an element of an `each`) may hold a
    /// redacted value: it is one, lies inside one, or holds one.
    pub fn reads_redacted(&self, pointer: &str) -> bool {
        let Some(p) = tokens(pointer) else { return false };
        self.record.iter().any(|r| overlaps(&r.tokens, &p))
    }

    /// Adds the core fields `mapping` (named `name`) fills from redacted record fields.
    pub fn add_mapping(&mut self, mapping: &Mapping) {
        let spec = mapping.spec();
        let fields: Vec<Vec<String>> =
            mapping.outputs_reading(&|p| self.reads_redacted(p)).iter().filter_map(|o| tokens(o)).collect();
        let extras =
            (spec.on_unmapped == OnUnmapped::KeepInExtras).then(|| tokens(&spec.extras_at)).flatten();
        let rules = InCore { message_type: spec.message_type.clone(), fields, extras };
        self.core.push((spec.name.clone(), spec.version.clone(), rules));
    }

    /// Whether a core message of `message_type` has `pointer` (or a field around or inside it)
    /// masked: what a route's ordering key must not read, as it is shown unmasked.
    pub fn masks_core_field(&self, message_type: &str, pointer: &str) -> bool {
        let Some(p) = tokens(pointer) else { return false };
        self.core
            .iter()
            .any(|(_, _, c)| c.message_type == message_type && c.fields.iter().any(|f| overlaps(f, &p)))
    }

    /// Masks the redacted fields of the layer 2 record number `index` of a payload; returns
    /// the pointers masked.
    pub fn mask_record(&self, index: i32, record: &mut Value) -> Vec<String> {
        let mut masked = Vec::new();
        for r in &self.record {
            if r.index.is_none_or(|i| usize::try_from(index).ok() == Some(i)) {
                mask_at(record, &r.tokens, &mut String::new(), &mut masked);
            }
        }
        masked
    }

    /// Masks the fields of a core message that mapping `mapping` (name, version) filled from
    /// redacted record fields; when the mapping is not known (`None`, or a mapping no longer
    /// in the file), those of every mapping of the source producing `message_type`. A message
    /// made by another version of a mapping still in the file is masked whole: what that
    /// version read is not known any more. Returns the pointers masked.
    pub fn mask_core(
        &self,
        mapping: Option<(&str, &str)>,
        message_type: &str,
        body: &mut Value,
    ) -> Vec<String> {
        if let Some((name, version)) = mapping
            && self.core.iter().any(|(n, v, _)| n == name && v != version)
            && !self.core.iter().any(|(n, v, _)| n == name && v == version)
        {
            *body = Value::String(MASK.to_owned());
            return vec![String::new()];
        }
        let named: Vec<&InCore> = self
            .core
            .iter()
            .filter(|(n, v, _)| mapping == Some((n.as_str(), v.as_str())))
            .map(|(_, _, c)| c)
            .collect();
        let rules: Vec<&InCore> = if named.is_empty() {
            self.core.iter().filter(|(_, _, c)| c.message_type == message_type).map(|(_, _, c)| c).collect()
        } else {
            named
        };
        let mut masked = Vec::new();
        for c in rules {
            for f in &c.fields {
                mask_at(body, f, &mut String::new(), &mut masked);
            }
            if let Some(at) = &c.extras {
                self.mask_extras(body, at, &mut masked);
            }
        }
        masked.sort();
        masked.dedup();
        masked
    }

    /// The extras object at `at` is keyed by record pointer: a key naming a redacted field (or
    /// a field inside one) has its value masked.
    fn mask_extras(&self, body: &mut Value, at: &[String], masked: &mut Vec<String>) {
        let mut cur = body;
        for t in at {
            match cur {
                Value::Object(m) => match m.get_mut(t) {
                    Some(v) => cur = v,
                    None => return,
                },
                _ => return,
            }
        }
        let Value::Object(extras) = cur else { return };
        let base: String = at.iter().map(|t| format!("/{}", escape_token(t))).collect();
        for (key, v) in extras.iter_mut() {
            let Some(k) = tokens(key) else { continue };
            if self.record.iter().any(|r| k.len() >= r.tokens.len() && overlaps(&r.tokens, &k)) {
                *v = Value::String(MASK.to_owned());
                masked.push(format!("{base}/{}", escape_token(key)));
            }
        }
    }
}

/// Whether `toks` begins with `prefix`, `*` in either matching any one token.
fn starts_with(toks: &[String], prefix: &[String]) -> bool {
    toks.len() >= prefix.len() && overlaps(prefix, toks)
}

/// Whether two pointers lie on one path (one is the other, or inside it), `*` in either
/// matching any one token.
pub(crate) fn overlaps(a: &[String], b: &[String]) -> bool {
    a.iter().zip(b).all(|(x, y)| x == y || x == "*" || y == "*")
}

/// Replaces the values at `toks` (`*`: every member or element) with [`MASK`], pushing the
/// pointer of each onto `masked`.
fn mask_at(v: &mut Value, toks: &[String], at: &mut String, masked: &mut Vec<String>) {
    let Some((tok, rest)) = toks.split_first() else {
        *v = Value::String(MASK.to_owned());
        masked.push(if at.is_empty() { String::new() } else { at.clone() });
        return;
    };
    let mut child = |key: &str, x: &mut Value, at: &mut String| {
        let len = at.len();
        at.push('/');
        at.push_str(&escape_token(key));
        mask_at(x, rest, at, masked);
        at.truncate(len);
    };
    match v {
        Value::Object(m) if tok == "*" => m.iter_mut().for_each(|(k, x)| child(k, x, at)),
        Value::Object(m) => {
            if let Some(x) = m.get_mut(tok) {
                child(tok, x, at);
            }
        }
        Value::Array(a) if tok == "*" => {
            a.iter_mut().enumerate().for_each(|(i, x)| child(&i.to_string(), x, at))
        }
        Value::Array(a) => {
            if let Some(x) = tok.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                child(tok, x, at);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> Value {
        Value::parse(text.as_bytes()).expect("json")
    }

    fn ptrs(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| (*s).to_owned()).collect()
    }

    /// The loader refuses what is not a pointer and what no payload can have, at its line.
    #[test]
    fn the_loader_checks_each_pointer() {
        let scratch = crate::files::scratch::ScratchDir::with_catalogue("po-redact");
        let dir = scratch.path().to_owned();
        let w = |name: &str, text: &str| {
            scratch.write(name, text);
        };
        w(
            "event.json",
            r#"{"type":"object","additionalProperties":false,"properties":{"id":{"type":"string"},
"data":{"type":"object","additionalProperties":false,"properties":{"object":{"type":"object",
"additionalProperties":false,"properties":{"id":{"type":"string"},"client_secret":{"type":"string"}}}}}}}"#,
        );
        let file = |redact: &str| {
            format!(
                "source = \"s\"\n[payload]\nredact = {redact}\n[kinds.k]\nschema = \"event.json\"\n\
                 schema_version = \"1\"\n[kinds.k.mapping]\nname = \"m\"\nversion = \"1\"\n\
                 message_type = \"t\"\ntype_version = \"1\"\non_unmapped = \"ignore\"\n\
                 fields = {{ \"/secret\" = {{ from = \"/data/object/client_secret\" }} }}\n\
                 [[routes]]\ntype = \"t\"\ndestination = \"q\"\n"
            )
        };
        w("s.toml", &file(r#"["/data/object/client_secret"]"#));
        let loaded = crate::files::load_dir(&dir, false);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        let r = loaded.integrations[0].redaction.as_ref().expect("rules");
        assert_eq!(r.pointers(), ["/data/object/client_secret"]);
        let mut body = value(r#"{"secret":"pi_secret"}"#);
        assert_eq!(r.mask_core(Some(("m", "1")), "t", &mut body), vec!["/secret"]);
        // A message made by another version of the mapping: what it read is unknown, all masked.
        let mut old = value(r#"{"token":"pi_secret","id":"pi_1"}"#);
        assert_eq!(r.mask_core(Some(("m", "0")), "t", &mut old), vec![""]);
        assert_eq!(old.as_str(), Some(MASK));

        w("s.toml", &file(r#"["data/object/client_secret", "/data/object/card"]"#));
        let loaded = crate::files::load_dir(&dir, false);
        let got: Vec<String> = loaded.diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].contains("s.toml:3:") && got[0].contains("is not a JSON pointer"), "{got:?}");
        assert!(got[1].contains("`/data/object/card` cannot exist"), "{got:?}");

        // Ids and ordering keys are shown unmasked: reading them from a redacted field is refused.
        let leaky = file(r#"["/data/object/client_secret"]"#)
            .replace("[kinds.k]\n", "[kinds.k]\nsource_ref = \"/data/object/client_secret\"\n")
            .replace("destination = \"q\"\n", "destination = \"q\"\nordering_key = \"/secret\"\n")
            .replace("[payload]\n", "[payload]\nevent_ref = \"/data/object/client_secret\"\n");
        w("s.toml", &leaky);
        let loaded = crate::files::load_dir(&dir, false);
        let got: Vec<String> = loaded.diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got.iter().any(|g| g.contains("an event id is shown on every row")), "{got:?}");
        assert!(got.iter().any(|g| g.contains("a record id is shown on every row")), "{got:?}");
        assert!(got.iter().any(|g| g.contains("an ordering key is shown on every row")), "{got:?}");
    }

    #[test]
    fn a_payload_that_is_the_record_is_masked_as_is() {
        let r = SourceRedaction::new(&ptrs(&["/data/object/client_secret"]), None, &[]);
        let mut rec = value(
            r#"{"id":"evt_3Q","data":{"object":{"id":"pi_3Q","amount":2000,"client_secret":"pi_3Q_secret_x"}}}"#,
        );
        assert_eq!(r.mask_record(0, &mut rec), vec!["/data/object/client_secret"]);
        assert_eq!(
            rec.to_json(),
            r#"{"data":{"object":{"amount":2000,"client_secret":"[redacted]","id":"pi_3Q"}},"id":"evt_3Q"}"#
        );
    }

    #[test]
    fn pointers_under_the_records_apply_to_each_record_or_the_one_named() {
        let r = SourceRedaction::new(
            &ptrs(&["/items/*/token", "/items/1/pin", "/account/key", "/other"]),
            Some("/items"),
            &ptrs(&["/account"]),
        );
        let mut first = value(r#"{"token":"t0","pin":"1234","n":1}"#);
        assert_eq!(r.mask_record(0, &mut first), vec!["/token"]);
        let mut second = value(r#"{"token":"t1","pin":"9999","_envelope":{"account":{"key":"k","id":7}}}"#);
        let mut masked = r.mask_record(1, &mut second);
        masked.sort();
        assert_eq!(masked, vec!["/_envelope/account/key", "/pin", "/token"]);
        assert_eq!(second.pointer("/_envelope/account/id").map(Value::to_json).as_deref(), Some("7"));
        assert!(r.reads_redacted("/token") && r.reads_redacted("/_envelope/account"));
        assert!(!r.reads_redacted("/n") && !r.reads_redacted("/other"));
    }

    #[test]
    fn core_fields_read_from_redacted_fields_are_masked_with_the_extras() {
        let spec: layer3_translate::MappingSpec = serde_json::from_value(serde_json::json!({
            "name": "intent", "version": "1", "message_type": "payment.intent", "type_version": "1",
            "on_unmapped": "keep-in-extras",
            "fields": {
                "/intent_id": {"from": "/data/object/id"},
                "/secret": {"from": "/data/object/client_secret"},
                "/object": {"from": "/data/object/metadata"}
            }
        }))
        .expect("spec");
        let m = Mapping::compile(spec).expect("compiles");
        let mut r = SourceRedaction::new(
            &ptrs(&["/data/object/client_secret", "/data/object/metadata/pin"]),
            None,
            &[],
        );
        r.add_mapping(&m);
        let mut body = value(
            r#"{"intent_id":"pi_3Q","secret":"s","object":{"pin":"1"},"extras":{"/data/object/client_secret":"s","/livemode":false}}"#,
        );
        let masked = r.mask_core(Some(("intent", "1")), "payment.intent", &mut body);
        assert_eq!(masked, vec!["/extras/~1data~1object~1client_secret", "/object", "/secret"]);
        assert_eq!(body.pointer("/intent_id").and_then(Value::as_str), Some("pi_3Q"));
        assert_eq!(body.pointer("/extras/~1livemode").map(Value::to_json).as_deref(), Some("false"));
        // An unknown mapping name falls back to the message type's mappings.
        let mut again = value(r#"{"secret":"s"}"#);
        assert_eq!(r.mask_core(None, "payment.intent", &mut again), vec!["/secret"]);
        assert!(r.mask_core(None, "other.type", &mut value(r#"{"secret":"s"}"#)).is_empty());
    }
}
