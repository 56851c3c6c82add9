//! The consumer's record of its dead letters (`inbox_dead_letter`), against a real
//! RabbitMQ and PostgreSQL: written before the copy goes to `{queue}.dead`, one row
//! for a redelivered dead letter, none (and the move as before) on a database without
//! the table, and no move when the database refuses the row.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use sqlx::PgPool;
use testkit::{amqp_url, header_text, wait_until};
use txoutbox::wire::{ATTEMPTS_HEADER, dead_queue};
use txoutbox_inbox::{BoxError, Consumer, Context, DEAD_REASON_HEADER, Reject};

mod common;

use common::{Sandbox, config, uuid_like};

/// The schema, after a check that the servers are up; it also captures the logs of
/// what a test starts, shown when the test fails (`testkit::CheckedMigrator`).
static MIGRATOR: testkit::CheckedMigrator =
    testkit::CheckedMigrator::new(&txoutbox_inbox::MIGRATOR);

type TestResult = anyhow::Result<()>;

/// How long a test waits for the consumer to get somewhere.
const WAIT: Duration = Duration::from_secs(30);

/// Says no retry can help.
async fn rejecting(_: Context<'_>, _: serde_json::Value) -> Result<(), BoxError> {
    Err(Reject::new("no such order").into())
}

/// Fails every attempt.
async fn failing(_: Context<'_>, _: serde_json::Value) -> Result<(), BoxError> {
    Err("card declined".into())
}

/// A dead letter's row, as the consumer wrote it.
#[derive(Debug, sqlx::FromRow)]
struct Row {
    consumer: String,
    queue: String,
    message_id: Option<String>,
    saga_id: Option<String>,
    step: Option<String>,
    reason: String,
    kind: String,
    attempts: i32,
    last_error: Option<String>,
    headers: serde_json::Value,
    body: Vec<u8>,
    state: String,
}

async fn rows(pool: &PgPool) -> anyhow::Result<Vec<Row>> {
    Ok(sqlx::query_as(
        "SELECT consumer, queue, message_id, saga_id, step, reason, kind, attempts, last_error,
                headers, body, state
         FROM inbox_dead_letter ORDER BY id",
    )
    .fetch_all(pool)
    .await?)
}

/// A message as the relay sends it, with a message id and a header of its own.
fn message(message_id: &str, saga_id: &str, step: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "tenant".into(),
        AMQPValue::LongString(LongString::from("acme")),
    );
    headers.insert("priority".into(), AMQPValue::LongInt(7));
    BasicProperties::default()
        .with_message_id(message_id.into())
        .with_correlation_id(saga_id.into())
        .with_type(step.into())
        .with_headers(headers)
}

async fn dead_count(sandbox: &Sandbox) -> anyhow::Result<u32> {
    sandbox.waiting(&dead_queue(&sandbox.queue)).await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_rejected_message_is_recorded_whole_and_its_copy_is_in_dead(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new().await?;
    let consumer = Consumer::new(pool.clone(), amqp_url(), "shipping", config(&sandbox.queue))
        .on("Ship", rejecting)
        .spawn()?;
    let body = br#"{"order": 9}"#;
    sandbox
        .publish_with(message("m-9", "order-9", "Ship"), body)
        .await?;
    wait_until(WAIT, "it is dead-lettered", async || {
        Ok(dead_count(&sandbox).await? == 1)
    })
    .await?;
    consumer.shutdown().await?;

    let rows = rows(&pool).await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(
        (row.consumer.as_str(), row.queue.as_str()),
        ("shipping", sandbox.queue.as_str())
    );
    assert_eq!(row.message_id.as_deref(), Some("m-9"));
    assert_eq!(
        (row.saga_id.as_deref(), row.step.as_deref()),
        (Some("order-9"), Some("Ship"))
    );
    assert_eq!(row.reason, "rejected: no such order");
    assert_eq!((row.kind.as_str(), row.attempts), ("rejected", 1));
    assert_eq!(row.last_error.as_deref(), Some("rejected: no such order"));
    assert_eq!(row.headers["tenant"], "acme");
    assert_eq!(row.headers["priority"], 7);
    assert_eq!(row.body, body);
    assert_eq!(row.state, "dead");

    let copies = sandbox.dead_headers().await?;
    assert_eq!(copies.len(), 1);
    assert_eq!(
        header_text(&copies[0], DEAD_REASON_HEADER),
        "rejected: no such order"
    );
    sandbox.remove().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_handler_that_fails_every_attempt_is_recorded_with_its_last_error(
    pool: PgPool,
) -> TestResult {
    let sandbox = Sandbox::new().await?;
    let consumer = Consumer::new(pool.clone(), amqp_url(), "payments", config(&sandbox.queue))
        .on("Charge", failing)
        .spawn()?;
    sandbox
        .publish_with(message("m-5", "order-5", "Charge"), b"{}")
        .await?;
    wait_until(WAIT, "it is dead-lettered", async || {
        Ok(dead_count(&sandbox).await? == 1)
    })
    .await?;
    consumer.shutdown().await?;

    let rows = rows(&pool).await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row.reason, "handler failed 3 times; last: card declined");
    assert_eq!((row.kind.as_str(), row.attempts), ("attempts_exhausted", 3));
    assert_eq!(row.last_error.as_deref(), Some("card declined"));
    assert_eq!(
        (row.saga_id.as_deref(), row.message_id.as_deref()),
        (Some("order-5"), Some("m-5"))
    );
    // The headers as the message arrived for its last attempt, retries' included.
    assert_eq!(row.headers[ATTEMPTS_HEADER], 2);
    let copies = sandbox.dead_headers().await?;
    assert_eq!(copies.len(), 1);
    sandbox.remove().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_dead_letter_that_comes_twice_makes_one_row(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new().await?;
    // As after a crash between the row and the ack: the same message again.
    for _ in 0..2 {
        sandbox
            .publish_with(message("m-1", "order-1", "Ship"), b"{}")
            .await?;
    }
    let consumer = Consumer::new(pool.clone(), amqp_url(), "shipping", config(&sandbox.queue))
        .on("Ship", rejecting)
        .spawn()?;
    wait_until(WAIT, "both are dead-lettered", async || {
        Ok(dead_count(&sandbox).await? == 2)
    })
    .await?;
    consumer.shutdown().await?;
    let rows = rows(&pool).await?;
    assert_eq!(rows.len(), 1, "one row for both copies: {rows:?}");
    assert_eq!(rows[0].message_id.as_deref(), Some("m-1"));
    // Both moved by the consumer, the second not refused for its row (the broker
    // would have moved it after the delivery limit, without a reason).
    let reasons: Vec<String> = sandbox
        .dead_headers()
        .await?
        .iter()
        .map(|headers| header_text(headers, DEAD_REASON_HEADER))
        .collect();
    assert_eq!(reasons, ["rejected: no such order"; 2]);
    sandbox.remove().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_database_without_the_table_still_moves_the_message(pool: PgPool) -> TestResult {
    sqlx::query("DROP TABLE inbox_dead_letter")
        .execute(&pool)
        .await?;
    let sandbox = Sandbox::new().await?;
    let consumer = Consumer::new(pool.clone(), amqp_url(), "shipping", config(&sandbox.queue))
        .on("Ship", rejecting)
        .spawn()?;
    sandbox
        .publish_with(message("m-2", "order-2", "Ship"), b"{}")
        .await?;
    // A step with no handler takes the same path without a handler run.
    sandbox
        .publish_with(message(&uuid_like(), "order-3", "Unknown"), b"{}")
        .await?;
    wait_until(WAIT, "both are dead-lettered", async || {
        Ok(dead_count(&sandbox).await? == 2)
    })
    .await?;
    consumer.shutdown().await?;
    let reasons: Vec<String> = sandbox
        .dead_headers()
        .await?
        .iter()
        .map(|headers| header_text(headers, DEAD_REASON_HEADER))
        .collect();
    assert!(
        reasons.contains(&"rejected: no such order".to_owned())
            && reasons.contains(&"unknown step: Unknown".to_owned()),
        "moved by the consumer, with its reason: {reasons:?}"
    );
    sandbox.remove().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_dead_letter_the_database_will_never_take_is_moved_unrecorded(
    pool: PgPool,
) -> TestResult {
    // Every row refused by a constraint (SQLSTATE 23514): no retry changes that, so
    // the consumer moves the message to `.dead` itself, with its reason, and says so,
    // rather than giving it back to its queue until the broker's delivery limit.
    sqlx::query("ALTER TABLE inbox_dead_letter ADD CONSTRAINT refuse_all CHECK (false) NOT VALID")
        .execute(&pool)
        .await?;
    let sandbox = Sandbox::new().await?;
    let consumer = Consumer::new(pool.clone(), amqp_url(), "shipping", config(&sandbox.queue))
        .on("Ship", rejecting)
        .spawn()?;
    sandbox
        .publish_with(message("m-4", "order-4", "Ship"), b"{}")
        .await?;
    wait_until(WAIT, "the consumer dead-letters it", async || {
        Ok(dead_count(&sandbox).await? == 1)
    })
    .await?;
    consumer.shutdown().await?;
    let copies = sandbox.dead_headers().await?;
    assert_eq!(copies.len(), 1);
    assert_eq!(
        header_text(&copies[0], DEAD_REASON_HEADER),
        "rejected: no such order",
        "{:?}",
        copies[0]
    );
    assert!(
        !copies[0].inner().contains_key("x-death"),
        "given back to its queue until the broker moved it: {:?}",
        copies[0]
    );
    assert!(rows(&pool).await?.is_empty());
    sandbox.remove().await
}
