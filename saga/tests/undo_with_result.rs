//! A compensation that needs its action's result, end to end on a real PostgreSQL and
//! RabbitMQ. In a parallel group, a sibling's decline compensates a step at once,
//! whether or not its reply has reached the orchestrator; the compensation's payload
//! is then built from data without the step's result. `compensation_with_result`
//! gives the undo the result its participant recorded instead.
//!
//! The race is forced, not hoped for: inventory's action holds its transaction open
//! until the saga is compensating, so its reply can only arrive after the decline.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use testkit::{Sandbox, amqp_url, header_text, take_headers, wait_until};
use txoutbox_inbox::{BoxError, Consumer, ConsumerConfig, Context, DEAD_REASON_HEADER, WithState};
use txoutbox_relay::{Relay, RelayConfig};
use txoutbox_saga::participant::{Compensation, SagaCommands, Verdict};
use txoutbox_saga::{Orchestrator, OrchestratorConfig, Registry, Saga, SagaState};

static MIGRATOR: testkit::CheckedMigrator = testkit::CheckedMigrator::new(&txoutbox::MIGRATOR);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    order_id: i64,
    #[serde(default)]
    reservation_id: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Release {
    order_id: i64,
    reservation_id: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Reserved {
    reservation_id: i64,
}

fn order_saga() -> Saga<Order> {
    let order = |o: &Order| serde_json::json!({ "order_id": o.order_id });
    // What the saga's data holds when the release is sent: no reservation id yet.
    let release = |o: &Order| serde_json::json!({ "order_id": o.order_id, "reservation_id": o.reservation_id });
    Saga::<Order>::define("undo", 1)
        .compensation_attempts(2)
        .parallel(|p| {
            p.step("reserve_inventory")
                .action("inventory.reserve", order)
                .compensate("inventory.release", release)
                .step("authorize_payment")
                .action("payment.authorize", order)
                .compensate("payment.void", order)
        })
        .build()
        .expect("a valid definition")
}

/// Reserves, then holds its transaction until the card's decline has been applied:
/// its reply is written only after the orchestrator sent the release. Order 2's
/// result is not what the release expects (a handler that changed what it returns).
async fn reserve(
    mut ctx: Context<'_>,
    order: Order,
    pool: PgPool,
) -> Result<Verdict<serde_json::Value>, BoxError> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO stock (order_id, kind) VALUES ($1, 'reserved') RETURNING id",
    )
    .bind(order.order_id)
    .fetch_one(ctx.db())
    .await?;
    let saga_id = format!("order-{}", order.order_id);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let state: String =
            sqlx::query_scalar("SELECT state FROM saga_instance WHERE saga_id = $1")
                .bind(&saga_id)
                .fetch_one(&pool)
                .await?;
        if state == "compensating" {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("{saga_id}: the decline was never applied").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Verdict::Done(if order.order_id == 2 {
        serde_json::json!({ "reservation": format!("r-{id}") })
    } else {
        serde_json::json!({ "reservation_id": id })
    }))
}

async fn release(
    mut ctx: Context<'_>,
    undo: Compensation<Release, Reserved>,
) -> Result<(), BoxError> {
    sqlx::query(
        "INSERT INTO stock (order_id, kind, undoes, sent_id) VALUES ($1, 'released', $2, $3)",
    )
    .bind(undo.command.order_id)
    .bind(undo.result.reservation_id)
    .bind(undo.command.reservation_id)
    .execute(ctx.db())
    .await?;
    Ok(())
}

async fn decline(_ctx: Context<'_>, _order: Order) -> Result<Verdict<()>, BoxError> {
    Ok(Verdict::Declined("card declined".into()))
}

async fn void(_ctx: Context<'_>, _order: Order) -> Result<(), BoxError> {
    Ok(())
}

/// `(kind, undoes, sent_id)` of each stock row of the order, in the order written.
type StockRow = (String, Option<i64>, Option<i64>);

async fn stock(pool: &PgPool, order_id: i64) -> anyhow::Result<Vec<StockRow>> {
    Ok(
        sqlx::query_as("SELECT kind, undoes, sent_id FROM stock WHERE order_id = $1 ORDER BY id")
            .bind(order_id)
            .fetch_all(pool)
            .await?,
    )
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_step_compensated_before_its_reply_came_is_undone_with_its_recorded_result(
    pool: PgPool,
) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "CREATE TABLE stock (id bigserial PRIMARY KEY, order_id bigint NOT NULL, kind text NOT NULL,
            undoes bigint, sent_id bigint)",
    )
    .execute(&pool)
    .await?;
    // A pool of the test's own: two held actions, their polls, two consumers, the
    // relay and the orchestrator need more than the five connections of `pool`.
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect_with(pool.connect_options().as_ref().clone())
        .await?;
    let sandbox = Sandbox::new("#").await?;
    let mut relay_config = RelayConfig::default();
    relay_config.exchange = sandbox.exchange.clone();
    relay_config.poll_interval = Duration::from_millis(100);
    let relay = Relay::new(pool.clone(), amqp_url(), relay_config).spawn();
    // Inventory and payment consume apart: inventory's held action must not hold
    // back payment's decline.
    let mut inventory_queue = ConsumerConfig::new(format!("{}-inventory", sandbox.queue))
        .bind(&sandbox.exchange, "inventory.*");
    // One batch at a time, so inventory takes its commands in the order they came:
    // with batches side by side, order 2's release could run while order 1's held
    // action keeps order 2's reserve waiting in the same batch, and fence it.
    inventory_queue.concurrency = 1;
    let payment_queue = ConsumerConfig::new(format!("{}-payment", sandbox.queue))
        .bind(&sandbox.exchange, "payment.*");
    let orchestrator_queue = ConsumerConfig::new(format!("{}-orchestrator", sandbox.queue)).bind(
        &sandbox.exchange,
        txoutbox_saga::wire::reply_routing_key("undo"),
    );
    let queues = [&inventory_queue, &payment_queue, &orchestrator_queue];
    let connection =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    for queue in queues {
        queue.declare(&channel).await?;
    }
    let inventory = Consumer::new(
        pool.clone(),
        amqp_url(),
        "inventory",
        inventory_queue.clone(),
    )
    .action("inventory.reserve", WithState::new(reserve, pool.clone()))
    .compensation_with_result("inventory.release", release)
    .spawn()?;
    let payment = Consumer::new(pool.clone(), amqp_url(), "payment", payment_queue.clone())
        .action("payment.authorize", decline)
        .compensation("payment.void", void)
        .spawn()?;
    let mut config = OrchestratorConfig::new(&sandbox.exchange);
    config.consumer = orchestrator_queue.clone();
    config.sweep_interval = Duration::from_millis(100);
    let orchestrator = Orchestrator::new(
        pool.clone(),
        amqp_url(),
        Registry::new().register(order_saga()),
        config,
    )
    .spawn()?;

    for order_id in [1, 2] {
        let mut tx = pool.begin().await?;
        let order = Order {
            order_id,
            reservation_id: None,
        };
        txoutbox_saga::start(&mut tx, &order_saga(), &format!("order-{order_id}"), &order).await?;
        tx.commit().await?;
    }
    let compensated = async || {
        let state: String =
            sqlx::query_scalar("SELECT state FROM saga_instance WHERE saga_id = 'order-1'")
                .fetch_one(&pool)
                .await?;
        Ok(SagaState::parse(&state) == Some(SagaState::Compensated))
    };
    wait_until(
        Duration::from_secs(60),
        "order-1 is compensated",
        compensated,
    )
    .await?;

    // The release was sent without the id (the reply had not come: `sent_id` is
    // empty), and undid the reservation by the id its participant recorded.
    let reserved: i64 =
        sqlx::query_scalar("SELECT id FROM stock WHERE order_id = 1 AND kind = 'reserved'")
            .fetch_one(&pool)
            .await?;
    assert_eq!(
        stock(&pool, 1).await?,
        [
            ("reserved".to_owned(), None, None),
            ("released".to_owned(), Some(reserved), None)
        ]
    );

    // Order 2's recorded result does not fit: its release is dead-lettered with the
    // reason, and nothing is released.
    let dead = txoutbox::wire::dead_queue(&inventory_queue.queue);
    let dead_letters = take_headers(&channel, &dead, 1, Duration::from_secs(30)).await?;
    let reason = header_text(&dead_letters[0], DEAD_REASON_HEADER);
    assert!(
        reason.contains(
            "the recorded result of inventory.reserve does not read as this compensation expects"
        ) && reason.contains("reservation_id"),
        "{reason}"
    );
    assert_eq!(stock(&pool, 2).await?.len(), 1, "only the reservation");

    orchestrator.shutdown().await?;
    inventory.shutdown().await?;
    payment.shutdown().await?;
    relay.shutdown().await?;
    for queue in queues {
        queue.delete(&channel).await?;
    }
    let _ = connection.close(200, "test done".into()).await;
    pool.close().await;
    sandbox.remove().await
}
