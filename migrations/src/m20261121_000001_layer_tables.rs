//! The four layer tables, their idempotency key and their claim and lineage indexes.
//!
//! Payload columns that hold JSON are `text`, not `jsonb`: the text is exactly what the
//! layer wrote, digit for digit, on PostgreSQL and SQLite alike (a JSON type would let the
//! engine or a driver re-render numbers).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Common {
    Id,
    Direction,
    Status,
    Attempts,
    LastError,
    NextAttemptAt,
    ParentId,
    OriginId,
    Source,
    SourceRef,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Layer1Raw {
    Table,
    DedupKey,
    Body,
    ContentType,
    Headers,
    BodySha256,
}

#[derive(DeriveIden)]
enum Layer2Normalized {
    Table,
    RecordKind,
    RecordIndex,
    Record,
    SchemaVersion,
}

#[derive(DeriveIden)]
enum Layer3Translated {
    Table,
    MessageType,
    TypeVersion,
    Body,
    MappingName,
    MappingVersion,
    Fidelity,
}

#[derive(DeriveIden)]
enum Layer4Dispatch {
    Table,
    Destination,
    MessageType,
    TypeVersion,
    Body,
    OrderingKey,
    QueuedAt,
    AcknowledgedAt,
}

/// The columns every layer has, in the order the entities declare them.
fn common(table: &mut TableCreateStatement) -> &mut TableCreateStatement {
    table
        .col(pk_uuid(Common::Id))
        .col(string_len(Common::Direction, 16))
        .col(string_len(Common::Status, 16))
        .col(integer(Common::Attempts).default(0))
        .col(text_null(Common::LastError))
        .col(timestamp_with_time_zone_null(Common::NextAttemptAt))
        .col(uuid_null(Common::ParentId))
        .col(uuid(Common::OriginId))
        .col(string_len(Common::Source, 128))
        .col(string_len_null(Common::SourceRef, 512))
}

fn timestamps(table: &mut TableCreateStatement) -> &mut TableCreateStatement {
    table.col(timestamp_with_time_zone(Common::CreatedAt)).col(timestamp_with_time_zone(Common::UpdatedAt))
}

/// Claim index `(status, next_attempt_at)` and lineage indexes `parent_id`, `origin_id`.
async fn shared_indexes(m: &SchemaManager<'_>, table: &str) -> Result<(), DbErr> {
    let t = Alias::new(table);
    m.create_index(
        Index::create()
            .name(format!("ix_{table}_claim"))
            .table(t.clone())
            .col(Common::Status)
            .col(Common::NextAttemptAt)
            .to_owned(),
    )
    .await?;
    for (suffix, col) in [("parent", Common::ParentId), ("origin", Common::OriginId)] {
        m.create_index(
            Index::create().name(format!("ix_{table}_{suffix}")).table(t.clone()).col(col).to_owned(),
        )
        .await?;
    }
    // Audit listing per source over time.
    m.create_index(
        Index::create()
            .name(format!("ix_{table}_source_created"))
            .table(t)
            .col(Common::Source)
            .col(Common::CreatedAt)
            .to_owned(),
    )
    .await
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let mut t = Table::create();
        t.table(Layer1Raw::Table).if_not_exists();
        common(&mut t)
            .col(string_len(Layer1Raw::DedupKey, 600))
            .col(blob(Layer1Raw::Body))
            .col(string_len(Layer1Raw::ContentType, 255))
            .col(text(Layer1Raw::Headers))
            .col(string_len(Layer1Raw::BodySha256, 64));
        timestamps(&mut t);
        m.create_table(t).await?;
        // The idempotency key: one row per (source, third-party id or body hash).
        m.create_index(
            Index::create()
                .name("ux_layer1_raw_source_dedup")
                .table(Layer1Raw::Table)
                .col(Common::Source)
                .col(Layer1Raw::DedupKey)
                .unique()
                .to_owned(),
        )
        .await?;
        shared_indexes(m, "layer1_raw").await?;

        let mut t = Table::create();
        t.table(Layer2Normalized::Table).if_not_exists();
        common(&mut t)
            .col(string_len(Layer2Normalized::RecordKind, 128))
            .col(integer(Layer2Normalized::RecordIndex))
            .col(text(Layer2Normalized::Record))
            .col(string_len_null(Layer2Normalized::SchemaVersion, 64));
        timestamps(&mut t);
        m.create_table(t).await?;
        shared_indexes(m, "layer2_normalized").await?;

        let mut t = Table::create();
        t.table(Layer3Translated::Table).if_not_exists();
        common(&mut t)
            .col(string_len(Layer3Translated::MessageType, 128))
            .col(string_len(Layer3Translated::TypeVersion, 32))
            .col(text(Layer3Translated::Body))
            .col(string_len(Layer3Translated::MappingName, 128))
            .col(string_len(Layer3Translated::MappingVersion, 64))
            .col(text(Layer3Translated::Fidelity));
        timestamps(&mut t);
        m.create_table(t).await?;
        shared_indexes(m, "layer3_translated").await?;

        let mut t = Table::create();
        t.table(Layer4Dispatch::Table).if_not_exists();
        common(&mut t)
            .col(string_len(Layer4Dispatch::Destination, 255))
            .col(string_len(Layer4Dispatch::MessageType, 128))
            .col(string_len(Layer4Dispatch::TypeVersion, 32))
            .col(text(Layer4Dispatch::Body))
            .col(string_len_null(Layer4Dispatch::OrderingKey, 255))
            .col(timestamp_with_time_zone_null(Layer4Dispatch::QueuedAt))
            .col(timestamp_with_time_zone_null(Layer4Dispatch::AcknowledgedAt));
        timestamps(&mut t);
        m.create_table(t).await?;
        shared_indexes(m, "layer4_dispatch").await?;
        // What an operator watches: per destination, queued and unacknowledged.
        m.create_index(
            Index::create()
                .name("ix_layer4_dispatch_destination_status")
                .table(Layer4Dispatch::Table)
                .col(Layer4Dispatch::Destination)
                .col(Common::Status)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in ["layer4_dispatch", "layer3_translated", "layer2_normalized", "layer1_raw"] {
            m.drop_table(Table::drop().table(Alias::new(table)).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
