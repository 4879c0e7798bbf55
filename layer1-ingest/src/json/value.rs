//! [`Value`]: a JSON document whose numbers keep their text exactly as written.
//!
//! The hub promises that a third party's `12345678901234567890123` or `1E400` reaches the core
//! app digit for digit. serde_json keeps such numbers only under its `arbitrary_precision`
//! feature, and cargo turns a dependency's features on for the whole build: an application
//! embedding the hub would find its own `#[serde(untagged)]` enums and `#[serde(flatten)]`
//! structs unable to read numbers. So the hub carries its own document type instead. It is
//! serde_json's `Value` in shape (same variants, same method names), with a [`Number`] that is
//! the number's JSON text, and it is read with [`Value::parse`], which takes each number's text
//! from serde_json's `RawValue` (the `raw_value` feature, which changes nothing for the host).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// An object's members, sorted by key (as serde_json's own map without `preserve_order`).
pub type Map = BTreeMap<String, Value>;

/// A JSON number, kept as the text it was written with: `1.10` stays `1.10`, `1E400` stays
/// `1E400`. Two numbers are equal when their text is (`1.0` is not `1`): the hub compares and
/// forwards what the sender wrote, it does not do arithmetic.
#[derive(Clone)]
pub struct Number(Box<RawValue>);

impl PartialEq for Number {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Number {}

impl std::hash::Hash for Number {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h);
    }
}

impl Number {
    /// `text` as a number, if it is one by JSON's grammar (no sign `+`, no leading zeros, no
    /// surrounding space).
    pub fn parse(text: &str) -> Option<Number> {
        if !is_number_text(text.as_bytes()) {
            return None;
        }
        RawValue::from_string(text.to_owned()).ok().map(Number)
    }

    /// The number as written.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// A finite `f64` in serde_json's shortest form (`1.5`, `1e300`); `None` for NaN or an
    /// infinity, which JSON cannot write.
    pub fn from_f64(f: f64) -> Option<Number> {
        serde_json::Number::from_f64(f).and_then(|n| Number::parse(&n.to_string()))
    }

    /// The nearest `f64` (an approximation for long or huge numbers: `1E400` is infinite).
    pub fn as_f64(&self) -> f64 {
        self.as_str().parse().unwrap_or(f64::NAN)
    }

    /// The value as an `i64`, when the text is an integer in range.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_str().parse().ok()
    }

    /// The value as a `u64`, when the text is a non-negative integer in range.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_str().parse().ok()
    }

    /// Whether the text is an integer literal (no fraction, no exponent).
    pub fn is_integer_text(&self) -> bool {
        !self.as_str().contains(['.', 'e', 'E'])
    }
}

/// JSON's number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_number_text(b: &[u8]) -> bool {
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Number({})", self.as_str())
    }
}

macro_rules! number_from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Number {
            fn from(n: $t) -> Self {
                // An integer's decimal text is always a valid JSON number.
                Number(RawValue::from_string(n.to_string()).unwrap_or_else(|_| zero()))
            }
        }
        impl From<$t> for Value {
            fn from(n: $t) -> Self {
                Value::Number(n.into())
            }
        }
    )*};
}
number_from_int!(i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);

fn zero() -> Box<RawValue> {
    serde_json::value::to_raw_value(&0).unwrap_or_default()
}

impl Serialize for Number {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // serde_json writes a `RawValue` as its text, so the number goes out as written.
        self.0.serialize(s)
    }
}

/// A JSON document with exact numbers. See the module documentation for why it is not
/// serde_json's `Value`.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Value {
    /// `null`.
    #[default]
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as written.
    Number(Number),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object.
    Object(Map),
}

/// Deepest nesting accepted: serde_json's own limit, so that what is stored parses again.
const MAX_DEPTH: usize = 128;

static NULL: Value = Value::Null;

impl Value {
    /// Parses JSON keeping every number's text exactly as written and refusing duplicate keys
    /// (serde_json would keep the last one silently). Errors name the place.
    pub fn parse(text: &[u8]) -> Result<Value, String> {
        parse_raw(text).map_err(|e| match e {
            Refused::Duplicate(at) => format!("duplicate key at `{at}`"),
            Refused::Invalid(why) => why,
        })
    }

    /// The value's JSON type with its article, for messages: `a string`, `an array`, `null`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }

    /// The JSON text (numbers as written, keys sorted).
    pub fn to_json(&self) -> String {
        // Writing into a String cannot fail, and every number is valid JSON text already.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A typed value as a document: numbers as serde_json writes them (`1.5`, `1e300`).
    pub fn from_typed<T: Serialize + ?Sized>(value: &T) -> Result<Value, serde_json::Error> {
        let text = serde_json::to_string(value)?;
        Value::parse(text.as_bytes()).map_err(de::Error::custom)
    }

    /// Reads the document into `T` with the application's own serde_json (through the text,
    /// so `T` sees the numbers as written).
    pub fn to_typed<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.to_json())
    }

    /// The document as serde_json's `Value`. Numbers become what serde_json makes of their text
    /// in this build: without `arbitrary_precision`, an `f64` for a fraction or an integer beyond
    /// 64 bits (rounded), and the largest finite `f64` for a magnitude beyond it (`1E400`), so
    /// that range checks still see it as huge. Only for reading (schema checks), never for
    /// carrying data on.
    pub fn to_serde_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Number(n) => {
                let number = serde_json::from_str::<serde_json::Number>(n.as_str()).ok().or_else(|| {
                    let f = n.as_f64();
                    let clamped = if f.is_infinite() { f64::MAX.copysign(f) } else { f };
                    serde_json::Number::from_f64(clamped)
                });
                number.map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::Array(a) => serde_json::Value::Array(a.iter().map(Value::to_serde_json).collect()),
            Value::Object(m) => {
                serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_serde_json())).collect())
            }
        }
    }

    /// The value at a JSON pointer (RFC 6901); `""` is the whole document.
    pub fn pointer(&self, pointer: &str) -> Option<&Value> {
        let mut cur = self;
        for tok in super::tokens(pointer)? {
            cur = match cur {
                Value::Object(m) => m.get(&tok)?,
                Value::Array(a) => a.get(array_index(&tok)?)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_object().and_then(|m| m.get(key))
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        if let Value::String(s) = self { Some(s) } else { None }
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        if let Value::Bool(b) = self { Some(*b) } else { None }
    }

    /// The number, if this is one.
    pub fn as_number(&self) -> Option<&Number> {
        if let Value::Number(n) = self { Some(n) } else { None }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&Vec<Value>> {
        if let Value::Array(a) = self { Some(a) } else { None }
    }

    /// The members, if this is an object.
    pub fn as_object(&self) -> Option<&Map> {
        if let Value::Object(m) = self { Some(m) } else { None }
    }

    /// The members, mutably, if this is an object.
    pub fn as_object_mut(&mut self) -> Option<&mut Map> {
        if let Value::Object(m) = self { Some(m) } else { None }
    }

    /// Whether this is `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Whether this is an object.
    pub fn is_object(&self) -> bool {
        matches!(self, Value::Object(_))
    }

    /// Whether this is an array.
    pub fn is_array(&self) -> bool {
        matches!(self, Value::Array(_))
    }

    /// Whether this is a string.
    pub fn is_string(&self) -> bool {
        matches!(self, Value::String(_))
    }

    /// Whether this is a number.
    pub fn is_number(&self) -> bool {
        matches!(self, Value::Number(_))
    }
}

/// An array index token: digits without a leading zero (RFC 6901).
fn array_index(tok: &str) -> Option<usize> {
    if tok.len() > 1 && tok.starts_with('0') || !tok.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    tok.parse().ok()
}

/// The value at `pointer` in the JSON `text`, read exactly, without building the rest of the
/// document: each level on the way is scanned once to find the member (serde_json checks its
/// syntax as it goes), and only the value found is built. `None` when the text is not JSON or
/// nothing is there. Repeated keys are not looked for here: see `first_duplicate_key`.
pub fn value_at(text: &[u8], pointer: &str) -> Option<Value> {
    let mut raw: &RawValue = serde_json::from_slice(text).ok()?;
    for tok in super::tokens(pointer)? {
        raw = match raw.get().as_bytes().first() {
            Some(b'{') => {
                let Entries(entries) = serde_json::from_str(raw.get()).ok()?;
                entries.into_iter().find(|(k, _)| *k == tok).map(|(_, v)| v)?
            }
            Some(b'[') => {
                let items: Vec<&RawValue> = serde_json::from_str(raw.get()).ok()?;
                items.get(array_index(&tok)?).copied()?
            }
            _ => return None,
        };
    }
    exact(raw, pointer, 0).ok()
}

/// Why [`parse_raw`] refused a text.
pub(super) enum Refused {
    /// A key repeated in one object, at this pointer.
    Duplicate(String),
    /// Not JSON, or nested too deep: the reason.
    Invalid(String),
}

/// [`Value::parse`], telling a repeated key apart from other faults.
pub(super) fn parse_raw(text: &[u8]) -> Result<Value, Refused> {
    let raw: &RawValue = serde_json::from_slice(text).map_err(|e| Refused::Invalid(e.to_string()))?;
    exact(raw, "", 0)
}

fn exact(raw: &RawValue, at: &str, depth: usize) -> Result<Value, Refused> {
    let s = raw.get();
    let invalid = |e: serde_json::Error| Refused::Invalid(format!("at `{at}`: {e}"));
    if depth > MAX_DEPTH {
        return Err(Refused::Invalid(format!("nested deeper than {MAX_DEPTH} levels at `{at}`")));
    }
    match s.as_bytes().first() {
        Some(b'{') => {
            let Entries(entries) = serde_json::from_str(s).map_err(invalid)?;
            let mut m = Map::new();
            for (k, v) in entries {
                let here = format!("{at}/{}", super::escape_token(&k));
                let value = exact(v, &here, depth + 1)?;
                if m.insert(k, value).is_some() {
                    return Err(Refused::Duplicate(here));
                }
            }
            Ok(Value::Object(m))
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(s).map_err(invalid)?;
            let parsed =
                items.into_iter().enumerate().map(|(i, v)| exact(v, &format!("{at}/{i}"), depth + 1));
            parsed.collect::<Result<Vec<_>, _>>().map(Value::Array)
        }
        // serde_json has checked the number; its text is kept as written.
        Some(b'-' | b'0'..=b'9') => Ok(Value::Number(Number(raw.to_owned()))),
        Some(b'"') => serde_json::from_str(s).map(Value::String).map_err(invalid),
        Some(b't') => Ok(Value::Bool(true)),
        Some(b'f') => Ok(Value::Bool(false)),
        Some(b'n') => Ok(Value::Null),
        _ => Err(Refused::Invalid(format!("at `{at}`: not a JSON value"))),
    }
}

/// An object's members in document order, values unparsed.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
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
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Number(n) => n.serialize(s),
            Value::String(v) => s.serialize_str(v),
            Value::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for x in a {
                    seq.serialize_element(x)?;
                }
                seq.end()
            }
            Value::Object(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Reads a document from any serde format (integration files' TOML, for instance). A number
/// arrives as the format's `i64`, `u64` or `f64` and is written back in serde_json's form; for
/// JSON text with exact numbers use [`Value::parse`].
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
                Ok(Value::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
                Ok(n.into())
            }
            fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
                Ok(n.into())
            }
            fn visit_f64<E: de::Error>(self, f: f64) -> Result<Value, E> {
                Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| E::custom(format!("{f} is not a JSON number")))
            }
            fn visit_str<E>(self, s: &str) -> Result<Value, E> {
                Ok(Value::String(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Value, E> {
                Ok(Value::String(s))
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Value, D2::Error> {
                Value::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut out = Vec::new();
                while let Some(x) = seq.next_element()? {
                    out.push(x);
                }
                Ok(Value::Array(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut out = Map::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    if out.contains_key(&k) {
                        return Err(de::Error::custom(format!("duplicate key `{k}`")));
                    }
                    out.insert(k, v);
                }
                Ok(Value::Object(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// serde_json's document as ours: numbers keep the text serde_json writes for them.
impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Self {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => Number::parse(&n.to_string()).map_or(Value::Null, Value::Number),
            serde_json::Value::String(s) => Value::String(s),
            serde_json::Value::Array(a) => Value::Array(a.into_iter().map(Value::from).collect()),
            serde_json::Value::Object(m) => {
                Value::Object(m.into_iter().map(|(k, v)| (k, v.into())).collect())
            }
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<Map> for Value {
    fn from(m: Map) -> Self {
        Value::Object(m)
    }
}

impl From<Vec<Value>> for Value {
    fn from(a: Vec<Value>) -> Self {
        Value::Array(a)
    }
}

impl std::ops::Index<&str> for Value {
    type Output = Value;
    /// The member `key`, or `null` when there is none (as serde_json's `Value`).
    fn index(&self, key: &str) -> &Value {
        self.get(key).unwrap_or(&NULL)
    }
}

impl std::ops::Index<usize> for Value {
    type Output = Value;
    /// The element `i`, or `null` when there is none (as serde_json's `Value`).
    fn index(&self, i: usize) -> &Value {
        self.as_array().and_then(|a| a.get(i)).unwrap_or(&NULL)
    }
}

impl std::ops::IndexMut<usize> for Value {
    /// The element `i`; a shorter array is padded with `null`s and a value that is not an
    /// array becomes one first (serde_json panics there instead).
    fn index_mut(&mut self, i: usize) -> &mut Value {
        if !self.is_array() {
            *self = Value::Array(Vec::new());
        }
        match self {
            Value::Array(a) => {
                if a.len() <= i {
                    a.resize(i + 1, Value::Null);
                }
                &mut a[i]
            }
            _ => unreachable!("made an array above"),
        }
    }
}

impl std::ops::IndexMut<&str> for Value {
    /// The member `key`, inserted as `null` if missing; a value that is not an object becomes
    /// an empty one first (serde_json panics there instead).
    fn index_mut(&mut self, key: &str) -> &mut Value {
        if !self.is_object() {
            *self = Value::Object(Map::new());
        }
        match self {
            Value::Object(m) => m.entry(key.to_owned()).or_default(),
            _ => unreachable!("made an object above"),
        }
    }
}

/// Compares with serde_json's document as [`From`] converts it (tests write expectations with
/// serde_json's `json!`).
impl PartialEq<serde_json::Value> for Value {
    fn eq(&self, other: &serde_json::Value) -> bool {
        use serde_json::Value as J;
        match (self, other) {
            (Value::Null, J::Null) => true,
            (Value::Bool(a), J::Bool(b)) => a == b,
            (Value::Number(a), J::Number(b)) => a.as_str() == b.to_string(),
            (Value::String(a), J::String(b)) => a == b,
            (Value::Array(a), J::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y),
            (Value::Object(a), J::Object(b)) => {
                a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| v == w))
            }
            _ => false,
        }
    }
}

impl PartialEq<str> for Value {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == Some(other)
    }
}

impl PartialEq<&str> for Value {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == Some(*other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_their_text_through_parse_and_write() {
        let text = r#"{"a":1E400,"b":[0.1,12345678901234567890123,-2.50e-3,1.10],"c":{"d":"x1e5"},"e":null}"#;
        let v = Value::parse(text.as_bytes()).expect("parses");
        assert_eq!(v.to_json(), text);
        assert_eq!(
            v.pointer("/b/1").and_then(Value::as_number).map(Number::as_str),
            Some("12345678901234567890123")
        );
        // Embedded in a serde_json document written by serde_json, still as written.
        let outer = serde_json::json!({ "x": 1 });
        let both = serde_json::to_string(&(outer, &v)).expect("writes");
        assert!(both.contains("12345678901234567890123") && both.contains("1E400"), "{both}");
    }

    #[test]
    fn number_grammar() {
        for ok in ["0", "-0", "1.5", "1e5", "1E+5", "-2.50e-3", "12345678901234567890123"] {
            assert!(Number::parse(ok).is_some(), "{ok}");
        }
        for bad in ["", "-", "01", "1.", ".5", "+1", "1e", "1e+", " 1", "1 ", "0x10", "NaN", "1.5.5"] {
            assert!(Number::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(Number::from_f64(1.5).map(|n| n.to_string()).as_deref(), Some("1.5"));
        assert!(Number::from_f64(f64::INFINITY).is_none());
    }

    #[test]
    fn pointers_and_index() {
        let v = Value::parse(br#"{"a":[{"b/c":1},2],"":{"~":true}}"#).expect("parses");
        assert_eq!(v.pointer("/a/0/b~1c"), Some(&Value::from(1)));
        assert_eq!(v.pointer("//~0"), Some(&Value::Bool(true)));
        assert_eq!(v.pointer("/a/01"), None);
        assert_eq!(v.pointer("/a/x"), None);
        assert_eq!(v.pointer(""), Some(&v));
        assert!(v["missing"]["deeper"].is_null());
        let mut w = Value::Null;
        w["k"] = "v".into();
        assert_eq!(w.to_json(), r#"{"k":"v"}"#);
    }

    #[test]
    fn one_value_is_read_as_the_whole_parse_reads_it() {
        let text = br#"{"id":12345678901234567890123,"data":{"items":[{"k":"a/b"},{"n":1E400}]},"e":""}"#;
        let whole = Value::parse(text).expect("parses");
        for p in [
            "/id",
            "/data/items/1/n",
            "/data/items/0",
            "/e",
            "",
            "/data/items/2",
            "/x",
            "/id/0",
            "/data/items/01",
        ] {
            assert_eq!(value_at(text, p).as_ref(), whole.pointer(p), "{p}");
        }
        assert_eq!(value_at(text, "/id").map(|v| v.to_json()).as_deref(), Some("12345678901234567890123"));
        assert_eq!(value_at(b"{\"id\":", "/id"), None, "not JSON");
        assert_eq!(value_at(b"{\"id\":1} x", "/id"), None, "trailing text");
    }

    #[test]
    fn refused_input_says_where() {
        assert!(Value::parse(br#"{"a":1,"b":{"c":1,"c":2}}"#).expect_err("dup").contains("/b/c"));
        assert!(Value::parse(b"{").is_err());
        assert!(Value::parse(b"[1,]").is_err());
        let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
        assert!(Value::parse(deep.as_bytes()).expect_err("too deep").contains("deeper"));
    }

    #[test]
    fn serde_json_views() {
        let v =
            Value::parse(br#"{"big":1E400,"neg":-1E400,"f":1.5,"i":12345678901234567890123}"#).expect("p");
        let s = v.to_serde_json();
        assert_eq!(s["big"].as_f64(), Some(f64::MAX));
        assert_eq!(s["neg"].as_f64(), Some(-f64::MAX));
        assert_eq!(s["f"].as_f64(), Some(1.5));
        assert!(s["i"].as_f64().is_some_and(|f| f > 1.2e22));
        let back = Value::from(serde_json::json!({"f": 1.5, "n": -3, "s": "x"}));
        assert_eq!(back.to_json(), r#"{"f":1.5,"n":-3,"s":"x"}"#);
        #[derive(serde::Deserialize, serde::Serialize)]
        struct T {
            f: f64,
        }
        let t: T = Value::parse(br#"{"f":2.25}"#).expect("p").to_typed().expect("typed");
        assert_eq!(t.f, 2.25);
        assert_eq!(Value::from_typed(&t).expect("doc").to_json(), r#"{"f":2.25}"#);
        // From another serde format: numbers in serde_json's form, duplicates refused.
        let from_toml: Value = serde_json::from_str(r#"{"a": 1.0, "b": [true, null]}"#).expect("reads");
        assert_eq!(from_toml.to_json(), r#"{"a":1.0,"b":[true,null]}"#);
    }
}
