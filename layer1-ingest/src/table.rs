//! What the four layer tables share: claiming due rows, guarded status updates, lineage reads.
//!
//! Each layer crate implements [`LayerTable`] for its entity and gets these queries, so the
//! claim and transition rules are written once.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    Value,
};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::status::{Direction, Layer, Status};

/// A layer table: its entity and the columns every layer has.
pub trait LayerTable: EntityTrait {
    /// Which layer this table is.
    const LAYER: Layer;
    /// `id`
    const ID: Self::Column;
    /// `direction`
    const DIRECTION: Self::Column;
    /// `status`
    const STATUS: Self::Column;
    /// `attempts`
    const ATTEMPTS: Self::Column;
    /// `last_error`
    const LAST_ERROR: Self::Column;
    /// `next_attempt_at`
    const NEXT_ATTEMPT_AT: Self::Column;
    /// `source`
    const SOURCE: Self::Column;
    /// `parent_id`
    const PARENT_ID: Self::Column;
    /// `origin_id`
    const ORIGIN_ID: Self::Column;
    /// `updated_at`
    const UPDATED_AT: Self::Column;
    /// `created_at`
    const CREATED_AT: Self::Column;
}

/// Selects up to `limit` rows in one of `statuses` whose `next_attempt_at` has passed, oldest
/// first, and locks them for the caller's transaction.
///
/// On PostgreSQL this is `FOR UPDATE SKIP LOCKED`: concurrent workers each get disjoint rows
/// and nobody waits. SQLite has no row locks (sea-query omits the clause); the hub runs SQLite
/// on one connection, which serialises transactions instead.
pub async fn claim_due<E: LayerTable, C: ConnectionTrait>(
    txn: &C,
    direction: Direction,
    statuses: &[Status],
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<E::Model>> {
    claim_due_where::<E, C>(txn, direction, statuses, now, limit, Condition::all()).await
}

/// Lets this transaction commit without waiting for the WAL flush (PostgreSQL). Only for
/// transactions whose results nothing outside the database acts on before a later durable
/// commit: a database crash can then lose the last few hundred milliseconds of them, each
/// whole, and a lost one is done again from the layer below. Not for a transaction that writes
/// layer 4 rows a publisher could send (a lost row would be recreated under a new id and the
/// core app would get the message twice, undetectably), nor for ingest (the sender was told
/// "stored").
pub async fn relax_commit<C: ConnectionTrait>(txn: &C) -> Result<()> {
    if txn.get_database_backend() == sea_orm::DbBackend::Postgres {
        txn.execute_unprepared("SET LOCAL synchronous_commit = off").await?;
    }
    Ok(())
}

/// Rows a stage claimed under a lease ([`claim_leased`]): they keep their status, and their
/// `next_attempt_at` is `until`, so no other worker claims them before the lease ends.
#[derive(Debug, Clone)]
pub struct Leased<M> {
    /// The claimed rows, as they were read (their `next_attempt_at` is the old one).
    pub rows: Vec<M>,
    /// When the claim was made: the time the stage stamps the rows it builds with.
    pub now: DateTime<Utc>,
    /// The lease's end as stored in `next_attempt_at`, whole microseconds (what PostgreSQL
    /// keeps): the write compares it for equality to tell whether the rows are still ours.
    pub until: DateTime<Utc>,
}

/// A time as the database gives it back: PostgreSQL keeps microseconds, so a stamp with
/// nanoseconds would never compare equal to itself once stored.
fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::SubsecRound;
    t.trunc_subsecs(6)
}

/// The `id` of a layer row.
/// A row's `id`.
pub fn id_of<E: LayerTable>(m: &E::Model) -> Result<Uuid> {
    use sea_orm::ModelTrait;
    match m.get(E::ID) {
        Value::Uuid(Some(id)) => Ok(id),
        other => Err(Error::Internal(format!("{}: id is not a UUID: {other:?}", E::LAYER.table()))),
    }
}

/// A row's `attempts`.
pub fn attempts_of<E: LayerTable>(m: &E::Model) -> Result<i32> {
    use sea_orm::ModelTrait;
    match m.get(E::ATTEMPTS) {
        Value::Int(Some(n)) => Ok(n),
        other => Err(Error::Internal(format!("{}: attempts is not a number: {other:?}", E::LAYER.table()))),
    }
}

/// The first half of a stage's batch: claims up to `limit` due upstream `just_in`/`failed`
/// rows of `E` and leases them for `lease` (their `next_attempt_at` moves to the lease's end),
/// in one short transaction that is committed before this returns. `None` when there is
/// nothing to do.
///
/// The stage then runs integration code (normalizers, translators, routers: anything, a lookup
/// service say) with no transaction open and no pooled connection held, so a slow integration
/// never holds up ingest, the audit desk or the other stages; and it writes what it made with
/// [`settle_leased`] in a second short transaction. Rows stay `just_in`/`failed` meanwhile: if
/// the worker dies between the two, they are due again when the lease ends and another worker
/// (or this one, restarted) takes them. The lease is not an attempt: `attempts` counts real
/// failures only.
pub async fn claim_leased<E: LayerTable>(
    db: &sea_orm::DatabaseConnection,
    limit: u64,
    lease: std::time::Duration,
) -> Result<Option<Leased<E::Model>>> {
    claim_leased_where::<E>(db, Direction::Upstream, limit, lease, Condition::all()).await
}

/// [`claim_leased`] in either direction, with a further condition on the rows (downstream
/// delivery: per-key order, targets whose circuit is open).
pub async fn claim_leased_where<E: LayerTable>(
    db: &sea_orm::DatabaseConnection,
    direction: Direction,
    limit: u64,
    lease: std::time::Duration,
    extra: Condition,
) -> Result<Option<Leased<E::Model>>> {
    use sea_orm::TransactionTrait;
    let now = Utc::now();
    // At least a microsecond, so a later claim's stamp always differs from an expired one.
    let lease = chrono::Duration::from_std(lease)
        .unwrap_or(chrono::Duration::MAX)
        .max(chrono::Duration::microseconds(1));
    let until = to_micros(now.checked_add_signed(lease).unwrap_or(DateTime::<Utc>::MAX_UTC));
    let txn = db.begin().await?;
    let rows = claim_due_where::<E, _>(&txn, direction, &[Status::JustIn, Status::Failed], now, limit, extra)
        .await?;
    if rows.is_empty() {
        txn.commit().await?;
        return Ok(None);
    }
    let ids = rows.iter().map(id_of::<E>).collect::<Result<Vec<_>>>()?;
    // A lost lease commit (a database crash) only makes the rows due again at once.
    relax_commit(&txn).await?;
    let leased = E::update_many()
        .col_expr(E::NEXT_ATTEMPT_AT, Expr::value(until))
        .filter(E::ID.is_in(ids.iter().copied()))
        .exec(&txn)
        .await?;
    if leased.rows_affected != ids.len() as u64 {
        return Err(Error::LostClaim {
            table: E::LAYER.table(),
            expected: ids.len() as u64,
            updated: leased.rows_affected,
        });
    }
    txn.commit().await?;
    Ok(Some(Leased { rows, now, until }))
}

/// The second half of a stage's batch, inside the caller's write transaction: moves the leased
/// rows in `forwarded` to `forwarded` and records `failed` ones (`(id, attempts, why)`) as
/// [`record_failure`] does, but only rows this worker still leases: same status as claimed
/// (`just_in`/`failed`) and `next_attempt_at` still `lease.until`. A row whose lease ended and
/// that another worker claimed meanwhile (a new stamp) or finished is left alone.
///
/// Returns the ids in `forwarded` that were ours: the caller inserts the children of those
/// rows only, in the same transaction, so a row is never carried on twice.
pub async fn settle_leased<E: LayerTable, C: ConnectionTrait, M>(
    conn: &C,
    lease: &Leased<M>,
    forwarded: &[Uuid],
    failed: &[(Uuid, i32, crate::outcome::Failure)],
    settings: &crate::stage::StageSettings,
) -> Result<std::collections::HashSet<Uuid>> {
    let now = Utc::now();
    let kept =
        transition_leased::<E, C>(conn, lease.until, forwarded, &Transition::to(Status::Forwarded), now)
            .await?;
    let mut lost = forwarded.len() - kept.len();
    for (id, attempts, failure) in failed {
        let t = failure_transition(*attempts, failure, settings, now);
        if !transition_leased::<E, C>(conn, lease.until, &[*id], &t, now).await?.is_empty() {
            let reason = t.reason.as_deref().unwrap_or("");
            if t.to == Status::Dropped {
                // A drop is the integration working as declared: nothing to look at.
                tracing::debug!(table = E::LAYER.table(), %id, reason, "dropped");
            } else if !t.to.is_given_up() {
                // Rejected and dead rows were logged at WARN by `transition_leased`.
                tracing::info!(table = E::LAYER.table(), %id, status = %t.to, reason, "not forwarded");
            }
        } else {
            lost += 1;
        }
    }
    if lost > 0 {
        // The compute outlasted the lease and another worker took these rows: its result
        // stands, ours is dropped. A longer `StageSettings::lease` avoids the double work.
        tracing::warn!(
            table = E::LAYER.table(),
            rows = lost,
            "lease lost before the result was written; result dropped"
        );
    }
    Ok(kept)
}

/// The rows a worker still leases under the stamp `until` (see [`claim_leased`]): still
/// `just_in`/`failed` and `next_attempt_at` still `until`. A row whose lease ended and that
/// another worker claimed (a new stamp) or finished matches no more.
pub fn still_leased<E: LayerTable>(until: DateTime<Utc>) -> Condition {
    Condition::all().add(E::NEXT_ATTEMPT_AT.eq(until)).add(Expr::cust(format!(
        "status IN ('{}', '{}')",
        Status::JustIn.as_str(),
        Status::Failed.as_str()
    )))
}

/// Makes `t` of those of `ids` this worker still leases ([`still_leased`]), in one statement;
/// returns the ids it changed (RETURNING: PostgreSQL, and SQLite since 3.35).
pub async fn transition_leased<E: LayerTable, C: ConnectionTrait>(
    conn: &C,
    until: DateTime<Utc>,
    ids: &[Uuid],
    t: &Transition,
    now: DateTime<Utc>,
) -> Result<std::collections::HashSet<Uuid>> {
    let mut kept = std::collections::HashSet::with_capacity(ids.len());
    if ids.is_empty() {
        return Ok(kept);
    }
    let mut update = transition_update::<E>(t, now)
        .filter(E::ID.is_in(ids.iter().copied()))
        .filter(still_leased::<E>(until))
        .into_query();
    if t.to.is_given_up() {
        kept.extend(given_up::<E, C>(conn, update, t).await?);
        return Ok(kept);
    }
    update.returning_col(E::ID);
    for row in conn.query_all(&update).await? {
        kept.insert(row.try_get_by_index::<Uuid>(0)?);
    }
    Ok(kept)
}

/// [`claim_due`] with a further condition on the rows (the publisher's per-key ordering).
pub async fn claim_due_where<E: LayerTable, C: ConnectionTrait>(
    txn: &C,
    direction: Direction,
    statuses: &[Status],
    now: DateTime<Utc>,
    limit: u64,
    extra: Condition,
) -> Result<Vec<E::Model>> {
    // The statuses are written into the SQL, not bound: only then can PostgreSQL match the
    // partial claim index (`WHERE status IN (...)`) under a generic plan. They are our own enum
    // names, never input.
    if txn.get_database_backend() == sea_orm::DbBackend::Postgres {
        // Claimed rows leave the partial index by non-HOT updates, so its oldest entries are
        // dead versions until vacuum. An index scan in order marks them dead as it passes (and
        // stops at the batch size); a bitmap scan, which the planner picks on fresh statistics,
        // reads every one of them on every claim. SET LOCAL ends with the transaction.
        txn.execute_unprepared("SET LOCAL enable_bitmapscan = off").await?;
    }
    let in_list = statuses.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(", ");
    Ok(E::find()
        .filter(extra)
        .filter(Expr::cust(format!("status IN ({in_list})")))
        // Literal too: the downstream claim indexes are partial on the direction.
        .filter(Expr::cust(format!("direction = '{direction}'")))
        .filter(E::NEXT_ATTEMPT_AT.lte(now))
        .order_by_asc(E::NEXT_ATTEMPT_AT)
        .order_by_asc(E::ID)
        .limit(limit)
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
        .all(txn)
        .await?)
}

/// How a guarded update leaves the row.
#[derive(Debug, Clone)]
pub struct Transition {
    /// The new status.
    pub to: Status,
    /// The reason to record (`last_error`), if any; `None` leaves the column as it is.
    pub reason: Option<String>,
    /// When the row is next due; `None` clears it (final statuses).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Whether this counts as a failed attempt (`attempts + 1`).
    pub count_attempt: bool,
}

impl Transition {
    /// A move to a final status, clearing `next_attempt_at`.
    pub fn to(to: Status) -> Self {
        Self { to, reason: None, next_attempt_at: None, count_attempt: false }
    }

    /// Records why.
    pub fn because(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Counts this as a failed attempt.
    pub fn counted(mut self) -> Self {
        self.count_attempt = true;
        self
    }

    /// Sets when the row is next due.
    pub fn due_at(mut self, at: DateTime<Utc>) -> Self {
        self.next_attempt_at = Some(at);
        self
    }
}

/// The update that applies `t` (without a row filter).
/// The guarded update that makes `t` of a row: filtered on the statuses that may become `t.to`;
/// the caller adds which rows.
fn transition_update<E: LayerTable>(t: &Transition, now: DateTime<Utc>) -> sea_orm::UpdateMany<E> {
    let mut update = E::update_many()
        .col_expr(E::STATUS, Expr::value(t.to.as_str()))
        .col_expr(E::UPDATED_AT, Expr::value(now))
        .col_expr(E::NEXT_ATTEMPT_AT, Expr::value(Value::ChronoDateTimeUtc(t.next_attempt_at)));
    if let Some(reason) = &t.reason {
        update = update.col_expr(E::LAST_ERROR, Expr::value(reason.clone()));
    }
    if t.count_attempt {
        update = update.col_expr(E::ATTEMPTS, Expr::col(E::ATTEMPTS).add(1i32));
    }
    update.filter(E::STATUS.is_in(Status::sources_of(t.to)))
}

/// Moves `ids` to `t.to`, touching only rows whose current status may legally become `t.to`.
/// Returns how many rows changed; the caller decides whether fewer than `ids.len()` is an
/// error (a claimed batch) or expected (a repeated receipt).
pub async fn transition<E: LayerTable, C: ConnectionTrait>(
    conn: &C,
    ids: &[Uuid],
    t: &Transition,
    now: DateTime<Utc>,
) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let update = transition_update::<E>(t, now).filter(E::ID.is_in(ids.iter().copied()));
    if t.to.is_given_up() {
        return Ok(given_up::<E, C>(conn, update.into_query(), t).await?.len() as u64);
    }
    let res = update.exec(conn).await?;
    Ok(res.rows_affected)
}

/// Runs a transition `update` to `rejected` or `dead`, returning the ids it changed and logging
/// each with its source ([`log_given_up`]). Only those transitions pay for the `RETURNING` of
/// the source (PostgreSQL, and SQLite since 3.35); the others run as before.
async fn given_up<E: LayerTable, C: ConnectionTrait>(
    conn: &C,
    mut update: sea_orm::sea_query::UpdateStatement,
    t: &Transition,
) -> Result<Vec<Uuid>> {
    update.returning(sea_orm::sea_query::Query::returning().columns([E::ID, E::SOURCE]));
    let mut ids = Vec::new();
    for row in conn.query_all(&update).await? {
        let id = row.try_get_by_index::<Uuid>(0)?;
        log_given_up(E::LAYER, id, &row.try_get_by_index::<String>(1)?, t.to, t.reason.as_deref());
        ids.push(id);
    }
    Ok(ids)
}

/// Logs at WARN a row that became `rejected` or `dead` (nothing for any other status): its
/// table, id, source and reason, so that an operator sees every message the hub gave up on
/// without querying the tables. Every way a row ends so goes through here: the guarded
/// updates ([`transition`], [`transition_leased`]) call it for the rows they changed, and the
/// few places that insert a row already rejected (a conflicting resend at ingest, a core
/// message breaking the contract at intake, a request that could not be built) call it for
/// the rows they wrote. Only the reason's field and rule are logged
/// ([`crate::reason_summary`]): its sentence may quote a payload value, which the audit desk
/// shows to those allowed to see it.
pub fn log_given_up(layer: Layer, id: Uuid, source: &str, status: Status, reason: Option<&str>) {
    if status.is_given_up() {
        let reason = reason.map(crate::reason_summary);
        tracing::warn!(
            table = layer.table(),
            layer = layer.number(),
            %id,
            source,
            %status,
            reason = reason.unwrap_or(""),
            "message {status} at layer {}",
            layer.number()
        );
    }
}

/// [`transition`] for rows the caller holds a claim on: all of them must change, or the
/// transaction is abandoned with [`Error::LostClaim`].
pub async fn transition_claimed<E: LayerTable, C: ConnectionTrait>(
    conn: &C,
    ids: &[Uuid],
    t: &Transition,
    now: DateTime<Utc>,
) -> Result<()> {
    let updated = transition::<E, C>(conn, ids, t, now).await?;
    if updated != ids.len() as u64 {
        return Err(Error::LostClaim { table: E::LAYER.table(), expected: ids.len() as u64, updated });
    }
    Ok(())
}

/// Every row of this table in the flow that started at `origin`, oldest first.
pub async fn by_origin<E: LayerTable, C: ConnectionTrait>(conn: &C, origin: Uuid) -> Result<Vec<E::Model>> {
    Ok(E::find().filter(E::ORIGIN_ID.eq(origin)).order_by_asc(E::ID).all(conn).await?)
}

/// How a row a stage could not carry on is left: `rejected` with the reason for bad input;
/// `failed` with a backoff for a passing failure, or `dead` once `max_attempts` is reached.
/// `attempts` is the row's count before this failure.
pub fn failure_transition(
    attempts: i32,
    failure: &crate::outcome::Failure,
    settings: &crate::stage::StageSettings,
    now: DateTime<Utc>,
) -> Transition {
    use crate::outcome::Failure;
    match failure {
        Failure::Rejected(r) => Transition::to(Status::Rejected).because(r.to_string()),
        Failure::Dropped { .. } => Transition::to(Status::Dropped).because(failure.to_string()),
        Failure::Transient(msg) if attempts + 1 >= settings.max_attempts => Transition::to(Status::Dead)
            .counted()
            .because(format!("{msg} (gave up after {} attempts)", attempts + 1)),
        Failure::Transient(msg) => Transition::to(Status::Failed)
            .counted()
            .because(msg.clone())
            .due_at(now + settings.backoff(attempts + 1)),
    }
}

/// Records that a stage could not carry a claimed row on (see [`failure_transition`]): the
/// row must change, or the transaction is abandoned with [`Error::LostClaim`]. Leased rows are
/// recorded by [`settle_leased`] instead.
pub async fn record_failure<E: LayerTable, C: ConnectionTrait>(
    conn: &C,
    id: Uuid,
    attempts: i32,
    failure: &crate::outcome::Failure,
    settings: &crate::stage::StageSettings,
    now: DateTime<Utc>,
) -> Result<Status> {
    let t = failure_transition(attempts, failure, settings, now);
    // Rejected and dead rows are logged at WARN by `transition`.
    if !t.to.is_given_up() {
        tracing::info!(table = E::LAYER.table(), %id, status = %t.to, reason = t.reason.as_deref().unwrap_or(""), "not forwarded");
    }
    transition_claimed::<E, C>(conn, &[id], &t, now).await?;
    Ok(t.to)
}

/// The origin id of row `id` in this table, if the row is here.
pub async fn origin_of<E: LayerTable, C: ConnectionTrait>(conn: &C, id: Uuid) -> Result<Option<Uuid>> {
    Ok(E::find()
        .select_only()
        .column(E::ORIGIN_ID)
        .filter(E::ID.eq(id))
        .into_tuple::<Uuid>()
        .one(conn)
        .await?)
}

/// Row counts per `(source, direction, status)` in this table.
pub async fn count_by_status<E: LayerTable, C: ConnectionTrait>(
    conn: &C,
) -> Result<Vec<(String, Direction, Status, i64)>> {
    let source_col = E::SOURCE;
    Ok(E::find()
        .select_only()
        .column(source_col)
        .column(E::DIRECTION)
        .column(E::STATUS)
        .column_as(Expr::col(E::ID).count(), "n")
        .group_by(source_col)
        .group_by(E::DIRECTION)
        .group_by(E::STATUS)
        .into_tuple::<(String, Direction, Status, i64)>()
        .all(conn)
        .await?)
}

/// Rows per bulk insert.
const INSERT_CHUNK: usize = 1000;

/// PostgreSQL's text form of `bytea` (`\x` and hex), for rows sent as JSON.
pub fn bytea_text<S: serde::Serializer>(bytes: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
    let mut out = String::with_capacity(2 + bytes.len() * 2);
    out.push_str("\\x");
    out.push_str(&hex::encode(bytes));
    s.serialize_str(&out)
}

/// [`bytea_text`] for a nullable column.
pub fn bytea_text_opt<S: serde::Serializer>(
    bytes: &Option<Vec<u8>>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match bytes {
        Some(b) => bytea_text(b, s),
        None => s.serialize_none(),
    }
}

/// The statement that inserts a JSON array of rows into `table` on PostgreSQL.
///
/// A multi-row `VALUES` list binds one parameter per column per row (8,500 for 500 rows of 17
/// columns) and PostgreSQL plans each row's expressions: in the benchmark that was most of the
/// database's time. One JSON parameter expanded by `json_populate_recordset` costs a fraction.
pub fn pg_json_insert(table: &str, rows_json: String, tail: &str) -> sea_orm::Statement {
    sea_orm::Statement::from_sql_and_values(
        sea_orm::DbBackend::Postgres,
        format!("INSERT INTO {table} SELECT * FROM json_populate_recordset(NULL::{table}, $1::json) {tail}"),
        [Value::from(rows_json)],
    )
}

/// Inserts whole rows of any table: JSON-expanded on PostgreSQL, multi-row `VALUES` on SQLite.
/// The model must serialize each column under its column name with the value PostgreSQL's JSON
/// input takes for it (bytes through [`bytea_text`]).
pub async fn insert_rows<E, C>(conn: &C, rows: Vec<E::Model>) -> Result<()>
where
    E: EntityTrait,
    C: ConnectionTrait,
    E::Model: serde::Serialize + sea_orm::IntoActiveModel<E::ActiveModel>,
{
    if rows.is_empty() {
        return Ok(());
    }
    if conn.get_database_backend() == sea_orm::DbBackend::Postgres {
        for chunk in rows.chunks(INSERT_CHUNK) {
            let json =
                serde_json::to_string(chunk).map_err(|e| Error::Internal(format!("row to JSON: {e}")))?;
            conn.execute_raw(pg_json_insert(E::default().table_name(), json, "")).await?;
        }
        return Ok(());
    }
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<E::ActiveModel> =
            rows.by_ref().take(INSERT_CHUNK / 2).map(sea_orm::IntoActiveModel::into_active_model).collect();
        E::insert_many(chunk).exec_without_returning(conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Failure, Rejection};

    /// A drop is final and names its rule; unlike a failure it is not an attempt, and unlike a
    /// rejection it is not `rejected`.
    #[test]
    fn a_drop_ends_the_row_dropped_naming_the_rule() {
        let settings = crate::stage::StageSettings::default();
        let now = Utc::now();
        let t = failure_transition(2, &Failure::Dropped { rule: "issues-not-opened".into() }, &settings, now);
        assert_eq!(t.to, Status::Dropped);
        assert_eq!(t.reason.as_deref(), Some("dropped by rule `issues-not-opened`"));
        assert_eq!((t.count_attempt, t.next_attempt_at), (false, None));
        let r = failure_transition(0, &Rejection::whole("json", "not JSON").into(), &settings, now);
        assert_eq!(r.to, Status::Rejected);
    }
}
