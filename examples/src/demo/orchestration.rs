//! The order saga as the orchestrator runs it: reserve stock, charge, ship; a declined
//! charge (or a step that timed out) undoes the steps before it, last first. Shipping
//! cannot be undone, so when it times out the orchestrator cancels it instead.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use txoutbox_saga::Saga;

/// The saga type's name (`saga_instance.saga_type`, and the replies' routing key).
pub const SAGA: &str = "order";

/// Compensations (and cancels) tried before a saga is `failed`: enough to outlast a
/// participant that is down several timeouts in a row, or a broker restart.
pub const COMPENSATION_ATTEMPTS: u32 = 10;

/// The saga's data: what each command is built from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct OrderSaga {
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
        .build()
        .expect("the demo's saga is a valid definition")
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
