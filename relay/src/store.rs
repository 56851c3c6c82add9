//! The relay's queries on the hot path: claim ready rows, record what the broker said.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::types::Json;
use txoutbox::State;
use uuid::Uuid;

use crate::error::Result;

/// A row ready to publish, as the relay reads it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct OutboxRow {
    pub(crate) id: Uuid,
    pub(crate) seq: i64,
    pub(crate) saga_id: String,
    pub(crate) step: String,
    pub(crate) routing_key: String,
    /// The payload as JSON text: published as is, never parsed here.
    pub(crate) payload: String,
    pub(crate) exchange: Option<String>,
    pub(crate) headers: Json<serde_json::Map<String, serde_json::Value>>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) attempts: i32,
    /// Rows of one ordering key are published in seq order; a refused row holds
    /// back the rest of its key.
    pub(crate) ordering_key: String,
}

/// Ready rows after `after_seq` in write order, from `partitions`, while this
/// instance holds all of them, with rows of blocked keys held back, at most `limit`
/// rows and `max_bytes` bytes (a single larger row comes alone): the migrations'
/// `outbox_ready_batch` explains the rules, and why they live in a function. Fenced
/// by the run's token: nothing while another run of this instance id holds it.
const FETCH_READY: &str = "SELECT * FROM outbox_ready_batch($1, $2, $3, $4, $5, $6)";

/// How much of a batch may be taken at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchBound {
    pub(crate) rows: u32,
    pub(crate) bytes: u64,
}

pub(crate) async fn fetch_ready(
    pool: &PgPool,
    instance_id: &str,
    incarnation: Uuid,
    partitions: &[i16],
    after_seq: i64,
    bound: BatchBound,
) -> Result<Vec<OutboxRow>> {
    let rows = sqlx::query_as(FETCH_READY)
        .bind(instance_id)
        .bind(incarnation)
        .bind(partitions)
        .bind(after_seq)
        .bind(i32::try_from(bound.rows).unwrap_or(i32::MAX))
        .bind(i64::try_from(bound.bytes).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await?;
    Ok(rows)
}

/// Records rows the broker confirmed: deleted, or kept as `sent` for the retention.
pub(crate) async fn mark_sent(pool: &PgPool, ids: &[Uuid], keep: bool) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    if keep {
        sqlx::query("UPDATE outbox SET state = $2, sent_at = now() WHERE id = ANY($1)")
            .bind(ids)
            .bind(State::Sent.as_str())
            .execute(pool)
            .await?;
    } else {
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(ids)
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// A refused publish, and what to do about it.
pub(crate) struct Failure {
    pub(crate) id: Uuid,
    pub(crate) attempts: i32,
    pub(crate) error: String,
    /// `None` parks the row as dead; `Some` retries it after that many milliseconds.
    pub(crate) retry_after_ms: Option<i64>,
}

/// Records refused publishes in one statement: a retry time, or dead.
pub(crate) async fn record_failures(pool: &PgPool, failures: &[Failure]) -> Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = failures.iter().map(|f| f.id).collect();
    let attempts: Vec<i32> = failures.iter().map(|f| f.attempts).collect();
    let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
    let delays: Vec<Option<i64>> = failures.iter().map(|f| f.retry_after_ms).collect();
    sqlx::query(
        "UPDATE outbox o
         SET attempts = f.attempts,
             last_error = f.error,
             state = CASE WHEN f.delay_ms IS NULL THEN $5 ELSE $6 END,
             available_at = CASE WHEN f.delay_ms IS NULL THEN o.available_at
                                 ELSE now() + f.delay_ms * interval '1 millisecond' END
         FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::int8[]) AS f(id, attempts, error, delay_ms)
         WHERE o.id = f.id",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&errors)
    .bind(&delays)
    .bind(State::Dead.as_str())
    .bind(State::Retry.as_str())
    .execute(pool)
    .await?;
    Ok(())
}
