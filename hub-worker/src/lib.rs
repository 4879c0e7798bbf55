//! The post office, composed: the embedding API ([`Hub`]), the worker's configuration, the
//! built-in integrations, and the demo. The `hub-worker` binary is a thin CLI over this crate.
//!
//! ```no_run
//! # async fn f() -> hub_worker::Result<()> {
//! use std::sync::Arc;
//! use hub_worker::{Hub, IngestMeta, integrations};
//! let b = Hub::builder("sqlite::memory:").router(Arc::new(integrations::demo_routes()));
//! let hub = integrations::register(b, "payments").expect("built in").build().await?;
//! hub.start();
//! let got = hub.ingest("payments", br#"{"id":"evt_1"}"#, IngestMeta::default()).await?;
//! println!("{}", hub.lineage(got.id).await?.entries.len());
//! hub.shutdown().await;
//! # Ok(()) }
//! ```

pub mod audit;
#[cfg(feature = "cli")]
pub mod bench;
#[cfg(feature = "cli")]
pub mod bench_downstream;
#[cfg(feature = "cli")]
pub mod bench_queries;
pub mod config;
#[cfg(feature = "cli")]
pub mod demo;
pub mod downstream;
pub mod error;
pub mod files;
mod fused;
pub mod http;
mod hub;
pub mod integrations;
pub mod lineage;
pub mod outbound;
pub mod prelude;
pub mod pull;
pub mod redact;
pub mod report;
pub mod startup;
pub mod summary;

pub use error::{Error, Result};
pub use fused::FusedStage;
pub use hub::{Hub, HubBuilder, HubSettings, IngestMeta, StatusCount, counts, counts_by_scan};
pub use layer1_ingest::{IngestOutcome, Ingested};
pub use lineage::{Lineage, lineage};
