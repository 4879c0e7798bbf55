//! Every status edge against a real table: legal ones move the row, illegal ones are errors
//! and leave it untouched.

use chrono::Utc;
use sea_orm::{ActiveModelTrait, EntityTrait, TransactionTrait};
use uuid::Uuid;

use layer1_ingest::table::{transition, transition_claimed};
use layer1_ingest::{Error, Status, Transition};
use layer4_dispatch::entity as l4;

use crate::on_both;
use crate::util::{Backend, TestDb};

async fn l4_row(db: &sea_orm::DatabaseConnection, status: Status) -> Uuid {
    crate::util::l4_row(status, "payments", "core.payments", None).insert(db).await.expect("insert").id
}

async fn every_transition_is_enforced(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let db = tdb.connect().await;
    let mut legal = 0;
    for from in Status::ALL {
        for to in Status::ALL {
            let id = l4_row(&db, from).await;
            let t = Transition::to(to).because("test");
            let moved = transition::<l4::Entity, _>(&db, &[id], &t, Utc::now()).await.expect("update");
            let now = l4::Entity::find_by_id(id).one(&db).await.expect("query").expect("row").status;
            if from.can_become(to) {
                legal += 1;
                assert_eq!((moved, now), (1, to), "{from} -> {to} is legal");
                assert!(from.check_transition(to, id).is_ok());
            } else {
                assert_eq!((moved, now), (0, from), "{from} -> {to} is illegal and must not change the row");
                assert!(matches!(from.check_transition(to, id), Err(Error::IllegalTransition { .. })));
            }
        }
    }
    assert_eq!(legal, layer1_ingest::status::TRANSITIONS.len());

    // A claimed batch that cannot move in full is an error, and the stage's transaction rolls
    // back: no partial update survives.
    let ok = l4_row(&db, Status::JustIn).await;
    let done = l4_row(&db, Status::Acknowledged).await;
    let txn = db.begin().await.expect("begin");
    let err =
        transition_claimed::<l4::Entity, _>(&txn, &[ok, done], &Transition::to(Status::Queued), Utc::now())
            .await
            .expect_err("acknowledged -> queued is illegal");
    assert!(matches!(err, Error::LostClaim { expected: 2, updated: 1, .. }), "{err}");
    drop(txn);
    for (id, status) in [(ok, Status::JustIn), (done, Status::Acknowledged)] {
        let row = l4::Entity::find_by_id(id).one(&db).await.expect("query").expect("row");
        assert_eq!(row.status, status);
    }
    tdb.cleanup().await;
}

on_both!(every_transition_is_enforced);
