//! `layer4_dispatch.raw_body`: the bytes of a downstream message that cannot be kept as text.
//!
//! `body` is text (upstream bodies are JSON text, published as stored). A message the core app
//! sends whose body is not UTF-8, or holds a NUL (PostgreSQL text cannot hold one), would lose
//! bytes there; intake keeps such a body here, byte for byte, and leaves `body` empty. `NULL`
//! on every other row, so the outbox's hot rows carry nothing more (a `NULL` costs one bit).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Layer4Dispatch {
    Table,
    RawBody,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // `blob()`: `bytea` on PostgreSQL, `blob` on SQLite, as `layer1_raw.body`.
        m.alter_table(
            Table::alter()
                .table(Layer4Dispatch::Table)
                .add_column(ColumnDef::new(Layer4Dispatch::RawBody).blob().null())
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter().table(Layer4Dispatch::Table).drop_column(Layer4Dispatch::RawBody).to_owned(),
        )
        .await
    }
}
