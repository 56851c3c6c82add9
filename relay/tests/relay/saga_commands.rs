//! `outbox-relay saga ...`: an operator's view of sagas from the command line, against
//! a database where sagas were started and moved as an orchestrator would.

use std::process::Output;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use txoutbox_saga::{Event, Incoming, Outcome, Phase, Registry, Saga, SagaState};

use crate::support::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    order_id: i64,
}

fn order_saga() -> Saga<Order> {
    Saga::<Order>::define("order", 1)
        .step("reserve_inventory")
        .action(
            "inventory.reserve",
            |o: &Order| serde_json::json!({ "order_id": o.order_id }),
        )
        .compensate(
            "inventory.release",
            |o: &Order| serde_json::json!({ "order_id": o.order_id }),
        )
        .step("charge_payment")
        .action(
            "payment.charge",
            |o: &Order| serde_json::json!({ "order_id": o.order_id }),
        )
        .build()
        .expect("a valid definition")
}

fn registry() -> Registry {
    Registry::new().register(order_saga())
}

async fn start(pool: &PgPool, saga_id: &str) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    txoutbox_saga::start(&mut tx, &order_saga(), saga_id, &Order { order_id: 7 }).await?;
    tx.commit().await?;
    Ok(())
}

/// Runs the binary against `pool`'s database.
async fn saga_cli(pool: &PgPool, args: &[&str]) -> anyhow::Result<Output> {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
    command
        .arg("saga")
        .args(args)
        .env("DATABASE_URL", database_url_of(pool))
        .env_remove("AMQP_URL");
    Ok(tokio::time::timeout(Duration::from_secs(30), command.output()).await??)
}

async fn state(pool: &PgPool, saga_id: &str) -> anyhow::Result<String> {
    Ok(
        sqlx::query_scalar("SELECT state FROM saga_instance WHERE saga_id = $1")
            .bind(saga_id)
            .fetch_one(pool)
            .await?,
    )
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn saga_list_and_show_tell_where_a_saga_is(pool: PgPool) -> TestResult {
    start(&pool, "order-1").await?;
    start(&pool, "order-2").await?;
    sqlx::query(
        "UPDATE saga_instance SET deadline_at = now() - interval '1 minute' WHERE saga_id = 'order-1'",
    )
    .execute(&pool)
    .await?;

    let listed = saga_cli(&pool, &["list", "--json"]).await?;
    assert!(listed.status.success(), "{}", text(&listed));
    let value: serde_json::Value = serde_json::from_slice(&listed.stdout)?;
    assert_eq!(
        value[0]["saga_id"], "order-2",
        "most recently changed first"
    );
    assert_eq!(value[1]["saga_id"], "order-1");
    assert_eq!(value[1]["state"], "running");
    assert_eq!(value[1]["overdue"], true);

    let overdue = saga_cli(&pool, &["list", "--overdue", "--state", "running"]).await?;
    let said = text(&overdue);
    assert!(overdue.status.success(), "{said}");
    assert!(
        said.contains("1 saga(s)") && said.contains("order-1") && said.contains("(overdue)"),
        "{said}"
    );
    assert!(!said.contains("order-2"), "{said}");

    let bad = saga_cli(&pool, &["list", "--state", "started"]).await?;
    let said = text(&bad);
    assert_eq!(bad.status.code(), Some(2), "{said}");
    assert!(
        said.contains("running"),
        "the valid states are listed: {said}"
    );

    let shown = saga_cli(&pool, &["show", "order-2"]).await?;
    let said = text(&shown);
    assert!(shown.status.success(), "{said}");
    assert!(
        said.contains("saga order-2: running, order v1, step 0, attempts 0"),
        "{said}"
    );
    assert!(said.contains("pending → running"), "{said}");
    assert!(
        said.find("started") < said.find("command_sent"),
        "the history in order: {said}"
    );
    assert!(
        said.contains("outbox (1 row(s)") && said.contains("inventory.reserve"),
        "{said}"
    );

    let json = saga_cli(&pool, &["show", "order-2", "--json"]).await?;
    assert!(json.status.success(), "{}", text(&json));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout)?;
    assert_eq!(value["instance"]["state"], "running");
    assert_eq!(value["history"][0]["kind"], "started");
    assert_eq!(value["outbox"][0]["routing_key"], "inventory.reserve");
    assert_eq!(value["inbox"], serde_json::json!([]));

    let unknown = saga_cli(&pool, &["show", "order-404"]).await?;
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown));
    assert!(text(&unknown).contains("no saga with id order-404"));
    Ok(())
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn saga_abort_and_retry_are_requests_an_orchestrator_carries_out(pool: PgPool) -> TestResult {
    start(&pool, "order-7").await?;

    let retry = saga_cli(&pool, &["retry", "order-7"]).await?;
    let said = text(&retry);
    assert_eq!(retry.status.code(), Some(1), "{said}");
    assert!(
        said.contains("saga order-7 is running; only a failed saga can be retried"),
        "{said}"
    );

    let abort = saga_cli(&pool, &["abort", "order-7", "--reason", "customer called"]).await?;
    let said = text(&abort);
    assert!(abort.status.success(), "{said}");
    assert!(said.contains("abort of saga order-7 requested"), "{said}");
    assert_eq!(state(&pool, "order-7").await?, "running", "only requested");
    let audit: (String, String, String) = sqlx::query_as(
        "SELECT action, reason, actor FROM txoutbox_audit WHERE saga_id = 'order-7'",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(
        audit,
        ("saga_abort".into(), "customer called".into(), "cli".into())
    );

    // The next orchestrator sweep carries it out; the participant's release succeeds.
    assert_eq!(
        txoutbox_saga::sweep_due(&pool, &registry(), 10)
            .await?
            .len(),
        1
    );
    assert_eq!(state(&pool, "order-7").await?, "compensating");
    let released = Event::Reply {
        step: 0,
        phase: Phase::Compensation,
        outcome: Outcome::Succeeded,
    };
    let mut tx = pool.begin().await?;
    txoutbox_saga::apply(
        &mut tx,
        &registry(),
        "order-7",
        &released,
        Incoming::default(),
    )
    .await?;
    tx.commit().await?;
    assert_eq!(
        state(&pool, "order-7").await?,
        SagaState::Compensated.as_str()
    );

    let shown = saga_cli(&pool, &["show", "order-7"]).await?;
    let said = text(&shown);
    assert!(shown.status.success(), "{said}");
    assert!(said.contains("saga order-7: compensated"), "{said}");
    for expected in [
        "abort requested: customer called",
        "running → compensating",
        "inventory.release",
        "compensating → compensated",
    ] {
        assert!(said.contains(expected), "expected {expected:?} in {said}");
    }

    let again = saga_cli(&pool, &["abort", "order-7"]).await?;
    let said = text(&again);
    assert_eq!(again.status.code(), Some(1), "{said}");
    assert!(
        said.contains("saga order-7 is compensated; only a running or pending saga can be aborted"),
        "{said}"
    );

    for args in [["abort", "order-404"], ["retry", "order-404"]] {
        let unknown = saga_cli(&pool, &args).await?;
        let said = text(&unknown);
        assert_eq!(unknown.status.code(), Some(1), "{args:?}: {said}");
        assert!(said.contains("no saga with id order-404"), "{said}");
    }
    Ok(())
}

/// Reserve and authorise side by side, then wait for the capture.
fn process_saga() -> Saga<Order> {
    let order = |o: &Order| serde_json::json!({ "order_id": o.order_id });
    Saga::<Order>::define("process", 1)
        .parallel(|p| {
            p.step("reserve")
                .action("inventory.reserve", order)
                .compensate("inventory.release", order)
                .step("authorize")
                .action("payment.authorize", order)
                .compensate("payment.void", order)
        })
        .step("await_capture")
        .wait_for("payment.captured")
        .step("ship")
        .action("shipping.schedule", order)
        .build()
        .expect("a valid definition")
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn saga_show_names_the_group_the_wait_and_the_events_and_list_finds_the_waiting(
    pool: PgPool,
) -> TestResult {
    for saga_id in ["order-1", "order-2"] {
        let mut tx = pool.begin().await?;
        txoutbox_saga::start(&mut tx, &process_saga(), saga_id, &Order { order_id: 1 }).await?;
        tx.commit().await?;
    }
    // order-1: one step of the group answered.
    let registry = Registry::new().register(process_saga());
    let reply = |step| Event::Reply {
        step,
        phase: Phase::Action,
        outcome: Outcome::Succeeded,
    };
    let mut tx = pool.begin().await?;
    txoutbox_saga::apply(
        &mut tx,
        &registry,
        "order-1",
        &reply(0),
        Incoming::default(),
    )
    .await?;
    tx.commit().await?;
    let shown = saga_cli(&pool, &["show", "order-1"]).await?;
    let said = text(&shown);
    assert!(shown.status.success(), "{said}");
    assert!(said.contains("parallel group since"), "{said}");
    assert!(
        said.contains("step 0 inventory.reserve: answered"),
        "{said}"
    );
    assert!(
        said.contains("step 1 payment.authorize: waiting for its reply"),
        "{said}"
    );

    // order-2: both answered, now waiting; an event for a later step came early.
    let mut tx = pool.begin().await?;
    for step in [0, 1] {
        txoutbox_saga::apply(
            &mut tx,
            &registry,
            "order-2",
            &reply(step),
            Incoming::default(),
        )
        .await?;
    }
    txoutbox_saga::signal(&mut tx, "order-2", "parcel.scanned", &serde_json::json!({})).await?;
    tx.commit().await?;
    let shown = saga_cli(&pool, &["show", "order-2"]).await?;
    let said = text(&shown);
    assert!(
        said.contains("waiting for event payment.captured since"),
        "{said}"
    );
    assert!(said.contains("parcel.scanned"), "{said}");
    assert!(
        said.contains("kept for the step that waits for it"),
        "{said}"
    );

    let waiting = saga_cli(&pool, &["list", "--waiting", "--json"]).await?;
    let listed: serde_json::Value = serde_json::from_slice(&waiting.stdout)?;
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["saga_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["order-2"], "{}", text(&waiting));
    assert_eq!(listed[0]["waiting_for"], "payment.captured");
    let json = saga_cli(&pool, &["show", "order-1", "--json"]).await?;
    let view: serde_json::Value = serde_json::from_slice(&json.stdout)?;
    assert_eq!(view["branches"][1]["answered"], false, "{view}");
    Ok(())
}
