//! `replayed_by`: who asked for a replay, on the rows a replay creates (the copies in layers 1
//! to 3): the admin API token's name, or `cli` for `hub-worker replay`. `NULL` on every row the
//! stages made in the ordinary course. Layer 4 gets no column: a replay never copies into it
//! (it re-routes from layer 3), and its rows are updated three times per message, so an unused
//! column would only cost.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Layer1Raw {
    Table,
}

#[derive(DeriveIden)]
enum Layer2Normalized {
    Table,
}

#[derive(DeriveIden)]
enum Layer3Translated {
    Table,
}

#[derive(DeriveIden)]
enum Replay {
    ReplayedBy,
}

fn tables() -> [DynIden; 3] {
    [Layer1Raw::Table.into_iden(), Layer2Normalized::Table.into_iden(), Layer3Translated::Table.into_iden()]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One statement per table: SQLite alters one column at a time.
        for t in tables() {
            m.alter_table(
                Table::alter()
                    .table(t)
                    .add_column(ColumnDef::new(Replay::ReplayedBy).text().null())
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in tables() {
            m.alter_table(Table::alter().table(t).drop_column(Replay::ReplayedBy).to_owned()).await?;
        }
        Ok(())
    }
}
