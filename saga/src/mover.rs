//! What one event does to one saga, worked out before anything is written: the
//! transition, the data with the reply's result or the event's payload merged, the
//! commands with their payloads, when the saga is next due, and the history lines.
//! The orchestrator writes a move to PostgreSQL; the test kit keeps it in memory. The
//! rules are the same because this is the one place that applies them.

use std::time::Duration;

use crate::registry::Definition;
use crate::state::SagaState;
use crate::transition::{
    Command, Deadline, Event, Next, Outcome, Phase, Position, Stage, command_timeout, transition,
};

/// A saga between moves: what `saga_instance` holds of it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    pub(crate) position: Position,
    pub(crate) data: serde_json::Value,
    /// A move to this final state whose end hook failed: the saga stays at
    /// `position` until the hook succeeds.
    pub(crate) ending: Option<SagaState>,
    pub(crate) end_attempts: u32,
}

/// A command to send, as it goes out.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outgoing {
    pub(crate) command: Command,
    /// Its name: the message's step before the token.
    pub(crate) name: String,
    /// Where it is published: its own name, or for a cancel its action's.
    pub(crate) routing_key: String,
    /// The action a compensation undoes.
    pub(crate) compensates: Option<String>,
    pub(crate) payload: serde_json::Value,
    /// Which try of the command this is (1 for an action).
    pub(crate) attempt: u32,
    /// For an action of a parallel group: its own timeout, counted from the group's
    /// start, which its deadline header says (the group's deadline is the shortest).
    pub(crate) own_timeout: Option<Duration>,
}

/// One line of the saga's history.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Line {
    pub(crate) kind: &'static str,
    pub(crate) step: Option<usize>,
    pub(crate) phase: Option<Phase>,
    pub(crate) from_state: Option<SagaState>,
    pub(crate) to_state: Option<SagaState>,
    pub(crate) message_id: Option<String>,
    pub(crate) detail: Option<String>,
}

impl Line {
    pub(crate) fn new(kind: &'static str) -> Self {
        Self {
            kind,
            ..Self::default()
        }
    }
}

/// A saga's move.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Move {
    pub(crate) from: SagaState,
    pub(crate) to: Position,
    pub(crate) data: serde_json::Value,
    pub(crate) send: Vec<Outgoing>,
    pub(crate) deadline: Deadline,
    pub(crate) error: Option<String>,
    /// The event the saga now waits for, at a wait step.
    pub(crate) waiting_for: Option<String>,
    /// The line the event makes in the history.
    pub(crate) line: Line,
}

/// What an event does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Planned {
    Moved(Box<Move>),
    /// Nothing changes; the history line says why.
    Ignored(&'static str, Line),
}

/// What came with an event.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Brought<'a> {
    /// The message that carried it.
    pub(crate) message_id: Option<&'a str>,
    /// A successful action's result, or a signal's payload: merged into the data.
    pub(crate) result: Option<&'a serde_json::Value>,
}

/// The move `event` makes of `record`, under `definition`.
pub(crate) fn plan_move(
    definition: &dyn Definition,
    record: &Record,
    event: &Event<'_>,
    brought: Brought<'_>,
) -> Result<Planned, crate::Error> {
    let mut line = line_of(event, brought.message_id);
    let at = record.position;
    line.from_state = Some(at.state);
    if record.ending.is_some() {
        let why = "the saga is ending: its end hook runs again at its deadline";
        annotate(&mut line, &format!("ignored: {why}"));
        return Ok(Planned::Ignored(why, line));
    }
    let plan = definition.plan();
    match transition(&plan, at, event) {
        Next::Ignored(why) => {
            annotate(&mut line, &format!("ignored: {why}"));
            Ok(Planned::Ignored(why, line))
        }
        Next::Moved {
            to,
            send,
            merge_result,
            error,
            deadline,
        } => {
            let mut data = record.data.clone();
            if merge_result && let Some(result) = brought.result {
                merge(&mut data, result);
            }
            // The rules know steps by number; a wait is clearer by its event's name.
            let waited = match (event, plan.stage(at.step)) {
                (Event::Signal { step } | Event::Timeout { step, .. }, Some(Stage::Wait(_))) => {
                    definition.waits_for(*step)
                }
                _ => None,
            };
            let error = match (event, waited, error) {
                (Event::Timeout { step, .. }, Some(name), Some(_)) => Some(format!(
                    "the event {name} did not come before step {step}'s deadline"
                )),
                (_, _, error) => error,
            };
            if let (Event::Signal { .. }, Some(name)) = (event, waited) {
                annotate(&mut line, &format!("event {name} taken"));
            }
            let send = send
                .into_iter()
                .map(|command| outgoing(definition, &data, command, to.attempts))
                .collect::<Result<Vec<_>, _>>()?;
            line.to_state = Some(to.state);
            if let Some(error) = error.as_deref().filter(|e| !e.is_empty()) {
                annotate(&mut line, error);
            }
            let waiting_for = match (to.state, plan.stage(to.step)) {
                (SagaState::Running, Some(Stage::Wait(step))) => {
                    definition.waits_for(step).map(str::to_owned)
                }
                _ => None,
            };
            Ok(Planned::Moved(Box::new(Move {
                from: at.state,
                to,
                data,
                send,
                deadline,
                error,
                waiting_for,
                line,
            })))
        }
    }
}

/// The line an event makes, before it is known whether it applies.
fn line_of(event: &Event<'_>, message_id: Option<&str>) -> Line {
    let mut line = match *event {
        Event::Start => Line::new("started"),
        Event::Reply {
            step,
            phase,
            outcome,
        } => Line {
            step: Some(step),
            phase: Some(phase),
            detail: Some(match outcome {
                Outcome::Succeeded => "succeeded".to_owned(),
                Outcome::Failed(reason) => format!("failed: {reason}"),
            }),
            ..Line::new("reply")
        },
        Event::Signal { step } => Line {
            step: Some(step),
            ..Line::new("signal")
        },
        Event::Timeout { step, phase } => Line {
            step: Some(step),
            phase: Some(phase),
            ..Line::new("timeout")
        },
        Event::Abort { reason } => Line {
            detail: Some(format!("abort: {reason}")),
            ..Line::new("operator")
        },
        Event::Retry => Line {
            detail: Some("retry".to_owned()),
            ..Line::new("operator")
        },
    };
    line.message_id = message_id.map(str::to_owned);
    line
}

/// Adds `text` to a line's detail, once.
pub(crate) fn annotate(line: &mut Line, text: &str) {
    line.detail = Some(match line.detail.take() {
        Some(detail) if detail.contains(text) => detail,
        Some(detail) => format!("{detail}; {text}"),
        None => text.to_owned(),
    });
}

fn outgoing(
    definition: &dyn Definition,
    data: &serde_json::Value,
    command: Command,
    attempts: u32,
) -> Result<Outgoing, crate::Error> {
    // The rules send only commands a step has; should they not, the saga's move
    // fails with the reason rather than the orchestrator's task.
    let name = definition
        .command_name(command.step, command.phase)
        .ok_or_else(|| crate::Error::NoSuchCommand {
            saga_type: definition.name().to_owned(),
            step: command.step,
            phase: command.phase.as_str(),
        })?
        .to_owned();
    // A cancel goes where its action went: the same participant answers both.
    let action = definition.command_name(command.step, Phase::Action);
    let routing_key = match command.phase {
        Phase::Cancel => action.unwrap_or(&name).to_owned(),
        _ => name.clone(),
    };
    let compensates = match command.phase {
        Phase::Compensation => action.map(str::to_owned),
        _ => None,
    };
    let plan = definition.plan();
    let own_timeout = (command.phase == Phase::Action && plan.group(command.step).is_some())
        .then(|| plan.timeout(command.step));
    Ok(Outgoing {
        payload: definition
            .payload(command.step, command.phase, data)
            .map_err(crate::Error::Data)?,
        command,
        name,
        routing_key,
        compensates,
        attempt: attempts.max(1),
        own_timeout,
    })
}

/// Shallow merge of an action's result (or an event's payload) object into the
/// saga's data object.
pub(crate) fn merge(data: &mut serde_json::Value, result: &serde_json::Value) {
    if let (Some(data), Some(result)) = (data.as_object_mut(), result.as_object()) {
        for (key, value) in result {
            data.insert(key.clone(), value.clone());
        }
    }
}

/// What a saga does with an event delivered to it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Offer {
    /// Its step waits for it now: take it.
    Take(usize),
    /// Keep it for the step that waits for it, which the saga has not reached yet.
    Keep,
    /// Settle it as not taken, for this reason: no step waits for it, so its sender
    /// is told (a message is dead-lettered).
    Refuse(String),
    /// Settle it as not taken, for this reason: the saga is past the step that waited
    /// for it, or finished; nothing is wrong with the event.
    Ignore(String),
    /// Its step waits for it, but its payload does not fit the saga's data: settle it
    /// as not taken; the step still waits, and another event of that name may fit.
    Misfit(String),
}

/// The rules for an event `name` with `payload` offered to `record`: refused when no
/// step waits for it, when the saga has finished or is compensating, or when its
/// payload does not fit the saga's data; taken when the saga waits for it; kept
/// otherwise.
pub(crate) fn offer(
    definition: &dyn Definition,
    record: &Record,
    name: &str,
    payload: &serde_json::Value,
) -> Offer {
    let Some(step) = definition.step_waiting_for(name) else {
        return Offer::Refuse(format!(
            "refused: no step of {} version {} waits for this event",
            definition.name(),
            definition.version()
        ));
    };
    let state = record.position.state;
    if state.is_terminal() || state == SagaState::Compensating {
        return Offer::Ignore(format!("ignored: the saga is {state}"));
    }
    if record.position.step > step || record.ending.is_some() {
        return Offer::Ignore(format!(
            "ignored: the saga is past step {step}, which waited for it"
        ));
    }
    let waiting_here = state == SagaState::Running && record.position.step == step;
    if !waiting_here {
        return Offer::Keep;
    }
    let mut merged = record.data.clone();
    merge(&mut merged, payload);
    match definition.fits(&merged) {
        Ok(()) => Offer::Take(step),
        Err(error) => Offer::Misfit(format!(
            "refused: its payload does not fit the saga's data: {error}"
        )),
    }
}

/// The first try of an end hook that failed waits this long, doubling per try.
pub(crate) const END_HOOK_RETRY: Duration = Duration::from_secs(1);

/// What becomes of a saga whose end hook failed on try `attempts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AfterHookFailure {
    /// Try the move again this long from now.
    Again(Duration),
    /// Out of tries: `failed`, without the hook, for an operator's `saga retry`.
    GiveUp(String),
}

/// The rule for end hooks that fail: again with a doubling pause, up to the plan's
/// attempts; then the saga is `failed` with the reason, the hook owed.
pub(crate) fn after_hook_failure(
    max_attempts: u32,
    ending: SagaState,
    attempts: u32,
    error: &str,
) -> AfterHookFailure {
    if attempts >= max_attempts {
        return AfterHookFailure::GiveUp(format!(
            "the on_{ending} hook failed {attempts} times; last: {error}; \
             `saga retry` runs it again"
        ));
    }
    AfterHookFailure::Again(command_timeout(END_HOOK_RETRY, attempts))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_failing_end_hook_is_tried_again_with_a_growing_pause_then_given_up() {
        let again = |attempts| after_hook_failure(3, SagaState::Completed, attempts, "boom");
        assert_eq!(again(1), AfterHookFailure::Again(Duration::from_secs(1)));
        assert_eq!(again(2), AfterHookFailure::Again(Duration::from_secs(2)));
        let AfterHookFailure::GiveUp(reason) = again(3) else {
            panic!("gives up")
        };
        assert!(
            reason.contains("on_completed hook failed 3 times; last: boom"),
            "{reason}"
        );
    }
}
