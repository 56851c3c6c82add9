//! What the one-process examples share: a database of their own, created for the run
//! and dropped after it (or kept, to look at with `outbox-relay`), and a stop on
//! SIGTERM or Ctrl-C.

use std::future::Future;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// A token cancelled on SIGTERM or Ctrl-C.
pub fn stop_on_signal() -> anyhow::Result<CancellationToken> {
    let stop = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate())?;
    let on_signal = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        on_signal.cancel();
    });
    Ok(stop)
}

/// Runs `run` on a new, migrated database named after `prefix`, on the server of
/// `DATABASE_URL`; drops it afterwards unless `keep`, when it prints its URL instead.
pub async fn on_a_database_of_its_own<T, F, Fut>(
    prefix: &str,
    keep: bool,
    run: F,
) -> anyhow::Result<T>
where
    F: FnOnce(PgPool) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let server: PgConnectOptions = testkit::database_url().parse()?;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(server.clone())
        .await?;
    let name = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await?;
    let pool = PgPoolOptions::new()
        .connect_with(server.clone().database(&name))
        .await?;
    let outcome = async {
        txoutbox::migrate(&pool).await?;
        run(pool.clone()).await
    }
    .await;
    pool.close().await;
    if keep {
        let url = testkit::database_url();
        let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
        println!("database kept: {}/{name}", txoutbox::url::redact(base));
    } else {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {name} WITH (FORCE)"
        )))
        .execute(&admin)
        .await?;
    }
    outcome
}
