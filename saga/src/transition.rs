//! The saga's rules as one pure function: from where a saga is and what happened, to
//! where it goes and which command to send. The orchestrator applies it inside the
//! transaction that locks the saga row; nothing here touches a server, so every state
//! and event is unit-tested below.

use std::time::Duration;

use crate::state::SagaState;

/// Longest a resent compensation or cancel waits, as a multiple of its step's timeout.
const MAX_RESEND_FACTOR: u32 = 8;

/// How long the command sent at `attempts` may go unanswered: its step's timeout for
/// an action and for a first compensation or cancel; for each one sent again, twice
/// the last, up to eight times the step's timeout. A participant or a broker that is
/// down for minutes then uses up a few attempts, not all of them.
pub fn command_timeout(step_timeout: Duration, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(MAX_RESEND_FACTOR.ilog2());
    step_timeout.saturating_mul(1 << doublings)
}

/// Which command of a step: its action, the compensation that undoes it, or the
/// cancel that settles a step that cannot be undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Do the step.
    Action,
    /// Undo the step (or, if its action never ran, fence it so it never will).
    Compensation,
    /// Of a step without a compensation whose action timed out: fence the action if
    /// it has not run, and answer with its outcome either way. Its reply counts as the
    /// action's.
    Cancel,
}

impl Phase {
    /// `action` or `compensation`, as the history and the wire name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Action => "action",
            Phase::Compensation => "compensation",
            Phase::Cancel => "cancel",
        }
    }
}

/// What the rules need to know of a saga's definition.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    /// One entry per step, in order: whether the step has a compensation.
    pub compensable: &'a [bool],
    /// Tries of one compensation (replies of failure and timeouts) before the saga
    /// is `failed`.
    pub compensation_attempts: u32,
}

/// Where a saga is: its state, the step in hand, and how often that step's current
/// command was tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The saga's state.
    pub state: SagaState,
    /// The step whose action runs (`running`), whose compensation runs
    /// (`compensating`), or whose compensation gave up (`failed`).
    pub step: usize,
    /// Tries of the current compensation so far.
    pub attempts: u32,
}

impl Position {
    /// A saga that was written and has sent nothing yet.
    pub fn start() -> Self {
        Self {
            state: SagaState::Pending,
            step: 0,
            attempts: 0,
        }
    }
}

/// How a participant answered a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// It took effect (or, for a compensation, there was nothing left to undo).
    Succeeded,
    /// It took no effect, for this reason.
    Failed(&'a str),
}

/// What happened to a saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// The saga was written; its first step can go.
    Start,
    /// A participant replied to a command.
    Reply {
        /// The step the command was for.
        step: usize,
        /// Its action or its compensation.
        phase: Phase,
        /// What the participant said.
        outcome: Outcome<'a>,
    },
    /// The deadline of a command passed with no reply.
    Timeout {
        /// The step whose command is overdue.
        step: usize,
        /// Its action or its compensation.
        phase: Phase,
    },
    /// An operator stops a running saga: its steps are compensated.
    Abort {
        /// Why, for the history.
        reason: &'a str,
    },
    /// An operator resumes a `failed` saga's compensation.
    Retry,
}

/// A command to send: the action or compensation of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    /// The step.
    pub step: usize,
    /// Which of its commands.
    pub phase: Phase,
}

/// Where an event takes a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The saga moves: a new position, maybe a command to send (with a new
    /// deadline), maybe the reply's result to merge into the saga's data.
    Moved {
        /// The new position.
        to: Position,
        /// The command to send, in the same transaction.
        send: Option<Command>,
        /// The reply carried the result of a successful action: merge it.
        merge_result: bool,
        /// Why the saga left the happy path, for `last_error`.
        error: Option<String>,
    },
    /// Nothing changes (a late or duplicate reply, a stale timeout, an operator
    /// action that does not apply); the history records the event and this reason.
    Ignored(&'static str),
}

/// The rules. `at` is where the saga is, `event` what happened.
///
/// - A step's action succeeds: the next step's action goes, or the saga is completed.
/// - A step's action fails: it took no effect, so the completed steps before it are
///   compensated, last first, one after another.
/// - A step's action times out, or an operator aborts it: its outcome is unknown, so
///   it is compensated too (the participant fences a late action).
/// - A step without a compensation cannot be undone, so when its action times out (or
///   an operator aborts it) it is cancelled instead: the participant fences the
///   action if it has not run and answers with its outcome, which counts as the
///   action's reply. Cancels are sent again up to the plan's attempts (`attempts`
///   counts them); then the saga is `failed`, its outcome unknown.
/// - A compensation fails or times out: it is sent again, up to the plan's attempts;
///   then the saga is `failed`, never `compensated`.
/// - A reply for any other command than the one in hand changes nothing.
pub fn transition(plan: &Plan<'_>, at: Position, event: &Event<'_>) -> Next {
    use SagaState::*;
    match (at.state, *event) {
        (Pending, Event::Start) => run(plan, 0),
        (Pending, Event::Abort { reason }) => compensated_without_steps(reason),

        (
            Running,
            Event::Reply {
                step,
                phase: phase @ (Phase::Action | Phase::Cancel),
                outcome,
            },
        ) if step == at.step => match outcome {
            Outcome::Succeeded => match run(plan, step + 1) {
                Next::Moved {
                    to, send, error, ..
                } => Next::Moved {
                    to,
                    send,
                    merge_result: true,
                    error,
                },
                ignored => ignored,
            },
            Outcome::Failed(reason) => match phase {
                // The cancel's answer says only that the action was stopped: the
                // saga's error stays what made it cancel (a timeout, an abort).
                Phase::Cancel => match compensate_below(plan, step, String::new()) {
                    Next::Moved { to, send, .. } => Next::Moved {
                        to,
                        send,
                        merge_result: false,
                        error: None,
                    },
                    ignored => ignored,
                },
                _ => compensate_below(plan, step, reason.to_owned()),
            },
        },
        (
            Running,
            Event::Timeout {
                step,
                phase: Phase::Action,
            },
        ) if step == at.step => {
            let error = format!("step {step} timed out; its outcome is unknown");
            if plan.compensable.get(step) == Some(&true) {
                compensate_from(plan, step, error)
            } else {
                cancel(plan, at, error)
            }
        }
        (Running, Event::Abort { reason }) => {
            let error = format!("aborted by an operator: {reason}");
            if plan.compensable.get(at.step) == Some(&false) {
                cancel(plan, at, error)
            } else {
                compensate_from(plan, at.step, error)
            }
        }

        (
            Compensating,
            Event::Reply {
                step,
                phase: Phase::Compensation,
                outcome,
            },
        ) if step == at.step => match outcome {
            Outcome::Succeeded => next_compensation(plan, step, None),
            Outcome::Failed(reason) => compensate_again(plan, at, reason.to_owned()),
        },
        (
            Compensating,
            Event::Timeout {
                step,
                phase: Phase::Compensation,
            },
        ) if step == at.step => compensate_again(
            plan,
            at,
            format!("the compensation of step {step} timed out"),
        ),

        // A failed saga stopped at a step without a compensation gave up cancelling it.
        (Failed, Event::Retry) if plan.compensable.get(at.step) == Some(&false) => Next::Moved {
            to: Position {
                state: Running,
                step: at.step,
                attempts: 1,
            },
            send: Some(Command {
                step: at.step,
                phase: Phase::Cancel,
            }),
            merge_result: false,
            error: None,
        },
        (Failed, Event::Retry) => Next::Moved {
            to: Position {
                state: Compensating,
                step: at.step,
                attempts: 1,
            },
            send: Some(Command {
                step: at.step,
                phase: Phase::Compensation,
            }),
            merge_result: false,
            error: None,
        },

        (_, Event::Reply { .. }) => {
            Next::Ignored("a reply to a command the saga no longer waits for")
        }
        (_, Event::Timeout { .. }) => Next::Ignored("a deadline the saga has moved past"),
        (_, Event::Start) => Next::Ignored("already started"),
        (_, Event::Abort { .. }) => Next::Ignored("only a pending or running saga can be aborted"),
        (_, Event::Retry) => Next::Ignored("only a failed saga can be retried"),
    }
}

/// The action of `step`, or completion after the last step.
fn run(plan: &Plan<'_>, step: usize) -> Next {
    if step >= plan.compensable.len() {
        return Next::Moved {
            to: Position {
                state: SagaState::Completed,
                step,
                attempts: 0,
            },
            send: None,
            merge_result: false,
            error: None,
        };
    }
    Next::Moved {
        to: Position {
            state: SagaState::Running,
            step,
            attempts: 0,
        },
        send: Some(Command {
            step,
            phase: Phase::Action,
        }),
        merge_result: false,
        error: None,
    }
}

/// Compensate `step` itself if it can be, then the steps before it.
fn compensate_from(plan: &Plan<'_>, step: usize, error: String) -> Next {
    match (0..=step)
        .rev()
        .find(|s| plan.compensable.get(*s) == Some(&true))
    {
        Some(first) => compensating(first, 1, Some(error)),
        None => compensated(error),
    }
}

/// Cancel `at.step`, whose action cannot be undone: again, or `failed` once out of
/// attempts, because the saga cannot go on or back without knowing the outcome.
fn cancel(plan: &Plan<'_>, at: Position, error: String) -> Next {
    send_again(plan, at, Phase::Cancel, error, |error, tries| {
        format!(
            "{error}; {tries} cancels went unanswered, so whether step {} took effect is unknown",
            at.step
        )
    })
}

/// Compensate the steps before `step`, which took no effect.
fn compensate_below(plan: &Plan<'_>, step: usize, error: String) -> Next {
    match step.checked_sub(1) {
        Some(previous) => compensate_from(plan, previous, error),
        None => compensated(error),
    }
}

/// After `step`'s compensation succeeded: the next one down, or done.
fn next_compensation(plan: &Plan<'_>, step: usize, error: Option<String>) -> Next {
    match (0..step).rev().find(|s| plan.compensable[*s]) {
        Some(next) => compensating(next, 1, error),
        None => Next::Moved {
            to: Position {
                state: SagaState::Compensated,
                step,
                attempts: 0,
            },
            send: None,
            merge_result: false,
            error,
        },
    }
}

/// A compensation failed or timed out: again, or `failed` once out of attempts.
fn compensate_again(plan: &Plan<'_>, at: Position, error: String) -> Next {
    send_again(plan, at, Phase::Compensation, error, |error, tries| {
        format!("{error}; gave up after {tries} attempts")
    })
}

/// `phase`'s command of the step in hand once more, or, once the plan's attempts are
/// spent, `failed` with the error `gave_up` makes of `error` and the attempts made.
fn send_again(
    plan: &Plan<'_>,
    at: Position,
    phase: Phase,
    error: String,
    gave_up: impl FnOnce(String, u32) -> String,
) -> Next {
    let (to, send, error) = if at.attempts >= plan.compensation_attempts {
        let to = Position {
            state: SagaState::Failed,
            ..at
        };
        (to, None, gave_up(error, at.attempts))
    } else {
        let to = Position {
            attempts: at.attempts + 1,
            ..at
        };
        let send = Command {
            step: at.step,
            phase,
        };
        (to, Some(send), error)
    };
    Next::Moved {
        to,
        send,
        merge_result: false,
        error: Some(error),
    }
}

fn compensating(step: usize, attempts: u32, error: Option<String>) -> Next {
    Next::Moved {
        to: Position {
            state: SagaState::Compensating,
            step,
            attempts,
        },
        send: Some(Command {
            step,
            phase: Phase::Compensation,
        }),
        merge_result: false,
        error,
    }
}

fn compensated(error: String) -> Next {
    Next::Moved {
        to: Position {
            state: SagaState::Compensated,
            step: 0,
            attempts: 0,
        },
        send: None,
        merge_result: false,
        error: Some(error),
    }
}

fn compensated_without_steps(reason: &str) -> Next {
    compensated(format!(
        "aborted by an operator before it started: {reason}"
    ))
}

#[cfg(test)]
mod tests;
