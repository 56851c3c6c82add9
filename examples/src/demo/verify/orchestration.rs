//! The orchestrated saga's invariants, from the orchestrator's tables (`saga_instance`,
//! `saga_event`) and each participant's effect log: a saga `completed` only with every
//! step done once; `compensated` only with each done step undone once, last first,
//! and no action taking effect after its undo; nothing shipped that was not paid for;
//! each order row in the final state its saga's end hook gave it.

use std::collections::HashMap;

use sqlx::PgPool;

use super::{Counts, Findings, Sources, counts, unknown_orders};

/// What the orchestrator and the participants did, for the report.
#[derive(Debug, Clone, Default)]
pub struct SagaFigures {
    /// Sagas `failed` (each also a violation), with their last error.
    pub failed: Vec<(String, String)>,
    /// Deadlines that passed without a reply.
    pub timeouts: i64,
    /// Cancels sent for the step that cannot be undone (shipping).
    pub cancels: i64,
    /// Replies that came after the saga had moved on, recorded and ignored.
    pub late_replies_ignored: i64,
    /// Actions that arrived after their deadline or their compensation, answered
    /// without running.
    pub late_actions_fenced: i64,
    /// Compensations that undid an effect (releases and refunds).
    pub compensations_undone: i64,
    /// Compensations that found nothing to undo (their action never ran).
    pub compensations_empty: i64,
    /// Compensations sent again by the orchestrator after a timeout.
    pub compensations_resent: i64,
}

/// When each effect of an order was written, in microseconds since the epoch.
type Times = HashMap<String, Vec<i64>>;

/// Every saga against its effects, and the figures of the report.
pub(super) async fn check(
    sources: Sources<'_>,
    findings: &mut Findings,
    violations: &mut Vec<String>,
) -> anyhow::Result<()> {
    let sagas: Vec<(String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT o.id, coalesce(s.state, 'missing'), s.last_error, o.status
         FROM orders o LEFT JOIN saga_instance s ON s.saga_id = o.id ORDER BY o.id",
    )
    .fetch_all(sources.order)
    .await?;
    let effects = Effects::read(sources).await?;
    let compensation_order = compensations_sent(sources.order).await?;
    let mut figures = SagaFigures::default();

    for (id, state, last_error, status) in &sagas {
        // The end hooks set the order row's final state with the saga's.
        let row_should_be = match state.as_str() {
            "completed" => "shipped",
            "compensated" => "cancelled",
            "failed" => "failed",
            _ => "placed",
        };
        if status != row_should_be {
            violations.push(format!(
                "{id} ({state}): its order row is {status}, expected {row_should_be} (the end hook)"
            ));
        }
        let mut expect = |what: &str, got: i64, want: i64| {
            if got != want {
                violations.push(format!(
                    "{id} ({state}): {what} {got} times, expected {want}"
                ));
            }
        };
        let n = |c: &Counts| c.get(id).copied().unwrap_or(0);
        let (reserved, released) = (n(&effects.reserves), n(&effects.releases));
        let (charged, refunded) = (n(&effects.charges), n(&effects.refunds));
        let (declined, shipped) = (n(&effects.declines), n(&effects.shipments));
        match state.as_str() {
            "completed" => {
                findings.shipped += 1;
                expect("stock reserved", reserved, 1);
                expect("charged", charged, 1);
                expect("shipped", shipped, 1);
                expect("stock released", released, 0);
                expect("refunded", refunded, 0);
                expect("declined", declined, 0);
            }
            "compensated" => {
                findings.cancelled += 1;
                // Each step that took effect is undone exactly once; one that did not
                // (declined, fenced, never reached) is not undone at all.
                expect(
                    "stock reserved at most once: reserved",
                    reserved.min(2),
                    reserved.min(1),
                );
                expect(
                    "charged at most once: charged",
                    charged.min(2),
                    charged.min(1),
                );
                expect(
                    "stock released (once per reservation)",
                    released,
                    reserved.min(1),
                );
                expect("refunded (once per charge)", refunded, charged.min(1));
                expect("shipped, though compensated:", shipped, 0);
                expect("declined", declined.min(2), declined.min(1));
                check_undone_in_reverse(id, &effects, &compensation_order, violations);
            }
            "failed" => {
                let why = last_error.clone().unwrap_or_default();
                violations.push(format!("{id} is failed: {why}"));
                figures.failed.push((id.clone(), why));
            }
            other => violations.push(format!("{id} never reached a final state: still {other}")),
        }
        if charged > refunded && shipped == 0 && state != "failed" {
            violations.push(format!("{id}: charged but never shipped nor refunded"));
        }
    }
    let known: HashMap<&str, &str> = sagas
        .iter()
        .map(|(id, state, _, _)| (id.as_str(), state.as_str()))
        .collect();
    unknown_orders(
        &known,
        &[
            ("reservations", &effects.reserves),
            ("charges", &effects.charges),
            ("refunds", &effects.refunds),
            ("declines", &effects.declines),
            ("shipments", &effects.shipments),
        ],
        violations,
    );
    read_figures(sources, &effects, &mut figures).await?;
    findings.saga = Some(figures);
    Ok(())
}

/// A compensated saga undid its steps last first: the orchestrator sent no
/// compensation of an earlier step before a later one's, the refund was written
/// before the release, and no action took effect after its own undo.
fn check_undone_in_reverse(
    id: &str,
    effects: &Effects,
    compensation_order: &HashMap<String, Vec<i32>>,
    violations: &mut Vec<String>,
) {
    if let Some(steps) = compensation_order.get(id)
        && steps.windows(2).any(|pair| pair[1] > pair[0])
    {
        violations.push(format!(
            "{id}: compensations sent out of order (steps {steps:?}; the last step first)"
        ));
    }
    let first = |times: &Times| times.get(id).and_then(|t| t.iter().min().copied());
    let last = |times: &Times| times.get(id).and_then(|t| t.iter().max().copied());
    if let (Some(refund), Some(release)) =
        (first(&effects.refund_times), first(&effects.release_times))
        && release < refund
    {
        violations.push(format!(
            "{id}: compensated out of order: stock released before the charge was refunded"
        ));
    }
    for (action, undo, what) in [
        (&effects.reserve_times, &effects.release_times, "reserved"),
        (&effects.charge_times, &effects.refund_times, "charged"),
    ] {
        if let (Some(done), Some(undone)) = (last(action), first(undo))
            && done > undone
        {
            violations.push(format!(
                "{id}: {what} after its compensation: a late action took effect"
            ));
        }
    }
}

/// Each participant's effects, counted and timed per order.
struct Effects {
    reserves: Counts,
    releases: Counts,
    charges: Counts,
    refunds: Counts,
    declines: Counts,
    shipments: Counts,
    reserve_times: Times,
    release_times: Times,
    charge_times: Times,
    refund_times: Times,
}

impl Effects {
    async fn read(sources: Sources<'_>) -> anyhow::Result<Self> {
        let (inventory, payment) = (sources.inventory, sources.payment);
        Ok(Self {
            reserves: counts(inventory, "reservations WHERE kind = 'reserve'").await?,
            releases: counts(inventory, "reservations WHERE kind = 'release'").await?,
            charges: counts(payment, "charges").await?,
            refunds: counts(payment, "refunds").await?,
            declines: counts(payment, "declines").await?,
            shipments: counts(sources.shipping, "shipments").await?,
            reserve_times: times(inventory, "reservations WHERE kind = 'reserve'").await?,
            release_times: times(inventory, "reservations WHERE kind = 'release'").await?,
            charge_times: times(payment, "charges").await?,
            refund_times: times(payment, "refunds").await?,
        })
    }
}

/// When each row of `from` was written, per order id.
async fn times(pool: &PgPool, from: &str) -> anyhow::Result<Times> {
    let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT order_id, (extract(epoch FROM at) * 1000000)::bigint FROM {from}"
    )))
    .fetch_all(pool)
    .await?;
    let mut times = Times::new();
    for (id, at) in rows {
        times.entry(id).or_default().push(at);
    }
    Ok(times)
}

/// The steps whose compensation the orchestrator sent, in the order it sent them.
async fn compensations_sent(order: &PgPool) -> anyhow::Result<HashMap<String, Vec<i32>>> {
    let rows: Vec<(String, i32)> = sqlx::query_as(
        "SELECT saga_id, step FROM saga_event
         WHERE kind = 'command_sent' AND phase = 'compensation' ORDER BY id",
    )
    .fetch_all(order)
    .await?;
    let mut sent: HashMap<String, Vec<i32>> = HashMap::new();
    for (id, step) in rows {
        sent.entry(id).or_default().push(step);
    }
    Ok(sent)
}

/// The report's figures: from the saga history and the participants' records.
async fn read_figures(
    sources: Sources<'_>,
    effects: &Effects,
    figures: &mut SagaFigures,
) -> anyhow::Result<()> {
    let (timeouts, cancels, ignored, resent): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE kind = 'timeout'),
                count(*) FILTER (WHERE kind = 'command_sent' AND phase = 'cancel'),
                count(*) FILTER (WHERE kind = 'reply' AND detail LIKE '%ignored%'),
                count(*) FILTER (WHERE kind = 'command_sent' AND phase = 'compensation'
                                 AND detail NOT LIKE '%(attempt 1)')
         FROM saga_event",
    )
    .fetch_one(sources.order)
    .await?;
    figures.timeouts = timeouts;
    figures.cancels = cancels;
    figures.late_replies_ignored = ignored;
    figures.compensations_resent = resent;
    let sum = |c: &Counts| c.values().sum::<i64>();
    figures.compensations_undone = sum(&effects.releases) + sum(&effects.refunds);
    for pool in [sources.inventory, sources.payment, sources.shipping] {
        // The participant's record of each command is keyed by its name; the keys of
        // the copies that carried it (`name#token`) hold the same answer again.
        let (fenced, empty): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE result->>'reason' LIKE 'fenced%'),
                    count(*) FILTER (WHERE result->>'reason' LIKE 'nothing to undo%')
             FROM inbox WHERE result IS NOT NULL AND strpos(step, '#') = 0",
        )
        .fetch_one(pool)
        .await?;
        figures.late_actions_fenced += fenced;
        figures.compensations_empty += empty;
    }
    Ok(())
}
