//! A saga that models a process, end to end on a real PostgreSQL and RabbitMQ: two
//! steps side by side, a wait for an event that another service publishes, a last
//! step, and end hooks that set the order's final state. Events reach the saga as
//! messages through the orchestrator's inbox: a duplicate applies once, an event for
//! an unknown saga is dead-lettered with the reason.

use std::time::Duration;

use serde::Deserialize;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use testkit::{Sandbox, amqp_url, header_text, take_headers, wait_until};
use txoutbox_inbox::{BoxError, Consumer, ConsumerConfig, Context, DEAD_REASON_HEADER};
use txoutbox_relay::{Relay, RelayConfig};
use txoutbox_saga::participant::{SagaCommands, Verdict};
use txoutbox_saga::{Orchestrator, OrchestratorConfig, Registry, Saga, SagaState};

mod common;

use common::orders::{
    CREATE_EFFECTS, CREATE_ORDERS, Order, cancelled, effect, effects_by_name, place, shipped,
};

static MIGRATOR: testkit::CheckedMigrator = testkit::CheckedMigrator::new(&txoutbox::MIGRATOR);

type TestResult = anyhow::Result<()>;

#[derive(Debug, Deserialize)]
struct Command {
    order_id: i64,
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

/// What became of the saga's signals, oldest first, once `count` have come and
/// been settled.
async fn settled_signals(
    pool: &PgPool,
    saga_id: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let outcomes = async || -> anyhow::Result<Vec<Option<String>>> {
        Ok(
            sqlx::query_scalar("SELECT outcome FROM saga_signal WHERE saga_id = $1 ORDER BY id")
                .bind(saga_id)
                .fetch_all(pool)
                .await?,
        )
    };
    let what = format!("{saga_id} has {count} settled signals");
    let settled = wait_until(Duration::from_secs(30), &what, async || {
        let outcomes = outcomes().await?;
        Ok(outcomes.len() == count && outcomes.iter().all(Option::is_some))
    })
    .await;
    if let Err(error) = settled {
        anyhow::bail!("{error}; there: {:?}", outcomes().await?);
    }
    Ok(outcomes().await?.into_iter().flatten().collect())
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
    // A pool of the test's own: the relay, two consumers with their batches side by
    // side, and the orchestrator's sweep need more than the five connections of `pool`.
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect_with(pool.connect_options().as_ref().clone())
        .await?;
    sqlx::query(CREATE_EFFECTS).execute(&pool).await?;
    sqlx::query(CREATE_ORDERS).execute(&pool).await?;
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

    let saga = order_saga();
    // Order 1: the capture arrives twice (the provider retried its webhook).
    let one = place(&pool, &saga, 1).await?;
    // Order 3: its capture is published at once, so it may come before the group has
    // finished (kept for its step) or after (taken on arrival).
    let three = place(&pool, &saga, 3).await?;
    publish_event(&pool, &three, "cap-3").await?;
    // Order 2: its card is declined.
    let two = place(&pool, &saga, 2).await?;
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
        effects_by_name(&pool, 1).await?,
        ["authorized", "reserved", "shipped"]
    );
    assert_eq!(finished(&pool, &three).await?, Some(SagaState::Completed));
    assert_eq!(
        order_row(&pool, 3).await?,
        ("shipped".into(), Some("cap-3".into()), None)
    );

    assert_eq!(finished(&pool, &two).await?, Some(SagaState::Compensated));
    let (status, _, why) = order_row(&pool, 2).await?;
    assert_eq!(
        (status.as_str(), why.as_deref()),
        ("cancelled", Some("card declined"))
    );
    // The card was never authorised; the reservation was released, or, had the
    // release overtaken the reserve (batches run side by side), fenced unrun.
    let reservation = effects_by_name(&pool, 2).await?;
    assert!(
        reservation == ["released", "reserved"] || reservation.is_empty(),
        "{reservation:?}"
    );

    // The duplicate capture applied once: the orchestrator's inbox knows the second
    // message by its key (order-1:payment.captured), so only the first is recorded,
    // and taken by the wait (step 2, after the group's steps 0 and 1).
    let outcomes = settled_signals(&pool, &one, 1).await?;
    assert_eq!(outcomes, ["taken by step 2"]);
    // The unknown order's was dead-lettered.
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
    pool.close().await;
    sandbox.remove().await
}
