//! Layer 2's error.

/// Result with layer 2's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in layer 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the shared machinery or the database.
    #[error(transparent)]
    Base(#[from] layer1_ingest::Error),
    /// From the database directly.
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
    /// A record could not be stored as JSON text.
    #[error("record of message {id} could not be serialised: {reason}")]
    Serialize {
        /// The layer 1 id.
        id: uuid::Uuid,
        /// Why.
        reason: String,
    },
}

impl From<Error> for layer1_ingest::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Base(b) => b,
            Error::Db(d) => layer1_ingest::Error::Db(d),
            other => layer1_ingest::Error::InvalidInput(other.to_string()),
        }
    }
}
