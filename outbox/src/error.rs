use thiserror::Error;

/// Everything that can go wrong when writing to the outbox.
///
/// [`Error::InvalidMessage`] and [`Error::Payload`] are permanent: the message as
/// built will never be accepted, and nothing was written. [`Error::Database`] comes
/// from PostgreSQL; whether retrying helps depends on the cause (a lost connection
/// yes, a violated constraint no), which [`Error::is_transient`] tells.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The message breaks the outbox contract (an empty saga id, a routing key
    /// longer than AMQP allows, ...). Nothing was written.
    #[error("invalid outbox message: {field} {problem}")]
    InvalidMessage {
        /// The offending field, as named in the table contract.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },

    /// The payload could not be serialized to JSON. Nothing was written.
    #[error("outbox payload is not serializable to JSON: {0}")]
    Payload(#[source] serde_json::Error),

    /// PostgreSQL refused or failed the write.
    #[error("database: {}", crate::postgres::describe(.0))]
    Database(#[from] sqlx::Error),

    /// Applying the migrations failed.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl Error {
    /// True when the same call may succeed if tried again: the connection or the
    /// pool failed, not the message.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Database(error) if crate::postgres::is_transient(error))
    }
}

/// Result of outbox operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
