//! Pulled sources in the hub: the `[pull]` section of integration files ([`PullConfig`]), the
//! cron schedule ([`Schedule`]) and the scheduler task that runs each source on it, one worker
//! at a time. The runs themselves (requests, pages, state, leases) are layer 1's
//! ([`layer1_ingest::pull::run`]).

mod config;
mod schedule;

pub use config::{PaginationConfig, PullConfig};
pub use layer1_ingest::pull::SyncMode;
pub use layer1_ingest::pull::run::{PullSettings, Puller, RunOutcome, RunReport, Trigger};
pub use schedule::Schedule;
