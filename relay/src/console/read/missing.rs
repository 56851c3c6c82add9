//! A service need not have every table: a participant has no saga tables, a service
//! that only publishes has no inbox, an older schema has no dead-letter table. A
//! table that is not there reads as empty, not as an error.

use txoutbox_saga::admin::AdminError;

/// PostgreSQL's undefined_table.
const UNDEFINED_TABLE: &str = "42P01";

/// True when `error` says a table (or view) does not exist.
pub(crate) fn is_missing_table(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == UNDEFINED_TABLE)
}

/// `rows`, or none where the table is missing.
pub(crate) fn or_none<T: Default>(rows: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
    match rows {
        Err(error) if is_missing_table(&error) => Ok(T::default()),
        other => other,
    }
}

/// An answer of `txoutbox_saga::admin`, or none where its tables are missing. Its
/// other refusals (a value this version does not know) are the database's answer
/// too, as far as a page is concerned.
pub(crate) fn admin_or_none<T: Default>(answer: Result<T, AdminError>) -> Result<T, sqlx::Error> {
    match answer {
        Ok(value) => Ok(value),
        Err(AdminError::Database(error)) => or_none(Err(error)),
        Err(other) => Err(sqlx::Error::Protocol(other.to_string())),
    }
}
