//! The order-approval example end to end on a real PostgreSQL and RabbitMQ: a
//! parallel group, a wait for an event, end hooks.

use std::time::Duration;

use examples::order_approval;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use txoutbox_saga::SagaState;

static MIGRATOR: testkit::CheckedMigrator = testkit::CheckedMigrator::new(&txoutbox::MIGRATOR);

async fn effects(pool: &PgPool, order_id: i64) -> anyhow::Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT kind FROM effects WHERE order_id = $1 ORDER BY kind")
            .bind(order_id)
            .fetch_all(pool)
            .await?,
    )
}

/// The capture id the provider's event carries for the order: `cap-` and the id of
/// its authorisation's effect row.
async fn expected_capture_id(pool: &PgPool, order_id: i64) -> anyhow::Result<String> {
    let authorization: i64 =
        sqlx::query_scalar("SELECT id FROM effects WHERE order_id = $1 AND kind = 'authorized'")
            .bind(order_id)
            .fetch_one(pool)
            .await?;
    Ok(format!("cap-{authorization}"))
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn orders_ship_after_their_capture_and_the_others_end_cancelled(
    pool: PgPool,
) -> anyhow::Result<()> {
    // A pool of the test's own: the relay, the participants' and the orchestrator's
    // consumers (four batches each, side by side) and the sweep need more than the
    // five connections of `pool`.
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect_with(pool.connect_options().as_ref().clone())
        .await?;
    // Long enough for a capture, delayed 1.5 s, to go through the relay and the
    // orchestrator on a loaded machine; order 4's never comes, and waits this long.
    let timeout = Duration::from_secs(12);
    let outcomes = order_approval::run(
        &pool,
        &testkit::amqp_url(),
        timeout,
        CancellationToken::new(),
    )
    .await?;
    let by_id = |id: &str| outcomes.iter().find(|o| o.saga.saga_id == id).expect(id);
    for id in ["order-1", "order-2"] {
        assert_eq!(
            by_id(id).saga.state,
            SagaState::Completed,
            "{}",
            by_id(id).saga
        );
        assert_eq!(by_id(id).order_status, "shipped");
    }
    for (id, order_id) in [("order-1", 1), ("order-2", 2)] {
        assert_eq!(
            by_id(id).capture_id,
            Some(expected_capture_id(&pool, order_id).await?),
            "{id}: the capture that paid it"
        );
    }
    assert_eq!(
        effects(&pool, 1).await?,
        ["authorized", "reserved", "shipped"]
    );

    let declined = by_id("order-3");
    assert_eq!(
        (declined.saga.state, declined.order_status.as_str()),
        (SagaState::Compensated, "cancelled")
    );
    assert_eq!(
        declined.why.as_deref(),
        Some("card declined: over the limit")
    );
    // Its reservation is released; or, had the release overtaken the reserve (they
    // may run in batches side by side), the reserve was fenced and never ran.
    let reservation = effects(&pool, 3).await?;
    assert!(
        reservation == ["released", "reserved"] || reservation.is_empty(),
        "{reservation:?}"
    );

    let never_captured = by_id("order-4");
    assert_eq!(never_captured.saga.state, SagaState::Compensated);
    assert_eq!(
        (
            declined.capture_id.as_deref(),
            never_captured.capture_id.as_deref()
        ),
        (None, None),
        "no capture, for either"
    );
    assert!(
        never_captured
            .why
            .as_deref()
            .unwrap()
            .contains("payment.captured did not come before step")
    );
    assert_eq!(
        effects(&pool, 4).await?,
        ["authorized", "released", "reserved", "voided"]
    );
    pool.close().await;
    Ok(())
}
