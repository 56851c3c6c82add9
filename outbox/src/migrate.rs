use sqlx::PgPool;
use sqlx::migrate::Migrator;

use crate::error::Result;

/// The toolkit's migrations (outbox, relay leases), embedded at compile time.
///
/// Run them with [`migrate`], or hand them to `#[sqlx::test(migrator = "txoutbox::MIGRATOR")]`.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Creates or updates the toolkit's tables. Safe to call at every start: applied
/// migrations are skipped, and concurrent callers wait on sqlx's migration lock.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
