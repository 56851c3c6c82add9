//! What one service's database holds about one saga, read as plain rows: its outbox
//! messages, the messages its inbox took, its consumers' dead letters and the
//! operators' actions on it. The orchestrator's own view comes from
//! `txoutbox_saga::admin::show`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::missing::or_none;

/// A saga page lists at most this many records of each kind per service: the latest.
pub(crate) const PER_KIND_LIMIT: i64 = 2_000;

/// A message the service wrote to its outbox.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub(crate) struct OutboxRecord {
    pub(crate) id: uuid::Uuid,
    pub(crate) step: String,
    pub(crate) routing_key: String,
    pub(crate) state: String,
    pub(crate) attempts: i32,
    pub(crate) last_error: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) available_at: DateTime<Utc>,
    pub(crate) sent_at: Option<DateTime<Utc>>,
}

/// A message the service's inbox took effect on, with the duplicates it turned away.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub(crate) struct InboxRecord {
    pub(crate) consumer: String,
    pub(crate) step: String,
    pub(crate) message_id: Option<String>,
    pub(crate) processed_at: DateTime<Utc>,
    pub(crate) duplicates: i32,
    pub(crate) last_duplicate_at: Option<DateTime<Utc>>,
}

/// A message one of the service's consumers gave up on.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub(crate) struct DeadLetterRecord {
    pub(crate) id: i64,
    pub(crate) consumer: String,
    pub(crate) queue: String,
    pub(crate) message_id: Option<String>,
    pub(crate) step: Option<String>,
    pub(crate) reason: String,
    pub(crate) attempts: i32,
    pub(crate) last_error: Option<String>,
    pub(crate) dead_at: DateTime<Utc>,
    pub(crate) state: String,
    pub(crate) sent_back_at: Option<DateTime<Utc>>,
}

/// An operator's action on the saga, with its reason.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub(crate) struct AuditRecord {
    pub(crate) at: DateTime<Utc>,
    pub(crate) action: String,
    pub(crate) target: String,
    pub(crate) reason: String,
    pub(crate) actor: String,
}

/// The saga's latest outbox rows, newest first (`outbox_by_saga`).
pub(crate) async fn outbox(pool: &PgPool, saga_id: &str) -> sqlx::Result<Vec<OutboxRecord>> {
    or_none(
        sqlx::query_as(
            "SELECT id, step, routing_key, state, attempts, last_error, created_at, available_at, sent_at
             FROM outbox WHERE saga_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(saga_id)
        .bind(PER_KIND_LIMIT)
        .fetch_all(pool)
        .await,
    )
}

/// The saga's latest inbox records, newest first (`inbox_by_saga`).
pub(crate) async fn inbox(pool: &PgPool, saga_id: &str) -> sqlx::Result<Vec<InboxRecord>> {
    or_none(
        sqlx::query_as(
            "SELECT consumer, step, message_id, processed_at, duplicates, last_duplicate_at
             FROM inbox WHERE saga_id = $1 ORDER BY processed_at DESC LIMIT $2",
        )
        .bind(saga_id)
        .bind(PER_KIND_LIMIT)
        .fetch_all(pool)
        .await,
    )
}

/// The saga's latest dead letters, newest first (`inbox_dead_letter_by_saga`).
pub(crate) async fn dead_letters(
    pool: &PgPool,
    saga_id: &str,
) -> sqlx::Result<Vec<DeadLetterRecord>> {
    or_none(
        sqlx::query_as(
            "SELECT id, consumer, queue, message_id, step, reason, attempts, last_error, dead_at,
                    state, sent_back_at
             FROM inbox_dead_letter WHERE saga_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(saga_id)
        .bind(PER_KIND_LIMIT)
        .fetch_all(pool)
        .await,
    )
}

/// The latest operators' actions on the saga, newest first (`txoutbox_audit_by_saga`).
pub(crate) async fn audit(pool: &PgPool, saga_id: &str) -> sqlx::Result<Vec<AuditRecord>> {
    or_none(
        sqlx::query_as(
            "SELECT at, action, target, reason, actor
             FROM txoutbox_audit WHERE saga_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(saga_id)
        .bind(PER_KIND_LIMIT)
        .fetch_all(pool)
        .await,
    )
}
