//! The home page's figures for one service: what is wrong now.

use serde::Serialize;
use sqlx::PgPool;
use txoutbox_saga::admin::{ListFilter, SagaStats, SagaSummary};

use super::missing::{admin_or_none, is_missing_table, or_none};
use crate::console::services::{Service, unreadable};

/// The home page lists at most this many overdue sagas per service.
const OVERDUE_SHOWN: i64 = 20;

/// The relay's side of a service: its outbox.
#[derive(Debug, Default, Serialize, sqlx::FromRow)]
pub(crate) struct OutboxFigures {
    /// Rows waiting to be published (pending or retrying).
    pub(crate) backlog: i64,
    /// How long the oldest of them has waited.
    pub(crate) oldest_pending_age_seconds: f64,
    /// Rows parked after their last attempt.
    pub(crate) parked: i64,
}

/// Dead letters not sent back yet, in one queue.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub(crate) struct QueueDeadLetters {
    pub(crate) queue: String,
    pub(crate) count: i64,
}

/// One service on the home page.
#[derive(Debug, Serialize)]
pub(crate) struct ServiceSummary {
    pub(crate) service: String,
    pub(crate) error: Option<String>,
    pub(crate) outbox: Option<OutboxFigures>,
    pub(crate) dead_letters: Vec<QueueDeadLetters>,
    /// Present where the service orchestrates sagas.
    pub(crate) sagas: Option<SagaStats>,
    pub(crate) overdue: Vec<SagaSummary>,
}

/// Reads one service; a database that cannot be read is reported, not fatal.
pub(crate) async fn summary(service: &Service) -> ServiceSummary {
    let pool = &service.pool;
    let read =
        async { tokio::try_join!(outbox(pool), dead_letters(pool), sagas(pool), overdue(pool)) };
    match read.await {
        Ok((outbox, dead_letters, sagas, overdue)) => ServiceSummary {
            service: service.name.clone(),
            error: None,
            outbox,
            dead_letters,
            sagas,
            overdue,
        },
        Err(error) => ServiceSummary {
            service: service.name.clone(),
            error: Some(unreadable(&error)),
            outbox: None,
            dead_letters: Vec::new(),
            sagas: None,
            overdue: Vec::new(),
        },
    }
}

/// Each figure from its own partial index: `outbox_unsent_by_seq` for the backlog,
/// `outbox_blocking_by_key` for parked rows; sent rows are never read.
async fn outbox(pool: &PgPool) -> sqlx::Result<Option<OutboxFigures>> {
    let figures = sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox WHERE state IN ('pending', 'retry')) AS backlog,
                coalesce(extract(epoch FROM now() - (
                    SELECT min(CASE WHEN attempts = 0 THEN greatest(available_at, created_at) ELSE created_at END)
                    FROM outbox WHERE state IN ('pending', 'retry') AND (attempts > 0 OR available_at <= now())
                ))::float8, 0) AS oldest_pending_age_seconds,
                (SELECT count(*) FROM outbox WHERE state = 'dead') AS parked",
    )
    .fetch_one(pool)
    .await;
    match figures {
        Ok(figures) => Ok(Some(figures)),
        Err(error) if is_missing_table(&error) => Ok(None),
        Err(error) => Err(error),
    }
}

async fn dead_letters(pool: &PgPool) -> sqlx::Result<Vec<QueueDeadLetters>> {
    or_none(
        sqlx::query_as(
            "SELECT queue, count(*) AS count FROM inbox_dead_letter WHERE state = 'dead'
             GROUP BY queue ORDER BY queue",
        )
        .fetch_all(pool)
        .await,
    )
}

async fn sagas(pool: &PgPool) -> sqlx::Result<Option<SagaStats>> {
    admin_or_none(txoutbox_saga::admin::stats(pool).await.map(Some))
}

async fn overdue(pool: &PgPool) -> sqlx::Result<Vec<SagaSummary>> {
    let filter = ListFilter {
        state: None,
        overdue: true,
        waiting: false,
        limit: OVERDUE_SHOWN,
    };
    admin_or_none(txoutbox_saga::admin::list(pool, filter).await)
}
