//! Starting a saga and moving it, each in one transaction: lock the saga row, work
//! out the move ([`mover`](crate::mover)), run the end hook if the saga ends, write
//! the new state with its deadline, append to the history, and enqueue the next
//! commands through the outbox. A reply therefore never meets a state that does not
//! expect it, and a timeout never outlives its state.

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::PgConnection;

use crate::definition::Saga;
use crate::definition::hooks::Hook;
use crate::error::{Error, Result};
use crate::mover::{
    AfterHookFailure, Brought, Line, Move, Planned, Record, after_hook_failure, annotate, plan_move,
};
use crate::registry::{Definition, Registry};
use crate::state::SagaState;
use crate::transition::{Event, Outcome, Position};
use crate::wire;

mod write;

pub(crate) use write::{Locked, lock};

/// Starts saga `saga_id` of type `saga` with `data`, in the caller's transaction:
/// the saga row, its first commands (through the outbox) and its deadline commit
/// with the caller's own change, or not at all.
pub async fn start<D>(
    conn: &mut PgConnection,
    saga: &Saga<D>,
    saga_id: &str,
    data: &D,
) -> Result<()>
where
    D: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let data = serde_json::to_value(data).map_err(Error::Data)?;
    let record = Record {
        position: Position::start(),
        data,
        ending: None,
        end_attempts: 0,
    };
    let Planned::Moved(mv) = plan_move(saga, &record, &Event::Start, Brought::default())? else {
        unreachable!("a pending saga always starts");
    };
    let due = write::insert_started(conn, saga, saga_id, &mv).await?;
    let Some(due) = due else {
        return Err(Error::AlreadyStarted(saga_id.to_owned()));
    };
    // A saga that starts with a wait has no kept signal to take yet: `signal`
    // refuses one for a saga that does not exist.
    write::send(conn, saga, saga_id, &mv, due).await
}

/// What applying an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// The saga moved from one state to another (possibly the same, with a new command).
    Moved {
        /// The state before.
        from: SagaState,
        /// The state after.
        to: SagaState,
    },
    /// Nothing changed; the history says why.
    Ignored(&'static str),
    /// The saga's definition (type and version) is not registered, or no longer fits
    /// where the saga is: it is `failed`.
    DefinitionMissing,
    /// The saga was to end, but its end hook failed: the move is rolled back and
    /// tried again later (or, out of tries, the saga is `failed`).
    HookFailed {
        /// The state the saga was moving to.
        ending: SagaState,
    },
}

/// What came with an event, for the history and the saga's data.
#[derive(Debug, Clone, Default)]
pub struct Incoming<'a> {
    /// The message that carried the event (a reply), if any.
    pub message_id: Option<&'a str>,
    /// A successful action's result, merged into the saga's data.
    pub result: Option<&'a serde_json::Value>,
}

/// Applies `event` to saga `saga_id` inside the caller's transaction (`conn` must be
/// in one: the row lock lasts until it ends).
pub async fn apply(
    conn: &mut PgConnection,
    registry: &Registry,
    saga_id: &str,
    event: &Event<'_>,
    incoming: Incoming<'_>,
) -> Result<Applied> {
    let locked = lock(conn, saga_id).await?;
    let definition = match definition_of(registry, &locked) {
        Ok(definition) => definition,
        Err(reason) => return definition_missing(conn, saga_id, &locked, reason).await,
    };
    // An operator's retry of a saga whose end hook gave up runs the hook again.
    if matches!(event, Event::Retry)
        && locked.state() == SagaState::Failed
        && locked.ending().is_some()
    {
        return end_again(conn, &*definition, saga_id, &locked, true).await;
    }
    let brought = Brought {
        message_id: incoming.message_id,
        result: incoming.result,
    };
    apply_locked(conn, &*definition, saga_id, &locked, event, brought).await
}

/// The due sweep's move of a locked saga whose deadline passed: a timeout, or the
/// next try of an end hook that failed.
pub(crate) async fn apply_due(
    conn: &mut PgConnection,
    registry: &Registry,
    saga_id: &str,
    locked: &Locked,
) -> Result<(Applied, bool)> {
    let definition = match definition_of(registry, locked) {
        Ok(definition) => definition,
        Err(reason) => {
            let applied = definition_missing(conn, saga_id, locked, reason).await?;
            return Ok((applied, false));
        }
    };
    if locked.ending().is_some() {
        let applied = end_again(conn, &*definition, saga_id, locked, false).await?;
        return Ok((applied, false));
    }
    let at = locked.record().position;
    let phase = match at.state {
        SagaState::Compensating => crate::transition::Phase::Compensation,
        _ => crate::transition::Phase::Action,
    };
    let event = Event::Timeout {
        step: at.step,
        phase,
    };
    let applied = apply_locked(
        conn,
        &*definition,
        saga_id,
        locked,
        &event,
        Brought::default(),
    )
    .await?;
    Ok((applied, true))
}

/// The definition a locked saga runs on, or why none fits it.
pub(crate) fn definition_of(
    registry: &Registry,
    locked: &Locked,
) -> std::result::Result<std::sync::Arc<dyn Definition>, String> {
    let Some(definition) = registry.get(&locked.saga_type, locked.definition_version) else {
        return Err(format!(
            "saga type {} version {} is not registered with this orchestrator",
            locked.saga_type, locked.definition_version
        ));
    };
    let steps = definition.plan().steps.len();
    let at = locked.record().position;
    let past_the_end = at.step > steps || (at.step == steps && !at.state.is_terminal());
    if past_the_end {
        return Err(format!(
            "saga is at step {} but {} version {} has {steps} step(s): the definition \
             changed under running sagas; register the one they started with again, \
             and give the new one a new version",
            at.step, locked.saga_type, locked.definition_version
        ));
    }
    Ok(definition)
}

/// Applies `event` to a saga locked with [`lock`], whose definition is
/// `definition`; then, if the saga now waits for an event that already came, takes it.
pub(crate) async fn apply_locked(
    conn: &mut PgConnection,
    definition: &dyn Definition,
    saga_id: &str,
    locked: &Locked,
    event: &Event<'_>,
    brought: Brought<'_>,
) -> Result<Applied> {
    let (applied, waiting) = apply_once(conn, definition, saga_id, locked, event, brought).await?;
    crate::signal::take_for_wait(conn, definition, saga_id, waiting).await?;
    Ok(applied)
}

/// Applies `event` alone; returns the event the saga now waits for, if it moved to
/// a wait step.
pub(crate) async fn apply_once(
    conn: &mut PgConnection,
    definition: &dyn Definition,
    saga_id: &str,
    locked: &Locked,
    event: &Event<'_>,
    brought: Brought<'_>,
) -> Result<(Applied, Option<String>)> {
    let record = locked.record();
    match plan_move(definition, &record, event, brought)? {
        Planned::Ignored(why, line) => {
            crate::history::append(conn, saga_id, &[line]).await?;
            Ok((Applied::Ignored(why), None))
        }
        Planned::Moved(mv) => {
            let applied = commit_move(conn, definition, saga_id, locked, &mv).await?;
            let waiting = match applied {
                Applied::Moved { .. } => mv.waiting_for.clone(),
                _ => None,
            };
            Ok((applied, waiting))
        }
    }
}

/// Writes a move: its end hook first if it ends the saga, then the row, the history
/// and the commands.
async fn commit_move(
    conn: &mut PgConnection,
    definition: &dyn Definition,
    saga_id: &str,
    locked: &Locked,
    mv: &Move,
) -> Result<Applied> {
    if mv.to.state.is_terminal()
        && let Some(hook) = definition.hook(mv.to.state)
    {
        let why = mv
            .error
            .clone()
            .or_else(|| locked.last_error.clone())
            .unwrap_or_default();
        let run = run_hook(conn, definition, hook, &mv.data, &why).await?;
        if let Err(error) = run {
            return hook_failed(conn, definition, saga_id, locked, mv, &why, &error).await;
        }
    }
    let due = write::update_moved(conn, saga_id, mv).await?;
    write::send(conn, definition, saga_id, mv, due).await?;
    if mv.to.state.is_terminal() && definition.has_events() {
        crate::signal::settle_left(conn, saga_id, mv.to.state).await?;
    }
    Ok(Applied::Moved {
        from: mv.from,
        to: mv.to.state,
    })
}

/// Runs `hook` in a savepoint of the move's transaction: its writes commit with the
/// move, or, when it fails, are rolled back alone. The outer error is the database's;
/// the inner one is the hook's own, as text fit for `last_error` and the history
/// (PostgreSQL's text cannot hold a NUL, which a hook's error may carry).
async fn run_hook(
    conn: &mut PgConnection,
    definition: &dyn Definition,
    hook: &Hook,
    data: &serde_json::Value,
    why: &str,
) -> Result<Result<(), String>> {
    sqlx::query("SAVEPOINT saga_end_hook")
        .execute(&mut *conn)
        .await?;
    let limit = definition.hook_time_limit();
    let ran = hook.run(conn, data.clone(), why.to_owned(), limit).await;
    let close = if ran.is_ok() {
        "RELEASE SAVEPOINT saga_end_hook"
    } else {
        "ROLLBACK TO SAVEPOINT saga_end_hook"
    };
    sqlx::query(close).execute(&mut *conn).await?;
    Ok(ran.map_err(|error| error.to_string().replace('\0', "\u{FFFD}")))
}

/// The end hook of `mv` failed on try `attempts`: the saga stays where it was, owing
/// the move to `mv.to.state`, tried again later; or, out of tries, it is `failed`.
async fn hook_failed(
    conn: &mut PgConnection,
    definition: &dyn Definition,
    saga_id: &str,
    locked: &Locked,
    mv: &Move,
    why: &str,
    error: &str,
) -> Result<Applied> {
    let ending = mv.to.state;
    let mut line = mv.line.clone();
    line.to_state = None;
    annotate(
        &mut line,
        &format!("the on_{ending} hook failed (try 1): {error}"),
    );
    let owed = write::Owed {
        ending,
        why,
        attempts: 1,
        data: &mv.data,
    };
    owe(conn, definition, saga_id, locked, &owed, error, line).await
}

/// Records the owed end and its history line; out of tries, the saga is `failed`.
async fn owe(
    conn: &mut PgConnection,
    definition: &dyn Definition,
    saga_id: &str,
    locked: &Locked,
    owed: &write::Owed<'_>,
    error: &str,
    mut line: Line,
) -> Result<Applied> {
    let max = definition.plan().compensation_attempts;
    let policy = after_hook_failure(max, owed.ending, owed.attempts, error);
    write::owe_ending(conn, saga_id, locked, owed, &policy, error).await?;
    if let AfterHookFailure::GiveUp(reason) = &policy {
        line.to_state = Some(SagaState::Failed);
        annotate(&mut line, reason);
    }
    crate::history::append(conn, saga_id, &[line]).await?;
    Ok(Applied::HookFailed {
        ending: owed.ending,
    })
}

/// Runs the end hook owed by a saga whose first try failed: on success the saga
/// takes its final state. `fresh` starts the tries over (an operator's retry).
async fn end_again(
    conn: &mut PgConnection,
    definition: &dyn Definition,
    saga_id: &str,
    locked: &Locked,
    fresh: bool,
) -> Result<Applied> {
    let ending = locked
        .ending()
        .expect("called only for a saga that owes its end");
    let from = locked.state();
    let data = locked.data.0.clone();
    let why = locked.end_reason.clone().unwrap_or_default();
    let tries = if fresh { 0 } else { locked.end_attempts() };
    let mut line = Line {
        from_state: Some(from),
        ..Line::new("end_hook")
    };
    if let Some(hook) = definition.hook(ending)
        && let Err(error) = run_hook(conn, definition, hook, &data, &why).await?
    {
        let attempts = tries + 1;
        line.detail = Some(format!(
            "the on_{ending} hook failed (try {attempts}): {error}"
        ));
        let owed = write::Owed {
            ending,
            why: &why,
            attempts,
            data: &data,
        };
        return owe(conn, definition, saga_id, locked, &owed, &error, line).await;
    }
    write::ended(conn, saga_id, ending).await?;
    if definition.has_events() {
        crate::signal::settle_left(conn, saga_id, ending).await?;
    }
    line.to_state = Some(ending);
    line.detail = Some(format!("the on_{ending} hook ran (try {})", tries + 1));
    crate::history::append(conn, saga_id, &[line]).await?;
    Ok(Applied::Moved { from, to: ending })
}

/// Applies a participant's reply, whose step names the command it answers
/// (`{command}.reply.{attempt}`), to saga `saga_id`. A reply for a saga or a command
/// that does not exist is an error, for the consumer to dead-letter at once.
pub async fn apply_reply(
    conn: &mut PgConnection,
    registry: &Registry,
    saga_id: &str,
    reply_step: &str,
    reply: &wire::Reply,
    message_id: Option<&str>,
) -> Result<Applied> {
    let command = wire::parse_reply_step(reply_step)
        .ok_or_else(|| Error::NotAReply(reply_step.to_owned()))?;
    let locked = lock(conn, saga_id).await?;
    let definition = match definition_of(registry, &locked) {
        Ok(definition) => definition,
        Err(reason) => return definition_missing(conn, saga_id, &locked, reason).await,
    };
    let Some((step, phase)) = definition.command_named(command) else {
        return Err(Error::UnknownCommand {
            saga_id: saga_id.to_owned(),
            saga_type: locked.saga_type.clone(),
            version: locked.definition_version,
            command: command.to_owned(),
        });
    };
    let outcome = match (&reply.succeeded, &reply.reason) {
        (true, _) => Outcome::Succeeded,
        (false, reason) => Outcome::Failed(reason.as_deref().unwrap_or("no reason given")),
    };
    let event = Event::Reply {
        step,
        phase,
        outcome,
    };
    let brought = Brought {
        message_id,
        result: reply.result.as_ref(),
    };
    apply_locked(conn, &*definition, saga_id, &locked, &event, brought).await
}

/// A saga whose definition is not registered (or no longer fits it) cannot move: it
/// is `failed`, with the reason, and waits for an operator (register the version,
/// then `saga retry`).
pub(crate) async fn definition_missing(
    conn: &mut PgConnection,
    saga_id: &str,
    locked: &Locked,
    reason: String,
) -> Result<Applied> {
    fail_locked(conn, saga_id, locked, "definition_missing", reason).await?;
    Ok(Applied::DefinitionMissing)
}

/// Locks saga `saga_id` and fails it with `reason`, recorded as a `kind` history
/// line. Returns the state it was in and the one it is in now.
pub(crate) async fn fail_with_reason(
    conn: &mut PgConnection,
    saga_id: &str,
    kind: &'static str,
    reason: String,
) -> Result<(SagaState, SagaState)> {
    let locked = lock(conn, saga_id).await?;
    fail_locked(conn, saga_id, &locked, kind, reason).await
}

/// A saga that cannot go on is `failed` with the reason; a finished one keeps its
/// state (an operator's retry of it found it cannot move). Either way nothing is due
/// on it any more. The reason may quote anything (an error's text), so a NUL, which
/// PostgreSQL's text cannot hold, is replaced.
async fn fail_locked(
    conn: &mut PgConnection,
    saga_id: &str,
    locked: &Locked,
    kind: &'static str,
    reason: String,
) -> Result<(SagaState, SagaState)> {
    let reason = reason.replace('\0', "\u{FFFD}");
    let from = locked.state();
    let to = if from.is_terminal() {
        from
    } else {
        SagaState::Failed
    };
    write::fail_with(conn, saga_id, to, &reason).await?;
    let line = Line {
        from_state: Some(from),
        to_state: Some(to),
        detail: Some(reason),
        ..Line::new(kind)
    };
    crate::history::append(conn, saga_id, &[line]).await?;
    Ok((from, to))
}
