//! Downstream layer 2: the third party's HTTP request built from a translated message
//! (method, URL path from a template, query, headers, body), checked against the third party's
//! request schema before anything is sent. A message that cannot make a valid request is
//! rejected with the pointer and the rule, never sent.

use std::sync::Arc;

use layer1_ingest::Rejection;
use layer1_ingest::json::Value;

use crate::schema::JsonSchema;

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

impl RequestSpec {
    /// Checks the template (method, placeholders are pointers, the body pointer) and compiles it.
    pub fn compile(
        method: &str,
        path: &str,
        query: Vec<(String, Part)>,
        headers: Vec<(String, Part)>,
        body_at: Option<String>,
        encoding: BodyEncoding,
        schema: Option<Arc<JsonSchema>>,
    ) -> Result<Self, String> {
        Ok(Self {
            method: method.to_owned(),
            path: path.to_owned(),
            query,
            headers,
            body_at,
            encoding,
            schema,
        })
    }

    /// Builds the request for one translated message.
    pub fn build(&self, _message: &Value) -> Result<BuiltRequest, Rejection> {
        Err(Rejection::whole("not_implemented", "request building is not implemented yet"))
    }
}
