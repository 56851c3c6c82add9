//! One saga whole: its row, its history, its messages in this database's outbox and
//! inbox, and the events delivered to it, read in one snapshot.

use serde::{Serialize, Serializer};
use sqlx::PgPool;
use sqlx::types::Json;
use sqlx::types::chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{OperatorRequest, Result, name, optional, state_and_request};
use crate::state::SagaState;
use crate::transition::Phase;

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
    /// The events delivered to it, oldest first, with what became of each.
    pub signals: Vec<SignalRecord>,
    /// While a parallel group runs: each of its steps, and whether it answered.
    pub branches: Vec<Branch>,
}

/// An event delivered to a saga (`saga_signal`).
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
#[non_exhaustive]
pub struct SignalRecord {
    /// The event's name.
    pub name: String,
    /// Its payload.
    pub payload: Json<serde_json::Value>,
    /// The message that carried it, when it came through the orchestrator's inbox.
    pub message_id: Option<String>,
    /// When it was recorded.
    pub received_at: DateTime<Utc>,
    /// When a step took it or it was refused; `None` while it waits for its step.
    pub settled_at: Option<DateTime<Utc>>,
    /// `taken by step N`, or why not.
    pub outcome: Option<String>,
}

/// One step of a running parallel group.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Branch {
    /// The step.
    pub step: i32,
    /// Its action's name.
    pub command: String,
    /// Whether its action answered with success.
    pub answered: bool,
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
    /// The event it waits for, at a wait step.
    pub waiting_for: Option<String>,
    /// When the stage in hand (a step, a parallel group, a wait) started.
    pub stage_started_at: Option<DateTime<Utc>>,
    /// The final state whose end hook failed and is owed: tried again at
    /// `deadline_at`, or, once `failed`, by `saga retry`.
    #[serde(serialize_with = "optional_name")]
    pub ending: Option<SagaState>,
    /// Failed tries of the owed end hook.
    pub end_attempts: i32,
}

/// One row of a saga's history (`saga_event`).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct HistoryEntry {
    /// Position in the history.
    pub id: i64,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// `started`, `command_sent`, `reply`, `signal`, `timeout`, `operator`,
    /// `end_hook`, `definition_missing`, `unmovable`.
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
    pub state: txoutbox::State,
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
                deadline_at, data, last_error, operator_request, created_at, updated_at, finished_at,
                waiting_for, stage_started_at, ending, end_attempts, branches_done
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
    let outbox = txoutbox::messages_for_saga(&mut *tx, saga_id)
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
    let signals = sqlx::query_as(
        "SELECT name, payload, message_id, received_at, settled_at, outcome
         FROM saga_signal WHERE saga_id = $1 ORDER BY id",
    )
    .bind(saga_id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let history = history
        .into_iter()
        .map(HistoryRow::into_entry)
        .collect::<Result<Vec<_>>>()?;
    let branches = branches(&row, &history);
    Ok(Some(SagaView {
        instance: row.into_instance()?,
        history,
        outbox,
        inbox,
        signals,
        branches,
    }))
}

/// The steps of a running parallel group, from the actions its stage sent together:
/// a group is a stage that sent more than one action at once.
fn branches(row: &InstanceRow, history: &[HistoryEntry]) -> Vec<Branch> {
    if row.state != SagaState::Running.as_str() {
        return Vec::new();
    }
    let started = row.stage_started_at;
    let sent: Vec<&HistoryEntry> = history
        .iter()
        .filter(|e| e.kind == "command_sent" && e.phase == Some(Phase::Action))
        .filter(|e| started.is_some_and(|at| e.occurred_at >= at))
        .filter(|e| e.step.is_some_and(|s| s >= row.current_step))
        .collect();
    if sent.len() < 2 {
        return Vec::new();
    }
    sent.into_iter()
        .filter_map(|e| {
            let step = e.step?;
            let bit = u32::try_from(step - row.current_step)
                .ok()
                .filter(|b| *b < 64)?;
            let command = e.detail.as_deref().unwrap_or("");
            let command = command.split(" (attempt").next().unwrap_or(command);
            Some(Branch {
                step,
                command: command.to_owned(),
                answered: row.branches_done as u64 & (1 << bit) != 0,
            })
        })
        .collect()
}

fn phase(text: &str) -> Option<Phase> {
    [Phase::Action, Phase::Compensation, Phase::Cancel]
        .into_iter()
        .find(|phase| phase.as_str() == text)
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
    waiting_for: Option<String>,
    stage_started_at: Option<DateTime<Utc>>,
    ending: Option<String>,
    end_attempts: i32,
    branches_done: i64,
}

impl InstanceRow {
    fn into_instance(self) -> Result<SagaInstance> {
        let (state, operator_request) = state_and_request(self.state, self.operator_request)?;
        Ok(SagaInstance {
            state,
            operator_request,
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
            ending: optional("saga_instance.ending", self.ending, SagaState::parse)?,
            waiting_for: self.waiting_for,
            stage_started_at: self.stage_started_at,
            end_attempts: self.end_attempts,
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

fn optional_name<T: Named, S: Serializer>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.serialize_some(value.stored_name()),
        None => serializer.serialize_none(),
    }
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
