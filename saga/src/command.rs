//! Sending a saga's command: an outbox message carrying the saga's headers, enqueued
//! in the saga's transaction, and its line in the history.

use serde::de::DeserializeOwned;
use sqlx::PgConnection;

use crate::definition::Saga;
use crate::error::{Error, Result};
use crate::history::{self, Entry};
use crate::registry::Definition;
use crate::transition::{Command, Phase};
use crate::wire;

/// [`send_erased`] for a saga whose data type is known.
pub(crate) async fn send<D>(
    conn: &mut PgConnection,
    saga: &Saga<D>,
    saga_id: &str,
    data: &serde_json::Value,
    command: Command,
    attempt: u32,
    deadline_ms: i64,
) -> Result<()>
where
    D: DeserializeOwned + Send + Sync + 'static,
{
    send_erased(conn, saga, saga_id, data, command, attempt, deadline_ms).await
}

/// Enqueues `command` through the outbox and records it in the history. The command
/// carries its deadline (`deadline_ms`, milliseconds since the Unix epoch, as stored
/// with the saga): a participant that receives an action after it does not run it,
/// because by then the orchestrator has moved on to compensate or cancel it.
pub(crate) async fn send_erased(
    conn: &mut PgConnection,
    definition: &dyn Definition,
    saga_id: &str,
    data: &serde_json::Value,
    command: Command,
    attempt: u32,
    deadline_ms: i64,
) -> Result<()> {
    let name = definition
        .command_name(command.step, command.phase)
        .expect("the transition function only sends commands a step has");
    let payload = definition
        .payload(command.step, command.phase, data)
        .map_err(Error::Data)?;
    let saga_type = definition.name();
    let id = uuid::Uuid::now_v7();
    let step = wire::command_step(name, &id.simple().to_string());
    // A cancel goes where its action went: the same participant answers both.
    let routing_key = match command.phase {
        Phase::Cancel => definition
            .command_name(command.step, Phase::Action)
            .unwrap_or(name),
        _ => name,
    };
    let mut message = txoutbox::Message::builder(saga_id, step, routing_key)
        .id(id)
        .header(wire::SAGA_TYPE_HEADER, saga_type)
        .header(wire::ATTEMPT_HEADER, attempt.to_string())
        .header(wire::REPLY_TO_HEADER, wire::reply_routing_key(saga_type))
        .header(wire::DEADLINE_HEADER, deadline_ms.to_string());
    if command.phase == Phase::Compensation
        && let Some(action) = definition.command_name(command.step, Phase::Action)
    {
        message = message.header(wire::COMPENSATES_HEADER, action);
    }
    let message = message.payload(&payload)?;
    let id = txoutbox::enqueue(&mut *conn, &message).await?;
    let mut entry = Entry::new("command_sent");
    entry.step = Some(command.step);
    entry.phase = Some(command.phase);
    entry.message_id = Some(id.to_string());
    entry.detail = Some(format!("{name} (attempt {attempt})"));
    history::append(&mut *conn, saga_id, entry).await
}
