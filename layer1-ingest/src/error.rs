//! The base error of the post office; the upper layers wrap it in their own.

use uuid::Uuid;

use crate::status::Status;

/// Result with the base error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in layer 1 or in the shared machinery.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database refused or could not be reached; a retry may help.
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
    /// The database got the COMMIT but no answer came back (the connection died): the rows may
    /// or may not be stored. Retrying is safe, because ingest is idempotent.
    #[error("database error at commit, the outcome is unknown: {0}")]
    OutcomeUnknown(sea_orm::DbErr),
    /// A status change that is not in the transition table.
    #[error("illegal status transition for message {id}: {from} -> {to}")]
    IllegalTransition {
        /// The row.
        id: Uuid,
        /// Its current status.
        from: Status,
        /// The status that was asked for.
        to: Status,
    },
    /// The caller gave something unusable (named in the text); a retry will not help.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A body larger than the configured bound.
    #[error("body of {size} bytes exceeds the limit of {limit} bytes for source `{source_name}`")]
    BodyTooLarge {
        /// The source it was sent to.
        source_name: String,
        /// Its size.
        size: usize,
        /// The bound.
        limit: usize,
    },
    /// A row expected by id is not there.
    #[error("no message with id {0}")]
    NotFound(Uuid),
    /// Something the hub wrote or read itself is not what it should be (a row that does not
    /// serialize, an id column that does not parse): a bug or a damaged database, never input.
    #[error("internal error: {0}")]
    Internal(String),
    /// A batch update touched fewer rows than it claimed: another writer got there first.
    #[error("lost the claim on {expected} rows of {table}: only {updated} updated")]
    LostClaim {
        /// The table.
        table: &'static str,
        /// Rows claimed.
        expected: u64,
        /// Rows updated.
        updated: u64,
    },
}

impl Error {
    /// Whether trying the same thing again later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Db(_) | Error::OutcomeUnknown(_) | Error::LostClaim { .. })
    }

    /// A short, stable name of the kind of error, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Db(_) => "database",
            Error::OutcomeUnknown(_) => "database-outcome-unknown",
            Error::IllegalTransition { .. } => "illegal-transition",
            Error::InvalidInput(_) => "invalid-input",
            Error::BodyTooLarge { .. } => "body-too-large",
            Error::NotFound(_) => "not-found",
            Error::LostClaim { .. } => "lost-claim",
            Error::Internal(_) => "internal",
        }
    }
}
