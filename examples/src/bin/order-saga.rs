//! An orchestrated order saga, relay, orchestrator and participants in one process,
//! on a database and broker objects of its own; prints where each order ended and why.
//!
//! Run with: cargo run -p examples --bin order-saga

use examples::order_saga;
use examples::scratch::{on_a_database_of_its_own, stop_on_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    testkit::require_servers();
    let stop = stop_on_signal()?;
    let amqp_url = testkit::amqp_url();
    let reports = on_a_database_of_its_own("order_saga", false, async |pool| {
        order_saga::run(&pool, &amqp_url, stop).await
    })
    .await?;
    for saga in reports {
        println!("{saga}");
    }
    Ok(())
}
