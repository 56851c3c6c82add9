//! Shared pieces of the benchmarks: a fresh database per run, a drained queue, medians.

pub mod broker;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Drops and recreates `name` on the server of `DATABASE_URL`, migrates it, and
/// returns a pool of `connections` to it. Checks both servers first, so that a bench
/// with one down stops at once with one line saying which to start.
pub async fn fresh_database(name: &'static str, connections: u32) -> anyhow::Result<PgPool> {
    testkit::require_servers();
    let server: PgConnectOptions = testkit::database_url().parse()?;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(server.clone())
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await?;
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect_with(server.database(name))
        .await?;
    outbox::migrate(&pool).await?;
    Ok(pool)
}

/// The median of `samples` (the mean of the middle two for an even count).
pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}
