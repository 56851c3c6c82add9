//! Every guarantee under a real failure: killed relays, cut and stalled broker
//! connections, dropped database connections, refusals, and shutdown under load.

use std::collections::HashSet;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use txoutbox::Message;
use txoutbox_relay::Relay;

use crate::support::*;

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn order_per_key_holds_with_three_relays_and_one_killed_at_random(
    pool: PgPool,
) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let mut ids = fill(&pool, 30, 100, "three").await?;
    let url = database_url_of(&pool);
    let mut relays = Vec::new();
    for _ in 0..3 {
        relays.push(spawn_relay(
            &url,
            &amqp_url(),
            &sandbox.exchange,
            &["--batch-size", "100"],
        )?);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(std::process::id().into());
    sandbox
        .wait_for_count(rng.random_range(200..1500), Duration::from_secs(30))
        .await?;
    let victim = rng.random_range(0..relays.len());
    relays[victim].start_kill()?; // SIGKILL: no drain, no goodbye
    relays[victim].wait().await?;

    // Writers go on while the survivors take over the dead one's partitions.
    ids.extend(
        fill(&pool, 30, 20, "three")
            .await?
            .into_iter()
            .map(|id| id.to_string()),
    );
    sandbox.wait_for_all(&ids, Duration::from_secs(60)).await?;
    wait_until_drained(&pool, Duration::from_secs(10)).await?;
    assert_order_per_key(&sandbox.received());
    for relay in &mut relays {
        let _ = relay.start_kill();
    }
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_relay_killed_mid_batch_loses_nothing(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let ids = fill(&pool, 50, 200, "killed").await?;
    let url = database_url_of(&pool);
    let mut first = spawn_relay(&url, &amqp_url(), &sandbox.exchange, &[])?;
    sandbox
        .wait_for_count(1000, Duration::from_secs(30))
        .await?;
    first.start_kill()?;
    first.wait().await?;
    let left = unsent(&pool).await?;
    assert!(
        left > 0,
        "the relay was killed before it finished (left {left})"
    );

    let mut second = spawn_relay(&url, &amqp_url(), &sandbox.exchange, &[])?;
    sandbox.wait_for_all(&ids, Duration::from_secs(60)).await?;
    wait_until_drained(&pool, Duration::from_secs(10)).await?;
    assert_order_per_key(&sandbox.received());
    second.start_kill()?;
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn broker_connections_cut_under_load_lose_nothing(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let proxy = FaultyProxy::to_broker().await?;
    let ids = fill(&pool, 50, 200, "cut").await?;
    let relay = Relay::new(
        pool.clone(),
        proxy.amqp_url(),
        fast_config(&sandbox.exchange),
    );
    let metrics = relay.metrics();
    let relay = relay.spawn();
    for at in [1000, 4000, 7000] {
        sandbox.wait_for_count(at, Duration::from_secs(30)).await?;
        proxy.cut_all();
    }
    sandbox.wait_for_all(&ids, Duration::from_secs(60)).await?;
    wait_until_drained(&pool, Duration::from_secs(10)).await?;
    relay.shutdown().await?;
    assert!(
        metrics
            .render(None)
            .contains("outbox_relay_failures_total{reason=\"connection\"}")
    );
    assert_order_per_key(&sandbox.received());
    sandbox.remove().await
}

/// A relay through a proxy to the broker, with nothing left to publish, asleep on
/// the doorbell: its fallback poll is a minute away, so only a ring wakes it.
struct Asleep {
    sandbox: Sandbox,
    proxy: FaultyProxy,
    metrics: std::sync::Arc<txoutbox_relay::Metrics>,
    relay: txoutbox_relay::RelayHandle,
}

async fn asleep_behind_a_proxy(pool: &PgPool) -> anyhow::Result<Asleep> {
    let sandbox = Sandbox::new("#").await?;
    let proxy = FaultyProxy::to_broker().await?;
    let mut config = fast_config(&sandbox.exchange);
    config.poll_interval = Duration::from_secs(60);
    let relay = Relay::new(pool.clone(), proxy.amqp_url(), config);
    let metrics = relay.metrics();
    let relay = relay.spawn();
    let warmup = fill(pool, 1, 1, "warmup").await?;
    sandbox
        .wait_for_all(&warmup, Duration::from_secs(10))
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await; // past the lingering looks
    Ok(Asleep {
        sandbox,
        proxy,
        metrics,
        relay,
    })
}

/// An idle relay sends the broker nothing; it used to learn of a lost connection only
/// at its next publish, and said ready all that while.
#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn an_idle_relay_that_loses_its_broker_says_not_ready_and_reconnects_before_the_next_row(
    pool: PgPool,
) -> TestResult {
    let Asleep {
        sandbox,
        proxy,
        metrics,
        relay,
    } = asleep_behind_a_proxy(&pool).await?;

    proxy.refuse(true); // the node stays away until the relay has said so
    proxy.cut_all();
    wait_until(
        Duration::from_secs(10),
        "the relay is not ready",
        async || Ok(!metrics.ready()),
    )
    .await?;
    proxy.refuse(false);
    wait_until(
        Duration::from_secs(30),
        "the relay is connected again, with no row to publish",
        async || Ok(metrics.ready() && proxy.open_connections() == 1),
    )
    .await?;

    let ids = fill(&pool, 5, 2, "after").await?;
    sandbox.wait_for_all(&ids, Duration::from_secs(10)).await?;
    wait_until_drained(&pool, Duration::from_secs(10)).await?;
    relay.shutdown().await?;
    sandbox.remove().await
}

/// The relay above reconnects with the backoff, whose pauses grow to seconds while
/// the broker stays away; a row written meanwhile must not wait out the pause.
#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_row_written_while_an_idle_relay_waits_to_reconnect_cuts_the_wait_short(
    pool: PgPool,
) -> TestResult {
    let Asleep {
        sandbox,
        proxy,
        relay,
        ..
    } = asleep_behind_a_proxy(&pool).await?;

    proxy.refuse(true);
    proxy.cut_all();
    // Pauses of 0.1 s doubling, each up to twice that with jitter: after the sixth
    // refused attempt the next is at least 5 s away (`txoutbox::backoff`).
    wait_until(
        Duration::from_secs(40),
        "six refused reconnects",
        async || Ok(proxy.refused() >= 6),
    )
    .await?;
    proxy.refuse(false);
    tokio::time::sleep(Duration::from_millis(300)).await; // the relay is in its pause

    let ids = fill(&pool, 5, 2, "cut-short").await?;
    sandbox
        .wait_for_all(&ids, Duration::from_secs(3))
        .await
        .map_err(|e| e.context("the rows waited for the reconnect pause"))?;
    relay.shutdown().await?;
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn confirms_that_never_come_are_given_up_and_published_again(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let proxy = FaultyProxy::to_broker().await?;
    let relay = Relay::new(
        pool.clone(),
        proxy.amqp_url(),
        fast_config(&sandbox.exchange),
    )
    .spawn();
    let warmup = fill(&pool, 1, 1, "warmup").await?;
    sandbox
        .wait_for_all(&warmup, Duration::from_secs(10))
        .await?;

    proxy.stall(true); // a black hole: nothing moves, nothing closes
    let ids = fill(&pool, 10, 20, "stalled").await?;
    tokio::time::sleep(Duration::from_secs(4)).await; // past the 2 s confirm timeout
    assert!(
        unsent(&pool).await? > 0,
        "nothing can be confirmed through a black hole"
    );
    proxy.stall(false);

    sandbox.wait_for_all(&ids, Duration::from_secs(30)).await?;
    wait_until_drained(&pool, Duration::from_secs(10)).await?;
    relay.shutdown().await?;
    assert_order_per_key(&sandbox.received());
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn database_connections_dropped_under_load_lose_nothing(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let ids = fill(&pool, 50, 200, "dbdrop").await?;
    let options: PgConnectOptions = database_url_of(&pool)
        .parse::<PgConnectOptions>()?
        .application_name("relay-under-test");
    let relay_pool = PgPoolOptions::new()
        .max_connections(5)
        .connect_with(options)
        .await?;
    let relay = Relay::new(relay_pool, amqp_url(), fast_config(&sandbox.exchange)).spawn();
    for at in [1000, 5000] {
        sandbox.wait_for_count(at, Duration::from_secs(30)).await?;
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'relay-under-test'",
        )
        .fetch_all(&pool)
        .await?;
        assert!(
            !killed.is_empty(),
            "the relay's connections were found and dropped"
        );
    }
    sandbox.wait_for_all(&ids, Duration::from_secs(60)).await?;
    wait_until_drained(&pool, Duration::from_secs(10)).await?;
    relay.shutdown().await?;
    assert_order_per_key(&sandbox.received());
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn unroutable_rows_go_dead_after_their_retries_while_other_keys_flow(
    pool: PgPool,
) -> TestResult {
    let sandbox = Sandbox::new("good.#").await?;
    let mut config = fast_config(&sandbox.exchange);
    config.max_attempts = 3;
    let relay = Relay::new(pool.clone(), amqp_url(), config).spawn();

    let bad = Message::builder("saga-blocked", "Unroutable", "bad.nowhere")
        .payload(&serde_json::json!({"n": 0}))?;
    let bad_id = txoutbox::enqueue(&pool, &bad).await?;
    wait_until(
        Duration::from_secs(20),
        "the unroutable row is dead",
        async || Ok(!txoutbox_relay::dead_rows(&pool, 10).await?.is_empty()),
    )
    .await?;
    let dead = txoutbox_relay::dead_rows(&pool, 10).await?;
    assert_eq!(dead[0].id, bad_id);
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("unroutable"),
        "{:?}",
        dead[0].last_error
    );

    // The dead row's key is held back (order first); other keys flow.
    let behind = Message::builder("saga-blocked", "Behind", "good.behind")
        .payload(&serde_json::json!({"n": 1}))?;
    let behind_id = txoutbox::enqueue(&pool, &behind).await?;
    let others = fill(&pool, 10, 10, "good.other").await?;
    sandbox
        .wait_for_all(&others, Duration::from_secs(20))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !sandbox.distinct_ids().contains(&behind_id.to_string()),
        "a later row overtook the dead one"
    );

    // An operator fixes the routing and retries: both go, in order.
    sandbox.bind("bad.#").await?;
    txoutbox_relay::retry_dead(&pool, bad_id).await?;
    let both: HashSet<String> = [bad_id.to_string(), behind_id.to_string()]
        .into_iter()
        .collect();
    sandbox.wait_for_all(&both, Duration::from_secs(20)).await?;
    let order = sandbox.first_arrivals_of(&both);
    assert_eq!(order, [bad_id.to_string(), behind_id.to_string()]);
    relay.shutdown().await?;
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn sigterm_under_load_drains_records_and_exits_zero(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let ids = fill(&pool, 50, 400, "term").await?;
    let mut relay = spawn_relay(&database_url_of(&pool), &amqp_url(), &sandbox.exchange, &[])?;
    sandbox
        .wait_for_count(2000, Duration::from_secs(30))
        .await?;
    let status = stop(&mut relay, Duration::from_secs(15)).await?;
    assert_eq!(status.code(), Some(0), "a clean stop exits 0");

    // Let the consumer catch up with what the broker already holds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let remaining: HashSet<String> = sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM outbox")
        .fetch_all(&pool)
        .await?
        .into_iter()
        .map(|id| id.to_string())
        .collect();
    let received = sandbox.distinct_ids();
    assert!(!remaining.is_empty(), "stopped before the end");
    let deleted: HashSet<&String> = ids.difference(&remaining).collect();
    let deleted_but_never_delivered = deleted.iter().filter(|id| !received.contains(**id)).count();
    assert_eq!(
        deleted_but_never_delivered, 0,
        "a row was marked sent without reaching the broker"
    );
    let instances = txoutbox_relay::instances(&pool).await?;
    assert!(
        instances.is_empty(),
        "a clean stop leaves the instance table and gives the leases back"
    );
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn leases_that_lapse_mid_scan_do_not_reorder_a_key(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let ids = fill(&pool, 40, 250, "lapse").await?;
    let mut config = fast_config(&sandbox.exchange);
    config.batch_size = 100;
    let relay = Relay::new(pool.clone(), amqp_url(), config).spawn();
    // As if some renewals had come too late: half the leases lapse while the relay
    // goes on with the others, and takes them back at its next heartbeat.
    for at in [500, 2000, 4000, 6000, 8000] {
        sandbox.wait_for_count(at, Duration::from_secs(30)).await?;
        sqlx::query("UPDATE outbox_relay_lease SET expires_at = now() - interval '1 second' WHERE partition % 2 = 0")
            .execute(&pool)
            .await?;
    }
    sandbox.wait_for_all(&ids, Duration::from_secs(60)).await?;
    wait_until_drained(&pool, Duration::from_secs(10)).await?;
    relay.shutdown().await?;
    assert_order_per_key(&sandbox.received());
    sandbox.remove().await
}
