//! The audit desk's view of pulled sources: each source's saved state (`pull_state`, one row
//! per source) with what its declaration says (URL, mode, schedule), its runs (`sync_runs`), and
//! the per-source figures of `/v1/stats` and `/metrics`.
//!
//! Stats and metrics read the `pull_state` rows only: one row per pulled source, its running
//! totals kept by the runs themselves, so a scrape costs the same however many runs there were.

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;
use serde::Serialize;
use uuid::Uuid;

use layer1_ingest::pull::store::{self, state};

use crate::error::{Error, Result};
use crate::hub::Hub;

/// A pulled source's figures: the last run, the saved cursor and the running totals (since the
/// source's first run; a reset keeps them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PullStats {
    /// The source.
    pub source: String,
    /// Whether a run holds the source now (its lease is held and has not expired).
    pub running: bool,
    /// The saved cursor (incremental modes): the next listing asks for what came after it.
    pub cursor: Option<String>,
    /// Runs started.
    pub runs: i64,
    /// Runs that failed or were aborted.
    pub runs_failed: i64,
    /// Pages fetched and committed.
    pub pages: i64,
    /// Records taken.
    pub records: i64,
    /// Records skipped (already taken, or not past the saved cursor).
    pub skipped: i64,
    /// Bytes of the pages committed.
    pub bytes: i64,
    /// The last run's id (`GET /v1/sources/{source}/runs/{run_id}`).
    pub last_run_id: Option<Uuid>,
    /// Its outcome: `running`, `succeeded`, `page_limit`, `failed`.
    pub last_outcome: Option<String>,
    /// Its error, if it failed.
    pub last_error: Option<String>,
    /// When it started.
    pub last_started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub last_finished_at: Option<DateTime<Utc>>,
    /// When a run last succeeded (or stopped at its page bound).
    pub last_success_at: Option<DateTime<Utc>>,
    /// When the scheduler means to run it next (none without a schedule).
    pub next_run_at: Option<DateTime<Utc>>,
}

impl PullStats {
    /// The figures of `row`, as of `now` (which decides whether its lease still holds).
    pub fn of(row: &state::Model, now: DateTime<Utc>) -> Self {
        PullStats {
            source: row.source.clone(),
            running: row.lease_owner.is_some() && row.lease_until.is_some_and(|u| u > now),
            cursor: row.cursor.clone(),
            runs: row.runs,
            runs_failed: row.runs_failed,
            pages: row.pages,
            records: row.records,
            skipped: row.skipped,
            bytes: row.bytes,
            last_run_id: row.last_run_id,
            last_outcome: row.last_outcome.clone(),
            last_error: row.last_error.clone(),
            last_started_at: row.last_started_at,
            last_finished_at: row.last_finished_at,
            last_success_at: row.last_success_at,
            next_run_at: row.next_run_at,
        }
    }

    /// A source that has no state yet (never run, never scheduled): every figure empty.
    fn empty(source: &str) -> Self {
        PullStats {
            source: source.to_owned(),
            running: false,
            cursor: None,
            runs: 0,
            runs_failed: 0,
            pages: 0,
            records: 0,
            skipped: 0,
            bytes: 0,
            last_run_id: None,
            last_outcome: None,
            last_error: None,
            last_started_at: None,
            last_finished_at: None,
            last_success_at: None,
            next_run_at: None,
        }
    }
}

/// Every pulled source's figures that has a `pull_state` row, by name: one row per source.
pub async fn pull_stats<C: ConnectionTrait>(db: &C) -> Result<Vec<PullStats>> {
    let now = Utc::now();
    Ok(store::load_all(db).await?.iter().map(|r| PullStats::of(r, now)).collect())
}

/// A pulled source as declared and where it is: `GET /v1/sources/{source}/state` and
/// `hub-worker state`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SourceState {
    /// The last run, the saved cursor and the totals.
    #[serde(flatten)]
    pub stats: PullStats,
    /// The listing's URL as declared (it never holds credentials).
    pub url: String,
    /// The sync mode: `full_refresh`, `incremental` or `incremental_dedup`.
    pub mode: String,
    /// The cron expression; none: the source runs only by hand (API, CLI).
    pub schedule: Option<String>,
    /// The schedule's time zone (IANA name); none without a schedule.
    pub timezone: Option<String>,
    /// The next page of a listing a run left unfinished (page bound, failure), as the runner
    /// saved it; the next run resumes there. None when the last listing ended.
    pub position: Option<serde_json::Value>,
    /// The highest cursor value taken so far in that unfinished listing (it becomes the saved
    /// cursor when the listing ends).
    pub listing_high: Option<String>,
    /// The run holding the source (`<worker>/<run id>`), if any; it may be a dead worker's
    /// whose lease has expired (`running` says whether it holds).
    pub lease_owner: Option<String>,
    /// When that lease ends unless renewed.
    pub lease_until: Option<DateTime<Utc>>,
    /// The state's last write; none before the source's first run.
    pub updated_at: Option<DateTime<Utc>>,
}

/// The state of the pulled source `source` of `hub`: [`Error::NotPulled`] when the hub does
/// not pull it. A source never run answers its declaration with empty state fields.
pub async fn source_state(hub: &Hub, source: &str) -> Result<SourceState> {
    let (schedule, settings) = hub
        .pulled_sources()
        .into_iter()
        .find(|(name, _, _)| *name == source)
        .map(|(_, schedule, settings)| (schedule.cloned(), settings.clone()))
        .ok_or_else(|| Error::NotPulled(source.to_owned()))?;
    let row = hub.pull_state(source).await?;
    let now = Utc::now();
    Ok(SourceState {
        stats: row.as_ref().map_or_else(|| PullStats::empty(source), |r| PullStats::of(r, now)),
        // Never holds credentials: `PullSpec::validate` refuses them.
        url: settings.spec.url.clone(),
        mode: settings.mode.as_str().to_owned(),
        timezone: schedule.as_ref().map(|s| s.zone().to_owned()),
        schedule: schedule.map(|s| s.as_str().to_owned()),
        position: row.as_ref().and_then(|r| r.position.as_deref()).map(|p| {
            // Written by the runner as JSON; text that does not parse is shown as text.
            serde_json::from_str(p).unwrap_or_else(|_| serde_json::Value::String(p.to_owned()))
        }),
        listing_high: row.as_ref().and_then(|r| r.listing_high.clone()),
        lease_owner: row.as_ref().and_then(|r| r.lease_owner.clone()),
        lease_until: row.as_ref().and_then(|r| r.lease_until),
        updated_at: row.as_ref().map(|r| r.updated_at),
    })
}

/// One run of a pulled source: the `sync_runs` row as it is.
pub use layer1_ingest::pull::store::runs::Model as SyncRunView;

/// One page of a source's runs, newest first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SyncRuns {
    /// The runs.
    pub items: Vec<SyncRunView>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<Uuid>,
}

/// Runs per page when the caller does not say.
pub const DEFAULT_RUNS_PAGE: u64 = 50;
/// The largest page of runs.
pub const MAX_RUNS_PAGE: u64 = 500;

/// The runs of `source` older than `before` (none: the newest), `limit` of them (1 to
/// [`MAX_RUNS_PAGE`], default [`DEFAULT_RUNS_PAGE`]); [`Error::NotPulled`] for a source the hub
/// does not pull.
pub async fn sync_runs(
    hub: &Hub,
    source: &str,
    before: Option<Uuid>,
    limit: Option<u64>,
) -> Result<SyncRuns> {
    let limit = limit.unwrap_or(DEFAULT_RUNS_PAGE).clamp(1, MAX_RUNS_PAGE);
    let mut rows = hub.sync_runs(source, before, limit + 1).await?;
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let next_before = if more { rows.last().map(|r| r.id) } else { None };
    Ok(SyncRuns { items: rows, next_before })
}

/// The run `id` of `source`: [`Error::NotPulled`] for a source the hub does not pull,
/// [`Error::NotFound`] for an id that is no run of that source.
pub async fn sync_run(hub: &Hub, source: &str, id: Uuid) -> Result<SyncRunView> {
    // The source first: a source not pulled is 404 whatever the id.
    hub.pull_state(source).await?;
    match hub.sync_run(id).await {
        Ok(run) if run.source == source => Ok(run),
        Ok(_) => Err(Error::NotFound(id)),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_means_a_lease_not_yet_expired() {
        let now = Utc::now();
        let mut row = state::Model {
            source: "shop".into(),
            cursor: Some("2026-11-01T00:00:00Z".into()),
            position: None,
            listing_high: None,
            lease_owner: Some("w:1/run".into()),
            lease_until: Some(now + chrono::Duration::seconds(30)),
            runs: 3,
            runs_failed: 1,
            pages: 7,
            records: 20,
            skipped: 2,
            bytes: 900,
            last_run_id: None,
            last_outcome: Some("running".into()),
            last_error: None,
            last_started_at: Some(now),
            last_finished_at: None,
            last_success_at: None,
            next_run_at: None,
            updated_at: now,
        };
        let s = PullStats::of(&row, now);
        assert!(s.running);
        assert_eq!((s.runs, s.runs_failed, s.pages, s.records, s.skipped, s.bytes), (3, 1, 7, 20, 2, 900));
        row.lease_until = Some(now - chrono::Duration::seconds(1));
        assert!(!PullStats::of(&row, now).running, "an expired lease holds nothing");
        row.lease_owner = None;
        row.lease_until = None;
        assert!(!PullStats::of(&row, now).running);
    }
}
