//! The choreographed saga's invariants: each order's effects match its status, and
//! every order sent the same four messages.

use std::collections::HashMap;

use super::{Counts, Findings, Sources, counts, unknown_orders};
use crate::demo::saga::MESSAGES_PER_ORDER;

/// Each order's effects against its status, and the messages the saga sent.
pub(super) async fn check(
    sources: Sources<'_>,
    findings: &mut Findings,
    violations: &mut Vec<String>,
) -> anyhow::Result<()> {
    let statuses: Vec<(String, String)> = sqlx::query_as("SELECT id, status FROM orders")
        .fetch_all(sources.order)
        .await?;

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
    unknown_orders(
        &known,
        &[
            ("reservations", &reserves),
            ("charges", &charges),
            ("declines", &declines),
            ("shipments", &shipments),
        ],
        violations,
    );
    Ok(())
}

/// Every order causes the same messages whichever way it ends; checked once the
/// outboxes and inboxes are read.
pub(super) fn check_messages(findings: &Findings, violations: &mut Vec<String>) {
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
}
