//! Figures for metrics and dashboards: sagas by state, the oldest unfinished one's
//! age, the overdue ones, and those waiting for an event.

use serde::{Serialize, Serializer};
use sqlx::PgPool;

use super::{Result, saga_state, terminal_states};
use crate::state::SagaState;

/// Figures for metrics and dashboards.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SagaStats {
    /// How many sagas are in each state, every state listed, in [`SagaState::ALL`] order.
    #[serde(serialize_with = "counts")]
    pub by_state: Vec<(SagaState, i64)>,
    /// Seconds since the oldest unfinished saga started; 0 when none is.
    pub oldest_active_age_seconds: f64,
    /// Unfinished sagas past their deadline.
    pub overdue: i64,
    /// Sagas at a wait step, by the event they wait for.
    #[serde(serialize_with = "by_event")]
    pub waiting: Vec<(String, i64)>,
}

/// Counts sagas by state, the age of the oldest unfinished one, and the overdue ones.
pub async fn stats(pool: &PgPool) -> Result<SagaStats> {
    let counted: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM saga_instance GROUP BY state")
            .fetch_all(pool)
            .await?;
    // Every unfinished saga has a deadline (a CHECK of the table): reading those with
    // one reads the partial index `saga_instance_due`, not every finished saga.
    let (oldest, overdue): (Option<f64>, i64) = sqlx::query_as(
        "SELECT extract(epoch FROM now() - min(created_at))::float8,
                count(*) FILTER (WHERE deadline_at < now())
         FROM saga_instance WHERE deadline_at IS NOT NULL AND NOT (state = ANY($1))",
    )
    .bind(terminal_states())
    .fetch_one(pool)
    .await?;
    let mut by_state: Vec<(SagaState, i64)> = SagaState::ALL.map(|s| (s, 0)).into();
    for (state, count) in counted {
        let state = saga_state("saga_instance.state", state)?;
        if let Some(slot) = by_state.iter_mut().find(|(s, _)| *s == state) {
            slot.1 = count;
        }
    }
    let waiting: Vec<(String, i64)> = sqlx::query_as(
        "SELECT waiting_for, count(*) FROM saga_instance
         WHERE waiting_for IS NOT NULL GROUP BY waiting_for ORDER BY waiting_for",
    )
    .fetch_all(pool)
    .await?;
    Ok(SagaStats {
        by_state,
        oldest_active_age_seconds: oldest.unwrap_or(0.0),
        overdue,
        waiting,
    })
}

/// `{"payment.captured": 3, ...}`.
fn by_event<S: Serializer>(counts: &[(String, i64)], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(counts.iter().map(|(event, count)| (event, count)))
}

/// `{"pending": 0, "running": 2, ...}`.
fn counts<S: Serializer>(counts: &[(SagaState, i64)], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(counts.iter().map(|(state, count)| (state.as_str(), count)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_serialize_counts_by_state_name() {
        let stats = SagaStats {
            by_state: vec![(SagaState::Running, 2), (SagaState::Failed, 1)],
            oldest_active_age_seconds: 1.5,
            overdue: 0,
            waiting: vec![("payment.captured".into(), 3)],
        };
        assert_eq!(
            serde_json::to_value(&stats).ok(),
            Some(serde_json::json!({
                "by_state": {"running": 2, "failed": 1},
                "oldest_active_age_seconds": 1.5,
                "overdue": 0,
                "waiting": {"payment.captured": 3},
            }))
        );
    }
}
