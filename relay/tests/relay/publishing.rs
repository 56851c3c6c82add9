//! Happy paths: what gets published, how it looks, and in which order.

use std::time::Duration;

use lapin::types::AMQPValue;
use sqlx::PgPool;
use txoutbox::Message;
use txoutbox_relay::Relay;

use crate::support::*;

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn publishes_and_confirms_every_row_with_its_envelope(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("orders.#").await?;
    let message = Message::builder("saga-envelope", "OrderCreated", "orders.created")
        .traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .header("tenant", "acme")
        .payload(&serde_json::json!({"order_id": 42}))?;
    let id = txoutbox::enqueue(&pool, &message).await?;
    let mut ids = fill(&pool, 5, 20, "orders.bulk").await?;
    ids.insert(id.to_string());

    let relay = Relay::new(pool.clone(), amqp_url(), fast_config(&sandbox.exchange)).spawn();
    sandbox.wait_for_all(&ids, Duration::from_secs(20)).await?;
    wait_until_drained(&pool, Duration::from_secs(10)).await?;
    relay.shutdown().await?;

    let received = sandbox.received();
    let first = received
        .iter()
        .find(|r| r.message_id == id.to_string())
        .expect("the first message");
    assert_eq!(first.saga_id, "saga-envelope");
    assert_eq!(first.step, "OrderCreated");
    assert_eq!(first.routing_key, "orders.created");
    assert_eq!(first.payload, serde_json::json!({"order_id": 42}));
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert_eq!(first.delivery_mode, Some(2), "persistent");
    let header = |name: &str| match &first.headers[name] {
        AMQPValue::LongString(s) => s.to_string(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(header("saga_id"), "saga-envelope");
    assert_eq!(header("step"), "OrderCreated");
    assert_eq!(header("tenant"), "acme");
    assert_eq!(
        header("traceparent"),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_order_per_key(&received[1..]);
    let leftover: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await?;
    assert_eq!(leftover, 0, "confirmed rows are deleted");
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_row_committed_late_behind_published_rows_is_still_published(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let relay = Relay::new(pool.clone(), amqp_url(), fast_config(&sandbox.exchange)).spawn();

    // The late transaction takes its seq first, then stays open...
    let late = Message::builder("saga-late", "Late", "late").payload(&serde_json::json!({}))?;
    let mut tx = pool.begin().await?;
    let late_id = txoutbox::enqueue(&mut *tx, &late).await?;
    // ...while later rows commit and are published.
    let early = fill(&pool, 3, 50, "early").await?;
    sandbox
        .wait_for_all(&early, Duration::from_secs(20))
        .await?;
    wait_until_drained(&pool, Duration::from_secs(10)).await?;

    tx.commit().await?;
    let late_ids = [late_id.to_string()].into_iter().collect();
    sandbox
        .wait_for_all(&late_ids, Duration::from_secs(10))
        .await?;
    relay.shutdown().await?;
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn delayed_rows_wait_for_their_time(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let delayed = Message::builder("saga-delay", "Reminder", "reminders")
        .delay(Duration::from_millis(1500))
        .payload(&serde_json::json!({}))?;
    let id = txoutbox::enqueue(&pool, &delayed).await?;
    let now = fill(&pool, 1, 1, "now").await?;
    let relay = Relay::new(pool.clone(), amqp_url(), fast_config(&sandbox.exchange)).spawn();

    sandbox.wait_for_all(&now, Duration::from_secs(10)).await?;
    assert!(
        !sandbox.distinct_ids().contains(&id.to_string()),
        "published before its time"
    );
    let ids = [id.to_string()].into_iter().collect();
    sandbox.wait_for_all(&ids, Duration::from_secs(10)).await?;
    relay.shutdown().await?;
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn sent_rows_are_kept_for_the_retention_then_cleaned_up(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let ids = fill(&pool, 2, 10, "kept").await?;
    let mut config = fast_config(&sandbox.exchange);
    config.retention = Some(Duration::from_secs(3600));
    let relay = Relay::new(pool.clone(), amqp_url(), config).spawn();
    sandbox.wait_for_all(&ids, Duration::from_secs(20)).await?;
    wait_until_drained(&pool, Duration::from_secs(10)).await?;
    relay.shutdown().await?;

    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE state = 'sent' AND sent_at IS NOT NULL",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(kept, 20);
    assert_eq!(
        txoutbox_relay::cleanup(&pool, Duration::from_secs(3600), 5).await?,
        0,
        "still within the retention"
    );
    assert_eq!(
        txoutbox_relay::cleanup(&pool, Duration::ZERO, 5).await?,
        20,
        "in batches of 5"
    );
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn two_relays_share_the_partitions_and_keep_order(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let ids = fill(&pool, 40, 50, "shared").await?;
    let one = Relay::new(pool.clone(), amqp_url(), fast_config(&sandbox.exchange)).spawn();
    let two = Relay::new(pool.clone(), amqp_url(), fast_config(&sandbox.exchange)).spawn();
    sandbox.wait_for_all(&ids, Duration::from_secs(30)).await?;

    // Rebalancing takes a grace period; wait until both hold a fair share.
    wait_until(
        Duration::from_secs(20),
        "both hold 32 partitions",
        async || {
            let held: Vec<usize> = txoutbox_relay::instances(&pool)
                .await?
                .iter()
                .map(|i| i.partitions.len())
                .collect();
            Ok(held == [32, 32])
        },
    )
    .await?;
    one.shutdown().await?;
    two.shutdown().await?;
    assert_order_per_key(&sandbox.received());
    sandbox.remove().await
}
