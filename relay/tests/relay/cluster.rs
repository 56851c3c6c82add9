//! The relay on a three-node RabbitMQ cluster (`testkit::RabbitCluster`), publishing
//! to a quorum queue: the node it is connected to is killed with -9 mid-run, then
//! started again; or frozen (SIGSTOP) for a minute, then thawed. Skipped, with a note,
//! where `rabbitmq-server` is not installed.

use std::time::{Duration, Instant};

use lapin::types::{AMQPValue, FieldTable};
use sqlx::PgPool;
use testkit::{RabbitCluster, RabbitNode, wait_until};
use txoutbox::url::redact;
use txoutbox_relay::Relay;

use crate::support::*;

fn quorum() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_killed_node_loses_no_row_and_breaks_no_order(pool: PgPool) -> TestResult {
    if !RabbitNode::installed() {
        eprintln!("skipped: rabbitmq-server is not installed, so no cluster can run here");
        return Ok(());
    }
    let mut cluster = RabbitCluster::start("relay-cluster", 3).await?;
    let outcome = kill_the_relays_node(&pool, &mut cluster).await;
    cluster.remove().await?;
    outcome
}

async fn kill_the_relays_node(pool: &PgPool, cluster: &mut RabbitCluster) -> TestResult {
    // The recorder sits on node 0, which stays up; the relay starts on node 1.
    let sandbox = Sandbox::on(&cluster.node(0).amqp_url(), "#", quorum()).await?;
    let ids = fill(pool, 200, 100, "cluster").await?;
    let urls = [1, 2, 0].map(|i| cluster.node(i).amqp_url()).join(",");
    let relay = Relay::new(pool.clone(), urls, fast_config(&sandbox.exchange));
    let metrics = relay.metrics();
    let relay = relay.spawn();

    sandbox
        .wait_for_count(4_000, Duration::from_secs(60))
        .await?;
    assert_eq!(
        metrics.broker_node(),
        Some(redact(&cluster.node(1).amqp_url()))
    );
    cluster.node_mut(1).kill().await?;
    let moved = async || Ok(metrics.broker_node() == Some(redact(&cluster.node(2).amqp_url())));
    wait_until(Duration::from_secs(30), "the relay moves to node 2", moved).await?;
    cluster.node_mut(1).start_again().await?;
    cluster.wait_until_running().await?;

    sandbox.wait_for_all(&ids, Duration::from_secs(120)).await?;
    wait_until_drained(pool, Duration::from_secs(30)).await?;
    relay.shutdown().await?;
    assert_order_per_key(&sandbox.received());
    let charged: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE attempts > 0")
        .fetch_one(pool)
        .await?;
    assert_eq!(charged, 0, "a lost node is not a row's fault");
    sandbox.remove().await
}

/// The heartbeat the frozen-node test asks for, in seconds: lapin gives a silent
/// connection up after two heartbeats.
const HEARTBEAT: u64 = 5;
/// How long the node stays frozen: as long as a bad garbage-collection pause or a
/// stalled VM, and longer than anything the relay waits for.
const FREEZE: Duration = Duration::from_secs(60);

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_frozen_node_is_left_within_its_heartbeat_and_loses_nothing(pool: PgPool) -> TestResult {
    if !RabbitNode::installed() {
        eprintln!("skipped: rabbitmq-server is not installed, so no cluster can run here");
        return Ok(());
    }
    let mut cluster = RabbitCluster::start("relay-frozen", 3).await?;
    let outcome = freeze_the_relays_node(&pool, &mut cluster).await;
    cluster.remove().await?;
    outcome
}

async fn freeze_the_relays_node(pool: &PgPool, cluster: &mut RabbitCluster) -> TestResult {
    let node = |cluster: &RabbitCluster, i: usize| {
        format!("{}?heartbeat={HEARTBEAT}", cluster.node(i).amqp_url())
    };
    // The recorder sits on node 0, which leads its queue and stays up; the relay
    // starts on node 1.
    let sandbox = Sandbox::on(&cluster.node(0).amqp_url(), "#", quorum()).await?;
    let urls = [1, 2, 0].map(|i| node(cluster, i)).join(",");
    let config = fast_config(&sandbox.exchange);
    let window = config.batch_size as usize * config.max_in_flight_batches;
    let relay = Relay::new(pool.clone(), urls, config);
    let metrics = relay.metrics();
    let relay = relay.spawn();

    // Frozen while idle: with nothing to confirm, only the heartbeat can tell. (Under
    // load, a confirm that does not come within `confirm_timeout` tells first.)
    let mut ids = fill(pool, 100, 20, "frozen").await?;
    sandbox.wait_for_all(&ids, Duration::from_secs(60)).await?;
    wait_until_drained(pool, Duration::from_secs(30)).await?;
    assert_eq!(metrics.broker_node(), Some(redact(&node(cluster, 1))));
    cluster.node_mut(1).freeze()?;
    let frozen_at = Instant::now();
    let moved = async || Ok(metrics.broker_node() == Some(redact(&node(cluster, 2))));
    wait_until(Duration::from_secs(60), "the relay moves to node 2", moved).await?;
    let left_after = frozen_at.elapsed();
    // Rows written while the node is still frozen.
    ids.extend(fill(pool, 100, 20, "frozen").await?);
    sandbox.wait_for_all(&ids, Duration::from_secs(120)).await?;
    let all_in_after = frozen_at.elapsed();

    tokio::time::sleep(FREEZE.saturating_sub(frozen_at.elapsed())).await;
    cluster.node_mut(1).thaw()?;
    cluster.wait_until_running().await?;
    ids.extend(fill(pool, 100, 10, "frozen").await?);
    sandbox.wait_for_all(&ids, Duration::from_secs(120)).await?;
    wait_until_drained(pool, Duration::from_secs(30)).await?;
    relay.shutdown().await?;

    let received = sandbox.received();
    assert_order_per_key(&received);
    let twice = received.len() - sandbox.distinct_ids().len();
    assert!(
        twice <= window,
        "{twice} messages arrived twice; one in-flight window is {window}"
    );
    eprintln!(
        "frozen node: left after {left_after:?}, every row in {all_in_after:?} after the \
         freeze, {twice} arrived twice (window {window})"
    );
    sandbox.remove().await
}
