//! Queries that do not grow with the tables give the answers the old ones gave: the
//! `status_counts` summary against a `GROUP BY` over the tables (through every kind of status
//! change, a migration's backfill, and concurrent writers on PostgreSQL), the open-row probes
//! of `wait_settled`, and the lean lineage against the one that loaded whole rows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    Statement, TransactionTrait,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use hub_worker::{IngestMeta, summary};
use layer1_ingest::table::transition;
use layer1_ingest::{Direction, Status, Transition};
use layer2_normalize::entity as l2;
use layer4_dispatch::Receiver;
use layer4_dispatch::entity as l4;

use crate::on_both;
use crate::util::{Backend, Collect, TestDb, builder, payment};

type Key = (i32, String, String, String, String);

/// Every count the old way: a `GROUP BY` over each table, layer 4 per destination.
async fn scan<C: ConnectionTrait>(conn: &C) -> BTreeMap<Key, i64> {
    let sql = "SELECT 1 AS layer, source, direction, '' AS destination, status, count(*) AS n FROM layer1_raw \
               GROUP BY source, direction, status \
               UNION ALL SELECT 2, source, direction, '', status, count(*) FROM layer2_normalized \
               GROUP BY source, direction, status \
               UNION ALL SELECT 3, source, direction, '', status, count(*) FROM layer3_translated \
               GROUP BY source, direction, status \
               UNION ALL SELECT 4, source, direction, destination, status, count(*) FROM layer4_dispatch \
               GROUP BY source, direction, destination, status";
    let rows = conn
        .query_all_raw(Statement::from_string(conn.get_database_backend(), sql.to_owned()))
        .await
        .expect("group by");
    rows.iter()
        .map(|r| {
            let key: Key = (
                r.try_get::<i32>("", "layer").expect("layer"),
                r.try_get("", "source").expect("source"),
                r.try_get("", "direction").expect("direction"),
                r.try_get("", "destination").expect("destination"),
                r.try_get("", "status").expect("status"),
            );
            (key, r.try_get::<i64>("", "n").expect("n"))
        })
        .collect()
}

/// Every count from the summary.
async fn summarised<C: ConnectionTrait>(conn: &C) -> BTreeMap<Key, i64> {
    summary::read(conn)
        .await
        .expect("summary")
        .into_iter()
        .map(|r| {
            let key: Key = (
                i32::from(r.layer.number()),
                r.source,
                r.direction.to_string(),
                r.destination,
                r.status.as_str().to_owned(),
            );
            (key, r.count)
        })
        .collect()
}

/// The summary and the scan agree, and `counts` (folding first) agrees with `counts_by_scan`.
async fn assert_exact(db: &DatabaseConnection, when: &str) {
    assert_eq!(summarised(db).await, scan(db).await, "{when}: summary vs GROUP BY");
    let folded = hub_worker::counts(db).await.expect("counts");
    let mut scanned = hub_worker::counts_by_scan(db).await.expect("scan");
    scanned.sort_by(|a, b| {
        (a.layer, &a.source, a.status, a.direction.to_string()).cmp(&(
            b.layer,
            &b.source,
            b.status,
            b.direction.to_string(),
        ))
    });
    let mut folded = folded;
    folded.sort_by(|a, b| {
        (a.layer, &a.source, a.status, a.direction.to_string()).cmp(&(
            b.layer,
            &b.source,
            b.status,
            b.direction.to_string(),
        ))
    });
    assert_eq!(folded, scanned, "{when}: counts vs counts_by_scan");
    assert_eq!(summarised(db).await, scan(db).await, "{when}: after the fold");
}

fn l2_row(status: Status, source: &str, parent: Option<Uuid>) -> l2::ActiveModel {
    let id = Uuid::now_v7();
    let now = Utc::now();
    l2::ActiveModel {
        id: Set(id),
        direction: Set(Direction::Upstream),
        status: Set(status),
        attempts: Set(0),
        last_error: Set(None),
        next_attempt_at: Set(Some(now)),
        // A stage-made layer 2 row's parent is a layer 1 row (here a made-up id).
        parent_id: Set(Some(parent.unwrap_or_else(Uuid::now_v7))),
        origin_id: Set(id),
        source: Set(source.into()),
        source_ref: Set(None),
        record_kind: Set("payment".into()),
        record_index: Set(0),
        record: Set("{}".into()),
        schema_version: Set(None),
        replayed_by: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
}

async fn move_to<E: layer1_ingest::LayerTable>(db: &DatabaseConnection, ids: &[Uuid], to: Status) -> u64 {
    transition::<E, _>(db, ids, &Transition::to(to), Utc::now()).await.expect("transition")
}

/// Rows through every kind of change: inserts, batch and single transitions, a late receipt
/// taking a row out of `dead`, updates that change no status, deletes. The summary matches the
/// scan after each step.
async fn summary_follows_every_change(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let db = tdb.connect().await;
    assert_exact(&db, "empty").await;

    let mut ids = Vec::new();
    for i in 0..12 {
        let dest = if i % 3 == 0 { "core.ledger" } else { "core.payments" };
        let source = if i % 4 == 0 { "orders" } else { "payments" };
        ids.push(
            crate::util::l4_row(Status::JustIn, source, dest, None).insert(&db).await.expect("insert").id,
        );
    }
    let mut l2_ids = Vec::new();
    for _ in 0..5 {
        l2_ids.push(l2_row(Status::JustIn, "payments", None).insert(&db).await.expect("insert").id);
    }
    assert_exact(&db, "inserted").await;

    assert_eq!(move_to::<l4::Entity>(&db, &ids[..8], Status::Queued).await, 8);
    assert_eq!(move_to::<l4::Entity>(&db, &ids[8..10], Status::Failed).await, 2);
    assert_eq!(move_to::<l2::Entity>(&db, &l2_ids[..3], Status::Forwarded).await, 3);
    assert_eq!(move_to::<l2::Entity>(&db, &l2_ids[3..4], Status::Rejected).await, 1);
    assert_exact(&db, "first moves").await;

    // queued -> queued (a re-publish), failed -> failed (a retry): the status stays, nothing moves.
    assert_eq!(move_to::<l4::Entity>(&db, &ids[..2], Status::Queued).await, 2);
    assert_eq!(move_to::<l4::Entity>(&db, &ids[8..9], Status::Failed).await, 1);
    // An update of other columns only (a lease).
    db.execute_unprepared("UPDATE layer4_dispatch SET attempts = attempts + 1").await.expect("lease");
    assert_exact(&db, "updates without a status change").await;

    assert_eq!(move_to::<l4::Entity>(&db, &ids[..4], Status::Acknowledged).await, 4);
    assert_eq!(move_to::<l4::Entity>(&db, &ids[4..6], Status::Dead).await, 2);
    assert_eq!(move_to::<l4::Entity>(&db, &ids[6..7], Status::Rejected).await, 1);
    assert_exact(&db, "final").await;

    // A late receipt: dead -> acknowledged and dead -> rejected; a "final" count goes down.
    assert_eq!(move_to::<l4::Entity>(&db, &ids[4..5], Status::Acknowledged).await, 1);
    assert_eq!(move_to::<l4::Entity>(&db, &ids[5..6], Status::Rejected).await, 1);
    // An illegal edge moves nothing and counts nothing.
    assert_eq!(move_to::<l4::Entity>(&db, &ids[..1], Status::JustIn).await, 0);
    assert_exact(&db, "late receipts").await;

    // A change of the key's other columns moves the row between keys.
    db.execute_unprepared(&format!(
        "UPDATE layer4_dispatch SET destination = 'core.elsewhere' WHERE id = '{}'",
        ids[0]
    ))
    .await
    .expect("re-address");
    // A rolled-back change counts nothing.
    let txn = db.begin().await.expect("begin");
    transition::<l4::Entity, _>(&txn, &ids[8..10], &Transition::to(Status::Dead), Utc::now())
        .await
        .expect("transition");
    txn.rollback().await.expect("rollback");
    // Deletes subtract.
    l4::Entity::delete_many()
        .filter(sea_orm::ColumnTrait::is_in(&l4::Column::Id, ids[10..12].to_vec()))
        .exec(&db)
        .await
        .expect("delete");
    assert_exact(&db, "re-addressed, rolled back, deleted").await;

    if backend == Backend::Postgres {
        db.execute_unprepared("TRUNCATE layer2_normalized").await.expect("truncate");
        assert_exact(&db, "truncated").await;
    }
    drop(db);
    tdb.cleanup().await;
}

/// The migration counts the rows already there, and marks replay copies made before
/// `replayed_by` existed: rolled back and applied again over rows written meanwhile, the
/// summary matches the scan and the old copy is in the replay index's predicate.
async fn migration_counts_existing_rows(backend: Backend) {
    use migrations::MigratorTrait;
    let tdb = TestDb::new(backend).await;
    let db = tdb.connect().await;
    let first = crate::util::l4_row(Status::JustIn, "payments", "core.payments", None)
        .insert(&db)
        .await
        .expect("row")
        .id;
    // Back to before 000010 (000012, pulled sources, and 000011, downstream delivery, come off
    // first).
    migrations::Migrator::down(&db, Some(3)).await.expect("down");
    // Written with no triggers: only a count at migration time can know of them.
    move_to::<l4::Entity>(&db, &[first], Status::Queued).await;
    for s in [Status::Acknowledged, Status::Dead, Status::Dead] {
        crate::util::l4_row(s, "orders", "core.ledger", None).insert(&db).await.expect("row");
    }
    let parent = l2_row(Status::Forwarded, "payments", None).insert(&db).await.expect("row").id;
    let copy = l2_row(Status::JustIn, "payments", Some(parent)).insert(&db).await.expect("row").id;
    migrations::Migrator::up(&db, None).await.expect("up");
    assert_exact(&db, "after the migration").await;
    let copy = l2::Entity::find_by_id(copy).one(&db).await.expect("query").expect("copy");
    assert_eq!(copy.replayed_by.as_deref(), Some("unknown"));
    let parent = l2::Entity::find_by_id(parent).one(&db).await.expect("query").expect("parent");
    assert_eq!(parent.replayed_by, None, "the first row of its layer is not a copy");
    drop(db);
    tdb.cleanup().await;
}

/// `wait_settled`'s question through the partial indexes: every open status of every layer
/// answers yes, and only they.
async fn open_rows_are_found_by_their_indexes(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let db = tdb.connect().await;
    assert!(!summary::anything_open(&db).await.expect("probe"));
    let finals = [Status::Forwarded, Status::Acknowledged, Status::Rejected, Status::Dead];
    for s in finals {
        crate::util::l4_row(s, "payments", "core.payments", None).insert(&db).await.expect("row");
        l2_row(s, "payments", None).insert(&db).await.expect("row");
    }
    assert!(!summary::anything_open(&db).await.expect("probe"), "final rows only");
    for open in [Status::JustIn, Status::Failed, Status::Queued] {
        for key in [None, Some("k1")] {
            let id = crate::util::l4_row(open, "payments", "core.payments", key)
                .insert(&db)
                .await
                .expect("row")
                .id;
            assert!(summary::anything_open(&db).await.expect("probe"), "{open} key {key:?}");
            l4::Entity::delete_by_id(id).exec(&db).await.expect("delete");
        }
    }
    for open in [Status::JustIn, Status::Failed] {
        let id = l2_row(open, "payments", None).insert(&db).await.expect("row").id;
        assert!(summary::anything_open(&db).await.expect("probe"), "layer 2 {open}");
        move_to::<l2::Entity>(&db, &[id], Status::Forwarded).await;
        assert!(!summary::anything_open(&db).await.expect("probe"), "layer 2 forwarded");
    }
    drop(db);
    tdb.cleanup().await;
}

/// Through the whole pipeline, with replays: the lean lineage equals the one that loaded
/// whole rows, entry for entry, and the counts stay exact.
async fn lean_lineage_equals_full_rows(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let transport = Arc::new(layer4_dispatch::InProcessTransport::default());
    let hub = builder(&tdb.url, transport.clone()).build().await.expect("hub");
    hub.start();
    let core = Arc::new(Collect::default());
    let cancel = CancellationToken::new();
    tokio::spawn(Receiver::new(transport.clone(), "core.payments", core.clone()).run(cancel.clone()));
    let mut ids = Vec::new();
    for i in 0..5 {
        let body = payment(&format!("evt_lean_{i}"), "7.00", &format!("cus_{i}"));
        ids.push(hub.ingest("payments", &body, IngestMeta::default()).await.expect("ingest").id.uuid());
    }
    hub.ingest("payments", &payment("evt_lean_bad", "7,00", "cus_x"), IngestMeta::default())
        .await
        .expect("bad");
    assert!(hub.wait_settled(Duration::from_secs(30)).await.expect("settle"));
    for (id, layer) in [(ids[0], 1), (ids[1], 3), (ids[1], 4)] {
        hub_worker::audit::replay(hub.db(), id, layer, "test").await.expect("replay");
    }
    hub.wake();
    assert!(hub.wait_settled(Duration::from_secs(30)).await.expect("settle"));
    for id in &ids {
        let lean = hub_worker::lineage(hub.db(), *id).await.expect("lineage");
        let full = hub_worker::lineage::lineage_full_rows(hub.db(), *id).await.expect("full");
        assert!(lean.entries.len() >= 4);
        assert_eq!(
            serde_json::to_value(&lean).expect("json"),
            serde_json::to_value(&full).expect("json"),
            "lineage of {id}"
        );
    }
    assert_exact(hub.db(), "after the pipeline").await;
    cancel.cancel();
    hub.shutdown().await;
    tdb.cleanup().await;
}

on_both!(
    summary_follows_every_change,
    migration_counts_existing_rows,
    open_rows_are_found_by_their_indexes,
    lean_lineage_equals_full_rows,
);

/// A small deterministic generator (the suite has no `rand`).
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Several writers at once on PostgreSQL, all on the same few keys (so their deltas are for
/// the same counters), some of their transactions rolled back, folds running all the while:
/// at every moment, read in one snapshot, the summary equals the `GROUP BY`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn summary_is_exact_under_concurrent_writers() {
    let tdb = TestDb::new(Backend::Postgres).await;
    let db = tdb.connect().await;
    let stop = CancellationToken::new();
    let mut writers = Vec::new();
    for w in 0..6u64 {
        let db = db.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w + 1));
            let mut mine: Vec<Uuid> = Vec::new();
            let mut l2s: Vec<Uuid> = Vec::new();
            for _ in 0..120 {
                let txn = db.begin().await.expect("begin");
                for _ in 0..rng.next(4) {
                    let dest = ["core.payments", "core.ledger"][rng.next(2) as usize];
                    let source = ["payments", "orders"][rng.next(2) as usize];
                    let row = crate::util::l4_row(Status::JustIn, source, dest, None)
                        .insert(&txn)
                        .await
                        .expect("insert");
                    mine.push(row.id);
                }
                if rng.next(3) == 0 {
                    l2s.push(l2_row(Status::JustIn, "payments", None).insert(&txn).await.expect("insert").id);
                }
                // A batch of this writer's rows along one edge (the guard skips illegal ones).
                if !mine.is_empty() {
                    let to = [
                        Status::Queued,
                        Status::Failed,
                        Status::Acknowledged,
                        Status::Dead,
                        Status::Rejected,
                    ][rng.next(5) as usize];
                    let batch: Vec<Uuid> =
                        (0..1 + rng.next(6)).map(|_| mine[rng.next(mine.len() as u64) as usize]).collect();
                    let mut batch = batch;
                    batch.sort();
                    batch.dedup();
                    transition::<l4::Entity, _>(&txn, &batch, &Transition::to(to), Utc::now())
                        .await
                        .expect("transition");
                }
                if !l2s.is_empty() && rng.next(2) == 0 {
                    let id = l2s[rng.next(l2s.len() as u64) as usize];
                    let to = [Status::Forwarded, Status::Failed, Status::Dead][rng.next(3) as usize];
                    transition::<l2::Entity, _>(&txn, &[id], &Transition::to(to), Utc::now())
                        .await
                        .expect("transition");
                }
                if rng.next(10) == 0 {
                    txn.rollback().await.expect("rollback");
                } else {
                    txn.commit().await.expect("commit");
                }
            }
        }));
    }
    let folder = {
        let db = db.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut folds = 0u32;
            while !stop.is_cancelled() {
                summary::fold(&db).await.expect("fold");
                folds += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            folds
        })
    };
    let checker = {
        let db = db.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut checks = 0u32;
            while !stop.is_cancelled() {
                // One snapshot for both reads: the tables and the summary as of the same moment.
                let txn = db
                    .begin_with_config(
                        Some(sea_orm::IsolationLevel::RepeatableRead),
                        Some(sea_orm::AccessMode::ReadOnly),
                    )
                    .await
                    .expect("begin");
                let (s, g) = (summarised(&txn).await, scan(&txn).await);
                txn.commit().await.expect("commit");
                assert_eq!(s, g, "summary vs GROUP BY in one snapshot (check {checks})");
                checks += 1;
            }
            checks
        })
    };
    for w in writers {
        w.await.expect("writer");
    }
    stop.cancel();
    let folds = folder.await.expect("folder");
    let checks = checker.await.expect("checker");
    assert!(folds > 0 && checks > 0, "folds {folds}, checks {checks}");
    assert_exact(&db, "after the writers").await;
    let pending: i64 = db
        .query_one_raw(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT count(*) AS n FROM status_count_deltas".to_owned(),
        ))
        .await
        .expect("query")
        .expect("row")
        .try_get("", "n")
        .expect("n");
    assert_eq!(pending, 0, "a fold leaves no delta behind");
    drop(db);
    tdb.cleanup().await;
}
