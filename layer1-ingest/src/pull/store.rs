//! The tables of pulled sources (migration 000012): `pull_state` (one row per source: saved
//! cursor, unfinished listing, lease, totals), `sync_runs` (one row per run) and `pull_taken`
//! (the records taken, by key). Every write a page needs is made by the runner (`run::Run`), in the
//! transaction that stores the page.

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ConnectionTrait, QueryOrder, QuerySelect};

use crate::error::{Error, Result};

/// `pull_state`.
pub mod state {
    use sea_orm::entity::prelude::*;

    /// One pulled source's saved state.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
    #[sea_orm(table_name = "pull_state")]
    pub struct Model {
        /// The source.
        #[sea_orm(primary_key, auto_increment = false)]
        pub source: String,
        /// The saved cursor: the highest cursor value of the last finished listing
        /// (incremental modes); the next listing asks for what came after it.
        pub cursor: Option<String>,
        /// The next page of a listing not yet finished ([`crate::pull::Position`] as JSON).
        pub position: Option<String>,
        /// The highest cursor value taken so far in that unfinished listing.
        pub listing_high: Option<String>,
        /// The run holding the source now (`<worker>/<run id>`), if any.
        pub lease_owner: Option<String>,
        /// When that lease ends unless renewed.
        pub lease_until: Option<DateTimeUtc>,
        /// Runs started.
        pub runs: i64,
        /// Runs that failed or were aborted.
        pub runs_failed: i64,
        /// Pages fetched and committed.
        pub pages: i64,
        /// Records taken.
        pub records: i64,
        /// Records skipped (already taken, not past the saved cursor).
        pub skipped: i64,
        /// Bytes of the pages committed.
        pub bytes: i64,
        /// The last run.
        pub last_run_id: Option<Uuid>,
        /// Its outcome.
        pub last_outcome: Option<String>,
        /// Its error, if it failed.
        pub last_error: Option<String>,
        /// When it started.
        pub last_started_at: Option<DateTimeUtc>,
        /// When it ended.
        pub last_finished_at: Option<DateTimeUtc>,
        /// When a run last succeeded.
        pub last_success_at: Option<DateTimeUtc>,
        /// When the scheduler means to run it next (informative).
        pub next_run_at: Option<DateTimeUtc>,
        /// Last write.
        pub updated_at: DateTimeUtc,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `sync_runs`.
pub mod runs {
    use sea_orm::entity::prelude::*;

    /// One run of a pulled source.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    #[cfg_attr(feature = "openapi", schema(as = SyncRunView))]
    #[sea_orm(table_name = "sync_runs")]
    pub struct Model {
        /// UUIDv7: the run id. Pages of the run carry it (`hub-pull-run`).
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// The source.
        pub source: String,
        /// `schedule`, `manual` or `cli`.
        pub trigger: String,
        /// The sync mode.
        pub mode: String,
        /// The worker that ran it.
        pub worker: String,
        /// Whether it continued a listing an earlier run left unfinished.
        pub resumed: bool,
        /// Start.
        pub started_at: chrono::DateTime<chrono::Utc>,
        /// Last page committed (or start).
        pub heartbeat_at: chrono::DateTime<chrono::Utc>,
        /// End; none while running.
        pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
        /// `running`, `succeeded`, `page_limit` (stopped at `max_pages`, the next run goes
        /// on), `failed`, `aborted` (the worker stopped mid-run).
        pub outcome: String,
        /// Pages committed.
        pub pages: i32,
        /// Records taken.
        pub records: i64,
        /// Records skipped.
        pub skipped: i64,
        /// Bytes of the pages committed.
        pub bytes: i64,
        /// HTTP requests sent.
        pub requests: i32,
        /// Of which retries.
        pub retries: i32,
        /// Saved cursor at the start.
        pub cursor_before: Option<String>,
        /// Saved cursor at the end.
        pub cursor_after: Option<String>,
        /// Why it failed.
        pub error: Option<String>,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `pull_taken`.
pub mod taken {
    use sea_orm::entity::prelude::*;

    /// A record taken.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "pull_taken")]
    pub struct Model {
        /// The source.
        #[sea_orm(primary_key, auto_increment = false)]
        pub source: String,
        /// Its key ([`crate::pull::record_key`]).
        #[sea_orm(primary_key, auto_increment = false)]
        pub record_key: String,
        /// Its cursor value.
        pub cursor: Option<String>,
        /// The run that took it.
        pub run_id: Uuid,
        /// The layer 1 row (page) it came in.
        pub raw_id: Uuid,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The saved state of `source` (none: never run, or reset).
pub async fn load<C: ConnectionTrait>(db: &C, source: &str) -> Result<Option<state::Model>> {
    Ok(state::Entity::find_by_id(source.to_owned()).one(db).await?)
}

/// Every pulled source's state, by name.
pub async fn load_all<C: ConnectionTrait>(db: &C) -> Result<Vec<state::Model>> {
    Ok(state::Entity::find().order_by_asc(state::Column::Source).all(db).await?)
}

/// The newest runs of `source`, newest first; `before` pages on (a run id).
pub async fn recent_runs<C: ConnectionTrait>(
    db: &C,
    source: &str,
    before: Option<Uuid>,
    limit: u64,
) -> Result<Vec<runs::Model>> {
    let mut q = runs::Entity::find().filter(runs::Column::Source.eq(source));
    if let Some(b) = before {
        q = q.filter(runs::Column::Id.lt(b));
    }
    Ok(q.order_by_desc(runs::Column::Id).limit(limit).all(db).await?)
}

/// One run.
pub async fn run<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<Option<runs::Model>> {
    Ok(runs::Entity::find_by_id(id).one(db).await?)
}

/// Forgets where `source` is: its cursor, its unfinished listing and the records it took, so
/// that the next run reads everything again. Keeps the totals and the run history. Refused
/// while a run holds the source.
pub async fn reset<C: ConnectionTrait>(db: &C, source: &str, now: DateTime<Utc>) -> Result<bool> {
    let res = state::Entity::update_many()
        .col_expr(state::Column::Cursor, Expr::value(Option::<String>::None))
        .col_expr(state::Column::Position, Expr::value(Option::<String>::None))
        .col_expr(state::Column::ListingHigh, Expr::value(Option::<String>::None))
        .col_expr(state::Column::UpdatedAt, Expr::value(now))
        .filter(state::Column::Source.eq(source))
        .filter(
            sea_orm::Condition::any()
                .add(state::Column::LeaseUntil.is_null())
                .add(state::Column::LeaseUntil.lt(now)),
        )
        .exec(db)
        .await?;
    if res.rows_affected == 0 {
        return Ok(match load(db, source).await? {
            None => true,
            Some(s) => {
                return Err(Error::InvalidInput(format!(
                    "source `{source}` is being synced by {} until {}: reset it after that run",
                    s.lease_owner.unwrap_or_default(),
                    s.lease_until.map(|t| t.to_rfc3339()).unwrap_or_default()
                )));
            }
        });
    }
    taken::Entity::delete_many().filter(taken::Column::Source.eq(source)).exec(db).await?;
    Ok(true)
}

/// Makes sure `source` has a state row.
pub(crate) async fn ensure<C: ConnectionTrait>(db: &C, source: &str, now: DateTime<Utc>) -> Result<()> {
    let row = state::ActiveModel {
        source: sea_orm::Set(source.to_owned()),
        cursor: sea_orm::Set(None),
        position: sea_orm::Set(None),
        listing_high: sea_orm::Set(None),
        lease_owner: sea_orm::Set(None),
        lease_until: sea_orm::Set(None),
        runs: sea_orm::Set(0),
        runs_failed: sea_orm::Set(0),
        pages: sea_orm::Set(0),
        records: sea_orm::Set(0),
        skipped: sea_orm::Set(0),
        bytes: sea_orm::Set(0),
        last_run_id: sea_orm::Set(None),
        last_outcome: sea_orm::Set(None),
        last_error: sea_orm::Set(None),
        last_started_at: sea_orm::Set(None),
        last_finished_at: sea_orm::Set(None),
        last_success_at: sea_orm::Set(None),
        next_run_at: sea_orm::Set(None),
        updated_at: sea_orm::Set(now),
    };
    state::Entity::insert(row).on_conflict_do_nothing_on([state::Column::Source]).exec(db).await?;
    Ok(())
}

/// Takes the source's lease for `owner` until `until`, if no other run holds it (or its lease
/// has expired). Returns the state as it was, or `Err(holder)`.
pub(crate) async fn acquire<C: ConnectionTrait>(
    db: &C,
    source: &str,
    owner: &str,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<std::result::Result<state::Model, (String, Option<DateTimeUtc>)>> {
    let res = state::Entity::update_many()
        .col_expr(state::Column::LeaseOwner, Expr::value(owner))
        .col_expr(state::Column::LeaseUntil, Expr::value(until))
        .filter(state::Column::Source.eq(source))
        .filter(
            sea_orm::Condition::any()
                .add(state::Column::LeaseUntil.is_null())
                .add(state::Column::LeaseUntil.lt(now)),
        )
        .exec(db)
        .await?;
    let row = load(db, source)
        .await?
        .ok_or_else(|| Error::Internal(format!("no pull_state row for `{source}`")))?;
    if res.rows_affected == 1 && row.lease_owner.as_deref() == Some(owner) {
        Ok(Ok(row))
    } else {
        Ok(Err((row.lease_owner.unwrap_or_default(), row.lease_until)))
    }
}

/// Extends `owner`'s lease; false when it no longer holds it (it expired and another run took
/// the source): the caller must stop without writing.
pub(crate) async fn renew<C: ConnectionTrait>(
    db: &C,
    source: &str,
    owner: &str,
    until: DateTime<Utc>,
) -> Result<bool> {
    let res = state::Entity::update_many()
        .col_expr(state::Column::LeaseUntil, Expr::value(until))
        .filter(state::Column::Source.eq(source))
        .filter(state::Column::LeaseOwner.eq(owner))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Closes the runs of `source` still marked running: their worker died (its lease expired,
/// since the caller holds it now).
pub(crate) async fn close_dead_runs<C: ConnectionTrait>(
    db: &C,
    source: &str,
    now: DateTime<Utc>,
) -> Result<u64> {
    let res = runs::Entity::update_many()
        .col_expr(runs::Column::Outcome, Expr::value("aborted"))
        .col_expr(runs::Column::FinishedAt, Expr::value(now))
        .col_expr(
            runs::Column::Error,
            Expr::value("the worker stopped mid-run; its lease expired and the next run resumed from the last committed page"),
        )
        .filter(runs::Column::Source.eq(source))
        .filter(runs::Column::Outcome.eq("running"))
        .exec(db)
        .await?;
    if res.rows_affected > 0 {
        state::Entity::update_many()
            .col_expr(
                state::Column::RunsFailed,
                Expr::col(state::Column::RunsFailed).add(res.rows_affected as i64),
            )
            .filter(state::Column::Source.eq(source))
            .exec(db)
            .await?;
    }
    Ok(res.rows_affected)
}

/// Of `keys`, those `source` has already taken.
pub(crate) async fn already_taken<C: ConnectionTrait>(
    db: &C,
    source: &str,
    keys: &[&str],
) -> Result<std::collections::HashSet<String>> {
    let mut out = std::collections::HashSet::new();
    for chunk in keys.chunks(500) {
        let found: Vec<String> = taken::Entity::find()
            .select_only()
            .column(taken::Column::RecordKey)
            .filter(taken::Column::Source.eq(source))
            .filter(taken::Column::RecordKey.is_in(chunk.iter().copied()))
            .into_tuple()
            .all(db)
            .await?;
        out.extend(found);
    }
    Ok(out)
}

/// Records the keys taken with the page's row.
pub(crate) async fn mark_taken<C: ConnectionTrait>(db: &C, rows: Vec<taken::Model>) -> Result<()> {
    for chunk in rows.chunks(500) {
        let models: Vec<taken::ActiveModel> = chunk.iter().cloned().map(Into::into).collect();
        taken::Entity::insert_many(models)
            .on_conflict_do_nothing_on([taken::Column::Source, taken::Column::RecordKey])
            .exec(db)
            .await?;
    }
    Ok(())
}

/// At the start of a new listing: forgets the keys that cannot come back. Full refresh and
/// plain incremental start clean (every record of a full refresh is taken again; plain
/// incremental takes only what is past the cursor); incremental with dedup keeps the keys
/// taken at exactly the saved cursor, which an inclusive `updated_since` serves again.
pub(crate) async fn prune_taken<C: ConnectionTrait>(
    db: &C,
    source: &str,
    keep_cursor: Option<&str>,
) -> Result<()> {
    let mut q = taken::Entity::delete_many().filter(taken::Column::Source.eq(source));
    if let Some(c) = keep_cursor {
        q = q.filter(
            sea_orm::Condition::any().add(taken::Column::Cursor.is_null()).add(taken::Column::Cursor.ne(c)),
        );
    }
    q.exec(db).await?;
    Ok(())
}

/// Notes when the scheduler means to run `source` next (shown by stats and the audit desk).
pub async fn note_next_run<C: ConnectionTrait>(db: &C, source: &str, at: DateTime<Utc>) -> Result<()> {
    ensure(db, source, Utc::now()).await?;
    state::Entity::update_many()
        .col_expr(state::Column::NextRunAt, Expr::value(at))
        .filter(state::Column::Source.eq(source))
        .exec(db)
        .await?;
    Ok(())
}
