//! Downstream delivery (core app -> third party): what layer 1 needs to deliver a request and
//! keep the answer, and the outbox of delivery receipts to the core app.
//!
//! - `layer1_raw.ordering_key`, `layer1_raw.message_type`: a downstream delivery's per-key
//!   order and the core message type it carries (which picks the receipt's response fields).
//!   `NULL` on upstream rows.
//! - `delivery_attempts`: one row per HTTP attempt of a delivery: the request as sent (method,
//!   URL, headers with secrets redacted) and the answer (status, kept headers, the body up to
//!   the target's bound, as bytes), or the transport error. A delivery's `layer1_raw` row keeps
//!   the body sent and the status; its attempts say what happened each time.
//! - `delivery_receipts`: written in the transaction that makes a downstream message final
//!   (delivered, rejected at any layer, dead), published to the core app's queue afterwards,
//!   `sent_at` set once the broker confirmed. The outbox for receipts, as `layer4_dispatch` is
//!   for upstream messages.
//! - Partial indexes for the downstream claims, written with literal predicates so that the
//!   claims (which write the same predicates) can use them under a generic plan.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Layer1Raw {
    Table,
    OrderingKey,
    MessageType,
}

#[derive(DeriveIden)]
enum DeliveryAttempts {
    Table,
    Id,
    RawId,
    Attempt,
    Target,
    Method,
    Url,
    RequestHeaders,
    StartedAt,
    DurationMs,
    HttpStatus,
    ResponseHeaders,
    ResponseBody,
    ResponseTruncated,
    Verdict,
    Error,
}

#[derive(DeriveIden)]
enum DeliveryReceipts {
    Table,
    Id,
    DispatchId,
    RawId,
    CoreMessageId,
    Target,
    MessageType,
    ReceiptTo,
    Status,
    HttpStatus,
    Fields,
    Reason,
    CreatedAt,
    SentAt,
    Attempts,
    NextAttemptAt,
    LastError,
}

/// Partial indexes: (name, table, columns, predicate).
const INDEXES: &[(&str, &str, &str, &str)] = &[
    // Deliveries due, oldest first.
    (
        "ix_layer1_raw_deliver",
        "layer1_raw",
        "next_attempt_at, id",
        "direction = 'downstream' AND status IN ('just_in', 'failed')",
    ),
    // Per-key order: is an earlier delivery of this key still open?
    (
        "ix_layer1_raw_deliver_keys",
        "layer1_raw",
        "source, ordering_key, origin_id, id",
        "direction = 'downstream' AND ordering_key IS NOT NULL AND status IN ('just_in', 'failed')",
    ),
    // Core messages due for translation.
    (
        "ix_layer4_dispatch_outbound",
        "layer4_dispatch",
        "next_attempt_at, id",
        "direction = 'downstream' AND status IN ('just_in', 'failed')",
    ),
    // Lineage from the core app's own message id.
    ("ix_layer4_dispatch_core_id", "layer4_dispatch", "source_ref", "direction = 'downstream'"),
    // Receipts not yet confirmed by the broker.
    ("ix_delivery_receipts_unsent", "delivery_receipts", "next_attempt_at, id", "sent_at IS NULL"),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for col in [Layer1Raw::OrderingKey, Layer1Raw::MessageType] {
            let def = match col {
                Layer1Raw::OrderingKey => string_len_null(col, 512),
                _ => string_len_null(col, 128),
            };
            m.alter_table(Table::alter().table(Layer1Raw::Table).add_column(def).to_owned()).await?;
        }
        m.create_table(
            Table::create()
                .table(DeliveryAttempts::Table)
                .col(pk_uuid(DeliveryAttempts::Id))
                .col(uuid(DeliveryAttempts::RawId))
                .col(integer(DeliveryAttempts::Attempt))
                .col(string_len(DeliveryAttempts::Target, 128))
                .col(string_len(DeliveryAttempts::Method, 16))
                .col(text(DeliveryAttempts::Url))
                .col(text(DeliveryAttempts::RequestHeaders))
                .col(timestamp_with_time_zone(DeliveryAttempts::StartedAt))
                .col(integer(DeliveryAttempts::DurationMs))
                .col(integer_null(DeliveryAttempts::HttpStatus))
                .col(text_null(DeliveryAttempts::ResponseHeaders))
                .col(ColumnDef::new(DeliveryAttempts::ResponseBody).blob().null())
                .col(boolean(DeliveryAttempts::ResponseTruncated).default(false))
                .col(string_len(DeliveryAttempts::Verdict, 16))
                .col(text_null(DeliveryAttempts::Error))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_delivery_attempts_raw")
                .table(DeliveryAttempts::Table)
                .col(DeliveryAttempts::RawId)
                .col(DeliveryAttempts::Attempt)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(DeliveryReceipts::Table)
                .col(pk_uuid(DeliveryReceipts::Id))
                .col(uuid(DeliveryReceipts::DispatchId))
                .col(uuid_null(DeliveryReceipts::RawId))
                .col(string_len(DeliveryReceipts::CoreMessageId, 512))
                .col(string_len(DeliveryReceipts::Target, 128))
                .col(string_len(DeliveryReceipts::MessageType, 128))
                .col(string_len(DeliveryReceipts::ReceiptTo, 255))
                .col(string_len(DeliveryReceipts::Status, 16))
                .col(integer_null(DeliveryReceipts::HttpStatus))
                .col(text(DeliveryReceipts::Fields))
                .col(text_null(DeliveryReceipts::Reason))
                .col(timestamp_with_time_zone(DeliveryReceipts::CreatedAt))
                .col(timestamp_with_time_zone_null(DeliveryReceipts::SentAt))
                .col(integer(DeliveryReceipts::Attempts).default(0))
                .col(timestamp_with_time_zone_null(DeliveryReceipts::NextAttemptAt))
                .col(text_null(DeliveryReceipts::LastError))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_delivery_receipts_dispatch")
                .table(DeliveryReceipts::Table)
                .col(DeliveryReceipts::DispatchId)
                .to_owned(),
        )
        .await?;
        let db = m.get_connection();
        for (name, table, cols, pred) in INDEXES {
            db.execute_unprepared(&format!("CREATE INDEX {name} ON {table} ({cols}) WHERE {pred}")).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        for (name, table, _, _) in INDEXES {
            if *table == "delivery_receipts" {
                continue; // dropped with the table
            }
            db.execute_unprepared(&format!("DROP INDEX IF EXISTS {name}")).await?;
        }
        m.drop_table(Table::drop().table(DeliveryReceipts::Table).to_owned()).await?;
        m.drop_table(Table::drop().table(DeliveryAttempts::Table).to_owned()).await?;
        for col in [Layer1Raw::OrderingKey, Layer1Raw::MessageType] {
            m.alter_table(Table::alter().table(Layer1Raw::Table).drop_column(col).to_owned()).await?;
        }
        Ok(())
    }
}
