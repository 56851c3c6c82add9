//! The order saga as the orchestrator runs it: reserve stock, charge, ship; a declined
//! charge (or a step that timed out) undoes the steps before it, last first. Shipping
//! cannot be undone, so when it times out the orchestrator cancels it instead. When a
//! saga ends, its end hook sets the order row's final state in the same transaction:
//! `shipped`, or `cancelled` with the reason.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;
use txoutbox_inbox::BoxError;
use txoutbox_saga::Saga;

/// The saga type's name (`saga_instance.saga_type`, and the replies' routing key).
pub const SAGA: &str = "order";

/// Compensations (and cancels) tried before a saga is `failed`: enough to outlast a
/// participant that is down several timeouts in a row, or a broker restart.
pub const COMPENSATION_ATTEMPTS: u32 = 10;

/// The saga's data: what each command is built from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderSaga {
    /// The order's id (also the saga's): what the end hooks update.
    pub order_id: String,
    /// Items to reserve.
    pub quantity: i64,
    /// What to charge.
    pub amount_cents: i64,
}

/// The commands, by name: each participant binds `{service}.*` and handles its own.
pub mod command {
    /// inventory: take the order's quantity from stock.
    pub const RESERVE: &str = "inventory.reserve";
    /// inventory: put it back (the compensation of `RESERVE`).
    pub const RELEASE: &str = "inventory.release";
    /// payment: charge the customer, or decline.
    pub const CHARGE: &str = "payment.charge";
    /// payment: give the money back (the compensation of `CHARGE`).
    pub const REFUND: &str = "payment.refund";
    /// shipping: ship the order; it has no compensation.
    pub const SHIP: &str = "shipping.schedule";
}

/// The definition every order process registers, with each step waiting
/// `step_timeout` for its reply.
pub fn definition(step_timeout: Duration) -> Saga<OrderSaga> {
    let items = |o: &OrderSaga| json!({ "quantity": o.quantity });
    let money = |o: &OrderSaga| json!({ "amount_cents": o.amount_cents });
    Saga::<OrderSaga>::define(SAGA, 1)
        .compensation_attempts(COMPENSATION_ATTEMPTS)
        .step("reserve_inventory")
        .action(command::RESERVE, items)
        .compensate(command::RELEASE, items)
        .timeout(step_timeout)
        .step("charge_payment")
        .action(command::CHARGE, money)
        .compensate(command::REFUND, money)
        .timeout(step_timeout)
        .step("ship")
        .action(command::SHIP, |_| json!({}))
        .timeout(step_timeout)
        .on_completed(shipped)
        .on_compensated(cancelled)
        .on_failed(failed)
        .build()
        .expect("the demo's saga is a valid definition")
}

/// The end hooks: the order row takes its final state with the saga's, in one
/// transaction. The `placed` condition makes a hook that runs again harmless.
async fn shipped(conn: &mut PgConnection, order: OrderSaga) -> Result<(), BoxError> {
    finish(conn, &order.order_id, "shipped", None).await
}

async fn cancelled(conn: &mut PgConnection, order: OrderSaga, why: String) -> Result<(), BoxError> {
    finish(conn, &order.order_id, "cancelled", Some(&why)).await
}

async fn failed(conn: &mut PgConnection, order: OrderSaga, why: String) -> Result<(), BoxError> {
    finish(conn, &order.order_id, "failed", Some(&why)).await
}

async fn finish(
    conn: &mut PgConnection,
    order_id: &str,
    status: &str,
    why: Option<&str>,
) -> Result<(), BoxError> {
    sqlx::query(
        "UPDATE orders SET status = $2, why = $3, finished_at = now()
         WHERE id = $1 AND status = 'placed'",
    )
    .bind(order_id)
    .bind(status)
    .bind(why)
    .execute(conn)
    .await?;
    Ok(())
}

/// What inventory is asked to reserve or release.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Items {
    /// How many.
    pub quantity: i64,
}

/// What payment is asked to charge or refund.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Money {
    /// How much.
    pub amount_cents: i64,
}

/// What shipping is asked (the order id is the saga id).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Shipment {}
