//! A saga that models a process, end to end on a real PostgreSQL and RabbitMQ: two
//! steps side by side, a wait for an event that another service publishes, a last
//! step, and end hooks that set the order's final state. Events reach the saga as
//! messages through the orchestrator's inbox: a duplicate applies once, an event for
//! an unknown saga is dead-lettered with the reason.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use testkit::{Sandbox, amqp_url, header_text, take_headers, wait_until};
use txoutbox_inbox::{BoxError, Consumer, ConsumerConfig, Context, DEAD_REASON_HEADER};
use txoutbox_relay::{Relay, RelayConfig};
use txoutbox_saga::participant::{SagaCommands, Verdict};
use txoutbox_saga::{Orchestrator, OrchestratorConfig, Registry, Saga, SagaState};

static MIGRATOR: testkit::CheckedMigrator = testkit::CheckedMigrator::new(&txoutbox::MIGRATOR);

type TestResult = anyhow::Result<()>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    order_id: i64,
    #[serde(default)]
    capture_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Command {
    order_id: i64,
}

async fn effect(ctx: &mut Context<'_>, order_id: i64, effect: &str) -> Result<(), BoxError> {
    sqlx::query("INSERT INTO effects (order_id, effect) VALUES ($1, $2)")
        .bind(order_id)
        .bind(effect)
        .execute(ctx.db())
        .await?;
    Ok(())
}

async fn reserve(mut ctx: Context<'_>, cmd: Command) -> Result<Verdict<()>, BoxError> {
    effect(&mut ctx, cmd.order_id, "reserved").await?;
    Ok(Verdict::Done(()))
}

async fn release(mut ctx: Context<'_>, cmd: Command) -> Result<(), BoxError> {
    effect(&mut ctx, cmd.order_id, "released").await
}

/// Order 2's card is declined.
async fn authorize(mut ctx: Context<'_>, cmd: Command) -> Result<Verdict<()>, BoxError> {
    if cmd.order_id == 2 {
        return Ok(Verdict::Declined("card declined".into()));
    }
    effect(&mut ctx, cmd.order_id, "authorized").await?;
    Ok(Verdict::Done(()))
}

async fn void(mut ctx: Context<'_>, cmd: Command) -> Result<(), BoxError> {
    effect(&mut ctx, cmd.order_id, "voided").await
}

async fn ship(mut ctx: Context<'_>, cmd: Command) -> Result<Verdict<()>, BoxError> {
    effect(&mut ctx, cmd.order_id, "shipped").await?;
    Ok(Verdict::Done(()))
}

async fn shipped(conn: &mut PgConnection, order: Order) -> Result<(), BoxError> {
    sqlx::query("UPDATE orders SET status = 'shipped', capture_id = $2 WHERE id = $1")
        .bind(order.order_id)
        .bind(order.capture_id)
        .execute(conn)
        .await?;
    Ok(())
}

async fn cancelled(conn: &mut PgConnection, order: Order, why: String) -> Result<(), BoxError> {
    sqlx::query("UPDATE orders SET status = 'cancelled', why = $2 WHERE id = $1")
        .bind(order.order_id)
        .bind(why)
        .execute(conn)
        .await?;
    Ok(())
}

fn order_saga() -> Saga<Order> {
    let command = |o: &Order| serde_json::json!({ "order_id": o.order_id });
    Saga::<Order>::define("process", 1)
        .parallel(|p| {
            p.step("reserve_inventory")
                .action("inventory.reserve", command)
                .compensate("inventory.release", command)
                .step("authorize_payment")
                .action("payment.authorize", command)
                .compensate("payment.void", command)
        })
        .step("await_capture")
        .wait_for("payment.captured")
        .timeout(Duration::from_secs(120))
        .step("schedule_shipping")
        .action("shipping.schedule", command)
        .on_completed(shipped)
        .on_compensated(cancelled)
        .build()
        .expect("a valid definition")
}

async fn place(pool: &PgPool, order_id: i64) -> anyhow::Result<String> {
    let saga_id = format!("order-{order_id}");
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO orders (id, status) VALUES ($1, 'placed')")
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    let order = Order {
        order_id,
        capture_id: None,
    };
    txoutbox_saga::start(&mut tx, &order_saga(), &saga_id, &order).await?;
    tx.commit().await?;
    Ok(saga_id)
}

/// Another service's event, as it publishes it: through its outbox, step and
/// routing key the event's name.
async fn publish_event(pool: &PgPool, saga_id: &str, capture_id: &str) -> anyhow::Result<()> {
    let event = txoutbox::Message::builder(saga_id, "payment.captured", "payment.captured")
        .payload(&serde_json::json!({ "capture_id": capture_id }))?;
    txoutbox::enqueue(pool, &event).await?;
    Ok(())
}

async fn order_row(
    pool: &PgPool,
    order_id: i64,
) -> anyhow::Result<(String, Option<String>, Option<String>)> {
    Ok(
        sqlx::query_as("SELECT status, capture_id, why FROM orders WHERE id = $1")
            .bind(order_id)
            .fetch_one(pool)
            .await?,
    )
}

async fn effects(pool: &PgPool, order_id: i64) -> anyhow::Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT effect FROM effects WHERE order_id = $1 ORDER BY effect")
            .bind(order_id)
            .fetch_all(pool)
            .await?,
    )
}

async fn finished(pool: &PgPool, saga_id: &str) -> anyhow::Result<Option<SagaState>> {
    let state: String = sqlx::query_scalar("SELECT state FROM saga_instance WHERE saga_id = $1")
        .bind(saga_id)
        .fetch_one(pool)
        .await?;
    Ok(SagaState::parse(&state).filter(|s| s.is_terminal()))
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_process_runs_its_group_its_wait_and_its_end_hooks_with_events_as_messages(
    pool: PgPool,
) -> TestResult {
    sqlx::raw_sql(
        "CREATE TABLE effects (id bigserial PRIMARY KEY, order_id bigint NOT NULL, effect text NOT NULL);
         CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL, capture_id text, why text);",
    )
    .execute(&pool)
    .await?;
    let sandbox = Sandbox::new("#").await?;
    let mut relay_config = RelayConfig::default();
    relay_config.exchange = sandbox.exchange.clone();
    relay_config.poll_interval = Duration::from_millis(100);
    let relay = Relay::new(pool.clone(), amqp_url(), relay_config).spawn();
    let participants_queue = [
        "inventory.*",
        "payment.authorize",
        "payment.void",
        "shipping.*",
    ]
    .into_iter()
    .fold(
        ConsumerConfig::new(format!("{}-participants", sandbox.queue)),
        |c, key| c.bind(&sandbox.exchange, key),
    );
    let orchestrator_queue = ConsumerConfig::new(format!("{}-orchestrator", sandbox.queue))
        .bind(
            &sandbox.exchange,
            txoutbox_saga::wire::reply_routing_key("process"),
        )
        .bind(&sandbox.exchange, "payment.captured");
    let connection =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    participants_queue.declare(&channel).await?;
    orchestrator_queue.declare(&channel).await?;
    let participants = Consumer::new(
        pool.clone(),
        amqp_url(),
        "participants",
        participants_queue.clone(),
    )
    .action("inventory.reserve", reserve)
    .compensation("inventory.release", release)
    .action("payment.authorize", authorize)
    .compensation("payment.void", void)
    .action("shipping.schedule", ship)
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

    // Order 1: the capture arrives twice (the provider retried its webhook).
    let one = place(&pool, 1).await?;
    // Order 3: its capture is published at once, before the group has finished.
    let three = place(&pool, 3).await?;
    publish_event(&pool, &three, "cap-3").await?;
    // Order 2: its card is declined.
    let two = place(&pool, 2).await?;
    let waiting = async || {
        let waits: Option<String> =
            sqlx::query_scalar("SELECT waiting_for FROM saga_instance WHERE saga_id = 'order-1'")
                .fetch_one(&pool)
                .await?;
        Ok(waits.is_some())
    };
    wait_until(
        Duration::from_secs(30),
        "order-1 waits for its capture",
        waiting,
    )
    .await?;
    publish_event(&pool, &one, "cap-1").await?;
    publish_event(&pool, &one, "cap-1").await?;
    // And one for an order that never existed.
    publish_event(&pool, "order-404", "cap-x").await?;

    let all_done = async || {
        Ok(finished(&pool, &one).await?.is_some()
            && finished(&pool, &two).await?.is_some()
            && finished(&pool, &three).await?.is_some())
    };
    wait_until(Duration::from_secs(60), "every order finished", all_done).await?;

    assert_eq!(finished(&pool, &one).await?, Some(SagaState::Completed));
    assert_eq!(
        order_row(&pool, 1).await?,
        ("shipped".into(), Some("cap-1".into()), None)
    );
    assert_eq!(
        effects(&pool, 1).await?,
        ["authorized", "reserved", "shipped"]
    );
    assert_eq!(finished(&pool, &three).await?, Some(SagaState::Completed));
    assert_eq!(order_row(&pool, 3).await?.0, "shipped");

    assert_eq!(finished(&pool, &two).await?, Some(SagaState::Compensated));
    let (status, _, why) = order_row(&pool, 2).await?;
    assert_eq!(
        (status.as_str(), why.as_deref()),
        ("cancelled", Some("card declined"))
    );
    // The card was never authorised; the reservation was released, or, had the
    // release overtaken the reserve (batches run side by side), fenced unrun.
    let reservation = effects(&pool, 2).await?;
    assert!(
        reservation == ["released", "reserved"] || reservation.is_empty(),
        "{reservation:?}"
    );

    // The duplicate capture applied once; the unknown order's was dead-lettered.
    let taken: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM saga_signal WHERE saga_id = 'order-1' AND outcome LIKE 'taken%'",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(taken, 1);
    let dead = txoutbox::wire::dead_queue(&orchestrator_queue.queue);
    let dead_letters = take_headers(&channel, &dead, 1, Duration::from_secs(30)).await?;
    let reason = header_text(&dead_letters[0], DEAD_REASON_HEADER);
    assert!(reason.contains("no saga with id order-404"), "{reason}");

    orchestrator.shutdown().await?;
    participants.shutdown().await?;
    relay.shutdown().await?;
    participants_queue.delete(&channel).await?;
    orchestrator_queue.delete(&channel).await?;
    let _ = connection.close(200, "test done".into()).await;
    sandbox.remove().await
}
