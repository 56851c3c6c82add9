//! What operators did, and why: one `txoutbox_audit` row per action taken from the
//! console or the command line (a dead letter sent back, a saga aborted or retried,
//! an outbox row retried), with the reason they gave.
//!
//! Written with the action's own statements where they are in the database (pass the
//! transaction), so that an action and its record commit together.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

use crate::error::{Error, Result};

/// An operator's action, as `txoutbox_audit.action` stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// A saga's abort was requested.
    SagaAbort,
    /// A failed saga's retry was requested.
    SagaRetry,
    /// A dead outbox row was given a fresh set of attempts.
    OutboxRetry,
    /// A consumer's dead letter was sent back to its queue.
    DeadLetterSendBack,
}

impl Action {
    /// The value stored in `txoutbox_audit.action`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::SagaAbort => "saga_abort",
            Action::SagaRetry => "saga_retry",
            Action::OutboxRetry => "outbox_retry",
            Action::DeadLetterSendBack => "dead_letter_send_back",
        }
    }
}

/// One recorded action.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
#[non_exhaustive]
pub struct AuditEntry {
    /// Its id, in the order actions were recorded.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// What ([`Action::as_str`]; text, so that entries written by a newer release read).
    pub action: String,
    /// What it acted on: a saga id, an outbox row id, a dead letter's id or a queue.
    pub target: String,
    /// The saga it concerned, when one is known.
    pub saga_id: Option<String>,
    /// Why, as the operator said.
    pub reason: String,
    /// Who: `console` or `cli`.
    pub actor: String,
}

/// Records `action` on `target`. The reason must say something: an empty one is
/// refused ([`Error::NoReason`]) before anything is written.
pub async fn record<'c, E: PgExecutor<'c>>(
    executor: E,
    action: Action,
    target: &str,
    saga_id: Option<&str>,
    reason: &str,
    actor: &str,
) -> Result<i64> {
    let reason = given(reason)?;
    let id = sqlx::query_scalar(
        "INSERT INTO txoutbox_audit (action, target, saga_id, reason, actor)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(action.as_str())
    .bind(target)
    .bind(saga_id)
    .bind(reason)
    .bind(actor)
    .fetch_one(executor)
    .await?;
    Ok(id)
}

/// Every action recorded for `saga_id`, oldest first.
pub async fn for_saga(pool: &PgPool, saga_id: &str) -> Result<Vec<AuditEntry>> {
    let entries = sqlx::query_as(
        "SELECT id, at, action, target, saga_id, reason, actor
         FROM txoutbox_audit WHERE saga_id = $1 ORDER BY id",
    )
    .bind(saga_id)
    .fetch_all(pool)
    .await?;
    Ok(entries)
}

/// `reason` without its surrounding blanks, unless nothing is left.
pub(crate) fn given(reason: &str) -> Result<&str> {
    match reason.trim() {
        "" => Err(Error::NoReason),
        reason => Ok(reason),
    }
}
