//! The demo's verifier against real databases: it passes a saga that went right and
//! names each way one can go wrong, so a demo run that broke exactly-once cannot
//! report success.

use examples::demo::databases::DemoDatabases;
use examples::demo::saga::{SagaMode, Service};
use examples::demo::verify::{Findings, Sources, verify};
use sqlx::PgPool;

type TestResult = anyhow::Result<()>;

/// Four fresh databases holding two finished orders: one shipped, one cancelled and
/// compensated, with every outbox row sent and every inbox key recorded.
async fn two_finished_orders() -> anyhow::Result<DemoDatabases> {
    let prefix = format!("eod_test_{}", uuid::Uuid::now_v7().simple());
    let databases = DemoDatabases::create(&testkit::database_url(), &prefix).await?;
    let order = databases.pool(Service::Order);
    sqlx::query(
        "INSERT INTO orders (id, number, quantity, amount_cents, status) VALUES
         ('order-000001', 1, 2, 1000, 'shipped'), ('order-000002', 2, 3, 1250, 'cancelled')",
    )
    .execute(order)
    .await?;
    let inventory = databases.pool(Service::Inventory);
    sqlx::query(
        "INSERT INTO reservations (order_id, kind, quantity) VALUES
         ('order-000001', 'reserve', 2), ('order-000002', 'reserve', 3), ('order-000002', 'release', 3)",
    )
    .execute(inventory)
    .await?;
    sqlx::query("UPDATE stock SET available = available - 2")
        .execute(inventory)
        .await?;
    let payment = databases.pool(Service::Payment);
    sqlx::query("INSERT INTO charges (order_id, amount_cents) VALUES ('order-000001', 1000)")
        .execute(payment)
        .await?;
    sqlx::query("INSERT INTO declines (order_id) VALUES ('order-000002')")
        .execute(payment)
        .await?;
    sqlx::query("INSERT INTO shipments (order_id) VALUES ('order-000001')")
        .execute(databases.pool(Service::Shipping))
        .await?;

    type Keys = &'static [(&'static str, &'static str)];
    let traffic: [(Service, Keys, Keys); 4] = [
        (
            Service::Order,
            &[
                ("order-000001", "OrderCreated"),
                ("order-000002", "OrderCreated"),
            ],
            &[
                ("order-000001", "ShipmentCreated"),
                ("order-000002", "InventoryReleased"),
            ],
        ),
        (
            Service::Inventory,
            &[
                ("order-000001", "InventoryReserved"),
                ("order-000002", "InventoryReserved"),
                ("order-000002", "InventoryReleased"),
            ],
            &[
                ("order-000001", "OrderCreated"),
                ("order-000002", "OrderCreated"),
                ("order-000002", "PaymentFailed"),
            ],
        ),
        (
            Service::Payment,
            &[
                ("order-000001", "PaymentCharged"),
                ("order-000002", "PaymentFailed"),
            ],
            &[
                ("order-000001", "InventoryReserved"),
                ("order-000002", "InventoryReserved"),
            ],
        ),
        (
            Service::Shipping,
            &[("order-000001", "ShipmentCreated")],
            &[("order-000001", "PaymentCharged")],
        ),
    ];
    for (service, sent, handled) in traffic {
        let pool = databases.pool(service);
        for (saga_id, step) in sent {
            let message = txoutbox::Message::builder(*saga_id, *step, "demo").payload(&())?;
            txoutbox::enqueue(pool, &message).await?;
        }
        sqlx::query("UPDATE outbox SET state = 'sent', sent_at = now()")
            .execute(pool)
            .await?;
        for (saga_id, step) in handled {
            record_effect(pool, service, saga_id, step).await?;
        }
    }
    Ok(databases)
}

async fn record_effect(pool: &PgPool, service: Service, saga_id: &str, step: &str) -> TestResult {
    sqlx::query("INSERT INTO inbox (consumer, saga_id, step) VALUES ($1, $2, $3)")
        .bind(service.name())
        .bind(saga_id)
        .bind(step)
        .execute(pool)
        .await?;
    sqlx::query("INSERT INTO handled (saga_id, step, redelivered) VALUES ($1, $2, false)")
        .bind(saga_id)
        .bind(step)
        .execute(pool)
        .await?;
    Ok(())
}

async fn findings(databases: &DemoDatabases) -> anyhow::Result<Findings> {
    verify(
        Sources {
            order: databases.pool(Service::Order),
            inventory: databases.pool(Service::Inventory),
            payment: databases.pool(Service::Payment),
            shipping: databases.pool(Service::Shipping),
        },
        2,
        SagaMode::Choreography,
    )
    .await
}

/// Runs `break_it` on two finished orders and returns what the verifier says.
async fn violations_after(
    break_it: impl AsyncFnOnce(&DemoDatabases) -> TestResult,
) -> anyhow::Result<Vec<String>> {
    let databases = two_finished_orders().await?;
    let broken = break_it(&databases).await;
    let found = findings(&databases).await;
    databases.drop_all().await?;
    broken?;
    Ok(found?.violations)
}

#[tokio::test]
async fn a_saga_that_went_right_passes() -> TestResult {
    let databases = two_finished_orders().await?;
    let found = findings(&databases).await;
    databases.drop_all().await?;
    let found = found?;
    assert_eq!(found.violations, Vec::<String>::new());
    assert_eq!((found.shipped, found.cancelled), (1, 1));
    assert_eq!((found.published, found.effects), (8, 8));
    Ok(())
}

#[tokio::test]
async fn a_second_charge_is_caught() -> TestResult {
    let violations = violations_after(async |dbs: &DemoDatabases| {
        sqlx::query("INSERT INTO charges (order_id, amount_cents) VALUES ('order-000001', 1000)")
            .execute(dbs.pool(Service::Payment))
            .await?;
        Ok(())
    })
    .await?;
    assert!(
        violations
            .iter()
            .any(|v| v.contains("order-000001") && v.contains("charged 2 times")),
        "{violations:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_order_left_unfinished_and_a_release_missing_are_caught() -> TestResult {
    let violations = violations_after(async |dbs: &DemoDatabases| {
        sqlx::query("UPDATE orders SET status = 'placed' WHERE id = 'order-000001'")
            .execute(dbs.pool(Service::Order))
            .await?;
        sqlx::query("DELETE FROM reservations WHERE kind = 'release'")
            .execute(dbs.pool(Service::Inventory))
            .await?;
        Ok(())
    })
    .await?;
    assert!(
        violations
            .iter()
            .any(|v| v.contains("order-000001 never reached a final state")),
        "{violations:?}"
    );
    assert!(
        violations
            .iter()
            .any(|v| v.contains("order-000002") && v.contains("stock released 0 times")),
        "{violations:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unsent_message_and_a_message_that_took_effect_twice_are_caught() -> TestResult {
    let violations = violations_after(async |dbs: &DemoDatabases| {
        sqlx::query("UPDATE outbox SET state = 'pending' WHERE step = 'ShipmentCreated'")
            .execute(dbs.pool(Service::Shipping))
            .await?;
        sqlx::query(
            "INSERT INTO handled (saga_id, step, redelivered)
             VALUES ('order-000001', 'OrderCreated', true)",
        )
        .execute(dbs.pool(Service::Inventory))
        .await?;
        Ok(())
    })
    .await?;
    assert!(
        violations
            .iter()
            .any(|v| v.contains("shipping: 1 outbox messages never sent")),
        "{violations:?}"
    );
    assert!(
        violations
            .iter()
            .any(|v| v.contains("inventory: order-000001:OrderCreated took effect 2 times")),
        "{violations:?}"
    );
    Ok(())
}
