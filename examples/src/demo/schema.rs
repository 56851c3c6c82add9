//! Each service's own tables, next to the toolkit's (outbox, inbox, relay).
//!
//! Effects are kept as append-only rows with no unique constraint on the order, so a
//! second effect would show as a second row: the verifier counts them instead of
//! trusting a constraint to have refused it. Each is stamped with the clock at the
//! moment it was written (`clock_timestamp()`, one server for every database), so the
//! verifier can tell an undo from an effect that came after it.

use sqlx::PgPool;

use super::saga::Service;

/// Stock the inventory starts with: enough that no order is refused for stock.
pub const INITIAL_STOCK: i64 = 1_000_000;

/// Every message a handler took effect on, one row per effect; `redelivered` is the
/// broker's flag on the delivery that took effect. Under orchestration `step` is the
/// command (`inventory.reserve`), without the token of the copy that carried it.
const HANDLED: &str = "CREATE TABLE handled (
    saga_id     text        NOT NULL,
    step        text        NOT NULL,
    redelivered boolean     NOT NULL,
    handled_at  timestamptz NOT NULL DEFAULT clock_timestamp()
)";

/// Compensations that failed on purpose (`--compensation-failure-rate`), written
/// outside the handler's transaction, which rolls back: the report counts them, and
/// the policy reads them to know when to stop failing.
const COMPENSATION_FAILURES: &str = "CREATE TABLE compensation_failures (
    saga_id text        NOT NULL,
    command text        NOT NULL,
    at      timestamptz NOT NULL DEFAULT clock_timestamp()
)";

const ORDER: &[&str] = &["CREATE TABLE orders (
         id           text        PRIMARY KEY,
         number       integer     NOT NULL UNIQUE,
         quantity     integer     NOT NULL,
         amount_cents bigint      NOT NULL,
         status       text        NOT NULL DEFAULT 'placed'
                      CHECK (status IN ('placed', 'shipped', 'cancelled', 'failed')),
         why          text,
         placed_at    timestamptz NOT NULL DEFAULT now(),
         finished_at  timestamptz
     )"];

const INVENTORY: &[&str] = &[
    "CREATE TABLE stock (sku text PRIMARY KEY, available bigint NOT NULL)",
    "CREATE TABLE reservations (
         order_id text        NOT NULL,
         kind     text        NOT NULL CHECK (kind IN ('reserve', 'release')),
         quantity integer     NOT NULL,
         at       timestamptz NOT NULL DEFAULT clock_timestamp()
     )",
];

const PAYMENT: &[&str] = &[
    "CREATE TABLE charges (
         order_id     text        NOT NULL,
         amount_cents bigint      NOT NULL,
         at           timestamptz NOT NULL DEFAULT clock_timestamp()
     )",
    "CREATE TABLE declines (
         order_id text        NOT NULL,
         at       timestamptz NOT NULL DEFAULT clock_timestamp()
     )",
    "CREATE TABLE refunds (
         order_id     text        NOT NULL,
         amount_cents bigint      NOT NULL,
         at           timestamptz NOT NULL DEFAULT clock_timestamp()
     )",
];

const SHIPPING: &[&str] = &["CREATE TABLE shipments (
         order_id text        NOT NULL,
         at       timestamptz NOT NULL DEFAULT clock_timestamp()
     )"];

/// Applies the toolkit's migrations and the service's own tables to a new database.
pub async fn prepare(pool: &PgPool, service: Service) -> anyhow::Result<()> {
    txoutbox::migrate(pool).await?;
    sqlx::query(HANDLED).execute(pool).await?;
    sqlx::query(COMPENSATION_FAILURES).execute(pool).await?;
    let own = match service {
        Service::Order => ORDER,
        Service::Inventory => INVENTORY,
        Service::Payment => PAYMENT,
        Service::Shipping => SHIPPING,
    };
    for statement in own {
        sqlx::query(*statement).execute(pool).await?;
    }
    if service == Service::Inventory {
        sqlx::query("INSERT INTO stock (sku, available) VALUES ('widget', $1)")
            .bind(INITIAL_STOCK)
            .execute(pool)
            .await?;
    }
    Ok(())
}
