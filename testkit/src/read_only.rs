//! A database turned read-only under its clients, as a failover to a standby that is
//! not promoted yet looks to them.

use sqlx::Connection;

use crate::servers;

/// Sets (`on`) or resets `default_transaction_read_only` for `database`, from a
/// connection to the server's main database (`DATABASE_URL`; one to `database` itself
/// would be read-only too), then ends every session on `database`, so that its
/// clients connect anew under the setting.
pub async fn set_read_only(database: &str, on: bool) -> anyhow::Result<()> {
    let mut admin = sqlx::PgConnection::connect(&servers::database_url()).await?;
    let setting = if on {
        "SET default_transaction_read_only = on"
    } else {
        "RESET default_transaction_read_only"
    };
    let quoted = database.replace('"', "\"\"");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{quoted}\" {setting}"
    )))
    .execute(&mut admin)
    .await?;
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(database)
        .execute(&mut admin)
        .await?;
    Ok(())
}
