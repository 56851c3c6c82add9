//! The orchestrated demo's verifier against real databases: it passes three sagas
//! that went right (one completed, one compensated after a declined charge, one
//! compensated after a timeout, refund before release) and names each way one can go
//! wrong: compensations out of order, a late action that took effect after its undo,
//! a saga left `failed`, a completed saga missing a step, an order row its end hook
//! did not finish.

use examples::demo::databases::DemoDatabases;
use examples::demo::saga::{SagaMode, Service};
use examples::demo::verify::{Findings, Sources, verify};
use sqlx::PgPool;

type TestResult = anyhow::Result<()>;

/// Three finished sagas, each with its history and every effect stamped in the order
/// it happened.
async fn three_finished_sagas() -> anyhow::Result<DemoDatabases> {
    let prefix = format!("eod_test_{}", uuid::Uuid::now_v7().simple());
    let databases = DemoDatabases::create(&testkit::database_url(), &prefix).await?;
    let order = databases.pool(Service::Order);
    sqlx::query(
        "INSERT INTO orders (id, number, quantity, amount_cents, status) VALUES
         ('order-000001', 1, 2, 1000, 'shipped'), ('order-000002', 2, 3, 1250, 'cancelled'),
         ('order-000003', 3, 1, 1500, 'cancelled')",
    )
    .execute(order)
    .await?;
    sqlx::query(
        "INSERT INTO saga_instance (saga_id, saga_type, definition_version, state, current_step, data)
         VALUES ('order-000001', 'order', 1, 'completed', 3, '{}'),
                ('order-000002', 'order', 1, 'compensated', 0, '{}'),
                ('order-000003', 'order', 1, 'compensated', 0, '{}')",
    )
    .execute(order)
    .await?;
    // The history of the compensations: order 2 undoes step 0 only (its charge was
    // declined); order 3 timed out charging, so it undoes step 1, then step 0.
    sqlx::query(
        "INSERT INTO saga_event (saga_id, kind, step, phase, detail) VALUES
         ('order-000002', 'command_sent', 0, 'compensation', 'inventory.release (attempt 1)'),
         ('order-000003', 'timeout', 1, 'action', NULL),
         ('order-000003', 'command_sent', 1, 'compensation', 'payment.refund (attempt 1)'),
         ('order-000003', 'command_sent', 0, 'compensation', 'inventory.release (attempt 1)')",
    )
    .execute(order)
    .await?;

    // Effects, one statement per moment so that their clocks are in this order.
    let inventory = databases.pool(Service::Inventory);
    let payment = databases.pool(Service::Payment);
    let shipping = databases.pool(Service::Shipping);
    let effects: [(&PgPool, &str); 9] = [
        (
            inventory,
            "INSERT INTO reservations (order_id, kind, quantity) VALUES ('order-000001', 'reserve', 2)",
        ),
        (
            payment,
            "INSERT INTO charges (order_id, amount_cents) VALUES ('order-000001', 1000)",
        ),
        (
            shipping,
            "INSERT INTO shipments (order_id) VALUES ('order-000001')",
        ),
        (
            inventory,
            "INSERT INTO reservations (order_id, kind, quantity) VALUES ('order-000002', 'reserve', 3)",
        ),
        (
            payment,
            "INSERT INTO declines (order_id) VALUES ('order-000002')",
        ),
        (
            inventory,
            "INSERT INTO reservations (order_id, kind, quantity) VALUES ('order-000002', 'release', 3)",
        ),
        (
            inventory,
            "INSERT INTO reservations (order_id, kind, quantity) VALUES ('order-000003', 'reserve', 1)",
        ),
        (
            payment,
            "INSERT INTO charges (order_id, amount_cents) VALUES ('order-000003', 1500)",
        ),
        (
            payment,
            "INSERT INTO refunds (order_id, amount_cents) VALUES ('order-000003', 1500)",
        ),
    ];
    for (pool, statement) in effects {
        sqlx::query(statement).execute(pool).await?;
    }
    sqlx::query(
        "INSERT INTO reservations (order_id, kind, quantity) VALUES ('order-000003', 'release', 1)",
    )
    .execute(inventory)
    .await?;
    sqlx::query("UPDATE stock SET available = available - 2")
        .execute(inventory)
        .await?;
    for (pool, saga_id, command) in [
        (inventory, "order-000001", "inventory.reserve"),
        (payment, "order-000001", "payment.charge"),
        (shipping, "order-000001", "shipping.schedule"),
        (inventory, "order-000002", "inventory.reserve"),
        (payment, "order-000002", "payment.charge"),
        (inventory, "order-000002", "inventory.release"),
        (inventory, "order-000003", "inventory.reserve"),
        (payment, "order-000003", "payment.charge"),
        (payment, "order-000003", "payment.refund"),
        (inventory, "order-000003", "inventory.release"),
    ] {
        sqlx::query("INSERT INTO handled (saga_id, step, redelivered) VALUES ($1, $2, false)")
            .bind(saga_id)
            .bind(command)
            .execute(pool)
            .await?;
    }
    Ok(databases)
}

async fn findings(databases: &DemoDatabases) -> anyhow::Result<Findings> {
    verify(
        Sources {
            order: databases.pool(Service::Order),
            inventory: databases.pool(Service::Inventory),
            payment: databases.pool(Service::Payment),
            shipping: databases.pool(Service::Shipping),
        },
        3,
        SagaMode::Orchestration,
    )
    .await
}

/// Runs `break_it` on the three sagas and returns what the verifier says.
async fn violations_after(
    break_it: impl AsyncFnOnce(&DemoDatabases) -> TestResult,
) -> anyhow::Result<Vec<String>> {
    let databases = three_finished_sagas().await?;
    let broken = break_it(&databases).await;
    let found = findings(&databases).await;
    databases.drop_all().await?;
    broken?;
    Ok(found?.violations)
}

fn named(violations: &[String], order: &str, words: &str) -> bool {
    violations
        .iter()
        .any(|v| v.contains(order) && v.contains(words))
}

#[tokio::test]
async fn sagas_that_went_right_pass() -> TestResult {
    let databases = three_finished_sagas().await?;
    let found = findings(&databases).await;
    databases.drop_all().await?;
    let found = found?;
    assert_eq!(found.violations, Vec::<String>::new());
    assert_eq!((found.shipped, found.cancelled), (1, 2));
    let saga = found.saga.expect("orchestration figures");
    assert_eq!((saga.timeouts, saga.compensations_undone), (1, 3));
    Ok(())
}

#[tokio::test]
async fn compensations_out_of_order_are_named() -> TestResult {
    let violations = violations_after(async |dbs: &DemoDatabases| {
        // Order 3 released its stock before it refunded, and the history says the
        // orchestrator asked for it that way.
        sqlx::query(
            "UPDATE reservations SET at = at - interval '1 hour'
             WHERE order_id = 'order-000003' AND kind = 'release'",
        )
        .execute(dbs.pool(Service::Inventory))
        .await?;
        sqlx::query(
            "UPDATE saga_event SET step = 1 - step
             WHERE saga_id = 'order-000003' AND kind = 'command_sent'",
        )
        .execute(dbs.pool(Service::Order))
        .await?;
        Ok(())
    })
    .await?;
    assert!(
        named(
            &violations,
            "order-000003",
            "stock released before the charge was refunded"
        ),
        "{violations:?}"
    );
    assert!(
        named(
            &violations,
            "order-000003",
            "compensations sent out of order"
        ),
        "{violations:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_late_action_that_took_effect_after_its_undo_is_named() -> TestResult {
    let violations = violations_after(async |dbs: &DemoDatabases| {
        // Order 2's charge was declined; a late copy of it charged anyway, after the
        // saga had released the stock, and nothing refunded it.
        sqlx::query("INSERT INTO charges (order_id, amount_cents) VALUES ('order-000002', 1250)")
            .execute(dbs.pool(Service::Payment))
            .await?;
        // Order 3's reservation came late, after its release.
        sqlx::query(
            "UPDATE reservations SET at = at + interval '1 hour'
             WHERE order_id = 'order-000003' AND kind = 'reserve'",
        )
        .execute(dbs.pool(Service::Inventory))
        .await?;
        Ok(())
    })
    .await?;
    assert!(
        named(
            &violations,
            "order-000002",
            "charged but never shipped nor refunded"
        ),
        "{violations:?}"
    );
    assert!(
        named(
            &violations,
            "order-000002",
            "refunded (once per charge) 0 times"
        ),
        "{violations:?}"
    );
    assert!(
        named(
            &violations,
            "order-000003",
            "reserved after its compensation"
        ),
        "{violations:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_failed_saga_and_a_completed_one_missing_a_step_are_named() -> TestResult {
    let violations = violations_after(async |dbs: &DemoDatabases| {
        sqlx::query(
            "UPDATE saga_instance SET state = 'failed', last_error = 'gave up after 10 attempts'
             WHERE saga_id = 'order-000002'",
        )
        .execute(dbs.pool(Service::Order))
        .await?;
        sqlx::query("DELETE FROM shipments WHERE order_id = 'order-000001'")
            .execute(dbs.pool(Service::Shipping))
            .await?;
        Ok(())
    })
    .await?;
    assert!(
        named(
            &violations,
            "order-000002",
            "is failed: gave up after 10 attempts"
        ),
        "{violations:?}"
    );
    assert!(
        named(&violations, "order-000001", "shipped 0 times, expected 1"),
        "{violations:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_order_row_its_end_hook_did_not_finish_is_named() -> TestResult {
    let violations = violations_after(async |dbs: &DemoDatabases| {
        sqlx::query("UPDATE orders SET status = 'placed' WHERE id = 'order-000001'")
            .execute(dbs.pool(Service::Order))
            .await?;
        Ok(())
    })
    .await?;
    assert!(
        named(
            &violations,
            "order-000001",
            "its order row is placed, expected shipped"
        ),
        "{violations:?}"
    );
    Ok(())
}
