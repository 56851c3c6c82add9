//! Starting a saga and moving it, each in one transaction: lock the saga row, apply
//! the transition function, write the new state with its deadline, append to the
//! history, and enqueue the next command through the outbox. A reply therefore never
//! meets a state that does not expect it, and a timeout never outlives its state.

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::PgConnection;
use sqlx::types::Json;

use crate::command::{send, send_erased};
use crate::definition::Saga;
use crate::error::{Error, Result};
use crate::history::{self, Entry};
use crate::registry::{Definition, Registry};
use crate::state::SagaState;
use crate::transition::{Event, Next, Outcome, Position, command_timeout, transition};
use crate::wire;

/// Starts saga `saga_id` of type `saga` with `data`, in the caller's transaction:
/// the saga row, its first command (through the outbox) and its deadline commit with
/// the caller's own change, or not at all.
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
    let Next::Moved {
        to,
        send: Some(first),
        ..
    } = transition(&saga.plan(), Position::start(), &Event::Start)
    else {
        unreachable!("a built saga has a first step");
    };
    let timeout = txoutbox::postgres::interval(saga.steps()[0].timeout());
    let deadline_ms: Option<i64> = sqlx::query_scalar(
        "INSERT INTO saga_instance
             (saga_id, saga_type, definition_version, state, current_step, attempts, deadline_at, data)
         VALUES ($1, $2, $3, $4, 0, 0, now() + $5, $6)
         ON CONFLICT (saga_id) DO NOTHING
         RETURNING (extract(epoch FROM deadline_at) * 1000)::bigint",
    )
    .bind(saga_id)
    .bind(saga.name())
    .bind(saga.version())
    .bind(to.state.as_str())
    .bind(timeout)
    .bind(Json(&data))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(deadline_ms) = deadline_ms else {
        return Err(Error::AlreadyStarted(saga_id.to_owned()));
    };
    let entry = Entry::moved("started", SagaState::Pending, to.state);
    history::append(&mut *conn, saga_id, entry).await?;
    send(&mut *conn, saga, saga_id, &data, first, 1, deadline_ms).await
}

/// What applying an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The saga's definition (type and version) is not registered: it is `failed`.
    DefinitionMissing,
}

/// What came with an event, for the history and the saga's data.
#[derive(Debug, Clone, Default)]
pub struct Incoming<'a> {
    /// The message that carried the event (a reply), if any.
    pub message_id: Option<&'a str>,
    /// A successful action's result, merged into the saga's data.
    pub result: Option<&'a serde_json::Value>,
}

#[derive(sqlx::FromRow)]
struct Locked {
    saga_type: String,
    definition_version: i32,
    state: String,
    current_step: i32,
    attempts: i32,
    data: Json<serde_json::Value>,
}

impl Locked {
    /// The stored state; a value this version does not know is treated as `failed`,
    /// which only an operator moves.
    fn state(&self) -> SagaState {
        SagaState::parse(&self.state).unwrap_or(SagaState::Failed)
    }
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
    let Some(definition) = registry.get(&locked.saga_type, locked.definition_version) else {
        return definition_missing(conn, saga_id, &locked).await;
    };
    apply_locked(conn, &*definition, saga_id, locked, event, incoming).await
}

/// Locks saga `saga_id`'s row until the caller's transaction ends.
async fn lock(conn: &mut PgConnection, saga_id: &str) -> Result<Locked> {
    let locked: Option<Locked> = sqlx::query_as(
        "SELECT saga_type, definition_version, state, current_step, attempts, data
         FROM saga_instance WHERE saga_id = $1 FOR UPDATE",
    )
    .bind(saga_id)
    .fetch_optional(&mut *conn)
    .await?;
    locked.ok_or_else(|| Error::NotFound(saga_id.to_owned()))
}

/// Applies `event` to a saga locked with [`lock`], whose definition is `definition`.
async fn apply_locked(
    conn: &mut PgConnection,
    definition: &dyn Definition,
    saga_id: &str,
    locked: Locked,
    event: &Event<'_>,
    incoming: Incoming<'_>,
) -> Result<Applied> {
    let state = locked.state();
    let at = Position {
        state,
        step: usize::try_from(locked.current_step).unwrap_or(0),
        attempts: u32::try_from(locked.attempts).unwrap_or(0),
    };
    let mut entry = Entry::of(event, incoming.message_id);
    match transition(&definition.plan(), at, event) {
        Next::Ignored(why) => {
            entry.detail = Some(match entry.detail.take() {
                Some(detail) => format!("{detail}; ignored: {why}"),
                None => format!("ignored: {why}"),
            });
            entry.from_state = Some(state);
            history::append(&mut *conn, saga_id, entry).await?;
            Ok(Applied::Ignored(why))
        }
        Next::Moved {
            to,
            send: command,
            merge_result,
            error,
        } => {
            let mut data = locked.data.0;
            if merge_result && let Some(result) = incoming.result {
                merge(&mut data, result);
            }
            let deadline = command.map(|c| {
                let timeout = command_timeout(definition.timeout(c.step), to.attempts);
                txoutbox::postgres::interval(timeout)
            });
            let deadline_ms: Option<i64> = sqlx::query_scalar(
                "UPDATE saga_instance
                 SET state = $2, current_step = $3, attempts = $4, version = version + 1,
                     deadline_at = now() + $5, data = $6,
                     last_error = coalesce($7, last_error), updated_at = now(),
                     finished_at = CASE WHEN $8 THEN now() END
                 WHERE saga_id = $1
                 RETURNING (extract(epoch FROM deadline_at) * 1000)::bigint",
            )
            .bind(saga_id)
            .bind(to.state.as_str())
            .bind(i32::try_from(to.step).unwrap_or(i32::MAX))
            .bind(i32::try_from(to.attempts).unwrap_or(i32::MAX))
            .bind(deadline)
            .bind(Json(&data))
            .bind(&error)
            .bind(to.state.is_terminal())
            .fetch_one(&mut *conn)
            .await?;
            entry.from_state = Some(state);
            entry.to_state = Some(to.state);
            if let Some(error) = &error {
                entry.detail = Some(match entry.detail.take() {
                    Some(detail) if !detail.contains(error.as_str()) => {
                        format!("{detail}; {error}")
                    }
                    _ => error.clone(),
                });
            }
            history::append(&mut *conn, saga_id, entry).await?;
            if let Some(command) = command {
                let attempt = to.attempts.max(1);
                let deadline_ms = deadline_ms.unwrap_or_default();
                send_erased(
                    &mut *conn,
                    definition,
                    saga_id,
                    &data,
                    command,
                    attempt,
                    deadline_ms,
                )
                .await?;
            }
            Ok(Applied::Moved {
                from: state,
                to: to.state,
            })
        }
    }
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
    let Some(definition) = registry.get(&locked.saga_type, locked.definition_version) else {
        return definition_missing(conn, saga_id, &locked).await;
    };
    let Some((step, phase)) = definition.command_named(command) else {
        return Err(Error::UnknownCommand {
            saga_id: saga_id.to_owned(),
            saga_type: locked.saga_type,
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
    let incoming = Incoming {
        message_id,
        result: reply.result.as_ref(),
    };
    apply_locked(conn, &*definition, saga_id, locked, &event, incoming).await
}

/// A saga whose definition is not registered cannot move: it is `failed`, with the
/// reason, and waits for an operator (register the version, then `saga retry`).
async fn definition_missing(
    conn: &mut PgConnection,
    saga_id: &str,
    locked: &Locked,
) -> Result<Applied> {
    let state = locked.state();
    let reason = format!(
        "saga type {} version {} is not registered with this orchestrator",
        locked.saga_type, locked.definition_version
    );
    // A finished saga keeps its state (an operator's retry of it found no
    // definition); either way nothing is due on it any more.
    let to = if state.is_terminal() {
        state
    } else {
        SagaState::Failed
    };
    sqlx::query(
        "UPDATE saga_instance
         SET state = $2, deadline_at = NULL, operator_request = NULL,
             last_error = $3, version = version + 1, updated_at = now(),
             finished_at = coalesce(finished_at, now())
         WHERE saga_id = $1",
    )
    .bind(saga_id)
    .bind(to.as_str())
    .bind(&reason)
    .execute(&mut *conn)
    .await?;
    let mut entry = Entry::moved("definition_missing", state, to);
    entry.detail = Some(reason);
    history::append(&mut *conn, saga_id, entry).await?;
    Ok(Applied::DefinitionMissing)
}

/// Shallow merge of an action's result object into the saga's data object.
fn merge(data: &mut serde_json::Value, result: &serde_json::Value) {
    if let (Some(data), Some(result)) = (data.as_object_mut(), result.as_object()) {
        for (key, value) in result {
            data.insert(key.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::merge;

    #[test]
    fn a_result_merges_over_the_data() {
        let mut data = serde_json::json!({"order_id": 1, "reservation": null});
        merge(
            &mut data,
            &serde_json::json!({"reservation": "r-9", "extra": true}),
        );
        assert_eq!(
            data,
            serde_json::json!({"order_id": 1, "reservation": "r-9", "extra": true})
        );
        merge(&mut data, &serde_json::json!(42));
        assert_eq!(data["order_id"], 1, "a non-object result changes nothing");
    }
}
