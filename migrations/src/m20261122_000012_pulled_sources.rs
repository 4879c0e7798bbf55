//! Pulled sources (issue 13): the sources the hub polls itself.
//!
//! - `pull_state`: one row per pulled source. The saved cursor (incremental runs start from
//!   it), the position of a listing not yet finished (a run stopped by a crash, a failure or
//!   its page bound continues from it), the lease that keeps a source's runs on one worker at
//!   a time, and running totals, so that stats and metrics read one row per source instead of
//!   adding up the run history. The position and the high-water mark are written in the same
//!   transaction as the layer 1 row of the page they follow.
//! - `sync_runs`: one row per run: trigger, worker, start, end, pages, records, bytes,
//!   requests, retries, outcome and error; its counters move with each page's transaction, so a
//!   run killed mid-way shows what it had committed.
//! - `pull_taken`: the records a source has taken, by key (primary key, with the cursor value
//!   in incremental modes), so that a record served twice (overlapping pages, an inclusive
//!   `updated_since`, a page fetched again) is stored once. Pruned as runs end: only the keys
//!   that can still come back are kept (see `layer1_ingest::pull`).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PullState {
    Table,
    Source,
    Cursor,
    Position,
    ListingHigh,
    LeaseOwner,
    LeaseUntil,
    Runs,
    RunsFailed,
    Pages,
    Records,
    Skipped,
    Bytes,
    LastRunId,
    LastOutcome,
    LastError,
    LastStartedAt,
    LastFinishedAt,
    LastSuccessAt,
    NextRunAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum SyncRuns {
    Table,
    Id,
    Source,
    Trigger,
    Mode,
    Worker,
    Resumed,
    StartedAt,
    HeartbeatAt,
    FinishedAt,
    Outcome,
    Pages,
    Records,
    Skipped,
    Bytes,
    Requests,
    Retries,
    CursorBefore,
    CursorAfter,
    Error,
}

#[derive(DeriveIden)]
enum PullTaken {
    Table,
    Source,
    RecordKey,
    Cursor,
    RunId,
    RawId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(PullState::Table)
                .col(string_len(PullState::Source, 128).primary_key())
                .col(text_null(PullState::Cursor))
                .col(text_null(PullState::Position))
                .col(text_null(PullState::ListingHigh))
                .col(string_len_null(PullState::LeaseOwner, 128))
                .col(timestamp_with_time_zone_null(PullState::LeaseUntil))
                .col(big_integer(PullState::Runs).default(0))
                .col(big_integer(PullState::RunsFailed).default(0))
                .col(big_integer(PullState::Pages).default(0))
                .col(big_integer(PullState::Records).default(0))
                .col(big_integer(PullState::Skipped).default(0))
                .col(big_integer(PullState::Bytes).default(0))
                .col(uuid_null(PullState::LastRunId))
                .col(string_len_null(PullState::LastOutcome, 16))
                .col(text_null(PullState::LastError))
                .col(timestamp_with_time_zone_null(PullState::LastStartedAt))
                .col(timestamp_with_time_zone_null(PullState::LastFinishedAt))
                .col(timestamp_with_time_zone_null(PullState::LastSuccessAt))
                .col(timestamp_with_time_zone_null(PullState::NextRunAt))
                .col(timestamp_with_time_zone(PullState::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(SyncRuns::Table)
                .col(pk_uuid(SyncRuns::Id))
                .col(string_len(SyncRuns::Source, 128))
                .col(string_len(SyncRuns::Trigger, 16))
                .col(string_len(SyncRuns::Mode, 32))
                .col(string_len(SyncRuns::Worker, 128))
                .col(boolean(SyncRuns::Resumed).default(false))
                .col(timestamp_with_time_zone(SyncRuns::StartedAt))
                .col(timestamp_with_time_zone(SyncRuns::HeartbeatAt))
                .col(timestamp_with_time_zone_null(SyncRuns::FinishedAt))
                .col(string_len(SyncRuns::Outcome, 16))
                .col(integer(SyncRuns::Pages).default(0))
                .col(big_integer(SyncRuns::Records).default(0))
                .col(big_integer(SyncRuns::Skipped).default(0))
                .col(big_integer(SyncRuns::Bytes).default(0))
                .col(integer(SyncRuns::Requests).default(0))
                .col(integer(SyncRuns::Retries).default(0))
                .col(text_null(SyncRuns::CursorBefore))
                .col(text_null(SyncRuns::CursorAfter))
                .col(text_null(SyncRuns::Error))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_sync_runs_source")
                .table(SyncRuns::Table)
                .col(SyncRuns::Source)
                .col(SyncRuns::Id)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(PullTaken::Table)
                .col(string_len(PullTaken::Source, 128))
                .col(string_len(PullTaken::RecordKey, 1100))
                .col(text_null(PullTaken::Cursor))
                .col(uuid(PullTaken::RunId))
                .col(uuid(PullTaken::RawId))
                .primary_key(Index::create().col(PullTaken::Source).col(PullTaken::RecordKey))
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(PullTaken::Table).to_owned()).await?;
        m.drop_table(Table::drop().table(SyncRuns::Table).to_owned()).await?;
        m.drop_table(Table::drop().table(PullState::Table).to_owned()).await?;
        Ok(())
    }
}
