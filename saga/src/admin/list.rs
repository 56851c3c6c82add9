//! Listing sagas: a summary of each, filtered by state, by an overdue deadline, or
//! by waiting for an event.

use serde::Serialize;
use sqlx::PgPool;
use sqlx::types::chrono::{DateTime, Utc};

use super::{OperatorRequest, Result, name, state_and_request, terminal_states};
use crate::state::SagaState;

/// Which sagas [`list`] returns.
#[derive(Debug, Clone)]
pub struct ListFilter {
    /// Only sagas in this state.
    pub state: Option<SagaState>,
    /// Only unfinished sagas whose deadline has passed.
    pub overdue: bool,
    /// Only sagas at a wait step, waiting for an event.
    pub waiting: bool,
    /// At most this many.
    pub limit: i64,
}

impl Default for ListFilter {
    /// Every saga, at most 100.
    fn default() -> Self {
        Self {
            state: None,
            overdue: false,
            waiting: false,
            limit: 100,
        }
    }
}

/// One saga in a [`list`].
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SagaSummary {
    /// The saga's id (the correlation id of its messages).
    pub saga_id: String,
    /// Its definition's name.
    pub saga_type: String,
    /// Its definition's version.
    pub definition_version: i32,
    /// Where it is.
    #[serde(serialize_with = "name")]
    pub state: SagaState,
    /// The step in hand.
    pub current_step: i32,
    /// Tries of the current compensation.
    pub attempts: i32,
    /// When the command in hand is overdue; `None` once finished.
    pub deadline_at: Option<DateTime<Utc>>,
    /// Unfinished and past its deadline: no orchestrator has swept it yet.
    pub overdue: bool,
    /// The event it waits for, at a wait step.
    pub waiting_for: Option<String>,
    /// Why it last failed, if it did.
    pub last_error: Option<String>,
    /// A request not yet carried out.
    pub operator_request: Option<OperatorRequest>,
    /// When it started.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// Sagas matching `filter`, most recently changed first.
pub async fn list(pool: &PgPool, filter: ListFilter) -> Result<Vec<SagaSummary>> {
    let rows: Vec<SummaryRow> = sqlx::query_as(
        "SELECT saga_id, saga_type, definition_version, state, current_step, attempts,
                deadline_at, last_error, operator_request, created_at, updated_at, waiting_for,
                coalesce(deadline_at < now() AND NOT (state = ANY($1)), false) AS overdue
         FROM saga_instance
         WHERE ($2::text IS NULL OR state = $2)
           AND (NOT $3 OR (deadline_at < now() AND NOT (state = ANY($1))))
           AND (NOT $5 OR waiting_for IS NOT NULL)
         ORDER BY updated_at DESC, saga_id
         LIMIT $4",
    )
    .bind(terminal_states())
    .bind(filter.state.map(SagaState::as_str))
    .bind(filter.overdue)
    .bind(filter.limit)
    .bind(filter.waiting)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(SummaryRow::into_summary).collect()
}

#[derive(sqlx::FromRow)]
struct SummaryRow {
    saga_id: String,
    saga_type: String,
    definition_version: i32,
    state: String,
    current_step: i32,
    attempts: i32,
    deadline_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    operator_request: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    waiting_for: Option<String>,
    overdue: bool,
}

impl SummaryRow {
    fn into_summary(self) -> Result<SagaSummary> {
        let (state, operator_request) = state_and_request(self.state, self.operator_request)?;
        Ok(SagaSummary {
            state,
            operator_request,
            saga_id: self.saga_id,
            saga_type: self.saga_type,
            definition_version: self.definition_version,
            current_step: self.current_step,
            attempts: self.attempts,
            deadline_at: self.deadline_at,
            overdue: self.overdue,
            waiting_for: self.waiting_for,
            last_error: self.last_error,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}
