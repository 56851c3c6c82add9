//! The order saga's vocabulary: its two ways of coordination, its four services, the
//! events between them, and who listens to what.

use std::fmt;

/// How the services coordinate the saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SagaMode {
    /// Each service reacts to the event before it; compensation is an event too.
    Choreography,
    /// The order service's orchestrator (two instances) sends each step's command,
    /// waits for its reply with a timeout, and compensates in reverse on failure.
    Orchestration,
}

impl SagaMode {
    /// The flag's value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Choreography => "choreography",
            Self::Orchestration => "orchestration",
        }
    }
}

impl fmt::Display for SagaMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One of the four services of the saga, each with its own database, outbox, inbox
/// and relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Service {
    /// Places orders; marks them shipped or cancelled.
    Order,
    /// Reserves stock; releases it when payment fails (the compensation).
    Inventory,
    /// Charges the customer, or declines.
    Payment,
    /// Creates the shipment of a paid order.
    Shipping,
}

impl Service {
    /// Every service, in saga order.
    pub const ALL: [Self; 4] = [Self::Order, Self::Inventory, Self::Payment, Self::Shipping];

    /// The service's name: its inbox's name and part of its queue's.
    pub fn name(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Inventory => "inventory",
            Self::Payment => "payment",
            Self::Shipping => "shipping",
        }
    }

    /// The events this service reacts to.
    pub fn subscriptions(self) -> &'static [Event] {
        match self {
            Self::Order => &[Event::ShipmentCreated, Event::InventoryReleased],
            Self::Inventory => &[Event::OrderCreated, Event::PaymentFailed],
            Self::Payment => &[Event::InventoryReserved],
            Self::Shipping => &[Event::PaymentCharged],
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The events of the saga. Every one carries the order's id as its `saga_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// order -> inventory: reserve stock.
    OrderCreated,
    /// inventory -> payment: charge.
    InventoryReserved,
    /// payment -> shipping: ship.
    PaymentCharged,
    /// payment -> inventory: release the reservation.
    PaymentFailed,
    /// shipping -> order: mark shipped.
    ShipmentCreated,
    /// inventory -> order: mark cancelled.
    InventoryReleased,
}

impl Event {
    /// The step name: AMQP `type`, and the second half of the inbox key.
    pub const fn step(self) -> &'static str {
        match self {
            Self::OrderCreated => "OrderCreated",
            Self::InventoryReserved => "InventoryReserved",
            Self::PaymentCharged => "PaymentCharged",
            Self::PaymentFailed => "PaymentFailed",
            Self::ShipmentCreated => "ShipmentCreated",
            Self::InventoryReleased => "InventoryReleased",
        }
    }

    /// The routing key the event is published with.
    pub fn routing_key(self) -> &'static str {
        match self {
            Self::OrderCreated => "order.created",
            Self::InventoryReserved => "inventory.reserved",
            Self::PaymentCharged => "payment.charged",
            Self::PaymentFailed => "payment.failed",
            Self::ShipmentCreated => "shipment.created",
            Self::InventoryReleased => "inventory.released",
        }
    }
}

/// Messages every order causes, whichever way it ends: four on the way to shipped
/// (created, reserved, charged, shipment) and four on the way to cancelled
/// (created, reserved, failed, released).
pub const MESSAGES_PER_ORDER: i64 = 4;

/// The queue of one service in a demo run.
pub fn queue_name(prefix: &str, service: Service) -> String {
    format!("{prefix}.{service}")
}

/// How a service consumes in a demo run: its queue, bound to the run's exchange for
/// each event it listens to (choreography), or for its commands and the orchestrator's
/// replies (orchestration), with quick retries.
pub fn consumer_config(
    prefix: &str,
    service: Service,
    mode: SagaMode,
) -> txoutbox_inbox::ConsumerConfig {
    let mut config = txoutbox_inbox::ConsumerConfig::new(queue_name(prefix, service));
    match mode {
        SagaMode::Choreography => {
            for event in service.subscriptions() {
                config = config.bind(prefix, event.routing_key());
            }
        }
        SagaMode::Orchestration if service == Service::Order => {
            config = config.bind(
                prefix,
                txoutbox_saga::wire::reply_routing_key(super::orchestration::SAGA),
            );
        }
        SagaMode::Orchestration => {
            config = config.bind(prefix, format!("{service}.*"));
        }
    }
    config.retry_base = std::time::Duration::from_millis(500);
    config.retry_max = std::time::Duration::from_secs(5);
    config
}

/// The saga id of the `n`th order.
pub fn order_id(n: u32) -> String {
    format!("order-{n:06}")
}
