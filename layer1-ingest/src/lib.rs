//! Layer 1 of the post office: the third party's bytes exactly as they arrived, and the shared
//! vocabulary every layer above uses (statuses and their transitions, directions, layers, the
//! claim and transition queries, the stage runner, the base error).
//!
//! See `docs/ARCHITECTURE.md` for the whole map.

pub mod advance;
pub mod attempt;
pub mod db;
pub mod deliver;
pub mod entity;
pub mod error;
pub mod ids;
pub mod ingest;
pub mod json;
pub mod lineage;
pub mod metrics;
pub mod outcome;
pub mod pull;
pub mod stage;
pub mod status;
pub mod table;

pub use advance::{Advance, AdvanceStage};
pub use error::{Error, Result};
pub use ids::{CoreMessageId, DispatchId, RawId, RecordId};
pub use ingest::{IngestOutcome, Ingested, NewRaw, ingest, ingest_many};
pub use lineage::{LineageEntry, LineageTable};
pub use outcome::{Failure, Rejection, guarded, reason_summary};
pub use stage::{Stage, StageSettings, Wakeup, run_stage};
pub use status::{Direction, Layer, Status};
pub use table::{LayerTable, Transition};
