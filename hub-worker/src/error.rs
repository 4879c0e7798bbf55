//! The hub's error.

use uuid::Uuid;

/// Result with the hub's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the hub facade or the worker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// From the layers' shared machinery or the database.
    #[error(transparent)]
    Base(#[from] layer1_ingest::Error),
    /// From the database directly.
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
    /// From the transport.
    #[error(transparent)]
    Transport(#[from] layer4_dispatch::TransportError),
    /// Ingest for a source no integration serves.
    #[error("unknown source `{0}`: no integration is registered under that name")]
    UnknownSource(String),
    /// A source that is not pulled (its integration has no `[pull]`), asked to sync.
    #[error("source `{0}` is not a pulled source: no integration declares [pull] for it")]
    NotPulled(String),
    /// No row in any layer has this id.
    #[error("no message with id {0} in any layer")]
    NotFound(Uuid),
    /// No downstream message carries this `core-message-id` (the core app's own id).
    #[error(
        "no downstream message with core-message-id `{0}`: the hub has not taken in a core message with that id"
    )]
    UnknownCoreMessage(String),
    /// A request's parameters are unusable (the text names the parameter).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request conflicts with the message's state (replaying a message still moving).
    #[error("{0}")]
    Conflict(String),
    /// The configuration is unusable (the text names the key).
    #[error("configuration: {0}")]
    Config(String),
    /// The benchmark could not finish its run (the text says where it stopped).
    #[error("benchmark: {0}")]
    Benchmark(String),
    /// Told to stop before the hub was up (Ctrl-C while waiting for the database or the
    /// transport); the text says what was still missing.
    #[error("{0}")]
    Stopped(String),
}

impl Error {
    /// A short, stable name of the kind of error, for logs and metrics: a database that does
    /// not answer is `database`, never `configuration`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Base(e) => e.kind(),
            Error::Db(_) => "database",
            Error::Transport(_) => "transport",
            Error::UnknownSource(_) => "unknown-source",
            Error::NotFound(_) | Error::UnknownCoreMessage(_) | Error::NotPulled(_) => "not-found",
            Error::BadRequest(_) => "bad-request",
            Error::Conflict(_) => "conflict",
            Error::Config(_) => "configuration",
            Error::Stopped(_) => "stopped",
            Error::Benchmark(_) => "benchmark",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database that does not answer is logged as what it is (issue 9 item 5: it was
    /// "configuration").
    #[test]
    fn kinds_name_the_real_cause() {
        let db = Error::Base(layer1_ingest::Error::Db(sea_orm::DbErr::Custom("gone".into())));
        assert_eq!(db.kind(), "database");
        let commit = Error::Base(layer1_ingest::Error::OutcomeUnknown(sea_orm::DbErr::Custom("gone".into())));
        assert_eq!(commit.kind(), "database-outcome-unknown");
        assert!(commit.to_string().contains("outcome is unknown"), "{commit}");
        assert_eq!(Error::Config("x".into()).kind(), "configuration");
        // A benchmark that times out, and a row of the hub's own that does not serialize, are
        // neither configuration nor the caller's input (issue 10 item 11).
        assert_eq!(Error::Benchmark("timed out".into()).kind(), "benchmark");
        let internal = Error::Base(layer1_ingest::Error::Internal("row to JSON".into()));
        assert_eq!(internal.kind(), "internal");
        assert!(!layer1_ingest::Error::Internal(String::new()).is_transient());
    }
}
