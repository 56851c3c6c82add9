//! The verifier: proves from the four databases, not from logs, that every effect
//! of the saga happened exactly once and every order reached a final state. The
//! checks shared by both modes are here; each mode's own are in a file of its own.

mod choreography;
mod orchestration;

use std::collections::HashMap;

use sqlx::PgPool;

use super::saga::{SagaMode, Service};
use super::schema::INITIAL_STOCK;

pub use orchestration::SagaFigures;

/// The four databases to read.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    /// The order service's.
    pub order: &'a PgPool,
    /// The inventory service's.
    pub inventory: &'a PgPool,
    /// The payment service's.
    pub payment: &'a PgPool,
    /// The shipping service's.
    pub shipping: &'a PgPool,
}

impl<'a> Sources<'a> {
    fn each(&self) -> [(Service, &'a PgPool); 4] {
        [
            (Service::Order, self.order),
            (Service::Inventory, self.inventory),
            (Service::Payment, self.payment),
            (Service::Shipping, self.shipping),
        ]
    }
}

/// What the verifier found: the figures of the report, and every broken invariant.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    /// Orders placed.
    pub orders: i64,
    /// Of which shipped (orchestration: the saga completed).
    pub shipped: i64,
    /// Of which cancelled (orchestration: the saga compensated).
    pub cancelled: i64,
    /// Outbox rows the broker confirmed, all services.
    pub published: i64,
    /// Inbox keys: messages that took effect, all services.
    pub effects: i64,
    /// Deliveries of a key that had already taken effect, suppressed by the inboxes.
    pub duplicates: i64,
    /// Effects whose delivery the broker flagged as a redelivery (an earlier delivery
    /// of it was never acked: a consumer died or its connection dropped first).
    pub redelivered_effects: i64,
    /// Compensations that failed on purpose (`--compensation-failure-rate`) and were
    /// retried.
    pub compensation_failures: i64,
    /// What the orchestrator did (orchestration only).
    pub saga: Option<SagaFigures>,
    /// Broken invariants, in words. Empty when all held.
    pub violations: Vec<String>,
}

type Counts = HashMap<String, i64>;

/// Reads the databases and checks every invariant of the saga, as `mode` runs it,
/// against `orders` placed.
pub async fn verify(sources: Sources<'_>, orders: u32, mode: SagaMode) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let mut violations = Vec::new();
    findings.orders = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(sources.order)
        .await?;
    if findings.orders != i64::from(orders) {
        violations.push(format!(
            "{} orders placed, {orders} asked for",
            findings.orders
        ));
    }
    match mode {
        SagaMode::Choreography => {
            choreography::check(sources, &mut findings, &mut violations).await?;
        }
        SagaMode::Orchestration => {
            orchestration::check(sources, &mut findings, &mut violations).await?;
        }
    }
    check_stock(sources.inventory, &mut violations).await?;
    for (service, pool) in sources.each() {
        read_toolkit_tables(service, pool, mode, &mut findings, &mut violations).await?;
    }
    if mode == SagaMode::Choreography {
        choreography::check_messages(&findings, &mut violations);
    }
    findings.violations = violations;
    Ok(findings)
}

/// The stock left is the stock at the start, less what was reserved, plus what was
/// released.
async fn check_stock(inventory: &PgPool, violations: &mut Vec<String>) -> anyhow::Result<()> {
    let available: i64 = sqlx::query_scalar("SELECT available FROM stock WHERE sku = 'widget'")
        .fetch_one(inventory)
        .await?;
    let (reserved, released): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(quantity) FILTER (WHERE kind = 'reserve'), 0),
                coalesce(sum(quantity) FILTER (WHERE kind = 'release'), 0) FROM reservations",
    )
    .fetch_one(inventory)
    .await?;
    if available != INITIAL_STOCK - reserved + released {
        violations.push(format!(
            "stock is {available}, but reservations say {}",
            INITIAL_STOCK - reserved + released
        ));
    }
    Ok(())
}

/// Effect rows with no order behind them.
fn unknown_orders(
    known: &HashMap<&str, &str>,
    tables: &[(&str, &Counts)],
    violations: &mut Vec<String>,
) {
    for (table, rows) in tables {
        for id in rows.keys().filter(|id| !known.contains_key(id.as_str())) {
            violations.push(format!(
                "{table} has rows for {id}, an order that does not exist"
            ));
        }
    }
}

/// The outbox (nothing left unsent), the inbox (keys, duplicates) and the handled
/// log (no message took effect twice) of one service.
async fn read_toolkit_tables(
    service: Service,
    pool: &PgPool,
    mode: SagaMode,
    findings: &mut Findings,
    violations: &mut Vec<String>,
) -> anyhow::Result<()> {
    let (sent, unsent): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'sent'), count(*) FILTER (WHERE state <> 'sent')
         FROM outbox",
    )
    .fetch_one(pool)
    .await?;
    findings.published += sent;
    if unsent > 0 {
        violations.push(format!("{service}: {unsent} outbox messages never sent"));
    }
    let (keys, duplicates): (i64, i64) =
        sqlx::query_as("SELECT count(*), coalesce(sum(duplicates), 0)::bigint FROM inbox")
            .fetch_one(pool)
            .await?;
    findings.effects += keys;
    findings.duplicates += duplicates;
    let twice: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT saga_id, step, count(*) FROM handled GROUP BY saga_id, step HAVING count(*) > 1",
    )
    .fetch_all(pool)
    .await?;
    for (saga_id, step, times) in twice {
        violations.push(format!(
            "{service}: {saga_id}:{step} took effect {times} times"
        ));
    }
    let (handled, redelivered): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE redelivered) FROM handled")
            .fetch_one(pool)
            .await?;
    findings.redelivered_effects += redelivered;
    let failures: i64 = sqlx::query_scalar("SELECT count(*) FROM compensation_failures")
        .fetch_one(pool)
        .await?;
    findings.compensation_failures += failures;
    // Under orchestration the inbox also keys each copy of a command and each
    // participant's record of it, so only choreography has one key per effect.
    if mode == SagaMode::Choreography && handled != keys {
        violations.push(format!(
            "{service}: {handled} effects but {keys} inbox keys"
        ));
    }
    Ok(())
}

/// Rows per order id in `from` (a table, with an optional WHERE).
pub(super) async fn counts(pool: &PgPool, from: &str) -> anyhow::Result<Counts> {
    let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT order_id, count(*) FROM {from} GROUP BY order_id"
    )))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}
