//! The SQL of a move: the saga row locked and read, written as started or moved, its
//! commands enqueued with their history lines, an end owed or reached.

use sqlx::PgConnection;
use sqlx::types::Json;

use crate::command;
use crate::error::Result;
use crate::mover::{AfterHookFailure, Move, Record};
use crate::registry::Definition;
use crate::state::SagaState;
use crate::transition::{Deadline, Position};

/// A saga row, locked until the transaction ends.
#[derive(sqlx::FromRow)]
pub(crate) struct Locked {
    pub(crate) saga_type: String,
    pub(crate) definition_version: i32,
    state: String,
    current_step: i32,
    attempts: i32,
    branches_done: i64,
    branches_declined: i64,
    pub(crate) data: Json<serde_json::Value>,
    pub(crate) last_error: Option<String>,
    ending: Option<String>,
    end_attempts: i32,
    /// Why the saga ends as it does: given to its owed end hook on every try.
    pub(crate) end_reason: Option<String>,
}

impl Locked {
    /// The stored state; a value this version does not know is treated as `failed`,
    /// which only an operator moves.
    pub(crate) fn state(&self) -> SagaState {
        SagaState::parse(&self.state).unwrap_or(SagaState::Failed)
    }

    /// The final state whose end hook the saga owes, if it does.
    pub(crate) fn ending(&self) -> Option<SagaState> {
        self.ending.as_deref().and_then(SagaState::parse)
    }

    pub(crate) fn end_attempts(&self) -> u32 {
        u32::try_from(self.end_attempts).unwrap_or(0)
    }

    pub(crate) fn record(&self) -> Record {
        Record {
            position: Position {
                state: self.state(),
                step: usize::try_from(self.current_step).unwrap_or(0),
                attempts: u32::try_from(self.attempts).unwrap_or(0),
                done: self.branches_done as u64,
                declined: self.branches_declined as u64,
            },
            data: self.data.0.clone(),
            ending: self.ending(),
            end_attempts: self.end_attempts(),
        }
    }
}

/// Locks saga `saga_id`'s row until the caller's transaction ends.
pub(crate) async fn lock(conn: &mut PgConnection, saga_id: &str) -> Result<Locked> {
    let locked: Option<Locked> = sqlx::query_as(
        "SELECT saga_type, definition_version, state, current_step, attempts, branches_done,
                branches_declined, data, last_error, ending, end_attempts, end_reason
         FROM saga_instance WHERE saga_id = $1 FOR UPDATE",
    )
    .bind(saga_id)
    .fetch_optional(&mut *conn)
    .await?;
    locked.ok_or_else(|| crate::Error::NotFound(saga_id.to_owned()))
}

/// How a deadline is written: `(stage starts now, 'stage' | 'now' | 'none', interval)`.
fn deadline_parts(
    deadline: Deadline,
) -> (
    bool,
    &'static str,
    Option<sqlx::postgres::types::PgInterval>,
) {
    let interval = |d| Some(txoutbox::postgres::interval(d));
    match deadline {
        Deadline::None => (false, "none", None),
        Deadline::StageStarts(d) => (true, "stage", interval(d)),
        Deadline::SinceStageStart(d) => (false, "stage", interval(d)),
        Deadline::FromNow(d) => (false, "now", interval(d)),
    }
}

fn int(value: usize) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// When a moved saga is due, and when its stage started, in milliseconds since the
/// epoch: what its commands' deadline headers are made of.
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub(crate) struct Due {
    pub(crate) deadline_ms: Option<i64>,
    pub(crate) stage_started_ms: Option<i64>,
}

/// Writes a started saga in its first position; `None` if the id exists already.
pub(crate) async fn insert_started(
    conn: &mut PgConnection,
    definition: &dyn Definition,
    saga_id: &str,
    mv: &Move,
) -> Result<Option<Due>> {
    let (_, _, interval) = deadline_parts(mv.deadline);
    let due: Option<Due> = sqlx::query_as(
        "INSERT INTO saga_instance
             (saga_id, saga_type, definition_version, state, current_step, attempts,
              branches_done, deadline_at, stage_started_at, data, waiting_for)
         VALUES ($1, $2, $3, $4, $5, 0, 0, now() + $6, now(), $7, $8)
         ON CONFLICT (saga_id) DO NOTHING
         RETURNING (extract(epoch FROM deadline_at) * 1000)::bigint AS deadline_ms,
                   (extract(epoch FROM stage_started_at) * 1000)::bigint AS stage_started_ms",
    )
    .bind(saga_id)
    .bind(definition.name())
    .bind(definition.version())
    .bind(mv.to.state.as_str())
    .bind(int(mv.to.step))
    .bind(interval)
    .bind(Json(&mv.data))
    .bind(&mv.waiting_for)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(due)
}

/// Writes a saga's new position, data and deadline; returns when it is due and when
/// its stage started.
pub(crate) async fn update_moved(conn: &mut PgConnection, saga_id: &str, mv: &Move) -> Result<Due> {
    let (new_stage, kind, interval) = deadline_parts(mv.deadline);
    let due: Due = sqlx::query_as(
        "UPDATE saga_instance
         SET state = $2, current_step = $3, attempts = $4, branches_done = $5,
             branches_declined = $6, version = version + 1,
             stage_started_at = CASE WHEN $7 THEN now() ELSE stage_started_at END,
             deadline_at = CASE $8
                 WHEN 'stage' THEN CASE WHEN $7 THEN now() ELSE stage_started_at END + $9
                 WHEN 'now' THEN now() + $9
             END,
             data = $10, waiting_for = $11, last_error = coalesce($12, last_error),
             updated_at = now(), finished_at = CASE WHEN $13 THEN now() END,
             ending = NULL, end_attempts = 0, end_reason = NULL
         WHERE saga_id = $1
         RETURNING (extract(epoch FROM deadline_at) * 1000)::bigint AS deadline_ms,
                   (extract(epoch FROM stage_started_at) * 1000)::bigint AS stage_started_ms",
    )
    .bind(saga_id)
    .bind(mv.to.state.as_str())
    .bind(int(mv.to.step))
    .bind(i32::try_from(mv.to.attempts).unwrap_or(i32::MAX))
    .bind(mv.to.done as i64)
    .bind(mv.to.declined as i64)
    .bind(new_stage)
    .bind(kind)
    .bind(interval)
    .bind(Json(&mv.data))
    .bind(&mv.waiting_for)
    .bind(&mv.error)
    .bind(mv.to.state.is_terminal())
    .fetch_one(&mut *conn)
    .await?;
    Ok(due)
}

/// Enqueues a move's commands (one statement) and appends its history lines, the
/// event's first (one statement).
pub(crate) async fn send(
    conn: &mut PgConnection,
    definition: &dyn Definition,
    saga_id: &str,
    mv: &Move,
    due: Due,
) -> Result<()> {
    let deadline_ms = due.deadline_ms.unwrap_or_default();
    let stage_started_ms = due.stage_started_ms.unwrap_or(deadline_ms);
    let (messages, sent) = command::messages(
        definition.name(),
        saga_id,
        &mv.send,
        deadline_ms,
        stage_started_ms,
    )?;
    match messages.as_slice() {
        [] => {}
        [one] => {
            txoutbox::enqueue(&mut *conn, one).await?;
        }
        many => {
            txoutbox::enqueue_batch(&mut *conn, many).await?;
        }
    }
    let mut lines = Vec::with_capacity(1 + sent.len());
    lines.push(mv.line.clone());
    lines.extend(sent);
    crate::history::append(conn, saga_id, &lines).await
}

/// What an end hook that failed is owed: the final state, why the saga ends so (the
/// hook's reason on every try), the tries so far, the data it runs with.
pub(crate) struct Owed<'a> {
    pub(crate) ending: SagaState,
    pub(crate) why: &'a str,
    pub(crate) attempts: u32,
    pub(crate) data: &'a serde_json::Value,
}

/// Records an end hook that failed: the saga keeps its position and owes its end,
/// tried again after the pause, or is `failed` once out of tries.
pub(crate) async fn owe_ending(
    conn: &mut PgConnection,
    saga_id: &str,
    locked: &Locked,
    owed: &Owed<'_>,
    policy: &AfterHookFailure,
    error: &str,
) -> Result<()> {
    let Owed {
        ending,
        why,
        attempts,
        data,
    } = *owed;
    let (state, pause, last_error) = match policy {
        AfterHookFailure::Again(pause) => (
            locked.state(),
            Some(txoutbox::postgres::interval(*pause)),
            format!("the on_{ending} hook failed (try {attempts}): {error}"),
        ),
        AfterHookFailure::GiveUp(reason) => (SagaState::Failed, None, reason.clone()),
    };
    sqlx::query(
        "UPDATE saga_instance
         SET state = $2, ending = $3, end_attempts = $4, data = $5,
             deadline_at = now() + $6, last_error = $7, end_reason = $8, waiting_for = NULL,
             version = version + 1, updated_at = now(),
             finished_at = CASE WHEN $6 IS NULL THEN now() END
         WHERE saga_id = $1",
    )
    .bind(saga_id)
    .bind(state.as_str())
    .bind(ending.as_str())
    .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
    .bind(Json(data))
    .bind(pause)
    .bind(last_error)
    .bind(why)
    .execute(conn)
    .await?;
    Ok(())
}

/// A saga whose owed end hook ran takes its final state.
pub(crate) async fn ended(conn: &mut PgConnection, saga_id: &str, state: SagaState) -> Result<()> {
    sqlx::query(
        "UPDATE saga_instance
         SET state = $2, ending = NULL, end_attempts = 0, deadline_at = NULL,
             last_error = nullif(end_reason, ''), end_reason = NULL,
             waiting_for = NULL, version = version + 1, updated_at = now(),
             finished_at = now()
         WHERE saga_id = $1",
    )
    .bind(saga_id)
    .bind(state.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// A saga that cannot be moved (no registered definition fits it, or its move
/// fails) ends in `to`, with the reason, nothing due on it any more.
pub(crate) async fn fail_with(
    conn: &mut PgConnection,
    saga_id: &str,
    to: SagaState,
    reason: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE saga_instance
         SET state = $2, deadline_at = NULL, operator_request = NULL, waiting_for = NULL,
             signal_at = NULL,
             last_error = $3, version = version + 1, updated_at = now(),
             finished_at = coalesce(finished_at, now())
         WHERE saga_id = $1",
    )
    .bind(saga_id)
    .bind(to.as_str())
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}
