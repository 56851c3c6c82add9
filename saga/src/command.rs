//! Sending a move's commands: outbox messages carrying the saga's headers, enqueued
//! in the saga's transaction in one statement, each with its line in the history.

use crate::mover::{Line, Outgoing};
use crate::transition::Phase;
use crate::wire;

/// The messages `send` goes out as, and the history lines that record them. Each
/// command carries its deadline (`deadline_ms`, milliseconds since the Unix epoch, as
/// stored with the saga): a participant that receives an action after it does not run
/// it, because by then the orchestrator has moved on to compensate or cancel it.
/// An action of a parallel group carries its own deadline, `stage_started_ms` plus its
/// own timeout, not the group's (the shortest of its steps').
pub(crate) fn messages(
    saga_type: &str,
    saga_id: &str,
    send: &[Outgoing],
    deadline_ms: i64,
    stage_started_ms: i64,
) -> Result<(Vec<txoutbox::Message>, Vec<Line>), txoutbox::Error> {
    let mut messages = Vec::with_capacity(send.len());
    let mut lines = Vec::with_capacity(send.len());
    for out in send {
        let id = uuid::Uuid::now_v7();
        let deadline_ms = match out.own_timeout {
            Some(own) => {
                stage_started_ms.saturating_add(i64::try_from(own.as_millis()).unwrap_or(i64::MAX))
            }
            None => deadline_ms,
        };
        let step = wire::command_step(&out.name, &id.simple().to_string());
        let mut message = txoutbox::Message::builder(saga_id, step, &out.routing_key)
            .id(id)
            .header(wire::SAGA_TYPE_HEADER, saga_type)
            .header(wire::ATTEMPT_HEADER, out.attempt.to_string())
            .header(wire::REPLY_TO_HEADER, wire::reply_routing_key(saga_type))
            .header(wire::DEADLINE_HEADER, deadline_ms.to_string());
        if out.command.phase == Phase::Compensation
            && let Some(action) = &out.compensates
        {
            message = message.header(wire::COMPENSATES_HEADER, action);
        }
        messages.push(message.payload(&out.payload)?);
        lines.push(Line {
            step: Some(out.command.step),
            phase: Some(out.command.phase),
            message_id: Some(id.to_string()),
            detail: Some(format!("{} (attempt {})", out.name, out.attempt)),
            ..Line::new("command_sent")
        });
    }
    Ok((messages, lines))
}
