//! The consumer runtime against a real RabbitMQ (queues of each test's own) and a
//! real PostgreSQL (a fresh database per test), with failures injected for real.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::{FaultyProxy, amqp_url, wait_until};
use txoutbox::wire::{TRACEPARENT_HEADER, dead_queue};
use txoutbox_inbox::{
    BoxError, Consumer, ConsumerConfig, ConsumerError, Context, InvalidConfig, StartError,
};

mod common;

use common::{Sandbox, config, effects};

/// The schema, after a check that the servers are up; it also captures the logs of
/// what a test starts, shown when the test fails (`testkit::CheckedMigrator`).
static MIGRATOR: testkit::CheckedMigrator =
    testkit::CheckedMigrator::new(&txoutbox_inbox::MIGRATOR);

type TestResult = anyhow::Result<()>;

/// How long a test waits for the consumer to get somewhere.
const WAIT: Duration = Duration::from_secs(30);

async fn with_effects(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("CREATE TABLE effects (saga_id text NOT NULL, step text NOT NULL, attempt int NOT NULL, at timestamptz DEFAULT clock_timestamp())")
        .execute(pool)
        .await?;
    Ok(())
}

/// Any JSON payload: these handlers read what they need from the envelope.
type AnyPayload = serde_json::Value;

/// What [`record`] returns, and the inbox stores.
#[derive(Serialize)]
struct Recorded {
    attempt: u32,
}

/// The handler under test: one effect row per processed message.
async fn record(mut ctx: Context<'_>, _: AnyPayload) -> Result<Recorded, BoxError> {
    let envelope = ctx.envelope();
    sqlx::query("INSERT INTO effects (saga_id, step, attempt) VALUES ($1, $2, $3)")
        .bind(&envelope.saga_id)
        .bind(&envelope.step)
        .bind(envelope.attempt as i32)
        .execute(ctx.db())
        .await?;
    Ok(Recorded {
        attempt: envelope.attempt,
    })
}

/// Records, then stays uncommitted for a while so that copies arrive meanwhile.
async fn slow(ctx: Context<'_>, payload: AnyPayload) -> Result<Recorded, BoxError> {
    let result = record(ctx, payload).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    result
}

/// Attempts seen by a handler, and when.
type Seen = Arc<std::sync::Mutex<Vec<(u32, Instant)>>>;

/// Fails the first two attempts (after writing a row that rolls back), then records.
async fn flaky(
    mut ctx: Context<'_>,
    payload: AnyPayload,
    seen: Seen,
) -> Result<Recorded, BoxError> {
    let attempt = ctx.envelope().attempt;
    seen.lock().unwrap().push((attempt, Instant::now()));
    sqlx::query("INSERT INTO effects (saga_id, step, attempt) VALUES ('tries', 'x', $1)")
        .bind(attempt as i32)
        .execute(ctx.db())
        .await?;
    if attempt < 3 {
        return Err("payment provider unavailable".into());
    }
    record(ctx, payload).await
}

/// Always fails.
async fn failing(_: Context<'_>, _: AnyPayload) -> Result<(), BoxError> {
    Err("card declined".into())
}

/// A payload that may ask the handler to panic.
#[derive(Deserialize)]
struct MaybePanic {
    #[serde(default)]
    panic: bool,
}

/// Records, then panics if the payload says so: the row must roll back with the
/// panic. Attempts of `order-bad` are noted in `seen`.
async fn panics_on_flag(
    ctx: Context<'_>,
    payload: MaybePanic,
    seen: Seen,
) -> Result<Recorded, BoxError> {
    let envelope = ctx.envelope();
    if envelope.saga_id == "order-bad" {
        seen.lock()
            .unwrap()
            .push((envelope.attempt, Instant::now()));
    }
    let result = record(ctx, AnyPayload::Null).await;
    if payload.panic {
        panic!("stock ledger out of sync for {}", envelope.saga_id);
    }
    result
}

/// The consumer's broker link, to stall once, from inside a handler.
type Stall = (Arc<FaultyProxy>, Arc<AtomicBool>);

/// The first time, stalls the broker link before the commit, then records.
async fn stall_once(
    ctx: Context<'_>,
    payload: AnyPayload,
    (proxy, once): Stall,
) -> Result<Recorded, BoxError> {
    if !once.swap(true, Ordering::SeqCst) {
        proxy.stall(true);
    }
    record(ctx, payload).await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn acks_after_commit_and_a_duplicate_takes_no_effect(pool: PgPool) -> TestResult {
    with_effects(&pool).await?;
    let sandbox = Sandbox::new().await?;
    // A producer that retried: the same saga_id:step twice, with different message ids.
    sandbox
        .publish(Some("order-1"), "ReserveStock", b"{}")
        .await?;
    sandbox
        .publish(Some("order-1"), "ReserveStock", b"{}")
        .await?;
    sandbox
        .publish(Some("order-2"), "ReserveStock", b"{}")
        .await?;
    let consumer = Consumer::new(
        pool.clone(),
        amqp_url(),
        "inventory",
        config(&sandbox.queue),
    )
    .on("ReserveStock", record)
    .spawn()?;
    let metrics = consumer.metrics();

    wait_until(WAIT, "all three are acked", async || {
        Ok(sandbox.waiting(&sandbox.queue).await? == 0 && effects(&pool).await? == 2)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(metrics.connected());
    consumer.shutdown().await?;
    assert_eq!((metrics.processed(), metrics.duplicates()), (2, 1));
    assert!(!metrics.connected(), "a stopped consumer is not connected");
    assert_eq!(effects(&pool).await?, 2, "order-1 took effect once");
    assert_eq!(
        sandbox.waiting(&sandbox.queue).await?,
        0,
        "the duplicate was acked, not left behind"
    );
    assert!(sandbox.dead_reasons().await?.is_empty());
    sandbox.remove().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_same_message_to_two_consumers_at_once_takes_effect_once(pool: PgPool) -> TestResult {
    with_effects(&pool).await?;
    let sandbox = Sandbox::new().await?;
    let one = Consumer::new(pool.clone(), amqp_url(), "payments", config(&sandbox.queue))
        .on("Charge", slow)
        .spawn()?;
    let two = Consumer::new(pool.clone(), amqp_url(), "payments", config(&sandbox.queue))
        .on("Charge", slow)
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..10 {
        sandbox.publish(Some("order-7"), "Charge", b"{}").await?;
    }
    wait_until(WAIT, "all copies are acked", async || {
        Ok(sandbox.waiting(&sandbox.queue).await? == 0)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    one.shutdown().await?;
    two.shutdown().await?;
    assert_eq!(effects(&pool).await?, 1);
    sandbox.remove().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_failing_handler_is_retried_later_not_at_once(pool: PgPool) -> TestResult {
    with_effects(&pool).await?;
    let sandbox = Sandbox::new().await?;
    let attempts_seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&attempts_seen);
    let consumer = Consumer::new(pool.clone(), amqp_url(), "payments", config(&sandbox.queue))
        .on_with("Charge", seen, flaky)
        .spawn()?;
    sandbox.publish(Some("order-9"), "Charge", b"{}").await?;
    wait_until(WAIT, "the third attempt succeeds", async || {
        Ok(effects(&pool).await? == 2)
    })
    .await?;
    consumer.shutdown().await?;

    let attempts = attempts_seen.lock().unwrap().clone();
    assert_eq!(
        attempts.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // Delayed, not a hot requeue loop: at least the 100 ms and 200 ms retry delays.
    assert!(attempts[1].1 - attempts[0].1 >= Duration::from_millis(90));
    assert!(attempts[2].1 - attempts[1].1 >= Duration::from_millis(190));
    let kinds: Vec<(String, i32)> =
        sqlx::query_as("SELECT saga_id, attempt FROM effects ORDER BY at")
            .fetch_all(&pool)
            .await?;
    assert_eq!(
        kinds,
        [("tries".to_owned(), 3), ("order-9".to_owned(), 3)],
        "failed attempts left nothing"
    );
    sandbox.remove().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_handler_that_keeps_failing_is_dead_lettered_with_its_reason(pool: PgPool) -> TestResult {
    with_effects(&pool).await?;
    let sandbox = Sandbox::new().await?;
    let consumer = Consumer::new(pool.clone(), amqp_url(), "payments", config(&sandbox.queue))
        .on("Charge", failing)
        .spawn()?;
    let metrics = consumer.metrics();
    sandbox.publish(Some("order-5"), "Charge", b"{}").await?;
    let dead = dead_queue(&sandbox.queue);
    wait_until(WAIT, "it is dead-lettered", async || {
        Ok(sandbox.waiting(&dead).await? == 1)
    })
    .await?;
    consumer.shutdown().await?;
    assert_eq!(
        (metrics.retried_total(), metrics.dead_lettered_total()),
        (2, 1)
    );
    assert!(
        metrics
            .render()
            .contains("reason=\"attempts_exhausted\"} 1\n")
    );
    let reasons = sandbox.dead_reasons().await?;
    assert_eq!(reasons.len(), 1);
    assert!(
        reasons[0].contains("failed 3 times") && reasons[0].contains("card declined"),
        "{reasons:?}"
    );
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&pool)
        .await?;
    assert_eq!((keys, effects(&pool).await?), (0, 0));
    sandbox.remove().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_panicking_handler_is_retried_then_dead_lettered_and_the_rest_go_on(
    pool: PgPool,
) -> TestResult {
    with_effects(&pool).await?;
    let sandbox = Sandbox::new().await?;
    let bad_attempts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&bad_attempts);
    let consumer = Consumer::new(
        pool.clone(),
        amqp_url(),
        "inventory",
        config(&sandbox.queue),
    )
    .on_with("ReserveStock", seen, panics_on_flag)
    .spawn()?;
    for n in 0..20 {
        if n == 10 {
            sandbox
                .publish(Some("order-bad"), "ReserveStock", br#"{"panic": true}"#)
                .await?;
        }
        sandbox
            .publish(Some(&format!("order-{n}")), "ReserveStock", b"{}")
            .await?;
    }
    let dead = dead_queue(&sandbox.queue);
    wait_until(
        WAIT,
        "the good ones take effect and the bad one is dead",
        async || Ok(effects(&pool).await? == 20 && sandbox.waiting(&dead).await? == 1),
    )
    .await?;
    // Unacked deliveries go back to the queue when the consumer's channel closes.
    consumer.shutdown().await?;
    assert_eq!(
        sandbox.waiting(&sandbox.queue).await?,
        0,
        "nothing is left unacked"
    );
    let bad_attempts: Vec<u32> = bad_attempts
        .lock()
        .unwrap()
        .iter()
        .map(|(a, _)| *a)
        .collect();
    assert_eq!(bad_attempts, [1, 2, 3]);
    let reasons = sandbox.dead_reasons().await?;
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].contains("failed 3 times")
            && reasons[0].contains("handler panicked: stock ledger out of sync for order-bad"),
        "{reasons:?}"
    );
    let bad_rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM effects WHERE saga_id = 'order-bad')
              + (SELECT count(*) FROM inbox WHERE saga_id = 'order-bad')",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(bad_rows, 0, "each panic rolled back its effect and its key");
    sandbox.remove().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn malformed_messages_are_dead_lettered_at_once_and_the_consumer_goes_on(
    pool: PgPool,
) -> TestResult {
    with_effects(&pool).await?;
    let sandbox = Sandbox::new().await?;
    let consumer = Consumer::new(
        pool.clone(),
        amqp_url(),
        "inventory",
        config(&sandbox.queue),
    )
    .on("ReserveStock", record)
    .spawn()?;
    sandbox
        .publish(Some("order-1"), "ReserveStock", b"not json")
        .await?;
    sandbox.publish(None, "ReserveStock", b"{}").await?;
    sandbox
        .publish(Some("order-1"), "LaunchRocket", b"{}")
        .await?;
    // A key PostgreSQL cannot store: retried as a database failure, it would come
    // back forever, and fail the batch around it each time.
    sandbox
        .publish(Some("order\0nul"), "ReserveStock", b"{}")
        .await?;
    sandbox
        .publish(Some("order-2"), "ReserveStock", b"{}")
        .await?;
    let dead = dead_queue(&sandbox.queue);
    wait_until(WAIT, "four are dead and one processed", async || {
        Ok(sandbox.waiting(&dead).await? == 4 && effects(&pool).await? == 1)
    })
    .await?;
    let metrics = consumer.metrics();
    consumer.shutdown().await?;
    let text = metrics.render();
    for (reason, count) in [("undecodable", 3), ("unknown_step", 1), ("bad_payload", 0)] {
        let series = format!("reason=\"{reason}\"}} {count}\n");
        assert!(text.contains(&series), "{series:?} not in {text}");
    }
    let reasons = sandbox.dead_reasons().await?.join(" | ");
    for expected in [
        "payload is not JSON",
        "no saga_id",
        "unknown step: LaunchRocket",
        "saga_id contains a NUL byte",
    ] {
        assert!(reasons.contains(expected), "{expected:?} not in {reasons}");
    }
    assert_eq!(
        sandbox.waiting(&sandbox.queue).await?,
        0,
        "nothing is left unacked"
    );
    sandbox.remove().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_consumer_cut_off_between_commit_and_ack_sees_a_duplicate_next_time(
    pool: PgPool,
) -> TestResult {
    with_effects(&pool).await?;
    let sandbox = Sandbox::new().await?;
    let proxy = Arc::new(FaultyProxy::to_broker().await?);
    let stalled_once = Arc::new(AtomicBool::new(false));
    let stall = (Arc::clone(&proxy), Arc::clone(&stalled_once));
    // The first time, the handler's broker link goes dark before the commit: the
    // effect commits, the ack never reaches the broker.
    let consumer = Consumer::new(
        pool.clone(),
        proxy.amqp_url(),
        "inventory",
        config(&sandbox.queue),
    )
    .on_with("ReserveStock", stall, stall_once)
    .spawn()?;
    sandbox
        .publish(Some("order-3"), "ReserveStock", b"{}")
        .await?;
    wait_until(WAIT, "the effect commits", async || {
        Ok(effects(&pool).await? == 1)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut_all(); // the connection dies with the delivery unacked
    proxy.stall(false);

    // Nothing ready in the queue is not enough: the redelivery may be in the
    // consumer's hands, not yet handled. The inbox counting it as a duplicate is.
    wait_until(WAIT, "the redelivery is seen as a duplicate", async || {
        let duplicates: Option<i32> = sqlx::query_scalar(
            "SELECT duplicates FROM inbox WHERE consumer = 'inventory' AND saga_id = 'order-3'",
        )
        .fetch_optional(&pool)
        .await?;
        Ok(duplicates == Some(1))
    })
    .await?;
    wait_until(WAIT, "the redelivery is acked", async || {
        Ok(sandbox.waiting(&sandbox.queue).await? == 0)
    })
    .await?;
    consumer.shutdown().await?;
    assert!(stalled_once.load(Ordering::SeqCst));
    assert_eq!(effects(&pool).await?, 1, "the redelivery was a duplicate");
    assert_eq!(sandbox.waiting(&sandbox.queue).await?, 0);
    sandbox.remove().await
}

/// The test database's connect options under `application_name`, so that the
/// consumer's connections can be told apart in `pg_stat_activity`.
fn named(pool: &PgPool, application_name: &str) -> PgConnectOptions {
    pool.connect_options()
        .as_ref()
        .clone()
        .application_name(application_name)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn database_connections_dropped_mid_stream_lose_nothing(pool: PgPool) -> TestResult {
    with_effects(&pool).await?;
    let sandbox = Sandbox::new().await?;
    let consumer_pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(named(&pool, "consumer-under-test"))
        .await?;
    let consumer = Consumer::new(
        consumer_pool,
        amqp_url(),
        "inventory",
        config(&sandbox.queue),
    )
    .on("ReserveStock", record)
    .spawn()?;
    for n in 0..300 {
        sandbox
            .publish(Some(&format!("order-{n}")), "ReserveStock", b"{}")
            .await?;
    }
    for at in [50, 150] {
        wait_until(WAIT, "some are processed", async || {
            Ok(effects(&pool).await? >= at)
        })
        .await?;
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'consumer-under-test'")
            .execute(&pool)
            .await?;
    }
    wait_until(WAIT, "all are processed", async || {
        Ok(effects(&pool).await? >= 300 && sandbox.waiting(&sandbox.queue).await? == 0)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    consumer.shutdown().await?;
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT saga_id) FROM effects")
        .fetch_one(&pool)
        .await?;
    assert_eq!(
        (effects(&pool).await?, distinct),
        (300, 300),
        "each exactly once"
    );
    sandbox.remove().await
}

/// What the typed handlers below take.
#[derive(Deserialize)]
struct ReserveStock {
    quantity: u32,
}

/// Records, and returns the quantity, which the inbox stores.
async fn reserve(mut ctx: Context<'_>, cmd: ReserveStock) -> Result<u32, BoxError> {
    let envelope = ctx.envelope();
    sqlx::query("INSERT INTO effects (saga_id, step, attempt) VALUES ($1, $2, $3)")
        .bind(&envelope.saga_id)
        .bind(&envelope.step)
        .bind(envelope.attempt as i32)
        .execute(ctx.db())
        .await?;
    Ok(cmd.quantity)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_payload_that_does_not_fit_the_handler_is_dead_lettered_at_once(
    pool: PgPool,
) -> TestResult {
    with_effects(&pool).await?;
    let sandbox = Sandbox::new().await?;
    let consumer = Consumer::new(
        pool.clone(),
        amqp_url(),
        "inventory",
        config(&sandbox.queue),
    )
    .on("ReserveStock", reserve)
    .spawn()?;
    sandbox
        .publish(Some("order-1"), "ReserveStock", br#"{"qty": 2}"#)
        .await?;
    sandbox
        .publish(Some("order-2"), "ReserveStock", br#"{"quantity": "two"}"#)
        .await?;
    sandbox
        .publish(Some("order-3"), "ReserveStock", br#"{"quantity": 2}"#)
        .await?;
    let dead = dead_queue(&sandbox.queue);
    wait_until(WAIT, "two are dead and one processed", async || {
        Ok(sandbox.waiting(&dead).await? == 2 && effects(&pool).await? == 1)
    })
    .await?;
    consumer.shutdown().await?;

    let letters = sandbox.dead_letters().await?;
    let reasons: Vec<&str> = letters.iter().map(|(reason, _)| reason.as_str()).collect();
    assert!(
        reasons[0].contains("payload does not fit")
            && reasons[0].contains("missing field `quantity`"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("invalid type: string \"two\""),
        "{reasons:?}"
    );
    assert!(
        letters.iter().all(|(_, attempts)| *attempts == 0),
        "dead at once, the handler never ran: {letters:?}"
    );
    let stored: Vec<(String, Option<serde_json::Value>)> =
        sqlx::query_as("SELECT saga_id, result FROM inbox")
            .fetch_all(&pool)
            .await?;
    assert_eq!(
        stored,
        [("order-3".to_owned(), Some(serde_json::json!(2)))],
        "only the good one has a key, with the handler's typed result"
    );
    sandbox.remove().await
}

/// What a handler saw of its message, stored in the inbox as its result.
#[derive(Serialize)]
struct Observed {
    message_id: Option<String>,
    reply_to: Option<String>,
    timestamp: Option<u64>,
    traceparent: Option<String>,
    tenant: Option<serde_json::Value>,
    attempt: u32,
}

/// Emits the next step, then fails its first attempt: the emitted row must roll
/// back with it.
async fn forward(mut ctx: Context<'_>, cmd: ReserveStock) -> Result<Observed, BoxError> {
    let envelope = ctx.envelope();
    let reserved = serde_json::json!({ "quantity": cmd.quantity });
    ctx.emit("StockReserved", "stock.reserved", &reserved)
        .await?;
    if envelope.attempt == 1 {
        return Err("the warehouse did not answer".into());
    }
    Ok(Observed {
        message_id: envelope.message_id.clone(),
        reply_to: envelope.reply_to.clone(),
        timestamp: envelope
            .timestamp
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs()),
        traceparent: envelope.traceparent.clone(),
        tenant: envelope.headers.get("tenant").cloned(),
        attempt: envelope.attempt,
    })
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn emit_carries_the_saga_id_and_the_traceparent_and_commits_with_the_key(
    pool: PgPool,
) -> TestResult {
    let sandbox = Sandbox::new().await?;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = FieldTable::default();
    headers.insert(
        TRACEPARENT_HEADER.into(),
        AMQPValue::LongString(traceparent.into()),
    );
    headers.insert("tenant".into(), AMQPValue::LongLongInt(7));
    let properties = BasicProperties::default()
        .with_correlation_id("order-4".into())
        .with_type("ReserveStock".into())
        .with_message_id("m-4".into())
        .with_reply_to("replies".into())
        .with_timestamp(1_700_000_000)
        .with_headers(headers);
    let consumer = Consumer::new(
        pool.clone(),
        amqp_url(),
        "inventory",
        config(&sandbox.queue),
    )
    .on("ReserveStock", forward)
    .spawn()?;
    sandbox
        .publish_with(properties, br#"{"quantity": 3}"#)
        .await?;
    wait_until(WAIT, "the second attempt commits", async || {
        let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
            .fetch_one(&pool)
            .await?;
        Ok(keys == 1)
    })
    .await?;
    consumer.shutdown().await?;

    let emitted: Vec<(String, String, String, Option<String>, serde_json::Value)> = sqlx::query_as(
        "SELECT saga_id, step, routing_key, headers->>'traceparent', payload FROM outbox",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(
        emitted,
        [(
            "order-4".to_owned(),
            "StockReserved".to_owned(),
            "stock.reserved".to_owned(),
            Some(traceparent.to_owned()),
            serde_json::json!({ "quantity": 3 }),
        )],
        "one row: the failed attempt's emit rolled back with it"
    );
    let seen: serde_json::Value = sqlx::query_scalar("SELECT result FROM inbox")
        .fetch_one(&pool)
        .await?;
    assert_eq!(
        seen,
        serde_json::json!({
            "message_id": "m-4",
            "reply_to": "replies",
            "timestamp": 1_700_000_000,
            "traceparent": traceparent,
            "tenant": 7,
            "attempt": 2,
        })
    );
    sandbox.remove().await
}

#[tokio::test]
async fn a_config_that_cannot_work_is_an_error_before_connecting() -> TestResult {
    let pool = PgPoolOptions::new().connect_lazy("postgres://nobody@127.0.0.1:1/none")?;
    let mut config = ConsumerConfig::new("payments");
    config.concurrency = 0;
    let consumer = Consumer::new(pool.clone(), "amqp://127.0.0.1:1", "payments", config);
    let refused = consumer.on("Charge", record).spawn().err();
    assert_eq!(
        refused,
        Some(StartError::Config(InvalidConfig::Zero("concurrency")))
    );
    // Keys with an empty first part would fail their CHECK on every try.
    let nameless = Consumer::new(
        pool.clone(),
        "amqp://127.0.0.1:1",
        "",
        ConsumerConfig::new("payments"),
    );
    assert_eq!(nameless.spawn().err(), Some(StartError::NoInboxName));

    let mut config = ConsumerConfig::new("payments");
    config.retry_max = Duration::from_millis(10);
    let consumer = Consumer::new(pool, "amqp://127.0.0.1:1", "payments", config);
    let run = tokio::time::timeout(
        Duration::from_secs(5),
        consumer.run(tokio_util::sync::CancellationToken::new()),
    )
    .await?;
    assert!(
        matches!(
            run,
            Err(ConsumerError::Start(StartError::Config(
                InvalidConfig::RetryBaseAboveMax { .. }
            )))
        ),
        "{run:?}"
    );
    Ok(())
}

/// A pool opens connections when first needed, and a new TLS connection costs
/// about 90 ms with sqlx 0.9.0: opened lazily, each of the first batches in flight
/// would wait that long. The consumer opens one per batch in flight before it
/// consumes. Without that, one message processed leaves one connection open (it
/// failed so: 1 of 4).
#[sqlx::test(migrator = "MIGRATOR")]
async fn the_consumer_opens_a_connection_per_batch_in_flight_before_it_consumes(
    pool: PgPool,
) -> TestResult {
    with_effects(&pool).await?;
    let sandbox = Sandbox::new().await?;
    let consumer_pool = PgPoolOptions::new()
        .max_connections(10)
        .connect_lazy_with(named(&pool, "consumer-warm"));
    let config = config(&sandbox.queue);
    let expected = i64::try_from(config.concurrency)?;
    let consumer = Consumer::new(consumer_pool, amqp_url(), "inventory", config)
        .on("ReserveStock", record)
        .spawn()?;
    sandbox
        .publish(Some("order-1"), "ReserveStock", b"{}")
        .await?;
    wait_until(WAIT, "the message is processed", async || {
        Ok(effects(&pool).await? == 1)
    })
    .await?;
    let opened: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'consumer-warm'",
    )
    .fetch_one(&pool)
    .await?;
    consumer.shutdown().await?;
    sandbox.remove().await?;
    assert_eq!(opened, expected, "connections open after the first message");
    Ok(())
}
