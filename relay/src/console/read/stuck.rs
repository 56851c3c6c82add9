//! Choreographed sagas that went quiet: no service has recorded anything of them for
//! longer than the threshold, and the last step any service saw is not one the
//! configuration names as final. Orchestrated sagas have deadlines instead (overdue).
//!
//! Each service names the sagas whose latest inbox record in the lookback is older
//! than the threshold (`inbox_by_processed_at`, then grouped by saga: work in
//! proportion to the records of the lookback, which is why the console does this in
//! the background, not per page load); each candidate's latest record is then read in
//! every service by its saga id (`inbox_by_saga`, `outbox_by_saga`), so that a saga
//! quiet in one service but busy in another is not stuck.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::types::PgInterval;

use super::missing::or_none;
use crate::console::services::Service;

/// Candidate sagas per service, the longest quiet first.
const CANDIDATES: i64 = 1_000;
/// Stuck sagas the home page lists.
const SHOWN: usize = 50;

/// A saga nobody has touched for too long.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StuckSaga {
    pub(crate) saga_id: String,
    pub(crate) last_step: String,
    pub(crate) service: String,
    pub(crate) last_activity_at: DateTime<Utc>,
}

/// The stuck sagas as last found, and when.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StuckReport {
    pub(crate) checked_at: DateTime<Utc>,
    pub(crate) sagas: Vec<StuckSaga>,
}

/// What decides "stuck".
pub(crate) struct StuckRules<'a> {
    pub(crate) stuck_after: Duration,
    pub(crate) lookback: Duration,
    pub(crate) final_steps: &'a [String],
}

/// The stuck sagas across every service, the longest quiet first. A service that
/// cannot be read is skipped here (the home page says so for it).
pub(crate) async fn find(services: &[Service], rules: &StuckRules<'_>) -> Vec<StuckSaga> {
    let reads = services
        .iter()
        .map(|service| candidates_in(&service.pool, rules));
    let mut candidates: Vec<String> = futures_util::future::join_all(reads)
        .await
        .into_iter()
        .flat_map(Result::unwrap_or_default)
        .collect();
    candidates.sort();
    candidates.dedup();
    if candidates.is_empty() {
        return Vec::new();
    }
    let mut latest: BTreeMap<String, StuckSaga> = BTreeMap::new();
    let mut orchestrated = Vec::new();
    let reads = services
        .iter()
        .map(|service| latest_in(service, &candidates));
    for (records, theirs) in futures_util::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
    {
        orchestrated.extend(theirs);
        for record in records {
            let newer = latest
                .get(&record.saga_id)
                .is_none_or(|seen| seen.last_activity_at < record.last_activity_at);
            if newer {
                latest.insert(record.saga_id.clone(), record);
            }
        }
    }
    let quiet_since = Utc::now() - rules.stuck_after;
    let mut stuck: Vec<StuckSaga> = latest
        .into_values()
        .filter(|s| s.last_activity_at < quiet_since)
        .filter(|s| !rules.final_steps.contains(&s.last_step))
        .filter(|s| !orchestrated.contains(&s.saga_id))
        .collect();
    stuck.sort_by_key(|s| s.last_activity_at);
    stuck.truncate(SHOWN);
    stuck
}

async fn candidates_in(pool: &PgPool, rules: &StuckRules<'_>) -> sqlx::Result<Vec<String>> {
    or_none(
        sqlx::query_scalar(
            "SELECT saga_id FROM inbox
             WHERE processed_at > now() - $1
             GROUP BY saga_id
             HAVING max(processed_at) < now() - $2
             ORDER BY max(processed_at) LIMIT $3",
        )
        .bind(interval(rules.lookback))
        .bind(interval(rules.stuck_after))
        .bind(CANDIDATES)
        .fetch_all(pool)
        .await,
    )
}

/// Each candidate's latest record in this service (its inbox and its outbox), and
/// which candidates this service orchestrates.
async fn latest_in(
    service: &Service,
    candidates: &[String],
) -> sqlx::Result<(Vec<StuckSaga>, Vec<String>)> {
    let pool = &service.pool;
    let rows: Vec<(String, String, DateTime<Utc>)> = or_none(
        sqlx::query_as(
            "SELECT DISTINCT ON (saga_id) saga_id, step, at FROM (
                 SELECT saga_id, step, processed_at AS at FROM inbox WHERE saga_id = ANY($1)
                 UNION ALL
                 SELECT saga_id, step, coalesce(sent_at, created_at) FROM outbox WHERE saga_id = ANY($1)
             ) records ORDER BY saga_id, at DESC",
        )
        .bind(candidates)
        .fetch_all(pool)
        .await,
    )?;
    let orchestrated: Vec<String> = or_none(
        sqlx::query_scalar("SELECT saga_id FROM saga_instance WHERE saga_id = ANY($1)")
            .bind(candidates)
            .fetch_all(pool)
            .await,
    )?;
    let records = rows
        .into_iter()
        .map(|(saga_id, last_step, last_activity_at)| StuckSaga {
            saga_id,
            last_step,
            service: service.name.clone(),
            last_activity_at,
        })
        .collect();
    Ok((records, orchestrated))
}

fn interval(duration: Duration) -> PgInterval {
    PgInterval {
        months: 0,
        days: 0,
        microseconds: i64::try_from(duration.as_micros()).unwrap_or(i64::MAX),
    }
}
