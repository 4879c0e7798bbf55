//! The fast path: when one process runs every stage, a batch of raw payloads is carried through
//! layers 2, 3 and 4 in one write transaction. The batch is claimed under a lease first, and the
//! integration code (normalizer, translators, router) runs with no transaction open. Every layer still gets its row, with its status and
//! lineage; the difference is that layer 2 and 3 rows are written already `forwarded` instead
//! of being written `just_in`, claimed again, and updated. That saves, per message, two claims,
//! two non-HOT updates and two commits.
//!
//! Anything that does not go straight through is left where the ordinary stage picks it up: a
//! record whose translation fails is written `just_in` in layer 2 (the translate stage then
//! retries or rejects it with the reason, exactly as without the fast path), a core message
//! that cannot be routed is written `just_in` in layer 3.

use std::sync::Arc;

use async_trait::async_trait;
use sea_orm::{DatabaseConnection, TransactionTrait};
use tracing::instrument;

use layer1_ingest::advance::within_lease;
use layer1_ingest::entity as raw;
use layer1_ingest::table::{claim_leased, insert_rows, settle_leased};
use layer1_ingest::{Failure, Stage, StageSettings, Status};
use layer2_normalize::entity as l2;
use layer2_normalize::{Normalizers, normalize, record_row};
use layer3_translate::entity as l3;
use layer3_translate::{Translators, translate};
use layer4_dispatch::entity as l4;
use layer4_dispatch::{Router, dispatch_rows};

/// Claims `just_in` layer 1 rows under a lease and writes their layer 2, 3 and 4 rows in one
/// transaction.
pub struct FusedStage {
    db: DatabaseConnection,
    normalizers: Arc<Normalizers>,
    translators: Arc<Translators>,
    router: Arc<dyn Router>,
    settings: StageSettings,
    handoff: Option<(tokio::sync::mpsc::Sender<Vec<l4::Model>>, chrono::Duration)>,
}

impl FusedStage {
    /// The fast path over these integrations.
    pub fn new(
        db: DatabaseConnection,
        normalizers: Arc<Normalizers>,
        translators: Arc<Translators>,
        router: Arc<dyn Router>,
        settings: StageSettings,
    ) -> Self {
        Self { db, normalizers, translators, router, settings, handoff: None }
    }

    /// Hands layer 4 rows without an ordering key straight to the publisher, written already
    /// leased for `lease` (see `layer4_dispatch::publish::handoff`).
    pub fn with_handoff(
        mut self,
        tx: tokio::sync::mpsc::Sender<Vec<l4::Model>>,
        lease: std::time::Duration,
    ) -> Self {
        self.handoff = Some((tx, chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX)));
        self
    }
}

fn finished<T>(mut m: T, set: impl FnOnce(&mut T)) -> T {
    set(&mut m);
    m
}

/// What one raw row becomes in layers 2, 3 and 4.
type Carried = (Vec<l2::Model>, Vec<l3::Model>, Vec<l4::Model>);

impl FusedStage {
    /// Carries one raw row as far as it goes: normalized (or the failure), each record
    /// translated and routed where it can be; a record that cannot is left `just_in` in its
    /// layer for that layer's stage, which retries it or says why.
    async fn carry(&self, row: &raw::Model, now: chrono::DateTime<chrono::Utc>) -> Result<Carried, Failure> {
        let records = normalize(&self.normalizers, row).await?;
        let built2 = records
            .iter()
            .enumerate()
            .map(|(i, rec)| record_row(row, i, rec, now).map(|m| (m, rec)))
            .collect::<Result<Vec<_>, _>>()?;
        let (mut rows2, mut rows3, mut rows4) = (Vec::new(), Vec::new(), Vec::new());
        for (m2, rec) in built2 {
            let Ok((m3, body)) = translate(&self.translators, &m2, &rec.data, now).await else {
                rows2.push(m2); // just_in: the translate stage says why, or retries.
                continue;
            };
            rows2.push(finished(m2, |m| {
                m.status = Status::Forwarded;
                m.next_attempt_at = None;
            }));
            match dispatch_rows(self.router.as_ref(), &m3, &body, now) {
                Ok(m4) => {
                    rows3.push(finished(m3, |m| {
                        m.status = Status::Forwarded;
                        m.next_attempt_at = None;
                    }));
                    rows4.extend(m4);
                }
                Err(_) => rows3.push(m3), // just_in: the route stage says why.
            }
        }
        Ok((rows2, rows3, rows4))
    }
}

#[async_trait]
impl Stage for FusedStage {
    fn name(&self) -> &'static str {
        "normalize+translate+route"
    }

    #[instrument(skip_all, name = "fused_batch")]
    async fn run_batch(&self) -> layer1_ingest::Result<usize> {
        let Some(lease) =
            claim_leased::<raw::Entity>(&self.db, self.settings.batch_size, self.settings.lease).await?
        else {
            return Ok(0);
        };
        let now = lease.now;
        // The integrations run with no transaction open and no connection held: however long
        // they take, ingest, the audit desk and the other stages do not wait for them. What
        // each raw row became is kept per row, so that only the rows still ours when we write
        // get their children.
        let mut built = Vec::with_capacity(lease.rows.len());
        let mut failed = Vec::new();
        let deadline = layer1_ingest::advance::compute_deadline(&lease);
        for row in &lease.rows {
            match within_lease(deadline, self.settings.lease, self.carry(row, now)).await {
                None => break, // out of lease: the rest are taken again when it ends
                Some(Ok((rows2, rows3, rows4))) => built.push((row.id, rows2, rows3, rows4)),
                Some(Err(f)) => failed.push((row.id, row.attempts, f)),
            }
        }
        let forwarded: Vec<_> = built.iter().map(|(id, ..)| *id).collect();
        let txn = self.db.begin().await?;
        let ours =
            settle_leased::<raw::Entity, _, _>(&txn, &lease, &forwarded, &failed, &self.settings).await?;
        let (mut rows2, mut rows3, mut rows4) = (Vec::new(), Vec::new(), Vec::new());
        for (id, r2, r3, r4) in built {
            if ours.contains(&id) {
                rows2.extend(r2);
                rows3.extend(r3);
                rows4.extend(r4);
            }
        }
        // Rows without an ordering key go straight to the publisher if it has room: written
        // leased, so nobody else publishes them unless the handoff is lost and the lease ends.
        // The publisher's lease starts now, not at the claim: the integrations took a while.
        let written_at = chrono::Utc::now();
        let permit = match &self.handoff {
            Some((tx, lease)) if rows4.iter().any(|r| r.ordering_key.is_none()) => {
                tx.try_reserve().ok().map(|p| (p, *lease))
            }
            _ => None,
        };
        let mut direct = Vec::new();
        if let Some((_, lease)) = &permit {
            for r in rows4.iter_mut().filter(|r| r.ordering_key.is_none()) {
                r.attempts = 1;
                r.next_attempt_at = Some(written_at + *lease);
                direct.push(r.clone());
            }
        }
        insert_rows::<l2::Entity, _>(&txn, rows2).await?;
        insert_rows::<l3::Entity, _>(&txn, rows3).await?;
        insert_rows::<l4::Entity, _>(&txn, rows4).await?;
        txn.commit().await?;
        if let Some((p, _)) = permit {
            p.send(direct);
        }
        Ok(lease.rows.len())
    }
}
