//! Downstream intake and per-key ordering on `layer4_dispatch`:
//! - `intake_key`: the core app's message id (per target), unique, so intake is idempotent;
//!   `NULL` for upstream rows (NULLs do not collide in a unique index on either engine).
//! - `(destination, ordering_key, status)`: the publisher's "is an earlier message of this key
//!   still unconfirmed?" check.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

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
        m.alter_table(
            Table::alter()
                .table(Layer4Dispatch::Table)
                .add_column(string_len_null(Layer4Dispatch::IntakeKey, 600))
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
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for ix in ["ix_layer4_dispatch_ordering", "ux_layer4_dispatch_intake_key"] {
            m.drop_index(Index::drop().name(ix).table(Layer4Dispatch::Table).to_owned()).await?;
        }
        m.alter_table(
            Table::alter().table(Layer4Dispatch::Table).drop_column(Layer4Dispatch::IntakeKey).to_owned(),
        )
        .await
    }
}
