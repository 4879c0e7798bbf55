//! The fast path: when one process runs every stage, a batch of raw payloads is carried through
//! layers 2, 3 and 4 in one transaction. Every layer still gets its row, with its status and
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
use sea_orm::DatabaseConnection;
use tracing::instrument;

use layer1_ingest::entity as raw;
use layer1_ingest::table::{begin_claim, insert_rows, record_failure, transition_claimed};
use layer1_ingest::{Stage, StageSettings, Status, Transition};
use layer2_normalize::entity as l2;
use layer2_normalize::{Normalizers, normalize, record_row};
use layer3_translate::entity as l3;
use layer3_translate::{Translators, translate};
use layer4_dispatch::entity as l4;
use layer4_dispatch::{Router, dispatch_rows};

/// Claims `just_in` layer 1 rows and writes their layer 2, 3 and 4 rows in one transaction.
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

#[async_trait]
impl Stage for FusedStage {
    fn name(&self) -> &'static str {
        "normalize+translate+route"
    }

    #[instrument(skip_all, name = "fused_batch")]
    async fn run_batch(&self) -> layer1_ingest::Result<usize> {
        let Some((txn, rows, now)) = begin_claim::<raw::Entity>(&self.db, self.settings.batch_size).await?
        else {
            return Ok(0);
        };
        let (mut rows2, mut rows3, mut rows4) = (Vec::new(), Vec::new(), Vec::new());
        let mut forwarded = Vec::with_capacity(rows.len());
        for row in &rows {
            let records = match normalize(&self.normalizers, row).await {
                Ok(r) => r,
                Err(f) => {
                    record_failure::<raw::Entity, _>(&txn, row.id, row.attempts, &f, &self.settings, now)
                        .await?;
                    continue;
                }
            };
            let mut built2 = Vec::with_capacity(records.len());
            let mut failed = None;
            for (i, rec) in records.iter().enumerate() {
                match record_row(row, i, rec, now) {
                    Ok(m) => built2.push((m, rec)),
                    Err(f) => {
                        failed = Some(f);
                        break;
                    }
                }
            }
            if let Some(f) = failed {
                record_failure::<raw::Entity, _>(&txn, row.id, row.attempts, &f, &self.settings, now).await?;
                continue;
            }
            forwarded.push(row.id);
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
        }
        // Rows without an ordering key go straight to the publisher if it has room: written
        // leased, so nobody else publishes them unless the handoff is lost and the lease ends.
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
                r.next_attempt_at = Some(now + *lease);
                direct.push(r.clone());
            }
        }
        insert_rows::<l2::Entity, _>(&txn, rows2).await?;
        insert_rows::<l3::Entity, _>(&txn, rows3).await?;
        insert_rows::<l4::Entity, _>(&txn, rows4).await?;
        transition_claimed::<raw::Entity, _>(&txn, &forwarded, &Transition::to(Status::Forwarded), now)
            .await?;
        txn.commit().await?;
        if let Some((p, _)) = permit {
            p.send(direct);
        }
        Ok(rows.len())
    }
}
