//! A row the broker refuses fails alone: a missing exchange (the row's or the
//! default), an exchange the relay's user may not write to, a message over the
//! broker's size limit, a row that cannot be framed. Each sits among hundreds of good
//! rows of other keys, which all arrive, in order, without being charged an attempt.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::PgPool;
use txoutbox_relay::{Relay, RelayConfig};
use uuid::Uuid;

use crate::support::*;

/// Writes one row with plain SQL, as a service in another language would.
async fn insert_row(
    pool: &PgPool,
    saga_id: &str,
    exchange: Option<&str>,
    payload: serde_json::Value,
    headers: serde_json::Value,
) -> anyhow::Result<Uuid> {
    let id = sqlx::query_scalar(
        "INSERT INTO outbox (saga_id, step, routing_key, payload, exchange, headers)
         VALUES ($1, 'Refused', 'good.refused', $2, $3, $4) RETURNING id",
    )
    .bind(saga_id)
    .bind(payload)
    .bind(exchange)
    .bind(headers)
    .fetch_one(pool)
    .await?;
    Ok(id)
}

/// A bad row and, behind it, a good row of the same key that must wait for it.
struct BadRow {
    id: Uuid,
    follower: Uuid,
}

/// Writes 160 good rows of 20 keys, then the bad rows (each with a follower of its
/// own key), then 160 more good rows; the relay claims them in the same batches.
async fn busy_outbox_with(
    pool: &PgPool,
    sandbox: &Sandbox,
    bad: Vec<(Option<&str>, serde_json::Value, serde_json::Value)>,
) -> anyhow::Result<(HashSet<String>, Vec<BadRow>)> {
    let mut good = fill(pool, 20, 8, "good.before").await?;
    let mut rows = Vec::new();
    for (i, (exchange, payload, headers)) in bad.into_iter().enumerate() {
        let saga_id = format!("saga-bad-{i}");
        let id = insert_row(pool, &saga_id, exchange, payload, headers).await?;
        let follower = insert_row(
            pool,
            &saga_id,
            Some(&sandbox.exchange),
            serde_json::json!({"key": 1000 + i, "n": i64::MAX}),
            serde_json::json!({}),
        )
        .await?;
        rows.push(BadRow { id, follower });
    }
    good.extend(fill(pool, 20, 8, "good.after").await?);
    Ok((good, rows))
}

/// Relay settings for these tests: quick retries, three attempts, sent rows kept so
/// that their attempts can be read afterwards.
fn refusal_config(exchange: &str) -> RelayConfig {
    let mut config = fast_config(exchange);
    config.max_attempts = 3;
    config.retention = Some(Duration::from_secs(3600));
    config
}

/// Runs `relay` until every good row arrived and every bad row is dead, then checks
/// what must hold whatever the refusal: order per key, followers held back with no
/// attempt charged, no good row charged, readiness kept. Returns the dead rows.
async fn drain_around(
    pool: &PgPool,
    sandbox: &Sandbox,
    relay: Relay,
    good: &HashSet<String>,
    bad: &[BadRow],
) -> anyhow::Result<(Vec<txoutbox_relay::DeadRow>, String)> {
    let metrics = relay.metrics();
    let relay = relay.spawn();
    sandbox.wait_for_all(good, Duration::from_secs(60)).await?;
    wait_until(
        Duration::from_secs(60),
        "every bad row is dead",
        async || Ok(txoutbox_relay::dead_rows(pool, 100).await?.len() >= bad.len()),
    )
    .await?;
    let dead = txoutbox_relay::dead_rows(pool, 100).await?;
    assert!(metrics.ready(), "a refused row made the relay unready");
    let rendered = metrics.render(None);
    relay.shutdown().await?;

    let bad_ids: Vec<Uuid> = bad.iter().map(|b| b.id).collect();
    let dead_ids: HashSet<Uuid> = dead.iter().map(|d| d.id).collect();
    assert_eq!(
        dead_ids,
        bad_ids.iter().copied().collect(),
        "exactly the bad rows are dead"
    );
    let charged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE attempts > 0 AND NOT id = ANY($1)")
            .bind(&bad_ids)
            .fetch_one(pool)
            .await?;
    assert_eq!(charged, 0, "a good row was charged an attempt");
    for row in bad {
        let (state, attempts): (String, i32) =
            sqlx::query_as("SELECT state, attempts FROM outbox WHERE id = $1")
                .bind(row.follower)
                .fetch_one(pool)
                .await?;
        assert_eq!(
            (state.as_str(), attempts),
            ("pending", 0),
            "the follower waits, uncharged"
        );
        assert!(!sandbox.distinct_ids().contains(&row.follower.to_string()));
    }
    assert_order_per_key(&sandbox.received());
    Ok((dead, rendered))
}

fn assert_reason(dead: &[txoutbox_relay::DeadRow], expected: &[&str]) {
    for row in dead {
        let error = row.last_error.as_deref().unwrap_or("");
        for part in expected {
            assert!(error.contains(part), "{error:?} does not say {part:?}");
        }
    }
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_row_for_a_missing_exchange_fails_alone_and_is_redriven_once_it_exists(
    pool: PgPool,
) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let missing = format!("test-typo-{}", Uuid::now_v7().simple());
    let bad = vec![(
        Some(missing.as_str()),
        serde_json::json!({"key": 1000, "n": 0}),
        serde_json::json!({}),
    )];
    let (good, bad) = busy_outbox_with(&pool, &sandbox, bad).await?;
    let relay = Relay::new(pool.clone(), amqp_url(), refusal_config(&sandbox.exchange));
    let (dead, metrics) = drain_around(&pool, &sandbox, relay, &good, &bad).await?;
    assert_reason(&dead, &["404", "NOT_FOUND", &missing]);
    assert_eq!(dead[0].attempts, 3);
    assert!(
        metrics.contains("outbox_relay_failures_total{reason=\"not_found\"} 3\n"),
        "{metrics}"
    );

    // The exchange is created; `dead retry` re-drives the row, then its follower.
    sandbox.bind_exchange(&missing).await?;
    txoutbox_relay::retry_dead(&pool, bad[0].id).await?;
    let relay = Relay::new(pool.clone(), amqp_url(), refusal_config(&sandbox.exchange)).spawn();
    let both: HashSet<String> = [bad[0].id.to_string(), bad[0].follower.to_string()].into();
    sandbox.wait_for_all(&both, Duration::from_secs(20)).await?;
    relay.shutdown().await?;
    let order = sandbox.first_arrivals_of(&both);
    assert_eq!(order, [bad[0].id.to_string(), bad[0].follower.to_string()]);
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_missing_default_exchange_fails_only_the_rows_that_use_it(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    // Good rows name the sandbox's exchange; three rows rely on the default, which is missing.
    let bad = (0..3)
        .map(|i| {
            (
                None,
                serde_json::json!({"key": 1000 + i, "n": 0}),
                serde_json::json!({}),
            )
        })
        .collect();
    let (good, bad) = busy_outbox_with(&pool, &sandbox, bad).await?;
    sqlx::query(
        "UPDATE outbox SET exchange = $1 WHERE exchange IS NULL AND saga_id NOT LIKE 'saga-bad-%'",
    )
    .bind(&sandbox.exchange)
    .execute(&pool)
    .await?;
    let missing = format!("test-missing-default-{}", Uuid::now_v7().simple());
    let relay = Relay::new(pool.clone(), amqp_url(), refusal_config(&missing));
    let (dead, _) = drain_around(&pool, &sandbox, relay, &good, &bad).await?;
    assert_reason(&dead, &["404", &missing]);
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn rows_that_cannot_be_framed_are_parked_at_once_without_a_publish(
    pool: PgPool,
) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let long_name = serde_json::json!({ "h".repeat(300): "x" });
    let huge_headers = serde_json::json!({ "blob": "x".repeat(200_000) });
    let bad = vec![
        (None, serde_json::json!({"key": 1000, "n": 0}), long_name),
        (None, serde_json::json!({"key": 1001, "n": 0}), huge_headers),
    ];
    let (good, bad) = busy_outbox_with(&pool, &sandbox, bad).await?;
    let relay = Relay::new(pool.clone(), amqp_url(), refusal_config(&sandbox.exchange));
    let (dead, metrics) = drain_around(&pool, &sandbox, relay, &good, &bad).await?;
    let reasons: Vec<&str> = dead
        .iter()
        .filter_map(|d| d.last_error.as_deref())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("header name") && r.contains("300 bytes")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("frame_max")),
        "{reasons:?}"
    );
    assert!(
        dead.iter().all(|d| d.attempts == 1),
        "dead at once: {dead:?}"
    );
    assert!(
        metrics.contains("outbox_relay_failures_total{reason=\"invalid_row\"} 2\n"),
        "{metrics}"
    );
    let bad_ids: HashSet<String> = bad.iter().map(|b| b.id.to_string()).collect();
    assert!(
        sandbox.distinct_ids().is_disjoint(&bad_ids),
        "never published"
    );
    sandbox.remove().await
}

/// Runs `rabbitmqctl` on the local node.
async fn rabbitmqctl(args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_row_for_an_exchange_the_user_may_not_write_fails_alone(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let suffix = Uuid::now_v7().simple().to_string();
    let forbidden = format!("test-forbidden-{suffix}");
    sandbox.bind_exchange(&forbidden).await?;
    // A user that may write to the sandbox's exchange only.
    let user = format!("test-relay-{suffix}");
    rabbitmqctl(&["add_user", &user, "secret"]).await?;
    let write = format!("^{}$", sandbox.exchange);
    rabbitmqctl(&["set_permissions", "-p", "/", &user, "", &write, ""]).await?;
    let url = amqp_url_as(&user, "secret")?;

    let bad = vec![(
        Some(forbidden.as_str()),
        serde_json::json!({"key": 1000, "n": 0}),
        serde_json::json!({}),
    )];
    let (good, bad) = busy_outbox_with(&pool, &sandbox, bad).await?;
    let relay = Relay::new(pool.clone(), url, refusal_config(&sandbox.exchange));
    let outcome = drain_around(&pool, &sandbox, relay, &good, &bad).await;
    rabbitmqctl(&["delete_user", &user]).await?;
    let (dead, metrics) = outcome?;
    assert_reason(&dead, &["403", "ACCESS_REFUSED", &forbidden]);
    assert!(
        metrics.contains("outbox_relay_failures_total{reason=\"access_refused\"} 3\n"),
        "{metrics}"
    );
    sandbox.remove().await
}

/// The broker's `max_message_size` lowered for as long as it lives; channels opened
/// meanwhile refuse larger messages. Other tests publish far smaller ones.
struct SizeLimit;

const DEFAULT_MAX_MESSAGE_SIZE: u64 = 134_217_728;

impl SizeLimit {
    async fn set(bytes: u64) -> anyhow::Result<Self> {
        let call = format!("application:set_env(rabbit, max_message_size, {bytes}).");
        rabbitmqctl(&["eval", &call]).await?;
        Ok(Self)
    }
}

impl Drop for SizeLimit {
    fn drop(&mut self) {
        let call =
            format!("application:set_env(rabbit, max_message_size, {DEFAULT_MAX_MESSAGE_SIZE}).");
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["eval", &call])
            .stdin(std::process::Stdio::null())
            .output();
    }
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_message_over_the_broker_size_limit_fails_alone(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let limit = SizeLimit::set(1024 * 1024).await?;
    let big = serde_json::json!({"key": 1000, "n": 0, "blob": "x".repeat(1_500_000)});
    let (good, bad) =
        busy_outbox_with(&pool, &sandbox, vec![(None, big, serde_json::json!({}))]).await?;
    let relay = Relay::new(pool.clone(), amqp_url(), refusal_config(&sandbox.exchange));
    let outcome = drain_around(&pool, &sandbox, relay, &good, &bad).await;
    drop(limit);
    let (dead, metrics) = outcome?;
    assert_reason(&dead, &["406", "PRECONDITION_FAILED", "max size"]);
    assert!(
        metrics.contains("outbox_relay_failures_total{reason=\"precondition_failed\"} 3\n"),
        "{metrics}"
    );
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn batches_are_bounded_by_bytes_and_a_larger_row_goes_alone(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let mut ids = fill(&pool, 10, 20, "small").await?;
    for i in 0..10 {
        let payload = serde_json::json!({"key": 2000 + i, "n": 0, "blob": "y".repeat(100_000)});
        ids.insert(
            insert_row(
                &pool,
                &format!("saga-large-{i}"),
                None,
                payload,
                serde_json::json!({}),
            )
            .await?
            .to_string(),
        );
    }
    ids.extend(fill(&pool, 10, 20, "small").await?);
    let mut config = fast_config(&sandbox.exchange);
    config.batch_max_bytes = 64 * 1024;
    let relay = Relay::new(pool.clone(), amqp_url(), config);
    let metrics = relay.metrics();
    let relay = relay.spawn();
    sandbox.wait_for_all(&ids, Duration::from_secs(30)).await?;
    wait_until_drained(&pool, Duration::from_secs(10)).await?;
    relay.shutdown().await?;
    assert_order_per_key(&sandbox.received());
    // Every large row went in a batch of its own: ten batches of one row at least.
    let rendered = metrics.render(None);
    let singles: u64 = rendered
        .lines()
        .find_map(|l| l.strip_prefix("outbox_relay_batch_size_bucket{le=\"1\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(singles >= 10, "{rendered}");
    sandbox.remove().await
}
