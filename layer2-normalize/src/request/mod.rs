//! Downstream layer 2: the third party's HTTP request built from a translated message
//! (method, URL path from a template, query, headers, body), checked against the third party's
//! request schema before anything is sent. A message that cannot make a valid request is
//! rejected with the pointer and the rule, never sent.
//!
//! [`RequestSpec::compile`] checks a template once and splits it into pieces;
//! [`RequestSpec::build`] runs per message on the delivery path and only walks those pieces
//! (no parsing, no regular expressions). What it guarantees about the request:
//!
//! - A path placeholder's value is one path segment: every byte outside RFC 3986's unreserved
//!   set is percent-encoded (`a/b` is `a%2Fb`, `?x` is `%3Fx`, `%2e` is `%252e`), and a segment
//!   that would come out `.` or `..` is refused (rule `path_escape`): URL resolution would climb
//!   out of the template's path with it.
//! - Query parameters and form bodies use the same encoding (a space is `%20`).
//! - A header value holding a control character (CR, LF, NUL, ...) is refused (rule
//!   `header_value`): it could end the header and smuggle in others.
//! - Numbers go out exactly as the message holds them, in JSON and form bodies, paths, query
//!   strings and headers alike (`12345678901234567890.10` stays).

use std::sync::Arc;

use layer1_ingest::Rejection;
use layer1_ingest::json::Value;

use crate::schema::JsonSchema;

mod encode;
mod template;
#[cfg(test)]
mod tests;

use encode::{Ptr, child, form_body, percent_encode_into, scalar_text};
use template::{compile_header, compile_path, compile_query};

/// How the body is written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum BodyEncoding {
    /// `application/json`, numbers exactly as the message holds them.
    #[default]
    Json,
    /// `application/x-www-form-urlencoded`, nested objects and arrays in bracket notation
    /// (`metadata[order]=7`, `items[0][sku]=A`), as Stripe and other payment APIs take it.
    Form,
    /// No body (GET, DELETE).
    None,
}

impl BodyEncoding {
    /// The `Content-Type` of a body in this encoding (`None`: no body).
    pub fn content_type(self) -> Option<&'static str> {
        match self {
            BodyEncoding::Json => Some("application/json"),
            BodyEncoding::Form => Some("application/x-www-form-urlencoded"),
            BodyEncoding::None => None,
        }
    }
}

/// Where a query parameter's or header's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Part {
    /// The scalar at this JSON pointer of the translated message.
    Pointer(String),
    /// A fixed text.
    Const(String),
}

/// One request template, compiled.
///
/// The public fields say what the template is; [`RequestSpec::build`] runs the compiled form
/// made from them by [`RequestSpec::compile`] (the only way to make one), so changing a field
/// afterwards changes nothing that is sent.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: String,
    /// The path template, e.g. `/contacts/{/member_id}`: each `{<pointer>}` is filled with the
    /// scalar at that pointer, percent-encoded as one path segment.
    pub path: String,
    /// Query parameters, in order.
    pub query: Vec<(String, Part)>,
    /// Headers, in order (never secrets: authentication is added at delivery).
    pub headers: Vec<(String, Part)>,
    /// The part of the message that is the body (`None`: the whole message).
    pub body_at: Option<String>,
    /// The body's encoding.
    pub encoding: BodyEncoding,
    /// The third party's request schema, checked against the body before encoding.
    pub schema: Option<Arc<JsonSchema>>,
    compiled: Compiled,
}

/// A request ready for delivery: what layer 2 stores (as its record) and layer 1 sends.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuiltRequest {
    /// The method.
    pub method: String,
    /// Path and query, percent-encoded, starting with `/` (appended to the target's base URL).
    pub path_and_query: String,
    /// Headers from the template.
    pub headers: Vec<(String, String)>,
    /// The body's content type, if there is a body.
    pub content_type: Option<String>,
    /// The body, as sent (JSON or form text).
    pub body: String,
}

/// A problem with a request template, at the key of the integration file's `request` table
/// that holds it (`["path"]`, `["query", "notify"]`, `["headers", "X-Source"]`, `["body"]`), so
/// a loader can point at the file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestIssue {
    /// Key path inside the `request` table.
    pub at: Vec<String>,
    /// What is wrong.
    pub message: String,
}

/// The methods a template may use.
pub const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Headers a template may not set, each with the reason (the hub sets them, or they belong to
/// HTTP's framing), lower-case.
pub const RESERVED_HEADERS: [(&str, &str); 16] = [
    (
        "authorization",
        "the hub authenticates from the target's [target.auth]; a secret never sits in a template",
    ),
    ("proxy-authorization", "credentials never sit in a template"),
    ("content-type", "the hub sets it from the body's `encoding`"),
    ("content-length", "the hub sets it from the body it sends"),
    ("host", "it comes from the target's base_url"),
    (
        "idempotency-key",
        "the hub sends each delivery's idempotency key itself (the target's idempotency_header)",
    ),
    ("webhook-id", "the hub signs Standard Webhooks requests itself"),
    ("webhook-timestamp", "the hub signs Standard Webhooks requests itself"),
    ("webhook-signature", "the hub signs Standard Webhooks requests itself"),
    ("connection", "it is HTTP framing, the client's to set"),
    ("keep-alive", "it is HTTP framing, the client's to set"),
    ("transfer-encoding", "it is HTTP framing, the client's to set"),
    ("te", "it is HTTP framing, the client's to set"),
    ("trailer", "it is HTTP framing, the client's to set"),
    ("upgrade", "it is HTTP framing, the client's to set"),
    ("expect", "it is HTTP framing, the client's to set"),
];

/// The template split once into what `build` walks.
#[derive(Debug, Clone, Default)]
struct Compiled {
    /// Path segments (between `/`s), each of literal text and placeholders.
    segments: Vec<Vec<Piece>>,
    query: Vec<QueryPart>,
    headers: Vec<HeaderPart>,
    body_at: Option<Ptr>,
}

#[derive(Debug, Clone)]
enum Piece {
    /// Template text, already valid in a path.
    Text(String),
    /// A placeholder: the scalar there, percent-encoded.
    At(Ptr),
}

#[derive(Debug, Clone)]
enum QueryPart {
    /// `name=value`, encoded at compile time.
    Fixed(String),
    /// The encoded name and where the value is.
    At(String, Ptr),
}

#[derive(Debug, Clone)]
enum HeaderPart {
    Fixed(String, String),
    At(String, Ptr),
}

impl RequestSpec {
    /// Checks the template (method, placeholders are pointers, the body pointer) and compiles it.
    /// The error lists every problem found, `; `-separated (see [`RequestSpec::compile_all`]).
    pub fn compile(
        method: &str,
        path: &str,
        query: Vec<(String, Part)>,
        headers: Vec<(String, Part)>,
        body_at: Option<String>,
        encoding: BodyEncoding,
        schema: Option<Arc<JsonSchema>>,
    ) -> Result<Self, String> {
        Self::compile_all(method, path, query, headers, body_at, encoding, schema)
            .map_err(|issues| issues.into_iter().map(|i| i.message).collect::<Vec<_>>().join("; "))
    }

    /// [`RequestSpec::compile`], with every problem at its key, for a loader reporting lines.
    ///
    /// The method is taken in any case and stored upper-case. The path starts with `/`, holds
    /// only URL path characters besides its `{<pointer>}` placeholders (a `{` or `}` outside one
    /// is an error), and no `.` or `..` segment. Query and header values from the message are
    /// pointers; header names are HTTP tokens and none of [`RESERVED_HEADERS`], each at most
    /// once. `body_at` is a pointer, and a body needs an encoding other than `none`.
    pub fn compile_all(
        method: &str,
        path: &str,
        query: Vec<(String, Part)>,
        headers: Vec<(String, Part)>,
        body_at: Option<String>,
        encoding: BodyEncoding,
        schema: Option<Arc<JsonSchema>>,
    ) -> Result<Self, Vec<RequestIssue>> {
        let mut issues = Vec::new();
        let mut at = |keys: &[&str], message: String| {
            issues.push(RequestIssue { at: keys.iter().map(|k| (*k).to_owned()).collect(), message });
        };
        let upper = method.to_ascii_uppercase();
        if !METHODS.contains(&upper.as_str()) {
            at(&["method"], format!("method `{method}` is not one of {}", METHODS.join(", ")));
        }
        let segments = compile_path(path).unwrap_or_else(|e| {
            at(&["path"], e);
            Vec::new()
        });
        let mut c = Compiled { segments, ..Compiled::default() };
        for (name, part) in &query {
            match compile_query(name, part) {
                Ok(q) => c.query.push(q),
                Err(e) => at(&["query", name], e),
            }
        }
        for (i, (name, part)) in headers.iter().enumerate() {
            let lower = name.to_ascii_lowercase();
            if headers[..i].iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                at(&["headers", name], format!("header `{name}` is set twice"));
            }
            match compile_header(name, &lower, part) {
                Ok(h) => c.headers.push(h),
                Err(e) => at(&["headers", name], e),
            }
        }
        if let Some(p) = &body_at {
            match Ptr::below_root(p) {
                Some(ptr) => c.body_at = Some(ptr),
                None => at(
                    &["body"],
                    format!(
                        "`{p}` is not a JSON pointer like /properties (leave `body` out to send the whole message)"
                    ),
                ),
            }
            if encoding == BodyEncoding::None {
                at(&["body"], "`body` names the body, but encoding = \"none\" sends none".to_owned());
            }
        }
        if encoding == BodyEncoding::None && schema.is_some() {
            at(
                &["schema"],
                "a request schema checks the body, but encoding = \"none\" sends none".to_owned(),
            );
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Self {
            method: upper,
            path: path.to_owned(),
            query,
            headers,
            body_at,
            encoding,
            schema,
            compiled: c,
        })
    }

    /// The pointers of the path's placeholders, in order (`/contacts/{/id}` reads `/id`).
    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.compiled.segments.iter().flatten().filter_map(|p| match p {
            Piece::At(ptr) => Some(ptr.text.as_str()),
            Piece::Text(_) => None,
        })
    }

    /// Builds the request for one translated message.
    ///
    /// Refuses, naming the pointer: a path placeholder with no value (`required`), not a
    /// scalar (`type`), empty (`empty`) or making a `.`/`..` segment (`path_escape`); a query or
    /// header value that is not a scalar (`type`; a query value may be an array of scalars,
    /// sent as the parameter repeated); a header value with a control character
    /// (`header_value`); no body at `body_at` (`required`); a body breaking the request schema
    /// (the schema keyword; pointers are into the message); a form body that is not an object
    /// (`type`). A query parameter or header whose value is absent or null is left out.
    pub fn build(&self, message: &Value) -> Result<BuiltRequest, Rejection> {
        let c = &self.compiled;
        let mut pq = String::with_capacity(self.path.len() + 64);
        for seg in &c.segments {
            pq.push('/');
            let start = pq.len();
            for piece in seg {
                match piece {
                    Piece::Text(t) => pq.push_str(t),
                    Piece::At(p) => percent_encode_into(&mut pq, placeholder(p, message)?),
                }
            }
            // `.` is unreserved, so a value of `.` or `..` comes out as itself; two
            // placeholders side by side (`{/a}{/b}`) can make one too.
            if matches!(&pq[start..], "." | "..") {
                let p = seg.iter().find_map(|x| if let Piece::At(p) = x { Some(p) } else { None });
                let field = p.map_or_else(|| self.path.clone(), |p| p.text.clone());
                return Err(Rejection::field(
                    field,
                    "path_escape",
                    format!(
                        "the path segment would be `{}`: a dot segment climbs out of the path `{}` \
                         when the URL is resolved",
                        &pq[start..],
                        self.path
                    ),
                ));
            }
        }
        let mut sep = '?';
        for q in &c.query {
            match q {
                QueryPart::Fixed(pair) => {
                    next_param(&mut pq, &mut sep);
                    pq.push_str(pair);
                }
                QueryPart::At(name, p) => match p.get(message) {
                    None | Some(Value::Null) => {}
                    Some(Value::Array(items)) => {
                        for (i, item) in items.iter().enumerate() {
                            let text = scalar_text(item).ok_or_else(|| {
                                not_scalar(&child(&p.text, &i.to_string()), "query parameter", item)
                            })?;
                            next_param(&mut pq, &mut sep);
                            pq.push_str(name);
                            pq.push('=');
                            percent_encode_into(&mut pq, text);
                        }
                    }
                    Some(v) => {
                        let text = scalar_text(v).ok_or_else(|| not_scalar(&p.text, "query parameter", v))?;
                        next_param(&mut pq, &mut sep);
                        pq.push_str(name);
                        pq.push('=');
                        percent_encode_into(&mut pq, text);
                    }
                },
            }
        }
        let mut headers = Vec::with_capacity(c.headers.len());
        for h in &c.headers {
            match h {
                HeaderPart::Fixed(n, v) => headers.push((n.clone(), v.clone())),
                HeaderPart::At(n, p) => {
                    let Some(v) = p.get(message).filter(|v| !v.is_null()) else { continue };
                    let text = scalar_text(v).ok_or_else(|| not_scalar(&p.text, "header", v))?;
                    if let Some(why) = header_value_problem(text) {
                        return Err(Rejection::field(
                            &p.text,
                            "header_value",
                            format!(
                                "header `{n}` from `{}` {why}: refused, it could end the header and add others",
                                p.text
                            ),
                        ));
                    }
                    headers.push((n.clone(), text.to_owned()));
                }
            }
        }
        let body = match self.encoding {
            BodyEncoding::None => String::new(),
            BodyEncoding::Json => self.checked_body(message)?.1.to_json(),
            BodyEncoding::Form => {
                let (at, v) = self.checked_body(message)?;
                form_body(v, at)?
            }
        };
        Ok(BuiltRequest {
            method: self.method.clone(),
            path_and_query: pq,
            headers,
            content_type: self.encoding.content_type().map(str::to_owned),
            body,
        })
    }

    /// The body's place in the message and the body, checked against the request schema.
    fn checked_body<'m>(&'m self, message: &'m Value) -> Result<(&'m str, &'m Value), Rejection> {
        let (at, body) = match &self.compiled.body_at {
            None => ("", message),
            Some(p) => match p.get(message) {
                Some(v) if !v.is_null() => (p.text.as_str(), v),
                _ => {
                    return Err(Rejection::field(
                        &p.text,
                        "required",
                        format!("the request body is the message's `{}`, which it does not have", p.text),
                    ));
                }
            },
        };
        if let Some(s) = &self.schema {
            // Pointers name the place in the message (the body's place as prefix), as layer 2
            // names places in a payload everywhere else.
            s.check(body, at).map_err(|r| Rejection {
                message: format!("the request body breaks the target's request schema: {}", r.message),
                ..r
            })?;
        }
        Ok((at, body))
    }
}

/// Starts the next query parameter: `?` before the first, `&` before the others.
fn next_param(pq: &mut String, sep: &mut char) {
    pq.push(*sep);
    *sep = '&';
}

/// The text a path placeholder puts in the path (before encoding).
fn placeholder<'v>(p: &Ptr, message: &'v Value) -> Result<&'v str, Rejection> {
    let v = match p.get(message) {
        Some(v) if !v.is_null() => v,
        _ => {
            return Err(Rejection::field(
                &p.text,
                "required",
                format!("path placeholder `{{{}}}` needs a value, and the message has none there", p.text),
            ));
        }
    };
    let text = scalar_text(v).ok_or_else(|| not_scalar(&p.text, "path placeholder", v))?;
    if text.is_empty() {
        return Err(Rejection::field(
            &p.text,
            "empty",
            format!("path placeholder `{{{}}}` is empty: the path would lose a segment", p.text),
        ));
    }
    Ok(text)
}

fn not_scalar(at: &str, what: &str, v: &Value) -> Rejection {
    Rejection::field(
        at,
        "type",
        format!("the {what} at `{at}` takes a string, number or boolean, not {}", v.kind_name()),
    )
}

/// Why `v` cannot be a header value, if it cannot: a control character other than tab (CR and
/// LF end a header line; NUL and the rest are refused by HTTP itself, RFC 9110 section 5.5).
fn header_value_problem(v: &str) -> Option<String> {
    v.chars()
        .find(|c| c.is_control() && *c != '\t')
        .map(|c| format!("holds the control character U+{:04X}", u32::from(c)))
}
