//! The verifier: proves from the four databases, not from logs, that every effect
//! of the saga happened exactly once and every order reached a final state.

use std::collections::HashMap;

use sqlx::PgPool;

use super::saga::{MESSAGES_PER_ORDER, Service};
use super::schema::INITIAL_STOCK;

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
    /// Of which shipped.
    pub shipped: i64,
    /// Of which cancelled.
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
    /// Broken invariants, in words. Empty when all held.
    pub violations: Vec<String>,
}

type Counts = HashMap<String, i64>;

/// Reads the databases and checks every invariant of the saga against `orders`
/// placed.
pub async fn verify(sources: Sources<'_>, orders: u32) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let mut violations = Vec::new();

    let statuses: Vec<(String, String)> = sqlx::query_as("SELECT id, status FROM orders")
        .fetch_all(sources.order)
        .await?;
    findings.orders = statuses.len() as i64;
    if findings.orders != i64::from(orders) {
        violations.push(format!(
            "{} orders placed, {orders} asked for",
            findings.orders
        ));
    }

    let reserves = counts(sources.inventory, "reservations WHERE kind = 'reserve'").await?;
    let releases = counts(sources.inventory, "reservations WHERE kind = 'release'").await?;
    let charges = counts(sources.payment, "charges").await?;
    let declines = counts(sources.payment, "declines").await?;
    let shipments = counts(sources.shipping, "shipments").await?;

    let known: HashMap<&str, &str> = statuses
        .iter()
        .map(|(id, status)| (id.as_str(), status.as_str()))
        .collect();
    for (id, status) in &statuses {
        let n = |c: &Counts| c.get(id).copied().unwrap_or(0);
        let (reserved, released, charged, declined, shipped) = (
            n(&reserves),
            n(&releases),
            n(&charges),
            n(&declines),
            n(&shipments),
        );
        let mut expect = |what: &str, got: i64, want: i64| {
            if got != want {
                violations.push(format!(
                    "{id} ({status}): {what} {got} times, expected {want}"
                ));
            }
        };
        expect("stock reserved", reserved, 1);
        match status.as_str() {
            "shipped" => {
                findings.shipped += 1;
                expect("charged", charged, 1);
                expect("shipped", shipped, 1);
                expect("stock released", released, 0);
                expect("declined", declined, 0);
            }
            "cancelled" => {
                findings.cancelled += 1;
                expect("charged", charged, 0);
                expect("declined", declined, 1);
                expect("stock released", released, 1);
                expect("shipped", shipped, 0);
            }
            _ => violations.push(format!("{id} never reached a final state: still {status}")),
        }
    }
    for (table, rows) in [
        ("reservations", &reserves),
        ("charges", &charges),
        ("declines", &declines),
        ("shipments", &shipments),
    ] {
        for id in rows.keys().filter(|id| !known.contains_key(id.as_str())) {
            violations.push(format!(
                "{table} has rows for {id}, an order that does not exist"
            ));
        }
    }

    let available: i64 = sqlx::query_scalar("SELECT available FROM stock WHERE sku = 'widget'")
        .fetch_one(sources.inventory)
        .await?;
    let (reserved, released): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(quantity) FILTER (WHERE kind = 'reserve'), 0),
                coalesce(sum(quantity) FILTER (WHERE kind = 'release'), 0) FROM reservations",
    )
    .fetch_one(sources.inventory)
    .await?;
    if available != INITIAL_STOCK - reserved + released {
        violations.push(format!(
            "stock is {available}, but reservations say {}",
            INITIAL_STOCK - reserved + released
        ));
    }

    for (service, pool) in sources.each() {
        read_toolkit_tables(service, pool, &mut findings, &mut violations).await?;
    }
    let expected = MESSAGES_PER_ORDER * findings.orders;
    if findings.published != expected {
        violations.push(format!(
            "{} messages published, {expected} expected ({MESSAGES_PER_ORDER} per order)",
            findings.published
        ));
    }
    if findings.effects != expected {
        violations.push(format!(
            "{} messages took effect, {expected} expected",
            findings.effects
        ));
    }
    findings.violations = violations;
    Ok(findings)
}

/// The outbox (nothing left unsent), the inbox (keys, duplicates) and the handled
/// log (no message took effect twice) of one service.
async fn read_toolkit_tables(
    service: Service,
    pool: &PgPool,
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
    if handled != keys {
        violations.push(format!(
            "{service}: {handled} effects but {keys} inbox keys"
        ));
    }
    Ok(())
}

/// Rows per order id in `from` (a table, with an optional WHERE).
async fn counts(pool: &PgPool, from: &str) -> anyhow::Result<Counts> {
    let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT order_id, count(*) FROM {from} GROUP BY order_id"
    )))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}
