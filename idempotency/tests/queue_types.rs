//! The consumer's queue types against a real RabbitMQ (3.10 or later): quorum by
//! default, classic by config, a queue of another type refused by name, and failures
//! retried and dead-lettered through queues of the configured type.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ErrorKind};
use sqlx::PgPool;
use testkit::{KeptLogs, amqp_url, header_text, take_headers, wait_until};
use txoutbox::wire::{ATTEMPTS_HEADER, dead_queue, retry_queue};
use txoutbox_inbox::{
    BoxError, Consumer, ConsumerConfig, ConsumerError, Context, DEAD_REASON_HEADER, DeclareError,
    QueueType,
};

/// The schema, after a check that the servers are up; it also captures the logs of
/// what a test starts, shown when the test fails (`testkit::CheckedMigrator`).
static MIGRATOR: testkit::CheckedMigrator =
    testkit::CheckedMigrator::new(&txoutbox_inbox::MIGRATOR);

type TestResult = anyhow::Result<()>;

/// How long a test waits for the consumer to get somewhere.
const WAIT: Duration = Duration::from_secs(30);

/// A broker connection, and the queues of one test's consumer.
struct Broker {
    connection: Connection,
    config: ConsumerConfig,
}

impl Broker {
    /// Nothing declared yet: `queue_type` retries after 100 and 200 ms, 3 attempts.
    async fn new(queue_type: QueueType) -> anyhow::Result<Self> {
        testkit::require_servers();
        let mut config =
            ConsumerConfig::new(format!("test-qtype-{}", uuid::Uuid::now_v7().simple()));
        config.queue_type = queue_type;
        config.retry_base = Duration::from_millis(100);
        config.retry_max = Duration::from_millis(400);
        config.max_attempts = 3;
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
        Ok(Self { connection, config })
    }

    /// A channel of its own: a refused declaration closes the one it was made on.
    async fn channel(&self) -> anyhow::Result<Channel> {
        let channel = self.connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(channel)
    }

    /// The consumer's queues: its own, `.dead`, and each retry queue.
    fn queues(&self) -> Vec<String> {
        let queue = &self.config.queue;
        let retries = self.config.retry_delays().into_iter();
        [queue.clone(), dead_queue(queue)]
            .into_iter()
            .chain(retries.map(|delay| retry_queue(queue, delay)))
            .collect()
    }

    /// Declares `queue` with a durable flag and `arguments`: `Ok(true)` if the broker
    /// accepts them as what the queue already has, `Ok(false)` if it refuses them
    /// (406). The queue must exist: a passive declare checks that first, so that this
    /// never creates one.
    async fn has_arguments(
        &self,
        queue: &str,
        arguments: &[(&str, AMQPValue)],
    ) -> anyhow::Result<bool> {
        let channel = self.channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await?;
        let mut table = FieldTable::default();
        for (name, value) in arguments {
            table.insert((*name).into(), value.clone());
        }
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        match channel.queue_declare(queue.into(), durable, table).await {
            Ok(_) => Ok(true),
            Err(error) => match error.kind() {
                ErrorKind::ProtocolError(amqp)
                    if amqp.kind() == &AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) =>
                {
                    Ok(false)
                }
                _ => Err(error.into()),
            },
        }
    }

    async fn publish(&self, channel: &Channel, saga_id: &str, step: &str) -> anyhow::Result<()> {
        let properties = BasicProperties::default()
            .with_type(step.into())
            .with_correlation_id(saga_id.into())
            .with_message_id(uuid::Uuid::now_v7().to_string().into());
        channel
            .basic_publish(
                "".into(),
                self.config.queue.as_str().into(),
                BasicPublishOptions::default(),
                b"{}",
                properties,
            )
            .await?
            .await?;
        Ok(())
    }

    async fn waiting(&self, queue: &str) -> anyhow::Result<u32> {
        let channel = self.channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await?;
        Ok(declared.message_count())
    }

    /// Takes the one message of `.dead` and returns its headers.
    async fn dead_letter(&self) -> anyhow::Result<FieldTable> {
        let channel = self.channel().await?;
        let dead = dead_queue(&self.config.queue);
        let mut taken = take_headers(&channel, &dead, 1, WAIT).await?;
        Ok(taken.remove(0))
    }

    async fn remove(self) -> anyhow::Result<()> {
        let channel = self.connection.create_channel().await?;
        self.config.delete(&channel).await?;
        let _ = self.connection.close(200, "test done".into()).await;
        Ok(())
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

fn number(value: i64) -> AMQPValue {
    AMQPValue::LongLongInt(value)
}

fn header<'a>(headers: &'a FieldTable, name: &str) -> Option<&'a AMQPValue> {
    headers.inner().get(name)
}

async fn succeeding(_: Context<'_>, _: serde_json::Value) -> Result<(), BoxError> {
    Ok(())
}

/// Always fails; notes when it was called.
async fn failing(
    _: Context<'_>,
    _: serde_json::Value,
    calls: Arc<Mutex<Vec<Instant>>>,
) -> Result<(), BoxError> {
    calls.lock().unwrap().push(Instant::now());
    Err("card declined".into())
}

#[tokio::test]
async fn queues_are_quorum_by_default_with_at_least_once_dead_lettering() -> TestResult {
    let broker = Broker::new(QueueType::default()).await?;
    assert_eq!(broker.config.queue_type, QueueType::Quorum);
    broker.config.declare(&broker.channel().await?).await?;
    let queue = broker.config.queue.clone();
    let quorum = ("x-queue-type", text("quorum"));
    let at_least_once = [
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-strategy", text("at-least-once")),
        ("x-overflow", text("reject-publish")),
    ];
    let mut main = vec![
        quorum.clone(),
        ("x-delivery-limit", number(20)),
        ("x-dead-letter-routing-key", text(&dead_queue(&queue))),
    ];
    main.extend(at_least_once.clone());
    assert!(broker.has_arguments(&queue, &main).await?, "{queue}");
    let dead = dead_queue(&queue);
    assert!(
        broker
            .has_arguments(&dead, std::slice::from_ref(&quorum))
            .await?
    );
    for delay in broker.config.retry_delays() {
        let retry = retry_queue(&queue, delay);
        let mut arguments = vec![
            quorum.clone(),
            ("x-message-ttl", number(delay.as_millis() as i64)),
            ("x-dead-letter-routing-key", text(&queue)),
        ];
        arguments.extend(at_least_once.clone());
        assert!(broker.has_arguments(&retry, &arguments).await?, "{retry}");
    }
    // And none of them is classic.
    for name in broker.queues() {
        let classic = [("x-queue-type", text("classic"))];
        assert!(!broker.has_arguments(&name, &classic).await?, "{name}");
    }
    broker.remove().await
}

#[tokio::test]
async fn queues_are_classic_by_config_as_before() -> TestResult {
    let broker = Broker::new(QueueType::Classic).await?;
    broker.config.declare(&broker.channel().await?).await?;
    let queue = broker.config.queue.clone();
    let classic = ("x-queue-type", text("classic"));
    for name in [queue.clone(), dead_queue(&queue)] {
        assert!(
            broker
                .has_arguments(&name, std::slice::from_ref(&classic))
                .await?,
            "{name}"
        );
        // Queues this crate declared before queue types, without the argument, are
        // the same queues.
        assert!(broker.has_arguments(&name, &[]).await?, "{name}");
    }
    for delay in broker.config.retry_delays() {
        let retry = retry_queue(&queue, delay);
        let arguments = [
            classic.clone(),
            ("x-message-ttl", number(delay.as_millis() as i64)),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&queue)),
        ];
        assert!(broker.has_arguments(&retry, &arguments).await?, "{retry}");
    }
    for name in broker.queues() {
        let quorum = [("x-queue-type", text("quorum"))];
        assert!(!broker.has_arguments(&name, &quorum).await?, "{name}");
    }
    broker.remove().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_queue_of_another_type_stops_the_consumer_with_an_error_naming_both(
    pool: PgPool,
) -> TestResult {
    let broker = Broker::new(QueueType::Classic).await?;
    broker.config.declare(&broker.channel().await?).await?;
    let queue = broker.config.queue.clone();
    let mut quorum = broker.config.clone();
    quorum.queue_type = QueueType::Quorum;

    // Declared directly: the error, typed, and the next channel works.
    let refused = quorum.declare(&broker.channel().await?).await;
    let Err(error @ DeclareError::TypeMismatch { .. }) = refused else {
        panic!("expected a type mismatch, got {refused:?}");
    };
    assert!(error.is_permanent());
    let message = error.to_string();
    // `.dead` is declared first: it is the one named.
    let dead = dead_queue(&queue);
    assert!(
        message.contains(&format!("'{dead}'"))
            && message.contains("exists as a classic queue")
            && message.contains("declares it as a quorum queue"),
        "{message}"
    );

    // A consumer stops by itself, at once (no reconnect loop), with the same error,
    // logged once at error level. The runtime has one thread: the subscriber set for
    // it sees the consumer's task.
    let logs = KeptLogs::default();
    let logging = logs.keep_on_this_thread();
    let started = Instant::now();
    let consumer = Consumer::new(pool.clone(), amqp_url(), "payments", quorum.clone())
        .on("Charge", succeeding)
        .spawn()?;
    wait_until(WAIT, "the consumer stops by itself", async || {
        Ok(consumer.is_finished())
    })
    .await?;
    assert!(started.elapsed() < Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(logging);
    assert_eq!(logs.count("ERROR", "exists as a classic queue"), 1);
    assert_eq!(logs.count("WARN", "reconnecting"), 0);
    match consumer.shutdown().await {
        Err(ConsumerError::Declare(DeclareError::TypeMismatch {
            queue: named,
            declared,
            existing,
        })) => {
            assert_eq!(
                (named.as_str(), declared, existing.as_str()),
                (dead.as_str(), QueueType::Quorum, "classic")
            );
        }
        other => panic!("expected a type mismatch, got {other:?}"),
    }

    // `run` returns it too. A retry queue left by an earlier release (classic, with a
    // TTL, no type named) is refused by name; RabbitMQ names its first differing
    // argument rather than the type.
    let channel = broker.channel().await?;
    broker.config.delete(&channel).await?;
    let retry = retry_queue(&queue, quorum.retry_base);
    let legacy = [
        ("x-message-ttl", number(100)),
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text(&queue)),
    ];
    let mut arguments = FieldTable::default();
    for (name, value) in legacy {
        arguments.insert(name.into(), value);
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(retry.as_str().into(), durable, arguments)
        .await?;
    let consumer = Consumer::new(pool, amqp_url(), "payments", quorum.clone());
    let run = tokio::time::timeout(
        WAIT,
        consumer.run(tokio_util::sync::CancellationToken::new()),
    )
    .await?;
    let Err(ConsumerError::Declare(error @ DeclareError::Refused { .. })) = run else {
        panic!("expected a refusal, got {run:?}");
    };
    let message = error.to_string();
    assert!(
        message.contains(&format!("queue '{retry}' as a quorum queue"))
            && message.contains("inequivalent arg"),
        "{message}"
    );
    // The quorum queues declared before it stay; the config deletes them all.
    quorum.delete(&broker.channel().await?).await?;
    broker.remove().await
}

/// A handler that always fails: its message waits in the retry queues (1 then 2
/// retry delays), comes back to the queue each time, and ends in `.dead` with its
/// reason, through queues of `queue_type`.
async fn retried_then_dead_lettered(pool: PgPool, queue_type: QueueType) -> TestResult {
    let broker = Broker::new(queue_type).await?;
    let channel = broker.channel().await?;
    broker.config.declare(&channel).await?;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let consumer = Consumer::new(pool, amqp_url(), "payments", broker.config.clone())
        .on_with("Charge", Arc::clone(&calls), failing)
        .spawn()?;
    broker.publish(&channel, "order-1", "Charge").await?;
    let dead = dead_queue(&broker.config.queue);
    wait_until(WAIT, "the message is dead-lettered", async || {
        Ok(broker.waiting(&dead).await? == 1)
    })
    .await?;
    consumer.shutdown().await?;

    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 3, "one run per attempt");
    let waits: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        waits[0] >= Duration::from_millis(100) && waits[1] >= Duration::from_millis(200),
        "each retry waited its delay in a retry queue: {waits:?}"
    );
    let headers = broker.dead_letter().await?;
    let reason = header_text(&headers, DEAD_REASON_HEADER);
    assert!(
        reason.contains("failed 3 times") && reason.contains("card declined"),
        "{reason}"
    );
    assert_eq!(header(&headers, ATTEMPTS_HEADER), Some(&number(3)));
    for name in broker.queues() {
        assert_eq!(broker.waiting(&name).await?, 0, "{name} is empty");
    }
    broker.remove().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_failing_handler_is_retried_through_quorum_queues_then_dead_lettered(
    pool: PgPool,
) -> TestResult {
    retried_then_dead_lettered(pool, QueueType::Quorum).await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_failing_handler_is_retried_through_classic_queues_then_dead_lettered(
    pool: PgPool,
) -> TestResult {
    retried_then_dead_lettered(pool, QueueType::Classic).await
}

#[tokio::test]
async fn a_message_never_settled_is_set_aside_in_dead_after_20_deliveries() -> TestResult {
    let broker = Broker::new(QueueType::Quorum).await?;
    let channel = broker.channel().await?;
    broker.config.declare(&channel).await?;
    broker.publish(&channel, "order-9", "Charge").await?;
    // Each delivery ends unsettled, as when a consumer's process dies with the message
    // in hand: given back to the queue.
    let queue = broker.config.queue.as_str();
    let mut deliveries = 0;
    let deadline = Instant::now() + WAIT;
    while deliveries <= 20 && Instant::now() < deadline {
        let got = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await?;
        match got {
            Some(message) => {
                deliveries += 1;
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                };
                message.delivery.nack(requeue).await?;
            }
            None if broker.waiting(&dead_queue(queue)).await? == 1 => break,
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert_eq!(deliveries, 21, "the first delivery and 20 more");
    let dead = dead_queue(queue);
    wait_until(WAIT, "the broker dead-letters it", async || {
        Ok(broker.waiting(&dead).await? == 1)
    })
    .await?;
    assert_eq!(broker.waiting(queue).await?, 0);
    let headers = broker.dead_letter().await?;
    let Some(AMQPValue::FieldArray(deaths)) = header(&headers, "x-death") else {
        panic!("no x-death header: {headers:?}");
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        panic!("an empty x-death: {deaths:?}");
    };
    assert_eq!(
        header(death, "reason"),
        Some(&text("delivery_limit")),
        "{death:?}"
    );
    broker.remove().await
}
