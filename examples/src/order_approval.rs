//! An order process in one process: stock reserved and the card authorised side by
//! side, then a wait for the payment provider to confirm the capture (a webhook,
//! simulated: the payment service writes the provider's event to its outbox with a
//! delay), then shipping. End hooks set each order row to `shipped` or `cancelled`.
//!
//! Four orders: two go through; one's card is declined, so its reservation is
//! released; one's capture never comes, so at the wait's timeout its authorisation
//! is voided and its reservation released.
//!
//! Run with: cargo run -p examples --bin order-approval

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use txoutbox_inbox::{BoxError, Consumer, ConsumerConfig, Context};
use txoutbox_relay::{Relay, RelayConfig};
use txoutbox_saga::participant::{Compensation, SagaCommands, Verdict};
use txoutbox_saga::{Orchestrator, OrchestratorConfig, Registry, Saga};

use crate::saga_report::{SagaReport, wait_until_finished};

/// The event the payment provider sends when it captured the money.
pub const CAPTURED: &str = "payment.captured";

/// An order as its saga carries it. The ids are results and the event's payload,
/// merged in as they come.
#[derive(Debug, Serialize, Deserialize)]
pub struct Order {
    /// The order's id.
    pub order_id: i64,
    /// What to authorise; over 100,000 cents the card is declined.
    pub amount_cents: i64,
    /// Whether the customer confirms the payment (so the provider captures it).
    pub confirms: bool,
    /// From inventory.
    pub reservation_id: Option<i64>,
    /// From payment.
    pub authorization_id: Option<i64>,
    /// From the provider's event.
    pub capture_id: Option<String>,
}

/// The process: reserve and authorise side by side, wait for the capture, ship.
pub fn definition(capture_timeout: Duration) -> Saga<Order> {
    let order = |o: &Order| json!({ "order_id": o.order_id });
    Saga::<Order>::define("order_approval", 1)
        .parallel(|p| {
            p.step("reserve_inventory")
                .action("inventory.reserve", order)
                .compensate("inventory.release", order)
                .step("authorize_payment")
                .action("payment.authorize", |o| {
                    json!({ "order_id": o.order_id, "amount_cents": o.amount_cents, "confirms": o.confirms })
                })
                .compensate("payment.void", order)
        })
        .step("await_payment_capture")
        .wait_for(CAPTURED)
        .timeout(capture_timeout)
        .step("schedule_shipping")
        .action("shipping.schedule", order)
        .on_completed(shipped)
        .on_compensated(cancelled)
        .build()
        .expect("a valid definition")
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

#[derive(Deserialize)]
struct OrderRef {
    order_id: i64,
}

#[derive(Deserialize)]
struct Authorize {
    order_id: i64,
    amount_cents: i64,
    confirms: bool,
}

/// What inventory's reserve returned, as its participant recorded it.
#[derive(Deserialize)]
struct Reserved {
    reservation_id: i64,
}

/// What payment's authorize returned, as its participant recorded it.
#[derive(Deserialize)]
struct Authorized {
    authorization_id: i64,
}

type Act = Result<Verdict<serde_json::Value>, BoxError>;

async fn effect(ctx: &mut Context<'_>, order_id: i64, kind: &str) -> Result<i64, BoxError> {
    Ok(
        sqlx::query_scalar("INSERT INTO effects (order_id, kind) VALUES ($1, $2) RETURNING id")
            .bind(order_id)
            .bind(kind)
            .fetch_one(ctx.db())
            .await?,
    )
}

async fn reserve(mut ctx: Context<'_>, cmd: OrderRef) -> Act {
    let id = effect(&mut ctx, cmd.order_id, "reserved").await?;
    Ok(Verdict::Done(json!({ "reservation_id": id })))
}

/// Releases the reservation its action made. The id comes from the action's recorded
/// result, not the saga's data: when payment declines first, the group is compensated
/// before inventory's reply has reached the orchestrator. Only this order's
/// reservation is released: an id that names another order's row, or a row that is
/// not a reservation, releases nothing.
async fn release(
    mut ctx: Context<'_>,
    undo: Compensation<OrderRef, Reserved>,
) -> Result<(), BoxError> {
    sqlx::query(
        "INSERT INTO effects (order_id, kind) SELECT $1, 'released' FROM effects
         WHERE id = $2 AND order_id = $1 AND kind = 'reserved'",
    )
    .bind(undo.command.order_id)
    .bind(undo.result.reservation_id)
    .execute(ctx.db())
    .await?;
    Ok(())
}

/// Authorises the card; the provider captures the money later, when the customer
/// confirms, and says so with an event: written here, in the same transaction, with
/// a delay, as the provider's webhook would arrive.
async fn authorize(mut ctx: Context<'_>, cmd: Authorize) -> Act {
    if cmd.amount_cents > 100_000 {
        return Ok(Verdict::Declined("card declined: over the limit".into()));
    }
    let id = effect(&mut ctx, cmd.order_id, "authorized").await?;
    if cmd.confirms {
        let captured =
            txoutbox::Message::builder(format!("order-{}", cmd.order_id), CAPTURED, CAPTURED)
                .delay(Duration::from_millis(1500))
                .payload(&json!({ "capture_id": format!("cap-{id}") }))?;
        ctx.enqueue(&captured).await?;
    }
    Ok(Verdict::Done(json!({ "authorization_id": id })))
}

/// Voids the authorisation its action made, found by the id in the action's recorded
/// result; like `release`, only this order's authorisation.
async fn void(
    mut ctx: Context<'_>,
    undo: Compensation<OrderRef, Authorized>,
) -> Result<(), BoxError> {
    sqlx::query(
        "INSERT INTO effects (order_id, kind) SELECT $1, 'voided' FROM effects
         WHERE id = $2 AND order_id = $1 AND kind = 'authorized'",
    )
    .bind(undo.command.order_id)
    .bind(undo.result.authorization_id)
    .execute(ctx.db())
    .await?;
    Ok(())
}

async fn ship(mut ctx: Context<'_>, cmd: OrderRef) -> Act {
    effect(&mut ctx, cmd.order_id, "shipped").await?;
    Ok(Verdict::Done(serde_json::Value::Null))
}

const SCHEMA: &str = "
    CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL DEFAULT 'placed',
        capture_id text, why text);
    CREATE TABLE effects (id bigserial PRIMARY KEY, order_id bigint NOT NULL, kind text NOT NULL);
";

/// The four orders: two that go through, one declined, one never captured.
fn orders() -> Vec<Order> {
    let order = |order_id, amount_cents, confirms| Order {
        order_id,
        amount_cents,
        confirms,
        reservation_id: None,
        authorization_id: None,
        capture_id: None,
    };
    vec![
        order(1, 4_200, true),
        order(2, 9_900, true),
        order(3, 250_000, true),
        order(4, 1_500, false),
    ]
}

/// Where an order ended: its saga's report and its own row's status.
pub struct Outcome {
    /// The saga's state and history.
    pub saga: SagaReport,
    /// `shipped` or `cancelled`, as the end hook set it.
    pub order_status: String,
    /// Why it was cancelled.
    pub why: Option<String>,
    /// The provider's capture, as the `shipped` hook recorded it: `cap-{the
    /// authorization's id}`.
    pub capture_id: Option<String>,
}

/// Runs the four orders on `pool` (migrated) and the broker at `amqp_url`, with an
/// exchange and queues of the run's own, removed at the end. The capture of one
/// order never comes: its saga is compensated after `capture_timeout`.
pub async fn run(
    pool: &PgPool,
    amqp_url: &str,
    capture_timeout: Duration,
    stop: CancellationToken,
) -> anyhow::Result<Vec<Outcome>> {
    sqlx::raw_sql(SCHEMA).execute(pool).await?;
    let run = format!("order-approval-{}", uuid::Uuid::now_v7().simple());
    let participants = [
        "inventory.*",
        "payment.authorize",
        "payment.void",
        "shipping.*",
    ]
    .into_iter()
    .fold(
        ConsumerConfig::new(format!("{run}-participants")),
        |c, key| c.bind(&run, key),
    );
    let orchestrator_queue = ConsumerConfig::new(format!("{run}-orchestrator"))
        .bind(
            &run,
            txoutbox_saga::wire::reply_routing_key("order_approval"),
        )
        .bind(&run, CAPTURED);
    let broker = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let channel = broker.create_channel().await?;
    let topic = ExchangeDeclareOptions::default();
    channel
        .exchange_declare(
            run.as_str().into(),
            ExchangeKind::Topic,
            topic,
            FieldTable::default(),
        )
        .await?;
    participants.declare(&channel).await?;
    orchestrator_queue.declare(&channel).await?;

    let mut relay_config = RelayConfig::default();
    relay_config.exchange = run.clone();
    relay_config.poll_interval = Duration::from_millis(100);
    let relay = Relay::new(pool.clone(), amqp_url, relay_config).spawn();
    let consumer = Consumer::new(pool.clone(), amqp_url, "participants", participants.clone())
        .action("inventory.reserve", reserve)
        .compensation_with_result("inventory.release", release)
        .action("payment.authorize", authorize)
        .compensation_with_result("payment.void", void)
        .action("shipping.schedule", ship)
        .spawn()?;
    let mut config = OrchestratorConfig::new(&run);
    config.consumer = orchestrator_queue.clone();
    let definition = definition(capture_timeout);
    let registry = Registry::new().register(definition.clone());
    let orchestrator = Orchestrator::new(pool.clone(), amqp_url, registry, config).spawn()?;

    let mut saga_ids = Vec::new();
    for order in orders() {
        let saga_id = format!("order-{}", order.order_id);
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO orders (id) VALUES ($1)")
            .bind(order.order_id)
            .execute(&mut *tx)
            .await?;
        txoutbox_saga::start(&mut tx, &definition, &saga_id, &order).await?;
        tx.commit().await?;
        saga_ids.push(saga_id);
    }
    let limit = capture_timeout + Duration::from_secs(60);
    let finished = wait_until_finished(pool, &saga_ids, stop, limit).await;

    orchestrator.shutdown().await?;
    consumer.shutdown().await?;
    relay.shutdown().await?;
    participants.delete(&channel).await?;
    orchestrator_queue.delete(&channel).await?;
    channel
        .exchange_delete(run.as_str().into(), ExchangeDeleteOptions::default())
        .await?;
    broker.close(200, "order approval done".into()).await?;
    finished?;

    let steps: Vec<String> = definition
        .steps()
        .iter()
        .map(|s| s.name().to_owned())
        .collect();
    let mut outcomes = Vec::new();
    for (saga_id, order) in saga_ids.into_iter().zip(orders()) {
        let (order_status, why, capture_id): (String, Option<String>, Option<String>) =
            sqlx::query_as("SELECT status, why, capture_id FROM orders WHERE id = $1")
                .bind(order.order_id)
                .fetch_one(pool)
                .await?;
        outcomes.push(Outcome {
            saga: SagaReport::read(pool, saga_id, &steps).await?,
            order_status,
            why,
            capture_id,
        });
    }
    Ok(outcomes)
}
