//! Claim indexes that serve the claim query in order.
//!
//! The first claim index was `(status, next_attempt_at)`. A claim asks for several statuses
//! ordered by `next_attempt_at`, which that index cannot return in order: PostgreSQL read every
//! matching entry (dead versions included) and sorted, tens of thousands of tuples per claim
//! under load. A partial index on `(next_attempt_at, id)` over exactly the claimable statuses
//! is read in order and stops at the batch size; rows that become final leave it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Common {
    Status,
    NextAttemptAt,
    Id,
}

const TABLES: [(&str, &[&str]); 4] = [
    ("layer1_raw", &["just_in", "failed"]),
    ("layer2_normalized", &["just_in", "failed"]),
    ("layer3_translated", &["just_in", "failed"]),
    ("layer4_dispatch", &["just_in", "failed", "queued"]),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (table, statuses) in TABLES {
            m.drop_index(Index::drop().name(format!("ix_{table}_claim")).table(Alias::new(table)).to_owned())
                .await?;
            m.create_index(
                Index::create()
                    .name(format!("ix_{table}_due"))
                    .table(Alias::new(table))
                    .col(Common::NextAttemptAt)
                    .col(Common::Id)
                    .and_where(Expr::col(Common::Status).is_in(statuses.iter().copied()))
                    .to_owned(),
            )
            .await?;
            if m.get_database_backend() == sea_orm_migration::sea_orm::DbBackend::Postgres {
                // Every row is updated several times in its life: vacuum these tables early,
                // not after 20% of them are dead (PostgreSQL's default), so claims and the
                // claim indexes stay small.
                m.get_connection()
                    .execute_unprepared(&format!(
                        "ALTER TABLE {table} SET (autovacuum_vacuum_scale_factor = 0.01, \
                         autovacuum_vacuum_threshold = 1000, autovacuum_analyze_scale_factor = 0.02)"
                    ))
                    .await?;
            }
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (table, _) in TABLES {
            m.drop_index(Index::drop().name(format!("ix_{table}_due")).table(Alias::new(table)).to_owned())
                .await?;
            m.create_index(
                Index::create()
                    .name(format!("ix_{table}_claim"))
                    .table(Alias::new(table))
                    .col(Common::Status)
                    .col(Common::NextAttemptAt)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
