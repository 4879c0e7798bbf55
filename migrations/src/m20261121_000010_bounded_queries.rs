//! Queries that stay the same size however large the (never purged) tables grow.
//!
//! **Replay's `parent_id` lookups.** A replay asks "has this row been replayed (or, in layer 1,
//! resent) already?", i.e. "has it a child in its own layer?", by `parent_id`. The lineage
//! index `(origin_id, parent_id)` cannot answer that without the origin, and a full `parent_id`
//! index would be written on every status update of every row (updates are not HOT: the claim
//! indexes cover `status`). Same-layer children are rare and recognisable, so a partial index
//! holds exactly them:
//! - `layer1_raw`: every row with a `parent_id` is a replay copy or a resend (stage-made rows
//!   of layer 1 have no parent): `(parent_id) WHERE parent_id IS NOT NULL`;
//! - `layer2_normalized`, `layer3_translated`: every row has a parent (the row of the layer
//!   below), but only replay copies carry `replayed_by`: `(parent_id) WHERE replayed_by IS NOT
//!   NULL`. Copies made before `replayed_by` existed (migration 000007) get `unknown`, so the
//!   predicate holds for every copy;
//! - `layer4_dispatch`: a replay never copies into it; no index.
//!
//! Rows outside a partial index's predicate are not written to it, so the status updates of
//! ordinary rows cost nothing more.
//!
//! **Counts per status.** `/metrics`, the audit stats and `Hub::counts` grouped whole tables
//! by `(source, direction, status)` on every call. Now `status_counts` holds those counts,
//! kept by triggers, so a scrape reads a few hundred rows at most:
//! - key `(layer, source, direction, destination, status)`; `destination` is the layer 4 row's
//!   queue and `''` in layers 1 to 3 (the per-destination stats come from the same table);
//! - every row's status change is counted, whatever its edge: a row may leave a "final"
//!   status (a late receipt moves `dead` to `acknowledged`), inserts add, deletes subtract;
//! - PostgreSQL: several workers update the same keys at once. An `UPDATE status_counts SET n =
//!   n + 1` from each transaction would serialise them on the counter rows (held until commit)
//!   and could deadlock two transactions touching keys in opposite orders. So each statement's
//!   trigger appends its net change per key to `status_count_deltas` (inserts never conflict),
//!   and a fold (`hub_worker::summary::fold`, one at a time under an advisory lock) moves them
//!   into `status_counts` with `DELETE ... RETURNING` and an upsert in one statement, so each
//!   delta is counted exactly once. A reader sums both tables in one statement: one snapshot,
//!   hence the same numbers as a `GROUP BY` over the tables at that snapshot. The triggers are
//!   per statement with transition tables: a batch of 500 rows costs one or two delta rows;
//! - SQLite has one writer at a time: its per-row triggers upsert `status_counts` directly and
//!   `status_count_deltas` stays empty (it exists so that one query reads both engines);
//! - the counts of the rows already there are taken under the triggers' table lock, in the
//!   migration's transaction: no write falls between the two.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum StatusCounts {
    Table,
    Layer,
    Source,
    Direction,
    Destination,
    Status,
    N,
}

#[derive(DeriveIden)]
enum StatusCountDeltas {
    Table,
}

#[derive(DeriveIden)]
enum Common {
    ParentId,
}

/// Each layer table, its number, and the `destination` it counts under.
const TABLES: [(&str, i32, &str); 4] = [
    ("layer1_raw", 1, "''"),
    ("layer2_normalized", 2, "''"),
    ("layer3_translated", 3, "''"),
    ("layer4_dispatch", 4, "destination"),
];

/// The tables a replay copies into, and the index of their same-layer children.
const REPLAY_INDEXES: [(&str, &str); 3] = [
    ("layer1_raw", "parent_id IS NOT NULL"),
    ("layer2_normalized", "replayed_by IS NOT NULL"),
    ("layer3_translated", "replayed_by IS NOT NULL"),
];

/// The summary's columns (both tables).
fn summary_columns(t: &mut TableCreateStatement) -> &mut TableCreateStatement {
    t.col(ColumnDef::new(StatusCounts::Layer).integer().not_null())
        .col(ColumnDef::new(StatusCounts::Source).string_len(128).not_null())
        .col(ColumnDef::new(StatusCounts::Direction).string_len(16).not_null())
        .col(ColumnDef::new(StatusCounts::Destination).string_len(255).not_null())
        .col(ColumnDef::new(StatusCounts::Status).string_len(16).not_null())
        .col(ColumnDef::new(StatusCounts::N).big_integer().not_null())
}

const KEY: &str = "layer, source, direction, destination, status";

/// PostgreSQL: one function per table (its layer number and destination written in), run
/// once per statement with the statement's old and new rows as transition tables.
fn pg_count_function(table: &str, layer: i32, dest: &str) -> String {
    format!(
        "CREATE FUNCTION po_count_{table}() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO status_count_deltas ({KEY}, n)
    SELECT {layer}, source, direction, d, status, count(*)
      FROM (SELECT source, direction, {dest} AS d, status FROM new_rows) r
     GROUP BY source, direction, d, status;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO status_count_deltas ({KEY}, n)
    SELECT {layer}, source, direction, d, status, -count(*)
      FROM (SELECT source, direction, {dest} AS d, status FROM old_rows) r
     GROUP BY source, direction, d, status;
  ELSE
    -- Net change per key: an update that changes no status (a lease, a retry time) adds none.
    INSERT INTO status_count_deltas ({KEY}, n)
    SELECT {layer}, source, direction, d, status, sum(n)
      FROM (SELECT source, direction, {dest} AS d, status, 1 AS n FROM new_rows
            UNION ALL
            SELECT source, direction, {dest}, status, -1 FROM old_rows) r
     GROUP BY source, direction, d, status
    HAVING sum(n) <> 0;
  END IF;
  RETURN NULL;
END
$f$"
    )
}

/// PostgreSQL: `TRUNCATE` fires no row or statement triggers of the other kinds; the layer's
/// counts go with it. Deltas first: a fold holding some of them is waited for, and its upsert
/// is then visible to the second statement.
fn pg_truncate_function(table: &str, layer: i32) -> String {
    format!(
        "CREATE FUNCTION po_count_truncate_{table}() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  DELETE FROM status_count_deltas WHERE layer = {layer};
  DELETE FROM status_counts WHERE layer = {layer};
  RETURN NULL;
END
$f$"
    )
}

fn pg_triggers(table: &str) -> [String; 4] {
    [
        format!(
            "CREATE TRIGGER tr_{table}_count_ins AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows \
             FOR EACH STATEMENT EXECUTE FUNCTION po_count_{table}()"
        ),
        format!(
            "CREATE TRIGGER tr_{table}_count_upd AFTER UPDATE ON {table} \
             REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows \
             FOR EACH STATEMENT EXECUTE FUNCTION po_count_{table}()"
        ),
        format!(
            "CREATE TRIGGER tr_{table}_count_del AFTER DELETE ON {table} REFERENCING OLD TABLE AS old_rows \
             FOR EACH STATEMENT EXECUTE FUNCTION po_count_{table}()"
        ),
        format!(
            "CREATE TRIGGER tr_{table}_count_truncate AFTER TRUNCATE ON {table} \
             FOR EACH STATEMENT EXECUTE FUNCTION po_count_truncate_{table}()"
        ),
    ]
}

/// SQLite: per-row triggers adding to the key's counter (one writer at a time: no contention).
fn sqlite_triggers(table: &str, layer: i32, dest: &str) -> [String; 3] {
    let at = |row: &str| if dest == "''" { "''".to_owned() } else { format!("{row}.{dest}") };
    let add = |row: &str, n: i32| {
        format!(
            "INSERT INTO status_counts ({KEY}, n) VALUES ({layer}, {row}.source, {row}.direction, {}, \
             {row}.status, {n}) ON CONFLICT ({KEY}) DO UPDATE SET n = n + excluded.n;",
            at(row)
        )
    };
    let (cols, changed) = if dest == "''" {
        ("status, source, direction", String::new())
    } else {
        ("status, source, direction, destination", " OR old.destination IS NOT new.destination".to_owned())
    };
    [
        format!("CREATE TRIGGER tr_{table}_count_ins AFTER INSERT ON {table} BEGIN {} END", add("new", 1)),
        format!(
            "CREATE TRIGGER tr_{table}_count_upd AFTER UPDATE OF {cols} ON {table} \
             WHEN old.status IS NOT new.status OR old.source IS NOT new.source \
             OR old.direction IS NOT new.direction{changed} BEGIN {} {} END",
            add("old", -1),
            add("new", 1)
        ),
        format!("CREATE TRIGGER tr_{table}_count_del AFTER DELETE ON {table} BEGIN {} END", add("old", -1)),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// One transaction on both engines: the triggers and the first counts go in together.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        let pg = m.get_database_backend() == DbBackend::Postgres;

        // Replay: copies made before `replayed_by` existed are marked, then indexed.
        for (table, _) in &REPLAY_INDEXES[1..] {
            db.execute_unprepared(&format!(
                "UPDATE {table} SET replayed_by = 'unknown' WHERE replayed_by IS NULL \
                 AND parent_id IN (SELECT id FROM {table})"
            ))
            .await?;
        }
        for (table, predicate) in REPLAY_INDEXES {
            m.create_index(
                Index::create()
                    .name(format!("ix_{table}_successors"))
                    .table(Alias::new(table))
                    .col(Common::ParentId)
                    .and_where(Expr::cust(predicate))
                    .to_owned(),
            )
            .await?;
        }

        // The summary.
        let mut t = Table::create();
        t.table(StatusCounts::Table);
        summary_columns(&mut t).primary_key(
            Index::create()
                .col(StatusCounts::Layer)
                .col(StatusCounts::Source)
                .col(StatusCounts::Direction)
                .col(StatusCounts::Destination)
                .col(StatusCounts::Status),
        );
        m.create_table(t).await?;
        let mut t = Table::create();
        t.table(StatusCountDeltas::Table);
        summary_columns(&mut t);
        m.create_table(t).await?;
        if pg {
            // Rows come and go with every fold: vacuum early so the table stays a few pages.
            db.execute_unprepared(
                "ALTER TABLE status_count_deltas SET (autovacuum_vacuum_scale_factor = 0, \
                 autovacuum_vacuum_threshold = 1000)",
            )
            .await?;
        }
        for (table, layer, dest) in TABLES {
            if pg {
                // Writers wait from here to the migration's commit (CREATE TRIGGER would take
                // this lock too; taking it first says so): the counts below are exact.
                db.execute_unprepared(&format!("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")).await?;
                db.execute_unprepared(&pg_count_function(table, layer, dest)).await?;
                db.execute_unprepared(&pg_truncate_function(table, layer)).await?;
                for sql in pg_triggers(table) {
                    db.execute_unprepared(&sql).await?;
                }
            } else {
                for sql in sqlite_triggers(table, layer, dest) {
                    db.execute_unprepared(&sql).await?;
                }
            }
            db.execute_unprepared(&format!(
                "INSERT INTO status_counts ({KEY}, n) \
                 SELECT {layer}, source, direction, d, status, count(*) \
                 FROM (SELECT source, direction, {dest} AS d, status FROM {table}) r \
                 GROUP BY source, direction, d, status"
            ))
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        let pg = m.get_database_backend() == DbBackend::Postgres;
        for (table, _, _) in TABLES {
            for kind in ["ins", "upd", "del", "truncate"] {
                if pg {
                    db.execute_unprepared(&format!(
                        "DROP TRIGGER IF EXISTS tr_{table}_count_{kind} ON {table}"
                    ))
                    .await?;
                } else if kind != "truncate" {
                    db.execute_unprepared(&format!("DROP TRIGGER IF EXISTS tr_{table}_count_{kind}")).await?;
                }
            }
            if pg {
                db.execute_unprepared(&format!("DROP FUNCTION IF EXISTS po_count_{table}()")).await?;
                db.execute_unprepared(&format!("DROP FUNCTION IF EXISTS po_count_truncate_{table}()"))
                    .await?;
            }
        }
        m.drop_table(Table::drop().table(StatusCountDeltas::Table).to_owned()).await?;
        m.drop_table(Table::drop().table(StatusCounts::Table).to_owned()).await?;
        // The `unknown` marks of old copies stay: they are true.
        for (table, _) in REPLAY_INDEXES {
            m.drop_index(
                Index::drop().name(format!("ix_{table}_successors")).table(Alias::new(table)).to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
