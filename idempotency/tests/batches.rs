//! Deliveries processed together in one transaction: a failing handler takes
//! nothing of the others' with it, and a batch cut off between its commit and its
//! ack comes back as duplicates. Real RabbitMQ, real PostgreSQL, faults for real.
//!
//! Each test makes its batch happen: the consumer runs one batch at a time, the
//! first message's handler holds the slot for a while, and the rest are published
//! meanwhile, so they are all waiting when the slot frees up and go as one batch.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Sandbox, config, effects};
use sqlx::PgPool;
use testkit::{FaultyProxy, amqp_url, wait_until};
use txoutbox::wire::dead_queue;
use txoutbox_inbox::{BoxError, Consumer, ConsumerHandle, Context};

/// The schema, after a check that the servers are up; it also captures the logs of
/// what a test starts, shown when the test fails (`testkit::CheckedMigrator`).
static MIGRATOR: testkit::CheckedMigrator =
    testkit::CheckedMigrator::new(&txoutbox_inbox::MIGRATOR);

type TestResult = anyhow::Result<()>;

const WAIT: Duration = Duration::from_secs(30);

/// How long the first message's handler holds the consumer's only slot.
const HOLD: Duration = Duration::from_millis(800);

/// One effect row per handler run that committed, with the transaction it committed in.
async fn with_effects(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TABLE effects (saga_id text NOT NULL, attempt int NOT NULL,
                               tx bigint NOT NULL DEFAULT txid_current())",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// A consumer of `sandbox`'s queue running `script`, reaching the broker at `url`,
/// one batch at a time, so the batch under test forms behind the first message.
fn spawn_scripted(
    pool: &PgPool,
    url: String,
    sandbox: &Sandbox,
    script: Script,
) -> anyhow::Result<ConsumerHandle> {
    let mut config = config(&sandbox.queue);
    config.concurrency = 1;
    Ok(Consumer::new(pool.clone(), url, "inventory", config)
        .on_with("Reserve", script, scripted)
        .spawn()?)
}

/// What a test's handler does besides writing its effect row.
#[derive(Clone, Default)]
struct Script {
    /// Fails on the first attempt only.
    fails_once: &'static str,
    /// Fails on every attempt.
    fails_always: &'static str,
    /// Stalls this broker link, the first time a message other than the first runs.
    stall: Option<(Arc<FaultyProxy>, Arc<AtomicBool>)>,
}

/// Writes the effect row first (so a failure has something to roll back), then
/// does what the script says. `order-0` holds the slot while the batch forms.
async fn scripted(
    mut ctx: Context<'_>,
    _: serde_json::Value,
    script: Script,
) -> Result<(), BoxError> {
    let envelope = ctx.envelope();
    sqlx::query("INSERT INTO effects (saga_id, attempt) VALUES ($1, $2)")
        .bind(&envelope.saga_id)
        .bind(envelope.attempt as i32)
        .execute(ctx.db())
        .await?;
    if envelope.saga_id == "order-0" {
        tokio::time::sleep(HOLD).await;
        return Ok(());
    }
    if let Some((proxy, stalled)) = &script.stall
        && !stalled.swap(true, Ordering::SeqCst)
    {
        proxy.stall(true);
    }
    let fails = envelope.saga_id == script.fails_always
        || (envelope.saga_id == script.fails_once && envelope.attempt == 1);
    if fails {
        return Err(format!("{} declined", envelope.saga_id).into());
    }
    Ok(())
}

/// Publishes `order-0`, waits until its handler holds the slot, then `order-1` to
/// `order-{n}`, which wait behind it and form one batch.
async fn publish_a_batch(sandbox: &Sandbox, pool: &PgPool, n: usize) -> anyhow::Result<()> {
    sandbox.publish(Some("order-0"), "Reserve", b"{}").await?;
    wait_until(WAIT, "order-0 holds the slot", async || {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state = 'idle in transaction'",
        )
        .fetch_one(pool)
        .await?;
        Ok(running > 0)
    })
    .await?;
    for i in 1..=n {
        let saga_id = format!("order-{i}");
        sandbox.publish(Some(&saga_id), "Reserve", b"{}").await?;
    }
    Ok(())
}

/// The transactions the first runs of `order-1` to `order-{n}` committed in.
async fn first_run_transactions(pool: &PgPool) -> anyhow::Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT tx FROM effects WHERE saga_id <> 'order-0' AND attempt = 1",
    )
    .fetch_all(pool)
    .await?)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_failing_handler_in_a_batch_takes_nothing_of_the_others_with_it(
    pool: PgPool,
) -> TestResult {
    with_effects(&pool).await?;
    let sandbox = Sandbox::new().await?;
    let script = Script {
        fails_once: "order-3",
        fails_always: "order-7",
        stall: None,
    };
    let consumer = spawn_scripted(&pool, amqp_url(), &sandbox, script)?;
    publish_a_batch(&sandbox, &pool, 10).await?;

    let dead = dead_queue(&sandbox.queue);
    wait_until(WAIT, "ten take effect and order-7 is dead", async || {
        Ok(effects(&pool).await? == 10 && sandbox.waiting(&dead).await? == 1)
    })
    .await?;
    consumer.shutdown().await?;

    let per_saga: Vec<(String, i64)> =
        sqlx::query_as("SELECT saga_id, count(*) FROM effects GROUP BY saga_id ORDER BY saga_id")
            .fetch_all(&pool)
            .await?;
    let expected: Vec<(String, i64)> = [0, 1, 10, 2, 3, 4, 5, 6, 8, 9]
        .iter()
        .map(|i| (format!("order-{i}"), 1))
        .collect();
    assert_eq!(per_saga, expected, "each took effect once; order-7 never");
    // The eight that passed at their first attempt committed together, in one
    // transaction: the two failures rolled back only themselves.
    assert_eq!(first_run_transactions(&pool).await?.len(), 1);
    let retried: i32 = sqlx::query_scalar("SELECT attempt FROM effects WHERE saga_id = 'order-3'")
        .fetch_one(&pool)
        .await?;
    assert_eq!(retried, 2, "order-3 took effect on its retry");
    let keys: Vec<String> = sqlx::query_scalar("SELECT saga_id FROM inbox ORDER BY saga_id")
        .fetch_all(&pool)
        .await?;
    assert_eq!(keys.len(), 10, "{keys:?}");
    assert!(!keys.contains(&"order-7".to_owned()), "{keys:?}");
    let reasons = sandbox.dead_reasons().await?;
    assert_eq!(reasons, ["handler failed 3 times; last: order-7 declined"]);
    assert_eq!(sandbox.waiting(&sandbox.queue).await?, 0);
    sandbox.remove().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_batch_cut_off_between_its_commit_and_its_ack_comes_back_as_duplicates(
    pool: PgPool,
) -> TestResult {
    with_effects(&pool).await?;
    let sandbox = Sandbox::new().await?;
    let proxy = Arc::new(FaultyProxy::to_broker().await?);
    let stalled = Arc::new(AtomicBool::new(false));
    let script = Script {
        stall: Some((Arc::clone(&proxy), Arc::clone(&stalled))),
        ..Script::default()
    };
    // The batch's first handler stalls the consumer's broker link: the batch
    // commits, and its ack never reaches the broker.
    let consumer = spawn_scripted(&pool, proxy.amqp_url(), &sandbox, script)?;
    publish_a_batch(&sandbox, &pool, 8).await?;
    wait_until(WAIT, "the batch commits", async || {
        Ok(effects(&pool).await? == 9)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut_all(); // the connection dies with the batch unacked
    proxy.stall(false);

    wait_until(WAIT, "each redelivery is seen as a duplicate", async || {
        let duplicates: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM inbox WHERE saga_id <> 'order-0' AND duplicates = 1",
        )
        .fetch_one(&pool)
        .await?;
        Ok(duplicates == 8 && sandbox.waiting(&sandbox.queue).await? == 0)
    })
    .await?;
    consumer.shutdown().await?;
    assert!(stalled.load(Ordering::SeqCst));
    assert_eq!(first_run_transactions(&pool).await?.len(), 1, "one batch");
    assert_eq!(effects(&pool).await?, 9, "the redeliveries took no effect");
    assert_eq!(sandbox.waiting(&sandbox.queue).await?, 0);
    assert!(sandbox.dead_reasons().await?.is_empty());
    sandbox.remove().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_same_key_twice_in_a_batch_takes_effect_once(pool: PgPool) -> TestResult {
    with_effects(&pool).await?;
    let sandbox = Sandbox::new().await?;
    let script = Script {
        fails_once: "order-3",
        ..Script::default()
    };
    let consumer = spawn_scripted(&pool, amqp_url(), &sandbox, script)?;
    // One batch: a producer that retried order-1 twice, and order-3 twice, whose
    // first run fails.
    publish_a_batch(&sandbox, &pool, 0).await?;
    for saga_id in [
        "order-1", "order-1", "order-2", "order-1", "order-3", "order-3",
    ] {
        sandbox.publish(Some(saga_id), "Reserve", b"{}").await?;
    }
    wait_until(WAIT, "every copy is settled", async || {
        let duplicates: i64 = sqlx::query_scalar("SELECT coalesce(sum(duplicates), 0) FROM inbox")
            .fetch_one(&pool)
            .await?;
        Ok(duplicates == 3 && sandbox.waiting(&sandbox.queue).await? == 0)
    })
    .await?;
    consumer.shutdown().await?;
    let per_saga: Vec<(String, i64, i32)> = sqlx::query_as(
        "SELECT e.saga_id, count(*), min(i.duplicates) FROM effects e
         JOIN inbox i USING (saga_id) GROUP BY e.saga_id ORDER BY e.saga_id",
    )
    .fetch_all(&pool)
    .await?;
    let expected = [
        ("order-0", 1, 0),
        ("order-1", 1, 2),
        ("order-2", 1, 0),
        ("order-3", 1, 1),
    ]
    .map(|(saga_id, effects, duplicates)| (saga_id.to_owned(), effects, duplicates));
    assert_eq!(per_saga, expected, "(saga, effects, duplicates)");
    assert!(sandbox.dead_reasons().await?.is_empty());
    sandbox.remove().await
}

/// How long the lingering test's second batch may wait for company: long enough
/// for the rest to be published 150 ms later, while the first batch still holds
/// its slot (`HOLD`), which keeps the second one lingering.
const LINGER: Duration = Duration::from_secs(1);

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_batch_beside_a_busy_one_lingers_for_what_arrives_next(pool: PgPool) -> TestResult {
    with_effects(&pool).await?;
    let sandbox = Sandbox::new().await?;
    let mut config = config(&sandbox.queue);
    config.concurrency = 2;
    config.batch_size = 4;
    config.batch_linger = LINGER;
    let consumer = Consumer::new(pool.clone(), amqp_url(), "inventory", config)
        .on_with("Reserve", Script::default(), scripted)
        .spawn()?;
    // order-0 holds one slot (HOLD); order-1 takes the other and, another batch
    // being in hand, waits for order-2 to order-4, published a moment later.
    publish_a_batch(&sandbox, &pool, 1).await?;
    tokio::time::sleep(Duration::from_millis(150)).await;
    for i in 2..=4 {
        sandbox
            .publish(Some(&format!("order-{i}")), "Reserve", b"{}")
            .await?;
    }
    wait_until(WAIT, "all five take effect", async || {
        Ok(effects(&pool).await? == 5)
    })
    .await?;
    consumer.shutdown().await?;
    // Without lingering, order-1 would have gone alone the moment it arrived.
    assert_eq!(
        first_run_transactions(&pool).await?.len(),
        1,
        "order-1 to order-4 in one batch"
    );
    assert!(sandbox.dead_reasons().await?.is_empty());
    sandbox.remove().await
}
