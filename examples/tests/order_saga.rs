//! The order saga example end to end on a real PostgreSQL and RabbitMQ: the orders
//! that go through are shipped once, the declined ones are undone once, in reverse.

use examples::order_saga;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use txoutbox_saga::SagaState;

static MIGRATOR: testkit::CheckedMigrator = testkit::CheckedMigrator::new(&txoutbox::MIGRATOR);

/// What the participants' tables hold for one order, every effect in commit order.
async fn effects(pool: &PgPool, order_id: i64) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT effect FROM (
             SELECT 'inventory ' || kind AS effect, id, 1 AS t FROM inventory WHERE order_id = $1
             UNION ALL SELECT 'payment ' || kind, id, 2 FROM payments WHERE order_id = $1
             UNION ALL SELECT 'shipment', id, 3 FROM shipments WHERE order_id = $1
         ) e ORDER BY t, id",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await?)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn orders_ship_once_and_declined_ones_are_undone_once(pool: PgPool) -> anyhow::Result<()> {
    let reports = order_saga::run(&pool, &testkit::amqp_url(), CancellationToken::new()).await?;
    let state = |saga_id: &str| {
        reports
            .iter()
            .find(|r| r.saga_id == saga_id)
            .map(|r| r.state)
    };
    for order_id in [1, 2, 5] {
        assert_eq!(
            state(&format!("order-{order_id}")),
            Some(SagaState::Completed)
        );
        assert_eq!(
            effects(&pool, order_id).await?,
            ["inventory reserve", "payment charge", "shipment"],
            "order {order_id}"
        );
    }
    // Payment declined: its reservation released, once; nothing charged or shipped.
    assert_eq!(state("order-3"), Some(SagaState::Compensated));
    assert_eq!(
        effects(&pool, 3).await?,
        ["inventory reserve", "inventory release"]
    );
    let released: Option<i64> = sqlx::query_scalar(
        "SELECT r.undoes FROM inventory r JOIN inventory a ON a.id = r.undoes
         WHERE r.kind = 'release' AND a.order_id = 3",
    )
    .fetch_optional(&pool)
    .await?;
    assert!(
        released.is_some(),
        "the release names order 3's reservation"
    );
    // No courier: refunded, then released.
    assert_eq!(state("order-4"), Some(SagaState::Compensated));
    assert_eq!(
        effects(&pool, 4).await?,
        [
            "inventory reserve",
            "inventory release",
            "payment charge",
            "payment refund"
        ]
    );
    let compensated = &reports.iter().find(|r| r.saga_id == "order-4").unwrap();
    let undone: Vec<&str> = compensated
        .history
        .iter()
        .filter(|row| row.kind == "command_sent" && row.phase.as_deref() == Some("compensation"))
        .filter_map(|row| row.step.as_deref())
        .collect();
    assert_eq!(
        undone,
        ["charge_payment", "reserve_inventory"],
        "last first"
    );
    Ok(())
}
