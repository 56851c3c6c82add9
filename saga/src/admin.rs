//! What operators ask of sagas: list them, show one whole, count them, and request a
//! retry or an abort that the next orchestrator carries out.
//!
//! An operator never moves a saga itself: only the orchestrators hold the definitions
//! that commands are built from. A request is a mark on the saga's row
//! (`operator_request`) with its deadline set to now, written in one statement whose
//! condition is the state the request applies to, so it is safe while orchestrators
//! run. The next orchestrator sweep ([`sweep_due`](crate::sweep_due)) takes the mark
//! and applies [`Event::Abort`](crate::Event::Abort) or
//! [`Event::Retry`](crate::Event::Retry) under the row lock; the history says what
//! came of it.
//!
//! Every read here is of this database: the outbox rows and inbox records a view
//! shows are the orchestrator's own, not the participants'.

use serde::{Serialize, Serializer};
use sqlx::PgPool;
use sqlx::types::Json;
use sqlx::types::chrono::{DateTime, Utc};
use thiserror::Error;
use uuid::Uuid;

use crate::state::SagaState;
use crate::transition::Phase;

/// An error of an operator's command.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AdminError {
    /// PostgreSQL failed or refused a statement.
    #[error(transparent)]
    Database(#[from] sqlx::Error),

    /// The outbox rows could not be read.
    #[error(transparent)]
    Outbox(#[from] outbox::Error),

    /// No saga has this id.
    #[error("no saga with id {0}")]
    NotFound(String),

    /// The saga is in a state the request does not apply to; nothing was requested.
    #[error("saga {saga_id} is {state}; {}", request.applies_to())]
    WrongState {
        /// The saga.
        saga_id: String,
        /// Its state when the request was made.
        state: SagaState,
        /// What was requested.
        request: OperatorRequest,
    },

    /// A column holds a value this version does not know (written by a newer one).
    #[error("{column} holds {value:?}, which this version does not know")]
    UnknownValue {
        /// The table and column.
        column: &'static str,
        /// What it holds.
        value: String,
    },
}

impl AdminError {
    /// True when trying again can help: the database connection failed, not the request.
    pub fn is_transient(&self) -> bool {
        match self {
            AdminError::Database(error) => outbox::postgres::is_transient(error),
            AdminError::Outbox(error) => error.is_transient(),
            _ => false,
        }
    }
}

/// Result of operators' commands.
pub type Result<T, E = AdminError> = std::result::Result<T, E>;

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

    fn applies_to(self) -> &'static str {
        match self {
            OperatorRequest::Retry => "only a failed saga can be retried",
            OperatorRequest::Abort => "only a running or pending saga can be aborted",
        }
    }
}

/// Which sagas [`list`] returns.
#[derive(Debug, Clone)]
pub struct ListFilter {
    /// Only sagas in this state.
    pub state: Option<SagaState>,
    /// Only unfinished sagas whose deadline has passed.
    pub overdue: bool,
    /// At most this many.
    pub limit: i64,
}

impl Default for ListFilter {
    /// Every saga, at most 100.
    fn default() -> Self {
        Self {
            state: None,
            overdue: false,
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
                deadline_at, last_error, operator_request, created_at, updated_at,
                coalesce(deadline_at < now() AND NOT (state = ANY($1)), false) AS overdue
         FROM saga_instance
         WHERE ($2::text IS NULL OR state = $2)
           AND (NOT $3 OR (deadline_at < now() AND NOT (state = ANY($1))))
         ORDER BY updated_at DESC, saga_id
         LIMIT $4",
    )
    .bind(terminal_states())
    .bind(filter.state.map(SagaState::as_str))
    .bind(filter.overdue)
    .bind(filter.limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(SummaryRow::into_summary).collect()
}

/// Everything this database knows of one saga: [`show`] answers "where is it?".
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SagaView {
    /// The saga's row.
    pub instance: SagaInstance,
    /// Its history, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Its commands in this database's outbox, in write order. Sent rows are there
    /// only while the relay keeps them (`--retention`).
    pub outbox: Vec<OutboxRow>,
    /// Its messages this database's inbox took effect on (the replies, for an
    /// orchestrator), oldest first.
    pub inbox: Vec<InboxRecord>,
}

/// A saga's row: every column of `saga_instance`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SagaInstance {
    /// The saga's id.
    pub saga_id: String,
    /// Its definition's name.
    pub saga_type: String,
    /// The definition's version it started with, and finishes on.
    pub definition_version: i32,
    /// Where it is.
    #[serde(serialize_with = "name")]
    pub state: SagaState,
    /// The step in hand.
    pub current_step: i32,
    /// Tries of the current compensation.
    pub attempts: i32,
    /// Incremented by every change.
    pub version: i64,
    /// When the command in hand is overdue; `None` once finished.
    pub deadline_at: Option<DateTime<Utc>>,
    /// The saga's data, with its actions' results merged in.
    pub data: serde_json::Value,
    /// Why it last failed, if it did.
    pub last_error: Option<String>,
    /// A request not yet carried out.
    pub operator_request: Option<OperatorRequest>,
    /// When it started.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it reached a terminal state.
    pub finished_at: Option<DateTime<Utc>>,
}

/// One row of a saga's history (`saga_event`).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct HistoryEntry {
    /// Position in the history.
    pub id: i64,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// `started`, `command_sent`, `reply`, `timeout`, `ignored`, `operator`,
    /// `definition_missing`.
    pub kind: String,
    /// The step it concerns.
    pub step: Option<i32>,
    /// The step's action or its compensation.
    #[serde(serialize_with = "optional_name")]
    pub phase: Option<Phase>,
    /// The state before.
    #[serde(serialize_with = "optional_name")]
    pub from_state: Option<SagaState>,
    /// The state after, when the saga moved.
    #[serde(serialize_with = "optional_name")]
    pub to_state: Option<SagaState>,
    /// The command sent, or the reply taken.
    pub message_id: Option<String>,
    /// What else there is to say.
    pub detail: Option<String>,
}

/// One of a saga's outbox rows.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct OutboxRow {
    /// Message id.
    pub id: Uuid,
    /// `{command}#{token}` for a command.
    pub step: String,
    /// The command's name.
    pub routing_key: String,
    /// Where the row is in its life.
    #[serde(serialize_with = "name")]
    pub state: outbox::State,
    /// Failed publish attempts.
    pub attempts: i32,
    /// Why the last one failed.
    pub last_error: Option<String>,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// When the broker confirmed it (kept sent rows only).
    pub sent_at: Option<DateTime<Utc>>,
}

/// One of a saga's inbox records.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
#[non_exhaustive]
pub struct InboxRecord {
    /// Who took the message.
    pub consumer: String,
    /// The message's step.
    pub step: String,
    /// The delivery that took effect.
    pub message_id: Option<String>,
    /// When it took effect.
    pub processed_at: DateTime<Utc>,
    /// How often it came back afterwards.
    pub duplicates: i32,
    /// When it last came back.
    pub last_duplicate_at: Option<DateTime<Utc>>,
}

/// Saga `saga_id` whole, or `None` if there is none. Read in one snapshot: the row,
/// its history and its messages agree.
pub async fn show(pool: &PgPool, saga_id: &str) -> Result<Option<SagaView>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let row: Option<InstanceRow> = sqlx::query_as(
        "SELECT saga_id, saga_type, definition_version, state, current_step, attempts, version,
                deadline_at, data, last_error, operator_request, created_at, updated_at, finished_at
         FROM saga_instance WHERE saga_id = $1",
    )
    .bind(saga_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let history: Vec<HistoryRow> = sqlx::query_as(
        "SELECT id, occurred_at, kind, step, phase, from_state, to_state, message_id, detail
         FROM saga_event WHERE saga_id = $1 ORDER BY id",
    )
    .bind(saga_id)
    .fetch_all(&mut *tx)
    .await?;
    let outbox = outbox::messages_for_saga(&mut *tx, saga_id)
        .await?
        .into_iter()
        .map(|m| OutboxRow {
            id: m.id,
            step: m.step,
            routing_key: m.routing_key,
            state: m.state,
            attempts: m.attempts,
            last_error: m.last_error,
            created_at: m.created_at,
            sent_at: m.sent_at,
        })
        .collect();
    let inbox = sqlx::query_as(
        "SELECT consumer, step, message_id, processed_at, duplicates, last_duplicate_at
         FROM inbox WHERE saga_id = $1 ORDER BY processed_at, consumer, step",
    )
    .bind(saga_id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(SagaView {
        instance: row.into_instance()?,
        history: history
            .into_iter()
            .map(HistoryRow::into_entry)
            .collect::<Result<_>>()?,
        outbox,
        inbox,
    }))
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
}

/// Counts sagas by state, the age of the oldest unfinished one, and the overdue ones.
pub async fn stats(pool: &PgPool) -> Result<SagaStats> {
    let counted: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM saga_instance GROUP BY state")
            .fetch_all(pool)
            .await?;
    let (oldest, overdue): (Option<f64>, i64) = sqlx::query_as(
        "SELECT extract(epoch FROM now() - min(created_at))::float8,
                count(*) FILTER (WHERE deadline_at < now())
         FROM saga_instance WHERE NOT (state = ANY($1))",
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
    Ok(SagaStats {
        by_state,
        oldest_active_age_seconds: oldest.unwrap_or(0.0),
        overdue,
    })
}

/// The states nothing more happens in on its own, for `state = ANY($n)`.
fn terminal_states() -> Vec<&'static str> {
    SagaState::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(SagaState::as_str)
        .collect()
}

fn saga_state(column: &'static str, value: String) -> Result<SagaState> {
    SagaState::parse(&value).ok_or(AdminError::UnknownValue { column, value })
}

fn optional<T>(
    column: &'static str,
    value: Option<String>,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>> {
    value
        .map(|value| parse(&value).ok_or(AdminError::UnknownValue { column, value }))
        .transpose()
}

fn phase(text: &str) -> Option<Phase> {
    [Phase::Action, Phase::Compensation]
        .into_iter()
        .find(|phase| phase.as_str() == text)
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
    overdue: bool,
}

impl SummaryRow {
    fn into_summary(self) -> Result<SagaSummary> {
        Ok(SagaSummary {
            state: saga_state("saga_instance.state", self.state)?,
            operator_request: optional(
                "saga_instance.operator_request",
                self.operator_request,
                OperatorRequest::parse,
            )?,
            saga_id: self.saga_id,
            saga_type: self.saga_type,
            definition_version: self.definition_version,
            current_step: self.current_step,
            attempts: self.attempts,
            deadline_at: self.deadline_at,
            overdue: self.overdue,
            last_error: self.last_error,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct InstanceRow {
    saga_id: String,
    saga_type: String,
    definition_version: i32,
    state: String,
    current_step: i32,
    attempts: i32,
    version: i64,
    deadline_at: Option<DateTime<Utc>>,
    data: Json<serde_json::Value>,
    last_error: Option<String>,
    operator_request: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl InstanceRow {
    fn into_instance(self) -> Result<SagaInstance> {
        Ok(SagaInstance {
            state: saga_state("saga_instance.state", self.state)?,
            operator_request: optional(
                "saga_instance.operator_request",
                self.operator_request,
                OperatorRequest::parse,
            )?,
            saga_id: self.saga_id,
            saga_type: self.saga_type,
            definition_version: self.definition_version,
            current_step: self.current_step,
            attempts: self.attempts,
            version: self.version,
            deadline_at: self.deadline_at,
            data: self.data.0,
            last_error: self.last_error,
            created_at: self.created_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct HistoryRow {
    id: i64,
    occurred_at: DateTime<Utc>,
    kind: String,
    step: Option<i32>,
    phase: Option<String>,
    from_state: Option<String>,
    to_state: Option<String>,
    message_id: Option<String>,
    detail: Option<String>,
}

impl HistoryRow {
    fn into_entry(self) -> Result<HistoryEntry> {
        Ok(HistoryEntry {
            phase: optional("saga_event.phase", self.phase, phase)?,
            from_state: optional("saga_event.from_state", self.from_state, SagaState::parse)?,
            to_state: optional("saga_event.to_state", self.to_state, SagaState::parse)?,
            id: self.id,
            occurred_at: self.occurred_at,
            kind: self.kind,
            step: self.step,
            message_id: self.message_id,
            detail: self.detail,
        })
    }
}

/// Serializes a state (or a phase) as its stored name.
fn name<T: std::fmt::Display, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn optional_name<T: Named, S: Serializer>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.serialize_some(value.stored_name()),
        None => serializer.serialize_none(),
    }
}

/// `{"pending": 0, "running": 2, ...}`.
fn counts<S: Serializer>(counts: &[(SagaState, i64)], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(counts.iter().map(|(state, count)| (state.as_str(), count)))
}

trait Named {
    fn stored_name(&self) -> &'static str;
}

impl Named for SagaState {
    fn stored_name(&self) -> &'static str {
        self.as_str()
    }
}

impl Named for Phase {
    fn stored_name(&self) -> &'static str {
        self.as_str()
    }
}

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

    #[test]
    fn a_wrong_state_names_the_state_and_what_would_apply() {
        let error = AdminError::WrongState {
            saga_id: "order-7".into(),
            state: SagaState::Completed,
            request: OperatorRequest::Abort,
        };
        assert_eq!(
            error.to_string(),
            "saga order-7 is completed; only a running or pending saga can be aborted"
        );
    }

    #[test]
    fn stats_serialize_counts_by_state_name() {
        let stats = SagaStats {
            by_state: vec![(SagaState::Running, 2), (SagaState::Failed, 1)],
            oldest_active_age_seconds: 1.5,
            overdue: 0,
        };
        assert_eq!(
            serde_json::to_value(&stats).ok(),
            Some(serde_json::json!({
                "by_state": {"running": 2, "failed": 1},
                "oldest_active_age_seconds": 1.5,
                "overdue": 0,
            }))
        );
    }
}
