//! Claims of `layer4_dispatch` that stay cheap however large a backlog grows.
//!
//! One claim index over every publishable row (`just_in`, `failed`, `queued`) mixed three kinds
//! of work: unordered rows, ordered rows (of which only each key's head may go), and `queued`
//! rows waiting for their receipt. After a broker outage the heads of the ordered keys had been
//! tried (their `next_attempt_at` pushed back) while the rows behind them had not, so the claim
//! walked the whole ordered backlog in `next_attempt_at` order, testing each row for an earlier
//! unconfirmed one, before it reached a head: hundreds of milliseconds per claim, one row per
//! key per claim. Now each kind has its own index:
//! - unordered rows to publish: `(next_attempt_at, id)` over `just_in`/`failed` without a key;
//! - rows waiting for a receipt: `(next_attempt_at, id)` over `queued`;
//! - ordered rows not yet confirmed, per key in layer 1 order:
//!   `(destination, ordering_key, origin_id, id)`, which gives each key's head with one index
//!   probe and lets the publisher skip from key to key without reading the rows behind a head.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Layer4Dispatch {
    Table,
    Status,
    NextAttemptAt,
    Id,
    Destination,
    OrderingKey,
    OriginId,
}

use Layer4Dispatch as D;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for ix in ["ix_layer4_dispatch_due", "ix_layer4_dispatch_ordering"] {
            m.drop_index(Index::drop().name(ix).table(D::Table).to_owned()).await?;
        }
        m.create_index(
            Index::create()
                .name("ix_layer4_dispatch_due_unordered")
                .table(D::Table)
                .col(D::NextAttemptAt)
                .col(D::Id)
                .and_where(Expr::col(D::Status).is_in(["just_in", "failed"]))
                .and_where(Expr::col(D::OrderingKey).is_null())
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_layer4_dispatch_ack_due")
                .table(D::Table)
                .col(D::NextAttemptAt)
                .col(D::Id)
                .and_where(Expr::col(D::Status).is_in(["queued"]))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_layer4_dispatch_key_queue")
                .table(D::Table)
                .col(D::Destination)
                .col(D::OrderingKey)
                .col(D::OriginId)
                .col(D::Id)
                .and_where(Expr::col(D::Status).is_in(["just_in", "failed"]))
                .and_where(Expr::col(D::OrderingKey).is_not_null())
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for ix in
            ["ix_layer4_dispatch_due_unordered", "ix_layer4_dispatch_ack_due", "ix_layer4_dispatch_key_queue"]
        {
            m.drop_index(Index::drop().name(ix).table(D::Table).to_owned()).await?;
        }
        m.create_index(
            Index::create()
                .name("ix_layer4_dispatch_due")
                .table(D::Table)
                .col(D::NextAttemptAt)
                .col(D::Id)
                .and_where(Expr::col(D::Status).is_in(["just_in", "failed", "queued"]))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_layer4_dispatch_ordering")
                .table(D::Table)
                .col(D::Destination)
                .col(D::OrderingKey)
                .col(D::Status)
                .and_where(Expr::col(D::OrderingKey).is_not_null())
                .to_owned(),
        )
        .await
    }
}
