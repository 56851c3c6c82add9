//! The consumer runtime against a real RabbitMQ (queues of each test's own) and a
//! real PostgreSQL (a fresh database per test), with failures injected for real.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use idempotency::{Consumer, ConsumerConfig, DEAD_REASON_HEADER, Envelope, HandlerFuture};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use testkit::FaultyProxy;

type TestResult = anyhow::Result<()>;

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A queue of the test's own, a publisher, and the dead-letter queue to read.
struct Sandbox {
    queue: String,
    connection: Connection,
    channel: lapin::Channel,
}

impl Sandbox {
    async fn new() -> anyhow::Result<Self> {
        let queue = format!("test-consumer-{}", uuid_like());
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.as_str().into(), durable, FieldTable::default())
            .await?;
        let dead = format!("{queue}.dead");
        channel
            .queue_declare(dead.as_str().into(), durable, FieldTable::default())
            .await?;
        Ok(Self {
            queue,
            connection,
            channel,
        })
    }

    /// Publishes as the relay does: correlation_id = saga_id, type = step.
    async fn publish(&self, saga_id: Option<&str>, step: &str, body: &[u8]) -> anyhow::Result<()> {
        let mut properties = BasicProperties::default()
            .with_type(step.into())
            .with_message_id(uuid_like().into());
        if let Some(saga_id) = saga_id {
            properties = properties.with_correlation_id(saga_id.into());
        }
        self.channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?
            .await?;
        Ok(())
    }

    async fn waiting(&self, queue: &str) -> anyhow::Result<u32> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        Ok(self
            .channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await?
            .message_count())
    }

    /// Everything in the dead-letter queue: each message's dead reason.
    async fn dead_reasons(&self) -> anyhow::Result<Vec<String>> {
        let mut reasons = Vec::new();
        let dead = format!("{}.dead", self.queue);
        while let Some(message) = self
            .channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
            .await?
        {
            let headers = message
                .delivery
                .properties
                .headers()
                .clone()
                .unwrap_or_default();
            match headers.inner().get(DEAD_REASON_HEADER) {
                Some(AMQPValue::LongString(reason)) => reasons.push(reason.to_string()),
                other => reasons.push(format!("no reason header: {other:?}")),
            }
        }
        Ok(reasons)
    }

    async fn remove(self) -> anyhow::Result<()> {
        for suffix in ["", ".dead", ".retry.100", ".retry.200", ".retry.400"] {
            let name = format!("{}{suffix}", self.queue);
            let _ = self
                .channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self.connection.close(200, "test done".into()).await;
        Ok(())
    }
}

/// A name no other test or run uses: process id, clock, and a counter.
fn uuid_like() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn with_effects(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("CREATE TABLE effects (saga_id text NOT NULL, step text NOT NULL, attempt int NOT NULL, at timestamptz DEFAULT clock_timestamp())")
        .execute(pool)
        .await?;
    Ok(())
}

async fn effects(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(pool)
        .await?)
}

/// Records, then stays uncommitted for a while so that copies arrive meanwhile.
fn slow<'a>(envelope: &'a Envelope, conn: &'a mut PgConnection) -> HandlerFuture<'a> {
    Box::pin(async move {
        let result = record(envelope, conn).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        result
    })
}

/// Fails the first two attempts (after writing a row that rolls back), then records.
fn flaky<'a>(envelope: &'a Envelope, conn: &'a mut PgConnection) -> HandlerFuture<'a> {
    Box::pin(async move {
        sqlx::query("INSERT INTO effects (saga_id, step, attempt) VALUES ('tries', 'x', $1)")
            .bind(envelope.attempt as i32)
            .execute(&mut *conn)
            .await?;
        if envelope.attempt < 3 {
            return Err("payment provider unavailable".into());
        }
        record(envelope, conn).await
    })
}

/// Always fails.
fn failing<'a>(_: &'a Envelope, _: &'a mut PgConnection) -> HandlerFuture<'a> {
    Box::pin(async { Err("card declined".into()) })
}

/// Records, then panics if the payload says so: the row must roll back with the panic.
fn panics_on_flag<'a>(envelope: &'a Envelope, conn: &'a mut PgConnection) -> HandlerFuture<'a> {
    Box::pin(async move {
        let result = record(envelope, conn).await;
        if envelope.payload["panic"] == true {
            panic!("stock ledger out of sync for {}", envelope.saga_id);
        }
        result
    })
}

/// The handler under test: one effect row per processed message.
fn record<'a>(envelope: &'a Envelope, conn: &'a mut PgConnection) -> HandlerFuture<'a> {
    Box::pin(async move {
        sqlx::query("INSERT INTO effects (saga_id, step, attempt) VALUES ($1, $2, $3)")
            .bind(&envelope.saga_id)
            .bind(&envelope.step)
            .bind(envelope.attempt as i32)
            .execute(&mut *conn)
            .await?;
        Ok(serde_json::json!({"attempt": envelope.attempt}))
    })
}

fn config(queue: &str) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(queue);
    config.retry_base = Duration::from_millis(100);
    config.retry_max = Duration::from_millis(400);
    config.max_attempts = 3;
    config
}

async fn wait_until<F: AsyncFn() -> anyhow::Result<bool>>(
    what: &str,
    check: F,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await? {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[sqlx::test(migrator = "idempotency::MIGRATOR")]
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
    .spawn();

    wait_until("all three are acked", async || {
        Ok(sandbox.waiting(&sandbox.queue).await? == 0 && effects(&pool).await? == 2)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    consumer.shutdown().await;
    assert_eq!(effects(&pool).await?, 2, "order-1 took effect once");
    assert_eq!(
        sandbox.waiting(&sandbox.queue).await?,
        0,
        "the duplicate was acked, not left behind"
    );
    assert!(sandbox.dead_reasons().await?.is_empty());
    sandbox.remove().await
}

#[sqlx::test(migrator = "idempotency::MIGRATOR")]
async fn the_same_message_to_two_consumers_at_once_takes_effect_once(pool: PgPool) -> TestResult {
    with_effects(&pool).await?;
    let sandbox = Sandbox::new().await?;
    let one = Consumer::new(pool.clone(), amqp_url(), "payments", config(&sandbox.queue))
        .on("Charge", slow)
        .spawn();
    let two = Consumer::new(pool.clone(), amqp_url(), "payments", config(&sandbox.queue))
        .on("Charge", slow)
        .spawn();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..10 {
        sandbox.publish(Some("order-7"), "Charge", b"{}").await?;
    }
    wait_until("all copies are acked", async || {
        Ok(sandbox.waiting(&sandbox.queue).await? == 0)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    one.shutdown().await;
    two.shutdown().await;
    assert_eq!(effects(&pool).await?, 1);
    sandbox.remove().await
}

#[sqlx::test(migrator = "idempotency::MIGRATOR")]
async fn a_failing_handler_is_retried_later_not_at_once(pool: PgPool) -> TestResult {
    with_effects(&pool).await?;
    let sandbox = Sandbox::new().await?;
    let attempts_seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&attempts_seen);
    let consumer = Consumer::new(pool.clone(), amqp_url(), "payments", config(&sandbox.queue))
        .on("Charge", move |envelope, conn| {
            seen.lock()
                .unwrap()
                .push((envelope.attempt, Instant::now()));
            flaky(envelope, conn)
        })
        .spawn();
    sandbox.publish(Some("order-9"), "Charge", b"{}").await?;
    wait_until("the third attempt succeeds", async || {
        Ok(effects(&pool).await? == 2)
    })
    .await?;
    consumer.shutdown().await;

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

#[sqlx::test(migrator = "idempotency::MIGRATOR")]
async fn a_handler_that_keeps_failing_is_dead_lettered_with_its_reason(pool: PgPool) -> TestResult {
    with_effects(&pool).await?;
    let sandbox = Sandbox::new().await?;
    let consumer = Consumer::new(pool.clone(), amqp_url(), "payments", config(&sandbox.queue))
        .on("Charge", failing)
        .spawn();
    sandbox.publish(Some("order-5"), "Charge", b"{}").await?;
    let dead = format!("{}.dead", sandbox.queue);
    wait_until("it is dead-lettered", async || {
        Ok(sandbox.waiting(&dead).await? == 1)
    })
    .await?;
    consumer.shutdown().await;
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

#[sqlx::test(migrator = "idempotency::MIGRATOR")]
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
    .on("ReserveStock", move |envelope, conn| {
        if envelope.saga_id == "order-bad" {
            seen.lock().unwrap().push(envelope.attempt);
        }
        panics_on_flag(envelope, conn)
    })
    .spawn();
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
    let dead = format!("{}.dead", sandbox.queue);
    wait_until(
        "the good ones take effect and the bad one is dead",
        async || Ok(effects(&pool).await? == 20 && sandbox.waiting(&dead).await? == 1),
    )
    .await?;
    // Unacked deliveries go back to the queue when the consumer's channel closes.
    consumer.shutdown().await;
    assert_eq!(
        sandbox.waiting(&sandbox.queue).await?,
        0,
        "nothing is left unacked"
    );
    assert_eq!(*bad_attempts.lock().unwrap(), [1, 2, 3]);
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

#[sqlx::test(migrator = "idempotency::MIGRATOR")]
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
    .spawn();
    sandbox
        .publish(Some("order-1"), "ReserveStock", b"not json")
        .await?;
    sandbox.publish(None, "ReserveStock", b"{}").await?;
    sandbox
        .publish(Some("order-1"), "LaunchRocket", b"{}")
        .await?;
    sandbox
        .publish(Some("order-2"), "ReserveStock", b"{}")
        .await?;
    let dead = format!("{}.dead", sandbox.queue);
    wait_until("three are dead and one processed", async || {
        Ok(sandbox.waiting(&dead).await? == 3 && effects(&pool).await? == 1)
    })
    .await?;
    consumer.shutdown().await;
    let reasons = sandbox.dead_reasons().await?.join(" | ");
    for expected in [
        "payload is not JSON",
        "no saga_id",
        "unknown step: LaunchRocket",
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

#[sqlx::test(migrator = "idempotency::MIGRATOR")]
async fn a_consumer_cut_off_between_commit_and_ack_sees_a_duplicate_next_time(
    pool: PgPool,
) -> TestResult {
    with_effects(&pool).await?;
    let sandbox = Sandbox::new().await?;
    let proxy = Arc::new(FaultyProxy::start("127.0.0.1:5672".parse()?).await?);
    let stalled_once = Arc::new(AtomicBool::new(false));
    let (stall, once) = (Arc::clone(&proxy), Arc::clone(&stalled_once));
    // The first time, the handler's broker link goes dark before the commit: the
    // effect commits, the ack never reaches the broker.
    let consumer = Consumer::new(
        pool.clone(),
        proxy.amqp_url(),
        "inventory",
        config(&sandbox.queue),
    )
    .on("ReserveStock", move |envelope, conn| {
        if !once.swap(true, Ordering::SeqCst) {
            stall.stall(true);
        }
        record(envelope, conn)
    })
    .spawn();
    sandbox
        .publish(Some("order-3"), "ReserveStock", b"{}")
        .await?;
    wait_until(
        "the effect commits",
        async || Ok(effects(&pool).await? == 1),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut_all(); // the connection dies with the delivery unacked
    proxy.stall(false);

    wait_until("the redelivery is acked", async || {
        Ok(sandbox.waiting(&sandbox.queue).await? == 0)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    consumer.shutdown().await;
    assert!(stalled_once.load(Ordering::SeqCst));
    assert_eq!(effects(&pool).await?, 1, "the redelivery was a duplicate");
    assert_eq!(sandbox.waiting(&sandbox.queue).await?, 0);
    sandbox.remove().await
}

#[sqlx::test(migrator = "idempotency::MIGRATOR")]
async fn database_connections_dropped_mid_stream_lose_nothing(pool: PgPool) -> TestResult {
    with_effects(&pool).await?;
    let sandbox = Sandbox::new().await?;
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .application_name("consumer-under-test");
    let consumer_pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    let consumer = Consumer::new(
        consumer_pool,
        amqp_url(),
        "inventory",
        config(&sandbox.queue),
    )
    .on("ReserveStock", record)
    .spawn();
    for n in 0..300 {
        sandbox
            .publish(Some(&format!("order-{n}")), "ReserveStock", b"{}")
            .await?;
    }
    for at in [50, 150] {
        wait_until("some are processed", async || {
            Ok(effects(&pool).await? >= at)
        })
        .await?;
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'consumer-under-test'")
            .execute(&pool)
            .await?;
    }
    wait_until("all are processed", async || {
        Ok(effects(&pool).await? >= 300 && sandbox.waiting(&sandbox.queue).await? == 0)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    consumer.shutdown().await;
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
