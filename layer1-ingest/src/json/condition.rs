//! [`Condition`], the one small test language of the hub: which record kind a record is, which
//! incoming events a source drops (layer 2), which core messages take a route (layer 4).
//!
//! A condition is one table of TOML (or one JSON object):
//! - `{ pointer = "/action", equals = "opened" }`: a value of the document;
//! - `{ header = "X-GitHub-Event", equals = "issues" }`: a request header the message came with
//!   (only incoming webhooks have them);
//! - `{ all = [c, ...] }`, `{ any = [c, ...] }`, `{ not = c }`: conditions combined.
//!
//! A `pointer` or `header` test takes `equals`, `in` and `exists`; none of them: the value
//! must exist. [`Condition::problem`] says what is wrong with one before it is used.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::{Value, tokens};

/// The request headers a message came with, as layer 1 stores them (a JSON object of strings,
/// names lowercased, secret-looking ones redacted). Names are looked up in any case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(BTreeMap<String, String>);

impl Headers {
    /// The headers of layer 1's `headers` column. Empty text is no headers; anything but a
    /// JSON object of strings is an error, with the reason (the hub writes that column itself,
    /// so this means a damaged row, never a sender's input).
    pub fn from_json(text: &str) -> Result<Headers, String> {
        if text.trim().is_empty() {
            return Ok(Headers::default());
        }
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| format!("stored headers are not a JSON object: {e}"))?;
        map.into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k.to_ascii_lowercase(), s)),
                other => Err(format!("stored header `{k}` is not a string: {other}")),
            })
            .collect::<Result<_, _>>()
            .map(Headers)
    }

    /// The value of header `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

impl<K: AsRef<str>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Headers(iter.into_iter().map(|(k, v)| (k.as_ref().to_ascii_lowercase(), v.into())).collect())
    }
}

/// A test on a JSON document and the request headers it came with:
/// `{ pointer = "/type", equals = "x" }` (or `in = [...]`, `exists = true|false`),
/// `{ header = "X-GitHub-Event", equals = "issues" }`, `{ all = [...] }`, `{ any = [...] }`,
/// `{ not = {...} }`. Numbers compare by their exact text (`1.0` is not `1`); a header's value
/// is text and compares with strings. Build one in code with [`Condition::at`],
/// [`Condition::header`], [`Condition::all`], [`Condition::any`], `!condition` and the
/// tests [`Condition::equals`], [`Condition::one_of`], [`Condition::exists`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "one condition: { pointer = \"/action\", equals = \"opened\" } or { header = \"X-GitHub-Event\", \
                 equals = \"issues\" }; combine several with all = [...], any = [...], not = {...}"
)]
pub struct Condition {
    #[serde(default)]
    pointer: Option<String>,
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    all: Option<Vec<Condition>>,
    #[serde(default)]
    any: Option<Vec<Condition>>,
    #[serde(default)]
    not: Option<Box<Condition>>,
    #[serde(default)]
    equals: Option<Value>,
    #[serde(default, rename = "in")]
    one_of: Option<Vec<Value>>,
    #[serde(default)]
    exists: Option<bool>,
}

/// What a condition tests, once it is known to test exactly one thing.
enum Shape<'a> {
    Pointer(&'a str),
    Header(&'a str),
    All(&'a [Condition]),
    Any(&'a [Condition]),
    Not(&'a Condition),
}

impl Condition {
    /// A test of the value at `pointer` in the document (the value must exist, unless a test
    /// says otherwise).
    pub fn at(pointer: impl Into<String>) -> Self {
        Self { pointer: Some(pointer.into()), ..Self::default() }
    }

    /// A test of request header `name` (any case).
    pub fn header(name: impl Into<String>) -> Self {
        Self { header: Some(name.into()), ..Self::default() }
    }

    /// Holds when every one of `conditions` does.
    pub fn all(conditions: Vec<Condition>) -> Self {
        Self { all: Some(conditions), ..Self::default() }
    }

    /// Holds when at least one of `conditions` does.
    pub fn any(conditions: Vec<Condition>) -> Self {
        Self { any: Some(conditions), ..Self::default() }
    }

    /// The tested value must equal `value`.
    pub fn equals(mut self, value: impl Into<Value>) -> Self {
        self.equals = Some(value.into());
        self
    }

    /// The tested value must be one of `values`.
    pub fn one_of(mut self, values: Vec<Value>) -> Self {
        self.one_of = Some(values);
        self
    }

    /// The tested value must (true) or must not (false) be present.
    pub fn exists(mut self, present: bool) -> Self {
        self.exists = Some(present);
        self
    }

    fn shape(&self) -> Option<Shape<'_>> {
        let shapes = [
            self.pointer.as_deref().map(Shape::Pointer),
            self.header.as_deref().map(Shape::Header),
            self.all.as_deref().map(Shape::All),
            self.any.as_deref().map(Shape::Any),
            self.not.as_deref().map(Shape::Not),
        ];
        let mut given = shapes.into_iter().flatten();
        match (given.next(), given.next()) {
            (Some(s), None) => Some(s),
            _ => None,
        }
    }

    /// Whether `doc` passes, for callers with no request headers (a header test sees none).
    pub fn holds(&self, doc: &Value) -> bool {
        self.holds_with(doc, &Headers::default())
    }

    /// Whether `doc`, which came with `headers`, passes. A condition that [`problem`] refuses
    /// never holds.
    ///
    /// [`problem`]: Condition::problem
    pub fn holds_with(&self, doc: &Value, headers: &Headers) -> bool {
        match self.shape() {
            None => false,
            Some(Shape::Pointer(p)) => self.test(doc.pointer(p)),
            Some(Shape::Header(name)) => {
                self.test(headers.get(name).map(|v| Value::String(v.to_owned())).as_ref())
            }
            Some(Shape::All(cs)) => cs.iter().all(|c| c.holds_with(doc, headers)),
            Some(Shape::Any(cs)) => cs.iter().any(|c| c.holds_with(doc, headers)),
            Some(Shape::Not(c)) => !c.holds_with(doc, headers),
        }
    }

    /// The leaf test on the value found (`None`: absent). No test: the value must exist.
    fn test(&self, v: Option<&Value>) -> bool {
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

    /// What is wrong with the condition itself, if anything (the first problem found, with
    /// where it is inside combined conditions: `all[1]: ...`).
    pub fn problem(&self) -> Option<String> {
        const ONE_OF: &str = "`pointer`, `header`, `all`, `any` or `not`";
        let given: Vec<&str> = [
            ("pointer", self.pointer.is_some()),
            ("header", self.header.is_some()),
            ("all", self.all.is_some()),
            ("any", self.any.is_some()),
            ("not", self.not.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, on)| on.then_some(k))
        .collect();
        let Some(shape) = self.shape() else {
            return Some(if given.is_empty() {
                format!("a condition needs one of {ONE_OF}")
            } else {
                format!(
                    "a condition takes exactly one of {ONE_OF}, this one has {}: combine them with \
                     all = [...]",
                    given.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(" and ")
                )
            });
        };
        let has_test = self.equals.is_some() || self.one_of.is_some() || self.exists.is_some();
        let nested = |key: &str, cs: &[Condition]| {
            cs.iter().enumerate().find_map(|(i, c)| c.problem().map(|p| format!("{key}[{i}]: {p}")))
        };
        match shape {
            Shape::All(_) | Shape::Any(_) | Shape::Not(_) if has_test => Some(format!(
                "`equals`, `in` and `exists` test a `pointer` or a `header`, not `{}`: put them in the \
                 conditions it combines",
                given[0]
            )),
            Shape::All([]) => {
                Some("`all = []` is useless (it always holds): list the conditions that must all hold".into())
            }
            Shape::Any([]) => Some(
                "`any = []` is useless (it never holds): list the conditions one of which must hold".into(),
            ),
            Shape::All(cs) => nested("all", cs),
            Shape::Any(cs) => nested("any", cs),
            Shape::Not(c) => c.problem().map(|p| format!("not: {p}")),
            Shape::Pointer(p) if tokens(p).is_none() => {
                Some(format!("`{p}` is not a JSON pointer (it starts with /)"))
            }
            Shape::Header(h) if h.is_empty() || !h.bytes().all(is_header_name_byte) => {
                Some(format!("`{h}` is not a header name (letters, digits and `-`, like X-GitHub-Event)"))
            }
            Shape::Header(h)
                if (self.equals.is_some() || self.one_of.is_some())
                    && crate::ingest::is_redacted_header(h) =>
            {
                Some(format!(
                    "header `{h}` is stored as [redacted] (its name looks like a credential's): only \
                     `exists` can test it"
                ))
            }
            Shape::Header(h)
                if self.equals.iter().chain(self.one_of.iter().flatten()).any(|v| !v.is_string()) =>
            {
                Some(format!("header `{h}` is text: compare it with strings (equals = \"...\")"))
            }
            Shape::Pointer(_) | Shape::Header(_) => self.test_problem(),
        }
    }

    fn test_problem(&self) -> Option<String> {
        if self.one_of.as_ref().is_some_and(Vec::is_empty) {
            return Some("`in = []` can never hold".into());
        }
        if self.exists == Some(false) && (self.equals.is_some() || self.one_of.is_some()) {
            return Some("`exists = false` cannot be combined with `equals` or `in`".into());
        }
        None
    }

    /// [`Condition::problem`], where the tested thing has no request headers (a route's filter
    /// tests a core message): a header test is a problem there too.
    pub fn problem_without_headers(&self) -> Option<String> {
        self.problem().or_else(|| {
            self.first_header().map(|h| {
                format!(
                    "`header = \"{h}\"`: request headers are only known for incoming webhooks (record \
                     kinds and drop rules of an integration file), not here"
                )
            })
        })
    }

    /// Whether the condition tests a request header anywhere (so the headers must be read).
    pub fn uses_headers(&self) -> bool {
        self.first_header().is_some()
    }

    fn first_header(&self) -> Option<&str> {
        self.header.as_deref().or_else(|| {
            self.all
                .iter()
                .chain(self.any.iter())
                .flatten()
                .chain(self.not.as_deref())
                .find_map(Condition::first_header)
        })
    }

    /// Every document pointer the condition tests (for checks against a schema).
    pub fn pointers(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.pointer.as_deref().into_iter().collect();
        for c in self.all.iter().chain(self.any.iter()).flatten().chain(self.not.as_deref()) {
            out.extend(c.pointers());
        }
        out
    }
}

/// `!c` holds when `c` does not (`{ not = c }`).
impl std::ops::Not for Condition {
    type Output = Condition;
    fn not(self) -> Condition {
        Condition { not: Some(Box::new(self)), ..Condition::default() }
    }
}

/// `-`, letters, digits and the other token characters of RFC 9110 (no `:` or space).
fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A short reading of the condition, for messages: `/action = "opened"`,
/// `header x-github-event = "issues"`, `(a and b)`, `(a or b)`, `not a`.
impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let joined = |f: &mut fmt::Formatter<'_>, cs: &[Condition], sep: &str| {
            f.write_str("(")?;
            for (i, c) in cs.iter().enumerate() {
                if i > 0 {
                    f.write_str(sep)?;
                }
                write!(f, "{c}")?;
            }
            f.write_str(")")
        };
        match self.shape() {
            None => f.write_str("(invalid condition)"),
            Some(Shape::All(cs)) => joined(f, cs, " and "),
            Some(Shape::Any(cs)) => joined(f, cs, " or "),
            Some(Shape::Not(c)) => write!(f, "not {c}"),
            Some(leaf) => {
                match leaf {
                    Shape::Header(h) => write!(f, "header {}", h.to_ascii_lowercase())?,
                    Shape::Pointer(p) => f.write_str(p)?,
                    _ => {}
                }
                let mut tested = false;
                if let Some(v) = &self.equals {
                    write!(f, " = {v}")?;
                    tested = true;
                }
                if let Some(set) = &self.one_of {
                    let items: Vec<String> = set.iter().map(Value::to_string).collect();
                    write!(f, " in [{}]", items.join(", "))?;
                    tested = true;
                }
                match self.exists {
                    Some(false) => f.write_str(" absent"),
                    Some(true) if !tested => f.write_str(" exists"),
                    None if !tested => f.write_str(" exists"),
                    _ => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(v: serde_json::Value) -> Value {
        v.into()
    }

    fn c(s: &str) -> Condition {
        serde_json::from_str::<Condition>(s).expect("condition")
    }

    #[test]
    fn pointer_tests() {
        let doc = json(serde_json::json!({"type": "x", "n": 1.0}));
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

    /// GitHub's case: the event type is only in a header, the action in the body.
    #[test]
    fn headers_all_any_not() {
        let doc = json(serde_json::json!({"action": "closed", "issue": {"number": 1347}}));
        let issues: Headers =
            [("X-GitHub-Event", "issues"), ("X-GitHub-Delivery", "72d3162e")].into_iter().collect();
        let push: Headers = [("x-github-event", "push")].into_iter().collect();
        let stored = Headers::from_json(r#"{"x-github-event":"issues","content-type":"application/json"}"#)
            .expect("stored headers");
        assert_eq!(stored.get("X-GitHub-Event"), Some("issues"));

        let is_issues = c(r#"{"header":"X-GitHub-Event","equals":"issues"}"#);
        assert!(is_issues.holds_with(&doc, &issues));
        assert!(is_issues.holds_with(&doc, &stored));
        assert!(!is_issues.holds_with(&doc, &push));
        assert!(!is_issues.holds(&doc), "no headers: a header test does not hold");
        assert!(c(r#"{"header":"x-github-event","in":["push","ping"]}"#).holds_with(&doc, &push));
        assert!(c(r#"{"header":"X-Hub-Signature","exists":false}"#).holds_with(&doc, &push));

        let not_opened = c(r#"{"all":[{"header":"X-GitHub-Event","equals":"issues"},
                                      {"not":{"pointer":"/action","equals":"opened"}}]}"#);
        assert!(not_opened.holds_with(&doc, &issues));
        assert!(!not_opened.holds_with(&doc, &push));
        let opened = json(serde_json::json!({"action": "opened"}));
        assert!(!not_opened.holds_with(&opened, &issues));

        let either = c(
            r#"{"any":[{"header":"x-github-event","equals":"push"},{"pointer":"/issue/number","equals":1347}]}"#,
        );
        assert!(either.holds_with(&doc, &Headers::default()));
        assert!(either.holds_with(&opened, &push));
        assert!(!either.holds_with(&opened, &issues));
        assert_eq!(
            not_opened.to_string(),
            r#"(header x-github-event = "issues" and not /action = "opened")"#
        );
        assert_eq!(
            Condition::at("/action").equals("opened"),
            c(r#"{"pointer":"/action","equals":"opened"}"#)
        );
        assert!(Headers::from_json(r#"["x"]"#).is_err());
        assert!(Headers::from_json(r#"{"a":1}"#).is_err());
        assert_eq!(Headers::from_json(""), Ok(Headers::default()));
    }

    #[test]
    fn problems_name_what_is_wrong_and_where() {
        let p = |s: &str| c(s).problem().unwrap_or_default();
        // Bitbucket's event type is in `X-Event-Key`: ingest stores it redacted, so an equality
        // test would never hold; refused, `exists` allowed.
        assert!(p(r#"{"header":"X-Event-Key","equals":"repo:push"}"#).contains("stored as [redacted]"));
        assert!(c(r#"{"header":"X-Event-Key","exists":true}"#).problem().is_none());
        assert!(
            p(r#"{"pointer":"/a","header":"x"}"#).contains("exactly one of"),
            "{}",
            p(r#"{"pointer":"/a","header":"x"}"#)
        );
        assert!(p(r#"{"equals":"x"}"#).contains("needs one of"));
        assert!(p(r#"{"all":[]}"#).contains("`all = []` is useless"));
        assert!(p(r#"{"any":[]}"#).contains("`any = []` is useless"));
        assert!(p(r#"{"not":{"pointer":"/a"},"equals":1}"#).contains("not `not`"));
        assert_eq!(
            p(r#"{"all":[{"pointer":"/a"},{"any":[{"pointer":"b"}]}]}"#),
            "all[1]: any[0]: `b` is not a JSON pointer (it starts with /)"
        );
        assert!(p(r#"{"header":"X GitHub"}"#).contains("not a header name"));
        assert!(p(r#"{"header":"x-n","equals":1}"#).contains("compare it with strings"));
        assert!(
            c(r#"{"all":[{"header":"X-GitHub-Event","equals":"issues"},{"not":{"pointer":"/action"}}]}"#)
                .problem()
                .is_none()
        );
        let routed = c(r#"{"any":[{"pointer":"/a"},{"not":{"header":"x-b"}}]}"#);
        assert!(routed.problem().is_none());
        let why = routed.problem_without_headers().expect("refused without headers");
        assert!(why.contains("only known for incoming webhooks") && why.contains("x-b"), "{why}");
        assert!(c(r#"{"pointer":"/a"}"#).problem_without_headers().is_none());
        assert_eq!(c(r#"{"all":[{"pointer":"/a"},{"not":{"pointer":"/b/c"}}]}"#).pointers(), ["/a", "/b/c"]);
    }
}
