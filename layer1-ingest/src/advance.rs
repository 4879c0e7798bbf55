//! One claim-and-advance stage for every layer that turns due rows of one table into rows of
//! the next (normalize: layer 1 -> 2, translate: 2 -> 3, route: 3 -> 4). A layer says only what
//! the children of one row are ([`Advance`]); [`AdvanceStage`] does the rest the same way for
//! all of them: claim a batch under a lease, run the layer's code with no transaction open and
//! no connection held (it may be integration code that calls a lookup service), then, in one
//! short transaction, move the rows that are still ours and insert their children, or record
//! each failure with its reason.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::{DatabaseConnection, EntityTrait, TransactionTrait};
use uuid::Uuid;

use crate::outcome::Failure;
use crate::stage::{Stage, StageSettings};
use crate::table::{
    LayerTable, Leased, attempts_of, claim_leased, id_of, insert_rows, relax_commit, settle_leased,
};
use crate::{Error, Result};

/// A table's row.
pub type Row<E> = <E as EntityTrait>::Model;

/// When a leased batch's integration code must have finished: nine tenths into the lease, so
/// that the write still happens while the rows are ours.
pub fn compute_deadline<M>(lease: &Leased<M>) -> tokio::time::Instant {
    let left = (lease.until - Utc::now()).to_std().unwrap_or_default();
    tokio::time::Instant::now() + left.mul_f64(0.9)
}

/// Runs one leased row's integration code (`work`) until `deadline`. `None` when the deadline
/// has already passed: the row is left untouched, to be claimed again when the lease ends
/// (it was never tried). A `work` that does not finish in time is a transient failure, with
/// the reason on record: an integration that hangs on a row has it retried with backoff and
/// then `dead`, instead of holding the stage, and every later claim of that row, forever.
pub async fn within_lease<T>(
    deadline: tokio::time::Instant,
    lease: std::time::Duration,
    work: impl std::future::Future<Output = Result<T, Failure>>,
) -> Option<Result<T, Failure>> {
    if tokio::time::Instant::now() >= deadline {
        return None;
    }
    Some(tokio::time::timeout_at(deadline, work).await.unwrap_or_else(|_| {
        Err(Failure::Transient(format!(
            "the integration did not finish within the stage lease ({} s); raise `stages.lease_secs` \
             if it is just slow",
            lease.as_secs_f64()
        )))
    }))
}

/// What one layer does with a row of the table below it.
#[async_trait]
pub trait Advance: Send + Sync + 'static {
    /// The table rows are claimed from.
    type From: LayerTable;
    /// The table their children go to.
    type To: LayerTable;

    /// The stage's name in logs and metrics (`normalize`, `translate`, `route`).
    fn name(&self) -> &'static str;

    /// Whether the children may be committed without waiting for the disk: only when the
    /// next stage's own commit is durable (see [`relax_commit`]); never for rows the publisher
    /// sends.
    fn relaxed_commit(&self) -> bool;

    /// The children of `row`, stamped `now`, or why there are none. Runs with no transaction
    /// open; the children are written only if the row is still leased by this worker.
    async fn children(
        &self,
        row: &Row<Self::From>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Row<Self::To>>, Failure>;
}

/// The stage that runs an [`Advance`] on batches.
pub struct AdvanceStage<A> {
    db: DatabaseConnection,
    advance: A,
    settings: StageSettings,
}

impl<A: Advance> AdvanceStage<A> {
    /// A stage over `db`.
    pub fn new(db: DatabaseConnection, advance: impl Into<A>, settings: StageSettings) -> Self {
        Self { db, advance: advance.into(), settings }
    }
}

#[async_trait]
impl<A> Stage for AdvanceStage<A>
where
    A: Advance,
    Row<A::From>: Send + Sync,
    Row<A::To>:
        Send + Sync + serde::Serialize + sea_orm::IntoActiveModel<<A::To as EntityTrait>::ActiveModel>,
    <A::To as EntityTrait>::ActiveModel: Send,
{
    fn name(&self) -> &'static str {
        self.advance.name()
    }

    #[tracing::instrument(skip_all, name = "batch", fields(stage = self.advance.name()))]
    async fn run_batch(&self) -> Result<usize> {
        let name = self.advance.name();
        let Some(lease) =
            claim_leased::<A::From>(&self.db, self.settings.batch_size, self.settings.lease).await?
        else {
            return Ok(0);
        };
        let mut children: Vec<(Uuid, Vec<Row<A::To>>)> = Vec::with_capacity(lease.rows.len());
        let mut failed = Vec::new();
        let deadline = compute_deadline(&lease);
        for row in &lease.rows {
            let (id, attempts) = (id_of::<A::From>(row)?, attempts_of::<A::From>(row)?);
            let work = self.advance.children(row, lease.now);
            match within_lease(deadline, self.settings.lease, work).await {
                None => break, // out of lease: the rest are taken again when it ends
                Some(Ok(c)) => children.push((id, c)),
                Some(Err(f)) => failed.push((id, attempts, f)),
            }
        }
        let forwarded: Vec<Uuid> = children.iter().map(|(id, _)| *id).collect();
        let txn = self.db.begin().await?;
        if self.advance.relaxed_commit() {
            relax_commit(&txn).await?;
        }
        let ours = settle_leased::<A::From, _, _>(&txn, &lease, &forwarded, &failed, &self.settings).await?;
        // Only the children of rows still ours: a row another worker took after our lease
        // ended gets its children from that worker.
        let rows: Vec<Row<A::To>> =
            children.into_iter().filter(|(id, _)| ours.contains(id)).flat_map(|(_, c)| c).collect();
        let written = rows.len();
        insert_rows::<A::To, _>(&txn, rows).await?;
        txn.commit().await.map_err(Error::from)?;
        tracing::debug!(stage = name, claimed = lease.rows.len(), written, "batch advanced");
        Ok(lease.rows.len())
    }
}
