//! Operators' requests: a mark on the saga's row that the next orchestrator sweep
//! carries out, written only while the saga is in a state the request applies to.

use serde::Serialize;
use sqlx::PgPool;

use super::{AdminError, Result, saga_state};
use crate::state::SagaState;

/// What an operator asks an orchestrator to do to a saga (`saga_instance.operator_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OperatorRequest {
    /// Resume compensating a `failed` saga.
    Retry,
    /// Compensate a `pending` or `running` saga's completed steps, and stop.
    Abort,
}

impl OperatorRequest {
    /// The value stored in `saga_instance.operator_request`.
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorRequest::Retry => "retry",
            OperatorRequest::Abort => "abort",
        }
    }

    /// The request stored as `text`, if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        [OperatorRequest::Retry, OperatorRequest::Abort]
            .into_iter()
            .find(|request| request.as_str() == text)
    }

    /// The states a saga must be in for the request to apply.
    pub fn applies_in(self) -> &'static [SagaState] {
        match self {
            OperatorRequest::Retry => &[SagaState::Failed],
            OperatorRequest::Abort => &[SagaState::Pending, SagaState::Running],
        }
    }

    pub(super) fn applies_to(self) -> &'static str {
        match self {
            OperatorRequest::Retry => "only a failed saga can be retried",
            OperatorRequest::Abort => "only a running or pending saga can be aborted",
        }
    }
}

/// Asks the orchestrators to resume compensating `failed` saga `saga_id`: the next
/// sweep sends its compensation again, with a fresh set of attempts.
// A refused request is an answer the caller prints, not an incident to log.
#[tracing::instrument(skip(pool), err(level = "debug"))]
pub async fn request_retry(pool: &PgPool, saga_id: &str) -> Result<()> {
    request(pool, saga_id, OperatorRequest::Retry, "retry requested").await
}

/// Asks the orchestrators to abort `pending` or `running` saga `saga_id`: the next
/// sweep compensates its steps, last first. `reason` goes into the history.
#[tracing::instrument(skip(pool), err(level = "debug"))]
pub async fn request_abort(pool: &PgPool, saga_id: &str, reason: &str) -> Result<()> {
    let detail = format!("abort requested: {reason}");
    request(pool, saga_id, OperatorRequest::Abort, &detail).await
}

/// Marks the saga, if its state allows the request, and records the request in its
/// history, in one transaction. The `UPDATE`'s condition is checked under the row
/// lock, against the saga as an orchestrator that moved it concurrently left it.
async fn request(
    pool: &PgPool,
    saga_id: &str,
    request: OperatorRequest,
    detail: &str,
) -> Result<()> {
    let allowed: Vec<&str> = request.applies_in().iter().map(|s| s.as_str()).collect();
    let mut tx = pool.begin().await?;
    let marked: Option<String> = sqlx::query_scalar(
        "UPDATE saga_instance
         SET operator_request = $2, updated_at = now(), version = version + 1
         WHERE saga_id = $1 AND state = ANY($3)
         RETURNING state",
    )
    .bind(saga_id)
    .bind(request.as_str())
    .bind(&allowed)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(state) = marked else {
        // A statement of its own sees what the UPDATE saw: the latest committed row.
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM saga_instance WHERE saga_id = $1")
                .bind(saga_id)
                .fetch_optional(&mut *tx)
                .await?;
        return Err(match state {
            None => AdminError::NotFound(saga_id.to_owned()),
            Some(state) => AdminError::WrongState {
                saga_id: saga_id.to_owned(),
                state: saga_state("saga_instance.state", state)?,
                request,
            },
        });
    };
    sqlx::query(
        "INSERT INTO saga_event (saga_id, kind, from_state, detail) VALUES ($1, $2, $3, $4)",
    )
    .bind(saga_id)
    .bind(OPERATOR_KIND)
    .bind(state)
    .bind(detail)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The history's kind for what operators do, as the engine records it.
const OPERATOR_KIND: &str = "operator";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reads_back_from_its_stored_name() {
        for request in [OperatorRequest::Retry, OperatorRequest::Abort] {
            assert_eq!(OperatorRequest::parse(request.as_str()), Some(request));
            assert_eq!(
                serde_json::to_value(request).ok(),
                Some(serde_json::json!(request.as_str()))
            );
        }
        assert_eq!(OperatorRequest::parse("resume"), None);
    }
}
