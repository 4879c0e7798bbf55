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

use chrono::Utc;
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

/// Runs `puller` on `schedule` until `stop`: sleeps to the next fire time, runs if no other
/// worker holds the source (several workers share one schedule: the first to take the lease
/// runs, the others skip that turn), and goes on. A fire time missed while a run was still
/// going is skipped, not queued.
pub(crate) async fn scheduled(
    puller: Puller,
    schedule: Schedule,
    db: DatabaseConnection,
    stop: CancellationToken,
) {
    let source = puller.source().to_owned();
    loop {
        let Some(next) = schedule.next_after(Utc::now()) else {
            tracing::warn!(%source, schedule = schedule.as_str(), "the schedule fires no more");
            return;
        };
        if let Err(e) = layer1_ingest::pull::store::note_next_run(&db, &source, next).await {
            tracing::debug!(%source, error = %e, "could not note the next run time");
        }
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        match puller.start(&db, Trigger::Schedule).await {
            Ok(layer1_ingest::pull::run::Started::Run(run)) => {
                if let Err(e) = run.finish(&stop).await {
                    tracing::error!(%source, error = %e, "scheduled sync run failed on the database");
                }
            }
            Ok(layer1_ingest::pull::run::Started::Busy { holder, .. }) => {
                tracing::debug!(%source, %holder, "scheduled run skipped: another run holds the source");
            }
            Err(e) => tracing::warn!(%source, error = %e, "scheduled sync run could not start"),
        }
    }
}
