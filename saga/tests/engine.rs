//! The saga engine against a real PostgreSQL (a fresh database per test): starting,
//! replies, timeouts, compensations, operators, and two replies at once. The broker is
//! not needed here: commands are read from the outbox, replies applied as the
//! orchestrator's consumer applies them.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use txoutbox_saga::wire::{self, Reply};

mod common;

use common::{commands, expire, failed, ok, reply_to, state, steps};
use txoutbox_saga::{Applied, Event, Incoming, Registry, Saga, SagaState};

/// The schema, after a check that the servers are up; it also captures the logs of
/// what a test starts, shown when the test fails (`testkit::CheckedMigrator`).
static MIGRATOR: testkit::CheckedMigrator = testkit::CheckedMigrator::new(&txoutbox::MIGRATOR);

type TestResult = anyhow::Result<()>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    order_id: i64,
    #[serde(default)]
    reservation: Option<String>,
}

fn order_saga(version: i32) -> Saga<Order> {
    Saga::<Order>::define("order", version)
        .compensation_attempts(2)
        .step("reserve_inventory")
        .action(
            "inventory.reserve",
            |o: &Order| serde_json::json!({ "order_id": o.order_id }),
        )
        .compensate(
            "inventory.release",
            |o: &Order| serde_json::json!({ "reservation": o.reservation }),
        )
        .timeout(Duration::from_secs(30))
        .step("charge_payment")
        .action(
            "payment.charge",
            |o: &Order| serde_json::json!({ "order_id": o.order_id }),
        )
        .compensate(
            "payment.refund",
            |o: &Order| serde_json::json!({ "order_id": o.order_id }),
        )
        .step("schedule_shipping")
        .action(
            "shipping.schedule",
            |o: &Order| serde_json::json!({ "order_id": o.order_id }),
        )
        .build()
        .expect("a valid definition")
}

fn registry() -> Registry {
    Registry::new().register(order_saga(1))
}

async fn start(pool: &PgPool, saga_id: &str) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    txoutbox_saga::start(
        &mut tx,
        &order_saga(1),
        saga_id,
        &Order {
            order_id: 7,
            reservation: None,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Applies `reply` to the latest command named `command` the saga sent.
async fn reply(
    pool: &PgPool,
    saga_id: &str,
    command: &str,
    _attempt: u32,
    reply: Reply,
) -> anyhow::Result<Applied> {
    reply_to(pool, &registry(), saga_id, command, reply).await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_happy_path_sends_each_command_after_the_last_reply_and_merges_results(
    pool: PgPool,
) -> TestResult {
    start(&pool, "order-1").await?;
    let sent = commands(&pool, "order-1").await?;
    assert_eq!(steps(&sent), ["inventory.reserve"]);
    assert_eq!(sent[0].2, serde_json::json!({ "order_id": 7 }));
    let headers: serde_json::Value =
        sqlx::query_scalar("SELECT headers FROM outbox WHERE saga_id = 'order-1'")
            .fetch_one(&pool)
            .await?;
    assert_eq!(headers[wire::REPLY_TO_HEADER], "saga.order.reply");
    assert_eq!(headers[wire::SAGA_TYPE_HEADER], "order");

    reply(
        &pool,
        "order-1",
        "inventory.reserve",
        1,
        ok(Some(serde_json::json!({"reservation": "r-1"}))),
    )
    .await?;
    reply(&pool, "order-1", "payment.charge", 1, ok(None)).await?;
    let applied = reply(&pool, "order-1", "shipping.schedule", 1, ok(None)).await?;
    assert_eq!(
        applied,
        Applied::Moved {
            from: SagaState::Running,
            to: SagaState::Completed
        }
    );
    let sent = commands(&pool, "order-1").await?;
    assert_eq!(
        steps(&sent),
        ["inventory.reserve", "payment.charge", "shipping.schedule"]
    );
    let (state, _, deadline) = state(&pool, "order-1").await?;
    assert_eq!((state, deadline), (SagaState::Completed, false));
    let data: serde_json::Value =
        sqlx::query_scalar("SELECT data FROM saga_instance WHERE saga_id = 'order-1'")
            .fetch_one(&pool)
            .await?;
    assert_eq!(data["reservation"], "r-1");
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_failed_step_compensates_the_earlier_ones_once_in_reverse(pool: PgPool) -> TestResult {
    start(&pool, "order-2").await?;
    reply(
        &pool,
        "order-2",
        "inventory.reserve",
        1,
        ok(Some(serde_json::json!({"reservation": "r-2"}))),
    )
    .await?;
    reply(&pool, "order-2", "payment.charge", 1, ok(None)).await?;
    reply(
        &pool,
        "order-2",
        "shipping.schedule",
        1,
        failed("no courier"),
    )
    .await?;
    reply(&pool, "order-2", "payment.refund", 1, ok(None)).await?;
    // The same reply again changes nothing: no second release.
    reply(&pool, "order-2", "payment.refund", 1, ok(None)).await?;
    reply(&pool, "order-2", "inventory.release", 1, ok(None)).await?;
    let sent = commands(&pool, "order-2").await?;
    assert_eq!(
        steps(&sent),
        [
            "inventory.reserve",
            "payment.charge",
            "shipping.schedule",
            "payment.refund",
            "inventory.release"
        ]
    );
    assert_eq!(
        sent[4].2,
        serde_json::json!({ "reservation": "r-2" }),
        "built from the merged data"
    );
    let (state, error, deadline) = state(&pool, "order-2").await?;
    assert_eq!((state, deadline), (SagaState::Compensated, false));
    assert_eq!(error.as_deref(), Some("no courier"));
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_timed_out_step_is_compensated_and_its_late_reply_changes_nothing(
    pool: PgPool,
) -> TestResult {
    start(&pool, "order-3").await?;
    reply(&pool, "order-3", "inventory.reserve", 1, ok(None)).await?;
    expire(&pool, "order-3").await?;
    assert_eq!(
        txoutbox_saga::sweep_due(&pool, &registry(), 10)
            .await?
            .len(),
        1
    );
    assert!(
        txoutbox_saga::sweep_due(&pool, &registry(), 10)
            .await?
            .is_empty(),
        "one timeout, once"
    );
    let sent = commands(&pool, "order-3").await?;
    assert_eq!(
        steps(&sent),
        ["inventory.reserve", "payment.charge", "payment.refund"]
    );
    let late = reply(&pool, "order-3", "payment.charge", 1, ok(None)).await?;
    assert!(matches!(late, Applied::Ignored(_)), "{late:?}");
    let history: Vec<String> = sqlx::query_scalar(
        "SELECT kind || coalesce(':' || detail, '') FROM saga_event WHERE saga_id = 'order-3' ORDER BY id",
    )
    .fetch_all(&pool)
    .await?;
    assert!(
        history.iter().any(|h| h.starts_with("timeout")),
        "{history:?}"
    );
    assert!(
        history
            .iter()
            .any(|h| h.starts_with("reply:succeeded; ignored")),
        "{history:?}"
    );
    assert_eq!(state(&pool, "order-3").await?.0, SagaState::Compensating);
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_compensation_that_keeps_failing_leaves_the_saga_failed_until_retried(
    pool: PgPool,
) -> TestResult {
    start(&pool, "order-4").await?;
    reply(&pool, "order-4", "inventory.reserve", 1, ok(None)).await?;
    reply(&pool, "order-4", "payment.charge", 1, failed("declined")).await?;
    reply(
        &pool,
        "order-4",
        "inventory.release",
        1,
        failed("warehouse offline"),
    )
    .await?;
    expire(&pool, "order-4").await?;
    txoutbox_saga::sweep_due(&pool, &registry(), 10).await?;
    let (state_now, error, deadline) = state(&pool, "order-4").await?;
    assert_eq!(
        (state_now, deadline),
        (SagaState::Failed, false),
        "never compensated"
    );
    assert!(
        error
            .unwrap_or_default()
            .contains("gave up after 2 attempts")
    );
    let attempts: Vec<String> = commands(&pool, "order-4")
        .await?
        .into_iter()
        .map(|(s, a, _)| format!("{s}#{a}"))
        .collect();
    assert_eq!(
        attempts,
        [
            "inventory.reserve#1",
            "payment.charge#1",
            "inventory.release#1",
            "inventory.release#2"
        ]
    );

    let mut tx = pool.begin().await?;
    txoutbox_saga::apply(
        &mut tx,
        &registry(),
        "order-4",
        &Event::Retry,
        Incoming::default(),
    )
    .await?;
    tx.commit().await?;
    reply(&pool, "order-4", "inventory.release", 1, ok(None)).await?;
    assert_eq!(state(&pool, "order-4").await?.0, SagaState::Compensated);
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn two_replies_at_once_apply_once(pool: PgPool) -> TestResult {
    start(&pool, "order-5").await?;
    let (a, b) = tokio::join!(
        reply(&pool, "order-5", "inventory.reserve", 1, ok(None)),
        reply(&pool, "order-5", "inventory.reserve", 1, ok(None)),
    );
    let outcomes = [a?, b?];
    let moved = outcomes
        .iter()
        .filter(|o| matches!(o, Applied::Moved { .. }))
        .count();
    assert_eq!(moved, 1, "{outcomes:?}");
    assert_eq!(
        steps(&commands(&pool, "order-5").await?),
        ["inventory.reserve", "payment.charge"]
    );
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_saga_of_an_unregistered_version_fails_with_its_reason(pool: PgPool) -> TestResult {
    let mut tx = pool.begin().await?;
    txoutbox_saga::start(
        &mut tx,
        &order_saga(2),
        "order-6",
        &Order {
            order_id: 6,
            reservation: None,
        },
    )
    .await?;
    tx.commit().await?;
    let applied = reply(&pool, "order-6", "inventory.reserve", 1, ok(None)).await?;
    assert_eq!(applied, Applied::DefinitionMissing);
    let (state, error, _) = state(&pool, "order-6").await?;
    assert_eq!(state, SagaState::Failed);
    assert!(
        error
            .unwrap_or_default()
            .contains("order version 2 is not registered")
    );
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn unknown_sagas_commands_and_second_starts_are_errors(pool: PgPool) -> TestResult {
    start(&pool, "order-7").await?;
    let unknown = reply(&pool, "order-404", "inventory.reserve", 1, ok(None)).await;
    assert!(
        unknown
            .unwrap_err()
            .to_string()
            .contains("no saga with id order-404")
    );
    let unknown = reply(&pool, "order-7", "payment.teleport", 1, ok(None)).await;
    assert!(
        unknown
            .unwrap_err()
            .to_string()
            .contains("no command payment.teleport")
    );
    let again = start(&pool, "order-7").await;
    assert!(again.unwrap_err().to_string().contains("already exists"));
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_abort_compensates_a_running_saga(pool: PgPool) -> TestResult {
    start(&pool, "order-8").await?;
    reply(&pool, "order-8", "inventory.reserve", 1, ok(None)).await?;
    let mut tx = pool.begin().await?;
    txoutbox_saga::apply(
        &mut tx,
        &registry(),
        "order-8",
        &Event::Abort { reason: "fraud" },
        Incoming::default(),
    )
    .await?;
    tx.commit().await?;
    let sent = commands(&pool, "order-8").await?;
    assert_eq!(
        steps(&sent),
        ["inventory.reserve", "payment.charge", "payment.refund"]
    );
    assert_eq!(state(&pool, "order-8").await?.0, SagaState::Compensating);
    Ok(())
}
