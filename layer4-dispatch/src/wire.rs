//! The wire contract with the core app: header names and the receipt format. `docs/WIRE.md`
//! describes exactly this.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::transport::Headers;

/// `hub-message-id`: the layer 4 id. The receiver drops duplicates by it.
pub const MESSAGE_ID: &str = "hub-message-id";
/// `hub-origin-id`: the layer 1 id (the raw bytes the message came from).
pub const ORIGIN_ID: &str = "hub-origin-id";
/// `hub-source`: the integration's name.
pub const SOURCE: &str = "hub-source";
/// `hub-source-ref`: the third party's id of the record (empty when it has none).
pub const SOURCE_REF: &str = "hub-source-ref";
/// `hub-type`: the core message type.
pub const TYPE: &str = "hub-type";
/// `hub-type-version`: its version.
pub const TYPE_VERSION: &str = "hub-type-version";
/// `hub-receipt-to`: the queue the receipt goes to.
pub const RECEIPT_TO: &str = "hub-receipt-to";
/// `traceparent`: W3C trace context; the trace id is the origin id, so every message of one
/// payload shares a trace.
pub const TRACEPARENT: &str = "traceparent";

/// A receipt's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReceiptStatus {
    /// The core app processed the message.
    Acknowledged,
    /// The core app refused it for good (the reason says why).
    Rejected,
}

/// What the core app sends back on `hub-receipt-to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The `hub-message-id` it answers.
    pub message_id: Uuid,
    /// The verdict.
    pub status: ReceiptStatus,
    /// Why, for a rejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the core app decided (informational; now when absent).
    #[serde(default = "Utc::now")]
    pub at: DateTime<Utc>,
}

/// The W3C `traceparent` for a message: version 00, trace id = origin id, span id = the last
/// 8 bytes of the message id, sampled.
pub fn traceparent(origin_id: Uuid, message_id: Uuid) -> String {
    let span = &message_id.as_bytes()[8..];
    format!("00-{}-{}-01", origin_id.simple(), hex_lower(span))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hub headers of a delivered message, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubHeaders {
    /// `hub-message-id`: the layer 4 row, which the receipt names.
    pub message_id: layer1_ingest::DispatchId,
    /// `hub-origin-id`: the layer 1 row the message came from.
    pub origin_id: layer1_ingest::RawId,
    /// `hub-source`
    pub source: String,
    /// `hub-source-ref` (`None` when empty)
    pub source_ref: Option<String>,
    /// `hub-type`
    pub message_type: String,
    /// `hub-type-version`
    pub type_version: String,
    /// `hub-receipt-to`
    pub receipt_to: String,
    /// `traceparent`
    pub traceparent: Option<String>,
}

impl HubHeaders {
    /// Reads the contract's headers, naming the first one missing or malformed.
    pub fn parse(h: &Headers) -> Result<Self, String> {
        let get = |k: &str| {
            h.get(k).filter(|v| !v.is_empty()).cloned().ok_or_else(|| format!("header `{k}` missing"))
        };
        let uuid = |k: &str| -> Result<Uuid, String> {
            get(k)?.parse().map_err(|e| format!("header `{k}` is not a UUID: {e}"))
        };
        Ok(HubHeaders {
            message_id: uuid(MESSAGE_ID)?.into(),
            origin_id: uuid(ORIGIN_ID)?.into(),
            source: get(SOURCE)?,
            source_ref: h.get(SOURCE_REF).filter(|v| !v.is_empty()).cloned(),
            message_type: get(TYPE)?,
            type_version: get(TYPE_VERSION)?,
            receipt_to: get(RECEIPT_TO)?,
            traceparent: h.get(TRACEPARENT).cloned(),
        })
    }

    /// The headers as sent.
    pub fn to_headers(&self) -> Headers {
        let mut h = Headers::new();
        h.insert(MESSAGE_ID.into(), self.message_id.to_string());
        h.insert(ORIGIN_ID.into(), self.origin_id.to_string());
        h.insert(SOURCE.into(), self.source.clone());
        h.insert(SOURCE_REF.into(), self.source_ref.clone().unwrap_or_default());
        h.insert(TYPE.into(), self.message_type.clone());
        h.insert(TYPE_VERSION.into(), self.type_version.clone());
        h.insert(RECEIPT_TO.into(), self.receipt_to.clone());
        if let Some(tp) = &self.traceparent {
            h.insert(TRACEPARENT.into(), tp.clone());
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_has_the_w3c_shape() {
        let tp = traceparent(Uuid::now_v7(), Uuid::now_v7());
        let parts: Vec<_> = tp.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!((parts[0], parts[1].len(), parts[2].len(), parts[3]), ("00", 32, 16, "01"));
    }

    #[test]
    fn receipt_json_is_the_documented_one() {
        let r: Receipt = serde_json::from_str(
            r#"{"message_id":"0190f3a0-0000-7000-8000-000000000001","status":"rejected","reason":"no such member","at":"2026-11-21T10:00:00Z"}"#,
        )
        .expect("parses");
        assert_eq!(r.status, ReceiptStatus::Rejected);
        assert_eq!(r.reason.as_deref(), Some("no such member"));
        assert!(serde_json::from_str::<Receipt>(r#"{"message_id":"x","status":"ok"}"#).is_err());
    }

    #[test]
    fn headers_round_trip_and_name_what_is_missing() {
        let h = HubHeaders {
            message_id: Uuid::now_v7().into(),
            origin_id: Uuid::now_v7().into(),
            source: "crm".into(),
            source_ref: None,
            message_type: "member.upsert".into(),
            type_version: "1".into(),
            receipt_to: "hub.receipts".into(),
            traceparent: None,
        };
        let mut map = h.to_headers();
        assert_eq!(HubHeaders::parse(&map), Ok(h));
        map.remove(TYPE);
        assert_eq!(HubHeaders::parse(&map), Err("header `hub-type` missing".to_owned()));
    }
}
