//! A consumer whose database turns read-only under it (a failover to a standby not
//! promoted yet looks the same) names the server and the cause in its log, spends none
//! of the message's attempts on it, and takes the message once the database takes
//! writes again.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use testkit::{amqp_url, wait_until};
use txoutbox_inbox::{BoxError, Consumer, Context};

mod common;

use common::{Sandbox, config};

/// The schema, after a check that the servers are up (`testkit::CheckedMigrator`).
static MIGRATOR: testkit::CheckedMigrator =
    testkit::CheckedMigrator::new(&txoutbox_inbox::MIGRATOR);

type TestResult = anyhow::Result<()>;

const WAIT: Duration = Duration::from_secs(30);

/// What the consumer logs, kept for the test to read.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("never poisoned")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("never poisoned")).into_owned()
    }
}

/// One row per message that took effect.
async fn record(mut ctx: Context<'_>, _: serde_json::Value) -> Result<(), BoxError> {
    let saga_id = ctx.envelope().saga_id.clone();
    sqlx::query("INSERT INTO effects (saga_id) VALUES ($1)")
        .bind(saga_id)
        .execute(ctx.db())
        .await?;
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_read_only_database_is_named_and_costs_the_message_nothing(pool: PgPool) -> TestResult {
    sqlx::query("CREATE TABLE effects (saga_id text NOT NULL)")
        .execute(&pool)
        .await?;
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await?;
    let sandbox = Sandbox::new().await?;
    // The runtime has one thread: the subscriber set for it sees the consumer's tasks.
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let mut settings = config(&sandbox.queue);
    settings.max_attempts = 2;
    let consumer = Consumer::new(pool.clone(), amqp_url(), "inventory", settings)
        .on("Reserve", record)
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
