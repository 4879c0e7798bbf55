//! JSON helpers every layer above shares: pointer escaping, leaf enumeration (the unit of the
//! fidelity promise), and [`Condition`], the one small test language used to pick a record kind
//! (layer 2) and to filter a route (layer 4).

use std::fmt;

use serde::de::{MapAccess, SeqAccess, Visitor};

mod condition;
mod value;

pub use condition::{Condition, Headers};
pub use value::{Map, Number, Value, value_at};

/// The pointer of the first key an object of `text` repeats, in one pass that builds nothing
/// (serde_json keeps the last of repeated keys silently; a body with one has two readings).
/// `Err` when `text` is not JSON, with the reason.
pub fn first_duplicate_key(text: &[u8]) -> Result<Option<String>, String> {
    use serde::de::DeserializeSeed;
    let found = std::cell::RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(text);
    let fast = match (DupCheck { at: String::new(), found: &found }).deserialize(&mut de) {
        Ok(()) => de.end().map(|()| None),
        Err(e) => found.into_inner().map_or(Err(e), |at| Ok(Some(at))),
    };
    match fast {
        Ok(found) => Ok(found),
        // serde_json refuses a number beyond `f64` (`1E400`) where the hub accepts it as text:
        // the exact parse, slower, decides those.
        Err(_) => match value::parse_raw(text) {
            Ok(_) => Ok(None),
            Err(value::Refused::Duplicate(at)) => Ok(Some(at)),
            Err(value::Refused::Invalid(why)) => Err(why),
        },
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
pub fn insert_at(obj: &mut Map, path: &[String], value: Value) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn json(v: serde_json::Value) -> Value {
        v.into()
    }

    #[test]
    fn leaves_and_tokens() {
        let mut out = Vec::new();
        leaves(&json(serde_json::json!({"a": {"b/c": 1, "d": []}, "e": [1, {"f": null}]})), "", &mut out);
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
}
