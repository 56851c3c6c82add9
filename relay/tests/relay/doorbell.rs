//! The doorbell: writers ring only for a partition whose relay sleeps, the relay
//! hears them from the moment it sleeps, and never sleeps through a row that did
//! not ring.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{AssertSqlSafe, PgPool};
use txoutbox::Message;
use txoutbox_relay::Relay;

use crate::support::*;

/// Relay settings whose fallback poll (a minute) no test here waits for: a row that
/// arrives within [`arrives`]'s 20 s was woken by the doorbell.
fn sleepy_config(exchange: &str) -> txoutbox_relay::RelayConfig {
    let mut config = fast_config(exchange);
    config.poll_interval = Duration::from_secs(60);
    config
}

/// Waits (up to 20 s, a third of the fallback poll) for the message `id`.
async fn arrives(sandbox: &Sandbox, id: uuid::Uuid) -> anyhow::Result<()> {
    let ids = [id.to_string()].into_iter().collect();
    sandbox.wait_for_all(&ids, Duration::from_secs(20)).await
}

/// A sleeping relay is woken by the row's ring, not by its fallback poll (a minute
/// here). Each round starts a relay and writes at the first moment it asks writers
/// to ring (`listening`, set once its doorbell is armed).
#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_sleeping_relay_is_woken_by_the_rows_ring(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    for round in 1..=4 {
        let relay = Relay::new(pool.clone(), amqp_url(), sleepy_config(&sandbox.exchange)).spawn();
        first_idle(&pool).await?;
        let message = Message::builder(format!("saga-{round}"), "OrderCreated", "orders.created")
            .payload(&round)?;
        let id = txoutbox::enqueue(&pool, &message).await?;
        let woken = arrives(&sandbox, id).await;
        relay.shutdown().await?;
        woken.map_err(|error| error.context(format!("round {round}")))?;
        sqlx::query("DELETE FROM outbox_relay_instance")
            .execute(&pool)
            .await?;
    }
    sandbox.remove().await
}

/// First key of the doorbell's advisory locks (migration `20261201000002`).
const DOORBELL_LOCK: i32 = 0x6f75_7462;

/// Writes one outbox row of `saga_id`, as a plain-SQL writer would.
async fn write(pool: &PgPool, saga_id: &str) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO outbox (saga_id, step, routing_key, payload)
         VALUES ($1, 'OrderCreated', 'orders.created', '{}')",
    )
    .bind(saga_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// The next notification `listener` hears after everything committed so far: a
/// marker, notified last, tells "nothing rang" from "not yet" without a timeout,
/// because notifications arrive in commit order.
async fn next_ring(listener: &mut PgListener, pool: &PgPool) -> anyhow::Result<String> {
    sqlx::query("SELECT pg_notify('outbox_ready', 'marker')")
        .execute(pool)
        .await?;
    let heard = listener.recv().await?.payload().to_owned();
    if heard != "marker" {
        let marker = listener.recv().await?;
        anyhow::ensure!(marker.payload() == "marker", "one ring, then the marker");
    }
    Ok(heard)
}

/// A writer's row rings when, and only when, the relay of its partition sleeps:
/// holds that partition's doorbell lock. Before, the statement trigger rang for any
/// partition while some relay had `listening` set, and it looked that up with a
/// query on every INSERT; this test fails on that trigger at "a sleeping relay's
/// partition".
#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_writer_rings_only_for_a_partition_whose_relay_sleeps(pool: PgPool) -> TestResult {
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen("outbox_ready").await?;
    let partition_of = async |saga_id: &str| -> anyhow::Result<i16> {
        Ok(sqlx::query_scalar("SELECT outbox_partition_of($1)")
            .bind(saga_id)
            .fetch_one(&pool)
            .await?)
    };
    let (asleep, awake) = ("saga-asleep", "saga-awake");
    anyhow::ensure!(partition_of(asleep).await? != partition_of(awake).await?);

    write(&pool, asleep).await?;
    assert_eq!(
        next_ring(&mut listener, &pool).await?,
        "marker",
        "no relay sleeps"
    );

    let mut relay = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(DOORBELL_LOCK)
        .bind(i32::from(partition_of(asleep).await?))
        .execute(&mut *relay)
        .await?;
    write(&pool, asleep).await?;
    assert_eq!(
        next_ring(&mut listener, &pool).await?,
        "",
        "a sleeping relay's partition"
    );
    write(&pool, awake).await?;
    assert_eq!(
        next_ring(&mut listener, &pool).await?,
        "marker",
        "another partition"
    );

    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut *relay)
        .await?;
    write(&pool, asleep).await?;
    assert_eq!(
        next_ring(&mut listener, &pool).await?,
        "marker",
        "the relay woke up"
    );
    Ok(())
}

/// A writer whose transaction is open when the relay goes to sleep holds its
/// partition's doorbell lock, so its row will ring no bell: the relay cannot take
/// that lock, and sleeps only briefly instead of until the fallback poll (a minute
/// here). Without that, this row waited the whole minute.
#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_row_whose_writer_was_open_when_the_relay_slept_is_not_left_for_the_fallback_poll(
    pool: PgPool,
) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let mut writer = pool.begin().await?;
    let message = Message::builder("saga-open", "OrderCreated", "orders.created").payload(&1)?;
    let id = txoutbox::enqueue(&mut *writer, &message).await?;

    let relay = Relay::new(pool.clone(), amqp_url(), sleepy_config(&sandbox.exchange)).spawn();
    wait_until(
        Duration::from_secs(20),
        "the relay arms its doorbell on the partitions it can",
        async || Ok(armed_partitions(&pool).await? > 0),
    )
    .await?;
    writer.commit().await?;

    arrives(&sandbox, id).await?;
    relay.shutdown().await?;
    sandbox.remove().await
}

/// Doorbell locks (exclusive, a sleeping relay's) on this test's database.
const ARMED: &str = "FROM pg_locks
    WHERE locktype = 'advisory' AND classid = $1 AND mode = 'ExclusiveLock'
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// How many partitions sleeping relays of this database have armed right now.
async fn armed_partitions(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) {ARMED}")))
            .bind(DOORBELL_LOCK)
            .fetch_one(pool)
            .await?,
    )
}

/// A relay at work holds no doorbell locks: held, they would make every writer
/// NOTIFY on every commit, which serializes commits, while the relay polls anyway.
/// Sampled while a backlog drains, after the relay woke to it.
#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_relay_at_work_gives_its_doorbell_locks_back(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let relay = Relay::new(pool.clone(), amqp_url(), fast_config(&sandbox.exchange)).spawn();
    first_idle(&pool).await?;
    // One transaction: the whole backlog appears at once. Written in many, it was
    // mostly drained before the last commit, and the sampling window below was gone.
    let mut writer = pool.begin().await?;
    let mut ids = std::collections::HashSet::new();
    for chunk in 0..20 {
        let batch = (0..1000)
            .map(|n| {
                Message::builder(
                    format!("saga-{n}"),
                    format!("step-{chunk}-{n}"),
                    "orders.bulk",
                )
                .payload(&n)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let written = txoutbox::enqueue_batch(&mut *writer, &batch).await?;
        ids.extend(written.iter().map(|id| id.to_string()));
    }
    writer.commit().await?;
    let total = i64::try_from(ids.len())?;
    // Sampled from the relay's first sent row until the tail of the drain (where it
    // may rightly go back to sleep), however fast it drains.
    let mut samples = Vec::new();
    let started = std::time::Instant::now();
    loop {
        let left = unsent(&pool).await?;
        if left <= 1000 {
            break;
        }
        if left < total {
            samples.push(armed_partitions(&pool).await?);
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the relay sent nothing in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sandbox.wait_for_all(&ids, Duration::from_secs(60)).await?;
    relay.shutdown().await?;
    anyhow::ensure!(!samples.is_empty(), "the drain ended before a sample");
    assert!(
        samples.iter().all(|&held| held == 0),
        "doorbell locks held while at work: {samples:?}"
    );
    sandbox.remove().await
}

/// The listener's connection can be lost while the relay sleeps, and the doorbell's
/// locks with it: writers stop ringing. sqlx's listener reconnects on its own, and
/// the relay used to go on sleeping, unarmed, until the fallback poll (a minute here):
/// this row waited for it. Now the lost connection wakes the relay, which arms again.
#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_relay_whose_listener_was_cut_while_asleep_arms_again(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let relay = Relay::new(pool.clone(), amqp_url(), sleepy_config(&sandbox.exchange)).spawn();
    first_idle(&pool).await?;
    sqlx::query(AssertSqlSafe(format!(
        "SELECT pg_terminate_backend(pid) {ARMED} GROUP BY pid"
    )))
    .bind(DOORBELL_LOCK)
    .execute(&pool)
    .await?;
    wait_until(
        Duration::from_secs(20),
        "the relay arms again",
        async || Ok(armed_partitions(&pool).await? > 0),
    )
    .await?;
    let message =
        Message::builder("saga-after-cut", "OrderCreated", "orders.created").payload(&1)?;
    let id = txoutbox::enqueue(&pool, &message).await?;
    arrives(&sandbox, id).await?;
    relay.shutdown().await?;
    sandbox.remove().await
}

/// A sleeping relay armed its doorbell for the partitions it held when it went to
/// sleep. When another relay joins and takes some of them, the first must wake and
/// arm only those it still holds: else it sleeps on, holding the newcomer's locks,
/// until the fallback poll (a minute here), and the newcomer cannot arm them.
#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_sleeping_relay_that_gives_partitions_away_arms_only_its_own(pool: PgPool) -> TestResult {
    // A config of its own for each: each gets an instance id of its own.
    let first = Relay::new(pool.clone(), amqp_url(), sleepy_config("")).spawn();
    first_idle(&pool).await?;
    let second = Relay::new(pool.clone(), amqp_url(), sleepy_config("")).spawn();
    let sleepers = format!("SELECT count(DISTINCT pid), count(*) {ARMED}");
    let both = wait_until(
        Duration::from_secs(20),
        "both relays sleep, every partition armed once",
        async || {
            let (sleepers, armed): (i64, i64) = sqlx::query_as(AssertSqlSafe(sleepers.clone()))
                .bind(DOORBELL_LOCK)
                .fetch_one(&pool)
                .await?;
            Ok(sleepers == 2 && armed == 64)
        },
    )
    .await;
    second.shutdown().await?;
    first.shutdown().await?;
    both
}
