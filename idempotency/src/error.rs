use thiserror::Error;

use crate::config::InvalidConfig;
use crate::queue_type::QueueType;

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
    #[error("database: {}", txoutbox::postgres::describe(.0))]
    Database(#[from] sqlx::Error),
}

/// Why a [`Consumer`](crate::Consumer) did not start; it connected to nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StartError {
    /// The consumer's name, the first part of each of its inbox keys, is empty.
    #[error("consumer: the inbox name is empty; name the service or handler")]
    NoInboxName,

    /// A [`ConsumerConfig`](crate::ConsumerConfig) value cannot work.
    #[error(transparent)]
    Config(#[from] InvalidConfig),

    /// The AMQP URL (one node, or the nodes of a cluster separated by commas) cannot
    /// work; the message shows it with its password redacted.
    #[error("consumer AMQP URL: {0}")]
    AmqpUrl(#[from] txoutbox::nodes::InvalidNodes),
}

/// Why [`ConsumerConfig::declare`](crate::ConsumerConfig::declare) (and so a consumer
/// starting) could not declare the consumer's queues.
///
/// [`DeclareError::is_permanent`] tells the two kinds apart: the broker refused a
/// queue as declared (trying again changes nothing until the queue or the config
/// does), or the connection failed on the way (trying again may pass).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DeclareError {
    /// `queue` already exists as a queue of another type (`x-queue-type`), and a
    /// queue's type cannot change. Keep it with
    /// [`ConsumerConfig::queue_type`](crate::ConsumerConfig::queue_type), or move its
    /// messages to a queue of the new type (docs/operations/queue-types.md).
    ///
    /// `{queue}.dead` is declared first, and the type is its only argument, so a set
    /// of queues declared together with the other type (by an earlier release, or
    /// with the other `queue_type`) is reported here, by its `.dead`.
    #[error(
        "queue '{queue}' exists as a {existing} queue, but this consumer declares it as a \
         {declared} queue (ConsumerConfig::queue_type), and a queue's type cannot change: \
         declare it as it is, or move its messages to a queue of the new type \
         (docs/operations/queue-types.md)"
    )]
    TypeMismatch {
        /// The queue: the consumer's own, `{queue}.dead` or a retry queue.
        queue: String,
        /// The type the consumer asked for.
        declared: QueueType,
        /// The type the queue has, as the broker names it (`classic`, `quorum`,
        /// `stream`).
        existing: String,
    },
    /// The broker refused `queue` as declared (406 PRECONDITION_FAILED) for another
    /// reason, in `reason`: it exists with other arguments (a retry queue with
    /// another TTL; a queue declared by other code or changed by hand, perhaps of
    /// another type: RabbitMQ names the first argument that differs, and names the
    /// type only when nothing before it in its order does), or the broker does not
    /// support one (a quorum queue with a TTL before RabbitMQ 3.10).
    #[error(
        "the broker refused to declare queue '{queue}' as a {declared} queue: {reason} \
         (docs/operations/queue-types.md)"
    )]
    Refused {
        /// The queue the broker refused.
        queue: String,
        /// The type the consumer asked for.
        declared: QueueType,
        /// The broker's words.
        reason: String,
    },
    /// The connection or the channel failed on the way.
    #[error(transparent)]
    Broker(#[from] lapin::Error),
}

impl DeclareError {
    /// True when declaring again cannot pass until the queue on the broker or the
    /// consumer's config changes; false for a broken connection.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, DeclareError::Broker(_))
    }
}

/// What stops a consumer for good, from [`Consumer::run`](crate::Consumer::run) and
/// [`ConsumerHandle::shutdown`](crate::ConsumerHandle::shutdown).
///
/// Broker and database failures do not stop a consumer: it reconnects and goes on.
/// These do, because every reconnect would meet them again.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The config or the AMQP URL cannot work; nothing connected.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The broker refused the consumer's queues as declared (a permanent
    /// [`DeclareError`]: a queue of another type, other arguments). Logged once at
    /// error level when the consumer stops.
    #[error(transparent)]
    Declare(DeclareError),
}
