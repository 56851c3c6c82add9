//! What operators ask of an outbox: status, one saga, dead rows, cleanup.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use txoutbox::State;
use txoutbox::postgres::interval;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::metrics::Backlog;

/// Reads the backlog figures: unsent rows, dead rows, and how long the oldest
/// unsent row has been due (see [`Backlog::oldest_unsent_age_seconds`]).
pub async fn backlog(pool: &PgPool) -> Result<Backlog> {
    let (unsent, dead, oldest): (i64, i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state IN ($1, $2)),
                count(*) FILTER (WHERE state = $3),
                extract(epoch FROM now() - min(CASE WHEN attempts = 0 THEN greatest(available_at, created_at) ELSE created_at END)
                    FILTER (WHERE state IN ($1, $2) AND (attempts > 0 OR available_at <= now())))::float8
         FROM outbox WHERE state <> $4",
    )
    .bind(State::Pending.as_str())
    .bind(State::Retry.as_str())
    .bind(State::Dead.as_str())
    .bind(State::Sent.as_str())
    .fetch_one(pool)
    .await?;
    Ok(Backlog {
        unsent,
        dead,
        oldest_unsent_age_seconds: oldest.unwrap_or(0.0),
    })
}

/// A relay instance as the lease tables see it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
#[non_exhaustive]
pub struct InstanceStatus {
    /// The instance's id.
    pub instance_id: String,
    /// Where it runs.
    pub hostname: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_seconds: f64,
    /// Idle and waiting for the doorbell.
    pub listening: bool,
    /// Partitions it holds an unexpired lease on.
    pub partitions: Vec<i16>,
    /// Where another relay started with this instance id stands by, publishing
    /// nothing (a misconfiguration, or a restart waiting out a crashed run).
    pub standby_host: Option<String>,
    /// Seconds since that relay last said so (it does at each of its heartbeats).
    pub standby_age_seconds: Option<f64>,
}

/// Every registered relay instance and the partitions it holds.
pub async fn instances(pool: &PgPool) -> Result<Vec<InstanceStatus>> {
    let rows = sqlx::query_as(
        "SELECT i.instance_id, i.hostname, i.started_at,
                extract(epoch FROM now() - i.heartbeat_at)::float8 AS heartbeat_age_seconds,
                i.listening,
                coalesce(array_agg(l.partition ORDER BY l.partition)
                         FILTER (WHERE l.partition IS NOT NULL), '{}') AS partitions,
                i.standby_host,
                extract(epoch FROM now() - i.standby_seen_at)::float8 AS standby_age_seconds
         FROM outbox_relay_instance i
         LEFT JOIN outbox_relay_lease l ON l.owner = i.instance_id AND l.expires_at > now()
         GROUP BY i.instance_id ORDER BY i.started_at",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// A dead row, for `dead list`.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
#[non_exhaustive]
pub struct DeadRow {
    /// Message id.
    pub id: Uuid,
    /// Business transaction.
    pub saga_id: String,
    /// Saga step or event name.
    pub step: String,
    /// Routing key it could not be published with.
    pub routing_key: String,
    /// Failed attempts.
    pub attempts: i32,
    /// Why the last one failed.
    pub last_error: Option<String>,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

/// Dead rows, oldest first, at most `limit`.
pub async fn dead_rows(pool: &PgPool, limit: i64) -> Result<Vec<DeadRow>> {
    let rows = sqlx::query_as(
        "SELECT id, saga_id, step, routing_key, attempts, last_error, created_at
         FROM outbox WHERE state = $2 ORDER BY seq LIMIT $1",
    )
    .bind(limit)
    .bind(State::Dead.as_str())
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// Gives a dead row a fresh set of attempts. Its last error stays for the record.
pub async fn retry_dead(pool: &PgPool, id: Uuid) -> Result<()> {
    let updated = sqlx::query(
        "UPDATE outbox SET state = $2, attempts = 0, available_at = now()
         WHERE id = $1 AND state = $3",
    )
    .bind(id)
    .bind(State::Pending.as_str())
    .bind(State::Dead.as_str())
    .execute(pool)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(Error::NotFound(id));
    }
    Ok(())
}

/// Gives every dead row a fresh set of attempts; returns how many.
pub async fn retry_all_dead(pool: &PgPool) -> Result<u64> {
    let updated = sqlx::query(
        "UPDATE outbox SET state = $1, attempts = 0, available_at = now() WHERE state = $2",
    )
    .bind(State::Pending.as_str())
    .bind(State::Dead.as_str())
    .execute(pool)
    .await?;
    Ok(updated.rows_affected())
}

/// Deletes sent rows older than `retention`, `batch_size` per statement, until none
/// is left or 100 batches ran. One instance at a time: a transaction-scoped advisory
/// lock makes a second cleaner skip its turn. Returns how many rows went.
pub async fn cleanup(pool: &PgPool, retention: Duration, batch_size: u32) -> Result<u64> {
    let retention = interval(retention);
    let mut total = 0;
    for _ in 0..100 {
        let mut tx = pool.begin().await?;
        let ours: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock(hashtext('outbox_relay_cleanup'))",
        )
        .fetch_one(&mut *tx)
        .await?;
        if !ours {
            return Ok(total);
        }
        let deleted = sqlx::query(
            "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox WHERE state = $3 AND sent_at < now() - $1
                 ORDER BY sent_at LIMIT $2)",
        )
        .bind(retention)
        .bind(i64::from(batch_size))
        .bind(State::Sent.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        total += deleted;
        if deleted < u64::from(batch_size) {
            break;
        }
    }
    Ok(total)
}
