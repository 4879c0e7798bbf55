//! A payment provider's events (`payment.succeeded`, `payment.refunded`): a decimal amount
//! written as a string and a currency. Each becomes a core `payment.recorded` (version 1) with
//! the amount's every digit.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use validator::Validate;

use layer1_ingest::{Failure, Rejection};
use layer2_normalize::{Normalizer, RawInput, Record, parse_json, validate};
use layer3_translate::{CoreMessage, Fidelity, RecordInput, Translation, Translator};

use super::{currency, decimal, leaf_pointers, rfc3339, to_utc};

/// The integration's source name.
pub const SOURCE: &str = "payments";
/// The record kind its normalizer emits.
pub const KIND: &str = "payment_event";
const SCHEMA_VERSION: &str = "2026-06";

#[derive(Debug, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
struct Event {
    #[validate(length(min = 1, max = 255))]
    id: String,
    object: ObjectKind,
    #[serde(rename = "type")]
    kind: EventType,
    #[validate(custom(function = "rfc3339"))]
    created: String,
    livemode: bool,
    #[validate(nested)]
    data: Data,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ObjectKind {
    Event,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum EventType {
    #[serde(rename = "payment.succeeded")]
    Succeeded,
    #[serde(rename = "payment.refunded")]
    Refunded,
}

#[derive(Debug, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
struct Data {
    #[validate(nested)]
    payment: Payment,
}

#[derive(Debug, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
struct Payment {
    #[validate(length(min = 1, max = 255))]
    id: String,
    #[validate(custom(function = "decimal"))]
    amount: String,
    #[validate(custom(function = "currency"))]
    currency: String,
    #[validate(length(min = 1, max = 255))]
    customer: String,
    #[validate(length(max = 1000))]
    description: Option<String>,
    #[validate(custom(function = "rfc3339"))]
    captured_at: String,
    #[validate(length(max = 50))]
    metadata: BTreeMap<String, String>,
}

/// Checks one event; the event is the record.
pub struct PaymentNormalizer;

#[async_trait]
impl Normalizer for PaymentNormalizer {
    fn source(&self) -> &str {
        SOURCE
    }

    fn event_ref(&self, body: &[u8]) -> Option<String> {
        layer2_normalize::event_ref_at(body, "/id")
    }

    async fn normalize(&self, raw: &RawInput<'_>) -> Result<Vec<Record>, Failure> {
        let event: Event = parse_json(raw.body)?;
        validate(&event)?;
        Ok(vec![Record::from_typed(KIND, Some(event.id.clone()), SCHEMA_VERSION, &event)?])
    }
}

/// Payment event -> core `payment.recorded` v1.
pub struct PaymentTranslator;

#[async_trait]
impl Translator for PaymentTranslator {
    fn source(&self) -> &str {
        SOURCE
    }

    fn record_kind(&self) -> &str {
        KIND
    }

    async fn translate(&self, record: &RecordInput<'_>) -> Result<Translation, Failure> {
        let e: Event = record.data.to_typed().map_err(|err| {
            Failure::Rejected(Rejection::whole("type", format!("not a payment event: {err}")))
        })?;
        let p = &e.data.payment;
        let body = json!({
            "payment_id": p.id,
            "provider_event_id": e.id,
            "kind": match e.kind { EventType::Succeeded => "charge", EventType::Refunded => "refund" },
            // The amount stays the provider's own text: every digit, no float in between.
            "amount": { "value": p.amount, "currency": p.currency.to_ascii_uppercase() },
            "customer_ref": p.customer,
            "description": p.description,
            "captured_at": to_utc("/data/payment/captured_at", &p.captured_at)?,
            "recorded_at": to_utc("/created", &e.created)?,
            "livemode": e.livemode,
            "metadata": p.metadata,
        });
        // `/object` is always "event": checked in layer 2, carried by the type itself.
        let mut mapped = leaf_pointers(record.data);
        mapped.retain(|m| m != "/object");
        Ok(Translation {
            message: CoreMessage {
                message_type: "payment.recorded".into(),
                type_version: "1".into(),
                body: body.into(),
            },
            mapping_name: "payment-event-to-payment-recorded".into(),
            mapping_version: "1".into(),
            fidelity: Fidelity { mapped, ignored: vec!["/object".into()], ..Default::default() },
        })
    }
}
