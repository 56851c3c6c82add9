//! A RabbitMQ resource alarm, for real: the memory watermark of a node of the test's
//! own (`testkit::RabbitNode`) is lowered until the node blocks its publishers, then
//! raised again. Skipped, with a note, where `rabbitmq-server` is not installed;
//! failed instead where `TXOUTBOX_REQUIRE_TOOLS` is set, as `scripts/test.sh` sets it.

use std::time::Duration;

use lapin::types::FieldTable;
use sqlx::PgPool;
use testkit::RabbitNode;
use txoutbox_relay::Relay;

use crate::support::*;

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_blocked_broker_is_named_and_nothing_is_lost_when_it_clears(pool: PgPool) -> TestResult {
    let installed = RabbitNode::installed();
    let how = "no node of the test's own; scripts/services.sh installs it";
    if !testkit::installed_or_skip("rabbitmq-server", installed, how)? {
        return Ok(());
    }
    let node = RabbitNode::start("relay-alarm").await?;
    let outcome = block_and_clear(&pool, &node).await;
    // Raised again before the node goes, whatever happened, so a failure above
    // leaves nothing blocked behind it.
    let _ = node
        .rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"])
        .await;
    node.remove().await?;
    outcome
}

async fn block_and_clear(pool: &PgPool, node: &RabbitNode) -> TestResult {
    let sandbox = Sandbox::on(&node.amqp_url(), "#", FieldTable::default()).await?;
    let relay = Relay::new(
        pool.clone(),
        node.amqp_url(),
        fast_config(&sandbox.exchange),
    );
    let metrics = relay.metrics();
    let relay = relay.spawn();
    let before = fill(pool, 5, 4, "alarm").await?;
    sandbox
        .wait_for_all(&before, Duration::from_secs(30))
        .await?;
    assert_eq!(metrics.broker_blocked(), None);

    // Any memory in use is over an absolute watermark of one byte.
    node.rabbitmqctl(&["set_vm_memory_high_watermark", "absolute", "1"])
        .await?;
    let during = fill(pool, 5, 4, "alarm").await?;
    let blocked = async || Ok(metrics.broker_blocked().is_some());
    wait_until(
        Duration::from_secs(30),
        "the relay says the broker blocks it",
        blocked,
    )
    .await?;
    let reason = metrics.broker_blocked().unwrap_or_default();
    assert!(reason.contains("memory"), "the broker's reason: {reason:?}");
    assert!(
        unsent(pool).await? > 0,
        "nothing is marked sent while the broker blocks it"
    );

    node.rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"])
        .await?;
    sandbox
        .wait_for_all(&during, Duration::from_secs(60))
        .await?;
    wait_until_drained(pool, Duration::from_secs(30)).await?;
    let unblocked = async || Ok(metrics.broker_blocked().is_none());
    wait_until(
        Duration::from_secs(30),
        "the relay says the broker is unblocked",
        unblocked,
    )
    .await?;
    relay.shutdown().await?;
    let charged: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE attempts > 0")
        .fetch_one(pool)
        .await?;
    assert_eq!(charged, 0, "an alarm is not a row's fault");
    assert_order_per_key(&sandbox.received());
    sandbox.remove().await
}
