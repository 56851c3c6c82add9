//! What can go wrong starting or advancing a saga.

use thiserror::Error;

/// An error of the txoutbox-saga crate. In every case nothing was committed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// PostgreSQL failed or refused a statement.
    #[error("database: {}", txoutbox::postgres::describe(.0))]
    Database(#[from] sqlx::Error),

    /// A command could not be written to the outbox.
    #[error(transparent)]
    Outbox(#[from] txoutbox::Error),

    /// The saga's data does not serialize, or no longer fits its type.
    #[error("saga data: {0}")]
    Data(#[source] serde_json::Error),

    /// A saga with this id already exists.
    #[error("a saga with id {0} already exists")]
    AlreadyStarted(String),

    /// No saga has this id.
    #[error("no saga with id {0}")]
    NotFound(String),

    /// A reply names a command its saga's definition does not have.
    #[error("saga {saga_id} ({saga_type} v{version}) has no command {command}")]
    UnknownCommand {
        /// The saga.
        saga_id: String,
        /// Its type.
        saga_type: String,
        /// Its definition's version.
        version: i32,
        /// The command the reply named.
        command: String,
    },

    /// A reply's step is not `{command}.reply.{attempt}`.
    #[error("not a saga reply: {0}")]
    NotAReply(String),

    /// An event's name is empty or longer than 255 bytes.
    #[error("not an event name: {0:?} (1 to 255 bytes)")]
    NotAnEvent(String),

    /// An event's payload cannot merge into a saga's data: not a JSON object (or
    /// null), or over [`MAX_EVENT_PAYLOAD`](crate::MAX_EVENT_PAYLOAD) bytes.
    #[error("{0}")]
    BadEventPayload(String),

    /// An event came as a message, and its saga refused it: none of its steps waits
    /// for it, or its payload does not fit the saga's data.
    #[error("{0}")]
    SignalRefused(String),

    /// Moving a saga panicked (a bug, or a payload builder of the definition that
    /// panics): that saga is `failed` with this reason, and the sweep goes on.
    #[error("moving it panicked: {0}")]
    SweepPanicked(String),

    /// The rules asked for a command the definition's step does not have (a bug: the
    /// saga's move fails with this rather than the orchestrator).
    #[error("saga type {saga_type}: step {step} has no {phase} command")]
    NoSuchCommand {
        /// The saga type.
        saga_type: String,
        /// The step.
        step: usize,
        /// `action`, `compensation` or `cancel`.
        phase: &'static str,
    },
}

impl Error {
    /// True when trying again can help: the database connection failed, not the saga.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database(error) => txoutbox::postgres::is_transient(error),
            Error::Outbox(error) => error.is_transient(),
            _ => false,
        }
    }

    /// The database's own error, when this is one.
    pub(crate) fn database(&self) -> Option<&sqlx::Error> {
        match self {
            Error::Database(error) | Error::Outbox(txoutbox::Error::Database(error)) => Some(error),
            _ => None,
        }
    }

    /// True when the saga itself is why its move failed, so that trying again
    /// cannot help: its data does not fit, a payload builder panicked, PostgreSQL
    /// refused the data it was to write (SQLSTATE class 22, a data exception, or 23,
    /// a violated constraint). Anything else the database says (a deadlock, a
    /// failover, a statement timeout, a missing migration) is not the saga's, and a
    /// saga must not be failed for it.
    pub(crate) fn is_the_sagas_own(&self) -> bool {
        match self {
            Error::Database(error) | Error::Outbox(txoutbox::Error::Database(error)) => {
                refused_the_data(error)
            }
            Error::Outbox(txoutbox::Error::Migrate(_)) => false,
            _ => true,
        }
    }
}

/// Whether PostgreSQL refused a statement for the data in it (SQLSTATE class 22 or 23).
fn refused_the_data(error: &sqlx::Error) -> bool {
    let code = error.as_database_error().and_then(|refusal| refusal.code());
    code.is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
}

/// Result of saga operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
