//! A consumer given several RabbitMQ nodes: a node that is not there is skipped, a lost
//! node is left for the next one, and every message still takes effect once. Two
//! `FaultyProxy`s in front of the one broker are two nodes of a cluster.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use testkit::{FaultyProxy, amqp_url, wait_until};
use txoutbox::nodes::InvalidNodes;
use txoutbox_inbox::{BoxError, Consumer, ConsumerConfig, ConsumerError, Context, StartError};

/// The schema, after a check that the servers are up; it also captures the logs of
/// what a test starts, shown when the test fails (`testkit::CheckedMigrator`).
static MIGRATOR: testkit::CheckedMigrator =
    testkit::CheckedMigrator::new(&txoutbox_inbox::MIGRATOR);

type TestResult = anyhow::Result<()>;

const WAIT: Duration = Duration::from_secs(20);

/// A queue of the test's own and a publisher to it, straight to the broker.
struct Queue {
    config: ConsumerConfig,
    connection: Connection,
    channel: Channel,
}

impl Queue {
    async fn new() -> anyhow::Result<Self> {
        let mut config = ConsumerConfig::new(format!("test-nodes-{}", uuid::Uuid::now_v7()));
        config.retry_base = Duration::from_millis(100);
        config.retry_max = Duration::from_millis(400);
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        config.declare(&channel).await?;
        Ok(Self {
            config,
            connection,
            channel,
        })
    }

    /// Publishes `Reserve` for sagas `from..to`, as the relay does.
    async fn publish(&self, sagas: std::ops::Range<usize>) -> anyhow::Result<()> {
        for n in sagas {
            let properties = BasicProperties::default()
                .with_correlation_id(format!("order-{n}").into())
                .with_type("Reserve".into())
                .with_message_id(uuid::Uuid::now_v7().to_string().into());
            self.channel
                .basic_publish(
                    "".into(),
                    self.config.queue.as_str().into(),
                    BasicPublishOptions::default(),
                    b"{}",
                    properties,
                )
                .await?
                .await?;
        }
        Ok(())
    }

    async fn remove(self) -> anyhow::Result<()> {
        let _ = self.config.delete(&self.channel).await;
        let _ = self.connection.close(200, "test done".into()).await;
        Ok(())
    }
}

async fn with_effects(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("CREATE TABLE effects (saga_id text NOT NULL, step text NOT NULL)")
        .execute(pool)
        .await?;
    Ok(())
}

/// Effects, and distinct keys among them.
async fn effects(pool: &PgPool) -> anyhow::Result<(i64, i64)> {
    Ok(
        sqlx::query_as("SELECT count(*), count(DISTINCT (saga_id, step)) FROM effects")
            .fetch_one(pool)
            .await?,
    )
}

/// The effect: one row per message, after a little work, so that deliveries are in
/// hand when a node goes away.
async fn reserve(mut ctx: Context<'_>, _: serde_json::Value) -> Result<(), BoxError> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (saga_id, step) = (ctx.envelope().saga_id.clone(), ctx.envelope().step.clone());
    sqlx::query("INSERT INTO effects (saga_id, step) VALUES ($1, $2)")
        .bind(saga_id)
        .bind(step)
        .execute(ctx.db())
        .await?;
    Ok(())
}

async fn wait_for_effects(pool: &PgPool, count: i64) -> anyhow::Result<()> {
    let what = format!("{count} messages took effect");
    wait_until(WAIT, &what, async || Ok(effects(pool).await?.1 >= count)).await
}

async fn wait_for_connection(proxy: &FaultyProxy, name: &str) -> anyhow::Result<()> {
    let what = format!("the consumer is connected through {name}");
    wait_until(WAIT, &what, async || Ok(proxy.open_connections() == 1)).await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_dead_first_node_is_skipped(pool: PgPool) -> TestResult {
    with_effects(&pool).await?;
    let queue = Queue::new().await?;
    let mut dead: AMQPUri = amqp_url().parse().map_err(anyhow::Error::msg)?;
    dead.authority.port = 1; // nothing listens there
    let consumer = Consumer::new(
        pool.clone(),
        format!("{dead},{}", amqp_url()),
        "inventory",
        queue.config.clone(),
    )
    .on("Reserve", reserve)
    .spawn()?;
    queue.publish(0..20).await?;
    wait_for_effects(&pool, 20).await?;
    consumer.shutdown().await?;
    assert_eq!(effects(&pool).await?, (20, 20));
    queue.remove().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_lost_node_is_left_for_the_next_and_every_message_takes_effect_once(
    pool: PgPool,
) -> TestResult {
    with_effects(&pool).await?;
    let queue = Queue::new().await?;
    let (a, b) = (
        FaultyProxy::to_broker().await?,
        FaultyProxy::to_broker().await?,
    );
    let consumer = Consumer::new(
        pool.clone(),
        format!("{},{}", a.amqp_url(), b.amqp_url()),
        "inventory",
        queue.config.clone(),
    )
    .on("Reserve", reserve)
    .spawn()?;
    queue.publish(0..600).await?;
    wait_for_effects(&pool, 100).await?;
    assert_eq!((a.open_connections(), b.open_connections()), (1, 0));

    // Node A goes away with deliveries in hand: its connection drops and new ones
    // are refused. The consumer moves to B; unacked deliveries come again.
    a.refuse(true);
    a.cut_all();
    wait_for_connection(&b, "B").await?;
    queue.publish(600..700).await?;

    // A comes back and B goes away: the consumer wraps around to A.
    wait_for_effects(&pool, 300).await?;
    a.refuse(false);
    b.refuse(true);
    b.cut_all();
    wait_for_connection(&a, "A").await?;
    queue.publish(700..800).await?;

    wait_for_effects(&pool, 800).await?;
    tokio::time::sleep(Duration::from_millis(300)).await; // a late duplicate would show
    consumer.shutdown().await?;
    assert_eq!(effects(&pool).await?, (800, 800), "each message once");
    queue.remove().await
}

#[tokio::test]
async fn a_node_list_that_cannot_work_is_an_error_before_connecting() -> TestResult {
    let pool = PgPoolOptions::new().connect_lazy("postgres://nobody@127.0.0.1:1/none")?;
    let consumer = |url: &str| {
        Consumer::new(pool.clone(), url, "inventory", ConsumerConfig::new("q"))
            .on("Reserve", reserve)
    };
    let refused = consumer("amqp://app:hunter2@mq-1/shop,amqp://app:hunter2@mq-2/other")
        .spawn()
        .err();
    let Some(StartError::AmqpUrl(InvalidNodes::Mismatch { position: 2, .. })) = &refused else {
        panic!("{refused:?}");
    };
    let said = refused.map(|e| e.to_string()).unwrap_or_default();
    assert!(said.contains("virtual host"), "{said}");
    assert!(!said.contains("hunter2"), "a password leaked: {said}");

    let run = tokio::time::timeout(
        Duration::from_secs(5),
        consumer("amqp://mq-1,").run(tokio_util::sync::CancellationToken::new()),
    )
    .await?;
    assert!(
        matches!(
            run,
            Err(ConsumerError::Start(StartError::AmqpUrl(
                InvalidNodes::EmptyNode { position: 2 }
            )))
        ),
        "{run:?}"
    );
    Ok(())
}
