//! JSON helpers every layer above shares: pointer escaping, leaf enumeration (the unit of the
//! fidelity promise), and [`Condition`], the one small test language used to pick a record kind
//! (layer 2) and to filter a route (layer 4).

use std::fmt;

use serde::Deserialize;
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

/// Parses JSON keeping every number's text exactly as written (`1E400` stays `1E400`, not
/// serde_json's `1e+400`; digits are kept by `arbitrary_precision` either way) and refusing
/// duplicate keys (serde_json would keep the last one silently). Errors name the place.
pub fn parse_exact(text: &[u8]) -> Result<Value, String> {
    let raw: &RawValue = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    exact(raw, "", 0)
}

/// Deepest nesting accepted: serde_json's own limit, so that what is stored parses again.
const MAX_DEPTH: usize = 128;

/// [`parse_exact`] where it matters, plain parsing where it cannot: text with no exponent
/// (no digit followed by `e` or `E`) has nothing serde_json would rewrite.
pub fn parse_stored(text: &str) -> Result<Value, String> {
    let b = text.as_bytes();
    let exponent = b.windows(2).any(|w| w[0].is_ascii_digit() && (w[1] == b'e' || w[1] == b'E'));
    if exponent { parse_exact(b) } else { serde_json::from_str(text).map_err(|e| e.to_string()) }
}

fn exact(raw: &RawValue, at: &str, depth: usize) -> Result<Value, String> {
    let s = raw.get();
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels at `{at}`"));
    }
    match s.as_bytes().first() {
        Some(b'{') => {
            let Entries(entries) = serde_json::from_str(s).map_err(|e| format!("at `{at}`: {e}"))?;
            let mut m = Map::new();
            for (k, v) in entries {
                let here = format!("{at}/{}", escape_token(&k));
                let value = exact(v, &here, depth + 1)?;
                if m.insert(k, value).is_some() {
                    return Err(format!("duplicate key at `{here}`"));
                }
            }
            Ok(Value::Object(m))
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(s).map_err(|e| format!("at `{at}`: {e}"))?;
            items.into_iter().enumerate().map(|(i, v)| exact(v, &format!("{at}/{i}"), depth + 1)).collect()
        }
        // The raw text of a number serde_json has already checked: kept as written.
        // `from_string_unchecked` is serde_json's own constructor for this representation
        // (hidden from its docs); the round trip is pinned by a unit test below.
        Some(b'-' | b'0'..=b'9') => Ok(Value::Number(Number::from_string_unchecked(s.to_owned()))),
        _ => serde_json::from_str(s).map_err(|e| format!("at `{at}`: {e}")),
    }
}

/// An object's members in document order, values unparsed.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Entries<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
                Err(serde::de::Error::custom("expected an object"))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The pointer of the first key an object of `text` repeats, in one pass that builds nothing
/// (serde_json keeps the last of repeated keys silently; a body with one has two readings).
/// `Err` when `text` is not JSON.
pub fn first_duplicate_key(text: &[u8]) -> Result<Option<String>, serde_json::Error> {
    use serde::de::DeserializeSeed;
    let found = std::cell::RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(text);
    match (DupCheck { at: String::new(), found: &found }).deserialize(&mut de) {
        Ok(()) => de.end().map(|()| None),
        Err(e) => found.into_inner().map_or(Err(e), |at| Ok(Some(at))),
    }
}

/// Visits one value at pointer `at`, noting in `found` where a key repeats.
struct DupCheck<'f> {
    at: String,
    found: &'f std::cell::RefCell<Option<String>>,
}

impl<'de> serde::de::DeserializeSeed<'de> for DupCheck<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DupCheck<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let here = format!("{}/{}", self.at, escape_token(&k));
            if !seen.insert(k) {
                *self.found.borrow_mut() = Some(here);
                return Err(serde::de::Error::custom("duplicate key"));
            }
            map.next_value_seed(DupCheck { at: here, found: self.found })?;
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        while seq.next_element_seed(DupCheck { at: format!("{}/{i}", self.at), found: self.found })?.is_some()
        {
            i += 1;
        }
        Ok(())
    }
    // Scalars: nothing to check.
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Escapes one reference token of a JSON pointer (RFC 6901).
pub fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// The reference tokens of `pointer`, unescaped; `None` if it is neither empty nor starts with `/`.
pub fn tokens(pointer: &str) -> Option<Vec<String>> {
    if pointer.is_empty() {
        return Some(Vec::new());
    }
    let rest = pointer.strip_prefix('/')?;
    // `~` only as `~0` or `~1` (RFC 6901): anything else would make two spellings of one key.
    let bad_escape = rest.split('~').skip(1).any(|after| !after.starts_with(['0', '1']));
    if bad_escape {
        return None;
    }
    Some(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

/// Every leaf of `v` as a JSON pointer, prefixed by `at`: scalars, `null`, and empty objects or
/// arrays (which carry information by existing).
pub fn leaves(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                leaves(x, &format!("{at}/{}", escape_token(k)), out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, x) in a.iter().enumerate() {
                leaves(x, &format!("{at}/{i}"), out);
            }
        }
        _ => out.push(at.to_owned()),
    }
}

/// The text of an id-like value: strings as they are, numbers as written; `None` otherwise.
/// Record ids, ordering keys and table lookups all read values this way.
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Sets `value` at `path` inside `obj`, creating objects on the way (and replacing a
/// non-object in the way: callers make sure paths do not cross, see the mapping compiler).
pub fn insert_at(obj: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut cur = obj;
    for p in parents {
        let slot = cur.entry(p.clone()).or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        let Value::Object(next) = slot else { return };
        cur = next;
    }
    cur.insert(last.clone(), value);
}

/// A test on one value of a JSON document: `{ pointer = "/type", equals = "payment.succeeded" }`,
/// `{ pointer = "/kind", in = ["a", "b"] }` or `{ pointer = "/deleted_at", exists = false }`.
/// Numbers compare by their exact text (`1.0` is not `1`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Where the tested value is.
    pub pointer: String,
    /// The value must equal this.
    #[serde(default)]
    pub equals: Option<Value>,
    /// The value must be one of these.
    #[serde(default, rename = "in")]
    pub one_of: Option<Vec<Value>>,
    /// The value must (true) or must not (false) be present.
    #[serde(default)]
    pub exists: Option<bool>,
}

impl Condition {
    /// Whether `doc` passes. A condition with no test passes when the value exists.
    pub fn holds(&self, doc: &Value) -> bool {
        let v = doc.pointer(&self.pointer);
        if let Some(want) = self.exists
            && v.is_some() != want
        {
            return false;
        }
        if let Some(e) = &self.equals
            && v != Some(e)
        {
            return false;
        }
        if let Some(set) = &self.one_of
            && !v.is_some_and(|v| set.contains(v))
        {
            return false;
        }
        self.exists.is_some() || v.is_some()
    }

    /// What is wrong with the condition itself, if anything.
    pub fn problem(&self) -> Option<String> {
        if tokens(&self.pointer).is_none() {
            return Some(format!("`{}` is not a JSON pointer (it starts with /)", self.pointer));
        }
        if self.one_of.as_ref().is_some_and(Vec::is_empty) {
            return Some("`in = []` can never hold".into());
        }
        if self.exists == Some(false) && (self.equals.is_some() || self.one_of.is_some()) {
            return Some("`exists = false` cannot be combined with `equals` or `in`".into());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn leaves_and_tokens() {
        let mut out = Vec::new();
        leaves(&json!({"a": {"b/c": 1, "d": []}, "e": [1, {"f": null}]}), "", &mut out);
        out.sort();
        assert_eq!(out, ["/a/b~1c", "/a/d", "/e/0", "/e/1/f"]);
        assert_eq!(tokens("/a/b~1c/~0"), Some(vec!["a".into(), "b/c".into(), "~".into()]));
        assert_eq!(tokens("a"), None);
        assert_eq!(tokens("/a~"), None);
        assert_eq!(tokens("/a~2"), None);
    }

    #[test]
    fn the_first_repeated_key_is_found_in_one_pass() {
        let find = |t: &str| first_duplicate_key(t.as_bytes()).expect("JSON");
        assert_eq!(
            find(r#"{"a":1,"b":[{"c":1E400,"d":[1,2]},{"c/x":1,"c/x":2}]}"#).as_deref(),
            Some("/b/1/c~1x")
        );
        assert_eq!(find(r#"{"id":"evt_x","id":"evt_other"}"#).as_deref(), Some("/id"));
        assert_eq!(find(r#"{"a":{"a":1},"b":{"a":2},"n":-1.5e-3,"s":"\u00e9"}"#), None);
        assert_eq!(find("[]"), None);
        assert!(first_duplicate_key(b"{\"a\":").is_err(), "not JSON");
        assert!(first_duplicate_key(b"{} x").is_err(), "trailing text");
    }

    #[test]
    fn numbers_keep_their_text_and_duplicates_are_refused() {
        let text = r#"{"a":1E400,"b":[0.1,12345678901234567890,-2.50e-3],"c":{"d":"x1e5"},"e":null}"#;
        let v = parse_exact(text.as_bytes()).expect("parses");
        assert_eq!(serde_json::to_string(&v).expect("writes"), text);
        assert_eq!(parse_stored(text).expect("parses"), v);
        assert!(parse_exact(br#"{"a":1,"b":{"c":1,"c":2}}"#).expect_err("dup").contains("/b/c"));
        assert!(parse_exact(b"{").is_err());
        assert!(parse_exact(b"[1,]").is_err());
        // Hostile nesting is refused, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
        assert!(parse_exact(deep.as_bytes()).expect_err("too deep").contains("deeper"));
    }

    #[test]
    fn conditions() {
        let doc = json!({"type": "x", "n": 1.0});
        let c = |s: &str| serde_json::from_str::<Condition>(s).expect("condition");
        assert!(c(r#"{"pointer":"/type","equals":"x"}"#).holds(&doc));
        assert!(!c(r#"{"pointer":"/type","in":["y","z"]}"#).holds(&doc));
        assert!(c(r#"{"pointer":"/gone","exists":false}"#).holds(&doc));
        assert!(!c(r#"{"pointer":"/gone"}"#).holds(&doc));
        // Exact text: 1.0 is not 1.
        assert!(!c(r#"{"pointer":"/n","equals":1}"#).holds(&doc));
        assert!(c(r#"{"pointer":"/k","in":[]}"#).problem().is_some());
        assert!(c(r#"{"pointer":"k"}"#).problem().is_some());
        assert!(c(r#"{"pointer":"/k","in":["a"]}"#).problem().is_none());
    }
}
