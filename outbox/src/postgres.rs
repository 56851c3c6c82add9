//! Small facts about PostgreSQL that every crate of the toolkit needs alike.

use std::time::Duration;

use futures_util::future::join_all;
use sqlx::PgPool;
use sqlx::postgres::types::PgInterval;

/// True when the same statement may succeed if tried again: the connection or the
/// pool failed, not the statement (a violated constraint, a missing table). The
/// server's own refusals count when they are about the server, not the statement:
/// a connection exception (class 08), a shutdown or a start under way (57P01-57P03:
/// a failover in progress), and a read-only server (25006: a standby not promoted
/// yet).
pub fn is_transient(error: &sqlx::Error) -> bool {
    if let Some(refusal) = error.as_database_error() {
        let code = refusal.code().unwrap_or_default();
        return code.starts_with("08")
            || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "25006");
    }
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    )
}

/// What went wrong, in PostgreSQL's own words when the server refused a statement:
/// its message, its hint if it gave one, and the SQLSTATE to look up. sqlx's text
/// for the same error ends in the line of the server's C source that raised it
/// ("at line 1392"), which tells a user nothing.
pub fn describe(error: &sqlx::Error) -> String {
    let Some(refusal) = error.as_database_error() else {
        return error.to_string();
    };
    let code = refusal.code().unwrap_or_default();
    let hint = refusal
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .and_then(|refusal| refusal.hint())
        .map(|hint| format!("; hint: {hint}"))
        .unwrap_or_default();
    format!("{} (SQLSTATE {code}){hint}", refusal.message())
}

/// `duration` as a PostgreSQL `interval`, to bind where SQL compares times.
pub fn interval(duration: Duration) -> PgInterval {
    PgInterval {
        months: 0,
        days: 0,
        microseconds: i64::try_from(duration.as_micros()).unwrap_or(i64::MAX),
    }
}

/// How long [`open_ahead`] spends before it gives up on what it has not opened.
const OPEN_AHEAD_LIMIT: Duration = Duration::from_secs(5);

/// Opens up to `wanted` of `pool`'s connections now (never more than its size) and
/// hands them back to it idle. Gives up after 5 s or when `give_up` completes (pass
/// your shutdown); what it did not open opens later, when first needed, as it would
/// have anyway. An unreachable database is for the caller's own statements to find
/// and report.
///
/// Why: a pool opens a connection when it is first needed, and with sqlx 0.9.0 a
/// new TLS connection takes about 90 ms (its socket has Nagle's algorithm on, so
/// the handshake waits on delayed acknowledgements: 91-96 ms with TLS, 2 ms
/// without, on this project's machine). A relay or consumer that opened them in
/// the middle of a stream held messages back that long; opened at its start, all
/// at once, the cost is paid once, before anything waits.
pub async fn open_ahead(pool: &PgPool, wanted: u32, give_up: impl Future<Output = ()>) {
    let wanted = wanted.min(pool.options().get_max_connections());
    let opening = join_all((0..wanted).map(|_| pool.acquire()));
    tokio::select! {
        _ = tokio::time::timeout(OPEN_AHEAD_LIMIT, opening) => {}
        () = give_up => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_keeps_microseconds_and_saturates() {
        assert_eq!(
            interval(Duration::from_millis(1500)).microseconds,
            1_500_000
        );
        assert_eq!(interval(Duration::MAX).microseconds, i64::MAX);
    }

    #[test]
    fn an_error_without_a_server_refusal_keeps_its_own_words() {
        assert_eq!(
            describe(&sqlx::Error::PoolTimedOut),
            sqlx::Error::PoolTimedOut.to_string()
        );
    }

    #[test]
    fn a_refused_statement_is_not_transient() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }
}
