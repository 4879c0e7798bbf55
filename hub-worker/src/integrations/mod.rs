//! Two real integrations written in Rust against the layers' traits: a CRM's batch contact
//! webhook and a payment provider's events. They also serve the demo, and show how to write one.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use validator::ValidationError;

use layer1_ingest::{Failure, Rejection};
use layer4_dispatch::{Route, RouteTable};

use crate::hub::HubBuilder;

pub mod crm;
pub mod payments;

/// The built-in integrations' names, as `integrations = [...]` in the config names them.
pub const BUILT_IN: &[&str] = &[crm::SOURCE, payments::SOURCE];

/// Registers the built-in integration `name` on `builder`.
pub fn register(builder: HubBuilder, name: &str) -> Option<HubBuilder> {
    match name {
        crm::SOURCE => Some(
            builder
                .normalizer(Arc::new(crm::ContactsNormalizer))
                .translator(Arc::new(crm::ContactTranslator)),
        ),
        payments::SOURCE => Some(
            builder
                .normalizer(Arc::new(payments::PaymentNormalizer))
                .translator(Arc::new(payments::PaymentTranslator)),
        ),
        _ => None,
    }
}

/// The routes the demo uses: members ordered per member, payments per customer.
pub fn demo_routes() -> RouteTable {
    RouteTable::new(vec![
        Route {
            message_type: "member.upsert".into(),
            destination: "core.members".into(),
            ordering_key: Some("/member_id".into()),
            ..Default::default()
        },
        Route {
            message_type: "payment.*".into(),
            destination: "core.payments".into(),
            ordering_key: Some("/customer_ref".into()),
            ..Default::default()
        },
    ])
}

fn rule(code: &'static str, message: String) -> ValidationError {
    let mut e = ValidationError::new(code);
    e.message = Some(message.into());
    e
}

/// A decimal written with digits, an optional sign and an optional `.` fraction:
/// `-12345678901234567.89`. No exponent, no grouping, no comma: the text is carried as is.
pub fn decimal(s: &str) -> Result<(), ValidationError> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let ok = !int.is_empty()
        && int.len() <= 40
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.len() <= 18 && f.bytes().all(|b| b.is_ascii_digit()));
    if ok { Ok(()) } else { Err(rule("decimal", format!("`{s}` is not a decimal like 1234.56"))) }
}

/// An RFC 3339 timestamp with an offset.
pub fn rfc3339(s: &str) -> Result<(), ValidationError> {
    DateTime::parse_from_rfc3339(s)
        .map(|_| ())
        .map_err(|e| rule("rfc3339", format!("`{s}` is not an RFC 3339 timestamp: {e}")))
}

/// A three-letter ISO 4217 currency code, either case.
pub fn currency(s: &str) -> Result<(), ValidationError> {
    if s.len() == 3 && s.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(())
    } else {
        Err(rule("currency", format!("`{s}` is not a three-letter ISO 4217 code")))
    }
}

/// An RFC 3339 timestamp moved to UTC, keeping every fractional digit.
pub fn to_utc(pointer: &str, s: &str) -> Result<String, Failure> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc).to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .map_err(|e| Failure::Rejected(Rejection::field(pointer, "rfc3339", e.to_string())))
}

/// Every leaf of `v` as a JSON pointer: what a fidelity report lists as mapped when a
/// translator carries the whole typed record.
pub fn leaf_pointers(v: &layer1_ingest::json::Value) -> Vec<String> {
    let mut out = Vec::new();
    layer1_ingest::json::leaves(v, "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_digits_only() {
        for ok in ["0", "19.99", "-3.5", "12345678901234567.89"] {
            assert!(decimal(ok).is_ok(), "{ok}");
        }
        for bad in ["12,50", "1e5", "", ".5", "5.", "1 000", "NaN", "+1"] {
            assert!(decimal(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn utc_conversion_keeps_fractions() {
        assert_eq!(
            to_utc("/t", "2026-11-20T14:05:41.873+01:00").ok().as_deref(),
            Some("2026-11-20T13:05:41.873Z")
        );
        assert!(to_utc("/t", "yesterday").is_err());
    }
}
