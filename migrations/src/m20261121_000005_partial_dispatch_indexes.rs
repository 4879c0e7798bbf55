//! `layer4_dispatch` is updated three times per message (lease, queued, acknowledged), each
//! time writing every index again. Indexes that serve only some rows now hold only those rows:
//! - per-key ordering looks only at rows with an ordering key;
//! - intake idempotency looks only at downstream rows (`intake_key` set);
//! - `(destination, status)` goes: the operator's per-destination counts are an aggregate
//!   over the table, not a lookup (an index for them belongs with the stats endpoint, and
//!   then partial on the unacknowledged statuses).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Layer4Dispatch {
    Table,
    IntakeKey,
    Destination,
    OrderingKey,
    Status,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for ix in [
            "ix_layer4_dispatch_destination_status",
            "ix_layer4_dispatch_ordering",
            "ux_layer4_dispatch_intake_key",
        ] {
            m.drop_index(Index::drop().name(ix).table(Layer4Dispatch::Table).to_owned()).await?;
        }
        m.create_index(
            Index::create()
                .name("ix_layer4_dispatch_ordering")
                .table(Layer4Dispatch::Table)
                .col(Layer4Dispatch::Destination)
                .col(Layer4Dispatch::OrderingKey)
                .col(Layer4Dispatch::Status)
                .and_where(Expr::col(Layer4Dispatch::OrderingKey).is_not_null())
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_layer4_dispatch_intake_key")
                .table(Layer4Dispatch::Table)
                .col(Layer4Dispatch::IntakeKey)
                .unique()
                .and_where(Expr::col(Layer4Dispatch::IntakeKey).is_not_null())
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for ix in ["ix_layer4_dispatch_ordering", "ux_layer4_dispatch_intake_key"] {
            m.drop_index(Index::drop().name(ix).table(Layer4Dispatch::Table).to_owned()).await?;
        }
        m.create_index(
            Index::create()
                .name("ix_layer4_dispatch_destination_status")
                .table(Layer4Dispatch::Table)
                .col(Layer4Dispatch::Destination)
                .col(Layer4Dispatch::Status)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_layer4_dispatch_ordering")
                .table(Layer4Dispatch::Table)
                .col(Layer4Dispatch::Destination)
                .col(Layer4Dispatch::OrderingKey)
                .col(Layer4Dispatch::Status)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_layer4_dispatch_intake_key")
                .table(Layer4Dispatch::Table)
                .col(Layer4Dispatch::IntakeKey)
                .unique()
                .to_owned(),
        )
        .await
    }
}
