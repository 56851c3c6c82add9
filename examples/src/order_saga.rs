//! An orchestrated order saga in one process: a relay, an orchestrator, and three
//! participants (inventory, payment, shipping), each a typed handler writing its effect
//! to a table of its own. A declined payment releases the reservation; a shipment with
//! no courier refunds the charge, then releases the reservation. At the end, each
//! saga's state and its history from `saga_event`: where is this order, and why.
//!
//! Run with: cargo run -p examples --bin order-saga

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use txoutbox_inbox::{BoxError, Consumer, ConsumerConfig, ConsumerHandle, Context};
use txoutbox_relay::{Relay, RelayConfig};
use txoutbox_saga::participant::{SagaCommands, Verdict};
use txoutbox_saga::{Orchestrator, OrchestratorConfig, Registry, Saga};

use crate::saga_report::wait_until_finished;
pub use crate::saga_report::{HistoryRow, SagaReport};

/// An order as its saga carries it. The card limit is 100,000 cents; no courier goes
/// to Antarctica. The ids are the actions' results, merged in for the compensations.
#[derive(Serialize, Deserialize)]
struct Order {
    order_id: i64,
    quantity: i32,
    amount_cents: i64,
    destination: String,
    reservation_id: Option<i64>,
    charge_id: Option<i64>,
}

/// The saga: reserve, charge, ship; undone in reverse when a step is declined.
fn definition() -> Saga<Order> {
    Saga::<Order>::define("order", 1)
        .step("reserve_inventory")
        .action("inventory.reserve", items)
        .compensate("inventory.release", items)
        .step("charge_payment")
        .action("payment.charge", payment)
        .compensate("payment.refund", payment)
        .step("schedule_shipping")
        .action("shipping.schedule", shipment)
        .build()
        .expect("a valid definition")
}

// Each command's payload, from the saga's data: what its participant needs to know.
fn items(o: &Order) -> serde_json::Value {
    json!({ "order_id": o.order_id, "quantity": o.quantity, "reservation_id": o.reservation_id })
}

fn payment(o: &Order) -> serde_json::Value {
    json!({ "order_id": o.order_id, "amount_cents": o.amount_cents, "charge_id": o.charge_id })
}

fn shipment(o: &Order) -> serde_json::Value {
    json!({ "order_id": o.order_id, "destination": o.destination })
}

/// What inventory is asked: reserve the items, or release the reservation.
#[derive(Deserialize)]
struct Items {
    order_id: i64,
    quantity: i32,
    reservation_id: Option<i64>,
}

/// What payment is asked: charge the amount, or refund the charge.
#[derive(Deserialize)]
struct Payment {
    order_id: i64,
    amount_cents: i64,
    charge_id: Option<i64>,
}

/// What shipping is asked.
#[derive(Deserialize)]
struct Shipment {
    order_id: i64,
    destination: String,
}

async fn reserve_inventory(mut ctx: Context<'_>, cmd: Items) -> Act {
    let reservation_id: i64 = sqlx::query_scalar(
        "INSERT INTO inventory (order_id, kind, quantity) VALUES ($1, 'reserve', $2) RETURNING id",
    )
    .bind(cmd.order_id)
    .bind(cmd.quantity)
    .fetch_one(ctx.db())
    .await?;
    Ok(Verdict::Done(json!({ "reservation_id": reservation_id })))
}

async fn release(mut ctx: Context<'_>, cmd: Items) -> Undo {
    sqlx::query(
        "INSERT INTO inventory (order_id, kind, quantity, undoes) VALUES ($1, 'release', $2, $3)",
    )
    .bind(cmd.order_id)
    .bind(cmd.quantity)
    .bind(cmd.reservation_id)
    .execute(ctx.db())
    .await?;
    Ok(())
}

async fn charge_payment(mut ctx: Context<'_>, cmd: Payment) -> Act {
    if cmd.amount_cents > 100_000 {
        return Ok(Verdict::Declined("card declined: over the limit".into()));
    }
    let charge_id: i64 = sqlx::query_scalar(
        "INSERT INTO payments (order_id, kind, amount_cents) VALUES ($1, 'charge', $2)
         RETURNING id",
    )
    .bind(cmd.order_id)
    .bind(cmd.amount_cents)
    .fetch_one(ctx.db())
    .await?;
    Ok(Verdict::Done(json!({ "charge_id": charge_id })))
}

async fn refund(mut ctx: Context<'_>, cmd: Payment) -> Undo {
    sqlx::query(
        "INSERT INTO payments (order_id, kind, amount_cents, undoes) VALUES ($1, 'refund', $2, $3)",
    )
    .bind(cmd.order_id)
    .bind(cmd.amount_cents)
    .bind(cmd.charge_id)
    .execute(ctx.db())
    .await?;
    Ok(())
}

async fn schedule_shipping(mut ctx: Context<'_>, cmd: Shipment) -> Act {
    if cmd.destination == "Antarctica" {
        return Ok(Verdict::Declined(format!(
            "no courier to {}",
            cmd.destination
        )));
    }
    sqlx::query("INSERT INTO shipments (order_id, destination) VALUES ($1, $2)")
        .bind(cmd.order_id)
        .bind(&cmd.destination)
        .execute(ctx.db())
        .await?;
    Ok(Verdict::Done(serde_json::Value::Null))
}

type Act = Result<Verdict<serde_json::Value>, BoxError>;
type Undo = Result<(), BoxError>;

fn orders() -> Vec<Order> {
    let order = |order_id, quantity, amount_cents, to: &str| Order {
        order_id,
        quantity,
        amount_cents,
        destination: to.to_owned(),
        reservation_id: None,
        charge_id: None,
    };
    vec![
        order(1, 2, 4_200, "Lisbon"),
        order(2, 1, 1_500, "Oslo"),
        order(3, 3, 250_000, "Porto"),
        order(4, 1, 990, "Antarctica"),
        order(5, 5, 12_500, "Quito"),
    ]
}

/// Each participant's table: an effect per row, an undo naming what it undoes.
const SCHEMA: &str = "
    CREATE TABLE inventory (id bigserial PRIMARY KEY, order_id bigint NOT NULL,
        kind text NOT NULL, quantity int NOT NULL, undoes bigint REFERENCES inventory);
    CREATE TABLE payments (id bigserial PRIMARY KEY, order_id bigint NOT NULL,
        kind text NOT NULL, amount_cents bigint NOT NULL, undoes bigint REFERENCES payments);
    CREATE TABLE shipments (id bigserial PRIMARY KEY, order_id bigint NOT NULL,
        destination text NOT NULL);
";

/// Runs the sagas of five orders (three go through, two are undone) on `pool`
/// (migrated) and the broker at `amqp_url`, with an exchange and queues of the run's
/// own, removed at the end. Returns each saga's report once all are finished, or an
/// error when `stop` fires or a minute passes first.
pub async fn run(
    pool: &PgPool,
    amqp_url: &str,
    stop: CancellationToken,
) -> anyhow::Result<Vec<SagaReport>> {
    sqlx::raw_sql(SCHEMA).execute(pool).await?;
    let run = format!("order-saga-{}", uuid::Uuid::now_v7().simple());
    let reply_key = txoutbox_saga::wire::reply_routing_key(definition().name());
    let queues = [
        ConsumerConfig::new(format!("{run}-inventory")).bind(&run, "inventory.*"),
        ConsumerConfig::new(format!("{run}-payment")).bind(&run, "payment.*"),
        ConsumerConfig::new(format!("{run}-shipping")).bind(&run, "shipping.*"),
        ConsumerConfig::new(format!("{run}-orchestrator")).bind(&run, reply_key),
    ];
    let broker = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let channel = broker.create_channel().await?;
    let topic = ExchangeDeclareOptions::default();
    (channel.exchange_declare(
        run.as_str().into(),
        ExchangeKind::Topic,
        topic,
        FieldTable::default(),
    ))
    .await?;
    // Declared before any command goes out, so that none is unroutable.
    for queue in &queues {
        queue.declare(&channel).await?;
    }
    let outcome = run_orders(pool, amqp_url, &run, &queues, stop).await;
    for config in &queues {
        config.delete(&channel).await?;
    }
    channel
        .exchange_delete(run.as_str().into(), ExchangeDeleteOptions::default())
        .await?;
    broker.close(200, "order saga done".into()).await?;
    outcome
}

async fn run_orders(
    pool: &PgPool,
    amqp_url: &str,
    run: &str,
    queues: &[ConsumerConfig; 4],
    stop: CancellationToken,
) -> anyhow::Result<Vec<SagaReport>> {
    let mut relay_config = RelayConfig::default();
    relay_config.exchange = run.to_owned();
    relay_config.poll_interval = Duration::from_millis(100);
    let relay = Relay::new(pool.clone(), amqp_url, relay_config).spawn();
    let participant = |config: &ConsumerConfig, name: &str| {
        Consumer::new(pool.clone(), amqp_url, name, config.clone())
    };
    let participants: Vec<ConsumerHandle> = vec![
        (participant(&queues[0], "inventory"))
            .action("inventory.reserve", reserve_inventory)
            .compensation("inventory.release", release)
            .spawn()?,
        (participant(&queues[1], "payment"))
            .action("payment.charge", charge_payment)
            .compensation("payment.refund", refund)
            .spawn()?,
        (participant(&queues[2], "shipping"))
            .action("shipping.schedule", schedule_shipping)
            .spawn()?,
    ];
    let mut config = OrchestratorConfig::new(run);
    config.consumer = queues[3].clone();
    let registry = Registry::new().register(definition());
    let orchestrator = Orchestrator::new(pool.clone(), amqp_url, registry, config).spawn()?;

    let mut saga_ids = Vec::new();
    for order in orders() {
        // The order service's own INSERT would join this transaction.
        let mut tx = pool.begin().await?;
        let saga_id = format!("order-{}", order.order_id);
        txoutbox_saga::start(&mut tx, &definition(), &saga_id, &order).await?;
        tx.commit().await?;
        saga_ids.push(saga_id);
    }
    let finished = wait_until_finished(pool, &saga_ids, stop, Duration::from_secs(60)).await;

    orchestrator.shutdown().await?;
    for participant in participants {
        participant.shutdown().await?;
    }
    relay.shutdown().await?;
    finished?;
    let mut reports = Vec::new();
    for saga_id in saga_ids {
        reports.push(report(pool, saga_id).await?);
    }
    Ok(reports)
}

async fn report(pool: &PgPool, saga_id: String) -> anyhow::Result<SagaReport> {
    let steps: Vec<String> = definition()
        .steps()
        .iter()
        .map(|s| s.name().to_owned())
        .collect();
    SagaReport::read(pool, saga_id, &steps).await
}
