//! The integration point of layer 3: one [`Translator`] per (source, record kind).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use layer1_ingest::json::Value;

use layer1_ingest::Failure;

/// A layer 2 record as a translator sees it.
#[derive(Debug, Clone, Copy)]
pub struct RecordInput<'a> {
    /// The layer 2 id.
    pub id: layer1_ingest::RecordId,
    /// The layer 1 id the record came from.
    pub origin_id: layer1_ingest::RawId,
    /// The integration's name.
    pub source: &'a str,
    /// The record's id at the third party.
    pub source_ref: Option<&'a str>,
    /// The record kind.
    pub kind: &'a str,
    /// The schema version it was validated against.
    pub schema_version: Option<&'a str>,
    /// The record. Numbers keep their text as written (see [`layer1_ingest::json::Value`]).
    pub data: &'a Value,
}

/// A message in the core app's own terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoreMessage {
    /// Core message type (`payment.recorded`).
    pub message_type: String,
    /// Its version.
    pub type_version: String,
    /// The body sent to the core app.
    pub body: Value,
}

impl CoreMessage {
    /// A core message of `message_type` at `type_version` with `body`.
    pub fn new(
        message_type: impl Into<String>,
        type_version: impl Into<String>,
        body: impl Into<Value>,
    ) -> Self {
        Self { message_type: message_type.into(), type_version: type_version.into(), body: body.into() }
    }
}

/// What a translation kept, left out on purpose, and filled in: the evidence that nothing was
/// lost silently. Field names are JSON pointers into the record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fidelity {
    /// Record fields carried into the core message.
    pub mapped: Vec<String>,
    /// Record fields deliberately not carried, each for a stated reason in the mapping.
    pub ignored: Vec<String>,
    /// Core fields filled with a default because the record had no value.
    pub defaulted: Vec<String>,
    /// Record fields no rule maps, carried in the core message's extras (`keep-in-extras`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extras: Vec<String>,
    /// Losses the mapping asked for by name: `<core field>: <loss>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lossy: Vec<String>,
}

/// A translator's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Translation {
    /// The core message.
    pub message: CoreMessage,
    /// The mapping's name.
    pub mapping_name: String,
    /// The mapping's version: a changed mapping gets a new one.
    pub mapping_version: String,
    /// The fidelity report.
    pub fidelity: Fidelity,
}

/// Translates one kind of record from one source into a core message.
#[async_trait]
pub trait Translator: Send + Sync + 'static {
    /// The source it serves.
    fn source(&self) -> &str;
    /// The record kind it serves.
    fn record_kind(&self) -> &str;
    /// The core message type every translation emits, when there is one (a mapping's
    /// `message_type`); `None`, the default, when the translator does not say (it may pick the
    /// type per record). A hub refuses to build when its routes certainly carry no message of
    /// the declared type from this source.
    fn message_type(&self) -> Option<&str> {
        None
    }
    /// Translates faithfully, or says precisely why not.
    async fn translate(&self, record: &RecordInput<'_>) -> Result<Translation, Failure>;
}
