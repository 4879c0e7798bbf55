//! The core app's own types, written the way serde users write them. Two serde features are
//! known to break when serde_json's `arbitrary_precision` is on in the build (cargo unifies a
//! dependency's features across the whole build, so a library that enables it enables it for
//! its host): an untagged enum and a flattened struct both stop reading numbers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An amount, sent by some partners as a number and by others as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Amount {
    /// `12.5`.
    Number(f64),
    /// `"12.50"`.
    Text(String),
}

/// The money fields an order shares with other documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Money {
    /// The total.
    pub total: f64,
    /// Its currency.
    pub currency: String,
}

/// An order as the core app reads it: its money flattened in, unknown fields kept aside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// The order's id.
    pub id: String,
    /// The amount, number or text.
    pub amount: Amount,
    /// Flattened money fields.
    #[serde(flatten)]
    pub money: Money,
}

/// Any other fields, flattened into a map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Loose {
    /// The id.
    pub id: String,
    /// Everything else.
    #[serde(flatten)]
    pub rest: BTreeMap<String, serde_json::Value>,
}
