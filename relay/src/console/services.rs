//! The service databases the console reads, each behind a small pool of its own.
//! Pools connect lazily: a database that is down shows as such on the pages, and
//! the others still answer.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use super::settings::ServiceDatabase;

/// A page waits this long for a connection before it shows the service as unreadable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// One service: its name on the pages and its database.
#[derive(Clone)]
pub(crate) struct Service {
    pub(crate) name: String,
    pub(crate) pool: PgPool,
}

/// Opens a pool per database; nothing connects until a page asks.
pub(crate) fn open(databases: &[ServiceDatabase]) -> Vec<Service> {
    databases
        .iter()
        .map(|database| Service {
            name: database.name.clone(),
            pool: PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(database.options.clone()),
        })
        .collect()
}

/// What a page shows for a database it could not read: sqlx's message, which names
/// neither the URL nor the password.
pub(crate) fn unreadable(error: &sqlx::Error) -> String {
    format!("cannot read this database: {error}")
}
