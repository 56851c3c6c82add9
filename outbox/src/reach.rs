//! "Can this PostgreSQL be used, and if not, why?", answered at once and in words an
//! operator acts on: the server (host, port, database, user; never the password) and
//! the cause the network or PostgreSQL gave. A pool only says that it timed out
//! waiting for a connection, ten seconds later, whatever the cause.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, PgPool};

/// Why a PostgreSQL server cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unreachable {
    /// `host:port/database as user`.
    pub server: String,
    /// What went wrong, in the network's or PostgreSQL's words.
    pub cause: Cause,
}

/// What went wrong, by what a caller does about it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// Nothing listens there (the server is down, or the port is wrong).
    Refused,
    /// The host name does not resolve.
    UnknownHost(String),
    /// No answer within the time given (a firewall, a hung server, a proxy that
    /// accepts and never answers).
    NoAnswer(Duration),
    /// The server refused the user or its password (SQLSTATE class 28).
    Authentication(String),
    /// The database named does not exist (3D000).
    NoDatabase(String),
    /// The server takes no writes: a standby not promoted (yet), or
    /// `default_transaction_read_only` set.
    ReadOnly,
    /// Anything else, in its own words.
    Other(String),
}

impl Cause {
    /// True when trying again unchanged cannot help: the configuration is wrong.
    pub fn is_final(&self) -> bool {
        matches!(self, Cause::Authentication(_) | Cause::NoDatabase(_))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Refused => {
                f.write_str("connection refused: is PostgreSQL running, on this host and port?")
            }
            Cause::UnknownHost(why) => write!(f, "unknown host ({why})"),
            Cause::NoAnswer(within) => write!(f, "no answer within {within:?}"),
            Cause::Authentication(why) => write!(f, "authentication failed: {why}"),
            Cause::NoDatabase(why) => write!(f, "{why}"),
            Cause::ReadOnly => f.write_str(
                "the server is read-only (transaction_read_only = on): a standby not promoted, \
                 or default_transaction_read_only is set",
            ),
            Cause::Other(why) => f.write_str(why),
        }
    }
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgreSQL at {}: {}", self.server, self.cause)
    }
}

impl std::error::Error for Unreachable {}

/// `host:port/database as user`: where `options` point, without the password.
pub fn server_of(options: &PgConnectOptions) -> String {
    let database = options.get_database().unwrap_or(options.get_username());
    format!(
        "{}:{}/{} as {}",
        options.get_host(),
        options.get_port(),
        database,
        options.get_username()
    )
}

/// Opens one connection with `options` and asks whether the server takes writes
/// (when `writes` is set); the first thing that fails, named. Waits at most `within`.
pub async fn reach(
    options: &PgConnectOptions,
    writes: bool,
    within: Duration,
) -> Result<(), Unreachable> {
    let unreachable = |cause| Unreachable {
        server: server_of(options),
        cause,
    };
    let quiet = options.clone().disable_statement_logging();
    let attempt = async {
        let mut connection = PgConnection::connect_with(&quiet)
            .await
            .map_err(|e| cause_of(&e))?;
        if writes {
            let read_only: String = sqlx::query_scalar("SHOW transaction_read_only")
                .fetch_one(&mut connection)
                .await
                .map_err(|e| cause_of(&e))?;
            if read_only == "on" {
                return Err(Cause::ReadOnly);
            }
        }
        let _ = connection.close().await;
        Ok(())
    };
    match tokio::time::timeout(within, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(cause)) => Err(unreachable(cause)),
        Err(_) => Err(unreachable(Cause::NoAnswer(within))),
    }
}

/// How long [`explain`] waits for its one connection.
const EXPLAIN_WITHIN: Duration = Duration::from_secs(5);

/// Why `pool`'s server cannot be used, when `error` says only that it could not be
/// reached or went away (a pool that timed out, a broken connection, a server
/// shutting down or read-only): one connection is opened to find the cause
/// [`reach`] names. `None` when the error is about a statement, or when the server
/// answers now (the error was a moment's).
///
/// A running relay, consumer or orchestrator logs this in place of "pool timed out
/// while waiting for an open connection", which is all a pool knows.
pub async fn explain(pool: &PgPool, error: &sqlx::Error) -> Option<Unreachable> {
    if !crate::postgres::is_transient(error) {
        return None;
    }
    reach(&pool.connect_options(), true, EXPLAIN_WITHIN)
        .await
        .err()
}

/// How long an [`Explainer`] stays quiet after it has named a cause.
pub const EXPLAIN_EVERY: Duration = Duration::from_secs(10);

/// [`explain`] for one running part (a relay, a consumer, an orchestrator), at most
/// once every [`EXPLAIN_EVERY`] while the server stays unusable: during an outage
/// every batch, heartbeat and sweep fails, and each would open a connection of its
/// own to find the same cause and log it again.
#[derive(Debug, Default)]
pub struct Explainer {
    /// When a cause was last named, or is being looked for.
    named_at: Mutex<Option<Instant>>,
}

impl Explainer {
    /// One that has named nothing yet: its first [`Explainer::explain`] looks at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// [`explain`], or `None` without a connection when a cause was named less than
    /// [`EXPLAIN_EVERY`] ago (or another caller is looking for it now).
    pub async fn explain(&self, pool: &PgPool, error: &sqlx::Error) -> Option<Unreachable> {
        if !crate::postgres::is_transient(error) {
            return None;
        }
        let before = {
            let mut named_at = self.named_at.lock().expect("never poisoned");
            let before = *named_at;
            if before.is_some_and(|at| at.elapsed() < EXPLAIN_EVERY) {
                return None;
            }
            *named_at = Some(Instant::now());
            before
        };
        let unreachable = explain(pool, error).await;
        if unreachable.is_none() {
            // Nothing named: the next failure may look again at once.
            *self.named_at.lock().expect("never poisoned") = before;
        }
        unreachable
    }
}

/// The cause a connection attempt failed with.
fn cause_of(error: &sqlx::Error) -> Cause {
    if let Some(refusal) = error.as_database_error() {
        let code = refusal.code().unwrap_or_default();
        let words = refusal.message().to_owned();
        return match code.as_ref() {
            c if c.starts_with("28") => Cause::Authentication(words),
            "3D000" => Cause::NoDatabase(words),
            "25006" => Cause::ReadOnly,
            _ => Cause::Other(crate::postgres::describe(error)),
        };
    }
    match error {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => Cause::Refused,
        sqlx::Error::Io(io) if io.to_string().contains("lookup") => {
            Cause::UnknownHost(io.to_string())
        }
        other => Cause::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_is_named_without_its_password() {
        let options: PgConnectOptions = "postgres://app:secret@db.example:6432/orders"
            .parse()
            .unwrap();
        assert_eq!(server_of(&options), "db.example:6432/orders as app");
    }

    #[test]
    fn only_a_wrong_configuration_is_final() {
        assert!(Cause::Authentication("x".into()).is_final());
        assert!(Cause::NoDatabase("x".into()).is_final());
        assert!(!Cause::Refused.is_final());
        assert!(!Cause::ReadOnly.is_final());
    }
}
