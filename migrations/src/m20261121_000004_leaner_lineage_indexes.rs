//! Fewer indexes on the hot tables, same queries served.
//!
//! Every status change is a non-HOT update (the claim index covers `status` and
//! `next_attempt_at`), so each update writes a new entry into every index of the table. The
//! benchmark's PostgreSQL time was mostly that. So:
//! - lineage: one `(origin_id, parent_id)` index replaces `origin_id` and `parent_id` alone: a
//!   lineage query is by origin, and a row's children are found within its origin;
//! - `(source, created_at)` stays on `layer1_raw` only, where audit listings by source start.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Common {
    OriginId,
    ParentId,
    Source,
    CreatedAt,
}

const TABLES: [&str; 4] = ["layer1_raw", "layer2_normalized", "layer3_translated", "layer4_dispatch"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in TABLES {
            for ix in ["parent", "origin"] {
                m.drop_index(
                    Index::drop().name(format!("ix_{table}_{ix}")).table(Alias::new(table)).to_owned(),
                )
                .await?;
            }
            m.create_index(
                Index::create()
                    .name(format!("ix_{table}_lineage"))
                    .table(Alias::new(table))
                    .col(Common::OriginId)
                    .col(Common::ParentId)
                    .to_owned(),
            )
            .await?;
            if table != "layer1_raw" {
                m.drop_index(
                    Index::drop()
                        .name(format!("ix_{table}_source_created"))
                        .table(Alias::new(table))
                        .to_owned(),
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in TABLES {
            m.drop_index(
                Index::drop().name(format!("ix_{table}_lineage")).table(Alias::new(table)).to_owned(),
            )
            .await?;
            for (ix, col) in [("parent", Common::ParentId), ("origin", Common::OriginId)] {
                m.create_index(
                    Index::create()
                        .name(format!("ix_{table}_{ix}"))
                        .table(Alias::new(table))
                        .col(col)
                        .to_owned(),
                )
                .await?;
            }
            if table != "layer1_raw" {
                m.create_index(
                    Index::create()
                        .name(format!("ix_{table}_source_created"))
                        .table(Alias::new(table))
                        .col(Common::Source)
                        .col(Common::CreatedAt)
                        .to_owned(),
                )
                .await?;
            }
        }
        Ok(())
    }
}
