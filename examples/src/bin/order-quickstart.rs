//! Writes an order and its `OrderCreated` message in one transaction, then prints both.
//!
//! Run with: `scripts/demo.sh` (or `cargo run -p examples --bin order-quickstart`
//! with `DATABASE_URL` set).

use examples::quickstart;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const DATABASE: &str = "outbox_quickstart";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let server: PgConnectOptions = url.parse()?;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(server.clone())
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(DATABASE)
            .fetch_one(&admin)
            .await?;
    if !exists {
        sqlx::query("CREATE DATABASE outbox_quickstart")
            .execute(&admin)
            .await?;
    }
    let pool = PgPoolOptions::new()
        .connect_with(server.database(DATABASE))
        .await?;

    quickstart::prepare(&pool).await?;
    let saga_id = quickstart::place_order(&pool, "ada", 4200).await?;
    println!("order placed; saga {saga_id}; its outbox rows, committed with it:");
    for message in quickstart::messages_of(&pool, &saga_id).await? {
        println!(
            "  {}  {:<13} -> {:<15} state={:?} payload={}",
            message.id, message.step, message.routing_key, message.state, message.payload
        );
    }
    println!("run `outbox-relay` next to this database to publish them to RabbitMQ");
    Ok(())
}
