use thiserror::Error;

use crate::config::InvalidConfig;

/// What can go wrong processing a message through the inbox. `E` is the handler's
/// own error type.
///
/// In every case nothing was committed: not the handler's effect, not the key. The
/// message can be delivered again. [`Error::InvalidKey`] and [`Error::Result`] will
/// fail again the same way (dead-letter the message); [`Error::Database`] may pass
/// on a later try; [`Error::Handler`] is for the handler's error to say.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error<E> {
    /// The message has no usable idempotency key (an empty saga_id or step).
    #[error("invalid inbox key: {0} must not be empty")]
    InvalidKey(&'static str),

    /// The handler failed; its transaction was rolled back.
    #[error("the handler failed: {0}")]
    Handler(E),

    /// The handler's result could not be stored as JSON.
    #[error("the handler's result is not serializable to JSON: {0}")]
    Result(#[source] serde_json::Error),

    /// PostgreSQL failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Why a [`Consumer`](crate::Consumer) did not start; it connected to nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StartError {
    /// A [`ConsumerConfig`](crate::ConsumerConfig) value cannot work.
    #[error(transparent)]
    Config(#[from] InvalidConfig),

    /// The AMQP URL (one node, or the nodes of a cluster separated by commas) cannot
    /// work; the message shows it with its password redacted.
    #[error("consumer AMQP URL: {0}")]
    AmqpUrl(#[from] outbox::nodes::InvalidNodes),
}
