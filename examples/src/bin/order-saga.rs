//! An orchestrated order saga, relay, orchestrator and participants in one process,
//! on a database and broker objects of its own; prints where each order ended and why.
//!
//! Run with: cargo run -p examples --bin order-saga

use examples::order_saga;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    testkit::require_servers();
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

    let server: PgConnectOptions = testkit::database_url().parse()?;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(server.clone())
        .await?;
    let name = format!("order_saga_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await?;
    let pool = PgPoolOptions::new()
        .connect_with(server.database(&name))
        .await?;
    let outcome = async {
        txoutbox::migrate(&pool).await?;
        order_saga::run(&pool, &testkit::amqp_url(), stop).await
    }
    .await;
    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;

    for saga in outcome? {
        println!("{saga}");
    }
    Ok(())
}
