//! The saga's rules as one pure function: from where a saga is and what happened, to
//! where it goes and which command to send. The orchestrator applies it inside the
//! transaction that locks the saga row; nothing here touches a server, so every state
//! and event is unit-tested below.

use std::time::Duration;

use crate::state::SagaState;

mod plan;

pub(crate) use plan::Stage;
pub use plan::{Group, MAX_GROUP, Plan, Shape, Work};

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

/// Where a saga is: its state, the step in hand, how often that step's current
/// command was tried, and, in a parallel group, which of its steps answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// The saga's state.
    pub state: SagaState,
    /// The step whose action runs or whose event is awaited (`running`; a parallel
    /// group's first step while the group runs), whose compensation runs
    /// (`compensating`), or whose compensation gave up (`failed`).
    pub step: usize,
    /// Tries of the current compensation or cancel so far.
    pub attempts: u32,
    /// In a running parallel group: its steps whose action succeeded (bit `i` is the
    /// group's step `i`).
    pub done: u64,
    /// Of the parallel group that failed: its steps whose action was declined, which
    /// took no effect and are not compensated.
    pub declined: u64,
}

impl Position {
    /// A saga that was written and has sent nothing yet.
    pub fn start() -> Self {
        Self::default()
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
    /// The event a wait step waits for arrived (its payload is merged into the data).
    Signal {
        /// The wait step it is for.
        step: usize,
    },
    /// The deadline of a command (or of a wait) passed with no answer.
    Timeout {
        /// The step in hand: the one whose command is overdue, or a parallel group's
        /// first step.
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

/// When a saga that moved is next due, if nothing answers first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// It finished: nothing is due.
    None,
    /// A new stage starts now (a step, a parallel group, a wait), due this long from now.
    StageStarts(Duration),
    /// Due this long after its stage started: a parallel group whose next deadline
    /// is the shortest timeout of the steps still running.
    SinceStageStart(Duration),
    /// Due this long from now: a compensation or cancel, sent or sent again.
    FromNow(Duration),
}

/// Where an event takes a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The saga moves: a new position, the commands to send, when it is next due,
    /// maybe the reply's result (or the signal's payload) to merge into its data.
    Moved {
        /// The new position.
        to: Position,
        /// The commands to send, in the same transaction: one, all of a parallel
        /// group's, or none (a wait, a group still running, the end).
        send: Vec<Command>,
        /// The reply carried the result of a successful action, or the signal its
        /// payload: merge it.
        merge_result: bool,
        /// Why the saga left the happy path, for `last_error`.
        error: Option<String>,
        /// When it is next due.
        deadline: Deadline,
    },
    /// Nothing changes (a late or duplicate reply, a stale timeout, an operator
    /// action that does not apply); the history records the event and this reason.
    Ignored(&'static str),
}

/// The rules. `at` is where the saga is, `event` what happened.
///
/// - A step's action succeeds: the next stage starts (a step, a parallel group, a
///   wait), or the saga is completed.
/// - A parallel group sends all its actions at once and completes when every one
///   has succeeded; each result is merged as it comes.
/// - A step's action fails: it took no effect, so the completed steps before it are
///   compensated, last first, one after another. In a parallel group, the group's
///   other steps are compensated too, whatever they answered or not yet: a
///   compensation undoes an action that ran and fences one that has not. Only the
///   declined step is left alone.
/// - A step's action times out, or an operator aborts it: its outcome is unknown, so
///   it is compensated too (the participant fences a late action). A parallel group
///   times out when the shortest timeout of its steps still running passes.
/// - A step without a compensation cannot be undone, so when its action times out (or
///   an operator aborts it) it is cancelled instead: the participant fences the
///   action if it has not run and answers with its outcome, which counts as the
///   action's reply. Cancels are sent again up to the plan's attempts (`attempts`
///   counts them); then the saga is `failed`, its outcome unknown.
/// - A wait step sends nothing. Its event moves the saga on, merging the event's
///   payload; its timeout, or an abort, compensates the steps before it.
/// - A compensation fails or times out: it is sent again, up to the plan's attempts;
///   then the saga is `failed`, never `compensated`.
/// - A reply for any other command than those in hand changes nothing.
pub fn transition(plan: &Plan<'_>, at: Position, event: &Event<'_>) -> Next {
    use SagaState::*;
    let stage = plan.stage(at.step);
    match (at.state, *event) {
        (Pending, Event::Start) => enter(plan, 0),
        (Pending, Event::Abort { reason }) => compensated_without_steps(reason),

        (
            Running,
            Event::Reply {
                step,
                phase,
                outcome,
            },
        ) => match stage {
            Some(Stage::Single(single)) if step == single && phase != Phase::Compensation => {
                single_answered(plan, step, phase, outcome)
            }
            Some(Stage::Group(group))
                if phase == Phase::Action
                    && group.contains(step)
                    && at.done & group.bit(step) == 0 =>
            {
                branch_answered(plan, at, group, step, outcome)
            }
            _ => Next::Ignored("a reply to a command the saga no longer waits for"),
        },
        (Running, Event::Signal { step })
            if step == at.step && stage == Some(Stage::Wait(step)) =>
        {
            merged(enter(plan, step + 1))
        }
        (
            Running,
            Event::Timeout {
                step,
                phase: Phase::Action,
            },
        ) if step == at.step => match stage {
            Some(Stage::Group(group)) => {
                let late: Vec<String> = (group.first..=group.last())
                    .filter(|s| at.done & group.bit(*s) == 0)
                    .map(|s| s.to_string())
                    .collect();
                let error = format!(
                    "step(s) {} of the parallel group timed out; their outcome is unknown",
                    late.join(", ")
                );
                compensate_from(plan, group.last(), 0, error)
            }
            Some(Stage::Wait(_)) => compensate_below(
                plan,
                step,
                format!("step {step}'s event did not come before its deadline"),
            ),
            _ => {
                let error = format!("step {step} timed out; its outcome is unknown");
                if plan.compensable(step) {
                    compensate_from(plan, step, 0, error)
                } else {
                    cancel(plan, at, error)
                }
            }
        },
        (Running, Event::Abort { reason }) => {
            let error = format!("aborted by an operator: {reason}");
            match stage {
                Some(Stage::Group(group)) => compensate_from(plan, group.last(), 0, error),
                Some(Stage::Wait(step)) => compensate_below(plan, step, error),
                _ if !plan.compensable(at.step) => cancel(plan, at, error),
                _ => compensate_from(plan, at.step, 0, error),
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
            Outcome::Succeeded => next_compensation(plan, at, None),
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

        // A saga failed while it ran (its definition was missing), at a wait: nothing
        // to undo at the wait, so the steps before it; in a parallel group whose
        // compensation never began: every step of the group, then those before.
        (Failed, Event::Retry) if matches!(stage, Some(Stage::Wait(_))) => {
            quietly(compensate_below(plan, at.step, String::new()))
        }
        (Failed, Event::Retry) if at.attempts == 0 && matches!(stage, Some(Stage::Group(_))) => {
            let Some(Stage::Group(group)) = stage else {
                unreachable!("matched a group")
            };
            quietly(compensate_from(
                plan,
                group.last(),
                at.declined,
                String::new(),
            ))
        }
        // A failed saga stopped at a step without a compensation gave up cancelling it.
        (Failed, Event::Retry) if !plan.compensable(at.step) => Next::Moved {
            to: Position {
                state: Running,
                attempts: 1,
                ..at
            },
            send: vec![Command {
                step: at.step,
                phase: Phase::Cancel,
            }],
            merge_result: false,
            error: None,
            deadline: Deadline::FromNow(plan.timeout(at.step)),
        },
        (Failed, Event::Retry) => compensating(plan, at.step, 1, at.declined, None),

        (_, Event::Reply { .. }) => {
            Next::Ignored("a reply to a command the saga no longer waits for")
        }
        (_, Event::Signal { .. }) => Next::Ignored("the saga does not wait for this event now"),
        (_, Event::Timeout { .. }) => Next::Ignored("a deadline the saga has moved past"),
        (_, Event::Start) => Next::Ignored("already started"),
        (_, Event::Abort { .. }) => Next::Ignored("only a pending or running saga can be aborted"),
        (_, Event::Retry) => Next::Ignored("only a failed saga can be retried"),
    }
}

/// The answer to the action (or cancel) of a step that runs alone.
fn single_answered(plan: &Plan<'_>, step: usize, phase: Phase, outcome: Outcome<'_>) -> Next {
    match (outcome, phase) {
        (Outcome::Succeeded, _) => merged(enter(plan, step + 1)),
        // The cancel's answer says only that the action was stopped: the saga's
        // error stays what made it cancel (a timeout, an abort).
        (Outcome::Failed(_), Phase::Cancel) => quietly(compensate_below(plan, step, String::new())),
        (Outcome::Failed(reason), _) => compensate_below(plan, step, reason.to_owned()),
    }
}

/// The answer to one action of a running parallel group.
fn branch_answered(
    plan: &Plan<'_>,
    at: Position,
    group: Group,
    step: usize,
    outcome: Outcome<'_>,
) -> Next {
    match outcome {
        Outcome::Succeeded => {
            let done = at.done | group.bit(step);
            if done == group.all() {
                return merged(enter(plan, group.last() + 1));
            }
            Next::Moved {
                to: Position { done, ..at },
                send: Vec::new(),
                merge_result: true,
                error: None,
                deadline: Deadline::SinceStageStart(plan.shortest_wait(group, done)),
            }
        }
        // Declined: it took no effect. Every other step of the group is compensated
        // (undone if it ran, fenced if not), then the steps before the group.
        Outcome::Failed(reason) => {
            compensate_from(plan, group.last(), group.bit(step), reason.to_owned())
        }
    }
}

/// The stage that begins at `step`: its action, all of a group's actions, or its
/// wait; completion after the last step.
fn enter(plan: &Plan<'_>, step: usize) -> Next {
    let (send, deadline) = match plan.stage(step) {
        None => {
            return Next::Moved {
                to: Position {
                    state: SagaState::Completed,
                    step,
                    ..Position::default()
                },
                send: Vec::new(),
                merge_result: false,
                error: None,
                deadline: Deadline::None,
            };
        }
        Some(Stage::Single(step)) => (vec![action(step)], plan.timeout(step)),
        Some(Stage::Wait(step)) => (Vec::new(), plan.timeout(step)),
        Some(Stage::Group(group)) => (
            (group.first..=group.last()).map(action).collect(),
            plan.shortest_wait(group, 0),
        ),
    };
    Next::Moved {
        to: Position {
            state: SagaState::Running,
            step,
            ..Position::default()
        },
        send,
        merge_result: false,
        error: None,
        deadline: Deadline::StageStarts(deadline),
    }
}

fn action(step: usize) -> Command {
    Command {
        step,
        phase: Phase::Action,
    }
}

/// The same move, leaving the saga's error as it was.
fn quietly(next: Next) -> Next {
    match next {
        Next::Moved {
            to,
            send,
            merge_result,
            deadline,
            ..
        } => Next::Moved {
            to,
            send,
            merge_result,
            error: None,
            deadline,
        },
        ignored => ignored,
    }
}

/// The same move, merging what the event brought.
fn merged(next: Next) -> Next {
    match next {
        Next::Moved {
            to,
            send,
            error,
            deadline,
            ..
        } => Next::Moved {
            to,
            send,
            merge_result: true,
            error,
            deadline,
        },
        ignored => ignored,
    }
}

/// The first step, from `step` down, that a compensation undoes: compensable, and not
/// a step of `step`'s group in `declined`.
fn undoable_from(plan: &Plan<'_>, step: usize, declined: u64) -> Option<usize> {
    let group = plan.group(step);
    (0..=step).rev().find(|s| {
        plan.compensable(*s) && !group.is_some_and(|g| g.contains(*s) && declined & g.bit(*s) != 0)
    })
}

/// Compensate `step` itself if it can be, then the steps before it, leaving alone
/// the steps of its group in `declined`.
fn compensate_from(plan: &Plan<'_>, step: usize, declined: u64, error: String) -> Next {
    match undoable_from(plan, step, declined) {
        Some(first) => compensating(
            plan,
            first,
            1,
            kept_in_group(plan, step, first, declined),
            Some(error),
        ),
        None => compensated(step, error),
    }
}

/// The declined steps to remember at `to`: those of `from`'s group while the walk
/// is still inside it.
fn kept_in_group(plan: &Plan<'_>, from: usize, to: usize, declined: u64) -> u64 {
    match plan.group(from) {
        Some(group) if group.contains(to) => declined,
        _ => 0,
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
        Some(previous) => compensate_from(plan, previous, 0, error),
        None => compensated(step, error),
    }
}

/// After `at.step`'s compensation succeeded: the next one down, or done.
fn next_compensation(plan: &Plan<'_>, at: Position, error: Option<String>) -> Next {
    // The declined steps count only inside the group they were declined in.
    let next = at.step.checked_sub(1).and_then(|below| {
        undoable_from(
            plan,
            below,
            kept_in_group(plan, at.step, below, at.declined),
        )
    });
    match next {
        Some(next) => {
            let declined = kept_in_group(plan, at.step, next, at.declined);
            compensating(plan, next, 1, declined, error)
        }
        None => Next::Moved {
            to: Position {
                state: SagaState::Compensated,
                attempts: 0,
                done: 0,
                ..at
            },
            send: Vec::new(),
            merge_result: false,
            error,
            deadline: Deadline::None,
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
    if at.attempts >= plan.compensation_attempts {
        return Next::Moved {
            to: Position {
                state: SagaState::Failed,
                ..at
            },
            send: Vec::new(),
            merge_result: false,
            error: Some(gave_up(error, at.attempts)),
            deadline: Deadline::None,
        };
    }
    let attempts = at.attempts + 1;
    Next::Moved {
        to: Position { attempts, ..at },
        send: vec![Command {
            step: at.step,
            phase,
        }],
        merge_result: false,
        error: Some(error),
        deadline: Deadline::FromNow(command_timeout(plan.timeout(at.step), attempts)),
    }
}

fn compensating(
    plan: &Plan<'_>,
    step: usize,
    attempts: u32,
    declined: u64,
    error: Option<String>,
) -> Next {
    Next::Moved {
        to: Position {
            state: SagaState::Compensating,
            step,
            attempts,
            done: 0,
            declined,
        },
        send: vec![Command {
            step,
            phase: Phase::Compensation,
        }],
        merge_result: false,
        error,
        deadline: Deadline::FromNow(command_timeout(plan.timeout(step), attempts)),
    }
}

fn compensated(step: usize, error: String) -> Next {
    Next::Moved {
        to: Position {
            state: SagaState::Compensated,
            step,
            ..Position::default()
        },
        send: Vec::new(),
        merge_result: false,
        error: Some(error),
        deadline: Deadline::None,
    }
}

fn compensated_without_steps(reason: &str) -> Next {
    compensated(
        0,
        format!("aborted by an operator before it started: {reason}"),
    )
}

#[cfg(test)]
mod stage_tests;
#[cfg(test)]
mod tests;
