use thiserror::Error;

/// What stops a relay or an admin command.
///
/// Inside [`Relay::run`](crate::Relay::run) broker and database errors are not
/// fatal: the relay reconnects and goes on. They reach the caller from the admin
/// functions, and from `run` only while starting up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting cannot work; nothing was started.
    #[error("relay configuration: {0}")]
    Config(#[from] crate::config::ConfigError),

    /// The AMQP URL (a node or a list of nodes) cannot work; nothing was started.
    #[error("relay AMQP URL: {0}")]
    AmqpUrl(#[from] txoutbox::nodes::InvalidNodes),

    /// PostgreSQL failed or refused a query.
    #[error("database: {}", txoutbox::postgres::describe(.0))]
    Database(#[from] sqlx::Error),

    /// The AMQP connection or channel failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),

    /// The broker connection was lost while the relay had nothing to publish.
    #[error("broker connection lost while the relay had nothing to publish: {0}")]
    BrokerLostWhileIdle(lapin::Error),

    /// The broker did not confirm a batch within the confirm timeout.
    #[error("the broker did not confirm a batch within {0:?}")]
    ConfirmTimeout(std::time::Duration),

    /// The broker did not complete the connection handshake in time.
    #[error("the broker did not accept the connection within {0:?}")]
    ConnectTimeout(std::time::Duration),

    /// The channel answered a publish without a confirm (confirm mode was lost).
    #[error("the broker answered a publish without confirming it")]
    Unconfirmed,

    /// Applying the migrations failed.
    #[error(transparent)]
    Outbox(#[from] txoutbox::Error),

    /// No dead outbox row has this id (`dead retry` of an unknown or live row).
    #[error("no dead outbox row with id {0}")]
    NotFound(uuid::Uuid),

    /// An operator's action was asked for without a reason; the audit needs one.
    /// Nothing was done.
    #[error("a reason is required: say why, for the audit")]
    NoReason,

    /// A dead letter cannot be sent back as asked; it stays in `{queue}.dead`.
    #[error(transparent)]
    DeadLetter(#[from] crate::dead_letters::Refusal),

    /// A task of the relay panicked: a bug in the relay, never a message's fault.
    #[error("a relay task panicked: {0}")]
    Panicked(String),
}

impl Error {
    /// The database's own error, when this is one.
    pub(crate) fn database(&self) -> Option<&sqlx::Error> {
        match self {
            Error::Database(error) | Error::Outbox(txoutbox::Error::Database(error)) => Some(error),
            _ => None,
        }
    }

    /// True when trying again later can help: a connection failed or timed out,
    /// rather than a query being wrong (say, the tables were never migrated).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database(error) => txoutbox::postgres::is_transient(error),
            Error::Broker(_)
            | Error::BrokerLostWhileIdle(_)
            | Error::ConfirmTimeout(_)
            | Error::ConnectTimeout(_)
            | Error::Unconfirmed => true,
            Error::Outbox(error) => error.is_transient(),
            Error::Config(_)
            | Error::AmqpUrl(_)
            | Error::NotFound(_)
            | Error::NoReason
            | Error::DeadLetter(_)
            | Error::Panicked(_) => false,
        }
    }
}

/// Result of relay operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
