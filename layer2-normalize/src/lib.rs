//! Layer 2 of the post office: raw payloads parsed and validated against the third party's API
//! signature, split into records, each stored with its lineage. Bad input is rejected with the
//! field (JSON pointer) and the rule that failed; the raw bytes stay in layer 1.

pub mod declared;
pub mod entity;
pub mod normalizer;
pub mod request;
pub mod schema;
pub mod stage;

pub use declared::{DeclaredKind, DeclaredNormalizer, DropRule};
pub use normalizer::{Normalizer, RawInput, Record, event_ref_at, parse_json, validate};
pub use schema::JsonSchema;
pub use stage::{NormalizeStage, Normalizers, normalize, record_row};
