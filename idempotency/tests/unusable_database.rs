//! A consumer whose database turns read-only under it (a failover to a standby not
//! promoted yet looks the same) names the server and the cause in its log, spends none
//! of the message's attempts on it, and takes the message once the database takes
//! writes again.

use std::time::Duration;

use sqlx::PgPool;
use testkit::{KeptLogs, amqp_url, wait_until};
use txoutbox_inbox::Consumer;

mod common;

use common::{Sandbox, config, create_saga_effects, record_saga};

/// The schema, after a check that the servers are up (`testkit::CheckedMigrator`).
static MIGRATOR: testkit::CheckedMigrator =
    testkit::CheckedMigrator::new(&txoutbox_inbox::MIGRATOR);

type TestResult = anyhow::Result<()>;

const WAIT: Duration = Duration::from_secs(30);

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_read_only_database_is_named_and_costs_the_message_nothing(pool: PgPool) -> TestResult {
    create_saga_effects(&pool).await?;
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await?;
    let sandbox = Sandbox::new().await?;
    // The runtime has one thread: the subscriber set for it sees the consumer's tasks.
    let logs = KeptLogs::default();
    let _logging = logs.keep_on_this_thread();
    let mut settings = config(&sandbox.queue);
    settings.max_attempts = 2;
    let consumer = Consumer::new(pool.clone(), amqp_url(), "inventory", settings)
        .on("Reserve", record_saga)
        .spawn()?;

    testkit::set_read_only(&database, true).await?;
    sandbox.publish(Some("order-1"), "Reserve", b"{}").await?;
    let named = format!(
        "PostgreSQL at {}",
        txoutbox::reach::server_of(&pool.connect_options())
    );
    let said = async || {
        let logs = logs.text();
        Ok(logs.contains(&named) && logs.contains("read-only (transaction_read_only = on)"))
    };
    wait_until(WAIT, "the consumer names the read-only server", said).await?;
    // Retried many times over by now, and still not dead: no attempt was spent.
    tokio::time::sleep(Duration::from_millis(500)).await;

    testkit::set_read_only(&database, false).await?;
    let effects = async || {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM effects")
            .fetch_one(&pool)
            .await?;
        Ok(count == 1)
    };
    wait_until(WAIT, "the message takes effect", effects).await?;
    consumer.shutdown().await?;
    assert!(sandbox.dead_reasons().await?.is_empty(), "{}", logs.text());
    assert!(!logs.text().contains("pool timed out"), "{}", logs.text());
    sandbox.remove().await
}
