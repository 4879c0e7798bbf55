//! Running a pulled source: one run fetches pages with the source's authentication, rate limit
//! and retries (the [`Deliverer`] that downstream delivery uses), stores each page in layer 1 in
//! one transaction with the position after it, and keeps the run on record in `sync_runs`.
//!
//! What never loses or repeats a record:
//! - a page's layer 1 row, the keys of its records (`pull_taken`), the position after it and
//!   the listing's high-water mark are committed together; a run killed at any point resumes
//!   from the last committed position, so a page is either stored with its position or fetched
//!   again;
//! - a record whose key is already taken is not stored again (listed in the page's
//!   `hub-pull-skip` header, which layer 2 honours);
//! - the saved cursor moves only when a listing ends, to the highest cursor value it took;
//! - one run per source at a time: a lease row (`pull_state.lease_owner`/`lease_until`), taken
//!   with a conditional update, renewed in every page's transaction (a run whose lease was
//!   taken over after expiring cannot commit: its transaction finds the lease gone and rolls
//!   back).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, TransactionTrait};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;
use uuid::Uuid;

use super::store::{self, runs, state, taken};
use super::{Next, Position, PullError, PullSpec, RunMemory, SyncMode, compare_cursors, select};
use crate::deliver::{Answer, Auth, Deliverer, OutgoingRequest, TargetSettings, Verdict, backoff};
use crate::error::{Error, Result};
use crate::ingest::{IngestOutcome, NewRaw, ingest_many};
use crate::status::Direction;

/// The header prefix of what a pulled page's layer 1 row records about its fetch. Reserved:
/// the HTTP front door drops incoming headers with it, so that a webhook cannot pose as a page.
pub const PULL_HEADER_PREFIX: &str = "hub-pull-";
/// The run that fetched the page.
pub const RUN_HEADER: &str = "hub-pull-run";
/// The page's number within its run (1 for the first).
pub const PAGE_HEADER: &str = "hub-pull-page";
/// The request that fetched it: method and URL.
pub const REQUEST_HEADER: &str = "hub-pull-request";
/// The sync mode.
pub const MODE_HEADER: &str = "hub-pull-mode";
/// Indices (comma-separated) of the page's records not taken: already taken, or not past the
/// saved cursor. Layer 2 makes no record of them.
pub const SKIP_HEADER: &str = "hub-pull-skip";

/// The answer headers kept with a page (besides the hub's own `hub-pull-*`).
const KEPT_RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "link",
    "etag",
    "last-modified",
    "date",
    "retry-after",
    "x-request-id",
    "request-id",
    "x-total-count",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
];

/// Everything a pulled source's runs need.
#[derive(Debug, Clone)]
pub struct PullSettings {
    /// The source's name.
    pub source: String,
    /// Requests and paging.
    pub spec: PullSpec,
    /// How requests authenticate.
    pub auth: Auth,
    /// The sync mode.
    pub mode: SyncMode,
    /// JSON pointer (inside a record) to its id.
    pub primary_key: Option<String>,
    /// Requests per second (per worker); none: unlimited.
    pub rate_per_sec: Option<f64>,
    /// One request's whole timeout. Default 30 s.
    pub timeout: Duration,
    /// Connect timeout. Default 5 s.
    pub connect_timeout: Duration,
    /// Transient failures retried per request before the run fails. Default 5.
    pub max_retries: u32,
    /// First retry's delay (doubling with jitter). Default 500 ms.
    pub retry_base: Duration,
    /// Longest delay between retries, and the longest `Retry-After` waited for. Default 60 s.
    pub retry_max: Duration,
    /// How long a run holds the source without renewing. Default 60 s; renewed every third
    /// of it and with every page.
    pub lease: Duration,
}

impl PullSettings {
    /// Settings with the defaults documented on each field.
    pub fn new(source: impl Into<String>, spec: PullSpec, auth: Auth) -> Self {
        PullSettings {
            source: source.into(),
            spec,
            auth,
            mode: SyncMode::FullRefresh,
            primary_key: None,
            rate_per_sec: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_retries: 5,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            lease: Duration::from_secs(60),
        }
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The source's cron schedule.
    Schedule,
    /// `POST /v1/sources/{source}/sync`.
    Manual,
    /// `hub-worker sync`.
    Cli,
}

impl Trigger {
    /// As recorded in `sync_runs.trigger`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::Cli => "cli",
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// The listing was read to its end.
    Succeeded,
    /// The run reached `max_pages`; the next run continues the listing.
    PageLimit,
    /// It stopped on an error (on record); the next run resumes from the last committed page.
    Failed,
}

impl RunOutcome {
    /// As recorded in `sync_runs.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::PageLimit => "page_limit",
            RunOutcome::Failed => "failed",
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunReport {
    /// The run's id (`sync_runs.id`, and `hub-pull-run` on its pages).
    pub run_id: Uuid,
    /// The source.
    pub source: String,
    /// How it ended.
    pub outcome: RunOutcome,
    /// Whether it continued a listing an earlier run left unfinished.
    pub resumed: bool,
    /// Pages committed.
    pub pages: u32,
    /// Pages stored in layer 1 (pages with no record to take are not stored).
    pub pages_stored: u32,
    /// Records taken.
    pub records: u64,
    /// Records skipped (already taken, or not past the saved cursor).
    pub skipped: u64,
    /// Bytes of the pages committed.
    pub bytes: u64,
    /// HTTP requests sent.
    pub requests: u32,
    /// Of which retries.
    pub retries: u32,
    /// The saved cursor before and after.
    pub cursor_before: Option<String>,
    /// The saved cursor after.
    pub cursor_after: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A pulled source, ready to run: its settings and HTTP client. Cheap to clone.
#[derive(Clone)]
pub struct Puller {
    inner: Arc<PullerInner>,
}

struct PullerInner {
    settings: PullSettings,
    deliverer: Deliverer,
    worker: String,
    /// Woken after each stored page (the stage that normalizes layer 1 rows).
    wake: Option<crate::stage::Wakeup>,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller").field("source", &self.inner.settings.source).finish()
    }
}

/// What [`Puller::start`] found.
#[derive(Debug)]
pub enum Started {
    /// The run holds the source: drive it with [`Run::finish`].
    Run(Box<Run>),
    /// Another run holds the source.
    Busy {
        /// Its lease owner (`<worker>/<run id>`).
        holder: String,
        /// Until when, unless renewed.
        until: Option<DateTime<Utc>>,
    },
}

/// A run that holds its source's lease and has its `sync_runs` row.
#[derive(Debug)]
pub struct Run {
    puller: Puller,
    db: DatabaseConnection,
    id: Uuid,
    owner: String,
    state: state::Model,
    trigger: Trigger,
}

impl Puller {
    /// Checks the settings and builds the HTTP client. `worker` names this process in leases
    /// and run records (host and pid, say); `wake` is woken after each stored page.
    pub fn new(
        settings: PullSettings,
        worker: impl Into<String>,
        wake: Option<crate::stage::Wakeup>,
    ) -> Result<Self> {
        let problems = [
            settings.spec.validate().err(),
            settings.mode.check(&settings.spec, settings.primary_key.as_deref()).err(),
        ]
        .into_iter()
        .flatten()
        .flatten()
        .collect::<Vec<_>>();
        if !problems.is_empty() {
            return Err(Error::InvalidInput(format!(
                "pulled source `{}`: {}",
                settings.source,
                problems.join("; ")
            )));
        }
        let url = Url::parse(&settings.spec.url).map_err(|e| Error::InvalidInput(format!("url: {e}")))?;
        let base = url.origin().ascii_serialization();
        let mut target = TargetSettings::new(settings.source.clone(), base);
        target.timeout = settings.timeout;
        target.connect_timeout = settings.connect_timeout;
        // One byte past the bound, so that a page over it is seen as over, not cut to fit.
        target.max_response_bytes = settings.spec.max_page_bytes.saturating_add(1);
        target.concurrency = 1;
        target.rate_per_sec = settings.rate_per_sec;
        // Retries are this run's (below); a circuit would only turn them into waits.
        target.circuit_failures = 0;
        target.idempotency_header = None;
        target.auth = settings.auth.clone();
        target.keep_response_headers = KEPT_RESPONSE_HEADERS.iter().map(|h| (*h).to_owned()).collect();
        let deliverer = Deliverer::new(vec![target])?;
        Ok(Puller { inner: Arc::new(PullerInner { settings, deliverer, worker: worker.into(), wake }) })
    }

    /// The source's name.
    pub fn source(&self) -> &str {
        &self.inner.settings.source
    }

    /// The settings.
    pub fn settings(&self) -> &PullSettings {
        &self.inner.settings
    }

    /// Takes the source's lease and records a new run, or says who holds the source. A run
    /// left `running` by a worker whose lease expired is closed as `aborted` first.
    pub async fn start(&self, db: &DatabaseConnection, trigger: Trigger) -> Result<Started> {
        let s = &self.inner.settings;
        let now = Utc::now();
        store::ensure(db, &s.source, now).await?;
        let id = Uuid::now_v7();
        let owner = format!("{}/{id}", self.inner.worker);
        let state = match store::acquire(db, &s.source, &owner, now, lease_end(now, s.lease)).await? {
            Ok(state) => state,
            Err((holder, until)) => return Ok(Started::Busy { holder, until }),
        };
        let txn = db.begin().await?;
        store::close_dead_runs(&txn, &s.source, now).await?;
        let row = runs::Model {
            id,
            source: s.source.clone(),
            trigger: trigger.as_str().to_owned(),
            mode: s.mode.as_str().to_owned(),
            worker: self.inner.worker.clone(),
            resumed: state.position.is_some(),
            started_at: now,
            heartbeat_at: now,
            finished_at: None,
            outcome: "running".to_owned(),
            pages: 0,
            records: 0,
            skipped: 0,
            bytes: 0,
            requests: 0,
            retries: 0,
            cursor_before: state.cursor.clone(),
            cursor_after: None,
            error: None,
        };
        runs::Entity::insert(runs::ActiveModel::from(row)).exec(&txn).await?;
        state::Entity::update_many()
            .col_expr(state::Column::Runs, Expr::col(state::Column::Runs).add(1))
            .col_expr(state::Column::LastRunId, Expr::value(id))
            .col_expr(state::Column::LastOutcome, Expr::value("running"))
            .col_expr(state::Column::LastStartedAt, Expr::value(now))
            .col_expr(state::Column::UpdatedAt, Expr::value(now))
            .filter(state::Column::Source.eq(s.source.as_str()))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        tracing::info!(source = %s.source, run = %id, trigger = trigger.as_str(), resumed = state.position.is_some(), "sync run started");
        Ok(Started::Run(Box::new(Run { puller: self.clone(), db: db.clone(), id, owner, state, trigger })))
    }
}

fn lease_end(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60))
}

/// Counters of a run so far.
#[derive(Default)]
struct Tally {
    pages: u32,
    pages_stored: u32,
    records: u64,
    skipped: u64,
    bytes: u64,
    requests: u32,
    retries: u32,
}

/// Why a run stopped early.
enum Stop {
    /// On record as the run's error; the run is `failed`.
    Failed(String),
    /// The database failed: the run cannot even record itself reliably.
    Db(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Db(e)
    }
}

impl From<sea_orm::DbErr> for Stop {
    fn from(e: sea_orm::DbErr) -> Self {
        Stop::Db(e.into())
    }
}

impl Run {
    /// The run's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// What started it.
    pub fn trigger(&self) -> Trigger {
        self.trigger
    }

    /// Fetches and stores pages until the listing ends, the page bound is reached, an error
    /// stops it or `stop` is cancelled (checked between pages), then records the outcome and
    /// frees the source. An `Err` is a database failure; every other failure is a `Failed`
    /// report, on record.
    pub async fn finish(self, stop: &CancellationToken) -> Result<RunReport> {
        let mut tally = Tally::default();
        let mut lease_renewed = Instant::now();
        let result = self.pages(stop, &mut tally, &mut lease_renewed).await;
        let (outcome, error) = match result {
            Ok(outcome) => (outcome, None),
            Err(Stop::Failed(why)) => (RunOutcome::Failed, Some(why)),
            Err(Stop::Db(e)) => {
                // Try to record it; the lease expires on its own if this fails too.
                let why = format!("database error: {e}");
                if let Err(again) = self.record_end(RunOutcome::Failed, Some(&why), &tally).await {
                    tracing::warn!(source = self.source(), run = %self.id, error = %again, "could not record the failed run");
                }
                return Err(e);
            }
        };
        let cursor_after = self.record_end(outcome, error.as_deref(), &tally).await?;
        let s = &self.puller.inner.settings;
        match &error {
            Some(why) => {
                tracing::warn!(source = %s.source, run = %self.id, pages = tally.pages, records = tally.records, error = %why, "sync run failed")
            }
            None => {
                tracing::info!(source = %s.source, run = %self.id, outcome = outcome.as_str(), pages = tally.pages, records = tally.records, skipped = tally.skipped, "sync run ended")
            }
        }
        Ok(RunReport {
            run_id: self.id,
            source: s.source.clone(),
            outcome,
            resumed: self.state.position.is_some(),
            pages: tally.pages,
            pages_stored: tally.pages_stored,
            records: tally.records,
            skipped: tally.skipped,
            bytes: tally.bytes,
            requests: tally.requests,
            retries: tally.retries,
            cursor_before: self.state.cursor.clone(),
            cursor_after,
            error,
        })
    }

    fn source(&self) -> &str {
        &self.puller.inner.settings.source
    }

    /// The page loop.
    async fn pages(
        &self,
        stop: &CancellationToken,
        tally: &mut Tally,
        renewed: &mut Instant,
    ) -> std::result::Result<RunOutcome, Stop> {
        let s = &self.puller.inner.settings;
        let spec = &s.spec;
        let (mut req, mut pos) = match &self.state.position {
            Some(saved) => {
                let pos: Position = serde_json::from_str(saved).map_err(|e| {
                    Stop::Failed(format!("the saved position does not read ({e}); reset the state"))
                })?;
                let pos = pos.new_run();
                (spec.request(&pos).map_err(|e| Stop::Failed(e.to_string()))?, pos)
            }
            None => {
                let since = if s.mode.is_incremental() { self.state.cursor.as_deref() } else { None };
                let keep = if s.mode == SyncMode::IncrementalDedup { since } else { None };
                store::prune_taken(&self.db, &s.source, keep).await?;
                spec.first(since).map_err(|e| Stop::Failed(e.to_string()))?
            }
        };
        let mut high = self.state.listing_high.clone();
        let mut memory = RunMemory::default();
        loop {
            if stop.is_cancelled() {
                return Err(Stop::Failed(
                    "stopped: the worker is shutting down; the next run resumes from here".into(),
                ));
            }
            let answer = self.fetch(&req, tally, renewed, stop).await?;
            if answer.truncated || answer.body.len() > spec.max_page_bytes {
                return Err(Stop::Failed(format!(
                    "page {} ({}): {}",
                    tally.pages + 1,
                    req.url,
                    PullError::TooLarge { size: answer.body.len(), limit: spec.max_page_bytes }
                )));
            }
            let page = spec
                .next(&pos, &answer.body, &answer.headers, &mut memory)
                .map_err(|e| Stop::Failed(format!("page {} ({}): {e}", tally.pages + 1, req.url)))?;
            let selection =
                select(spec, s.mode, s.primary_key.as_deref(), &page.records, pos.since.as_deref())
                    .map_err(|e| Stop::Failed(format!("page {} ({}): {e}", tally.pages + 1, req.url)))?;
            let this_url = req.url.clone();
            let (next_pos, limit, stop_with) = match page.next {
                Next::Request(r, p) => {
                    req = r;
                    (Some(p), false, None)
                }
                Next::Done => (None, false, None),
                Next::PageLimit(p) => (Some(p.new_run()), true, None),
                // Keep the position at this page: the next run fetches it again (its records
                // are taken by then) and meets the same error, which stays on record.
                Next::Stop(e) => (Some(pos.clone()), false, Some(e)),
            };
            let done = next_pos.is_none();
            for p in &selection.take {
                if let Some(c) = &p.cursor
                    && high.as_deref().is_none_or(|h| compare_cursors(c, h) == std::cmp::Ordering::Greater)
                {
                    high = Some(c.clone());
                }
            }
            self.commit_page(
                &answer,
                &this_url,
                &page.records,
                selection,
                next_pos.as_ref(),
                high.as_deref(),
                done,
                tally,
            )
            .await?;
            *renewed = Instant::now();
            if let Some(w) = &self.puller.inner.wake {
                w.wake();
            }
            if let Some(e) = stop_with {
                return Err(Stop::Failed(format!("page {}: {e}", tally.pages)));
            }
            match next_pos {
                None => return Ok(RunOutcome::Succeeded),
                Some(_) if limit => return Ok(RunOutcome::PageLimit),
                Some(p) => pos = p,
            }
        }
    }

    /// One request, with the run's retries: transient failures (5xx, 408, 429, timeouts)
    /// wait (the server's `Retry-After`, or backoff) and try again, up to `max_retries`.
    async fn fetch(
        &self,
        req: &super::PageRequest,
        tally: &mut Tally,
        renewed: &mut Instant,
        stop: &CancellationToken,
    ) -> std::result::Result<Answer, Stop> {
        let inner = &self.puller.inner;
        let s = &inner.settings;
        let url =
            Url::parse(&req.url).map_err(|e| Stop::Failed(format!("request URL `{}`: {e}", req.url)))?;
        let mut path_and_query = url.path().to_owned();
        if let Some(q) = url.query() {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        let outgoing = OutgoingRequest {
            delivery_id: self.id,
            method: req.method.as_str().to_owned(),
            path_and_query,
            headers: req.headers.clone(),
            content_type: None,
            body: Vec::new(),
        };
        let mut retries = 0u32;
        let mut unsent = 0u32;
        loop {
            self.keep_lease(renewed).await?;
            // Long enough for a rate token and the request itself.
            let deadline = Instant::now() + s.timeout + s.lease / 3;
            let attempt = inner.deliverer.deliver(&s.source, &outgoing, deadline).await;
            if attempt.verdict.is_attempt() {
                tally.requests += 1;
            }
            let wait = match attempt.verdict {
                Verdict::Delivered => {
                    return attempt
                        .answer
                        .ok_or_else(|| Stop::Failed(format!("{}: a 2xx without an answer", req.url)));
                }
                Verdict::Rejected { reason } => {
                    return Err(Stop::Failed(format!(
                        "{} {} refused: {reason}",
                        req.method.as_str(),
                        req.url
                    )));
                }
                Verdict::Retry { reason, after } => {
                    if retries >= s.max_retries {
                        return Err(Stop::Failed(format!(
                            "{} {}: {reason}; gave up after {retries} retries",
                            req.method.as_str(),
                            req.url
                        )));
                    }
                    if let Some(after) = after
                        && after > s.retry_max
                    {
                        return Err(Stop::Failed(format!(
                            "{} {}: {reason}; the API asks to wait {} s (Retry-After), longer than retry_max_ms; the next run resumes",
                            req.method.as_str(),
                            req.url,
                            after.as_secs()
                        )));
                    }
                    retries += 1;
                    tally.retries += 1;
                    let wait = after.unwrap_or_else(|| backoff(retries, s.retry_base, s.retry_max));
                    tracing::info!(source = %s.source, run = %self.id, %reason, wait_ms = wait.as_millis() as u64, retry = retries, "page request will be retried");
                    wait
                }
                Verdict::NotSent { reason, until } => {
                    unsent += 1;
                    if unsent > 1000 {
                        return Err(Stop::Failed(format!("{}: not sent: {reason}", req.url)));
                    }
                    until.unwrap_or(Duration::from_millis(50))
                }
            };
            self.sleep(wait, renewed, stop).await?;
        }
    }

    /// Sleeps `wait`, renewing the lease on the way; a shutdown ends the wait and the run.
    async fn sleep(
        &self,
        wait: Duration,
        renewed: &mut Instant,
        stop: &CancellationToken,
    ) -> std::result::Result<(), Stop> {
        let step = self.puller.inner.settings.lease / 3;
        let end = Instant::now() + wait;
        while Instant::now() < end {
            tokio::select! {
                () = stop.cancelled() => return Err(Stop::Failed(SHUTTING_DOWN.into())),
                () = tokio::time::sleep_until(end.min(Instant::now() + step)) => {}
            }
            self.keep_lease(renewed).await?;
        }
        Ok(())
    }

    /// Renews the lease when a third of it has passed since the last renewal.
    async fn keep_lease(&self, renewed: &mut Instant) -> std::result::Result<(), Stop> {
        let s = &self.puller.inner.settings;
        if renewed.elapsed() < s.lease / 3 {
            return Ok(());
        }
        if !store::renew(&self.db, &s.source, &self.owner, lease_end(Utc::now(), s.lease)).await? {
            return Err(Stop::Failed(lost_lease(&s.source)));
        }
        *renewed = Instant::now();
        Ok(())
    }

    /// Stores one page and everything that follows from it, in one transaction.
    #[allow(clippy::too_many_arguments)]
    async fn commit_page(
        &self,
        answer: &Answer,
        url: &str,
        records: &[crate::json::Value],
        selection: super::Selection,
        next: Option<&Position>,
        high: Option<&str>,
        done: bool,
        tally: &mut Tally,
    ) -> std::result::Result<(), Stop> {
        let s = &self.puller.inner.settings;
        let now = Utc::now();
        let page_no = tally.pages + 1;
        let txn = self.db.begin().await?;
        // The fence: a run whose lease was taken over writes nothing.
        if !store::renew(&txn, &s.source, &self.owner, lease_end(now, s.lease)).await? {
            return Err(Stop::Failed(lost_lease(&s.source)));
        }
        let keys: Vec<&str> = selection.take.iter().map(|p| p.key.as_str()).collect();
        let known = store::already_taken(&txn, &s.source, &keys).await?;
        let mut seen = std::collections::HashSet::new();
        let picks: Vec<&super::Pick> = selection
            .take
            .iter()
            .filter(|p| !known.contains(&p.key) && seen.insert(p.key.as_str()))
            .collect();
        let skipped = records.len() - picks.len();
        if !picks.is_empty() {
            let taken_idx: std::collections::HashSet<usize> = picks.iter().map(|p| p.index).collect();
            let skip: Vec<String> =
                (0..records.len()).filter(|i| !taken_idx.contains(i)).map(|i| i.to_string()).collect();
            let mut headers: Vec<(String, String)> = vec![
                (RUN_HEADER.into(), self.id.to_string()),
                (PAGE_HEADER.into(), page_no.to_string()),
                (REQUEST_HEADER.into(), format!("{} {url}", s.spec.method.as_str())),
                (MODE_HEADER.into(), s.mode.as_str().into()),
            ];
            if !skip.is_empty() {
                headers.push((SKIP_HEADER.into(), skip.join(",")));
            }
            headers.extend(answer.headers.iter().cloned());
            let content_type = answer
                .header("content-type")
                .map(|c| c.split(';').next().unwrap_or(c).trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "application/json".into());
            let source_ref = format!("sync:{}:{page_no}", self.id);
            let raw = NewRaw {
                source: &s.source,
                source_ref: Some(&source_ref),
                body: &answer.body,
                content_type: &content_type,
                headers: &headers,
                direction: Direction::Upstream,
            };
            let stored = ingest_many(&txn, &[raw], s.spec.max_page_bytes)
                .await?
                .pop()
                .unwrap_or_else(|| Err(Error::Internal("ingest gave no answer".into())))
                .map_err(|e| Stop::Failed(format!("page {page_no} ({url}) cannot be stored: {e}")))?;
            if stored.outcome != IngestOutcome::New {
                return Err(Stop::Failed(format!(
                    "page {page_no} ({url}) was already on record as {} ({:?})",
                    stored.id, stored.outcome
                )));
            }
            let rows = picks
                .iter()
                .map(|p| taken::Model {
                    source: s.source.clone(),
                    record_key: p.key.clone(),
                    cursor: p.cursor.clone(),
                    run_id: self.id,
                    raw_id: stored.id.into(),
                })
                .collect();
            store::mark_taken(&txn, rows).await?;
            tally.pages_stored += 1;
        }
        let position = match next {
            Some(p) => Some(serde_json::to_string(p).map_err(|e| Error::Internal(format!("position: {e}")))?),
            None => None,
        };
        let mut update = state::Entity::update_many()
            .col_expr(state::Column::Position, Expr::value(position))
            .col_expr(state::Column::Pages, Expr::col(state::Column::Pages).add(1))
            .col_expr(state::Column::Records, Expr::col(state::Column::Records).add(picks.len() as i64))
            .col_expr(state::Column::Skipped, Expr::col(state::Column::Skipped).add(skipped as i64))
            .col_expr(state::Column::Bytes, Expr::col(state::Column::Bytes).add(answer.body.len() as i64))
            .col_expr(state::Column::UpdatedAt, Expr::value(now));
        if done {
            update = update.col_expr(state::Column::ListingHigh, Expr::value(Option::<String>::None));
            if s.mode.is_incremental() {
                let cursor = match (high, self.state.cursor.as_deref()) {
                    (Some(h), Some(c)) if compare_cursors(h, c) != std::cmp::Ordering::Greater => c,
                    (Some(h), _) => h,
                    (None, c) => c.unwrap_or_default(),
                };
                let cursor = (!cursor.is_empty()).then(|| cursor.to_owned());
                update = update.col_expr(state::Column::Cursor, Expr::value(cursor));
            }
        } else {
            update = update.col_expr(state::Column::ListingHigh, Expr::value(high.map(str::to_owned)));
        }
        update.filter(state::Column::Source.eq(s.source.as_str())).exec(&txn).await?;
        tally.pages = page_no;
        tally.bytes += answer.body.len() as u64;
        tally.records += picks.len() as u64;
        tally.skipped += skipped as u64;
        runs::Entity::update_many()
            .col_expr(runs::Column::Pages, Expr::value(tally.pages as i32))
            .col_expr(runs::Column::Records, Expr::value(tally.records as i64))
            .col_expr(runs::Column::Skipped, Expr::value(tally.skipped as i64))
            .col_expr(runs::Column::Bytes, Expr::value(tally.bytes as i64))
            .col_expr(runs::Column::Requests, Expr::value(tally.requests as i32))
            .col_expr(runs::Column::Retries, Expr::value(tally.retries as i32))
            .col_expr(runs::Column::HeartbeatAt, Expr::value(now))
            .filter(runs::Column::Id.eq(self.id))
            .exec(&txn)
            .await?;
        match txn.commit().await {
            Ok(()) => Ok(()),
            Err(e) => Err(Stop::Db(Error::OutcomeUnknown(e))),
        }
    }

    /// Records the run's end and frees the source; returns the saved cursor.
    async fn record_end(
        &self,
        outcome: RunOutcome,
        error: Option<&str>,
        tally: &Tally,
    ) -> Result<Option<String>> {
        let s = &self.puller.inner.settings;
        let now = Utc::now();
        let txn = self.db.begin().await?;
        let state = store::load(&txn, &s.source).await?;
        let cursor = state.as_ref().and_then(|st| st.cursor.clone());
        runs::Entity::update_many()
            .col_expr(runs::Column::Outcome, Expr::value(outcome.as_str()))
            .col_expr(runs::Column::FinishedAt, Expr::value(now))
            .col_expr(runs::Column::HeartbeatAt, Expr::value(now))
            .col_expr(runs::Column::Error, Expr::value(error.map(str::to_owned)))
            .col_expr(runs::Column::CursorAfter, Expr::value(cursor.clone()))
            .col_expr(runs::Column::Pages, Expr::value(tally.pages as i32))
            .col_expr(runs::Column::Requests, Expr::value(tally.requests as i32))
            .col_expr(runs::Column::Retries, Expr::value(tally.retries as i32))
            .col_expr(runs::Column::Bytes, Expr::value(tally.bytes as i64))
            .filter(runs::Column::Id.eq(self.id))
            .filter(runs::Column::Outcome.eq("running"))
            .exec(&txn)
            .await?;
        let mut update = state::Entity::update_many()
            .col_expr(state::Column::LastOutcome, Expr::value(outcome.as_str()))
            .col_expr(state::Column::LastError, Expr::value(error.map(str::to_owned)))
            .col_expr(state::Column::LastFinishedAt, Expr::value(now))
            .col_expr(state::Column::LeaseOwner, Expr::value(Option::<String>::None))
            .col_expr(state::Column::LeaseUntil, Expr::value(Option::<DateTime<Utc>>::None))
            .col_expr(state::Column::UpdatedAt, Expr::value(now));
        if outcome == RunOutcome::Failed {
            update = update.col_expr(state::Column::RunsFailed, Expr::col(state::Column::RunsFailed).add(1));
        } else {
            update = update.col_expr(state::Column::LastSuccessAt, Expr::value(now));
        }
        update
            .filter(state::Column::Source.eq(s.source.as_str()))
            .filter(state::Column::LeaseOwner.eq(self.owner.as_str()))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(cursor)
    }
}

/// Why a run ended on a shutdown.
const SHUTTING_DOWN: &str =
    "stopped: the worker is shutting down; the next run resumes from the last committed page";

fn lost_lease(source: &str) -> String {
    format!(
        "lost the lease on source `{source}`: this run stalled past its lease and another run took the source; nothing more was written"
    )
}
