//! A PostgreSQL failover under the relay, an inbox consumer and a saga orchestrator:
//! a primary and a synchronous streaming standby of the test's own
//! (`testkit::PostgresNode`), reached through a proxy that plays the virtual IP. Mid-drain the
//! primary is stopped with no warning, the standby promoted and the proxy switched to
//! it, while a writer goes on writing. Nothing restarts: the services find the new
//! primary through their pools. Skipped, with a note, where the PostgreSQL server
//! programs are not installed.
//!
//! `TXOUTBOX_FAILOVER_ASYNC=1` runs it with asynchronous replication instead, to see
//! the check for a published row missing from the new primary fire (it may or may not:
//! see docs/operations/failover.md).

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use testkit::{PostgresNode, Replication};
use tokio::sync::Mutex;
use txoutbox::Message;
use txoutbox_inbox::{BoxError, Consumer, ConsumerConfig, ConsumerHandle, Context};
use txoutbox_relay::{Relay, RelayHandle};
use txoutbox_saga::{Orchestrator, OrchestratorConfig, OrchestratorHandle, Registry, Saga};

use crate::support::*;

/// Generous: every wait here is for something that happens in seconds.
const WAIT: Duration = Duration::from_secs(120);
/// Ordering keys the writer interleaves.
const KEYS: usize = 20;
/// The routing key of the writer's rows (the consumer's binding).
const ROWS: &str = "failover.rows";
/// Sagas started before the failover, and as many after it.
const SAGAS: usize = 10;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    order_id: i64,
}

/// One step that no participant answers: it times out and is compensated, the
/// compensation times out too, and the saga is `failed`; the orchestrator's sweep
/// alone moves it, so a saga that gets there shows the sweep went on.
fn unanswered() -> Saga<Order> {
    let order = |o: &Order| serde_json::json!({ "order_id": o.order_id });
    Saga::<Order>::define("failover", 1)
        .compensation_attempts(1)
        .step("reserve")
        .action("failover.reserve", order)
        .compensate("failover.release", order)
        .timeout(Duration::from_secs(2))
        .build()
        .expect("a valid definition")
}

/// The consumer's effect: one row per delivery it handles.
async fn record(mut ctx: Context<'_>, _: serde_json::Value) -> Result<(), BoxError> {
    let message_id = ctx.envelope().message_id.clone();
    sqlx::query("INSERT INTO effects (message_id) VALUES ($1)")
        .bind(message_id)
        .execute(ctx.db())
        .await?;
    Ok(())
}

/// A pool through the proxy, as a service's would be through a virtual IP.
async fn pool(url: &str) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await?)
}

/// A consumer's config with short retry delays (three retry queues).
fn retrying(queue: String) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(queue);
    // A database outage spends no attempt; what it retries comes back quickly.
    config.retry_base = Duration::from_millis(100);
    config.retry_max = Duration::from_millis(400);
    config
}

#[tokio::test]
async fn a_failover_to_a_synchronous_standby_loses_no_published_row() -> TestResult {
    // No `CheckedMigrator` here to do it: the relay's, consumer's and orchestrator's
    // logs are kept, and shown if the test fails.
    testkit::capture_logs();
    let how = "the postgresql server package installs initdb, pg_ctl and pg_basebackup";
    if !testkit::installed_or_skip("PostgreSQL server", PostgresNode::installed(), how)? {
        return Ok(());
    }
    let replication = match std::env::var_os("TXOUTBOX_FAILOVER_ASYNC") {
        Some(value) if !value.is_empty() => Replication::Asynchronous,
        _ => Replication::Synchronous,
    };
    let clock = Instant::now();
    let primary = PostgresNode::start_primary("failover-primary").await?;
    let standby = primary.standby("failover-standby", replication).await?;
    primary.create_database("app").await?;
    eprintln!(
        "primary and {replication:?} standby up in {:?}",
        clock.elapsed()
    );
    let proxy = FaultyProxy::start(primary.address()).await?;
    let url = format!("postgres://postgres@127.0.0.1:{}/app", proxy.port());
    let setup = pool(&url).await?;
    txoutbox::MIGRATOR.run(&setup).await?;
    sqlx::query("CREATE TABLE effects (message_id text NOT NULL)")
        .execute(&setup)
        .await?;
    setup.close().await;

    let sandbox = Sandbox::new("#").await?;
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let consumer_config = retrying(format!("test-failover-{suffix}")).bind(&sandbox.exchange, ROWS);
    let mut orchestrator_config = OrchestratorConfig::new(&sandbox.exchange);
    orchestrator_config.consumer = retrying(format!("test-failover-saga-{suffix}"));
    let queues = [
        consumer_config.clone(),
        orchestrator_config.consumer.clone(),
    ];
    let mut failover = Failover {
        url,
        proxy,
        primary,
        standby,
        sandbox,
    };
    let services = failover.start(consumer_config, orchestrator_config).await;
    let outcome = match &services {
        Ok(services) => failover.run(services).await,
        Err(_) => Ok(()),
    };
    let stopped = match services {
        Ok(services) => services.stop().await,
        Err(error) => Err(error),
    };
    let deleted = delete_queues(&queues).await;
    let removed = failover.sandbox.remove().await;
    failover.primary.remove().await?;
    failover.standby.remove().await?;
    outcome.and(stopped).and(deleted).and(removed)
}

/// What the failover happens to: the servers, the proxy in front of them, and the
/// broker sandbox the relay publishes to.
struct Failover {
    url: String,
    proxy: FaultyProxy,
    primary: PostgresNode,
    standby: PostgresNode,
    sandbox: Sandbox,
}

/// The services, each on a pool of its own through the proxy.
struct Services {
    relay: RelayHandle,
    consumer: ConsumerHandle,
    orchestrator: OrchestratorHandle,
    /// The pool the test reads and writes through.
    pool: PgPool,
}

impl Services {
    async fn stop(self) -> TestResult {
        let relay = self.relay.shutdown().await;
        let consumer = self.consumer.shutdown().await;
        let orchestrator = self.orchestrator.shutdown().await;
        self.pool.close().await;
        relay?;
        consumer?;
        orchestrator?;
        Ok(())
    }
}

/// Deletes the consumers' queues (their own, dead-letter and retry queues): the
/// broker's file handles are few.
async fn delete_queues(configs: &[ConsumerConfig]) -> TestResult {
    let connection =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    for config in configs {
        config.delete(&channel).await?;
    }
    let _ = connection.close(200, "deleted".into()).await;
    Ok(())
}

/// What the writer committed: the ids of the rows whose commit returned, and those of
/// rows written after the proxy moved to the new primary.
#[derive(Default)]
struct Written {
    committed: HashSet<String>,
    after_switch: HashSet<String>,
}

impl Failover {
    async fn start(
        &self,
        consumer_config: ConsumerConfig,
        orchestrator_config: OrchestratorConfig,
    ) -> anyhow::Result<Services> {
        let mut config = fast_config(&self.sandbox.exchange);
        // Sent rows are kept, so that the new primary shows what was published.
        config.retention = Some(Duration::from_secs(3_600));
        let relay = Relay::new(pool(&self.url).await?, amqp_url(), config).spawn();
        let consumer = Consumer::new(
            pool(&self.url).await?,
            amqp_url(),
            "failover",
            consumer_config,
        )
        .on("row", record)
        .spawn()?;
        let orchestrator = Orchestrator::new(
            pool(&self.url).await?,
            amqp_url(),
            Registry::new().register(unanswered()),
            orchestrator_config,
        )
        .spawn()?;
        Ok(Services {
            relay,
            consumer,
            orchestrator,
            pool: pool(&self.url).await?,
        })
    }

    async fn run(&mut self, services: &Services) -> TestResult {
        let pool = &services.pool;
        // Its queue is bound once it is connected: from then on it misses no row.
        let consumer = services.consumer.metrics();
        wait_until(WAIT, "the consumer is connected", async || {
            Ok(consumer.connected())
        })
        .await?;
        start_sagas(pool, 0..SAGAS).await?;
        let written = Arc::new(Mutex::new(Written::default()));
        let switched = Arc::new(AtomicBool::new(false));
        let writing = Arc::new(AtomicBool::new(true));
        // A backlog, so that the failover comes mid-drain, and a writer that goes on.
        for _ in 0..100 {
            write_batch(pool, &written, false).await?;
        }
        let writer = tokio::spawn(write_on(
            pool.clone(),
            Arc::clone(&written),
            Arc::clone(&switched),
            Arc::clone(&writing),
        ));

        self.sandbox.wait_for_count(1_000, WAIT).await?;
        let published_before = self.sandbox.received().len();
        let stopped_at = Instant::now();
        self.primary.stop_immediate().await?;
        self.standby.promote().await?;
        self.proxy.switch_to(self.standby.address());
        switched.store(true, Ordering::SeqCst);
        let switched_after = stopped_at.elapsed();
        start_sagas(pool, SAGAS..2 * SAGAS).await?;

        // The first row written on the new primary arrives.
        let first = async || {
            let after = written.lock().await.after_switch.clone();
            Ok(self
                .sandbox
                .received()
                .iter()
                .any(|m| after.contains(&m.message_id)))
        };
        wait_until(WAIT, "a row written on the new primary is published", first).await?;
        let first_published = stopped_at.elapsed();
        let enough = async || Ok(written.lock().await.after_switch.len() >= 2_000);
        wait_until(WAIT, "2,000 rows are written on the new primary", enough).await?;
        writing.store(false, Ordering::SeqCst);
        writer.await??;

        wait_until_drained(pool, WAIT).await?;
        let on_new: HashSet<String> = sqlx::query_scalar("SELECT id::text FROM outbox")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
        // Every row on the new primary is published ...
        self.sandbox.wait_for_all(&on_new, WAIT).await?;
        let received = self.sandbox.received();
        // ... read again after what arrived was taken: the sweep goes on writing
        // (a saga's next timeout), and a row written after the first read may have
        // been published since.
        let on_new: HashSet<String> = sqlx::query_scalar("SELECT id::text FROM outbox")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
        // ... and every message published has its row there: no transaction the
        // relay saw committed was lost with the old primary.
        let missing: Vec<&str> = received
            .iter()
            .map(|m| m.message_id.as_str())
            .filter(|id| !on_new.contains(*id))
            .collect();
        let lost_commits = {
            let written = written.lock().await;
            written.committed.difference(&on_new).count()
        };
        let ids: HashSet<&str> = received.iter().map(|m| m.message_id.as_str()).collect();
        eprintln!(
            "failover: {published_before} messages published before the stop; proxy \
             switched {switched_after:?} after it; first row written on the new primary \
             published {first_published:?} after it; {} messages, {} distinct, {} rows \
             on the new primary; {} published but missing there; {lost_commits} \
             acknowledged commits missing there",
            received.len(),
            ids.len(),
            on_new.len(),
            missing.len(),
        );
        anyhow::ensure!(
            missing.is_empty(),
            "{} message(s) published whose outbox row is not on the new primary \
             (lost with the old primary), e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        anyhow::ensure!(
            lost_commits == 0,
            "{lost_commits} commit(s) that returned were lost"
        );
        let rows: Vec<Received> = received
            .into_iter()
            .filter(|m| m.routing_key == ROWS)
            .collect();
        // An error, not a panic: the caller still cleans up.
        std::panic::catch_unwind(AssertUnwindSafe(|| assert_order_per_key(&rows)))
            .map_err(|_| anyhow::anyhow!("a row arrived first before an earlier one of its key"))?;

        // The consumer took each row's message once.
        let row_ids: HashSet<String> = rows.iter().map(|m| m.message_id.clone()).collect();
        let took_all = async || Ok(effects(pool).await?.1 >= row_ids.len() as i64);
        let took = wait_until(WAIT, "the consumer took every row's message", took_all).await;
        if took.is_err() {
            eprintln!(
                "effects {:?} of {} rows; consumer finished: {}; {}",
                effects(pool).await?,
                row_ids.len(),
                services.consumer.is_finished(),
                services.consumer.metrics().render()
            );
        }
        took?;
        let (all, distinct) = effects(pool).await?;
        anyhow::ensure!(
            (all, distinct) == (row_ids.len() as i64, row_ids.len() as i64),
            "each message takes effect once: {all} effects of {distinct} messages, {} rows",
            row_ids.len()
        );
        anyhow::ensure!(!services.consumer.is_finished(), "the consumer stopped");

        // The sweep went on: every saga, started before or after, timed out twice.
        let ended = async || {
            let open: i64 =
                sqlx::query_scalar("SELECT count(*) FROM saga_instance WHERE state <> 'failed'")
                    .fetch_one(pool)
                    .await?;
            Ok(open == 0)
        };
        wait_until(WAIT, "the sweep ends every saga", ended).await?;
        let sagas: i64 = sqlx::query_scalar("SELECT count(*) FROM saga_instance")
            .fetch_one(pool)
            .await?;
        anyhow::ensure!(sagas == 2 * SAGAS as i64, "{sagas} sagas");
        Ok(())
    }
}

/// Effects, and distinct messages among them.
async fn effects(pool: &PgPool) -> anyhow::Result<(i64, i64)> {
    Ok(
        sqlx::query_as("SELECT count(*), count(DISTINCT message_id) FROM effects")
            .fetch_one(pool)
            .await?,
    )
}

async fn start_sagas(pool: &PgPool, orders: std::ops::Range<usize>) -> TestResult {
    for order in orders {
        let order_id = i64::try_from(order)?;
        let saga_id = format!("order-{order}");
        // Retried: the first tries after a failover may meet a connection that is gone.
        wait_until(WAIT, "a saga starts", async || {
            let started = async {
                let mut tx = pool.begin().await?;
                txoutbox_saga::start(&mut tx, &unanswered(), &saga_id, &Order { order_id }).await?;
                tx.commit().await?;
                anyhow::Ok(())
            };
            Ok(started.await.is_ok())
        })
        .await?;
    }
    Ok(())
}

/// Writes batches until `writing` turns false, through every failure (the database
/// away, a connection cut): a commit that fails is simply not counted.
async fn write_on(
    pool: PgPool,
    written: Arc<Mutex<Written>>,
    switched: Arc<AtomicBool>,
    writing: Arc<AtomicBool>,
) -> TestResult {
    while writing.load(Ordering::SeqCst) {
        let after_switch = switched.load(Ordering::SeqCst);
        if write_batch(&pool, &written, after_switch).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// One row per ordering key, `n` growing in write order, in one transaction.
async fn write_batch(pool: &PgPool, written: &Mutex<Written>, after_switch: bool) -> TestResult {
    static N: AtomicI64 = AtomicI64::new(0);
    let mut batch = Vec::with_capacity(KEYS);
    for k in 0..KEYS {
        let n = N.fetch_add(1, Ordering::SeqCst);
        // The inbox knows a message by saga id and step: one saga id per row, and
        // the key orders them.
        batch.push(
            Message::builder(format!("row-{n}"), "row", ROWS)
                .ordering_key(format!("key-{k}"))
                .payload(&serde_json::json!({"key": k, "n": n}))?,
        );
    }
    let ids = txoutbox::enqueue_batch(pool, &batch).await?;
    let mut written = written.lock().await;
    for id in ids {
        if after_switch {
            written.after_switch.insert(id.to_string());
        }
        written.committed.insert(id.to_string());
    }
    Ok(())
}
