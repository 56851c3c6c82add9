//! Two relays given one instance id (say, one `OUTBOX_INSTANCE_ID` for every replica
//! of a deployment): the leases are owned by instance id, so both would renew them and
//! both publish every partition. One must hold the id and the other stand by.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use txoutbox_relay::{Metrics, Relay, RelayConfig, RelayHandle};

use crate::support::*;

/// A relay named `instance_id` with `config`, on a pool of its own, as a process of
/// its own has: on the test's pool, two relays' working sets left the heartbeats
/// waiting for a connection longer than the lease time.
async fn start(
    pool: &PgPool,
    instance_id: &str,
    mut config: RelayConfig,
) -> anyhow::Result<(RelayHandle, Arc<Metrics>)> {
    let own = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(pool.connect_options().as_ref().clone())
        .await?;
    config.instance_id = instance_id.to_owned();
    let relay = Relay::new(own, amqp_url(), config);
    let metrics = relay.metrics();
    Ok((relay.spawn(), metrics))
}

/// Test settings with a lease time a loaded machine does not outlast by accident:
/// here a takeover comes from a clean stop or from a heartbeat set back by hand.
fn patient_config(exchange: &str) -> RelayConfig {
    let mut config = fast_config(exchange);
    config.lease_ttl = Duration::from_secs(10);
    config.heartbeat_interval = Duration::from_millis(300);
    config
}

async fn holds_every_partition(metrics: &Metrics) -> anyhow::Result<()> {
    wait_until(
        Duration::from_secs(20),
        "the relay holds every partition",
        async || Ok(metrics.partitions_held() == 64),
    )
    .await
}

/// Starts a relay named `instance_id` and waits until it holds every partition.
async fn holder(
    pool: &PgPool,
    instance_id: &str,
    config: RelayConfig,
) -> anyhow::Result<(RelayHandle, Arc<Metrics>)> {
    let (relay, metrics) = start(pool, instance_id, config).await?;
    holds_every_partition(&metrics).await?;
    Ok((relay, metrics))
}

/// Starts a relay named `instance_id` and waits until it has found the id held.
async fn standby(
    pool: &PgPool,
    instance_id: &str,
    config: RelayConfig,
) -> anyhow::Result<(RelayHandle, Arc<Metrics>)> {
    let (relay, metrics) = start(pool, instance_id, config).await?;
    wait_until(Duration::from_secs(20), "the relay stands by", async || {
        Ok(metrics.standing_by())
    })
    .await?;
    Ok((relay, metrics))
}

/// Leases of `instance_id` that are unexpired now.
async fn live_leases(pool: &PgPool, instance_id: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM outbox_relay_lease WHERE owner = $1 AND expires_at > now()",
    )
    .bind(instance_id)
    .fetch_one(pool)
    .await?)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_second_relay_with_the_same_instance_id_stands_by_until_the_first_stops(
    pool: PgPool,
) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let id = unique("twin");
    let (first, _) = holder(&pool, &id, patient_config(&sandbox.exchange)).await?;
    let (second, second_metrics) = standby(&pool, &id, patient_config(&sandbox.exchange)).await?;

    let ids = fill(&pool, 20, 50, "twins").await?;
    sandbox.wait_for_all(&ids, Duration::from_secs(30)).await?;
    // Several more of the second relay's heartbeats (every 300 ms) pass meanwhile.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(second_metrics.standing_by());
    let instances = txoutbox_relay::instances(&pool).await?;
    assert_eq!(instances.len(), 1);
    assert!(
        instances[0].standby_host.is_some(),
        "status cannot see the standby"
    );
    assert_eq!(
        second_metrics.partitions_held(),
        0,
        "the second relay took leases"
    );
    assert_eq!(
        second_metrics.published_total(),
        0,
        "the second relay published"
    );
    assert_eq!(
        sandbox.received().len(),
        ids.len(),
        "a row was published twice"
    );

    // The first stops cleanly and leaves: the second takes over at its next heartbeat.
    first.shutdown().await?;
    holds_every_partition(&second_metrics).await?;
    assert!(!second_metrics.standing_by());
    let instances = txoutbox_relay::instances(&pool).await?;
    assert_eq!(
        instances[0].standby_host, None,
        "the new holder is shown as its own standby"
    );
    let more = fill(&pool, 20, 5, "twins").await?;
    sandbox.wait_for_all(&more, Duration::from_secs(30)).await?;
    // The count goes up once a batch is settled, after its confirms and its DELETE:
    // later than the queue sees the messages.
    wait_until(
        Duration::from_secs(20),
        "the second relay counts what it published",
        async || Ok(second_metrics.published_total() == more.len() as u64),
    )
    .await?;
    second.shutdown().await?;
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_relay_standing_by_leaves_the_holders_row_and_leases_alone(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let id = unique("twin");
    let (holder, _) = holder(&pool, &id, patient_config(&sandbox.exchange)).await?;
    let (standby, _) = standby(&pool, &id, patient_config(&sandbox.exchange)).await?;
    standby.shutdown().await?;

    // Checked at once, before the holder's next heartbeat could mend anything.
    assert_eq!(
        live_leases(&pool, &id).await?,
        64,
        "the standby gave the holder's leases back"
    );
    let instances = txoutbox_relay::instances(&pool).await?;
    assert_eq!(instances.len(), 1, "the standby deleted the holder's row");
    let ids = fill(&pool, 10, 10, "twins").await?;
    sandbox.wait_for_all(&ids, Duration::from_secs(30)).await?;
    holder.shutdown().await?;
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_relay_taking_over_a_stale_instance_id_waits_out_its_leases(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let id = unique("gone");
    // An earlier run of this id stalled or lost its network: its heartbeat is old,
    // but its database session (and the lock on the id) lingers, a few of its leases
    // still run, and it may have batches in flight on those partitions.
    let mut lingering = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock(1869968483, hashtext($1))")
        .bind(&id)
        .execute(&mut *lingering)
        .await?;
    sqlx::query(
        "INSERT INTO outbox_relay_instance (instance_id, hostname, incarnation, heartbeat_at)
         VALUES ($1, 'gone', $2, now() - interval '1 hour')",
    )
    .bind(&id)
    .bind(uuid::Uuid::now_v7())
    .execute(&pool)
    .await?;
    sqlx::query(
        "UPDATE outbox_relay_lease SET owner = $1, expires_at = now() + interval '1 hour'
         WHERE partition < 8",
    )
    .bind(&id)
    .execute(&pool)
    .await?;

    let (relay, metrics) = start(&pool, &id, patient_config(&sandbox.exchange)).await?;
    wait_until(
        Duration::from_secs(20),
        "the relay has taken the free partitions",
        async || Ok(metrics.partitions_held() > 0),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        metrics.partitions_held(),
        56,
        "the relay renewed leases of the dead run instead of waiting them out"
    );
    sqlx::query("UPDATE outbox_relay_lease SET expires_at = now() WHERE partition < 8")
        .execute(&pool)
        .await?;
    holds_every_partition(&metrics).await?;
    relay.shutdown().await?;
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_relay_restarted_under_its_id_after_a_kill_resumes_at_once(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let id = unique("restarted");
    // What `kill -9` of a relay leaves: its row heartbeated a moment ago, its leases
    // running, and its session (with its lock on the id) gone with the process.
    sqlx::query(
        "INSERT INTO outbox_relay_instance (instance_id, hostname, incarnation)
         VALUES ($1, 'killed', $2)",
    )
    .bind(&id)
    .bind(uuid::Uuid::now_v7())
    .execute(&pool)
    .await?;
    sqlx::query("UPDATE outbox_relay_lease SET owner = $1, expires_at = now() + interval '1 hour'")
        .bind(&id)
        .execute(&pool)
        .await?;
    let mut config = fast_config(&sandbox.exchange);
    config.lease_ttl = Duration::from_secs(60);
    let (relay, metrics) = start(&pool, &id, config).await?;
    // Waiting out the lease time (60 s) or the leases (an hour) would time out here.
    wait_until(
        Duration::from_secs(20),
        "the relay resumes every partition",
        async || Ok(metrics.partitions_held() == 64),
    )
    .await?;
    assert!(!metrics.standing_by());
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(1869968483, hashtext($1))")
        .bind(&id)
        .fetch_one(&pool)
        .await?;
    assert!(!taken, "the relay does not hold the lock on its id");
    let ids = fill(&pool, 10, 5, "restarted").await?;
    sandbox.wait_for_all(&ids, Duration::from_secs(30)).await?;
    relay.shutdown().await?;
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_relay_whose_instance_id_was_taken_over_claims_nothing_before_its_next_heartbeat(
    pool: PgPool,
) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let id = unique("stalled");
    // Heartbeats far apart: the relay will not learn of the takeover from its own.
    let mut config = fast_config(&sandbox.exchange);
    config.lease_ttl = Duration::from_secs(120);
    config.heartbeat_interval = Duration::from_secs(60);
    let (relay, metrics) = holder(&pool, &id, config).await?;
    let before = fill(&pool, 5, 2, "stalled").await?;
    sandbox
        .wait_for_all(&before, Duration::from_secs(30))
        .await?;

    // As if this run had stalled past the lease time and another run of the id had
    // taken the row over, and its leases with it, meanwhile.
    sqlx::query("UPDATE outbox_relay_instance SET incarnation = $2 WHERE instance_id = $1")
        .bind(&id)
        .bind(uuid::Uuid::now_v7())
        .execute(&pool)
        .await?;
    fill(&pool, 5, 2, "stalled").await?;
    // The relay polls every 200 ms: ten chances to claim them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(unsent(&pool).await?, 10, "the fenced-off run claimed rows");
    assert_eq!(sandbox.received().len(), before.len());
    assert_eq!(metrics.published_total(), before.len() as u64);
    relay.shutdown().await?;
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_relay_of_an_earlier_release_on_the_same_id_is_another_run(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let id = unique("older");
    // What a relay of the previous release writes: no token, a fresh heartbeat.
    sqlx::query("INSERT INTO outbox_relay_instance (instance_id, hostname) VALUES ($1, 'old')")
        .bind(&id)
        .execute(&pool)
        .await?;
    let (relay, metrics) = standby(&pool, &id, patient_config(&sandbox.exchange)).await?;
    assert_eq!(metrics.partitions_held(), 0);

    // That relay is gone: its heartbeat ages past the lease time.
    sqlx::query(
        "UPDATE outbox_relay_instance SET heartbeat_at = now() - interval '1 hour'
         WHERE instance_id = $1",
    )
    .bind(&id)
    .execute(&pool)
    .await?;
    holds_every_partition(&metrics).await?;
    relay.shutdown().await?;
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn the_operator_is_told_which_relay_stands_by_and_why(pool: PgPool) -> TestResult {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let sandbox = Sandbox::new("#").await?;
    let id = format!("replica-{}", uuid::Uuid::now_v7().simple());
    let url = database_url_of(&pool);
    let mut first = spawn_relay(
        &url,
        &amqp_url(),
        &sandbox.exchange,
        &["--instance-id", &id],
    )?;
    wait_until(
        Duration::from_secs(20),
        "the first relay holds every partition",
        async || Ok(live_leases(&pool, &id).await? == 64),
    )
    .await?;

    let mut second = relay_command(&url, &amqp_url(), &sandbox.exchange, "127.0.0.1:0")
        .env("OUTBOX_INSTANCE_ID", &id)
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(second.stderr.take().expect("piped")).lines();
    let told = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("another running relay uses this instance id") {
                return anyhow::Ok(line);
            }
        }
        anyhow::bail!("the second relay exited without saying why it stands by")
    })
    .await??;
    assert!(
        told.contains(&id),
        "the message names the instance id: {told}"
    );
    assert!(
        told.contains("OUTBOX_INSTANCE_ID"),
        "the message says what to change: {told}"
    );

    // `status` shows it under the relay that holds the id, for support.
    let status = relay_cli(&["status"], &[("DATABASE_URL", &url)]).await?;
    let said = text(&status);
    assert!(
        said.contains("another relay with this instance id stands by"),
        "{said}"
    );

    let ids = fill(&pool, 10, 10, "replicas").await?;
    sandbox.wait_for_all(&ids, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        sandbox.received().len(),
        ids.len(),
        "a row was published twice"
    );
    second.start_kill()?;
    first.start_kill()?;
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn an_aborted_relay_stops_renewing_its_leases(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let (aborted, _) = holder(&pool, &unique("aborted"), fast_config(&sandbox.exchange)).await?;
    // Its heartbeats run on a task of their own by now (every 300 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Like a crash: its leases must lapse (2 s here), not be renewed by a heartbeat
    // task left running, with its hold on the instance id.
    aborted.abort();
    let (next, metrics) = start(&pool, &unique("next"), fast_config(&sandbox.exchange)).await?;
    holds_every_partition(&metrics).await?;
    next.shutdown().await?;
    sandbox.remove().await
}
