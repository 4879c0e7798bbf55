//! Opening the database the way the post office needs it.

use std::time::Duration;

use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend};

use crate::error::Result;

/// Connects to `url` (`postgres://...` or `sqlite://...`).
///
/// SQLite gets a single pooled connection: SQLite has no row locks, and two connections each
/// holding a deferred transaction fail with `SQLITE_BUSY` when both try to write. One connection
/// serialises the stages' short transactions instead, which is what "SQLite runs one worker"
/// means. It also keeps an in-memory database alive for the whole pool's life.
///
/// Ingest and the audit desk share that connection with the stages, and that is fine only
/// because nothing holds it for long: the stages run integration code between two short
/// transactions (`table::claim_leased`, `table::settle_leased`), never inside one, and the
/// publisher talks to the broker between its transactions too. So a slow integration does not
/// make `ingest` wait for the pool. A second pool just for ingest was considered and not taken:
/// ingest reads (its duplicate check) before it writes, and a deferred transaction that must
/// become a writer after another connection committed fails at once with `SQLITE_BUSY_SNAPSHOT`,
/// busy timeout or not, so ingest would fail under load instead of waiting milliseconds; and an
/// in-memory database cannot be shared between pools at all (each connection is its own).
pub async fn connect(url: &str) -> Result<DatabaseConnection> {
    let mut opts = ConnectOptions::new(url.to_owned());
    // Fail fast when the database is away: callers answer 503 or retry the batch later.
    opts.sqlx_logging(false).acquire_timeout(Duration::from_secs(5));
    if url.starts_with("sqlite:") {
        opts.max_connections(1)
            .min_connections(1)
            .idle_timeout(None::<Duration>)
            .max_lifetime(None::<Duration>)
            .map_sqlx_sqlite_opts(|o| {
                // WAL: readers (audit queries from another process) do not block the worker.
                // synchronous=NORMAL is durable across process crashes in WAL mode.
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .create_if_missing(true)
            });
    } else {
        opts.max_connections(16).min_connections(1);
    }
    Ok(Database::connect(opts).await?)
}

/// Whether the connection is SQLite (single worker) rather than PostgreSQL.
pub fn is_sqlite(db: &DatabaseConnection) -> bool {
    db.get_database_backend() == DbBackend::Sqlite
}
