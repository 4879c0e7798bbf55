//! Counts per status without counting the tables, and "is anything still moving?" without
//! reading more than an index entry per question.
//!
//! The counts live in `status_counts`, kept by triggers (migration 000010, which explains
//! why): on PostgreSQL each writing statement appends its net change per key to
//! `status_count_deltas` and [`fold`] moves those into `status_counts`; on SQLite the triggers
//! update `status_counts` directly. [`read`] sums both tables in one statement, so it gives,
//! at its snapshot, exactly what a `GROUP BY` over the four layer tables would
//! ([`crate::hub::counts_by_scan`], kept to check that).

use sea_orm::{ConnectionTrait, DbBackend, Statement};

use layer1_ingest::{Direction, Layer, Status};

use crate::error::{Error, Result};

/// Rows of one layer, source, direction, destination (layer 4; empty in layers 1 to 3) and
/// status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRow {
    /// Layer.
    pub layer: Layer,
    /// Integration.
    pub source: String,
    /// Direction.
    pub direction: Direction,
    /// The layer 4 row's queue; empty for layers 1 to 3.
    pub destination: String,
    /// Status.
    pub status: Status,
    /// Rows.
    pub count: i64,
}

/// Any number below 2^63 that no other part of the hub uses as an advisory lock key.
const FOLD_LOCK: i64 = 0x0070_6f5f_666f_6c64; // "po_fold" in ASCII

/// Moves the pending deltas into `status_counts` (PostgreSQL; nothing to do on SQLite).
///
/// One statement, so one transaction: the deltas it deletes are exactly the ones it adds, and a
/// reader sees either both tables before or both after. One fold at a time: a fold that finds
/// another running skips (returns `false`) rather than waiting for it; the deltas it leaves are
/// still summed by every [`read`], so nothing is ever missing, only not yet folded.
pub async fn fold<C: ConnectionTrait>(conn: &C) -> Result<bool> {
    if conn.get_database_backend() != DbBackend::Postgres {
        return Ok(false);
    }
    // `go` is evaluated once, before the DELETE (a volatile function keeps the CTE from being
    // inlined); the advisory lock it takes ends with the statement's transaction.
    let sql = format!(
        "WITH go AS (SELECT pg_try_advisory_xact_lock({FOLD_LOCK}) AS ok), \
         d AS (DELETE FROM status_count_deltas WHERE (SELECT ok FROM go) \
               RETURNING layer, source, direction, destination, status, n), \
         s AS (SELECT layer, source, direction, destination, status, sum(n) AS n FROM d \
               GROUP BY layer, source, direction, destination, status) \
         INSERT INTO status_counts (layer, source, direction, destination, status, n) \
         SELECT layer, source, direction, destination, status, n FROM s \
         ON CONFLICT (layer, source, direction, destination, status) \
         DO UPDATE SET n = status_counts.n + excluded.n \
         RETURNING (SELECT ok FROM go) AS ok"
    );
    let rows = conn.query_all_raw(Statement::from_string(DbBackend::Postgres, sql)).await?;
    // No row: nothing was pending (or another fold had the lock); either way nothing to add.
    Ok(!rows.is_empty())
}

/// Every non-zero count, from the summary and the pending deltas, in one statement.
pub async fn read<C: ConnectionTrait>(conn: &C) -> Result<Vec<SummaryRow>> {
    let backend = conn.get_database_backend();
    let sql = "SELECT CAST(layer AS INTEGER) AS layer, source, direction, destination, status, \
               CAST(SUM(n) AS BIGINT) AS n \
               FROM (SELECT layer, source, direction, destination, status, n FROM status_counts \
                     UNION ALL \
                     SELECT layer, source, direction, destination, status, n FROM status_count_deltas) s \
               GROUP BY layer, source, direction, destination, status \
               HAVING SUM(n) <> 0";
    let rows = conn.query_all_raw(Statement::from_string(backend, sql)).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let layer: i32 = r.try_get("", "layer")?;
        let direction: String = r.try_get("", "direction")?;
        let status: String = r.try_get("", "status")?;
        // The values come from the layer tables, which hold only our own names; anything else
        // is a damaged summary, reported as such rather than counted somewhere wrong.
        let bad =
            |what: &str, v: &str| Error::Db(sea_orm::DbErr::Custom(format!("status_counts: {what} `{v}`")));
        out.push(SummaryRow {
            layer: match layer {
                1 => Layer::Raw,
                2 => Layer::Normalized,
                3 => Layer::Translated,
                4 => Layer::Dispatch,
                n => return Err(bad("layer", &n.to_string())),
            },
            source: r.try_get("", "source")?,
            direction: match direction.as_str() {
                "upstream" => Direction::Upstream,
                "downstream" => Direction::Downstream,
                _ => return Err(bad("direction", &direction)),
            },
            destination: r.try_get("", "destination")?,
            status: status.parse().map_err(|_| bad("status", &status))?,
            count: r.try_get("", "n")?,
        });
    }
    // `Direction` has no order: upstream first, as its declaration.
    out.sort_by(|a, b| {
        (a.layer, &a.source, a.direction != Direction::Upstream, &a.destination, a.status).cmp(&(
            b.layer,
            &b.source,
            b.direction != Direction::Upstream,
            &b.destination,
            b.status,
        ))
    });
    Ok(out)
}

/// The questions [`anything_open`] asks, one per partial claim index: each reads that index
/// in order and stops at its first entry, so it costs the same whatever the table holds. The
/// statuses are written as the indexes' predicates are (migrations 000003 and 000006); the
/// ordering makes the index the plan on either engine (no scan-and-sort can beat it).
///
/// Open statuses are `just_in`, `failed` and `queued`. `queued` occurs in layer 4 only: only
/// the publisher takes the edges to it, so layers 1 to 3 are asked about the other two.
const OPEN_PROBES: [&str; 5] = [
    "SELECT 1 FROM layer1_raw WHERE status IN ('just_in', 'failed') ORDER BY next_attempt_at, id LIMIT 1",
    "SELECT 1 FROM layer2_normalized WHERE status IN ('just_in', 'failed') ORDER BY next_attempt_at, id LIMIT 1",
    "SELECT 1 FROM layer3_translated WHERE status IN ('just_in', 'failed') ORDER BY next_attempt_at, id LIMIT 1",
    "SELECT 1 FROM layer4_dispatch WHERE status IN ('just_in', 'failed') AND ordering_key IS NULL \
     ORDER BY next_attempt_at, id LIMIT 1",
    "SELECT 1 FROM layer4_dispatch WHERE status IN ('just_in', 'failed') AND ordering_key IS NOT NULL \
     ORDER BY destination, ordering_key, origin_id, id LIMIT 1",
];

/// The probe for `queued` rows (layer 4's receipt index).
const QUEUED_PROBE: &str =
    "SELECT 1 FROM layer4_dispatch WHERE status = 'queued' ORDER BY next_attempt_at, id LIMIT 1";

/// The probe for delivery receipts not yet confirmed by the broker (migration 000011's
/// partial index): a downstream message is settled once the core app has its receipt.
const RECEIPT_PROBE: &str =
    "SELECT 1 FROM delivery_receipts WHERE sent_at IS NULL ORDER BY next_attempt_at, id LIMIT 1";

/// Whether any row of any layer is still open (`just_in`, `failed` or `queued`), or a delivery
/// receipt unsent: one statement of seven index probes, the first hit ending it (`COALESCE` evaluates its arguments in order
/// and stops at the first non-null).
pub async fn anything_open<C: ConnectionTrait>(conn: &C) -> Result<bool> {
    let backend = conn.get_database_backend();
    let probes: Vec<String> =
        OPEN_PROBES.iter().chain([&QUEUED_PROBE, &RECEIPT_PROBE]).map(|p| format!("({p})")).collect();
    let sql = format!("SELECT CAST(COALESCE({}, 0) AS INTEGER) AS open", probes.join(", "));
    let row = conn.query_one_raw(Statement::from_string(backend, sql)).await?;
    let open: i32 = match row {
        Some(r) => r.try_get("", "open")?,
        None => 0,
    };
    Ok(open != 0)
}
