//! A CRM's contact webhook: one event carries a batch of contacts with nested properties, ISO
//! timestamps with offsets and an enum lifecycle status. Each contact becomes a core
//! `member.upsert` (version 1).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use validator::Validate;

use layer1_ingest::{Failure, Rejection};
use layer2_normalize::{Normalizer, RawInput, Record, parse_json, validate};
use layer3_translate::{CoreMessage, Fidelity, RecordInput, Translation, Translator};

use super::{decimal, leaf_pointers, rfc3339, to_utc};

/// The integration's source name.
pub const SOURCE: &str = "crm-contacts";
/// The record kind its normalizer emits.
pub const KIND: &str = "contact";
const SCHEMA_VERSION: &str = "2026-01";

#[derive(Debug, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
struct Webhook {
    #[validate(length(min = 1, max = 128))]
    event_id: String,
    event_type: EventType,
    #[validate(custom(function = "rfc3339"))]
    occurred_at: String,
    portal_id: u64,
    #[validate(length(min = 1, max = 1000), nested)]
    contacts: Vec<Contact>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum EventType {
    #[serde(rename = "contacts.batch_updated")]
    BatchUpdated,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Lifecycle {
    Lead,
    Prospect,
    Customer,
    Churned,
}

#[derive(Debug, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
struct Contact {
    #[validate(length(min = 1, max = 64))]
    id: String,
    #[validate(email)]
    email: String,
    status: Lifecycle,
    #[validate(custom(function = "rfc3339"))]
    created_at: String,
    #[validate(custom(function = "rfc3339"))]
    updated_at: String,
    #[validate(nested)]
    properties: Properties,
}

#[derive(Debug, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
struct Properties {
    #[validate(length(min = 1, max = 200))]
    first_name: String,
    #[validate(length(min = 1, max = 200))]
    last_name: String,
    #[validate(length(min = 3, max = 40))]
    phone: Option<String>,
    #[validate(nested)]
    company: Option<Company>,
    #[validate(nested)]
    address: Option<Address>,
    #[validate(length(max = 50))]
    tags: Vec<String>,
    #[validate(custom(function = "decimal"))]
    lifetime_value: String,
}

#[derive(Debug, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
struct Company {
    #[validate(length(min = 1, max = 200))]
    name: String,
    #[validate(length(min = 1, max = 253))]
    domain: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
struct Address {
    street: String,
    city: String,
    postal_code: String,
    #[validate(length(equal = 2))]
    country: String,
}

/// One contact with the event it came in: the layer 2 record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactRecord {
    event_id: String,
    event_type: EventType,
    occurred_at: String,
    portal_id: u64,
    contact: Contact,
}

/// Checks the webhook and splits it into one record per contact.
pub struct ContactsNormalizer;

#[async_trait]
impl Normalizer for ContactsNormalizer {
    fn source(&self) -> &str {
        SOURCE
    }

    fn event_ref(&self, body: &[u8]) -> Option<String> {
        layer2_normalize::event_ref_at(body, "/event_id")
    }

    async fn normalize(&self, raw: &RawInput<'_>) -> Result<Vec<Record>, Failure> {
        let hook: Webhook = parse_json(raw.body)?;
        validate(&hook)?;
        hook.contacts
            .into_iter()
            .map(|contact| {
                let id = contact.id.clone();
                let rec = ContactRecord {
                    event_id: hook.event_id.clone(),
                    event_type: hook.event_type,
                    occurred_at: hook.occurred_at.clone(),
                    portal_id: hook.portal_id,
                    contact,
                };
                Record::from_typed(KIND, Some(id), SCHEMA_VERSION, &rec)
            })
            .collect()
    }
}

/// Contact record -> core `member.upsert` v1.
pub struct ContactTranslator;

#[async_trait]
impl Translator for ContactTranslator {
    fn source(&self) -> &str {
        SOURCE
    }

    fn record_kind(&self) -> &str {
        KIND
    }

    async fn translate(&self, record: &RecordInput<'_>) -> Result<Translation, Failure> {
        let r: ContactRecord = record
            .data
            .to_typed()
            .map_err(|e| Failure::Rejected(Rejection::whole("type", format!("not a contact record: {e}"))))?;
        let c = &r.contact;
        let p = &c.properties;
        let body = json!({
            "member_id": format!("{SOURCE}:{}", c.id),
            "crm_id": c.id,
            "email": c.email,
            "lifecycle": c.status,
            "name": { "given": p.first_name, "family": p.last_name },
            "phone": p.phone,
            "company": p.company,
            "address": p.address,
            "tags": p.tags,
            "lifetime_value": p.lifetime_value,
            "created_at": to_utc("/contact/created_at", &c.created_at)?,
            "updated_at": to_utc("/contact/updated_at", &c.updated_at)?,
            "source_event": {
                "id": r.event_id,
                "type": r.event_type,
                "occurred_at": to_utc("/occurred_at", &r.occurred_at)?,
                "portal_id": r.portal_id,
            },
        });
        Ok(Translation {
            message: CoreMessage {
                message_type: "member.upsert".into(),
                type_version: "1".into(),
                body: body.into(),
            },
            mapping_name: "crm-contact-to-member".into(),
            mapping_version: "1".into(),
            fidelity: Fidelity { mapped: leaf_pointers(record.data), ..Default::default() },
        })
    }
}
