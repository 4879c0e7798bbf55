//! `delivery_attempts`: one row per HTTP attempt of a downstream delivery (a `layer1_raw` row):
//! the request as it went on the wire (secrets redacted) and the third party's answer, kept as
//! bytes up to the target's bound, or the transport error. The delivery's own row keeps the body
//! sent and the status; these rows say what happened each time, for the auditor.

use sea_orm::entity::prelude::*;

/// One attempt.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "delivery_attempts")]
pub struct Model {
    /// UUIDv7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The delivery (`layer1_raw` row).
    pub raw_id: Uuid,
    /// 1 for the first attempt.
    pub attempt: i32,
    /// The target's name.
    pub target: String,
    /// HTTP method.
    pub method: String,
    /// The URL requested.
    pub url: String,
    /// The headers sent, as a JSON array of `[name, value]`, authentication values redacted.
    pub request_headers: String,
    /// When the attempt started.
    pub started_at: DateTimeUtc,
    /// How long it took, milliseconds.
    pub duration_ms: i32,
    /// The answer's status, if there was one.
    pub http_status: Option<i32>,
    /// The answer's kept headers, as a JSON array of `[name, value]`.
    pub response_headers: Option<String>,
    /// The answer's body, up to the target's `max_response_bytes`.
    #[serde(serialize_with = "crate::table::bytea_text_opt")]
    pub response_body: Option<Vec<u8>>,
    /// Whether the body was longer than kept.
    pub response_truncated: bool,
    /// `delivered`, `rejected` or `retry`.
    pub verdict: String,
    /// The transport error (timeout, reset), if any.
    pub error: Option<String>,
}

/// No relations: the delivery is found by `raw_id`.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
