//! The payloads of the saga's events, defined once: the service that emits an event
//! serializes the same struct that the next service's handler receives.

use serde::{Deserialize, Serialize};

/// `OrderCreated`: a placed order, for inventory to reserve.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct OrderCreated {
    pub(crate) quantity: i64,
    pub(crate) amount_cents: i64,
}

/// `InventoryReserved`: stock is held, for payment to charge.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct InventoryReserved {
    pub(crate) quantity: i64,
    pub(crate) amount_cents: i64,
}

/// `PaymentCharged`: the customer paid, for shipping to ship.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct PaymentCharged {
    pub(crate) amount_cents: i64,
}

/// `PaymentFailed`: the charge was declined, for inventory to release the stock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PaymentFailed {
    pub(crate) quantity: i64,
    pub(crate) reason: String,
}

/// `ShipmentCreated`: the order is on its way (an empty object on the wire).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct ShipmentCreated {}

/// `InventoryReleased`: the reservation is undone, for order to cancel.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct InventoryReleased {
    pub(crate) quantity: i64,
}
