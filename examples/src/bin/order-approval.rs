//! An order process in one process: reservation and card authorisation side by side,
//! a wait for the payment provider's capture event, shipping; end hooks set each
//! order row. Prints where each order ended, its row, and its saga's history.
//!
//! Run with: cargo run -p examples --bin order-approval [-- --capture-timeout-secs N] [--keep-database]
//! A kept database is there to look at: `outbox-relay saga show order-4`.

use std::time::Duration;

use examples::order_approval;
use examples::scratch::{on_a_database_of_its_own, stop_on_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let keep = args.iter().any(|a| a == "--keep-database");
    let capture_timeout = match args.iter().position(|a| a == "--capture-timeout-secs") {
        Some(i) => {
            let secs = args
                .get(i + 1)
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|s| *s > 0);
            let Some(secs) = secs else {
                eprintln!(
                    "order-approval: --capture-timeout-secs takes a number of seconds, 1 or more"
                );
                std::process::exit(2);
            };
            Duration::from_secs(secs)
        }
        None => Duration::from_secs(5),
    };
    testkit::require_servers();
    let stop = stop_on_signal()?;
    let amqp_url = testkit::amqp_url();
    let outcomes = on_a_database_of_its_own("order_approval", keep, async |pool| {
        order_approval::run(&pool, &amqp_url, capture_timeout, stop).await
    })
    .await?;
    for outcome in outcomes {
        println!(
            "order row: {}{}",
            outcome.order_status,
            outcome
                .why
                .map(|why| format!(" ({why})"))
                .unwrap_or_default()
        );
        println!("{}", outcome.saga);
    }
    Ok(())
}
