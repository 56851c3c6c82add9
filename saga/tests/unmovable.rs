//! A saga that cannot be moved must fail alone, with its reason, while every other
//! saga's deadline is still swept; a database that refuses every move fails no saga;
//! and an end hook that hangs is a failed try, not a stuck orchestrator. Against a real PostgreSQL; the sweep is driven directly.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use txoutbox_inbox::BoxError;
use txoutbox_saga::{Registry, Saga, SagaState, sweep_due};

mod common;

static MIGRATOR: testkit::CheckedMigrator = testkit::CheckedMigrator::new(&txoutbox::MIGRATOR);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    order_id: i64,
}

/// reserve (undone by `release`'s payload) -> ship.
fn reserve_then_ship(name: &str, release: fn(&Order) -> serde_json::Value) -> Saga<Order> {
    Saga::<Order>::define(name, 1)
        .step("reserve")
        .action(
            "inventory.reserve",
            |o: &Order| json!({ "order_id": o.order_id }),
        )
        .compensate("inventory.release", release)
        .step("ship")
        .action(
            "shipping.schedule",
            |o: &Order| json!({ "order_id": o.order_id }),
        )
        .build()
        .expect("a valid definition")
}

/// The release payload builder panics for order 13: a bug in the definition that
/// shows only for some data, when the sweep moves that saga.
fn fragile_saga() -> Saga<Order> {
    reserve_then_ship("fragile", |o| {
        if o.order_id == 13 {
            panic!("no release payload for order 13");
        }
        json!({ "order_id": o.order_id })
    })
}

async fn start(pool: &PgPool, saga: &Saga<Order>, order_id: i64) -> anyhow::Result<String> {
    let saga_id = format!("order-{order_id}");
    common::start_saga(pool, saga, &saga_id, &Order { order_id }).await?;
    Ok(saga_id)
}

async fn state_and_error(
    pool: &PgPool,
    saga_id: &str,
) -> anyhow::Result<(SagaState, Option<String>)> {
    let (state, error): (String, Option<String>) =
        sqlx::query_as("SELECT state, last_error FROM saga_instance WHERE saga_id = $1")
            .bind(saga_id)
            .fetch_one(pool)
            .await?;
    Ok((SagaState::parse(&state).expect("a known state"), error))
}

/// Makes every saga's deadline due, the panicking one first.
async fn all_due(pool: &PgPool, first: &str) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE saga_instance
         SET deadline_at = now() - CASE WHEN saga_id = $1 THEN interval '1 hour' ELSE interval '1 minute' END",
    )
    .bind(first)
    .execute(pool)
    .await?;
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_saga_whose_move_panics_fails_alone_and_the_sweep_goes_on(
    pool: PgPool,
) -> anyhow::Result<()> {
    let saga = fragile_saga();
    let registry = Registry::new().register(saga.clone());
    let poison = start(&pool, &saga, 13).await?;
    let others = [start(&pool, &saga, 1).await?, start(&pool, &saga, 2).await?];
    all_due(&pool, &poison).await?;

    // Reserve timed out for all three: each compensates it, and order 13's release
    // payload panics.
    let swept = sweep_due(&pool, &registry, 10).await?;
    assert_eq!(swept.len(), 3, "{swept:?}");
    let (state, error) = state_and_error(&pool, &poison).await?;
    assert_eq!(state, SagaState::Failed);
    let error = error.unwrap_or_default();
    assert!(
        error.contains("could not move it") && error.contains("no release payload for order 13"),
        "{error}"
    );
    for saga_id in &others {
        let (state, _) = state_and_error(&pool, saga_id).await?;
        assert_eq!(state, SagaState::Compensating, "{saga_id}");
    }
    let line: String = sqlx::query_scalar(
        "SELECT kind FROM saga_event WHERE saga_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(&poison)
    .fetch_one(&pool)
    .await?;
    assert_eq!(line, "unmovable");

    // Nothing is due on it any more: the next sweep does not take it again.
    assert!(sweep_due(&pool, &registry, 10).await?.is_empty());
    Ok(())
}

/// The release payload of order 7 holds a NUL, which PostgreSQL's `jsonb` refuses:
/// data the database will never take, however often the move is tried.
fn nul_saga() -> Saga<Order> {
    reserve_then_ship("nul", |o| {
        let note = if o.order_id == 7 { "\u{0}" } else { "" };
        json!({ "order_id": o.order_id, "note": note })
    })
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_saga_whose_command_the_database_refuses_fails_alone(pool: PgPool) -> anyhow::Result<()> {
    let saga = nul_saga();
    let registry = Registry::new().register(saga.clone());
    let refused = start(&pool, &saga, 7).await?;
    let other = start(&pool, &saga, 1).await?;
    all_due(&pool, &refused).await?;
    let swept = sweep_due(&pool, &registry, 10).await?;
    assert_eq!(swept.len(), 2, "{swept:?}");
    let (state, error) = state_and_error(&pool, &refused).await?;
    assert_eq!(state, SagaState::Failed);
    assert!(error.unwrap_or_default().contains("SQLSTATE 22"));
    assert_eq!(
        state_and_error(&pool, &other).await?.0,
        SagaState::Compensating
    );
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_database_that_refuses_every_move_fails_no_saga(pool: PgPool) -> anyhow::Result<()> {
    let saga = fragile_saga();
    let registry = Registry::new().register(saga.clone());
    let saga_ids = [start(&pool, &saga, 1).await?, start(&pool, &saga, 2).await?];
    all_due(&pool, &saga_ids[0]).await?;
    // Not the sagas' fault (a migration undone, say): every compensation's INSERT
    // into the outbox fails.
    sqlx::query("ALTER TABLE outbox RENAME TO outbox_away")
        .execute(&pool)
        .await?;
    let refused = sweep_due(&pool, &registry, 10).await;
    assert!(refused.is_err(), "{refused:?}");
    for saga_id in &saga_ids {
        assert_eq!(state_and_error(&pool, saga_id).await?.0, SagaState::Running);
    }
    // Once the database takes them again, the next sweep moves both.
    sqlx::query("ALTER TABLE outbox_away RENAME TO outbox")
        .execute(&pool)
        .await?;
    assert_eq!(sweep_due(&pool, &registry, 10).await?.len(), 2);
    for saga_id in &saga_ids {
        assert_eq!(
            state_and_error(&pool, saga_id).await?.0,
            SagaState::Compensating
        );
    }
    Ok(())
}

async fn hangs(_: &mut PgConnection, _: Order) -> Result<(), BoxError> {
    std::future::pending::<()>().await;
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_end_hook_that_hangs_is_a_failed_try(pool: PgPool) -> anyhow::Result<()> {
    let saga = Saga::<Order>::define("hanging", 1)
        .hook_time_limit(Duration::from_millis(200))
        .step("ship")
        .action(
            "shipping.schedule",
            |o: &Order| json!({ "order_id": o.order_id }),
        )
        .on_completed(hangs)
        .build()?;
    let registry = Registry::new().register(saga.clone());
    let saga_id = start(&pool, &saga, 1).await?;
    let step: String = sqlx::query_scalar("SELECT step FROM outbox WHERE saga_id = $1")
        .bind(&saga_id)
        .fetch_one(&pool)
        .await?;
    let reply = txoutbox_saga::wire::Reply {
        succeeded: true,
        result: None,
        reason: None,
    };
    let mut tx = pool.begin().await?;
    let reply_step = txoutbox_saga::wire::reply_step(&step);
    let applied =
        txoutbox_saga::apply_reply(&mut tx, &registry, &saga_id, &reply_step, &reply, None).await?;
    tx.commit().await?;
    assert_eq!(
        applied,
        txoutbox_saga::Applied::HookFailed {
            ending: SagaState::Completed
        }
    );
    let (state, _) = state_and_error(&pool, &saga_id).await?;
    assert_eq!(
        state,
        SagaState::Running,
        "it owes its end, tried again later"
    );
    let detail: String = sqlx::query_scalar(
        "SELECT detail FROM saga_event WHERE saga_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(&saga_id)
    .fetch_one(&pool)
    .await?;
    assert!(
        detail.contains("the on_completed hook failed (try 1): the hook took over 200ms"),
        "{detail}"
    );
    Ok(())
}

#[test]
fn a_hook_time_limit_of_zero_is_refused() {
    let refused = Saga::<Order>::define("zero", 1)
        .hook_time_limit(Duration::ZERO)
        .step("ship")
        .action(
            "shipping.schedule",
            |o: &Order| json!({ "order_id": o.order_id }),
        )
        .build();
    let Err(error) = refused else {
        panic!("a zero hook time limit was taken");
    };
    let error = error.to_string();
    assert!(error.contains("hook_time_limit"), "{error}");
}
